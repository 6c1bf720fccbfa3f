"""Data: token windows from a synthetic source, local text, TFDS or prepared shards, via Grain.

    ds = data.make_dataset(config.data, seq_len=T, split='train')   # TokenDataset: T+1 tokens each
    it = data.make_iterator(ds, batch_size=local_batch, seed=0,
                            shard_index=jax.process_index(), shard_count=jax.process_count())
    batch = next(it)   # int32 [local_batch, T+1]; it.get_state() / it.set_state() resume it

The model trains on w[:-1] -> w[1:] of each window. Every process reads a disjoint shard of one
global order (a seeded shuffle, reshuffled each epoch) such that batch k of all processes together
is global batch k whatever the process count; the iterator state ({'next_index': n}) goes into the
checkpoint through `grain.checkpoint.CheckpointSave`.

Sources (`config.data.kind`, fields in `fastslow_jax/configs/common.py`):
  synthetic  a hidden slow regime driving first-order Markov chains (`synthetic.py`); vocabulary
             `data.vocab_size`; `bayes_optimal_ce` gives the exact optimum. Unit: 'token'.
  text       local files, UTF-8 bytes + END_OF_DOCUMENT (vocabulary 257; `text.py`). Unit: 'byte'.
  tfds       a TFDS dataset prepared as array_record, read without TensorFlow. Unit: 'byte'.
  tokens     a directory written by `python -m fastslow_jax.data.prepare` (`prepare.py`): any
             tokenizer (`tokenizers.py`), windows read from the shards on demand (`tokens.py`),
             so memory does not grow with the corpus. Unit: 'token'; `bytes_per_token` from the
             split's byte count gives bits per byte too (`bits`).

A run records `tokenizer_fingerprint(cfg)` and refuses other data with `check_tokenizer`;
`tokenizer_for(cfg)` encodes prompts and decodes samples.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from fastslow_jax.configs import ranges
from fastslow_jax.configs.common import default_data_config
from fastslow_jax.data import synthetic, text, tokenizers, tokens

KINDS = ('synthetic', 'text', 'tfds', 'tokens')
SPLITS = tokens.SPLITS  # Named by the prepared-dataset layout.

if TYPE_CHECKING:
  import grain


def absolute_path(spec: str) -> str:
  """`data.path` with each comma-separated local entry (a file, glob or directory) made absolute,
  so that a run's recorded config works from any directory; remote entries (gs://...) and ''
  stay as they are."""
  items = [s.strip() for s in str(spec or '').split(',') if s.strip()]
  return ','.join(i if '://' in i else os.path.abspath(os.path.expanduser(i)) for i in items)


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


def _check_kind(cfg) -> None:
  if cfg.kind not in KINDS:
    raise ValueError(f'data.kind={cfg.kind!r} is unknown: choose one of {", ".join(KINDS)}.')


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f'split={split!r} is unknown: choose one of {", ".join(SPLITS)}.')


def _synthetic_source(cfg) -> synthetic.FastSlowSource:
  return synthetic.source_for(int(cfg.vocab_size), int(cfg.num_regimes), float(cfg.regime_period),
                              float(cfg.concentration), int(cfg.source_seed))


def vocab_size(cfg: ml_collections.ConfigDict) -> int:
  """Vocabulary size of the configured source, without reading any data (= ds.vocab_size)."""
  _check_kind(cfg)
  if cfg.kind == 'tokens':
    return int(tokens.read_manifest(cfg.path)['tokenizer']['vocab_size'])
  return int(cfg.vocab_size) if cfg.kind == 'synthetic' else text.VOCAB_SIZE


def tokenizer_for(cfg: ml_collections.ConfigDict) -> tokenizers.Tokenizer:
  """The tokenizer of the configured source (to encode prompts, decode samples): the byte
  tokenizer for text and tfds, the prepared dataset's for tokens, ids written as text (no end of
  document) for synthetic."""
  _check_kind(cfg)
  if cfg.kind == 'tokens':
    return tokens.tokenizer(cfg.path)
  if cfg.kind == 'synthetic':
    return tokenizers.IdsTokenizer(int(cfg.vocab_size))
  return tokenizers.BYTE


def tokenizer_fingerprint(cfg: ml_collections.ConfigDict) -> str | None:
  """The configured source's tokenizer id ('bpe-1f2e...'), None for synthetic: written into a
  run's config.json and compared by `check_tokenizer` on resume. Reads dataset.json only."""
  _check_kind(cfg)
  if cfg.kind == 'tokens':
    return tokens.read_manifest(cfg.path)['tokenizer']['fingerprint']
  return None if cfg.kind == 'synthetic' else tokenizers.BYTE.fingerprint


