"""bench/cpu_demo_speed.py on bad options: a usage error (exit 2) and no result file, never a traceback or a
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
