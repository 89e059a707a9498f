"""The paper-style figures, drawn with matplotlib's Agg backend: IQM curves (Fig. 3), final IQM against width
(Fig. 1), the sparsity schedule (Fig. 2) and the analysis metrics (Fig. 11)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from agents.report.configs import AGENT_NAMES, ARCH_NAMES, Config
from agents.report.runs import Run

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


def _color(sparsity: float, i: int = 0):
    """Dense is always blue and 95% always orange, as in the paper; other levels get their own colours."""
    fixed = {
        0.0: "tab:blue",
        0.95: "tab:orange",
        0.9: "tab:green",
        0.99: "tab:red",
        0.5: "tab:purple",
        0.8: "tab:brown",
        0.98: "tab:pink",
    }
    return fixed.get(round(sparsity, 4), f"C{(i + 5) % 10}")


def _styles(cs: list[Config]) -> dict[str, tuple[str, str]]:
    """label -> (colour, linestyle): colour encodes sparsity, linestyle everything else (width, RR, ...),
    so a dense/pruned pair shares a linestyle and differs in colour."""
    rests = list(dict.fromkeys(tuple(kv for kv in c.key if not kv[0].startswith("pruning.")) for c in cs))
    lines = ["-", "--", ":", "-."]
    out = {}
    for i, c in enumerate(cs):
        rest = rests.index(tuple(kv for kv in c.key if not kv[0].startswith("pruning.")))
        out[c.label] = (_color(c.sparsity, i), lines[rest % len(lines)])
    return out


def _short(c: Config) -> str:
    """Legend label inside a panel that already names agent and network; partial data is said so."""
    label = c.label.removeprefix(f"{AGENT_NAMES.get(c.agent, c.agent)} {ARCH_NAMES.get(c.arch, c.arch)} ")
    return label if c.complete else f"{label} (incomplete)"


def _frames_axis(ax, fontsize=None) -> None:
    """Data are plotted in frames; label ticks in millions (or thousands, for short smoke runs)."""
    from matplotlib.ticker import FuncFormatter

    scale, unit = (1e6, "millions") if ax.get_xlim()[1] >= 2e6 else (1e3, "thousands")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / scale:g}"))
    ax.set_xlabel(f"Frames ({unit})", fontsize=fontsize)


def _title(fig, title: str, note: str) -> None:
    width = int(fig.get_figwidth() * 11)  # about 11 characters per inch at this font size
    text = title + ("\n" + textwrap.fill(f"[{note}]", width) if note else "")
    fig.suptitle(text, fontsize=11)


def plot_curves(configs: list[Config], curves: dict[str, list[dict]], path: Path, note: str, ci: int) -> bool:
    panels: dict[tuple, list[Config]] = {}
    for c in configs:
        if curves.get(c.label):
            panels.setdefault((c.agent, c.arch), []).append(c)
    if not panels:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, ((agent, arch), cs) in zip(axes[0], panels.items(), strict=True):
        styles = _styles(cs)
        for c in cs:
            pts = curves[c.label]
            x = np.array([p["frames"] for p in pts])
            color, ls = styles[c.label]
            ax.plot(x, [p["iqm"] for p in pts], color=color, ls=ls, lw=1.8, label=_short(c))
            ax.fill_between(x, [p["low"] for p in pts], [p["high"] for p in pts], color=color, alpha=0.2, lw=0)
        ax.set_title(f"{AGENT_NAMES.get(agent, agent)}, {ARCH_NAMES.get(arch, arch)}")
        _frames_axis(ax)
        ax.set_ylabel("IQM human-normalized score")
        ax.legend(fontsize=8, loc="upper left")
    _title(fig, f"IQM learning curves ({ci}% stratified-bootstrap CIs)", note)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def plot_width(configs: list[Config], finals: dict[str, dict], path: Path, note: str, ci: int) -> bool:
    panels: dict[tuple, list[Config]] = {}
    for c in configs:
        if c.aggregated:
            rest = tuple((k, v) for k, v in c.key if k not in ("network.width", "pruning.final_sparsity"))
            panels.setdefault(rest, []).append(c)
    if not panels:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.0), squeeze=False)
    for ax, cs in zip(axes[0], panels.values(), strict=True):
        by_sparsity: dict[float, list[Config]] = {}
        for c in cs:
            by_sparsity.setdefault(c.sparsity, []).append(c)
        for i, (s, group) in enumerate(sorted(by_sparsity.items())):
            group.sort(key=lambda c: c.width)
            w = np.array([c.width for c in group], dtype=float)
            iq = np.array([finals[c.label]["iqm"]["value"] for c in group])
            lo = np.array([finals[c.label]["iqm"]["low"] for c in group])
            hi = np.array([finals[c.label]["iqm"]["high"] for c in group])
            ax.errorbar(
                w,
                iq,
                yerr=[iq - lo, hi - iq],
                color=_color(s, i),
                marker="o",
                capsize=4,
                lw=1.8,
                label="Dense" if s == 0 else f"Pruned ({s * 100:g}% sparsity)",
            )
            for c, x, y in zip(group, w, iq, strict=True):
                if not c.complete:  # only reachable with --allow-incomplete: make it impossible to miss
                    ax.plot(x, y, marker="o", ms=9, mfc="white", mec=_color(s, i), zorder=3)
                    ax.annotate("incomplete", (x, y), xytext=(6, -12), textcoords="offset points", fontsize=7)
        c0 = cs[0]
        extra = c0.label.split(", ", 2)[2:]  # anything beyond "agent arch xW, sparsity"
        ax.set_title(
            ", ".join([f"{AGENT_NAMES.get(c0.agent, c0.agent)}, {ARCH_NAMES.get(c0.arch, c0.arch)}"] + extra),
            fontsize=10,
        )
        ax.set_xticks(sorted({c.width for c in cs}))
        ax.set_xlabel("Width multiplier")
        ax.set_ylabel("Final IQM human-normalized score")
        ax.legend(fontsize=8)
    _title(fig, f"Final IQM vs width ({ci}% CIs)", note)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def _series(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [m for m in run.metrics() if key in m and m[key] is not None]
    return np.array([m["frames"] for m in rows], dtype=float), np.array([m[key] for m in rows], dtype=float)


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
    fig, (ax, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (c, run) in enumerate(pruned):
        x, y = _series(run, _overall_sparsity_key(run))
        ax.plot(x, y, color=f"C{i % 10}", lw=2.5 - 1.5 * i / len(pruned), label=c.label)  # thinner on top
        xt, yt = _series(run, "sparsity/target")
        if len(xt):
            ax.plot(xt, yt, color="black", lw=0.8, ls=":")
    _frames_axis(ax)
    ax.set_ylabel("Sparsity of the prunable weights")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Sparsity schedule followed (dotted: scheduled target)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")

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
    _frames_axis(ax_l)
    ax_l.set_ylabel("Sparsity")
    ax_l.set_ylim(-0.02, 1.02)
    ax_l.set_title(f"Per layer: {c.label} ({run.game}, seed {run.seed})", fontsize=9)
    ax_l.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=1 if len(layers) < 20 else 2)
    _title(fig, "Gradual magnitude pruning schedule", note)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def _mean_band(values: np.ndarray, reps: int, confidence: float, seed: int):
    """Mean over runs and a bootstrap percentile CI of it, for every column of [runs, T]."""
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
    fig, axes = plt.subplots(len(games), len(keys), figsize=(3.2 * len(keys), 2.6 * len(games) + 0.8), squeeze=False)
    for row, g in enumerate(games):
        cs = [x for x in configs if (x.label, g) in have]
        styles = _styles(cs)
        for c in cs:
            runs = [r for r in c.runs if r.game == g]
            for col, k in enumerate(keys):
                series = [_series(r, k) for r in runs]
                series = [s for s in series if len(s[0])]
                if not series:
                    continue
                common = sorted(set.intersection(*(set(x.tolist()) for x, _ in series)))
                vals = np.array(
                    [[dict(zip(x.tolist(), y.tolist(), strict=True))[f] for f in common] for x, y in series]
                )
                m, lo, hi = _mean_band(vals, reps, confidence, seed)
                x = np.array(common)
                ax = axes[row, col]
                color, ls = styles[c.label]
                ax.plot(x, m, color=color, ls=ls, lw=1.5, label=c.label)
                ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
        for col, k in enumerate(keys):
            ax = axes[row, col]
            ax.set_title(f"{g}: {ANALYSIS_KEYS[k]}", fontsize=9)
            _frames_axis(ax, fontsize=8)
            ax.tick_params(labelsize=7)
    legend = {}  # one entry per configuration, whichever panel drew it
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, h)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8)
    _title(fig, f"Analysis metrics (mean over seeds, {round(confidence * 100)}% bootstrap CIs)", note)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
