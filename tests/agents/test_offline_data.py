"""The DQN Replay Dataset loader against files written exactly as Dopamine's OutOfGraphReplayBuffer saves them
(re-implemented here from its code: zero padding before every episode, a circular buffer, gzipped np.save
files), and every loaded transition against a brute-force re-implementation of Dopamine's sampler."""

import gzip
import pickle
import threading

import numpy as np
import pytest
import torch

from agents import offline_data
from agents.offline_data import (
    DatasetError,
    FixedReplay,
    OfflineData,
    load_fixed_replay,
    parse_checkpoints,
    write_checkpoint,
)

FRAME = (6, 6)
STACK = 4


class DopamineBuffer:
    """Dopamine's OutOfGraphReplayBuffer.add / save, reduced to what the files hold."""

    def __init__(self, capacity: int, update_horizon: int = 1):
        self.capacity, self.horizon = capacity, update_horizon
        self.store = {"observation": np.zeros((capacity, *FRAME), np.uint8), "action": np.zeros(capacity, np.int32),
                      "reward": np.zeros(capacity, np.float32), "terminal": np.zeros(capacity, np.uint8)}
        self.add_count = 0
        self.invalid_range = np.zeros(STACK)  # Dopamine's initial value (float)
        self.next_is_start = True

    def _add(self, obs, action, reward, terminal):
        c = self.add_count % self.capacity
        for name, v in zip(("observation", "action", "reward", "terminal"), (obs, action, reward, terminal)):
            self.store[name][c] = v
        self.add_count += 1
        cursor = self.add_count % self.capacity
        self.invalid_range = np.array([(cursor - self.horizon + i) % self.capacity
                                       for i in range(STACK + self.horizon)])

    def add(self, obs, action, reward, terminal, episode_end=False):
        if self.next_is_start:
            for _ in range(STACK - 1):
                self._add(np.zeros(FRAME, np.uint8), 0, 0.0, 0)
            self.next_is_start = False
        if terminal or episode_end:
            self.next_is_start = True
        self._add(obs, action, reward, terminal)

    def save(self, directory, suffix, with_episode_ends=False):
        def dump(name, value, pickled=False):
            with gzip.open(directory / f"{name}_ckpt.{suffix}.gz", "wb") as f:
                pickle.dump(value, f) if pickled else np.save(f, value, allow_pickle=False)

        for name, array in self.store.items():
            dump(f"$store$_{name}", array)
        dump("add_count", np.array(self.add_count))
        dump("invalid_range", self.invalid_range)
        if with_episode_ends:  # newer Dopamine; never read by the loader
            dump("episode_end_indices", {1, 2, 3}, pickled=True)


def frame(step_id: int, rng) -> np.ndarray:
    f = rng.integers(0, 256, FRAME).astype(np.uint8)
    f[0, 0], f[0, 1] = step_id % 256, step_id // 256 + 1  # never all zero: padding frames stay recognisable
    return f


def play(buffer: DopamineBuffer, steps: int, rng, end_prob=0.08):
    """Episodes of random length; some end by a terminal, some by a time limit (Dopamine's old format then
    stores a non-terminal last step and starts padding the next episode)."""
    for t in range(steps):
        ends = rng.random() < end_prob
        terminal = ends and rng.random() < 0.7
        buffer.add(frame(t, rng), int(rng.integers(0, 5)), float(rng.choice([-2.0, 0.0, 0.5, 1.0, 3.0])), terminal,
                   episode_end=ends)


