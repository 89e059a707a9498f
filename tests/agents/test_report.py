"""agents.report end to end: fake run directories in the trainer's format -> tables, JSON, CSV, figures."""

import csv
import json
import shutil
import subprocess
import sys
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from agents import evaluation as ev
from agents import report
from tests.agents.report_runs import GAMES, ITERS, SEEDS, STEPS, edit_config, final_hns, summary, write_run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for sparsity in (0.0, 0.95):
        for game in GAMES:
            for seed in SEEDS:
                # dense runs use the flat config.json layout, pruned runs the trainer's nested one
                write_run(root / ("dense" if sparsity == 0 else "pruned"), game, seed, sparsity, nested=sparsity > 0)
    return root


def _expected_matrix(sparsity):
    return np.array([[final_hns(sparsity, g, s) for g in range(len(GAMES))] for s in SEEDS])


def test_report_end_to_end(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main([str(runs), "--out", str(out), "--reps", "500"]) == 0
    configs = summary(out)
    assert set(configs) == {"dense", "95% pruned"}  # labels name what differs; the rest is said once
    for label, sparsity in (("dense", 0.0), ("95% pruned", 0.95)):
        c = configs[label]
        assert c["complete"] and not c["flags"]
        assert sorted(c["games"]) == sorted(GAMES) and c["seeds"] == list(SEEDS)
        m = _expected_matrix(sparsity)[:, [GAMES.index(g) for g in c["games"]]]
        np.testing.assert_allclose(c["scores"], m, rtol=1e-9)
        final = c["final"]
        assert final["iqm"]["value"] == pytest.approx(np.sort(m.ravel())[2:7].mean())  # 9 values: trim 2 each end
        assert final["mean"]["value"] == pytest.approx(m.mean())
        assert final["median"]["value"] == pytest.approx(np.median(m.mean(axis=0)))
        assert final["iqm"]["low"] <= final["iqm"]["value"] <= final["iqm"]["high"]
        assert (final["iqm"]["low"], final["iqm"]["high"]) == pytest.approx(ev.bootstrap_ci(m, ev.iqm, reps=500))

    # the markdown table carries the same numbers
    md = (out / "report.md").read_text()
    iqm_pruned = configs["95% pruned"]["final"]["iqm"]
    assert f"{iqm_pruned['value']:.3f} [{iqm_pruned['low']:.3f}, {iqm_pruned['high']:.3f}]" in md
    assert "| 95% pruned | 3 | 3 |" in md
    assert 'Shared by all: agent.name="dqn", network.arch="impala", network.width=3' in md
    # per-game raw means: Pong dense = mean over seeds of random + hns * (human - random)
    rand, human = ev.reference_scores("Pong")
    pong = np.mean([rand + final_hns(0.0, 0, s) * (human - rand) for s in SEEDS])
    assert f"{pong:.1f} ±" in md
    assert "None." in md.split("## Problems")[1]  # nothing to report

    # P(pruned > dense) = 1: every pruned run beats every dense run on each game
    pairs = json.loads((out / "summary.json").read_text())["probability_of_improvement"]
    assert len(pairs) == 1 and pairs[0]["value"] == 1.0

    # curves: one point per iteration, IQM of the linear ramp
    with open(out / "curves.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["config"] == "dense"]
    assert [int(r["iteration"]) for r in rows] == list(range(ITERS))
    assert [float(r["frames"]) for r in rows] == [4.0 * STEPS * (i + 1) for i in range(ITERS)]
    assert float(rows[1]["iqm"]) == pytest.approx(ev.iqm(_expected_matrix(0.0) * 2 / ITERS))

    with open(out / "final_scores.csv") as f:
        finals = list(csv.DictReader(f))
    assert len(finals) == 18 and all(r["in_aggregate"] == "True" for r in finals)

    for name in ("iqm_curves.png", "iqm_vs_width.png", "sparsity_schedule.png", "analysis.png"):
        png = out / name
        assert png.exists() and png.stat().st_size > 20_000, name
        from matplotlib.image import imread

        img = imread(png)
        assert img.shape[0] > 300 and img.shape[1] > 300 and img[..., :3].std() > 0.05, name


def test_incomplete_configs_are_flagged_and_excluded(runs, tmp_path, capsys):
    # a third configuration (width 1, dense): Enduro missing entirely, one seed unfinished, one with a NaN last score
    extra = runs / "w1"
    write_run(extra, "Pong", 0, 0.0, width=1)
    write_run(extra, "Pong", 1, 0.0, width=1, iters=2, finished=False)
    write_run(extra, "Breakout", 0, 0.0, width=1, nan_last=True)
    write_run(extra, "Breakout", 1, 0.0, width=1)
    out = tmp_path / "report"
    report.main([str(runs), "--out", str(out), "--reps", "200", "--no-figures"])
    err = capsys.readouterr().err
    label = "×1, dense"
    c = summary(out)[label]
    assert not c["complete"] and c["final"] is None and c["scores"] is None
    flags = " ".join(c["flags"])
    assert "missing games: Enduro" in flags and "unfinished: Pong seed 1" in flags
    assert "missing games: Enduro" in err and "left out of the aggregates" in err
    md = (out / "report.md").read_text()
    assert f"| {label} | " in md and "excluded" in md and "**incomplete**" in md
    # the complete configurations are unaffected
    assert summary(out)["×3, dense"]["complete"]

    # --allow-incomplete aggregates what is there: Pong + Breakout, 2 seeds each, marked partial
    out2 = tmp_path / "report2"
    report.main([str(runs), "--out", str(out2), "--reps", "200", "--allow-incomplete"])
    c = summary(out2)[label]
    assert c["final"] is not None and np.array(c["scores"]).shape == (2, 2)
    assert sorted(c["games"]) == ["Breakout", "Pong"]
    # Breakout seed 0 has no score in its last iteration: the previous iteration's score is used (warned)
    hns_b0 = final_hns(0.0, 1, 0) * (ITERS - 1) / ITERS
    assert np.isclose(np.array(c["scores"])[:, c["games"].index("Breakout")], hns_b0).any()
    assert "no episode finished in the last iteration" in capsys.readouterr().err
    assert "partial (--allow-incomplete)" in (out2 / "report.md").read_text()


def test_required_games_and_unknown_games(runs, tmp_path, capsys):
    # requiring a game nobody ran flags every configuration
    out = tmp_path / "r"
    report.main([str(runs), "--out", str(out), "--games", "Pong,Breakout,Enduro,Qbert", "--reps", "50", "--no-figures"])
    assert all(not c["complete"] and "Qbert" in " ".join(c["flags"]) for c in summary(out).values())
    assert report.main([str(runs), "--out", str(out), "--games", "Pongg"]) == 2
    assert "error: --games: unknown Atari game 'Pongg'; did you mean Pong" in capsys.readouterr().err


def test_configs_differing_in_other_fields_are_not_pooled(tmp_path):
    root = tmp_path / "runs"
    for game in GAMES:
        d = write_run(root / "a", game, 0, 0.95)
        d2 = write_run(root / "b", game, 0, 0.95)
        cfg = json.loads((d2 / "config.json").read_text())
        cfg["config"]["agent"]["lr"] = 2.08e-5
        (d2 / "config.json").write_text(json.dumps(cfg))
        assert d != d2
    out = tmp_path / "r"
    report.main([str(root), "--out", str(out), "--reps", "50", "--no-figures"])
    labels = set(summary(out))
    assert labels == {"lr=6.25e-05", "lr=2.08e-05"}


def test_the_learning_curve_ends_at_the_final_score(tmp_path, capsys):
    """A run with no episode end in its last iteration: the final table took the previous iteration's score while
    the curve dropped the iteration, so the curve ended an iteration early at another IQM."""
    root = tmp_path / "runs"
    for game in GAMES:
        for seed in SEEDS:
            write_run(root, game, seed, 0.0, nan_last=(game, seed) == ("Breakout", 1))
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "50", "--no-figures"]) == 0
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(ITERS))
    (config,) = summary(out).values()
    assert float(rows[-1]["iqm"]) == pytest.approx(config["final"]["iqm"]["value"])
    err = capsys.readouterr().err
    assert f"takes the run's previous score there, as the final score does (Breakout_s1_0.0_w3: {ITERS - 1})" in err