def check_tokenizer(cfg: ml_collections.ConfigDict, trained_with: str | None,
                    where: str = 'the workdir', fix: str = 'or a new --workdir') -> None:
  """Refuses data tokenized otherwise than the run `trained_with` (its recorded fingerprint;
  None: nothing recorded, anything goes). One-line ValueError naming data.path and the fix
  (`fix` completes 'use data prepared with the same tokenizer')."""
  now = tokenizer_fingerprint(cfg)
  if trained_with is None or now == trained_with:
    return
  source = (f'data.path={cfg.path!r}' if cfg.kind in ('text', 'tokens')
            else f'data.kind={cfg.kind!r}')
  raise ValueError(f'{where} was trained on tokenizer {trained_with}, but {source} has '
                   f'{now}: use data prepared with the same tokenizer{", " + fix if fix else ""}.')


def bits(dataset: TokenDataset, loss: float) -> dict[str, float]:
  """A mean loss (nats per token) in bits: per byte of text where the split's byte count is
  known (comparable across tokenizers), per token otherwise, and both for `tokens`."""
  out = {}
  if dataset.bits_per_token_unit == 'token':
    out['bits_per_token'] = loss / math.log(2)
  if dataset.bytes_per_token is not None:
    out['bits_per_byte'] = loss / dataset.bytes_per_token / math.log(2)
  return out


def make_dataset(cfg: ml_collections.ConfigDict, *, seq_len: int, split: str) -> TokenDataset:
  """Random-access windows of `seq_len + 1` tokens of `split` ('train' | 'validation').

  Config and input errors (unknown kind, missing / empty / too short text, missing TFDS data) are
  ValueErrors of one line naming the `data.*` field and the fix.
  """
  _check_kind(cfg)
  _check_split(split)
  if seq_len < 1:
    raise ValueError(f'seq_len={seq_len} is invalid: use a positive integer.')
  if cfg.kind == 'synthetic':
    field = 'num_train_windows' if split == 'train' else 'num_val_windows'
    ranges.check_value(f'data.{field}', cfg[field])
    num = cfg[field]
    windows = synthetic.windows(_synthetic_source(cfg), split, num, seq_len + 1)
    return TokenDataset(windows.reshape(-1), seq_len=seq_len, stride=seq_len + 1,
                        vocab_size=int(cfg.vocab_size), bits_per_token_unit='token',
                        name=f'synthetic {split}')
  if cfg.kind == 'tokens':
    stream, info = tokens.open_split(cfg.path, split)
    what, fix = f'data.path={cfg.path!r}', ' or prepare with a larger --val_fraction'
  elif cfg.kind == 'text':
    stream = text.split_stream(text.read_text_files(cfg.path), cfg.val_fraction, split)
    what, fix = f'data.path={cfg.path!r}', ' or a larger data.val_fraction'
  else:
    stream = text.read_tfds(cfg, split)
    what, fix = f'data.tfds_name={cfg.tfds_name!r}', ' or a larger data.val_fraction'
  if len(stream) < seq_len + 1:
    fix = fix if split == 'validation' else ''
    raise ValueError(f'{what} gives {len(stream)} {split} tokens, fewer than one window of '
                     f'{seq_len + 1}: use more text, a smaller model.seq_len{fix}.')
  if cfg.kind == 'tokens':
    return TokenDataset(stream, seq_len=seq_len, stride=seq_len, vocab_size=stream.vocab_size,
                        bits_per_token_unit='token', name=f'{what} {split}',
                        bytes_per_token=info['bytes'] / info['tokens'])
  return TokenDataset(stream, seq_len=seq_len, stride=seq_len, vocab_size=text.VOCAB_SIZE,
                      bits_per_token_unit='byte', name=f'{what} {split}', bytes_per_token=1.0)