def dopamine_transitions(buf: DopamineBuffer, n: int, gamma: float) -> dict[int, tuple]:
    """Every index Dopamine's sampler accepts -> (state, action, return, discount, next state), by its rules,
    one index at a time (rewards clipped to [-1, 1] as our learner does)."""
    c, cursor, full = buf.capacity, buf.add_count % buf.capacity, buf.add_count >= buf.capacity
    obs, term = buf.store["observation"], buf.store["terminal"]
    invalid = {(cursor - n + i) % c for i in range(STACK + n)}
    out = {}
    for index in range(c):
        if not full and (index >= cursor - n or index < STACK - 1):
            continue
        if index in invalid or any(term[(index - k) % c] for k in range(1, STACK)):
            continue
        traj = [(index + j) % c for j in range(n)]
        length = next((j + 1 for j, i in enumerate(traj) if term[i]), n)
        ret = sum(gamma**j * float(np.clip(buf.store["reward"][traj[j]], -1, 1)) for j in range(length))
        disc = 0.0 if any(term[i] for i in traj) else gamma**n
        stack_at = lambda j: np.stack([obs[(j - STACK + 1 + k) % c] for k in range(STACK)])  # noqa: E731
        out[index] = (stack_at(index), int(buf.store["action"][index]), ret, disc, stack_at(index + length))
    return out


def step_id(stack: np.ndarray) -> tuple:
    """Identify a stack by its frames' step ids (0 for a padding frame)."""
    return tuple(int(f[0, 1]) * 256 + int(f[0, 0]) if f[0, 1] else -1 for f in stack)


def as_table(data: OfflineData) -> dict[tuple, tuple]:
    frames = data.frames
    return {step_id(frames[data.state[m]]): (frames[data.state[m]], int(data.actions[m]), float(data.returns[m]),
                                             float(data.discounts[m]), frames[data.next_state[m]])
            for m in range(len(data.actions))}


def load(tmp_path, **kw):
    args = dict(checkpoints="all", fraction=1.0, chunk=1, seed=0, stack=STACK, n_step=3, gamma=0.9,
                frame_shape=FRAME)
    return load_fixed_replay(tmp_path, **{**args, **kw})


@pytest.mark.parametrize("steps,capacity,n", [(300, 500, 1), (300, 500, 3), (1300, 500, 3), (1024, 500, 5)])
def test_every_transition_matches_dopamines_sampler(tmp_path, steps, capacity, n):
    """Not-full buffers and wrapped ones (cursor mid-buffer), n-step 1 to 5: the loader keeps exactly the
    indices Dopamine would sample, with its stacks, n-step returns, discounts and bootstrap stacks."""
    rng = np.random.default_rng(steps + n)
    buf = DopamineBuffer(capacity, update_horizon=n)
    play(buf, steps, rng)
    buf.save(tmp_path, 0, with_episode_ends=True)
    data = load(tmp_path, n_step=n)
    expected = dopamine_transitions(buf, n, 0.9)
    got = as_table(data)
    assert len(got) == len(data.actions) == len(expected)  # every state stack is distinct
    by_stack = {step_id(v[0]): v for v in expected.values()}
    assert got.keys() == by_stack.keys()
    for key, (state, action, ret, disc, next_state) in by_stack.items():
        g = got[key]
        np.testing.assert_array_equal(g[0], state)
        np.testing.assert_array_equal(g[4], next_state)
        assert (g[1], g[2], g[3]) == (action, pytest.approx(ret, abs=1e-5), pytest.approx(disc, abs=1e-6))
    padded = sum(-1 in step_id(s) for s, *_ in expected.values())
    terminal = sum(d == 0 for _, _, _, d, _ in expected.values())
    assert padded and terminal, "the data never exercised padding or terminals"
    assert data.frames.dtype == np.uint8 and data.frames.shape[0] <= capacity  # each frame once


def test_a_checkpoint_written_with_another_horizon_still_loads(tmp_path):
    """The published data was written with update horizon 1; agents train with n = 3: invalid_range is checked
    for the writer's horizon, the sampler uses the agent's."""
    rng = np.random.default_rng(0)
    buf = DopamineBuffer(400, update_horizon=1)
    play(buf, 900, rng)
    buf.save(tmp_path, 0)
    assert len(load(tmp_path, n_step=3).actions) == len(dopamine_transitions(buf, 3, 0.9))


