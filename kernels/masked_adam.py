"""Fused multi-tensor masked Adam: one launch updates every parameter of a network, then re-masks it.

Op (torch.optim.Adam semantics, bias-corrected, coupled weight decay wd; t = step after increment):
    g <- g + wd p                             # torch.optim.Adam(weight_decay=wd); optax add_decayed_weights
    m <- m + (1 - b1) (g - m)                 # lerp, as torch.optim.Adam
    v <- b2 v + ((1 - b2) g) g                # addcmul
    p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    p <- p * mask
and for pruned entries (mask == 0) the moments option:
    faithful: m, v updated like the rest (JaxPruner default: the optimizer never sees the mask);
    reset:    m, v <- m * mask, v * mask;
    frozen:   m, v left exactly as before; the pruned weight is set to 0.
Reference: `kernels.reference.masked_adam_ref_` (tests also track `torch.optim.Adam` + `p.mul_(mask)`).

Layout: a persistent grid (a few programs per SM) walks the blocks of all tensors in a grid-stride loop,
loading the next block's plan row and mask bytes while it updates this one (with `pruned_are_zero` the loads
wait for the mask: loaded just before them it cost a second DRAM round trip per block); a block is BLOCK elements
of one tensor, found through device pointer tables (`kernels._utils`), so a network's ~30 tensors cost one
launch and no flattening copy. Each
element's p, g, m, v and mask byte are read once and p, m, v written once (28 bytes + 1 per fp32 element).
Full blocks load without bounds masks; when the host has checked that every pointer is 16-byte aligned
(`ALIGNED`), the loads and stores carry alignment hints and compile to 128-bit accesses (the mask to 32-bit
ones). Nothing waits on anything else: no block-wide reduction, no barrier.

Bytes per pruned element, decided per sector. A block is shaped [BLOCK // 8, 8]: a row is a sector, 8
elements (32 bytes of fp32, the DRAM access granule). What frozen mode and `pruned_are_zero` skip, they skip
a sector at a time: a sector with any kept element is loaded and stored whole (its pruned elements keep their
m and v: the values read are written back), a sector with none is neither read nor written. Whole-sector
predicates keep the accesses vectors and the writes full sectors (a per-element predicate compiles to scalar
accesses and partial-sector writes). At random masks a fraction 1 - s^8 of the sectors is live: 34% at 95%
sparsity, 7.7% at 99%.
- Frozen mode skips a dead sector's g, m and v; without the promise below its weights are still written
  (+0.0, write-only). It does not walk the blocks (FROZEN_LIVE_LIST): most of a block at 95-99% is dead,
  and a walk that waits for each block's mask before loading the little it needs is latency-bound (the H100
  timed it at 1.6x faithful mode's time at 95%, moving a third of the bytes). One launch lists the live
  sectors, in no order (Adam's elements are independent): it reads each sector's 8 mask bytes as one int64,
  reserves its span of the list with one atomic per program, and writes +0.0 into the dead sectors'
  weights. The update (a persistent grid) then walks the list: a chunk of LIVE_CHUNK sectors per turn,
  gathered as rows of 4 elements (one 128-bit vector per row and tensor when aligned), so every turn moves
  as many bytes as a block of faithful mode whatever the sparsity; its last program to finish resets the
  list's count. The list is rebuilt at every step because masks change on the device (a mask update inside
  a CUDA graph) without the host knowing: it costs a read of the masks (1 byte per element) and 8 bytes per
  live sector.
- `pruned_are_zero=True` promises that pruned weights are already exactly 0 (true after any earlier masked
  step with the same masks, or after `topk_magnitude_masks(..., zero_pruned=True)`): then a dead sector's
  weights are neither read nor written, in every mode (faithful at 0 live sectors: 21 bytes per element
  instead of 29), and a pruned weight in a live sector is read, counted as 0, and written back as it was.

Step: a Python int (the step size and sqrt(1 - b2^t) are computed on the host in fp64, then passed as
fp32 arguments: one launch), or a 0-d integer/float tensor on the device: then one tiny kernel computes both
scalars in fp64 (exact to a few ulp, by repeated squaring) once per step and the update reads them (two
launches; a captured CUDA graph replays with whatever the tensor holds); frozen mode adds the list's launch.
Numerics: compiled with `enable_fp_fusion=False`, so every operation rounds as written (no FMA contraction,
whatever a Triton release's default), in torch.optim.Adam's operation order; sqrt_rn/div_rn because the
default GPU sqrt and division are approximate.
Registered as the custom op `torch.ops.prunerl.masked_adam_` (opaque to torch.compile, declared mutations);
eager calls launch directly from a cached launch plan (`kernels._utils.PlanCache`). A call whose only new
tensors are the gradients (a step after `zero_grad(set_to_none=True)`) reuses the plan of the same parameters,
moments and masks and validates only the gradients: ~130 us of host time at Impala w3 on a CPU core, against
~420 us for a whole new plan and ~27 us for a call with the same tensors (bench/results/host_cost_cpu.json).
Dtypes: params and moments fp32, grads fp32 or bf16 (one grad dtype per call), masks bool or uint8 or
None (an unprunable tensor, e.g. a bias: plain Adam), all contiguous. beta1/beta2 are compile-time
constants (one compile per pair; they are fixed in a run) so they keep full fp64 precision.
Differences from the reference, by design: in frozen mode a pruned weight becomes +0.0 where the
reference computes (p + update) * 0 (so -0.0, or NaN for a non-finite update); with `pruned_are_zero` a
pruned weight stays 0 where the reference would give NaN for a non-finite update.
Tuning: BLOCK from the H100 knob sweep, num_warps and the list's build size from the H200 one (one knob at a
time, bench/tune_kernels.py; see the constants below). At BLOCK 2048 and 4 warps the kernel had 246 registers
per thread and moved 94.7% of the copy bandwidth in faithful mode on the H100; at 1024 and 4 warps, 145-168 and
79% on the H200 at 484c6fe7 (0.43 ms at 50M, 1.06x fused Adam), where 8 warps took 0.39 ms.
"""

from __future__ import annotations

import copy
import itertools

import torch
import triton
import triton.language as tl

from kernels import _utils
from kernels.reference import MOMENTS_MODES, adam_step, check_adam_hyperparameters, check_adam_inputs

