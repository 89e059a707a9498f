"""Sweep directories (`python -m agents.sweep`): which runs a grid expects, so the report can name what is missing.

A sweep directory holds `sweep.json`:
    {"name": str, "runs": [{"run_id": str, "run_dir": str (relative to the sweep directory), "preset": str,
                            "game": str, "seed": int, "overrides": [str, ...]}, ...]}
Runs that share a preset and overrides form one entry of the grid (a "spec"); every run of a spec that has
started tells the report which configuration the spec is, and so which (game, seed) pairs that configuration
expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agents import evaluation as ev
from agents.report.configs import Config, experiment_key
from agents.report.runs import ReportError, Run, RunError, read_json, warn

SWEEP_FILE = "sweep.json"
_ENTRY_TYPES = {"run_id": str, "run_dir": str, "preset": str, "game": str, "seed": int, "overrides": list}


@dataclass(frozen=True)
class SweepRun:
    run_id: str
    run_dir: Path  # absolute
    preset: str
    game: str
    seed: int
    overrides: tuple[str, ...]

    @property
    def spec(self) -> str:
        """The grid entry this run belongs to, as a user would type it."""
        return " ".join((f"--preset {self.preset}", *self.overrides))


@dataclass
class Sweep:
    name: str
    root: Path
    runs: list[SweepRun]


def is_sweep(path: str | Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def read_sweep(root: str | Path) -> Sweep:
    """sweep.json, checked field by field; anything malformed is a ReportError naming the entry and field."""
    root = Path(root)
    path = root / SWEEP_FILE
    try:
        obj = read_json(path)
    except RunError as e:
        raise ReportError(str(e)) from None
    if not isinstance(obj.get("name"), str) or not isinstance(obj.get("runs"), list):
        raise ReportError(f"{path}: expected {{\"name\": str, \"runs\": [...]}}")
    runs, ids, dirs = [], set(), set()
    for i, e in enumerate(obj["runs"]):
        where = f"{path}: runs[{i}]"
        if not isinstance(e, dict):
            raise ReportError(f"{where} is not an object")
        for key, want in _ENTRY_TYPES.items():
            v = e.get(key)
            if not isinstance(v, want) or isinstance(v, bool):
                raise ReportError(f"{where}.{key} is {v!r}, expected {want.__name__}")
        if not all(isinstance(o, str) for o in e["overrides"]):
            raise ReportError(f"{where}.overrides must be a list of strings, got {e['overrides']!r}")
        run_dir = Path(e["run_dir"])
        if run_dir.is_absolute() or ".." in run_dir.parts:
            raise ReportError(f"{where}.run_dir {e['run_dir']!r} must be a path inside the sweep directory")
        if e["run_id"] in ids or run_dir in dirs:
            raise ReportError(f"{where} repeats run_id {e['run_id']!r} or run_dir {e['run_dir']!r}")
        ids.add(e["run_id"])
        dirs.add(run_dir)
        game = ev.canonical_game(e["game"]) if ev.has_reference(e["game"]) else e["game"]
        runs.append(SweepRun(e["run_id"], (root / run_dir).resolve(), e["preset"], game, e["seed"],
                             tuple(e["overrides"])))
    return Sweep(obj["name"], root, runs)


def expect(sweeps: list[Sweep], runs: list[Run], configs: list[Config], problems: list[str]) -> list[str]:
    """Give each configuration the (game, seed) pairs its sweep entries expect (Config.expected), and return
    one line per grid entry of which no run has started (it has no configuration to be named under)."""
    by_dir = {r.path.resolve(): r for r in runs}
    by_key = {c.key: c for c in configs}
    listed = set()
    not_started = []
    for sweep in sweeps:
        specs: dict[str, list[SweepRun]] = {}
        for e in sweep.runs:
            specs.setdefault(e.spec, []).append(e)
        for spec, entries in specs.items():
            started = [by_dir[e.run_dir] for e in entries if e.run_dir in by_dir]
            listed.update(e.run_dir for e in entries)
            for e in entries:
                r = by_dir.get(e.run_dir)
                if r is not None and (r.game, r.seed) != (e.game, e.seed):
                    warn(problems, f"{r.path}: {SWEEP_FILE} lists it as {e.game} seed {e.seed}, but its config.json "
                                   f"says {r.game} seed {r.seed}; the report goes by config.json")
            keys = list(dict.fromkeys(experiment_key(r.config) for r in started))
            if not keys:
                not_started.append(f"{sweep.name}: {spec}: none of its {len(entries)} runs has started")
                warn(problems, not_started[-1])
                continue
            if len(keys) > 1:
                warn(problems, f"{sweep.name}: the runs of {spec} are {len(keys)} different experiments "
                               f"(their config.json files differ in more than game and seed)")
            for key in keys:
                c = by_key[key]
                c.expected = (c.expected or set()) | {(e.game, e.seed) for e in entries}
    for r in runs:
        if any(r.path.resolve().is_relative_to(s.root.resolve()) for s in sweeps) and r.path.resolve() not in listed:
            warn(problems, f"{r.path}: not listed in {SWEEP_FILE}; reported with the configuration it belongs to")
    return not_started


def sweep_status(sweep: Sweep, runs: list[Run]) -> str:
    """'fig1: 60 runs expected, 58 started, 55 finished' (finished: and not flagged by the trainer)."""
    by_dir = {r.path.resolve(): r for r in runs}
    started = [by_dir[e.run_dir] for e in sweep.runs if e.run_dir in by_dir]
    return (f"{sweep.name}: {len(sweep.runs)} runs expected, {len(started)} started, "
            f"{sum(r.trusted for r in started)} finished")
