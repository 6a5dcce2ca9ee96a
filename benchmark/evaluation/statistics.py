"""How sure a measured accuracy is, and when a difference between two accuracies is real.

Every interval is two-sided at ``LEVEL`` (95 %) and every test two-sided at ``ALPHA`` (5 %):

- ``wilson``: the Wilson score interval of an accuracy measured on n test points (Wilson 1927):
  honest at small n and near 0 or 1, where the normal approximation is not.
- ``paired_difference``: two classifiers on the SAME test points, from their per-point correctness:
  the exact McNemar test (a binomial test at 1/2 of the points only one of them gets right) and
  Newcombe's hybrid score interval for the difference of paired proportions without continuity
  correction (Newcombe 1998, Statistics in Medicine 17:2635, method 10: the two Wilson intervals and
  their phi correlation, phi = 0 when a margin of the 2x2 table is empty). When no point is
  discordant, method 10 has phi = 1 and its interval shrinks to (nearly) nothing, [0, 0] at 50 %
  accuracy, although the data only bound how often the two could disagree: Tango's score interval
  (Tango 1998, Statistics in Medicine 17:891) is used there, +-z^2 / (n + z^2).
- ``unpaired_difference``: accuracies on different points, or runs without per-point data: Fisher's
  exact test and Newcombe's hybrid score interval for independent proportions without continuity
  correction (Newcombe 1998, Statistics in Medicine 17:873, method 10).
- ``seed_summary``: mean, sample standard deviation (ddof 1) and the t interval of the mean over
  seeds; ``seed_difference``: Welch's t-test of two groups of seeds (Student's with pooled variance
  when one group has a single seed).
- ``rank_with_ties``: ranks in tie blocks: a row joins the block above only if no test separates it from
  the block's first row (so ties cannot chain).
- ``verdict``: what a difference and its interval support, in words, with an equivalence margin.
- ``decrease_p``: one-sided Fisher exact p-value that an accuracy fell between two measurements.

The tests give the p-values that decide significance; the score intervals say how large a
difference may be (they agree with the tests except, rarely, at the edge of significance).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy import stats

from energybench.errors import EnergybenchError

LEVEL = 0.95
ALPHA = 1 - LEVEL

PAIRED_TEST = "exact McNemar"
UNPAIRED_TEST = "Fisher exact (unpaired)"
SEED_TESTS = WELCH_TEST, STUDENT_TEST = "Welch t over seeds", "Student t over seeds"
#: A seed-group difference bounded by the test points' sampling error rather than the seeds' spread.
SEED_MEANS_TEST = f"{UNPAIRED_TEST} on the seed means"
GROUP_TESTS = (*SEED_TESTS, SEED_MEANS_TEST)

T = TypeVar("T")


@dataclass(frozen=True)
class Estimate:
    """A measured value with the bounds of its interval (NaN bounds: no interval can be given)."""

    value: float
    low: float
    high: float

    @property
    def margin(self) -> float:
        """The larger distance from the value to a bound: ``value ±margin`` covers the whole interval."""
        return max(self.value - self.low, self.high - self.value)


@dataclass(frozen=True)
class Difference(Estimate):
    """A difference ``a - b`` with its interval, the p-value of a two-sided test and that test's name."""

    p: float
    test: str

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


@dataclass(frozen=True)
class SeedSummary(Estimate):
    """Mean over ``seeds`` runs with its t interval (NaN with one seed) and the sample standard deviation."""

    sd: float
    seeds: int


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2))


