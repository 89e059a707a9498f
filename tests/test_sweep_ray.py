"""The Ray backend for real: a local Ray cluster (a head and one worker node, separate processes), a tiny sweep
through it, the worker node killed during a run; Ray retries the lost run on the head and every run completes."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agents.sweep_exec import state_path
from agents.sweep_grid import load_spec
from tests.test_sweep import ROOT, check_consistent_runs, latest_checkpoint_step, sweep_env, tiny_spec

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'prunerl[ray]'); the Ray sweep test is "
                                        "skipped")
RAY = str(Path(sys.executable).parent / "ray")
SMALL_STORE = "--object-store-memory=100000000"  # tasks pass only small objects; leave the memory to training


def ray_env() -> dict:
    """The sweep's environment, with Ray's token authentication off: a token in ~/.ray (left by any earlier Ray
    session of this user) turns it on for the test's cluster, whose clients then fail to connect."""
    return {**sweep_env(), "RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    """`ray start --block` in its own process group: killing the group kills the node and all it runs."""
    return subprocess.Popen([RAY, "start", "--block", "--num-gpus=0", "--disable-usage-stats", *args], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def process_tree(root: int) -> set[int]:
    """`root` and all its descendants (Ray workers run in process groups of their own, so a group is not enough)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def kill_node(proc: subprocess.Popen) -> None:
    """Kill a node as a lost machine dies: every process it started at once, training processes included."""
    for _ in range(2):  # a second pass for anything started meanwhile
        for pid in process_tree(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait()


@pytest.fixture
def ray_cluster(tmp_path):
    """(address, head, worker): a head with 1 CPU and a worker node with 1 CPU on this machine."""
    # Ray's unix sockets live under its temp dir, whose path must stay short.
    temp = tempfile.mkdtemp(prefix="ray")
    env = {**ray_env(), "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = start_node(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1", SMALL_STORE,
                       "--include-dashboard=false", f"--ray-client-server-port={free_port()}", f"--temp-dir={temp}"],
                      tmp_path / "head.log", env)
    worker = None
    try:
        _wait_for_nodes(address, 1, head, tmp_path / "head.log")
        worker = start_node([f"--address={address}", "--num-cpus=1", SMALL_STORE], tmp_path / "worker.log", env)
        _wait_for_nodes(address, 2, worker, tmp_path / "worker.log")
        yield address, head, worker
    finally:
        if worker is not None:
            kill_node(worker)
        kill_node(head)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(address: str, count: int, proc: subprocess.Popen, log: Path) -> None:
    script = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
              "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, f"ray start exited: {log.read_text()}"
        out = subprocess.run([sys.executable, "-c", script, address], capture_output=True, text=True,
                             env=ray_env())
        if out.returncode == 0 and out.stdout.strip().isdigit() and int(out.stdout.strip()) >= count:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster did not reach {count} nodes: {log.read_text()}")


def ray_worker_pid(sweep_dir: Path, run) -> int | None:
    """The pid of the Ray worker process that runs `run` now (from its sweep state)."""
    state = state_path(sweep_dir, run, ".json")
    if not state.exists():
        return None
    where = json.loads(state.read_text()).get("where", "")
    try:
        return int(where.split(" pid ")[1].split()[0])
    except (IndexError, ValueError):
        return None


@pytest.mark.slow
def test_ray_sweep_survives_a_killed_worker_node(tmp_path, ray_cluster):
    address, head, worker = ray_cluster
    spec = tiny_spec(tmp_path / "tiny.toml", "tiny", seeds="1..3")
    runs = load_spec(spec).runs
    sweep_dir = tmp_path / "sweeps" / "tiny"
    proc = subprocess.Popen([sys.executable, "-m", "agents.sweep", str(spec), "--sweeps-dir", str(tmp_path / "sweeps"),
                             "--backend", "ray", "--address", address, "--cpus-per-run", "1", "--retries", "2",
                             "--log-interval", "5"], cwd=ROOT, env=ray_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # Kill the worker node (raylet, Ray workers, the training process) once a run on it has a checkpoint.
    victim, deadline = None, time.time() + 600
    while victim is None and time.time() < deadline and proc.poll() is None:
        on_worker = process_tree(worker.pid)
        for run in runs:
            step = latest_checkpoint_step(sweep_dir / run.run_id)
            if ray_worker_pid(sweep_dir, run) in on_worker and 0 < step < 600:
                victim = run
                break
        time.sleep(0.05)
    assert victim is not None, "no run was caught on the worker node mid-way:\n" + (
        proc.communicate()[0] if proc.poll() is not None else "")
    kill_node(worker)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    check_consistent_runs(sweep_dir, [r.run_id for r in runs])
    state = json.loads(state_path(sweep_dir, victim, ".json").read_text())
    assert state["launches"] == 2 and state["failures"] == 0, state  # the node's loss is not the run's failure
    log = state_path(sweep_dir, victim, ".log").read_text()
    assert f"resuming {sweep_dir / victim.run_id} at agent step" in log, log
    assert "3 done, 0 running, 0 partial, 0 failed, 0 pending of 3" in out
