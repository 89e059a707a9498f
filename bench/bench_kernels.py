"""Benchmarks of the two kernels against what a user would write instead (GPU only; see bench/README.md).

Mask selection: the prunable tensors (ndim > 1) of DQN-Impala at widths 1, 3, 5 and a ~50M-parameter
synthetic set, at sparsity 0.5 / 0.95 / 0.99 (keep count per tensor = max(1, round(n (1 - s)))).
Providers: `triton` (kernels.topk_mask, warm: repeated calls start from the previous call's histogram, as a
GMP run's mask updates do), `triton_cold` (the same with the warm start off: every call is a first call),
`topk_loop` (per-layer torch.topk + scatter), `sort` (the reference: per-layer stable argsort, i.e. what
JaxPruner does), `kthvalue` (per-layer threshold, not exact under ties), `prune_l1`
(torch.nn.utils.prune.L1Unstructured.compute_mask per layer).

Masked Adam: every parameter of DQN-Impala at widths 1, 3, 5 (biases unmasked) and one flat 50M tensor,
at sparsity 0 / 0.95 / 0.99. Providers: `triton_<mode>` for each moments mode, `_pz` variants with
pruned_are_zero (pruned weights are already 0, so the weights of 8-element sectors with nothing kept are
neither read nor written), `torch_fused_mask` (Adam(fused=True) then p *= mask), `torch_foreach_mask`
(Adam(foreach=True) then p *= mask), `torch_fused_nomask` (Adam(fused=True) alone: the no-pruning floor).

Timing: every provider eagerly (triton.testing.do_bench: CUDA events, L2 flushed before every rep; median
and 20/80 percentiles) and captured in a CUDA graph (do_bench over graph replays), plus an L2-hot figure
(back-to-back eager reps). Every result stores the bytes the op must move (`op_bytes`), the bytes our
kernels' design moves (`model_bytes`, Triton providers), the launches they issue, GB/s and the fraction of
the copy bandwidth measured in the same run. `test_host_cost` records the host time per call of both ops
with the kernel launches stubbed out (what tests/kernels/test_host_cost.py checks on the CPU).

`PRUNERL_BENCH_SUBSET=proof` runs only what the issue's targets need (Impala w3 and the 50M sets, at the
target sparsities, the baselines the targets compare with): about 90 s on an H100.

`PRUNERL_BENCH_SUBSET=rehearsal` is the CPU rehearsal of that subset (the kernels step of `bench/gpu_proof.py
--dry-run`; bench/conftest.py runs it without CUDA, the Triton kernels interpreted): the proof's cases, plus every
other provider once, on a few small tensors of odd sizes under the proof's case names (the summary's targets
read cases by name), through the same code with a few calls each. Without CUDA, the CUDA-only timing has CPU
stand-ins (a wall-clock `do_bench` and events, no CUDA graph: `graph_error` says so, no device delay): every
result field is there, but no time it holds is a speed of anything. (With CUDA the rehearsal subset runs the GPU
code on its small stand-ins; the other subsets run as they always did, on the GPU only.)
"""

import contextlib
import os
import statistics
import time

import pytest
import torch

from agents.networks import ImpalaResNet
from agents.pruning import keep_count

# --- problem definitions (plain Python: also used by the CPU tests of this file's helpers) -------------------

WIDTHS = (1, 3, 5)
MASK_SPARSITIES = (0.5, 0.95, 0.99)
ADAM_SPARSITIES = (0.0, 0.95, 0.99)
MOMENTS_MODES = ("faithful", "reset", "frozen")
SUBSET = os.environ.get("PRUNERL_BENCH_SUBSET", "all").strip().lower() or "all"
if SUBSET not in ("all", "proof", "rehearsal"):
    raise ValueError(f"PRUNERL_BENCH_SUBSET={SUBSET!r}; expected 'all', 'proof' or 'rehearsal'")
REHEARSAL = SUBSET == "rehearsal"
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # where every problem lives (the CPU only in the rehearsal: conftest.py)


