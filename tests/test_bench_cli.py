"""bench scripts on bad options: a usage error (exit 2) and no result file, never a traceback or a
JSON of a run that did not happen as asked."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, message", [
    (["--max-minutes", "-1"], "max_minutes must be > 0, got -1"),
    (["--total-steps", "-5"], "total_steps and iteration_steps must be >= 1"),
    (["--game", "Pongg"], "Unknown Atari game 'Pongg'"),
    (["--preset", "nope"], "unknown preset 'nope'"),
])
def test_bad_options_are_usage_errors_and_write_nothing(tmp_path, argv, message):
    out = tmp_path / "result.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_demo_speed.py"), *argv, "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--iteration-steps", "-5"], "total_steps and iteration_steps must be >= 1"),
    (["--iterations", "0"], "--iterations must be >= 1, got 0"),
    (["--replay-capacity", "-1"], "--replay-capacity must be >= 1, got -1"),
    (["--iterations", "2", "--replay-capacity", "4000", "--iteration-steps", "1000"], "give --iterations 5 or more"),
])
def test_checkpoint_cost_bad_options_are_usage_errors(tmp_path, argv, message):
    """Each was a traceback (a ValueError from get_preset, or 'no checkpoint in ...' after filling nothing)."""
    out = tmp_path / "result.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "checkpoint_cost.py"), "--preset", "demo", *argv,
                          "--dir", str(tmp_path), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not out.exists()
