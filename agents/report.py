"""Turn run directories into the paper's tables and figures: `python -m agents.report RUN_DIRS... --out DIR`.

Protocol (paper section 4.1, Agarwal et al. 2021):
- a run's final score is its last iteration's score (mean raw return of the training episodes that
  finished in that iteration), i.e. "IQM after 40M frames" for a full-budget run; it is
  human-normalised with the Atari-57 human_at30 table (agents/data/atari_scores.csv);
- per configuration, the [seeds, games] matrix of final scores gives the IQM, median, mean and
  optimality gap with 95% stratified-bootstrap percentile intervals (agents/evaluation.py);
- learning curves are the same IQM per iteration (one point per iteration, 1M frames by default).

Runs are grouped by their whole config.json except game, seed and bookkeeping fields (run name,
device, logging, checkpoints), so runs that differ in anything that can change results (lr, batch size,
budget, ...) are never averaged together. Labels name agent, network, width and sparsity, plus any
other field that differs between configurations (replay ratio, budget, lr, ...).

Nothing is silently averaged. A configuration is complete when it has a finished run for every game
(every game found in any run, or --games) and every seed that appears anywhere in that configuration.
Otherwise it is flagged in report.md and on stderr and left out of the IQM table, the IQM curves and the
width figure, unless --allow-incomplete: then each game keeps its first n seeds (n = the smallest count
over games), unfinished runs count with the score of their last iteration, and the configuration is
marked "partial" / "incomplete" everywhere. The sparsity and analysis figures plot whatever runs logged.
Games without a human reference score are reported with raw scores only.

Outputs in --out: report.md, summary.json, final_scores.csv, curves.csv and PNG figures
(iqm_curves.png, iqm_vs_width.png, sparsity_schedule.png, analysis.png), all drawn with matplotlib's
Agg backend.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agents import evaluation as ev

# config.json fields that do not change what is learned; everything else separates configurations.
BOOKKEEPING = set(
    "seed env.game env.num_threads preset run_name runs_dir device replay_device progress tensorboard "
    "checkpoint_every keep_checkpoints save_replay log_every analysis_every profile overlap_env".split()
)
AGENT_NAMES = {"dqn": "DQN", "rainbow": "Rainbow", "iqn": "IQN", "miqn": "M-IQN"}
ARCH_NAMES = {"impala": "Impala", "nature": "Nature CNN"}
ANALYSIS_KEYS = {  # Fig. 11 panels: metrics.jsonl key -> axis label
    "analysis/q_var": "Q-value variance",
    "analysis/param_norm": "Parameter norm",
    "analysis/q_norm": "Q-value norm",
    "analysis/srank": "srank",
    "analysis/dormant_frac": "Dormant neurons (fraction)",
}
PAPER_ANALYSIS_GAMES = ("BeamRider", "Breakout", "Enduro", "VideoPinball")  # Fig. 11


def warn(problems: list[str], msg: str) -> None:
    """Every data problem goes to stderr now and into report.md later."""
    problems.append(msg)
    print(f"warning: {msg}", file=sys.stderr)


# --- loading run directories ------------------------------------------------------------------------


@dataclass
class Run:
    path: Path
    config: dict
    game: str
    seed: int
    iterations: dict[str, np.ndarray]  # iterations.csv columns as float arrays
    finished: bool
    _metrics: list[dict] | None = field(default=None, repr=False)

    @property
    def frames_reached(self) -> float:
        return float(self.iterations["frames"][-1]) if len(self.iterations["frames"]) else 0.0

    def final_score(self, problems: list[str] | None = None) -> float:
        """Last iteration's score; if no episode finished in it, the last iteration that has one (warned
        when a problems list is given)."""
        scores = self.iterations["score"]
        finite = np.flatnonzero(np.isfinite(scores))
        if len(finite) == 0:
            return math.nan
        if finite[-1] != len(scores) - 1 and problems is not None:
            warn(
                problems,
                f"{self.path}: no episode finished in the last iteration; "
                f"using iteration {int(self.iterations['iteration'][finite[-1]])}'s score",
            )
        return float(scores[finite[-1]])

    def metrics(self) -> list[dict]:
        """Rows of metrics.jsonl that carry sparsity or analysis keys (other rows are skipped unparsed)."""
        if self._metrics is None:
            self._metrics = []
            path = self.path / "metrics.jsonl"
            if path.exists():
                with open(path) as f:
                    for line in f:
                        if '"sparsity/' in line or '"analysis/' in line:
                            self._metrics.append(json.loads(line))
        return self._metrics


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run dirs are dirs with a config.json; parents are searched recursively."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if (p / "config.json").is_file():
            found.add(p)
        else:
            found.update(c.parent for c in p.rglob("config.json"))
    # a run's own subfolders (checkpoints/, tb/) are never runs
    runs = sorted(d for d in found if not any(a in found for a in d.parents))
    if not runs:
        raise FileNotFoundError(f"no run directories (with a config.json) under {', '.join(map(str, paths))}")
    return runs


def _read_iterations(path: Path) -> dict[str, np.ndarray]:
    cols = ("iteration", "agent_steps", "frames", "score")
    out: dict[str, list[float]] = {c: [] for c in cols}
    if path.exists():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for c in cols:
                    v = (row.get(c) or "").strip()
                    out[c].append(float(v) if v and v.lower() != "nan" else math.nan)
    return {c: np.asarray(v, dtype=np.float64) for c, v in out.items()}


def load_run(path: Path, problems: list[str]) -> Run:
    with open(path / "config.json") as f:
        cfg = json.load(f)
    if isinstance(cfg.get("config"), dict):  # agents.train nests the config next to metadata (git SHA, device...)
        cfg = cfg["config"]
    for section, key in (("env", "game"), ("agent", "name"), ("network", "arch")):
        if not isinstance(cfg.get(section), dict) or key not in cfg[section]:
            raise ValueError(f"{path}/config.json has no {section}.{key}; is this a prunerl run directory?")
    game = cfg["env"]["game"]
    game = ev.canonical_game(game) if ev.has_reference(game) else game
    iterations = _read_iterations(path / "iterations.csv")
    summary = {}
    if (path / "summary.json").exists():
        with open(path / "summary.json") as f:
            summary = json.load(f)
    total = cfg.get("total_steps")
    steps = iterations["agent_steps"]
    finished = summary.get("finished") is True or bool(total and len(steps) and steps[-1] >= total)
    if not len(steps):
        warn(problems, f"{path}: no finished iteration yet")
    return Run(path, cfg, game, int(cfg.get("seed", 0)), iterations, finished)


# --- grouping into configurations -------------------------------------------------------------------


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class Config:
    key: tuple
    runs: list[Run]
    label: str = ""
    complete: bool = False
    flags: list[str] = field(default_factory=list)  # why it is incomplete, shown in report.md
    games: list[str] = field(default_factory=list)  # games of the score matrix
    seeds: list[int] = field(default_factory=list)
    matrix: np.ndarray | None = None  # [seeds, games] human-normalised final scores
    cells: dict[tuple[str, int], Run] = field(default_factory=dict)
    used: list[list[Run]] = field(default_factory=list)  # per game, the runs in the matrix

    @property
    def flat(self) -> dict:
        return dict((k, json.loads(v)) for k, v in self.key)

    @property
    def agent(self) -> str:
        return self.flat["agent.name"]

    @property
    def arch(self) -> str:
        return self.flat["network.arch"]

    @property
    def width(self) -> int:
        return int(self.flat.get("network.width", 1))

    @property
    def sparsity(self) -> float:
        return float(self.flat.get("pruning.final_sparsity", 0.0) or 0.0)

    @property
    def replay_ratio(self):
        return self.flat.get("replay_ratio")

    @property
    def aggregated(self) -> bool:
        return self.matrix is not None


def group_runs(runs: list[Run]) -> list[Config]:
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        flat = _flatten(r.config)
        key = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in flat.items() if k not in BOOKKEEPING))
        groups.setdefault(key, []).append(r)
    configs = [Config(k, v) for k, v in groups.items()]
    configs.sort(key=lambda c: (c.agent, c.arch, c.width, c.sparsity, str(c.replay_ratio), c.key))
    _label(configs)
    return configs


def _fmt_frames(frames: float) -> str:
    return f"{frames / 1e6:.3g}M" if frames >= 1e6 else f"{frames / 1e3:.3g}k"


def _fmt_sparsity(s: float) -> str:
    return "dense" if s == 0 else f"{s * 100:g}% pruned"


def _label(configs: list[Config]) -> None:
    """'DQN Impala x3, 95% pruned' plus whatever else tells configurations apart."""
    flats = [c.flat for c in configs]
    keys = set().union(*flats) if flats else set()
    varying = sorted(k for k in keys if len({json.dumps(f.get(k)) for f in flats}) > 1)
    main = {"agent.name", "network.arch", "network.width", "pruning.final_sparsity"}
    for c, f in zip(configs, flats, strict=True):
        parts = [
            f"{AGENT_NAMES.get(c.agent, c.agent)} {ARCH_NAMES.get(c.arch, c.arch)} ×{c.width}",
            _fmt_sparsity(c.sparsity),
        ]
        for k in varying:
            if k in main:
                continue
            if k == "replay_ratio":
                parts.append(f"RR {f.get(k)}")
            elif k == "total_steps":
                skip = f.get("env.frame_skip", f.get("frame_skip", 4))
                parts.append(f"{_fmt_frames(f[k] * skip)} frames" if f.get(k) else "budget ?")
            else:
                parts.append(f"{k.split('.')[-1]}={f.get(k)}")
        c.label = ", ".join(parts)


# --- completeness and score matrices -----------------------------------------------------------------


def build_matrices(
    configs: list[Config], games: list[str], allow_incomplete: bool, problems: list[str], table: str = "dqn_zoo"
) -> None:
    """Fill each Config's matrix of final human-normalised scores, or flag why it has none."""
    for c in configs:
        c.seeds = sorted({r.seed for r in c.runs})
        for r in c.runs:
            if r.game not in games:
                continue
            prev = c.cells.get((r.game, r.seed))
            if prev is not None:
                best = max((prev, r), key=lambda x: (x.finished, len(x.iterations["score"])))
                warn(
                    problems,
                    f"{c.label}: {r.game} seed {r.seed} has two runs ({prev.path}, {r.path}); using {best.path}",
                )
                r = best
            c.cells[(r.game, r.seed)] = r
        missing = [(g, s) for g in games for s in c.seeds if (g, s) not in c.cells]
        unfinished = [r for r in c.cells.values() if not r.finished]
        no_score = [r for r in c.cells.values() if not np.isfinite(r.iterations["score"]).any()]
        if missing:
            absent = [g for g in games if not any((g, s) in c.cells for s in c.seeds)]
            partial = [f"{g} seed {s}" for g, s in missing if g not in absent]
            if absent:
                c.flags.append(f"missing games: {', '.join(absent)}")
            if partial:
                c.flags.append(f"missing seeds: {', '.join(partial)}")
        if unfinished:
            c.flags.append(
                "unfinished: "
                + ", ".join(f"{r.game} seed {r.seed} ({_fmt_frames(r.frames_reached)} frames)" for r in unfinished)
            )
        if no_score:
            c.flags.append("no score logged: " + ", ".join(f"{r.game} seed {r.seed}" for r in no_score))
        c.complete = not c.flags
        for flag in c.flags:
            warn(problems, f"{c.label}: {flag}" + ("" if allow_incomplete else " -> left out of the aggregates"))

        # the runs that enter the matrix, per game
        per_game = {g: [c.cells[(g, s)] for s in c.seeds if (g, s) in c.cells] for g in games}
        if allow_incomplete:
            per_game = {g: [r for r in rs if np.isfinite(r.iterations["score"]).any()] for g, rs in per_game.items()}
        elif not c.complete:
            continue
        per_game = {g: rs for g, rs in per_game.items() if rs}
        if not per_game:
            continue
        n = min(len(rs) for rs in per_game.values())
        dropped = [f"{r.game} seed {r.seed}" for rs in per_game.values() for r in rs[n:]]
        if dropped:  # rliable-style matrices are rectangular: every game keeps its first n seeds
            c.flags.append(f"kept {n} seed(s) per game; not used: {', '.join(dropped)}")
            warn(problems, f"{c.label}: {c.flags[-1]}")
        c.games = list(per_game)
        c.used = [rs[:n] for rs in per_game.values()]
        c.matrix = np.array(
            [[ev.human_normalized(r.final_score(problems), r.game, table) for r in rs] for rs in c.used]
        ).T
        if n == 1:
            warn(problems, f"{c.label}: a single seed per game; its confidence interval only reflects game-wise spread")