def impala_param_shapes(width: int, n_actions: int = 18) -> list[tuple[int, ...]]:
    """All parameter shapes of the project's DQN Impala network (conv-only width scaling, dense 512)."""
    return [tuple(p.shape) for p in ImpalaResNet(n_actions, width).parameters()]


# ~50M parameters in 8 matrices of very different sizes (25M down to 0.2M).
SYNTHETIC_50M = [(5000, 5000), (5000, 2500), (2500, 2500), (2500, 1250), (1250, 1250), (1250, 625), (625, 625),
                 (625, 312)]
MASK_CASES = {**{f"impala_w{w}": [s for s in impala_param_shapes(w) if len(s) > 1] for w in WIDTHS},
              "synthetic_50M": SYNTHETIC_50M}
ADAM_CASES = {**{f"impala_w{w}": impala_param_shapes(w) for w in WIDTHS}, "flat_50M": [(50_000_000,)]}
# The rehearsal's stand-ins for the proof's cases: the interpreter runs a few small tensors in seconds; odd sizes,
# a keep count of 1 at 95% (3 x 5), biases next to their weights as in the network.
REHEARSAL_MASK_CASES = {"impala_w3": [(8, 3, 3, 3), (19, 13), (3, 5)], "synthetic_50M": [(37, 29), (13, 11)]}
REHEARSAL_ADAM_CASES = {"impala_w3": [(8, 3, 3, 3), (8,), (19, 13), (19,), (3, 5), (3,)], "flat_50M": [(1001,)]}
MASK_PROVIDERS = ["triton", "triton_cold", "topk_loop", "sort", "kthvalue", "prune_l1"]
ADAM_PROVIDERS = ([f"triton_{m}" for m in MOMENTS_MODES] + ["triton_faithful_pz", "triton_frozen_pz",
                                                            "torch_fused_mask", "torch_foreach_mask",
                                                            "torch_fused_nomask"])


def mask_params(subset: str = SUBSET) -> list[tuple[str, float, str]]:
    """(case, sparsity, provider) of every mask-selection benchmark in `subset`."""
    if subset == "proof":  # the targets: 50M at 95% vs one read, topk loop and sort; w3 at 95% in a graph
        return [(case, 0.95, p) for case in ("impala_w3", "synthetic_50M")
                for p in ("triton", "triton_cold", "topk_loop", "sort")]
    if subset == "rehearsal":
        return _with_every_provider(mask_params("proof"), MASK_PROVIDERS)
    return [(c, s, p) for c in MASK_CASES for s in MASK_SPARSITIES for p in MASK_PROVIDERS]


def adam_params(subset: str = SUBSET) -> list[tuple[str, float, str]]:
    """(case, sparsity, provider) of every masked-Adam benchmark in `subset`."""
    if subset == "proof":  # faithful at 0% vs copy bandwidth and fused Adam; frozen vs fused + mask at 95/99%
        dense = ["triton_faithful", "torch_fused_nomask", "torch_fused_mask"]
        sparse = ["triton_frozen", "triton_frozen_pz", "triton_faithful_pz", "torch_fused_mask"]
        return [(case, s, p) for case in ("impala_w3", "flat_50M") for s in ADAM_SPARSITIES
                for p in (dense if s == 0 else sparse)]
    if subset == "rehearsal":
        return _with_every_provider(adam_params("proof"), ADAM_PROVIDERS)
    return [(c, s, p) for c in ADAM_CASES for s in ADAM_SPARSITIES for p in ADAM_PROVIDERS]


def _with_every_provider(params, providers):
    """`params`, then every provider they lack at Impala w3 and 95% (the rehearsal runs each one's code once)."""
    return params + [("impala_w3", 0.95, p) for p in providers if ("impala_w3", 0.95, p) not in params]


def case_shapes(op: str, case: str) -> list[tuple[int, ...]]:
    """The tensor shapes of `case` of `op` ('mask' or 'adam'): the rehearsal's stand-ins in the rehearsal."""
    if op == "mask":
        return (REHEARSAL_MASK_CASES if REHEARSAL else MASK_CASES)[case]
    return (REHEARSAL_ADAM_CASES if REHEARSAL else ADAM_CASES)[case]


