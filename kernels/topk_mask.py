"""Per-tensor magnitude top-k masks for all prunable tensors at once: a segmented radix select.

Op: for each weight tensor w_i (a "segment") and keep count k_i, mask_i has exactly k_i True entries at
the largest |w_i|; ties are broken by lower flat index. Bit-identical to
`kernels.reference.topk_magnitude_masks_ref` (a stable descending sort).

Key idea: for float32, the bit pattern of |w| (sign bit cleared) is a 31-bit integer that orders exactly
like |w|. NaN patterns lie above +Inf, which is the reference's NaN rule; all NaNs are canonicalised to one
pattern so that, as in the sort, they tie with each other and fall back to index order. fp16/bf16 weights
are converted to fp32 first (exact), -0.0 becomes +0.0 like `abs`.

Algorithm, per segment, all segments in the same launches (a fixed 10 launches whatever the layer count):
  1. Radix passes over the 31 bits as digits of 11, 10, 10 bits (high to low). Pass p builds a histogram of
     digit p over the elements whose higher digits equal the prefix chosen so far (`_radix_hist_kernel`,
     one block-local `tl.histogram` per program, flushed with atomics to the segment's global histogram),
     then `_radix_select_kernel` (one program per segment) picks the digit b holding the k-th largest
     element: the largest b with count(digit >= b) >= k; k -= count(digit > b); prefix = prefix·b.
     After 3 passes prefix = T, the bit pattern of the k-th largest |w|, and k = need_eq >= 1, the number
     of elements equal to T that are kept. k = 0 selects T = 0x7FFFFFFF, a pattern no canonical input has,
     with need_eq = 0: the mask is empty without a special case.
  2. If fewer elements equal T than exist (a tie at the threshold), the first need_eq of them in flat order
     are kept: `_tie_count_kernel` counts them per block and `_tie_scan_kernel` turns the counts into each
     block's exclusive prefix within its segment. Segments without a tie skip both (no memory traffic).
  3. `_mask_write_kernel`: keep = bits > T, or bits == T with rank among equals <= need_eq. Optionally
     zeroes the pruned weights and the Adam moments of pruned weights in place ("reset" moments at a mask
     update), so the whole mask update is one op.

Nothing inside waits on the device: keep counts may be an int tensor on the weights' device (clamped to
[0, numel] in the kernel, since validating them would need a sync; lists and tensors elsewhere are
validated and raise like the reference). The op is CUDA-graph capturable after one warm-up call with the
same arguments (device tables are cached, see `kernels._utils`). Registered as the custom op
`torch.ops.prunerl.topk_magnitude_masks_` (opaque to torch.compile, declared mutations).

Shapes/dtypes: weights fp32, fp16 or bf16 (one dtype per call), contiguous, any shape, <= 2**31-1
elements each; masks bool of the same shapes (written into `out=` when given).
Traffic (no ties at T): 3 histogram reads + 1 read and a 1-byte mask write ~= 4.25 fp32 reads of the
weights. The next lever is AIR-top-k candidate compaction (pass 2 and 3 over the threshold bucket only).
Caveats: untuned and unmeasured on GPU (block size, warps); the histogram flush uses global atomics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from kernels import _utils
from kernels.reference import _check_keep_counts

# Radix digits of the 31-bit |w| pattern, high to low: 3 passes; 2**11 bins keep the block-local
# histogram small enough for shared memory.
RADIX_BITS = (11, 10, 10)
HIST_BINS = 2 ** max(RADIX_BITS)
# Elements per program for the streaming kernels: large enough to amortise the sparse histogram flush
# (a block of Gaussian weights touches ~100-200 of the 2048 bins), small enough for many programs per SM.
TOPK_BLOCK = 4096
NUM_WARPS = 8
# Blocks per iteration of the per-segment tie scan (a 50M-element segment has ~12k blocks).
SCAN_CHUNK = 1024
# |NaN| canonical pattern (quiet NaN); above +Inf (0x7F800000) and below the k = 0 sentinel 0x7FFFFFFF.
# (Globals read inside kernels must be tl.constexpr.)
CANONICAL_NAN = tl.constexpr(0x7FC00000)

# Rows of the int32 per-segment state written by the select kernels: the threshold prefix, the count still
# to keep (need_eq after the last pass), and whether the threshold has more equal elements than are kept.
_PREFIX, _K_LEFT, _TIE = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)

# --- kernels ----------------------------------------------------------------------------------------------


@triton.jit
def _abs_bits(w_addr, offs, inb, DTYPE: tl.constexpr):
    """Canonical 31-bit |w| patterns of one block (int32; 0 for lanes outside the tensor)."""
    w = tl.load(w_addr.to(tl.pointer_type(DTYPE)) + offs, mask=inb, other=0.0).to(tl.float32)
    # Clearing the sign bit is |w| without arithmetic, so subnormals are never flushed.
    bits = w.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return tl.where(bits > 0x7F800000, CANONICAL_NAN, bits)


@triton.jit
def _radix_hist_kernel(w_table_ptr, plan_ptr, state_ptr, hist_ptr, n_blocks, n_seg,
                       DTYPE: tl.constexpr, SHIFT: tl.constexpr, DIGIT_BITS: tl.constexpr, FIRST: tl.constexpr,
                       BLOCK: tl.constexpr, HIST_STRIDE: tl.constexpr):
    pid = tl.program_id(0)
    seg = tl.load(plan_ptr + pid)
    offs = tl.load(plan_ptr + n_blocks + pid) + tl.arange(0, BLOCK)
    inb = offs < tl.load(plan_ptr + 2 * n_blocks + 2 * n_seg + seg)
    bits = _abs_bits(tl.load(w_table_ptr + seg), offs, inb, DTYPE)
    live = inb
    if not FIRST:
        # Only elements whose higher digits match the prefix chosen by the previous passes compete.
        live = live & ((bits >> (SHIFT + DIGIT_BITS)) == tl.load(state_ptr + _PREFIX * n_seg + seg))
    digit = (bits >> SHIFT) & ((1 << DIGIT_BITS) - 1)
    hist = tl.histogram(digit, 1 << DIGIT_BITS, mask=live)
    bins = tl.arange(0, 1 << DIGIT_BITS)
    # Flush only the non-empty bins: most blocks touch a small fraction of them.
    tl.atomic_add(hist_ptr + seg * HIST_STRIDE + bins, hist, mask=hist > 0, sem="relaxed")


@triton.jit
def _radix_select_kernel(hist_ptr, state_ptr, keep_ptr, plan_ptr, n_blocks, n_seg,
                         DIGIT_BITS: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr,
                         HIST_STRIDE: tl.constexpr):
    seg = tl.program_id(0)
    bins = tl.arange(0, 1 << DIGIT_BITS)
    hist = tl.load(hist_ptr + seg * HIST_STRIDE + bins)
    if FIRST:
        n = tl.load(plan_ptr + 2 * n_blocks + 2 * n_seg + seg).to(tl.int64)
        # Device keep counts are not validated on the host (that would sync): clamp instead.
        k = tl.minimum(tl.maximum(tl.load(keep_ptr + seg).to(tl.int64), 0), n).to(tl.int32)
        prefix = tl.zeros([], dtype=tl.int32)
    else:
        prefix = tl.load(state_ptr + _PREFIX * n_seg + seg)
        k = tl.load(state_ptr + _K_LEFT * n_seg + seg)
    # at_least[b] = number of competing elements with digit >= b (non-increasing in b; at_least[0] >= k).
    at_least = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist
    # The k-th largest element sits in the largest digit b with at_least[b] >= k. With k = 0 that is the
    # top digit and nothing is above it, so k stays 0 and the prefix ends as all ones (the empty mask).
    b = tl.sum((at_least >= k).to(tl.int32), 0) - 1
    in_b = tl.sum(tl.where(bins == b, hist, 0), 0)
    above_b = tl.sum(tl.where(bins == b, at_least, 0), 0) - in_b
    k = k - above_b
    tl.store(state_ptr + _PREFIX * n_seg + seg, (prefix << DIGIT_BITS) | b)
    tl.store(state_ptr + _K_LEFT * n_seg + seg, k)
    if LAST:
        # in_b elements equal the threshold T; k of them are kept. Only a strict surplus needs the
        # index-ordered tie break.
        tl.store(state_ptr + _TIE * n_seg + seg, (in_b > k).to(tl.int32))


@triton.jit
def _tie_count_kernel(w_table_ptr, plan_ptr, state_ptr, eq_count_ptr, n_blocks, n_seg,
                      DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    seg = tl.load(plan_ptr + pid)
    if tl.load(state_ptr + _TIE * n_seg + seg) != 0:
        offs = tl.load(plan_ptr + n_blocks + pid) + tl.arange(0, BLOCK)
        inb = offs < tl.load(plan_ptr + 2 * n_blocks + 2 * n_seg + seg)
        bits = _abs_bits(tl.load(w_table_ptr + seg), offs, inb, DTYPE)
        is_eq = inb & (bits == tl.load(state_ptr + _PREFIX * n_seg + seg))
        tl.store(eq_count_ptr + pid, tl.sum(is_eq.to(tl.int32), 0))


@triton.jit
def _tie_scan_kernel(plan_ptr, state_ptr, eq_count_ptr, eq_before_ptr, n_blocks, n_seg, CHUNK: tl.constexpr):
    seg = tl.program_id(0)
    if tl.load(state_ptr + _TIE * n_seg + seg) != 0:
        first = tl.load(plan_ptr + 2 * n_blocks + seg)
        count = tl.load(plan_ptr + 2 * n_blocks + n_seg + seg)
        running = tl.zeros([], dtype=tl.int32)
        # Exclusive scan of the per-block counts, in block (= flat index) order.
        for c in range(0, count, CHUNK):
            idx = c + tl.arange(0, CHUNK)
            ok = idx < count
            x = tl.load(eq_count_ptr + first + idx, mask=ok, other=0)
            tl.store(eq_before_ptr + first + idx, running + tl.cumsum(x, 0) - x, mask=ok)
            running += tl.sum(x, 0)


@triton.jit
def _mask_write_kernel(w_table_ptr, out_table_ptr, m_table_ptr, v_table_ptr, plan_ptr, state_ptr, eq_before_ptr,
                       n_blocks, n_seg, DTYPE: tl.constexpr, ZERO_WEIGHTS: tl.constexpr,
                       ZERO_MOMENTS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    seg = tl.load(plan_ptr + pid)
    offs = tl.load(plan_ptr + n_blocks + pid) + tl.arange(0, BLOCK)
    inb = offs < tl.load(plan_ptr + 2 * n_blocks + 2 * n_seg + seg)
    w_addr = tl.load(w_table_ptr + seg)
    bits = _abs_bits(w_addr, offs, inb, DTYPE)
    threshold = tl.load(state_ptr + _PREFIX * n_seg + seg)
    keep_eq = inb & (bits == threshold)
    if tl.load(state_ptr + _TIE * n_seg + seg) != 0:
        # 1-based rank of each tied element in flat order; keep the first need_eq.
        rank = tl.load(eq_before_ptr + pid) + tl.cumsum(keep_eq.to(tl.int32), 0)
        keep_eq = keep_eq & (rank <= tl.load(state_ptr + _K_LEFT * n_seg + seg))
    keep = (bits > threshold) | keep_eq
    tl.store(tl.load(out_table_ptr + seg).to(tl.pointer_type(tl.int1)) + offs, keep, mask=inb)
    pruned = inb & ~keep
    if ZERO_WEIGHTS:
        # Write-only: kept weights are untouched, pruned ones become +0.0.
        tl.store(w_addr.to(tl.pointer_type(DTYPE)) + offs, tl.zeros([BLOCK], dtype=DTYPE), mask=pruned)
    if ZERO_MOMENTS:
        zeros = tl.zeros([BLOCK], dtype=tl.float32)
        tl.store(tl.load(m_table_ptr + seg).to(tl.pointer_type(tl.float32)) + offs, zeros, mask=pruned)
        tl.store(tl.load(v_table_ptr + seg).to(tl.pointer_type(tl.float32)) + offs, zeros, mask=pruned)


# --- launcher ---------------------------------------------------------------------------------------------


def _topk_launch(weights, keep_t, out, zero_pruned: bool, exp_avgs, exp_avg_sqs, block: int) -> None:
    """All launches of one mask update; inputs already validated. Writes `out` (and weights/moments)."""
    device = weights[0].device
    n_seg = len(weights)
    plan, n_blocks = _utils.block_plan([w.numel() for w in weights], block, device)
    if n_blocks == 0:  # every tensor is empty: nothing to write
        return
    dtype = _utils.triton_dtype(weights[0].dtype)
    w_table = _utils.pointer_table(weights, device)
    zero_moments = len(exp_avgs) > 0
    hist = torch.zeros((len(RADIX_BITS), n_seg, HIST_BINS), dtype=torch.int32, device=device)
    state = torch.empty((3, n_seg), dtype=torch.int32, device=device)
    shift = 31
    for p, digit_bits in enumerate(RADIX_BITS):
        shift -= digit_bits
        first, last = p == 0, p == len(RADIX_BITS) - 1
        _radix_hist_kernel[(n_blocks,)](w_table, plan, state, hist[p], n_blocks, n_seg, DTYPE=dtype, SHIFT=shift,
                                        DIGIT_BITS=digit_bits, FIRST=first, BLOCK=block, HIST_STRIDE=HIST_BINS,
                                        num_warps=NUM_WARPS)
        _radix_select_kernel[(n_seg,)](hist[p], state, keep_t, plan, n_blocks, n_seg, DIGIT_BITS=digit_bits,
                                       FIRST=first, LAST=last, HIST_STRIDE=HIST_BINS, num_warps=4)
    eq_count = torch.empty(n_blocks, dtype=torch.int32, device=device)
    eq_before = torch.empty(n_blocks, dtype=torch.int32, device=device)
    _tie_count_kernel[(n_blocks,)](w_table, plan, state, eq_count, n_blocks, n_seg, DTYPE=dtype, BLOCK=block,
                                   num_warps=NUM_WARPS)
    _tie_scan_kernel[(n_seg,)](plan, state, eq_count, eq_before, n_blocks, n_seg, CHUNK=SCAN_CHUNK, num_warps=4)
    moments_tables = ((_utils.pointer_table(exp_avgs, device), _utils.pointer_table(exp_avg_sqs, device))
                      if zero_moments else (w_table, w_table))  # unused placeholders when not zeroing
    _mask_write_kernel[(n_blocks,)](w_table, _utils.pointer_table(out, device), *moments_tables, plan, state,
                                    eq_before, n_blocks, n_seg, DTYPE=dtype, ZERO_WEIGHTS=zero_pruned,
                                    ZERO_MOMENTS=zero_moments, BLOCK=block, num_warps=NUM_WARPS)


# --- torch.library registration ---------------------------------------------------------------------------
# An opaque custom op rather than `triton_op`: the kernels reach their tensors through a device pointer
# table built from `data_ptr()`, which Inductor can't trace with fake tensors. To torch.compile the op is a
# single node with declared mutations (no graph break); CUDA graphs capture its launches as they are.


@torch.library.custom_op("prunerl::topk_magnitude_masks_", mutates_args=("weights", "out", "exp_avgs", "exp_avg_sqs"))
def _topk_op(weights: list[torch.Tensor], keep_counts: torch.Tensor, out: list[torch.Tensor], zero_pruned: bool,
             exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], block: int) -> None:
    _topk_launch(weights, keep_counts, out, zero_pruned, exp_avgs, exp_avg_sqs, block)


@_topk_op.register_fake
def _(weights, keep_counts, out, zero_pruned, exp_avgs, exp_avg_sqs, block) -> None:
    return None


# --- public function --------------------------------------------------------------------------------------


def _keep_counts_tensor(weights: Sequence[torch.Tensor], keep_counts, device: torch.device) -> torch.Tensor:
    if isinstance(keep_counts, torch.Tensor) and keep_counts.device == device:
        if keep_counts.dim() != 1 or keep_counts.numel() != len(weights):
            raise ValueError(f"keep_counts must be a 1-D tensor of {len(weights)} counts, got shape "
                             f"{tuple(keep_counts.shape)}")
        if keep_counts.dtype.is_floating_point or keep_counts.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise TypeError(f"keep_counts must be an integer tensor, got {keep_counts.dtype}")
        return keep_counts.contiguous()
    # Host counts are free to validate (and raise exactly like the reference).
    counts = _check_keep_counts(weights, keep_counts)
    if torch.compiler.is_compiling():  # traced: a constant in the graph, no cache lookup
        return torch.tensor(counts, dtype=torch.int64, device=device)
    return _utils.device_ints(counts, torch.int64, device)


def topk_magnitude_masks_triton(weights: Sequence[torch.Tensor], keep_counts, *, out=None, zero_pruned: bool = False,
                                exp_avgs=None, exp_avg_sqs=None, block: int = TOPK_BLOCK) -> list[torch.Tensor]:
    """Bool masks keeping the `keep_counts[i]` largest |w| of each tensor (ties: lower flat index).

    keep_counts: ints or a host tensor (validated like the reference), or a 1-D integer tensor on the
    weights' device (clamped to [0, numel] in the kernel instead: no host sync, CUDA-graph capturable).
    out: optional list of bool tensors (same shapes) written in place and returned.
    zero_pruned: also set the pruned weights to 0 in place.
    exp_avgs / exp_avg_sqs: optional fp32 Adam moments, zeroed at the pruned entries in place (the "reset"
        moments option applied at the mask update). Give both or neither.
    block: elements per program (a tuning knob; tests shrink it to get many blocks per tensor).
    """
    weights = list(weights)
    if len(weights) == 0:
        return []
    device = weights[0].device
    if weights[0].dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"weights[0] has dtype {weights[0].dtype}; the Triton kernel supports float32, float16 "
                        "and bfloat16 (use kernels.reference for others)")
    for i, w in enumerate(weights):
        _utils.check_tensor(w, f"weights[{i}]", device, (weights[0].dtype,))
    if (exp_avgs is None) != (exp_avg_sqs is None):
        raise ValueError("give both exp_avgs and exp_avg_sqs, or neither")
    exp_avgs, exp_avg_sqs = list(exp_avgs or []), list(exp_avg_sqs or [])
    for name, seq in (("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        if seq and len(seq) != len(weights):
            raise ValueError(f"got {len(weights)} weights but {len(seq)} {name}")
        for i, (t, w) in enumerate(zip(seq, weights)):
            _utils.check_tensor(t, f"{name}[{i}]", device, (torch.float32,))
            if t.shape != w.shape:
                raise ValueError(f"{name}[{i}] has shape {tuple(t.shape)}, weights[{i}] has {tuple(w.shape)}")
    if out is None:
        out = [torch.empty(w.shape, dtype=torch.bool, device=device) for w in weights]
    else:
        out = list(out)
        if len(out) != len(weights):
            raise ValueError(f"got {len(weights)} weights but {len(out)} out masks")
        for i, (o, w) in enumerate(zip(out, weights)):
            _utils.check_tensor(o, f"out[{i}]", device, (torch.bool,))
            if o.shape != w.shape:
                raise ValueError(f"out[{i}] has shape {tuple(o.shape)}, weights[{i}] has {tuple(w.shape)}")
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    keep_t = _keep_counts_tensor(weights, keep_counts, device)
    with torch.no_grad():  # the op mutates leaves that may require grad (parameters)
        torch.ops.prunerl.topk_magnitude_masks_(weights, keep_t, out, zero_pruned, exp_avgs, exp_avg_sqs, block)
    return out