def test_a_run_with_the_analysis_on_joins_its_configuration(tmp_path):
    """--analysis-every changes no training: a seed run with it made a configuration of its own, left out of the
    aggregates for its missing games, and every label of its twin named analysis_every."""
    root = tmp_path / "runs"
    for game in GAMES:
        for seed in SEEDS:
            for sparsity in (0.0, 0.95):
                d = write_run(root, game, seed, sparsity)
                if sparsity and game == "Pong" and seed == 2:
                    cfg = json.loads((d / "config.json").read_text())
                    cfg["config"]["analysis_every"] = 10
                    (d / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "50", "--no-figures"]) == 0
    configs = summary(out)
    assert set(configs) == {"dense", "95% pruned"}
    assert configs["95% pruned"]["complete"] and len(configs["95% pruned"]["scores"]) == len(SEEDS)


def test_find_run_dirs(runs, tmp_path):
    dirs = report.find_run_dirs([runs])
    assert len(dirs) == 18
    assert report.find_run_dirs([dirs[0]]) == [dirs[0]]
    with pytest.raises(report.ReportError, match="no run directories"):
        report.find_run_dirs([tmp_path / "runs" / "dense" / dirs[0].name / "tb"])
    with pytest.raises(report.ReportError, match="does not exist"):
        report.find_run_dirs([tmp_path / "nope"])