def numel(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def mask_problem(shapes, sparsity: float, device) -> tuple[list[torch.Tensor], list[int]]:
    """Gaussian weights of these shapes and their keep counts at `sparsity`."""
    weights = [torch.randn(s, device=device) for s in shapes]
    return weights, [keep_count(w.numel(), sparsity) for w in weights]


def adam_problem(case: str, shapes, sparsity: float, device):
    """(masked, params, grads, masks) of one Adam step: random masks at `sparsity` on the prunable tensors
    (ndim > 1; the flat 50M case is one prunable buffer, not a bias), pruned weights already 0."""
    masked = [len(s) > 1 or case == "flat_50M" for s in shapes]
    masks = [torch.rand(s, device=device) >= sparsity if mk else None for s, mk in zip(shapes, masked)]
    params = [torch.randn(s, device=device) * (1 if mk is None else mk) for s, mk in zip(shapes, masks)]
    grads = [torch.randn(s, device=device) for s in shapes]
    return masked, params, grads, masks


# --- traffic models: the bytes an op must move, and the bytes our kernels' design moves ------------------------


def mask_op_bytes(n: int, weight_bytes: int = 4) -> int:
    """The least any mask selection can move: read every weight once, write every 1-byte mask entry once."""
    return n * (weight_bytes + 1)


def mask_model_bytes(n: int, candidate_frac: float, warm: bool, weight_bytes: int = 4) -> int:
    """Bytes our radix select moves (kernels/topk_mask.py): full reads of the weights (1 warm, 2 cold), the
    1-byte mask write, and the candidates, a fraction f of the elements (the warm guess's interval, or the
    cold path's top-digit bucket): each written once as a 4-byte slot (key and position packed), read by
    both digit histograms (warm; cold makes the first during its second full read) and by the fix-up, which
    writes the kept ones' mask entries (about half the candidates: T lies somewhere in their range), each
    in a 32-byte sector of the mask: at random positions, 1 - (1 - f/2)^32 of the sectors are written a
    second time. (A wrong warm guess costs the warm pass plus the cold path.)"""
    c = candidate_frac * n
    full_reads = (1 if warm else 2) * weight_bytes * n
    slot_reads = 3 if warm else 2
    return int(full_reads + n + c * 4 * (1 + slot_reads) + n * (1 - (1 - candidate_frac / 2) ** 32))


# Elements per liveness decision of kernels/masked_adam.py (frozen mode and pruned_are_zero skip whole sectors).
ADAM_SECTOR = 8


def adam_op_bytes(numels, masked, sparsity: float, frozen: bool, grad_bytes: int = 4,
                  pruned_are_zero: bool = False) -> int:
    """Bytes a masked Adam step must move: p, g, m, v read and p, m, v written per element, plus the 1-byte
    mask of masked tensors. Frozen moments skip a pruned element's g, m, v (and p, when pruned weights are
    already 0; otherwise its weight is written as 0); faithful/reset with pruned_are_zero skip its weight."""
    return _adam_bytes(numels, masked, lambda n: n - round(n * sparsity), frozen, grad_bytes, pruned_are_zero)


def adam_model_bytes(numels, masked, sparsity: float, frozen: bool, grad_bytes: int = 4,
                     pruned_are_zero: bool = False, live_list: bool | None = None) -> float:
    """Bytes our kernel moves: `adam_op_bytes`, but what it skips it skips per 8-element sector (a sector
    with any kept element moves whole), so at random masks a fraction 1 - s^8 of the elements counts as live
    (34% at 95%, 7.7% at 99%). Equal to `adam_op_bytes` where nothing is skipped (faithful, no promise).
    Frozen mode's list of live sectors (`live_list`, default `masked_adam.FROZEN_LIVE_LIST`) adds, per element
    of a live sector, half a byte for its 4-byte entry written and half for it read, and the mask byte read
    again by the update."""
    from kernels import masked_adam

    live_frac = 1.0 - sparsity**ADAM_SECTOR
    listed = frozen and (masked_adam.FROZEN_LIVE_LIST if live_list is None else live_list)
    return _adam_bytes(numels, masked, lambda n: n * live_frac, frozen, grad_bytes, pruned_are_zero,
                       list_bytes=1 if listed else 0)


def _adam_bytes(numels, masked, live_of, frozen: bool, grad_bytes: int, pruned_are_zero: bool, list_bytes: int = 0):
    """Per tensor: live elements move everything, the other ones what frozen/pruned_are_zero leave them;
    `list_bytes` per element of frozen mode's live-sector list (every element of an unmasked tensor is listed),
    plus a second read of the mask byte of the listed elements of masked tensors."""
    full = 3 * 4 + grad_bytes + 3 * 4
    total = 0
    for n, is_masked in zip(numels, masked):
        if not is_masked:
            total += n * (full + list_bytes)
            continue
        live = live_of(n)
        pruned = n - live
        if frozen:
            mask_again = 1 if list_bytes else 0
            total += n + live * (full + list_bytes + mask_again) + (0 if pruned_are_zero else 4 * pruned)
        else:
            total += n + live * full + pruned * (full - (8 if pruned_are_zero else 0))
    return total


def adam_provider_bytes(numels, masked, sparsity: float, provider: str, grad_bytes: int = 4) -> int:
    """Bytes a provider moves for one step: our kernel's sector model, separate passes for PyTorch's."""
    full = 3 * 4 + grad_bytes + 3 * 4
    if provider == "torch_fused_nomask":
        return sum(numels) * full
    if provider.startswith("torch_"):  # Adam over everything, then read p and mask and write p
        return sum(n * (full + (9 if mk else 0)) for n, mk in zip(numels, masked))
    mode = provider.removeprefix("triton_").removesuffix("_pz")
    return round(adam_model_bytes(numels, masked, sparsity, mode == "frozen", grad_bytes, provider.endswith("_pz")))


def measure_copy_gbps() -> float:
    """Device copy bandwidth in GB/s (bytes read + written), L2 flushed between reps: the ceiling results are
    compared with, measured in the same run."""
    import triton.testing

    src = torch.randn(256 * 2**20, device="cuda")  # 1 GiB: far beyond any L2
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), rep=500, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def one_read_ms(n: int, copy_gbps: float | None, weight_bytes: int = 4) -> float | None:
    """Time of one read of n weights at the measured copy bandwidth (None without one: the CPU rehearsal)."""
    return None if copy_gbps is None else n * weight_bytes / (copy_gbps * 1e9) * 1e3


