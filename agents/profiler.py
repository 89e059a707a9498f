"""Where the time of a training run goes: wall time per component of the loop (`--profile`).

Components: env (stepping the games), act (the acting forward pass), replay_add, replay_sample, learner
(loss forward + backward), optimizer (masked Adam), mask_update, target_sync, logging, checkpoint. With
profiling on, each section synchronises the GPU at both ends so device time lands in the right component
(this costs some speed; leave it off for real runs). Off, a section is a shared no-op context.

At the end of a profiled run, `torch.profiler` also records a few learner forward/backward passes (which change
no training state) and keeps the most expensive operators (conv / matmul forward and backward), written with
the component table to run_dir/profile.json and printed as a short table.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

_OFF = contextlib.nullcontext()


class Profiler:
    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.sync = enabled and torch.device(device).type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.start = time.perf_counter()

    def section(self, name: str):
        return self._timed(name) if self.enabled else _OFF

    @contextlib.contextmanager
    def _timed(self, name: str):
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - t0
            self.calls[name] += 1

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
                "synchronized": self.sync, "components": components}


def format_table(report: dict) -> str:
    lines = [f"{'component':<16}{'seconds':>10}{'share':>8}{'calls':>9}{'ms/call':>10}"]
    for name, c in report["components"].items():
        lines.append(f"{name:<16}{c['seconds']:>10.2f}{100 * c['share']:>7.1f}%{c['calls']:>9}"
                     f"{c['ms_per_call']:>10.3f}")
    lines.append(f"{report['frames']:,} frames in {report['wall_seconds']:.1f} s = "
                 f"{report['frames_per_second']:,.0f} frames/s")
    if report.get("learner_ops"):
        lines.append(f"\n{'learner operator (torch.profiler)':<44}{'total ms':>10}{'calls':>8}")
        for op in report["learner_ops"]:
            lines.append(f"{op['name'][:43]:<44}{op['total_ms']:>10.2f}{op['calls']:>8}")
    return "\n".join(lines)


def profile_learner_ops(learn_step, steps: int = 10, top: int = 15) -> list[dict]:
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
