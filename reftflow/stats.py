"""Statistics for figures that decide something: bootstrap intervals, paired differences, pass@k, maj@k.

Pure functions on per-item numbers, no I/O. A held-out set of n items measures a pass rate p with a
standard error of about sqrt(p(1-p)/n): 3.5 points at n = 200 and p = 0.5, so one question is half a point
and a +2 gain is noise. The bootstrap (Efron & Tibshirani, 1993, ch. 13: the percentile interval) resamples
the items; the gain of one model over another is resampled *paired* (the same items for both), which is
much tighter than two separate intervals because most items are easy or hard for both models.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 2000
LEVEL = 0.95


def mean_ci(values: Sequence[float], level: float = LEVEL, samples: int = BOOTSTRAP_SAMPLES,
            seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `values` (items resampled with replacement).
    One value, or none: the interval is that value (or nan) on both sides."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_diff_ci(before: Sequence[float], after: Sequence[float], level: float = LEVEL,
                   samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(mean of after - before, low, high): the gain on the same items, with its paired bootstrap interval."""
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in number: {a.size} before, {b.size} after")
    d = b - a
    low, high = mean_ci(d, level, samples, seed)
    return (float(d.mean()) if d.size else math.nan), low, high


def pass_at_k(n: int, correct: int, k: int) -> float:
    """The unbiased pass@k of one item from n samples of which `correct` passed: the chance that k drawn
    without replacement include a passing one, 1 - C(n-c, k) / C(n, k) (Chen et al., 2021, "Evaluating
    Large Language Models Trained on Code", eq. 1)."""
    if not 0 < k <= n or not 0 <= correct <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= correct <= n (n={n}, correct={correct}, k={k})")
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


def majority(keys: Sequence[str | None]) -> int | None:
    """The index of the first sample whose answer is the most common one (ReFT's voting, Luong et al.,
    2024, §4: majority over the final answers of the sampled paths); ties go to the answer seen first.
    Samples with no answer (None) do not vote; None when none has one."""
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return None
    top = max(votes.values())
    winner = next(k for k in keys if k is not None and votes[k] == top)
    return keys.index(winner)


def distinguishable(low: float, high: float) -> bool:
    """Whether an interval of a difference excludes zero."""
    return low > 0.0 or high < 0.0


def items_to_tell(diff: float, low: float, high: float, n: int) -> int | None:
    """About how many items would make an interval of this width exclude zero, for this mean difference
    (the half-width shrinks as 1/sqrt(n)); None when the difference is zero."""
    half = (high - low) / 2.0
    if diff == 0 or not math.isfinite(half) or half <= 0:
        return None
    return max(n, math.ceil(n * (half / abs(diff)) ** 2))