# --- timing ---------------------------------------------------------------------------------------------------

REP_MS = 100 if SUBSET == "proof" else 200
# Calls per per-call figure (L2-hot time, launch anatomy, host time) and pytest-benchmark rounds: the rehearsal
# only needs each path to run, and an interpreted mask selection takes ~0.1-0.3 s per call.
REPS = 1 if REHEARSAL else 20
ROUNDS = {"proof": 5, "rehearsal": 1}.get(SUBSET, 10)


# --- CUDA timing, and the CPU rehearsal's stand-ins for it (without CUDA; no time they give is a speed) --------


class WallClockEvent:
    """`torch.cuda.Event`'s record / elapsed_time (ms) from the host's clock: an interpreted launch runs before
    it returns, so the host's clock brackets it."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: "WallClockEvent") -> float:
        return (end.t - self.t) * 1e3


def wall_clock_do_bench(fn, warmup=None, rep=None, quantiles=None, return_mode="mean"):
    """`triton.testing.do_bench`'s results (ms) from one warm-up and REPS wall-clock calls (warmup and rep, in
    ms there, are ignored)."""
    fn()
    times = []
    for _ in range(REPS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    if quantiles is not None:
        out = torch.quantile(torch.tensor(times, dtype=torch.float64), torch.tensor(quantiles, dtype=torch.float64))
        return out.tolist() if len(quantiles) > 1 else out.item()
    return {"mean": statistics.mean, "median": statistics.median, "min": min, "max": max}[return_mode](times)


def do_bench(fn, **kwargs):
    """`triton.testing.do_bench` (CUDA events, L2 flushed) on a GPU, `wall_clock_do_bench` without one."""
    if not CUDA:
        return wall_clock_do_bench(fn, **kwargs)
    import triton.testing

    return triton.testing.do_bench(fn, **kwargs)


def timing_event():
    """A timing CUDA event on a GPU, a `WallClockEvent` without one."""
    return torch.cuda.Event(enable_timing=True) if CUDA else WallClockEvent()


def synchronize() -> None:
    """Wait for the GPU (nothing to wait for on the CPU: every op has run when it returns)."""
    if CUDA:
        torch.cuda.synchronize()


# --- measurement ------------------------------------------------------------------------------------------


def _l2_hot_ms(fn, reps: int = REPS) -> float:
    fn()
    start, end = timing_event(), timing_event()
    synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    synchronize()
    return start.elapsed_time(end) / reps


def graph_replay(fn, stack: contextlib.ExitStack):
    """`fn` captured in a CUDA graph (after warm-up on a side stream); returns the replay function. The
    kernels' device tables the graph reads are held by `stack` until the benchmark ends."""
    import kernels

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with kernels.graph_tables() as held, torch.cuda.graph(graph):
        fn()
    stack.callback(held.release)
    return graph.replay


