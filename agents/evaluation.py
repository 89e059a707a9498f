"""Score normalisation and aggregate metrics, the way the field reports Atari results.

Everything follows Agarwal et al. 2021 ("Deep RL at the edge of the statistical precipice", the
`rliable` library), re-implemented in numpy because rliable is archived and pins old dependencies:

- scores are human-normalised per game: hns = (score - random) / (human - random), with the
  Atari-57 "human_at30" table shipped in `agents/data/atari_scores.csv` (source: DQN Zoo);
- aggregates take a matrix of normalised scores `[runs, games]` (one final score per run):
  `iqm` (25% trimmed mean over all runs x games, = `scipy.stats.trim_mean(x, 0.25, axis=None)`),
  `mean` and `median` (of the per-game means), `optimality_gap` (gamma - mean(min(x, gamma)));
- `probability_of_improvement(x, y)`: P(X > Y) + P(X = Y) / 2 per game (the Mann-Whitney U
  statistic divided by n_x * n_y), averaged over games;
- `bootstrap_ci`: stratified bootstrap, percentile intervals. Each game's column is resampled
  with replacement from that game's own runs, independently per (run, game) slot, exactly like
  rliable's `StratifiedBootstrap(task_bootstrap=False)`. All reps are drawn at once and the
  statistic is evaluated on a `[reps, runs, games]` stack, so a statistic must reduce the last two
  axes (every aggregate here does).

RNG: numpy `default_rng(seed)`, so intervals are reproducible for a given seed but not
bit-identical to rliable (which uses the legacy global `np.random`); they agree statistically.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

DATA_FILE = Path(__file__).parent / "data" / "atari_scores.csv"

# Dopamine's copy of the table (dopamine/labs/atari_100k/normalization_utils.py) agrees with DQN Zoo
# on every game except this one; pick it with table="dopamine" to compare with numbers made that way.
_DOPAMINE_OVERRIDES = {"VideoPinball": (0.0, 17667.9)}

# ALE games the paper's 60-game figure uses that have no published human score (paper.md section 5).
_NO_REFERENCE = {"AirRaid", "Carnival", "ElevatorAction", "JourneyEscape", "Pooyan"}

# The paper's 15-game subset (Graesser et al. 2022), for --games and for tests.
PAPER_15_GAMES = (
    "MsPacman",
    "Pong",
    "Qbert",
    "Assault",
    "Asterix",
    "BeamRider",
    "Boxing",
    "Breakout",
    "CrazyClimber",
    "DemonAttack",
    "Enduro",
    "FishingDerby",
    "SpaceInvaders",
    "Tutankham",
    "VideoPinball",
)

# The 26 games of the Atari-100k benchmark (paper.md section 5; the paper's Fig. 7).
ATARI_100K_26_GAMES = (
    "Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout", "ChopperCommand",
    "CrazyClimber", "DemonAttack", "Freeway", "Frostbite", "Gopher", "Hero", "Jamesbond", "Kangaroo", "Krull",
    "KungFuMaster", "MsPacman", "Pong", "PrivateEye", "Qbert", "RoadRunner", "Seaquest", "UpNDown",
)


# --- normalisation data ------------------------------------------------------------------------


@cache
def _load_table() -> dict[str, tuple[float, float]]:
    """CamelCase game -> (random, human) from the shipped CSV (comment lines start with '#')."""
    with open(DATA_FILE, newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {r["game"]: (float(r["random"]), float(r["human"])) for r in rows}


def _key(name: str) -> str:
    """Case/underscore-insensitive key; also strips ALE/gym decorations like 'ALE/' and '-v5'."""
    name = re.sub(r"^ALE/", "", name.strip())
    name = re.sub(r"(NoFrameskip)?-v\d+$", "", name)
    return re.sub(r"[^a-z0-9]", "", name.lower())


def atari_games() -> tuple[str, ...]:
    """The 57 games with reference scores, CamelCase as envpool / ALE spell them."""
    return tuple(_load_table())


def canonical_game(name: str) -> str:
    """'ms_pacman', 'mspacman', 'MsPacman-v5', 'ALE/MsPacman-v5' -> 'MsPacman'. Errors with suggestions."""
    by_key = {_key(g): g for g in _load_table()}
    game = by_key.get(_key(name))
    if game is not None:
        return game
    if _key(name) in {_key(g) for g in _NO_REFERENCE}:
        raise KeyError(f"{name!r} has no standard human/random reference score (only the Atari-57 games do)")
    close = difflib.get_close_matches(_key(name), list(by_key), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(by_key[c] for c in close)}?" if close else ""
    raise KeyError(f"unknown Atari game {name!r}{hint}")


def has_reference(name: str) -> bool:
    """True when `name` is one of the 57 games with a human/random reference score."""
    return _key(name) in {_key(g) for g in _load_table()}


def reference_scores(game: str, table: str = "dqn_zoo") -> tuple[float, float]:
    """(random, human) for `game`. table: 'dqn_zoo' (default, human_at30) or 'dopamine'."""
    if table not in ("dqn_zoo", "dopamine"):
        raise ValueError(f"table must be 'dqn_zoo' or 'dopamine', got {table!r}")
    game = canonical_game(game)
    if table == "dopamine" and game in _DOPAMINE_OVERRIDES:
        return _DOPAMINE_OVERRIDES[game]
    return _load_table()[game]


def human_normalized(score, game: str, table: str = "dqn_zoo"):
    """(score - random) / (human - random); works on floats and arrays."""
    random, human = reference_scores(game, table)
    return (np.asarray(score, dtype=np.float64) - random) / (human - random)


# --- aggregate metrics over [runs, games] -----------------------------------------------------


def _check_scores(scores, name: str = "scores") -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim < 2 or x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(
            f"{name} must be a non-empty [runs, games] matrix (optionally with leading batch axes), got shape {x.shape}"
        )
    if np.isnan(x).any():
        raise ValueError(f"{name} contains NaN; drop or report missing runs before aggregating")
    return x


def iqm(scores) -> np.ndarray | float:
    """Interquartile mean: sort all runs x games, drop floor(n/4) at each end, average the rest."""
    x = _check_scores(scores)
    flat = np.sort(x.reshape(*x.shape[:-2], -1), axis=-1)
    n = flat.shape[-1]
    cut = int(0.25 * n)  # scipy.stats.trim_mean's rule, so iqm == trim_mean(x, 0.25, axis=None)
    return flat[..., cut : n - cut].mean(axis=-1)


def mean(scores) -> np.ndarray | float:
    """Mean over games of the per-game mean score."""
    return _check_scores(scores).mean(axis=-2).mean(axis=-1)


def median(scores) -> np.ndarray | float:
    """Median over games of the per-game mean score."""
    return np.median(_check_scores(scores).mean(axis=-2), axis=-1)


def optimality_gap(scores, gamma: float = 1.0) -> np.ndarray | float:
    """How far below `gamma` (human level by default) runs fall on average; lower is better."""
    return gamma - np.minimum(_check_scores(scores), gamma).mean(axis=(-2, -1))


def probability_of_improvement(scores_x, scores_y) -> np.ndarray | float:
    """P(X > Y) per game (ties count 1/2), averaged over games. Run counts of X and Y may differ."""
    x, y = _check_scores(scores_x, "scores_x"), _check_scores(scores_y, "scores_y")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"scores_x and scores_y must cover the same games, got {x.shape} and {y.shape}")
    # [..., runs_x, runs_y, games] pairwise comparisons within each game
    xi, yj = x[..., :, None, :], y[..., None, :, :]
    wins = (xi > yj).mean(axis=(-3, -2)) + 0.5 * (xi == yj).mean(axis=(-3, -2))
    return wins.mean(axis=-1)


AGGREGATES: dict[str, Callable] = {"iqm": iqm, "mean": mean, "median": median, "optimality_gap": optimality_gap}


# --- stratified bootstrap ---------------------------------------------------------------------


# rliable's default (`get_interval_estimates`): at 2,000 the bounds moved visibly with the seed.
DEFAULT_REPS = 50_000
# Replications resampled at once: P(improvement) of 10 seeds x 57 games held ~0.8 GB at 50,000 in one piece.
BOOTSTRAP_CHUNK = 5_000


def stratified_resample(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """[runs, games] -> [reps, runs, games]; each slot draws a run of the same game with replacement."""
    runs, games = scores.shape
    idx = rng.integers(0, runs, size=(reps, runs, games))
    return scores[idx, np.arange(games)]


def bootstrap_ci(
    scores: np.ndarray | tuple[np.ndarray, ...],
    statistic: Callable = iqm,
    reps: int = DEFAULT_REPS,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of `statistic` under the stratified (per-game) bootstrap.

    scores: a [runs, games] matrix, or a tuple of them for a statistic of several configurations
        (e.g. probability_of_improvement); each matrix is then resampled independently.
    statistic: maps [reps, runs, games] (one array per input) to [reps]; all aggregates here do.
    Returns (low, high), the (1-c)/2 and (1+c)/2 quantiles of the bootstrap distribution.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    # a tuple means "several configurations"; anything else (array, nested list) is one matrix
    arrays = [_check_scores(a) for a in (scores if isinstance(scores, tuple) else (scores,))]
    for a in arrays:
        if a.ndim != 2:
            raise ValueError(f"bootstrap_ci wants [runs, games] matrices, got shape {a.shape}")
    rng = np.random.default_rng(seed)
    stats = []
    # In chunks, so that memory is bounded whatever reps (one chunk draws what an unchunked bootstrap draws).
    for start in range(0, reps, BOOTSTRAP_CHUNK):
        n = min(BOOTSTRAP_CHUNK, reps - start)
        chunk = np.asarray(statistic(*[stratified_resample(a, n, rng) for a in arrays]), dtype=np.float64)
        if chunk.shape != (n,):
            raise ValueError(
                f"statistic must reduce [reps, runs, games] to [reps], got shape {chunk.shape}; "
                "write it with axis=(-2, -1) like agents.evaluation.iqm"
            )
        stats.append(chunk)
    stats = np.concatenate(stats)
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def aggregate_with_ci(scores, statistic: Callable = iqm, reps: int = DEFAULT_REPS, confidence: float = 0.95,
                      seed: int = 0):
    """(point estimate, low, high) for one [runs, games] matrix."""
    point = float(statistic(scores))
    low, high = bootstrap_ci(scores, statistic, reps=reps, confidence=confidence, seed=seed)
    return point, low, high
