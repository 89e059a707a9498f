"""Grouping runs into configurations, their labels, and which runs enter each configuration's score matrix."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from agents import evaluation as ev
from agents.config import TrainConfig, experiment_fields, flatten_config
from agents.report.runs import Run, error, warn

AGENT_NAMES = {"dqn": "DQN", "rainbow": "Rainbow", "iqn": "IQN", "miqn": "M-IQN"}
ARCH_NAMES = {"impala": "Impala", "nature": "Nature CNN"}
# What varies inside a configuration (besides RUNTIME_FIELDS): game, seed, and the analysis's cadence (a run with
# --analysis-every trains exactly as without it, `test_grad_covariance`; it records more, so sweeps and --resume
# still tell the two apart).
NOT_GROUPED = ("env.game", "seed", "analysis_every")
# Label order: the paper's axes first; a later field is named only where the earlier ones leave runs together.
LABEL_ORDER = ("agent.name", "network.arch", "network.width", "pruning.final_sparsity", "replay_ratio", "total_steps")
_HEAD = ("agent.name", "network.arch", "network.width")  # written "DQN Impala ×3", the rest comma-separated
_ABSENT = object()  # a field an older run's config.json does not have
FIXED_MASK = "a finished run's final masks"  # what a lottery ticket's pruning.fixed_mask groups as
# The paper's comparisons (Fig. 12, 13, 22): a method's short name when it is on, nothing when it is off, so a
# baseline is not labelled by every method it does not use.
METHOD_TEXT = {
    "pruning.method": lambda v: "RigL" if v == "rigl" else "",
    "pruning.fixed_mask": lambda v: "lottery ticket" if v else "",
    "redo.enabled": lambda v: "ReDo" if v else "",
    "reset.enabled": lambda v: "Reset" if v else "",
    "network.feature_norm": lambda v: "L2" if v else "",
    "agent.weight_decay": lambda v: f"WD {v:g}" if v else "",
    "redo.tau": lambda v: f"ReDo τ={v:g}",
    "reset.period": lambda v: f"reset period {v:,}",
    "reset.layers": lambda v: f"reset {v} layer" + "s" * (v == "both"),
}
METHOD_SWITCHES = ("pruning.method", "pruning.fixed_mask", "redo.enabled", "reset.enabled", "network.feature_norm",
                   "agent.weight_decay")  # a configuration with one of these on is a baseline of the comparisons


@dataclass
class Config:
    key: tuple  # sorted (field, JSON value) pairs of every experiment field except game and seed
    runs: list[Run]
    label: str = ""
    parts: list[tuple[str, str]] = field(default_factory=list)  # (field, text) pairs the label is made of
    complete: bool = False
    flags: list[str] = field(default_factory=list)  # why it is incomplete, shown in report.md
    errors: list[str] = field(default_factory=list)  # data that cannot be aggregated at all (repeated runs)
    games: list[str] = field(default_factory=list)  # games of the score matrix
    expected_seeds: list[int] = field(default_factory=list)  # the seeds every game must have to be complete
    matrix: np.ndarray | None = None  # [runs, games] human-normalised final scores
    cells: dict[tuple[str, int], Run] = field(default_factory=dict)
    used: list[list[Run]] = field(default_factory=list)  # per game, the runs in the matrix
    expected: set[tuple[str, int]] | None = None  # the (game, seed) pairs a sweep expects; None: not from a sweep
    flat: dict = field(init=False)  # the key as {field: value}

    def __post_init__(self):
        self.flat = {k: json.loads(v) for k, v in self.key}

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

    @property
    def seeds(self) -> list[int]:
        """The seeds of the runs found (whether they enter the matrix or not)."""
        return sorted({r.seed for r in self.runs})

    @property
    def score_seeds(self) -> np.ndarray | None:
        """[runs, games]: the seed of each cell of the matrix. A row holds one seed in every game only when the
        configuration is complete; with --allow-incomplete each game keeps its own first seeds."""
        return np.array([[r.seed for r in rs] for rs in self.used]).T if self.aggregated else None


@cache
def _methods_off() -> dict:
    """The method fields (METHOD_SWITCHES and their options) at their defaults, where every method is off: what a
    run written before the trainer had them did, so such a run groups with its twin of today."""
    return {k: v for k, v in flatten_config(TrainConfig().to_dict()).items()
            if k in METHOD_SWITCHES or k.startswith(("redo.", "reset.", "rigl."))}


def experiment_key(config: dict) -> tuple:
    """What makes two runs the same experiment: every field of agents.config.experiment_fields (the one
    definition of what never changes results) except game and seed. A lottery ticket's source run
    (pruning.fixed_mask) differs per game and seed by nature: only whether there is one counts."""
    fields = {**_methods_off(), **experiment_fields(config)}
    if fields.get("pruning.fixed_mask"):
        fields["pruning.fixed_mask"] = FIXED_MASK
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in fields.items() if k not in NOT_GROUPED))


def group_runs(runs: list[Run]) -> list[Config]:
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(experiment_key(r.config), []).append(r)
    configs = [Config(k, v) for k, v in groups.items()]
    configs.sort(key=_order)
    for c, parts in zip(configs, label_parts([c.flat for c in configs]), strict=True):
        c.parts, c.label = parts, join_parts(parts) or "baseline"  # "": no method on, nothing else differs
    return configs


def _order(c: Config) -> list:
    """Sort key: the paper's axes first (agent, network, width, sparsity, ...), then every other field."""
    return [_sort_value(c.flat.get(k)) for k in LABEL_ORDER] + [(k, _sort_value(v)) for k, v in c.flat.items()]


