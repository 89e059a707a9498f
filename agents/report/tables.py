"""report.md, final_scores.csv, curves.csv and summary.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from agents import evaluation as ev
from agents.profiler import cpus_oversubscribed
from agents.report.configs import LABEL_ORDER, varying_fields
from agents.report.runs import LOOP_SPLIT_KEYS


def _ci(d: dict, digits: int = 3) -> str:
    """'1.234 [1.100, 1.300]', or '1.234 [n/a]' where there is no CI (one run per game)."""
    if d["low"] is None:
        return f"{d['value']:.{digits}f} [n/a]"
    return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


SCORE_NAMES = {"train": "training", "eval": "evaluation-phase"}


def config_speeds(config) -> dict[str, dict]:
    """Per device a configuration's runs were trained on: how many, the median of their training frames/s
    (`Run.frames_per_second`), the mean of their last iterations' loop splits (None where no run has one) and
    the model TFLOP/s: that median x the matmul and convolution FLOPs per frame the trainer counted (None unless
    every run has the count: trainers before it wrote none). Runs without a training speed (offline runs) are
    left out."""
    by_device: dict[str, list] = {}
    for run in config.runs:
        if run.frames_per_second is not None:
            by_device.setdefault(run.device, []).append(run)
    speeds = {}
    for device, runs in sorted(by_device.items()):
        splits = [r.loop_split for r in runs if r.loop_split]
        fps = float(np.median([r.frames_per_second for r in runs]))
        flops = [r.flops_per_frame for r in runs]
        speeds[device] = {
            "runs": len(runs),
            "frames_per_second": fps,
            "loop_split": ({k: float(np.mean([s[k] for s in splits])) for k in LOOP_SPLIT_KEYS} if splits
                           else None),
            # One configuration computes the same FLOPs per frame in every game (the median guards a stray one).
            "model_tflops": None if None in flops else fps * float(np.median(flops)) / 1e12,
            # runs that trained while other processes competed for their CPUs (agents.profiler.cpus_oversubscribed)
            "cpu_shared_runs": sum(cpus_oversubscribed(r.cpu_use) for r in runs),
        }
    return speeds


def speed_lines(configs) -> list[str]:
    """report.md's speed table: each configuration's training frames/s per device, against the first
    configuration trained on the same device, and where its loop's time went."""
    rows, first = [], {}
    for c in configs:
        for device, sp in config_speeds(c).items():
            base_label, base_fps = first.setdefault(device, (c.label, sp["frames_per_second"]))
            ratio = "1.00x (reference)" if base_label == c.label else f"{sp['frames_per_second'] / base_fps:.2f}x"
            split = sp["loop_split"]
            waits = " / ".join("-" if k == "device_wait" and device == "cpu" else f"{100 * split[k]:.0f}%"
                               for k in LOOP_SPLIT_KEYS) if split else "-"  # (a CPU run waits on no GPU)
            tflops = "-" if sp["model_tflops"] is None else f"{sp['model_tflops']:.3g}"
            shared = sp["cpu_shared_runs"]
            fps = f"{sp['frames_per_second']:,.0f}" + (f" (CPU shared in {shared} of its runs)" if shared else "")
            rows.append(f"| {c.label} | {device} | {sp['runs']} | {fps} | {ratio} | {waits} | {tflops} |")
    if not rows:
        return []
    return ["", "## Speed", "",
            "Training frames/s: per run the median over its iterations (the first, which holds the warm-up, left "
            "out), then the median over the configuration's runs on each device. Speeds are compared only "
            "between configurations trained on the same device, against the first one listed, and only mean "
            "something for runs that had their machine to themselves (a CPU shared with other work slows a run "
            "by whatever that work takes). Waits: the share "
            "of the last iteration's wall time the host spent blocked on the envs / on the GPU / working (mean "
            "over runs; runs of trainers before this record have none). Model TFLOP/s: frames/s x the network's "
            "matmul and convolution FLOPs per frame (learner step at the replay ratio, acting forward; dense, as "
            "computed), to set against the device's rate.", "",
            "| Configuration | Device | Runs | Frames/s | vs reference | Waits: env / GPU / host | Model TFLOP/s |",
            "|---|---|---|---|---|---|---|", *rows]


