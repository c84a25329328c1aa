"""The statistics of paired seeds: the difference of an arm to baseline, seed by seed, and what it can tell.

Two arms of one seed start from the same shared weights and see the same images, so their difference is paired;
its interval and t-test use the per-seed differences. Holm's adjustment covers the arms of one table, and the
detectable difference says what a table that finds nothing could have found.
"""
import math
from statistics import mean, stdev
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import optimize, stats

SIGNIFICANT = 0.05  # Holm-adjusted p below which a difference is starred
POWER = 0.8  # of the detectable difference the legend states


def paired_interval(differences: Sequence[float], confidence: float = 0.95) -> Optional[tuple]:
    """Student-t confidence interval of the mean paired difference; None with fewer than 2 pairs."""
    if len(differences) < 2:
        return None
    center = mean(differences)
    half = stats.t.ppf(0.5 + confidence / 2, len(differences) - 1) * stdev(differences) / math.sqrt(len(differences))
    return center - half, center + half


def paired_p_value(differences: Sequence[float]) -> Optional[float]:
    """Two-sided paired t-test of a zero mean difference (the interval above excludes 0 exactly when this is
    under 0.05); None with fewer than 2 pairs. Equal differences have no spread: p is 0, or 1 for all zeros."""
    if len(differences) < 2:
        return None
    spread = stdev(differences)
    if spread == 0:
        return 1.0 if mean(differences) == 0 else 0.0
    t = mean(differences) / (spread / math.sqrt(len(differences)))
    return float(2 * stats.t.sf(abs(t), len(differences) - 1))


def holm_adjust(p_values: Dict[str, Optional[float]]) -> Dict[str, float]:
    """Holm's step-down adjustment of the p-values given (None: no test, left out). With seven arms compared to
    baseline, each interval at 95 %, up to 30 % of ablations where no squeeze matters show one that excludes 0
    (1 - 0.95^7); the adjusted p keeps that to 5 % for the whole table."""
    ordered = sorted((p, name) for name, p in p_values.items() if p is not None)
    adjusted, running = {}, 0.0
    for rank, (p, name) in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * p))  # step-down: never below a smaller p's
        adjusted[name] = running
    return adjusted


def t_test_power(shift: float, freedom: int, critical: float, points: int = 4096) -> float:
    """P(|T| > critical) for a t statistic whose mean is off by `shift` standard errors: the normal's two tails
    averaged over the chi-square of the sd's estimate (at `points` of its quantiles: within 1e-4 of the exact).
    scipy's noncentral t returned NaN for the shifts that 3 seeds need at a Bonferroni level (df 2, shift ~ 10)."""
    variance = stats.chi2.ppf((np.arange(points) + 0.5) / points, freedom)
    edge = critical * np.sqrt(variance / freedom)
    return float(np.mean(stats.norm.cdf(-edge - shift) + stats.norm.sf(edge - shift)))


def detectable_difference(spread: float, pairs: int, alpha: float = SIGNIFICANT) -> Optional[float]:
    """The true mean difference a two-sided paired t-test at `alpha` finds with probability POWER, from `pairs`
    seeds whose differences spread by `spread` (their sd). None without a spread to go by (fewer than 2 pairs)."""
    if pairs < 2 or not spread > 0:
        return None
    freedom, critical = pairs - 1, stats.t.ppf(1 - alpha / 2, pairs - 1)

    def shortfall(effect: float) -> float:
        return t_test_power(effect * math.sqrt(pairs) / spread, freedom, critical) - POWER

    high = spread
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-9 * spread))
