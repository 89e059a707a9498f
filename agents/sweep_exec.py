"""Running one run of a sweep, idempotently: the state of a run directory, the command that continues it, a lock
so that no run is ever trained by two processes, retries with the last error kept.

Per run, next to the run directories: SWEEP_DIR/_sweep/<game>__<preset>__s<seed>[-hash].{json,lock,log}
    .json   launches, failures, the last exit code and error, where it ran
    .lock   held (flock) by the process that trains the run and inherited by the training process itself, so a
            run whose sweep process was killed stays locked until its training process ends too
    .log    the output of every launch, appended
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agents.checkpoint import atomic_write_bytes, list_checkpoints
from agents.locks import EXIT_BUSY, RUN_LOCK, lock_is_held, run_lock
from agents.sweep_grid import Run

STATE_DIR = "_sweep"
STATES = ("done", "running", "partial", "failed", "pending")
# Exit codes of a sweep (and of one --index run): every run done, some failed, some not finished yet.
EXIT_DONE, EXIT_FAILED, EXIT_UNFINISHED = 0, 1, 3
USAGE_ERROR = 2  # agents.train's exit code for a bad command line or config


class SweepError(RuntimeError):
    """A sweep cannot go on; the message names the problem."""


# --- files of a run -------------------------------------------------------------------------------------------
def run_dir(sweep_dir: Path, run: Run) -> Path:
    return sweep_dir / run.run_id


def state_path(sweep_dir: Path, run: Run, suffix: str) -> Path:
    return sweep_dir / STATE_DIR / (run.run_id.replace("/", "__") + suffix)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def is_finished(directory: Path) -> bool:
    summary = read_json(directory / "summary.json")
    return bool(summary and summary.get("finished"))


def last_metrics(directory: Path) -> dict:
    """The last complete training row of metrics.jsonl (frames and frames/s of a run in progress: a row with
    `charts/FPS`, not an evaluation or loop-split row), or {}."""
    try:
        with open(directory / "metrics.jsonl", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    for line in reversed(lines):
        if b'"charts/FPS"' not in line:
            continue
        try:
            return json.loads(line)
        except json.JSONDecodeError:  # a row being written
            continue
    return {}


def checkpointed_frames(directory: Path) -> int:
    """Frames up to the run's last finished iteration (iterations.csv), or 0: where a run stands before its first
    metrics row (logged every `log_every` agent steps, 10k by default)."""
    try:
        with open(directory / "iterations.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return 0
    for row in reversed(rows):
        try:
            return int(float(row["frames"]))
        except (KeyError, TypeError, ValueError):  # a row being written
            continue
    return 0


@dataclass
class RunStatus:
    run: Run
    state: str  # one of STATES
    frames: int
    fps: float | None
    launches: int
    failures: int
    last_error: str | None


def inspect_run(sweep_dir: Path, run: Run) -> RunStatus:
    directory = run_dir(sweep_dir, run)
    st = read_json(state_path(sweep_dir, run, ".json")) or {}
    row = last_metrics(directory)
    # The speed since the trainer's previous row: the speed since the launch counts the fast warm-up for long.
    fps = row.get("charts/FPS_recent", row.get("charts/FPS"))  # (rows written before FPS_recent existed)
    if row.get("grad_steps") == 0:  # the warm-up fills the replay without learning, many times faster than the run
        fps = None
    frames = max(int(row.get("frames", 0)), checkpointed_frames(directory))
    if is_finished(directory):
        state, frames, fps = "done", run.total_frames, None
    elif lock_is_held(state_path(sweep_dir, run, ".lock")) or lock_is_held(directory / RUN_LOCK):
        state = "running"  # by a sweep, or by agents.train started by hand
    elif st.get("failures") and st.get("last_exit") not in (0, None):
        state = "failed"
    elif list_checkpoints(directory / "checkpoints") or (directory / "summary.json").exists():
        state = "partial"
    else:
        state, frames = "pending", 0
    return RunStatus(run, state, frames, fps if state == "running" else None, st.get("launches", 0),
                     st.get("failures", 0), st.get("last_error"))


# --- the command ----------------------------------------------------------------------------------------------
def train_command(sweep_dir: Path, run: Run, runtime: list[str]) -> list[str]:
    """The one command of a run, the same every time (by hand, from the sweep, from a Slurm array task):
    agents.train starts the run, continues it from its last checkpoint, or says it has finished."""
    directory = run_dir(sweep_dir, run)
    return [sys.executable, "-m", "agents.train", "--preset", run.preset, "--env.game", run.game, "--seed",
            str(run.seed), "--runs-dir", str(directory.parent), "--run-name", directory.name, *run.overrides,
            *runtime]


def child_env(cpus: int, gpu: str | None) -> dict:
    """The environment of a training process: its share of the cores, its GPU, the same `agents` as the sweep."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(cpus)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- executing a run ------------------------------------------------------------------------------------------