def measure(benchmark, fn, *, run_info: dict, op_bytes: int, **info) -> None:
    """Time `fn` eagerly and as a CUDA graph (device time via do_bench), host time via pytest-benchmark. Without
    a measured copy bandwidth (the CPU rehearsal) the fractions of it are None."""
    median, p20, p80 = do_bench(fn, warmup=25, rep=REP_MS, quantiles=[0.5, 0.2, 0.8])
    if not CUDA:  # the CPU rehearsal: no graph to capture
        graph_ms, graph_error = None, "no CUDA (CPU rehearsal)"
    else:
        with contextlib.ExitStack() as stack:
            try:
                replay = graph_replay(fn, stack)
                graph_ms, graph_error = do_bench(replay, warmup=10, rep=REP_MS, return_mode="median"), None
            except Exception as e:  # a provider that can't be captured says so in its result
                torch.cuda.synchronize()
                graph_ms, graph_error = None, f"{type(e).__name__}: {e}"[:300]
    copy_gbps = run_info["copy_gbps"]
    gbps = op_bytes / (median * 1e-3) / 1e9
    benchmark.extra_info.update(run_info)
    benchmark.extra_info.update(info)
    benchmark.extra_info.update(
        ms=median, ms_p20=p20, ms_p80=p80, ms_graph=graph_ms, graph_error=graph_error, ms_l2_hot=_l2_hot_ms(fn),
        op_bytes=op_bytes, ideal_ms=None if copy_gbps is None else op_bytes / (copy_gbps * 1e9) * 1e3, gbps=gbps,
        frac_of_copy=None if copy_gbps is None else gbps / copy_gbps,
        frac_of_copy_graph=None if graph_ms is None or copy_gbps is None
        else op_bytes / (graph_ms * 1e-3) / 1e9 / copy_gbps)

    def synced():
        fn()
        synchronize()

    benchmark.pedantic(synced, rounds=ROUNDS, iterations=1, warmup_rounds=1)


# --- mask selection -------------------------------------------------------------------------------------------


