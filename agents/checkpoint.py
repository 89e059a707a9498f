"""Atomic, validated, incremental checkpoints in run_dir/checkpoints/.

    ckpt_<agent_steps>.pt            the small state: networks, Adam, masks, counters, RNGs, the replay's
                                     counters and priorities, and the names of the replay chunks it needs
    replay_<first>_<end>.pt          replay rows of vector steps [first, end): a chunk, written once

A replay row never changes once written (only the circular overwrite replaces it, in a later chunk), so each
checkpoint writes only the rows added since the previous one: at 1M transitions a checkpoint writes one
iteration's frames, not the whole 7 GB replay. A chunk is deleted once no kept checkpoint needs it.

Every file is written to a temporary sibling, fsynced and renamed into place, chunks before the checkpoint
that names them, so a run killed mid-write never leaves a truncated file under a final name nor a
checkpoint without its chunks. Loading checks the format tag and that the checkpoint belongs to a compatible
configuration; anything else is a `CheckpointError` that names the problem. `load_latest_checkpoint`
falls back to the newest checkpoint that loads with all its chunks (and, for the run's trainer, sets the
unreadable newer ones aside).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import warnings
from pathlib import Path

import torch

from agents.config import experiment_fields

FORMAT = "prunerl-checkpoint-v2"  # v2: the replay in chunks of rows
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
_CHUNK = re.compile(r"^replay_(\d+)_(\d+)\.pt$")
_TEMPORARY = re.compile(r"^\..+\.tmp-\d+(-[0-9a-f]+)?$")  # .<name>.tmp-<pid>-<random> (-<random>: since 2026-11)
# Config fields that fix the shapes of saved tensors or the meaning of saved counters.
_MUST_MATCH = [("env", "game"), ("env", "num_envs"), ("network", "arch"), ("network", "width"),
               ("network", "scale_dense"), ("network", "padding"), ("agent", "name"), ("agent", "num_atoms"),
               ("pruning", "final_sparsity"), ("pruning", "distribution"), ("pruning", "scope"),
               ("replay_capacity",)]


class CheckpointError(RuntimeError):
    pass


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint or replay chunk that cannot be read (truncated, garbage, another format)."""


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(file) on a temporary sibling of `path`, fsync, then rename it over `path`. A failure
    (a full disk: ENOSPC) leaves `path` as it was and removes the temporary file."""
    path = Path(path)
    # (random too: processes of two nodes with one pid may write one shared file, e.g. a Slurm array's sweep.json)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:
        # torch.save's zip writer reports a failed write (a full disk) as a RuntimeError ("unexpected pos")
        # raised while handling the OSError: pass the OSError on, which names the error (ENOSPC).
        if isinstance(e.__context__, OSError):
            raise e.__context__ from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_temporary_files(directory: Path) -> list[Path]:
    """Delete the temporary files (`.<name>.tmp-<pid>-<random>`) that a process killed mid-write left in `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [p for p in directory.iterdir() if _TEMPORARY.match(p.name) and p.is_file()]
    for p in removed:
        p.unlink()
    return removed


def _save(path: Path, obj) -> None:
    try:
        atomic_write_bytes(path, lambda f: torch.save(obj, f))
    except OSError as e:
        code = errno.errorcode.get(e.errno, "") if e.errno else ""
        raise CheckpointError(f"cannot write {path}: {code + ': ' if code else ''}{e.strerror or e}") from e


def _load(path: Path, what: str, mmap: bool = False):
    if not path.is_file():
        raise UnreadableCheckpoint(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as e:  # truncated zip, garbage bytes, unpickling errors
        raise UnreadableCheckpoint(f"{what} {path} is corrupt or unreadable ({type(e).__name__}: {e})") from e


def checkpoint_step(path: Path) -> int | None:
    """The agent step in a checkpoint's name (`ckpt_<agent_steps>.pt`), or None for any other file."""
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(step, p) for p in ckpt_dir.iterdir() if (step := checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path, config: dict | None = None) -> dict:
    """Load and validate a checkpoint with its replay chunks (memory-mapped, read when copied into the replay);
    with `config`, also check it was written by a compatible run."""
    path = Path(path)
    state = _load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UnreadableCheckpoint(f"checkpoint {path} has format {found!r}; expected {FORMAT!r}")
    if config is not None:
        check_compatible(state["config"], config, path)
    replay = state.get("replay")
    if replay is not None:
        chunks = []
        for name in replay["chunks"]:
            chunk = _load(path.parent / name, "replay chunk", mmap=True)
            if not isinstance(chunk, dict) or "frames" not in chunk:
                raise UnreadableCheckpoint(f"replay chunk {path.parent / name} holds no replay rows")
            chunks.append(chunk)
        state["replay"] = {**replay, "chunks": chunks, "chunk_names": replay["chunks"]}
    return state


def _chunks_named_in(path: Path) -> set[str] | None:
    """The replay chunks a checkpoint needs (its tensors memory-mapped, not read), or None if it is corrupt. An
    I/O error (EIO, a network filesystem's hiccup) proves nothing about the file: it is raised."""
    try:
        state = _load(path, "checkpoint", mmap=True)
        replay = state.get("replay") if isinstance(state, dict) else None
        return set(replay["chunks"]) if replay else set()
    except UnreadableCheckpoint as e:
        if isinstance(e.__cause__, OSError):
            raise e.__cause__ from e
        return None
    except (KeyError, TypeError):
        return None


class CheckpointStore:
    """Writes the checkpoints of one run, incrementally, and keeps the newest `keep`."""

    def __init__(self, ckpt_dir: Path, keep: int = 2):
        self.dir, self.keep = Path(ckpt_dir), keep
        # The chunks of the last checkpoint written or loaded hold the replay's steps up to replay_saved_t.
        self.replay_saved_t, self.replay_chunks = 0, []

    def continue_from(self, state: dict) -> None:
        """After loading `state` into the trainer: the next checkpoint adds to its replay chunks."""
        replay = state.get("replay")
        self.replay_saved_t = int(replay["t"]) if replay else 0
        self.replay_chunks = list(replay.get("chunk_names", [])) if replay else []

    def save(self, agent_steps: int, state: dict, replay=None) -> Path:
        """Write ckpt_<agent_steps>.pt with `state`, plus the rows `replay` gained since the last checkpoint.
        A failed write (a full disk) raises a CheckpointError naming the error and the file, and leaves the
        previous checkpoint intact."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"ckpt_{agent_steps:012d}.pt"
        previous = latest_checkpoint(self.dir)
        try:
            if replay is not None:
                replay_state = replay.counters()
                oldest_needed = replay_state["t"] - replay_state["T"]
                chunks = [c for c in self.replay_chunks if int(_CHUNK.match(c).group(2)) > oldest_needed]
                for start, end in replay.chunk_ranges(since=self.replay_saved_t):  # one in memory at a time
                    name = f"replay_{start:012d}_{end:012d}.pt"
                    _save(self.dir / name, replay.rows(start, end))
                    chunks.append(name)
                state = {**state, "replay": {**replay_state, "chunks": chunks}}
            _save(path, {"format": FORMAT, **state})
        except CheckpointError as e:
            kept = f"; the previous checkpoint {previous} is kept" if previous else ""
            raise CheckpointError(f"checkpoint at agent step {agent_steps:,} failed: {e}{kept}") from e
        if replay is not None:
            self.replay_saved_t, self.replay_chunks = replay_state["t"], chunks
        for old in list_checkpoints(self.dir)[:-self.keep]:
            old.unlink()
        remove_unneeded_files(self.dir)
        return path


def remove_unneeded_files(ckpt_dir: Path) -> None:
    """Delete the replay chunks that no readable checkpoint needs, and temporary files of killed writes."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    needed = set()
    try:
        for path in list_checkpoints(ckpt_dir):
            needed |= _chunks_named_in(path) or set()  # a corrupt checkpoint can never be used
    except OSError as e:
        # Deleting the chunks of a checkpoint that could not be read this once would break it, and every later
        # checkpoint too (they name the same chunks): keep them all until the next checkpoint.
        warnings.warn(f"kept every replay chunk in {ckpt_dir}: a checkpoint could not be read ({e})", stacklevel=2)
    else:
        for chunk in ckpt_dir.iterdir():
            if _CHUNK.match(chunk.name) and chunk.name not in needed:
                chunk.unlink()
    remove_temporary_files(ckpt_dir)


# Errors of the storage, not of the file: it may read next time (a truncated file fails to mmap with EINVAL).
_TRANSIENT_ERRNOS = {errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR}


def _may_read_later(e: UnreadableCheckpoint) -> bool:
    return isinstance(e.__cause__, OSError) and e.__cause__.errno in _TRANSIENT_ERRNOS


def load_latest_checkpoint(ckpt_dir: Path, config: dict | None = None, set_aside: bool = False) -> dict:
    """The newest checkpoint in ckpt_dir that loads with all its replay chunks. A newer unreadable one is skipped
    with a warning that names the bad file; an incompatible config is an error (older ones would be too).

    set_aside (the run's own trainer, which will write new checkpoints): rename each skipped one to
    `<name>.unreadable`, kept for a look but no longer a checkpoint. Left in place, it counted as one of the
    `keep` newest, so the next checkpoint deleted the good one resumed from, and every resume tried it first.
    A file that could not be read for an I/O error that may pass (EIO, a stale network handle) stays."""
    ckpt_dir = Path(ckpt_dir)
    ckpts = list_checkpoints(ckpt_dir)
    if not ckpts:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}")
    problems = []
    for path in reversed(ckpts):
        try:
            state = load_checkpoint(path, config)
        except UnreadableCheckpoint as e:
            problems.append((path, e))
            continue
        for bad, problem in problems:
            aside = ""
            if set_aside and not _may_read_later(problem):
                bad.rename(bad.with_name(bad.name + ".unreadable"))
                aside = f" (set aside as {bad.name}.unreadable)"
            warnings.warn(f"{problem}; resuming from the older {path.name} instead{aside}", stacklevel=2)
        remove_unneeded_files(ckpt_dir)
        return state
    raise CheckpointError("no readable checkpoint: " + "; ".join(str(e) for _, e in problems))


def check_compatible(saved: dict, current: dict, path: Path | str = "checkpoint") -> None:
    for keys in _MUST_MATCH:
        a, b = saved, current
        for k in keys:
            a, b = a.get(k) if isinstance(a, dict) else None, b.get(k) if isinstance(b, dict) else None
        if a != b:
            raise CheckpointError(f"{path} is incompatible with this run: {'.'.join(keys)} is {a!r} in the "
                                  f"checkpoint but {b!r} in the config")
    # Every other experiment option too: a checkpoint copied from another run, or a config.json edited by hand,
    # would otherwise train on silently under options (seed, lr, pruning window...) it was not trained with.
    # (A field only one of them has comes from another version of the trainer: nothing to compare.)
    a, b = experiment_fields(saved), experiment_fields(current)
    differ = [f"{k} is {a[k]!r} in the checkpoint but {b[k]!r} in the config" for k in sorted(a.keys() & b.keys())
              if a[k] != b[k]]
    if differ:
        raise CheckpointError(f"{path} was written by another experiment than this run's: {'; '.join(differ)}")
