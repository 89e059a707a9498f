"""The training loop shared by every agent: act, step the envs, store, learn, prune, log, checkpoint.

    python -m agents.train --preset dqn_impala_w3_gmp95 --env.game Breakout
    python -m agents.train --preset demo                      # a few CPU minutes, writes runs/<name>/
    python -m agents.train --resume runs/<name>  # continue a killed run (as does a command with --run-name)
    python -m agents.train --list-presets

Run directory (read by `agents.report`):
    config.json      resolved config + versions, device, git SHA
    initial_weights.pt  the online network's weights at step 0 (for a lottery ticket: --pruning.fixed-mask)
    iterations.csv   one row per iteration: score = mean raw return of the episodes finished in it (and the
                     evaluation phase's eval_score, eval_episodes with --evaluate)
    episodes.csv     every finished episode (raw return, length)
    metrics.jsonl    losses, epsilon, frames/s, per-layer sparsity, analysis metrics
    grad_covariance.jsonl  with --analysis-every: the gradient covariance matrix at each analysis step
    tb/              the same scalars for TensorBoard
    checkpoints/     ckpt_<agent_steps>.pt, written atomically at iteration ends, and the replay's chunks
    summary.json     written when the run finishes or stops
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import importlib.metadata
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro

import kernels
from agents.augmentation import DrQAugmentation
from agents.checkpoint import (
    CheckpointError,
    CheckpointStore,
    atomic_write_bytes,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_latest_checkpoint,
    remove_temporary_files,
)
from agents.config import (
    PRESETS,
    RUNTIME_FIELDS,
    TrainConfig,
    experiment_fields,
    get_preset,
    help_from_docstrings,
    paper_agent,
)
from agents.cuda_graphs import PhaseGraphs
from agents.envs import make_env, resolve_game
from agents.eval_phase import EvalResult, run_eval_episodes, run_eval_phase
from agents.locks import EXIT_BUSY, RUN_LOCK, run_lock
from agents.networks import use_channels_last
from agents.profiler import (
    Profiler,
    count_flops,
    format_table,
    model_flops_report,
    profile_learner_layers,
    profile_learner_ops,
)
from agents.pruning import FixedMask, MaskedAdam, Pruner, load_lottery_ticket
from agents.replay import Batch, ReplayBuffer
from agents.rigl import RigL

ITERATION_FIELDS = ["iteration", "agent_steps", "frames", "grad_steps", "score", "episodes", "eval_score",
                    "eval_episodes", "fps", "total_sparsity", "wall_time"]  # eval_*: empty without --evaluate
EPISODE_FIELDS = ["agent_steps", "frames", "env_id", "return", "length"]
EVAL_SEED_OFFSET = 104_729  # evaluation envs are seeded apart from the training envs (seed + i, + 7919 k on resume)
AUGMENTATION_SEED_OFFSET = 6_700_417  # the augmentation's generator is seeded apart from the replay's


def make_agent(cfg, num_actions: int):
    """The agent module for cfg.name: its network, action values and loss."""
    if cfg.name == "dqn":
        from agents.dqn import DQN

        return DQN(cfg, num_actions)
    if cfg.name == "rainbow":
        from agents.rainbow import Rainbow

        return Rainbow(cfg, num_actions)
    if cfg.name in ("iqn", "miqn"):
        from agents.iqn import IQN

        return IQN(cfg, num_actions)
    if cfg.name in ("der", "drq_eps"):
        from agents.atari100k import DER, DrQEps

        return (DER if cfg.name == "der" else DrQEps)(cfg, num_actions)
    if cfg.name in ("cql", "cql_c51"):
        from agents.cql import CQL, CQLC51

        return (CQL if cfg.name == "cql" else CQLC51)(cfg, num_actions)
    raise ValueError(f"unknown agent {cfg.name!r}")


def make_replay(cfg: TrainConfig, device: torch.device, num_envs: int, obs_shape) -> ReplayBuffer:
    kwargs = dict(capacity=cfg.replay_capacity, num_envs=num_envs, n_step=cfg.agent.n_step, gamma=cfg.agent.gamma,
                  stack=obs_shape[0], frame_shape=tuple(obs_shape[1:]), device=device, seed=cfg.seed)
    if cfg.agent.replay == "prioritized":
        from agents.replay import PrioritizedReplayBuffer

        return PrioritizedReplayBuffer(**kwargs)
    return ReplayBuffer(**kwargs)


def linearly_decaying_epsilon(step: int, warmup: int, decay: int, final: float) -> float:
    """Dopamine's schedule: 1 during warm-up, then linear decay to `final` over `decay` steps."""
    if decay <= 0:
        return 1.0 if step < warmup else final
    bonus = (1.0 - final) * (decay + warmup - step) / decay
    return final + min(max(bonus, 0.0), 1.0 - final)


