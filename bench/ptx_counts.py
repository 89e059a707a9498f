"""PTX instruction counts of the mask-selection kernels, compiled for sm_90 on the CPU (no GPU needed).

    PYTHONPATH=.venv/triton-3.6:. python bench/ptx_counts.py          # this checkout, the GPU image's triton
    PYTHONPATH=.venv/triton-3.6:/path/to/old/checkout python bench/ptx_counts.py   # an older design
    PYTHONPATH=.venv/triton-3.6:. python bench/ptx_counts.py --adam   # the masked-Adam kernels instead

Compiles the float32 variant of every `kernels.topk_mask` kernel that `tests/kernels/_compile_for_gpu.py`
lists (from the checkout whose `kernels` is imported) and prints, per kernel, its warps, its PTX
instruction count and its popcount / vote / shuffle instructions (the cost of `tl.histogram` and of scans),
then its basic blocks: instructions, those counts, where it branches, and for the block holding a
segment's acq_rel "blocks done" atomic, the instructions up to the branch that every block but the last
takes. A path through these blocks (e.g. the warm path: one turn of a slot loop) gives the instructions a
thread executes; times the warps, over the elements of a block, the warp-instructions per element.
With --adam: the same for the masked-Adam kernels (float32 gradients, aligned pointers, no pruned_are_zero;
the block walk in each moments mode, frozen mode's live-sector list build and walk), with ptxas's registers.
"""

from __future__ import annotations

import argparse
import re
import runpy
import sys
from pathlib import Path

import triton
from triton.compiler import ASTSource

KINDS = dict(popc=r"\bpopc", vote=r"\bvote", shfl=r"\bshfl", atom=r"\batom\.|\bred\.", ld_global=r"ld\.global",
             st_global=r"st\.global", global_v4=r"(ld|st)\.global\S*\.v4", bar=r"bar\.sync")


def instructions(lines: list[str]) -> list[str]:
    skip = ("//", ".", "{", "}", "$L__tmp", "$L__func", ")")
    return [s for s in (line.strip() for line in lines) if s and not s.startswith(skip)]


def basic_blocks(ptx: str) -> list[tuple[str, list[str]]]:
    blocks, name, current = [], "entry", []
    for line in ptx.splitlines():
        label = re.match(r"^\s*(\$L__BB\d+_\d+):", line)
        if label:
            blocks.append((name, instructions(current)))
            name, current = label.group(1), []
        else:
            current.append(line)
    blocks.append((name, instructions(current)))
    return blocks


def counts(ins: list[str]) -> str:
    found = {k: sum(1 for i in ins if re.search(p, i)) for k, p in KINDS.items()}
    return " ".join(f"{k}={v}" for k, v in found.items() if v)


def main() -> None:
    import kernels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adam", action="store_true", help="the masked-Adam kernels instead of mask selection's")
    adam = parser.parse_args().adam
    root = Path(kernels.__file__).resolve().parents[1]
    sys.argv = ["_compile_for_gpu.py", "90"]
    compile_script = runpy.run_path(str(root / "tests" / "kernels" / "_compile_for_gpu.py"), run_name="variants")
    print(f"triton {triton.__version__}, sm_90, kernels from {root.name}")
    seen = set()
    for name, fn, warps, sig, consts in compile_script["variants"]():
        if consts.get("ALIGNED") is False:  # what runs for tensors from torch's allocator
            continue
        if adam:
            key = (name, consts.get("MODE"), consts.get("ZERO_DEAD"))
            if (name not in ("masked_adam", "live_sectors", "frozen_live") or key in seen
                    or str(consts.get("GRAD_DTYPE", "fp32")) != "fp32" or consts.get("PRUNED_ARE_ZERO")):
                continue
        else:
            key = name
            dtype = consts.get("DTYPE")
            if name in seen or name.startswith(("adam", "masked_adam", "live", "frozen")) or (
                    dtype is not None and str(dtype) != "fp32"):
                continue
        seen.add(key)
        signature = {**sig, **{k: "constexpr" for k in consts}}
        # As the launchers and the compile check (older checkouts' compile scripts had a dict, or nothing).
        extra = (compile_script["extra_options"](name, consts) if "extra_options" in compile_script
                 else compile_script.get("EXTRA_OPTIONS", {}).get(name, {}))
        options = {"num_warps": warps, "enable_fp_fusion": False, **extra}
        kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts),
                                target=compile_script["TARGET"], options=options)
        ptx = kernel.asm["ptx"]
        shown = {k: v for k, v in consts.items() if k in ("MODE", "ZERO_DEAD")}
        usage = compile_script["resource_usage"](kernel.asm["cubin"]) if adam else ""
        print(f"\n{name}{' ' + str(shown) if shown else ''}: {warps} warps, {len(instructions(ptx.splitlines()))} "
              f"PTX instructions, {counts(instructions(ptx.splitlines()))} {usage}".rstrip())
        for block, ins in basic_blocks(ptx):
            branches = [re.sub(r"\s+", " ", i) for i in ins if re.search(r"\bbra\b", i)]
            line = f"  {block}: {len(ins)} {counts(ins)} -> {branches}"
            done = [j for j, i in enumerate(ins) if "acq_rel" in i]
            if done:
                exit_at = next(j for j in range(done[0], len(ins)) if re.search(r"\bbra\b", ins[j]))
                line += f" (to the not-last-block exit: {exit_at + 1})"
            print(line)


if __name__ == "__main__":
    main()
