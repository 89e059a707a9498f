"""Compile every kernel variant for an NVIDIA GPU target without a GPU: frontend, LLVM, ptxas.

The interpreter runs kernels as Python and is more permissive than the compiler (e.g. about non-constexpr
globals and types across branches), so CPU CI also checks that the real compile succeeds. Run by
tests/kernels/test_gpu_compile.py in a subprocess, because TRITON_INTERPRET must be unset at import time.
Prints one line per variant (with ptxas's registers and local memory per thread); exits 1 if any failed.
"""

import itertools
import pathlib
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import kernels.masked_adam as ma  # noqa: E402
import kernels.topk_mask as tm  # noqa: E402

TARGET = GPUTarget("cuda", int(sys.argv[1]) if len(sys.argv) > 1 else 90, 32)
I64, I32 = "*i64", "*i32"


def extra_options(name: str, consts: dict) -> dict:
    """Launch options beyond warps that a kernel's launcher passes (the compile must check what runs)."""
    if name == "guess":
        return dict(maxnreg=tm.guess_max_registers(consts["ALIGNED"], consts["W_BYTES"]))
    return {}


def variants():
    table = dict(n_blocks="i32", n_seg="i32")
    blocks = dict(blk_seg_ptr=I32, blk_start_ptr=I32)
    segs = dict(seg_nblocks_ptr=I32, seg_numel_ptr=I32)
    shape = dict(BLOCK=tm.TOPK_BLOCK, SLOTS=tm.TOPK_BLOCK // tm.SLOTS_PER_BLOCK)
    for warm in (False, True):
        yield ("prepare", tm._prepare_kernel, 4,
               dict(seg_numel_ptr=I32, keep_ptr=I64, state_ptr=I32, hist_ptr=I32),
               dict(WARM_START=warm))
    slots = dict(slot_ptr=I32, count_ptr=I32)
    chunk = dict(CHUNK=min(tm.CAND_CHUNK, shape["SLOTS"]), PIECE=tm.CAND_PIECE)
    guess_rows = tm.TOPK_BLOCK // tm.VEC.value
    for dtype in (tl.float32, tl.float16, tl.bfloat16):
        # A row per thread's row (the measured layout), and with aligned pointers a thread's rows consecutive
        # (GUESS_THREAD_MAJOR).
        for aligned, threads in ((False, guess_rows), (True, guess_rows), (True, 32 * tm.NUM_WARPS)):
            yield ("guess", tm._guess_kernel, tm.NUM_WARPS,
                   dict(w_table_ptr=I64, out_table_ptr=I64, **blocks, seg_numel_ptr=I32, state_ptr=I32, **slots),
                   dict(DTYPE=dtype, **shape, ALIGNED=aligned, W_BYTES=dtype.primitive_bitwidth // 8, THREADS=threads))
        yield ("cold", tm._cold_kernel, tm.NUM_WARPS,
               dict(w_table_ptr=I64, **blocks, **segs, state_ptr=I32, hist_ptr=I32, n_blocks="i32", n_seg="i32"),
               dict(DTYPE=dtype, BLOCK=tm.TOPK_BLOCK, SEGS=tm.VERDICT_SEGS))
        yield ("digit2", tm._digit2_kernel, tm.CAND_WARPS,
               dict(w_table_ptr=I64, out_table_ptr=I64, **blocks, **segs, state_ptr=I32, hist_ptr=I32, **slots,
                    n_blocks="i32"), dict(DTYPE=dtype, **shape, **chunk))
        yield ("digit3", tm._digit3_kernel, tm.CAND_WARPS,
               dict(w_table_ptr=I64, **blocks, **segs, state_ptr=I32, hist_ptr=I32, **slots, ties_ptr=I32,
                    n_blocks="i32"),
               dict(DTYPE=dtype, **shape, **chunk))
        yield ("tie", tm._tie_kernel, tm.CAND_WARPS,
               dict(w_table_ptr=I64, **blocks, seg_first_ptr=I32, **segs, state_ptr=I32, **slots,
                    eq_ptr=I32, ties_ptr=I32, n_blocks="i32"), dict(DTYPE=dtype, **shape, **chunk, SCAN=tm.SCAN_CHUNK))
        for zero in (False, True):
            yield ("fixup", tm._fixup_kernel, tm.CAND_WARPS,
                   dict(w_table_ptr=I64, out_table_ptr=I64, m_table_ptr=I64, v_table_ptr=I64, **blocks,
                        seg_numel_ptr=I32, state_ptr=I32, **slots, eq_ptr=I32, ties_ptr=I32,
                        n_blocks="i32"),
                   dict(DTYPE=dtype, ZERO_WEIGHTS=zero, ZERO_MOMENTS=zero, **shape,
                        SLOT_LIMIT=-1 if zero else shape["SLOTS"], **chunk))
    for step_type in ("*fp32", "*i64"):  # torch.optim.Adam's float step counts, or integer ones
        yield ("adam_scalars", ma._adam_scalars_kernel, 1, dict(step_ptr=step_type, scalars_ptr="*fp32", lr="fp32"),
               dict(BETA1=0.9, BETA2=0.999))
    for mode, pz, aligned, gdt in itertools.product(range(3), (False, True), (False, True), (tl.float32, tl.bfloat16)):
        yield ("masked_adam", ma._masked_adam_kernel, ma.NUM_WARPS,
               dict(p_table_ptr=I64, g_table_ptr=I64, m_table_ptr=I64, v_table_ptr=I64, mask_table_ptr=I64,
                    plan_ptr=I32, **table, scalars_ptr="*fp32", step_size="fp32", bc2_sqrt="fp32", eps="fp32",
                    weight_decay="fp32"),
               dict(BETA1=0.9, BETA2=0.999, GRAD_DTYPE=gdt, STEP_ON_DEVICE=mode != 1, MODE=mode, PRUNED_ARE_ZERO=pz,
                    HAS_WD=pz, ALIGNED=aligned, BLOCK=ma.ADAM_BLOCK))
    live = dict(plan_ptr=I32, **table, live_ptr=I32, counters_ptr=I32)
    rows = ma.LIVE_ROWS_PER_PROGRAM
    for zero_dead, aligned, persistent in itertools.product((False, True), (False, True), (False, True)):
        yield ("live_sectors", ma._live_sectors_kernel, ma.LIVE_WARPS,
               dict(p_table_ptr=I64, mask_table_ptr=I64, plan_ptr=I32, **table, n_tiles="i32", live_ptr=I32,
                    counters_ptr=I32),
               dict(ZERO_DEAD=zero_dead, ALIGNED=aligned, BLOCK=ma.ADAM_BLOCK, ROWS_PER_PROGRAM=rows,
                    PERSISTENT=persistent))
    for pz, aligned, gdt in itertools.product((False, True), (False, True), (tl.float32, tl.bfloat16)):
        yield ("frozen_live", ma._frozen_live_kernel, ma.NUM_WARPS,
               dict(p_table_ptr=I64, g_table_ptr=I64, m_table_ptr=I64, v_table_ptr=I64, mask_table_ptr=I64, **live,
                    scalars_ptr="*fp32", step_size="fp32", bc2_sqrt="fp32", eps="fp32", weight_decay="fp32"),
               dict(BETA1=0.9, BETA2=0.999, GRAD_DTYPE=gdt, STEP_ON_DEVICE=True, PRUNED_ARE_ZERO=pz, HAS_WD=pz,
                    ALIGNED=aligned, BLOCK=ma.ADAM_BLOCK, CHUNK=ma.LIVE_CHUNK))


CUOBJDUMP = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def resource_usage(cubin: bytes) -> str:
    """ptxas's registers per thread and local memory (spills, stack) per thread of a compiled kernel, read from
    its cubin with the cuobjdump that ships with triton ("regs=? local=?" where it is missing). Spilled
    registers show as STACK, not LOCAL (cuobjdump 12.8: a full read capped at 64 registers reads "REG:64
    STACK:8 LOCAL:0"), so local counts both."""
    if not CUOBJDUMP.exists():
        return "regs=? local=?"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(CUOBJDUMP), "-res-usage", f.name], capture_output=True, text=True).stdout
    return parse_resource_usage(out)


def parse_resource_usage(out: str) -> str:
    """`resource_usage`'s summary of cuobjdump's -res-usage output."""
    regs, local, stack = (re.search(rf"{field}:(\d+)", out) for field in ("REG", "LOCAL", "STACK"))
    local = int(local.group(1)) + int(stack.group(1)) if local and stack else "?"
    return f"regs={regs.group(1) if regs else '?'} local={local}"


def main() -> int:
    failed = 0
    for name, fn, warps, sig, consts in variants():
        signature = {**sig, **{k: "constexpr" for k in consts}}
        try:
            # The launchers' numerics choice (no FMA contraction), so the compile checks what runs.
            kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts), target=TARGET,
                                    options={"num_warps": warps, "enable_fp_fusion": False,
                                             **extra_options(name, consts)})
            ptx = kernel.asm["ptx"]
            # 128-bit global loads/stores (what masked Adam's ALIGNED flag is for), and CTA barriers.
            v4 = ptx.count("ld.global.v4") + ptx.count("st.global.v4")
            print(f"ok   {name} {consts} {resource_usage(kernel.asm['cubin'])} shared={kernel.metadata.shared} "
                  f"v4={v4} bar={ptx.count('bar.sync')}")
        except Exception as e:  # report every failing variant, not just the first
            failed += 1
            print(f"FAIL {name} {consts}: {type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
