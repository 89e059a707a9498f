"""Turn a pytest-benchmark JSON from bench/bench_kernels.py into a markdown report and a speedup plot.

    python bench/summarize.py bench/results/<name>.json [--out-dir DIR]

Writes <name>.md (tables, the traffic model against what was achieved, and the issue's targets with their
measured values) and <name>.png (speedup vs sparsity, one line per case), and prints the markdown. Times
are do_bench medians (device time, L2 flushed) stored in each benchmark's extra_info: `ms` eager, `ms_graph`
replayed from a CUDA graph. `target_rows(json_path)` gives the targets as data. A CPU rehearsal's results
(`PRUNERL_BENCH_SUBSET=rehearsal` without CUDA, device "cpu": interpreted kernels on tiny stand-ins, wall-clock
times, no copy bandwidth) are tabulated the same way under a heading that says none of their numbers is a speed.
"""

from __future__ import annotations

import argparse
import json
import numbers
import pathlib
import sys
from collections import defaultdict

MASK_PROVIDERS = ["triton", "triton_cold", "topk_loop", "sort", "kthvalue", "prune_l1"]
ADAM_PROVIDERS = ["triton_faithful", "triton_faithful_pz", "triton_reset", "triton_frozen", "triton_frozen_pz",
                  "torch_fused_mask", "torch_foreach_mask", "torch_fused_nomask"]
HOST_COST_GOAL_US = 30.0


def load(path: pathlib.Path) -> tuple[dict, dict]:
    """(results[op][(case, sparsity)][provider] = extra_info, run facts of the first result)."""
    results: dict = defaultdict(lambda: defaultdict(dict))
    facts = {}
    try:
        data = json.loads(pathlib.Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    benches = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benches, list):
        raise ValueError(f"{path} is not a pytest-benchmark JSON (--benchmark-json): it has no list 'benchmarks'")
    for i, bench in enumerate(benches):
        info = bench.get("extra_info", {}) if isinstance(bench, dict) else None
        if not isinstance(info, dict):
            raise ValueError(f"{path}: benchmarks[{i}] is not a benchmark record: {bench!r:.80}")
        if "op" not in info or "ms" not in info:
            continue
        sparsity = info.get("sparsity")
        if not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in (info["ms"], sparsity)) or not \
                all(isinstance(info.get(k), str) for k in ("op", "case", "provider")):
            raise ValueError(f"{path}: benchmarks[{i}] ({bench.get('name')}) needs numbers ms and sparsity and strings "
                             f"op, case and provider in extra_info; got ms={info['ms']!r}, sparsity={sparsity!r}")
        results[info["op"]][(info["case"], float(sparsity))][info["provider"]] = info
        facts = facts or info
    if benches and not results:  # e.g. bench_e2e.py's e2e.json: its tables would be empty (an empty list: no data)
        raise ValueError(f"{path} holds no kernel benchmark (bench_kernels.py's records, with op, case, provider and "
                         f"ms in extra_info): {len(benches)} other records")
    return results, facts


def is_cpu_rehearsal(facts: dict) -> bool:
    """Results of the CPU rehearsal: benchmarks only run on the CPU there (bench/conftest.py)."""
    return facts.get("device") == "cpu"


def _get(results: dict, op: str, case: str, sparsity: float, provider: str, key: str = "ms"):
    return results.get(op, {}).get((case, sparsity), {}).get(provider, {}).get(key)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _worst(values, pick) -> float | None:
    values = [v for v in values if v is not None]
    return pick(values) if values else None


def _adam_speedups(results: dict, sparsity: float) -> list[float | None]:
    """fused Adam + mask over frozen masked Adam, per measured case at `sparsity`."""
    cases = {c for c, s in results.get("masked_adam", {}) if s == sparsity}
    return [_ratio(_get(results, "masked_adam", c, sparsity, "torch_fused_mask"),
                   _get(results, "masked_adam", c, sparsity, "triton_frozen")) for c in sorted(cases)]


