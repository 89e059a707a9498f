"""The DQN Replay Dataset's on-disk format (Agarwal et al. 2020, written by Dopamine's replay buffer): reading it
into a fixed replay for offline training, and writing it (used by `agents.export_dataset`).

A game's folder (`<root>/<Game>/<run>/replay_logs/`) holds one checkpoint per suffix N, each six gzipped
`np.save` files:

    $store$_observation_ckpt.N.gz   uint8 [C, 84, 84]   the newest frame of each step's observation
    $store$_action_ckpt.N.gz        int32 [C]           the action taken there
    $store$_reward_ckpt.N.gz        float32 [C]         its reward (clipped to [-1, 1] in the published data)
    $store$_terminal_ckpt.N.gz      uint8 [C]           1 if the episode terminated after it
    add_count_ckpt.N.gz             int64 []            transitions ever added (the circular cursor is
                                                        add_count % C; the buffer is full once it is >= C)
    invalid_range_ckpt.N.gz         int [stack + h]     the indices around the cursor that the writer (update
                                                        horizon h) could not sample

Dopamine adds stack - 1 all-zero steps (observation, action, reward, terminal all 0) before every episode's first
step, so a stack is simply the `stack` consecutive observations ending at an index. A transition starting at
index i is valid (Dopamine's `is_valid_transition`) if its index is not near the cursor (the `stack + n`
indices from cursor - n on), not before `stack - 1` in a buffer that is not full, not past `cursor - n` there,
and no terminal lies among the first stack - 1 steps of its stack. Its n-step return stops at the first
terminal of i .. i + n - 1 (discount 0), otherwise it bootstraps from the stack ending at i + n (discount gamma^n).
Newer Dopamine versions also pickle `episode_end_indices`; it is not in the published dataset and never read
here (a pickle can run code).

Loading (`load_fixed_replay`): the chosen checkpoints are split into runs of `chunk` consecutive indices, and a
seeded uniform sample of `fraction` of all runs is kept (the paper's "5%" protocol with fraction 0.05). Only the
frames that the kept transitions' stacks use are read, streamed out of the gzip files straight into one uint8
array (memory-mapped in a cache directory when one is given), so memory holds each frame once. A missing,
truncated or inconsistent file is a `DatasetError` that names it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agents.checkpoint import atomic_write_bytes
from agents.locks import run_lock
from agents.replay import Batch

STORE = ("observation", "action", "reward", "terminal")
FILES = tuple(f"$store$_{name}" for name in STORE) + ("add_count", "invalid_range")
_OBS_FILE = re.compile(r"^\$store\$_observation_ckpt\.(\d+)\.gz$")
_READ_ROWS = 4096  # observation rows decompressed per read while streaming


class DatasetError(ValueError):
    """A dataset directory or file that cannot be used, with the path and the problem."""


def file_path(data_dir: Path, name: str, suffix: int) -> Path:
    return Path(data_dir) / f"{name}_ckpt.{suffix}.gz"


# --- reading npy files inside gzip ---------------------------------------------------------------------------
def _read_header(f, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, EOFError, OSError, zlib.error) as e:
        raise DatasetError(f"{path} is not a gzipped .npy file ({e})") from e
    if fortran and len(shape) > 1:
        raise DatasetError(f"{path} stores a Fortran-ordered array; expected C order as np.save writes")
    if dtype.hasobject:
        raise DatasetError(f"{path} holds Python objects, not numbers")
    return shape, dtype


def _read_exact(f, nbytes: int, path: Path, into: memoryview | None = None) -> bytes | None:
    """Read exactly nbytes (into `into` when given); a short read or a corrupt stream is a DatasetError."""
    try:
        if into is not None:
            done = 0
            while done < nbytes:
                n = f.readinto(into[done:nbytes])
                if not n:
                    break
                done += n
            data = None
        else:
            data = f.read(nbytes)
            done = len(data)
    except (EOFError, OSError, zlib.error) as e:  # gzip: truncated stream, bad CRC, garbage
        raise DatasetError(f"{path} is truncated or corrupt ({type(e).__name__}: {e})") from e
    if done < nbytes:
        raise DatasetError(f"{path} is truncated: its header promises {nbytes} more bytes than it holds")
    return data


def read_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a gzipped .npy file (reads only its first bytes)."""
    with _open(path) as f:
        return _read_header(f, path)