def final_aggregates(c: Config, reps: int, confidence: float, seed: int) -> dict:
    out = {}
    for name, fn in ev.AGGREGATES.items():
        point, low, high = ev.aggregate_with_ci(c.matrix, fn, reps=reps, confidence=confidence, seed=seed)
        out[name] = {"value": point, "low": low, "high": high}
    return out


def iqm_curve(
    c: Config, reps: int, confidence: float, seed: int, problems: list[str], table: str = "dqn_zoo"
) -> list[dict]:
    """IQM with CI at every iteration for which every run in the matrix has a score."""
    runs = [r for rs in c.used for r in rs]
    iters = sorted({int(i) for r in runs for i in r.iterations["iteration"] if np.isfinite(i)})
    points, gaps = [], 0
    for it in iters:
        cols, frames = [], []
        for rs in c.used:
            col = []
            for r in rs:
                idx = np.flatnonzero(r.iterations["iteration"] == it)
                if len(idx) and np.isfinite(r.iterations["score"][idx[0]]):
                    col.append(ev.human_normalized(r.iterations["score"][idx[0]], r.game, table))
                    frames.append(r.iterations["frames"][idx[0]])
            cols.append(col)
        if any(len(col) < len(rs) for col, rs in zip(cols, c.used, strict=True)):
            gaps += 1  # a run has not reached this iteration, or no episode finished in it
            continue
        if len(set(frames)) > 1:
            warn(problems, f"{c.label}: runs disagree on the frame count of iteration {it}: {sorted(set(frames))}")
        m = np.array(cols).T
        point, low, high = ev.aggregate_with_ci(m, ev.iqm, reps=reps, confidence=confidence, seed=seed)
        points.append(
            {
                "iteration": it,
                "frames": float(np.median(frames)),
                "iqm": point,
                "low": low,
                "high": high,
                "runs": m.size,
            }
        )
    if gaps:
        warn(problems, f"{c.label}: {gaps} iteration(s) left off the learning curve (a run lacks a score there)")
    return points