def _mask_provider(name, weights, counts):
    from torch.nn.utils import prune

    from kernels.reference import topk_magnitude_masks_ref
    from kernels.topk_mask import topk_magnitude_masks_triton

    if name in ("triton", "triton_cold"):
        keep = torch.tensor(counts, device=weights[0].device)
        out = [torch.empty(w.shape, dtype=torch.bool, device=w.device) for w in weights]
        warm = name == "triton"
        return lambda: topk_magnitude_masks_triton(weights, keep, out=out, warm_start=warm)
    if name == "sort":
        return lambda: topk_magnitude_masks_ref(weights, counts)

    def per_layer(one):
        return lambda: [one(w, k) for w, k in zip(weights, counts)]

    if name == "topk_loop":
        def one(w, k):
            mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
            mask[torch.topk(w.abs().flatten(), k, sorted=False).indices] = True
            return mask.view(w.shape)
        return per_layer(one)
    if name == "kthvalue":
        def one(w, k):
            score = w.abs()
            return score >= torch.kthvalue(score.flatten(), w.numel() - k + 1).values
        return per_layer(one)
    if name == "prune_l1":
        def one(w, k):
            return prune.L1Unstructured(amount=w.numel() - k).compute_mask(w, default_mask=torch.ones_like(w))
        return per_layer(one)
    raise ValueError(name)


@pytest.mark.parametrize("case, sparsity, provider", mask_params())
def test_mask_selection(benchmark, run_info, case, sparsity, provider):
    from kernels import topk_mask
    from kernels.reference import topk_magnitude_masks_ref

    benchmark.group = f"mask_selection-{case}-s{sparsity}"
    shapes = case_shapes("mask", case)
    weights, counts = mask_problem(shapes, sparsity, DEVICE)
    n = sum(w.numel() for w in weights)
    fn = _mask_provider(provider, weights, counts)
    info = {}
    if provider.startswith("triton"):  # correctness on the benchmark data itself before timing it
        want = topk_magnitude_masks_ref(weights, counts)
        assert all(torch.equal(a, b) for a, b in zip(fn(), want))
        # The warm path from here on (for `triton`); the anatomy's calls also let the guess's span settle.
        anatomy = launch_anatomy_us(fn, topk_mask, reps=REPS)
        assert all(torch.equal(a, b) for a, b in zip(fn(), want))
        stats = topk_mask.select_stats(weights)
        frac = stats["candidates"] / n
        info = dict(candidate_frac=frac, launches=topk_mask.LAUNCHES, anatomy_us=anatomy,
                    call_host_us=call_host_us(fn, reps=REPS), guess_held=sum(stats["warm"]) / len(stats["warm"]),
                    model_bytes=mask_model_bytes(n, frac, warm=provider == "triton"))
    measure(benchmark, fn, run_info=run_info, op_bytes=mask_op_bytes(n), op="mask_selection", provider=provider,
            case=case, sparsity=sparsity, n_params=n, n_tensors=len(shapes),
            one_read_ms=one_read_ms(n, run_info["copy_gbps"]), **info)


# --- masked Adam ----------------------------------------------------------------------------------------------


def _adam_provider(name, params, grads, masks):
    from kernels.masked_adam import masked_adam_triton_

    hyper = dict(lr=6.25e-5, eps=1.5e-4)
    if name.startswith("triton_"):
        mode = name.removeprefix("triton_").removesuffix("_pz")
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        step = torch.ones((), dtype=torch.int64, device=params[0].device)
        return lambda: masked_adam_triton_(params, grads, m, v, masks, step=step, moments=mode,
                                           pruned_are_zero=name.endswith("_pz"), **hyper)
    for p, g in zip(params, grads):
        p.grad = g
    # capturable: the step count and bias corrections on the device, so the step can be graph-captured (on a
    # GPU; the CPU rehearsal's foreach Adam refuses it, and there is no graph to capture there).
    opt = torch.optim.Adam(params, fused=name != "torch_foreach_mask", foreach=name == "torch_foreach_mask",
                           capturable=params[0].is_cuda, **hyper)
    pairs = [(p, mk) for p, mk in zip(params, masks) if mk is not None]
    masked_params, mask_list = [p for p, _ in pairs], [mk for _, mk in pairs]
    if name == "torch_fused_nomask":
        return opt.step

    def step_and_mask():
        opt.step()
        torch._foreach_mul_(masked_params, mask_list)

    return step_and_mask