def read_array(path: Path) -> np.ndarray:
    """A whole gzipped .npy file (pickles refused)."""
    with _open(path) as f:
        shape, dtype = _read_header(f, path)
        count = int(np.prod(shape, dtype=np.int64))
        data = _read_exact(f, count * dtype.itemsize, path)
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _open(path: Path):
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    return gzip.open(path, "rb")


def write_array(path: Path, array: np.ndarray) -> None:
    """np.save into a gzip file, as Dopamine's replay buffer writes each stored array."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        np.save(f, np.asarray(array), allow_pickle=False)


def write_frames(path: Path, shape: tuple[int, ...], blocks) -> None:
    """np.save of a uint8 array of `shape` into a gzip file, from `blocks` (uint8 arrays of rows, in order), so
    the whole array never has to be in memory."""
    written = 0
    with gzip.open(path, "wb", compresslevel=1) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                 "fortran_order": False, "shape": tuple(shape)})
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=np.uint8)
            f.write(block.tobytes())
            written += block.shape[0]
    if written != shape[0]:
        raise ValueError(f"write_frames: {written} rows written to {path}, its header says {shape[0]}")


def write_checkpoint(data_dir: Path, suffix: int, frame_blocks, actions: np.ndarray, rewards: np.ndarray,
                     terminals: np.ndarray, *, frame_shape: tuple[int, int] = (84, 84), stack: int = 4,
                     update_horizon: int = 1) -> None:
    """Write one checkpoint in the DQN Replay format: a full buffer of C = len(actions) steps whose cursor is at 0
    (add_count = C), as Dopamine's replay buffer saves it (invalid_range for `update_horizon`)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    capacity = len(actions)
    write_frames(file_path(data_dir, "$store$_observation", suffix), (capacity, *frame_shape), frame_blocks)
    write_array(file_path(data_dir, "$store$_action", suffix), np.asarray(actions, dtype=np.int32))
    write_array(file_path(data_dir, "$store$_reward", suffix), np.asarray(rewards, dtype=np.float32))
    write_array(file_path(data_dir, "$store$_terminal", suffix), np.asarray(terminals, dtype=np.uint8))
    write_array(file_path(data_dir, "add_count", suffix), np.array(capacity, dtype=np.int64))
    invalid = (0 - update_horizon + np.arange(stack + update_horizon)) % capacity
    write_array(file_path(data_dir, "invalid_range", suffix), invalid.astype(np.int64))


# --- one checkpoint -------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """The small arrays of one checkpoint (everything but the frames), checked against each other."""

    data_dir: Path
    suffix: int
    capacity: int
    add_count: int
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray

    @property
    def cursor(self) -> int:
        return self.add_count % self.capacity

    @property
    def full(self) -> bool:
        return self.add_count >= self.capacity

    def valid(self, stack: int, n_step: int) -> np.ndarray:
        """Bool [C]: which indices start a transition Dopamine's sampler would accept."""
        c, cursor = self.capacity, self.cursor
        index = np.arange(c)
        valid = np.ones(c, dtype=bool)
        if not self.full:
            valid &= (index >= stack - 1) & (index < cursor - n_step)
        near_cursor = (cursor - n_step + np.arange(stack + n_step)) % c
        valid[near_cursor] = False
        term = self.terminals.astype(bool)
        for k in range(1, stack):  # a terminal among the first stack - 1 steps of the stack
            if self.full:
                valid &= ~np.roll(term, k)
            else:
                valid[k:] &= ~term[:-k]
        return valid

    def transitions(self, index: np.ndarray, stack: int, n_step: int, gamma: float, reward_clip: float | None):
        """For start indices [M]: state frame indices [M, stack], next-state frame indices [M, stack], actions,
        n-step returns and bootstrap discounts (Dopamine's sample_transition_batch, rewards clipped)."""
        c = self.capacity
        steps = (index[:, None] + np.arange(n_step)) % c  # [M, n]
        term = self.terminals[steps].astype(bool)
        ended = term.any(1)
        length = np.where(ended, term.argmax(1) + 1, n_step)
        rewards = self.rewards[steps].astype(np.float64)
        if reward_clip is not None:
            rewards = rewards.clip(-reward_clip, reward_clip)
        within = np.arange(n_step)[None, :] < length[:, None]
        returns = (rewards * gamma ** np.arange(n_step) * within).sum(1)
        discounts = np.where(ended, 0.0, gamma**n_step)
        offsets = np.arange(-stack + 1, 1)
        state = (index[:, None] + offsets) % c
        nxt = ((index + length)[:, None] + offsets) % c
        return state, nxt, self.actions[index].astype(np.int64), returns.astype(np.float32), \
            discounts.astype(np.float32)


