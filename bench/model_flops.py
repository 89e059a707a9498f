"""The arithmetic the end-to-end runs ask of the GPU: matmul and convolution FLOPs per frame of each e2e case,
the TFLOP/s the issue's frames/s targets would need, the TFLOP/s the committed GPU runs achieved, and what the
paper's four agents cost against DQN.

    python bench/model_flops.py                     # writes bench/results/model_flops.{md,json}

The FLOPs are counted, not timed (`Trainer.model_flops`: torch.utils.flop_counter on one eager learner step and
one acting forward, on the CPU), so they hold on any device: they depend on the network, the batch size, the
number of envs and the replay ratio, which each committed e2e row records and this script checks. Masks are
simulated on dense tensors (as in JaxPruner), so a 95%-sparse run computes every FLOP its dense twin does. The
achieved TFLOP/s of a committed run (`e2e.jsonl`) is its frames/s x FLOPs per frame; rows written since the
count was added carry it (`model_tflops`) and are checked against it. The matmul rates are the ones the run's
GPU proof measured (`environment.json`): bf16 in every proof, fp32 and TF32 since this script.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "bench"))
sys.path.insert(0, str(_ROOT))

from gpu_proof import matmul_rate  # noqa: E402

# The end-to-end targets (frames/s on one H100 with 16 cores; bench/README.md).
TARGETS = {"dqn_impala_w3": 11_000, "dqn_impala_w1": 22_000}
PAPER_AGENTS = ("dqn", "rainbow", "iqn", "miqn")


def count_cases() -> dict[str, dict]:
    """Trainer.model_flops of every e2e case, on the CPU (the e2e preset with a small replay)."""
    from bench_e2e import CASES, e2e_config

    return {f"dqn_{arch}_w{width}": _count(e2e_config(arch, width, "gmp95_window", gpu=False,
                                                      replay_capacity=10_000)) for arch, width in CASES}


def count_presets() -> dict[str, dict]:
    """Trainer.model_flops of the paper's four agents at Impala widths 1, 3 and 5 (their GMP-95 presets)."""
    from agents.config import get_preset

    counts = {}
    for width in (1, 3, 5):
        for agent in PAPER_AGENTS:
            cfg = get_preset(f"{agent}_impala_w{width}_gmp95")
            cfg.device, cfg.replay_device, cfg.replay_capacity = "cpu", "cpu", 10_000
            cfg.tensorboard = cfg.progress = False
            counts[cfg.preset] = _count(cfg)
    return counts


def _count(cfg) -> dict:
    from agents.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        try:
            return trainer.model_flops()
        finally:
            trainer.close()


def achieved(results: Path, counts: dict[str, dict]) -> tuple[list[dict], list[str]]:
    """Per committed e2e row: frames/s, model TFLOP/s and its share of the proof's matmul rate in its precision."""
    rows, notes = [], []
    for jsonl in sorted(results.glob("*/e2e.jsonl")):
        env_file = jsonl.parent / "environment.json"
        env = json.loads(env_file.read_text()) if env_file.is_file() else {}
        for line in jsonl.read_text().splitlines():
            run = json.loads(line)
            count = counts.get(run.get("case"))
            if count is None:
                continue
            if (run.get("num_envs"), run.get("replay_ratio")) != (count["num_envs"], count["replay_ratio"]):
                notes.append(f"{jsonl.parent.name} {run['case']} {run['provider']}: num_envs {run.get('num_envs')}, "
                             f"replay ratio {run.get('replay_ratio')} differ from today's e2e case: left out")
                continue
            tflops = float(run["frames_per_second"]) * count["flops_per_frame"] / 1e12
            recorded = run.get("model_tflops")
            if recorded is not None and abs(recorded - tflops) > 1e-3 * max(tflops, 1e-9):
                notes.append(f"{jsonl.parent.name} {run['case']} {run['provider']}: recorded {recorded:.4g} TFLOP/s, "
                             f"counted here {tflops:.4g} (the FLOP count changed since that run)")
            precision = run.get("precision", "fp32")
            rate = matmul_rate(run, env)[1]
            rows.append({"results": jsonl.parent.name, "device": run.get("device"), "git_sha": run.get("git_sha"),
                         "case": run["case"], "setup": run["provider"], "precision": precision,
                         "frames_per_second": float(run["frames_per_second"]), "model_tflops": round(tflops, 3),
                         "matmul_tflops": rate, "share_of_matmul": round(tflops / rate, 4) if rate else None})
    return rows, notes


