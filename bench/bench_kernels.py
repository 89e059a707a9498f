"""Benchmarks of the two kernels against their PyTorch alternatives (GPU only; see bench/README.md).

Mask selection: the prunable tensors (ndim > 1) of DQN-Impala at widths 1, 3, 5 and a ~50M-parameter
synthetic set, at sparsity 0.5 / 0.95 / 0.99 (keep count per tensor = max(1, round(n (1 - s)))).
Providers: `triton` (kernels.topk_mask), `topk_loop` (per-layer torch.topk + scatter), `sort` (the
reference: per-layer stable argsort, i.e. what JaxPruner does), `kthvalue` (per-layer threshold, not
exact under ties), `prune_l1` (torch.nn.utils.prune.L1Unstructured.compute_mask per layer).

Masked Adam: every parameter of DQN-Impala at widths 1, 3, 5 (biases unmasked) and one flat 50M tensor,
at sparsity 0 / 0.95 / 0.99. Providers: `triton_<mode>` for each moments mode (+ `triton_frozen_pz`: frozen
with pruned_are_zero), `torch_fused_mask` (Adam(fused=True) then p *= mask), `torch_foreach_mask`
(Adam(foreach=True) then p *= mask), `torch_fused_nomask` (Adam(fused=True) alone: the no-pruning floor).

Timing: triton.testing.do_bench (CUDA events, L2 flushed before every rep; median and 20/80 percentiles)
plus an L2-hot figure (back-to-back reps). pytest-benchmark additionally times the synchronised call on
the host. Every result stores the bytes the op must move, GB/s and the fraction of the copy bandwidth
measured in the same run.
"""

import pytest
import torch
import triton.testing

from agents.networks import ImpalaResNet
from agents.pruning import keep_count

# --- problem definitions (plain Python: also used by the CPU tests of this file's helpers) -------------------

WIDTHS = (1, 3, 5)
MASK_SPARSITIES = (0.5, 0.95, 0.99)
ADAM_SPARSITIES = (0.0, 0.95, 0.99)
MOMENTS_MODES = ("faithful", "reset", "frozen")


def impala_param_shapes(width: int, n_actions: int = 18) -> list[tuple[int, ...]]:
    """All parameter shapes of the project's DQN Impala network (conv-only width scaling, dense 512)."""
    return [tuple(p.shape) for p in ImpalaResNet(n_actions, width).parameters()]


# ~50M parameters in 8 matrices of very different sizes (25M down to 0.2M).
SYNTHETIC_50M = [(5000, 5000), (5000, 2500), (2500, 2500), (2500, 1250), (1250, 1250), (1250, 625), (625, 625),
                 (625, 312)]
MASK_CASES = {**{f"impala_w{w}": [s for s in impala_param_shapes(w) if len(s) > 1] for w in WIDTHS},
              "synthetic_50M": SYNTHETIC_50M}
ADAM_CASES = {**{f"impala_w{w}": impala_param_shapes(w) for w in WIDTHS}, "flat_50M": [(50_000_000,)]}


def numel(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def adam_bytes(numels, masked, sparsity: float, provider: str, grad_bytes: int = 4) -> int:
    """Bytes a provider must move for one step (masks are 1 byte; unmasked tensors are plain Adam)."""
    full = 3 * 4 + grad_bytes + 3 * 4  # read p, g, m, v; write p, m, v
    total = 0
    for n, is_masked in zip(numels, masked):
        if provider == "torch_fused_nomask" or not is_masked:
            total += n * full
        elif provider.startswith("torch_"):
            total += n * (full + 4 + 1 + 4)  # then a separate pass: read p and mask, write p
        elif provider.startswith("triton_frozen"):
            live = n - round(n * sparsity)
            pruned_write = 0 if provider.endswith("_pz") else 4 * (n - live)
            total += n + live * full + pruned_write  # mask bytes + live elements + zeroing pruned weights
        else:
            total += n * (full + 1)
    return total


# --- measurement ------------------------------------------------------------------------------------------


def _l2_hot_ms(fn, reps: int = 20) -> float:
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def measure(benchmark, fn, *, run_info: dict, bytes_moved: int, **info) -> None:
    """Time `fn` (device time via do_bench, host time via pytest-benchmark) and fill extra_info."""
    median, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.2, 0.8])
    gbps = bytes_moved / (median * 1e-3) / 1e9
    benchmark.extra_info.update(run_info)
    benchmark.extra_info.update(info)
    benchmark.extra_info.update(ms=median, ms_p20=p20, ms_p80=p80, ms_l2_hot=_l2_hot_ms(fn),
                                bytes_moved=bytes_moved, gbps=gbps, frac_of_copy=gbps / run_info["copy_gbps"])

    def synced():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=10, iterations=1, warmup_rounds=1)


