"""A synthetic source whose past keeps paying: a code fixed per window, read from faint evidence.

Each token is a pair x_t = a_t * 2M + c_t of a fast symbol and a code symbol:

- a_t in {0..A-1} (A = `long_range_symbols`) follows a first-order Markov chain whose rows are
  drawn from a Dirichlet(`concentration`) by `source_seed`, from a_0 uniform: the token-rate
  structure, the same in every window;
- c_t in {0..2M-1} (M = `long_range_bits`) is drawn independently at every position given the
  window's code z, M bits drawn uniformly once per window: a group g uniformly, then c = 2g + s
  with s = 1 at probability 1/2 + d (2 z_g - 1) (d = `long_range_bias`).

One code symbol is faint evidence of one bit, so the best predictor of the next code symbol keeps
improving with every token of context it has, until it has seen enough of each of the M groups:
the Bayes-optimal loss keeps falling with the context, far beyond a short window. What a short
window cannot know (the bits it saw too little of) is exactly what pooled summaries of the whole
past could recover.

Both optima are exact and cost O(T M) per window: the fast symbol's probability is the chain's;
the code symbol's is 1/M (1/2 + d (2s - 1)(2 p_g - 1)) with p_g the posterior of z_g = 1 from the
counts of 2g+1 and 2g in the context, log-odds (n_1 - n_0) log((1/2 + d) / (1/2 - d)). The
context is the whole past (the Bayes optimum) or the last w tokens (`window=w`).

Random access as in `synthetic.py`: window i of a split is a counter-based hash of
(source_seed, split, i, draw), the same whatever the number of windows asked for.
"""

from __future__ import annotations

import functools

import numpy as np

from fastslow_jax.data.synthetic import SPLIT_IDS, _GAMMA, _mix, _uniform


class LongRangeSource:
  """The generative process: the fast chain [A, A] and the code's groups and bias."""

  def __init__(self, symbols: int, bits: int, bias: float, concentration: float, seed: int):
    self.A, self.M, self.bias = symbols, bits, bias
    self.vocab_size = symbols * 2 * bits
    rng = np.random.default_rng([seed, 0x10C])  # Not the `synthetic` kind's draws.
    self.chain = rng.dirichlet(np.full(symbols, concentration), size=symbols)
    self._cum = np.cumsum(self.chain, -1)
    self._cum[:, -1] = 1.0
    self._base_key = _mix(np.array([seed % 2**64], np.uint64) + np.uint64(3 * _GAMMA % 2**64))

  def sample(self, indices, length: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [n, length], codes int32 [n, M]) of windows `indices` of `split`."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    keys = _mix(_mix(self._base_key ^ np.uint64(SPLIT_IDS[split])) ^ idx.astype(np.uint64))
    code = np.stack([_uniform(keys, j) < 0.5 for j in range(self.M)], -1).astype(np.int64)
    rows, n = np.arange(len(idx)), len(idx)
    a = np.empty((n, length), np.int64)
    a[:, 0] = np.minimum(_uniform(keys, self.M) * self.A, self.A - 1)
    c = np.empty((n, length), np.int64)
    for t in range(length):
      draw = lambda k: _uniform(keys, self.M + 1 + 3 * t + k)
      if t:
        a[:, t] = np.minimum((draw(0)[:, None] >= self._cum[a[:, t - 1]]).sum(-1), self.A - 1)
      group = np.minimum(draw(1) * self.M, self.M - 1).astype(np.int64)
      high = 0.5 + self.bias * (2 * code[rows, group] - 1)
      c[:, t] = 2 * group + (draw(2) < high)
    return (a * 2 * self.M + c).astype(np.int32), code.astype(np.int32)

  def optimal_log_probs(self, tokens: np.ndarray, window: int | None = None) -> np.ndarray:
    """log p(x_{t+1} | context) of the best predictor, [n, length-1] for t = 0..length-2: the
    context is the whole past (`window=None`, the Bayes optimum) or the last `window` tokens."""
    tokens = np.asarray(tokens, np.int64)
    n, length = tokens.shape
    a, c = tokens // (2 * self.M), tokens % (2 * self.M)
    # counts[:, k, s]: code symbol k among tokens 0..s-1 (s = 0: none yet).
    one_hot = np.zeros((n, 2 * self.M, length + 1))
    np.put_along_axis(one_hot[:, :, 1:], c[:, None], 1.0, axis=1)
    counts = np.cumsum(one_hot, -1)
    t = np.arange(length - 1)  # Predicting token t+1 from a context ending at token t.
    first = np.zeros_like(t) if window is None else np.maximum(t - window + 1, 0)
    seen = counts[:, :, t + 1] - counts[:, :, first]  # [n, 2M, length-1]: in tokens first..t.
    group = c[:, 1:] // 2  # The group of the token predicted.
    ones = np.take_along_axis(seen, (2 * group + 1)[:, None], 1)[:, 0]
    zeros = np.take_along_axis(seen, (2 * group)[:, None], 1)[:, 0]
    evidence = np.log((0.5 + self.bias) / (0.5 - self.bias))
    # p(z_g = 1 | context), the logistic of the log-odds (tanh: no overflow at long contexts).
    posterior = 0.5 * (1 + np.tanh(0.5 * (ones - zeros) * evidence))
    sign = 2 * (c[:, 1:] % 2) - 1
    code_p = (0.5 + self.bias * sign * (2 * posterior - 1)) / self.M
    return np.log(self.chain[a[:, :-1], a[:, 1:]]) + np.log(code_p)


@functools.lru_cache(maxsize=4)
def source_for(symbols: int, bits: int, bias: float, concentration: float,
               seed: int) -> LongRangeSource:
  """The (cached) source of these generative parameters."""
  return LongRangeSource(symbols, bits, bias, concentration, seed)


@functools.lru_cache(maxsize=4)
def windows(source: LongRangeSource, split: str, num: int, length: int) -> np.ndarray:
  """Windows 0..num-1 of `split`, [num, length], read-only, in the smallest unsigned dtype;
  built once per (source, split, num, length): training and evaluation share it."""
  tokens, _ = source.sample(np.arange(num), length, split)
  tokens = tokens.astype(np.uint8 if source.vocab_size <= 256 else np.uint16)
  tokens.setflags(write=False)
  return tokens
