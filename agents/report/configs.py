"""Grouping runs into configurations, their labels, and which runs enter each configuration's score matrix."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from agents import evaluation as ev
from agents.report.runs import Run, warn

# config.json fields that do not change what is learned; everything else separates configurations.
BOOKKEEPING = set(
    "seed env.game env.num_threads preset run_name runs_dir device replay_device progress tensorboard "
    "checkpoint_every keep_checkpoints save_replay log_every analysis_every profile overlap_env".split()
)
AGENT_NAMES = {"dqn": "DQN", "rainbow": "Rainbow", "iqn": "IQN", "miqn": "M-IQN"}
ARCH_NAMES = {"impala": "Impala", "nature": "Nature CNN"}


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
