"""The statistics every report's verdicts come from: paired differences over shared seeds.

A seed fixes the data order and the initialisation's random stream for every model alike, so
each comparison is a paired difference a − b, one per seed both ran. Per comparison:
the mean difference with its 95% t-interval, the paired t-test, an equivalence test (TOST) against
±MARGIN, and the design's power. A report's comparisons form one family, corrected by Holm's
step-down method. The words a report may use:

- 'equal': equivalence shown, TOST's Holm-adjusted p below ALPHA (for one comparison: the 90%
  interval inside ±MARGIN); a difference inside the margin may still be nonzero;
- 'different': otherwise, when the t-test's Holm-adjusted p is below ALPHA;
- 'undetermined at this power': neither, reported with the interval and what the design can see.

MARGIN is 0.01 nats per token, chosen from what is negligible for a language model's loss, not
from these results: a change of loss by 0.01 nats changes perplexity by 1% (exp(0.01) = 1.010),
below the gains language-model architecture comparisons report as findings (several percent of
perplexity). It applies to the
final validation loss of every report, whatever the data source (nats per token of that source).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from scipy import optimize, stats

from fastslow_jax.errors import UsageError

MARGIN = 0.01  # Nats per token: 1% of perplexity. Chosen a priori, never fitted to results.
ALPHA = 0.05  # Family-wise error rate of each verdict (Holm).
POWER = 0.80  # The power the design figures are quoted at.
LEVEL = 0.95  # Confidence level of the reported intervals.
EQUAL, DIFFERENT, UNDETERMINED = 'equal', 'different', 'undetermined at this power'
MAX_SEEDS = 100_000  # Where the search for the seeds a margin needs gives up.


@dataclasses.dataclass(frozen=True)
class Paired:
  """Differences a − b, one per seed both sides ran."""
  seeds: tuple[int, ...]
  diffs: tuple[float, ...]

  @property
  def n(self) -> int:
    return len(self.diffs)

  @property
  def mean(self) -> float:
    return float(np.mean(self.diffs)) if self.diffs else math.nan

  @property
  def sd(self) -> float:
    """Sample standard deviation of the differences (nan below two seeds)."""
    return float(np.std(self.diffs, ddof=1)) if self.n > 1 else math.nan


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Paired:
  """The paired differences a[seed] − b[seed] over the seeds both hold (sorted)."""
  seeds = sorted(set(a) & set(b))
  if not seeds:
    raise UsageError(f'no shared seeds to pair: {sorted(a)} against {sorted(b)}.')
  return Paired(tuple(seeds), tuple(float(a[s]) - float(b[s]) for s in seeds))


def t_interval(p: Paired, level: float = LEVEL) -> tuple[float, float]:
  """Two-sided t-interval of the mean difference ((nan, nan) below two seeds)."""
  if p.n < 2:
    return math.nan, math.nan
  half = stats.t.ppf(0.5 + level / 2, p.n - 1) * p.sd / math.sqrt(p.n)
  return p.mean - half, p.mean + half


def t_test(p: Paired) -> tuple[float, float]:
  """(t, two-sided p) of the paired t-test of mean 0; identical differences give p 1 at mean 0
  and p 0 otherwise; nan below two seeds."""
  if p.n < 2:
    return math.nan, math.nan
  if p.sd == 0:
    return (0.0, 1.0) if p.mean == 0 else (math.copysign(math.inf, p.mean), 0.0)
  t = p.mean / (p.sd / math.sqrt(p.n))
  return float(t), float(2 * stats.t.sf(abs(t), p.n - 1))


def tost(p: Paired, margin: float = MARGIN) -> float:
  """p of the two one-sided tests of |mean| >= margin (small p: equivalence within ±margin)."""
  if p.n < 2:
    return math.nan
  if p.sd == 0:
    return 0.0 if abs(p.mean) < margin else 1.0
  se = p.sd / math.sqrt(p.n)
  lower = stats.t.sf((p.mean + margin) / se, p.n - 1)  # H0: mean <= -margin.
  upper = stats.t.cdf((p.mean - margin) / se, p.n - 1)  # H0: mean >= +margin.
  return float(max(lower, upper))


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values: the i-th smallest times (m − i + 1), kept monotone and
  at most 1. nan (an untestable comparison) stays nan and does not count in m."""
  order = [i for i in np.argsort(p_values, kind='stable') if not math.isnan(p_values[i])]
  adjusted, running = [math.nan] * len(p_values), 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (len(order) - rank) * p_values[i]))
    adjusted[i] = running
  return adjusted


