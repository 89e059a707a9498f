"""Batched Atari environments with the Dopamine / Machado et al. (2018) protocol, over envpool or ale-py.

Protocol (paper.md "Project decisions" 5, both backends): sticky actions 0.25, frame skip 4 with a max-pool
over the last two frames, 84x84 grayscale (INTER_AREA), a stack of 4, no terminal on life loss, no no-op or
fire resets, at most 27,000 agent steps per episode (a truncation), the minimal action set, and raw rewards:
clipping to [-1, 1] is the learner's job, and logged scores are raw game scores.

Both backends are told to return single frames (stack_num=1) and this module stacks them itself, so the
stack is the same on both and matches what the replay buffer rebuilds: oldest frame first (obs[:, -1] is
the newest), and the first observation of an episode is [0, 0, 0, f0] (zero padding, as Dopamine's agent and
replay buffer do). envpool's own stack would pad with copies of f0 instead; ale-py's pads with zeros.

No-op resets: envpool draws 1..noop_max no-op frames at reset and crashes with noop_max=0, so noop_max=0 is
run there as noop_max=1: one NOOP frame (1/4 of an agent step) before the first observation, the closest it
can get to Dopamine's none. ale-py draws 0..noop_max-1, so noop_max=0 is exact.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

FRAME_STACK = 4
FRAME_SIZE = 84


@dataclass
class EnvConfig:
    game: str = "Pong"
    """Atari game: 'Pong', 'pong', 'space_invaders', 'SpaceInvaders-v5' and 'ALE/Pong-v5' are all accepted."""
    backend: Literal["auto", "envpool", "ale"] = "auto"
    """'envpool' (batched C++ pool, Linux), 'ale' (ale-py AtariVectorEnv), or 'auto': envpool if importable."""
    num_envs: int = 8
    """Number of parallel environments, a protocol choice: 1 runs Dopamine's loop exactly (an update every 4 agent
    steps, acting on the freshly updated network); N envs step together, so updates come N x replay_ratio at a
    time and the acting network is refreshed every N transitions."""
    sticky_prob: float = 0.25
    """Sticky-action probability (Machado et al. 2018); 0 turns sticky actions off."""
    frame_skip: int = 4
    """Emulator frames per agent step; the observation is the max over the last two of them."""
    max_episode_steps: int = 27_000
    """Episode cap in agent steps (27,000 = 108,000 frames); reaching it is a truncation, not a terminal."""
    noop_max: int = 0
    """No-op frames at reset: 0 = none (Dopamine). envpool cannot do 0 and does exactly 1 NOOP frame instead."""
    full_action_space: bool = False
    """Use all 18 actions instead of the game's minimal action set."""
    num_threads: int = 0
    """Worker threads of the backend's pool; 0 lets the backend choose."""
    terminal_on_life_loss: bool = False
    """Losing a life ends the agent's episode, not the game (Dopamine's Atari-100k setting): the learner sees a
    terminal and the frame stack restarts, while episodes and scores stay whole games."""


class Episode(NamedTuple):
    """A finished episode: raw (unclipped) return and length in agent steps."""

    env_id: int
    episode_return: float
    length: int


# --- game names ------------------------------------------------------------------------------------------


def _rom_to_name(rom: str) -> str:
    # envpool's naming rule (envpool/atari/registration.py): space_invaders -> SpaceInvaders
    return "".join(part.capitalize() for part in rom.split("_"))


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _roms(backend: str) -> list[str]:
    if backend == "envpool":
        from envpool.atari.registration import atari_game_list

        return list(atari_game_list)
    from ale_py import roms

    return list(roms.get_all_rom_ids())


