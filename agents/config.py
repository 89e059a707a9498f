"""Run configuration: tyro dataclasses (one docstring per field becomes --help) and the paper's presets.

Step accounting (project decision 6): every step count below is in *agent steps*, i.e. transitions summed
over all parallel envs (frames = 4 x agent steps). The replay ratio is gradient updates per agent step. The
pruning schedule counts gradient steps; by default it runs from 20% to 80% of the nominal gradient steps
`total_steps x replay_ratio` (500k / 2M for the paper's 40M frames at ratio 0.25, as in JaxPruner's gin), and
ends at the run's last gradient step instead if the min_replay warm-up leaves fewer (short runs).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import inspect
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from agents.envs import EnvConfig
from agents.networks import NetworkConfig
from agents.plasticity import ReDoConfig, ResetConfig
from agents.pruning import PruningConfig
from agents.rigl import RigLConfig

SEED_LIMIT = 2**30  # seeds and the env seeds derived from them (+ env index, + 7919 per resume) stay in int32

AgentName = Literal["dqn", "rainbow", "iqn", "miqn", "der", "drq_eps", "cql", "cql_c51"]


@dataclass
class AgentConfig:
    name: AgentName = "dqn"
    """Which agent: dqn, rainbow (compact: C51 + n-step + prioritized replay), iqn, miqn (Munchausen-IQN), the
    Atari-100k agents der (data-efficient Rainbow) and drq_eps (DrQ(eps): DQN with image augmentation), or the
    offline agents cql (DQN + CQL regulariser) and cql_c51 (C51 + CQL regulariser). The name picks the loss and
    network; the other agent.* fields stay as they are: a preset of the agent (--list-presets) sets the paper's,
    while --agent.name on another preset (or none) keeps its values (DQN's: n-step 1, uniform replay, lr 6.25e-5), and
    the trainer prints a note naming those that differ from the named agent's paper values."""
    lr: float = 6.25e-5
    """Adam learning rate."""
    adam_eps: float = 1.5e-4
    """Adam epsilon (1.5e-4 for DQN and Rainbow, 3.125e-4 for IQN and M-IQN: the paper's Table 2)."""
    batch_size: int = 32
    """Transitions per gradient step."""
    gamma: float = 0.99
    """Discount factor."""
    n_step: int = 1
    """Update horizon of the n-step return (1 for DQN, 3 for Rainbow, IQN and M-IQN)."""
    target_update_period: int = 8000
    """Agent steps between hard copies of the online network into the target network."""
    min_replay: int = 20_000
    """Agent steps of pure exploration (epsilon 1) before learning starts."""
    epsilon_train: float = 0.01
    """Final epsilon of epsilon-greedy exploration during training."""
    epsilon_decay_steps: int = 250_000
    """Agent steps over which epsilon decays linearly from 1 to epsilon_train after min_replay."""
    loss: Literal["mse", "huber"] = "mse"
    """DQN TD loss: MSE as in Dopamine JAX, the paper's code, or Huber."""
    replay: Literal["uniform", "prioritized"] = "uniform"
    """Replay sampling: uniform, or proportional prioritized (Rainbow's default)."""
    num_atoms: int = 51
    """C51 atoms (Rainbow)."""
    v_max: float = 10.0
    """C51 support is [-v_max, v_max] (Rainbow)."""
    num_tau_samples: int = 64
    """IQN: quantile samples N for the online network."""
    num_tau_prime_samples: int = 64
    """IQN: quantile samples N' for the target network."""
    num_quantile_samples: int = 32
    """IQN: quantile samples K for acting."""
    quantile_embedding_dim: int = 64
    """IQN: size of the cosine embedding of tau."""
    kappa: float = 1.0
    """IQN: Huber threshold of the quantile loss."""
    munchausen_tau: float = 0.03
    """M-IQN: softmax temperature (paper Table 2)."""
    munchausen_alpha: float = 0.9
    """M-IQN: scale of the Munchausen term (Vieillard et al. 2020; not given in the paper)."""
    munchausen_clip: float = -1.0
    """M-IQN: lower clip l0 of the scaled log-policy (Vieillard et al. 2020; not given in the paper)."""
    double_dqn: bool = False
    """Double DQN (DQN-family and C51 agents): the online network picks the next action, the target network
    values it. On in DER, DrQ(eps) and CQL+C51 (Dopamine's gin files)."""
    augmentation: bool = False
    """DrQ's augmentation of sampled states and next states (DrQ(eps)): a random shift of up to
    augmentation_pad pixels with edge padding, then intensity noise. Runs on the training device."""
    augmentation_pad: int = 4
    """Random shift: pad (edge-replicated) and crop offset range; Dopamine draws offsets in [0, 2 pad)."""
    augmentation_intensity: float = 0.05
    """Intensity noise: each augmented stack is scaled by 1 + this x clip(N(0, 1), -2, 2); 0 turns it off."""
    cql_coefficient: float = 0.1
    """CQL agents: weight of the regulariser mean(logsumexp_a Q(s, a) - Q(s, a_data)) (paper Table 3)."""
    weight_decay: float = 0.0
    """Coupled weight decay: wd * w added to the gradient before Adam's moments (the ReDo lab's
    optax.add_decayed_weights then Adam, not AdamW); the WD baseline of Figs. 12 and 27 uses 1e-5."""

    def __post_init__(self):
        # `not x > 0` style checks: NaN fails every comparison, and a NaN or infinite value would train on NaNs.
        for name in ("lr", "adam_eps", "v_max", "kappa", "munchausen_tau"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"agent.{name} must be > 0 and finite, got {getattr(self, name)}")
        for name in ("weight_decay", "cql_coefficient", "augmentation_intensity", "munchausen_alpha"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"agent.{name} must be >= 0 and finite, got {getattr(self, name)}")
        if not -math.inf < self.munchausen_clip <= 0:  # a clip above 0 would zero the Munchausen term
            raise ValueError(f"agent.munchausen_clip (a log-policy bound) must be <= 0 and finite, got "
                             f"{self.munchausen_clip}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"agent.gamma (the discount) must be in (0, 1], got {self.gamma}")
        if not 0 <= self.epsilon_train <= 1:
            raise ValueError(f"agent.epsilon_train (a probability) must be in [0, 1], got {self.epsilon_train}")
        for name in ("batch_size", "n_step", "target_update_period", "num_tau_samples", "num_tau_prime_samples",
                     "num_quantile_samples", "quantile_embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"agent.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_atoms < 2:
            raise ValueError(f"agent.num_atoms (the C51 support's size) must be >= 2, got {self.num_atoms}")
        if self.min_replay < 0 or self.epsilon_decay_steps < 0:
            raise ValueError("agent.min_replay and agent.epsilon_decay_steps must be >= 0")
        if self.augmentation_pad < 1:
            raise ValueError(f"agent.augmentation_pad must be >= 1, got {self.augmentation_pad}")

    def unread_options(self, baseline: AgentConfig | None = None) -> str | None:
        """The fields changed from `baseline` (the preset's agent; default: the field defaults) that this agent
        does not read, in words (None if all are read): a run with them would not do what its config says.
        agents.train refuses them on its command line; a run saved before that check is read with a warning."""
        baseline = baseline or AgentConfig()
        unread = [f"agent.{f.name} = {getattr(self, f.name)!r} (read by {', '.join(FIELD_READERS[f.name])})"
                  for f in dataclasses.fields(self) if f.name in FIELD_READERS
                  and self.name not in FIELD_READERS[f.name] and getattr(self, f.name) != getattr(baseline, f.name)]
        if not self.augmentation:
            unread += [f"agent.{f.name} = {getattr(self, f.name)!r} (read with agent.augmentation on)"
                       for f in dataclasses.fields(self) if f.name.startswith("augmentation_")
                       and getattr(self, f.name) != getattr(baseline, f.name)]
        return f"agent {self.name} does not read {'; '.join(unread)}" if unread else None


# Agent fields only some agents read (a changed value anywhere else would be a silent no-op).
_C51, _IQN = ("rainbow", "der", "cql_c51"), ("iqn", "miqn")
FIELD_READERS = {"num_atoms": _C51, "v_max": _C51, "num_tau_samples": _IQN, "num_tau_prime_samples": _IQN,
                 "num_quantile_samples": _IQN, "quantile_embedding_dim": _IQN, "kappa": _IQN,
                 "munchausen_tau": ("miqn",), "munchausen_alpha": ("miqn",), "munchausen_clip": ("miqn",),
                 "loss": ("dqn", "drq_eps", "cql"), "cql_coefficient": ("cql", "cql_c51")}


def paper_agent(name: AgentName) -> AgentConfig:
    """The paper's hyperparameters for each agent (Tables 1-3, project decisions 3 and 4)."""
    if name == "dqn":
        return AgentConfig(name="dqn")
    if name == "rainbow":
        return AgentConfig(name="rainbow", n_step=3, replay="prioritized")
    if name in ("iqn", "miqn"):
        return AgentConfig(name=name, lr=5e-5, adam_eps=3.125e-4, n_step=3)
    # Atari-100k agents: Table 1 and Dopamine's labs/atari_100k/configs/{DER,DrQ_eps}.gin (target periods, double
    # DQN, Huber loss for DrQ(eps)); both update every agent step (replay ratio 1, set by their presets).
    if name == "der":
        return AgentConfig(name="der", lr=1e-4, adam_eps=1.5e-4, n_step=10, target_update_period=2000,
                           min_replay=1600, epsilon_decay_steps=2000, replay="prioritized", double_dqn=True)
    if name == "drq_eps":
        return AgentConfig(name="drq_eps", lr=1e-4, adam_eps=1.5e-4, n_step=10, target_update_period=1,
                           min_replay=1600, epsilon_decay_steps=5000, loss="huber", double_dqn=True,
                           augmentation=True)
    # Offline agents: Table 3; target periods from Dopamine's labs/offline_rl gin files (DQN 2000, Rainbow 100
    # gradient steps); Huber TD loss as Dopamine's offline agent's non-distributional branch.
    if name == "cql":
        return AgentConfig(name="cql", lr=5e-5, adam_eps=3.125e-4, target_update_period=2000, loss="huber",
                           cql_coefficient=0.1)
    if name == "cql_c51":
        return AgentConfig(name="cql_c51", lr=6.25e-5, adam_eps=1.5e-4, n_step=3, target_update_period=100,
                           double_dqn=True, cql_coefficient=0.1)
    raise ValueError(f"unknown agent {name!r}")


@dataclass
class OfflineConfig:
    """Offline training (`agents/offline.py`): gradient updates on a fixed dataset, no env steps for training."""

    data: str | None = None
    """Train offline from this DQN Replay Dataset folder (a game's replay_logs/, holding
    $store$_observation_ckpt.<N>.gz and the other files per checkpoint N; `python -m agents.export_dataset` writes
    one from a run). The env is then used only by the evaluation phase after each iteration."""
    enabled: bool = False
    """Whether the run trains offline: set by --offline.data (and by the offline presets, which then need it)."""
    checkpoints: str = "all"
    """Checkpoints of the dataset to load: 'all', N, A-B (inclusive) or a comma-separated mix (e.g. '0-50')."""
    fraction: float = 1.0
    """Fraction of all transitions kept, a seeded uniform sample (the paper's 5% protocol: 0.05)."""
    chunk: int = 1000
    """The sample's unit: runs of this many consecutive transitions, so the frames kept are about the
    transitions kept (1 = single transitions, whose stacks need 4 to 8 frames each)."""
    cache_dir: str | None = None
    """Keep the sampled frames in a memory-mapped file here (reused by later runs with the same sample, which
    then skip decompressing the dataset); default: in memory."""

    def __post_init__(self):
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"offline.fraction must be in (0, 1], got {self.fraction}")
        if self.chunk < 1:
            raise ValueError(f"offline.chunk must be >= 1, got {self.chunk}")
        if self.data is not None:
            self.enabled = True


@dataclass
class TrainConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    redo: ReDoConfig = field(default_factory=ReDoConfig)
    reset: ResetConfig = field(default_factory=ResetConfig)
    rigl: RigLConfig = field(default_factory=RigLConfig)
    total_steps: int = 10_000_000
    """Training budget in agent steps, summed over envs (10M agent steps = 40M frames); offline: gradient updates."""
    iteration_steps: int = 250_000
    """Agent steps per iteration; one score (mean return of the episodes finished in it) per iteration. Offline:
    gradient updates per iteration (the paper's 62,500), each followed by the evaluation phase."""
    replay_ratio: float = 0.25
    """Gradient updates per agent step (0.25 = one update every 4 transitions)."""
    replay_capacity: int = 1_000_000
    """Replay capacity in transitions (1M frames take about 7.1 GB as uint8)."""
    replay_device: Literal["cpu", "auto"] = "auto"
    """Where the replay lives: 'auto' = the training device (sampling stays on the GPU and can be captured in
    the learner's CUDA graph; 1M frames take about 7.1 GB of GPU memory), or 'cpu' (for small GPUs)."""
    device: str = "auto"
    """Torch device for the networks: 'auto' picks cuda when available."""
    seed: int = 0
    """Seed of python, numpy, torch, the replay sampler and the envs (env i gets seed + i)."""
    runs_dir: str = "runs"
    """Parent directory of run directories."""
    run_name: str | None = None
    """Run directory name; default {game}__{preset or agent}__s{seed}__{timestamp}."""
    checkpoint_every: int = 1
    """Write a checkpoint every this many iterations (and at the end of the run)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    save_replay: bool = True
    """Store the replay in the checkpoints, incrementally (each checkpoint writes only the transitions added
    since the previous one), so a resumed run is the experiment an uninterrupted one is. With
    --no-save-replay a resumed run refills min_replay steps before it learns again, and summary.json says
    resumed_without_replay."""
    evaluate: bool = False
    """After each iteration, run an evaluation phase (Dopamine's eval phase): full episodes at
    eval_epsilon in envs of its own, learning nothing, logged as eval_score / eval_episodes next to the training
    score. Off by default: the paper's score is the training episodes' (Dopamine's continuous_train)."""
    eval_steps: int = 125_000
    """Agent steps of each evaluation phase (at least: episodes in progress are played to their end)."""
    eval_epsilon: float = 0.001
    """Exploration of the evaluation phase (Dopamine's epsilon_eval)."""
    eval_episodes: int = 0
    """Play exactly this many full episodes in each evaluation phase instead of eval_steps (Atari-100k: 100),
    spread evenly over the evaluation envs; 0 = eval_steps."""
    eval_num_envs: int | None = None
    """Parallel envs of the evaluation phase; default env.num_envs."""
    log_every: int = 10_000
    """Agent steps between rows of metrics.jsonl / TensorBoard scalars."""
    analysis_every: int = 0
    """Gradient steps between analysis metrics (dormant neurons, srank, norms); 0 turns them off."""
    analysis_grad_samples: int = 32
    """With --analysis-every: the gradient covariance of Fig. 14 over this many transitions (one fixed batch, one
    TD-loss gradient per transition, written to grad_covariance.jsonl); 0 leaves it out."""
    tensorboard: bool = True
    """Also write TensorBoard event files under run_dir/tb."""
    progress: bool = True
    """Show a progress bar."""
    tf32: bool = False
    """CUDA: TF32 matmuls and convolutions. Faster on Ampere and later; products round to a 10-bit mantissa
    (relative error ~1e-3), so runs are no longer bit-comparable with fp32 ones."""
    torch_deterministic: bool = False
    """CUDA: deterministic cuDNN algorithms, so two runs with the same seed give the same numbers (slower). Off,
    cuDNN times its algorithms once per input shape and keeps the fastest (`cudnn.benchmark`)."""
    bf16: bool = False
    """bf16 autocast for the forward and backward passes (weights, Adam state and masks stay fp32). Faster on
    GPUs; Q-values carry ~3 significant digits, which can change learning slightly."""
    overlap_env: Literal["auto", "on", "off"] = "auto"
    """Step the envs in a background thread while the learner runs (same results: the learner never reads
    the newest step's outcome). 'auto' = on when training on a GPU; on a small CPU the env threads and the
    learner's threads compete for the same cores."""
    max_minutes: float | None = None
    """Stop after this many minutes of wall time with a checkpoint (to fit a job's time limit, or to see how
    far a fixed budget gets); re-running the command (or `--resume`) continues the run, and the interrupted
    iteration's score then counts its episodes from before and after the stop."""
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    """Capture the gradient update (replay sampling, forward and backward, mask selection, masked Adam,
    priority updates) in CUDA graphs after a few eager steps. Same kernels and random numbers as eager
    execution (tests/agents/test_cuda_graphs.py compares the two on a GPU). 'auto' = on
    when training on CUDA with the Triton kernels and the replay on the GPU, falling back to eager with a
    warning if a capture fails; 'on' makes a failed capture an error."""
    compile: bool = False
    """torch.compile the online and target networks (Inductor). Costs a minute or so of compilation at the
    start; sums may be reordered, so results match eager ones to fp32 rounding, not bit for bit."""
    channels_last: bool = False
    """Run the convolutions on channels_last (NHWC) activations, cuDNN's fastest layout for tensor cores.
    Weights and masks keep their layout; results match to fp32 rounding."""
    profile: bool = False
    """Time every component of the loop (env, acting, replay, learner, optimizer, mask updates, logging) and
    write run_dir/profile.json; synchronises the GPU around each component, so it costs some speed."""
    preset: str | None = None
    """Selects the configuration: a preset (see --list-presets) whose values the other options override."""

    def __post_init__(self):
        if self.total_steps < 1 or self.iteration_steps < 1:
            raise ValueError("total_steps and iteration_steps must be >= 1")
        if not 0 < self.replay_ratio < math.inf:
            raise ValueError(f"replay_ratio must be > 0 and finite, got {self.replay_ratio}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed must be in [0, 2**30), got {self.seed}: envpool takes int32 seeds, and resumed "
                             "runs and evaluation phases seed their envs with offsets from it")
        if self.log_every < 1 or self.analysis_every < 0:
            raise ValueError(f"log_every must be >= 1 and analysis_every >= 0 (0 turns it off), got {self.log_every}, "
                             f"{self.analysis_every}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every and keep_checkpoints must be >= 1")
        if self.analysis_grad_samples < 0:
            raise ValueError(f"analysis_grad_samples must be >= 0, got {self.analysis_grad_samples}")
        if self.eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1 (turn the phase off with --no-evaluate), got {self.eval_steps}")
        if not 0.0 <= self.eval_epsilon <= 1.0:
            raise ValueError(f"eval_epsilon must be in [0, 1], got {self.eval_epsilon}")
        if self.eval_episodes < 0 or (self.eval_num_envs is not None and self.eval_num_envs < 1):
            raise ValueError(f"eval_episodes must be >= 0 and eval_num_envs >= 1, got {self.eval_episodes}, "
                             f"{self.eval_num_envs}")
        if self.offline.enabled and (self.replay_ratio != 1.0 or not self.evaluate):
            raise ValueError("offline runs count gradient updates in total_steps and iteration_steps and are scored "
                             "by the evaluation phase: keep --replay-ratio 1 and --evaluate (the offline presets "
                             f"set both), got replay_ratio {self.replay_ratio}, evaluate {self.evaluate}")
        if self.redo.enabled and self.network.dueling:  # ReDo recycles into the output layer's columns
            raise ValueError("ReDo is not implemented for the dueling head: leave out --network.dueling or --redo")

    def unread_options(self) -> str | None:
        """The fields changed from the run's preset (or, without one, from the defaults) that this run does not
        read, in words (None if all are read): the agent's (`AgentConfig.unread_options`), the options of a
        method the run does not use (--redo.* without --redo.enabled, --rigl.* without --pruning.method rigl,
        GMP's schedule under RigL, ...), and an offline run's replay and exploration. agents.train refuses them
        on its command line, like the agent's; a run saved before that check is read with a warning. A preset's
        own values are not the user's options: `--preset demo --pruning.method rigl` leaves the demo's GMP
        schedule unread, and that is no error."""
        base = PRESETS.get(self.preset) if self.preset else None
        base = base if base is not None else TrainConfig()
        gmp_schedule = ("start_fraction", "end_fraction", "start_step", "end_step", "update_freq")
        groups = [  # (sub-config or self, its prefix, fields, whether they are unread, what reads them)
            (self.redo, "redo.", None, not self.redo.enabled, "read with redo.enabled on"),
            (self.reset, "reset.", None, not self.reset.enabled, "read with reset.enabled on"),
            (self.rigl, "rigl.", None, self.pruning.method != "rigl", "read with pruning.method rigl"),
            (self.pruning, "pruning.", gmp_schedule, self.pruning.method == "rigl", "GMP's schedule, not RigL's"),
            (self.pruning, "pruning.", gmp_schedule, self.pruning.fixed_mask is not None,
             "a lottery ticket's masks are fixed from the first step"),
            (self.pruning, "pruning.", ("distribution",), self.pruning.scope == "global",
             "one global top-k has no per-layer targets"),
            (self.network, "network.", ("padding",), self.network.arch != "nature", "read by the Nature CNN only"),
            (self, "", ("eval_steps", "eval_epsilon", "eval_episodes", "eval_num_envs"), not self.evaluate,
             "read with evaluate on"),
            (self, "", ("eval_steps",), self.evaluate and self.eval_episodes > 0, "eval_episodes replaces it"),
            (self.agent, "agent.", ("replay", "min_replay", "epsilon_train", "epsilon_decay_steps"),
             self.offline.enabled, "an offline run samples its dataset uniformly and does not explore"),
            (self, "", ("replay_capacity",), self.offline.enabled, "an offline run's replay is its dataset"),
        ]
        unread = [f"{prefix}{f.name} = {getattr(obj, f.name)!r} ({why})"
                  for obj, prefix, names, is_unread, why in groups if is_unread
                  for f in dataclasses.fields(obj) if (names is None and f.name != "enabled" or f.name in (names or ()))
                  and getattr(obj, f.name) != getattr(_counterpart(base, prefix), f.name)]
        notes = [self.agent.unread_options(base.agent)] + (
            [f"the run does not read {'; '.join(unread)}"] if unread else [])
        return "; ".join(n for n in notes if n) or None

    @property
    def nominal_grad_steps(self) -> int:
        """total_steps x replay_ratio: what the pruning window's fractions refer to (2.5M at 40M frames)."""
        return round(self.total_steps * self.replay_ratio)

    def updates_due(self, steps_before: int, steps_after: int) -> int:
        """Gradient updates for the agent steps (steps_before, steps_after]: one at each step j > min_replay where
        floor(replay_ratio * j) grows. At ratio 1/k that is every j with j % k == 0, Dopamine's
        `training_steps % update_period == 0`; exact for any ratio (1/3 stays 1/3, no float budget drifts)."""
        ratio = Fraction(self.replay_ratio).limit_denominator(10**6)
        first = max(steps_before, self.agent.min_replay)
        return max(0, math.floor(ratio * steps_after) - math.floor(ratio * first))

    def min_grad_steps(self, num_envs: int, agent_steps: int | None = None) -> int:
        """Gradient steps a run has taken at least after `agent_steps` (default: all of them) if it learned without
        interruption: learning starts after min_replay transitions, and once the replay can sample (n_step + 1
        vector steps). (10M - 20k) x 0.25 = 2,495,000 for the paper's runs."""
        after = self.total_steps if agent_steps is None else agent_steps
        if self.offline.enabled:  # every step is an update
            return after
        return self.updates_due(num_envs * self.agent.n_step, after)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        sub = {"env": EnvConfig, "network": NetworkConfig, "agent": AgentConfig, "pruning": PruningConfig,
               "offline": OfflineConfig, "redo": ReDoConfig, "reset": ResetConfig, "rigl": RigLConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config has unknown fields {sorted(unknown)}")
        _check_field_types(cls, d)
        for k in sub.keys() & d.keys():
            if isinstance(d[k], dict):
                _check_field_types(sub[k], d[k], f"{k}.")
        kwargs = {k: (sub[k](**v) if k in sub else v) for k, v in d.items()}
        return cls(**kwargs)


_PLAIN_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,), type(None): (type(None),)}


def _counterpart(base: TrainConfig, prefix: str):
    """The sub-config of `base` that `prefix` ('redo.', 'agent.', '' for the run's own fields) names."""
    return getattr(base, prefix.rstrip(".")) if prefix else base


def _check_field_types(cls, d: dict, prefix: str = "") -> None:
    """The plain fields (int, float, bool, str, optional or not) of a config dict read from a file hold values of
    their type: a string where a number belongs ('500' for log_every) passes some checks and fails later with a
    traceback. Literal and nested fields are checked by the dataclasses themselves."""
    hints = typing.get_type_hints(cls)
    for name, value in d.items():
        hint = hints.get(name)
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if not all(o in _PLAIN_TYPES for o in options):
            continue
        if not isinstance(value, tuple(t for o in options for t in _PLAIN_TYPES[o])) or (
                type(value) is bool and bool not in options):
            expected = " or ".join("null" if o is type(None) else o.__name__ for o in options)
            raise ValueError(f"{prefix}{name} is {value!r} ({type(value).__name__}); expected {expected}")


@functools.cache
def help_from_docstrings(cls) -> None:
    """Give every documented field of `cls` and of its nested configs its docstring, lines joined, as the `help`
    of its field metadata (tyro's public route for help text, as for HuggingFace-style configs). Left to tyro
    (1.0.17), a multi-line field docstring keeps each of its source line breaks: it joins single line breaks
    before it dedents, so every indented continuation line starts a new line, mid-sentence, in --help. Called by
    the command line (parsing the sources takes ~50 ms, which no other importer of this module needs to pay)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {node.target.id: inspect.cleandoc(doc.value.value) for node, doc in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in docs and "help" not in f.metadata:
            paragraphs = docs[f.name].split("\n\n")
            help_text = "\n\n".join(" ".join(line.strip() for line in par.splitlines()) for par in paragraphs)
            f.metadata = types.MappingProxyType({**f.metadata, "help": help_text})
        if dataclasses.is_dataclass(hints[f.name]):
            help_from_docstrings(hints[f.name])


# ---------------------------------------------------------------------------------------------------------
# Runtime options: how a run executes, where it writes and what it prints, never what it learns. A requeued
# job may change them on --resume, and the report groups runs without them. Every other field (dotted names
# for the sub-configs) defines the experiment.
# ---------------------------------------------------------------------------------------------------------
RUNTIME_FIELDS = frozenset({
    "device", "replay_device", "overlap_env", "cuda_graphs", "compile", "channels_last", "torch_deterministic",
    "max_minutes", "profile", "progress", "tensorboard", "log_every", "runs_dir", "run_name", "checkpoint_every",
    "keep_checkpoints",
    "save_replay", "preset", "env.num_threads", "analysis_grad_samples",
    "offline.data", "offline.cache_dir",  # where the dataset lies (config.json records which data it was)
})


def flatten_config(d: dict, prefix: str = "") -> dict:
    """{'agent': {'lr': 1}} -> {'agent.lr': 1}."""
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten_config(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def experiment_fields(config: dict) -> dict:
    """The flattened fields of a config dict that define the experiment (RUNTIME_FIELDS left out)."""
    return {k: v for k, v in flatten_config(config).items() if k not in RUNTIME_FIELDS}


# ---------------------------------------------------------------------------------------------------------
# Presets: {agent}_{impala|nature}_w{width}_{dense|gmpNN}, the paper's configurations, the baselines of its
# section 5 (dqn_impala_w{width}_{redo|reset|wd|l2|rigl90|rigl95|rigl99}), plus a CPU demo.
# ---------------------------------------------------------------------------------------------------------
PAPER_SPARSITIES = {"dense": 0.0, "gmp90": 0.9, "gmp95": 0.95, "gmp99": 0.99}


def _paper_presets() -> dict[str, TrainConfig]:
    presets = {}
    for agent in ("dqn", "rainbow", "iqn", "miqn"):
        for arch, widths in (("impala", (1, 2, 3, 4, 5)), ("nature", (1, 3, 5))):
            for width in widths:
                for tag, sparsity in PAPER_SPARSITIES.items():
                    name = f"{agent}_{arch}_w{width}_{tag}"
                    presets[name] = TrainConfig(
                        network=NetworkConfig(arch=arch, width=width), agent=paper_agent(agent),
                        pruning=PruningConfig(final_sparsity=sparsity), preset=name)
    return presets


def _baseline_presets() -> dict[str, TrainConfig]:
    """The comparisons of the paper's section 5 (Figs. 12, 22), on DQN with the Impala ResNet at every width:
    dqn_impala_w{width}_{redo|reset|wd|l2|rigl90|rigl95|rigl99}, each method at its paper default (dense and
    GMP are the grid above; the lottery ticket adds --pruning.fixed-mask RUN_DIR to a gmp preset)."""
    methods = {  # tag -> (network options, other TrainConfig fields)
        "redo": ({}, dict(redo=ReDoConfig(enabled=True))),  # tau 0.1, every 1,000 gradient steps
        "reset": ({}, dict(reset=ResetConfig(enabled=True))),  # the last layer, every 100,000 gradient steps
        "wd": ({}, dict(agent=dataclasses.replace(paper_agent("dqn"), weight_decay=1e-5))),
        "l2": ({"feature_norm": True}, {}),
    }
    for s in (0.9, 0.95, 0.99):
        methods[f"rigl{round(s * 100)}"] = ({}, dict(pruning=PruningConfig(final_sparsity=s, method="rigl")))
    presets = {}
    for width in (1, 2, 3, 4, 5):
        for tag, (net, fields) in methods.items():
            name = f"dqn_impala_w{width}_{tag}"
            presets[name] = TrainConfig(**copy.deepcopy({"agent": paper_agent("dqn"), **fields}), preset=name,
                                        network=NetworkConfig(arch="impala", width=width, **net))
    return presets


def _demo_preset() -> TrainConfig:
    """Minutes on a CPU: GMP-DQN on Breakout (short episodes, so every iteration has a score), Impala x1,
    pruned to 95% from 20% to 80% of a 24k-frame run. channels_last is oneDNN's preferred layout: faster
    CPU convolutions and pooling (bench/results/cpu_demo_*.json: the demo before and after it was turned on)."""
    return TrainConfig(
        env=EnvConfig(game="Breakout", num_envs=8),
        network=NetworkConfig(arch="impala", width=1),
        agent=dataclasses.replace(paper_agent("dqn"), min_replay=1_000, epsilon_decay_steps=3_000,
                                  target_update_period=1_000),
        pruning=PruningConfig(final_sparsity=0.95, update_freq=50),
        total_steps=6_000, iteration_steps=1_500, replay_capacity=50_000, log_every=500, channels_last=True,
        preset="demo")


def atari100k_env(**overrides) -> EnvConfig:
    """Dopamine's Atari-100k environment (labs/atari_100k gin files): no sticky actions, and a lost life is a
    terminal for the learner (scores stay whole games)."""
    return EnvConfig(sticky_prob=0.0, terminal_on_life_loss=True, **overrides)


def _atari100k_presets() -> dict[str, TrainConfig]:
    """DER and DrQ(eps) (Table 1), both updating every agent step with a dueling head:
    - {agent}_impala_w{1,3}_{dense|gmpNN}: Fig. 7, 40M frames with the Impala ResNet (x3 in the paper);
    - {agent}_100k_{dense|gmp95}: the classic Atari-100k benchmark, 100k agent steps with Dopamine's Nature
      CNN and one env, 10 iterations of 10k steps, each followed by Dopamine's Atari-100k evaluation: 100
      episodes at epsilon 0.001, one in each of 100 envs (eval_score; the benchmark's number is the last
      one). The replay holds all 100k transitions (Dopamine's 1M capacity is never reached), and the pruning
      window is 20%/80% of the 100k updates."""
    presets = {}
    for agent in ("der", "drq_eps"):
        for width in (1, 3):
            for tag, sparsity in PAPER_SPARSITIES.items():
                name = f"{agent}_impala_w{width}_{tag}"
                presets[name] = TrainConfig(
                    env=atari100k_env(), network=NetworkConfig(arch="impala", width=width, dueling=True),
                    agent=paper_agent(agent), pruning=PruningConfig(final_sparsity=sparsity), replay_ratio=1.0,
                    preset=name)
        for tag in ("dense", "gmp95"):
            name = f"{agent}_100k_{tag}"
            presets[name] = TrainConfig(
                env=atari100k_env(num_envs=1), network=NetworkConfig(arch="nature", width=1, dueling=True),
                agent=paper_agent(agent), pruning=PruningConfig(final_sparsity=PAPER_SPARSITIES[tag]),
                total_steps=100_000, iteration_steps=10_000, replay_ratio=1.0, replay_capacity=100_000,
                evaluate=True, eval_episodes=100, eval_num_envs=100, log_every=1_000, preset=name)
    return presets


def _offline_presets() -> dict[str, TrainConfig]:
    """Fig. 8: {cql|cql_c51}_impala_w{1,3}_{dense|gmp95|gmp99}, Table 3 on the 5% protocol of the DQN Replay
    Dataset (--offline.data, a seeded uniform 5% of all transitions of the chosen checkpoints; the published
    data has checkpoints 0-50). 200 iterations x 62,500 updates, the pruning window at 20% / 80% of the 12.5M
    updates, after each iteration Dopamine's evaluation phase (125,000 steps at epsilon 0.001, sticky actions).
    The hidden layer scales with the width, as in Dopamine's offline ParameterizedRainbowNetwork."""
    presets = {}
    for agent in ("cql", "cql_c51"):
        for width in (1, 3):
            for tag in ("dense", "gmp95", "gmp99"):
                name = f"{agent}_impala_w{width}_{tag}"
                presets[name] = TrainConfig(
                    network=NetworkConfig(arch="impala", width=width, scale_dense=True, dueling=agent == "cql_c51"),
                    agent=paper_agent(agent), pruning=PruningConfig(final_sparsity=PAPER_SPARSITIES[tag]),
                    offline=OfflineConfig(enabled=True, fraction=0.05), total_steps=200 * 62_500,
                    iteration_steps=62_500, replay_ratio=1.0, evaluate=True, preset=name)
    return presets


PRESETS: dict[str, TrainConfig] = {**_paper_presets(), **_baseline_presets(), **_atari100k_presets(),
                                   **_offline_presets(), "demo": _demo_preset()}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown preset {name!r}{hint} (see --list-presets)")
    return copy.deepcopy(PRESETS[name])
