"""The paper-style figures, drawn with matplotlib's Agg backend: IQM curves (Fig. 3), final IQM against width
(Fig. 1), replay ratio (Fig. 5, 17) or sparsity (Fig. 15), the sparsity schedule (Fig. 2), the analysis metrics
(Fig. 11), the comparison of methods (Fig. 12) and the gradient covariance heat maps (Fig. 14)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.report.configs import METHOD_SWITCHES, METHOD_TEXT, Config, describe, join_parts, label_parts
from agents.report.runs import Run
from agents.report.stats import MIN_RUNS_FOR_CI

ANALYSIS_KEYS = {  # Fig. 11 panels: metrics.jsonl key -> axis label
    "analysis/q_var": "Q-value variance",
    "analysis/param_norm": "Parameter norm",
    "analysis/q_norm": "Q-value norm",
    "analysis/srank": "srank",
    "analysis/dormant_frac": "Dormant neurons (fraction)",
}
PAPER_ANALYSIS_GAMES = ("BeamRider", "Breakout", "Enduro", "VideoPinball")  # Fig. 11


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "legend.frameon": False,
        }
    )
    return plt


# Colours: the paper's (dense blue, 95% orange), then distinct ones up to 12 lines. Each line also gets its own
# dash and marker, so lines stay apart where colours are hard to tell (print, colour blindness).
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
           "tab:olive", "tab:cyan", "black", "gold")
SPARSITY_COLORS = {0.0: "tab:blue", 0.95: "tab:orange", 0.9: "tab:green", 0.99: "tab:red", 0.5: "tab:purple",
                   0.8: "tab:brown", 0.98: "tab:pink"}
DASHES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
MAX_COLS = 3  # panels per row
DPI = 130


@dataclass(frozen=True)
class Line:
    """How one configuration is drawn: its legend label and a style that no other label shares."""

    label: str
    color: str
    variant: int  # picks dash and marker

    def plot(self, ax, x, y, low=None, high=None, lw: float = 1.6, label: str | None = None) -> None:
        x = np.asarray(x)
        every = max(1, round(len(x) / 6))  # a few markers per line, offset per variant so they do not pile up
        ax.plot(x, y, color=self.color, ls=DASHES[self.variant % len(DASHES)], lw=lw,
                marker=MARKERS[self.variant % len(MARKERS)], ms=4.5, markevery=(self.variant % every, every),
                label=self.label if label is None else label)
        if low is not None:
            ax.fill_between(x, low, high, color=self.color, alpha=0.15, lw=0)


def line_styles(configs: list[Config], panels: list | None = None) -> list[Line]:
    """One Line per configuration. The label says what tells it apart from the other lines of its panel (the same
    words mean the same style in every panel, so one legend serves the figure). With dense and pruned lines, the
    colour encodes the pruning and the dash/marker everything else, so a dense/pruned pair shares a dash; every
    line differs from every other in colour or in dash and marker, most in both."""
    parts = label_parts([c.flat for c in configs], panels)
    prune = [join_parts([p for p in ps if p[0].startswith("pruning.")]) for ps in parts]
    rest = [join_parts([p for p in ps if not p[0].startswith("pruning.")]) for ps in parts]
    prunes, rests = list(dict.fromkeys(prune)), list(dict.fromkeys(rest))
    if len(prunes) > 1:
        sparsity = {t: c.sparsity for t, c in zip(prune, configs, strict=True)}
        # The sparsity's colour (dense blue, 95% orange) wherever the sparsity is all that its pruning text says
        # (RigL, a lottery ticket or another distribution add to it) or tells it apart; other colours otherwise.
        plain = {t for t, ps in zip(prune, parts, strict=True)
                 if not any(text for k, text in ps if k.startswith("pruning.") and k != "pruning.final_sparsity")}
        by_sparsity = set(prunes) if len(set(sparsity.values())) == len(prunes) else plain
        colors = {t: SPARSITY_COLORS.get(round(sparsity[t], 4)) for t in prunes if t in by_sparsity}
        # other pruning texts take the colours no sparsity has first, then the sparsities' unused ones
        spare = sorted((c for c in PALETTE if c not in colors.values()), key=lambda c: c in SPARSITY_COLORS.values())
        spare = iter(spare * 2)
        colors = {t: colors.get(t) or next(spare) for t in prunes}
        color = lambda i: colors[prune[i]]
    else:
        color = lambda i: PALETTE[rests.index(rest[i]) % len(PALETTE)]
    # dash/marker: by everything but the pruning, unless only the pruning differs (then by the pruning too)
    variant = (lambda i: rests.index(rest[i])) if len(rests) > 1 else (lambda i: prunes.index(prune[i]))
    return [Line(join_parts(ps) or "baseline", color(i), variant(i)) for i, ps in enumerate(parts)]


def _figure(plt, n_panels: int, panel_size: tuple[float, float]):
    """A grid of at most MAX_COLS panels per row (constrained layout, so outside legends get room)."""
    cols = min(MAX_COLS, n_panels)
    rows = -(-n_panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows + 0.6),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n_panels])


def _legend(fig, axes) -> None:
    """One legend for the whole figure, below the panels: an entry per label, whichever panel drew it."""
    entries = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, h)
    if entries:
        _figure_legend(fig, list(entries.values()), list(entries))


def _figure_legend(fig, handles, labels: list[str]) -> None:
    """Below the panels, in as many columns as fit the figure's width (about 5 points per character at font
    size 8, plus the handle); the figure grows by the legend's height so the panels keep theirs."""
    fits = max(1, int(fig.get_figwidth() * 72 // (5 * max(map(len, labels)) + 45)))
    rows = -(-len(labels) // fits)
    ncol = -(-len(labels) // rows)  # rows as full as they can be: 4 entries in 2 x 2, not 3 + 1
    fig.set_figheight(fig.get_figheight() + 0.2 * rows + 0.1)
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, ncol=ncol)


def _save(fig, plt, path: Path) -> None:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _frames_axis(ax, fontsize=None, quantity: str = "Frames") -> None:
    """Data are plotted in frames (gradient updates for offline runs); ticks in millions, or thousands for
    short runs."""
    from matplotlib.ticker import FuncFormatter

    scale, unit = (1e6, "millions") if ax.get_xlim()[1] >= 2e6 else (1e3, "thousands")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / scale:g}"))
    ax.set_xlabel(f"{quantity} ({unit})", fontsize=fontsize)


def _progress(curves: list[list[dict]]) -> tuple[str, str]:
    """(key, axis quantity) of learning-curve points: frames, or for offline runs, which train on no frames,
    gradient updates."""
    if any(q["frames"] > 0 for pts in curves for q in pts) or not any(q.get("updates") for pts in curves for q in pts):
        return "frames", "Frames"
    return "updates", "Gradient updates"


def _title(fig, title: str, note: str) -> None:
    width = int(fig.get_figwidth() * 11)  # about 11 characters per inch at this font size
    text = textwrap.fill(title, width) + ("\n" + textwrap.fill(f"[{note}]", width) if note else "")
    fig.suptitle(text, fontsize=11)


def plot_curves(configs: list[Config], curves: dict[str, list[dict]], path: Path, note: str, ci: int) -> bool:
    """Fig. 3 style: IQM per iteration with its CI band, one panel per agent and network."""
    cs = [c for c in configs if curves.get(c.label)]
    if not cs:
        return False
    panel_of = [(c.agent, c.arch) for c in cs]
    panels = list(dict.fromkeys(panel_of))
    titles = [_panel_title(cs[panel_of.index(p)]) for p in panels]
    key, quantity = _progress([curves[c.label] for c in cs])
    plt = _plt()
    fig, axes = _figure(plt, len(panels), (5.0, 3.7))
    for c, line, p in zip(cs, line_styles(cs, panel_of), panel_of, strict=True):
        pts = curves[c.label]
        ax = axes[panels.index(p)]
        line.plot(ax, [q[key] for q in pts], [q["iqm"] for q in pts], *_band(pts),
                  label=line.label + "".join(f" ({n})" for n in _notes(c, pts[0]["low"] is not None)))
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        _frames_axis(ax, quantity=quantity)
        ax.set_ylabel("IQM human-normalized score")
    _legend(fig, axes)
    _title(fig, f"IQM learning curves ({ci}% stratified-bootstrap CIs)", note)
    _save(fig, plt, path)
    return True


def _band(pts: list[dict]) -> tuple[list | None, list | None]:
    """A learning curve's CI band, or (None, None) where it has none (one run per game: see stats.has_ci)."""
    if pts[0]["low"] is None:
        return None, None
    return [q["low"] for q in pts], [q["high"] for q in pts]


def _notes(c: Config, has_ci: bool) -> list[str]:
    """What a line or point must say about itself: incomplete (only reachable with --allow-incomplete), no CI."""
    return ["incomplete"] * (not c.complete) + ["no CI: 1 run per game"] * (not has_ci)


def _final_iqm_line(ax, group: list[Config], x: list[float], finals: dict[str, dict], line: Line) -> None:
    """Final IQM of `group` at positions `x` (one configuration per position), with CI bars where there are CIs;
    configurations that are incomplete or have no CI are circled and say so, impossible to miss."""
    w = np.array(x, dtype=float)
    iqm = [finals[c.label]["iqm"] for c in group]
    y = np.array([f["value"] for f in iqm])
    ax.plot(w, y, color=line.color, ls=DASHES[line.variant % len(DASHES)], marker=MARKERS[line.variant % len(MARKERS)],
            lw=1.6, label=line.label)
    bars = [i for i, f in enumerate(iqm) if f["low"] is not None]
    if bars:
        lo, hi = (np.array([iqm[i][k] for i in bars]) for k in ("low", "high"))
        ax.errorbar(w[bars], y[bars], yerr=[y[bars] - lo, hi - y[bars]], fmt="none", ecolor=line.color, capsize=4,
                    lw=1.6)
    for c, x, v in zip(group, w, y, strict=True):
        notes = _notes(c, finals[c.label]["iqm"]["low"] is not None)
        if notes:
            ax.plot(x, v, marker="o", ms=9, mfc="white", mec=line.color, zorder=3)
            ax.annotate(", ".join(notes), (x, v), xytext=(6, -12), textcoords="offset points", fontsize=7)


def _panel_title(c: Config, parts: list[tuple[str, str]] = ()) -> str:
    """'DQN Impala', plus what else sets the panel apart from the other panels."""
    head = [(k, describe(k, c.flat, k, False)) for k in ("agent.name", "network.arch")]
    return join_parts(head + [p for p in parts if p[0] not in ("agent.name", "network.arch")])


def _is_pruning(k: str) -> bool:
    return k.startswith("pruning.")


@dataclass(frozen=True)
class FinalAxis:
    """A figure of final IQM against one experiment field: a line per value of the fields `lines_by` accepts, a
    panel per combination of the other fields. Panels with fewer than `min_values` values of the field are left
    out (a sweep of replay ratios, not one ratio), unless `fallback`: then, where no other axis has a figure,
    every panel is drawn (dense against pruned at one width still gets its final IQM). Categorical: equally
    spaced positions, labelled with the values (replay ratios double; sparsities crowd near 1)."""

    field: str
    xlabel: str
    title: str
    lines_by: Callable[[str], bool]
    always: tuple[str, ...]  # what a line's label names when nothing else tells the lines apart
    min_values: int = 2
    categorical: bool = False
    fallback: bool = False

    def in_panel(self, k: str) -> bool:
        """Whether field `k` sets the panel apart (it is neither the x axis nor what tells the lines apart)."""
        return k != self.field and not self.lines_by(k)


# Fig. 1; Fig. 5 and 17 (replay ratios, dense against pruned); Fig. 15 (sparsities, a line per width).
WIDTH_AXIS = FinalAxis("network.width", "Width multiplier", "Final IQM vs width", _is_pruning,
                       ("pruning.final_sparsity",), fallback=True)
REPLAY_RATIO_AXIS = FinalAxis("replay_ratio", "Replay ratio (gradient updates per agent step)",
                              "Final IQM vs replay ratio", _is_pruning, ("pruning.final_sparsity",), categorical=True)
SPARSITY_AXIS = FinalAxis("pruning.final_sparsity", "Final sparsity", "Final IQM vs sparsity",
                          lambda k: k == "network.width", ("network.width",), min_values=3, categorical=True)
FINAL_AXES = (WIDTH_AXIS, REPLAY_RATIO_AXIS, SPARSITY_AXIS)


def _final_panels(configs: list[Config], axis: FinalAxis, min_values: int) -> dict[tuple, list[Config]]:
    """{panel: its aggregated configurations} of the panels with at least `min_values` values of the axis's field,
    in the configurations' order."""
    panels: dict[tuple, list[Config]] = {}
    for c in configs:
        if c.aggregated and c.flat.get(axis.field) is not None:
            panels.setdefault(tuple((k, v) for k, v in c.key if axis.in_panel(k)), []).append(c)
    return {p: cs for p, cs in panels.items() if len({c.flat[axis.field] for c in cs}) >= min_values}


def plot_final(configs: list[Config], finals: dict[str, dict], path: Path, note: str, ci: int,
               axis: FinalAxis) -> bool:
    """Final IQM against `axis.field` (Fig. 1 style for the width), one panel for each combination of the other
    options (e.g. one per agent)."""
    kept = _final_panels(configs, axis, axis.min_values)
    if not kept and axis.fallback and not any(_final_panels(configs, a, a.min_values) for a in FINAL_AXES):
        kept = _final_panels(configs, axis, 1)
    if not kept:
        return False
    panel_of_config = {id(c): p for p, group in kept.items() for c in group}
    cs = [c for c in configs if id(c) in panel_of_config]  # (in the configurations' order: lines and legend)
    panel_of = [panel_of_config[id(c)] for c in cs]
    panels = list(dict.fromkeys(panel_of))
    reps = [kept[p][0] for p in panels]
    # panel titles name what differs between panels (or agent and network when there is one panel)
    rest_flats = [{k: v for k, v in c.flat.items() if axis.in_panel(k)} for c in reps]
    titles = [_panel_title(c, p) for c, p in zip(reps, label_parts(rest_flats), strict=True)]
    by_line = [{k: v for k, v in c.flat.items() if axis.lines_by(k)} for c in cs]
    line_of = [json.dumps(f, sort_keys=True) for f in by_line]
    firsts = [line_of.index(x) for x in dict.fromkeys(line_of)]
    labels = [join_parts(p) or "baseline" for p in label_parts([by_line[i] for i in firsts], always=axis.always)]
    if axis.lines_by is _is_pruning:  # colour by sparsity, as everywhere
        colors = [s.color for s in line_styles([cs[i] for i in firsts])]
    else:  # the lines' first configurations may differ in sparsity, which these colours do not mean here
        colors = [PALETTE[j % len(PALETTE)] for j in range(len(firsts))]
    plt = _plt()
    fig, axes = _figure(plt, len(panels), (4.2, 3.4))
    for ax, p, title in zip(axes, panels, titles, strict=True):
        ticks = sorted({c.flat[axis.field] for c in kept[p]})
        x_of = ticks.index if axis.categorical else float  # categorical: the panel's values, evenly spaced
        for j, first in enumerate(firsts):
            group = sorted((c for c, q, x in zip(cs, panel_of, line_of, strict=True)
                            if q == p and x == line_of[first]), key=lambda c: c.flat[axis.field])
            xs = [x_of(c.flat[axis.field]) for c in group]
            # A categorical line stops where it has no value: drawn across the gap, it would read as one.
            cuts = [0, *(i for i in range(1, len(xs)) if axis.categorical and xs[i] - xs[i - 1] > 1), len(xs)]
            for a, b in zip(cuts, cuts[1:]):
                if a < b:
                    _final_iqm_line(ax, group[a:b], xs[a:b], finals, Line(labels[j], colors[j], j))
        ax.set_title(title, fontsize=10)
        ax.set_xticks([x_of(v) for v in ticks], [f"{v:g}" for v in ticks])
        ax.set_xlabel(axis.xlabel)
        ax.set_ylabel("Final IQM human-normalized score")
        ax.margins(x=0.08, y=0.12)  # markers at the extremes drawn whole
    _legend(fig, axes)
    _title(fig, f"{axis.title} ({ci}% CIs)", note)
    _save(fig, plt, path)
    return True


def _series(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """`key` of run's metrics against frames (gradient updates for an offline run, see _run_quantity)."""
    rows = [m for m in run.metrics() if key in m and m[key] is not None]
    x = "frames" if _run_quantity(run) == "Frames" else "agent_steps"
    return np.array([m.get(x, 0) for m in rows], dtype=float), np.array([m[key] for m in rows], dtype=float)


def _run_quantity(run: Run) -> str:
    rows = run.metrics()
    offline = rows and not any(m.get("frames") for m in rows) and any(m.get("agent_steps") for m in rows)
    return "Gradient updates" if offline else "Frames"


def _overall_sparsity_key(run: Run) -> str:
    """The trainer logs sparsity/prunable (over prunable weights, what the schedule targets) and sparsity/total
    (biases in the denominator too, like JaxPruner); plot the former when it is there."""
    return "sparsity/prunable" if any("sparsity/prunable" in m for m in run.metrics()) else "sparsity/total"


def plot_sparsity(configs: list[Config], path: Path, note: str) -> bool:
    """Fig. 2 style: the schedule each pruned configuration actually followed, plus one per-layer profile."""
    pruned = []  # (config, its first run that logged sparsity): the schedule is the same for every seed
    for c in configs:
        run = next((r for r in c.runs if c.sparsity > 0 and len(_series(r, _overall_sparsity_key(r))[0])), None)
        if run is not None:
            pruned.append((c, run))
    if not pruned:
        return False
    plt = _plt()
    fig, (ax, ax_l) = _figure(plt, 2, (4.6, 3.6))
    lines = dict(zip(map(id, configs), line_styles(configs), strict=True))  # the styles of the other figures
    for i, (c, run) in enumerate(pruned):
        x, y = _series(run, _overall_sparsity_key(run))
        line = lines[id(c)]
        line.plot(ax, x, y, lw=2.5 - 1.5 * i / len(pruned))  # schedules often coincide: thinner ones on top
        xt, yt = _series(run, "sparsity/target")
        if len(xt):
            ax.plot(xt, yt, color="black", lw=0.8, ls=":")
    _frames_axis(ax, quantity=_run_quantity(pruned[0][1]))
    ax.set_ylabel("Sparsity of the prunable weights")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Followed (dotted: scheduled target)", fontsize=10)

    c, run = max(pruned, key=lambda p: p[0].sparsity)
    overall = {"sparsity/total", "sparsity/target", "sparsity/prunable"}
    logged = dict.fromkeys(k for m in run.metrics() for k in m)  # logging order = layer order
    layers = [k for k in logged if k.startswith("sparsity/") and k not in overall]
    cmap = plt.get_cmap("viridis")
    for j, k in enumerate(layers):
        x, y = _series(run, k)
        ax_l.plot(x, y, color=cmap(j / max(1, len(layers) - 1)), lw=1, label=k.removeprefix("sparsity/"))
    x, y = _series(run, _overall_sparsity_key(run))
    ax_l.plot(x, y, color="black", lw=2.2, label="all prunable")
    _frames_axis(ax_l, quantity=_run_quantity(run))
    ax_l.set_ylim(-0.02, 1.02)
    ax_l.set_title(textwrap.fill(f"Per layer: {c.label} ({run.game}, seed {run.seed})", 50), fontsize=9)
    ax_l.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=1 if len(layers) < 20 else 2)
    _figure_legend(fig, *ax.get_legend_handles_labels())
    gmp_only = all(c.flat.get("pruning.method", "gmp") == "gmp" for c, _ in pruned)  # RigL's sparsity is constant
    _title(fig, "Gradual magnitude pruning schedule" if gmp_only else "Pruning schedules", note)
    _save(fig, plt, path)
    return True


def _mean_band(values: np.ndarray, reps: int, confidence: float, seed: int):
    """Mean over runs and a bootstrap percentile CI of it, for every column of [runs, T]; no CI (None, None) from
    a single run, which resamples to itself."""
    if len(values) < MIN_RUNS_FOR_CI:
        return values.mean(axis=0), None, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(reps, len(values)))
    means = values[idx].mean(axis=1)
    a = 1 - confidence
    return values.mean(axis=0), np.quantile(means, a / 2, axis=0), np.quantile(means, 1 - a / 2, axis=0)


def plot_analysis(
    configs: list[Config], games: list[str] | None, path: Path, note: str, reps: int, confidence: float, seed: int
) -> bool:
    """Fig. 11 style: one row per game, one column per analysis metric, one line per configuration."""
    have = {
        (c.label, r.game) for c in configs for r in c.runs if any("analysis/dormant_frac" in m for m in r.metrics())
    }
    if not have:
        return False
    available = sorted({g for _, g in have})
    if games is None:
        games = [g for g in PAPER_ANALYSIS_GAMES if g in available] or available[:4]
    games = [g for g in games if g in available]
    if not games:
        return False
    plt = _plt()
    keys = list(ANALYSIS_KEYS)
    fig, axes = plt.subplots(len(games), len(keys), figsize=(2.9 * len(keys), 2.3 * len(games) + 0.6), squeeze=False,
                             layout="constrained")
    drawn = [c for c in configs if any((c.label, g) in have for g in games)]
    seeds = set()  # how many runs each drawn line averages
    for c, line in zip(drawn, line_styles(drawn), strict=True):
        for row, g in enumerate(games):
            runs = [r for r in c.runs if r.game == g]
            for col, k in enumerate(keys):
                series = [_series(r, k) for r in runs]
                series = [s for s in series if len(s[0])]
                if not series:
                    continue
                seeds.add(len(series))
                common = sorted(set.intersection(*(set(x.tolist()) for x, _ in series)))
                vals = np.array(
                    [[dict(zip(x.tolist(), y.tolist(), strict=True))[f] for f in common] for x, y in series]
                )
                m, lo, hi = _mean_band(vals, reps, confidence, seed)
                line.plot(axes[row, col], common, m, lo, hi, lw=1.3)
    for row, g in enumerate(games):
        for col, k in enumerate(keys):
            ax = axes[row, col]
            ax.set_title(f"{g}: {ANALYSIS_KEYS[k]}", fontsize=9)
            _frames_axis(ax, fontsize=8, quantity=_run_quantity(next(r for c in drawn for r in c.runs)))
            ax.tick_params(labelsize=7)
    _legend(fig, axes.flat)
    n = f"{min(seeds)}" if len(seeds) == 1 else f"{min(seeds)}-{max(seeds)}"
    ci = f"{round(confidence * 100)}% bootstrap CIs" if max(seeds) > 1 else "one seed: no CI"
    _title(fig, f"Analysis metrics (mean over {n} seed{'s' * (n != '1')} per line, {ci})", note)
    _save(fig, plt, path)
    return True


# --- the comparison of methods (Fig. 12) and the gradient covariance (Fig. 14) ------------------------------
METHOD_PREFIXES = ("pruning.", "redo.", "reset.", "rigl.")


def is_method_field(k: str) -> bool:
    """A field that says how the network is kept plastic or sparse: pruning, RigL, lottery ticket, ReDo, Reset,
    L2, weight decay (the lines of Fig. 12)."""
    return k.startswith(METHOD_PREFIXES) or k in METHOD_TEXT


def uses_a_baseline_method(c: Config) -> bool:
    """True when a configuration runs one of the paper's comparisons rather than dense vs GMP alone."""
    return any(k in c.flat and METHOD_TEXT[k](c.flat[k]) for k in METHOD_SWITCHES)


def plot_methods(configs: list[Config], curves: dict[str, list[dict]], finals: dict[str, dict], path: Path,
                 note: str, ci: int) -> bool:
    """Fig. 12 style, one row per combination of the other options: left, IQM learning curves of every method at
    width 3 (or the widest there is); right, final IQM against width, one line per method, with CIs. Drawn when
    some configuration uses a baseline method (ReDo, Reset, WD, L2, RigL, lottery ticket)."""
    cs = [c for c in configs if c.aggregated]
    if not any(uses_a_baseline_method(c) for c in cs):
        return False
    panel_of = [tuple((k, v) for k, v in c.key if not is_method_field(k) and k != "network.width") for c in cs]
    panels = list(dict.fromkeys(panel_of))
    reps = [cs[panel_of.index(p)] for p in panels]
    rest_flats = [{k: v for k, v in c.flat.items() if not is_method_field(k) and k != "network.width"} for c in reps]
    titles = [_panel_title(c, p) for c, p in zip(reps, label_parts(rest_flats), strict=True)]
    methods = [{k: v for k, v in c.flat.items() if is_method_field(k)} for c in cs]
    method_of = [json.dumps(m, sort_keys=True) for m in methods]
    firsts = [method_of.index(x) for x in dict.fromkeys(method_of)]
    labels = [join_parts(p) or "baseline" for p in label_parts([methods[i] for i in firsts],
                                                               always=("pruning.final_sparsity",))]
    styles = line_styles([cs[i] for i in firsts])  # one configuration, one colour: the other figures' colours
    lines = [Line(label, style.color, j) for j, (label, style) in enumerate(zip(labels, styles, strict=True))]
    key, quantity = _progress([curves[c.label] for c in cs if curves.get(c.label)])
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 2, figsize=(10.5, 3.8 * len(panels) + 0.6), squeeze=False,
                             layout="constrained")
    for (ax_c, ax_w), p, title in zip(axes, panels, titles, strict=True):
        mine = [(c, method_of.index(m)) for c, q, m in zip(cs, panel_of, method_of, strict=True) if q == p]
        widths = sorted({c.width for c, _ in mine})
        shown = 3 if 3 in widths else widths[-1]
        for c, first in mine:
            j = firsts.index(first)
            if c.width == shown and curves.get(c.label):
                pts = curves[c.label]
                lines[j].plot(ax_c, [q[key] for q in pts], [q["iqm"] for q in pts], *_band(pts))
        for j, first in enumerate(firsts):
            group = sorted((c for c, f in mine if f == first), key=lambda c: c.width)
            if not group:
                continue
            _final_iqm_line(ax_w, group, [c.width for c in group], finals, lines[j])
        ax_c.set_title(f"{title}: width ×{shown}", fontsize=10)
        _frames_axis(ax_c, quantity=quantity)
        ax_c.set_ylabel("IQM human-normalized score")
        ax_w.set_title(f"{title}: final IQM", fontsize=10)
        ax_w.set_xticks(widths)
        ax_w.set_xlabel("Width multiplier")
        ax_w.set_ylabel("Final IQM human-normalized score")
    _legend(fig, axes.flat)
    _title(fig, f"Pruning and the other methods ({ci}% stratified-bootstrap CIs)", note)
    _save(fig, plt, path)
    return True


