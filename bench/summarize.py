"""Turn a pytest-benchmark JSON from bench/bench_kernels.py into a markdown report and a speedup plot.

    python bench/summarize.py bench/results/<name>.json [--out-dir DIR]

Writes <name>.md (tables + the README targets, each with its measured worst case) and <name>.png
(speedup vs sparsity, one line per network width / case), and prints the markdown. Times are the
do_bench medians (device time, L2 flushed) stored in each benchmark's extra_info.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections import defaultdict

MASK_PROVIDERS = ["triton", "topk_loop", "sort", "kthvalue", "prune_l1"]
ADAM_PROVIDERS = ["triton_faithful", "triton_reset", "triton_frozen", "triton_frozen_pz", "torch_fused_mask",
                  "torch_foreach_mask", "torch_fused_nomask"]


def load(path: pathlib.Path) -> tuple[dict, dict]:
    """(results[op][(case, sparsity)][provider] = extra_info, run facts of the first result)."""
    results: dict = defaultdict(lambda: defaultdict(dict))
    facts = {}
    for bench in json.loads(path.read_text())["benchmarks"]:
        info = bench.get("extra_info", {})
        if "op" not in info or "ms" not in info:
            continue
        results[info["op"]][(info["case"], float(info["sparsity"]))][info["provider"]] = info
        facts = facts or info
    return results, facts


def _ms(row: dict, provider: str) -> float | None:
    return row[provider]["ms"] if provider in row else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _worst(values, pick) -> float | None:
    values = [v for v in values if v is not None]
    return pick(values) if values else None


def report(results: dict, facts: dict) -> str:
    lines = ["# Kernel benchmarks", ""]
    if facts:
        lines += [f"{facts.get('device')} | torch {facts.get('torch')} | triton {facts.get('triton')} | "
                  f"git {str(facts.get('git_sha'))[:10]} | {facts.get('date')} | copy bandwidth "
                  f"{facts.get('copy_gbps')} GB/s", ""]
    targets = []

    mask = results.get("mask_selection", {})
    if mask:
        rows, to_read, vs_loop, vs_sort = [], [], [], []
        for (case, s), row in sorted(mask.items()):
            t = _ms(row, "triton")
            read = _ratio(t, row["triton"]["one_read_ms"]) if "triton" in row else None
            loop, sort = _ratio(_ms(row, "topk_loop"), t), _ratio(_ms(row, "sort"), t)
            to_read.append(read)
            vs_loop.append(loop)
            vs_sort.append(sort)
            rows.append([case, f"{s:g}"] + [_fmt(_ms(row, p)) for p in MASK_PROVIDERS]
                        + [_fmt(read, ".2f"), _fmt(loop, ".1f"), _fmt(sort, ".1f")])
        lines += ["## Mask selection (ms, device time)", ""]
        lines += _table(["case", "sparsity"] + MASK_PROVIDERS + ["triton / one fp32 read", "x vs topk loop",
                                                                  "x vs sort"], rows) + [""]
        targets += [("mask selection within 2x of one fp32 read of all weights", _worst(to_read, max), "<=", 2.0),
                    ("mask selection >= 20x faster than the per-layer topk loop", _worst(vs_loop, min), ">=", 20.0),
                    ("mask selection >= 50x faster than the sort path", _worst(vs_sort, min), ">=", 50.0)]

    adam = results.get("masked_adam", {})
    if adam:
        rows, frac, floor, frozen95, frozen99 = [], [], [], [], []
        for (case, s), row in sorted(adam.items()):
            base = _ms(row, "torch_fused_mask")
            fz = _ratio(base, _ms(row, "triton_frozen"))
            frac += [row[p]["frac_of_copy"] for p in ("triton_faithful", "triton_reset", "triton_frozen") if p in row]
            if s == 0:
                floor.append(_ratio(_ms(row, "triton_faithful"), _ms(row, "torch_fused_nomask")))
            if s == 0.95:
                frozen95.append(fz)
            if s == 0.99:
                frozen99.append(fz)
            rows.append([case, f"{s:g}"] + [_fmt(_ms(row, p)) for p in ADAM_PROVIDERS]
                        + [_fmt(row["triton_faithful"]["frac_of_copy"] * 100, ".0f") if "triton_faithful" in row
                           else "-", _fmt(fz, ".2f"), _fmt(_ratio(base, _ms(row, "triton_frozen_pz")), ".2f")])
        lines += ["## Masked Adam (ms, device time)", ""]
        lines += _table(["case", "sparsity"] + ADAM_PROVIDERS + ["faithful % of copy BW", "frozen x vs fused+mask",
                                                                  "frozen_pz x vs fused+mask"], rows) + [""]
        targets += [("masked Adam >= 85% of copy bandwidth on the bytes it must move", _worst(frac, min), ">=", 0.85),
                    ("masked Adam at sparsity 0 <= 1.05x fused Adam alone", _worst(floor, max), "<=", 1.05),
                    ("frozen >= 1.5x faster than fused Adam + mask at 95%", _worst(frozen95, min), ">=", 1.5),
                    ("frozen >= 4x faster than fused Adam + mask at 99%", _worst(frozen99, min), ">=", 4.0)]

    if targets:
        rows = []
        for name, value, op, goal in targets:
            met = None if value is None else (value <= goal if op == "<=" else value >= goal)
            rows.append([name, f"{op} {goal:g}", _fmt(value, ".3g"), {None: "no data", True: "met",
                                                                        False: "MISSED"}[met]])
        lines += ["## Targets (worst case over all cases)", ""]
        lines += _table(["target", "goal", "measured", "status"], rows) + [""]
    return "\n".join(lines)


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    panels = [(axes[0], "mask_selection", "triton", [("topk_loop", "-", "vs per-layer topk"),
                                                     ("sort", "--", "vs sort (reference)")],
               "Mask selection: Triton speedup"),
              (axes[1], "masked_adam", "torch_fused_mask", [("triton_frozen", "-", "frozen"),
                                                            ("triton_frozen_pz", "--", "frozen, pruned_are_zero"),
                                                            ("triton_faithful", ":", "faithful")],
               "Masked Adam: speedup over fused Adam + mask")]
    for ax, op, ref, lines, title in panels:
        by_case = defaultdict(dict)
        for (case, s), row in results.get(op, {}).items():
            by_case[case][s] = row
        for i, (case, rows) in enumerate(sorted(by_case.items())):
            xs = sorted(rows)
            for provider, style, label in lines:
                if op == "mask_selection":  # speedup = baseline time / triton time
                    ys = [_ratio(_ms(rows[x], provider), _ms(rows[x], ref)) for x in xs]
                else:
                    ys = [_ratio(_ms(rows[x], ref), _ms(rows[x], provider)) for x in xs]
                pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=f"C{i}", label=f"{case} {label}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(title=title, xlabel="sparsity", ylabel="speedup (x)", yscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=pathlib.Path, help="pytest-benchmark JSON written by --benchmark-json")
    parser.add_argument("--out-dir", type=pathlib.Path, default=None, help="default: next to the JSON")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or args.json.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    results, facts = load(args.json)
    text = report(results, facts)
    (out_dir / f"{args.json.stem}.md").write_text(text + "\n")
    plot(results, out_dir / f"{args.json.stem}.png")
    print(text)


if __name__ == "__main__":
    main()