@pytest.mark.parametrize("case, sparsity, provider", adam_params())
def test_masked_adam(benchmark, run_info, case, sparsity, provider):
    benchmark.group = f"masked_adam-{case}-s{sparsity}"
    shapes = case_shapes("adam", case)
    masked, params, grads, masks = adam_problem(case, shapes, sparsity, DEVICE)
    fn = _adam_provider(provider, params, grads, masks)
    numels = [numel(s) for s in shapes]
    info = {}
    mode = provider.removeprefix("triton_").removesuffix("_pz")
    if provider.startswith("triton_"):
        from kernels import masked_adam

        info = dict(model_bytes=adam_provider_bytes(numels, masked, sparsity, provider),
                    launches=masked_adam.launches(mode), anatomy_us=launch_anatomy_us(fn, masked_adam, reps=REPS),
                    call_host_us=call_host_us(fn, reps=REPS))
    measure(benchmark, fn, run_info=run_info,
            op_bytes=adam_op_bytes(numels, masked, sparsity, mode == "frozen",
                                   pruned_are_zero=provider.endswith("_pz")),
            provider_bytes=adam_provider_bytes(numels, masked, sparsity, provider), op="masked_adam",
            provider=provider, case=case, sparsity=sparsity, n_params=sum(numels), n_tensors=len(shapes), **info)


# --- host cost per call ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def kernels_replaced(modules, replace):
    """Within the block, every Triton kernel `_*_kernel` of `modules` is `replace(name, kernel)`."""
    patched = []
    for module in modules:
        for name, obj in list(vars(module).items()):
            if name.startswith("_") and name.endswith("_kernel") and hasattr(obj, "fn"):
                patched.append((module, name, obj))
                setattr(module, name, replace(name, obj))
    try:
        yield
    finally:
        for module, name, obj in patched:
            setattr(module, name, obj)


@contextlib.contextmanager
def stubbed_launches():
    """Replace every Triton kernel of `kernels` with a stub whose launch does nothing, so that timing a call
    measures only its host work (validation, cache lookups, argument building)."""
    from kernels import masked_adam, topk_mask

    class _Stub:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    with kernels_replaced((topk_mask, masked_adam), lambda name, kernel: _Stub()):
        yield


@contextlib.contextmanager
def hooked_launches(module, hook):
    """Within the block, `kernel[grid]` of every Triton kernel `_<name>_kernel` of `module` is `hook(name,
    launch)`, where `launch` is the real `kernel[grid]`: e.g. a function that brackets it with events."""
    class _Hooked:
        def __init__(self, name, kernel):
            self.name, self.kernel = name.strip("_").removesuffix("_kernel"), kernel

        def __getitem__(self, grid):
            return hook(self.name, self.kernel[grid])

    with kernels_replaced((module,), _Hooked):
        yield


@contextlib.contextmanager
def timed_launches(module, event=None):
    """Bracket every launch of `module`'s Triton kernels with device events; yields the list of (kernel name,
    start event, end event) the launches append to, in launch order. `event()` makes an event (default: a
    timing CUDA event; without CUDA, a `WallClockEvent`)."""
    event = event or timing_event
    records = []

    def timed(name, launch):
        def run(*args, **kwargs):
            start, end = event(), event()
            start.record()
            launch(*args, **kwargs)
            end.record()
            records.append((name, start, end))
        return run

    with hooked_launches(module, timed):
        yield records


_SLEEP_CYCLES_PER_S: list[float] = []


def device_delay(seconds: float) -> None:
    """Queue `seconds` of busy-waiting on the current CUDA stream (`torch.cuda._sleep`, calibrated once), so that
    the host can queue what follows before the device reaches it."""
    if not _SLEEP_CYCLES_PER_S:
        # Warm first: a first launch's lazy module load would sit between the events and make delays too short.
        torch.cuda._sleep(1000)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(10**7)
        end.record()
        end.synchronize()
        _SLEEP_CYCLES_PER_S.append(1e7 / (start.elapsed_time(end) * 1e-3))
    torch.cuda._sleep(int(seconds * _SLEEP_CYCLES_PER_S[0]))


