"""The Slurm array template, run as Slurm would run it (no Slurm needed): each array task trains its run with
the sweep's idempotent command, stops before the time limit and requeues itself until the run is finished."""

import json
import os
import subprocess
import sys
import time

import pytest

from agents.sweep_grid import load_spec
from tests.test_sweep import ROOT, check_consistent_runs, digest, sweep_env, tiny_spec

TEMPLATE = ROOT / "examples" / "slurm" / "sweep_array.sbatch"


def array_task(tmp_path, spec, index: int, **env) -> subprocess.CompletedProcess:
    """One job of array task `index`, with `scontrol` recording its arguments instead of talking to Slurm."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    scontrol = fake_bin / "scontrol"
    scontrol.write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path / "scontrol.calls"}\n')
    scontrol.chmod(0o755)
    env = {**sweep_env(), "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "SPEC": str(spec),
           "SWEEPS_DIR": str(tmp_path / "sweeps"), "PYTHON": sys.executable, "SLURM_ARRAY_JOB_ID": "42",
           "SLURM_ARRAY_TASK_ID": str(index), "SLURM_JOB_ID": "43", **env}
    # One core for the job, as Slurm's --cpus-per-task=1 would give it (the task's run gets the job's cores).
    one_core = min(os.sched_getaffinity(0))
    return subprocess.run(["bash", str(TEMPLATE)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: os.sched_setaffinity(0, {one_core}))


def requeues(tmp_path) -> list[str]:
    calls = tmp_path / "scontrol.calls"
    return calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.slow
def test_array_task_requeues_itself_until_its_run_is_finished(tmp_path):
    spec = tiny_spec(tmp_path / "tiny.toml", "tiny", seeds="1..2")
    first, second = [r.run_id for r in load_spec(spec).runs]
    sweep_dir = tmp_path / "sweeps" / "tiny"
    # Task 0's first job ends (--max-minutes) before its run does: a checkpoint, then a requeue.
    out = array_task(tmp_path, spec, 0, MAX_MINUTES="0.01")
    assert out.returncode == 0, out.stdout + out.stderr
    assert requeues(tmp_path) == ["requeue 42_0"], out.stdout + out.stderr
    summary = json.loads((sweep_dir / first / "summary.json").read_text())
    assert not summary["finished"] and summary["agent_steps"] < 600
    assert not (sweep_dir / second).exists(), "task 0 trained another run than its own"
    # The requeued job runs the same command and continues from the checkpoint to the end.
    out = array_task(tmp_path, spec, 0)
    assert out.returncode == 0 and f"{first}: done" in out.stdout, out.stdout + out.stderr
    assert f"resuming {sweep_dir / first} at agent step {summary['agent_steps']:,}" in (
        sweep_dir / "_sweep" / (first.replace("/", "__") + ".log")).read_text()
    assert requeues(tmp_path) == ["requeue 42_0"]
    # A finished run's task does nothing; task 1 finishes in one job (the job's time left minus the margin).
    before = digest(sweep_dir / first)
    out = array_task(tmp_path, spec, 0)
    assert out.returncode == 0 and f"{first}: done" in out.stdout and digest(sweep_dir / first) == before
    # An hour left (and 30 s of slack: the template counts whole minutes from its own clock reading, which may
    # fall a second or more after this one) minus the 10-minute margin.
    out = array_task(tmp_path, spec, 1, SLURM_JOB_END_TIME=str(int(time.time()) + 3630))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "--max-minutes 50" in (sweep_dir / "_sweep" / (second.replace("/", "__") + ".log")).read_text()
    assert requeues(tmp_path) == ["requeue 42_0"]
    check_consistent_runs(sweep_dir, [first, second])
    out = array_task(tmp_path, spec, 2)
    assert out.returncode == 2 and "outside the sweep's 2 runs" in out.stderr