def make_iterator(dataset, *, batch_size: int, seed: int, shard_index: int = 0,
                  shard_count: int = 1, shuffle: bool = True,
                  num_epochs: int | None = None) -> grain.DatasetIterator:
  """Batches int32 [batch_size, T+1] of this process's shard; checkpointable, resumes exactly.

  One global order for all processes: a shuffle by `seed` (reshuffled every epoch; the identity
  when `shuffle=False`), cut to a whole number of global batches (batch_size * shard_count) per
  epoch; process `shard_index` takes every `shard_count`-th window of it. Shards are disjoint,
  batch k of all shards together is global batch k, and no batch straddles two epochs.
  `num_epochs=None` repeats forever. The state is {'next_index': batches * batch_size}.
  """
  import grain  # Here, not at the top: prepare's worker processes import this package too.

  if batch_size < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f'batch_size={batch_size}, shard_index={shard_index}, '
                     f'shard_count={shard_count} are invalid: need batch_size >= 1 and '
                     '0 <= shard_index < shard_count.')
  global_batch = batch_size * shard_count
  usable = len(dataset) - len(dataset) % global_batch
  if usable == 0:
    raise ValueError(f'the dataset has {len(dataset)} windows, fewer than one global batch '
                     f'({shard_count} x {batch_size}): use more data or a smaller batch_size.')
  ds = grain.MapDataset.source(dataset)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds[:usable][shard_index::shard_count].repeat(num_epochs)
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=np.stack)
  # Reading a window is a slice: a few threads and a short buffer keep memory small.
  options = grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)
  return iter(ds.to_iter_dataset(options))


def bayes_optimal_ce_per_position(cfg: ml_collections.ConfigDict, *, seq_len: int,
                                  num_windows: int | None = None,
                                  split: str = 'validation') -> np.ndarray:
  """Bayes-optimal loss (nats) at each predicted position t = 1..seq_len, float64 [seq_len],
  averaged over windows 0..num_windows-1 of the synthetic `split` (default: all of its windows).
  """
  if cfg.kind != 'synthetic':
    raise ValueError(f'bayes_optimal_ce needs data.kind=synthetic, not {cfg.kind!r}.')
  _check_split(split)
  if num_windows is None:
    num_windows = cfg.num_train_windows if split == 'train' else cfg.num_val_windows
  source = _synthetic_source(cfg)
  tokens, _ = source.sample(np.arange(int(num_windows)), seq_len + 1, split)
  return -source.predictive_log_probs(tokens).mean(0)


def bayes_optimal_ce(cfg: ml_collections.ConfigDict, *, seq_len: int,
                     num_windows: int | None = None, split: str = 'validation') -> float:
  """Mean Bayes-optimal loss (nats per predicted token) over windows 0..num_windows-1 of the
  synthetic `split`, scored like the model: predicting w[1:] from w[:-1]. With `shuffle=False`
  these are exactly the windows of the first num_windows / global_batch evaluation batches.
  """
  per_position = bayes_optimal_ce_per_position(cfg, seq_len=seq_len, num_windows=num_windows,
                                               split=split)
  return float(per_position.mean())


__all__ = ['KINDS', 'SPLITS', 'TokenDataset', 'bayes_optimal_ce', 'bayes_optimal_ce_per_position',
           'bits', 'check_tokenizer', 'default_data_config', 'make_dataset', 'make_iterator',
           'tokenizer_fingerprint', 'tokenizer_for', 'vocab_size']