def checkpoint_suffixes(data_dir: Path) -> list[int]:
    """The checkpoint suffixes whose observation file is in data_dir, sorted."""
    return sorted(int(m.group(1)) for p in Path(data_dir).iterdir() if (m := _OBS_FILE.match(p.name)))


def resolve_data_dir(data: str | Path) -> Path:
    """The folder that holds the checkpoint files: `data` itself, or its replay_logs/ subfolder."""
    path = Path(data).expanduser()
    if path.exists() and not path.is_dir():
        raise DatasetError(f"offline data directory {path} is a file, not a directory")
    if not path.is_dir():
        raise DatasetError(f"offline data directory {path} does not exist")
    for candidate in (path, path / "replay_logs"):
        if candidate.is_dir() and checkpoint_suffixes(candidate):
            return candidate
    raise DatasetError(f"{path} holds no DQN Replay checkpoint ($store$_observation_ckpt.<N>.gz); point "
                       "--offline.data at a game's replay_logs folder, e.g. dqn_replay/Pong/1/replay_logs")


def parse_checkpoints(spec: str, available: list[int], data_dir: Path) -> list[int]:
    """'all', 'N', 'A-B' (inclusive) or a comma-separated mix -> the chosen suffixes, each of which must exist."""
    if spec.strip() == "all":
        return list(available)
    chosen = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise DatasetError(f"--offline.checkpoints {spec!r}: {part!r} is not N or A-B (or 'all')")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise DatasetError(f"--offline.checkpoints {spec!r}: empty range {part!r}")
        chosen += range(lo, hi + 1)
    missing = sorted(set(chosen) - set(available))
    if missing:
        raise DatasetError(f"{data_dir} has no checkpoint {missing} (it has {_ranges(available)})")
    return sorted(set(chosen))


def _ranges(values: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out) or "none"


def checkpoint_capacity(data_dir: Path, suffix: int, frame_shape: tuple[int, int]) -> int:
    """Rows of a checkpoint, after checking that every one of its files exists and that the four stored
    arrays' headers agree (shape, dtype)."""
    for name in FILES:
        if not file_path(data_dir, name, suffix).is_file():
            raise DatasetError(f"checkpoint {suffix} in {data_dir} is incomplete: missing "
                               f"{file_path(data_dir, name, suffix).name}")
    headers = {name: read_header(file_path(data_dir, f"$store$_{name}", suffix)) for name in STORE}
    obs_shape, obs_dtype = headers["observation"]
    if obs_dtype != np.uint8 or len(obs_shape) != 3 or tuple(obs_shape[1:]) != tuple(frame_shape):
        raise DatasetError(f"{file_path(data_dir, '$store$_observation', suffix)} holds {obs_dtype} "
                           f"{obs_shape}; expected uint8 [C, {frame_shape[0]}, {frame_shape[1]}]")
    capacity = obs_shape[0]
    for name, kinds in (("action", "iu"), ("reward", "f"), ("terminal", "iub")):
        shape, dtype = headers[name]
        if shape != (capacity,) or dtype.kind not in kinds:
            raise DatasetError(f"{file_path(data_dir, f'$store$_{name}', suffix)} holds {dtype} {shape}; expected "
                               f"{capacity} values to match the {capacity} observations")
    return capacity


