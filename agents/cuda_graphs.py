"""CUDA graphs for the learner step and the greedy actions (`--cuda-graphs`).

The trainer splits a gradient update into phases (replay sample, loss forward + backward, mask selection,
masked Adam, priority update), and the greedy actions are a phase of their own (`act`: the online network's
forward on a buffer the observations are copied into). Each is a function that reads and writes only
tensors at fixed addresses: parameters, gradients (zeroed in place, never set to None), Adam state with its
step count on the device, masks and the keep-count buffer, the replay's storage and device step counter, and
the previous phase's outputs. `PhaseGraphs` runs each phase eagerly `warmup` times on a side stream (cuDNN
autotuning, Triton compilation, the kernels' cached pointer tables), captures it once, and from then on
replays the graph: one launch instead of hundreds, and no Python on the hot path.

What stays outside the graphs, by design: host bookkeeping (step counters, the schedule's keep counts, which
are written into their device buffer before the mask graph replays), the target-network copy (in place), and
logging. Sampling and the IQN quantile draws use CUDA generators registered with the graph, so each replay
draws fresh numbers.

The learner's graphs are captured in a fixed order (sample, learner, optimizer, priorities on one step; the
mask phase at its own 4th call), so each captured phase reads the tensors the previous ones write; `act`
reads only the parameters and its observation buffer.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch


class PhaseGraphs:
    """`graphs(name, fn)` runs `fn()`: eagerly while disabled or warming up, then as a replayed CUDA graph.

    A phase's `fn` must be replayable: the same tensors every call, no host synchronisation, no Python state
    that changes between calls. Its return value is captured once and is the graph's static output, so a
    caller must consume it before the next replay of the same phase. With `strict=False` (the `auto`
    setting) a capture that fails turns graphs off for the rest of the run with a warning, or, for one of the
    `independent` phases (whose tensors no other phase reads, e.g. acting), only for that phase; with
    `strict=True` the error propagates.
    """

    def __init__(self, enabled: bool, *, warmup: int = 3, generators: Sequence[torch.Generator] = (),
                 strict: bool = False, independent: Sequence[str] = ()):
        if enabled and not torch.cuda.is_available():
            raise ValueError("CUDA graphs need a CUDA device")
        self.enabled, self.warmup, self.strict = enabled, warmup, strict
        self.independent, self.eager_phases = set(independent), set()
        self.generators = [g for g in generators if g.device.type == "cuda"]
        self.graphs: dict[str, tuple[torch.cuda.CUDAGraph, Any]] = {}
        self.calls: Counter[str] = Counter()
        self._side = torch.cuda.Stream() if enabled else None

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled or name in self.eager_phases:
            return fn()
        captured = self.graphs.get(name)
        if captured is not None:
            captured[0].replay()
            return captured[1]
        self.calls[name] += 1
        if self.calls[name] <= self.warmup:
            return self._eager_on_side_stream(fn)
        try:
            graph = torch.cuda.CUDAGraph()
            for generator in self.generators:
                graph.register_generator_state(generator)
            with torch.cuda.graph(graph):  # "global" error mode: nothing else touches CUDA meanwhile
                out = fn()
        except Exception as e:
            if self.strict:
                raise RuntimeError(f"capturing the phase {name!r} in a CUDA graph failed: {e} "
                                   "(train without graphs: --cuda-graphs off)") from e
            if name in self.independent:
                warnings.warn(f"capturing the phase {name!r} in a CUDA graph failed ({e}); it runs eagerly, the "
                              "other phases keep their graphs", RuntimeWarning, stacklevel=2)
                torch.cuda.synchronize()
                self.eager_phases.add(name)
            else:
                warnings.warn(f"capturing the phase {name!r} in a CUDA graph failed ({e}); continuing without "
                              "CUDA graphs", RuntimeWarning, stacklevel=2)
                self.disable()
            return fn()
        self.graphs[name] = (graph, out)
        graph.replay()  # capturing records the work without running it
        return out

    def _eager_on_side_stream(self, fn: Callable[[], Any]) -> Any:
        # Warm-up on a side stream, as PyTorch's whole-network capture recipe asks.
        current = torch.cuda.current_stream()
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side):
            out = fn()
        current.wait_stream(self._side)
        return out

    def disable(self) -> None:
        """Back to eager execution (the graphs are dropped; what they wrote stays valid)."""
        torch.cuda.synchronize()
        self.enabled, self.graphs = False, {}

    @property
    def captured(self) -> list[str]:
        return list(self.graphs)
