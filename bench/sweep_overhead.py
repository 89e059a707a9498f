"""What the sweep machinery costs: 8 tiny runs through `python -m agents.sweep` (local backend) against the same
8 `python -m agents.train` commands started by hand with the same parallelism, alternating, on this machine.

    python bench/sweep_overhead.py --reps 2 --out bench/results/cpu_sweep_overhead_<sha>.json

The sweep's time includes its own start-up (expanding the grid, checking run states) and its bookkeeping; the
target is at most 1.1x the hand-started runs' wall time. On a shared machine the wall time swings with the other
load, so the CPU time (user + system) of all processes of each side is recorded as well: it is what the sweep
adds, whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.sweep_exec import train_command  # noqa: E402
from agents.sweep_grid import load_spec  # noqa: E402
from agents.train import git_sha  # noqa: E402

# The tests' tiny run (tests/test_sweep.py): a few seconds of the demo preset, three iterations, pruned to 95%.
TINY = ("--env.num-envs 4 --total-steps 600 --iteration-steps 200 --agent.min-replay 200 --replay-ratio 0.125 "
        "--agent.batch-size 8 --agent.target-update-period 200 --pruning.start-step 0 --pruning.end-step 40 "
        "--pruning.update-freq 10 --replay-capacity 2000 --log-every 100 --device cpu --no-tensorboard --save-replay")


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def children_cpu_seconds() -> float:
    """User + system time of this process's finished children and their waited-for descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def by_hand(spec: Path, workdir: Path, parallel: int) -> float:
    """The sweep's 8 training commands, `parallel` at a time, each as a plain subprocess."""
    sweep = load_spec(spec)
    commands = [train_command(workdir / sweep.name, run, ["--no-progress"]) for run in sweep.runs]
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        codes = list(pool.map(lambda c: subprocess.run(c, env=env(), capture_output=True).returncode, commands))
    elapsed = time.perf_counter() - start
    assert codes == [0] * len(commands), codes
    return elapsed


def through_sweep(spec: Path, workdir: Path, parallel: int) -> float:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "agents.sweep", str(spec), "--sweeps-dir", str(workdir),
                          "--parallel", str(parallel), "--cpus-per-run", "1"], env=env(), cwd=ROOT,
                         capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stdout + out.stderr
    return elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions of each (default 3)")
    p.add_argument("--parallel", type=int, default=2, help="runs at once in both (default 2)")
    p.add_argument("--out", type=Path, help="results JSON (default: print only)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sweep_overhead"))
    spec = tmp / "tiny8.toml"
    spec.write_text(f'name = "tiny8"\npresets = ["demo"]\ngames = ["Pong", "Breakout"]\nseeds = "1..4"\n'
                    f'overrides = ["{TINY}"]\n')
    hand, sweep, hand_cpu, sweep_cpu = [], [], [], []
    load = [os.getloadavg()]
    try:
        for rep in range(args.reps):
            for name, fn, times, cpu in (("by hand", by_hand, hand, hand_cpu), ("sweep", through_sweep, sweep,
                                                                                 sweep_cpu)):
                workdir = tmp / f"{name.replace(' ', '_')}{rep}"
                cpu_before = children_cpu_seconds()
                times.append(fn(spec, workdir, args.parallel))
                cpu.append(children_cpu_seconds() - cpu_before)
                shutil.rmtree(workdir)
                print(f"rep {rep}: {name:8s} {times[-1]:6.1f} s wall, {cpu[-1]:6.1f} s CPU", flush=True)
        load.append(os.getloadavg())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = sum(sweep) / sum(hand)
    result = {
        "label": "CPU", "benchmark": "sweep overhead: 8 tiny runs, local backend vs the same commands by hand",
        "git_sha": git_sha(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1_5_15_before_after": load},
        "runs": 8, "parallel": args.parallel, "omp_num_threads": 1, "run_overrides": TINY,
        "seconds_by_hand": [round(t, 2) for t in hand], "seconds_sweep": [round(t, 2) for t in sweep],
        "cpu_seconds_by_hand": [round(t, 2) for t in hand_cpu], "cpu_seconds_sweep": [round(t, 2) for t in sweep_cpu],
        "ratio_sweep_to_hand": round(ratio, 3), "cpu_ratio_sweep_to_hand": round(sum(sweep_cpu) / sum(hand_cpu), 3),
        "target_ratio": 1.1, "met": ratio <= 1.1,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
