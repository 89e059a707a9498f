"""Launch-knob sweep of the two Triton kernels on a GPU: which block size, warps and grid beat the defaults.

    python3 bench/tune_kernels.py                     # on the GPU machine (torch + triton only), 150 s budget
    python3 bench/tune_kernels.py --budget-s 100      # whatever fits in 100 s, most telling cases first
    python3 bench/tune_kernels.py --dry-run           # the CPU rehearsal: interpreter, tiny sizes, seconds

The kernels' knobs (kernels/topk_mask.py: block, warps of the full read, warps and programs of the candidate
passes, candidate slots per block; kernels/masked_adam.py: programs per SM, warps, block, and frozen mode's
live-sector list) were first set on paper, then from this sweep on an H100 and an H200 (bench/results/*/tune/,
each quoted where its constant is defined). This sweep changes one knob at a time from the current defaults
(then tries every knob's best alternative at once, `combined_config`), on the cases the targets of
bench/README.md are about (mask selection on the 50M set at 95% and at Impala w3, in a CUDA graph; masked
Adam on the flat 50M buffer in faithful mode at 0% and frozen mode at 95 and 99%, and at Impala w3 in a
graph), and records for each configuration: the median device time (do_bench, L2
flushed), the ratio to the defaults measured in the same run, the ideal time of the bytes the op must move at
the copy bandwidth measured in the same run, the registers and spills of each kernel it launched, and whether
the result is right. A configuration is right when its masks equal the reference's (kernels.reference, a
stable sort) and its Adam step is bit-identical to the defaults' from the same state (the defaults are tested
against torch.optim.Adam by `pytest -m gpu`); a wrong or failing one is recorded as such and never reported as
the best.

Each masked-Adam case also times, first, what its target compares with (fused Adam alone at 0%, fused Adam then
the masks' `mul_` when pruned; bench_kernels' providers): the summary gives the defaults' and the best
configuration's time against it, from the same run.

Writes tune.jsonl (a row per configuration, appended as it is measured, so a killed sweep keeps what it
measured) and tune.md (a table per case, best first) into --out: by default
bench/results/<gpu>_<sha>/tune/ beside the proof of the same commit, or $OUT/<gpu>_<sha>/tune/ when $OUT is
set (the device machine's return folder). The defaults stay the defaults until a person reads the result
and changes them in the kernel modules (and their docstrings), with the register check of
tests/kernels/test_gpu_compile*.py still passing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_BENCH = _ROOT / "bench"

DEFAULT_BUDGET_S = 150.0
DRY_BUDGET_S = 60.0
REP_MS = 60  # do_bench's measuring window per configuration

# Alternatives to each knob's current default, one knob changed at a time (the default itself is measured
# first). Mask selection: `block` elements per program (<= 4096: a slot stores a position in 12 bits),
# `num_warps` of the full read and the cold histogram, `cand_warps` of the candidate passes, `slots_div`
# (candidate slots per block = block // slots_div), `cand_programs_per_sm` of the candidate passes (0: one
# program per block; else a grid-stride loop over that many per SM), `cand_piece` the elements per thread
# of a piece where a candidate pass reads a block's weights (cold path, overflowing slots): that path sets the
# passes' registers (digit 2: 184 at 16, 128 at 4, sm_90, triton 3.6), and so how many programs fit per SM,
# also on the warm path, which reads only slots; `guess_regs` the full read's register cap (64: four
# programs of 8 warps per SM instead of three, for 8 bytes of spills with triton 3.6); `thread_major` its
# rows as a thread holds them (GUESS_THREAD_MAJOR: a scan on one value per thread). Masked
# Adam: `programs_per_sm` of the persistent grid, `num_warps`, `block` elements per block; in frozen mode
# only, `frozen_live_list` (False: the block walk instead of the live-sector list), `live_rows` (sectors per
# program of the list's build), `live_warps` (the build's warps), `live_build_per_sm` (0: a build program
# per tile; else a grid-stride loop over that many per SM, each loading the next tile ahead) and
# `live_chunk` (listed sectors per turn of the list walk). A value equal to the default is skipped.
TOPK_ALTERNATIVES = {"block": (2048, 1024), "num_warps": (4, 16), "cand_warps": (2, 4), "slots_div": (8, 16),
                     "cand_programs_per_sm": (0, 16, 64), "cand_piece": (8, 4), "guess_regs": (64,),
                     "thread_major": (True,)}
ADAM_ALTERNATIVES = {"programs_per_sm": (4, 16), "num_warps": (4, 16), "block": (512, 2048),
                     "frozen_live_list": (False,), "live_rows": (64, 256, 1024), "live_warps": (2, 8),
                     "live_build_per_sm": (8, 16), "live_chunk": (64, 256)}
FROZEN_ONLY_KNOBS = ("frozen_live_list", "live_rows", "live_warps", "live_build_per_sm", "live_chunk")


def adam_alternatives(mode: str) -> dict:
    """The masked-Adam knobs that matter in moments mode `mode`, with their alternatives."""
    return {k: v for k, v in ADAM_ALTERNATIVES.items() if mode == "frozen" or k not in FROZEN_ONLY_KNOBS}

# (name, case, sparsity, moments mode), most telling first: a short budget measures the 50M cases of both
# kernels before the Impala w3 cases. A case whose name ends in "_graph" is timed replayed from a CUDA graph
# (`graph_timed`). Mask selection at 50M is timed in a graph too: its 7 eager launches take nearly as long to
# issue as to run, and the H200 sweeps timed the same eager call at 0.27 ms or 0.46-0.53 ms from one
# configuration to the next, whatever the knob (h200_*/tune).
TOPK_CASES = [("topk_50M_s95_graph", "synthetic_50M", 0.95, None),
              ("topk_w3_s95_graph", "impala_w3", 0.95, None)]
ADAM_CASES = [("adam_50M_faithful_s0", "flat_50M", 0.0, "faithful"),
              ("adam_50M_frozen_s95", "flat_50M", 0.95, "frozen"),
              ("adam_50M_frozen_s99", "flat_50M", 0.99, "frozen"),
              ("adam_w3_faithful_s95_graph", "impala_w3", 0.95, "faithful")]


def graph_timed(name: str) -> bool:
    """Whether case `name` is timed replayed from a CUDA graph (see TOPK_CASES)."""
    return name.endswith("_graph")

# The dry run's stand-ins for the cases' shapes: a few tensors of odd sizes, several blocks each at the
# smallest knob values.
DRY_SHAPES = {"synthetic_50M": [(48, 45), (33, 17), (7, 9)], "impala_w3": [(40, 30), (30,), (16, 3, 3, 3)],
              "flat_50M": [(5_000,)]}


def _load(name: str):
    """A module of bench/ by path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_tune_{name}", _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def configs(defaults: dict, alternatives: dict) -> list[tuple[str, object, dict]]:
    """(knob, value, config) of the defaults (knob "default"), of each alternative (one knob changed), and of
    the defaults again (value "again": a first measurement slowed by the GPU's or the kernel's warm-up would
    otherwise flatter every alternative; the H200 sweep at 484c6fe7 timed mask selection's defaults at 0.49 ms
    first, and one knob that changes no compiled code at 0.27)."""
    out = [("default", None, dict(defaults))]
    for knob, values in alternatives.items():
        out += [(knob, v, {**defaults, knob: v}) for v in values if v != defaults[knob]]
    return out + [("default", "again", dict(defaults))]


