"""The statistics behind every decision, on cases small enough to compute by hand."""

from __future__ import annotations

import math

import pytest

from reftflow import stats


def test_the_bootstrap_interval_of_a_constant_is_the_constant():
    assert stats.mean_ci([0.5] * 20) == (0.5, 0.5)
    assert stats.mean_ci([1.0]) == (1.0, 1.0)
    assert all(math.isnan(v) for v in stats.mean_ci([]))


def test_the_bootstrap_interval_of_two_values_spans_their_resample_means():
    """Items {0, 1}: a resample of two has mean 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so the 2.5 % and
    97.5 % percentiles of the resampled means are 0 and 1."""
    assert stats.mean_ci([0.0, 1.0], samples=4000) == (0.0, 1.0)


def test_the_bootstrap_interval_of_a_pass_rate_matches_the_binomial_one():
    """200 items, 100 passing: the normal interval is 0.5 ± 1.96 * sqrt(0.25 / 200) = 0.5 ± 0.069."""
    low, high = stats.mean_ci([1.0] * 100 + [0.0] * 100, samples=4000)
    assert low == pytest.approx(0.5 - 0.069, abs=0.01) and high == pytest.approx(0.5 + 0.069, abs=0.01)
    assert stats.mean_ci([1.0] * 100 + [0.0] * 100, samples=4000) == (low, high)  # seeded: the same twice


def test_the_paired_gain_is_tighter_than_two_separate_intervals():
    """Ten items; after fixes exactly two that before got wrong and breaks none: every resample of the
    differences is >= 0, so the paired interval starts at 0 while the separate ones overlap widely."""
    before = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    after = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    diff, low, high = stats.paired_diff_ci(before, after, samples=4000)
    assert diff == pytest.approx(0.2) and low >= 0.0 and high <= 0.6
    assert stats.mean_ci(before, samples=4000)[1] > stats.mean_ci(after, samples=4000)[0]  # they overlap
    with pytest.raises(ValueError, match="differ in number"):
        stats.paired_diff_ci([1.0], [1.0, 0.0])


def test_pass_at_k_by_hand():
    assert stats.pass_at_k(4, 0, 4) == 0.0
    assert stats.pass_at_k(4, 1, 4) == 1.0  # all four drawn: the one passing is among them
    assert stats.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert stats.pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # C(2,2)/C(4,2) = 1/6 draws miss both
    assert stats.pass_at_k(5, 3, 3) == 1.0  # only 2 fail: any 3 include a pass
    with pytest.raises(ValueError):
        stats.pass_at_k(2, 1, 3)


def test_majority_vote_by_hand():
    assert stats.majority(["7", "8", "7", None]) == 0  # 7 twice
    assert stats.majority(["8", "7", "7", "8"]) == 0  # a tie goes to the answer seen first
    assert stats.majority([None, "5", None, "6", "6"]) == 3  # no answer does not vote
    assert stats.majority([None, None]) is None


def test_items_to_tell_a_gain_from_zero():
    assert stats.distinguishable(0.01, 0.2) and stats.distinguishable(-0.2, -0.01) and not stats.distinguishable(-0.01, 0.2)
    # half-width 0.1 for a gain of 0.05 on 100 items: 100 * (0.1 / 0.05)^2 = 400
    assert stats.items_to_tell(0.05, -0.05, 0.15, 100) == 400
    assert stats.items_to_tell(0.0, -0.1, 0.1, 100) is None
