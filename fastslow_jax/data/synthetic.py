"""A synthetic source with real fast-slow structure and a known optimum.

A hidden regime z_t in {0..K-1} is a slow Markov chain: it stays with probability 1 - 1/R and
otherwise jumps to one of the other regimes uniformly (expected dwell R = `regime_period`
tokens). Tokens follow the current regime's first-order Markov chain: x_t ~ A[z_t][x_{t-1}, :],
with rows drawn from a Dirichlet(`concentration`). The regime can only be inferred from a stretch
of recent tokens, which is what a slow path summarising blocks of P tokens could pick up.

The Bayes-optimal next-token loss is exact by forward filtering over z (an HMM whose emission
depends on the previous token), so evaluation reports the gap to the optimum.
"""

from __future__ import annotations

import functools

import numpy as np

_SPLIT_IDS = {'train': 0, 'validation': 1}


class FastSlowSource:
  """The generative process: regime transition S [K, K] and token chains A [K, V, V]."""

  def __init__(self, vocab_size: int, num_regimes: int, regime_period: float,
               concentration: float, seed: int):
    if regime_period < 1:
      raise ValueError(f'data.regime_period={regime_period} is invalid: use a value >= 1 (tokens).')
    if num_regimes < 1 or vocab_size < 2:
      raise ValueError('data.num_regimes must be >= 1 and data.vocab_size >= 2.')
    rng = np.random.default_rng(seed)
    K, V = num_regimes, vocab_size
    switch = 1.0 / regime_period if K > 1 else 0.0
    self.S = np.full((K, K), switch / max(K - 1, 1))  # Jump to any other regime uniformly...
    np.fill_diagonal(self.S, 1.0 - switch)  # ...or stay.
    self.A = rng.dirichlet(np.full(V, concentration), size=(K, V))  # [K, V, V]
    self.K, self.V, self.seed = K, V, seed

  def sample(self, num: int, length: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, regimes), each int32 [num, length], deterministic in (seed, split)."""
    rng = np.random.default_rng([self.seed, _SPLIT_IDS[split]])
    z = np.empty((num, length), np.int64)
    x = np.empty((num, length), np.int64)
    z[:, 0] = rng.integers(0, self.K, num)
    x[:, 0] = rng.integers(0, self.V, num)
    cum_S, cum_A = np.cumsum(self.S, -1), np.cumsum(self.A, -1)
    for t in range(1, length):
      u = rng.random((2, num, 1))
      z[:, t] = np.minimum((u[0] > cum_S[z[:, t - 1]]).sum(-1), self.K - 1)
      x[:, t] = np.minimum((u[1] > cum_A[z[:, t], x[:, t - 1]]).sum(-1), self.V - 1)
    return x.astype(np.int32), z.astype(np.int32)

  def predictive_log_probs(self, tokens: np.ndarray) -> np.ndarray:
    """log p(x_t | x_<t) of the Bayes-optimal predictor, [num, length-1] for t = 1..length-1."""
    num, length = tokens.shape
    belief = np.full((num, self.K), 1.0 / self.K)  # p(z_0 | x_0): x_0 carries no information.
    out = np.empty((num, length - 1))
    for t in range(1, length):
      prior = belief @ self.S  # p(z_t | x_<t)
      emit = self.A[:, tokens[:, t - 1], tokens[:, t]].T  # [num, K]: A_z[x_{t-1}, x_t]
      joint = prior * emit
      p = joint.sum(-1)
      out[:, t - 1] = np.log(p)
      belief = joint / p[:, None]
    return out


@functools.lru_cache(maxsize=8)
def source_for(vocab_size, num_regimes, regime_period, concentration, seed) -> FastSlowSource:
  return FastSlowSource(vocab_size, num_regimes, regime_period, concentration, seed)


@functools.lru_cache(maxsize=8)
def windows(source: FastSlowSource, num: int, length: int, split: str) -> np.ndarray:
  """The split's `num` windows of `length` tokens (generated once, vectorised over windows)."""
  tokens, _ = source.sample(num, length, split)
  tokens.setflags(write=False)
  return tokens
