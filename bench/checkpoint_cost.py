"""What a checkpoint costs at full scale: seconds and disk with a 1M-transition replay of 84x84 frames.

    python bench/checkpoint_cost.py --dir /scratch/ckpt-bench --out bench/results/checkpoint_cost_cpu.json

The paper's DQN Impala x3 GMP-95 (8 envs, 1M replay on the CPU) with a synthetic replay: random frames and
metadata are written straight into the buffer, one iteration (250k agent steps = 31,250 vector steps) at a
time, and the trainer checkpoints after each, as a real run does. Recorded per checkpoint: seconds, bytes
written, bytes on disk after it (the last `keep_checkpoints` = 2 checkpoints and the replay chunks they
need). Then: a resume's load time (checkpoint + chunks read back into the replay, with the files just
written likely still in the page cache), and, for comparison, writing the whole replay in one checkpoint
(what a checkpoint cost before the replay was written incrementally). Needs about 10 GB of memory and
25 GB free in --dir; writes real files and fsyncs them, so the disk under --dir is what is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(_ROOT))

from cpu_demo_speed import cpu_name  # noqa: E402


class SyntheticEnv:
    """Shapes of the Atari envs, never stepped: the benchmark fills the replay itself."""

    backend, backend_kwargs, num_actions, observation_shape = "synthetic", {}, 18, (4, 84, 84)

    def __init__(self, num_envs: int):
        self.num_envs, self.action_meanings = num_envs, tuple(f"A{i}" for i in range(18))

    def close(self):
        pass


def fill(replay, vector_steps: int, generator) -> None:
    """Write `vector_steps` rows of random frames and metadata, as `add` would, in blocks of 4,096 rows."""
    import torch

    done = 0
    while done < vector_steps:
        n = min(4096, vector_steps - done, replay.T - replay.t % replay.T)  # up to the wrap
        a = replay.t % replay.T
        rows = slice(a, a + n)
        replay.frames[rows].random_(0, 256, generator=generator)
        replay.actions[rows].random_(0, 18, generator=generator)
        replay.rewards[rows].copy_(torch.rand(replay.rewards[rows].shape, generator=generator))
        replay.terminal[rows].copy_(torch.rand(replay.terminal[rows].shape, generator=generator) < 1e-3)
        replay.first[rows].copy_(torch.rand(replay.first[rows].shape, generator=generator) < 1e-3)
        replay.executed[rows].copy_(~replay.first[rows])
        replay.t += n
        replay.t_device.fill_(replay.t)
        replay.transitions_added += n * replay.num_envs
        done += n


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding `path` (from /proc/mounts), e.g. ext4."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python bench/checkpoint_cost.py")
    parser.add_argument("--preset", default="dqn_impala_w3_gmp95", help="the preset whose networks, Adam state, "
                        "masks and replay are checkpointed (default: dqn_impala_w3_gmp95)")
    parser.add_argument("--iterations", type=int, default=6, help="iterations of 250k agent steps (4 fill 1M)")
    parser.add_argument("--replay-capacity", type=int, default=None, help="override (a quick check: 40000)")
    parser.add_argument("--iteration-steps", type=int, default=None, help="override (a quick check: 10000)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=_ROOT / "bench" / "results" / "checkpoint_cost_cpu.json",
                        help="JSON file the measurements are written to (default: "
                        "bench/results/checkpoint_cost_cpu.json)")
    args = parser.parse_args()

    import torch

    import agents.train as train
    from agents.checkpoint import CheckpointStore, load_latest_checkpoint
    from agents.config import get_preset

    if args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}")
    try:  # dataclasses.replace runs the config's checks (a bad preset or step count was a traceback)
        cfg = get_preset(args.preset)
        cfg = dataclasses.replace(cfg, device="cpu", replay_device="cpu", progress=False, tensorboard=False,
                                  replay_capacity=cfg.replay_capacity if args.replay_capacity is None
                                  else args.replay_capacity,
                                  iteration_steps=cfg.iteration_steps if args.iteration_steps is None
                                  else args.iteration_steps)
    except ValueError as e:
        parser.error(str(e).replace("--list-presets", "python -m agents.train --list-presets"))
    if cfg.replay_capacity < 1:
        parser.error(f"--replay-capacity must be >= 1, got {cfg.replay_capacity}")
    per_iteration = cfg.iteration_steps // cfg.env.num_envs * cfg.env.num_envs
    if args.iterations * per_iteration <= cfg.replay_capacity:  # else max() of no steady-state checkpoint
        needed = cfg.replay_capacity // max(per_iteration, 1) + 1
        parser.error(f"{args.iterations} iterations of {per_iteration} transitions never take the replay past its "
                     f"{cfg.replay_capacity} (the steady state measured): give --iterations {needed} or more")
    base = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        trainer = train.Trainer(cfg, base / "run", env=SyntheticEnv(cfg.env.num_envs))
        ckpt_dir = trainer.checkpoints.dir
        generator = torch.Generator().manual_seed(0)
        vector_steps = cfg.iteration_steps // cfg.env.num_envs
        checkpoints = []
        for i in range(1, args.iterations + 1):
            fill(trainer.replay, vector_steps, generator)
            trainer.agent_steps, trainer.iteration = i * cfg.iteration_steps, i
            before = {p.name for p in ckpt_dir.iterdir()} if ckpt_dir.is_dir() else set()
            start = time.perf_counter()
            path = trainer.save()
            seconds = time.perf_counter() - start
            new = [p for p in ckpt_dir.iterdir() if p.name not in before]
            checkpoints.append({
                "iteration": i, "replay_transitions": len(trainer.replay), "seconds": round(seconds, 2),
                "bytes_written": sum(p.stat().st_size for p in new), "checkpoint_bytes": path.stat().st_size,
                "bytes_on_disk": disk_bytes(ckpt_dir), "files_on_disk": len(list(ckpt_dir.iterdir()))})
            print(checkpoints[-1], flush=True)

        start = time.perf_counter()
        state = load_latest_checkpoint(ckpt_dir, cfg.to_dict())
        trainer.load_state_dict(state)
        resume_seconds = time.perf_counter() - start
        del state

        whole = CheckpointStore(base / "whole", keep=1)  # nothing saved yet: every row is new
        start = time.perf_counter()
        whole.save(trainer.agent_steps, trainer.state_dict(with_replay=False), replay=trainer.replay)
        whole_seconds = time.perf_counter() - start
        whole_bytes = disk_bytes(base / "whole")
        trainer.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    steady = [c for c in checkpoints if c["replay_transitions"] == cfg.replay_capacity]
    result = {
        "label": "CPU", "preset": args.preset, "replay_capacity": cfg.replay_capacity,
        "num_envs": cfg.env.num_envs, "iteration_agent_steps": cfg.iteration_steps,
        "keep_checkpoints": cfg.keep_checkpoints, "checkpoints": checkpoints,
        "steady_state": {"seconds_max": max(c["seconds"] for c in steady),
                         "bytes_written_max": max(c["bytes_written"] for c in steady),
                         "bytes_on_disk_max": max(c["bytes_on_disk"] for c in steady)},
        "resume_load_seconds": round(resume_seconds, 2),
        "whole_replay_checkpoint": {"seconds": round(whole_seconds, 2), "bytes": whole_bytes},
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "filesystem": filesystem_of(base.parent)},
        "torch": torch.__version__, "git_sha": train.git_sha(), "date": datetime.date.today().isoformat(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("steady_state", "resume_load_seconds", "whole_replay_checkpoint")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