def _targets(results: dict) -> list[tuple[str, str, float, float | None]]:
    """(target, comparison, goal, measured) for every target of the kernels' second-wave issue (H100)."""
    def mask(case, provider, key="ms"):
        return _get(results, "mask_selection", case, 0.95, provider, key)

    def adam(provider, key="ms"):
        return _get(results, "masked_adam", "flat_50M", 0.0, provider, key)

    host = {p: _get(results, "host_cost", "impala_w3", 0.0, p, "us_per_call") for p in ("triton_topk", "triton_adam")}
    return [
        ("mask selection, 50M at 95%: time / one fp32 read of the weights", "<=", 1.5,
         _ratio(mask("synthetic_50M", "triton"), mask("synthetic_50M", "triton", "one_read_ms"))),
        ("mask selection, 50M at 95%: speedup over the per-layer torch.topk loop", ">=", 4.0,
         _ratio(mask("synthetic_50M", "topk_loop"), mask("synthetic_50M", "triton"))),
        ("mask selection, Impala w3 at 95% in a CUDA graph: time / one fp32 read", "<=", 2.0,
         _ratio(mask("impala_w3", "triton", "ms_graph"), mask("impala_w3", "triton", "one_read_ms"))),
        ("mask selection, 50M at 95%: speedup over the stable sort (JaxPruner)", ">=", 20.0,
         _ratio(mask("synthetic_50M", "sort"), mask("synthetic_50M", "triton"))),
        ("masked Adam, 50M faithful at 0%: fraction of copy bandwidth on the bytes it must move", ">=", 0.90,
         adam("triton_faithful", "frac_of_copy")),
        ("masked Adam, 50M faithful at 0%: time / fused Adam alone", "<=", 1.02,
         _ratio(adam("triton_faithful"), adam("torch_fused_nomask"))),
        ("frozen masked Adam at 95%: speedup over fused Adam + mask (worst case)", ">=", 2.0,
         _worst(_adam_speedups(results, 0.95), min)),
        ("frozen masked Adam at 99%: speedup over fused Adam + mask (worst case)", ">=", 5.0,
         _worst(_adam_speedups(results, 0.99), min)),
        ("host cost per call, mask selection (us, launches stubbed)", "<", HOST_COST_GOAL_US, host["triton_topk"]),
        ("host cost per call, masked Adam (us, launches stubbed)", "<", HOST_COST_GOAL_US, host["triton_adam"]),
    ]


def _met(op: str, goal: float, value: float | None) -> bool | None:
    if value is None:
        return None
    return {"<=": value <= goal, ">=": value >= goal, "<": value < goal}[op]


def target_rows(json_path) -> list[dict]:
    """Every target with keys target, goal (e.g. '<= 1.5'), measured (None when unmeasured) and met
    (True / False / None when unmeasured)."""
    results, _ = load(pathlib.Path(json_path))
    return [dict(target=name, goal=f"{op} {goal:g}", measured=value, met=_met(op, goal, value))
            for name, op, goal, value in _targets(results)]


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _traffic_rows(rows_by_key: dict, providers: list[str]) -> list[list[str]]:
    """Per Triton provider: the op's minimum bytes, our design's bytes and launches, and achieved vs ideal."""
    out = []
    for (case, s), row in sorted(rows_by_key.items()):
        for p in providers:
            info = row.get(p)
            if not info or not p.startswith("triton"):
                continue
            ideal = info.get("ideal_ms")
            model, copy_gbps = info.get("model_bytes"), info.get("copy_gbps")
            model_ms = model / (copy_gbps * 1e9) * 1e3 if model and copy_gbps else None
            out.append([case, f"{s:g}", p, _fmt(info.get("op_bytes", 0) / 1e6, ".1f"),
                        _fmt(model / 1e6 if model else None, ".1f"), _fmt(info.get("launches"), "d"),
                        _fmt(ideal), _fmt(model_ms), _fmt(info["ms"]), _fmt(info.get("ms_graph")),
                        _fmt(_ratio(info["ms"], ideal), ".2f")])
    return out


def _anatomy_lines(title: str, rows_by_key: dict, providers: list[str], rehearsal: bool = False) -> list[str]:
    """The median device time of each launch of one call (`anatomy_us`), where the results have it, next to
    the whole call's time replayed from a CUDA graph (device time alone: the sum should come close to it), and
    the host's time per eager call (`call_host_us`), where they have that: results without it (before
    2026-11-28) timed each launch with the host's launch cost in it, and say so."""
    rows, names = [], []
    for (case, s), row in sorted(rows_by_key.items()):
        for p in providers:
            anatomy = row.get(p, {}).get("anatomy_us")
            if anatomy:
                names += [n for n in anatomy if n not in names]
                graph_ms = row[p].get("ms_graph")
                rows.append((case, s, p, anatomy, None if graph_ms is None else graph_ms * 1e3,
                             row[p].get("call_host_us")))
    if not rows:
        return []
    queued = any(host is not None for *_, host in rows)
    table = [[case, f"{s:g}", p] + [_fmt(a.get(n)) for n in names] + [_fmt(sum(a.values())), _fmt(graph)]
             + ([_fmt(host)] if queued else []) for case, s, p, a, graph, host in rows]
    how = ("device time, each call queued behind a device delay; host per call: the host's time for one eager "
           "call" if queued else "eager, an event between launches: the host's launch cost included")
    if rehearsal:
        how = "CPU rehearsal: the host's clock around each interpreted launch, not a device time"
    header = ["case", "sparsity", "provider", *names, "sum", "graph", *(["host per call"] if queued else [])]
    return [f"### {title}: time per launch (us; {how})", ""] + _table(header, table) + [""]


TRAFFIC_HEADER = ["case", "sparsity", "provider", "op MB (must move)", "design MB", "launches", "ideal ms",
                  "design ms", "eager ms", "graph ms", "eager / ideal"]


