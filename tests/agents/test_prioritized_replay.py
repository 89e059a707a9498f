"""Prioritized replay: sampling frequencies follow the priorities (chi-square), importance weights follow
Dopamine's formula, new transitions get the running max priority, and unsampleable slots have priority 0.

Unsampleable slots are checked against a brute-force reading of the base class's rule (start step in
`sample_range()` and an executed action), and every sample against the brute-force n-step reconstruction of
tests/agents/test_replay.py.
"""

import time

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from agents.replay import PrioritizedReplayBuffer, SumTree
from tests.agents.test_replay import H, W, expected, fill

pytestmark = pytest.mark.usefixtures("one_thread")


def sampleable(buf) -> np.ndarray:
    """Brute force: flat slots whose absolute step is in sample_range() and whose action was executed."""
    lo, hi = buf.sample_range()
    ok = np.zeros(buf.capacity, bool)
    for t in range(lo, hi + 1):
        for e in range(buf.num_envs):
            ok[(t % buf.T) * buf.num_envs + e] = bool(buf.executed[t % buf.T, e])
    return ok


def absolute_step(buf, slot: int) -> int:
    lo, hi = buf.sample_range()
    return next(t for t in range(lo, hi + 1) if t % buf.T == slot)


def test_sum_tree_search_matches_cumsum():
    gen = torch.Generator().manual_seed(0)
    for size in (1, 31, 32, 33, 1000, 40_000):
        tree = SumTree(size, torch.device("cpu"))
        values = torch.rand(size, generator=gen, dtype=torch.float64)
        values[torch.rand(size, generator=gen) < 0.3] = 0  # zero leaves are never found
        values[-1] = 0.5
        tree.set(torch.arange(size), values)
        torch.testing.assert_close(tree.total, values.sum())
        query = torch.rand(4000, generator=gen, dtype=torch.float64) * values.sum()
        query[:3] = torch.tensor([0.0, 1.0, 1.001], dtype=torch.float64) * values.sum()  # ends and overshoot
        found = tree.find(query)
        reference = torch.searchsorted(values.cumsum(0), query, right=True).clamp_max(size - 1)
        assert torch.equal(found[3:], reference[3:])
        assert (values[found] > 0).all()
        rebuilt = SumTree(size, torch.device("cpu"))
        rebuilt.leaves[:size] = values
        rebuilt.rebuild()
        for a, b in zip(tree.levels, rebuilt.levels, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n_step,num_envs,capacity,steps", [(1, 1, 60, 150), (3, 2, 2 * 40, 157), (5, 3, 3 * 30, 200)])
def test_only_sampleable_slots_have_priority(n_step, num_envs, capacity, steps):
    rng = np.random.default_rng(n_step)
    buf = PrioritizedReplayBuffer(capacity, num_envs, n_step=n_step, gamma=0.9, frame_shape=(H, W), seed=1)
    first = np.ones(num_envs, bool)
    ended = np.zeros(num_envs, bool)
    for t in range(steps):  # the trainer's protocol: a step's outcome is stored after learning from the buffer
        executed = ~ended
        ends = executed & (rng.random(num_envs) < 0.2)
        frame = np.full((num_envs, H, W), t % 250 + 1, np.uint8)
        buf.add_observation(frame, rng.integers(0, 4, num_envs), first, executed)
        ok = sampleable(buf)
        assert np.array_equal(buf.priorities().numpy() > 0, ok), f"step {t}: priority > 0 exactly where sampleable"
        if ok.any() and t % 5 == 0:
            batch = buf.sample(16)
            assert ok[batch.indices.numpy()].all()
            buf.update_priorities(batch.indices, torch.rand(16) * 4)
        buf.add_outcome(rng.random(num_envs).astype(np.float32), ends & (rng.random(num_envs) < 0.5))
        first, ended = ~executed, ends
    assert (buf.priorities() > 1).any(), "priority updates did not take effect"


@pytest.mark.parametrize("n_step,num_envs", [(1, 1), (3, 2)])
def test_samples_match_brute_force_after_wraparound(n_step, num_envs):
    rng = np.random.default_rng(0)
    buf = PrioritizedReplayBuffer(num_envs * 40, num_envs, n_step=n_step, gamma=0.99, frame_shape=(H, W), seed=2)
    tl = fill(buf, 157, rng, end_prob=0.1)
    ok = sampleable(buf)
    for _ in range(5):
        batch = buf.sample(128)
        buf.update_priorities(batch.indices, torch.rand(128))
        for b, idx in enumerate(batch.indices.tolist()):
            assert ok[idx]
            slot, e = divmod(idx, num_envs)
            obs, ret, disc, next_obs = expected(tl, absolute_step(buf, slot), e, n_step, 0.99)
            np.testing.assert_array_equal(batch.obs[b].numpy(), obs)
            np.testing.assert_array_equal(batch.next_obs[b].numpy(), next_obs)
            assert batch.returns[b].item() == pytest.approx(ret, abs=1e-5)
            assert batch.discounts[b].item() == pytest.approx(disc, abs=1e-6)


def known_priority_buffer(seed=0):
    """A buffer whose sampleable slots got priorities 0.5 .. 4 through update_priorities."""
    rng = np.random.default_rng(seed)
    buf = PrioritizedReplayBuffer(2 * 100, 2, n_step=3, gamma=0.99, frame_shape=(H, W), seed=seed)
    fill(buf, 90, rng, end_prob=0.05)
    valid = np.flatnonzero(sampleable(buf))
    priorities = rng.uniform(0.5, 4.0, valid.size)
    buf.update_priorities(torch.as_tensor(valid), torch.as_tensor(priorities**2 - 1e-10))
    return buf, valid, priorities


def test_sampling_frequencies_follow_priorities():
    buf, valid, priorities = known_priority_buffer()
    np.testing.assert_allclose(buf.priorities().numpy()[valid], priorities, rtol=1e-6)
    counts = np.zeros(buf.capacity)
    draws = 0
    for _ in range(300):
        idx = buf.sample(32).indices.numpy()
        np.add.at(counts, idx, 1)
        draws += idx.size
    assert counts.sum() == counts[valid].sum(), "sampled a slot that is not sampleable"
    expected_counts = draws * priorities / priorities.sum()
    assert expected_counts.min() > 5  # the chi-square approximation holds
    p_value = chisquare(counts[valid], expected_counts).pvalue
    assert p_value > 1e-3, f"frequencies do not follow the priorities (chi-square p = {p_value:.2e})"
    # The test has power: the same counts are far from uniform sampling.
    assert chisquare(counts[valid], np.full(valid.size, draws / valid.size)).pvalue < 1e-6


def test_priority_update_takes_effect_and_weights_follow_dopamine():
    buf, valid, priorities = known_priority_buffer(seed=1)
    favourite = valid[7]
    buf.update_priorities(torch.tensor([favourite]), torch.tensor([1e4]))  # priority ~100
    p = buf.priorities().numpy().astype(np.float64)
    assert p[favourite] == pytest.approx(np.sqrt(1e4 + 1e-10))
    share = p[favourite] / p.sum()
    hits = sum(int((buf.sample(32).indices == favourite).sum()) for _ in range(100))
    assert abs(hits / 3200 - share) < 0.03, (hits / 3200, share)

    batch = buf.sample(32)
    probs = p[batch.indices.numpy()] / p.sum()
    w = 1.0 / np.sqrt(probs + 1e-10)
    np.testing.assert_allclose(batch.weights.numpy(), w / w.max(), rtol=1e-5)
    assert batch.weights.dtype == torch.float32 and batch.weights.max().item() == 1.0


def test_new_transitions_get_the_running_max_priority():
    rng = np.random.default_rng(3)
    buf = PrioritizedReplayBuffer(2 * 50, 2, n_step=3, frame_shape=(H, W))
    fill(buf, 20, rng, end_prob=0.0)
    assert set(np.unique(buf.priorities().numpy())) == {0.0, 1.0}  # Dopamine starts the max at 1
    batch = buf.sample(8)
    buf.update_priorities(batch.indices, torch.full((8,), 24.0))  # sqrt(24 + 1e-10) ~ 4.9
    buf.update_priorities(batch.indices[:1], torch.tensor([0.01]))  # the max is a running max
    before = sampleable(buf)
    fill(buf, 5, rng, end_prob=0.0)
    new = sampleable(buf) & ~before
    assert new.sum() == 2 * 5
    np.testing.assert_allclose(buf.priorities().numpy()[new], np.sqrt(24 + 1e-10))


def test_state_dict_roundtrip_keeps_priorities():
    buf, valid, _ = known_priority_buffer(seed=2)
    other = PrioritizedReplayBuffer(2 * 100, 2, n_step=3, gamma=0.99, frame_shape=(H, W), seed=5)
    other.load_state_dict(buf.state_dict())
    torch.testing.assert_close(other.priorities(), buf.priorities())
    torch.testing.assert_close(other.tree.total, buf.tree.total)
    assert torch.equal(other.sample(64).indices, buf.sample(64).indices)
    assert other.max_priority.item() == buf.max_priority.item()


def test_one_million_slots_sample_and_update_fast():
    """Sampling a batch of 32 from 1M slots and updating its priorities: well under a learner step."""
    n = 4
    buf = PrioritizedReplayBuffer(1_000_000, n, n_step=3, frame_shape=(1, 1))
    zeros = np.zeros((n, 1, 1), np.uint8)
    for t in range(300):
        buf.add(
            zeros, np.zeros(n, int), np.zeros(n, np.float32), np.zeros(n, bool), np.full(n, t == 0), np.ones(n, bool)
        )
    times = []
    for _ in range(60):
        start = time.perf_counter()
        t_abs, env, _ = buf._sample_slots(32)
        buf.update_priorities((t_abs % buf.T) * n + env, torch.rand(32))
        times.append(time.perf_counter() - start)
    median_ms = 1e3 * float(np.median(times))
    assert median_ms < 20, f"sample + update of 32 at 1M slots took {median_ms:.2f} ms"


def test_trainer_checkpoint_restores_priorities(tmp_path):
    """Rainbow through the real Trainer: a checkpoint with the replay brings back the sum tree."""
    from agents.train import Trainer
    from tests.agents.chain_env import ChainEnv
    from tests.agents.test_learning import chain_config, fast_dqn

    cfg = chain_config(fast_dqn(name="rainbow", n_step=3, replay="prioritized"), 0.0, total_steps=600)
    trainer = Trainer(cfg, tmp_path / "a", env=ChainEnv(num_envs=4))
    trainer.run()
    assert isinstance(trainer.replay, PrioritizedReplayBuffer) and trainer.grad_steps > 0
    assert (trainer.replay.priorities() > 0).any() and trainer.replay.max_priority.item() != 1.0
    state = trainer.state_dict(with_replay=True)
    other = Trainer(cfg, tmp_path / "b", env=ChainEnv(num_envs=4))
    other.load_state_dict(state)
    torch.testing.assert_close(other.replay.priorities(), trainer.replay.priorities())
    assert other.replay.max_priority.item() == trainer.replay.max_priority.item()
    assert torch.equal(other.replay.sample(32).indices, trainer.replay.sample(32).indices)
    other.close()
