"""A synthetic source with real fast-slow structure and a known optimum.

A hidden regime z_t in {0..K-1} is a slow Markov chain: it stays with probability 1 - 1/R and
otherwise jumps to one of the other K-1 regimes uniformly (expected dwell R = `regime_period`
tokens; the stationary distribution is uniform). Tokens follow the current regime's first-order
Markov chain, x_t ~ A[z_t][x_{t-1}, :], with A[z] = (1 - c) B + c D[z] for contrast c =
`regime_contrast`: the regimes share the chain B and differ by their own D[z], all rows drawn once
from a Dirichlet(`concentration`) by `source_seed` (c = 1: independent chains). A window starts
from z_0 and x_0 uniform.

The default is fast-slow by construction: 16 regimes that dwell 1024 tokens (64 blocks of P = 16)
and differ by a quarter of their chains, so a token says little about the regime and the evidence
must be gathered over many blocks: at T = 128 the exact optimum is 3.50 nats, a predictor that sees
only the last 16 tokens 0.047 nats worse, one that ignores the regime (a bigram) 0.097 worse
(`optimal_log_probs` computes all three; `sources.Synthetic.headroom` reports them). The earlier setting (4 regimes switching every 16
tokens, independent chains, where the last block says all there is) is `num_regimes=4,
regime_period=16, regime_contrast=1`.

Random access: the randomness of window i of a split is a counter-based hash of
(source_seed, split, i, t), so window i is the same whatever the number of windows asked for, and
any set of windows is generated at once, vectorised over windows (a loop over t only).

The Bayes-optimal next-token loss is exact by forward filtering over z (an HMM whose emission
depends on the previous token), so evaluation reports the gap to the optimum.
"""

from __future__ import annotations

import functools

import numpy as np

SPLIT_IDS = {'train': 0, 'validation': 1}
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64 increment.


