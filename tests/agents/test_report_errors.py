"""agents.report on bad input: a clear message naming the file (and line), never a traceback or a wrong score."""

import csv
import json
import subprocess
import sys
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from agents import report
from tests.agents.report_runs import GAMES, ITERS, SEEDS, STEPS, edit_config, final_hns, summary, write_run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for game, seed in product(GAMES, SEEDS):
        write_run(root, game, seed, 0.95)
    return root


def _report(runs, tmp_path, *extra) -> tuple[int, Path]:
    out = tmp_path / "out"
    return report.main([str(runs), "--out", str(out), "--reps", "50", "--no-figures", *extra]), out


def _final_rows(out: Path) -> dict[tuple[str, int], dict]:
    with open(out / "final_scores.csv") as f:
        return {(r["game"], int(r["seed"])): r for r in csv.DictReader(f)}


def test_empty_or_missing_directory_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert f"error: no run directories (with a config.json) under {tmp_path / 'empty'}" in capsys.readouterr().err
    assert report.main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert f"error: {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    root = Path(__file__).resolve().parents[2]  # the command itself: exit code 2, one line, no traceback
    res = subprocess.run([sys.executable, "-m", "agents.report", str(tmp_path / "empty"), "--out", str(tmp_path)],
                         cwd=root, capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.startswith("error: no run dir")


def test_out_in_a_run_directory_is_a_usage_error_and_the_run_is_untouched(runs, tmp_path, capsys):
    """--out RUN_DIR wrote the report's summary.json over the run's own (its finished flag and sparsity flags)."""
    run = runs / "Breakout_s1_0.95_w3"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert report.main([str(runs), "--out", str(run), "--reps", "50", "--no-figures"]) == 2
    assert f"error: --out {run} is a run directory (it holds config.json)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_negative_bootstrap_seed_is_a_usage_error(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # a ValueError traceback from inside numpy's SeedSequence before
        _report(runs, tmp_path, "--seed", "-1")
    assert e.value.code == 2 and "--seed must be >= 0, got -1" in capsys.readouterr().err


def test_an_analysis_game_without_runs_is_named(runs, tmp_path, capsys):
    code, out = _report(runs, tmp_path, "--analysis-games", f"{GAMES[0]},Breakuot")
    err = capsys.readouterr().err
    assert code == 0 and "warning: --analysis-games: no run of Breakuot (the runs' games: " in err
    assert "no run of Breakuot" in (out / "report.md").read_text()


@pytest.mark.parametrize("garbage", ["not,a,row", "2,3000,abc,750,1.5,3,1000.0,0.9,2.0", "<<<<<<< HEAD"])
def test_garbage_line_skips_that_run_and_reports_the_others(runs, tmp_path, capsys, garbage):
    bad = runs / "Breakout_s1_0.95_w3" / "iterations.csv"
    lines = bad.read_text().splitlines(keepends=True)
    lines[3] = garbage + "\n"  # line 4 of the file
    bad.write_text("".join(lines))
    code, out = _report(runs, tmp_path)
    assert code == 0
    err = capsys.readouterr().err
    assert f"skipped run {bad.parent}: {bad}, line 4:" in err
    rows = _final_rows(out)
    assert ("Breakout", 1) not in rows and len(rows) == len(GAMES) * len(SEEDS) - 1  # the others are reported
    (c,) = summary(out).values()
    assert "missing seeds: Breakout seed 1" in c["flags"]
    assert f"skipped run {bad.parent}" in (out / "report.md").read_text()


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity"])
def test_an_infinite_score_skips_the_run_never_stands_for_no_episode(runs, tmp_path, capsys, value):
    # nan (or empty) means "no episode ended"; an infinite score used to be read as that too, so the run's
    # previous score silently stood in for it (warned as "no episode finished in the last iteration")
    bad = runs / "Breakout_s1_0.95_w3" / "iterations.csv"
    lines = bad.read_text().splitlines(keepends=True)
    header = lines[0].strip().split(",")
    row = lines[-1].strip().split(",")
    row[header.index("score")] = value
    lines[-1] = ",".join(row) + "\n"
    bad.write_text("".join(lines))
    code, out = _report(runs, tmp_path)
    assert code == 0
    err = capsys.readouterr().err
    assert f"skipped run {bad.parent}: {bad}, line {len(lines)}: score is {value!r}, not a finite number" in err
    assert ("Breakout", 1) not in _final_rows(out)


def test_truncated_last_row_is_unfinished_never_a_score(runs, tmp_path, capsys):
    d = runs / "Pong_s0_0.95_w3"
    text = (d / "iterations.csv").read_text()
    cut = text[: text.rindex(",") + 3]  # the last row stops two characters into its final field: no newline
    (d / "iterations.csv").write_text(cut)
    code, out = _report(runs, tmp_path)
    assert code == 0
    assert f"{d / 'iterations.csv'}, line {ITERS + 1}: truncated row" in capsys.readouterr().err
    row = _final_rows(out)[("Pong", 0)]
    assert row["finished"] == "False" and float(row["frames"]) == 4 * STEPS * (ITERS - 1)
    (c,) = summary(out).values()
    assert c["final"] is None and any(f.startswith("unfinished: Pong seed 0") for f in c["flags"])
    # even when unfinished runs are let in, the score is the last complete row's, not the cut-off one
    code, out = _report(runs, tmp_path, "--allow-incomplete")
    (c,) = summary(out).values()
    expected = final_hns(0.95, GAMES.index("Pong"), 0) * (ITERS - 1) / ITERS
    assert np.array(c["scores"])[0, c["games"].index("Pong")] == pytest.approx(expected)


@pytest.mark.parametrize("field, value, message", [
    ("seed", "abc", 'seed is "abc" (str), expected int'),
    ("network.width", 2.5, "network.width is 2.5 (float), expected int"),
    ("pruning.final_sparsity", "0.95", 'pruning.final_sparsity is "0.95" (str), expected float'),
    ("replay_ratio", True, "replay_ratio is true (bool), expected float"),
    ("pruning.final_sparsity", 1.5, "pruning.final_sparsity is 1.5, not a fraction in [0, 1)"),  # "150% pruned"
    ("pruning.final_sparsity", -0.1, "pruning.final_sparsity is -0.1, not a fraction in [0, 1)"),
])
def test_config_with_a_wrong_type_is_named(runs, tmp_path, capsys, field, value, message):
    d = runs / "Enduro_s2_0.95_w3"
    edit_config(d, **{field: value})
    code, out = _report(runs, tmp_path)
    assert code == 0
    assert f"skipped run {d}: {d / 'config.json'}: {message}" in capsys.readouterr().err
    assert ("Enduro", 2) not in _final_rows(out)


@pytest.mark.parametrize("name", ["config.json", "summary.json"])
def test_json_syntax_error_names_the_file(runs, tmp_path, capsys, name):
    d = runs / "Pong_s1_0.95_w3"
    text = (d / name).read_text()
    (d / name).write_text(text[:-1] + ",}")  # a trailing comma
    code, out = _report(runs, tmp_path)
    assert code == 0
    err = capsys.readouterr().err
    assert f"skipped run {d}: {d / name}: not valid JSON (" in err and "at line 1, column" in err
    assert ("Pong", 1) not in _final_rows(out)


def test_nothing_readable_is_an_error(runs, tmp_path, capsys):
    for d in runs.iterdir():
        (d / "config.json").write_text("{")
    code, _ = _report(runs, tmp_path)
    assert code == 2
    assert f"error: none of the {len(GAMES) * len(SEEDS)} run directories could be read" in capsys.readouterr().err


def test_not_a_prunerl_run_is_skipped(runs, tmp_path, capsys):
    other = runs / "other_tool"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"lr": 0.1}))
    code, out = _report(runs, tmp_path)
    assert code == 0 and "has no env.game; is this a prunerl run directory?" in capsys.readouterr().err
    assert len(_final_rows(out)) == len(GAMES) * len(SEEDS)


def test_bad_metrics_line_is_skipped_with_a_warning(runs, tmp_path, capsys):
    path = runs / "Pong_s0_0.95_w3" / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"  # a sparsity row cut in half
    path.write_text("".join(lines))
    out = tmp_path / "out"
    assert report.main([str(runs), "--out", str(out), "--reps", "20"]) == 0
    assert (out / "sparsity_schedule.png").exists()
    assert f"{path}, line 3: not valid JSON; line skipped" in capsys.readouterr().err
