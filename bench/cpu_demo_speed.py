"""Speed of a CPU training run (the `demo` preset by default), written as JSON under bench/results/.

    python bench/cpu_demo_speed.py                      # the demo preset, about 3-4 minutes on 2 cores
    python bench/cpu_demo_speed.py --preset demo --out bench/results/cpu_demo_<sha>.json
    python bench/cpu_demo_speed.py --preset drq_eps_100k_dense --game Pong --total-steps 2600   # a prefix of a run

Issue 6 asks that CPU runs keep working and that the CPU demo's speed be reported next to the same
configuration before the speed work. Run this alone on the machine: other torch processes sharing the cores
slow it down many times over. To measure an older commit, put its checkout first on the path:
`PYTHONPATH=/path/to/old/checkout python bench/cpu_demo_speed.py` (the recorded git SHA is the one of the
code that ran).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("PYTHONPATH"):  # an explicit PYTHONPATH chooses which checkout's code runs
    sys.path.insert(0, str(_ROOT))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python bench/cpu_demo_speed.py")
    parser.add_argument("--preset", default="demo", help="training preset to time (default: demo)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: bench/results/cpu_<preset>_<sha>.json)")
    parser.add_argument("--game", default=None, help="Atari game (default: the preset's)")
    parser.add_argument("--total-steps", type=int, default=None,
                        help="time only the first N agent steps of the preset's run (one iteration, evaluated "
                             "if the preset evaluates); the JSON says so")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop the run after this many minutes (the JSON says it stopped early)")
    parser.add_argument("--channels-last", action="store_true",
                        help="run the convolutions on channels_last activations (oneDNN's preferred layout)")
    args = parser.parse_args()

    import torch

    import agents.train as train
    from agents.config import get_preset
    from agents.envs import resolve_game

    try:
        cfg = get_preset(args.preset)
        preset_total_steps = cfg.total_steps
        # dataclasses.replace re-runs the configs' checks (fields set one by one skipped them: --max-minutes -1
        # wrote a JSON of an 8-step run, a bad --game or --total-steps was a traceback from inside the trainer)
        changes = dict(device="cpu", progress=False, tensorboard=False, max_minutes=args.max_minutes)
        if args.game is not None:
            changes["env"] = dataclasses.replace(cfg.env, game=resolve_game(args.game))
        if args.channels_last:
            changes["channels_last"] = True
        if args.total_steps is not None:
            changes["total_steps"] = changes["iteration_steps"] = args.total_steps
        cfg = dataclasses.replace(cfg, **changes)
    except ValueError as e:
        parser.error(str(e).replace("--list-presets", "python -m agents.train --list-presets"))
    load_before, sha = os.getloadavg(), train.git_sha() or "unknown"  # the code that runs (HEAD may move meanwhile)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = train.Trainer(cfg, Path(tmp) / "run")
        start, cpu_start = time.perf_counter(), time.process_time()
        summary = trainer.run()
        wall, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        rows = train.read_iterations(Path(tmp) / "run" / "iterations.csv")
    result = {
        "preset": args.preset, "config": cfg.to_dict(), "frames": summary["frames"],
        "grad_steps": summary["grad_steps"], "preset_total_steps": preset_total_steps,
        "partial_run": cfg.total_steps < preset_total_steps or trainer.stopped_early,
        "wall_s": round(wall, 2), "process_cpu_s": round(cpu_s, 2), "fps_overall": round(summary["frames"] / wall, 1),
        "load_average_before_after": [round(x, 2) for x in (*load_before[:1], os.getloadavg()[0])],
        "final_eval_score": summary.get("final_eval_score"),
        "eval_scores": [r.get("eval_score") for r in rows],
        # The last iteration is all learning (the first ones are mostly warm-up, which has no learner).
        "fps_per_iteration": [float(r["fps"]) for r in rows],
        "final_score": summary["final_score"], "total_sparsity": summary["total_sparsity"],
        "device": "cpu", "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "git_sha": sha, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    out = args.out or _ROOT / "bench" / "results" / f"cpu_{args.preset}_{sha[:8]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.preset}: {summary['frames']:,} frames in {wall:.1f} s = {result['fps_overall']:.0f} frames/s "
          f"(per iteration: {result['fps_per_iteration']}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