# Last in each case, every knob's best alternative at once: the sweep changes one knob at a time, and two
# knobs that each beat the defaults need not add up. An alternative counts when it was right and at least
# COMBINE_MARGIN faster than the defaults; with fewer than two such knobs nothing is combined. The dry run
# combines every knob's first alternative instead (the interpreter's times mean nothing), so that the
# rehearsal runs it.
COMBINE_MARGIN = 0.02


def combined_config(rows: list[dict], name: str, defaults: dict, alternatives: dict,
                    dry: bool = False) -> tuple[str, dict] | None:
    """(its label, the configuration) of case `name`'s combination of best alternatives, or None."""
    if dry:
        best = {k: v[0] for k, v in alternatives.items() if v and v[0] != defaults[k]}
    else:
        right = sorted((r for r in rows if r["name"] == name and r["correct"] and r["ms"]), key=lambda r: r["ms"])
        base = min((r["ms"] for r in right if r["knob"] == "default"), default=None)
        if base is None:
            return None
        best = {}
        for r in right:  # fastest first: a knob's first row that beats the defaults is its best alternative
            if r["knob"] in defaults and r["knob"] not in best and r["ms"] < base * (1 - COMBINE_MARGIN):
                best[r["knob"]] = r["value"]
    if len(best) < 2:
        return None
    return ", ".join(f"{k}={v}" for k, v in best.items()), {**defaults, **best}


