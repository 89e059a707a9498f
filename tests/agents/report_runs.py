"""Fake run directories in the trainer's format, with known scores, for the agents.report tests."""

import json
from pathlib import Path

from agents import evaluation as ev

GAMES = ("Pong", "Breakout", "Enduro")
SEEDS = (0, 1, 2)
ITERS = 4
STEPS = 1000  # agent steps per iteration; total_steps = ITERS * STEPS


def final_hns(sparsity: float, game_idx: int, seed: int) -> float:
    """Known final human-normalised score of each fake run (distinct values, pruned better)."""
    return (1.0 if sparsity == 0 else 2.0) + 0.1 * game_idx + 0.03 * seed


def write_run(
    root: Path,
    game: str,
    seed: int,
    sparsity: float,
    width: int = 3,
    iters: int = ITERS,
    finished: bool = True,
    nan_last: bool = False,
    nested: bool = True,
    summary_keys: dict | None = None,
    eval_columns: bool = False,
    eval_bonus: float | None = None,
    name: str | None = None,
    offline: bool = False,
) -> Path:
    """A run whose final human-normalised score is final_hns(...). summary_keys: extra keys of summary.json.
    eval_columns: add the evaluation phase's columns, empty unless eval_bonus is given: then the evaluation
    score is the training one plus eval_bonus (human-normalised). name: the run directory, under root.
    offline: as agents.offline writes them: agent_steps count gradient updates, frames are 0."""
    fps = 0 if offline else 4  # frames per agent step
    d = root / (name or f"{game}_s{seed}_{sparsity}_w{width}")
    (d / "checkpoints").mkdir(parents=True)
    (d / "tb").mkdir()
    cfg = {
        "preset": None,
        "env": {"game": game, "backend": "envpool", "num_envs": 8},
        "network": {"arch": "impala", "width": width, "scale_dense": False},
        "agent": {"name": "dqn", "lr": 6.25e-5},
        "pruning": {"final_sparsity": sparsity, "distribution": "erk"},
        "replay_ratio": 0.25,
        "seed": seed,
        "total_steps": ITERS * STEPS,
        "iteration_steps": STEPS,
        "frame_skip": 4,
        "run_name": d.name,
        "device": "cpu",
    }
    if nested:  # what agents.train writes: the config next to run metadata
        cfg = {"config": cfg, "torch": "2.13.0", "git_sha": str(hash(d)), "started": str(d), "num_actions": 6}
    (d / "config.json").write_text(json.dumps(cfg))
    rand, human = ev.reference_scores(game)
    gi = GAMES.index(game)
    target = final_hns(sparsity, gi, seed)
    with open(d / "iterations.csv", "w") as f:
        f.write("iteration,agent_steps,frames,grad_steps,score,episodes,fps,total_sparsity,wall_time")
        f.write(",eval_score,eval_episodes\n" if eval_columns else "\n")
        for i in range(iters):
            hns = target * (i + 1) / ITERS  # linear ramp to the known final value
            score = "" if (nan_last and i == iters - 1) else f"{rand + hns * (human - rand)!r}"
            steps = (i + 1) * STEPS
            f.write(f"{i},{steps},{fps * steps},{steps // 4},{score},3,1000.0,{sparsity},{i}.0")
            if eval_columns:
                ev_score = "" if eval_bonus is None else f"{rand + (hns + eval_bonus) * (human - rand)!r}"
                f.write(f",{ev_score},{'' if eval_bonus is None else 2}")
            f.write("\n")
    with open(d / "metrics.jsonl", "w") as f:
        for k in range(iters * 2 + 1):
            steps = k * STEPS // 2
            row = {
                "agent_steps": steps,
                "frames": fps * steps,
                "grad_steps": steps // 4,
                "losses/td_loss": 0.1,
                "charts/SPS": 500.0,
            }
            if sparsity:
                s = sparsity * min(1.0, k / (iters * 2))
                # the trainer logs per-layer, prunable-weights and all-params (with biases) sparsity
                row.update({"sparsity/encoder.0": s * 0.8, "sparsity/out": s, "sparsity/prunable": s})
                row.update({"sparsity/total": 0.99 * s, "sparsity/target": s})
            if k % 2 == 0:
                row.update(
                    {
                        "analysis/dormant_frac": 0.1 + 0.01 * k,
                        "analysis/srank": 100.0 - k - seed,
                        "analysis/param_norm": 30.0 + k,
                        "analysis/q_mean": 0.5,
                        "analysis/q_norm": 1.0 + k,
                        "analysis/q_var": 0.2 * k,
                        "analysis/dormant/hidden_relu": 0.2,
                    }
                )
            f.write(json.dumps(row) + "\n")
    if finished:
        done = {"finished": True, "agent_steps": ITERS * STEPS, "final_score": 0}
        (d / "summary.json").write_text(json.dumps(done | (summary_keys or {})))
    return d


def edit_config(d: Path, **changes) -> None:
    """Set dotted config fields of a fake run: edit_config(d, **{"agent.lr": 1e-4, "max_minutes": 30})."""
    meta = json.loads((d / "config.json").read_text())
    cfg = meta["config"] if "config" in meta else meta
    for dotted, value in changes.items():
        *parents, name = dotted.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = value
    (d / "config.json").write_text(json.dumps(meta))


def summary(out: Path) -> dict:
    """label -> that configuration's entry of summary.json."""
    return {c["label"]: c for c in json.loads((out / "summary.json").read_text())["configs"]}
