"""Loading run directories: config.json, iterations.csv, summary.json and metrics.jsonl into Run objects."""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agents import evaluation as ev


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

