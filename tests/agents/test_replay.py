"""Replay: stacks rebuilt from single frames never cross episode boundaries; n-step returns are exact.

Every sample is checked against a brute-force reconstruction from the plain timeline that was added.
"""

import numpy as np
import pytest
import torch

from agents.replay import ReplayBuffer

H = W = 6


def frame_of(t, e):
    return np.full((H, W), (t * 7 + e * 3) % 250 + 1, dtype=np.uint8)  # never 0, so padding is visible


def fill(buf, steps, rng, end_prob=0.2, frame=frame_of):
    """Drive `buf` like the trainer does under the next-step auto-reset contract; return the timeline. `frame(t,
    e)` is env e's frame at step t."""
    n = buf.num_envs
    timeline = {k: [] for k in ("frame", "action", "reward", "terminal", "first", "executed")}
    first = np.ones(n, bool)
    ended = np.zeros(n, bool)
    for t in range(steps):
        executed = ~ended  # an env whose episode ended last step is being reset: its action is ignored
        action = rng.integers(0, 4, n)
        reward = np.where(executed, rng.choice([-3.0, -1.0, 0.0, 0.5, 2.0], n), 0.0).astype(np.float32)
        ends = executed & (rng.random(n) < end_prob)
        terminal = ends & (rng.random(n) < 0.5)  # the other ends are truncations
        frames = np.stack([frame(t, e) for e in range(n)])
        buf.add(frames, action, reward, terminal, first, executed)
        for k, v in zip(timeline, (frames, action, reward, terminal, first, executed)):
            timeline[k].append(v.copy())
        first, ended = ~executed, ends
    return {k: np.stack(v) for k, v in timeline.items()}


def expected(tl, t, e, n, gamma, stack=4):
    def stack_at(j):
        out = np.zeros((stack, H, W), np.uint8)
        for k in range(stack):
            i = j - (stack - 1) + k
            if i >= 0:
                out[k] = tl["frame"][i, e]
        for k in range(stack - 1, 0, -1):  # zero everything before the latest episode start in the stack
            i = j - (stack - 1) + k
            if i >= 0 and tl["first"][i, e]:
                out[:k] = 0
                break
        return out

    ret, m, done = 0.0, n, False
    for k in range(n):
        if k > 0 and not tl["executed"][t + k, e]:
            m = k
            break
        ret += gamma**k * float(np.clip(tl["reward"][t + k, e], -1, 1))
        if tl["terminal"][t + k, e]:
            done = True
            break
    return stack_at(t), ret, 0.0 if done else gamma**m, stack_at(t + m)