def write_markdown(
    path: Path, configs, finals, pairs, games, unreferenced, problems, figures, args, sweep_lines=()
) -> str:
    ci = round(args.confidence * 100)
    lines = ["# Results", ""]
    if args.note:
        lines += [f"**{args.note}**", ""]
    lines += [
        f"Human-normalised scores ({args.normalization} human_at30 table), final score = last iteration's mean "
        f"{SCORE_NAMES[args.score]} return; IQM, median, mean and optimality gap over runs x games with {ci}% "
        f"stratified-bootstrap percentile CIs ({args.reps} reps, learning curves {args.curve_reps}, seed {args.seed}). "
        f"Games: {', '.join(games) or 'none'}.",
        "",
        f"| Configuration | Games | Seeds | IQM [{ci}% CI] | Median | Mean | Optimality gap | Status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        status = "complete" if c.complete else "**incomplete**: " + "; ".join(c.flags)
        if c.errors:
            status = "**error**: " + "; ".join(c.errors + c.flags)
        if c.aggregated:
            f = finals[c.label]
            cells = [
                _ci(f["iqm"]),
                f"{f['median']['value']:.3f}",
                f"{f['mean']['value']:.3f}",
                f"{f['optimality_gap']['value']:.3f}",
            ]
            if not c.complete:
                status = "partial (--allow-incomplete): " + "; ".join(c.flags)
            n_seeds = str(c.matrix.shape[0])
        else:
            cells, n_seeds = ["excluded", "", "", ""], str(len(c.expected_seeds))
        n_games = len(c.games) if c.aggregated else len({g for g, _ in c.cells})
        lines.append(f"| {c.label} | {n_games} | {n_seeds} | " + " | ".join(cells) + f" | {status} |")
    shared = [(k, configs[0].flat[k]) for k in LABEL_ORDER if all(k in c.flat for c in configs)]
    shared = [(k, v) for k, v in shared if all(c.flat[k] == v for c in configs)]
    varying = varying_fields(configs)
    lines += ["", "Configurations: runs are grouped by every option that can change results (not by runtime options "
              "such as --max-minutes or --device)."]
    if shared:
        lines += ["", "Shared by all: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in shared) + "."]
    if varying:
        lines += [""] + [
            f"- {c.label}: " + ", ".join(f"{k}={json.dumps(c.flat.get(k))}" for k in varying) for c in configs
        ]
    if pairs:
        lines += [
            "",
            f"Probability of improvement P(pruned > dense) [{ci}% CI]:",
            "",
            "| Pruned | Dense | Games | P(X > Y) |",
            "|---|---|---|---|",
        ]
        lines += [f"| {p['x']} | {p['y']} | {p['games']} | {_ci(p)} |" for p in pairs]

    all_games = list(games) + sorted(unreferenced)
    for title, norm in (
        ("Per-game mean raw score ± sample std over seeds (final iteration)", False),
        ("Per-game mean human-normalised score (final iteration)", True),
    ):
        lines += [
            "",
            f"{title}:",
            "",
            "| Game | " + " | ".join(c.label for c in configs) + " |",
            "|---|" + "---|" * len(configs),
        ]
        for g in all_games if not norm else games:
            row = []
            for c in configs:
                scores = np.array([r.final_score() for (game, _), r in c.cells.items() if game == g and r.trusted])
                scores = scores[np.isfinite(scores)]
                if not len(scores):
                    row.append("—")
                elif norm:
                    row.append(f"{np.mean(ev.human_normalized(scores, g, args.normalization)):.3f} (n={len(scores)})")
                elif len(scores) == 1:  # no spread to estimate from one run
                    row.append(f"{scores[0]:.1f} (n=1)")
                else:
                    row.append(f"{scores.mean():.1f} ± {scores.std(ddof=1):.1f} (n={len(scores)})")
            lines.append(f"| {g} | " + " | ".join(row) + " |")
    lines += ["", "Per-game tables count finished runs that the trainer did not flag, and no (game, seed) pair "
              "that has several runs."]
    if unreferenced:
        lines += [
            "",
            f"No human reference score (raw scores only, not in aggregates): {', '.join(sorted(unreferenced))}.",
        ]
    lines += speed_lines(configs)
    if sweep_lines:
        lines += ["", "## Sweep", ""] + [f"- {line}" for line in sweep_lines]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    lines += ["", "## Problems", ""] + ([f"- {p}" for p in problems] or ["None."])
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def write_tables(out: Path, configs, finals, curves, pairs, problems, args, sweep_lines=()) -> None:
    with open(out / "final_scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            "config,agent,arch,width,sparsity,replay_ratio,game,seed,finished,flags,frames,final_score,"
            "human_normalized,in_aggregate,run_dir".split(",")
        )
        for c in configs:
            used = {id(r) for rs in c.used for r in rs}
            key = [c.label, c.agent, c.arch, c.width, c.sparsity, c.replay_ratio]
            for r in sorted(c.runs, key=lambda r: (r.game, r.seed)):
                s = r.final_score()
                hns = float(ev.human_normalized(s, r.game, args.normalization)) if ev.has_reference(r.game) else ""
                flags = "; ".join(r.flags)
                w.writerow(key + [r.game, r.seed, r.finished, flags, r.frames_reached, s, hns, id(r) in used, r.path])
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "iteration", "frames", "iqm", "low", "high", "runs"])
        for label, pts in curves.items():
            for p in pts:
                w.writerow([label, p["iteration"], p["frames"], p["iqm"], p["low"], p["high"], p["runs"]])
    summary = {
        "score": args.score,
        "normalization": args.normalization,
        "confidence": args.confidence,
        "reps": args.reps,
        "curve_reps": args.curve_reps,
        "seed": args.seed,
        "configs": [
            {
                "label": c.label,
                "agent": c.agent,
                "arch": c.arch,
                "width": c.width,
                "sparsity": c.sparsity,
                "replay_ratio": c.replay_ratio,
                "complete": c.complete,
                "flags": c.flags,
                "errors": c.errors,
                "games": c.games,
                "seeds": c.seeds,
                "final": finals.get(c.label),
                "scores": c.matrix.tolist() if c.aggregated else None,
                "score_seeds": c.score_seeds.tolist() if c.aggregated else None,
                "experiment": c.flat,
                "speed": config_speeds(c),
            }
            for c in configs
        ],
        "probability_of_improvement": pairs,
        "sweep": list(sweep_lines),
        "problems": problems,
    }
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