def _resolve_rom(game: str, backend: str) -> str:
    """ROM id (snake_case) of `game` for `backend`, or a ValueError naming the nearest valid games."""
    name = game.strip()
    if name.lower().startswith("ale/"):
        name = name[4:]
    if name.lower().endswith("-v5"):
        name = name[:-3]
    roms = {_key(rom): rom for rom in _roms(backend)}
    if _key(name) in roms:
        return roms[_key(name)]
    hint = ""
    if backend == "envpool":  # e.g. Joust ships with ale-py but not with envpool
        ale_roms = {_key(rom): rom for rom in _roms("ale")}
        if _key(name) in ale_roms:
            hint = " It is available with backend='ale'."
    close = difflib.get_close_matches(_key(name), list(roms), n=3, cutoff=0.5)
    suggestion = f" Did you mean {', '.join(repr(_rom_to_name(roms[k])) for k in close)}?" if close else ""
    library = "ale-py" if backend == "ale" else "envpool"  # (names are checked against ale-py's before any env)
    raise ValueError(f"Unknown Atari game {game!r}: {library} has no ROM of that name.{suggestion}{hint}")


def resolve_game(game: str, backend: Literal["envpool", "ale"] = "ale") -> str:
    """Canonical CamelCase name ('SpaceInvaders') of a game; ValueError with suggestions if unknown."""
    return _rom_to_name(_resolve_rom(game, backend))


# --- backends: each returns single 84x84 frames, raw float32 rewards, game-over and truncation flags ------


class _EnvpoolBackend:
    def __init__(self, cfg: EnvConfig, rom: str, seed: int):
        import envpool

        self.kwargs = dict(
            task_id=f"{_rom_to_name(rom)}-v5", env_type="gymnasium", num_envs=cfg.num_envs,
            batch_size=cfg.num_envs, num_threads=cfg.num_threads, seed=seed,  # env i gets seed + i
            stack_num=1, frame_skip=cfg.frame_skip, img_height=FRAME_SIZE, img_width=FRAME_SIZE,
            gray_scale=True, use_inter_area_resize=True, repeat_action_probability=cfg.sticky_prob,
            noop_max=max(1, cfg.noop_max),  # 0 segfaults envpool; 1 = exactly one NOOP frame
            use_fire_reset=False, episodic_life=False, reward_clip=False,
            max_episode_steps=cfg.max_episode_steps, full_action_space=cfg.full_action_space,
        )
        self.env = envpool.make(**self.kwargs)
        self.num_actions = int(self.env.action_space.n)

    def reset(self):
        obs, info = self.env.reset()
        return obs[:, -1], info["lives"]

    def step(self, actions):
        obs, reward, _, trunc, info = self.env.step(actions)
        # envpool flags a game over on the capped step as truncated; ALE's game_over is the true terminal.
        game_over = info["terminated"].astype(bool)
        return obs[:, -1], reward.astype(np.float32), game_over, trunc & ~game_over, info["lives"]

    def close(self):
        self.env.close()


class _AleBackend:
    def __init__(self, cfg: EnvConfig, rom: str, seed: int):
        from ale_py.vector_env import AtariVectorEnv

        self.kwargs = dict(
            game=rom, num_envs=cfg.num_envs, num_threads=cfg.num_threads,
            max_num_frames_per_episode=cfg.max_episode_steps * cfg.frame_skip,  # ale-py counts frames
            repeat_action_probability=cfg.sticky_prob, full_action_space=cfg.full_action_space,
            autoreset_mode="NextStep", img_height=FRAME_SIZE, img_width=FRAME_SIZE, grayscale=True,
            stack_num=1, frameskip=cfg.frame_skip, maxpool=True, noop_max=cfg.noop_max,
            episodic_life=False, life_loss_info=False, reward_clipping=False, use_fire_reset=False,
        )
        self.env = AtariVectorEnv(**self.kwargs)
        self.num_actions = int(self.env.single_action_space.n)
        self.seed = seed

    def reset(self):
        # Seed on the first reset only (env i gets seed + i, as envpool does); later resets continue the RNGs.
        obs, info = self.env.reset(seed=self.seed)
        self.seed = None
        return obs[:, -1], info["lives"]

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        return obs[:, -1], reward.astype(np.float32), terminated, truncated, info["lives"]

    def close(self):
        self.env.close()