def launch_anatomy_us(fn, module, reps: int = 20, event=None, delay=None) -> dict:
    """Median device microseconds of each launch of `module`'s kernels over `reps` calls of `fn`, an event
    between launches: the anatomy of one call, for the next GPU run to see where the time goes.

    Each call is queued behind `delay(seconds)` (on CUDA: `device_delay`) of twice a call's host time, so the
    device reaches the call's launches only once the host has queued them all: the events then time the device
    alone. Without it, every launch was timed with the host's launch cost (~85 us per Triton launch on the
    H200 machine's host, more than any kernel at Impala w3 takes). L2 is not flushed between calls."""
    if delay is None and torch.cuda.is_available():
        delay = device_delay
    times: dict = {}
    with timed_launches(module, event) as records:
        fn()  # warm, and the host time of a timed call
        start = time.perf_counter()
        fn()
        host_s = time.perf_counter() - start
        del records[:]
        for _ in range(reps):
            if delay is not None:
                delay(2 * host_s)
            fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    for name, start, end in records:
        times.setdefault(name, []).append(start.elapsed_time(end) * 1e3)
    return {name: sorted(us)[len(us) // 2] for name, us in times.items()}


def call_host_us(fn, reps: int = 20) -> float:
    """Median host microseconds of one eager call of `fn`, its launches real (asynchronous: the host's side of
    the eager times, which exceed the device's where this is the larger)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def host_cost_us(op: str, device, width: int = 3, calls: int = 200, repeats: int = 7) -> float:
    """Host microseconds per call of `op` ('topk', 'adam', 'adam_new_grads': new gradient tensors at every
    call, as autograd makes them after `zero_grad(set_to_none=True)`, or 'adam_new_plan': every tensor new, so
    every call validates and tables them all) on DQN-Impala's tensors at `width`, launches stubbed; the minimum
    over `repeats` medians-of-`calls` (robust to a busy machine)."""
    import kernels

    shapes = impala_param_shapes(width)
    params = [torch.randn(s, device=device) for s in shapes]
    if op == "topk":
        weights = [p for p in params if p.dim() > 1]
        keep = torch.tensor([keep_count(w.numel(), 0.95) for w in weights], device=device)
        out = [torch.empty(w.shape, dtype=torch.bool, device=device) for w in weights]

        def call():
            kernels.topk_magnitude_masks(weights, keep, out=out)
    elif op in ("adam", "adam_new_grads", "adam_new_plan"):
        grads = [torch.randn_like(p) for p in params]
        m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
        masks = [torch.ones(p.shape, dtype=torch.bool, device=device) if p.dim() > 1 else None for p in params]
        step = torch.ones((), device=device)

        def call():
            kernels.masked_adam_(params, grads, m, v, masks, step=step, lr=1e-4, moments="faithful")
    else:
        raise ValueError(op)
    with stubbed_launches():
        call()  # the first call validates and builds the cached launch plan
        results = []
        for _ in range(repeats):
            times = []
            for _ in range(calls):
                if op == "adam_new_grads":  # as after zero_grad(set_to_none=True): new tensors, untimed
                    grads = [torch.empty_like(p) for p in params]
                elif op == "adam_new_plan":
                    params, grads, m, v = [[torch.zeros_like(p) for p in params] for _ in range(4)]
                    masks = [None if k is None else torch.ones_like(k) for k in masks]
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            results.append(statistics.median(times))
    return min(results) * 1e6


@pytest.mark.parametrize("op", ["topk", "adam", "adam_new_grads"])
def test_host_cost(benchmark, run_info, op):
    """Host time per call at Impala w3 with the launches stubbed (target: under 30 us; adam_new_grads, new
    gradient tensors at every call, has none)."""
    calls, repeats = (20, 2) if REHEARSAL else (200, 7)
    us = host_cost_us(op, DEVICE, width=3, calls=calls, repeats=repeats)
    benchmark.extra_info.update(run_info)
    benchmark.extra_info.update(op="host_cost", provider=f"triton_{op}", case="impala_w3", sparsity=0.0,
                                us_per_call=us, ms=us * 1e-3)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
