"""A sweep's grid: the spec (a TOML file or command-line axes) expanded into runs with deterministic IDs.

    name = "fig1"
    presets = ["dqn_impala_w{1..5}_{dense,gmp95}"]   # bash-style braces: {a..b} integer ranges, {x,y} choices
    games = "paper15"                                # or a list of games and set names (paper15, atari57, ...)
    seeds = "1..5"                                   # or [1, 2, 3]
    overrides = ["--env.num-envs 8"]                 # agents.train options added to every run
    variants = [[], ["--replay-ratio 1"]]            # optional axis: one list of options per variant
    [[runs]]                                         # explicit runs, alone or added to the product
    preset = "demo"
    game = "Pong"
    seed = 3
    overrides = ["--total-steps 3000"]

Each run lives in `{sweep_dir}/{game}/{preset}/s{seed}`, plus `-{hash}` of the experiment fields its overrides
change (agents.config.experiment_fields), so the same spec always maps to the same directories and options
that do not change what a run learns (device, --max-minutes, ...) never move a run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

from agents import evaluation
from agents.config import PRESETS, SEED_LIMIT, TrainConfig, experiment_fields, get_preset
from agents.envs import resolve_game

GAME_SETS = {
    "paper15": evaluation.PAPER_15_GAMES,
    "atari57": evaluation.atari_games(),
    "atari100k26": evaluation.ATARI_100K_26_GAMES,
}
# Options the sweep sets itself: a run's identity (preset, game, seed) and where it writes.
MANAGED_OPTIONS = ("--preset", "--env.game", "--seed", "--runs-dir", "--run-name", "--resume", "--list-presets")
SPEC_KEYS = {"name", "presets", "games", "seeds", "overrides", "variants", "runs"}
RUN_KEYS = {"preset", "game", "seed", "overrides"}


class SpecError(ValueError):
    """A spec that cannot be expanded; the message names the problem."""


@dataclass(frozen=True)
class Run:
    """One run of the grid: the training command's arguments and where it writes."""

    run_id: str  # also its directory relative to the sweep directory
    preset: str
    game: str
    seed: int
    overrides: tuple[str, ...]
    total_frames: int

    def to_json(self) -> dict:
        return {"run_id": self.run_id, "run_dir": self.run_id, "preset": self.preset, "game": self.game,
                "seed": self.seed, "overrides": list(self.overrides)}


@dataclass
class Sweep:
    name: str
    runs: list[Run]
    source: str  # the spec file, or "command line"

    def to_json(self) -> dict:
        """SWEEP_DIR/sweep.json: what `agents.report` reads to know which runs the sweep expects."""
        return {"name": self.name, "source": self.source, "runs": [r.to_json() for r in self.runs]}


# --- axes ---------------------------------------------------------------------------------------------------
# Runs a sweep may hold, and values a range may give, checked before anything is expanded: the paper's largest
# grid (Fig. 15) is 1,500 runs, and '0..100000000' took minutes and gigabytes to expand before failing or hanging.
MAX_RUNS = 100_000


def _check_range_size(a: int, b: int, what: str) -> None:
    if abs(b - a) + 1 > MAX_RUNS:
        raise SpecError(f"{what} gives {abs(b - a) + 1:,} values; a sweep holds at most {MAX_RUNS:,} runs")


