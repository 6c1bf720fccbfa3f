"""A synthetic source whose fast dynamics are exactly a linear generator: the setting of the
paper's equilibrium-manifold theorem, so the stationary distribution p_st(y) is known.

Tokens are the states of a continuous-time Markov chain over V states, observed at unit time
steps. Its generator depends linearly on a slow scalar y in [0, 1]:

    Q(y) = Q0 + y * Q1,   Q0 = Qa, Q1 = Qb - Qa,

with Qa and Qb valid generators (non-negative off-diagonal rates, rows summing to zero), so Q(y)
is a valid generator for every y in [0, 1] (a convex combination). Between tokens t-1 and t the
chain runs for unit time under Q(y_t): x_t ~ expm(Q(y_t))[x_{t-1}, :]. The slow variable follows
a sinusoid with a random period L (log-uniform in `period_range` tokens) and phase per window,
y_t = (1 + sin(2 pi t / L + phase)) / 2, quantised to `levels` + 1 grid values (the quantised y is
the true one: transition matrices and p_st are exact on the grid). A window starts in the
stationary distribution p_st(y_0), where p_st(y) is the normalised null vector of Q(y)^T.

Rates: off-diagonal rate i -> j is gamma(1) * w_j with attraction weights w ~ Dirichlet(
`concentration`), one draw for Qa and one for Qb (so p_st(0) and p_st(1) differ), scaled so the
mean exit rate is `rate`; the chain then relaxes within a few tokens (`relaxation_time`), much
faster than y drifts.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import linalg

from fastslow_jax.errors import UsageError


def stationary(Q: np.ndarray) -> np.ndarray:
  """The stationary distribution of generator Q: p Q = 0, sum p = 1 (exact linear solve)."""
  V = Q.shape[0]
  A = np.vstack([Q.T, np.ones((1, V))])
  b = np.zeros(V + 1)
  b[-1] = 1.0
  p, *_ = np.linalg.lstsq(A, b, rcond=None)
  p = np.clip(p, 0, None)
  return p / p.sum()


class CTMCSource:
  """Windows of tokens from the CTMC with generator Q(y) = Q0 + y Q1 and slowly varying y."""

  def __init__(self, vocab_size: int = 16, *, levels: int = 256,
               period_range: tuple[float, float] = (384.0, 1536.0), rate: float = 1.0,
               concentration: float = 0.5, seed: int = 0):
    if vocab_size < 2 or levels < 1 or not 0 < period_range[0] <= period_range[1] or rate <= 0:
      raise UsageError('CTMCSource needs vocab_size >= 2, levels >= 1, 0 < period_range[0] <= '
                       'period_range[1] and rate > 0.')
    rng = np.random.default_rng(seed)
    V = vocab_size
    self.V, self.levels, self.period_range, self.seed = V, levels, period_range, seed
    self.rate, self.concentration = rate, concentration
    self.Qa, self.Qb = (self._generator(rng, V, rate, concentration) for _ in range(2))
    self.Q0, self.Q1 = self.Qa, self.Qb - self.Qa
    self.grid = np.linspace(0.0, 1.0, levels + 1)
    self.M = np.stack([linalg.expm(self.Q(y)) for y in self.grid])  # [G, V, V] per-token.
    self.M = np.clip(self.M, 0, None)
    self.M /= self.M.sum(-1, keepdims=True)
    self.p_st = np.stack([stationary(self.Q(y)) for y in self.grid])  # [G, V]
    self._cum = np.cumsum(self.M, -1)
    self._cum[..., -1] = 1.0

  @staticmethod
  def _generator(rng, V: int, rate: float, concentration: float) -> np.ndarray:
    w = rng.dirichlet(np.full(V, concentration))
    rates = rng.gamma(1.0, size=(V, V)) * w[None, :]
    np.fill_diagonal(rates, 0.0)
    rates *= rate / rates.sum(1).mean()
    return rates - np.diag(rates.sum(1))

  def Q(self, y: float) -> np.ndarray:
    """The generator at slow value y (valid for y in [0, 1])."""
    return self.Q0 + y * self.Q1

  def stationary(self, y: float) -> np.ndarray:
    """p_st(y), exactly, for any y in [0, 1] (not only grid values)."""
    return stationary(self.Q(y))

  def relaxation_time(self) -> float:
    """Largest 1 / spectral gap of Q(y) over the grid: the fast chain's slowest relaxation, in
    tokens (unit time per token)."""
    gaps = []
    for y in self.grid[:: max(1, self.levels // 16)]:
      ev = np.sort(np.real(np.linalg.eigvals(self.Q(y))))[::-1]
      gaps.append(-ev[1])
    return float(1.0 / min(gaps))

  def sample(self, rng: np.random.Generator, num: int, length: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [num, length], y-grid levels int32 [num, length]) of `num` fresh windows."""
    lo, hi = np.log(self.period_range[0]), np.log(self.period_range[1])
    period = np.exp(rng.uniform(lo, hi, num))[:, None]
    phase = rng.uniform(0, 2 * np.pi, num)[:, None]
    y = 0.5 * (1 + np.sin(2 * np.pi * np.arange(length)[None, :] / period + phase))
    level = np.rint(y * self.levels).astype(np.int32)
    u = rng.random((num, length))
    x = np.empty((num, length), np.int32)
    first = np.cumsum(self.p_st[level[:, 0]], -1)
    x[:, 0] = np.minimum((u[:, :1] > first).sum(-1), self.V - 1)
    for t in range(1, length):
      cum = self._cum[level[:, t], x[:, t - 1]]  # [num, V]
      x[:, t] = np.minimum((u[:, t:t + 1] > cum).sum(-1), self.V - 1)
    return x, level

  def oracle_log_probs(self, tokens: np.ndarray, level: np.ndarray) -> np.ndarray:
    """log p(x_t | x_{t-1}, y_t) [num, length-1]: the loss of a predictor told y (a lower bound
    on the Bayes-optimal loss, which must infer y from the tokens)."""
    return np.log(self.M[level[:, 1:], tokens[:, :-1], tokens[:, 1:]])


@functools.lru_cache(maxsize=4)
def source_for(vocab_size: int, *, levels: int, period_range: tuple[float, float], rate: float,
               concentration: float, seed: int) -> CTMCSource:
  """The (cached) source of these generative parameters."""
  return CTMCSource(vocab_size, levels=levels, period_range=period_range, rate=rate,
                    concentration=concentration, seed=seed)