def write_checkpoints(tmp_path, suffixes=(0, 1, 2), steps=600, capacity=400):
    rng = np.random.default_rng(1)
    for s in suffixes:
        buf = DopamineBuffer(capacity)
        play(buf, steps + 37 * s, rng)
        buf.save(tmp_path, s)


def test_five_percent_protocol_is_a_seeded_uniform_sample_of_runs_of_indices(tmp_path):
    write_checkpoints(tmp_path, steps=2000, capacity=1000)
    full = load(tmp_path, chunk=1)
    all_keys = set(as_table(full))
    a, b = load(tmp_path, fraction=0.05, chunk=10, seed=7), load(tmp_path, fraction=0.05, chunk=10, seed=7)
    c = load(tmp_path, fraction=0.05, chunk=10, seed=8)
    ka, kc = set(as_table(a)), set(as_table(c))
    assert ka == set(as_table(b)) and ka != kc and ka <= all_keys and kc <= all_keys
    assert a.info["checkpoints"] == [0, 1, 2]
    # 300 runs of 10 indices, 15 kept; a few indices of a run are invalid near episode starts.
    assert 0.7 * 150 < len(ka) <= 150
    assert len(set(a.info["transitions_per_checkpoint"].values())) > 1 or len(a.info["transitions_per_checkpoint"]) > 1
    single = load(tmp_path, fraction=0.05, chunk=1, seed=3)
    assert abs(len(single.actions) - 0.05 * len(full.actions)) < 0.03 * len(full.actions)
    # Memory: only the frames the kept stacks use.
    assert a.frames.shape[0] < 0.1 * full.frames.shape[0]


def test_checkpoint_selection(tmp_path):
    write_checkpoints(tmp_path, suffixes=(0, 1, 2, 5))
    assert parse_checkpoints("0-2,5", [0, 1, 2, 5], tmp_path) == [0, 1, 2, 5]
    assert load(tmp_path, checkpoints="1").info["checkpoints"] == [1]
    both = load(tmp_path, checkpoints="0,2")
    parts = [len(load(tmp_path, checkpoints=c).actions) for c in ("0", "2")]
    assert len(both.actions) == sum(parts)
    with pytest.raises(DatasetError, match=r"no checkpoint \[3, 4\].*0-2, 5"):
        load(tmp_path, checkpoints="3-5")
    with pytest.raises(DatasetError, match="is not N or A-B"):
        load(tmp_path, checkpoints="first")
    sub = tmp_path / "game" / "replay_logs"
    sub.mkdir(parents=True)
    write_checkpoints(sub, suffixes=(4,))
    assert load(tmp_path / "game").info["checkpoints"] == [4]  # a folder holding replay_logs/ works too


def test_cache_memory_maps_the_frames_and_reloads_them(tmp_path):
    data_dir, cache = tmp_path / "data", tmp_path / "cache"
    data_dir.mkdir()
    write_checkpoints(data_dir)
    first = load(data_dir, cache_dir=cache, fraction=0.5, chunk=20)
    assert isinstance(first.frames, np.memmap)
    for f in data_dir.iterdir():  # the second load must not read the observations again
        if "observation" in f.name:
            f.write_bytes(f.read_bytes())  # same content, new mtime: a different fingerprint
    again = load(data_dir, cache_dir=cache, fraction=0.5, chunk=20)
    assert len(list(cache.glob("*.frames.npy"))) == 2  # a changed file is a new key
    third = load(data_dir, cache_dir=cache, fraction=0.5, chunk=20)
    assert isinstance(third.frames, np.memmap) and len(list(cache.glob("*.frames.npy"))) == 2
    for x in (again, third):
        np.testing.assert_array_equal(np.asarray(x.frames), np.asarray(first.frames))
        for name in ("state", "next_state", "actions", "returns", "discounts"):
            np.testing.assert_array_equal(getattr(x, name), getattr(first, name))


