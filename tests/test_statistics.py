"""The statistics behind every interval, tie and comparison: against scipy and published worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from energybench.errors import EnergybenchError
from energybench.evaluation.statistics import (
    PAIRED_TEST,
    UNPAIRED_TEST,
    mcnemar_p,
    paired_difference,
    rank_with_ties,
    seed_difference,
    seed_summary,
    unpaired_difference,
    wilson,
)


@pytest.mark.parametrize("k, n", [(0, 40), (1, 40), (13, 100), (40, 40), (150, 300), (3, 1000), (997, 1000),
                                  (5000, 10000)])
def test_wilson_bounds_match_scipy(k, n):
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((expected.low, expected.high), abs=1e-12)
    wider = stats.binomtest(k, n).proportion_ci(confidence_level=0.99, method="wilson")
    assert wilson(k, n, 0.99) == pytest.approx((wider.low, wider.high), abs=1e-12)


def test_wilson_interval_at_the_sizes_the_leaderboards_use():
    low, high = wilson(20, 40)  # 50% on 40 AutoAttack points: about +-15 points, no ranking survives that
    assert (low, high) == pytest.approx((0.352, 0.648), abs=1e-3)
    low, high = wilson(0, 40)  # a collapsed model: 0 of 40 is compatible with up to 8.8% robust accuracy
    assert low == 0 and high == pytest.approx(0.0876, abs=1e-4)
    low, high = wilson(500, 1000)
    assert (high - low) / 2 == pytest.approx(0.031, abs=1e-3)
    with pytest.raises(EnergybenchError, match="n=0"):
        wilson(0, 0)
    with pytest.raises(EnergybenchError, match="41 correct out of 40"):
        wilson(41, 40)


@pytest.mark.parametrize("only_a, only_b", [(10, 2), (2, 10), (0, 7), (30, 30), (1, 0), (120, 95)])
def test_exact_mcnemar_is_a_binomial_test_of_the_discordant_points(only_a, only_b):
    assert mcnemar_p(only_a, only_b) == pytest.approx(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    assert mcnemar_p(0, 0) == 1.0


def test_exact_mcnemar_on_a_worked_case():
    # 10 points only A gets right, 2 only B: p = 2 * P(X <= 2 | 12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_p(10, 2) == pytest.approx(158 / 4096)


def _pair(both, only_a, only_b, neither):
    a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * neither, dtype=bool)
    b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * neither, dtype=bool)
    return a, b


def test_paired_difference_counts_the_discordant_points():
    a, b = _pair(400, 30, 0, 570)  # B's correct points are a subset of A's
    diff = paired_difference(a, b)
    assert diff.test == PAIRED_TEST and diff.value == pytest.approx(0.03)
    assert diff.p == pytest.approx(stats.binomtest(30, 30, 0.5).pvalue) and diff.significant
    assert diff.low < 0.03 < diff.high and diff.low > 0
    # the same accuracies on unknown points: the unpaired test cannot tell 43% from 40% on 1000 points
    unpaired = unpaired_difference(430, 1000, 400, 1000)
    assert not unpaired.significant and unpaired.low < 0 < unpaired.high
    assert unpaired.high - unpaired.low > 3 * (diff.high - diff.low)  # pairing removes the shared noise

    same = paired_difference(a, a)
    assert same.value == 0 and same.p == 1.0 and not same.significant and same.low < 0 < same.high
    with pytest.raises(EnergybenchError, match="same points"):
        paired_difference(a, b[:-1])


def _tango_bound(n: int, side: int) -> float:
    """The bound of Tango's (1998) score interval for a paired difference with no discordant point, by inverting
    his score statistic numerically: T(d) = (b - c - n d) / sqrt(n (2 q + d - d^2)), q the maximum-likelihood
    probability of the c cell under the difference d (b = c = 0 here)."""
    from scipy import optimize

    z2 = stats.norm.ppf(0.975) ** 2

    def q_hat(d: float) -> float:  # likelihood n * log(1 - 2q - d), with q >= 0 and q + d >= 0
        low = max(0.0, -d)
        return optimize.minimize_scalar(lambda q: -n * math.log(1 - 2 * q - d), bounds=(low, (1 - d) / 2 - 1e-6),
                                        method="bounded", options={"xatol": 1e-12}).x

    def excess(d: float) -> float:
        return (n * d) ** 2 / (n * (2 * q_hat(d) + d - d * d)) - z2

    return optimize.brentq(excess, side * 1e-9, side * 0.5)


@pytest.mark.parametrize("both, n", [(500, 1000), (375, 1000), (0, 100), (40, 40)])
def test_paired_difference_without_discordant_points_is_tangos_score_interval(both, n):
    """Two runs right on exactly the same points: Newcombe's method 10 has phi = 1 there and shrinks to [0, 0] at
    50 % (nearly so elsewhere), a certainty 1000 points cannot give; Tango's score interval bounds the difference
    by how often the two could still disagree."""
    a, b = _pair(both, 0, 0, n - both)
    diff = paired_difference(a, b)
    assert diff.value == 0 and diff.p == 1.0
    assert (diff.low, diff.high) == pytest.approx((_tango_bound(n, -1), _tango_bound(n, 1)), abs=1e-7)
    if n == 1000:
        assert diff.high == pytest.approx(0.00383, abs=1e-5)  # +-0.38 points


def test_verdict_claims_no_difference_only_inside_the_named_margin():
    from energybench.evaluation.statistics import Difference, verdict

    def d(value, low, high, p):
        return Difference(value, low, high, p, PAIRED_TEST)

    assert verdict(d(0.004, -0.060, 0.068, 0.84), 0.01) == "not told apart (interval wider than ±1 point)"
    assert verdict(d(0.004, -0.006, 0.008, 0.4), 0.01) == "same within ±1 point"
    assert verdict(d(-0.03, -0.05, -0.01, 0.002), 0.02) == "B higher"
    assert verdict(d(0.005, 0.001, 0.009, 0.01), 0.01) == "A higher (by less than 1 point)"


def test_decrease_p_is_a_one_sided_fisher_test():
    from energybench.evaluation.statistics import decrease_p

    assert decrease_p(12, 2, 100) == pytest.approx(stats.fisher_exact([[12, 88], [2, 98]], alternative="greater")[1])
    assert decrease_p(5, 0, 500) < 0.05 < decrease_p(1, 0, 100)
    assert decrease_p(2, 12, 100) > 0.99  # a rise is no decrease


@pytest.mark.parametrize("counts, interval", [
    # Newcombe (1998), Statistics in Medicine 17:873, table II, method 10 (hybrid score, no continuity correction)
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0)),
])
def test_unpaired_interval_matches_newcombes_published_examples(counts, interval):
    diff = unpaired_difference(*counts)
    assert (diff.low, diff.high) == pytest.approx(interval, abs=1e-4)
    k1, n1, k2, n2 = counts
    assert diff.test == UNPAIRED_TEST
    assert diff.p == pytest.approx(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def test_seed_summary_uses_the_sample_standard_deviation_and_a_t_interval():
    values = [0.41, 0.44, 0.40]
    summary = seed_summary(values)
    assert summary.seeds == 3 and summary.value == pytest.approx(np.mean(values))
    assert summary.sd == pytest.approx(np.std(values, ddof=1))
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert (summary.low, summary.high) == pytest.approx((low, high))
    single = seed_summary([0.5])
    assert single.seeds == 1 and math.isnan(single.sd) and math.isnan(single.low)


def test_seed_difference_is_welchs_t_test_or_students_with_one_seed():
    a, b = [0.30, 0.31, 0.29], [0.25, 0.27, 0.26]
    diff = seed_difference(a, b)
    expected = stats.ttest_ind(a, b, equal_var=False)
    assert diff.test == "Welch t over seeds" and diff.p == pytest.approx(expected.pvalue) and diff.significant
    assert (diff.low, diff.high) == pytest.approx(tuple(expected.confidence_interval(0.95)))
    one = seed_difference([0.30], b)
    assert one.test == "Student t over seeds" and one.p == pytest.approx(stats.ttest_ind([0.30], b).pvalue)
    assert seed_difference([0.3], [0.2]) is None  # two single runs: compared as runs
    assert seed_difference([0.3, 0.3], [0.2, 0.2]) is None  # no spread: a t-test has nothing to go on


def test_rank_with_ties_only_moves_down_at_significant_differences():
    scores = [0.9, 0.89, 0.7, 0.69, 0.68, 0.3]

    def differs(above, below):
        return above - below > 0.05

    assert rank_with_ties(scores, differs) == [1, 1, 3, 3, 3, 6]
    assert rank_with_ties([], differs) == []
    assert rank_with_ties(scores, lambda a, b: False) == [1] * 6
    # a ladder of steps no test resolves does not chain into one tie: each row is tested against its block's first
    assert rank_with_ties([0.9, 0.86, 0.82, 0.78, 0.74], differs) == [1, 1, 3, 3, 5]


def _abc() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-point correctness on 1000 points at 37.5 %, 36.0 % and 35.0 %: 300 points all three get right, 30 A and
    B, 45 A only, 30 B and C, 20 C only. A-B: 45 vs 30 discordant, B-C: 30 vs 20, A-C: 75 vs 50."""
    pattern = [(1, 1, 1)] * 300 + [(1, 1, 0)] * 30 + [(1, 0, 0)] * 45 + [(0, 1, 1)] * 30 + [(0, 0, 1)] * 20
    table = np.array(pattern + [(0, 0, 0)] * (1000 - len(pattern)), dtype=bool)
    return table[:, 0], table[:, 1], table[:, 2]


