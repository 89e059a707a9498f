"""agents.envs: the Dopamine Atari protocol on both backends, the frame stack and the auto-reset contract.

Every test plays at most a few hundred agent steps with 2 envs; games are picked for what they exercise:
Pong is long and deterministic without sticky actions, Breakout has 5 lives and ends fast under random play,
SpaceInvaders pays 5..30 points per alien.
"""

import sys

import envpool
import numpy as np
import pytest
from ale_py.vector_env import AtariVectorEnv

from agents.envs import FRAME_STACK, EnvConfig, Episode, make_env, resolve_game

BACKENDS = ["envpool", "ale"]


def _env(backend, seed=0, **kw):
    kw.setdefault("num_envs", 2)
    return make_env(EnvConfig(backend=backend, **kw), seed=seed)


def _random_actions(env, steps, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, env.num_actions, size=(steps, env.num_envs))


# --- protocol settings -----------------------------------------------------------------------------------


def test_backends_are_configured_with_the_dopamine_protocol():
    with _env("envpool") as env:
        conf = env._backend.env.config  # what the C++ pool actually runs with
        assert conf["repeat_action_probability"] == pytest.approx(0.25)
        assert conf["frame_skip"] == 4 and conf["img_height"] == conf["img_width"] == 84
        assert conf["gray_scale"] and conf["use_inter_area_resize"]
        assert not conf["episodic_life"] and not conf["reward_clip"] and not conf["use_fire_reset"]
        assert not conf["full_action_space"] and conf["max_episode_steps"] == 27_000
        assert conf["noop_max"] == 1  # envpool's minimum: one NOOP frame (0 segfaults it)
    with _env("ale") as env:
        kw = env.backend_kwargs
        assert kw["repeat_action_probability"] == 0.25 and kw["frameskip"] == 4 and kw["maxpool"]
        assert kw["noop_max"] == 0 and not kw["use_fire_reset"] and not kw["episodic_life"]
        assert not kw["reward_clipping"] and not kw["full_action_space"]
        assert kw["max_num_frames_per_episode"] == 108_000  # ale-py counts frames: 27k agent steps


def test_shapes_dtypes_and_actions_agree_across_backends():
    results = {}
    for backend in BACKENDS:
        with _env(backend, game="Breakout", sticky_prob=0.0) as env:
            obs0 = env.reset()
            obs, reward, terminated, truncated, episodes = env.step(np.ones(2, dtype=np.int64))
            results[backend] = (env, obs0, obs, reward, terminated, truncated)
            assert env.backend == backend and env.game == "Breakout"
            assert obs0.shape == obs.shape == (2, FRAME_STACK, 84, 84) and obs.dtype == np.uint8
            assert reward.shape == (2,) and reward.dtype == np.float32
            assert terminated.dtype == truncated.dtype == np.bool_ and episodes == []
    ep, al = results["envpool"], results["ale"]
    assert ep[0].num_actions == al[0].num_actions == 4
    assert ep[0].action_meanings == al[0].action_meanings == ("NOOP", "FIRE", "RIGHT", "LEFT")
    # Same grayscale + INTER_AREA pipeline: the first frames differ only by envpool's single NOOP frame.
    assert np.abs(ep[1][:, -1].astype(int) - al[1][:, -1]).mean() < 2.0


# --- frame stack ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_stack_is_oldest_first_and_zero_padded(backend):
    """Our stack (built from single frames) against the backend's native stack of 4, same seeds."""
    seed, steps = 7, 12
    if backend == "envpool":
        native = envpool.make("Pong-v5", env_type="gymnasium", num_envs=2, seed=seed, stack_num=4, noop_max=1,
                              use_fire_reset=False, repeat_action_probability=0.25)
        native_obs = [native.reset()[0]]
    else:
        native = AtariVectorEnv("pong", 2, stack_num=4, noop_max=0, use_fire_reset=False, reward_clipping=False,
                                repeat_action_probability=0.25)
        native_obs = [native.reset(seed=seed)[0]]
    with _env(backend, seed=seed) as env:
        ours = [env.reset()]
        for a in _random_actions(env, steps):
            ours.append(env.step(a)[0])
            native_obs.append(native.step(a.astype(np.int32))[0])
    native.close()

    first = ours[0]
    assert (first[:, :-1] == 0).all() and first[:, -1].any()  # [0, 0, 0, f0]
    for t in range(steps + 1):
        assert (ours[t][:, -1] == native_obs[t][:, -1]).all()  # newest frame last, in both
    for t in range(1, steps + 1):  # each step shifts the stack left by one
        assert (ours[t][:, :-1] == ours[t - 1][:, 1:]).all()
    if backend == "ale":  # ale-py pads with zeros too: identical throughout
        assert all((o == n).all() for o, n in zip(ours, native_obs, strict=True))
    else:  # envpool pads with copies of f0; identical once the padding has scrolled out
        assert (native_obs[0] == first[:, -1:]).all()
        assert all((o == n).all() for o, n in zip(ours[FRAME_STACK - 1:], native_obs[FRAME_STACK - 1:], strict=True))


