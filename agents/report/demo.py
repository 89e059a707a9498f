"""Synthetic run directories in the trainer's format, for documentation (--demo) and the README figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agents import evaluation as ev


def _synthetic_run(
    d: Path, game: str, seed: int, width: int, sparsity: float, level: float, rng, iters: int = 40, agent: str = "dqn"
):
    """One fake run in the trainer's format: a saturating learning curve towards `level` (human-normalised),
    a cubic GMP schedule over 20-80% of training, and drifting analysis metrics. NOT real results."""
    steps_per_iter, total = 250_000, 250_000 * iters
    (d / "checkpoints").mkdir(parents=True, exist_ok=True)
    net = {"arch": "impala", "width": width, "scale_dense": False}
    cfg = {"preset": None, "env": {"game": game, "backend": "envpool", "num_envs": 8}, "network": net}
    cfg |= {"agent": {"name": agent}, "pruning": {"final_sparsity": sparsity, "distribution": "erk"}}
    cfg |= {"replay_ratio": 0.25, "seed": seed, "total_steps": total, "iteration_steps": steps_per_iter}
    meta = {"config": cfg, "device_name": "synthetic (no device)", "synthetic": True}  # (the report checks it)
    (d / "config.json").write_text(json.dumps(meta, indent=2))

    rand, human = ev.reference_scores(game)
    t = np.arange(1, iters + 1) / iters
    hns = level * (1 - np.exp(-3 * t)) * rng.lognormal(0, 0.15) + rng.normal(0, 0.08, iters)
    rows = ["iteration,agent_steps,frames,grad_steps,score,episodes,fps,total_sparsity,wall_time"]
    speed_rng = np.random.default_rng([seed, width, round(sparsity * 100)])  # (the scores' stream stays as it was)
    for i, score in enumerate(rand + hns * (human - rand)):
        steps = (i + 1) * steps_per_iter
        fps = 3000.0 / width * speed_rng.lognormal(0, 0.05)  # made up: wider is slower, pruning costs nothing
        rows.append(f"{i + 1},{steps},{4 * steps},{steps // 4},{score:.1f},10,{fps:.1f},0.0,{i * 100.0}")
    (d / "iterations.csv").write_text("\n".join(rows) + "\n")

    layers = {"conv0": 0.80, "conv1": 0.95, "conv2": 0.96, "hidden": 0.97, "out": 0.85}  # made-up ERK-like targets
    dense = sparsity == 0
    with open(d / "metrics.jsonl", "w") as f:
        for k in range(201):
            steps = k * total // 200
            u = k / 200  # fraction of training
            s = sparsity * (1 - (1 - min(max((u - 0.2) / 0.6, 0), 1)) ** 3)
            row = {"agent_steps": steps, "frames": 4 * steps, "grad_steps": steps // 4}
            row |= {"sparsity/prunable": s, "sparsity/total": 0.99 * s, "sparsity/target": s}
            row |= {f"sparsity/{n}": min(1.0, e * s / 0.95) for n, e in layers.items()}
            if k % 10 == 0:
                noise = 1 + 0.05 * rng.normal(size=5)
                row["analysis/dormant_frac"] = (0.1 + (0.25 if dense else 0.05) * u) * noise[0]
                row["analysis/srank"] = (300 - (150 if dense else 40) * u) * noise[1]
                row["analysis/param_norm"] = (40 + (60 if dense else 15) * u) * noise[2]
                row["analysis/q_norm"] = (1 + (8 if dense else 4) * u) * noise[3]
                row["analysis/q_var"] = (0.1 + (2 if dense else 0.6) * u) * noise[4]
            f.write(json.dumps(row) + "\n")
    split = dict(zip(("env_wait", "device_wait", "host"), speed_rng.dirichlet([2, 6 * width, 2]).round(4)))
    (d / "summary.json").write_text(json.dumps({"finished": True, "agent_steps": total, "last_loop_split": split}))


def write_synthetic_runs(
    root: Path,
    games=("BeamRider", "Breakout", "Enduro", "SpaceInvaders", "VideoPinball"),
    seeds=(0, 1, 2),
    widths=(1, 3),
    sparsities=(0.0, 0.95),
    agents=("dqn",),
    iters: int = 40,
) -> None:
    """Dense and pruned Impala runs with a made-up trend echoing Fig. 1 (dense worse with width, pruned better).
    For documentation only."""
    rng = np.random.default_rng(0)
    for agent in agents:
        for w in widths:
            for s in sparsities:
                level = 1.6 - 0.15 * (w - 1) if s == 0 else (1.8 + 0.25 * (w - 1)) * (0.95 + 0.1 * s)
                for g in games:
                    game_level = level * rng.lognormal(0, 0.4)
                    for seed in seeds:
                        d = root / f"{g}__{agent}_w{w}_s{round(s * 100)}__s{seed}"
                        _synthetic_run(d, g, seed, w, s, game_level, rng, iters, agent)