def test_find_run_dirs_follows_links_and_counts_a_run_once(runs, tmp_path):
    """A folder of symlinks to the runs to compare is searched; a run reached by a link and by its own path, or
    through a link back to a parent, is one run (else the report saw the same seed twice)."""
    dirs = report.find_run_dirs([runs])
    compare = tmp_path / "compare"
    (compare / "nested").mkdir(parents=True)
    for d in dirs[:3]:
        (compare / d.name).symlink_to(d, target_is_directory=True)
    (compare / "nested" / "up").symlink_to(compare, target_is_directory=True)  # a cycle
    (compare / "nested" / "all").symlink_to(runs, target_is_directory=True)
    found = report.find_run_dirs([compare])
    assert len(found) == 18 and {d.resolve() for d in found} == {d.resolve() for d in dirs}
    assert sorted(report.find_run_dirs([compare / dirs[0].name, dirs[0]])) == [compare / dirs[0].name]
    linked = report.find_run_dirs([compare / "nested" / "up"])
    assert {d.resolve() for d in linked} == {d.resolve() for d in dirs}


def test_cli_help_and_subprocess(runs, tmp_path):
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-m", "agents.report", "--help"], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0 and "--allow-incomplete" in res.stdout and "RUN_DIR" in res.stdout
    out = tmp_path / "cli"
    res = subprocess.run(
        [sys.executable, "-m", "agents.report", str(runs / "dense"), "--out", str(out), "--reps", "100"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "DQN Impala ×3, dense" in res.stdout and (out / "report.md").exists()


def test_offline_runs_are_plotted_against_gradient_updates(tmp_path, monkeypatch):
    # Offline runs train on no env frames (frames = 0 in their logs): curves and schedules use the updates.
    from agents.report import figures

    root = tmp_path / "runs"
    for sparsity in (0.0, 0.95):
        for seed in SEEDS:
            write_run(root, "Pong", seed, sparsity, offline=True)
    labels = []
    monkeypatch.setattr(figures, "_frames_axis", lambda ax, fontsize=None, quantity="Frames": labels.append(quantity))
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out), "--reps", "200"]) == 0
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["frames"]) == 0 for r in rows)
    assert labels and set(labels) == {"Gradient updates"}, labels
    assert (out / "iqm_curves.png").exists() and (out / "sparsity_schedule.png").exists()



def test_offline_runs_without_training_episodes_point_to_score_eval(tmp_path, capsys):
    """An offline run plays only in its evaluation phase: reported by training score, it has none, and the report
    says which option scores it instead of only "no score logged"."""
    root = tmp_path / "runs"
    for seed in SEEDS:
        d = write_run(root, "Pong", seed, 0.95, offline=True, eval_columns=True, eval_bonus=0.1)
        edit_config(d, **{"offline.enabled": True})
        with open(d / "iterations.csv") as f:
            rows = list(csv.DictReader(f))
        with open(d / "iterations.csv", "w", newline="") as f:  # as agents.offline writes it: no training score
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**r, "score": "", "episodes": 0} for r in rows)
    report.main([str(root), "--out", str(tmp_path / "train"), "--reps", "50", "--no-figures"])
    assert "3 offline run(s) have no training score" in capsys.readouterr().err
    assert report.main([str(root), "--out", str(tmp_path / "eval"), "--reps", "50", "--no-figures", "--score",
                        "eval"]) == 0
    assert "offline run(s)" not in capsys.readouterr().err

