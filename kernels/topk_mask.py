"""Per-tensor magnitude top-k masks for all prunable tensors at once: a segmented radix select that, on a
repeated call (GMP's mask updates), reads the weights once and histograms only a few percent of them.

Op: for each weight tensor w_i (a "segment") and keep count k_i, mask_i has exactly k_i True entries at
the largest |w_i|; ties are broken by lower flat index. Bit-identical to
`kernels.reference.topk_magnitude_masks_ref` (a stable descending sort).

Key idea: for float32, the bit pattern of |w| (sign bit cleared) is a 31-bit integer that orders exactly
like |w|. NaN patterns lie above +Inf, which is the reference's NaN rule; all NaNs are canonicalised to one
pattern so that, as in the sort, they tie with each other and fall back to index order. fp16/bf16 weights
are converted to fp32 first (exact), -0.0 becomes +0.0 like `abs`. The threshold T is the pattern of the
k-th largest |w|. Every call narrows it to an interval of patterns [LO, HI] with HI - LO < 2**20 and
above <= k <= above + candidates (above: the elements > HI, all kept; candidates: those in [LO, HI]), then
finds T among the candidates by two 10-bit digits of (pattern - LO).

Why not a histogram of every element: with the `tl.histogram` lowering of the Triton releases we run on
(a warp ballot per bit of the bin index, then a popcount and a shared-memory add per bin a lane owns), a
histogram costs each warp ~bins / 32 popcounts per element it holds; 2048 bins over every element made the
full read compute-bound (~12 warp-instructions per element in PTX, measured 42x one read on an H100). So
the warm path histograms only the candidates, only the slots they use, and with 2-warp programs.

Algorithm, all segments in the same seven launches (each program handles BLOCK elements of one segment;
"the last block" of a segment is the program that finds, by an atomic counter, that all the segment's
blocks of this launch are done: it alone takes the segment's decision, so no launch is spent on choosing):
  0. `_prepare_kernel` (a program per segment): clamps k, resets the workspace, and makes the warm-start
     guess: [LO, HI] = C -/+ 2**span, where C is the previous call's T moved by the change of k at the
     density of patterns seen around it (GMP changes k at every update), and span adapts (both kept in the
     workspace; see SPAN_*).
  1. `_guess_kernel`, the one full read (only with a guess): counts the elements above HI, writes the mask
     of every element (kept iff pattern > HI), and compacts the candidates, in flat order, into the block's
     slots (one int32 each: pattern - LO above the position in the block). It has no last block: its
     programs add their counts and exit without waiting (see `_guess_verdict`).
  2. `_cold_kernel`: first the guesses' verdicts, above <= k <= above + candidates, which program 0
     records. Then, only where there was no guess (first call, warm_start=False) or it was wrong: the
     histogram of the top 11 bits of every element (a grid-stride loop over a program per SM); its last
     block picks the bucket b1 holding rank k: [LO, HI] = b1's 2**20 patterns. When no segment needs it,
     its programs exit after the verdicts.
  3. `_digit2_kernel`: the histogram of (pattern - LO) >> 10 over the candidates. Where the guess held it
     reads only the used slots; on the cold path it reads the weights again, writes the mask (kept iff
     pattern > HI) and compacts the candidates. The last block picks the digit b2.
  4. `_digit3_kernel`: the histogram of (pattern - LO) & 1023 over the candidates matching b2; the last
     block picks T, and need_eq = how many elements equal to T are kept. When k = above (no candidate is
     kept, e.g. k = 0), T = HI + 1: kept iff pattern >= HI + 1, with no tie break. It also sizes the next
     guess from where T fell in this one.
  5. `_tie_kernel`, only where more elements equal T than are kept: counts them per block (among the
     candidates), and the last block turns the counts into each block's exclusive prefix. Pass 4 counts
     the segments that need it, so when none does its programs exit at once; the fix-up zeroes the count.
  6. `_fixup_kernel`: each candidate's mask entry (written False by pass 1 or 3, so only the kept ones are
     written): kept iff pattern > T, or == T with rank among equals (flat order) <= need_eq. With
     `zero_pruned` or moments to zero, it instead rewrites whole blocks from the weights (one more read)
     and zeroes the pruned entries in place.
Passes 3-6 run with CAND_WARPS warps (a program per block, or CAND_PROGRAMS_PER_SM per SM looping over
blocks) and loop over the used slots CAND_CHUNK at a time. A block whose
candidates overflow its slots (more than `slots` of its BLOCK elements in [LO, HI]) keeps counting them
and, in passes 3-6, reads its weights (CAND_PIECE at a time) instead of its slots: always correct, slower.

Traffic (fp32, no tie at T): warm 4 bytes read + 1 written per element, plus ~16 bytes per candidate (a
slot written once and read three times; Gaussian weights at 50-99% sparsity and span 18: 2.0 / 1.3 / 0.7
/ 0.4% of the elements at 50 / 90 / 95 / 99%); cold (first call, warm_start=False or a wrong guess) 8 + 1
(+ 4 + 1 for a wrong guess's pass 1) + ~12 per candidate (the top-digit bucket of T: 4.0 / 2.4 / 1.5 /
0.7%). Compute, from the PTX for sm_90 (triton 3.6) with ~30 candidates per 4096-element block: the warm
path issues ~2 warp-instructions per element (the full read ~1.44 with aligned pointers, see VEC, 1.47
with the last-block check it had until git aa9e7ba, ~1.8 before rows of VEC; each digit pass ~0.2, the
fix-up ~0.07), against ~17 before this design (12 in the full read's 2048-bin histogram). At that count an
H200 (132 SMs x 4 schedulers x 1.98 GHz) would issue the full read of 50M in ~70 us, against at most 202
us measured (git 484c6fe7; an upper bound: that anatomy's events also timed the host's launch cost) and 59
us for one read: it looks latency-bound, not issue-bound, with 3 programs per SM that each wait on their
loads, their scans and (until git aa9e7ba) the last-block atomic. The warm
start is a guess: a wrong one costs the cold path, never a wrong mask.
Registers (ptxas, sm_90, triton 3.6, no local memory): the full read 72 per thread (fp32, aligned; capped
at GUESS_MAX_REGISTERS: 3 programs of 8 warps per SM), the candidate passes 63-211 (1 warp each), the cold
histogram 179-185 (1 program of 8 warps per SM).
Tuning: block, warps and slots from the H100 knob sweep, one knob at a time (bench/tune_kernels.py; the
guess spans are untuned). Measured there at 50M / 95%: 0.54-0.60 ms, ~8x one read of the weights, most of
it in the full read (~240 us, issue-bound) and the two digit passes (~290 us together, eager, before they
used per-candidate atomics).
Caveats: histograms are flushed with
global atomics; the last-block pattern relies on a barrier + acq_rel atomic (CUDA's threadfence
reduction), which the interpreter can't exercise concurrently.

Nothing inside waits on the host: keep counts may be an int tensor on the weights' device (clamped to
[0, numel] in the kernel, since validating them would need a sync; lists and tensors elsewhere are
validated and raise like the reference). The op is CUDA-graph capturable after one warm-up call with the
same arguments (launch plans are cached, see `kernels._utils`); a captured graph warm-starts from the
workspace it shares with eager calls. Registered as the custom op `torch.ops.prunerl.topk_magnitude_masks_`
(opaque to torch.compile, declared mutations); eager calls launch directly from the cached plan.
Shapes/dtypes: weights fp32, fp16 or bf16 (one dtype per call), contiguous, any shape, <= 2**31-1
elements each; masks bool of the same shapes (written into `out=` when given).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from kernels import _utils
from kernels.reference import _check_keep_counts, check_count_dtype, check_mask_aliasing, check_mask_outputs

# Elements per program: large enough to amortise the sparse histogram flush (a block of Gaussian weights
# touches ~100-200 of the 2048 top-digit bins), small enough for many programs per SM.
TOPK_BLOCK = 4096
NUM_WARPS = 8
# The full read's elements per thread row: 4 consecutive ones, so that where every base pointer is aligned
# (ALIGNED, checked on the host) a thread loads them as one 128-bit vector (64-bit for 16-bit weights) and
# stores their mask bytes as one word; the candidates' flat-order prefix is then a scan along each row (in
# registers) plus one over the rows. Static counts for sm_90 (triton 3.6, fp32, `bench/ptx_counts.py`): a
# full block runs 753 PTX instructions per thread with 6 barriers, against 922 with 18 for the flat block
# with `_flat_prefix` and 16 scalar loads and byte stores, which the H100 timed at 242 us for 50M (this
# design: ~200 us on the H200 at 484c6fe7, whose one read takes 59). Unaligned weights or masks keep scalar
# accesses and cost more than before (24 barriers).
VEC = tl.constexpr(4)
# With both the full-block and the bounds-checked accesses compiled in, the full read takes 112-116 registers:
# two programs of 8 warps per SM where the measured design (80) had three. For fp32 weights with aligned
# pointers (what torch's allocator gives, and what was measured) ptxas fits it in 80 without local memory
# (72 with triton 3.6, 79 with 3.9; the compile test checks); the other variants spill under the cap with
# triton 3.9 (16-32 bytes), so they run uncapped.
GUESS_MAX_REGISTERS = 80


# Off (what was measured): the full read's row q is elements VEC*q.., and a thread holds rows t, t + 256, ...,
# so its flat-order scan over 1,024 rows costs each thread four warp scans and their cross-warp step. On: a
# thread's rows are consecutive in flat order (rows 4t..4t+3 = its 16 elements), so the scan runs on one value
# per thread: 626 PTX instructions per thread to the exit instead of 736 and 9 shuffles instead of 27 (sm_90,
# triton 3.6, fp32, aligned), 1.22 warp-instructions per element. Its loads are still 128-bit vectors, but a
# warp's lanes read 64 bytes apart (each instruction touches 16 lines, not 4; the bytes read are the same).
# Unmeasured on a GPU: a knob of bench/tune_kernels.py. Only with aligned pointers: the scalar accesses of the
# unaligned variant then go through shared memory (26 barriers). Under the interpreter, GUESS_INTERPRETER_THREADS
# stands for the threads, so that the tests' small blocks hold several rows per "thread".
GUESS_THREAD_MAJOR = False
GUESS_INTERPRETER_THREADS = 4


def guess_threads(block: int, aligned: bool, device: torch.device) -> int:
    """The full read's THREADS: among how many threads its BLOCK // VEC rows are shared, each thread holding
    (BLOCK // VEC) // THREADS consecutive ones; THREADS = BLOCK // VEC is a row each, the measured layout
    (see GUESS_THREAD_MAJOR)."""
    rows = block // VEC.value
    if not (GUESS_THREAD_MAJOR and aligned):
        return rows
    return min(rows, 32 * NUM_WARPS if device.type == "cuda" else GUESS_INTERPRETER_THREADS)


def guess_max_registers(aligned: bool, w_bytes: int) -> int | None:
    """The full read's register cap (`maxnreg`) for its variant; None: ptxas's choice."""
    return GUESS_MAX_REGISTERS if aligned and w_bytes == 4 else None

# Tried and measured: the full read as a grid-stride loop over 2, 3 or 6 programs per SM with the next block's
# weights prefetched (git d7a7cb8b). On the H200 it took 16 spilled registers under this cap and was no faster:
# at Impala w3 in a graph 1.00-1.07x the time of a program per block, and at 50M within the sweep's noise
# (bench/results/h200_d7a7cb8b/tune). A program per block stays.
# Candidate slots per block, as a fraction of BLOCK: a few % of the elements are candidates, so 1/4 rarely
# overflows.
SLOTS_PER_BLOCK = 4
# The passes after the full read (a few dozen candidates per block) run with few warps: small programs fit many
# per SM (they are latency-bound). They loop over the used slots CHUNK at a time (one per thread), and read a
# block's weights, where they must, PIECE at a time (16 per thread, as the full read). One warp: the H100 knob
# sweep (bench/results/h100-80gb-hbm3_4ffe5cda/tune) timed it at 0.89x of two warps' time at 50M / 95% and
# 0.91x at Impala w3 in a graph; four warps took 1.2-1.3x.
# Candidate atomics: from the slots, the digit passes add each candidate to its global bin with an atomic
# instead of a block histogram flushed bin by bin. A 1,024-bin `tl.histogram` costs a program the same
# however few candidates it holds (ballots per bin bit, zeroing and flushing 1,024 bins): that made the two
# digit passes 161 + 131 us of the 614 at 50M / 95% on the H100 (kernels.json `anatomy_us`, git 4ffe5cda),
# for ~0.7% of the elements. The paths that read the weights (cold, overflowing slots) keep the histogram.
CAND_WARPS = 1
CAND_CHUNK = 32 * CAND_WARPS
CAND_PIECE = 16 * 32 * CAND_WARPS
# Programs of the candidate passes (digits 2 and 3, tie, fix-up): > 0 = that many per SM, each looping over
# blocks (grid-stride); 0 = one per block (~12k one-warp programs at 50M, whose dispatch is most of the time of
# passes this light). The H200 knob sweep (bench/results/h200_484c6fe7/tune) timed 32 per SM at 0.251 ms for
# the 50M set at 95%, against 0.272 at 8 per SM and 0.275 with one per block (the proof of the same commit):
# one eager sample, in a case whose eager timings proved noisy (the sweep now times it in a graph); at Impala
# w3 in a graph, neutral in both sweeps (0.0573-0.0590 ms every way). Under the interpreter a few programs
# when > 0.
CAND_PROGRAMS_PER_SM = 32
CAND_INTERPRETER_PROGRAMS = 3
# Programs of the cold path's grid-stride histogram: at ~184 registers per thread one program of 8 warps is
# resident per SM, so more would only queue. Idle (no segment needs it), they exit at once: on the H100 at
# 4ffe5cda, 1,024 programs that each walked their blocks to find nothing to do took 43 us at 50M. Under the
# interpreter a few, so that the tests walk the grid-stride loop.
COLD_PROGRAMS_PER_SM = 1
COLD_INTERPRETER_PROGRAMS = 3
# Segments per turn of the cold kernel's loop over the guesses' verdicts (a network has a few dozen).
VERDICT_SEGS = 128
# The warm guess is the predicted threshold -/+ 2**span patterns (span 18: -/+ 3% of |w| at the bottom of a
# binade, -/+ 1.6% at its top). A wrong guess widens the next by 2 (up to 19: the interval must fit two
# 10-bit digits), T in the outer half of a held one by 1; T in its inner quarter with more than
# max(n >> CROWD_SHIFT, CROWD_MIN) candidates narrows it by 1.
SPAN_MIN, SPAN_INIT, SPAN_MAX = tl.constexpr(8), tl.constexpr(18), tl.constexpr(19)
CROWD_SHIFT, CROWD_MIN = tl.constexpr(6), tl.constexpr(256)
# Launches per call.
LAUNCHES = 7
# |NaN| canonical pattern (quiet NaN); above +Inf (0x7F800000). HI stays <= MAX_PATTERN so that HI + 1, the
# threshold when no candidate is kept (k = 0 selects 0x7FFFFFFF, a pattern no canonical input has), fits.
# (Globals read inside kernels must be tl.constexpr.)
CANONICAL_NAN = tl.constexpr(0x7FC00000)
MAX_PATTERN = tl.constexpr(0x7FFFFFFE)
# Digits: the cold path's top 11 bits of the pattern, then two 10-bit digits of (pattern - LO).
D1_SHIFT, D2_SHIFT = tl.constexpr(20), tl.constexpr(10)
BINS1, BINS2 = tl.constexpr(2048), tl.constexpr(1024)
BUCKET1_LAST = tl.constexpr(2**20 - 1)  # a top-digit bucket's last pattern, relative to its first
# A candidate's slot packs its key (pattern - LO, < 2**20) above its position in the block (< 2**12).
POS_BITS = tl.constexpr(12)
POS_MASK, KEY_MASK = tl.constexpr(2**12 - 1), tl.constexpr(2**20 - 1)
MAX_BLOCK = 2**12

# Columns of the int32 per-segment state (one row per segment): keep count; candidate interval [LO, HI]
# (LO > HI: no guess); whether the guess held; the threshold's digit b2, then T; count still to keep among
# the candidates (need_eq at the end); whether T has more equal elements than are kept; elements above HI
# and candidates (pass 1's counts); whether there was a guess (the guess's verdict reads it, not LO > HI,
# which the cold pass rewrites); one "blocks done" counter per pass with a last block. Then the columns
# that outlive a call: whether a previous threshold exists, the previous threshold, the guess's span, and
# the previous keep count and density (candidates over the width of their interval) that predict T's move.
_K, _LO, _HI, _WARM, _PREFIX, _K_LEFT, _TIE, _ABOVE, _CANDS = (tl.constexpr(i) for i in range(9))
_GUESSED = tl.constexpr(9)
_DONE_COLD, _DONE2, _DONE3, _DONE_TIE = (tl.constexpr(i) for i in range(10, 14))
_HAVE_PREV, _PREV_T, _SPAN, _PREV_K, _PREV_CANDS, _PREV_WIDTH = (tl.constexpr(i) for i in range(14, 20))
STATE_COLS = tl.constexpr(20)
# Fewer candidates than this make the density too noisy to predict T's move from.
MIN_DENSITY_CANDS = tl.constexpr(16)
# Per segment: the top-digit and the two candidate-digit histograms side by side (2048 + 1024 + 1024 bins).
SEG_HIST = tl.constexpr(4096)

# --- kernels ----------------------------------------------------------------------------------------------
# Kernel arguments: the block plan's rows (`kernels._utils`) as separate tables, `blk_*` indexed by program
# id and `seg_*` by segment; per-segment state and histograms; per block, the candidate slots and the
# candidate count. (Few helper functions and little scalar arithmetic: each costs the interpreter a lot.)
# Loops with a run-time bound are while loops: range() with one does not run under every release's
# interpreter.


@triton.jit
def _abs_bits(w_addr, offs, inb, DTYPE: tl.constexpr):
    """Canonical 31-bit |w| patterns of one block (int32; 0 for lanes outside the tensor)."""
    return _pattern(tl.load(w_addr.to(tl.pointer_type(DTYPE)) + offs, mask=inb, other=0.0))


@triton.jit
def _pattern(w):
    """Canonical 31-bit |w| patterns of weights (int32)."""
    w = w.to(tl.float32)
    # Clearing the sign bit is |w| without arithmetic, so subnormals are never flushed.
    bits = w.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return tl.where(bits > 0x7F800000, CANONICAL_NAN, bits)


@triton.jit
def _select_digit(hist_ptr, k, BINS: tl.constexpr):
    """(digit b holding the k-th largest, k minus the count above b, count in b) from a global histogram.

    Called by the last block of a segment. The other blocks flushed their histograms with atomics, then
    passed a barrier and bumped the segment's counter with an acq_rel atomic; the last block's acquire
    (its own bump) orders these loads after every flush (CUDA's threadfence-reduction pattern), and .cg
    reads L2, where the atomics landed, not a stale L1 line.
    """
    bins = tl.arange(0, BINS)
    hist = tl.load(hist_ptr + bins, cache_modifier=".cg")
    # at_least[b] = number of competing elements with digit >= b (non-increasing in b; at_least[0] >= k).
    at_least = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist
    # The k-th largest element sits in the largest digit b with at_least[b] >= k (with k = 0: the top one).
    b = tl.sum((at_least >= k).to(tl.int32), 0) - 1
    in_b = tl.sum(tl.where(bins == b, hist, 0), 0)
    above_b = tl.sum(tl.where(bins == b, at_least, 0), 0) - in_b
    return b, k - above_b, in_b


@triton.jit
def _flat_prefix(flags, N: tl.constexpr):
    """(exclusive prefix sums in flat order, total) of a 0/1 int32 vector of 16 <= N <= 4096 entries.

    Used by the cold path's compaction (a block's weights read CAND_PIECE at a time; the full read
    scans rows of VEC instead). `tl.cumsum` costs each thread a warp-shuffle scan per element it holds (16
    per piece). Instead: 16 rows of R = N / 16 elements, whose scans run four at a time, packed in the
    bytes of an int32 (an exclusive prefix within a row is < R <= 256; the int32 arithmetic wraps exactly)."""
    R: tl.constexpr = N // 16
    byte = (tl.arange(0, 4) * 8)[None, :, None]
    packed = tl.sum(tl.reshape(flags, [4, 4, R]) << byte, axis=1)  # [4, R]: rows 4g..4g+3 in the bytes of g
    excl = tl.cumsum(packed, axis=1) - packed
    # Row totals: the last column's exclusive prefix plus its own flag (each a single term: no carries).
    last = tl.arange(0, R)[None, :] == R - 1
    last_excl = tl.sum(tl.where(last, excl, 0), axis=1)[:, None]
    last_own = tl.sum(tl.where(last, packed, 0), axis=1)[:, None]
    row_byte = (tl.arange(0, 4) * 8)[None, :]
    row_total = ((last_excl >> row_byte) & 0xFF) + ((last_own >> row_byte) & 0xFF)  # [4, 4]: row 4g + j
    row_before = tl.cumsum(tl.reshape(row_total, [16]), 0) - tl.reshape(row_total, [16])
    within = (excl[:, None, :] >> byte) & 0xFF  # [4, 4, R]
    prefix = tl.reshape(tl.reshape(row_before, [4, 4])[:, :, None] + within, [N])
    return prefix, tl.sum(tl.reshape(row_total, [16]), 0)


@triton.jit
def _compact(cand, key, local, slot_ptr, base, SLOTS: tl.constexpr):
    """Write the candidates' slots (key << POS_BITS | in-block position, one int32) in flat order from slot
    `base` on; returns their number. (A block's count may exceed SLOTS: it then reads its weights in later
    passes.)"""
    before, n = _flat_prefix(cand.to(tl.int32), cand.shape[0])
    slot = base + before
    tl.store(slot_ptr + slot, (key << POS_BITS) | local, mask=cand & (slot < SLOTS))
    return n


@triton.jit
def _slot_key(slot):
    """A slot's key, pattern - LO (the inverse of `_compact`'s packing; slots are int32, so mask the shift)."""
    return (slot >> POS_BITS) & KEY_MASK


@triton.jit
def _prepare_kernel(seg_numel_ptr, keep_ptr, state_ptr, hist_ptr, WARM_START: tl.constexpr):
    seg = tl.program_id(0)
    st = state_ptr + seg * STATE_COLS
    hs = hist_ptr + seg * SEG_HIST
    n = tl.load(seg_numel_ptr + seg).to(tl.int64)
    # Device keep counts are not validated on the host (that would sync): clamp instead.
    k = tl.minimum(tl.maximum(tl.load(keep_ptr + seg).to(tl.int64), 0), n)
    span = tl.load(st + _SPAN)
    span = tl.where(span == 0, SPAN_INIT, span)  # a new workspace
    lo = tl.full([], 1, tl.int64)
    hi = tl.zeros([], tl.int64)  # lo > hi: no guess
    if WARM_START:
        if tl.load(st + _HAVE_PREV) != 0:
            centre = tl.load(st + _PREV_T).to(tl.int64)
            # GMP changes k between calls: a first-order step from the previous threshold, at the density of
            # patterns around it (ranks per pattern), predicts the new one (k smaller: T higher).
            cands = tl.load(st + _PREV_CANDS).to(tl.int64)
            dk = tl.load(st + _PREV_K).to(tl.int64) - k
            step = dk * tl.load(st + _PREV_WIDTH).to(tl.int64) // tl.maximum(cands, 1)
            centre += tl.where(cands >= MIN_DENSITY_CANDS, step, 0)
            half = tl.full([], 1, tl.int64) << span.to(tl.int64)
            lo = tl.minimum(tl.maximum(centre - half, 0), MAX_PATTERN)
            hi = tl.maximum(tl.minimum(centre + half - 1, MAX_PATTERN), 0)
    tl.store(hs + tl.arange(0, SEG_HIST), tl.zeros([SEG_HIST], tl.int32))
    tl.store(st + _K, k.to(tl.int32))
    tl.store(st + _LO, lo.to(tl.int32))
    tl.store(st + _HI, hi.to(tl.int32))
    tl.store(st + _SPAN, span)
    tl.store(st + _PREV_K, k.to(tl.int32))
    for col in tl.static_range(_WARM, _HAVE_PREV):  # the later columns outlive a call
        tl.store(st + col, 0)
    tl.store(st + _GUESSED, (lo <= hi).to(tl.int32))


@triton.jit
def _guess_kernel(w_table_ptr, out_table_ptr, blk_seg_ptr, blk_start_ptr, seg_numel_ptr, state_ptr, slot_ptr,
                  count_ptr, DTYPE: tl.constexpr, BLOCK: tl.constexpr, SLOTS: tl.constexpr, ALIGNED: tl.constexpr,
                  W_BYTES: tl.constexpr, THREADS: tl.constexpr):
    pid = tl.program_id(0)
    seg = tl.load(blk_seg_ptr + pid)
    st = state_ptr + seg * STATE_COLS
    lo = tl.load(st + _LO)
    hi = tl.load(st + _HI)
    if lo <= hi:  # a guess: everything outside [lo, hi] is decided now, and no histogram is needed
        # The block as [BLOCK // VEC, VEC]: VEC consecutive elements per thread (one vector access when
        # ALIGNED), and the candidates' flat-order prefix as a scan along each thread's row plus one over
        # the rows (see VEC).
        R: tl.constexpr = BLOCK // VEC
        J: tl.constexpr = R // THREADS  # rows per thread, consecutive in flat order where > 1 (GUESS_THREAD_MAJOR)
        q = tl.arange(0, R)
        if J > 1:  # row q: thread q % THREADS's (q // THREADS)-th row, as a thread holds them
            local = ((q % THREADS) * J + q // THREADS)[:, None] * VEC + tl.arange(0, VEC)[None, :]
        else:
            local = q[:, None] * VEC + tl.arange(0, VEC)[None, :]
        start = tl.load(blk_start_ptr + pid)
        offs = start + local
        numel = tl.load(seg_numel_ptr + seg)
        inb = offs < numel
        full = start + BLOCK <= numel  # no bounds mask: a predicated access never vectorises
        w_ptr = tl.load(w_table_ptr + seg).to(tl.pointer_type(DTYPE)) + offs
        # Masks are written as bytes (a bool tensor's storage): an int1 store compiles to bit shuffling.
        out_ptr = tl.load(out_table_ptr + seg).to(tl.pointer_type(tl.int8)) + offs
        if ALIGNED:  # the host checked every base pointer; block starts are multiples of BLOCK (hints in bytes)
            w_ptr = tl.multiple_of(w_ptr, [1, VEC * W_BYTES])
            out_ptr = tl.multiple_of(out_ptr, [1, VEC])
        if full:
            bits = _pattern(tl.load(w_ptr))
        else:  # -1 outside the tensor: below lo (>= 0), so neither above hi nor a candidate
            bits = tl.where(inb, _pattern(tl.load(w_ptr, mask=inb, other=0.0)), -1)
        above = bits > hi
        if full:
            tl.store(out_ptr, above.to(tl.int8))
        else:
            tl.store(out_ptr, above.to(tl.int8), mask=inb)
        cand = (bits >= lo) & ~above
        flags = cand.to(tl.int32)
        # Per row, its candidates in the high half and its elements above HI in the low half (each <= BLOCK
        # < 2**16): one scan over the rows and one sum serve both counts.
        row_packed = tl.sum((flags << 16) | above.to(tl.int32), 1)
        if J > 1:
            # Flat order is thread by thread: the scan over threads runs on one value per thread (a thread's
            # J rows summed in its registers), then each row adds its thread's rows before it.
            per_thread = tl.reshape(row_packed, [J, THREADS])
            thread_sum = tl.sum(per_thread, 0)
            before = (tl.cumsum(thread_sum, 0) - thread_sum)[None, :] + tl.cumsum(per_thread, 0) - per_thread
            row_before = tl.reshape(before, [R]) >> 16
        else:
            row_before = (tl.cumsum(row_packed, 0) - row_packed) >> 16
        slot = row_before[:, None] + tl.cumsum(flags, 1) - flags
        tl.store(slot_ptr + pid * SLOTS + slot, ((bits - lo) << POS_BITS) | local, mask=cand & (slot < SLOTS))
        # The totals after the slots' stores: summed before them, ptxas gave the full read 80 registers, not 72.
        if J > 1:
            totals = tl.sum(thread_sum, 0)
        else:
            totals = tl.sum(row_packed, 0)
        n_cand = totals >> 16
        tl.store(count_ptr + pid, n_cand)
        # Fire and forget: the guess is judged in the next launch (`_guess_verdict`), so no program waits for
        # its flushes to land (a barrier, a release fence and an atomic's round trip per program, to find the
        # last block).
        tl.atomic_add(st + _ABOVE, totals & 0xFFFF, sem="relaxed")
        tl.atomic_add(st + _CANDS, n_cand, sem="relaxed")


@triton.jit
def _guess_verdict(st):
    """Whether each segment's guess held (T is a candidate, or with k == above no candidate is kept), from
    pass 1's counts; False where there was no guess. `st`: the segments' state rows (a scalar or a block).
    Its inputs are not written again in this call (the cold pass rewrites LO and HI, so they are not used)."""
    above = tl.load(st + _ABOVE)
    k = tl.load(st + _K)
    return (tl.load(st + _GUESSED) != 0) & (above <= k) & (k <= above + tl.load(st + _CANDS))


@triton.jit
def _cold_kernel(w_table_ptr, blk_seg_ptr, blk_start_ptr, seg_nblocks_ptr, seg_numel_ptr, state_ptr, hist_ptr,
                 n_blocks, n_seg, DTYPE: tl.constexpr, BLOCK: tl.constexpr, SEGS: tl.constexpr):
    # First the guesses' verdicts (pass 1's counts are complete: it was the previous launch). Every program
    # reads them for all segments, SEGS at a time, to learn whether any segment needs this pass; program 0
    # records them: whether the guess held, a wider span after a wrong one, and where it held, the count left
    # to keep among the candidates and the density (candidates over the interval's width) for the next
    # guess. (Where it did not, this pass's last block of the segment writes those.)
    n_cold = tl.zeros([], tl.int32)
    first = tl.zeros([], tl.int32)
    while first < n_seg:
        segs = first + tl.arange(0, SEGS)
        ok = segs < n_seg
        st = state_ptr + tl.where(ok, segs, 0) * STATE_COLS
        held = _guess_verdict(st)
        n_cold += tl.sum((ok & ~held).to(tl.int32), 0)
        if tl.program_id(0) == 0:
            lo = tl.load(st + _LO)
            hi = tl.load(st + _HI)
            tl.store(st + _WARM, held.to(tl.int32), mask=ok)
            wrong = ok & (tl.load(st + _GUESSED) != 0) & ~held
            tl.store(st + _SPAN, tl.minimum(tl.load(st + _SPAN) + 2, SPAN_MAX), mask=wrong)
            tl.store(st + _K_LEFT, tl.load(st + _K) - tl.load(st + _ABOVE), mask=ok & held)
            tl.store(st + _PREV_CANDS, tl.load(st + _CANDS), mask=ok & held)
            tl.store(st + _PREV_WIDTH, hi - lo + 1, mask=ok & held)
        first += SEGS
    # Where no segment needs the cold path (a warm call whose guesses held), every program exits now instead
    # of walking its blocks to read each one's segment state.
    block = tl.where(n_cold != 0, tl.program_id(0), n_blocks)
    while block < n_blocks:  # grid-stride over a program per SM (see COLD_PROGRAMS_PER_SM)
        seg = tl.load(blk_seg_ptr + block)
        st = state_ptr + seg * STATE_COLS
        if ~_guess_verdict(st):  # no guess, or a wrong one
            hs = hist_ptr + seg * SEG_HIST
            offs = tl.load(blk_start_ptr + block) + tl.arange(0, BLOCK)
            inb = offs < tl.load(seg_numel_ptr + seg)
            bits = _abs_bits(tl.load(w_table_ptr + seg), offs, inb, DTYPE)
            hist = tl.histogram(bits >> D1_SHIFT, BINS1, mask=inb)
            # Flush only the non-empty bins: most blocks touch a small fraction of them.
            tl.atomic_add(hs + tl.arange(0, BINS1), hist, mask=hist > 0, sem="relaxed")
            tl.debug_barrier()
            if tl.atomic_add(st + _DONE_COLD, 1, sem="acq_rel") == tl.load(seg_nblocks_ptr + seg) - 1:
                b1, k1, in_b1 = _select_digit(hs, tl.load(st + _K), BINS1)
                lo = b1 << D1_SHIFT
                hi = tl.minimum(lo + BUCKET1_LAST, MAX_PATTERN)
                tl.store(st + _LO, lo)
                tl.store(st + _HI, hi)
                tl.store(st + _K_LEFT, k1)
                tl.store(st + _PREV_CANDS, in_b1)
                tl.store(st + _PREV_WIDTH, hi - lo + 1)
        block += tl.num_programs(0)


@triton.jit
def _digit2_kernel(w_table_ptr, out_table_ptr, blk_seg_ptr, blk_start_ptr, seg_nblocks_ptr, seg_numel_ptr,
                   state_ptr, hist_ptr, slot_ptr, count_ptr, n_blocks, DTYPE: tl.constexpr, BLOCK: tl.constexpr,
                   SLOTS: tl.constexpr, CHUNK: tl.constexpr, PIECE: tl.constexpr):
    block = tl.program_id(0)
    while block < n_blocks:  # one turn with a program per block; a grid-stride loop with CAND_PROGRAMS_PER_SM
        seg = tl.load(blk_seg_ptr + block)
        st = state_ptr + seg * STATE_COLS
        h2 = hist_ptr + seg * SEG_HIST + BINS1
        lo = tl.load(st + _LO)
        hi = tl.load(st + _HI)
        warm = tl.load(st + _WARM) != 0
        count = tl.load(count_ptr + block)
        if warm & (count <= SLOTS):
            # The guess held: the candidates are in the slots; each used one adds to its bin (see CAND_WARPS).
            c = tl.zeros([], dtype=tl.int32)
            while c < count:
                j = c + tl.arange(0, CHUNK)
                slot = tl.load(slot_ptr + block * SLOTS + j, mask=j < count, other=0)
                tl.atomic_add(h2 + (_slot_key(slot) >> D2_SHIFT), 1, mask=j < count, sem="relaxed")
                c += CHUNK
        else:  # from the weights, a piece of the block at a time
            start = tl.load(blk_start_ptr + block)
            numel = tl.load(seg_numel_ptr + seg)
            w_addr = tl.load(w_table_ptr + seg)
            out = tl.load(out_table_ptr + seg).to(tl.pointer_type(tl.int8))
            hist = tl.zeros([BINS2], dtype=tl.int32)
            n_cand = tl.zeros([], dtype=tl.int32)
            for piece in range(0, BLOCK, PIECE):
                local = piece + tl.arange(0, PIECE)
                inb = start + local < numel
                bits = _abs_bits(w_addr, start + local, inb, DTYPE)
                cand = inb & (bits >= lo) & (bits <= hi)
                key = tl.where(cand, bits - lo, 0)
                if not warm:  # no guess, or a wrong one: the cold path
                    tl.store(out + start + local, (bits > hi).to(tl.int8), mask=inb)
                    n_cand += _compact(cand, key, local, slot_ptr + block * SLOTS, n_cand, SLOTS)
                hist += tl.histogram(key >> D2_SHIFT, BINS2, mask=cand)
            if not warm:
                tl.store(count_ptr + block, n_cand)
            tl.atomic_add(h2 + tl.arange(0, BINS2), hist, mask=hist > 0, sem="relaxed")
        tl.debug_barrier()
        if tl.atomic_add(st + _DONE2, 1, sem="acq_rel") == tl.load(seg_nblocks_ptr + seg) - 1:
            b2, k2, _ = _select_digit(h2, tl.load(st + _K_LEFT), BINS2)
            tl.store(st + _PREFIX, b2)
            tl.store(st + _K_LEFT, k2)
        block += tl.num_programs(0)


@triton.jit
def _digit3_kernel(w_table_ptr, blk_seg_ptr, blk_start_ptr, seg_nblocks_ptr, seg_numel_ptr, state_ptr, hist_ptr,
                   slot_ptr, count_ptr, ties_ptr, n_blocks, DTYPE: tl.constexpr, BLOCK: tl.constexpr,
                   SLOTS: tl.constexpr, CHUNK: tl.constexpr, PIECE: tl.constexpr):
    block = tl.program_id(0)
    while block < n_blocks:  # one turn with a program per block; a grid-stride loop with CAND_PROGRAMS_PER_SM
        seg = tl.load(blk_seg_ptr + block)
        st = state_ptr + seg * STATE_COLS
        h3 = hist_ptr + seg * SEG_HIST + BINS1 + BINS2
        b2 = tl.load(st + _PREFIX)
        lo = tl.load(st + _LO)
        count = tl.load(count_ptr + block)
        if count <= SLOTS:
            c = tl.zeros([], dtype=tl.int32)
            while c < count:
                j = c + tl.arange(0, CHUNK)
                key = _slot_key(tl.load(slot_ptr + block * SLOTS + j, mask=j < count, other=0))
                tl.atomic_add(h3 + (key & (BINS2 - 1)), 1, mask=(j < count) & ((key >> D2_SHIFT) == b2), sem="relaxed")
                c += CHUNK
        else:
            start = tl.load(blk_start_ptr + block)
            numel = tl.load(seg_numel_ptr + seg)
            w_addr = tl.load(w_table_ptr + seg)
            hi = tl.load(st + _HI)
            hist = tl.zeros([BINS2], dtype=tl.int32)
            for piece in range(0, BLOCK, PIECE):
                offs = start + piece + tl.arange(0, PIECE)
                inb = offs < numel
                bits = _abs_bits(w_addr, offs, inb, DTYPE)
                key = bits - lo
                cand = inb & (bits >= lo) & (bits <= hi) & ((key >> D2_SHIFT) == b2)
                hist += tl.histogram(key & (BINS2 - 1), BINS2, mask=cand)
            tl.atomic_add(h3 + tl.arange(0, BINS2), hist, mask=hist > 0, sem="relaxed")
        tl.debug_barrier()
        if tl.atomic_add(st + _DONE3, 1, sem="acq_rel") == tl.load(seg_nblocks_ptr + seg) - 1:
            k_left = tl.load(st + _K_LEFT)
            b3, need_eq, in_b = _select_digit(h3, k_left, BINS2)
            # No candidate kept (k_left == 0): T = HI + 1 keeps exactly the elements above HI, with no tie break.
            threshold = tl.where(k_left == 0, tl.load(st + _HI) + 1, lo + ((b2 << D2_SHIFT) | b3))
            tl.store(st + _PREFIX, threshold)
            tl.store(st + _K_LEFT, need_eq)
            # in_b elements equal T; need_eq of them are kept. Only a strict surplus needs the tie break.
            tie = (k_left > 0) & (in_b > need_eq)
            tl.store(st + _TIE, tie.to(tl.int32))
            if tie:  # the tie pass has work (without any, its programs exit at once)
                tl.atomic_add(ties_ptr, 1, sem="relaxed")
            tl.store(st + _PREV_T, threshold)  # the next call's guess
            tl.store(st + _HAVE_PREV, 1)
            if tl.load(st + _WARM) != 0:
                # The guess held; T's distance from its centre sizes the next one: near an edge, wider; well
                # inside, and with crowding candidates (each costs ~20 bytes of traffic), narrower.
                hi = tl.load(st + _HI)
                span = tl.load(st + _SPAN)
                off = tl.abs(threshold - (lo + (hi - lo + 1) // 2))
                crowded = tl.load(st + _CANDS) > tl.maximum(tl.load(seg_numel_ptr + seg) >> CROWD_SHIFT, CROWD_MIN)
                span = tl.where(off > (1 << span) // 2, tl.minimum(span + 1, SPAN_MAX),
                                tl.where(crowded & (off < (1 << span) // 4), tl.maximum(span - 1, SPAN_MIN), span))
                tl.store(st + _SPAN, span)
        block += tl.num_programs(0)


@triton.jit
def _tie_kernel(w_table_ptr, blk_seg_ptr, blk_start_ptr, seg_first_ptr, seg_nblocks_ptr, seg_numel_ptr, state_ptr,
                slot_ptr, count_ptr, eq_ptr, ties_ptr, n_blocks, DTYPE: tl.constexpr, BLOCK: tl.constexpr,
                SLOTS: tl.constexpr, CHUNK: tl.constexpr, PIECE: tl.constexpr, SCAN: tl.constexpr):
    # Where no segment's threshold needs the tie break (the usual case), every program exits at once.
    block = tl.where(tl.load(ties_ptr) != 0, tl.program_id(0), n_blocks)
    while block < n_blocks:  # one turn with a program per block; a grid-stride loop with CAND_PROGRAMS_PER_SM
        seg = tl.load(blk_seg_ptr + block)
        st = state_ptr + seg * STATE_COLS
        if tl.load(st + _TIE) != 0:
            threshold = tl.load(st + _PREFIX)
            count = tl.load(count_ptr + block)
            if count <= SLOTS:
                t_key = threshold - tl.load(st + _LO)
                n_eq = tl.zeros([], dtype=tl.int32)
                c = tl.zeros([], dtype=tl.int32)
                while c < count:
                    j = c + tl.arange(0, CHUNK)
                    key = _slot_key(tl.load(slot_ptr + block * SLOTS + j, mask=j < count, other=0))
                    n_eq += tl.sum(((j < count) & (key == t_key)).to(tl.int32), 0)
                    c += CHUNK
            else:
                start = tl.load(blk_start_ptr + block)
                numel = tl.load(seg_numel_ptr + seg)
                w_addr = tl.load(w_table_ptr + seg)
                n_eq = tl.zeros([], dtype=tl.int32)
                for piece in range(0, BLOCK, PIECE):
                    offs = start + piece + tl.arange(0, PIECE)
                    inb = offs < numel
                    n_eq += tl.sum((inb & (_abs_bits(w_addr, offs, inb, DTYPE) == threshold)).to(tl.int32), 0)
            tl.store(eq_ptr + block, n_eq)
            tl.debug_barrier()
            seg_blocks = tl.load(seg_nblocks_ptr + seg)
            if tl.atomic_add(st + _DONE_TIE, 1, sem="acq_rel") == seg_blocks - 1:
                # Exclusive scan of the segment's per-block counts, in block (= flat index) order, in place.
                first = eq_ptr + tl.load(seg_first_ptr + seg)
                running = tl.zeros([], dtype=tl.int32)
                c = tl.zeros([], dtype=tl.int32)
                while c < seg_blocks:
                    idx = c + tl.arange(0, SCAN)
                    ok = idx < seg_blocks
                    x = tl.load(first + idx, mask=ok, other=0, cache_modifier=".cg")
                    tl.store(first + idx, running + tl.cumsum(x, 0) - x, mask=ok)
                    running += tl.sum(x, 0)
                    c += SCAN
        block += tl.num_programs(0)


@triton.jit
def _keep(bits, valid, threshold, tie, eq_before, need_eq):
    """Final mask entries of one block's elements (given in flat order; patterns, or keys with T's key)."""
    is_eq = valid & (bits == threshold)
    if tie:
        # 1-based rank of each tied element among the segment's tied elements in flat order.
        is_eq = is_eq & (eq_before + tl.cumsum(is_eq.to(tl.int32), 0) <= need_eq)
    return valid & ((bits > threshold) | is_eq)


@triton.jit
def _fixup_kernel(w_table_ptr, out_table_ptr, m_table_ptr, v_table_ptr, blk_seg_ptr, blk_start_ptr, seg_numel_ptr,
                  state_ptr, slot_ptr, count_ptr, eq_ptr, ties_ptr, n_blocks, DTYPE: tl.constexpr,
                  ZERO_WEIGHTS: tl.constexpr, ZERO_MOMENTS: tl.constexpr, BLOCK: tl.constexpr, SLOTS: tl.constexpr,
                  SLOT_LIMIT: tl.constexpr, CHUNK: tl.constexpr, PIECE: tl.constexpr):
    if tl.program_id(0) == 0:  # the tie pass of this call is over: the next call counts afresh
        tl.store(ties_ptr, 0)
    block = tl.program_id(0)
    while block < n_blocks:  # one turn with a program per block; a grid-stride loop with CAND_PROGRAMS_PER_SM
        seg = tl.load(blk_seg_ptr + block)
        st = state_ptr + seg * STATE_COLS
        threshold = tl.load(st + _PREFIX)
        need_eq = tl.load(st + _K_LEFT)
        tie = tl.load(st + _TIE) != 0
        out = tl.load(out_table_ptr + seg).to(tl.pointer_type(tl.int8)) + tl.load(blk_start_ptr + block)
        eq_before = tl.load(eq_ptr + block)  # only meaningful (and used) where tie
        count = tl.load(count_ptr + block)
        if count <= SLOT_LIMIT:  # SLOTS, or -1 when zeroing (then every pruned entry must be written)
            # Only the used slots' entries are undecided. Passes 1 and 3 wrote False for every candidate: only
            # the kept ones need a (scattered) write.
            t_key = threshold - tl.load(st + _LO)
            c = tl.zeros([], dtype=tl.int32)
            while c < count:
                j = c + tl.arange(0, CHUNK)
                valid = j < count
                slot = tl.load(slot_ptr + block * SLOTS + j, mask=valid, other=0)
                key = _slot_key(slot)
                kept = _keep(key, valid, t_key, tie, eq_before, need_eq)
                tl.store(out + (slot & POS_MASK), kept.to(tl.int8), mask=kept)
                eq_before += tl.sum((valid & (key == t_key)).to(tl.int32), 0)
                c += CHUNK
        else:
            # The whole block from its weights: its candidates overflowed the slots, or pruned entries are to be
            # zeroed (all of them must be written).
            start = tl.load(blk_start_ptr + block)
            numel = tl.load(seg_numel_ptr + seg)
            w_addr = tl.load(w_table_ptr + seg)
            for piece in range(0, BLOCK, PIECE):
                offs = start + piece + tl.arange(0, PIECE)
                inb = offs < numel
                bits = _abs_bits(w_addr, offs, inb, DTYPE)
                keep = _keep(bits, inb, threshold, tie, eq_before, need_eq)
                tl.store(out + piece + tl.arange(0, PIECE), keep.to(tl.int8), mask=inb)
                eq_before += tl.sum((inb & (bits == threshold)).to(tl.int32), 0)
                pruned = inb & ~keep
                if ZERO_WEIGHTS:
                    # Write-only: kept weights are untouched, pruned ones become +0.0.
                    tl.store(w_addr.to(tl.pointer_type(DTYPE)) + offs, tl.zeros([PIECE], dtype=DTYPE), mask=pruned)
                if ZERO_MOMENTS:
                    zeros = tl.zeros([PIECE], dtype=tl.float32)
                    tl.store(tl.load(m_table_ptr + seg).to(tl.pointer_type(tl.float32)) + offs, zeros, mask=pruned)
                    tl.store(tl.load(v_table_ptr + seg).to(tl.pointer_type(tl.float32)) + offs, zeros, mask=pruned)
        block += tl.num_programs(0)


# --- workspace, launch plan, launcher ---------------------------------------------------------------------

# Blocks per iteration of the tie scan (a 25M-element segment has ~6k blocks).
SCAN_CHUNK = 1024


class _Workspace:
    """Per weight set: the device tables and the select's scratch, whose threshold and span outlive the call
    (the next call's warm start)."""

    def __init__(self, weights, block: int, slots: int):
        device = weights[0].device
        for i, w in enumerate(weights):
            _utils.check_tensor(w, f"weights[{i}]", device, (weights[0].dtype,))
        self.n_seg = len(weights)
        self.numel = sum(w.numel() for w in weights)
        self.plan, self.n_blocks = _utils.block_plan([w.numel() for w in weights], block, device)
        nb, ns = self.n_blocks, self.n_seg
        # The plan's rows, as the kernels take them.
        self.blk_seg, self.blk_start, self.seg_first, self.seg_nblocks, self.seg_numel = torch.split(
            self.plan, [nb, nb, ns, ns, ns])
        self.w_table = _utils.pointer_table(weights, device)
        self.hist = torch.zeros((ns, SEG_HIST), dtype=torch.int32, device=device)
        self.state = torch.zeros((ns, STATE_COLS), dtype=torch.int32, device=device)
        self.slots = torch.empty(nb * slots, dtype=torch.int32, device=device)  # see _compact
        self.counts = torch.zeros(nb, dtype=torch.int32, device=device)  # candidates per block
        self.eq = torch.zeros(nb, dtype=torch.int32, device=device)  # ties per block, then their prefix
        self.cold_programs = min(nb, _utils.persistent_programs(device, COLD_PROGRAMS_PER_SM,
                                                                COLD_INTERPRETER_PROGRAMS))
        self.cand_programs = nb if CAND_PROGRAMS_PER_SM == 0 else min(nb, _utils.persistent_programs(
            device, CAND_PROGRAMS_PER_SM, CAND_INTERPRETER_PROGRAMS))
        # Segments whose threshold needs the tie break in this call (counted by the digit-3 pass, read by the tie
        # pass, zeroed by the fix-up).
        self.ties = torch.zeros(1, dtype=torch.int32, device=device)
        self.buffers = [self.plan, self.w_table, self.hist, self.state, self.slots, self.counts, self.eq, self.ties]


class _TopkPlan:
    """A workspace plus the output and moment tables of one call signature, validated once."""

    def __init__(self, workspace: _Workspace, weights, out, exp_avgs, exp_avg_sqs, zero_pruned: bool, keep_t):
        device = weights[0].device
        for name, seq, dtype in (("out", out, torch.bool), ("exp_avgs", exp_avgs, torch.float32),
                                 ("exp_avg_sqs", exp_avg_sqs, torch.float32)):
            for i, t in enumerate(seq):
                _utils.check_tensor(t, f"{name}[{i}]", device, (dtype,))
        check_mask_outputs(weights, out, exp_avgs or None, exp_avg_sqs or None)  # shapes (and again the rest)
        check_mask_aliasing(weights, out, exp_avgs, exp_avg_sqs, zero_pruned, keep_t)
        self.ws = workspace
        self.device = device
        self.dtype = _utils.triton_dtype(weights[0].dtype)
        # Vector accesses in the full read (see VEC): a row of VEC weights, and of VEC mask bytes, aligned.
        self.aligned = (_utils.all_aligned(weights, VEC.value * weights[0].element_size())
                        and _utils.all_aligned(out, VEC.value))
        self.out_table = _utils.pointer_table(out, device)
        self.zero_moments = len(exp_avgs) > 0
        self.moment_tables = ((_utils.pointer_table(exp_avgs, device), _utils.pointer_table(exp_avg_sqs, device))
                              if self.zero_moments else (self.out_table, self.out_table))  # unused placeholders
        self.keep_t = keep_t
        self.buffers = [*workspace.buffers, self.out_table, *self.moment_tables, keep_t]
        self.launches: dict[bool, list[tuple]] = {}  # by warm_start (see `_launch_list`)


_workspaces = _utils.PlanCache(size=16)  # each holds ~1 byte per weight of scratch
_plans = _utils.PlanCache(size=64)


def _workspace_key(weights, block: int, slots: int) -> tuple[tuple, tuple]:
    """(key, data pointers) of the workspace of these weights in `_workspaces`."""
    return (block, slots, *map(id, weights)), tuple(map(_data_ptr, weights))


def _workspace(weights, block: int, slots: int) -> _Workspace:
    return _utils.plan_for(_workspaces, *_workspace_key(weights, block, slots), weights, weights[0].device,
                           lambda: _Workspace(weights, block, slots))


_data_ptr = torch.Tensor.data_ptr


def _topk_launch(weights, keep_t, out, zero_pruned: bool, exp_avgs, exp_avg_sqs, block: int, slots: int,
                 warm_start: bool) -> None:
    """All launches of one mask update. Writes `out` (and weights/moments)."""
    device = weights[0].device
    tensors = (*weights, *out, *exp_avgs, *exp_avg_sqs, keep_t)
    plan = _utils.plan_for(
        _plans, (block, slots, zero_pruned, *map(id, tensors)), tuple(map(_data_ptr, tensors)), tensors, device,
        lambda: _TopkPlan(_workspace(weights, block, slots), weights, out, exp_avgs, exp_avg_sqs, zero_pruned,
                          keep_t))
    if plan.ws.n_blocks == 0:  # every tensor is empty: nothing to write
        return
    launches = plan.launches.get(warm_start)
    if launches is None:
        launches = plan.launches[warm_start] = _launch_list(plan, block, slots, zero_pruned, warm_start)
    kernels = globals()  # by name at every call, so that a benchmark's hooks on the kernels see the launches
    with _utils.device_guard(device):
        for name, grid, args, options in launches:
            kernels[name][grid](*args, **options)


def _launch_list(plan: _TopkPlan, block: int, slots: int, zero_pruned: bool, warm_start: bool) -> list[tuple]:
    """A call's seven launches as (kernel name, grid, arguments, keyword arguments): everything in them is fixed
    by its plan (and warm_start), so it is built once per plan, with the knobs as they are then; a call only
    launches (~2 us less host time per call at Impala w3 than building the arguments every time)."""
    ws = plan.ws
    grid, cand_grid = (ws.n_blocks,), (ws.cand_programs,)
    w_bytes = plan.dtype.primitive_bitwidth // 8
    common = dict(DTYPE=plan.dtype, BLOCK=block, num_warps=NUM_WARPS)
    cand = dict(SLOTS=slots, DTYPE=plan.dtype, BLOCK=block, CHUNK=min(CAND_CHUNK, slots),
                PIECE=min(CAND_PIECE, block), num_warps=CAND_WARPS)
    zeroing = zero_pruned or plan.zero_moments
    return [
        ("_prepare_kernel", (ws.n_seg,), (ws.seg_numel, plan.keep_t, ws.state, ws.hist),
         dict(WARM_START=warm_start, num_warps=4)),
        ("_guess_kernel", grid, (ws.w_table, plan.out_table, ws.blk_seg, ws.blk_start, ws.seg_numel, ws.state,
                                 ws.slots, ws.counts),
         dict(SLOTS=slots, ALIGNED=plan.aligned, W_BYTES=w_bytes,
              THREADS=guess_threads(block, plan.aligned, plan.device),
              maxnreg=guess_max_registers(plan.aligned, w_bytes), **common)),
        ("_cold_kernel", (ws.cold_programs,), (ws.w_table, ws.blk_seg, ws.blk_start, ws.seg_nblocks, ws.seg_numel,
                                               ws.state, ws.hist, ws.n_blocks, ws.n_seg),
         dict(SEGS=VERDICT_SEGS, **common)),
        ("_digit2_kernel", cand_grid, (ws.w_table, plan.out_table, ws.blk_seg, ws.blk_start, ws.seg_nblocks,
                                       ws.seg_numel, ws.state, ws.hist, ws.slots, ws.counts, ws.n_blocks), cand),
        ("_digit3_kernel", cand_grid, (ws.w_table, ws.blk_seg, ws.blk_start, ws.seg_nblocks, ws.seg_numel, ws.state,
                                       ws.hist, ws.slots, ws.counts, ws.ties, ws.n_blocks), cand),
        ("_tie_kernel", cand_grid, (ws.w_table, ws.blk_seg, ws.blk_start, ws.seg_first, ws.seg_nblocks, ws.seg_numel,
                                    ws.state, ws.slots, ws.counts, ws.eq, ws.ties, ws.n_blocks),
         dict(SCAN=SCAN_CHUNK, **cand)),
        ("_fixup_kernel", cand_grid, (ws.w_table, plan.out_table, *plan.moment_tables, ws.blk_seg, ws.blk_start,
                                      ws.seg_numel, ws.state, ws.slots, ws.counts, ws.eq, ws.ties, ws.n_blocks),
         dict(ZERO_WEIGHTS=zero_pruned, ZERO_MOMENTS=plan.zero_moments, SLOT_LIMIT=-1 if zeroing else slots, **cand)),
    ]


def select_stats(weights: Sequence[torch.Tensor], *, block: int = TOPK_BLOCK, slots: int | None = None) -> dict | None:
    """What the last call on these weights did: per segment, whether the warm-start guess held (`warm`),
    whether the threshold's ties needed the index-order break (`tie`) and the next guess's span (`span`:
    the previous threshold -/+ 2**span bit patterns); in all, the number of candidates
    (`candidates`) and of blocks whose candidates overflowed their slots (`overflowed_blocks`). Reads the
    device (synchronises): for tests and benchmarks. None if these weights were never seen."""
    weights = list(weights)
    slots = max(1, block // SLOTS_PER_BLOCK) if slots is None else slots
    ws = _workspaces.get(*_workspace_key(weights, block, slots))
    if ws is None:
        return None
    state = ws.state.cpu()
    counts = ws.counts.cpu()
    return dict(warm=[bool(x) for x in state[:, _WARM.value]], tie=[bool(x) for x in state[:, _TIE.value]],
                span=state[:, _SPAN.value].tolist(), candidates=int(counts.sum()),
                overflowed_blocks=int((counts > slots).sum()))


# --- torch.library registration ---------------------------------------------------------------------------
# An opaque custom op rather than `triton_op`: the kernels reach their tensors through a device pointer
# table built from `data_ptr()`, which Inductor can't trace with fake tensors. To torch.compile the op is a
# single node with declared mutations (no graph break); eager calls skip the dispatcher and launch directly.


@torch.library.custom_op("prunerl::topk_magnitude_masks_", mutates_args=("weights", "out", "exp_avgs", "exp_avg_sqs"))
def _topk_op(weights: list[torch.Tensor], keep_counts: torch.Tensor, out: list[torch.Tensor], zero_pruned: bool,
             exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], block: int, slots: int,
             warm_start: bool) -> None:
    _topk_launch(weights, keep_counts, out, zero_pruned, exp_avgs, exp_avg_sqs, block, slots, warm_start)


@_topk_op.register_fake
def _(weights, keep_counts, out, zero_pruned, exp_avgs, exp_avg_sqs, block, slots, warm_start) -> None:
    return None


# --- public function --------------------------------------------------------------------------------------


def _keep_counts_tensor(weights: Sequence[torch.Tensor], keep_counts, device: torch.device) -> torch.Tensor:
    if isinstance(keep_counts, torch.Tensor) and keep_counts.device == device:
        if keep_counts.dim() != 1 or keep_counts.numel() != len(weights):
            raise ValueError(f"keep_counts must be a 1-D tensor of {len(weights)} counts, got shape "
                             f"{tuple(keep_counts.shape)}")
        check_count_dtype(keep_counts)
        return keep_counts if keep_counts.is_contiguous() else keep_counts.contiguous()
    # Host counts are free to validate (and raise exactly like the reference).
    counts = tuple(_check_keep_counts(weights, keep_counts))
    if torch.compiler.is_compiling():  # traced: a constant in the graph, no cache lookup
        return torch.tensor(counts, dtype=torch.int64, device=device)
    return _utils.int_table(counts, device)


def topk_magnitude_masks_triton(weights: Sequence[torch.Tensor], keep_counts, *, out=None, zero_pruned: bool = False,
                                exp_avgs=None, exp_avg_sqs=None, block: int = TOPK_BLOCK, slots: int | None = None,
                                warm_start: bool = True) -> list[torch.Tensor]:
    """Bool masks keeping the `keep_counts[i]` largest |w| of each tensor (ties: lower flat index).

    keep_counts: ints or a host tensor (validated like the reference), or a 1-D integer tensor on the
    weights' device (clamped to [0, numel] in the kernel instead: no host sync, CUDA-graph capturable).
    out: optional list of bool tensors (same shapes) written in place and returned.
    zero_pruned: also set the pruned weights to 0 in place.
    exp_avgs / exp_avg_sqs: optional fp32 Adam moments, zeroed at the pruned entries in place (the "reset"
        moments option applied at the mask update). Give both or neither.
    block: elements per program (<= 4096); slots: candidate slots per block (default block // 4);
        warm_start: guess the threshold from the previous call on the same weights (tuning knobs; tests
        shrink them).
    """
    weights = weights if type(weights) is list else list(weights)
    if len(weights) == 0:
        return []
    device = weights[0].device
    if weights[0].dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"weights[0] has dtype {weights[0].dtype}; the Triton kernel supports float32, float16 "
                        "and bfloat16 (use kernels.reference for others)")
    if (exp_avgs is None) != (exp_avg_sqs is None):
        raise ValueError("give both exp_avgs and exp_avg_sqs, or neither")
    exp_avgs, exp_avg_sqs = list(exp_avgs or []), list(exp_avg_sqs or [])
    for name, seq in (("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        if seq and len(seq) != len(weights):
            raise ValueError(f"got {len(weights)} weights but {len(seq)} {name}")
    if out is None:
        out = [torch.empty(w.shape, dtype=torch.bool, device=device) for w in weights]
    else:
        out = out if type(out) is list else list(out)
        if len(out) != len(weights):
            raise ValueError(f"got {len(weights)} weights but {len(out)} out masks")
    if not 16 <= block <= MAX_BLOCK or block & (block - 1):
        raise ValueError(f"block must be a power of two in [16, {MAX_BLOCK}] (a slot stores a position in the "
                         f"block in {POS_BITS.value} bits), got {block}")
    slots = max(1, block // SLOTS_PER_BLOCK) if slots is None else slots
    if not 1 <= slots <= block or slots & (slots - 1):
        raise ValueError(f"slots must be a power of two in [1, block], got {slots}")
    keep_t = _keep_counts_tensor(weights, keep_counts, device)
    args = (weights, keep_t, out, bool(zero_pruned), exp_avgs, exp_avg_sqs, block, slots, bool(warm_start))
    if torch.compiler.is_compiling():
        with torch.no_grad():  # the op mutates leaves that may require grad (parameters)
            torch.ops.prunerl.topk_magnitude_masks_(*args)
    else:  # the kernels write through raw pointers: nothing for autograd to see
        _topk_launch(*args)
    return out