# --- sticky actions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_sticky_actions(backend):
    """Two envs (seeds s, s+1) fed the same actions: Pong is deterministic, so they stay identical only
    without sticky actions. Rebuilding with the same seed reproduces the sticky trajectory exactly."""
    actions = np.random.default_rng(0).integers(0, 6, size=(150, 1)).repeat(2, axis=1)  # Pong: 6 actions

    def play(sticky_prob, seed=0):
        with _env(backend, seed=seed, sticky_prob=sticky_prob) as env:
            return np.stack([env.reset()] + [env.step(a)[0] for a in actions])

    plain = play(0.0)
    assert (plain[:, 0] == plain[:, 1]).all()
    sticky = play(0.25)
    assert (sticky[:, 0] != sticky[:, 1]).any()
    assert (play(0.25) == sticky).all()


# --- episodes, rewards and the reset contract --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_life_loss_is_not_terminal_and_game_over_resets(backend):
    with _env(backend, game="Breakout", seed=1) as env:
        obs = env.reset()
        start_lives = env.lives.copy()
        assert (start_lives == 5).all() and env.reset_mask.all()
        lost_life_without_terminal = False
        rewards = np.zeros(2)
        lengths = np.zeros(2, dtype=int)
        for a in _random_actions(env, 1000, seed=1):
            prev_lives = env.lives.copy()
            obs, reward, terminated, truncated, episodes = env.step(a)
            assert not env.reset_mask.any()
            rewards += reward
            lengths += 1
            lost = (env.lives < prev_lives) & (env.lives > 0)
            lost_life_without_terminal |= bool((lost & ~terminated).any())
            assert not truncated.any()
            if terminated.any():
                break
        else:
            pytest.fail("no game over in 1000 random Breakout steps")
        assert lost_life_without_terminal
        (i,) = np.flatnonzero(terminated)
        assert env.lives[i] == 0
        assert episodes == [Episode(int(i), float(rewards[i]), int(lengths[i]))]
        assert (obs[i, :-1] > 0).any()  # the episode's last observation, not a reset one

        # Next call: env i restarts (action ignored), the other env steps normally.
        obs, reward, terminated, truncated, episodes = env.step(np.ones(2, dtype=np.int64))
        assert env.reset_mask[i] and env.reset_mask.sum() == 1
        assert reward[i] == 0 and not terminated[i] and not truncated[i] and episodes == []
        assert (obs[i, :-1] == 0).all() and obs[i, -1].any() and env.lives[i] == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_rewards_are_raw_game_points(backend):
    with _env(backend, game="SpaceInvaders", seed=2) as env:
        env.reset()
        seen = []
        for a in _random_actions(env, 400, seed=2):
            reward = env.step(a)[1]
            seen.extend(reward[reward != 0].tolist())
            if max(seen, default=0) > 1:
                break
        assert max(seen) > 1  # clipping would cap every reward at 1
        assert all(r % 5 == 0 for r in seen)  # Space Invaders pays 5..30 per alien


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncation_at_the_step_cap(backend):
    cap = 50
    with _env(backend, max_episode_steps=cap, seed=3) as env:
        env.reset()
        truncated_at, restarted_at, finished = [], [], []
        returns = np.zeros(2)
        for call, a in enumerate(_random_actions(env, 2 * cap + 2, seed=3), start=1):
            obs, reward, terminated, truncated, episodes = env.step(a)
            assert not terminated.any()  # a Pong game lasts far longer than 50 steps
            returns += reward
            if truncated.any():
                assert truncated.all()
                truncated_at.append(call)
                assert (obs[:, :-1] > 0).any(axis=(1, 2, 3)).all()  # last obs of the episode, not a reset
                assert episodes == [Episode(i, float(returns[i]), cap) for i in range(2)]
                finished += episodes
                returns[:] = 0
            if env.reset_mask.any():
                assert env.reset_mask.all() and (obs[:, :-1] == 0).all() and (reward == 0).all()
                restarted_at.append(call)
        # One ignored call per restart, so the second episode is truncated at call 2 * cap + 1.
        assert truncated_at == [cap, 2 * cap + 1] and restarted_at == [cap + 1, 2 * cap + 2]
        assert len(finished) == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_game_over_on_the_capped_step_is_a_terminal(backend):
    """Replay a Breakout game with the cap set to its game-over step: still terminated, not truncated."""
    actions = np.random.default_rng(4).integers(0, 4, size=(1000, 2))

    def play(cap):
        with _env(backend, game="Breakout", seed=4, max_episode_steps=cap) as env:
            env.reset()
            for step, a in enumerate(actions, start=1):
                _, _, terminated, truncated, episodes = env.step(a)
                if terminated.any() or truncated.any():
                    return step, terminated, truncated, episodes
        pytest.fail("no episode ended")

    step, terminated, _, episodes = play(27_000)
    i = int(np.flatnonzero(terminated)[0])
    step_capped, terminated_capped, truncated_capped, episodes_capped = play(step)
    assert step_capped == step and terminated_capped[i] and not truncated_capped[i]
    assert [e for e in episodes_capped if e.env_id == i] == [e for e in episodes if e.env_id == i]