def read_checkpoint(data_dir: Path, suffix: int, frame_shape: tuple[int, int], stack: int) -> Checkpoint:
    """The small arrays of one checkpoint, with add_count and invalid_range checked against each other."""
    capacity = checkpoint_capacity(data_dir, suffix, frame_shape)
    arrays = {name: read_array(file_path(data_dir, f"$store$_{name}", suffix)) for name in STORE[1:]}
    add_count_file = file_path(data_dir, "add_count", suffix)
    add_count = read_array(add_count_file)
    if add_count.size != 1 or add_count.dtype.kind not in "iu" or add_count.ravel()[0] < 0:
        raise DatasetError(f"{add_count_file} holds {add_count.dtype} {add_count.shape}; expected one count >= 0")
    add_count = int(add_count.ravel()[0])
    if add_count < stack:
        raise DatasetError(f"{add_count_file}: only {add_count} steps were added to checkpoint {suffix}")
    invalid_file = file_path(data_dir, "invalid_range", suffix)
    invalid = read_array(invalid_file)
    horizon = invalid.size - stack
    cursor = add_count % capacity
    expected = (cursor - horizon + np.arange(stack + max(horizon, 0))) % capacity
    if invalid.ndim != 1 or horizon < 0 or not np.array_equal(invalid.astype(np.int64), expected):
        raise DatasetError(f"{invalid_file} does not match {add_count_file} (add_count {add_count}, capacity "
                           f"{capacity}): the files come from different checkpoints")
    return Checkpoint(Path(data_dir), suffix, capacity, add_count, arrays["action"], arrays["reward"],
                      arrays["terminal"])


def stream_frames(path: Path, rows: np.ndarray, out: np.ndarray, capacity: int) -> None:
    """Copy observation rows `rows` (sorted, unique) of a gzipped [C, H, W] uint8 .npy into out[0:len(rows)],
    decompressing the file once and never holding more than a few thousand rows of it."""
    with _open(path) as f:
        shape, _ = _read_header(f, path)
        row_bytes = int(np.prod(shape[1:]))
        block = np.empty((_READ_ROWS, *shape[1:]), dtype=np.uint8)
        done = 0
        for start in range(0, capacity, _READ_ROWS):
            n = min(_READ_ROWS, capacity - start)
            end = np.searchsorted(rows, start + n, side="left")
            if end == done:  # no wanted row in this block: read past it
                _read_exact(f, n * row_bytes, path, memoryview(block).cast("B"))
                continue
            _read_exact(f, n * row_bytes, path, memoryview(block).cast("B"))
            out[done:end] = block[rows[done:end] - start]
            done = end
        if f.read(1):
            raise DatasetError(f"{path} holds more data than its header's shape {shape}")


# --- the fixed replay -----------------------------------------------------------------------------------------
@dataclass
class OfflineData:
    """What `load_fixed_replay` reads: kept frames once, and every kept transition by frame indices."""

    frames: np.ndarray  # uint8 [F, H, W]
    state: np.ndarray  # int64 [M, stack]: frame rows of each transition's state
    next_state: np.ndarray  # int64 [M, stack]
    actions: np.ndarray  # int64 [M]
    returns: np.ndarray  # float32 [M]
    discounts: np.ndarray  # float32 [M]
    info: dict  # checkpoints, sizes, sampling; recorded in the run's config.json


def _chunks_to_keep(capacities: list[int], chunk: int, fraction: float, seed: int) -> list[np.ndarray]:
    """Per checkpoint, the sorted ids of the runs of `chunk` indices kept: a uniform sample (without replacement)
    of round(fraction x all runs) over all chosen checkpoints together."""
    counts = [-(-c // chunk) for c in capacities]
    total = sum(counts)
    keep = max(1, round(fraction * total))
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=keep, replace=False))
    bounds = np.cumsum([0] + counts)
    return [chosen[(chosen >= lo) & (chosen < hi)] - lo for lo, hi in zip(bounds[:-1], bounds[1:])]