# Elements per block: 4 fp32 per thread at 8 warps, one 128-bit load per tensor per thread. The H100 knob sweep
# (bench/results/h100-80gb-hbm3_4ffe5cda/tune) chose 1024 over 2048: 0.85-0.88x the time in frozen mode at
# 95-99% (125-158 registers instead of 246: more programs resident), 0.96-0.99x in faithful mode. The H200 sweep
# (bench/results/h200_484c6fe7/tune) chose 8 warps over 4: 0.91x the time in faithful mode at 50M, 0.93x at
# Impala w3 in a graph, 0.99-1.0x in frozen mode (76-80 registers per thread instead of 148-154).
ADAM_BLOCK = 1024
NUM_WARPS = 8
# Persistent grid: programs per SM (8 warps each; at 76-80 registers per thread 3 are resident), and under the
# interpreter a few programs, so that the tests walk the grid-stride loop.
PROGRAMS_PER_SM = 8
INTERPRETER_PROGRAMS = 3
# Frozen mode walks a list of its live sectors instead of every block (see `_frozen_live_kernel`): False
# keeps it on the block kernel, whose loads of a mostly dead block are a dependent chain for little data
# (the H100 timed that design, before the mask prefetch, at 0.90x fused Adam + mask at 95%, 0.95x at 99%).
# A knob of bench/tune_kernels.py.
FROZEN_LIVE_LIST = True
# The list's build reads the mask bytes of ROWS sectors per program (1,024 elements; a thread's sector as one
# int64, 23 registers per thread at 4 warps); the update walks it CHUNK sectors at a time (1,024 elements, as a
# block). The H200 sweeps timed smaller builds faster, one sector per thread best: at 50M, 256 sectors per
# program took 0.93x the time of 1,024 at 95% and 0.90x at 99% (bench/results/h200_484c6fe7/tune), and 128
# took 0.87x and 0.76x the time of 256 (h200_d7a7cb8b/tune; 256 at 8 warps: 0.91x and 0.85x); chunks of 64
# or 256 were within 1.5% of 128, or slower. Both are knobs of bench/tune_kernels.py. Under the interpreter
# both are sized to the tensors (`_interpreter_live_sizes`): about LIVE_INTERPRETER_PROGRAMS build programs
# and LIVE_INTERPRETER_TURNS turns per walking program, so that the tests see several programs append to the
# list and each walk several chunks, and a network's tensors take no more turns than the block walk's.
LIVE_ROWS_PER_PROGRAM, LIVE_WARPS, LIVE_CHUNK = 128, 4, 128
LIVE_INTERPRETER_PROGRAMS, LIVE_INTERPRETER_TURNS, LIVE_INTERPRETER_MAX_ROWS = 8, 4, 1024
# The build's grid: 0 = a program per tile of LIVE_ROWS_PER_PROGRAM sectors (what the sweeps timed); > 0 = that
# many programs per SM in a grid-stride loop that loads the next tile's masks before it appends this one's
# rows (`_live_sectors_kernel`, PERSISTENT). Smaller tiles were faster, which suggests the build is
# latency-bound (a tile waits on three dependent loads, then its atomic): the loop overlaps one tile's wait
# with the next. Unmeasured on a GPU: a knob of bench/tune_kernels.py. Under the interpreter, a few programs.
LIVE_BUILD_PROGRAMS_PER_SM = 0
LIVE_INTERPRETER_BUILD_PROGRAMS = 3


def launches(moments: str) -> int:
    """Launches per call with a step tensor (the scalars, then the update; frozen mode builds its live list
    between them); an int step needs one fewer."""
    return 3 if moments == "frozen" and FROZEN_LIVE_LIST else 2


_MODE_ID = {mode: i for i, mode in enumerate(MOMENTS_MODES)}  # faithful 0, reset 1, frozen 2
# (Globals read inside kernels must be tl.constexpr.)
RESET, FROZEN = tl.constexpr(_MODE_ID["reset"]), tl.constexpr(_MODE_ID["frozen"])
# Elements per liveness decision: one 32-byte DRAM sector of fp32 (frozen mode and pruned_are_zero load and
# store a sector whole or not at all).
SECTOR = tl.constexpr(8)
HALF = tl.constexpr(4)  # a half sector: 16 bytes of fp32, one thread's vector (see `_live_rows`)

# --- kernels ----------------------------------------------------------------------------------------------


@triton.jit
def _pow_int(base, n):
    """base ** n for an fp64 scalar base and an int64 scalar n in [0, 2**32)."""
    result = tl.full([], 1.0, tl.float64)
    for i in tl.static_range(32):
        result = tl.where(((n >> i) & 1) != 0, result * base, result)
        base = base * base  # underflows to 0 harmlessly for large exponents
    return result


@triton.jit
def _adam_scalars_kernel(step_ptr, scalars_ptr, lr, BETA1: tl.constexpr, BETA2: tl.constexpr):
    """scalars = [lr / (1 - b1^t), sqrt(1 - b2^t)] in fp64, stored as fp32: once per step, not per program."""
    t = tl.load(step_ptr).to(tl.int64)  # float steps (torch.optim.Adam keeps them as float32) are whole
    bias_correction1 = 1.0 - _pow_int(tl.full([], BETA1, tl.float64), t)
    bias_correction2 = 1.0 - _pow_int(tl.full([], BETA2, tl.float64), t)
    # (Adding an fp64 zero instead of .to(): scalar args are plain Python numbers in the interpreter.)
    tl.store(scalars_ptr, ((lr + tl.zeros([], dtype=tl.float64)) / bias_correction1).to(tl.float32))
    tl.store(scalars_ptr + 1, tl.sqrt(bias_correction2).to(tl.float32))


