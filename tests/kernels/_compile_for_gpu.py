"""Compile every kernel variant for an NVIDIA GPU target without a GPU: frontend, LLVM, ptxas.

The interpreter runs kernels as Python and is more permissive than the compiler (e.g. about non-constexpr
globals and types across branches), so CPU CI also checks that the real compile succeeds. Run by
tests/kernels/test_gpu_compile.py in a subprocess, because TRITON_INTERPRET must be unset at import time.
Prints one line per variant; exits 1 if any failed.
"""

import itertools
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import kernels.masked_adam as ma  # noqa: E402
import kernels.topk_mask as tm  # noqa: E402

TARGET = GPUTarget("cuda", int(sys.argv[1]) if len(sys.argv) > 1 else 90, 32)
I64, I32 = "*i64", "*i32"


def variants():
    table = dict(n_blocks="i32", n_seg="i32")
    for dtype, (p, bits) in itertools.product((tl.float32, tl.bfloat16), enumerate(tm.RADIX_BITS)):
        shift = 31 - sum(tm.RADIX_BITS[: p + 1])
        yield ("hist", tm._radix_hist_kernel, tm.NUM_WARPS,
               dict(w_table_ptr=I64, plan_ptr=I32, state_ptr=I32, hist_ptr=I32, **table),
               dict(DTYPE=dtype, SHIFT=shift, DIGIT_BITS=bits, FIRST=p == 0, BLOCK=tm.TOPK_BLOCK,
                    HIST_STRIDE=tm.HIST_BINS))
    for p, bits in enumerate(tm.RADIX_BITS):
        yield ("select", tm._radix_select_kernel, 4,
               dict(hist_ptr=I32, state_ptr=I32, keep_ptr=I64, plan_ptr=I32, **table),
               dict(DIGIT_BITS=bits, FIRST=p == 0, LAST=p == len(tm.RADIX_BITS) - 1, HIST_STRIDE=tm.HIST_BINS))
    yield ("tie_count", tm._tie_count_kernel, tm.NUM_WARPS,
           dict(w_table_ptr=I64, plan_ptr=I32, state_ptr=I32, eq_count_ptr=I32, **table),
           dict(DTYPE=tl.float16, BLOCK=tm.TOPK_BLOCK))
    yield ("tie_scan", tm._tie_scan_kernel, 4,
           dict(plan_ptr=I32, state_ptr=I32, eq_count_ptr=I32, eq_before_ptr=I32, **table), dict(CHUNK=tm.SCAN_CHUNK))
    for zero in (False, True):
        yield ("mask_write", tm._mask_write_kernel, tm.NUM_WARPS,
               dict(w_table_ptr=I64, out_table_ptr=I64, m_table_ptr=I64, v_table_ptr=I64, plan_ptr=I32, state_ptr=I32,
                    eq_before_ptr=I32, **table),
               dict(DTYPE=tl.float32, ZERO_WEIGHTS=zero, ZERO_MOMENTS=zero, BLOCK=tm.TOPK_BLOCK))
    for mode, pz, on_dev, gdt in itertools.product(range(3), (False, True), (False, True), (tl.float32, tl.bfloat16)):
        yield ("masked_adam", ma._masked_adam_kernel, ma.NUM_WARPS,
               dict(p_table_ptr=I64, g_table_ptr=I64, m_table_ptr=I64, v_table_ptr=I64, mask_table_ptr=I64,
                    plan_ptr=I32, **table, step_ptr=I64, step="i32", lr="fp32", eps="fp32"),
               dict(BETA1=0.9, BETA2=0.999, GRAD_DTYPE=gdt, STEP_ON_DEVICE=on_dev, MODE=mode, PRUNED_ARE_ZERO=pz,
                    BLOCK=ma.ADAM_BLOCK))


def main() -> int:
    failed = 0
    for name, fn, warps, sig, consts in variants():
        signature = {**sig, **{k: "constexpr" for k in consts}}
        try:
            kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts), target=TARGET,
                                    options={"num_warps": warps})
            print(f"ok   {name} {consts} shared={kernel.metadata.shared}")
        except Exception as e:  # report every failing variant, not just the first
            failed += 1
            print(f"FAIL {name} {consts}: {type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
