"""The learner step is CUDA-graph safe: checked on the CPU, without a GPU.

A CUDA graph replays recorded kernels, so everything it captures must (a) never read a device value on the
host (`.item()`, `bool(t)`, `nonzero`, boolean-mask indexing: a host sync, and a capture error) and (b) take
every changing quantity from device memory rather than from Python values baked in at capture time. (a) is
checked by running whole learner steps of every agent under a dispatch mode that records the aten ops that
read device data on the host. (b) is checked by calling the replay's sampling once, moving the replay on
with adds, and checking that a later call follows the device step counter.
"""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from agents.replay import ReplayBuffer
from agents.train import Trainer
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_agent

aten = torch.ops.aten
# Ops whose result needs a device value on the host (a sync on CUDA, a failed capture in a graph).
HOST_READS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim,
              aten.unique_consecutive, aten.repeat_interleave}


class HostSyncRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in HOST_READS:
            self.found.append(str(func))
        if packet in (aten.index, aten.index_put, aten.index_put_):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                self.found.append(f"{func} with a boolean mask")
        return func(*args, **kwargs)


def trainer_ready_to_learn(tmp_path, name: str, device: str = "cpu", **overrides) -> Trainer:
    """A trainer of agent `name` whose replay holds enough steps (many of them auto-reset slots) to learn;
    `overrides` set TrainConfig fields, dotted for nested ones ("pruning.scope")."""
    cfg = chain_config(fast_agent(name), sparsity=0.9, total_steps=10**6)
    cfg.device, cfg.cuda_graphs = device, "off"
    for key, value in overrides.items():
        *parents, field = key.split(".")
        target = cfg
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, field, value)
    cfg.agent.min_replay, cfg.agent.batch_size = 100, 8
    cfg.pruning.start_step, cfg.pruning.end_step, cfg.pruning.update_freq = 0, 100, 2
    trainer = Trainer(cfg, tmp_path / name, env=ChainEnv(num_envs=2, max_steps=5))
    env, rng = trainer.env, torch.Generator().manual_seed(0)
    obs = env.reset()
    pending = torch.zeros(env.num_envs, dtype=torch.bool).numpy()
    while not trainer.replay.can_sample() or trainer.replay.t < 60:  # short episodes: many auto-reset slots
        actions = torch.randint(0, env.num_actions, (env.num_envs,), generator=rng).numpy()
        first, executed = env.reset_mask.copy(), ~pending
        trainer.replay.add_observation(obs[:, -1], actions, first, executed)
        obs, reward, terminated, truncated, _ = env.step(actions)
        trainer.replay.add_outcome(reward, terminated)
        pending = terminated | truncated
    return trainer


def interpreted_kernels(monkeypatch) -> None:
    """The Triton kernels a CUDA graph captures, interpreted on the CPU, with the cold path's weight reads a whole
    block at a time: what is checked is the host's side of the step (the same launches, the same arguments but
    one constexpr), and the interpreter's cost is per operation, so 8 pieces of 512 cost ~8x one of 4096 (the
    mask selection's two calls took ~16 of each test's ~26 CPU seconds that way; tests/kernels walk the pieces)."""
    from kernels import topk_mask

    monkeypatch.setenv("PRUNERL_KERNELS", "triton")
    monkeypatch.setattr(topk_mask, "CAND_PIECE", topk_mask.TOPK_BLOCK)


@pytest.mark.parametrize("name", ["dqn", "rainbow", "iqn", "miqn", "der", "drq_eps", "cql_c51"])
def test_learner_steps_never_read_device_values_on_the_host(tmp_path, monkeypatch, one_thread, name):
    interpreted_kernels(monkeypatch)
    trainer = trainer_ready_to_learn(tmp_path, name)
    for _ in range(2):  # the first step creates the Adam state, as the eager warm-up before a capture does
        trainer.learn()
    assert trainer.pruner.is_update_step(trainer.grad_steps), "the checked steps must include a mask update"
    before = [p.detach().clone() for p in trainer.online.parameters()]
    with HostSyncRecorder() as recorder:
        trainer.learn()
    assert recorder.found == [], f"{name}: host reads of device values in the learner step: {recorder.found}"
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.online.parameters())), "nothing was learned"


