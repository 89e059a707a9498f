"""Loading run directories: config.json, iterations.csv, summary.json and metrics.jsonl into Run objects."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from agents import evaluation as ev
from agents.config import TrainConfig, flatten_config


class ReportError(Exception):
    """Nothing to report: bad arguments, no readable run, an unknown game. The command exits with 2."""


class RunError(Exception):
    """A run directory whose files cannot be read as the trainer writes them; the run is skipped (warned)."""


def warn(problems: list[str], msg: str) -> None:
    """Every data problem goes to stderr now and into report.md later."""
    problems.append(msg)
    print(f"warning: {msg}", file=sys.stderr)


def error(problems: list[str], msg: str) -> None:
    """Data the report refuses to aggregate; it still writes everything else, then exits with 1."""
    problems.append(f"**error**: {msg}")
    print(f"error: {msg}", file=sys.stderr)


@dataclass
class Run:
    path: Path
    config: dict
    game: str
    seed: int
    iterations: dict[str, np.ndarray]  # iterations.csv columns as float arrays
    finished: bool
    problems: list[str] = field(default_factory=list, repr=False)  # where metrics.jsonl reports bad lines
    flags: dict[str, str] = field(default_factory=dict)  # the trainer's verdicts: what is wrong -> details
    score_column: str = "score"  # "score" (training episodes) or "eval_score" (the evaluation phase)
    device: str = "unknown"  # config.json's device name (a GPU model, or "cpu")
    loop_split: dict | None = None  # summary.json's last_loop_split: where the last iteration's time went
    flops_per_frame: float | None = None  # summary.json's model_flops_per_frame (Trainer.model_flops)
    synthetic: bool = False  # made-up data of `agents.report --demo` (config.json says so)
    cpu_use: dict | None = None  # summary.json's: its and other processes' use of the CPUs (its last launch)
    _metrics: list[dict] | None = field(default=None, repr=False)

    @property
    def scores(self) -> np.ndarray:
        """The score of each iteration (NaN where no episode finished)."""
        return self.iterations.get(self.score_column, np.full(len(self.iterations["iteration"]), math.nan))

    @property
    def has_score(self) -> bool:
        """Whether any iteration has a score (an episode finished in it)."""
        return bool(np.isfinite(self.scores).any())

    @property
    def trusted(self) -> bool:
        """Finished and not flagged: what the aggregates and per-game tables count by default."""
        return self.finished and not self.flags

    @property
    def frames_per_second(self) -> float | None:
        """The run's training speed: the median of its iterations' frames/s, the first left out when there are
        more (it holds the warm-up, which does not learn); None without a positive value (offline runs)."""
        fps = self.iterations.get("fps", np.zeros(0))
        fps = fps[1:] if len(fps) > 1 else fps
        fps = fps[np.isfinite(fps) & (fps > 0)]
        return float(np.median(fps)) if len(fps) else None

    @property
    def iteration_overshoot(self) -> int:
        """Frames that two runs' counts of one iteration can differ by, exclusive: an iteration ends at the first
        step of the envs that reaches its budget, a step of up to num_envs agent steps (an env that auto-resets
        counts none), so it ends 0 to num_envs - 1 agent steps of frame_skip frames late."""
        flat, default = flatten_config(self.config), _config_defaults()
        # a config.json without these fields comes from an older trainer; today's defaults are the best guess
        num_envs = flat.get("env.num_envs", default["env.num_envs"])
        frame_skip = flat.get("env.frame_skip", flat.get("frame_skip", default["env.frame_skip"]))
        return int(num_envs * frame_skip)

    @property
    def frames_reached(self) -> float:
        return float(self.iterations["frames"][-1]) if len(self.iterations["frames"]) else 0.0

    def score_standing_at(self, row: int) -> int | None:
        """The row of iterations.csv whose score stands for row `row`'s: `row` itself, or where no episode finished
        in it, the last earlier row that has a score; None before any score. (The final score and every point of
        the learning curve follow this one rule.)"""
        finite = np.flatnonzero(np.isfinite(self.scores[: row + 1]))
        return int(finite[-1]) if len(finite) else None

    def final_score(self, problems: list[str] | None = None) -> float:
        """Last iteration's score; if no episode finished in it, the last iteration that has one (warned
        when a problems list is given)."""
        last = len(self.scores) - 1
        used = self.score_standing_at(last)
        if used is None:
            return math.nan
        if used != last and problems is not None:
            warn(
                problems,
                f"{self.path}: no episode finished in the last iteration; "
                f"using iteration {int(self.iterations['iteration'][used])}'s score",
            )
        return float(self.scores[used])

    def metrics(self) -> list[dict]:
        """Rows of metrics.jsonl that carry sparsity or analysis keys (other rows are skipped unparsed); a line
        that is not JSON (a write cut short by a kill) is skipped with a warning."""
        if self._metrics is None:
            self._metrics = []
            path = self.path / "metrics.jsonl"
            if path.exists():
                with open(path) as f:
                    for lineno, line in enumerate(f, start=1):
                        if '"sparsity/' in line or '"analysis/' in line:
                            try:
                                self._metrics.append(json.loads(line))
                            except json.JSONDecodeError:
                                warn(self.problems, f"{path}, line {lineno}: not valid JSON; line skipped")
        return self._metrics


    def grad_covariance(self) -> tuple[np.ndarray, dict] | None:
        """The last gradient covariance matrix of grad_covariance.jsonl (Fig. 14) with its row's step counts, or
        None; lines that are not complete JSON (a write cut short by a kill) are passed over."""
        path = self.path / "grad_covariance.jsonl"
        if not path.exists():
            return None
        for line in reversed(path.read_text().splitlines()):
            try:
                row = json.loads(line)
                matrix = np.asarray(row["matrix"], dtype=float)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1] > 0:
                return matrix, {k: v for k, v in row.items() if k != "matrix"}
        return None


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run dirs are dirs with a config.json; parents are searched recursively, through symlinked folders (a
    folder of links to the runs to compare). A run reached twice (by a link and by its own path) counts once."""
    found: dict[Path, Path] = {}  # real path -> the first path it was found at
    for p in map(Path, paths):
        if not p.exists():
            raise ReportError(f"{p} does not exist")
        if (p / "config.json").is_file():
            found.setdefault(p.resolve(), p)
            continue
        seen: set[str] = set()  # real paths walked: a link back to a parent folder is not followed again
        for root, subdirs, files in os.walk(p, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:
                subdirs.clear()
                continue
            seen.add(real)
            if "config.json" in files:
                found.setdefault(Path(real), Path(root))
    # a run's own subfolders (checkpoints/, tb/) are never runs
    runs = sorted(d for r, d in found.items() if not any(a in found for a in r.parents))
    if not runs:
        raise ReportError(f"no run directories (with a config.json) under {', '.join(map(str, paths))}")
    return runs


def read_json(path: Path) -> dict:
    """A JSON object from `path`; anything else is a RunError that names the file and the place."""
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: cannot be read ({e})") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


@cache
def _config_defaults() -> dict:
    """Flattened config field -> this trainer's default."""
    return flatten_config(TrainConfig().to_dict())


@cache
def _field_types() -> dict[str, type]:
    """Flattened config field -> the type of its default (fields that default to None can hold more)."""
    return {k: type(v) for k, v in _config_defaults().items() if v is not None}


def _check_types(cfg: dict, path: Path) -> None:
    """Every known field has its type (an int where a float is expected is fine), so that a hand-edited
    `"seed": "abc"` is named here rather than grouped, sorted or formatted wrongly later; and the sparsity, which
    labels and axes show as a percentage, is a fraction in [0, 1) (a hand-edited 1.5 read "150% pruned")."""
    flat = flatten_config(cfg)
    for k, v in flat.items():
        want = _field_types().get(k)
        if want is None:
            continue  # a field this version does not know (older or newer trainer): nothing to check against
        ok = isinstance(v, want) if want is not float else isinstance(v, int | float)
        if not ok or (want is not bool and isinstance(v, bool)):
            raise RunError(f"{path}: {k} is {json.dumps(v)} ({type(v).__name__}), expected {want.__name__}")
    sparsity = flat.get("pruning.final_sparsity", 0.0)
    if not 0 <= sparsity < 1:  # (NaN fails too)
        raise RunError(f"{path}: pruning.final_sparsity is {json.dumps(sparsity)}, not a fraction in [0, 1)")


ITERATION_COLUMNS = ("iteration", "agent_steps", "frames", "score")
LOOP_SPLIT_KEYS = ("env_wait", "device_wait", "host")  # summary.json's last_loop_split (Trainer._log_loop_split)
EVAL_COLUMNS = ("eval_score", "eval_episodes")  # written by trainers with an evaluation phase (empty when off)
OPTIONAL_COLUMNS = (*EVAL_COLUMNS, "fps")  # read where the header has them
SCORE_COLUMNS = ("score", "eval_score")
# May be empty or nan: no episode finished in the iteration (scores); no speed recorded (fps).
_OPTIONAL_NUMBERS = ("score", *OPTIONAL_COLUMNS)


def read_iterations(path: Path) -> tuple[dict[str, np.ndarray], int | None]:
    """iterations.csv as float columns, and the line number of a truncated last row (None if the file ends
    with a complete row). A truncated row (no newline: the process died while writing it) is left out; any
    other malformed line is a RunError that names the file and line."""
    cols: dict[str, list[float]] = {c: [] for c in ITERATION_COLUMNS}
    if not path.exists():
        return {c: np.zeros(0) for c in cols}, None
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    truncated = len(lines) if lines and not lines[-1].endswith("\n") else None
    if truncated:
        lines = lines[:-1]
    if not lines:
        return {c: np.zeros(0) for c in cols}, truncated
    rows = csv.reader(lines)
    header = next(rows)
    missing = [c for c in ITERATION_COLUMNS if c not in header]
    if missing:
        raise RunError(f"{path}, line 1: the header has no column {', '.join(missing)}")
    cols |= {c: [] for c in OPTIONAL_COLUMNS if c in header}
    at = {c: header.index(c) for c in cols}
    for lineno, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise RunError(f"{path}, line {lineno}: {len(row)} fields where the header has {len(header)}")
        for c in cols:
            v = row[at[c]].strip()
            try:
                x = float(v) if v or c not in _OPTIONAL_NUMBERS else math.nan
            except ValueError:
                x = None
            if x is None or (not math.isfinite(x) and c not in _OPTIONAL_NUMBERS):
                raise RunError(f"{path}, line {lineno}: {c} is {v!r}, not a number")
            if math.isinf(x) and c in SCORE_COLUMNS:  # only nan or empty means "no episode ended": an infinite
                # score was read as that, and the run's previous score stood in for it
                raise RunError(f"{path}, line {lineno}: {c} is {v!r}, not a finite number")
            cols[c].append(x)
    return {c: np.asarray(v, dtype=np.float64) for c, v in cols.items()}, truncated


def load_run(path: Path, problems: list[str], score: str = "train") -> Run | None:
    """The run in `path`, or None (warned, naming the file and line) when its files cannot be read.
    score: which iteration score counts, "train" (the training episodes) or "eval" (the evaluation phase)."""
    try:
        run = _load_run(path, problems)
    except RunError as e:
        warn(problems, f"skipped run {path}: {e}")
        return None
    run.score_column = "eval_score" if score == "eval" else "score"
    return run


def trainer_flags(summary: dict) -> dict[str, str]:
    """What summary.json says makes a run differ from its configured experiment, as {what: details} (runs of
    older trainers have no such keys, and no flags)."""
    flags = {}
    if summary.get("resumed_without_replay") is True:
        flags["resumed without its replay"] = ""
    def below(what: str, value, target) -> str:  # "what 0.288 < target 0.95", or "" where a number is missing
        numbers = [f"{x:.3g}" for x in (value, target) if _is_number(x)]
        return f"{what} {' < target '.join(numbers)}" if len(numbers) == 2 else ""

    if summary.get("below_target_sparsity") is True:
        flags["below target sparsity"] = below(
            "sparsity", summary.get("sparsity/prunable", summary.get("total_sparsity")),
            summary.get("scheduled_sparsity", summary.get("target_sparsity")))
    if summary.get("schedule_short_of_target") is True:
        flags["pruning schedule short of its target"] = below(
            "schedule ends at", summary.get("scheduled_sparsity"), summary.get("target_sparsity"))
    return flags


def _is_number(x) -> bool:
    """An int or float from JSON, not a bool (True is an int to isinstance)."""
    return isinstance(x, int | float) and not isinstance(x, bool)


def _load_run(path: Path, problems: list[str]) -> Run:
    cfg = meta = read_json(path / "config.json")
    if isinstance(cfg.get("config"), dict):  # agents.train nests the config next to metadata (git SHA, device...)
        cfg = cfg["config"]
    for section, key in (("env", "game"), ("agent", "name"), ("network", "arch")):
        if not isinstance(cfg.get(section), dict) or key not in cfg[section]:
            raise RunError(f"{path / 'config.json'} has no {section}.{key}; is this a prunerl run directory?")
    _check_types(cfg, path / "config.json")
    resolved = meta.get("env_backend")
    if cfg["env"].get("backend", "auto") == "auto" and resolved in ("envpool", "ale"):
        # What ran: `auto` is envpool where it can be imported and ale-py elsewhere, and the two start episodes
        # differently, so runs of one config on machines with and without envpool are two experiments.
        cfg = {**cfg, "env": {**cfg["env"], "backend": resolved}}
    game = cfg["env"]["game"]
    game = ev.canonical_game(game) if ev.has_reference(game) else game
    iterations, truncated = read_iterations(path / "iterations.csv")
    summary = read_json(path / "summary.json") if (path / "summary.json").exists() else {}
    total = cfg.get("total_steps")
    steps = iterations["agent_steps"]
    finished = summary.get("finished") is True or bool(total and len(steps) and steps[-1] >= total)
    if truncated:
        warn(problems, f"{path / 'iterations.csv'}, line {truncated}: truncated row (the run stopped while "
                       "writing it); ignored, and the run counts as unfinished")
        finished = False
    if not len(steps):
        warn(problems, f"{path}: no finished iteration yet")
    flags = trainer_flags(summary)
    for flag, details in flags.items():
        warn(problems, f"{path}: {flag}" + (f", {details}" if details else "") + " (summary.json)")
    if finished and not (path / "summary.json").exists():
        # The trainer writes summary.json last, with its verdicts (below target sparsity, resumed without the
        # replay): a run killed, or out of disk, after its last iteration has none and cannot be trusted.
        flags["no summary.json"] = "its last iteration was logged but not its end: its command writes it"
        warn(problems, f"{path}: no summary.json; {flags['no summary.json']}")
    device = meta.get("device_name") or meta.get("device")
    split = summary.get("last_loop_split")
    numbers = isinstance(split, dict) and all(_is_number(split.get(k)) for k in LOOP_SPLIT_KEYS)
    flops = summary.get("model_flops_per_frame")
    flops = float(flops) if _is_number(flops) and 0 < flops < math.inf else None
    return Run(path, cfg, game, int(cfg.get("seed", 0)), iterations, finished, problems, flags,
               device=device if isinstance(device, str) else "unknown", loop_split=split if numbers else None,
               flops_per_frame=flops, synthetic=meta.get("synthetic") is True,
               cpu_use=summary.get("cpu_use") if isinstance(summary.get("cpu_use"), dict) else None)