def _action_meanings(rom: str, full_action_space: bool) -> tuple[str, ...]:
    import ale_py

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.loadROM(ale_py.roms.get_rom_path(rom))
    actions = ale.getLegalActionSet() if full_action_space else ale.getMinimalActionSet()
    return tuple(a.name for a in actions)


# --- the environment the trainer sees ---------------------------------------------------------------------


class AtariVecEnv:
    """N Atari games stepped together; observations (N, 4, 84, 84) uint8, oldest frame first.

    Auto-reset contract (the backends' NEXT_STEP mode, made explicit):

        obs = env.reset()                       # env.reset_mask is all True
        next_obs, reward, terminated, truncated, episodes = env.step(actions)

    - terminated[i]: true game over (all lives lost; losing one life is not a terminal).
      truncated[i]: the episode reached max_episode_steps without a game over. Never both.
      On that step next_obs[i] is the LAST observation of the episode.
    - On the NEXT call, env i is reset instead of stepped: its action is ignored, next_obs[i] is the FIRST
      observation of a new episode ([0, 0, 0, f0]), reward[i] == 0, terminated[i] == truncated[i] == False,
      and env.reset_mask[i] is True. That call is not a transition and adds nothing to episode lengths.
    - env.reset_mask[i] is True exactly when the latest returned obs[i] is the first of an episode (also after
      reset()). A trainer storing frames can use `first = env.reset_mask` read before a step and
      `executed = ~env.reset_mask` read after it.
    - reward is raw float32 (never clipped). `episodes` lists the Episode(env_id, episode_return, length)
      that ended in this call (return = sum of raw rewards, length = agent steps); env.lives holds lives.
    - env.life_lost[i]: this call lost a life without ending the episode. With `terminal_on_life_loss` the
      returned obs[i] then restarts its stack ([0, 0, 0, f], as after a reset) and a trainer treats the step
      as terminal for learning only (Dopamine's Atari-100k runner: the agent's episode restarts, the game not).
    - Every call returns freshly allocated arrays, so keeping a previous obs around is safe.
    """

    def __init__(self, cfg: EnvConfig, backend: _EnvpoolBackend | _AleBackend, backend_name: str, rom: str):
        self.config = cfg
        self.backend = backend_name
        self.game = _rom_to_name(rom)
        self.backend_kwargs = dict(backend.kwargs)  # exactly what the backend was built with, for run metadata
        self.num_envs = cfg.num_envs
        self.num_actions = backend.num_actions
        try:
            meanings = _action_meanings(rom, cfg.full_action_space)
        except Exception:  # meanings are for logs only; never fail construction over them
            meanings = None
        self.action_meanings = meanings if meanings is not None and len(meanings) == self.num_actions else None
        self.observation_shape = (FRAME_STACK, FRAME_SIZE, FRAME_SIZE)
        self._backend = backend
        n = cfg.num_envs
        self._obs: np.ndarray | None = None
        self._ended = np.zeros(n, dtype=bool)  # episode ended on the last call: the backend resets it next
        self._returns = np.zeros(n, dtype=np.float64)
        self._lengths = np.zeros(n, dtype=np.int64)
        self.reset_mask = np.ones(n, dtype=bool)
        self.lives = np.zeros(n, dtype=np.int32)
        self.life_lost = np.zeros(n, dtype=bool)

    def reset(self) -> np.ndarray:
        """Start a new episode in every env (unfinished episodes are dropped, not reported)."""
        frames, lives = self._backend.reset()
        obs = np.zeros((self.num_envs, *self.observation_shape), dtype=np.uint8)
        obs[:, -1] = frames
        self._obs = obs
        self._ended[:] = False
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self.reset_mask = np.ones(self.num_envs, dtype=bool)
        self.lives = np.asarray(lives, dtype=np.int32).copy()
        self.life_lost = np.zeros(self.num_envs, dtype=bool)
        return obs.copy()

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[Episode]]:
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"actions must be {self.num_envs} integers, got shape {actions.shape} {actions.dtype}")
        if actions.min() < 0 or actions.max() >= self.num_actions:  # envpool does not check: out of range is UB
            raise ValueError(f"actions must lie in [0, {self.num_actions}), got {actions.min()}..{actions.max()}")
        frames, reward, terminated, truncated, lives = self._backend.step(actions.astype(np.int32))

        restarted = self._ended  # the backend reset these envs in this call and ignored their actions
        obs = np.empty_like(self._obs)
        obs[:, :-1] = self._obs[:, 1:]
        obs[:, -1] = frames
        obs[restarted, :-1] = 0
        reward = np.where(restarted, np.float32(0), reward).astype(np.float32)
        terminated = np.asarray(terminated, dtype=bool) & ~restarted
        truncated = np.asarray(truncated, dtype=bool) & ~restarted

        # The one place where episodes are scored: raw rewards, ended only by game over or the step cap.
        self._returns += reward
        self._lengths += ~restarted
        ended = terminated | truncated
        episodes = [Episode(int(i), float(self._returns[i]), int(self._lengths[i])) for i in np.flatnonzero(ended)]
        self._returns[ended] = 0.0
        self._lengths[ended] = 0

        lives = np.asarray(lives, dtype=np.int32)
        self.life_lost = ~restarted & ~ended & (lives < self.lives)
        if self.config.terminal_on_life_loss:
            obs[self.life_lost, :-1] = 0
        self._ended = ended
        self.reset_mask = restarted.copy()
        self.lives = lives.copy()
        self._obs = obs
        return obs.copy(), reward, terminated, truncated, episodes

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> AtariVecEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _envpool_import_error() -> Exception | None:
    try:
        import envpool  # noqa: F401
    except Exception as e:  # ImportError, or OSError from its shared library on unsupported platforms
        return e
    return None