@pytest.mark.parametrize("variant", ["global_scope", "mask_gradients_reset", "frozen_bf16", "rigl"])
def test_learner_step_options_never_read_device_values_on_the_host(tmp_path, monkeypatch, one_thread, variant):
    interpreted_kernels(monkeypatch)
    options = {"global_scope": {"pruning.scope": "global"},
               "mask_gradients_reset": {"pruning.mask_gradients": True, "pruning.moments": "reset"},
               "frozen_bf16": {"pruning.moments": "frozen", "bf16": True},
               "rigl": {"pruning.method": "rigl", "rigl.update_freq": 2}}[variant]
    trainer = trainer_ready_to_learn(tmp_path, "dqn", **options)
    for _ in range(2):
        trainer.learn()
    assert trainer.pruner.is_update_step(trainer.grad_steps)
    with HostSyncRecorder() as recorder:
        trainer.learn()
    assert recorder.found == [], f"{variant}: host reads of device values in the learner step: {recorder.found}"
    assert 0.0 < trainer.pruner.sparsity_report()["sparsity/prunable"] < 1.0


def test_sampling_follows_the_device_step_counter_not_python_values():
    """Calls with identical Python arguments must sample the range of the *current* device counter."""
    replay = ReplayBuffer(capacity=40, num_envs=1, n_step=1, stack=1, frame_shape=(2, 2))
    steps = lambda b: (b.indices // replay.num_envs).tolist()
    for i in range(5):
        replay.add(torch.zeros(1, 2, 2, dtype=torch.uint8), [0], [0.0], [False], [i == 0], [True])
    assert set(steps(replay.sample(256))) == {0, 1, 2, 3}  # the newest step's lookahead is not written yet
    for _ in range(20):
        replay.add(torch.zeros(1, 2, 2, dtype=torch.uint8), [0], [0.0], [False], [False], [True])
    assert replay.t_device.item() == replay.t == 25
    assert max(steps(replay.sample(256))) == 23


def test_uniform_sampling_rejects_auto_reset_slots_and_stays_uniform():
    """Every other slot is an auto-reset slot (one-step episodes): the worst case for the fixed-round
    rejection. Samples must avoid them and be uniform over the rest."""
    from scipy.stats import chisquare

    replay = ReplayBuffer(capacity=400, num_envs=2, n_step=1, stack=1, frame_shape=(2, 2), seed=1)
    for t in range(120):
        executed = [t % 2 == 0, t % 3 != 2]
        replay.add(torch.zeros(2, 2, 2, dtype=torch.uint8), [0, 0], [0.0, 0.0],
                   [t % 2 == 0, t % 3 == 1], [t % 2 == 0, t % 3 == 0], executed)
    batch = replay.sample(60_000)
    valid = replay.executed.flatten()[batch.indices]
    assert valid.all(), "an auto-reset slot was sampled"
    lo, hi = replay.sample_range()
    allowed = [t * 2 + e for t in range(lo, hi + 1) for e in range(2) if replay.executed[t, e]]
    counts = torch.bincount(batch.indices, minlength=replay.capacity)[allowed].double()
    assert counts.sum() == 60_000
    assert chisquare(counts.numpy()).pvalue > 1e-4


def test_cuda_graphs_on_without_a_gpu_is_a_clear_error(tmp_path):
    cfg = chain_config(fast_agent("dqn"), sparsity=0.0)
    cfg.cuda_graphs = "on"
    with pytest.raises(ValueError, match="--cuda-graphs on needs a CUDA device.*training device is cpu"):
        Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=2))
    cfg.cuda_graphs = "auto"  # auto quietly stays eager
    assert not Trainer(cfg, tmp_path / "run2", env=ChainEnv(num_envs=2)).graphs.enabled


def test_greedy_actions_read_a_fixed_buffer_and_refuse_observations_they_would_convert(tmp_path):
    trainer = trainer_ready_to_learn(tmp_path, "dqn")
    obs = trainer.env.reset()
    buffer = trainer._act_obs.data_ptr()
    expected = trainer.agent.greedy_actions(trainer.online, torch.from_numpy(obs)).numpy()
    np.testing.assert_array_equal(trainer.act(obs, epsilon=0.0), expected)
    assert trainer._act_obs.data_ptr() == buffer  # what a captured `act` graph reads
    with pytest.raises(ValueError, match="float32 observations"):
        trainer.act(obs.astype(np.float32), epsilon=0.0)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 8, 8\)"):
        trainer.act(obs[:1], epsilon=0.0)
