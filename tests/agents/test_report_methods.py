"""The report knows the paper's comparisons: short labels for ReDo, Reset, WD, L2, RigL and the lottery ticket,
lottery tickets grouped whatever their source run, a Fig. 12-style figure and Fig. 14-style heat maps."""

import csv
import json

import numpy as np
import pytest

from agents import evaluation as ev
from agents.report.cli import main
from tests.agents.report_runs import GAMES, SEEDS, edit_config, summary, write_run

METHODS = {  # name -> (base sparsity, config changes, score factor)
    "dense": (0.0, {}, 1.0),
    "gmp": (0.95, {}, 1.0),
    "redo": (0.0, {"redo.enabled": True}, 1.1),
    "reset": (0.0, {"reset.enabled": True}, 0.7),
    "wd": (0.0, {"agent.weight_decay": 1e-5}, 1.05),
    "l2": (0.0, {"network.feature_norm": True}, 0.9),
    "rigl": (0.95, {"pruning.method": "rigl"}, 0.8),
    "lottery": (0.95, {}, 0.6),
}


def _scale(d, factor):
    """Multiply a fake run's human-normalised scores by `factor`."""
    rows = list(csv.DictReader(open(d / "iterations.csv")))
    game = json.loads((d / "config.json").read_text())["config"]["env"]["game"]
    rand, human = ev.reference_scores(game)
    for r in rows:
        r["score"] = repr(rand + factor * (float(r["score"]) - rand))
    with open(d / "iterations.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    rng = np.random.default_rng(0)
    for name, (sparsity, changes, factor) in METHODS.items():
        for width in (1, 3):
            for game in GAMES:
                for seed in SEEDS:
                    d = write_run(root, game, seed, sparsity, width=width, name=f"{name}_{game}_{seed}_w{width}")
                    extra = dict(changes)
                    if name == "lottery":  # each ticket comes from its own game's and seed's GMP run
                        extra["pruning.fixed_mask"] = str(root / f"gmp_{game}_{seed}_w{width}")
                    edit_config(d, **extra)
                    _scale(d, factor * (1 + 0.1 * (width - 1) * (sparsity > 0)))
                    if name in ("dense", "gmp") and width == 3:
                        with open(d / "grad_covariance.jsonl", "w") as f:
                            for step in (1000, 2000):
                                g = rng.normal(size=(8, 50)) + (2.0 if name == "dense" else 0.2) * rng.normal(size=50)
                                n = np.linalg.norm(g, axis=1)
                                m = (g @ g.T) / np.outer(n, n)
                                row = {"agent_steps": step, "frames": 4 * step, "grad_steps": step // 4}
                                f.write(json.dumps(row | {"matrix": m.round(5).tolist()}) + "\n")
                            f.write('{"agent_steps": 3000, "matr')  # a line cut short by a kill
    return root


def test_labels_name_the_methods_and_tickets_group_together(method_runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(method_runs), "--out", str(out), "--reps", "50"]) == 0
    labels = set(summary(out))
    for width in (1, 3):
        w = f"×{width}"
        assert {f"{w}, dense", f"{w}, 95% pruned", f"{w}, dense, ReDo", f"{w}, dense, Reset", f"{w}, dense, WD 1e-05",
                f"{w}, dense, L2", f"{w}, 95% pruned, RigL", f"{w}, 95% pruned, lottery ticket"} <= labels, labels
    assert len(labels) == 16  # 8 methods x 2 widths: the tickets' 9 source runs per width make one configuration
    ticket = summary(out)["×3, 95% pruned, lottery ticket"]
    assert ticket["complete"] and sorted(ticket["games"]) == sorted(GAMES) and ticket["seeds"] == list(SEEDS)
    for name in ("methods.png", "grad_covariance.png"):
        assert (out / name).stat().st_size > 10_000, name
    md = (out / "report.md").read_text()
    assert "![methods.png](methods.png)" in md and "![grad_covariance.png](grad_covariance.png)" in md


def test_the_covariance_figure_uses_the_last_complete_matrix(method_runs):
    from agents.report.runs import load_run

    run = load_run(method_runs / "dense_Breakout_0_w3", [])
    matrix, where = run.grad_covariance()
    assert matrix.shape == (8, 8) and where["agent_steps"] == 2000
    assert load_run(method_runs / "redo_Breakout_0_w3", []).grad_covariance() is None


def test_no_method_figure_without_a_baseline_method(tmp_path, capsys):
    for game in GAMES:
        for seed in SEEDS:
            for s in (0.0, 0.95):
                write_run(tmp_path / "runs", game, seed, s)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "methods.png").write_bytes(b"an older report's figure")  # would pass for this report's
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--reps", "20"]) == 0
    assert not (tmp_path / "out" / "methods.png").exists()
    assert not (tmp_path / "out" / "grad_covariance.png").exists()
    err = capsys.readouterr().err
    assert "methods.png not drawn (no data for it): removed the older one" in err
    assert "grad_covariance.png not drawn (no data for it)\n" in err


def test_a_method_is_named_before_an_option_that_tells_the_same_runs_apart():
    """An analysis option on the L2 and WD runs once labelled L2 "analysis_every=25" (alphabetical order put it
    before network.feature_norm), and the analysis figure called it "baseline"."""
    from agents.report.configs import join_parts, label_parts

    base = {"agent.name": "dqn", "pruning.final_sparsity": 0.0, "network.feature_norm": False,
            "agent.weight_decay": 0.0, "reset.enabled": False, "reset.period": 100, "analysis_every": 0}
    flats = [base | {"network.feature_norm": True, "analysis_every": 25},
             base | {"agent.weight_decay": 1e-5, "analysis_every": 25},
             base | {"reset.enabled": True, "reset.period": 40}]
    labels = [join_parts(p) for p in label_parts(flats)]
    assert labels == ["L2", "WD 1e-05", "Reset"], labels


def test_the_methods_figure_colours_each_configuration_as_the_other_figures_do(method_runs, tmp_path, monkeypatch):
    """The methods figure once coloured its lines by their order (95% pruned purple, orange everywhere else)."""
    from agents.report import figures

    legends = []  # (figure, {legend label: colour})
    real_legend = figures._figure_legend

    def record(fig, handles, labels):
        legends.append((fig, {label: h.get_color() for h, label in zip(handles, labels, strict=True)}))
        real_legend(fig, handles, labels)

    monkeypatch.setattr(figures, "_figure_legend", record)
    assert main([str(method_runs), "--out", str(tmp_path / "r"), "--reps", "20"]) == 0
    drawn = {" ".join(fig.get_suptitle().split()).split(" (")[0]: colors for fig, colors in legends}
    methods, curves = drawn["Pruning and the other methods"], drawn["IQM learning curves"]
    assert methods["95% pruned"] == curves["×3, 95% pruned"] == "tab:orange"
    assert methods["dense"] == curves["×3, dense"] == "tab:blue"
    for label, color in methods.items():
        assert curves[f"×3, {label}"] == color, label