def test_a_second_run_of_the_same_sample_never_overwrites_a_cache_being_built(tmp_path, monkeypatch):
    """A sweep's dense and pruned twins read the same sample into one cache. The second, started while the first
    streamed its frames, opened the cache file to write it again: the first's frames read so far became zeros
    (and stayed so when the second was killed), and the first trained on them and wrote them as the cache."""
    data_dir, cache = tmp_path / "data", tmp_path / "cache"
    data_dir.mkdir()
    write_checkpoints(data_dir)
    expected = load(data_dir, fraction=0.5, chunk=20)
    stream, first_streaming, second_done = offline_data.stream_frames, threading.Event(), threading.Event()

    def stream_frames(*args):
        if threading.current_thread().name == "second":
            raise KeyboardInterrupt  # killed while building the cache
        stream(*args)
        first_streaming.set()
        second_done.wait(timeout=0.5)  # (with the cache's lock the second run waits for this one instead)

    monkeypatch.setattr(offline_data, "stream_frames", stream_frames)
    results = {}

    def run(name):
        try:
            results[name] = load(data_dir, cache_dir=cache, fraction=0.5, chunk=20)
        except KeyboardInterrupt:
            results[name] = None
        finally:
            if name == "second":
                second_done.set()

    first = threading.Thread(target=run, args=("first",), name="first")
    first.start()
    assert first_streaming.wait(timeout=30)
    second = threading.Thread(target=run, args=("second",), name="second")
    second.start()
    first.join()
    second.join()
    for data in (results["first"], load(data_dir, cache_dir=cache, fraction=0.5, chunk=20)):
        np.testing.assert_array_equal(np.asarray(data.frames), expected.frames)


def test_a_run_killed_while_writing_the_cache_index_leaves_no_index(tmp_path, monkeypatch):
    data_dir, cache = tmp_path / "data", tmp_path / "cache"
    data_dir.mkdir()
    write_checkpoints(data_dir)
    savez = np.savez

    def killed_while_writing(f, **arrays):
        savez(f, **arrays)
        f.truncate(100)  # what a kill in the middle leaves
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(np, "savez", killed_while_writing)
        with pytest.raises(KeyboardInterrupt):
            load(data_dir, cache_dir=cache)
    assert not list(cache.glob("*.index.npz"))
    np.testing.assert_array_equal(load(data_dir, cache_dir=cache).frames, load(data_dir).frames)