def probability_of_improvement_pairs(configs: list[Config], reps: int, confidence: float, seed: int) -> list[dict]:
    """P(pruned > dense) for every pruned configuration whose dense twin (same everything else) is aggregated."""
    out = []
    for c in configs:
        if not c.aggregated or c.sparsity == 0:
            continue
        base = {k: v for k, v in c.key if not k.startswith("pruning.")}
        for d in configs:
            if d is c or not d.aggregated or d.sparsity != 0:
                continue
            if {k: v for k, v in d.key if not k.startswith("pruning.")} != base:
                continue
            common = [g for g in c.games if g in d.games]
            if not common:
                continue
            x = c.matrix[:, [c.games.index(g) for g in common]]
            y = d.matrix[:, [d.games.index(g) for g in common]]
            p = float(ev.probability_of_improvement(x, y))
            low, high = ev.bootstrap_ci(
                (x, y), ev.probability_of_improvement, reps=reps, confidence=confidence, seed=seed
            )
            out.append({"x": c.label, "y": d.label, "games": len(common), "value": p, "low": low, "high": high})
    return out


# --- figures -----------------------------------------------------------------------------------------


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


# --- writing ---------------------------------------------------------------------------------------------


def _ci(d: dict, digits: int = 3) -> str:
    return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def write_markdown(path: Path, configs, finals, pairs, games, unreferenced, problems, figures, args) -> str:
    ci = round(args.confidence * 100)
    lines = ["# Results", ""]
    if args.note:
        lines += [f"**{args.note}**", ""]
    lines += [
        f"Human-normalised scores ({args.normalization} human_at30 table), final score = last iteration's mean "
        f"training return; IQM, median, mean and optimality gap over runs x games with {ci}% stratified-bootstrap "
        f"percentile CIs ({args.reps} reps, seed {args.seed}). Games: {', '.join(games) or 'none'}.",
        "",
        f"| Configuration | Games | Seeds | IQM [{ci}% CI] | Median | Mean | Optimality gap | Status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        status = "complete" if c.complete else "**incomplete**: " + "; ".join(c.flags)
        if c.aggregated:
            f = finals[c.label]
            cells = [
                _ci(f["iqm"]),
                f"{f['median']['value']:.3f}",
                f"{f['mean']['value']:.3f}",
                f"{f['optimality_gap']['value']:.3f}",
            ]
            if not c.complete:
                status = "partial (--allow-incomplete): " + "; ".join(c.flags)
            n_seeds = str(c.matrix.shape[0])
        else:
            cells, n_seeds = ["excluded", "", "", ""], str(len(c.seeds))
        n_games = len(c.games) if c.aggregated else len({g for g, _ in c.cells})
        lines.append(f"| {c.label} | {n_games} | {n_seeds} | " + " | ".join(cells) + f" | {status} |")
    if pairs:
        lines += [
            "",
            f"Probability of improvement P(pruned > dense) [{ci}% CI]:",
            "",
            "| Pruned | Dense | Games | P(X > Y) |",
            "|---|---|---|---|",
        ]
        lines += [f"| {p['x']} | {p['y']} | {p['games']} | {_ci(p)} |" for p in pairs]

    all_games = list(games) + sorted(unreferenced)
    for title, norm in (
        ("Per-game mean raw score ± std over seeds (final iteration)", False),
        ("Per-game mean human-normalised score (final iteration)", True),
    ):
        lines += [
            "",
            f"{title}:",
            "",
            "| Game | " + " | ".join(c.label for c in configs) + " |",
            "|---|" + "---|" * len(configs),
        ]
        for g in all_games if not norm else games:
            row = []
            for c in configs:
                scores = np.array([r.final_score() for r in c.runs if r.game == g and r.finished])
                scores = scores[np.isfinite(scores)]
                if not len(scores):
                    row.append("—")
                elif norm:
                    row.append(f"{np.mean(ev.human_normalized(scores, g, args.normalization)):.3f} (n={len(scores)})")
                else:
                    row.append(f"{scores.mean():.1f} ± {scores.std():.1f} (n={len(scores)})")
            lines.append(f"| {g} | " + " | ".join(row) + " |")
    lines += ["", "Per-game tables count finished runs only."]
    if unreferenced:
        lines += [
            "",
            f"No human reference score (raw scores only, not in aggregates): {', '.join(sorted(unreferenced))}.",
        ]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    lines += ["", "## Problems", ""] + ([f"- {p}" for p in problems] or ["None."])
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def write_tables(out: Path, configs, finals, curves, pairs, problems, args) -> None:
    with open(out / "final_scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            "config,agent,arch,width,sparsity,replay_ratio,game,seed,finished,frames,final_score,"
            "human_normalized,in_aggregate,run_dir".split(",")
        )
        for c in configs:
            used = {id(r) for rs in c.used for r in rs}
            key = [c.label, c.agent, c.arch, c.width, c.sparsity, c.replay_ratio]
            for r in sorted(c.runs, key=lambda r: (r.game, r.seed)):
                s = r.final_score()
                hns = float(ev.human_normalized(s, r.game, args.normalization)) if ev.has_reference(r.game) else ""
                w.writerow(key + [r.game, r.seed, r.finished, r.frames_reached, s, hns, id(r) in used, str(r.path)])
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "iteration", "frames", "iqm", "low", "high", "runs"])
        for label, pts in curves.items():
            for p in pts:
                w.writerow([label, p["iteration"], p["frames"], p["iqm"], p["low"], p["high"], p["runs"]])
    summary = {
        "normalization": args.normalization,
        "confidence": args.confidence,
        "reps": args.reps,
        "seed": args.seed,
        "configs": [
            {
                "label": c.label,
                "agent": c.agent,
                "arch": c.arch,
                "width": c.width,
                "sparsity": c.sparsity,
                "replay_ratio": c.replay_ratio,
                "complete": c.complete,
                "flags": c.flags,
                "games": c.games,
                "seeds": c.seeds,
                "final": finals.get(c.label),
                "scores": c.matrix.tolist() if c.aggregated else None,
            }
            for c in configs
        ],
        "probability_of_improvement": pairs,
        "problems": problems,
    }
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)


