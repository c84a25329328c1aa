"""The statistics of paired seeds against independent computations: scipy's t-test, Holm by hand, a simulation."""
import numpy as np
import pytest
from scipy import stats

from pipeline.paired_stats import detectable_difference, holm_adjust, paired_p_value


def test_the_p_value_is_scipys_paired_t_test_and_holm_steps_down():
    first, second = [70.0, 71.0, 72.0, 73.0], [71.0, 72.2, 72.9, 74.1]
    differences = [b - a for a, b in zip(first, second)]
    assert paired_p_value(differences) == pytest.approx(stats.ttest_rel(second, first).pvalue, rel=1e-12)
    assert paired_p_value([1.0]) is None and paired_p_value([0.5, 0.5]) == 0.0 and paired_p_value([0.0, 0.0]) == 1.0
    # by hand: sorted 0.01, 0.02, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.02), max(0.04, 1 x 0.04); a None is no test
    assert holm_adjust({"a": 0.04, "b": 0.01, "c": 0.02, "d": None}) == pytest.approx({"b": 0.03, "c": 0.04, "a": 0.04})
    assert holm_adjust({"a": 0.6, "b": 0.5}) == {"b": 1.0, "a": 1.0}  # capped at 1, never below a smaller p's


def test_the_detectable_difference_is_found_at_the_stated_power_in_a_simulation():
    rng = np.random.default_rng(0)
    # 4 seeds at 5 %, and 3 seeds at a * 's level for 7 arms (where scipy's noncentral t gave NaN)
    for seeds, alpha in ((4, 0.05), (3, 0.05 / 7)):
        effect = detectable_difference(0.5, seeds, alpha)
        differences = rng.normal(effect, 0.5, (40_000, seeds))  # 40,000 ablations with that true difference
        t = differences.mean(1) / (differences.std(1, ddof=1) / np.sqrt(seeds))
        found = np.mean(2 * stats.t.sf(np.abs(t), seeds - 1) < alpha)
        assert found == pytest.approx(0.80, abs=0.01), (seeds, alpha)
    assert detectable_difference(1.0, 10) == pytest.approx(0.996, abs=1e-3)  # the textbook dz for 10 pairs
    assert detectable_difference(0.5, 4, 0.05 / 3) > detectable_difference(0.5, 4)  # a * needs more
    assert detectable_difference(0.5, 1) is None and detectable_difference(0.0, 4) is None