def load_fixed_replay(data: str | Path, checkpoints: str, fraction: float, chunk: int, seed: int, *, stack: int,
                      n_step: int, gamma: float, frame_shape: tuple[int, int] = (84, 84),
                      reward_clip: float | None = 1.0, cache_dir: str | Path | None = None) -> OfflineData:
    """Read the kept sample of the chosen checkpoints of a DQN Replay folder (see the module docstring)."""
    if not 0.0 < fraction <= 1.0:
        raise DatasetError(f"--offline.fraction must be in (0, 1], got {fraction}")
    if chunk < 1:
        raise DatasetError(f"--offline.chunk must be >= 1, got {chunk}")
    data_dir = resolve_data_dir(data)
    suffixes = parse_checkpoints(checkpoints, checkpoint_suffixes(data_dir), data_dir)
    capacities = [checkpoint_capacity(data_dir, s, frame_shape) for s in suffixes]
    kept_chunks = _chunks_to_keep(capacities, chunk, fraction, seed)
    info = {"data_dir": str(data_dir.resolve()), "checkpoints": suffixes, "fraction": fraction, "chunk": chunk,
            "seed": seed, "stack": stack, "n_step": n_step, "gamma": gamma, "reward_clip": reward_clip,
            "files": {s: [_fingerprint(file_path(data_dir, n, s)) for n in FILES] for s in suffixes}}
    if cache_dir is not None:  # (a file there was an OSError naming neither the option nor what it is for)
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatasetError(f"--offline.cache-dir {cache_dir} cannot be used as a directory: "
                               f"{e.strerror or e}") from None
    # One process at a time builds a sample's cache: a second run of the same sample (a sweep's dense and pruned
    # twins) opening it to write while the first streamed into it zeroed the first's frames.
    lock = run_lock(Path(cache_dir) / f".{_cache_key(info)}.lock", wait=True) if cache_dir is not None \
        else contextlib.nullcontext()
    with lock:
        cached = _read_cache(cache_dir, info)
        if cached is not None:
            return cached
        out = _read_sample(data_dir, suffixes, capacities, kept_chunks, info, cache_dir, chunk=chunk, stack=stack,
                           n_step=n_step, gamma=gamma, frame_shape=frame_shape, reward_clip=reward_clip)
        _write_cache(cache_dir, out)
        return out


def _read_sample(data_dir: Path, suffixes: list[int], capacities: list[int], kept_chunks: list[np.ndarray],
                 info: dict, cache_dir, *, chunk: int, stack: int, n_step: int, gamma: float,
                 frame_shape: tuple[int, int], reward_clip: float | None) -> OfflineData:
    # Pass 1: the small arrays of each checkpoint -> kept transitions and the frame rows they use.
    parts = []
    for suffix, capacity, ids in zip(suffixes, capacities, kept_chunks):
        ckpt = read_checkpoint(data_dir, suffix, frame_shape, stack)
        index = (ids[:, None] * chunk + np.arange(chunk)).ravel()
        index = index[index < capacity]
        index = index[ckpt.valid(stack, n_step)[index]]
        state, nxt, actions, returns, discounts = ckpt.transitions(index, stack, n_step, gamma, reward_clip)
        rows = np.unique(np.concatenate([state.ravel(), nxt.ravel()]))
        parts.append((suffix, capacity, rows, state, nxt, actions, returns, discounts))
    total_frames = sum(p[2].size for p in parts)
    transitions = sum(p[3].shape[0] for p in parts)
    if transitions == 0:
        raise DatasetError(f"no valid transition in the sample of checkpoints {_ranges(suffixes)} of {data_dir}")

    # Pass 2: stream the kept frames of each checkpoint into one array.
    frames = _frame_array(cache_dir, info, (total_frames, *frame_shape))
    offset, states, nexts = 0, [], []
    for suffix, capacity, rows, state, nxt, *_ in parts:
        stream_frames(file_path(data_dir, "$store$_observation", suffix), rows, frames[offset:offset + rows.size],
                      capacity)
        states.append(np.searchsorted(rows, state) + offset)
        nexts.append(np.searchsorted(rows, nxt) + offset)
        offset += rows.size
    info.update(transitions=transitions, frames=total_frames,
                transitions_per_checkpoint={p[0]: int(p[3].shape[0]) for p in parts})
    return OfflineData(frames, np.concatenate(states), np.concatenate(nexts),
                       np.concatenate([p[5] for p in parts]), np.concatenate([p[6] for p in parts]),
                       np.concatenate([p[7] for p in parts]), info)