# --- synthetic example (documentation and the README figure) ------------------------------------------


def _synthetic_run(d: Path, game: str, seed: int, width: int, sparsity: float, level: float, rng, iters: int = 40):
    """One fake run in the trainer's format: a saturating learning curve towards `level` (human-normalised),
    a cubic GMP schedule over 20-80% of training, and drifting analysis metrics. NOT real results."""
    steps_per_iter, total = 250_000, 250_000 * iters
    (d / "checkpoints").mkdir(parents=True, exist_ok=True)
    net = {"arch": "impala", "width": width, "scale_dense": False}
    cfg = {"preset": None, "env": {"game": game, "backend": "envpool", "num_envs": 8}, "network": net}
    cfg |= {"agent": {"name": "dqn"}, "pruning": {"final_sparsity": sparsity, "distribution": "erk"}}
    cfg |= {"replay_ratio": 0.25, "seed": seed, "total_steps": total, "iteration_steps": steps_per_iter}
    (d / "config.json").write_text(json.dumps(cfg, indent=2))

    rand, human = ev.reference_scores(game)
    t = np.arange(1, iters + 1) / iters
    hns = level * (1 - np.exp(-3 * t)) * rng.lognormal(0, 0.15) + rng.normal(0, 0.08, iters)
    rows = ["iteration,agent_steps,frames,grad_steps,score,episodes,fps,total_sparsity,wall_time"]
    for i, score in enumerate(rand + hns * (human - rand)):
        steps = (i + 1) * steps_per_iter
        rows.append(f"{i},{steps},{4 * steps},{steps // 4},{score:.1f},10,2000.0,0.0,{i * 100.0}")
    (d / "iterations.csv").write_text("\n".join(rows) + "\n")

    layers = {"conv0": 0.80, "conv1": 0.95, "conv2": 0.96, "hidden": 0.97, "out": 0.85}  # made-up ERK-like targets
    dense = sparsity == 0
    with open(d / "metrics.jsonl", "w") as f:
        for k in range(201):
            steps = k * total // 200
            u = k / 200  # fraction of training
            s = sparsity * (1 - (1 - min(max((u - 0.2) / 0.6, 0), 1)) ** 3)
            row = {"agent_steps": steps, "frames": 4 * steps, "grad_steps": steps // 4}
            row |= {"sparsity/prunable": s, "sparsity/total": 0.99 * s, "sparsity/target": s}
            row |= {f"sparsity/{n}": e * s / 0.95 for n, e in layers.items()}
            if k % 10 == 0:
                noise = 1 + 0.05 * rng.normal(size=5)
                row["analysis/dormant_frac"] = (0.1 + (0.25 if dense else 0.05) * u) * noise[0]
                row["analysis/srank"] = (300 - (150 if dense else 40) * u) * noise[1]
                row["analysis/param_norm"] = (40 + (60 if dense else 15) * u) * noise[2]
                row["analysis/q_norm"] = (1 + (8 if dense else 4) * u) * noise[3]
                row["analysis/q_var"] = (0.1 + (2 if dense else 0.6) * u) * noise[4]
            f.write(json.dumps(row) + "\n")
    (d / "summary.json").write_text(json.dumps({"finished": True, "agent_steps": total}))


def write_synthetic_runs(
    root: Path,
    games=("BeamRider", "Breakout", "Enduro", "SpaceInvaders", "VideoPinball"),
    seeds=(0, 1, 2),
    widths=(1, 3),
) -> None:
    """Dense and 95%-pruned DQN Impala runs with a made-up trend echoing Fig. 1 (dense worse with width,
    pruned better). For documentation only."""
    rng = np.random.default_rng(0)
    for w in widths:
        for s in (0.0, 0.95):
            level = 1.6 - 0.15 * (w - 1) if s == 0 else 1.8 + 0.25 * (w - 1)
            for g in games:
                game_level = level * rng.lognormal(0, 0.4)
                for seed in seeds:
                    _synthetic_run(root / f"{g}__w{w}_s{int(s * 100)}__s{seed}", g, seed, w, s, game_level, rng)


# --- main --------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m agents.report",
        description="Aggregate prunerl run directories into a markdown table, CSV/JSON and paper-style figures "
        "(IQM of human-normalised final scores with stratified-bootstrap CIs, Agarwal et al. 2021).",
        epilog="Example: python -m agents.report runs/ --out results/  (searches runs/ for config.json files)",
    )
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories or parents of them")
    p.add_argument("--out", required=True, help="output directory (created if needed)")
    p.add_argument(
        "--games",
        default=None,
        help="comma-separated games every configuration must have, or 'paper15'; default: every game found in the runs",
    )
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="aggregate configurations with missing games/seeds or unfinished runs anyway (marked)",
    )
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replications (default 2000)")
    p.add_argument("--confidence", type=float, default=0.95, help="CI coverage (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed (default 0)")
    p.add_argument(
        "--normalization",
        choices=("dqn_zoo", "dopamine"),
        default="dqn_zoo",
        help="human/random table: dqn_zoo (default) or dopamine (differs only on VideoPinball)",
    )
    p.add_argument(
        "--analysis-games",
        default=None,
        help="comma-separated games for the analysis figure (default: Fig. 11's four when present)",
    )
    p.add_argument("--note", default="", help="text added to every figure title and to report.md")
    p.add_argument(
        "--demo",
        action="store_true",
        help="write synthetic run dirs to OUT/synthetic_runs and report those (marked as synthetic)",
    )
    args = p.parse_args(argv)
    if not args.run_dirs and not args.demo:
        p.error("give at least one RUN_DIR (or --demo)")
    if args.reps < 1 or not 0 < args.confidence < 1:
        p.error("--reps must be >= 1 and --confidence in (0, 1)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.demo:
        write_synthetic_runs(out / "synthetic_runs")
        args.run_dirs = [str(out / "synthetic_runs")]
        args.note = args.note or "SYNTHETIC DATA: made-up runs from agents.report --demo, not results"
    problems: list[str] = []
    runs = [load_run(d, problems) for d in find_run_dirs(args.run_dirs)]

    if args.games:
        names = ev.PAPER_15_GAMES if args.games == "paper15" else [g for g in args.games.split(",") if g.strip()]
        games = [ev.canonical_game(g) for g in names]
    else:
        games = sorted({r.game for r in runs if ev.has_reference(r.game)})
    unreferenced = {r.game for r in runs if not ev.has_reference(r.game)}
    if unreferenced:
        warn(problems, f"no human reference score for {', '.join(sorted(unreferenced))}: raw scores only")

    configs = group_runs(runs)
    build_matrices(configs, games, args.allow_incomplete, problems, args.normalization)
    finals = {c.label: final_aggregates(c, args.reps, args.confidence, args.seed) for c in configs if c.aggregated}
    curves = {
        c.label: iqm_curve(c, args.reps, args.confidence, args.seed, problems, args.normalization)
        for c in configs
        if c.aggregated
    }
    pairs = probability_of_improvement_pairs(configs, args.reps, args.confidence, args.seed)

    ci = round(args.confidence * 100)
    analysis_games = (
        [ev.canonical_game(g) if ev.has_reference(g) else g for g in args.analysis_games.split(",")]
        if args.analysis_games
        else None
    )
    figures = []
    for name, draw in (
        ("iqm_curves.png", lambda p: plot_curves(configs, curves, p, args.note, ci)),
        ("iqm_vs_width.png", lambda p: plot_width(configs, finals, p, args.note, ci)),
        ("sparsity_schedule.png", lambda p: plot_sparsity(configs, p, args.note)),
        (
            "analysis.png",
            lambda p: plot_analysis(
                configs, analysis_games, p, args.note, min(args.reps, 1000), args.confidence, args.seed
            ),
        ),
    ):
        if draw(out / name):
            figures.append(name)
        else:
            print(f"note: {name} not drawn (no data for it)", file=sys.stderr)
    write_tables(out, configs, finals, curves, pairs, problems, args)
    text = write_markdown(out / "report.md", configs, finals, pairs, games, unreferenced, problems, figures, args)
    print(text.split("\n\nProbability")[0].split("\n\nPer-game")[0])
    print(f"\nwrote {out}/report.md, summary.json, final_scores.csv, curves.csv and {len(figures)} figure(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
