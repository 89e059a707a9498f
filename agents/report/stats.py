"""The report's statistics on top of agents.evaluation: final aggregates, IQM curves, P(pruned > dense)."""

from __future__ import annotations

import numpy as np

from agents import evaluation as ev
from agents.report.configs import Config
from agents.report.runs import warn

# The stratified bootstrap resamples runs within each game: a game with one run resamples to itself, so a matrix
# with one row would give a zero-width interval that reflects nothing.
MIN_RUNS_FOR_CI = 2


def has_ci(matrix: np.ndarray) -> bool:
    """Whether a [runs, games] matrix has enough runs per game for a stratified-bootstrap CI."""
    return matrix.shape[0] >= MIN_RUNS_FOR_CI


def with_ci(matrix: np.ndarray, statistic, reps: int, confidence: float, seed: int) -> tuple:
    """(point, low, high); low and high are None where the matrix has too few runs per game for a CI."""
    if not has_ci(matrix):
        return float(statistic(matrix)), None, None
    return ev.aggregate_with_ci(matrix, statistic, reps=reps, confidence=confidence, seed=seed)


def final_aggregates(c: Config, reps: int, confidence: float, seed: int) -> dict:
    out = {}
    for name, fn in ev.AGGREGATES.items():
        point, low, high = with_ci(c.matrix, fn, reps, confidence, seed)
        out[name] = {"value": point, "low": low, "high": high}
    return out


def iqm_curve(
    c: Config, reps: int, confidence: float, seed: int, problems: list[str], table: str = "dqn_zoo"
) -> list[dict]:
    """IQM with CI (None with one run per game) at every iteration that every run in the matrix has reached. An
    iteration in which no episode of a run finished takes that run's previous score, as its final score does
    (`Run.score_standing_at`), so the curve ends where the final table is."""
    runs = [r for rs in c.used for r in rs]
    iters = sorted({int(i) for r in runs for i in r.iterations["iteration"] if np.isfinite(i)})
    points, gaps, carried = [], [], {}  # carried: run name -> iterations that took an earlier score
    for it in iters:
        cols, frames, updates, overshoot = [], [], [], 0
        for rs in c.used:
            col = []
            for r in rs:
                idx = np.flatnonzero(r.iterations["iteration"] == it)
                used = r.score_standing_at(idx[0]) if len(idx) else None
                if used is not None:
                    col.append(ev.human_normalized(r.scores[used], r.game, table))
                    frames.append(r.iterations["frames"][idx[0]])
                    updates.append(r.iterations["agent_steps"][idx[0]])  # offline runs: gradient updates
                    overshoot = max(overshoot, r.iteration_overshoot)
                    if used != idx[0]:
                        carried.setdefault(r.path.name, []).append(it)
            cols.append(col)
        if any(len(col) < len(rs) for col, rs in zip(cols, c.used, strict=True)):
            gaps.append(it)  # a run has not reached this iteration, or has no score up to it
            continue
        if max(frames) - min(frames) >= overshoot:  # more than envs that finish the iteration at different steps
            warn(problems, f"{c.label}: runs disagree on the frame count of iteration {it}: {int(min(frames)):,} to "
                           f"{int(max(frames)):,}, {overshoot:,} or more apart (runs can end an iteration up to "
                           "num_envs x frame_skip frames apart)")
        m = np.array(cols).T
        point, low, high = with_ci(m, ev.iqm, reps, confidence, seed)
        points.append(
            {
                "iteration": it,
                "frames": float(np.median(frames)),
                "updates": float(np.median(updates)),
                "iqm": point,
                "low": low,
                "high": high,
                "runs": m.size,
            }
        )
    if carried:
        where = "; ".join(f"{name}: {', '.join(map(str, its))}" for name, its in sorted(carried.items()))
        warn(problems, f"{c.label}: no episode finished in some iterations; the learning curve takes the run's "
                       f"previous score there, as the final score does ({where})")
    if gaps:
        warn(problems, f"{c.label}: iteration(s) {', '.join(map(str, gaps))} left off the learning curve (a run has "
                       "not reached them, or has no score up to them)")
    return points


def probability_of_improvement_pairs(configs: list[Config], reps: int, confidence: float, seed: int) -> list[dict]:
    """P(pruned > dense) for every pruned configuration whose dense twin (same everything else) is aggregated."""
    out = []
    for c in configs:
        if not c.aggregated or c.sparsity == 0:
            continue
        base = {k: v for k, v in c.key if not k.startswith("pruning.")}
        for d in configs:
            if d is c or not d.aggregated or d.sparsity != 0:
                continue
            if {k: v for k, v in d.key if not k.startswith("pruning.")} != base:
                continue
            common = [g for g in c.games if g in d.games]
            if not common:
                continue
            x = c.matrix[:, [c.games.index(g) for g in common]]
            y = d.matrix[:, [d.games.index(g) for g in common]]
            p = float(ev.probability_of_improvement(x, y))
            low = high = None  # each side is resampled within games: both need the runs for a CI
            if has_ci(x) and has_ci(y):
                low, high = ev.bootstrap_ci(
                    (x, y), ev.probability_of_improvement, reps=reps, confidence=confidence, seed=seed
                )
            out.append({"x": c.label, "y": d.label, "games": len(common), "value": p, "low": low, "high": high})
    return out
