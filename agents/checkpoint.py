"""Atomic, validated checkpoints: run_dir/checkpoints/ckpt_<agent_steps>.pt.

A checkpoint is written to a temporary file, fsynced and renamed into place, so a run killed mid-write never
leaves a truncated file under the final name. Loading checks the format tag and that the checkpoint belongs
to a compatible configuration; anything else is a `CheckpointError` that names the problem.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

FORMAT = "prunerl-checkpoint-v1"
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
# Config fields that fix the shapes of saved tensors or the meaning of saved counters.
_MUST_MATCH = [("env", "game"), ("env", "num_envs"), ("network", "arch"), ("network", "width"),
               ("network", "scale_dense"), ("network", "padding"), ("agent", "name"), ("agent", "num_atoms"),
               ("pruning", "final_sparsity"), ("pruning", "distribution"), ("pruning", "scope"),
               ("replay_capacity",)]


class CheckpointError(RuntimeError):
    pass


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(file) on a temporary sibling of `path`, fsync, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(ckpt_dir: Path, agent_steps: int, state: dict, keep: int = 2) -> Path:
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"ckpt_{agent_steps:012d}.pt"
    atomic_write_bytes(path, lambda f: torch.save({"format": FORMAT, **state}, f))
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink()
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path, config: dict | None = None, map_location="cpu") -> dict:
    """Load and validate a checkpoint; with `config`, also check it was written by a compatible run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, garbage bytes, unpickling errors
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}; expected {FORMAT!r}")
    if config is not None:
        check_compatible(state["config"], config, path)
    return state


def check_compatible(saved: dict, current: dict, path: Path | str = "checkpoint") -> None:
    for keys in _MUST_MATCH:
        a, b = saved, current
        for k in keys:
            a, b = a.get(k) if isinstance(a, dict) else None, b.get(k) if isinstance(b, dict) else None
        if a != b:
            raise CheckpointError(f"{path} is incompatible with this run: {'.'.join(keys)} is {a!r} in the "
                                  f"checkpoint but {b!r} in the config")