def render(counts: dict[str, dict], rows: list[dict], notes: list[str], meta: dict,
           presets: dict[str, dict] | None = None) -> str:
    lines = ["# Model FLOPs of the end-to-end cases", "",
             f"Counted on the CPU by `bench/model_flops.py` at git {meta['git_sha']} on {meta['date']} (torch "
             f"{meta['torch']}). FLOPs are counted, not timed: matmuls and convolutions, 2 per multiply-add, dense "
             "(masks are simulated). Per frame: the learner step's FLOPs x the replay ratio, plus one acting "
             "forward's share per env, over 4 frames per agent step.", "",
             "| case | batch | envs | replay ratio | learner GFLOP / update | acting GFLOP / forward | GFLOP / frame | "
             "target frames/s | TFLOP/s it needs |", "|---|---|---|---|---|---|---|---|---|"]
    for case, c in counts.items():
        target = TARGETS.get(case)
        need = f"{target * c['flops_per_frame'] / 1e12:.1f}" if target else "-"
        lines.append(f"| {case} | {c['batch_size']} | {c['num_envs']} | {c['replay_ratio']:g} | "
                     f"{c['learner_flops'] / 1e9:.2f} | {c['act_flops'] / 1e9:.3f} | "
                     f"{c['flops_per_frame'] / 1e9:.3f} | {f'{target:,}' if target else '-'} | {need} |")
    lines += ["", "## What the committed GPU runs achieved", "",
              "Frames/s from each proof's `e2e.jsonl`; model TFLOP/s = frames/s x GFLOP / frame above; the share is "
              "of the matmul rate (8192^3) that proof measured in the run's precision, where it measured one.", "",
              "| results | case | setup | precision | frames/s | model TFLOP/s | matmul TFLOP/s | share |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = f"{100 * r['share_of_matmul']:.1f}%" if r["share_of_matmul"] is not None else "-"
        lines.append(f"| {r['results']} | {r['case']} | {r['setup']} | {r['precision']} | "
                     f"{r['frames_per_second']:,.0f} | {r['model_tflops']:.2f} | {r['matmul_tflops'] or '-'} | "
                     f"{share} |")
    if presets:
        lines += ["", "## The paper's agents", "",
                  "Their GMP-95 presets (batch, envs and replay ratio as the paper's runs have them); the last column "
                  "is the GFLOP per frame over DQN's at the same width: what a run costs the GPU's arithmetic, "
                  "against DQN.", "",
                  "| preset | batch | envs | replay ratio | learner GFLOP / update | GFLOP / frame | x DQN's |",
                  "|---|---|---|---|---|---|---|"]
        for name, c in presets.items():
            dqn = presets.get("dqn_" + name.split("_", 1)[1])
            ratio = f"{c['flops_per_frame'] / dqn['flops_per_frame']:.2f}" if dqn else "-"
            lines.append(f"| {name} | {c['batch_size']} | {c['num_envs']} | {c['replay_ratio']:g} | "
                         f"{c['learner_flops'] / 1e9:.2f} | {c['flops_per_frame'] / 1e9:.3f} | {ratio} |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python bench/model_flops.py")
    parser.add_argument("--results", type=Path, default=_ROOT / "bench" / "results",
                        help="folder whose */e2e.jsonl (GPU proofs) are read")
    parser.add_argument("--out", type=Path, default=_ROOT / "bench" / "results" / "model_flops",
                        help="output path without suffix: writes .md and .json")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"--results {args.results} is not a folder")
    import torch

    counts, presets = count_cases(), count_presets()
    rows, notes = achieved(args.results, counts)
    sha = subprocess.run(["git", "rev-parse", "--short=8", "HEAD"], cwd=_ROOT, capture_output=True, text=True)
    meta = {"git_sha": sha.stdout.strip() or "unknown", "date": datetime.date.today().isoformat(),
            "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({**meta, "cases": counts, "presets": presets,
                                                         "achieved": rows, "notes": notes}, indent=1) + "\n")
    text = render(counts, rows, notes, meta, presets)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