def expand_braces(pattern: str) -> list[str]:
    """'w{1..3}_{a,b}' -> ['w1_a', 'w1_b', 'w2_a', ...] (bash order); no braces -> [pattern]."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        if "{" in pattern or "}" in pattern:
            raise SpecError(f"unbalanced braces in {pattern!r}")
        return [pattern]
    body = m.group(1)
    if (r := re.fullmatch(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*", body)) is not None:
        a, b = int(r.group(1)), int(r.group(2))
        _check_range_size(a, b, f"{{{body}}} in {pattern!r}")
        choices = [str(i) for i in (range(a, b + 1) if a <= b else range(a, b - 1, -1))]
    elif "," in body:
        choices = [c.strip() for c in body.split(",")]
    else:
        raise SpecError(f"{{{body}}} in {pattern!r} is neither a range {{a..b}} nor a choice {{x,y}}")
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [expanded for c in choices for expanded in expand_braces(head + c + tail)]


def expand_presets(patterns: list[str]) -> list[str]:
    names = []
    for pattern in patterns:
        for name in expand_braces(pattern):
            if name not in PRESETS:
                try:
                    get_preset(name)  # raises with the nearest names
                except ValueError as e:
                    raise SpecError(f"{e} (from the pattern {pattern!r})" if name != pattern else str(e)) from None
            names.append(name)
    return _unique(names, "preset")


def expand_games(items: list[str], backend: str = "ale") -> list[str]:
    """Game names and set names (paper15, atari57, atari100k26) -> canonical game names, validated."""
    games = []
    for item in items:
        if item in GAME_SETS:
            games.extend(GAME_SETS[item])
            continue
        try:
            games.append(resolve_game(item, backend))
        except ValueError as e:
            raise SpecError(f"{e} Game sets: {', '.join(GAME_SETS)}.") from None
    return list(dict.fromkeys(games))  # a game in two sets runs once


def parse_seeds(value) -> list[int]:
    """[1, 2], '1..5', '0..4,10', 3 -> a list of ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _check_seeds([value])
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return _check_seeds(_unique(list(value), "seed"))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        raise SpecError(f"seeds must be a list of integers or a string like '1..5', got {value!r}")
    seeds = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        if (r := re.fullmatch(r"(-?\d+)\s*\.\.\s*(-?\d+)", part)) is not None:
            a, b = int(r.group(1)), int(r.group(2))
            if a > b:
                raise SpecError(f"empty seed range {part!r}")
            if a < 0 or b >= SEED_LIMIT:  # checked before expanding: '1..2000000000' filled memory, no message
                _check_seeds([*range(a, min(b, -1) + 1)[:5], *range(max(a, SEED_LIMIT), b + 1)[:5]])
            _check_range_size(a, b, f"seed range {part!r}")
            seeds.extend(range(a, b + 1))
        elif re.fullmatch(r"-?\d+", part):
            seeds.append(int(part))
        else:
            raise SpecError(f"cannot read seeds {value!r}: {part!r} is neither an integer nor a range a..b")
    return _check_seeds(_unique(seeds, "seed"))


def _check_seeds(seeds: list[int]) -> list[int]:
    bad = [s for s in seeds if not 0 <= s < SEED_LIMIT]
    if bad:  # every run of them would fail at its start
        raise SpecError(f"seeds must be in [0, 2**30) (agents.train's --seed), got {', '.join(map(str, bad))}")
    return seeds


