"""Fused multi-tensor masked Adam: one launch updates every parameter of a network, then re-masks it.

Op (torch.optim.Adam semantics, bias-corrected, no weight decay; t = step after increment):
    m <- m + (1 - b1) (g - m)                 # lerp, as torch.optim.Adam
    v <- b2 v + ((1 - b2) g) g                # addcmul
    p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    p <- p * mask
and for pruned entries (mask == 0) the moments option:
    faithful: m, v updated like the rest (JaxPruner default: the optimizer never sees the mask);
    reset:    m, v <- m * mask, v * mask;
    frozen:   m, v left exactly as before; the pruned weight is set to 0.
Reference: `kernels.reference.masked_adam_ref_` (tests also track `torch.optim.Adam` + `p.mul_(mask)`).

Layout: one program per BLOCK elements of one tensor; tensors are found through device pointer tables
(`kernels._utils`), so a network's ~30 tensors cost one launch and no flattening copy. Each element's p, g,
m, v and mask byte are read once and p, m, v written once (28 bytes + 1 per fp32 element).

Frozen mode skips the pruned part of the traffic. Loads and stores of a pruned element are predicated
off, and the hardware fetches no 32-byte sector that no live lane touches (at 99% sparsity ~92% of the
fp32 sectors); a block whose weights are all pruned skips the update entirely. The pruned weight is still
written (+0.0, write-only) unless `pruned_are_zero=True` promises that pruned weights are already exactly
zero (true after any earlier masked step with the same masks, or after
`topk_magnitude_masks(..., zero_pruned=True)`); then a pruned element costs only its mask byte, and in the
faithful and reset modes its weight is neither read nor written either.

Step: a Python int (a kernel argument: a captured CUDA graph would replay that same value), or a 0-d
integer/float tensor on the device (read in the kernel: the graph replays with whatever it holds). The bias
corrections are computed per program in fp64 by repeated squaring: exact to a few fp64 ulp, no libm.
Registered as the custom op `torch.ops.prunerl.masked_adam_` (opaque to torch.compile, declared mutations).
Dtypes: params and moments fp32, grads fp32 or bf16 (one grad dtype per call), masks bool or uint8 or
None (an unprunable tensor, e.g. a bias: plain Adam), all contiguous. beta1/beta2 are compile-time
constants (one compile per pair; they are fixed in a run) so they keep full fp64 precision.
Differences from the reference, by design: in frozen mode a pruned weight becomes +0.0 where the
reference computes (p + update) * 0 (so -0.0, or NaN for a non-finite update). Untuned and unmeasured on
GPU: BLOCK, num_warps; loads through the pointer table carry no alignment hint, so they are not vectorised.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import _utils
from kernels.reference import MOMENTS_MODES, check_adam_inputs

# Elements per program: a streaming kernel needs a few KB in flight per program and many programs per SM.
ADAM_BLOCK = 1024
NUM_WARPS = 4
_MODE_ID = {mode: i for i, mode in enumerate(MOMENTS_MODES)}  # faithful 0, reset 1, frozen 2
# (Globals read inside kernels must be tl.constexpr.)
RESET, FROZEN = tl.constexpr(_MODE_ID["reset"]), tl.constexpr(_MODE_ID["frozen"])

# --- kernels ----------------------------------------------------------------------------------------------


@triton.jit
def _pow_int(base, n):
    """base ** n for an fp64 scalar base and an int64 scalar n in [0, 2**32)."""
    result = tl.full([], 1.0, tl.float64)
    for i in tl.static_range(32):
        result = tl.where(((n >> i) & 1) != 0, result * base, result)
        base = base * base  # underflows to 0 harmlessly for large exponents
    return result


# `step` must not be specialised: Triton would turn step == 1 into a compile-time constant (a recompile).
@triton.jit(do_not_specialize=["step"])
def _masked_adam_kernel(p_table_ptr, g_table_ptr, m_table_ptr, v_table_ptr, mask_table_ptr, plan_ptr, n_blocks,
                        n_seg, step_ptr, step, lr, eps,
                        BETA1: tl.constexpr, BETA2: tl.constexpr, GRAD_DTYPE: tl.constexpr,
                        STEP_ON_DEVICE: tl.constexpr, MODE: tl.constexpr, PRUNED_ARE_ZERO: tl.constexpr,
                        BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    seg = tl.load(plan_ptr + pid)
    offs = tl.load(plan_ptr + n_blocks + pid) + tl.arange(0, BLOCK)
    inb = offs < tl.load(plan_ptr + 2 * n_blocks + 2 * n_seg + seg)

    # Bias corrections in fp64, like the reference's Python floats; then fp32 for the vector math.
    # (Adding an fp64/int64 zero instead of .to(): scalar args are plain Python numbers in the interpreter.)
    if STEP_ON_DEVICE:
        t = tl.load(step_ptr).to(tl.int64)
    else:
        t = step + tl.zeros([], dtype=tl.int64)
    bias_correction1 = 1.0 - _pow_int(tl.full([], BETA1, tl.float64), t)
    bias_correction2 = 1.0 - _pow_int(tl.full([], BETA2, tl.float64), t)
    step_size = ((lr + tl.zeros([], dtype=tl.float64)) / bias_correction1).to(tl.float32)
    bias_correction2_sqrt = tl.sqrt(bias_correction2).to(tl.float32)

    mask_addr = tl.load(mask_table_ptr + seg)
    if mask_addr != 0:
        # bool and uint8 masks are both one byte per element.
        keep = tl.load(mask_addr.to(tl.pointer_type(tl.uint8)) + offs, mask=inb, other=0) != 0
    else:
        keep = inb
    # `live`: elements whose p, g, m, v are touched. `p_live`: whose weight is read and written.
    live = inb & keep if MODE == FROZEN else inb
    p_live = inb & keep if PRUNED_ARE_ZERO else live
    p_ptr = tl.load(p_table_ptr + seg).to(tl.pointer_type(tl.float32)) + offs

    if tl.max(live.to(tl.int32), 0) != 0:  # only a frozen, fully pruned block fails this
        g_ptr = tl.load(g_table_ptr + seg).to(tl.pointer_type(GRAD_DTYPE)) + offs
        m_ptr = tl.load(m_table_ptr + seg).to(tl.pointer_type(tl.float32)) + offs
        v_ptr = tl.load(v_table_ptr + seg).to(tl.pointer_type(tl.float32)) + offs
        g = tl.load(g_ptr, mask=live, other=0.0).to(tl.float32)
        m = tl.load(m_ptr, mask=live, other=0.0)
        v = tl.load(v_ptr, mask=live, other=0.0)
        p = tl.load(p_ptr, mask=p_live, other=0.0)  # a skipped weight is promised to be 0

        # Same operation order as torch.optim.Adam's single-tensor path (lerp with weight < 0.5, addcmul,
        # addcdiv); sqrt_rn/div_rn because the default GPU sqrt and division are approximate.
        m = m + (1.0 - BETA1) * (g - m)
        v = v * BETA2 + ((1.0 - BETA2) * g) * g
        denom = tl.div_rn(tl.sqrt_rn(v), bias_correction2_sqrt) + eps
        p = p + tl.div_rn(-step_size * m, denom)

        keep_f = keep.to(tl.float32)
        if MODE == FROZEN:
            tl.store(p_ptr, p, mask=live)
            tl.store(m_ptr, m, mask=live)
            tl.store(v_ptr, v, mask=live)
        else:
            # Multiplying (not selecting) keeps the reference's p.mul_(mask) semantics, NaN * 0 included.
            tl.store(p_ptr, p * keep_f, mask=p_live)
            if MODE == RESET:
                m = m * keep_f
                v = v * keep_f
            tl.store(m_ptr, m, mask=inb)
            tl.store(v_ptr, v, mask=inb)
    if MODE == FROZEN and not PRUNED_ARE_ZERO:
        tl.store(p_ptr, tl.zeros([BLOCK], dtype=tl.float32), mask=inb & ~keep)


# --- launcher ---------------------------------------------------------------------------------------------


def _masked_adam_launch(params, grads, exp_avgs, exp_avg_sqs, masks, step_t, step: int, lr: float, beta1: float,
                        beta2: float, eps: float, moments: str, pruned_are_zero: bool, block: int) -> None:
    """The single launch; inputs already validated."""
    device = params[0].device
    plan, n_blocks = _utils.block_plan([p.numel() for p in params], block, device)
    if n_blocks == 0:
        return
    tables = [_utils.pointer_table(seq, device) for seq in (params, grads, exp_avgs, exp_avg_sqs, masks)]
    _masked_adam_kernel[(n_blocks,)](
        *tables, plan, n_blocks, len(params), step_t if step_t is not None else tables[0], step, lr, eps,
        BETA1=beta1, BETA2=beta2, GRAD_DTYPE=_utils.triton_dtype(grads[0].dtype), STEP_ON_DEVICE=step_t is not None,
        MODE=_MODE_ID[moments], PRUNED_ARE_ZERO=pruned_are_zero, BLOCK=block, num_warps=NUM_WARPS)


# --- torch.library registration ---------------------------------------------------------------------------
# Opaque custom op (not `triton_op`): the kernel reads a device table of data pointers, which Inductor can't
# build from fake tensors. torch.compile sees one node with declared mutations (no graph break), and CUDA
# graphs capture the single launch.


@torch.library.custom_op("prunerl::masked_adam_", mutates_args=("params", "exp_avgs", "exp_avg_sqs"))
def _masked_adam_op(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                    exp_avg_sqs: list[torch.Tensor], masks: list[torch.Tensor | None], step_t: torch.Tensor | None,
                    step: int, lr: float, beta1: float, beta2: float, eps: float, moments: str,
                    pruned_are_zero: bool, block: int) -> None:
    _masked_adam_launch(params, grads, exp_avgs, exp_avg_sqs, masks, step_t, step, lr, beta1, beta2, eps, moments,
                        pruned_are_zero, block)


@_masked_adam_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, masks, step_t, step, lr, beta1, beta2, eps, moments, pruned_are_zero,
      block) -> None:
    return None


# --- public function --------------------------------------------------------------------------------------


def masked_adam_triton_(params, grads, exp_avgs, exp_avg_sqs, masks, *, step, lr: float, beta1: float = 0.9,
                        beta2: float = 0.999, eps: float = 1e-8, moments: str = "faithful",
                        pruned_are_zero: bool = False, block: int = ADAM_BLOCK) -> None:
    """In-place masked Adam step on every tensor in one launch (see the module docstring).

    step: 1-based step count after this update; an int, or a 0-d tensor on the params' device.
    pruned_are_zero: promise that pruned weights are already exactly 0, so their weights are not touched.
    block: elements per program (a tuning knob; tests shrink it to get many blocks per tensor).
    """
    params, grads, exp_avgs, exp_avg_sqs, masks = map(list, (params, grads, exp_avgs, exp_avg_sqs, masks))
    if len(params) == 0:
        return
    check_adam_inputs(params, grads, exp_avgs, exp_avg_sqs, masks, moments)
    device = params[0].device
    for i, (p, g, m, v, mask) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, masks)):
        for name, t, dtypes in (("params", p, (torch.float32,)), ("grads", g, (grads[0].dtype,)),
                                ("exp_avgs", m, (torch.float32,)), ("exp_avg_sqs", v, (torch.float32,)),
                                ("masks", mask, (torch.bool, torch.uint8))):
            if t is not None:
                _utils.check_tensor(t, f"{name}[{i}]", device, dtypes)
    if isinstance(step, torch.Tensor):
        if step.numel() != 1 or step.device != device:
            raise ValueError(f"step must be an int or a one-element tensor on {device}; got shape "
                             f"{tuple(step.shape)} on {step.device}")
        step_t, step = step.reshape(()), 1
    else:
        step_t, step = None, int(step)
        if step < 1:
            raise ValueError(f"masked_adam_: step must be >= 1 (1-based, after increment); got {step}")
    if step >= 2**32:
        raise ValueError(f"step {step} is out of range")
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    with torch.no_grad():  # params are leaves that require grad
        torch.ops.prunerl.masked_adam_(params, grads, exp_avgs, exp_avg_sqs, masks, step_t, step, float(lr),
                                       float(beta1), float(beta2), float(eps), moments, bool(pruned_are_zero), block)
