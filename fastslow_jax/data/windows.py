"""Random-access windows of a token stream: what every data source opens a split as."""

from __future__ import annotations

import math

import numpy as np


class TokenDataset:
  """Random-access windows of `seq_len + 1` tokens (a Grain RandomAccessDataSource).

  Window i is stream[i * stride : i * stride + seq_len + 1] as int32. Text streams use stride
  seq_len (consecutive windows share one token, so every token is a target once); synthetic
  windows are independent sequences laid end to end (stride seq_len + 1). `stream` is an array,
  or for `tokens` a `tokens.ShardedStream` read on demand. `bytes_per_token`: UTF-8 bytes of text
  per token over the split (1 for byte-level text, None for synthetic tokens).
  """

  def __init__(self, stream: np.ndarray, *, seq_len: int, stride: int, vocab_size: int,
               bits_per_token_unit: str, name: str, bytes_per_token: float | None = None):
    self.stream, self.seq_len, self.stride = stream, seq_len, stride
    self.vocab_size, self.bits_per_token_unit, self.name = vocab_size, bits_per_token_unit, name
    self.bytes_per_token = bytes_per_token
    self._len = max(0, (len(stream) - seq_len - 1) // stride + 1)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> np.ndarray:
    index = int(index)
    if not 0 <= index < self._len:
      raise IndexError(f'window {index} of {self._len}')
    start = index * self.stride
    return self.stream[start:start + self.seq_len + 1].astype(np.int32)

  def __repr__(self) -> str:
    return f'TokenDataset({self.name}, {self._len} windows of {self.seq_len + 1} tokens)'


def bits(dataset: TokenDataset, loss: float) -> dict[str, float]:
  """A mean loss (nats per token) in bits: per byte of text where the split's byte count is
  known (comparable across tokenizers), per token otherwise, and both for `tokens`."""
  out = {}
  if dataset.bits_per_token_unit == 'token':
    out['bits_per_token'] = loss / math.log(2)
  if dataset.bytes_per_token is not None:
    out['bits_per_byte'] = loss / dataset.bytes_per_token / math.log(2)
  return out