def test_figure_titles_wrap_to_the_figure_width():
    """A one-panel figure is narrow: its title wraps rather than running off both sides (it once did)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agents.report.figures import _title

    fig = plt.figure(figsize=(3.8, 3.7))
    _title(fig, "Gradient covariance (per-sample TD-loss gradients on a fixed batch)", "a note " * 12)
    lines = fig._suptitle.get_text().splitlines()
    plt.close(fig)
    assert len(lines) > 2 and max(len(line) for line in lines) <= int(3.8 * 11)
    assert " ".join(lines).startswith("Gradient covariance (per-sample TD-loss gradients on a fixed batch)")


def test_allow_incomplete_writes_the_seed_of_every_score(tmp_path):
    """Each game keeps its own first seeds, so a row of `scores` can hold different seeds in different games;
    `score_seeds` says which, and `seeds` lists the seeds found, not the rows."""
    root = tmp_path / "runs"
    for game, seeds in (("Pong", (0, 1, 2)), ("Breakout", (1, 2)), ("Enduro", (0, 2))):
        for seed in seeds:
            write_run(root, game, seed, 0.0)
    out = tmp_path / "r"
    report.main([str(root), "--out", str(out), "--reps", "20", "--no-figures", "--allow-incomplete"])
    (c,) = summary(out).values()
    assert c["seeds"] == [0, 1, 2]
    scores, seeds = np.array(c["scores"]), np.array(c["score_seeds"])
    assert seeds.shape == scores.shape == (2, 3)
    first = {"Pong": [0, 1], "Breakout": [1, 2], "Enduro": [0, 2]}
    assert {g: seeds[:, j].tolist() for j, g in enumerate(c["games"])} == first
    for (r, j), s in np.ndenumerate(seeds):
        assert scores[r, j] == pytest.approx(final_hns(0.0, GAMES.index(c["games"][j]), s))


def _shift_frames(d, by: int) -> None:
    """Make every iteration of a fake run end `by` frames later, as envs that overshoot the budget do."""
    lines = (d / "iterations.csv").read_text().splitlines()
    col = lines[0].split(",").index("frames")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[col] = str(int(row[col]) + by)
    (d / "iterations.csv").write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")


@pytest.mark.parametrize("num_envs, late, warned", [(8, 28, False), (8, 32, True), (1, 4, True), (None, 28, False)])
def test_iterations_may_end_up_to_num_envs_agent_steps_apart(tmp_path, capsys, num_envs, late, warned):
    """8 envs, frame skip 4: an iteration ends 0 to 7 agent steps late, so runs' frame counts can differ by up to
    28 frames; 32 means something else. A config.json without env.num_envs counts as the default (8)."""
    root = tmp_path / "runs"
    for game, seed in product(GAMES, SEEDS):
        d = write_run(root, game, seed, 0.0)
        if num_envs is None:
            meta = json.loads((d / "config.json").read_text())
            del meta["config"]["env"]["num_envs"]
            (d / "config.json").write_text(json.dumps(meta))
        else:
            edit_config(d, **{"env.num_envs": num_envs})
        if seed == 1:
            _shift_frames(d, late)
    assert report.main([str(root), "--out", str(tmp_path / "r"), "--reps", "20", "--no-figures"]) == 0
    disagree = [line for line in capsys.readouterr().err.splitlines() if "disagree on the frame count" in line]
    if warned:
        assert len(disagree) == ITERS and "4,000 to " + f"{4000 + late:,}" in disagree[0]
        assert "np.float64" not in disagree[0]
    else:
        assert not disagree


def test_per_game_spread_is_the_sample_std(runs, tmp_path):
    write_run(runs / "w1", "Pong", 0, 0.0, width=1)  # one run: no spread to show
    out = tmp_path / "r"
    report.main([str(runs), "--out", str(out), "--reps", "20", "--no-figures", "--allow-incomplete"])
    md = (out / "report.md").read_text()
    assert "Per-game mean raw score ± sample std over seeds" in md
    rand, human = ev.reference_scores("Pong")
    pong = np.array([rand + final_hns(0.0, 0, s) * (human - rand) for s in SEEDS])
    header, _, *rows = md.split("Per-game mean raw score")[1].split("\n\n")[1].splitlines()
    cells = lambda row: [c.strip() for c in row.strip("|").split("|")]
    pong_row = dict(zip(cells(header), cells(next(r for r in rows if r.startswith("| Pong"))), strict=True))
    assert pong_row["×3, dense"] == f"{pong.mean():.1f} ± {pong.std(ddof=1):.1f} (n=3)"
    assert pong_row["×1, dense"] == f"{pong[0]:.1f} (n=1)"


def test_synthetic_runs_are_marked_and_never_mixed_with_real_ones(runs, tmp_path, capsys):
    """The demo's runs, left in a folder under the real ones, were grouped with them without a word."""
    from agents.report.demo import write_synthetic_runs

    demo = tmp_path / "demo"
    write_synthetic_runs(demo, games=GAMES, seeds=(0, 1), widths=(3,), iters=4)
    # reported alone, even without --demo, every output says what they are
    out = tmp_path / "alone"
    assert report.main([str(demo), "--out", str(out), "--reps", "50", "--no-figures"]) == 0
    assert "**SYNTHETIC DATA" in (out / "report.md").read_text()
    with open(out / "curves.csv") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)][:4] == [1, 2, 3, 4]  # as the trainer numbers them
    # beside real runs, they are left out, and said to be
    shutil.copytree(demo, runs / "old_demo" / "synthetic_runs")
    out = tmp_path / "mixed"
    capsys.readouterr()
    assert report.main([str(runs), "--out", str(out), "--reps", "50", "--no-figures"]) == 0
    assert "left out 12 synthetic runs of agents.report --demo" in capsys.readouterr().err
    assert sum(len(c["seeds"]) * len(c["games"]) for c in summary(out).values()) == 18
    assert "SYNTHETIC" not in (out / "report.md").read_text().split("## Problems")[0]
