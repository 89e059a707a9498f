"""agents.evaluation: normalisation table, aggregates and the stratified bootstrap.

Each aggregate is checked against a deliberately plain implementation (loops, sorted lists) or
against scipy, on random matrices that include ties and a single game.
"""

import itertools

import numpy as np
import pytest
from scipy import stats

from agents import evaluation as ev


def _matrices():
    rng = np.random.default_rng(123)
    yield rng.normal(size=(5, 15))
    yield rng.normal(size=(3, 1))  # a single game
    yield rng.integers(0, 3, size=(7, 4)).astype(float)  # many ties
    yield rng.exponential(size=(6, 9))  # n = 54, not divisible by 4
    yield np.full((4, 3), 2.5)


# --- normalisation data ----------------------------------------------------------------------


def test_table_has_57_games_and_dqn_zoo_values():
    games = ev.atari_games()
    assert len(games) == 57 and len(set(games)) == 57
    # spot checks against dqn_zoo/atari_data.py
    assert ev.reference_scores("Alien") == (227.8, 7127.7)
    assert ev.reference_scores("Pong") == (-20.7, 14.6)
    assert ev.reference_scores("VideoPinball") == (16256.9, 17667.9)
    assert ev.reference_scores("VideoPinball", table="dopamine") == (0.0, 17667.9)
    assert ev.reference_scores("Pong", table="dopamine") == (-20.7, 14.6)
    assert set(ev.PAPER_15_GAMES) <= set(games)


@pytest.mark.parametrize(
    "name",
    [
        "MsPacman",
        "ms_pacman",
        "mspacman",
        "MSPACMAN",
        "MsPacman-v5",
        "ALE/MsPacman-v5",
        "MsPacmanNoFrameskip-v4",
        "ms-pacman",
    ],
)
def test_game_lookup_accepts_variants(name):
    assert ev.canonical_game(name) == "MsPacman"
    assert ev.has_reference(name)


def test_game_lookup_errors_with_suggestions():
    with pytest.raises(KeyError, match="did you mean.*MsPacman"):
        ev.canonical_game("MsPacmen")
    with pytest.raises(KeyError, match="no standard human"):
        ev.canonical_game("Pooyan")
    assert not ev.has_reference("Pooyan")
    with pytest.raises(ValueError, match="table"):
        ev.reference_scores("Pong", table="nature")


def test_human_normalized():
    assert ev.human_normalized(-20.7, "pong") == pytest.approx(0.0)
    assert ev.human_normalized(14.6, "Pong") == pytest.approx(1.0)
    np.testing.assert_allclose(ev.human_normalized([227.8, 7127.7], "alien"), [0.0, 1.0])
    assert ev.human_normalized(17667.9, "VideoPinball", table="dopamine") == pytest.approx(1.0)


# --- aggregates vs plain formulas -------------------------------------------------------------


def _iqm_plain(x):
    values = sorted(np.asarray(x).ravel().tolist())
    cut = len(values) // 4
    kept = values[cut : len(values) - cut]
    return sum(kept) / len(kept)


@pytest.mark.parametrize("x", list(_matrices()))
def test_aggregates_match_plain_formulas(x):
    assert ev.iqm(x) == pytest.approx(_iqm_plain(x))
    assert ev.iqm(x) == pytest.approx(stats.trim_mean(x, 0.25, axis=None))
    per_game = [np.mean(x[:, g]) for g in range(x.shape[1])]
    assert ev.mean(x) == pytest.approx(np.mean(per_game))
    assert ev.median(x) == pytest.approx(np.median(per_game))
    assert ev.optimality_gap(x) == pytest.approx(np.mean([1 - min(v, 1) for v in x.ravel()]))


def test_iqm_known_values():
    assert ev.iqm([[1, 2, 3, 100]]) == pytest.approx(2.5)  # trims 1 and 100
    assert ev.iqm([[5.0]]) == 5.0
    assert ev.iqm(np.arange(8.0).reshape(2, 4)) == pytest.approx(3.5)  # keeps 2..5


@pytest.mark.parametrize("x", list(_matrices()))
def test_probability_of_improvement_matches_mann_whitney(x):
    rng = np.random.default_rng(7)
    y = np.round(x[: max(1, len(x) - 1)] + rng.normal(scale=0.5, size=x[: max(1, len(x) - 1)].shape))
    expected = []
    for g in range(x.shape[1]):
        u = stats.mannwhitneyu(x[:, g], y[:, g], alternative="greater").statistic
        expected.append(u / (len(x) * len(y)))
    assert ev.probability_of_improvement(x, y) == pytest.approx(np.mean(expected))
    assert ev.probability_of_improvement(x, x) == pytest.approx(0.5)