def _significant(a: np.ndarray, b: np.ndarray) -> bool:
    return paired_difference(a, b).significant


def test_ties_do_not_chain_from_a_to_c_through_b():
    a, b, c = _abc()
    assert [v.mean() for v in (a, b, c)] == [0.375, 0.36, 0.35]
    assert paired_difference(a, b).p == pytest.approx(0.105, abs=1e-3)
    assert paired_difference(b, c).p == pytest.approx(0.203, abs=1e-3)
    assert paired_difference(a, c).p == pytest.approx(0.031, abs=1e-3)
    # B cannot be told from A, C can: C is below A's block whether B is on the board or not
    assert rank_with_ties([a, b, c], _significant) == [1, 1, 3]
    assert rank_with_ties([a, c], _significant) == [1, 2]
    assert rank_with_ties([b, c], _significant) == [1, 1]


def test_a_ladder_of_small_steps_never_ties_its_ends_when_a_test_separates_them():
    """Five rows from 40 % down to 34 % on 1000 shared points (correlated per-point correctness), 300 boards:
    whenever the top and bottom rows differ significantly, the bottom row is not in the top row's tie block, and
    every row that shares the top rank is not separated from the top row."""
    rng = np.random.default_rng(0)
    accuracies, n, rho = [0.40, 0.385, 0.37, 0.355, 0.34], 1000, 0.7
    boards = separated = 0
    for _ in range(300):
        shared = rng.standard_normal(n)
        vectors = [np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal(n) > stats.norm.ppf(1 - acc)
                   for acc in accuracies]
        vectors.sort(key=lambda v: -v.sum())
        ranks = rank_with_ties(vectors, _significant)
        boards += 1
        if _significant(vectors[0], vectors[-1]):
            separated += 1
            assert ranks[-1] > 1
        assert all(not _significant(vectors[0], v) for v, r in zip(vectors, ranks) if r == 1)
    assert boards == 300 and separated > 250  # the ends differ on nearly every board: the check above has teeth