@pytest.mark.parametrize("n_step,num_envs", [(1, 1), (3, 2), (5, 3)])
def test_samples_match_brute_force(n_step, num_envs):
    rng = np.random.default_rng(n_step)
    buf = ReplayBuffer(10_000, num_envs, n_step=n_step, gamma=0.9, frame_shape=(H, W), seed=n_step)
    tl = fill(buf, 300, rng)
    batch = buf.sample(512)
    slots, envs = (batch.indices // num_envs).numpy(), (batch.indices % num_envs).numpy()
    crossed = 0
    for b, (t, e) in enumerate(zip(slots, envs)):
        assert tl["executed"][t, e], "a reset step (ignored action) was sampled as a transition"
        obs, ret, disc, next_obs = expected(tl, t, e, n_step, 0.9)
        np.testing.assert_array_equal(batch.obs[b].numpy(), obs)
        np.testing.assert_array_equal(batch.next_obs[b].numpy(), next_obs)
        assert batch.returns[b].item() == pytest.approx(ret, abs=1e-6)
        assert batch.discounts[b].item() == pytest.approx(disc, abs=1e-6)
        assert batch.actions[b].item() == tl["action"][t, e]
        crossed += int((obs == 0).all(axis=(1, 2)).any())
    assert crossed > 0, "no sample near an episode start: the test did not exercise padding"
    assert (batch.weights == 1).all()


def test_wraparound_keeps_only_intact_stacks():
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(2 * 40, 2, n_step=3, gamma=0.99, frame_shape=(H, W))
    tl = fill(buf, 157, rng, end_prob=0.1)
    lo, hi = buf.sample_range()
    assert (lo, hi) == (157 - 40 + 3, 157 - 1 - 3)
    batch = buf.sample(400)
    for b, idx in enumerate(batch.indices.tolist()):
        slot, e = divmod(idx, 2)
        t = next(t for t in range(lo, hi + 1) if t % 40 == slot)
        obs, ret, disc, next_obs = expected(tl, t, e, 3, 0.99)
        np.testing.assert_array_equal(batch.obs[b].numpy(), obs)
        np.testing.assert_array_equal(batch.next_obs[b].numpy(), next_obs)
        assert batch.returns[b].item() == pytest.approx(ret, abs=1e-5)


def test_rewards_are_clipped_in_the_learner_only():
    buf = ReplayBuffer(100, 1, frame_shape=(H, W))
    for t in range(10):
        buf.add(frame_of(t, 0)[None], [0], [5.0], [False], [t == 0], [True])
    assert buf.rewards.max().item() == 5.0  # stored raw
    assert buf.sample(8).returns.max().item() == 1.0  # clipped when sampled


def test_one_million_transitions_fit_in_8_gb():
    buf = ReplayBuffer(1000, 4)
    tensors = [buf.frames, buf.actions, buf.rewards, buf.terminal, buf.first, buf.executed]
    per_transition = sum(t.numel() * t.element_size() for t in tensors) / buf.capacity
    assert per_transition * 1_000_000 < 7.5e9, per_transition


def test_state_dict_roundtrip_and_errors():
    rng = np.random.default_rng(1)
    buf = ReplayBuffer(400, 2, n_step=2, frame_shape=(H, W), seed=3)
    fill(buf, 50, rng)
    other = ReplayBuffer(400, 2, n_step=2, frame_shape=(H, W), seed=99)
    other.load_state_dict(buf.state_dict())
    a, b = buf.sample(16), other.sample(16)
    torch.testing.assert_close(a.obs, b.obs)
    torch.testing.assert_close(a.returns, b.returns)
    with pytest.raises(ValueError, match="slots"):
        ReplayBuffer(800, 2, frame_shape=(H, W)).load_state_dict(buf.state_dict())
    with pytest.raises(RuntimeError, match="too few"):
        ReplayBuffer(400, 2, frame_shape=(H, W)).sample(4)
    with pytest.raises(ValueError, match="too small"):
        ReplayBuffer(4, 2)


def _views_of_one_host_buffer(n, steps, rng):
    """Each step's arrays, all views of one host buffer rewritten every step (as an env's output buffer is):
    the replay must have consumed a step's arrays when `add` returns."""
    obs = np.zeros((n, 4, H, W), np.uint8)  # frames are obs[:, -1]: a non-contiguous view
    scalars = np.zeros((4, n), np.float64)
    for _ in range(steps):
        obs[:] = rng.integers(1, 250, obs.shape, dtype=np.uint8)
        scalars[:] = rng.integers(0, 2, scalars.shape)
        yield obs[:, -1], scalars[0].astype(np.int64), scalars[1], scalars[2] > 0, scalars[3] > 0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_add_consumes_host_arrays_before_returning(device):
    """A host array rewritten right after `add` (non_blocking copies into a CUDA replay) leaves what was added."""
    n, steps = 3, 12
    buf = ReplayBuffer(10 * n, n, frame_shape=(H, W), device=device)
    seen = []
    for frame, action, reward, terminal, first in _views_of_one_host_buffer(n, steps, np.random.default_rng(0)):
        buf.add(frame, action, reward, terminal, first, np.ones(n, bool))
        seen.append([x.copy() for x in (frame, action, reward, terminal, first)])
    for t, (frame, action, reward, terminal, first) in enumerate(seen[-buf.T:], start=max(0, steps - buf.T)):
        slot = t % buf.T
        assert np.array_equal(buf.frames[slot].cpu().numpy(), frame)
        assert np.array_equal(buf.actions[slot].cpu().numpy(), action)
        assert np.array_equal(buf.rewards[slot].cpu().numpy(), reward.astype(np.float32))
        assert np.array_equal(buf.terminal[slot].cpu().numpy(), terminal)
        assert np.array_equal(buf.first[slot].cpu().numpy(), first)