def make_env(cfg: EnvConfig, seed: int) -> AtariVecEnv:
    """Build `cfg.num_envs` games; env i is seeded with seed + i."""
    if cfg.num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {cfg.num_envs}")
    if not 0.0 <= cfg.sticky_prob <= 1.0:
        raise ValueError(f"sticky_prob must lie in [0, 1], got {cfg.sticky_prob}")
    if cfg.frame_skip < 1 or cfg.max_episode_steps < 1 or cfg.noop_max < 0:
        raise ValueError(f"need frame_skip >= 1, max_episode_steps >= 1, noop_max >= 0; got {cfg.frame_skip}, "
                         f"{cfg.max_episode_steps}, {cfg.noop_max}")
    if cfg.num_threads < 0:  # envpool aborts the process on a negative count
        raise ValueError(f"num_threads must be >= 0 (0 lets the backend choose), got {cfg.num_threads}")
    if cfg.backend not in ("auto", "envpool", "ale"):
        raise ValueError(f"backend must be 'auto', 'envpool' or 'ale', got {cfg.backend!r}")

    backend = cfg.backend
    if backend in ("auto", "envpool"):
        error = _envpool_import_error()
        if error is None:
            backend = "envpool"
        elif backend == "envpool":
            raise RuntimeError(f"backend='envpool' was requested but envpool cannot be imported ({error!r}); "
                               "install it (pip install envpool, Linux/macOS) or use backend='ale'") from error
        else:
            warnings.warn(f"envpool is not importable ({error!r}); falling back to ale-py's AtariVectorEnv",
                          stacklevel=2)
            backend = "ale"

    rom = _resolve_rom(cfg.game, backend)
    backend_cls = _EnvpoolBackend if backend == "envpool" else _AleBackend
    return AtariVecEnv(cfg, backend_cls(cfg, rom, seed), backend, rom)