def wilson(correct: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of the accuracy ``correct / n`` (``correct`` may be a mean count, e.g. over seeds)."""
    if n < 1:
        raise EnergybenchError(f"an accuracy needs at least one test point, got n={n}")
    if not 0 <= correct <= n:
        raise EnergybenchError(f"{correct} correct out of {n} points is not a count between 0 and n")
    z2 = _z(level) ** 2
    p = correct / n
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(z2) / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(correct: float, n: int, level: float = LEVEL) -> Estimate:
    """The accuracy ``correct / n`` with its Wilson interval."""
    return Estimate(correct / n, *wilson(correct, n, level))


def _newcombe(p1: float, n1: int, p2: float, n2: int, phi: float, level: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``p1 - p2`` from the Wilson intervals of both (``phi``: their correlation,
    0 for independent samples)."""
    l1, u1 = wilson(p1 * n1, n1, level)
    l2, u2 = wilson(p2 * n2, n2, level)
    d = p1 - p2
    below = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    above = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return max(-1.0, d - math.sqrt(max(below, 0.0))), min(1.0, d + math.sqrt(max(above, 0.0)))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact McNemar p-value (two-sided): ``only_a`` points right only for A, ``only_b`` right only for B."""
    discordant = only_a + only_b
    return float(stats.binomtest(only_a, discordant, 0.5).pvalue) if discordant else 1.0


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> Difference:
    """Accuracy of A minus that of B on the same points, from their per-point correctness (bool vectors):
    Newcombe's method 10, or Tango's score interval when no point is discordant (see the module's docstring)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise EnergybenchError(f"paired correctness needs two vectors over the same points, got shapes {a.shape} "
                               f"and {b.shape}")
    n = len(a)
    both, only_a, only_b = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
    if only_a == only_b == 0:  # Tango's score interval, closed form for no discordant point
        half = _z(level) ** 2 / (n + _z(level) ** 2)
        return Difference(0.0, -half, half, 1.0, PAIRED_TEST)
    neither = n - both - only_a - only_b
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins else 0.0
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    low, high = _newcombe(p1, n, p2, n, phi, level)
    return Difference(p1 - p2, low, high, mcnemar_p(only_a, only_b), PAIRED_TEST)


def unpaired_difference(correct_a: int, n_a: int, correct_b: int, n_b: int, level: float = LEVEL) -> Difference:
    """Accuracy ``correct_a / n_a`` minus ``correct_b / n_b`` measured on different (or unknown) points."""
    p = stats.fisher_exact([[correct_a, n_a - correct_a], [correct_b, n_b - correct_b]]).pvalue
    low, high = _newcombe(correct_a / n_a, n_a, correct_b / n_b, n_b, 0.0, level)
    return Difference(correct_a / n_a - correct_b / n_b, low, high, float(p), UNPAIRED_TEST)


def seed_summary(values: Sequence[float], level: float = LEVEL) -> SeedSummary:
    """Mean of per-seed ``values``, its t interval and the sample standard deviation (ddof 1; NaN for one seed)."""
    if not values:
        raise EnergybenchError("a seed summary needs at least one value")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return SeedSummary(mean, math.nan, math.nan, math.nan, 1)
    sd = statistics.stdev(values)
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return SeedSummary(mean, mean - half, mean + half, sd, len(values))


def seed_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Difference | None:
    """Mean of per-seed values ``a`` minus that of ``b``: Welch's t-test and interval, or Student's (pooled
    variance) when one side has a single seed; None when a t-test cannot apply (one seed each, or no
    spread at all between seeds)."""
    if max(len(a), len(b)) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return None
    welch = min(len(a), len(b)) > 1
    result = stats.ttest_ind(a, b, equal_var=not welch)
    interval = result.confidence_interval(level)
    return Difference(statistics.fmean(a) - statistics.fmean(b), float(interval.low), float(interval.high),
                      float(result.pvalue), WELCH_TEST if welch else STUDENT_TEST)


def rank_with_ties(items: Sequence[T], differs: Callable[[T, T], bool]) -> list[int]:
    """Competition ranks of ``items``, already in order, best first, in tie blocks: walking down, an item joins
    the block above (shares its rank) unless ``differs(first, item)``, ``first`` being the block's first item
    (a significant difference); then it opens a new block at its own position (1, 1, 3).

    Every item of a block is thus not separated from the block's first item, so ties cannot chain: a row is
    never tied with a row it differs from through a ladder of small steps. The block's first item has index
    ``rank - 1``, which is how callers find what each item was compared with."""
    ranks: list[int] = []
    for i, item in enumerate(items):
        ranks.append(1 if i == 0 else i + 1 if differs(items[ranks[-1] - 1], item) else ranks[-1])
    return ranks


def verdict(difference: Difference, margin: float) -> str:
    """What ``difference`` (A - B) supports, in words: ``A higher``/``B higher`` when the test separates them;
    ``same within +-margin`` only when the whole interval lies inside [-margin, +margin]; else ``not told
    apart``, which is no claim of equality. ``margin`` is a fraction (0.01: one point)."""
    points = f"{100 * margin:g} point" + ("" if 100 * margin == 1 else "s")
    inside = -margin <= difference.low and difference.high <= margin
    if difference.significant:
        return f"{'A' if difference.value > 0 else 'B'} higher" + (f" (by less than {points})" if inside else "")
    return f"same within ±{points}" if inside else f"not told apart (interval wider than ±{points})"


def decrease_p(before: int, after: int, n: int) -> float:
    """One-sided Fisher exact p-value that an accuracy measured as ``before`` then ``after`` correct out of
    ``n`` points each fell (small when ``after`` is well below ``before``)."""
    return float(stats.fisher_exact([[before, n - before], [after, n - after]], alternative="greater").pvalue)