def test_aggregates_reject_bad_input():
    with pytest.raises(ValueError, match=r"\[runs, games\]"):
        ev.iqm([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="NaN"):
        ev.iqm([[1.0, np.nan]])
    with pytest.raises(ValueError, match="same games"):
        ev.probability_of_improvement(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="confidence"):
        ev.bootstrap_ci(np.ones((2, 2)), confidence=95)
    with pytest.raises(ValueError, match="reduce"):
        ev.bootstrap_ci(np.ones((2, 2)), statistic=lambda s: float(np.mean(s)))


# --- bootstrap -----------------------------------------------------------------------------------


def _bootstrap_loop(x, statistic, reps, confidence, seed):
    """One rep at a time, one (run, game) slot at a time: the textbook stratified bootstrap.

    Draws the same integers as the vectorised version (same Generator, same call), so the
    intervals must agree exactly.
    """
    runs, games = x.shape
    idx = np.random.default_rng(seed).integers(0, runs, size=(reps, runs, games))
    values = []
    for r in range(reps):
        sample = np.empty_like(x)
        for i, g in itertools.product(range(runs), range(games)):
            sample[i, g] = x[idx[r, i, g], g]  # a run of the *same* game
        values.append(statistic(sample))
    alpha = 1 - confidence
    return tuple(np.quantile(values, [alpha / 2, 1 - alpha / 2]))


@pytest.mark.parametrize("x", list(_matrices())[:4])
@pytest.mark.parametrize("statistic", [ev.iqm, ev.mean, ev.median])
def test_bootstrap_matches_explicit_loop(x, statistic):
    expected = _bootstrap_loop(x, statistic, reps=200, confidence=0.9, seed=3)
    got = ev.bootstrap_ci(x, statistic, reps=200, confidence=0.9, seed=3)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_bootstrap_is_reproducible_and_contains_estimate():
    x = np.random.default_rng(0).normal(size=(5, 15))
    a = ev.bootstrap_ci(x, ev.iqm, seed=11)
    assert a == ev.bootstrap_ci(x, ev.iqm, seed=11)
    assert a != ev.bootstrap_ci(x, ev.iqm, seed=12)
    assert a[0] <= ev.iqm(x) <= a[1]


def test_bootstrap_never_mixes_games():
    # Game g only ever holds the value g, so any resample keeps per-game means and the CI is a point.
    x = np.tile(np.arange(6.0), (4, 1))
    low, high = ev.bootstrap_ci(x, ev.mean, reps=500)
    assert low == high == pytest.approx(2.5)


def test_bootstrap_coverage_statistical_agreement():
    # Percentile CIs of the mean over one game ~ normal-theory CIs; check the width is close.
    x = np.random.default_rng(1).normal(size=(400, 1))
    low, high = ev.bootstrap_ci(x, ev.mean, reps=4000, confidence=0.95)
    half = 1.96 * x.std(ddof=0) / np.sqrt(len(x))
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(x.mean(), abs=0.2 * half)


def test_bootstrap_of_probability_of_improvement_takes_a_tuple():
    rng = np.random.default_rng(2)
    x, y = rng.normal(1.0, size=(5, 6)), rng.normal(size=(4, 6))
    low, high = ev.bootstrap_ci((x, y), ev.probability_of_improvement, reps=300)
    assert 0.0 <= low <= ev.probability_of_improvement(x, y) <= high <= 1.0


def test_aggregate_with_ci():
    x = np.random.default_rng(4).normal(size=(5, 3))
    point, low, high = ev.aggregate_with_ci(x, ev.iqm, reps=100)
    assert point == pytest.approx(ev.iqm(x)) and low <= high


def test_bootstrap_resamples_in_chunks_of_bounded_size(monkeypatch):
    """50,000 replications at once held ~0.8 GB for P(improvement) of 10 seeds x 57 games; chunks bound it."""
    monkeypatch.setattr(ev, "BOOTSTRAP_CHUNK", 7)
    sizes = []

    def statistic(x):
        sizes.append(x.shape[0])
        return ev.iqm(x)

    x = np.random.default_rng(0).normal(size=(5, 3))
    low, high = ev.bootstrap_ci(x, statistic, reps=20, seed=1)
    assert sizes == [7, 7, 6] and low <= ev.iqm(x) <= high
    monkeypatch.setattr(ev, "BOOTSTRAP_CHUNK", 1000)  # one chunk: the draws of an unchunked bootstrap
    rng = np.random.default_rng(1)
    stats = ev.iqm(ev.stratified_resample(x, 20, rng))
    assert ev.bootstrap_ci(x, ev.iqm, reps=20, seed=1) == tuple(np.quantile(stats, [0.025, 0.975]))