def parse_overrides(value, where: str = "overrides") -> tuple[str, ...]:
    """A list of option strings ('--replay-ratio 1', '--no-progress') -> the tokens agents.train receives."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{where} must be a list of strings like '--replay-ratio 1', got {value!r}")
    try:
        tokens = [t for v in value for t in shlex.split(v)]
    except ValueError as e:  # an unbalanced quote
        raise SpecError(f"{where}: cannot split {value!r} into options: {e}") from None
    for t in tokens:
        flag = t.split("=", 1)[0].replace("_", "-")
        if flag in MANAGED_OPTIONS:
            raise SpecError(f"{where}: {flag} is set by the sweep (presets, games and seeds are its axes, and it "
                            "chooses each run's directory); remove it from the overrides")
    return tuple(tokens)


def _unique(items: list, what: str) -> list:
    dupes = sorted({str(x) for x in items if items.count(x) > 1})
    if dupes:
        raise SpecError(f"{what} listed twice: {', '.join(dupes)}")
    return items


# --- configs and IDs ------------------------------------------------------------------------------------------
def resolve_config(preset: str, overrides: tuple[str, ...]) -> TrainConfig:
    """The config `agents.train` builds from `--preset preset *overrides` (the same parser, so the same checks)."""
    from agents.train import canonical_spellings, parse_args

    try:
        cfg, _ = parse_args(["--preset", preset, *overrides])
        # As agents.train records it: a lottery ticket's source by its absolute path, so that its spellings
        # (relative, ./x/, absolute) are one experiment in one directory, as its config.json says.
        canonical_spellings(cfg)
    except SystemExit as e:  # tyro has printed what it could not parse
        raise SpecError(f"agents.train rejects the overrides {' '.join(overrides)!r} for preset {preset}") from e
    except ValueError as e:
        raise SpecError(f"preset {preset} with overrides {' '.join(overrides)!r}: {e}") from e
    return cfg


def _identity(cfg: TrainConfig) -> dict:
    fields = experiment_fields(cfg.to_dict())
    for key in ("env.game", "seed"):
        fields.pop(key)
    return fields


def overrides_hash(cfg: TrainConfig, preset: str) -> str | None:
    """8 hex digits of the experiment fields the overrides change, or None when they change none."""
    base = _identity(get_preset(preset))
    changed = {k: v for k, v in _identity(cfg).items() if base.get(k) != v}
    if not changed:
        return None
    return hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:8]


def make_runs(presets: list[str], games: list[str], seeds: list[int], variants: list[tuple[str, ...]],
              configs: dict) -> list[Run]:
    """The product presets x variants x games x seeds. `configs` caches one parse per (preset, overrides)."""
    runs, game_lists = [], {}
    for preset, overrides in itertools.product(presets, variants):
        key = (preset, overrides)
        if key not in configs:
            configs[key] = resolve_config(preset, overrides)
        cfg = configs[key]
        suffix = overrides_hash(cfg, preset)
        backend = "envpool" if cfg.env.backend == "envpool" else "ale"
        if backend not in game_lists:
            game_lists[backend] = expand_games(games, backend)
        if len(runs) + len(game_lists[backend]) * len(seeds) > MAX_RUNS:
            raise SpecError(f"the product of presets, variants, games and seeds is over {MAX_RUNS:,} runs, the most a "
                            "sweep holds")
        for game in game_lists[backend]:
            for seed in seeds:
                run_id = f"{game}/{preset}/s{seed}" + (f"-{suffix}" if suffix else "")
                runs.append(Run(run_id, preset, game, seed, overrides, cfg.total_steps * cfg.env.frame_skip))
    return runs


def _as_list(value, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise SpecError(f"{key} must be a string or a non-empty list of strings, got {value!r}")


def build_sweep(spec: dict, source: str) -> Sweep:
    """Expand a spec dict (the TOML's top level) into a Sweep; every problem is a SpecError naming it."""
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise SpecError(f"{source}: unknown keys {sorted(unknown)}; a spec has {sorted(SPEC_KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SpecError(f"{source}: name must be a simple directory name (letters, digits, _ . -), got {name!r}")
    common = parse_overrides(spec.get("overrides", []))
    configs: dict = {}
    runs: list[Run] = []
    product_keys = {"presets", "games", "seeds"} & set(spec)
    if product_keys:
        missing = {"presets", "games", "seeds"} - product_keys
        if missing:
            raise SpecError(f"{source}: a product needs presets, games and seeds; missing {sorted(missing)}")
        variants = spec.get("variants", [[]])
        if not isinstance(variants, list) or not variants:
            raise SpecError(f"{source}: variants must be a non-empty list of option lists, got {variants!r}")
        variants = [common + parse_overrides(v, "variants") for v in variants]
        runs += make_runs(expand_presets(_as_list(spec["presets"], "presets")), _as_list(spec["games"], "games"),
                          parse_seeds(spec["seeds"]), variants, configs)
    elif "variants" in spec:
        raise SpecError(f"{source}: variants need a product (presets, games, seeds)")
    explicit = spec.get("runs", [])
    if not isinstance(explicit, list):
        raise SpecError(f"{source}: runs must be a list of tables ([[runs]])")
    for i, entry in enumerate(explicit):
        if not isinstance(entry, dict) or set(entry) - RUN_KEYS or {"preset", "game", "seed"} - set(entry):
            raise SpecError(f"{source}: runs[{i}] must have preset, game, seed and optionally overrides; got {entry!r}")
        for key in ("preset", "game"):
            if not isinstance(entry[key], str):
                raise SpecError(f"{source}: runs[{i}].{key} must be a string, got {entry[key]!r}")
        seeds = parse_seeds(entry["seed"])
        overrides = common + parse_overrides(entry.get("overrides", []), f"runs[{i}].overrides")
        runs += make_runs(expand_presets([entry["preset"]]), [entry["game"]], seeds, [overrides], configs)
    if not runs:
        raise SpecError(f"{source}: the spec has no runs (give presets, games and seeds, or [[runs]])")
    seen: dict[str, Run] = {}
    for run in runs:
        if run.run_id in seen:
            raise SpecError(f"{source}: run {run.run_id} appears twice (the same preset, game, seed and experiment)")
        seen[run.run_id] = run
    return Sweep(name, runs, source)


def load_listing(sweep_dir: str | Path) -> Sweep:
    """The sweep a sweep directory's sweep.json lists (a sweep started from the command line has no spec file):
    its runs rebuilt from their presets, games, seeds and overrides, which must give the run ids listed."""
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise SpecError(f"{sweep_dir} has no sweep.json (is it a sweep directory?)")
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
        entries = [{"preset": r["preset"], "game": r["game"], "seed": r["seed"],
                    "overrides": [shlex.join(r["overrides"])]} for r in listing["runs"]]
        listed = [r["run_id"] for r in listing["runs"]]
        spec = {"name": listing["name"], "runs": entries}
    except (ValueError, KeyError, TypeError) as e:  # (json.JSONDecodeError is a ValueError)
        raise SpecError(f"{path} is not a sweep listing: {type(e).__name__}: {e}") from None
    sweep = build_sweep(spec, str(path))
    if [r.run_id for r in sweep.runs] != listed:
        raise SpecError(f"{path}: its runs' presets, games, seeds and overrides no longer give the run ids it lists "
                        "(the presets changed since?); use the sweep's spec")
    return sweep


def load_spec(path: str | Path) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no spec file {path}")
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{path} is not valid TOML: {e}") from None
    spec.setdefault("name", path.stem)
    return build_sweep(spec, str(path))