def _sort_value(v) -> tuple:
    """Numbers in numeric order (1e-05 before 0.0001), then strings, then anything else."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, v) if isinstance(v, str) else (2, 0.0, json.dumps(v, sort_keys=True))


def _fmt_frames(frames: float) -> str:
    return f"{frames / 1e6:.3g}M" if frames >= 1e6 else f"{frames / 1e3:.3g}k"


def _fmt_sparsity(s: float) -> str:
    return "dense" if not s else f"{s * 100:g}% pruned"


def describe(k: str, flat: dict, name: str, exact: bool) -> str:
    """One label part: a readable form for the paper's axes, `name=value` for anything else."""
    v = flat.get(k, _ABSENT)
    if v is _ABSENT:
        return f"{name}=(absent)"
    if exact:
        return f"{name}={json.dumps(v)}"
    if k == "agent.name":
        return AGENT_NAMES.get(v, str(v))
    if k == "network.arch":
        return ARCH_NAMES.get(v, str(v))
    if k == "network.width":
        return f"×{v}"
    if k == "pruning.final_sparsity":
        return _fmt_sparsity(v)
    if k == "replay_ratio":
        return f"RR {v}"
    if k in METHOD_TEXT:
        return METHOD_TEXT[k](v)
    if k == "total_steps" and isinstance(v, int | float):
        skip = flat.get("env.frame_skip", flat.get("frame_skip", 4))
        return f"{_fmt_frames(v * skip)} frames"
    return f"{name}={v}"


