"""agents.report and what the trainer says about a run (summary.json flags), and which score counts."""

import csv
from itertools import product

import numpy as np
import pytest

from agents import report
from tests.agents.report_runs import GAMES, SEEDS, final_hns, summary, write_run

RESUMED = {"resumed": 1, "resumed_without_replay": True, "below_target_sparsity": False, "target_sparsity": 0.0}
BELOW = {"resumed_without_replay": False, "below_target_sparsity": True, "target_sparsity": 0.95,
         "scheduled_sparsity": 0.95, "sparsity/prunable": 0.288}
CLEAN = {"resumed_without_replay": False, "below_target_sparsity": False, "target_sparsity": 0.95}


def _runs(root, flagged: dict[tuple[float, str, int], dict], **kw):
    for sparsity, game, seed in product((0.0, 0.95), GAMES, SEEDS):
        write_run(root, game, seed, sparsity, summary_keys=flagged.get((sparsity, game, seed), CLEAN), **kw)
    return root


def _matrix(sparsity, bonus=0.0):
    return np.array([[final_hns(sparsity, g, s) + bonus for g in range(len(GAMES))] for s in SEEDS])


def test_flagged_runs_are_named_and_left_out_unless_allowed(tmp_path, capsys):
    root = _runs(tmp_path / "runs", {(0.0, "Pong", 1): RESUMED, (0.95, "Breakout", 0): BELOW})
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "50", "--no-figures"]) == 0
    err = capsys.readouterr().err
    dense, pruned = summary(out)["dense"], summary(out)["95% pruned"]
    assert "resumed without its replay: Pong seed 1" in dense["flags"]
    assert "below target sparsity: Breakout seed 0 (sparsity 0.288 < target 0.95)" in pruned["flags"]
    assert dense["final"] is None and pruned["final"] is None  # out of the IQM
    assert "dense: resumed without its replay: Pong seed 1 -> left out of the aggregates" in err
    assert f"{root / 'Breakout_s0_0.95_w3'}: below target sparsity, sparsity 0.288 < target 0.95 (summary.json)" in err
    md = (out / "report.md").read_text()
    assert "**incomplete**: resumed without its replay: Pong seed 1" in md
    pong_row = next(line for line in md.splitlines() if line.startswith("| Pong |"))
    assert "(n=2)" in pong_row and "(n=3)" in pong_row  # the flagged dense run is not in the per-game means
    with open(out / "final_scores.csv") as f:
        flags = {(r["sparsity"], r["game"], r["seed"]): r["flags"] for r in csv.DictReader(f)}
    assert flags[("0.0", "Pong", "1")] == "resumed without its replay" and flags[("0.0", "Pong", "0")] == ""

    # --allow-incomplete lets them in, marked partial; their scores count as logged
    out = tmp_path / "r2"
    assert report.main([str(root), "--out", str(out), "--reps", "50", "--no-figures", "--allow-incomplete"]) == 0
    for label, sparsity in (("dense", 0.0), ("95% pruned", 0.95)):
        c = summary(out)[label]
        assert not c["complete"] and c["final"] is not None
        np.testing.assert_allclose(c["scores"], _matrix(sparsity)[:, [GAMES.index(g) for g in c["games"]]])
    assert "partial (--allow-incomplete): resumed without its replay" in (out / "report.md").read_text()


def test_a_finished_run_whose_schedule_never_reached_its_target_is_left_out(tmp_path, capsys):
    short = {**CLEAN, "schedule_short_of_target": True, "scheduled_sparsity": 0.0, "sparsity/prunable": 0.0}
    root = _runs(tmp_path / "runs", {(0.95, "Pong", 0): short})
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "50", "--no-figures"]) == 0
    pruned = summary(out)["95% pruned"]
    assert "pruning schedule short of its target: Pong seed 0 (schedule ends at 0 < target 0.95)" in pruned["flags"]
    assert pruned["final"] is None and summary(out)["dense"]["final"] is not None
    assert "schedule ends at 0 < target 0.95 (summary.json)" in capsys.readouterr().err


def test_a_run_without_its_summary_is_left_out(tmp_path, capsys):
    """Killed (or out of disk) between its last iteration and summary.json: the trainer's verdicts are missing (it
    may have ended below its target sparsity), so it is not trusted even though its iterations reach the end."""
    root = _runs(tmp_path / "runs", {})
    (root / "Pong_s0_0.95_w3" / "summary.json").unlink()
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "50", "--no-figures"]) == 0
    pruned = summary(out)["95% pruned"]
    assert any(f.startswith("no summary.json: Pong seed 0") for f in pruned["flags"]), pruned["flags"]
    assert pruned["final"] is None and summary(out)["dense"]["final"] is not None
    assert f"{root / 'Pong_s0_0.95_w3'}: no summary.json" in capsys.readouterr().err


def test_runs_without_flags_or_with_false_flags_are_trusted(tmp_path):
    root = tmp_path / "runs"
    for sparsity, game, seed in product((0.0, 0.95), GAMES, SEEDS):  # an older trainer: no such keys at all
        write_run(root, game, seed, sparsity, summary_keys=CLEAN if seed == 0 else {})
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "50", "--no-figures"]) == 0
    assert all(c["complete"] and not c["flags"] for c in summary(out).values())


def test_score_eval_uses_the_evaluation_phase(tmp_path):
    root = _runs(tmp_path / "runs", {}, eval_columns=True, eval_bonus=0.5)
    for score, bonus in (("train", 0.0), ("eval", 0.5)):
        out = tmp_path / score
        assert report.main([str(root), "--out", str(out), "--reps", "50", "--no-figures", "--score", score]) == 0
        for label, sparsity in (("dense", 0.0), ("95% pruned", 0.95)):
            c = summary(out)[label]
            np.testing.assert_allclose(c["scores"], _matrix(sparsity, bonus)[:, [GAMES.index(g) for g in c["games"]]])
        assert f"last iteration's mean {'training' if score == 'train' else 'evaluation-phase'} return" in (
            out / "report.md").read_text()


@pytest.mark.parametrize("eval_columns", [False, True])  # no columns, or columns left empty (phase off)
def test_score_eval_without_evaluation_scores_is_an_error(tmp_path, capsys, eval_columns):
    root = _runs(tmp_path / "runs", {}, eval_columns=eval_columns)
    assert report.main([str(root), "--out", str(tmp_path / "r"), "--score", "eval", "--no-figures"]) == 2
    assert "error: --score eval: no run has an evaluation score" in capsys.readouterr().err


def test_score_eval_names_runs_without_evaluation_scores(tmp_path, capsys):
    root = _runs(tmp_path / "runs", {}, eval_columns=True, eval_bonus=0.5)
    plain = write_run(tmp_path / "runs" / "older", "Pong", 3, 0.95)
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--score", "eval", "--no-figures", "--reps", "50"]) == 0
    assert f"{plain}: no evaluation score" in capsys.readouterr().err
    assert "no score logged: Pong seed 3" in summary(out)["95% pruned"]["flags"]


def test_a_run_still_going_without_a_score_is_named_once(tmp_path):
    """A report made while a run was in its first iteration named it twice: unfinished, and no score logged."""
    root = _runs(tmp_path / "runs", {})
    write_run(tmp_path / "runs" / "going", "Pong", 3, 0.95, iters=1, finished=False, nan_last=True)
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--no-figures", "--reps", "50"]) == 0
    flags = summary(out)["95% pruned"]["flags"]
    assert "unfinished: Pong seed 3 (4k frames, no score yet)" in flags
    assert not any(f.startswith("no score logged") for f in flags), flags