def report(results: dict, facts: dict) -> str:
    lines = ["# Kernel benchmarks", ""]
    rehearsal = is_cpu_rehearsal(facts)
    if rehearsal:
        lines += ["**CPU REHEARSAL, not a measurement:** the benchmarks' code run on the CPU on tiny stand-ins "
                  "under the proof's case names, the Triton kernels interpreted, times from the host's clock, no "
                  "copy bandwidth and no CUDA graph. No number below is a speed; the verdicts are meaningless.", ""]
    if facts:
        lines += [f"{facts.get('device')} | torch {facts.get('torch')} | triton {facts.get('triton')} | "
                  f"git {str(facts.get('git_sha'))[:10]} | {facts.get('date')} | copy bandwidth "
                  f"{_fmt(facts.get('copy_gbps'))} GB/s", "",
                  f"Times are {'wall-clock' if rehearsal else 'device-time'} medians in ms, eager / replayed from a "
                  "CUDA graph; `-` = not measured. "
                  "Ideal = the bytes the op must move at the measured copy bandwidth; design = the bytes our "
                  "kernels move by their traffic model.", ""]
    for op, title, providers in (("mask_selection", "Mask selection", MASK_PROVIDERS),
                                 ("masked_adam", "Masked Adam", ADAM_PROVIDERS)):
        rows_by_key = results.get(op, {})
        if not rows_by_key:
            continue
        present = [p for p in providers if any(p in row for row in rows_by_key.values())]
        rows = [[case, f"{s:g}"] + [f"{_fmt(row[p]['ms'])} / {_fmt(row[p].get('ms_graph'))}" if p in row else "-"
                                    for p in present]
                for (case, s), row in sorted(rows_by_key.items())]
        lines += [f"## {title} (ms eager / graph)", ""] + _table(["case", "sparsity"] + present, rows) + [""]
        lines += [f"### {title}: traffic model against achieved", ""]
        lines += _table(TRAFFIC_HEADER, _traffic_rows(rows_by_key, present)) + [""]
        lines += _anatomy_lines(title, rows_by_key, present, rehearsal)
    host = results.get("host_cost", {})
    if host:
        rows = [[p, _fmt(info.get("us_per_call"), ".1f")] for row in host.values() for p, info in sorted(row.items())]
        lines += ["## Host cost per call (us, Impala w3, launches stubbed)", ""]
        lines += _table(["op", "us"], rows) + [""]
    rows = [[r["target"], r["goal"], _fmt(r["measured"], ".3g"),
             {None: "no data", True: "met", False: "MISSED"}[r["met"]]]
            for r in ({"target": n, "goal": f"{o} {g:g}", "measured": v, "met": _met(o, g, v)}
                      for n, o, g, v in _targets(results))]
    device = facts.get("device") if facts else None
    where = "a CPU rehearsal, not measured" if rehearsal else f"measured on {device or 'an unrecorded device'}"
    lines += [f"## Targets (set for an H100; {where})", ""]
    lines += _table(["target", "goal", "measured", "status"], rows) + [""]
    return "\n".join(lines)


def plot(results: dict, path: pathlib.Path, rehearsal: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    # A marker per provider as well as a line style: a provider measured at one sparsity is a lone point.
    panels = [(axes[0], "mask_selection", "triton", [("topk_loop", "-", "o", "vs per-layer topk"),
                                                     ("sort", "--", "s", "vs sort (reference)")],
               "Mask selection: Triton speedup"),
              (axes[1], "masked_adam", "torch_fused_mask", [("triton_frozen", "-", "o", "frozen"),
                                                            ("triton_frozen_pz", "--", "s", "frozen, pruned_are_zero"),
                                                            ("triton_faithful", ":", "^", "faithful")],
               "Masked Adam: speedup over fused Adam + mask")]
    for ax, op, ref, lines, title in panels:
        by_case = defaultdict(dict)
        for (case, s), row in results.get(op, {}).items():
            by_case[case][s] = row
        for i, (case, rows) in enumerate(sorted(by_case.items())):
            xs = sorted(rows)
            for provider, style, marker, label in lines:
                def ms(x, p, rows=rows):
                    return rows[x][p]["ms"] if p in rows[x] else None

                if op == "mask_selection":  # speedup = baseline time / triton time
                    ys = [_ratio(ms(x, provider), ms(x, ref)) for x in xs]
                else:
                    ys = [_ratio(ms(x, ref), ms(x, provider)) for x in xs]
                pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
                if pts:
                    ax.plot(*zip(*pts), style, marker=marker, markersize=7, color=f"C{i}", label=f"{case} {label}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(title=title, xlabel="sparsity", ylabel="speedup (x)", yscale="log")
        # Plain "0.5x, 3x, 20x" ticks at 1-2-3-5 steps in every decade, not 6x10^0 (minor ticks: unlabelled).
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}x"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=7)
    if rehearsal:
        fig.suptitle("CPU rehearsal (interpreted kernels, tiny stand-ins): not speeds", color="C3")
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
    try:
        results, facts = load(args.json)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    text = report(results, facts)
    (out_dir / f"{args.json.stem}.md").write_text(text + "\n")
    plot(results, out_dir / f"{args.json.stem}.png", is_cpu_rehearsal(facts))
    print(text)


if __name__ == "__main__":
    main()