@triton.jit
def _mask_tile(mask_table_ptr, p_table_ptr, numel_ptr, seg, start, valid, ALIGNED: tl.constexpr,
               BLOCK: tl.constexpr):
    """(the mask bytes of one block as [BLOCK // SECTOR, SECTOR] uint8: 0 outside the tensor, or everywhere
    where `valid` is false (past the last block), 1 everywhere inside it for a tensor without a mask (a bias);
    the tensor's element count, 0 where not `valid`)."""
    ROWS: tl.constexpr = BLOCK // SECTOR
    offs = start + tl.arange(0, ROWS)[:, None] * SECTOR + tl.arange(0, SECTOR)[None, :]
    if ALIGNED:
        offs = tl.max_contiguous(tl.multiple_of(offs, [1, SECTOR]), [1, SECTOR])
    numel = tl.load(numel_ptr + seg, mask=valid, other=0)
    mask_addr = tl.load(mask_table_ptr + seg, mask=valid, other=0)
    inb = offs < numel
    has_mask = mask_addr != 0
    # Without a mask, read the tensor's own weights instead (in bounds, and never used): an unpredicated
    # full-block load compiles to 32-bit vectors.
    k_addr = tl.where(has_mask, mask_addr, tl.load(p_table_ptr + seg, mask=valid, other=0))
    k_ptr = k_addr.to(tl.pointer_type(tl.uint8)) + offs  # bool and uint8 masks: one byte per element
    if ALIGNED:
        k_ptr = tl.multiple_of(k_ptr, [1, 4])
    if start + BLOCK <= numel:  # a full block (never one past the last: numel is 0 there)
        k = tl.load(k_ptr)
    else:
        k = tl.load(k_ptr, mask=inb, other=0)
    return tl.where(has_mask, k, inb.to(tl.uint8)), numel


@triton.jit
def _adam_block(p_addr, g_addr, m_addr, v_addr, k, start, numel, step_size, bc2_sqrt, eps, weight_decay,
                BETA1: tl.constexpr, BETA2: tl.constexpr, GRAD_DTYPE: tl.constexpr, MODE: tl.constexpr,
                PRUNED_ARE_ZERO: tl.constexpr, HAS_WD: tl.constexpr, ALIGNED: tl.constexpr, G_ALIGN: tl.constexpr,
                FULL: tl.constexpr, BLOCK: tl.constexpr):
    """One block of one tensor, as [BLOCK // SECTOR, SECTOR]: a row is one sector. `k`: its mask tile
    (`_mask_tile`, loaded a block ahead). FULL: all BLOCK elements are in bounds, so loads need no bounds
    mask."""
    ROWS: tl.constexpr = BLOCK // SECTOR
    offs = start + tl.arange(0, ROWS)[:, None] * SECTOR + tl.arange(0, SECTOR)[None, :]
    if ALIGNED:
        offs = tl.max_contiguous(tl.multiple_of(offs, [1, SECTOR]), [1, SECTOR])
    if FULL:
        inb = tl.full([ROWS, SECTOR], 1, tl.int1)  # a constant mask: no predicate, loads vectorise
    else:
        inb = offs < numel
    p_ptr = p_addr.to(tl.pointer_type(tl.float32)) + offs
    g_ptr = g_addr.to(tl.pointer_type(GRAD_DTYPE)) + offs
    m_ptr = m_addr.to(tl.pointer_type(tl.float32)) + offs
    v_ptr = v_addr.to(tl.pointer_type(tl.float32)) + offs
    if ALIGNED:
        # The host checked that every base pointer is 16-byte aligned, and rows start at multiples of SECTOR
        # elements. The hints promise 4 elements' worth of alignment to every tensor, so that all loads share
        # one layout (4 consecutive elements per thread: 128-bit fp32, 64-bit bf16, 32-bit mask accesses)
        # and no layout conversion (a trip through shared memory, with barriers) sits between them.
        p_ptr = tl.multiple_of(p_ptr, [1, 16])
        g_ptr = tl.multiple_of(g_ptr, [1, G_ALIGN])
        m_ptr = tl.multiple_of(m_ptr, [1, 16])
        v_ptr = tl.multiple_of(v_ptr, [1, 16])
    live_sector = tl.max(k, axis=1)[:, None] != 0  # any element of the sector kept (in bounds)
    _adam_sectors(p_ptr, g_ptr, m_ptr, v_ptr, k, inb, live_sector, step_size, bc2_sqrt, eps, weight_decay, BETA1,
                  BETA2, MODE, PRUNED_ARE_ZERO, HAS_WD)


@triton.jit
def _adam_sectors(p_ptr, g_ptr, m_ptr, v_ptr, k, inb, live_sector, step_size, bc2_sqrt, eps, weight_decay,
                  BETA1: tl.constexpr, BETA2: tl.constexpr, MODE: tl.constexpr, PRUNED_ARE_ZERO: tl.constexpr,
                  HAS_WD: tl.constexpr):
    """The update of a tile of [rows, width] elements at typed pointers, each row consecutive elements of one
    sector (all of it, or half): `k` their mask bytes, `inb` which exist, `live_sector` ([rows, 1]) whether
    the row's sector holds a kept element. (Alignment hints belong with the caller's pointer arithmetic:
    given to the pointers here, after the call, triton 3.6 drops them and compiles scalar accesses and 24
    barriers.)"""
    keep = k != 0
    # What is loaded and stored, per sector (a whole sector or nothing, so accesses stay vectors and
    # full-sector writes): `live` for g, m, v; `p_live` for the weight.
    live = inb & live_sector if MODE == FROZEN else inb
    p_live = inb & live_sector if PRUNED_ARE_ZERO else live

    g = tl.load(g_ptr, mask=live, other=0.0).to(tl.float32)
    m0 = tl.load(m_ptr, mask=live, other=0.0)
    v0 = tl.load(v_ptr, mask=live, other=0.0)
    p0 = tl.load(p_ptr, mask=p_live, other=0.0)
    # A pruned weight is promised to be 0: one read in a live sector counts as 0 (and is written back as read).
    p = tl.where(keep, p0, 0.0) if PRUNED_ARE_ZERO else p0
    if HAS_WD:
        g = g + weight_decay * p
    # torch.optim.Adam's single-tensor operation order: lerp (weight < 0.5), addcmul, addcdiv.
    m = m0 + (1.0 - BETA1) * (g - m0)
    v = v0 * BETA2 + ((1.0 - BETA2) * g) * g
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    p = p + tl.div_rn(-step_size * m, denom)

    if MODE == FROZEN:
        if PRUNED_ARE_ZERO:
            tl.store(p_ptr, tl.where(keep, p, p0), mask=live)
        else:
            tl.store(p_ptr, tl.where(keep, p, 0.0), mask=inb)  # pruned weights: +0.0, written without a read
        # Pruned lanes of a live sector write back the moments they read: unchanged, bit for bit.
        tl.store(m_ptr, tl.where(keep, m, m0), mask=live)
        tl.store(v_ptr, tl.where(keep, v, v0), mask=live)
    else:
        if PRUNED_ARE_ZERO:
            tl.store(p_ptr, tl.where(keep, p, p0), mask=p_live)
        else:
            # Multiplying (not selecting) keeps the reference's p.mul_(mask) semantics, NaN * 0 included.
            tl.store(p_ptr, p * keep.to(tl.float32), mask=inb)
        if MODE == RESET:
            keep_f = keep.to(tl.float32)
            m = m * keep_f
            v = v * keep_f
        tl.store(m_ptr, m, mask=inb)
        tl.store(v_ptr, v, mask=inb)


