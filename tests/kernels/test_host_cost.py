"""Host cost per call of the two ops with the Triton launches stubbed out: under 30 us at DQN-Impala x3
(17 prunable tensors for the masks; 34 parameters, their moments and 17 masks for Adam). Before the launch
plans were cached it was ~140 us (masks) and ~370 us (Adam) on the same CPU: bench/results/host_cost_cpu.json.

The time is the median over many calls, the minimum over repeats (robust to other processes on the cores).
"""

import importlib.util
import pathlib

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "_bench_kernels", pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_kernels.py")
bench_kernels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_kernels)

TARGET_US = 30.0
# CI machines differ in speed and load: the test fails above 2.5x the target (the uncached calls cost 5-14x
# it; a loaded 2-core run slows the cached ones ~1.7x: masked Adam's 28 us to ~48), and bench/host_cost.py
# records the measured figure against the target itself.
CI_LIMIT_US = 2.5 * TARGET_US
# A busy moment on a shared machine can hold for all of one measurement (~1 s; a CI run once measured 48 us
# where 28 is usual): a cost over the limit is measured again, up to this many times in all. A regression to
# uncached calls stays over it every time.
ATTEMPTS = 3


def _least_host_cost_us(op: str, limit_us: float, **kwargs) -> float:
    """`host_cost_us` measured until it is under `limit_us`, at most ATTEMPTS times; the least measured."""
    least = float("inf")
    for _ in range(ATTEMPTS):
        least = min(least, bench_kernels.host_cost_us(op, "cpu", width=3, **kwargs))
        if least < limit_us:
            break
    return least


@pytest.mark.parametrize("op", ["topk", "adam"])
def test_host_cost_per_call_under_target(op, monkeypatch):
    monkeypatch.setenv("PRUNERL_KERNELS", "triton")  # the Triton path on the CPU (launches stubbed)
    us = _least_host_cost_us(op, CI_LIMIT_US, calls=100, repeats=9)
    assert us < CI_LIMIT_US, f"{op}: {us:.1f} us per call (target {TARGET_US:g} us)"


def test_new_gradient_tensors_cost_a_rebinding_not_a_new_plan(monkeypatch):
    """After zero_grad(set_to_none=True) every call has new gradients: only they are checked and tabled
    (125 us on an idle CPU here, against 910 us for a call whose tensors are all new, which validates and
    tables everything; a plan rebuilt for new gradients took 946). Against that new plan timed in the same
    test, since under CI's load the time alone varies ~2x (a bound of 240 us once failed at 248)."""
    monkeypatch.setenv("PRUNERL_KERNELS", "triton")
    new_grads = bench_kernels.host_cost_us("adam_new_grads", "cpu", width=3, calls=50, repeats=5)
    new_plan = bench_kernels.host_cost_us("adam_new_plan", "cpu", width=3, calls=20, repeats=5)
    assert new_grads < 0.6 * new_plan, f"new gradients {new_grads:.1f} us per call, a new plan {new_plan:.1f} us"


def test_stubbed_launches_launch_nothing(monkeypatch):
    monkeypatch.setenv("PRUNERL_KERNELS", "triton")
    import kernels

    w = [torch.randn(100)]
    out = [torch.ones(100, dtype=torch.bool)]
    with bench_kernels.stubbed_launches():
        kernels.topk_magnitude_masks(w, [3], out=out)
        assert bool(out[0].all())  # nothing ran
    kernels.topk_magnitude_masks(w, [3], out=out)  # the kernels are back
    assert int(out[0].sum()) == 3
