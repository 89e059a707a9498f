"""Sweeps: one command runs a grid of training runs here or on a Ray cluster, survives being killed, feeds the report.

    python -m agents.sweep examples/sweeps/fig1.toml --dry-run        # the runs, their directories and states
    python -m agents.sweep examples/sweeps/fig1.toml                  # run them (local worker processes)
    python -m agents.sweep status examples/sweeps/fig1.toml           # done / running / partial / failed / pending
    python -m agents.sweep examples/sweeps/fig1.toml --backend ray --address auto
    python -m agents.sweep examples/sweeps/fig1.toml --index 17       # one run in this process (a Slurm array task)
    python -m agents.sweep --name quick --presets demo --games Pong Breakout --seeds 1..3 -- --total-steps 3000
    python -m agents.sweep status sweeps/quick                        # a sweep directory: the runs its sweep.json lists

Running a sweep again continues it: finished runs are skipped, partial ones resume from their last checkpoint,
failed ones are retried up to --retries times (their last error is kept in SWEEP_DIR/_sweep/). The runs live in
SWEEP_DIR = SWEEPS_DIR/NAME (see agents.sweep_grid for the spec and the directory names) and SWEEP_DIR/sweep.json
lists them for `python -m agents.report SWEEP_DIR`.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agents.sweep_exec import (
    EXIT_DONE,
    EXIT_FAILED,
    EXIT_UNFINISHED,
    STATES,
    Launcher,
    RunStatus,
    SweepError,
    child_env,
    execute_run,
    format_eta,
    inspect_run,
    read_json,
    state_path,
    write_json,
)
from agents.sweep_grid import Run, SpecError, Sweep, build_sweep, load_listing, load_spec


# --- resources ------------------------------------------------------------------------------------------------
@dataclass
class Resources:
    """How many runs at once, and what each gets: the one resource model of the local and the Ray backends."""

    parallel: int
    cpus_per_run: int
    gpus_per_run: float  # 0 on a machine without GPUs
    gpu_slots: list[str | None]  # local backend: CUDA_VISIBLE_DEVICES of each worker slot


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """IDs (as CUDA_VISIBLE_DEVICES spells them) of the GPUs this process may use."""
    import torch

    count = torch.cuda.device_count()
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return (listed if "CUDA_VISIBLE_DEVICES" in os.environ else [str(i) for i in range(count)])[:count]


def plan_resources(parallel: int | None, runs_per_gpu: int, cpus_per_run: int | None, gpus: list[str],
                   cores: int) -> Resources:
    """With GPUs: runs_per_gpu runs on each GPU, the cores shared among them. Without: one core per run unless
    --cpus-per-run says otherwise. Never more threads than cores unless asked to."""
    if runs_per_gpu < 1:
        raise SweepError(f"--runs-per-gpu must be >= 1, got {runs_per_gpu}")
    if parallel is not None and parallel < 1 or cpus_per_run is not None and cpus_per_run < 1:
        raise SweepError("--parallel and --cpus-per-run must be >= 1")
    if gpus:
        parallel = parallel or len(gpus) * runs_per_gpu
    else:
        parallel = parallel or max(1, cores // (cpus_per_run or 1))
    cpus = cpus_per_run or max(1, cores // parallel)
    if parallel * cpus > cores:
        print(f"warning: {parallel} runs x {cpus} threads on {cores} cores oversubscribes the CPU "
              "(each run slows down far more than its share)", file=sys.stderr)
    slots = [gpus[i % len(gpus)] if gpus else None for i in range(parallel)]
    return Resources(parallel, cpus, 1.0 / runs_per_gpu if gpus else 0.0, slots)


# --- progress -------------------------------------------------------------------------------------------------
ELSEWHERE_REFRESH_S = 5.0  # how often the progress re-reads the runs that other processes train


class Progress:
    """One line per running run and one bar for the sweep on a terminal; event lines and a periodic summary
    otherwise (logs of batch jobs)."""

    def __init__(self, sweep: Sweep, sweep_dir: Path, statuses: list[RunStatus], lines: int, interval: float):
        self.sweep, self.sweep_dir, self.interval = sweep, sweep_dir, interval
        self.status = {s.run.run_id: s for s in statuses}
        self.started_at: dict[str, float] = {}
        self.tty = sys.stderr.isatty()
        self._last_summary = self._last_elsewhere = time.monotonic()
        self._lock = threading.Lock()
        if self.tty:
            from tqdm.auto import tqdm

            total = sum(r.total_frames for r in sweep.runs)
            self.bar = tqdm(total=total, initial=self._frames_done(), unit="frame", unit_scale=True,
                            desc=f"sweep {sweep.name}", dynamic_ncols=True, position=0)
            self.lines = [tqdm(bar_format="{desc}", position=i + 1, leave=False) for i in range(lines)]

    def _frames_done(self) -> int:
        return sum(min(s.frames, s.run.total_frames) for s in self.status.values())

    def started(self, run: Run) -> None:
        with self._lock:
            self.started_at[run.run_id] = time.monotonic()
            self.status[run.run_id].state = "running"
            if not self.tty:
                self._event(f"[start] {run.run_id}")

    def finished(self, run: Run, outcome: str) -> None:
        with self._lock:
            t0 = self.started_at.pop(run.run_id, None)
            self.status[run.run_id] = inspect_run(self.sweep_dir, run)
            took = f" after {format_eta(time.monotonic() - t0)}" if t0 is not None else ""
            if self.tty:
                self.bar.write(f"[{outcome}] {run.run_id}{took}")
            else:
                self._event(f"[{outcome}] {run.run_id}{took}")

    @staticmethod
    def _event(line: str) -> None:
        """One line, written whole (print writes its text and its newline apart: two runs starting at once printed
        '[start] a[start] b' and an empty line). Called under the lock."""
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def watch(self, runs: list[Run]) -> None:
        """Backends that do not report starts (Ray): find the running ones among `runs` from the lock files."""
        for run in runs:
            st = inspect_run(self.sweep_dir, run)
            with self._lock:
                if st.state == "running" and run.run_id not in self.started_at:
                    self.started_at[run.run_id] = time.monotonic()
                elif st.state != "running":
                    self.started_at.pop(run.run_id, None)
                self.status[run.run_id] = st

    def tick(self) -> None:
        with self._lock:
            running = [self.status[i] for i in self.started_at]
            # Runs another process trains (a killed sweep's training processes, another sweep): re-inspected
            # too, else their first state, speed and frames would stay in the counts and the ETA until the end.
            elsewhere = [st for i, st in self.status.items() if st.state == "running" and i not in self.started_at]
        for st in running:
            fresh = inspect_run(self.sweep_dir, st.run)
            st.frames, st.fps = fresh.frames, fresh.fps
        if time.monotonic() - self._last_elsewhere >= ELSEWHERE_REFRESH_S:
            self._last_elsewhere = time.monotonic()
            for st in elsewhere:
                fresh = inspect_run(self.sweep_dir, st.run)
                with self._lock:
                    if st.run.run_id not in self.started_at:
                        self.status[st.run.run_id] = fresh
        mine = {st.run.run_id for st in running}
        running += [st for st in self.status.values() if st.state == "running" and st.run.run_id not in mine]
        line = summary_line(self.sweep, list(self.status.values()))
        if self.tty:
            self.bar.n = self._frames_done()
            self.bar.set_postfix_str(line.split(" | ")[0].split(": ", 1)[1], refresh=False)  # the counts
            self.bar.refresh()
            for i, bar in enumerate(self.lines):
                bar.set_description_str(run_line(running[i]) if i < len(running) else "")
        elif time.monotonic() - self._last_summary >= self.interval:
            self._last_summary = time.monotonic()
            with self._lock:
                self._event(line)

    def close(self) -> None:
        self.status = {run.run_id: inspect_run(self.sweep_dir, run) for run in self.sweep.runs
                       if run.run_id in self.status}
        line = summary_line(self.sweep, list(self.status.values()))
        if self.tty:
            self.bar.n = self._frames_done()
            self.bar.set_postfix_str(line.split(" | ")[0].split(": ", 1)[1], refresh=False)
            for bar in self.lines:
                bar.close()
            self.bar.close()
        print(line, flush=True)


def run_line(st: RunStatus) -> str:
    fps = f"{st.fps:,.0f} frames/s" if st.fps else "finishing" if st.frames >= st.run.total_frames else "starting"
    eta = format_eta(max(st.run.total_frames - st.frames, 0) / st.fps) if st.fps else "unknown"
    return f"{st.run.run_id:<44} {format_frames(st.frames):>7} / {format_frames(st.run.total_frames)} frames " \
           f"{fps:>16}  ETA {eta}"


def format_frames(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def summary_line(sweep: Sweep, statuses: list[RunStatus]) -> str:
    counts = {s: 0 for s in STATES}
    for st in statuses:
        counts[st.state] += 1
    total = sum(st.run.total_frames for st in statuses)
    done = sum(min(st.frames, st.run.total_frames) for st in statuses)
    fps = sum(st.fps or 0 for st in statuses if st.state == "running")
    remaining = sum(max(st.run.total_frames - st.frames, 0) for st in statuses if st.state != "failed")
    if not remaining:
        eta = "none (nothing left to run)"
    elif fps:
        eta = format_eta(remaining / fps)
    else:
        eta = "unknown (no speed logged yet)" if counts["running"] else "unknown (nothing running)"
    return (f"sweep {sweep.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(statuses)}"
            f" | frames {format_frames(done)} / {format_frames(total)} ({100 * done / max(total, 1):.0f}%)"
            f" | {fps:,.0f} frames/s | ETA {eta}")


def print_table(statuses: list[RunStatus], sweep_dir: Path, show_done: bool = True) -> None:
    rows = [st for st in statuses if show_done or st.state != "done"]
    if not rows:
        return
    width = max(len(st.run.run_id) for st in rows)
    print(f"{'run':<{width}}  {'state':<8} {'frames':>8} {'of':>8} {'frames/s':>9} {'launches':>8}  last error")
    for st in rows:
        fps = f"{st.fps:,.0f}" if st.fps else "-"
        error = (st.last_error or "").strip().splitlines()
        error = error[-1][:80] if error and st.state in ("failed", "partial", "pending") else ""
        print(f"{st.run.run_id:<{width}}  {st.state:<8} {format_frames(st.frames):>8} "
              f"{format_frames(st.run.total_frames):>8} {fps:>9} {st.launches:>8}  {error}")
    if any(st.last_error for st in rows):
        print(f"(full errors: {sweep_dir / '_sweep'}/<run>.json and .log)")


# --- backends -------------------------------------------------------------------------------------------------
def runtime_options(args) -> list[str]:
    """agents.train options every launch gets: they change how a run executes, never what it learns."""
    options = ["--no-progress"]
    if args.max_minutes is not None:
        options += ["--max-minutes", f"{args.max_minutes:g}"]
    return options


def run_local(sweep: Sweep, sweep_dir: Path, todo: list[Run], res: Resources, args, progress: Progress) -> dict:
    """A pool of `res.parallel` workers, each training one run at a time in a child process."""
    launcher = Launcher()
    slots = list(res.gpu_slots)
    slots_lock = threading.Lock()
    outcomes: dict[str, str] = {}
    runtime = runtime_options(args)

    def work(run: Run) -> None:
        with slots_lock:
            gpu = slots.pop()
        try:
            if launcher.stopping:
                outcomes[run.run_id] = "interrupted"
                return
            progress.started(run)
            try:
                outcome = execute_run(sweep_dir, run, runtime=runtime, env=child_env(res.cpus_per_run, gpu),
                                      retries=args.retries, launches=args.retries + 1, launcher=launcher)
            except Exception as e:  # a bug or a disk problem: keep going with the other runs, say what happened
                outcome = "failed"
                print(f"error in run {run.run_id}: {e!r}", file=sys.stderr)
            outcomes[run.run_id] = outcome
            progress.finished(run, outcome)
        finally:
            with slots_lock:
                slots.append(gpu)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    received = []

    def on_signal(signum, frame):
        received.append(signum)
        print(f"\nsweep: signal {signum}, stopping the runs (each continues from its last checkpoint next time)",
              file=sys.stderr, flush=True)
        launcher.stop()

    for s in previous:
        signal.signal(s, on_signal)
    try:
        with ThreadPoolExecutor(max_workers=res.parallel) as pool:
            futures = [pool.submit(work, run) for run in todo]
            while not all(f.done() for f in futures):
                progress.tick()
                time.sleep(0.5)
            for f in futures:
                f.result()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise SystemExit(128 + received[0])
    return outcomes


def exit_code(statuses: list[RunStatus]) -> int:
    states = {st.state for st in statuses}
    if states == {"done"}:
        return EXIT_DONE
    return EXIT_FAILED if "failed" in states else EXIT_UNFINISHED


# --- command line ---------------------------------------------------------------------------------------------
def build_parser(status: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agents.sweep" + (" status" if status else ""),
        description=("Show the state of every run of a sweep: done, running, partial, failed, pending, with frames,"
                     " frames/s and an ETA." if status else
                     "Run a grid of training runs (presets x games x seeds x variants, or an explicit list) with "
                     "deterministic run directories; running it again continues it. `python -m agents.sweep status "
                     "SPEC` shows its state."),
        epilog="Options after `--` are agents.train overrides for every run (axes given on the command line).")
    p.add_argument("spec", nargs="?", metavar="SPEC", help="a sweep spec (TOML), or a sweep directory (the runs its "
                   "sweep.json lists: a sweep started with the axes); or give the axes below")
    axes = p.add_argument_group("axes (instead of SPEC)")
    axes.add_argument("--name", help="sweep name: its directory is SWEEPS_DIR/NAME")
    axes.add_argument("--presets", nargs="+", metavar="P", help="presets or patterns like dqn_impala_w{1..5}_gmp95")
    axes.add_argument("--games", nargs="+", metavar="G", help="games or sets: paper15, atari57, atari100k26")
    axes.add_argument("--seeds", nargs="+", metavar="S", help="seeds: integers or ranges like 1..5")
    p.add_argument("--sweeps-dir", default="sweeps", help="parent of sweep directories (default: sweeps); on a "
                   "cluster, a path that every node sees")
    if status:
        p.add_argument("--all", action="store_true", help="list finished runs too")
        return p
    p.add_argument("--dry-run", action="store_true", help="print the runs with their directories and states; run "
                   "nothing")
    p.add_argument("--count", action="store_true", help="print the number of runs (for a Slurm --array) and exit")
    p.add_argument("--index", type=int, metavar="I", help="run only the I-th run (from 0, in --dry-run order) in "
                   "this process: one task of a Slurm array; one launch, exit 3 while the run is unfinished "
                   "(stopped by --max-minutes, or failed with retries left)")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="local worker processes (default) "
                   "or tasks on a Ray cluster (pip install 'prunerl[ray]')")
    p.add_argument("--address", default=None, help="Ray cluster: 'auto' (the cluster this machine belongs to) or "
                   "HOST:PORT (default: auto)")
    p.add_argument("--parallel", type=int, metavar="N", help="runs at once (local; default: GPUs x --runs-per-gpu, "
                   "or on a machine without GPUs cores / --cpus-per-run)")
    p.add_argument("--runs-per-gpu", type=int, default=1, metavar="R", help="runs sharing one GPU, to fill a large "
                   "GPU with small networks (default 1); each gets 1/R of a GPU on Ray")
    p.add_argument("--cpus-per-run", type=int, metavar="C", help="cores (OMP_NUM_THREADS) per run (default: the "
                   "cores divided among the parallel runs locally, 1 on Ray, all of this process's with --index)")
    p.add_argument("--retries", type=int, default=2, metavar="N", help="relaunch a failed run up to N times "
                   "(default 2); counted across invocations of the sweep")
    p.add_argument("--retry-failed", action="store_true", help="give runs that used up their retries N new ones")
    p.add_argument("--max-minutes", type=float, metavar="M", help="each launch stops after M minutes with a "
                   "checkpoint (fits a job's time limit; running the sweep again continues)")
    p.add_argument("--log-interval", type=float, default=60.0, metavar="S", help="seconds between summary lines "
                   "when the output is not a terminal (default 60)")
    return p


def parse(argv: list[str], status: bool) -> tuple[argparse.Namespace, Sweep, Path]:
    argv = list(argv)
    cli_overrides = []
    if "--" in argv:
        cut = argv.index("--")
        argv, cli_overrides = argv[:cut], argv[cut + 1:]
    p = build_parser(status)
    args = p.parse_args(argv)
    axes = {k: getattr(args, k) for k in ("name", "presets", "games", "seeds") if getattr(args, k) is not None}
    try:
        if args.spec is not None:
            if axes or cli_overrides:
                p.error("give either SPEC or the axes (--name, --presets, --games, --seeds, -- overrides), not both")
            sweep = load_listing(args.spec) if Path(args.spec).is_dir() else load_spec(args.spec)
        else:
            if not axes:
                p.error("give a SPEC file or the axes --name, --presets, --games and --seeds")
            spec = {**axes, "overrides": [" ".join(map(_quote, cli_overrides))]} if cli_overrides else axes
            sweep = build_sweep(spec, "command line")
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if not status and args.retries < 0:
        p.error("--retries must be >= 0")
    if not status and args.max_minutes is not None and not 0 < args.max_minutes < math.inf:
        p.error(f"--max-minutes must be > 0 and finite, got {args.max_minutes:g}")  # else every launch fails
    if not status and not 0 < args.log_interval < math.inf:
        p.error(f"--log-interval must be > 0 and finite, got {args.log_interval:g}")
    if not status and args.count:
        for flag, given in (("--index", args.index is not None), ("--dry-run", args.dry_run)):
            if given:  # else ignored: --count prints the sweep's size and exits
                p.error(f"--count prints the number of runs and exits; {flag} does nothing with it")
    if not status and args.backend != "ray" and args.address is not None:  # else ignored: the runs trained here
        p.error(f"--address {args.address} names a Ray cluster: add --backend ray (without it every run trains "
                "on this machine)")
    if not status and args.backend == "ray":
        for flag, value in (("--index", args.index), ("--parallel", args.parallel)):
            if value is not None:  # else ignored: --index ran its run here, Ray decides how many run at once
                p.error(f"{flag} is an option of the local backend, not of --backend ray")
    if args.spec is not None and Path(args.spec).is_dir():
        return args, sweep, Path(args.spec).resolve()
    sweep_dir = Path(args.sweeps_dir).resolve() / sweep.name
    for d in (sweep_dir, *sweep_dir.parents):  # (a file on the way was a NotADirectoryError traceback)
        if d.exists():
            if not d.is_dir():
                p.error(f"--sweeps-dir {args.sweeps_dir}: {d} is a file, not a directory")
            break
    return args, sweep, sweep_dir


def _quote(token: str) -> str:
    import shlex

    return shlex.quote(token)


def status_main(argv: list[str]) -> int:
    args, sweep, sweep_dir = parse(argv, status=True)
    statuses = [inspect_run(sweep_dir, r) for r in sweep.runs]
    print(f"sweep {sweep.name} in {sweep_dir} ({sweep.source})")
    print_table(statuses, sweep_dir, show_done=args.all)
    print(summary_line(sweep, statuses))
    return exit_code(statuses)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["status"]:
        return status_main(argv[1:])
    args, sweep, sweep_dir = parse(argv, status=False)
    if args.count:
        print(len(sweep.runs))
        return 0
    if args.index is not None and not 0 <= args.index < len(sweep.runs):
        print(f"error: --index {args.index} is outside the sweep's {len(sweep.runs)} runs (0 to "
              f"{len(sweep.runs) - 1})", file=sys.stderr)
        return 2
    runs = sweep.runs if args.index is None else [sweep.runs[args.index]]
    statuses = [inspect_run(sweep_dir, r) for r in runs]
    if args.dry_run:
        print(f"sweep {sweep.name}: {len(sweep.runs)} runs in {sweep_dir} ({sweep.source})")
        print_table(statuses, sweep_dir)
        print(summary_line(sweep, statuses))
        return 0
    if args.retry_failed:
        for st in statuses:
            if st.state == "failed":
                path = state_path(sweep_dir, st.run, ".json")
                write_json(path, {**read_json(path), "failures": 0})
                st.state = "partial"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(sweep_dir / "sweep.json", sweep.to_json())
    todo = [st.run for st in statuses
            if st.state in ("partial", "pending") or st.state == "failed" and st.failures <= args.retries]
    try:
        if args.index is not None:
            outcome = run_one(sweep_dir, runs[0], args) if todo else statuses[0].state
            print(f"{runs[0].run_id}: {outcome}")
        elif args.backend == "ray":
            from agents.sweep_ray import run_ray

            run_ray(sweep, sweep_dir, todo, statuses, args)
        else:
            res = plan_resources(args.parallel, args.runs_per_gpu, args.cpus_per_run, visible_gpus(), usable_cores())
            print(f"sweep {sweep.name}: {len(todo)} of {len(runs)} runs to do, {res.parallel} at once, "
                  f"{res.cpus_per_run} cores each" + (f", GPUs {sorted(set(res.gpu_slots))}" if res.gpus_per_run
                                                      else "") + f" -> {sweep_dir}", flush=True)
            elsewhere = sum(st.state == "running" for st in statuses)
            if elsewhere:
                print(f"note: {elsewhere} run(s) of this sweep are being trained by other processes (a killed sweep's "
                      "training processes, which outlive it, or another sweep): skipped here, and not counted in "
                      f"--parallel {res.parallel}", flush=True)
            progress = Progress(sweep, sweep_dir, statuses, lines=min(res.parallel, 16), interval=args.log_interval)
            try:
                run_local(sweep, sweep_dir, todo, res, args, progress)
            finally:
                progress.close()
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    final = [inspect_run(sweep_dir, r) for r in runs]
    failed = [st for st in final if st.state == "failed"]
    for st in failed:
        print(f"failed: {st.run.run_id} after {st.launches} launches; last error:\n{st.last_error}", file=sys.stderr)
    if args.index is not None and failed and failed[0].failures <= args.retries:
        print(f"{failed[0].run.run_id} has retries left: the next launch (a requeued task) retries it", file=sys.stderr)
        return EXIT_UNFINISHED
    return exit_code(final)


def run_one(sweep_dir: Path, run: Run, args) -> str:
    """One launch of one run in this process (a Slurm array task): the cores and GPUs of the job are the run's.
    One launch: a retry in the same job would get another --max-minutes, past the job's time limit, and be
    killed there without a requeue; a failure with retries left exits 3 instead, and the requeued task retries."""
    launcher = Launcher()
    signal.signal(signal.SIGTERM, lambda *_: launcher.stop())
    cpus = args.cpus_per_run or usable_cores()
    return execute_run(sweep_dir, run, runtime=runtime_options(args), env=child_env(cpus, None),
                       retries=args.retries, launches=1, launcher=launcher)


if __name__ == "__main__":
    sys.exit(main())
