"""agents.report's confidence intervals: none where a stratified bootstrap cannot give one (one run per game)."""

import csv
import json
from itertools import product

import numpy as np

from agents import report
from agents.report import figures
from tests.agents.report_runs import GAMES, SEEDS, summary, write_run


def test_one_run_per_game_has_no_interval(tmp_path, capsys):
    root = tmp_path / "runs"
    for game, seed in product(GAMES, SEEDS):
        write_run(root, game, seed, 0.95)
    for game in GAMES:  # the dense twin has one seed: its resamples would all be the run itself
        write_run(root, game, 0, 0.0)
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "50"]) == 0
    err = capsys.readouterr().err
    dense, pruned = summary(out)["dense"], summary(out)["95% pruned"]
    assert dense["complete"] and dense["final"]["iqm"]["value"] is not None
    assert all(dense["final"][k]["low"] is None and dense["final"][k]["high"] is None for k in dense["final"])
    assert pruned["final"]["iqm"]["low"] < pruned["final"]["iqm"]["high"]  # three seeds: an interval as before
    pair = json.loads((out / "summary.json").read_text())["probability_of_improvement"]
    assert [(p["value"], p["low"], p["high"]) for p in pair] == [(1.0, None, None)]
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(r["low"] == r["high"] == "" for r in rows if r["config"] == "dense")
    assert all(r["low"] and r["high"] for r in rows if r["config"] == "95% pruned")
    md = (out / "report.md").read_text()
    assert f"| dense | 3 | 1 | {dense['final']['iqm']['value']:.3f} [n/a] |" in md
    assert "| 95% pruned | dense | 3 | 1.000 [n/a] |" in md
    warnings = [line for line in err.splitlines() if "confidence interval" in line]
    assert len(warnings) == 1 and "dense" in warnings[0] and "95% pruned" not in warnings[0]
    assert "at least 2 runs per game" in warnings[0]
    assert (out / "iqm_vs_width.png").exists() and (out / "iqm_curves.png").exists()


def test_figures_draw_no_error_bar_or_band_without_an_interval():
    config = report.Config(key=(("network.width", "3"), ("pruning.final_sparsity", "0.0")), runs=[], complete=True)
    config.label = "dense"
    plt = figures._plt()  # Agg
    fig, ax = plt.subplots()
    line = figures.Line("dense", "tab:blue", 0)
    figures._final_iqm_line(ax, [config], [3], {"dense": {"iqm": {"value": 1.0, "low": None, "high": None}}}, line)
    assert not ax.collections  # an error bar is a LineCollection
    assert "no CI" in " ".join(t.get_text() for t in ax.texts)
    line.plot(ax, [1, 2], [0.5, 1.0], *figures._band([{"low": None, "high": None}] * 2))
    assert not ax.collections  # a band is a PolyCollection
    mean, low, high = figures._mean_band(np.array([[1.0, 2.0]]), reps=20, confidence=0.95, seed=0)
    assert mean.tolist() == [1.0, 2.0] and low is None and high is None
    plt.close(fig)


def test_bootstrap_replications_default_to_rliables(tmp_path):
    """2,000 replications left the CI bounds visibly dependent on --seed; the curves, one bootstrap per
    iteration, get fewer unless asked (never more than --reps)."""
    args = report.parse_args([str(tmp_path), "--out", str(tmp_path)])
    assert (args.reps, args.curve_reps) == (50_000, 5_000)
    args = report.parse_args([str(tmp_path), "--out", str(tmp_path), "--reps", "300"])
    assert (args.reps, args.curve_reps) == (300, 300)
    args = report.parse_args([str(tmp_path), "--out", str(tmp_path), "--reps", "300", "--curve-reps", "400"])
    assert (args.reps, args.curve_reps) == (300, 400)
