"""Host cost per call of the two kernel ops, with their Triton launches stubbed out (CPU; target: < 30 us).

    python bench/host_cost.py --label after                      # appends to bench/results/host_cost_cpu.json
    PYTHONPATH=/path/to/old/checkout python bench/host_cost.py --label before --code-sha <sha>

Times `kernels.topk_magnitude_masks` (the prunable tensors of DQN-Impala x3, device keep counts, `out=`
masks) and `kernels.masked_adam_` (all 34 parameters and their moments, 17 masks, a step tensor) as
`bench/bench_kernels.py::host_cost_us` does: the median host time of a call over many calls, the minimum
over repeats, with every Triton kernel replaced by a stub whose launch does nothing. So it measures the
Python work of a call (validation, caches, argument building), which a CUDA graph hides in training but an
eager call pays. The kernels run on the CPU path (TRITON_INTERPRET=1, PRUNERL_KERNELS=triton), never
launched. Run it alone on the machine; other processes on the cores inflate the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("PYTHONPATH"):  # an explicit PYTHONPATH chooses which checkout's code runs
    sys.path.insert(0, str(_ROOT))
os.environ["TRITON_INTERPRET"] = "1"  # before anything imports kernels: the CPU path of the Triton ops
os.environ["PRUNERL_KERNELS"] = "triton"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python bench/host_cost.py")
    parser.add_argument("--label", required=True, help="what the measured code is, e.g. 'before' or 'after'")
    parser.add_argument("--code-sha", default=None, help="git SHA of the measured code (default: this checkout's)")
    parser.add_argument("--out", type=Path, default=_ROOT / "bench" / "results" / "host_cost_cpu.json",
                        help="JSON list to append the record to")
    args = parser.parse_args(argv)

    import torch
    import triton

    bench_kernels = _load("bench_kernels")
    record = dict(label=args.label, git_sha=args.code_sha or _git_sha(), width=3,
                  date=datetime.date.today().isoformat(), cpu=_load("cpu_demo_speed").cpu_name(),
                  torch=torch.__version__, triton=triton.__version__, load_average=round(os.getloadavg()[0], 2))
    for op in ("topk", "adam", "adam_new_grads"):
        record[f"{op}_us"] = round(bench_kernels.host_cost_us(op, "cpu", width=3), 1)
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    records.append(record)
    args.out.write_text(json.dumps(records, indent=1) + "\n")
    print(json.dumps(record))
    return 0


def _load(name: str):
    """A module of bench/ (not a package) by file name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_bench_{name}", _ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git_sha() -> str:
    import subprocess

    out = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=_ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