# --- names and validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["Pong", "pong", "PONG", "ALE/Pong-v5", "Pong-v5", " pong "])
def test_game_name_forms(backend, name):
    assert resolve_game(name, backend) == "Pong"


def test_game_name_snake_and_camel_case():
    for name in ["space_invaders", "SpaceInvaders", "ALE/SpaceInvaders-v5", "spaceinvaders"]:
        assert resolve_game(name, "envpool") == resolve_game(name, "ale") == "SpaceInvaders"


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_game_suggests_the_nearest(backend):
    with pytest.raises(ValueError, match="'Pong'"):
        resolve_game("Pongg", backend)
    with pytest.raises(ValueError, match="'SpaceInvaders'"):
        make_env(EnvConfig(game="SpaceInvader", backend=backend, num_envs=1), seed=0)
    with pytest.raises(ValueError, match="Unknown Atari game"):
        resolve_game("Zzzzzzzzz", backend)


def test_game_missing_from_envpool_points_to_ale():
    assert resolve_game("Joust", "ale") == "Joust"
    with pytest.raises(ValueError, match="backend='ale'"):
        resolve_game("Joust", "envpool")


@pytest.mark.parametrize("bad", [dict(num_envs=0), dict(sticky_prob=1.5), dict(sticky_prob=-0.1),
                                 dict(frame_skip=0), dict(max_episode_steps=0), dict(noop_max=-1),
                                 dict(backend="gym")])
def test_invalid_config(bad):
    with pytest.raises(ValueError):
        make_env(EnvConfig(**bad), seed=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_actions_and_step_before_reset(backend):
    with _env(backend) as env:
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(2, dtype=np.int64))
        env.reset()
        for bad in [np.zeros(3, dtype=np.int64), np.full(2, 6), np.full(2, -1), np.zeros(2, dtype=np.float32)]:
            with pytest.raises(ValueError):
                env.step(bad)


def test_envpool_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "envpool", None)  # makes `import envpool` raise ImportError
    with pytest.warns(UserWarning, match="falling back"):
        env = make_env(EnvConfig(backend="auto", num_envs=1), seed=0)
    assert env.backend == "ale"
    env.close()
    with pytest.raises(RuntimeError, match="backend='envpool'"):
        make_env(EnvConfig(backend="envpool", num_envs=1), seed=0)


def test_auto_prefers_envpool():
    with make_env(EnvConfig(num_envs=1), seed=0) as env:
        assert env.backend == "envpool"