# --- mask selection -------------------------------------------------------------------------------------------


def _mask_provider(name, weights, counts):
    from torch.nn.utils import prune

    from kernels.reference import topk_magnitude_masks_ref
    from kernels.topk_mask import topk_magnitude_masks_triton

    if name == "triton":
        keep = torch.tensor(counts, device="cuda")
        out = [torch.empty(w.shape, dtype=torch.bool, device="cuda") for w in weights]
        return lambda: topk_magnitude_masks_triton(weights, keep, out=out)
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


@pytest.mark.parametrize("provider", ["triton", "topk_loop", "sort", "kthvalue", "prune_l1"])
@pytest.mark.parametrize("sparsity", MASK_SPARSITIES)
@pytest.mark.parametrize("case", MASK_CASES)
def test_mask_selection(benchmark, run_info, case, sparsity, provider):
    benchmark.group = f"mask_selection-{case}-s{sparsity}"
    shapes = MASK_CASES[case]
    weights = [torch.randn(s, device="cuda") for s in shapes]
    counts = [keep_count(w.numel(), sparsity) for w in weights]
    n = sum(w.numel() for w in weights)
    fn = _mask_provider(provider, weights, counts)
    if provider == "triton":  # correctness on the benchmark data itself before timing it
        from kernels.reference import topk_magnitude_masks_ref

        assert all(torch.equal(a, b) for a, b in zip(fn(), topk_magnitude_masks_ref(weights, counts)))
    measure(benchmark, fn, run_info=run_info, bytes_moved=n * 4 + n, op="mask_selection", provider=provider,
            case=case, sparsity=sparsity, n_params=n, n_tensors=len(shapes),
            one_read_ms=n * 4 / (run_info["copy_gbps"] * 1e9) * 1e3)


# --- masked Adam ----------------------------------------------------------------------------------------------

ADAM_PROVIDERS = [f"triton_{m}" for m in MOMENTS_MODES] + ["triton_frozen_pz", "torch_fused_mask",
                                                            "torch_foreach_mask", "torch_fused_nomask"]


def _adam_provider(name, params, grads, masks):
    from kernels.masked_adam import masked_adam_triton_

    hyper = dict(lr=6.25e-5, eps=1.5e-4)
    if name.startswith("triton_"):
        mode = name.removeprefix("triton_").removesuffix("_pz")
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        step = torch.ones((), dtype=torch.int64, device="cuda")
        return lambda: masked_adam_triton_(params, grads, m, v, masks, step=step, moments=mode,
                                           pruned_are_zero=name.endswith("_pz"), **hyper)
    for p, g in zip(params, grads):
        p.grad = g
    opt = torch.optim.Adam(params, fused=name != "torch_foreach_mask", foreach=name == "torch_foreach_mask",
                           **hyper)
    pairs = [(p, mk) for p, mk in zip(params, masks) if mk is not None]
    masked_params, mask_list = [p for p, _ in pairs], [mk for _, mk in pairs]
    if name == "torch_fused_nomask":
        return opt.step

    def step_and_mask():
        opt.step()
        torch._foreach_mul_(masked_params, mask_list)

    return step_and_mask


@pytest.mark.parametrize("provider", ADAM_PROVIDERS)
@pytest.mark.parametrize("sparsity", ADAM_SPARSITIES)
@pytest.mark.parametrize("case", ADAM_CASES)
def test_masked_adam(benchmark, run_info, case, sparsity, provider):
    benchmark.group = f"masked_adam-{case}-s{sparsity}"
    shapes = ADAM_CASES[case]
    # The flat 50M case is one prunable buffer (masked), not a bias.
    masked = [len(s) > 1 or case == "flat_50M" for s in shapes]
    masks = [torch.rand(s, device="cuda") >= sparsity if mk else None for s, mk in zip(shapes, masked)]
    params = [torch.randn(s, device="cuda") * (1 if mk is None else mk) for s, mk in zip(shapes, masks)]
    grads = [torch.randn(s, device="cuda") for s in shapes]
    fn = _adam_provider(provider, params, grads, masks)
    bytes_moved = adam_bytes([numel(s) for s in shapes], masked, sparsity, provider)
    measure(benchmark, fn, run_info=run_info, bytes_moved=bytes_moved,
            op="masked_adam", provider=provider, case=case, sparsity=sparsity,
            n_params=sum(numel(s) for s in shapes), n_tensors=len(shapes))
