"""experiments.stats against known cases: scipy's intervals and tests, Holm by hand, power by
simulation and by the noncentral t, and the verdict each design must reach."""

import math

import numpy as np
import pytest
from scipy import stats as sp

from experiments import stats
from fastslow_jax.errors import UsageError


def by_seed(values):
  return dict(enumerate(values))


def test_pairs_by_shared_seed_only():
  p = stats.paired({0: 1.0, 1: 2.0, 2: 3.0}, {2: 2.5, 0: 0.5, 7: 9.0})
  assert p.seeds == (0, 2) and p.diffs == (0.5, 0.5)
  with pytest.raises(UsageError, match='no shared seeds') as info:
    stats.paired({0: 1.0}, {1: 1.0})
  assert '\n' not in str(info.value)


def test_interval_and_t_test_are_scipys():
  rng = np.random.default_rng(0)
  a, b = rng.normal(3.0, 0.1, 5), rng.normal(3.05, 0.1, 5)
  p = stats.paired(by_seed(a), by_seed(b))
  d = a - b
  low, high = sp.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sp.sem(d))
  assert stats.t_interval(p) == pytest.approx((low, high), rel=1e-12)
  ref = sp.ttest_rel(a, b)
  assert stats.t_test(p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-10)


def test_tost_is_the_larger_one_sided_p():
  d = np.array([0.004, -0.002, 0.003, 0.001])
  p = stats.paired(by_seed(d), by_seed(np.zeros(4)))
  lower = sp.ttest_1samp(d, -stats.MARGIN, alternative='greater').pvalue
  upper = sp.ttest_1samp(d, stats.MARGIN, alternative='less').pvalue
  assert stats.tost(p) == pytest.approx(max(lower, upper), rel=1e-10)


def test_a_tight_paired_design_is_equal_and_a_loose_one_undetermined():
  base = np.array([3.84, 3.80, 3.91, 3.77])  # A seed-to-seed spread of 0.06 shared by both arms.
  tight = stats.family({'x': stats.paired(by_seed(base + [0.001, -0.002, 0.0, 0.001]),
                                          by_seed(base))})['x']
  assert tight.verdict == stats.EQUAL and tight.p_tost_holm < stats.ALPHA
  assert -stats.MARGIN < tight.low < tight.high < stats.MARGIN
  # The same means unpaired across seeds: the pairing is what shows equivalence.
  shuffled = stats.family({'x': stats.paired(by_seed(base + [0.001, -0.002, 0.0, 0.001]),
                                             by_seed(base[::-1]))})['x']
  assert shuffled.verdict == stats.UNDETERMINED


def test_holm_step_down_by_hand():
  p = [0.01, 0.04, 0.03, 0.005]
  # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> monotone 0.06.
  assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert stats.holm([0.5, math.nan, 0.01]) == pytest.approx([0.5, math.nan, 0.02], nan_ok=True)
  assert stats.holm([0.3, 0.2]) == pytest.approx([0.4, 0.4])  # Never below an earlier step.
  assert stats.holm([0.9, 0.8]) == [1.0, 1.0]  # At most 1.


def test_holm_keeps_only_the_difference_that_survives():
  rng = np.random.default_rng(1)
  base = rng.normal(2.0, 0.05, 6)
  pairs = {'real': stats.paired(by_seed(base + 0.2 + rng.normal(0, 0.01, 6)), by_seed(base))}
  # A marginal difference: p < 0.05 alone, not after correction over the family.
  marginal = base + [0.030, 0.004, 0.020, 0.012, 0.033, -0.004]
  pairs['marginal'] = stats.paired(by_seed(marginal), by_seed(base))
  for i in range(4):
    pairs[f'null{i}'] = stats.paired(by_seed(base + rng.normal(0, 0.05, 6)), by_seed(base))
  out = stats.family(pairs)
  assert out['marginal'].p < stats.ALPHA <= out['marginal'].p_holm
  assert out['real'].verdict == stats.DIFFERENT and out['real'].p_holm < stats.ALPHA
  assert out['marginal'].verdict == stats.UNDETERMINED
  assert all(out[f'null{i}'].verdict == stats.UNDETERMINED for i in range(4))


def test_t_test_power_against_the_noncentral_t_and_a_simulation():
  for diff, n in ((0.5, 10), (1.0, 5), (0.2, 30)):
    crit = sp.t.ppf(0.975, n - 1)
    exact = sp.nct.sf(crit, n - 1, diff * math.sqrt(n)) + sp.nct.cdf(-crit, n - 1,
                                                                    diff * math.sqrt(n))
    assert stats.t_test_power(diff, 1.0, n) == pytest.approx(exact, abs=2e-4)
  rng = np.random.default_rng(2)
  d = rng.normal(0.03, 0.02, (40_000, 3))
  simulated = np.mean(sp.ttest_1samp(d, 0, axis=1).pvalue < 0.05)
  assert stats.t_test_power(0.03, 0.02, 3) == pytest.approx(simulated, abs=0.01)


def test_tost_power_against_a_simulation():
  rng = np.random.default_rng(3)
  for sd, n, diff in ((0.004, 3, 0.0), (0.01, 8, 0.003), (0.02, 20, -0.002)):
    d = rng.normal(diff, sd, (40_000, n))
    mean, se = d.mean(1), d.std(1, ddof=1) / math.sqrt(n)
    crit = sp.t.ppf(1 - stats.ALPHA, n - 1)
    shown = (mean - crit * se > -stats.MARGIN) & (mean + crit * se < stats.MARGIN)
    assert stats.tost_power(sd, n, diff=diff) == pytest.approx(shown.mean(), abs=0.01)


def test_detectable_difference_and_seeds_for_the_margin():
  d = stats.detectable(0.02, 3)
  assert stats.t_test_power(d, 0.02, 3) == pytest.approx(stats.POWER, abs=1e-4)
  assert stats.detectable(0.02, 10) < d  # More seeds, finer.
  n = stats.seeds_for_margin(0.02)
  assert stats.tost_power(0.02, n) >= stats.POWER > stats.tost_power(0.02, n - 1)
  assert stats.seeds_for_margin(0.02, alpha=0.05 / 24) > n  # A family's level asks for more.


def test_verdict_words_and_their_precedence():
  assert stats.verdict(0.001, 0.2) == stats.DIFFERENT
  assert stats.verdict(0.001, 0.01) == stats.EQUAL  # Nonzero but inside the margin.
  assert stats.verdict(0.3, 0.3) == stats.UNDETERMINED
  assert stats.verdict(math.nan, math.nan) == stats.UNDETERMINED
  one = stats.family({'x': stats.paired({0: 1.0}, {0: 2.0})})['x']
  assert one.verdict == stats.UNDETERMINED and 'one seed' in one.sentence('a − b')
  same = stats.family({'x': stats.paired(by_seed([1.0, 2.0]), by_seed([1.0, 2.0]))})['x']
  assert same.verdict == stats.EQUAL and (same.low, same.high) == (0.0, 0.0)
  shifted = stats.family({'x': stats.paired(by_seed([1.5, 2.5]), by_seed([1.0, 2.0]))})['x']
  assert shifted.verdict == stats.DIFFERENT
