"""Where the host's time goes in the training loop: cProfile over the iterations of an e2e run after its warm-up.

The e2e table's loop split says how much of an iteration the host spent working rather than waiting on the
envs or the GPU; this says on what. It runs `bench_e2e.e2e_config` (warm-up iteration, then a measured one),
profiles only the measured iteration and writes, per case, the cProfile stats (`<case>.prof`, for snakeviz or
`python -m pstats`) and the top functions by own time and by cumulative time (`<case>.txt`). From Python
3.12 on, cProfile records every thread: the env-stepping thread's calls show up beside the loop's, and the
cumulative column was seen to lose most calls of `Trainer.learn`. `--inline-env` steps the envs on the main
thread instead (`--overlap-env off`: no overlap, so slower), which makes every row the loop's own. The
profiler's own cost (~1 us per Python call) inflates Python-heavy code, e.g. an eager forward's module calls,
against C calls: read the shares as an upper bound and check a fix with the e2e frames/s.

    python bench/host_profile.py --case impala:1:gmp95_after --out /tmp/host     # a GPU
    python bench/host_profile.py --device cpu                                     # the CPU rehearsal (~30 s)
"""

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_e2e import PRECISIONS, SETUPS, e2e_config, kernel_backend  # noqa: E402


def parse_case(text: str) -> tuple[str, int, str, str]:
    """`arch:width:setup[:precision]`, e.g. `impala:3:gmp95_after:bf16`."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[0] not in ("impala", "nature") or not parts[1].isdigit():
        raise argparse.ArgumentTypeError(f"case {text!r}: expected arch:width:setup[:precision], "
                                         "e.g. impala:1:gmp95_after")
    precision = parts[3] if len(parts) == 4 else "fp32"
    if parts[2] not in SETUPS or precision not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"case {text!r}: setup must be one of {SETUPS}, precision one of "
                                         f"{PRECISIONS}")
    return parts[0], int(parts[1]), parts[2], precision


def profile_case(case, warmup: int, measure: int, device: str, out: Path, top: int, inline_env: bool = False) -> str:
    from agents.train import Trainer, read_iterations

    arch, width, setup, precision = case
    overrides = {} if device == "cuda" else {"gpu": False, "env.num_envs": 4, "agent.batch_size": 4}
    # The envs step on a thread of their own while the learner runs (the GPU default, here on any device), or
    # inline on the main thread.
    overrides["overlap_env"] = "off" if inline_env else "on"
    with kernel_backend(setup == "naive"), tempfile.TemporaryDirectory() as tmp:
        cfg = e2e_config(arch, width, setup, warmup=warmup, measure=measure, precision=precision, **overrides)
        trainer = Trainer(cfg, Path(tmp) / "run")
        profiler, end_iteration = cProfile.Profile(), trainer._end_iteration

        def profile_after_warmup(*args, **kwargs):
            # The first iteration (replay fill, compilation, graph capture) is warm-up: profile the loop of every
            # later iteration, not the end-of-iteration checkpoints.
            profiler.disable()
            result = end_iteration(*args, **kwargs)
            if trainer.agent_steps < cfg.total_steps:
                profiler.enable()
            return result

        trainer._end_iteration = profile_after_warmup
        trainer.run()
        split = trainer.last_loop_split
        fps = [float(row["fps"]) for row in read_iterations(Path(tmp) / "run" / "iterations.csv")[1:]]
        trainer.close()
    name = "_".join(map(str, case)) + ("_inline_env" if inline_env else "")
    stats = pstats.Stats(profiler).strip_dirs()  # file names without this machine's directories
    stats.dump_stats(out / f"{name}.prof")
    text = profile_text(stats, f"# {name}: frames/s of the profiled iterations {', '.join(f'{f:,.0f}' for f in fps)}"
                        f" (under cProfile); loop split of the last {split}\n# {provenance(device)}", top)
    (out / f"{name}.txt").write_text(text)
    return text


def provenance(device: str) -> str:
    """Where and when: the device, the git SHA, the date and the versions."""
    import datetime

    import torch

    from agents.train import _version, git_sha

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return (f"{name}, git {(git_sha() or 'unknown')[:8]}, {datetime.date.today().isoformat()}, "
            f"torch {torch.__version__}, triton {_version('triton')}")


def profile_text(stats: pstats.Stats, header: str, top: int) -> str:
    """`header`, then the `top` functions by own time and by cumulative time."""
    text = io.StringIO()
    stats.stream = text
    text.write(f"{header}\n\n## by own time\n")
    stats.sort_stats("tottime").print_stats(top)
    text.write("\n## by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], prog="python bench/host_profile.py")
    parser.add_argument("--case", type=parse_case, action="append", default=None,
                        help="arch:width:setup[:precision], repeatable (default: impala:1:gmp95_after)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="agent steps before the profiled iteration (default: 1600; 64 with --device cpu)")
    parser.add_argument("--measure", type=int, default=None,
                        help="agent steps profiled (default: 3200; 64 with --device cpu)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: the rehearsal, with 4 envs and batch 4 (times nothing of interest; default: cuda)")
    parser.add_argument("--top", type=int, default=40, help="functions listed per table (default: 40)")
    parser.add_argument("--inline-env", action="store_true",
                        help="step the envs on the main thread (--overlap-env off): from Python 3.12 on, cProfile "
                             "also records the env thread")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for <case>.prof and <case>.txt (default: $OUT/host_profile where $OUT is set, "
                             "as on the GPU machine; else runs/host_profile)")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: --device cpu runs the rehearsal (64 + 64 agent steps)")
    cpu = args.device == "cpu"
    args.warmup = args.warmup if args.warmup is not None else 64 if cpu else 1600
    args.measure = args.measure if args.measure is not None else 64 if cpu else 3200
    args.out = args.out or Path(os.environ["OUT"] if os.environ.get("OUT") else "runs") / "host_profile"
    args.out.mkdir(parents=True, exist_ok=True)
    for case in args.case or [parse_case("impala:1:gmp95_after")]:
        print(profile_case(case, args.warmup, args.measure, args.device, args.out, args.top, args.inline_env),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