# --- errors ----------------------------------------------------------------------------------------------------------
def _gz_npy(path, array):
    with gzip.open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def test_a_file_for_the_data_or_cache_directory_is_named(tmp_path):
    """A file as --offline.data read as "does not exist"; as --offline.cache-dir it was an OSError (exit 1) naming
    neither the option nor its use."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_checkpoints(data_dir)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(DatasetError, match="offline data directory .*a_file is a file, not a directory"):
        load(a_file)
    with pytest.raises(DatasetError, match="--offline.cache-dir .*a_file cannot be used as a directory: File exists"):
        load(data_dir, cache_dir=a_file)
    with pytest.raises(DatasetError, match="--offline.cache-dir .*a_file/sub cannot be used as a directory"):
        load(data_dir, cache_dir=a_file / "sub")


def test_missing_truncated_and_mismatched_files_are_named(tmp_path):
    write_checkpoints(tmp_path, suffixes=(0, 1))
    with pytest.raises(DatasetError, match="does not exist"):
        load(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no DQN Replay checkpoint"):
        load(empty)

    (tmp_path / "$store$_reward_ckpt.1.gz").rename(tmp_path / "moved.gz")
    with pytest.raises(DatasetError, match=r"checkpoint 1 .* incomplete: missing \$store\$_reward_ckpt\.1\.gz"):
        load(tmp_path)
    assert len(load(tmp_path, checkpoints="0").actions) > 0
    (tmp_path / "moved.gz").rename(tmp_path / "$store$_reward_ckpt.1.gz")

    obs = tmp_path / "$store$_observation_ckpt.1.gz"
    good = obs.read_bytes()
    obs.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"observation_ckpt\.1\.gz is truncated"):
        load(tmp_path)
    obs.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match=r"observation_ckpt\.1\.gz is not a gzipped \.npy"):
        load(tmp_path)
    obs.write_bytes(good)

    action = tmp_path / "$store$_action_ckpt.1.gz"
    _gz_npy(action, np.zeros(399, np.int32))
    with pytest.raises(DatasetError, match=r"action_ckpt\.1\.gz holds int32 \(399,\); expected 400 values"):
        load(tmp_path)
    _gz_npy(action, np.zeros(400, np.int32))

    _gz_npy(tmp_path / "add_count_ckpt.1.gz", np.array(12345))
    with pytest.raises(DatasetError, match=r"invalid_range_ckpt\.1\.gz does not match .*add_count_ckpt\.1\.gz"):
        load(tmp_path)
    with gzip.open(tmp_path / "add_count_ckpt.1.gz", "wb") as f:
        pickle.dump(5, f)
    with pytest.raises(DatasetError, match=r"add_count_ckpt\.1\.gz is not a gzipped \.npy"):
        load(tmp_path)

    _gz_npy(obs, np.zeros((400, 84, 84), np.uint8))
    with pytest.raises(DatasetError, match=r"holds uint8 \(400, 84, 84\); expected uint8 \[C, 6, 6\]"):
        load(tmp_path)
    with pytest.raises(DatasetError, match="fraction"):
        load(tmp_path, fraction=0.0)


# --- writing and sampling ---------------------------------------------------------------------------------------
def test_written_checkpoints_load_back(tmp_path):
    """`write_checkpoint` (the exporter's writer) produces what the loader and Dopamine's format expect:
    streamed frame blocks, a full buffer with its cursor at 0."""
    rng = np.random.default_rng(2)
    buf = DopamineBuffer(10_000)
    play(buf, 500, rng)
    c = buf.add_count
    obs = buf.store["observation"][:c]
    write_checkpoint(tmp_path / "out", 3, (obs[i:i + 64] for i in range(0, c, 64)), buf.store["action"][:c],
                     buf.store["reward"][:c], buf.store["terminal"][:c], frame_shape=FRAME)
    with gzip.open(tmp_path / "out" / "$store$_observation_ckpt.3.gz") as f:
        np.testing.assert_array_equal(np.load(f), obs)
    loaded = load(tmp_path / "out")
    same_buffer = DopamineBuffer(c)
    for name in same_buffer.store:
        same_buffer.store[name][:] = buf.store[name][:c]
    same_buffer.add_count = c
    assert len(loaded.actions) == len(dopamine_transitions(same_buffer, 3, 0.9))


def test_fixed_replay_samples_uniformly_on_its_device(tmp_path):
    write_checkpoints(tmp_path, suffixes=(0,))
    data = load(tmp_path)
    replay = FixedReplay(data, seed=4)
    batch = replay.sample(20_000)
    m = len(data.actions)
    counts = torch.bincount(batch.indices, minlength=m)
    assert counts.numel() == m and counts.min() > 0
    j = batch.indices[:50].numpy()
    np.testing.assert_array_equal(batch.obs[:50].numpy(), data.frames[data.state[j]])
    np.testing.assert_array_equal(batch.next_obs[:50].numpy(), data.frames[data.next_state[j]])
    np.testing.assert_array_equal(batch.returns[:50].numpy(), data.returns[j])
    assert batch.obs.dtype == torch.uint8 and (batch.weights == 1).all()
    again = FixedReplay(data, seed=4).sample(20_000)
    assert torch.equal(again.indices, batch.indices)