def _mix(z: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def _uniform(keys: np.ndarray, counter: int) -> np.ndarray:
  """Uniform float64 in [0, 1), one per key, for draw number `counter` of each window."""
  z = _mix(keys + np.uint64((counter + 1) * _GAMMA % 2**64))
  return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


class FastSlowSource:
  """The generative process: regime transitions S [K, K] and token chains A [K, V, V]."""

  def __init__(self, vocab_size: int, num_regimes: int, regime_period: float,
               concentration: float, seed: int, contrast: float = 1.0):
    K, V = num_regimes, vocab_size
    self.K, self.V, self.seed = K, V, seed
    self.switch = 1.0 / regime_period if K > 1 else 0.0
    self.S = np.full((K, K), self.switch / max(K - 1, 1))  # Jump to any other regime uniformly...
    np.fill_diagonal(self.S, 1.0 - self.switch)  # ...or stay.
    rng = np.random.default_rng(seed)
    self.A = rng.dirichlet(np.full(V, concentration), size=(K, V))  # D[z]: the regimes' own.
    if contrast < 1:  # Mixed with the chain B they share (drawn after D: c = 1 keeps D as is).
      self.A = (1 - contrast) * rng.dirichlet(np.full(V, concentration), size=V) + contrast * self.A
    # Inverse-CDF table: row r = z*V + x holds cumsum(A[z, x]) + r, so one searchsorted over the
    # flat table samples every window's next token at once.
    cum = np.cumsum(self.A, -1)
    cum[..., -1] = 1.0
    self._table = (cum + np.arange(K * V, dtype=np.float64).reshape(K, V, 1)).ravel()
    self._base_key = _mix(np.array([seed % 2**64], np.uint64) + np.uint64(_GAMMA))

  def sample(self, indices, length: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, regimes) of windows `indices` of `split`: each int32 [len(indices), length]."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    keys = _mix(_mix(self._base_key ^ np.uint64(SPLIT_IDS[split])) ^ idx.astype(np.uint64))
    z = np.empty((len(idx), length), np.int32)
    x = np.empty((len(idx), length), np.int32)
    z[:, 0] = np.minimum(_uniform(keys, 0) * self.K, self.K - 1)
    x[:, 0] = np.minimum(_uniform(keys, 1) * self.V, self.V - 1)
    for t in range(1, length):
      u_z, u_x = _uniform(keys, 2 * t), _uniform(keys, 2 * t + 1)
      jump = u_z < self.switch  # Conditional on a jump, u_z / switch is uniform again.
      other = np.minimum(u_z / max(self.switch, 1e-300) * (self.K - 1), self.K - 2).astype(np.int32)
      z[:, t] = np.where(jump, (z[:, t - 1] + 1 + other) % self.K, z[:, t - 1])
      row = z[:, t].astype(np.int64) * self.V + x[:, t - 1]
      pos = np.searchsorted(self._table, row + u_x, side='right') - row * self.V
      x[:, t] = np.clip(pos, 0, self.V - 1)
    return x, z

  def predictive_log_probs(self, tokens: np.ndarray) -> np.ndarray:
    """log p(x_t | x_<t) of the Bayes-optimal predictor, [num, length-1] for t = 1..length-1.

    Forward filtering: belief_t = p(z_t | x_<=t); the prior of step t is belief_{t-1} @ S and the
    emission is A[z][x_{t-1}, x_t]. x_0 is uniform whatever z_0, so belief_0 is uniform.
    """
    tokens = np.asarray(tokens, np.int64)
    num, length = tokens.shape
    belief = np.full((num, self.K), 1.0 / self.K)
    out = np.empty((num, length - 1))
    for t in range(1, length):
      belief, out[:, t - 1] = self._filter_step(belief, tokens[:, t - 1], tokens[:, t])
    return out

  def optimal_log_probs(self, tokens: np.ndarray, window: int | None = None) -> np.ndarray:
    """log p(x_t | the last `window` tokens) of the best predictor that sees only those, [num,
    length-1] for t = 1..length-1; None: the whole past (`predictive_log_probs`). Exact: at the
    window's first token s the regime's prior is p(z_s | x_s), from the joint marginal of
    (z_s, x_s) of a window started uniform, then filtering as above. `window=1` is the best
    predictor that cannot infer the regime (a bigram), `window=P` one that sees the last block."""
    tokens = np.asarray(tokens, np.int64)
    num, length = tokens.shape
    if window is None or window >= length - 1:
      return self.predictive_log_probs(tokens)
    marginals = [np.full((self.K, self.V), 1.0 / (self.K * self.V))]  # p(z_t, x_t).
    for _ in range(length - 1):
      marginals.append(np.einsum('zx,zy,yxv->yv', marginals[-1], self.S, self.A))
    out = np.empty((num, length - 1))
    for t in range(1, length):
      s = max(0, t - window)
      belief = marginals[s][:, tokens[:, s]].T
      belief = belief / belief.sum(-1, keepdims=True)
      for u in range(s + 1, t + 1):
        belief, log_p = self._filter_step(belief, tokens[:, u - 1], tokens[:, u])
      out[:, t - 1] = log_p
    return out

  def _filter_step(self, belief: np.ndarray, previous: np.ndarray, token: np.ndarray):
    """(p(z_t | ...x_t), log p(x_t | ...x_{t-1})) from p(z_{t-1} | ...x_{t-1}), for each row."""
    joint = (belief @ self.S) * self.A[:, previous, token].T  # [num, K]
    p = joint.sum(-1)
    return joint / p[:, None], np.log(p)


@functools.lru_cache(maxsize=8)
def source_for(vocab_size: int, num_regimes: int, regime_period: float, concentration: float,
               seed: int, contrast: float = 1.0) -> FastSlowSource:
  """The (cached) source of these generative parameters."""
  return FastSlowSource(vocab_size, num_regimes, regime_period, concentration, seed, contrast)


@functools.lru_cache(maxsize=4)
def windows(source: FastSlowSource, split: str, num: int, length: int) -> np.ndarray:
  """Windows 0..num-1 of `split`, [num, length], read-only, in the smallest unsigned dtype.

  Built once per (source, split, num, length): training and evaluation share it.
  """
  tokens, _ = source.sample(np.arange(num), length, split)
  tokens = tokens.astype(np.uint8 if source.V <= 256 else np.uint16 if source.V <= 65536
                         else np.int32)
  tokens.setflags(write=False)
  return tokens