QUADRATURE = 4096  # Points of the expectation over the sample spread (midpoint rule in u).


@functools.lru_cache(maxsize=64)
def _spread_ratios(df: int) -> np.ndarray:
  """s / sd at the midpoints of QUADRATURE equal-probability slices (df · (s / sd)² is
  chi-squared with df degrees of freedom)."""
  u = (np.arange(QUADRATURE) + 0.5) / QUADRATURE
  return np.sqrt(stats.chi2.ppf(u, df) / df)


def t_test_power(diff: float, sd: float, n: int, alpha: float = ALPHA) -> float:
  """Probability that the two-sided paired t-test at `alpha` rejects when the true mean
  difference is `diff` and the differences' spread `sd`: E over s of P(|mean| > c·s/√n)."""
  crit, se, r = stats.t.ppf(1 - alpha / 2, n - 1), sd / math.sqrt(n), _spread_ratios(n - 1)
  return float(np.mean(stats.norm.sf(crit * r - diff / se)
                       + stats.norm.cdf(-crit * r - diff / se)))


def detectable(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
  """The smallest true difference the paired t-test detects with probability `power`."""
  if n < 2 or math.isnan(sd):
    return math.nan
  if sd == 0:
    return 0.0
  high = 1.0
  while t_test_power(high, 1.0, n, alpha) < power:
    high *= 2
  ratio = optimize.brentq(lambda d: t_test_power(d, 1.0, n, alpha) - power, 0.0, high,
                          xtol=1e-6)
  return float(ratio * sd)


def tost_power(sd: float, n: int, margin: float = MARGIN, alpha: float = ALPHA,
               diff: float = 0.0) -> float:
  """Probability that TOST at `alpha` shows equivalence within ±margin when the true mean
  difference is `diff`: E over s of P(-margin + c·s/√n < mean < margin - c·s/√n)."""
  if sd == 0:
    return float(abs(diff) < margin)
  crit, se, r = stats.t.ppf(1 - alpha, n - 1), sd / math.sqrt(n), _spread_ratios(n - 1)
  half = np.maximum(margin - crit * se * r, 0)  # Zero once the interval outgrows the margin.
  return float(np.mean(stats.norm.cdf((half - diff) / se) - stats.norm.cdf((-half - diff) / se)))


def seeds_for_margin(sd: float, margin: float = MARGIN, alpha: float = ALPHA,
                     power: float = POWER) -> int | None:
  """Seeds a paired design with this spread needs for TOST to show ±margin with probability
  `power` when the true difference is 0; None beyond MAX_SEEDS (or with no spread measured)."""
  if math.isnan(sd):
    return None
  enough = lambda n: tost_power(sd, n, margin, alpha) >= power
  high = 2
  while not enough(high):
    if high >= MAX_SEEDS:
      return None
    high *= 2
  low = max(2, high // 2)
  while low < high:  # Power grows with n: the first n that is enough.
    mid = (low + high) // 2
    low, high = (low, mid) if enough(mid) else (mid + 1, high)
  return high


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One comparison of a family: the paired difference, its tests and the verdict."""
  seeds: tuple[int, ...]
  mean: float
  sd: float
  low: float
  high: float
  t: float
  p: float
  p_tost: float
  p_holm: float
  p_tost_holm: float
  detectable: float  # Smallest difference detected with POWER at the family's level.
  seeds_needed: int | None  # Seeds TOST needs to show ±MARGIN with POWER at that level.
  verdict: str

  @property
  def n(self) -> int:
    return len(self.seeds)

  def interval(self) -> str:
    """'+0.0014 [-0.0005, +0.0033]': the mean and its 95% interval in nats (in powers of ten
    where the interval is too narrow for four decimals)."""
    if math.isnan(self.low):
      return f'{self.mean:+.4f} (one seed: no interval)'
    spec = '+.1e' if 0 < self.high - self.low < 1e-3 else '+.4f'
    return f'{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]'

  def sentence(self, name: str) -> str:
    """'dense − fastslow = +0.0014 [...] nats: equal (within ±0.01).' and for an undetermined
    comparison what the design can detect."""
    text = f'{name} = {self.interval()} nats: {self.verdict}'
    if self.verdict == EQUAL:
      return text + f' (within ±{MARGIN:g}).'
    if self.verdict == DIFFERENT:
      return text + f' (Holm-adjusted p = {self.p_holm:.3g}).'
    return text + f' ({power_phrase(self)}).'


def power_phrase(c: Comparison) -> str:
  """What an undetermined comparison's design can see."""
  if c.n < 2:
    return 'one seed: nothing can be tested'
  need = (f'about {c.seeds_needed} seeds' if c.seeds_needed else
          f'more than {MAX_SEEDS:,} seeds')
  return (f'{c.n} seeds detect {c.detectable:.3f} nats with {POWER:.0%} power; '
          f'showing ±{MARGIN:g} would need {need}')


def verdict(p_holm: float, p_tost_holm: float, alpha: float = ALPHA) -> str:
  """'equal' when equivalence is shown, else 'different' when the difference survives the
  correction, else 'undetermined at this power' (untestable comparisons included)."""
  if p_tost_holm < alpha:
    return EQUAL
  if p_holm < alpha:
    return DIFFERENT
  return UNDETERMINED


def family(pairs: Mapping[Hashable, Paired], margin: float = MARGIN, alpha: float = ALPHA,
           power: float = POWER) -> dict[Hashable, Comparison]:
  """Every comparison of a report, Holm-corrected together (t-tests and TOSTs each as one
  family). Power figures are at the Bonferroni level alpha / m, the strictest of Holm's steps."""
  keys = list(pairs)
  tests = [t_test(pairs[k]) for k in keys]
  tosts = [tost(pairs[k], margin) for k in keys]
  p_holm, p_tost_holm = holm([p for _, p in tests]), holm(tosts)
  level = alpha / max(1, sum(not math.isnan(p) for _, p in tests))
  out = {}
  for i, k in enumerate(keys):
    p = pairs[k]
    low, high = t_interval(p)
    out[k] = Comparison(
        seeds=p.seeds, mean=p.mean, sd=p.sd, low=low, high=high, t=tests[i][0], p=tests[i][1],
        p_tost=tosts[i], p_holm=p_holm[i], p_tost_holm=p_tost_holm[i],
        detectable=detectable(p.sd, p.n, level, power),
        seeds_needed=seeds_for_margin(p.sd, margin, level, power),
        verdict=verdict(p_holm[i], p_tost_holm[i], alpha))
  return out


METHOD = (
    '**Statistics** (`experiments/stats.py`). Every comparison is a paired difference a − b over '
    'the seeds both sides ran (a seed fixes the data order and the initialisation\'s random '
    'stream for every model alike), given as its mean and 95% t-interval in nats. The report\'s '
    '{m} comparison(s) form one family, corrected by Holm\'s method at {alpha:g}. **equal**: the '
    'two one-sided tests (TOST) show the difference inside ±{margin:g} nats/token (1% of '
    'perplexity: a margin chosen from what is negligible for a language model\'s loss, below the '
    'gains architecture comparisons report as findings, and not from these results); '
    '**different**: not equal, and the paired t-test rejects 0 after correction; **undetermined '
    'at this power**: neither, with the smallest difference the design detects with {power:.0%} '
    'power and the seeds it would need to show ±{margin:g} (both at the level {alpha:g} / {m}, '
    'from the seeds\' own spread).\n')


def method(m: int) -> str:
  """The paragraph every report gives its statistics (m: comparisons in the report)."""
  return METHOD.format(m=m, alpha=ALPHA, margin=MARGIN, power=POWER)


def table_rows(comparisons: Mapping[str, Comparison]) -> list[list[str]]:
  """A Markdown row per comparison (header: TABLE_HEADER)."""
  rows = []
  for name, c in comparisons.items():
    need = '—' if c.n < 2 else str(c.seeds_needed) if c.seeds_needed else f'> {MAX_SEEDS:,}'
    rows.append([name, str(c.n), c.interval(), _p(c.p), _p(c.p_holm), _p(c.p_tost_holm),
                 f'{c.detectable:.4f}' if not math.isnan(c.detectable) else '—', need,
                 f'**{c.verdict}**' if c.verdict != UNDETERMINED else c.verdict])
  return rows


TABLE_HEADER = ('difference', 'seeds', 'mean [95% CI] (nats)', 'paired t p', 'Holm p',
                f'TOST ±{MARGIN:g} Holm p', f'detectable ({POWER:.0%} power)',
                f'seeds for ±{MARGIN:g}', 'verdict')


def _p(p: float) -> str:
  return '—' if math.isnan(p) else f'{p:.3g}'


def to_json(c: Comparison) -> dict:
  """A comparison as results.json keeps it."""
  return dataclasses.asdict(c)
