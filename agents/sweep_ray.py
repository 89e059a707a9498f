"""The Ray backend of agents.sweep: each run is a Ray task; Ray places the tasks on the cluster's nodes and retries
those whose node or worker died. The run directories must be on a filesystem every node sees (the same path), and
prunerl must be importable on every node (the same checkout or installation).

A task trains its run in a child process with the same command as the local backend, under the run's lock: a task
retried while an orphaned training process of its run still lives waits for it instead of training twice.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from agents.sweep_exec import Launcher, SweepError, child_env, execute_run, inspect_run
from agents.sweep_grid import Run

STOP_TIMEOUT_S = 60  # how long a Ctrl-C'd sweep waits for its tasks' training processes to stop


class RunFailed(RuntimeError):
    """A launch of a run failed and the run has retries left: Ray retries the task."""


def train_task(sweep_dir: str, run: Run, runtime: list[str], retries: int, cpus: int) -> str:
    """One launch of `run` on whichever node Ray chose (its GPU share is in CUDA_VISIBLE_DEVICES already)."""
    import ray

    node = ray.get_runtime_context().get_node_id()[:12]
    outcome = execute_run(Path(sweep_dir), run, runtime=runtime, env=child_env(cpus, None), retries=retries,
                          launches=1, launcher=Launcher(), wait_for_lock=True,
                          where=f"{socket.gethostname()} pid {os.getpid()} ray node {node}")
    if outcome == "failed" and inspect_run(Path(sweep_dir), run).failures <= retries:
        raise RunFailed(f"{run.run_id} failed; retrying")
    return outcome


def run_ray(sweep, sweep_dir: Path, todo: list[Run], statuses, args) -> dict:
    try:
        import ray
    except ImportError:
        raise SweepError("--backend ray needs Ray: pip install 'prunerl[ray]'") from None
    from agents.sweep import Progress, runtime_options, summary_line

    if not todo:  # (done, failed for good, or trained by other processes: the counts say which)
        print(f"nothing to do here -> {sweep_dir}\n{summary_line(sweep, statuses)}")
        return {}
    try:
        ray.init(address=args.address or "auto", logging_level="WARNING", log_to_driver=False)
    except ConnectionError as e:  # e.g. --address auto with no cluster started on this machine
        address = args.address or "auto"
        raise SweepError(f"cannot reach a Ray cluster at --address {address!r}: {str(e).splitlines()[0]} "
                         "(start one with `ray start --head`, or give its address)") from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        cpus = args.cpus_per_run or 1
        if args.runs_per_gpu < 1 or cpus < 1:
            raise SweepError("--runs-per-gpu and --cpus-per-run must be >= 1")
        task = ray.remote(train_task).options(num_cpus=cpus, num_gpus=1 / args.runs_per_gpu if gpus else 0,
                                              max_retries=args.retries, retry_exceptions=[RunFailed])
        print(f"sweep {sweep.name}: {len(todo)} of {len(sweep.runs)} runs to do on Ray "
              f"({ray.cluster_resources().get('CPU', 0):g} CPUs, {gpus:g} GPUs; {cpus} CPUs"
              + (f", 1/{args.runs_per_gpu} GPU" if gpus else "") + f" per run) -> {sweep_dir}", flush=True)
        runtime = runtime_options(args)
        pending = {task.remote(str(sweep_dir), run, runtime, args.retries, cpus): run for run in todo}
        progress = Progress(sweep, sweep_dir, statuses, lines=16, interval=args.log_interval)
        outcomes, last_watch = {}, 0.0
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    run = pending.pop(ref)
                    try:
                        outcomes[run.run_id] = ray.get(ref)
                    except Exception as e:  # retries used up (RunFailed, or the node died too often)
                        outcomes[run.run_id] = "failed"
                        print(f"run {run.run_id}: {type(e).__name__}: {str(e).splitlines()[0]}", file=sys.stderr)
                    progress.finished(run, outcomes[run.run_id])
                if time.monotonic() - last_watch > 5:
                    progress.watch(list(pending.values()))
                    last_watch = time.monotonic()
                progress.tick()
        except KeyboardInterrupt:  # Ctrl-C: stop the sweep's tasks (each stops its training process) and say so
            print("\nsweep: interrupted, stopping its Ray tasks (each run continues from its last checkpoint next "
                  "time)", file=sys.stderr, flush=True)
            for ref in pending:
                ray.cancel(ref)
            if pending:
                ray.wait(list(pending), num_returns=len(pending), timeout=STOP_TIMEOUT_S)
            raise SystemExit(128 + signal.SIGINT) from None
        finally:
            progress.close()
        return outcomes
    finally:
        ray.shutdown()