# --- cache: the kept frames memory-mapped on disk ----------------------------------------------------------------
def _fingerprint(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _cache_key(info: dict) -> str:
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _frame_array(cache_dir, info: dict, shape: tuple[int, ...]) -> np.ndarray:
    if cache_dir is None:
        return np.empty(shape, dtype=np.uint8)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(Path(cache_dir) / f"{_cache_key(info)}.frames.npy", mode="w+",
                                     dtype=np.uint8, shape=shape)


def _write_cache(cache_dir, data: OfflineData) -> None:
    if cache_dir is None:
        return
    key = _cache_key({k: v for k, v in data.info.items() if k not in ("transitions", "frames",
                                                                       "transitions_per_checkpoint")})
    data.frames.flush()
    # The index is written last and atomically: a run killed while writing the cache leaves no index, so the next
    # one builds the cache again (a cut index made every later run with this cache fail).
    atomic_write_bytes(Path(cache_dir) / f"{key}.index.npz", lambda f: np.savez(
        f, state=data.state, next_state=data.next_state, actions=data.actions, returns=data.returns,
        discounts=data.discounts, info=np.array(json.dumps(data.info, default=str))))


def _read_cache(cache_dir, info: dict) -> OfflineData | None:
    if cache_dir is None:
        return None
    key = _cache_key(info)
    index_path, frames_path = Path(cache_dir) / f"{key}.index.npz", Path(cache_dir) / f"{key}.frames.npy"
    if not (index_path.is_file() and frames_path.is_file()):
        return None
    with np.load(index_path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in ("state", "next_state", "actions", "returns", "discounts")}
        cached_info = json.loads(str(z["info"]))
    frames = np.load(frames_path, mmap_mode="c")  # copy-on-write: torch gets a writable view, the file stays
    return OfflineData(frames, info=cached_info, **arrays)


class FixedReplay:
    """Uniform sampling of an offline dataset's transitions with the replay's interface (`sample`, `generator`,
    `can_sample`), on `device`, without host synchronisation (CUDA-graph safe like `ReplayBuffer.sample`)."""

    def __init__(self, data: OfflineData, device: str | torch.device = "cpu", seed: int = 0):
        self.device = torch.device(device)
        frames = torch.from_numpy(data.frames)
        self.frames = frames if self.device.type == "cpu" else frames.to(self.device)
        self.state = torch.from_numpy(data.state).to(self.device)
        self.next_state = torch.from_numpy(data.next_state).to(self.device)
        self.actions = torch.from_numpy(data.actions).to(self.device)
        self.returns = torch.from_numpy(data.returns).to(self.device)
        self.discounts = torch.from_numpy(data.discounts).to(self.device)
        self.info = data.info
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return self.actions.shape[0]

    def can_sample(self) -> bool:
        return len(self) > 0

    def sample(self, batch_size: int) -> Batch:
        j = torch.randint(0, len(self), (batch_size,), generator=self.generator, device=self.device)
        return Batch(obs=self.frames[self.state[j]], actions=self.actions[j], returns=self.returns[j],
                     discounts=self.discounts[j], next_obs=self.frames[self.next_state[j]],
                     weights=torch.ones(batch_size, device=self.device), indices=j)