class Launcher:
    """Starts training processes and stops them all when the sweep is stopped (SIGTERM, Ctrl-C)."""

    def __init__(self):
        self.stopping = False
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def run(self, argv: list[str], env: dict, log, lock_fd: int) -> int:
        with self._lock:
            if self.stopping:
                return -signal.SIGTERM
            # The lock's descriptor goes to the child: the run stays locked while the child lives.
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    pass_fds=(lock_fd,))
            self._procs.add(proc)
        try:
            while True:  # (a blocking wait would never see a KeyboardInterrupt sent to this thread: ray.cancel's)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return proc.wait(timeout=1.0)
        except BaseException:  # interrupted while it trains (ray.cancel of a Ray task): stop it, never orphan it
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            proc.wait()
            raise
        finally:
            with self._lock:
                self._procs.discard(proc)

    def stop(self) -> None:
        with self._lock:
            self.stopping = True
            for proc in self._procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)


def _tail(path: Path, start: int, lines: int = 25) -> str:
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def execute_run(sweep_dir: Path, run: Run, *, runtime: list[str], env: dict, retries: int, launches: int,
                launcher: Launcher, wait_for_lock: bool = False, where: str = "") -> str:
    """Bring `run` as far as `launches` launches of its command go. Returns its outcome:
    'done', 'stopped' (exited cleanly unfinished: --max-minutes), 'failed' (the last launch failed),
    'busy' (another process trains it) or 'interrupted' (the sweep is stopping)."""
    directory = run_dir(sweep_dir, run)
    state_file, log_file = state_path(sweep_dir, run, ".json"), state_path(sweep_dir, run, ".log")
    with run_lock(state_path(sweep_dir, run, ".lock"), wait=wait_for_lock) as lock_fd:
        if lock_fd is None:
            return "busy"
        for _ in range(launches):
            if is_finished(directory):
                return "done"
            st = read_json(state_file) or {"launches": 0, "failures": 0}
            if st["failures"] > retries and st.get("last_exit") not in (0, None):
                return "failed"
            if launcher.stopping:
                return "interrupted"
            argv = train_command(sweep_dir, run, runtime)
            last_exit = st.get("last_exit")
            # No exit code until this launch ends with one: a launch killed with its sweep (SIGKILL, a lost node)
            # or stopped by it kept the one before, and after a failure the run looked "failed" while it resumed.
            st.update(launches=st["launches"] + 1, where=where or f"{socket.gethostname()} pid {os.getpid()}",
                      command=argv, started=_now(), ended=None, last_exit=None)
            write_json(state_file, st)
            with open(log_file, "ab") as log:
                log.write(f"\n=== launch {st['launches']} at {st['started']} on {st['where']}: "
                          f"{' '.join(argv)}\n".encode())
                log.flush()
                start = log.tell()
                code = launcher.run(argv, env, log, lock_fd)
            if code == EXIT_BUSY:  # trained by hand next to the sweep, say: not this run's failure (nor its exit)
                st.update(ended=_now(), last_exit=last_exit, busy=f"exit code {code}:\n{_tail(log_file, start)}")
                write_json(state_file, st)
                return "busy"
            st.update(ended=_now())
            if launcher.stopping and code != 0:  # killed by the sweep's own shutdown: not the run's failure (nor exit)
                write_json(state_file, st)
                # (a run that finished as the sweep stopped is killed on its way out: it is done all the same)
                return "done" if is_finished(directory) else "interrupted"
            st.update(last_exit=code)
            if code != 0:
                # Exit code 2 is a usage error (e.g. the directory holds another experiment): retrying cannot help.
                failures = retries + 1 if code == USAGE_ERROR else st["failures"] + 1
                st.update(failures=failures, last_error=f"exit code {code}:\n{_tail(log_file, start)}")
                write_json(state_file, st)
                continue
            write_json(state_file, st)
            return "done" if is_finished(directory) else "stopped"
        return "failed"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "unknown"
    minutes = int(max(seconds, 0) // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(max(seconds, 0) % 60):02d}s"
