"""bench/model_flops.py: the committed e2e rows set against the FLOP counts (the counting itself is
Trainer.model_flops, tested in tests/agents/test_profiler.py)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("model_flops", ROOT / "bench" / "model_flops.py")
model_flops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model_flops)

COUNTS = {"dqn_impala_w3": {"learner_flops": 117e9, "act_flops": 7.4e9, "batch_size": 32, "num_envs": 8,
                            "replay_ratio": 0.25, "flops_per_frame": 7.55e9}}


def _proof(folder: Path, rows: list[dict], env: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "e2e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "environment.json").write_text(json.dumps(env))


def test_achieved_tflops_are_frames_per_second_times_flops_per_frame(tmp_path):
    row = {"case": "dqn_impala_w3", "provider": "gmp95_after", "num_envs": 8, "replay_ratio": 0.25,
           "device": "NVIDIA H200", "git_sha": "abc"}
    _proof(tmp_path / "h200_abc", [{**row, "precision": "fp32", "frames_per_second": 2000.0},
                                   {**row, "precision": "nhwc_bf16", "frames_per_second": 4000.0},
                                   {**row, "case": "dqn_nature_w1", "frames_per_second": 9.0},  # not counted: skipped
                                   {**row, "precision": "tf32", "num_envs": 16, "frames_per_second": 3000.0},
                                   {**row, "precision": "bf16", "frames_per_second": 3000.0, "model_tflops": 99.0}],
           {"bf16_tflops": 600.0})
    rows, notes = model_flops.achieved(tmp_path, COUNTS)
    assert [(r["precision"], r["model_tflops"]) for r in rows] == [("fp32", 15.1), ("nhwc_bf16", 30.2),
                                                                   ("bf16", 22.65)]
    assert [r["share_of_matmul"] for r in rows] == [None, pytest.approx(30.2 / 600, abs=1e-4),
                                                    pytest.approx(22.65 / 600, abs=1e-4)]
    # A row of another configuration is left out, and one whose recorded rate disagrees with the count is named.
    assert len(notes) == 2 and "num_envs 16" in notes[0] and "recorded 99 TFLOP/s" in notes[1]
    text = model_flops.render(COUNTS, rows, notes, {"git_sha": "abc", "date": "2026-12-07", "torch": "x"})
    assert "| dqn_impala_w3 | 32 | 8 | 0.25 | 117.00 | 7.400 | 7.550 | 11,000 | 83.0 |" in text
    assert "| h200_abc | dqn_impala_w3 | gmp95_after | nhwc_bf16 | 4,000 | 30.20 | 600.0 | 5.0% |" in text


def test_results_that_are_not_a_folder_are_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        model_flops.main(["--results", str(tmp_path / "missing")])
    assert exit_.value.code == 2 and "is not a folder" in capsys.readouterr().err


def test_the_paper_agents_are_set_against_dqn_at_their_width():
    presets = {name: {**COUNTS["dqn_impala_w3"], "flops_per_frame": fpf} for name, fpf in
               (("dqn_impala_w3_gmp95", 7.5e9), ("iqn_impala_w3_gmp95", 30e9), ("rainbow_impala_w5_gmp95", 1e9))}
    text = model_flops.render(COUNTS, [], [], {"git_sha": "abc", "date": "2026-12-07", "torch": "x"}, presets)
    assert "| iqn_impala_w3_gmp95 | 32 | 8 | 0.25 | 117.00 | 30.000 | 4.00 |" in text
    assert "| rainbow_impala_w5_gmp95 | 32 | 8 | 0.25 | 117.00 | 1.000 | - |" in text  # no DQN at that width