def resolve_device(name: str) -> torch.device:
    """The torch device for --device, or a ValueError that says why this machine cannot train on it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"--device {name}: no CUDA device is available ({why}); use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: Apple's MPS backend is not available here; use --device cpu or auto")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: prunerl trains on auto, cpu, cuda[:N] or mps")
    return device


def git_sha() -> str | None:
    """The repository's HEAD commit, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except Exception:
        return None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _json_safe(obj):
    """NaN and infinities as null (a score where no episode ended): strict JSON, which jq and other non-Python
    readers accept."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _write_json(path: Path, obj: dict) -> None:
    text = json.dumps(_json_safe(obj), indent=2, default=str, allow_nan=False)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


class Trainer:
    """One run. `Trainer(cfg, run_dir)` starts fresh; `Trainer.resume(run_dir)` continues from a checkpoint."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, checkpoint: dict | None = None, env=None, eval_env=None):
        """`env` (and `eval_env`, for --evaluate) replace the Atari envs with any object of the `AtariVecEnv`
        interface (tests use a tiny MDP)."""
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.run_lock = contextlib.ExitStack()  # open_run puts the run directory's lock here
        self.device = resolve_device(cfg.device)
        _fast_cpu_math()
        _seed_everything(cfg.seed)
        self.env = env if env is not None else make_env(cfg.env, seed=cfg.seed)
        self.eval_env = eval_env  # built at the first evaluation phase otherwise
        self.num_actions = self.env.num_actions
        obs_shape = tuple(self.env.observation_shape)
        self.agent = make_agent(cfg.agent, self.num_actions)
        self.online = self.agent.build_network(cfg.network, obs_shape).to(self.device)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        run_grad_steps = cfg.min_grad_steps(self.env.num_envs)
        start, end = cfg.pruning.window(cfg.nominal_grad_steps, run_grad_steps)
        self.pruner = self._make_pruner(start, end, fresh=checkpoint is None)
        self.sync_target()  # RigL and a fixed mask start from other weights
        if type(self.pruner) is Pruner:  # the GMP schedule's window
            for note in cfg.pruning.window_warnings(cfg.nominal_grad_steps, run_grad_steps):
                print(f"warning: {note}", file=sys.stderr)
        self.optimizer = MaskedAdam(self.online.parameters(), lr=cfg.agent.lr, eps=cfg.agent.adam_eps,
                                    masks=self.pruner.mask_for() if self.pruner else None,
                                    moments=cfg.pruning.moments, mask_gradients=cfg.pruning.mask_gradients,
                                    weight_decay=cfg.agent.weight_decay)
        if isinstance(self.pruner, RigL):
            self.pruner.optimizer = self.optimizer  # it zeroes the moments of the connections it grows
        replay_device = self.device if cfg.replay_device == "auto" else torch.device("cpu")
        self.replay = self._make_replay(replay_device, obs_shape)
        self.augment = DrQAugmentation(cfg.agent.augmentation_pad, cfg.agent.augmentation_intensity, self.device,
                                       seed=cfg.seed + AUGMENTATION_SEED_OFFSET) if cfg.agent.augmentation else None
        self.plasticity = self._make_plasticity(obs_shape) if cfg.redo.enabled or cfg.reset.enabled else None
        self.action_rng = np.random.default_rng(cfg.seed)
        self._act_obs = torch.zeros((self.env.num_envs, *obs_shape), dtype=torch.uint8, device=self.device)
        self._model_flops: dict | None = None  # (model_flops)
        self.agent_steps = self.grad_steps = self.iteration = 0
        self.stopped_early = False  # by --max-minutes or a stop request
        self.stop_requested: str | None = None  # set by a SIGTERM (see `_stop_on_sigterm`): stop at the next step
        self.resumes, self.resumed_without_replay = 0, False
        self.iteration_returns: list[float] = []  # returns of the episodes finished in the current iteration
        # The newest frame of each env's observation after the last env step: a checkpoint keeps it, so that a
        # resumed run can end the episodes its restarted envs cut off (see `_close_cut_episodes`).
        self.last_frames: np.ndarray | None = None
        self._cut_frames: np.ndarray | None = None  # set by a resume: the frames `_close_cut_episodes` stores
        self.checkpoints = CheckpointStore(self.run_dir / "checkpoints", keep=cfg.keep_checkpoints)
        self.analysis_obs: torch.Tensor | None = None
        self.analysis_batch: Batch | None = None  # transitions of the gradient covariance (Fig. 14)
        self.profiler = Profiler(cfg.profile, self.device)
        # Where the loop's wall time goes, without a synchronisation of its own: host seconds blocked on the envs
        # and on the greedy actions' device-to-host copy, this iteration (see `_loop_split`).
        self.loop_waits = {"env": 0.0, "device": 0.0}
        self.act_forwards = 0  # greedy forwards this launch (an act with every env exploring runs none)
        self.last_loop_split: dict[str, float] | None = None
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
            # The fastest weight-gradient algorithms accumulate with atomics: fast, not reproducible.
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = (cfg.torch_deterministic,
                                                                                  not cfg.torch_deterministic)
        if cfg.channels_last:
            for net in (self.online, self.target):
                use_channels_last(net)
        if cfg.compile:
            for net in (self.online, self.target):
                net.compile()  # in place: parameter names and checkpoints are unchanged
        self.graphs = PhaseGraphs(self._wants_cuda_graphs(), generators=self._generators(),
                                  strict=cfg.cuda_graphs == "on", independent=("act",))
        # Autocast's cast cache must be off under CUDA graph capture (PyTorch's AMP + graphs rule).
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16,
                                       cache_enabled=not self.graphs.enabled)
        if checkpoint is not None:
            self.load_state_dict(checkpoint)
            self.checkpoints.continue_from(checkpoint)
            self.resumes += 1
            self.resumed_without_replay |= checkpoint.get("replay") is None
        self._open_logs(resumed=checkpoint is not None)

    # --- construction helpers ----------------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir: Path, cfg: TrainConfig | None = None, env=None) -> Trainer:
        """Continue the run in run_dir from its last checkpoint, with `cfg` (default: the run's saved config;
        the caller checks that a given one differs only in runtime options); `env` as in `__init__`."""
        run_dir = Path(run_dir)
        cfg = cfg if cfg is not None else read_run_config(run_dir)
        try:
            state = load_latest_checkpoint(run_dir / "checkpoints", config=cfg.to_dict(), set_aside=True)
        except CheckpointError as e:
            raise CheckpointError(f"cannot resume {run_dir}: {e}") from e
        # Envs cannot be snapshotted: they restart, with a seed offset so the trajectories are new ones.
        if env is None:
            env = make_env(cfg.env, seed=cls.resumed_env_seed(cfg, int(state["iteration"])))
        _check_same_env_backend(run_dir, env)
        return cls(cfg, run_dir, checkpoint=state, env=env)

    @staticmethod
    def resumed_env_seed(cfg: TrainConfig, iteration: int) -> int:
        """The training envs' seed after a resume at `iteration`: new trajectories, apart from the first ones."""
        return cfg.seed + 7919 * (iteration + 1)

    def _open_logs(self, resumed: bool) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for directory in (self.run_dir, self.checkpoints.dir):  # left by a process killed while writing
            remove_temporary_files(directory)
        if not resumed:
            meta = {"config": self.cfg.to_dict(), "torch": torch.__version__, "triton": _version("triton"),
                    "device": str(self.device),
                    "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
                    "git_sha": git_sha(), "started": datetime.now(UTC).isoformat(),
                    "num_actions": self.num_actions, "action_meanings": self.env.action_meanings,
                    "env_backend": self.env.backend, "env_backend_kwargs": self.env.backend_kwargs}
            _write_json(self.run_dir / "config.json", meta)
            # the weights the run starts from, for a lottery ticket of it (--pruning.fixed-mask)
            initial = {k: v.detach().cpu() for k, v in self.online.state_dict().items()}
            atomic_write_bytes(self.run_dir / "initial_weights.pt", lambda f: torch.save(initial, f))
        # A resumed run drops the log rows written after its checkpoint, so nothing is counted twice.
        for name, fields in (("iterations.csv", ITERATION_FIELDS), ("episodes.csv", EPISODE_FIELDS)):
            _truncate_csv(self.run_dir / name, fields, self.agent_steps)
        _truncate_jsonl(self.run_dir / "metrics.jsonl", self.agent_steps)
        if (self.run_dir / "grad_covariance.jsonl").exists():
            _truncate_jsonl(self.run_dir / "grad_covariance.jsonl", self.agent_steps)
        self.iterations_csv = open(self.run_dir / "iterations.csv", "a", newline="")
        self.episodes_csv = open(self.run_dir / "episodes.csv", "a", newline="")
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a")
        self.tb = None
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard drops the points at steps >= purge_step: those logged after the checkpoint, as the CSVs do.
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.agent_steps + 1 if resumed else None)

    @property
    def frames(self) -> int:
        """Env frames trained on so far (an offline run trains on none)."""
        return self.agent_steps * self.cfg.env.frame_skip

    def _make_replay(self, device: torch.device, obs_shape: tuple[int, ...]):
        """The replay the learner samples (the offline trainer's is a fixed dataset)."""
        return make_replay(self.cfg, device, self.env.num_envs, obs_shape)

    def _generators(self) -> list[torch.Generator]:
        """The learner step's own random streams (CUDA graphs register them; profiling passes restore them)."""
        return [self.replay.generator] + ([self.augment.generator] if self.augment is not None else [])

    def _make_pruner(self, start: int, end: int, fresh: bool) -> Pruner | None:
        """GMP on its schedule, RigL at a fixed sparsity, a lottery ticket's fixed mask (read from its run only when
        starting: a resumed run has it in its checkpoint), or nothing for a dense run."""
        cfg = self.cfg
        if cfg.pruning.final_sparsity == 0:
            return None
        if cfg.pruning.fixed_mask is not None:
            masks = None
            if fresh:
                initial, masks = load_lottery_ticket(cfg.pruning.fixed_mask, cfg.to_dict())
                try:
                    self.online.load_state_dict(initial)
                except RuntimeError as e:
                    raise ValueError(f"--pruning.fixed-mask: its initial weights do not fit this network: {e}") from e
            return FixedMask(self.online, cfg.pruning, masks).to(self.device)
        if cfg.pruning.method == "rigl":
            # .to(device) as the other pruners: its keep and grow counts are buffers that its mask phase reads on
            # the device. Left on the host, a CUDA-graph capture of that phase froze the counts of the update it
            # was captured at (the 4th) into the graph, so the drop fraction stopped following its cosine decay.
            return RigL(self.online, cfg.pruning, cfg.rigl,
                        round(cfg.rigl.end_fraction * cfg.nominal_grad_steps)).to(self.device)
        return Pruner(self.online, cfg.pruning, start, end).to(self.device)

    def _make_plasticity(self, obs_shape):
        """ReDo / Reset (agents/plasticity.py): re-initialised values come from a network built afresh."""
        from agents.plasticity import Plasticity

        def fresh_network():
            with torch.device(self.device):
                return self.agent.build_network(self.cfg.network, obs_shape)

        return Plasticity(self.cfg.redo, self.cfg.reset, self.cfg.nominal_grad_steps, self.online, self.optimizer,
                          fresh_network, sample_obs=lambda n: self.replay.sample(n).obs.to(self.device),
                          q_fn=self.agent.q_values, after=self.pruner.apply_masks if self.pruner else None)

    def _wants_cuda_graphs(self) -> bool:
        if self.cfg.cuda_graphs == "off":
            return False
        blockers = []
        if self.device.type != "cuda":
            blockers.append(f"the training device is {self.device}")
        elif (backend := kernels.backend_for(self.device)) != "triton":
            blockers.append(f"PRUNERL_KERNELS={backend} selects PyTorch ops, which synchronise with the host")
        if self.replay.device != self.device:
            blockers.append("the replay is not on the training device (use --replay-device auto)")
        if blockers and self.cfg.cuda_graphs == "on":
            raise ValueError(f"--cuda-graphs on needs a CUDA device, the Triton kernels and the replay on the GPU: "
                             f"{'; '.join(blockers)}")
        return not blockers

    # --- acting and learning -----------------------------------------------------------------------------
    def epsilon(self) -> float:
        """Exploration for the next action. Dopamine counts the step being acted before it computes epsilon
        (`training_steps` is incremented in `_train_step`, before `select_action`), hence the + 1."""
        a = self.cfg.agent
        return linearly_decaying_epsilon(self.agent_steps + 1, a.min_replay, a.epsilon_decay_steps, a.epsilon_train)

    def act(self, obs: np.ndarray, epsilon: float) -> np.ndarray:
        n = obs.shape[0]
        explore = self.action_rng.random(n) < epsilon
        actions = self.action_rng.integers(0, self.num_actions, n)
        if not explore.all():
            # Into a buffer at a fixed address, so that under CUDA graphs the forward replays as one launch:
            # eagerly its ~60 kernel launches cost more host time than a small network's whole update.
            if obs.dtype != np.uint8 or obs.shape != self._act_obs.shape:  # copy_ would convert silently
                raise ValueError(f"the env returned {obs.dtype} observations of shape {obs.shape}; expected uint8 "
                                 f"{tuple(self._act_obs.shape)} (num_envs x observation_shape)")
            self._act_obs.copy_(torch.from_numpy(obs), non_blocking=True)
            greedy_t = self.graphs("act", self._greedy_phase)
            self.act_forwards += 1
            start = time.perf_counter()  # the copy waits for the device: the queued updates, then this forward
            greedy = greedy_t.cpu().numpy()
            self.loop_waits["device"] += time.perf_counter() - start
            actions = np.where(explore, actions, greedy)
        return actions

    def _greedy_phase(self) -> torch.Tensor:
        with self.autocast:
            return self.agent.greedy_actions(self.online, self._act_obs)

    def evaluate(self) -> EvalResult:
        """One evaluation phase (`--evaluate`) in its own envs, seeds and random streams: no training state and
        no random stream of training is touched, so training is the same with or without it."""
        cfg = self.cfg
        if self.eval_env is None:  # a fresh seed after a resume, as for the training envs
            env_cfg = dataclasses.replace(cfg.env, num_envs=cfg.eval_num_envs or cfg.env.num_envs)
            self.eval_env = make_env(env_cfg, seed=cfg.seed + EVAL_SEED_OFFSET + 7919 * self.iteration)
        rng = np.random.default_rng([cfg.seed, EVAL_SEED_OFFSET, self.iteration])

        def greedy(obs: np.ndarray) -> np.ndarray:
            with self.autocast:
                return self.agent.greedy_actions(self.online, torch.from_numpy(obs).to(self.device)).cpu().numpy()

        # IQN draws its acting taus from torch's global generator: fork it, seeded for this phase.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(int(rng.integers(2**62)))
            if cfg.eval_episodes:
                return run_eval_episodes(self.eval_env, greedy, cfg.eval_episodes, cfg.eval_epsilon, rng)
            return run_eval_phase(self.eval_env, greedy, cfg.eval_steps, cfg.eval_epsilon, rng)

    def _sample_batch(self) -> Batch:
        batch = self.replay.sample(self.cfg.agent.batch_size)
        if batch.obs.device != self.device:
            batch = Batch(**{k: v.to(self.device, non_blocking=True) for k, v in vars(batch).items()})
        return self.augment(batch) if self.augment is not None else batch

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(importance-weighted mean loss, per-sample loss in fp32, scalars to log)."""
        with self.autocast:
            per_sample, info = self.agent.loss(self.online, self.target, batch)
        per_sample = per_sample.float()
        return (batch.weights * per_sample).mean(), per_sample, info

    def learn(self) -> dict:
        """One gradient update, as phases that `self.graphs` runs eagerly or replays as CUDA graphs."""
        prof, run = self.profiler, self.graphs
        with prof.section("replay_sample"):
            self._batch = run("sample", self._sample_batch)
        with prof.section("learner"):
            self._per_sample, info = run("learner", self._forward_backward_phase)
        mask_step = self.pruner is not None and self.pruner.is_update_step(self.grad_steps)
        if mask_step:
            with prof.section("mask_update"):  # from |w| before this step, as JaxPruner's Adam
                self.pruner.set_keep_counts(self.grad_steps)
                run("mask", self.pruner.select_masks)
        if not (mask_step and self.pruner.replaces_optimizer_step):  # a RigL update is this step's update
            with prof.section("optimizer"):
                run("optimizer", self.optimizer.step)
        if hasattr(self.replay, "update_priorities"):
            with prof.section("replay_priorities"):
                run("priorities", self._priorities_phase)
        if self.plasticity is not None:  # ReDo / Reset, after the update as in the ReDo lab
            with prof.section("plasticity"):
                row = self.plasticity.after_update(self.grad_steps)
            if row:
                self._log(row)
        self.grad_steps += 1
        return info

    def _forward_backward_phase(self) -> tuple[torch.Tensor, dict]:
        loss, per_sample, info = self._loss(self._batch)
        # Under CUDA graphs the gradients keep their addresses (zeroed in place, never freed).
        self.optimizer.zero_grad(set_to_none=not self.graphs.enabled)
        loss.backward()
        return per_sample.detach(), info

    def _priorities_phase(self) -> None:
        self.replay.update_priorities(self._batch.indices, self._per_sample)

    def _forward_backward(self) -> None:
        """One learner forward and backward that changes no training state (for operator profiling)."""
        with self._no_training_side_effects():
            self._loss(self._sample_batch())[0].backward()

    def model_flops(self) -> dict:
        """Matmul and convolution FLOPs (`agents.profiler.count_flops`) of one learner step (the loss's forward
        passes, target network's included, and the backward, on a batch of the run's size) and of one acting
        forward over all envs, and per env frame at the run's replay ratio (the evaluation phase's forwards not
        included; an offline run's "frames" are its updates x frame_skip, as in its profile). Counted on a zero
        batch, eagerly; changes no training state."""
        if self._model_flops is not None:  # (shapes are fixed for a run: counted once)
            return dict(self._model_flops)
        cfg, obs = self.cfg, self._act_obs

        def learner_flops(b: int) -> int:
            zeros = torch.zeros(b, device=self.device)
            states = obs[:1].expand(b, *obs.shape[1:]).clone()
            batch = Batch(obs=states, actions=zeros.long(), returns=zeros, discounts=torch.ones_like(zeros),
                          next_obs=states.clone(), weights=torch.ones_like(zeros),
                          indices=torch.arange(b, device=self.device))
            return count_flops(lambda: self._loss(batch)[0].backward())

        def act_flops(n: int) -> int:
            states = obs[:1].expand(n, *obs.shape[1:]).clone()
            with torch.no_grad(), self.autocast:
                return count_flops(lambda: self.agent.greedy_actions(self.online, states))

        with self._no_training_side_effects():
            learner = _at_batch(learner_flops, cfg.agent.batch_size)
            act = _at_batch(act_flops, obs.shape[0])
        # An offline run's agent steps are its updates, and it acts only in its evaluation phase.
        per_agent_step = learner * cfg.replay_ratio + (0 if cfg.offline.enabled else act / obs.shape[0])
        self._model_flops = {"learner_flops": learner, "act_flops": act, "batch_size": cfg.agent.batch_size,
                             "num_envs": obs.shape[0], "replay_ratio": cfg.replay_ratio,
                             "flops_per_frame": round(per_agent_step / cfg.env.frame_skip)}
        return dict(self._model_flops)

    def _model_flops_or_none(self) -> dict | None:
        """`model_flops()`, or None with a warning: a failed count must not cost the run its summary or profile."""
        try:
            return self.model_flops()
        except Exception as e:  # noqa: BLE001 (any failure: what the run wrote matters more)
            print(f"warning: could not count the model's FLOPs ({type(e).__name__}: {e})", file=sys.stderr)
            return None

    def _profile_layers(self) -> list[dict]:
        """Per-layer forward / backward times on a replay batch, in the run's precision (its autocast: a --bf16
        run's layers are timed in bf16); changes no training state."""
        with self._no_training_side_effects(), self.autocast:
            obs = self._sample_batch().obs
            return profile_learner_layers(self.online, lambda x: self.agent.q_values(self.online, x), obs)

    @contextlib.contextmanager
    def _no_training_side_effects(self):
        """Undo what profiling inside does to training state: replay and torch random draws, gradients."""
        generator_states = [g.get_state() for g in self._generators()]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            yield
        for g, state in zip(self._generators(), generator_states):
            g.set_state(state)
        self.online.zero_grad(set_to_none=not self.graphs.enabled)

    def sync_target(self) -> None:
        with torch.no_grad():  # one launch on CUDA (DrQ(eps) syncs after every update)
            torch._foreach_copy_(list(self.target.parameters()), list(self.online.parameters()))

    # --- the loop ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, env, prof = self.cfg, self.env, self.profiler
        obs = env.reset()
        pending_reset = np.zeros(env.num_envs, dtype=bool)
        self._close_cut_episodes()
        overlap = cfg.overlap_env == "on" or (cfg.overlap_env == "auto" and self.device.type == "cuda")
        self._env_pool = ThreadPoolExecutor(max_workers=1) if overlap else None
        log_next = (self.agent_steps // cfg.log_every + 1) * cfg.log_every
        iter_end = (self.iteration + 1) * cfg.iteration_steps
        iter_returns = self.iteration_returns  # an iteration interrupted by --max-minutes goes on after resume
        iter_start_time, iter_start_steps = time.perf_counter(), self.agent_steps
        run_start, run_start_steps = time.perf_counter(), self.agent_steps
        self.launch_start_steps = run_start_steps  # a resumed run's profile counts this launch's frames only
        last_log_time, last_log_steps = run_start, run_start_steps
        sums: dict[str, float] = {}
        count = 0
        bar = _progress_bar(cfg, self.agent_steps)
        deadline = run_start + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
        try:
            while self.agent_steps < cfg.total_steps:
                epsilon = self.epsilon()
                first = env.reset_mask.copy()
                if cfg.env.terminal_on_life_loss:  # the agent's episode restarts after a lost life
                    first |= env.life_lost
                executed = ~pending_reset  # an env whose episode just ended ignores this action and resets
                with prof.section("act"):
                    actions = self.act(obs, epsilon)
                with prof.section("replay_add", first_half=True):  # the outcome's add below completes it
                    self.replay.add_observation(obs[:, -1], actions, first, executed)
                # The envs step while the learner runs: learning never reads the newest step's outcome.
                with prof.section("env", first_half=True):  # the wait for the result below completes it
                    pool, start = self._env_pool, time.perf_counter()
                    stepping = pool.submit(env.step, actions) if pool is not None else _Done(env.step(actions))
                    self.loop_waits["env"] += time.perf_counter() - start
                steps_before, new_steps = self.agent_steps, int(executed.sum())
                self.agent_steps += new_steps

                # ALGO LOGIC: learn once the warm-up is over, at `replay_ratio` updates per agent step. With one
                # env this is Dopamine's _train_step for the next agent step (after storing this step's
                # observation, before acting on the next): the same updates, target syncs and replay contents.
                if self.replay.transitions_added > cfg.agent.min_replay and self.replay.can_sample():
                    # Dopamine syncs the target after the update of every period-th agent step. A vector step's
                    # updates are split at those steps, so a period shorter than a vector step (DrQ(eps)'s 1,
                    # with 8 envs) still syncs after each update, not once per vector step.
                    period = cfg.agent.target_update_period
                    first = max(steps_before, cfg.agent.min_replay)  # Dopamine: only once add_count > min_replay
                    syncs = range((first // period + 1) * period, self.agent_steps + 1, period)
                    learned_to = steps_before
                    for i, end in enumerate([*syncs, self.agent_steps]):
                        for _ in range(cfg.updates_due(learned_to, end)):
                            info = self.learn()
                            for k, v in info.items():
                                sums[k] = sums.get(k, 0.0) + v  # device tensors: no sync until logged
                            count += 1
                            if cfg.analysis_every and self.grad_steps % cfg.analysis_every == 0:
                                self._log_analysis()
                        if i < len(syncs):
                            with prof.section("target_sync"):
                                self.sync_target()
                        learned_to = end

                with prof.section("env"):
                    start = time.perf_counter()
                    obs, reward, terminated, truncated, episodes = stepping.result()
                    self.last_frames = obs[:, -1]
                    self.loop_waits["env"] += time.perf_counter() - start
                if not np.array_equal(executed, ~env.reset_mask):
                    raise RuntimeError("env auto-reset out of step with the trainer's bookkeeping")
                with prof.section("replay_add"):
                    self.replay.add_outcome(reward, terminated | env.life_lost if cfg.env.terminal_on_life_loss
                                            else terminated)
                pending_reset = terminated | truncated
                for ep in episodes:
                    iter_returns.append(ep.episode_return)
                    self.episodes_csv.write(f"{self.agent_steps},{self.agent_steps * cfg.env.frame_skip},"
                                            f"{ep.env_id},{ep.episode_return},{ep.length}\n")

                # TRY NOT TO MODIFY: logging, iteration scores and checkpoints.
                # (and a last row at the end: a run shorter than --log-every still logs its sparsity and losses)
                if self.agent_steps >= log_next or (self.agent_steps >= cfg.total_steps
                                                    and self.agent_steps > last_log_steps):
                    log_next = (self.agent_steps // cfg.log_every + 1) * cfg.log_every
                    now = time.perf_counter()
                    sps = (self.agent_steps - run_start_steps) / max(now - run_start, 1e-9)
                    # Since the previous row: what a sweep's ETA needs (`sps` counts the fast warm-up for long).
                    recent_sps = (self.agent_steps - last_log_steps) / max(now - last_log_time, 1e-9)
                    last_log_time, last_log_steps = now, self.agent_steps
                    with prof.section("logging"):
                        self._log_training(sums, count, epsilon, sps, recent_sps)
                    sums, count = {}, 0
                if self.agent_steps >= iter_end or self.agent_steps >= cfg.total_steps:
                    elapsed = time.perf_counter() - iter_start_time
                    fps = (self.agent_steps - iter_start_steps) * cfg.env.frame_skip / max(elapsed, 1e-9)
                    self._log_loop_split(elapsed)
                    score = float(np.mean(iter_returns)) if iter_returns else float("nan")
                    evaluation = None
                    if cfg.evaluate:
                        with prof.section("evaluation"):
                            evaluation = self.evaluate()
                    with prof.section("checkpoint"):
                        sparsity = self._end_iteration(score, len(iter_returns), fps, evaluation)
                    bar.set_postfix(iter=self.iteration, score=_fmt_score(score), fps=f"{fps:.0f}",
                                    sparsity=f"{sparsity:.3f}")
                    iter_returns = self.iteration_returns = []
                    iter_start_time, iter_start_steps = time.perf_counter(), self.agent_steps
                    iter_end = (self.iteration + 1) * cfg.iteration_steps
                bar.update(self.agent_steps - steps_before)
                if self._out_of_time(deadline, "agent step"):
                    break
        finally:
            bar.close()
            self._flush()
            if self._env_pool is not None:
                self._env_pool.shutdown(wait=True)
        if cfg.profile:
            self._write_profile()
        return self._finish()

    def _close_cut_episodes(self) -> None:
        """After a resume, store one auto-reset row (not executed) holding each env's observation after the
        checkpoint's last step, as the envs' own auto-reset would have: the episodes in progress at the checkpoint
        end there as truncated ones. Without it the last transition of each cut episode was followed in the replay
        by the first observation of the restarted env's new episode, so its n-step return and bootstrap state ran
        into another episode."""
        frames, self._cut_frames = self._cut_frames, None
        if frames is None or self.replay.t == 0:
            return
        n = self.env.num_envs
        none = np.zeros(n, dtype=bool)
        self.replay.add_observation(frames, np.zeros(n, dtype=np.int64), none, none)
        self.replay.add_outcome(np.zeros(n, dtype=np.float32), none)

    def _out_of_time(self, deadline: float, unit: str) -> bool:
        """--max-minutes past `deadline` (perf_counter), or a stop request (SIGTERM), with steps left: checkpoint
        and say how to go on; True means stop. `unit` names what agent_steps counts (agent steps; updates for an
        offline run)."""
        if (time.perf_counter() < deadline and not self.stop_requested) or self.agent_steps >= self.cfg.total_steps:
            return False
        self.stopped_early = True
        self._flush()  # the logs first (as at an iteration's end): a resume keeps the rows up to the checkpoint
        with self.profiler.section("checkpoint"):
            self.save()
        why = self.stop_requested or f"--max-minutes {self.cfg.max_minutes:g}"
        print(f"stopping after {why} at {unit} {self.agent_steps:,}, with a checkpoint; continue with --resume "
              f"{self.run_dir}", file=sys.stderr if self.stop_requested else sys.stdout)
        return True

    def _write_profile(self) -> None:
        report = self.profiler.report(frames=(self.agent_steps - self.launch_start_steps) * self.cfg.env.frame_skip)
        report["sparsity"] = self._measured_sparsity()
        report["device"] = str(self.device)
        # what else the numbers depend on (a resumed launch may run other code than config.json's)
        report.update(git_sha=git_sha(), date=datetime.now(UTC).isoformat(timespec="seconds"),
                      torch=torch.__version__, triton=_version("triton"))
        cfg = self.cfg  # what the numbers depend on besides the network: compared runs should agree on it
        report["precision"] = ("bf16" if cfg.bf16 else "tf32" if cfg.tf32 else "fp32") + (
            ", channels-last" if cfg.channels_last else "")
        flops = self._model_flops_or_none()
        if flops is not None:
            report["model_flops"] = model_flops_report(flops, report["components"], report["wall_seconds"],
                                                       forwards=self.act_forwards)
        if self.replay.can_sample():
            report["learner_ops"] = profile_learner_ops(self._forward_backward)
            report["learner_layers"] = self._profile_layers()
        _write_json(self.run_dir / "profile.json", report)
        print(format_table(report))

    def _end_iteration(self, score: float, episodes: int, fps: float, evaluation: EvalResult | None = None) -> float:
        """Log the iteration's row, checkpoint on schedule; returns the measured total sparsity."""
        self.iteration += 1
        row = {"iteration": self.iteration, "agent_steps": self.agent_steps,
               "frames": self.frames, "grad_steps": self.grad_steps, "score": score,
               "episodes": episodes, "eval_score": evaluation.score if evaluation else None,
               "eval_episodes": evaluation.episodes if evaluation else None, "fps": round(fps, 1),
               "total_sparsity": self._measured_sparsity(), "wall_time": round(time.time(), 3)}
        csv.DictWriter(self.iterations_csv, ITERATION_FIELDS).writerow(row)
        self._flush()
        if self.tb is not None:
            self.tb.add_scalar("charts/iteration_score", score, self.agent_steps)
        if evaluation is not None:
            self._log({"charts/eval_score": evaluation.score, "charts/eval_episodes": evaluation.episodes,
                       "charts/eval_steps": evaluation.steps})
        # The iteration is over: its episodes must not count in the next one's score after a resume from here.
        self.iteration_returns = []
        if self.iteration % self.cfg.checkpoint_every == 0 or self.agent_steps >= self.cfg.total_steps:
            self.save()
        return row["total_sparsity"]

    def _finish(self) -> dict:
        rows = read_iterations(self.run_dir / "iterations.csv")
        flops = self._model_flops_or_none()  # (for agents.report's model TFLOP/s)
        summary = {"finished": not self.stopped_early, "agent_steps": self.agent_steps,
                   "frames": self.frames, "grad_steps": self.grad_steps,
                   "iterations": self.iteration, "final_score": float(rows[-1]["score"]) if rows else None,
                   "final_eval_score": float(rows[-1]["eval_score"]) if rows and rows[-1].get("eval_score") else None,
                   "total_sparsity": 0.0, "resumed": self.resumes,
                   "resumed_without_replay": self.resumed_without_replay,
                   # What actually ran: a run that fell back from the kernels or graphs it was meant to use says so.
                   "kernels": kernels.backend_for(self.device), "cuda_graphs": self.graphs.captured,
                   "last_loop_split": self.last_loop_split,
                   # whether its speed can be compared: its and other processes' use of the CPUs during this launch
                   "cpu_use": self.profiler.host(),
                   "model_flops_per_frame": None if flops is None else flops["flops_per_frame"]}
        if self.pruner is not None:
            summary.update(self.pruner.sparsity_report())
            summary["total_sparsity"] = summary["sparsity/total"]
        summary.update(self._sparsity_verdict(summary.get("sparsity/prunable", 0.0)))
        if summary.get("schedule_short_of_target"):
            print(f"warning: the run finished at prunable sparsity {summary['sparsity/prunable']:.3f}: its pruning "
                  f"schedule ends at {summary['scheduled_sparsity']:.3f}, short of its final sparsity "
                  f"{summary['target_sparsity']:g} (summary.json flags it; agents.report leaves it out of the "
                  "aggregates)", file=sys.stderr)
        _write_json(self.run_dir / "summary.json", summary)
        self.close()
        return summary

    def close(self) -> None:
        for f in (self.iterations_csv, self.episodes_csv, self.metrics_file):
            f.close()
        self.run_lock.close()  # (open_run's lock on the run directory, if it took one)
        if self.tb is not None:
            self.tb.close()
        self.env.close()
        if self.eval_env is not None:
            self.eval_env.close()

    # --- logging helpers -------------------------------------------------------------------------------------
    def _sparsity_verdict(self, measured: float) -> dict:
        """`target_sparsity` (the configured final sparsity of the prunable weights) and whether the measured one
        ended below what the schedule calls for after the agent steps done. That uses the gradient steps an
        uninterrupted run takes by then, so a run stopped inside or before its window is not below target, while
        one that lost gradient steps (resumed without its replay) or masks is."""
        cfg = self.cfg
        verdict = {"target_sparsity": cfg.pruning.final_sparsity, "below_target_sparsity": False}
        if self.pruner is not None:
            expected = cfg.min_grad_steps(self.env.num_envs, self.agent_steps)
            verdict["scheduled_sparsity"] = self.pruner.scheduled_sparsity(expected)
            verdict["below_target_sparsity"] = measured < verdict["scheduled_sparsity"]
            # A finished run whose own schedule stopped short of where the whole schedule ends (a window set
            # beyond the run): not the experiment its config names, though it followed its schedule.
            whole_schedule = self.pruner.scheduled_sparsity(sys.maxsize)  # the final keep counts, rounded
            verdict["schedule_short_of_target"] = (not self.stopped_early
                                                   and verdict["scheduled_sparsity"] < whole_schedule)
        return verdict

    def _measured_sparsity(self) -> float:
        return self.pruner.sparsity_report()["sparsity/total"] if self.pruner is not None else 0.0

    def _log_training(self, sums: dict, count: int, epsilon: float, sps: float, recent_sps: float) -> None:
        """Means of the learner's scalars since the last row, exploration, speed (agent steps and frames per
        second since this launch started, and frames per second since the previous row) and sparsity."""
        self._log({**self._learner_row(sums, count), "charts/epsilon": epsilon, "charts/SPS": sps,
                   "charts/FPS": sps * self.cfg.env.frame_skip,
                   "charts/FPS_recent": recent_sps * self.cfg.env.frame_skip})

    def _learner_row(self, sums: dict, count: int) -> dict:
        """Means of the learner's scalars over `count` updates, and the measured and scheduled sparsity."""
        row = {k: float(v) / count for k, v in sums.items()} if count else {}
        if self.pruner is not None:
            row.update(self.pruner.sparsity_report())
            row["sparsity/target"] = self.pruner.scheduled_sparsity(self.grad_steps)
        return row

    def _log_loop_split(self, elapsed: float) -> None:
        """The iteration's wall time (evaluation excluded) as fractions: `env_wait` (the host blocked on the envs:
        their stepping where the learner did not hide it), `device_wait` (blocked on the greedy actions'
        device-to-host copy, i.e. on the updates queued before them and the acting forward: GPU-bound time) and
        `host` (the rest: Python, launches, replay adds, logging, checkpoints). Measured with no synchronisation
        beyond the loop's own, so every run has it; `--profile` splits the time finer, synchronised."""
        elapsed = max(elapsed, 1e-9)
        split = {f"{k}_wait": min(v / elapsed, 1.0) for k, v in self.loop_waits.items()}
        split["host"] = max(0.0, 1.0 - sum(split.values()))
        self.last_loop_split = split
        self.loop_waits = dict.fromkeys(self.loop_waits, 0.0)
        self._log({f"speed/{k}": round(v, 4) for k, v in split.items()})

    def _log(self, row: dict) -> None:
        row = {"agent_steps": self.agent_steps, "frames": self.frames,
               "grad_steps": self.grad_steps, **row}
        self.metrics_file.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if "/" in k:
                    self.tb.add_scalar(k, v, self.agent_steps)
        self._flush()

    def _log_analysis(self) -> None:
        from agents.metrics import analysis_metrics

        if self.analysis_obs is None:  # one fixed batch of replay states for the whole run
            self.analysis_obs = self._sample_aside(256).obs.to(self.device)
        self.online.eval()
        with torch.no_grad():
            row = analysis_metrics(self.online, self.analysis_obs, q_fn=self.agent.q_values)
        self.online.train()
        if self.cfg.analysis_grad_samples:
            row.update(self._log_gradient_covariance())
        self._log(row)

    def _sample_aside(self, n: int) -> Batch:
        """A replay sample for the analysis that leaves the replay's random stream where it was: a run with
        --analysis-every trains exactly as the same run without it."""
        state = self.replay.generator.get_state()
        batch = self.replay.sample(n)
        self.replay.generator.set_state(state)
        return batch

    def _log_gradient_covariance(self) -> dict:
        """Fig. 14: the normalised covariance of per-sample TD-loss gradients on a fixed batch of transitions,
        over the network's active weights; the matrix goes to grad_covariance.jsonl, two summaries to the log."""
        from agents.metrics import covariance_summary, gradient_covariance, per_sample_gradients

        k = self.cfg.analysis_grad_samples
        if self.analysis_batch is None or len(self.analysis_batch.actions) != k:
            self.analysis_batch = Batch(**{f: v.to(self.device) for f, v in vars(self._sample_aside(k)).items()})
        b = self.analysis_batch
        params = [p for p in self.online.parameters() if p.requires_grad]
        masks = self.pruner.mask_for() if self.pruner is not None else {}

        def loss_of(i: int) -> torch.Tensor:
            one = Batch(**{f: v[i:i + 1] for f, v in vars(b).items()})
            with self.autocast:
                per_sample, _ = self.agent.loss(self.online, self.target, one)
            return per_sample.float().sum()

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.seed)  # IQN's taus: the same draws at every analysis step
            grads = per_sample_gradients(loss_of, params, k, [masks.get(p) for p in params])
        cov = gradient_covariance(grads)
        del grads
        line = {"agent_steps": self.agent_steps, "frames": self.agent_steps * self.cfg.env.frame_skip,
                "grad_steps": self.grad_steps, "matrix": [[round(x, 5) for x in r] for r in cov.tolist()]}
        with open(self.run_dir / "grad_covariance.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        return covariance_summary(cov)

    def _flush(self) -> None:
        for f in (self.iterations_csv, self.episodes_csv, self.metrics_file):
            try:
                f.flush()
            except OSError as e:  # e.g. a full disk: name the log (the flush's own error names no file)
                raise OSError(e.errno, e.strerror, f.name) from e

    # --- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self, with_replay: bool) -> dict:
        state = {"config": self.cfg.to_dict(), "agent_steps": self.agent_steps, "grad_steps": self.grad_steps,
                 "iteration": self.iteration, "online": self.online.state_dict(),
                 "target": self.target.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "pruner": self.pruner.state_dict() if self.pruner is not None else None,
                 "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                         "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                         "action": self.action_rng.bit_generator.state,
                         "replay": self.replay.generator.get_state(),
                         "augment": self.augment.generator.get_state() if self.augment is not None else None},
                 "analysis_obs": self.analysis_obs, "iteration_returns": list(self.iteration_returns),
                 "last_frames": None if self.last_frames is None else torch.from_numpy(self.last_frames.copy()),
                 "resumes": self.resumes,
                 "resumed_without_replay": self.resumed_without_replay,
                 "analysis_batch": vars(self.analysis_batch) if self.analysis_batch is not None else None}
        if with_replay:
            state["replay"] = self.replay.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        try:
            self.online.load_state_dict(state["online"])
            self.target.load_state_dict(state["target"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.pruner is not None:
                self.pruner.load_state_dict(state["pruner"])
            self.agent_steps, self.grad_steps = int(state["agent_steps"]), int(state["grad_steps"])
            self.iteration = int(state["iteration"])
            rng = state["rng"]
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self.action_rng.bit_generator.state = rng["action"]
            if self.augment is not None:
                self.augment.generator.set_state(rng["augment"])
            if state.get("last_frames") is not None:  # (a checkpoint written before it was kept has none)
                self.last_frames = state["last_frames"].numpy().copy()
            if state.get("replay") is not None:
                self.replay.load_state_dict(state["replay"])
                self._cut_frames = self.last_frames  # the replay's episodes in progress end at these frames
            else:  # an empty replay: min_replay steps are collected again before learning resumes
                self.replay.generator.set_state(rng["replay"])
            if state.get("analysis_obs") is not None:
                self.analysis_obs = state["analysis_obs"].to(self.device)
            self.resumes, self.resumed_without_replay = int(state["resumes"]), bool(state["resumed_without_replay"])
            self.iteration_returns = [float(r) for r in state["iteration_returns"]]
            if state.get("analysis_batch") is not None:
                self.analysis_batch = Batch(**{f: v.to(self.device) for f, v in state["analysis_batch"].items()})
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint does not match this run's model or state: {e}") from e

    def save(self) -> Path:
        """Checkpoint; the replay's rows are added incrementally (only those since the last checkpoint)."""
        return self.checkpoints.save(self.agent_steps, self.state_dict(with_replay=False),
                                     replay=self.replay if self.cfg.save_replay else None)


# ---------------------------------------------------------------------------------------------------------------
class _Done:
    """An already computed result with the interface of a Future (the env step when nothing overlaps)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _fast_cpu_math() -> None:
    """Flush denormals to zero on the CPU, as GPUs' fast paths do. Near convergence Adam's second moments
    (squared tiny gradients) fall into the denormal range, and x86 then runs 10x or more slower."""
    torch.set_flush_denormal(True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _progress_bar(cfg: TrainConfig, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.total_steps, initial=initial, unit="step", unit_scale=True, dynamic_ncols=True,
                disable=not cfg.progress, desc=cfg.preset or cfg.agent.name, smoothing=0.05)


def _complete_lines(path: Path) -> list[str]:
    """A log's lines without a last one cut short (no newline: the process was killed, or the disk filled, while
    writing it). Such a line comes after the last checkpoint, which is written only once the logs are flushed."""
    text = path.read_text() if path.exists() else ""
    return text[:text.rfind("\n") + 1].splitlines(keepends=True)


def _rows_upto(path: Path, lines: list[str], max_steps: int, step_of) -> list:
    """The rows of `lines` whose step_of(row) <= max_steps; a malformed row is an error naming the file."""
    try:
        return [row for row in lines if step_of(row) <= max_steps]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot resume: {path} holds a malformed row ({type(e).__name__}: {e}); "
                         "fix or remove that line") from e


def _truncate_csv(path: Path, fields: list[str], max_steps: int) -> None:
    """Keep the header and the rows with agent_steps <= max_steps (all rows when starting fresh: none)."""
    rows = _rows_upto(path, list(csv.DictReader(_complete_lines(path))), max_steps,
                      lambda r: int(float(r["agent_steps"])))
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fields)
    writer.writeheader()
    writer.writerows(rows)
    # Rewritten into a new file and renamed: a kill (or a full disk) while rewriting keeps the old log whole.
    atomic_write_bytes(path, lambda f: f.write(out.getvalue().encode()))


def _truncate_jsonl(path: Path, max_steps: int) -> None:
    lines = _rows_upto(path, [ln for ln in _complete_lines(path) if ln.strip()], max_steps,
                       lambda ln: json.loads(ln)["agent_steps"])
    atomic_write_bytes(path, lambda f: f.write("".join(lines).encode()))


def read_iterations(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt_score(score: float | None) -> str:
    return "none (no episode ended)" if score is None or math.isnan(score) else f"{score:.2f}"


def default_run_name(cfg: TrainConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.env.game}__{cfg.preset or cfg.agent.name}__s{cfg.seed}__{stamp}"


# Files a run writes into its directory; starting afresh in a directory without a checkpoint removes them.
RUN_OUTPUTS = ("config.json", "initial_weights.pt", "iterations.csv", "episodes.csv", "metrics.jsonl",
               "grad_covariance.jsonl", "summary.json", "profile.json", "tb", "checkpoints")

DESCRIPTION = """Train a (pruned) value-based agent on Atari. --preset NAME selects the configuration (the paper's
hyperparameters for one agent, network and sparsity; --list-presets shows them all); every option below
overrides one field of it.

Re-running the same command resumes the run if it names it (--run-name; the default name holds the start time):
when the run directory (--runs-dir/--run-name) already holds a
run of the same experiment, it continues from the last checkpoint, says 'already finished' (exit 0) if the
run is done, or starts afresh if the run was killed before its first checkpoint. A run of a different
experiment there is an error. --resume RUN_DIR continues the run in RUN_DIR and accepts the options that do
not change what it learns (--max-minutes, --progress, --device, the speed options, ...). Usage errors exit
with code 2."""


def _cli(default: TrainConfig):
    """The command line as one function for tyro: the config's fields, plus the options the pre-parser reads."""

    def cli(config: Annotated[TrainConfig, tyro.conf.arg(name="")] = default, resume: Path | None = None,
            list_presets: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False) -> TrainConfig:
        """The command line of agents.train.

        Args:
            resume: Continue the run in this directory from its last checkpoint; takes runtime options only.
            list_presets: Print every preset's name, agent, network and sparsity, then exit.
        """
        return config

    return cli


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def experiment_differences(saved: TrainConfig, cfg: TrainConfig) -> list[str]:
    """'--agent.lr (6.25e-05 in the run, 0.001 now)' for every experiment field in which the configs differ."""
    a, b = experiment_fields(saved.to_dict()), experiment_fields(cfg.to_dict())
    return [f"{_flag(k)} ({a.get(k)!r} in the run, {b.get(k)!r} now)" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]


def read_run_config(run_dir: Path, purpose: str = "resume") -> TrainConfig:
    """The config a run directory was started with (its config.json); errors say what could not be done
    (`purpose`: "resume", "export", ...)."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        what = "not a directory" if Path(run_dir).exists() else "no such directory"
        raise CheckpointError(f"cannot {purpose} {run_dir}: {what}")
    if not path.is_file():
        raise CheckpointError(f"cannot {purpose} {run_dir}: it has no config.json (is it a run directory?)")
    try:
        cfg = TrainConfig.from_dict(json.loads(path.read_text())["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot read the config of {run_dir} from {path}: {e}") from e
    unread = cfg.unread_options()
    key = (str(Path(run_dir).resolve()), unread)
    if unread and key not in _warned_unread:  # started before agents.train refused such options: it continues
        _warned_unread.add(key)               # as it was configured (said once: a command reads config.json twice)
        warnings.warn(f"{run_dir}: {unread}; the run was started with it and continues so", stacklevel=2)
    return cfg


def _check_same_env_backend(run_dir: Path, env) -> None:
    """A resume must step the backend the run started on: `env.backend = auto` falls back from envpool to ale-py
    where envpool is not importable, and the two start episodes differently (envpool plays a no-op frame at
    reset), so a run resumed on a machine without envpool would silently train on another environment."""
    try:
        started_on = json.loads((Path(run_dir) / "config.json").read_text()).get("env_backend")
    except (OSError, ValueError, AttributeError):
        return  # (read_run_config has already read it; a run saved before the backend was recorded has none)
    if started_on is not None and started_on != env.backend:
        env.close()
        raise CheckpointError(f"cannot resume {run_dir}: it started on the {started_on} env backend and would go on "
                              f"with {env.backend} (resolved from --env.backend here); install {started_on} on this "
                              "machine, or resume where the run started")


_warned_unread: set[tuple[str, str]] = set()  # (run directory, unread options) already warned of in this process


def run_finished(run_dir: Path) -> bool:
    path = Path(run_dir) / "summary.json"
    try:
        return path.is_file() and json.loads(path.read_text()).get("finished") is True
    except (json.JSONDecodeError, AttributeError):
        return False


class UsageError(ValueError):
    """A bad command line or config: printed without a traceback, exit code 2."""


class RunBusy(RuntimeError):
    """Another process trains the run right now: exit code EXIT_BUSY (a sweep counts it as busy, not failed)."""


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Path | None]:
    """(config, None) for the run in runs_dir/run_name, or (config, run_dir) for --resume RUN_DIR, where the
    config is the run's saved one with the runtime options given on the command line."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--resume", type=Path, default=None)
    pre.add_argument("--list-presets", action="store_true")
    known, rest = pre.parse_known_args(argv)
    if known.list_presets:
        for name, p in PRESETS.items():
            print(f"{name:28s} {p.agent.name:8s} {p.network.arch}x{p.network.width}  "
                  f"sparsity {p.pruning.final_sparsity}")
        sys.exit(0)
    saved = read_run_config(known.resume) if known.resume is not None else None
    if saved is not None and known.preset and known.preset != saved.preset:
        origin = f"from preset {saved.preset!r}" if saved.preset else "with no preset"
        raise UsageError(f"--resume continues the run as it was configured, {origin}; drop --preset {known.preset}")
    default = saved or (get_preset(known.preset) if known.preset else TrainConfig())
    help_from_docstrings(TrainConfig)
    cfg = tyro.cli(_cli(default), args=rest, description=DESCRIPTION, prog="python -m agents.train")
    if saved is None:
        name = cfg.run_name
        if name is not None and (not name.strip() or name in (".", "..") or "/" in name or os.sep in name):
            # "" fell back to a new timestamped name (a requeued job started a new run each time instead of
            # resuming), "." made --runs-dir itself the run directory, a path put the run outside --runs-dir
            raise UsageError(f"--run-name must name one directory inside --runs-dir, got {name!r}")
        unread = cfg.unread_options()
        if unread:  # the run would not do what its config says
            raise UsageError(f"{unread}: drop the option(s), or choose an agent or method that reads them (a run "
                             "started with such an option before this check continues with --resume RUN_DIR)")
        note = agent_name_note(default, cfg)
        if note:
            print(f"note: {note}", file=sys.stderr)
        return cfg, None
    differences = experiment_differences(saved, cfg)
    if differences:
        raise UsageError(f"--resume continues the run as it was configured and accepts only runtime options "
                         f"({', '.join(_flag(f) for f in sorted(RUNTIME_FIELDS))}); these change the "
                         f"experiment: {'; '.join(differences)}")
    if (cfg.runs_dir, cfg.run_name) != (saved.runs_dir, saved.run_name):
        raise UsageError("--resume RUN_DIR names the run directory; leave out --runs-dir and --run-name")
    return cfg, known.resume


def _at_batch(flops_at, batch: int) -> int:
    """`flops_at(batch)`, from batches of 1 and 2 when those show it linear in the batch (a convolution's or a
    matmul's FLOPs are): a count runs the step on the device, and at batch 32 on a CPU core that took ~0.4 s at
    Impala x1, at the end of every run."""
    one = flops_at(1)
    return batch * one if batch > 2 and flops_at(2) == 2 * one else flops_at(batch)


def agent_name_note(default: TrainConfig, cfg: TrainConfig) -> str | None:
    """What --agent.name did not change: it picks the loss and the network, and the other agent fields stay the
    preset's (an ablation may want exactly that, so this is a note, not an error). It names the fields kept from
    the preset that differ from the named agent's paper values; None when the name is the preset's, or when there
    are none."""
    if cfg.agent.name == default.agent.name:
        return None
    paper = paper_agent(cfg.agent.name)
    kept = [f"{f.name} {getattr(cfg.agent, f.name)!r} (the paper's {getattr(paper, f.name)!r})"
            for f in dataclasses.fields(paper) if f.name != "name"  # (the fields given on the command line: chosen)
            and getattr(cfg.agent, f.name) == getattr(default.agent, f.name) != getattr(paper, f.name)]
    if not kept:
        return None
    source = f"preset {default.preset}" if default.preset else "the defaults"
    return (f"--agent.name {cfg.agent.name} changes the loss and the network only; the other agent fields keep "
            f"their values from {source}, which differ from the paper's {cfg.agent.name}: {'; '.join(kept)}. For "
            "the paper's configuration pick its preset (--list-presets), or set these fields.")


def trainer_class(cfg: TrainConfig) -> type[Trainer]:
    """The online trainer, or the offline one (`agents/offline.py`) for a run on a fixed dataset."""
    if cfg.offline.enabled:
        from agents.offline import OfflineTrainer

        return OfflineTrainer
    return Trainer


def canonical_spellings(cfg: TrainConfig) -> None:
    """One spelling per game ('breakout', 'ALE/Breakout-v5' -> 'Breakout') and per lottery-ticket source (an
    absolute path), in the run's name and config.json: the same command spelled otherwise, or started in another
    directory, is the same experiment. An unknown game fails here, before anything is written."""
    cfg.env.game = resolve_game(cfg.env.game)
    if cfg.pruning.fixed_mask is not None:
        cfg.pruning.fixed_mask = str(Path(cfg.pruning.fixed_mask).resolve())


def _keep_saved_spellings(saved: TrainConfig, cfg: TrainConfig) -> None:
    """A run started before spellings were made canonical keeps its own spelling of the same game and source."""
    if saved.env.game != cfg.env.game and resolve_game(saved.env.game) == cfg.env.game:
        cfg.env.game = saved.env.game
    source, now = saved.pruning.fixed_mask, cfg.pruning.fixed_mask
    if source is not None and now is not None and source != now and Path(source).resolve() == Path(now):
        cfg.pruning.fixed_mask = source


def open_run(cfg: TrainConfig, resume_dir: Path | None = None) -> Trainer | None:
    """The trainer for this command: a resumed run, a fresh one, or None if the run has already finished.

    Without --resume the run directory is runs_dir/run_name. If it already holds a run, the command must
    describe the same experiment (runtime options may differ); then a finished run is left alone, a run with a
    checkpoint resumes, and a run killed before its first checkpoint starts afresh. So a requeued job can
    simply run its command again.
    """
    canonical_spellings(cfg)
    run_dir = Path(resume_dir) if resume_dir is not None else Path(cfg.runs_dir) / (cfg.run_name or
                                                                                     default_run_name(cfg))
    resolve_device(cfg.device)  # an unusable --device is an error before anything is written
    if resume_dir is not None and not (run_dir / "config.json").is_file():
        read_run_config(run_dir)  # raises: no run there (and no lock file left in a mistyped directory)
    created = not run_dir.exists()
    _check_writable(run_dir, cfg)
    lock = contextlib.ExitStack()
    if lock.enter_context(run_lock(run_dir / RUN_LOCK, wait=False)) is None:  # (the directory is not ours)
        raise RunBusy(f"{run_dir} is being trained by another process right now (it holds {run_dir / RUN_LOCK});"
                      " two processes training one run would interleave its logs. Wait for it to end, or stop it "
                      "(its last checkpoint is where the same command continues)")
    try:
        trainer = _open_locked_run(cfg, run_dir, resume_dir)
    except BaseException:
        # e.g. an unknown game: no empty run directory left behind (removed while still holding its lock; a
        # process waiting for that lock then finds its file gone and starts again, see agents.locks.run_lock)
        if created and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {RUN_LOCK}:
            shutil.rmtree(run_dir)
        lock.close()
        raise
    if trainer is None:
        lock.close()
    else:
        trainer.run_lock = lock  # released by Trainer.close()
    return trainer


def _open_locked_run(cfg: TrainConfig, run_dir: Path, resume_dir: Path | None) -> Trainer | None:
    """`open_run` once it holds the run directory's lock: no other process trains this run."""
    has_checkpoint = bool(list_checkpoints(run_dir / "checkpoints"))
    if (run_dir / "config.json").is_file():
        saved = read_run_config(run_dir)
        _keep_saved_spellings(saved, cfg)
        differences = experiment_differences(saved, cfg)
        if differences:
            raise UsageError(f"{run_dir} holds a run of a different experiment: {'; '.join(differences)}. Use "
                             f"another --run-name, or the run's own options to continue it")
        if run_finished(run_dir):
            print(f"{run_dir} already finished (summary.json); nothing to do")
            return None
        if has_checkpoint or resume_dir is not None:
            trainer = trainer_class(cfg).resume(run_dir, cfg)
            print(f"resuming {run_dir} at agent step {trainer.agent_steps:,} (grad step {trainer.grad_steps:,})")
            return trainer
    elif has_checkpoint:
        raise UsageError(f"{run_dir} holds checkpoints but no config.json; move it away or use another --run-name")
    for name in RUN_OUTPUTS:  # a run killed before its first checkpoint (or a new directory): start afresh
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    trainer = trainer_class(cfg)(cfg, run_dir)
    print(f"run directory: {run_dir}")
    return trainer


def _check_writable(run_dir: Path, cfg: TrainConfig) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test.tmp-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write the run directory {run_dir} (--runs-dir {cfg.runs_dir}): "
                         f"{e.strerror or e}") from e


@contextlib.contextmanager
def _stop_on_sigterm(trainer: Trainer):
    """A SIGTERM (a sweep being stopped, a job scheduler's preemption or time limit, `kill`) asks the trainer to
    stop at its next step with a checkpoint, as --max-minutes does, so a preempted run loses no progress; it used
    to kill the run at once, with neither a checkpoint nor a word. A second SIGTERM stops it at once, like Ctrl-C.
    Only in the main thread (where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = "SIGTERM"

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _how_to_continue(run_dir: Path, named: bool) -> str:
    """What continues a stopped run: the same command only if it names the run (the default name holds the
    time the run started, so the same command without --run-name starts a new run)."""
    if named:
        return f"the same command (or --resume {run_dir}) continues"
    return (f"--resume {run_dir} continues (the same command would start a new run: give --run-name to make a "
            "command that resumes)")


# This package's own modules: their warnings are messages to the user of the command line
_OWN_CODE = tuple(str(Path(__file__).resolve().parents[1] / d) + os.sep for d in ("agents", "kernels"))


@contextlib.contextmanager
def _warnings_as_messages():
    """Our warnings print as `warning: ...`, not with Python's file, line and source line (a library's keep them)."""
    python_format = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        if os.path.abspath(filename).startswith(_OWN_CODE):
            return f"warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = python_format


def main(argv: list[str] | None = None) -> int:
    with _warnings_as_messages():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    try:
        cfg, resume_dir = parse_args(argv)
        named = resume_dir is not None or bool(cfg.run_name)
        trainer = open_run(cfg, resume_dir)
    except RunBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BUSY
    except (ValueError, CheckpointError) as e:  # usage errors
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a full disk while writing config.json: the message names the error and file
        print(f"error: {e}", file=sys.stderr)
        return 1
    if trainer is None:
        return 0
    try:
        with _stop_on_sigterm(trainer):
            summary = trainer.run()
    except (CheckpointError, OSError) as e:  # e.g. a full disk: the message names the error, the file, what is kept
        with contextlib.suppress(OSError):
            trainer.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # no checkpoint here: the interrupted step may be half done
        with contextlib.suppress(OSError):
            trainer.close()
        last = latest_checkpoint(trainer.checkpoints.dir)
        since = f"its last checkpoint, agent step {checkpoint_step(last):,}" if last else "the start"
        print(f"\ninterrupted at agent step {trainer.agent_steps:,}; {_how_to_continue(trainer.run_dir, named)} "
              f"from {since}", file=sys.stderr)
        return 128 + (signal.SIGTERM if trainer.stop_requested else signal.SIGINT)  # (a second SIGTERM, or Ctrl-C)
    if trainer.stop_requested and not summary["finished"]:
        return 128 + signal.SIGTERM  # (as if killed by it: a sweep or job scheduler reads it as terminated)
    status = "done" if summary["finished"] else "stopped"
    offline = trainer.cfg.offline.enabled  # an offline run plays only in its evaluation phases
    scores = [] if offline else [f"last iteration's score {_fmt_score(summary['final_score'])}"]
    if offline or summary.get("final_eval_score") is not None:
        scores.append(f"evaluation score {_fmt_score(summary.get('final_eval_score'))}")
    print(f"{status}: {summary['frames']:,} frames, {', '.join(scores)}, total sparsity "
          f"{summary['total_sparsity']:.3f} -> {trainer.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