def _short_names(keys: list[str]) -> dict[str, str]:
    """'agent.lr' -> 'lr' unless another field ends the same way; then the longer dotted suffix."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if sum(o == name or o.endswith("." + name) for o in keys) == 1:
                break
        out[k] = name
    return out


def label_parts(
    flats: list[dict], panels: list | None = None, always: tuple[str, ...] = LABEL_ORDER[:4]
) -> list[list[tuple[str, str]]]:
    """Short labels made from what differs. The paper's axes (LABEL_ORDER) are named whenever they differ; any
    other field only for the configurations it tells apart once the fields before it are named (so Rainbow's
    n_step does not repeat what "Rainbow" says, and one lr override does not lengthen every label). `panels`
    (one value per config) starts from configurations already told apart by a figure's panels: labels then only
    separate the lines within a panel, in words that mean the same in every panel. If nothing differs, the
    label names the `always` fields."""
    if not flats:
        return []
    # The paper's axes first, then the methods (named wherever one is on, and before e.g. an analysis option that
    # happens to tell the same runs apart), then the other fields alphabetically.
    order = lambda k: (LABEL_ORDER.index(k) if k in LABEL_ORDER else len(LABEL_ORDER) + (k not in METHOD_SWITCHES), k)
    value = lambda i, k: json.dumps(flats[i].get(k, "(absent)"), sort_keys=True)
    panels = [0] * len(flats) if panels is None else panels
    # blocks: configurations that the fields named so far cannot tell apart
    blocks = [[i for i in range(len(flats)) if panels[i] == p] for p in dict.fromkeys(panels)]
    axes = [k for k in LABEL_ORDER if any(len({value(i, k) for i in b}) > 1 for b in blocks)]
    named = {k: set(range(len(flats))) for k in axes}  # field -> the configurations whose label names it
    for k in sorted(set().union(*flats), key=order):
        split = [[i for i in b if value(i, k) == v] for b in blocks for v in dict.fromkeys(value(i, k) for i in b)]
        if k in METHOD_SWITCHES and len({value(i, k) for i in range(len(flats))}) > 1:
            named[k] = set(range(len(flats)))  # a method is named wherever it is on (its text is empty where off)
        elif k not in named and len(split) > len(blocks):
            named[k] = {i for b in blocks if len({value(i, k) for i in b}) > 1 for i in b}
        blocks = split
    if not named:
        named = {k: set(range(len(flats))) for k in always if any(k in f for f in flats)}
    names = _short_names(list(named))
    for exact in (False, True):  # readable forms first; exact JSON values if two readable labels coincide
        parts = [[(k, describe(k, f, names[k], exact and k not in _HEAD)) for k in named if i in named[k]]
                 for i, f in enumerate(flats)]
        if len({(panels[i], join_parts(p)) for i, p in enumerate(parts)}) == len(flats):
            break
    return parts


def varying_fields(configs: list[Config]) -> list[str]:
    """Every experiment field whose value differs between configurations (labels name only some of them)."""
    flats = [c.flat for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    return [k for k in keys if len({json.dumps(f.get(k, "(absent)"), sort_keys=True) for f in flats}) > 1]


def join_parts(parts: list[tuple[str, str]]) -> str:
    """[('agent.name', 'DQN'), ('network.width', '×3'), ('pruning.final_sparsity', 'dense')] -> 'DQN ×3, dense'."""
    head = " ".join(t for k, t in parts if k in _HEAD)
    return ", ".join([head] * bool(head) + [t for k, t in parts if k not in _HEAD and t])


# --- completeness and score matrices -----------------------------------------------------------------


def build_matrices(
    configs: list[Config],
    games: list[str],
    allow_incomplete: bool,
    problems: list[str],
    table: str = "dqn_zoo",
    required: bool = True,
) -> None:
    """Fill each Config's matrix of final human-normalised scores, or flag why it has none.

    Which (game, seed) pairs a configuration must have: every one of `games` with every seed the configuration
    has; but for a configuration of a sweep (Config.expected), the sweep's own pairs, restricted to the
    referenced games, unless `required` says `games` were asked for explicitly (--games)."""
    for c in configs:
        if c.expected is not None and not required:
            c.expected_seeds = sorted({s for _, s in c.expected})
            expected = {(g, s) for g, s in c.expected if ev.has_reference(g)}
            c_games = sorted({g for g, _ in expected})
        else:
            c.expected_seeds = sorted({s for _, s in c.expected} if c.expected is not None else c.seeds)
            expected = {(g, s) for g in games for s in c.expected_seeds}
            c_games = list(games)
        by_cell: dict[tuple[str, int], list[Run]] = {}
        for r in c.runs:
            by_cell.setdefault((r.game, r.seed), []).append(r)
        for (g, s), rs in sorted(by_cell.items()):
            if len(rs) > 1:  # which one is right is the user's call; counting both would double the pair's weight
                c.errors.append(f"{g} seed {s} has {len(rs)} runs: {', '.join(str(r.path) for r in rs)}")
                error(problems, f"{c.label}: {c.errors[-1]} -> configuration left out of the aggregates")
        c.cells = {cell: rs[0] for cell, rs in by_cell.items() if len(rs) == 1}
        present = {cell for cell in by_cell if cell in expected}
        cells = [r for cell, r in sorted(c.cells.items()) if cell in expected]
        missing = [(g, s) for g in c_games for s in c.expected_seeds if (g, s) in expected and (g, s) not in present]
        unfinished = [r for r in cells if not r.finished]
        no_score = [r for r in cells if r.finished and not r.has_score]  # (an unfinished one says it below)
        flagged: dict[str, list[Run]] = {}  # the trainer's own verdicts (summary.json): flag -> runs
        for r in cells:
            for flag in r.flags:
                flagged.setdefault(flag, []).append(r)
        if missing:
            absent = [g for g in c_games if not any((g, s) in present for s in c.expected_seeds)]
            partial = [f"{g} seed {s}" for g, s in missing if g not in absent]
            if absent:
                c.flags.append(f"missing games: {', '.join(absent)}")
            if partial:
                c.flags.append(f"missing seeds: {', '.join(partial)}")
        if unfinished:
            c.flags.append(
                "unfinished: "
                + ", ".join(f"{r.game} seed {r.seed} ({_fmt_frames(r.frames_reached)} frames"
                            + (")" if r.has_score else ", no score yet)") for r in unfinished)
            )
        if no_score:
            c.flags.append("no score logged: " + ", ".join(f"{r.game} seed {r.seed}" for r in no_score))
        for flag, rs in flagged.items():
            named = [f"{r.game} seed {r.seed}" + (f" ({r.flags[flag]})" if r.flags[flag] else "") for r in rs]
            c.flags.append(f"{flag}: " + ", ".join(named))
        c.complete = not c.flags and not c.errors
        for flag in c.flags:
            warn(problems, f"{c.label}: {flag}" + ("" if allow_incomplete else " -> left out of the aggregates"))

        # the runs that enter the matrix, per game
        per_game = {g: [c.cells[(g, s)] for s in c.expected_seeds if (g, s) in c.cells and (g, s) in expected]
                    for g in c_games}
        if c.errors:
            continue
        if allow_incomplete:
            per_game = {g: [r for r in rs if r.has_score] for g, rs in per_game.items()}
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
