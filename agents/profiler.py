"""Where the time of a training run goes: wall time per component of the loop (`--profile`).

Components: env (stepping the games), act (the acting forward pass), replay_add, replay_sample, learner
(loss forward + backward), optimizer (masked Adam), mask_update, target_sync, logging, checkpoint. With
profiling on, each section synchronises the GPU at both ends so device time lands in the right component
(this costs some speed; leave it off for real runs). Off, a section is a shared no-op context.

Dense against pruned: `python -m agents.profiler RUN_A RUN_B ...` reads each run's profile.json and prints the
components in seconds per million frames side by side, each run's ratio to the first, and the per-layer
times with each layer's sparsity (markdown tables).

At the end of a profiled run, `torch.profiler` also records a few learner forward/backward passes (which change
no training state) and keeps the most expensive operators (conv / matmul forward and backward), and every
conv / linear layer of the online network is timed on its own (forward, backward) on the input it gets from
a replay batch, next to its measured weight sparsity. Masks are simulated on dense tensors, so a pruned
layer costs what its dense twin costs; the table shows where the learner's time goes. All of it is written
with the component table to run_dir/profile.json and printed as short tables.

How close to the hardware: the model's FLOPs (`model_flops`: the matmuls and convolutions of one learner step
and of one acting forward, counted by `torch.utils.flop_counter` on one eager call; a multiply-add is 2) over
the measured times give the TFLOP/s each achieved, per component and per layer, to set against the device's
matmul rate in the run's precision (dense FLOPs, as the run computes them: a 95%-sparse layer does all of them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

_OFF = contextlib.nullcontext()


class Profiler:
    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.sync = enabled and torch.device(device).type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.start = time.perf_counter()
        self.cpu_start = _cpu_seconds()
        self.sched_start = _thread_schedstats()

    def section(self, name: str, first_half: bool = False):
        """Time a block under `name`. `first_half`: the block is the first of two that together make one call
        (an env step's submit and its result): its time counts, its call does not, so ms/call is per call."""
        return self._timed(name, not first_half) if self.enabled else _OFF

    @contextlib.contextmanager
    def _timed(self, name: str, counts_a_call: bool):
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - t0
            self.calls[name] += counts_a_call

    def report(self, frames: int) -> dict:
        wall = time.perf_counter() - self.start
        measured = sum(self.seconds.values())
        components = {name: {"seconds": round(s, 4), "calls": self.calls[name],
                             "ms_per_call": round(1000 * s / max(self.calls[name], 1), 4),
                             "share": round(s / wall, 4) if wall > 0 else 0.0}
                      for name, s in sorted(self.seconds.items(), key=lambda kv: -kv[1])}
        components["other"] = {"seconds": round(wall - measured, 4), "calls": 0, "ms_per_call": 0.0,
                               "share": round((wall - measured) / wall, 4) if wall > 0 else 0.0}
        return {"wall_seconds": round(wall, 3), "frames": frames, "frames_per_second": round(frames / wall, 2),
                "synchronized": self.sync, "components": components, "host": self.host()}

    def host(self) -> dict:
        """torch's CPU threads, the CPUs, the cores this process and other processes kept busy on average since
        this profiler was made, i.e. over the launch, and `cpu_wait_share`: how long this process's threads waited
        for a CPU while ready to run, per second they ran (from the scheduler's /proc/self/task/*/schedstat; the
        threads alive at the end). None where the kernel does not say; measured whether profiling is on or not.
        See `cpus_oversubscribed`."""
        wall, end = time.perf_counter() - self.start, _cpu_seconds()
        own_seconds = end[1] - self.cpu_start[1]
        own = own_seconds / wall if wall > 0 else None
        other = None
        if self.cpu_start[0] is not None and end[0] is not None and wall > 0:
            other = max(0.0, end[0] - self.cpu_start[0] - own_seconds) / wall
        wait_share = None
        sched_end = _thread_schedstats()
        if self.sched_start is not None and sched_end is not None:
            ran = sum(r - self.sched_start.get(tid, (0, 0))[0] for tid, (r, _) in sched_end.items())
            waited = sum(w - self.sched_start.get(tid, (0, 0))[1] for tid, (_, w) in sched_end.items())
            wait_share = round(max(0, waited) / ran, 3) if ran > 0 else None
        return {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                "own_cores": None if own is None else round(own, 2),
                "other_processes_cores": None if other is None else round(other, 2), "cpu_wait_share": wait_share}


# Other processes' average use of the cores above this (in cores) may inflate a run's times, see below.
SHARED_CORES_WARNING = 0.25


def _cpu_seconds() -> tuple[float | None, float]:
    """(busy CPU seconds of the whole machine from /proc/stat, or None; this process's own, children included)."""
    own = time.process_time() + sum(os.times()[2:4])
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None, own
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK"), own


def _thread_schedstats() -> dict[int, tuple[int, int]] | None:
    """{thread id: (ns on a CPU, ns waiting for one while ready to run)} of this process's threads, or None where
    the kernel has no /proc/self/task/*/schedstat."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    stats = {}
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ran, waited = (int(x) for x in f.read().split()[:2])
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile (or no schedstat)
        stats[int(tid)] = (ran, waited)
    return stats or None


# A launch whose threads waited for a CPU more than this per second they ran had its times inflated by about as
# much (scheduler latency on an idle machine is far below it).
CPU_WAIT_WARNING = 0.1


def cpus_oversubscribed(host: dict | None) -> bool:
    """Whether other processes competed for the CPUs of a launch (`Profiler.host`): they kept more than
    SHARED_CORES_WARNING cores busy, and this launch's threads waited for a CPU more than CPU_WAIT_WARNING of the
    time they ran (where the kernel says; without it, the CPUs were over 90% busy with the launch's own use). Its
    times are then inflated, the more so for multi-threaded CPU kernels (an OpenMP loop waits for its slowest
    thread). Other work on other cores does not count: parallel runs on cores of their own (a sweep's) and other
    work on idle cores of a large machine."""
    if not isinstance(host, dict):
        return False
    other, own, cpus = (host.get(k) for k in ("other_processes_cores", "own_cores", "cpus"))
    if not all(isinstance(x, (int, float)) for x in (other, cpus)) or other <= SHARED_CORES_WARNING:
        return False
    wait_share = host.get("cpu_wait_share")
    if isinstance(wait_share, (int, float)):
        return wait_share > CPU_WAIT_WARNING
    return not isinstance(own, (int, float)) or own + other > 0.9 * cpus


def shared_cores_note(report: dict) -> str | None:
    """A warning when other processes competed for the CPUs during the profile, else None."""
    host = report.get("host")
    if not cpus_oversubscribed(host):
        return None
    waited = host.get("cpu_wait_share")
    waited = f" (its threads waited {waited:.2f} s for a CPU per second they ran)" if waited is not None else ""
    return (f"warning: other processes kept {host['other_processes_cores']:.2f} of the {host['cpus']} CPUs busy on "
            f"average during this profile, beside its own use{waited}: its times are inflated (profile on an idle "
            "machine to compare runs)")


def format_table(report: dict) -> str:
    lines = [f"{'component':<16}{'seconds':>10}{'share':>8}{'calls':>9}{'ms/call':>10}"]
    for name, c in report["components"].items():
        lines.append(f"{name:<16}{c['seconds']:>10.2f}{100 * c['share']:>7.1f}%{c['calls']:>9}"
                     f"{c['ms_per_call']:>10.3f}")
    lines.append(f"{report['frames']:,} frames in {report['wall_seconds']:.1f} s = "
                 f"{report['frames_per_second']:,.0f} frames/s")
    note = shared_cores_note(report)
    if note:
        lines.append(note)
    flops = report.get("model_flops")
    if flops:
        lines.append(f"model FLOPs (matmul + conv): learner {flops['learner_flops'] / 1e9:.3g} GFLOP per update"
                     f"{_rate(flops.get('learner_tflops'))}, acting {flops['act_flops'] / 1e9:.3g} GFLOP per forward"
                     f"{_rate(flops.get('act_tflops'))}; {flops['flops_per_frame'] / 1e9:.3g} GFLOP per frame, "
                     f"{flops['run_tflops']:.3g} TFLOP/s over the run")
    if report.get("learner_ops"):
        lines.append(f"\n{'learner operator (torch.profiler)':<44}{'total ms':>10}{'calls':>8}  (over "
                     f"{LEARNER_OPS_STEPS} extra learner steps; a total includes the operators it calls)")
        for op in report["learner_ops"]:
            lines.append(f"{op['name'][:43]:<44}{op['total_ms']:>10.2f}{op['calls']:>8}")
    if report.get("learner_layers"):
        lines.append(f"\n{'learner layer (alone, median)':<36}{'sparsity':>9}{'fwd ms':>9}{'bwd ms':>9}"
                     f"{'spread':>8}{'fwd TFLOP/s':>12}{'bwd TFLOP/s':>12}  dtype")
        for row in report["learner_layers"]:
            spread = f"{100 * row['spread']:.0f}%" if "spread" in row else "-"
            rates = [_tflops(row.get(f"{d}_flops"), row[f"{d}_ms"]) for d in ("forward", "backward")]
            lines.append(f"{row['layer'][:35]:<36}{row['weight_sparsity']:>9.3f}{row['forward_ms']:>9.3f}"
                         f"{row['backward_ms']:>9.3f}{spread:>8}{rates[0]:>12}{rates[1]:>12}  "
                         f"{row.get('compute_dtype', '')}")
    return "\n".join(lines)


def count_flops(fn) -> int:
    """Matmul and convolution FLOPs of one eager call of `fn` (torch.utils.flop_counter: 2 per multiply-add,
    forward and backward; elementwise work is not counted). Only shapes matter, so any input values do."""
    from torch.utils.flop_counter import FlopCounterMode

    with _eager(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def model_flops_report(flops: dict, components: dict, wall_seconds: float, forwards: int) -> dict:
    """`flops` (Trainer.model_flops) with the TFLOP/s achieved over the profiled launch's learner steps (its
    "learner" section's calls) and its `forwards` acting forwards: by the learner and the acting forward in their
    (synchronised) sections, and by the whole run. Counted from what ran: while epsilon is near 1 most acting calls
    run no forward, and during the warm-up there are no updates (`flops_per_frame`, the steady state's, would
    overstate both)."""
    updates = components.get("learner", {}).get("calls", 0)
    report = dict(flops)
    for name, key, done in (("learner", "learner_flops", updates), ("act", "act_flops", forwards)):
        seconds = components.get(name, {}).get("seconds", 0.0)
        report[f"{name}_tflops"] = _sig(flops[key] * done / seconds / 1e12) if seconds > 0 and done else None
    report.update(updates=updates, act_forwards=forwards)
    ran = flops["learner_flops"] * updates + flops["act_flops"] * forwards
    report["run_tflops"] = _sig(ran / max(wall_seconds, 1e-9) / 1e12)
    return report


def _sig(x: float) -> float:
    """`x` to 4 significant digits (a CPU run's rates are thousandths of a TFLOP/s)."""
    return float(f"{x:.4g}")


def _rate(tflops: float | None) -> str:
    return "" if tflops is None else f" ({tflops:.3g} TFLOP/s in its section)"


def _tflops(flops: int | None, ms: float) -> str:
    """'12.3' TFLOP/s of `flops` in `ms`, or '-' (a profile written before FLOPs were counted)."""
    return "-" if flops is None or ms <= 0 else f"{flops / (ms * 1e-3) / 1e12:.3g}"


LEARNER_OPS_STEPS = 10  # forward + backward passes recorded by torch.profiler after the run (no training state changes)


def profile_learner_ops(learn_step, steps: int = LEARNER_OPS_STEPS, top: int = 15) -> list[dict]:
    """Run `learn_step` under torch.profiler and return the `top` operators by total time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            learn_step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    device_attr = "device_time_total" if torch.cuda.is_available() else "cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, device_attr))
    return [{"name": e.key, "total_ms": round(getattr(e, device_attr) / 1000, 3), "calls": e.count}
            for e in events if not e.key.startswith("ProfilerStep")][:top]


def profile_learner_layers(net: torch.nn.Module, forward, obs: torch.Tensor, reps: int = 11) -> list[dict]:
    """Forward and backward time of each conv / linear layer of `net`, each timed alone on the input it gets
    in `forward(obs)` (the median of `reps` device-synchronised calls after one warm-up, and `spread`: the
    interquartile range of the calls over the median, the larger of forward's and backward's, so that a table
    says how far to trust a difference), with its weight sparsity and the dtype it computes in (call it under the run's
    autocast to time the run's precision)."""
    layers = {name: m for name, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(name: str):
        def hook(module, args, output) -> None:  # returns None: the output is left as it is
            inputs.setdefault(name, args[0].detach())
        return hook

    hooks = [m.register_forward_hook(keep_input(name)) for name, m in layers.items()]
    try:
        with torch.no_grad(), _eager():
            forward(obs)
    finally:
        for hook in hooks:
            hook.remove()
    rows = []
    for name, m in layers.items():
        if name not in inputs:
            continue
        (forward_ms, forward_spread, forward_flops), (backward_ms, backward_spread, backward_flops), dtype = \
            _time_layer(m, inputs[name], reps)
        rows.append({"layer": name, "type": type(m).__name__, "input_shape": list(inputs[name].shape),
                     "compute_dtype": str(dtype).removeprefix("torch."),
                     "params": sum(p.numel() for p in m.parameters()),
                     "weight_sparsity": round(float((m.weight == 0).float().mean()), 4),
                     "forward_ms": round(forward_ms, 4), "backward_ms": round(backward_ms, 4),
                     "spread": round(max(forward_spread, backward_spread), 3),
                     "forward_flops": forward_flops, "backward_flops": backward_flops})
    return rows


def _time_layer(layer: torch.nn.Module, x: torch.Tensor, reps: int) -> tuple[tuple, tuple, torch.dtype]:
    """((forward ms, spread, FLOPs), (backward ms, spread, FLOPs), the dtype the layer computes in: its output's,
    under the caller's autocast). The backward takes the input's gradient too. FLOPs are None where they could
    not be counted."""
    x = x.clone().requires_grad_(True)
    wrt = [x, *layer.parameters()]
    out = layer(x)
    grad = torch.ones_like(out)
    timed = []
    for fn in (lambda: layer(x), lambda: torch.autograd.grad(out, wrt, grad, retain_graph=True)):
        try:
            flops = count_flops(fn)
        except Exception:  # noqa: BLE001 (the table keeps its times; its TFLOP/s show '-')
            flops = None
        timed.append((*_median_ms(fn, reps), flops))
    return timed[0], timed[1], out.dtype


def _eager():
    """Hooks need the modules' own calls: run a torch.compile'd network eagerly for this one pass."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def _median_ms(fn, reps: int) -> tuple[float, float]:
    """(median ms of `reps` synchronised calls after a warm-up, interquartile range / median)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - start))
    if len(times) < 2:  # (quartiles need two)
        return times[0], 0.0
    q1, median, q3 = statistics.quantiles(times, n=4)
    return median, (q3 - q1) / max(median, 1e-9)


# ---------------------------------------------------------------------------------------------------------
# Comparing runs: python -m agents.profiler RUN_A RUN_B ...
# ---------------------------------------------------------------------------------------------------------
def load_report(path: Path) -> dict:
    path = Path(path)
    file = path / "profile.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no profile at {file} (train with --profile to write one)")
    try:
        report = json.loads(file.read_text())
        report["components"], report["frames"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{file} is not a profile.json written by --profile ({e})") from e
    return report


def _learner_ms(report: dict) -> float:
    return report["components"].get("learner", {}).get("ms_per_call", 0.0)


def compare_reports(reports: dict[str, dict]) -> str:
    """Markdown tables: seconds per million frames of every component per run (ratio to the first run in
    brackets), the model TFLOP/s of each run and of its learner step, then forward + backward ms of every
    learner layer with its sparsity."""
    names = list(reports)
    per_mframe = {n: {c: v["seconds"] * 1e6 / max(r["frames"], 1) for c, v in r["components"].items()}
                  for n, r in reports.items()}
    base = per_mframe[names[0]]
    order = sorted(set().union(*per_mframe.values()), key=lambda c: -base.get(c, 0.0))

    def cells(values: list[float | None]) -> str:
        """The first run's value, then the others with their ratio to it."""
        ref = values[0]
        out = ["-" if v is None else f"{v:.1f}" + (f" ({v / ref:.2f}x)" if i and ref else "")
               for i, v in enumerate(values)]
        return " | ".join(out)

    lines = ["| component (s per 1M frames) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for comp in order:
        lines.append(f"| {comp} | " + cells([per_mframe[n].get(comp) for n in names]) + " |")
    totals = [1e6 / max(reports[n]["frames_per_second"], 1e-9) for n in names]
    lines.append("| **total** | " + cells(totals) + " |")
    lines.append("| frames/s | " + " | ".join(f"{reports[n]['frames_per_second']:,.0f}" for n in names) + " |")
    flops = [reports[n].get("model_flops") or {} for n in names]
    if any(flops):  # (profiles written before FLOPs were counted have none)
        lines.append("| model TFLOP/s: run, learner | " + " | ".join(
            "-" if not f else f"{f['run_tflops']:.3g}, {_tflops(f['learner_flops'], _learner_ms(r))}"
            for f, r in zip(flops, (reports[n] for n in names))) + " |")
    lines.append("| total sparsity | " + " | ".join(f"{reports[n].get('sparsity', 0.0):.3f}" for n in names) + " |")
    lines.append("| device, precision | " + " | ".join(f"{reports[n].get('device', '?')}, "
                                                    f"{reports[n].get('precision', '?')}" for n in names) + " |")
    hosts = [reports[n].get("host") or {} for n in names]
    if any(hosts):  # (profiles written before the host was recorded have none)
        lines.append("| CPU threads / CPUs, other processes' cores | " + " | ".join(
            "-" if not h else f"{h['torch_threads']} / {h['cpus']}, " + (
                "?" if h["other_processes_cores"] is None else f"{h['other_processes_cores']:.2f}") for h in hosts)
            + " |")
    notes = {n: shared_cores_note(reports[n]) for n in names}
    lines += [f"\n{n}: {note}" for n, note in notes.items() if note]
    if len({(h.get("torch_threads"), h.get("cpus")) for h in hosts if h}) > 1:
        lines.append("\nwarning: these runs were profiled with different CPU threads or CPUs: their CPU times do "
                     "not compare")

    layers = {n: {row["layer"]: row for row in r.get("learner_layers", [])} for n, r in reports.items()}
    layer_names = list(dict.fromkeys(name for n in names for name in layers[n]))
    if layer_names:
        lines += ["", "| layer (fwd + bwd ms, ± half its spread, sparsity) | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for layer in layer_names:
            rows = [layers[n].get(layer) for n in names]
            texts = ["-" if r is None else f"{r['forward_ms'] + r['backward_ms']:.3f}"
                     + (f" ±{50 * r['spread']:.0f}%" if "spread" in r else "") + f" ({r['weight_sparsity']:.2f})"
                     for r in rows]
            lines.append(f"| {layer} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.profiler",
                                     description="Compare the --profile results of runs (e.g. dense against "
                                                 "pruned): components per million frames and per-layer times.")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (or profile.json files); the first "
                                                           "is the baseline of the ratios")
    args = parser.parse_args(argv)
    try:
        reports = {}
        for path in args.runs:
            name = path.name if path.is_dir() else path.parent.name
            reports[name if name not in reports else str(path)] = load_report(path)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(compare_reports(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