@contextlib.contextmanager
def module_knobs(module, caches, **attrs):
    """Within the block, `module`'s constants are `attrs`; the plan caches (which hold launch grids and
    workspaces built from them) are emptied on entry and exit."""
    saved = {k: getattr(module, k) for k in attrs}
    for cache in caches:
        cache.clear()
    for k, v in attrs.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)
        for cache in caches:
            cache.clear()


@contextlib.contextmanager
def compiled_kernels(bench_kernels, module):
    """Within the block, every launch of `module`'s Triton kernels records the compiled kernel it ran (what
    `kernel[grid](...)` returns: None under the interpreter) in the yielded dict, by kernel name."""
    compiled: dict = {}

    def recorded(name, launch):
        def run(*args, **kwargs):
            out = launch(*args, **kwargs)
            if hasattr(out, "n_regs"):
                compiled[name] = out
            return out
        return run

    with bench_kernels.hooked_launches(module, recorded):
        yield compiled


class Sweep:
    def __init__(self, args, torch, bench_kernels):
        self.args, self.torch, self.bk = args, torch, bench_kernels
        self.dry = args.dry_run
        self.device = "cpu" if self.dry else "cuda"
        self.t0 = time.monotonic()
        self.rows: list[dict] = []
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out / "tune.jsonl"
        self.jsonl.write_text("")
        self.copy_gbps = None if self.dry else bench_kernels.measure_copy_gbps()
        self.skipped: list[str] = []

    def left_s(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def shapes(self, case: str):
        table = self.bk.MASK_CASES if case in self.bk.MASK_CASES else self.bk.ADAM_CASES
        return DRY_SHAPES[case] if self.dry else table[case]

    def time_ms(self, fn, graph: bool) -> float:
        if self.dry:  # the interpreter's time says nothing; the rehearsal only runs the machinery
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        import triton.testing

        if not graph:
            return triton.testing.do_bench(fn, warmup=10, rep=REP_MS, return_mode="median")
        with contextlib.ExitStack() as stack:
            replay = self.bk.graph_replay(fn, stack)
            return triton.testing.do_bench(replay, warmup=5, rep=REP_MS, return_mode="median")

    def record(self, row: dict) -> None:
        row["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        self.rows.append(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        ms = "-" if row.get("ms") is None else f"{row['ms']:.4f} ms"
        status = "ok" if row["correct"] else f"WRONG {row.get('error') or ''}".rstrip()
        print(f"[{row['elapsed_s']:6.1f}s] {row['name']}: {row['knob']}={row['value']} {ms} {status}", flush=True)

    def measure(self, name: str, module, knob, value, config: dict, run) -> None:
        """One configuration. `run()` makes the first calls and returns (fn, right, still_right, extra): the call
        to time, whether the first calls' results are right, None or a check that they still are after the
        timed calls, and the row's extra facts. The row also gets the registers and spills of every kernel of
        `module` that the first calls launched (from the compiled kernels; none under the interpreter)."""
        row = dict(name=name, knob=knob, value=value, config=config, ms=None, correct=False, error=None)
        try:
            with compiled_kernels(self.bk, module) as compiled:
                fn, right, still_right, extra = run()
            row["regs"] = {k: c.n_regs for k, c in compiled.items()}
            row["spills"] = {k: c.n_spills for k, c in compiled.items()}
            row["ms"] = self.time_ms(fn, graph=graph_timed(name))
            row["correct"] = bool(right) and (still_right is None or bool(still_right()))
            row.update(extra())
        except Exception as e:  # a knob that can't compile or launch is a result, not the sweep's end
            if not self.dry:
                with contextlib.suppress(Exception):
                    self.torch.cuda.synchronize()
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        self.record(row)

    # --- mask selection ------------------------------------------------------------------------------------------
    def topk_case(self, name, case, sparsity) -> None:
        from kernels import topk_mask
        from kernels.reference import topk_magnitude_masks_ref

        self.torch.manual_seed(0)
        weights, counts = self.bk.mask_problem(self.shapes(case), sparsity, self.device)
        want = topk_magnitude_masks_ref(weights, counts)
        defaults = dict(block=topk_mask.TOPK_BLOCK, num_warps=topk_mask.NUM_WARPS, cand_warps=topk_mask.CAND_WARPS,
                        slots_div=topk_mask.SLOTS_PER_BLOCK, cand_programs_per_sm=topk_mask.CAND_PROGRAMS_PER_SM,
                        cand_piece=topk_mask.CAND_PIECE // (32 * topk_mask.CAND_WARPS),
                        guess_regs=topk_mask.GUESS_MAX_REGISTERS, thread_major=topk_mask.GUESS_THREAD_MAJOR)

        def run(knob, value, cfg):
            w = cfg["cand_warps"]
            knobs = dict(NUM_WARPS=cfg["num_warps"], CAND_WARPS=w, CAND_CHUNK=32 * w,
                         CAND_PIECE=cfg["cand_piece"] * 32 * w, CAND_PROGRAMS_PER_SM=cfg["cand_programs_per_sm"],
                         GUESS_MAX_REGISTERS=cfg["guess_regs"], GUESS_THREAD_MAJOR=cfg["thread_major"])
            with module_knobs(topk_mask, (topk_mask._plans, topk_mask._workspaces), **knobs):
                self.measure(name, topk_mask, knob, value, cfg,
                             lambda: self.topk_first_calls(weights, counts, want, cfg))

        self.sweep_case(name, defaults, TOPK_ALTERNATIVES, run)

    def topk_first_calls(self, weights, counts, want, cfg: dict):
        """`measure`'s `run` for one mask-selection configuration."""
        from kernels import topk_mask

        torch = self.torch
        block, slots = cfg["block"], cfg["block"] // cfg["slots_div"]
        keep = torch.tensor(counts, device=self.device)
        out = [torch.empty(x.shape, dtype=torch.bool, device=self.device) for x in weights]
        n = sum(w.numel() for w in weights)

        def fn():
            topk_mask.topk_magnitude_masks_triton(weights, keep, out=out, block=block, slots=slots)

        def right():
            return all(torch.equal(a, b) for a, b in zip(out, want))

        def extra():
            stats = topk_mask.select_stats(weights, block=block, slots=slots)
            return dict(candidate_frac=stats["candidates"] / n, guess_held=sum(stats["warm"]) / len(stats["warm"]),
                        overflowed_blocks=stats["overflowed_blocks"], **self.ideal(self.bk.mask_op_bytes(n), n))

        fn()  # the first call is cold; the second and the timed ones are warm, as GMP's mask updates are
        first_right = right()
        fn()
        return fn, first_right and right(), right, extra

    # --- masked Adam -------------------------------------------------------------------------------------------------
    def adam_case(self, name, case, sparsity, mode) -> None:
        from kernels import masked_adam

        torch = self.torch
        torch.manual_seed(0)
        shapes = self.shapes(case)
        masked, params, grads, masks = self.bk.adam_problem(case, shapes, sparsity, self.device)
        numels = [self.bk.numel(s) for s in shapes]
        op_bytes = self.bk.adam_op_bytes(numels, masked, sparsity, mode == "frozen")
        defaults = dict(programs_per_sm=masked_adam.PROGRAMS_PER_SM, num_warps=masked_adam.NUM_WARPS,
                        block=masked_adam.ADAM_BLOCK, frozen_live_list=masked_adam.FROZEN_LIVE_LIST,
                        live_rows=masked_adam.LIVE_ROWS_PER_PROGRAM, live_warps=masked_adam.LIVE_WARPS,
                        live_build_per_sm=masked_adam.LIVE_BUILD_PROGRAMS_PER_SM,
                        live_chunk=masked_adam.LIVE_CHUNK)
        ideal = self.ideal(op_bytes, sum(numels))
        self.adam_baseline(name, params, grads, masks, sparsity)
        expected: list = []  # the defaults' first step, which every other configuration must equal bit for bit

        def run(knob, value, cfg):
            # (Under the interpreter the grid is INTERPRETER_PROGRAMS and the list's sizes follow the tensors,
            # whatever the knobs say.)
            knobs = dict(PROGRAMS_PER_SM=cfg["programs_per_sm"], NUM_WARPS=cfg["num_warps"],
                         FROZEN_LIVE_LIST=cfg["frozen_live_list"], LIVE_ROWS_PER_PROGRAM=cfg["live_rows"],
                         LIVE_WARPS=cfg["live_warps"], LIVE_BUILD_PROGRAMS_PER_SM=cfg["live_build_per_sm"],
                         LIVE_CHUNK=cfg["live_chunk"])
            with module_knobs(masked_adam, (masked_adam._plans, masked_adam._state_plans), **knobs):
                self.measure(name, masked_adam, knob, value, cfg, lambda: self.adam_first_step(
                    params, grads, masks, mode, cfg["block"], expected, ideal, is_default=knob == "default"
                    and not expected))

        self.sweep_case(name, defaults, adam_alternatives(mode), run)

    def adam_first_step(self, params, grads, masks, mode: str, block: int, expected: list, ideal: dict,
                        is_default: bool):
        """`measure`'s `run` for one masked-Adam configuration: a step from fresh moments and copies of the
        weights, compared with `expected` (the defaults' step, which the defaults' call fills)."""
        from kernels import masked_adam

        torch = self.torch
        p = [x.clone() for x in params]
        m = [torch.zeros_like(x) for x in params]
        v = [torch.zeros_like(x) for x in params]
        step = torch.ones((), dtype=torch.int64, device=self.device)

        def fn():
            masked_adam.masked_adam_triton_(p, grads, m, v, masks, step=step, lr=6.25e-5, eps=1.5e-4, moments=mode,
                                            block=block)

        fn()
        first = [x.clone() for x in (*p, *m, *v)]
        if is_default:
            expected.extend(first)
        elif not expected:
            raise RuntimeError("the defaults' step failed: nothing to compare this configuration's step with")
        right = all(torch.equal(a, b) for a, b in zip(first, expected))
        return fn, right, None, lambda: ideal  # (the timed steps move the state on: the first step decides)

    def adam_baseline(self, name, params, grads, masks, sparsity) -> None:
        """What the case's target compares masked Adam with, timed in this run as the configurations are:
        `torch.optim.Adam(fused=True)` alone at 0% sparsity, then `mul_` by the masks when pruned
        (bench_kernels' providers). A row with knob "baseline", never a candidate for the best; on the GPU only
        (the providers are capturable CUDA optimizers)."""
        if self.dry or not self.fits(name):
            return
        provider = "torch_fused_nomask" if sparsity == 0 else "torch_fused_mask"
        row = dict(name=name, knob="baseline", value=provider, config={}, ms=None, correct=True, error=None)
        try:
            fn = self.bk._adam_provider(provider, [p.clone() for p in params], grads, masks)
            fn()
            row["ms"] = self.time_ms(fn, graph=graph_timed(name))
        except Exception as e:  # the sweep goes on without its baseline
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        self.record(row)

    # --- bookkeeping -------------------------------------------------------------------------------------------------
    def sweep_case(self, name: str, defaults: dict, alternatives: dict, run) -> None:
        """Case `name`: `run(knob, value, config)` for the defaults, each alternative and the defaults again
        (`configs`), then for the combination of the best alternatives (`combined_config`), while the budget
        lasts."""
        for knob, value, cfg in configs(defaults, alternatives):
            if not self.fits(name):
                return
            run(knob, value, cfg)
        combined = combined_config(self.rows, name, defaults, alternatives, self.dry)
        if combined is not None and self.fits(name):
            run("combined", *combined)

    def ideal(self, op_bytes: int, n: int) -> dict:
        if self.copy_gbps is None:
            return dict(op_bytes=op_bytes, n=n)
        return dict(op_bytes=op_bytes, n=n, ideal_ms=op_bytes / (self.copy_gbps * 1e9) * 1e3)

    def fits(self, name: str) -> bool:
        # A configuration takes a few seconds (compile, do_bench, the check); stop before the budget runs out.
        if self.left_s() > (0.5 if self.dry else 8.0):
            return True
        if name not in self.skipped:
            self.skipped.append(name)
        return False

    def run(self) -> None:
        for name, case, sparsity, _ in TOPK_CASES[:1]:
            self.topk_case(name, case, sparsity)
        for name, case, sparsity, mode in ADAM_CASES[:1]:
            self.adam_case(name, case, sparsity, mode)
        for name, case, sparsity, mode in ADAM_CASES[1:]:
            self.adam_case(name, case, sparsity, mode)
        for name, case, sparsity, _ in TOPK_CASES[1:]:
            self.topk_case(name, case, sparsity)


def _change(row: dict) -> str:
    return f"combined: {row['value']}" if row["knob"] == "combined" else f"{row['knob']}={row['value']}"


def summary_markdown(rows: list[dict], header: dict, skipped: list[str]) -> str:
    """A table per case, fastest right configuration first, each against the defaults of the same run."""
    lines = ["# Kernel knob sweep", "", "; ".join(f"{k} {v}" for k, v in header.items() if v is not None), ""]
    if header.get("dry_run"):
        lines += ["DRY RUN on the CPU: interpreter times, which say nothing about a GPU.", ""]
    if skipped:
        lines += [f"Not measured in full (budget): {', '.join(skipped)}.", ""]
    names = list(dict.fromkeys(r["name"] for r in rows))
    for name in names:
        baseline = next((r for r in rows if r["name"] == name and r["knob"] == "baseline"), None)
        case = [r for r in rows if r["name"] == name and r["knob"] != "baseline"]
        # The baseline: the faster of the defaults' two measurements (first and last, see `configs`).
        default = min((r for r in case if r["knob"] == "default" and r["correct"] and r["ms"]),
                      key=lambda r: r["ms"], default=None)
        right = sorted((r for r in case if r["correct"] and r["ms"]), key=lambda r: r["ms"])
        lines += [f"## {name}", ""]
        if default and right:
            best = right[0]
            change = "the defaults" if best["knob"] == "default" else _change(best)
            firsts = [f"{r['ms']:.4f}" for r in case if r["knob"] == "default" and r["ms"]]
            lines += [f"Best: {change}, {best['ms'] / default['ms']:.3f}x the defaults' time "
                      f"({', '.join(f'{k} {v}' for k, v in default['config'].items())}; the defaults measured "
                      f"first and last: {' and '.join(firsts)} ms, the faster is the baseline).", ""]
        if baseline and baseline["ms"] and default:
            base_ms = baseline["ms"]
            lines += [f"Baseline `{baseline['value']}` in the same run: {base_ms:.4f} ms; the defaults take "
                      f"{default['ms'] / base_ms:.3f}x its time, the best {right[0]['ms'] / base_ms:.3f}x.", ""]
        elif baseline:
            lines += [f"Baseline `{baseline['value']}`: not measured ({baseline['error'] or 'no time'}).", ""]
        lines += ["| change | ms | vs defaults | ideal / ms | registers (spills) | right |",
                  "|---|---|---|---|---|---|"]
        for r in right + [r for r in case if r not in right]:
            ratio = f"{r['ms'] / default['ms']:.3f}" if default and r["ms"] else "-"
            frac = f"{r['ideal_ms'] / r['ms']:.2f}" if r.get("ideal_ms") and r["ms"] else "-"
            change = "defaults" + (" (again)" if r["value"] else "") if r["knob"] == "default" else _change(r)
            ms = f"{r['ms']:.4f}" if r["ms"] else "-"
            right_text = "yes" if r["correct"] else f"NO: {r['error'] or 'results differ'}"
            regs = ", ".join(f"{k} {n}" + (f" ({r['spills'][k]})" if r["spills"].get(k) else "")
                             for k, n in r.get("regs", {}).items()) or "-"
            lines.append(f"| {change} | {ms} | {ratio} | {frac} | {regs} | {right_text} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Results: tune.jsonl and tune.md in --out (see the module docstring).")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"seconds the sweep may take (default {DEFAULT_BUDGET_S:g}; dry run {DRY_BUDGET_S:g})")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: $OUT/<gpu>_<sha>/tune when $OUT is set, else "
                             "bench/results/<gpu>_<sha>/tune; dry run: runs/gpu-tune/cpu-dry-run_<sha>/tune)")
    parser.add_argument("--sha", default=None, help="git SHA to name the results by (default: git rev-parse)")
    parser.add_argument("--dry-run", action="store_true",
                        help="rehearse on the CPU: TRITON_INTERPRET=1, tiny shapes, times meaningless")
    args = parser.parse_args(argv)
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s:g}")
    args.budget_s = args.budget_s or (DRY_BUDGET_S if args.dry_run else DEFAULT_BUDGET_S)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated: before `kernels` is imported
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    import torch
    import triton

    proof = _load("gpu_proof")
    if not args.dry_run and not torch.cuda.is_available():
        print("tune_kernels.py: no CUDA device (use --dry-run to rehearse on the CPU)", file=sys.stderr)
        return 2
    name = "cpu-dry-run" if args.dry_run else proof.slug(torch.cuda.get_device_name()).removeprefix("nvidia-")
    sha = args.sha or proof.short_sha() or "nogit"
    if args.out is None:
        base = Path(os.environ["OUT"]) if os.environ.get("OUT") else (
            _ROOT / "runs" / "gpu-tune" if args.dry_run else _BENCH / "results")
        args.out = base / f"{name}_{sha}" / "tune"
    bench_kernels = _load("bench_kernels")
    sweep = Sweep(args, torch, bench_kernels)
    header = dict(device=torch.cuda.get_device_name() if not args.dry_run else "cpu", dry_run=args.dry_run or None,
                  torch=torch.__version__, triton=triton.__version__, ptxas=proof.ptxas_in_use(),
                  cuda=torch.version.cuda, git=sha,
                  date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                  copy_gbps=None if sweep.copy_gbps is None else round(sweep.copy_gbps, 1))
    print(f"kernel knob sweep: {header['device']}, git {sha}, budget {args.budget_s:g} s -> {args.out}", flush=True)
    try:
        sweep.run()
    finally:
        text = summary_markdown(sweep.rows, header, sweep.skipped)
        (args.out / "tune.md").write_text(text + "\n")
        (args.out / "tune_header.json").write_text(json.dumps(header, indent=1) + "\n")
        print(text, flush=True)
    return 0 if sweep.rows and all(r["correct"] for r in sweep.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