PAPER_COVARIANCE_GAMES = ("Breakout", "VideoPinball")  # Fig. 14
MAX_COVARIANCE_PANELS = 6


def plot_grad_covariance(configs: list[Config], games: list[str] | None, path: Path, note: str) -> bool:
    """Fig. 14 style: the last gradient covariance matrix of each configuration (its lowest seed's run), one row
    per game, side by side (dense vs pruned), red negative, blue positive, on [-1, 1]."""
    found: dict[str, list[tuple[Config, np.ndarray, dict, Run]]] = {}
    for c in configs:
        for g in sorted({r.game for r in c.runs}):
            for r in sorted((r for r in c.runs if r.game == g), key=lambda r: r.seed):
                last = r.grad_covariance()
                if last is not None:
                    found.setdefault(g, []).append((c, *last, r))
                    break
    if not found:
        return False
    if games is None:
        games = [g for g in PAPER_COVARIANCE_GAMES if g in found] or sorted(found)[:2]
    games = [g for g in games if g in found]
    if not games:
        return False
    cols = min(MAX_COVARIANCE_PANELS, max(len(found[g]) for g in games))
    plt = _plt()
    fig, axes = plt.subplots(len(games), cols, figsize=(3.0 * cols + 0.8, 3.0 * len(games) + 0.7), squeeze=False,
                             layout="constrained")
    image = None
    for row, g in zip(axes, games, strict=True):
        for ax in row:
            ax.set_visible(False)
        for ax, (c, m, where, r) in zip(row, found[g], strict=False):
            ax.set_visible(True)
            image = ax.imshow(m, cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
            ax.grid(False)
            ax.set_xticks([])
            ax.set_yticks([])
            steps = where.get("frames")
            at = ""
            if isinstance(steps, int | float) and steps > 0:  # (an offline run's snapshots count updates)
                at = f", {steps / 1e6:.3g}M frames" if steps >= 1e6 else f", {steps:,.0f} frames"
            ax.set_title(textwrap.fill(f"{g}: {c.label}", 34) + f"\n(seed {r.seed}{at})", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="cosine of per-sample gradients")
    _title(fig, "Gradient covariance (normalised: cosines of per-sample TD-loss gradients on a fixed batch)", note)
    _save(fig, plt, path)
    return True