@triton.jit
def _masked_adam_kernel(p_table_ptr, g_table_ptr, m_table_ptr, v_table_ptr, mask_table_ptr, plan_ptr, n_blocks,
                        n_seg, scalars_ptr, step_size, bc2_sqrt, eps, weight_decay,
                        BETA1: tl.constexpr, BETA2: tl.constexpr, GRAD_DTYPE: tl.constexpr,
                        STEP_ON_DEVICE: tl.constexpr, MODE: tl.constexpr, PRUNED_ARE_ZERO: tl.constexpr,
                        HAS_WD: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    G_ALIGN: tl.constexpr = 16 if GRAD_DTYPE == tl.float32 else 8  # bytes of 4 gradient elements
    if STEP_ON_DEVICE:  # written by _adam_scalars_kernel just before
        step_size = tl.load(scalars_ptr)
        bc2_sqrt = tl.load(scalars_ptr + 1)
    numel_ptr = plan_ptr + 2 * n_blocks + 2 * n_seg  # the plan's rows, see kernels._utils
    block = tl.program_id(0)
    seg = tl.load(plan_ptr + block, mask=block < n_blocks, other=0)
    start = tl.load(plan_ptr + n_blocks + block, mask=block < n_blocks, other=0)
    k, numel = _mask_tile(mask_table_ptr, p_table_ptr, numel_ptr, seg, start, block < n_blocks, ALIGNED, BLOCK)
    # Grid-stride loop over the blocks of every tensor (a while loop: range() with a run-time bound does not
    # run under every Triton release's interpreter).
    while block < n_blocks:
        # Prefetch the next block's plan row, so that its loads overlap this block's data traffic and the
        # next iteration starts one dependent load (plan -> pointer table -> data) closer to its data.
        next_block = block + tl.num_programs(0)
        next_seg = tl.load(plan_ptr + next_block, mask=next_block < n_blocks, other=0)
        next_start = tl.load(plan_ptr + n_blocks + next_block, mask=next_block < n_blocks, other=0)
        # The next block's mask, a block ahead: the data loads of a block whose sectors are skipped (frozen
        # mode, pruned_are_zero) wait for its mask, so a mask loaded just before them would put a second DRAM
        # round trip on every block's path (the H100 timed frozen mode at 1.6x faithful's time at 95%).
        next_k, next_numel = _mask_tile(mask_table_ptr, p_table_ptr, numel_ptr, next_seg, next_start,
                                        next_block < n_blocks, ALIGNED, BLOCK)
        p_addr, g_addr = tl.load(p_table_ptr + seg), tl.load(g_table_ptr + seg)
        m_addr, v_addr = tl.load(m_table_ptr + seg), tl.load(v_table_ptr + seg)
        if start + BLOCK <= numel:
            _adam_block(p_addr, g_addr, m_addr, v_addr, k, start, numel, step_size, bc2_sqrt, eps, weight_decay,
                        BETA1, BETA2, GRAD_DTYPE, MODE, PRUNED_ARE_ZERO, HAS_WD, ALIGNED, G_ALIGN, True, BLOCK)
        else:
            _adam_block(p_addr, g_addr, m_addr, v_addr, k, start, numel, step_size, bc2_sqrt, eps, weight_decay,
                        BETA1, BETA2, GRAD_DTYPE, MODE, PRUNED_ARE_ZERO, HAS_WD, ALIGNED, G_ALIGN, False, BLOCK)
        block, seg, start, k, numel = next_block, next_seg, next_start, next_k, next_numel


@triton.jit
def _sector_of(plan_ptr, n_blocks, row, valid, BLOCK: tl.constexpr):
    """(segment, first element) of sector `row` of the block plan (block * BLOCK // SECTOR + sector in the
    block: how the list names a sector), where `valid`."""
    ROWS: tl.constexpr = BLOCK // SECTOR
    block = row // ROWS
    seg = tl.load(plan_ptr + block, mask=valid, other=0)
    return seg, tl.load(plan_ptr + n_blocks + block, mask=valid, other=0) + (row % ROWS) * SECTOR


@triton.jit
def _live_sectors_kernel(p_table_ptr, mask_table_ptr, plan_ptr, n_blocks, n_seg, n_tiles, live_ptr, counters_ptr,
                         ZERO_DEAD: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
                         ROWS_PER_PROGRAM: tl.constexpr, PERSISTENT: tl.constexpr):
    """Frozen mode's first launch: appends every live sector (one with a kept element, or any sector of a
    tensor without a mask) to the list at `live_ptr`, as its row (block * BLOCK // SECTOR + sector in the
    block), in no particular order, and counts them in counters[0]. ZERO_DEAD (no pruned_are_zero promise):
    a dead sector's weights become +0.0, written without a read. All of it in 1-D tiles of ROWS_PER_PROGRAM
    sectors, a thread's sectors wholly its own: 2-D [sectors, SECTOR] tiles cost layout conversions through
    shared memory (34 barriers) and twice the registers. A program per tile; or PERSISTENT: a grid-stride
    loop over the tiles (LIVE_BUILD_PROGRAMS_PER_SM) that loads the next tile's masks before it reserves this
    one's span of the list, so that a tile's chain of dependent loads overlaps the previous one's atomic."""
    numel_ptr = plan_ptr + 2 * n_blocks + 2 * n_seg
    tile = tl.program_id(0)
    rows, seg, start, numel, live = _live_tile(mask_table_ptr, plan_ptr, numel_ptr, n_blocks, tile, ALIGNED, BLOCK,
                                               ROWS_PER_PROGRAM)
    if PERSISTENT:
        while tile < n_tiles:
            next_tile = tile + tl.num_programs(0)
            next_rows, next_seg, next_start, next_numel, next_live = _live_tile(
                mask_table_ptr, plan_ptr, numel_ptr, n_blocks, next_tile, ALIGNED, BLOCK, ROWS_PER_PROGRAM)
            _live_append(p_table_ptr, live_ptr, counters_ptr, rows, seg, start, numel, live, ZERO_DEAD, ALIGNED)
            tile, rows, seg, start, numel, live = next_tile, next_rows, next_seg, next_start, next_numel, next_live
    else:
        _live_append(p_table_ptr, live_ptr, counters_ptr, rows, seg, start, numel, live, ZERO_DEAD, ALIGNED)


@triton.jit
def _live_tile(mask_table_ptr, plan_ptr, numel_ptr, n_blocks, tile, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
               ROWS_PER_PROGRAM: tl.constexpr):
    """The build's loads for one tile of sectors: (rows, segment, first element, the tensor's element count
    (0 past the last block: nothing exists there), whether each sector is live)."""
    rows = tile * ROWS_PER_PROGRAM + tl.arange(0, ROWS_PER_PROGRAM)
    valid = rows // (BLOCK // SECTOR) < n_blocks
    seg, start = _sector_of(plan_ptr, n_blocks, rows, valid, BLOCK)
    numel = tl.load(numel_ptr + seg, mask=valid, other=0)
    mask_addr = tl.load(mask_table_ptr + seg, mask=valid, other=0)
    has_mask = mask_addr != 0
    exists = start < numel
    whole = start + SECTOR <= numel
    if ALIGNED:
        # A whole sector's 8 mask bytes (8-byte aligned) as one int64: one load, not 8. A tensor's last, partial
        # sector is listed unread (an int64 would read past the tensor): listing a dead sector costs its
        # traffic, never a wrong value, since the update decides each element by its own mask byte.
        word = tl.load((mask_addr + start).to(tl.pointer_type(tl.int64)), mask=has_mask & whole, other=0)
        live = exists & (~has_mask | ~whole | (word != 0))
    else:
        live = exists & ~has_mask
        for j in tl.static_range(SECTOR):
            byte = tl.load(mask_addr.to(tl.pointer_type(tl.uint8)) + start + j,
                           mask=has_mask & (start + j < numel), other=0)
            live = live | (byte != 0)
    return rows, seg, start, numel, live


@triton.jit
def _live_append(p_table_ptr, live_ptr, counters_ptr, rows, seg, start, numel, live, ZERO_DEAD: tl.constexpr,
                 ALIGNED: tl.constexpr):
    """The build's writes for one tile (`_live_tile`): its live rows into the list, and with ZERO_DEAD +0.0 into
    its dead sectors' weights."""
    # One atomic per tile reserves its span of the list; the rows go there in order.
    n_live = live.to(tl.int32)
    base = tl.atomic_add(counters_ptr, tl.sum(n_live, 0), sem="relaxed")
    tl.store(live_ptr + base + tl.cumsum(n_live, 0) - n_live, rows, mask=live)
    if ZERO_DEAD:
        exists = start < numel
        dead = exists & ~live
        p_ptr = tl.load(p_table_ptr + seg, mask=exists, other=0).to(tl.pointer_type(tl.float32)) + start
        if ALIGNED:  # (dead sectors are whole here) 32 bytes as 4 int64 zeros: the weights are 16-byte aligned
            whole = start + SECTOR <= numel
            for j in tl.static_range(SECTOR // 2):
                tl.store(p_ptr.to(tl.pointer_type(tl.int64)) + j, tl.zeros(p_ptr.shape, tl.int64), mask=dead & whole)
        else:
            for j in tl.static_range(SECTOR):
                tl.store(p_ptr + j, tl.zeros(p_ptr.shape, tl.float32), mask=dead & (start + j < numel))


@triton.jit
def _live_rows(live_ptr, plan_ptr, n_blocks, n_live, first, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """(segment, first element) of the halves of the CHUNK list entries from `first` on (2 * CHUNK rows of
    HALF elements), and whether each exists; as [2 * CHUNK, 1] tensors. Half sectors because a row of HALF
    fp32 is one thread's 128-bit vector: the rows' values then sit in the threads that use them, where with
    whole sectors (two threads each) the compiler moves every pointer tile through shared memory."""
    half = tl.arange(0, 2 * CHUNK)[:, None]
    idx = first + half // 2
    listed = idx < n_live
    seg, start = _sector_of(plan_ptr, n_blocks, tl.load(live_ptr + idx, mask=listed, other=0), listed, BLOCK)
    return seg, start + (half % 2) * HALF, listed


@triton.jit
def _live_chunk(p_table_ptr, g_table_ptr, m_table_ptr, v_table_ptr, mask_table_ptr, seg, start, listed, inb,
                step_size, bc2_sqrt, eps, weight_decay, BETA1: tl.constexpr, BETA2: tl.constexpr,
                GRAD_DTYPE: tl.constexpr, PRUNED_ARE_ZERO: tl.constexpr, HAS_WD: tl.constexpr, ALIGNED: tl.constexpr):
    """Frozen mode's update of one chunk of listed sectors, as half-sector rows (`_live_rows`); `inb`: which of
    their elements exist."""
    offs = start + tl.arange(0, HALF)[None, :]
    if ALIGNED:
        offs = tl.max_contiguous(tl.multiple_of(offs, [1, HALF]), [1, HALF])
    p_ptr = tl.load(p_table_ptr + seg, mask=listed, other=0).to(tl.pointer_type(tl.float32)) + offs
    g_ptr = tl.load(g_table_ptr + seg, mask=listed, other=0).to(tl.pointer_type(GRAD_DTYPE)) + offs
    m_ptr = tl.load(m_table_ptr + seg, mask=listed, other=0).to(tl.pointer_type(tl.float32)) + offs
    v_ptr = tl.load(v_table_ptr + seg, mask=listed, other=0).to(tl.pointer_type(tl.float32)) + offs
    mask_addr = tl.load(mask_table_ptr + seg, mask=listed, other=0)
    k_ptr = mask_addr.to(tl.pointer_type(tl.uint8)) + offs
    if ALIGNED:  # see _adam_sectors (the hints must be given here, with the pointer arithmetic)
        p_ptr = tl.multiple_of(p_ptr, [1, 16])
        g_ptr = tl.multiple_of(g_ptr, [1, 16 if GRAD_DTYPE == tl.float32 else 8])
        m_ptr = tl.multiple_of(m_ptr, [1, 16])
        v_ptr = tl.multiple_of(v_ptr, [1, 16])
        k_ptr = tl.multiple_of(k_ptr, [1, 4])
    has_mask = mask_addr != 0
    k = tl.load(k_ptr, mask=inb & has_mask, other=0)
    k = tl.where(has_mask, k, inb.to(tl.uint8))  # a tensor without a mask keeps everything
    _adam_sectors(p_ptr, g_ptr, m_ptr, v_ptr, k, inb, tl.full(listed.shape, 1, tl.int1), step_size, bc2_sqrt, eps,
                  weight_decay, BETA1, BETA2, FROZEN, PRUNED_ARE_ZERO, HAS_WD)


@triton.jit
def _frozen_live_kernel(p_table_ptr, g_table_ptr, m_table_ptr, v_table_ptr, mask_table_ptr, plan_ptr, n_blocks,
                        n_seg, live_ptr, counters_ptr, scalars_ptr, step_size, bc2_sqrt, eps, weight_decay,
                        BETA1: tl.constexpr, BETA2: tl.constexpr, GRAD_DTYPE: tl.constexpr,
                        STEP_ON_DEVICE: tl.constexpr, PRUNED_ARE_ZERO: tl.constexpr, HAS_WD: tl.constexpr,
                        ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """Frozen mode's update: a persistent grid walks the list of live sectors CHUNK at a time (gathered as
    2 * CHUNK rows of HALF elements, see `_live_rows`), so its work is the live sectors' whatever the
    sparsity. The last program to finish resets the list's counters for the next call."""
    if STEP_ON_DEVICE:
        step_size = tl.load(scalars_ptr)
        bc2_sqrt = tl.load(scalars_ptr + 1)
    numel_ptr = plan_ptr + 2 * n_blocks + 2 * n_seg
    n_live = tl.load(counters_ptr)
    first = tl.program_id(0) * CHUNK
    seg, start, listed = _live_rows(live_ptr, plan_ptr, n_blocks, n_live, first, CHUNK, BLOCK)
    while first < n_live:
        # The next chunk's rows a chunk ahead: the gathers below wait on two dependent loads fewer.
        next_first = first + tl.num_programs(0) * CHUNK
        next_seg, next_start, next_listed = _live_rows(live_ptr, plan_ptr, n_blocks, n_live, next_first, CHUNK,
                                                       BLOCK)
        numel = tl.load(numel_ptr + seg, mask=listed, other=0)
        row_whole = listed & (start + HALF <= numel)
        if tl.sum((listed & ~row_whole).to(tl.int32)) == 0:
            # No tensor's last, partial sector in the chunk: a predicate per row, so the accesses are vectors.
            _live_chunk(p_table_ptr, g_table_ptr, m_table_ptr, v_table_ptr, mask_table_ptr, seg, start, listed,
                        tl.broadcast_to(row_whole, [2 * CHUNK, HALF]), step_size, bc2_sqrt, eps, weight_decay, BETA1,
                        BETA2, GRAD_DTYPE, PRUNED_ARE_ZERO, HAS_WD, ALIGNED)
        else:
            _live_chunk(p_table_ptr, g_table_ptr, m_table_ptr, v_table_ptr, mask_table_ptr, seg, start, listed,
                        listed & (start + tl.arange(0, HALF)[None, :] < numel), step_size, bc2_sqrt, eps,
                        weight_decay, BETA1, BETA2, GRAD_DTYPE, PRUNED_ARE_ZERO, HAS_WD, ALIGNED)
        first, seg, start, listed = next_first, next_seg, next_start, next_listed
    # Every program read the count before its "done" (barrier + acq_rel, as kernels.topk_mask's last block).
    tl.debug_barrier()
    if tl.atomic_add(counters_ptr + 1, 1, sem="acq_rel") == tl.num_programs(0) - 1:
        tl.store(counters_ptr, 0)
        tl.store(counters_ptr + 1, 0)


# --- launch plan and launcher -----------------------------------------------------------------------------


class _AdamPlan:
    """Everything one set of tensors needs for a launch: validated once, cached (see kernels._utils)."""

    def __init__(self, params, grads, exp_avgs, exp_avg_sqs, masks, block: int):
        device = params[0].device
        check_adam_inputs(params, grads, exp_avgs, exp_avg_sqs, masks, "faithful")
        for i, (p, m, v, mask) in enumerate(zip(params, exp_avgs, exp_avg_sqs, masks)):
            for name, t, dtypes in (("params", p, (torch.float32,)), ("exp_avgs", m, (torch.float32,)),
                                    ("exp_avg_sqs", v, (torch.float32,)), ("masks", mask, (torch.bool, torch.uint8))):
                if t is not None:
                    _utils.check_tensor(t, f"{name}[{i}]", device, dtypes)
        written = [(f"{name}[{i}]", t, True) for name, seq in (
            ("params", params), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)) for i, t in enumerate(seq)]
        _utils.check_no_aliasing(written + [(f"masks[{i}]", t, False) for i, t in enumerate(masks)])
        self.device = device
        self.plan, self.n_blocks = _utils.block_plan([p.numel() for p in params], block, device)
        self.scalars = torch.zeros(2, dtype=torch.float32, device=device)
        self.state_tables = [_utils.pointer_table(seq, device) for seq in (params, exp_avgs, exp_avg_sqs, masks)]
        self.state_aligned = _utils.all_aligned(itertools.chain(params, exp_avgs, exp_avg_sqs, masks))
        self.written = _utils.Spans(written)  # for checking the gradients of later calls
        programs = _utils.persistent_programs(device, PROGRAMS_PER_SM, INTERPRETER_PROGRAMS)
        self.grid = (max(1, min(self.n_blocks, programs)),)
        self.n_seg = len(params)
        self.live = _LiveList(self.n_blocks * (block // SECTOR.value))  # shared with the copies of with_grads
        self._bind_grads(params, grads)

    def with_grads(self, params, grads) -> _AdamPlan:
        """This plan for other gradient tensors of the same parameters (autograd makes new ones at every step
        after `zero_grad(set_to_none=True)`): only the gradients are validated, and only their table is new."""
        plan = copy.copy(self)
        plan._bind_grads(params, grads)
        return plan

    def _bind_grads(self, params, grads) -> None:
        dtype = grads[0].dtype
        if dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"masked_adam_: grads[0] has dtype {dtype}; expected float32 or bfloat16")
        for i, (p, g) in enumerate(zip(params, grads)):
            _utils.check_tensor(g, f"grads[{i}]", self.device, (dtype,))
            if g.shape != p.shape:
                raise ValueError(f"masked_adam_: grad of tensor {i} has shape {tuple(g.shape)}, param has "
                                 f"{tuple(p.shape)}")
        self.written.check_reads([(f"grads[{i}]", g) for i, g in enumerate(grads)])  # reads may share memory
        self.grad_dtype = _utils.triton_dtype(dtype)
        p_table, m_table, v_table, mask_table = self.state_tables
        self.tables = [p_table, _utils.pointer_table(grads, self.device), m_table, v_table, mask_table]
        self.aligned = self.state_aligned and _utils.all_aligned(grads)
        self.buffers = [self.plan, self.scalars, *self.tables]


class _LiveList:
    """Frozen mode's list of live sectors (`_live_sectors_kernel`): room for every sector of a plan's tensors,
    and [count, programs done], which the update leaves at zero. Allocated by a plan's first frozen call."""

    def __init__(self, rows: int):
        self.rows = rows
        self.buffers: list[torch.Tensor] = []

    def get(self, device: torch.device) -> list[torch.Tensor]:
        if not self.buffers:
            if _utils.capturing(device):  # zeros written inside a capture exist only once the graph replays
                raise RuntimeError("masked_adam_: the first frozen-mode step on these tensors is inside a CUDA-graph "
                                   "capture; take one frozen step before capturing (it allocates the live-sector "
                                   "list)")
            self.buffers = [torch.empty(self.rows, dtype=torch.int32, device=device),  # (rows > 0: launched)
                            torch.zeros(2, dtype=torch.int32, device=device)]
        return self.buffers


# Plans by every tensor of a call, and by all but the gradients (see `_plan_for`).
_plans = _utils.PlanCache(size=64)
_state_plans = _utils.PlanCache(size=16)


def _plan_key(params, grads, exp_avgs, exp_avg_sqs, masks, block: int) -> tuple[tuple, tuple, list]:
    """(key, data pointers, tensors) of a call's plan. This is most of a cached call's host time: two passes
    over every tensor (id, data_ptr), ~0.1 us per tensor, 153 tensors at Impala w3."""
    dense = params + grads + exp_avgs + exp_avg_sqs  # lists (the public function makes them so)
    ptrs = (*map(_data_ptr, dense), *[t.data_ptr() for t in masks if t is not None])
    return (block, *map(id, dense), *map(id, masks)), ptrs, dense + masks


def _plan_for(params, grads, exp_avgs, exp_avg_sqs, masks, block: int) -> _AdamPlan:
    """The call's cached plan; else the plan of the same parameters, moments and masks with these gradients
    bound (a step after `zero_grad(set_to_none=True)`: only the gradients are validated, ~130 us at Impala w3
    on a CPU core instead of ~420 us); else a new one."""
    key, ptrs, tensors = _plan_key(params, grads, exp_avgs, exp_avg_sqs, masks, block)
    device = params[0].device

    def build() -> _AdamPlan:
        # The call's key, addresses and tensors without the gradients' (`_plan_key` lays each out as params,
        # grads, then moments and masks).
        n = len(params)
        state_key, state_ptrs = key[:1 + n] + key[1 + 2 * n:], ptrs[:n] + ptrs[2 * n:]
        base = _state_plans.get(state_key, state_ptrs)
        if base is not None:
            return base.with_grads(params, grads)
        plan = _AdamPlan(params, grads, exp_avgs, exp_avg_sqs, masks, block)
        if not _utils.capturing(device):  # (a plan built inside a capture is never cached)
            _state_plans.put(state_key, state_ptrs, copy.copy(plan), tensors[:n] + tensors[2 * n:])
        return plan

    return _utils.plan_for(_plans, key, ptrs, tensors, device, build)


def _masked_adam_launch(params, grads, exp_avgs, exp_avg_sqs, masks, step_t, step: int, lr: float, beta1: float,
                        beta2: float, eps: float, weight_decay: float, moments: str, pruned_are_zero: bool,
                        block: int) -> None:
    """Scalars (device steps) and the update; the plan is looked up (or built and validated) here."""
    plan = _plan_for(params, grads, exp_avgs, exp_avg_sqs, masks, block)
    if plan.n_blocks == 0:
        return
    if step_t is None:  # host step: the scalars in fp64, as the reference computes them
        step_size, bc2_sqrt = lr / (1.0 - beta1**step), (1.0 - beta2**step) ** 0.5
    else:
        step_size = bc2_sqrt = 1.0  # unused: the kernel reads plan.scalars
    live_list = moments == "frozen" and FROZEN_LIVE_LIST
    if live_list:
        live, counters = plan.live.get(plan.device)
        if _utils.capturing(plan.device):
            _utils.hold_for_capture([live, counters])
    hyper = dict(BETA1=beta1, BETA2=beta2, GRAD_DTYPE=plan.grad_dtype, STEP_ON_DEVICE=step_t is not None,
                 PRUNED_ARE_ZERO=pruned_are_zero, HAS_WD=weight_decay != 0.0, ALIGNED=plan.aligned, BLOCK=block,
                 num_warps=NUM_WARPS, enable_fp_fusion=False)
    with _utils.device_guard(plan.device):
        if step_t is not None:
            _adam_scalars_kernel[(1,)](step_t, plan.scalars, lr, BETA1=beta1, BETA2=beta2, num_warps=1)
        if not live_list:
            _masked_adam_kernel[plan.grid](*plan.tables, plan.plan, plan.n_blocks, plan.n_seg, plan.scalars, step_size,
                                           bc2_sqrt, eps, weight_decay, MODE=_MODE_ID[moments], **hyper)
            return
        p_table, _, _, _, mask_table = plan.tables
        if plan.device.type == "cuda":
            rows, chunk = LIVE_ROWS_PER_PROGRAM, LIVE_CHUNK
        else:
            rows, chunk = _interpreter_live_sizes(plan.live.rows, plan.grid[0])
        n_tiles = triton.cdiv(plan.live.rows, rows)
        persistent = LIVE_BUILD_PROGRAMS_PER_SM > 0
        build_grid = n_tiles if not persistent else min(n_tiles, _utils.persistent_programs(
            plan.device, LIVE_BUILD_PROGRAMS_PER_SM, LIVE_INTERPRETER_BUILD_PROGRAMS))
        _live_sectors_kernel[(build_grid,)](
            p_table, mask_table, plan.plan, plan.n_blocks, plan.n_seg, n_tiles, live, counters,
            ZERO_DEAD=not pruned_are_zero, ALIGNED=plan.aligned, BLOCK=block, ROWS_PER_PROGRAM=rows,
            PERSISTENT=persistent, num_warps=LIVE_WARPS)
        try:
            _frozen_live_kernel[plan.grid](*plan.tables, plan.plan, plan.n_blocks, plan.n_seg, live, counters,
                                           plan.scalars, step_size, bc2_sqrt, eps, weight_decay, CHUNK=chunk,
                                           **hyper)
        except BaseException:
            # The update resets the count the build made; a next call must not append to this one's list.
            if not _utils.capturing(plan.device):
                counters.zero_()
            raise


def _interpreter_live_sizes(sectors: int, programs: int) -> tuple[int, int]:
    """(sectors per build program, sectors per chunk of the walk) under the interpreter (see LIVE_CHUNK). The
    build's tile is not capped by the GPU's LIVE_ROWS_PER_PROGRAM: at 128, a network's frozen steps took the
    interpreter over 10 minutes in the graph-safety test (each program costs it a fixed overhead)."""
    rows = triton.next_power_of_2(max(1, sectors // LIVE_INTERPRETER_PROGRAMS))
    chunk = triton.next_power_of_2(max(1, sectors // (LIVE_INTERPRETER_TURNS * programs)))
    return min(rows, LIVE_INTERPRETER_MAX_ROWS), min(chunk, LIVE_CHUNK)


_data_ptr = torch.Tensor.data_ptr


# --- torch.library registration ---------------------------------------------------------------------------
# Opaque custom op (not `triton_op`): the kernel reads a device table of data pointers, which Inductor can't
# build from fake tensors. torch.compile sees one node with declared mutations (no graph break), and CUDA
# graphs capture the launches. Eager calls skip the dispatcher (its per-call cost is ~100 us for a network's
# tensor lists) and launch directly.


@torch.library.custom_op("prunerl::masked_adam_", mutates_args=("params", "exp_avgs", "exp_avg_sqs"))
def _masked_adam_op(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                    exp_avg_sqs: list[torch.Tensor], masks: list[torch.Tensor | None], step_t: torch.Tensor | None,
                    step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, moments: str,
                    pruned_are_zero: bool, block: int) -> None:
    _masked_adam_launch(params, grads, exp_avgs, exp_avg_sqs, masks, step_t, step, lr, beta1, beta2, eps,
                        weight_decay, moments, pruned_are_zero, block)


@_masked_adam_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, masks, step_t, step, lr, beta1, beta2, eps, weight_decay, moments,
      pruned_are_zero, block) -> None:
    return None


# --- public function --------------------------------------------------------------------------------------


def _as_list(seq) -> list:
    return seq if type(seq) is list else list(seq)


def masked_adam_triton_(params, grads, exp_avgs, exp_avg_sqs, masks, *, step, lr: float, beta1: float = 0.9,
                        beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                        moments: str = "faithful", pruned_are_zero: bool = False, block: int = ADAM_BLOCK) -> None:
    """In-place masked Adam step on every tensor in one launch (see the module docstring).

    step: 1-based step count after this update; an int, or a 0-d tensor on the params' device.
    weight_decay: coupled L2 (added to the gradient before the moments, as torch.optim.Adam).
    pruned_are_zero: promise that pruned weights are already exactly 0, so sectors with nothing kept skip them.
    block: elements per block (a tuning knob; tests shrink it to get many blocks per tensor).
    """
    params, grads, exp_avgs, exp_avg_sqs, masks = map(_as_list, (params, grads, exp_avgs, exp_avg_sqs, masks))
    if len(params) == 0:
        return
    n = len(params)
    if not (len(grads) == len(exp_avgs) == len(exp_avg_sqs) == len(masks) == n):
        check_adam_inputs(params, grads, exp_avgs, exp_avg_sqs, masks, moments)  # raises with the details
    if moments not in _MODE_ID:
        raise ValueError(f"masked_adam_: moments={moments!r}; expected one of {MOMENTS_MODES}")
    if isinstance(step, torch.Tensor):
        if step.numel() != 1 or step.device != params[0].device:
            raise ValueError(f"step must be an int or a one-element tensor on {params[0].device}; got shape "
                             f"{tuple(step.shape)} on {step.device}")
        step_t, step = (step if step.dim() == 0 else step.reshape(())), 1
    else:
        step_t, step = None, int(adam_step(step))  # checked as the CPU paths check it (int() truncated 1.5)
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    check_adam_hyperparameters(lr, beta1, beta2, eps, weight_decay)
    args = (params, grads, exp_avgs, exp_avg_sqs, masks, step_t, step, float(lr), float(beta1), float(beta2),
            float(eps), float(weight_decay), moments, bool(pruned_are_zero), block)
    if torch.compiler.is_compiling():
        with torch.no_grad():  # the op mutates leaves that require grad (parameters)
            torch.ops.prunerl.masked_adam_(*args)
    else:  # the kernels write through raw pointers: nothing for autograd to see
        _masked_adam_launch(*args)
