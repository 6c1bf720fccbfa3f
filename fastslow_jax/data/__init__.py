"""Data: token windows from a synthetic source, local text, TFDS or prepared shards, via Grain.

    source = data.source(config.data)                     # the kind's table entry (sources.py)
    ds = source.open('train', seq_len=T)                  # TokenDataset: T+1 tokens per window
    it = data.make_iterator(ds, batch_size=local_batch, seed=0,
                            shard_index=jax.process_index(), shard_count=jax.process_count())
    batch = next(it)   # int32 [local_batch, T+1]; it.get_state() / it.set_state() resume it

The model trains on w[:-1] -> w[1:] of each window. Every process reads a disjoint shard of one
global order (a seeded shuffle, reshuffled each epoch) such that batch k of all processes together
is global batch k whatever the process count; the iterator state ({'next_index': n}) goes into the
checkpoint through `grain.checkpoint.CheckpointSave`.

The sources (`config.data.kind`, one table in `sources.py`; fields in `configs/schema.py`):
  synthetic  a hidden slow regime driving first-order Markov chains (`synthetic.py`), with the
             exact Bayes optimum. Unit: 'token'.
  ctmc       a continuous-time Markov chain driven by a slow sinusoid (`ctmc.py`). Unit: 'token'.
  long_range a code fixed per window, evidenced a little by every token (`long_range.py`): the
             Bayes optimum keeps falling with the context; exact optima with the whole past and
             with the last w tokens. Unit: 'token'.
  text       local files, UTF-8 bytes + END_OF_DOCUMENT (vocabulary 257; `text.py`). Unit: 'byte'.
  tfds       a TFDS dataset prepared as array_record, read without TensorFlow. Unit: 'byte'.
  tokens     a directory written by `python -m fastslow_jax.data.prepare` (`prepare.py`): any
             tokenizer (`tokenizers.py`), windows read from the shards on demand (`tokens.py`),
             so memory does not grow with the corpus. Unit: 'token'; `bytes_per_token` from the
             split's byte count gives bits per byte too (`bits`).

A run records its source's `fingerprint` and refuses other data with `check_tokenizer`; the
source's `tokenizer` encodes prompts and decodes samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastslow_jax.configs import schema
from fastslow_jax.data.sources import (SOURCES, SPLITS, Source, absolute_path, check_tokenizer,
                                       source)
from fastslow_jax.data.windows import TokenDataset, bits
from fastslow_jax.errors import UsageError

if TYPE_CHECKING:
  import grain


def make_dataset(cfg, *, seq_len: int, split: str) -> TokenDataset:
  """Random-access windows of `seq_len + 1` tokens of `split` of the source `cfg` (a data
  config, checked against its declarations) configures: `source(cfg).open(split, seq_len=...)`."""
  schema.check({'data': cfg})
  return source(cfg).open(split, seq_len=seq_len)


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
    raise UsageError(f'batch_size={batch_size}, shard_index={shard_index}, '
                     f'shard_count={shard_count} are invalid: need batch_size >= 1 and '
                     '0 <= shard_index < shard_count.')
  global_batch = batch_size * shard_count
  usable = len(dataset) - len(dataset) % global_batch
  if usable == 0:
    raise UsageError(f'the dataset has {len(dataset)} windows, fewer than one global batch '
                     f'({shard_count} x {batch_size}): use more data or a smaller batch_size.')
  ds = grain.MapDataset.source(dataset)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds[:usable][shard_index::shard_count].repeat(num_epochs)
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=np.stack)
  # Reading a window is a slice: a few threads and a short buffer keep memory small.
  options = grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)
  return iter(ds.to_iter_dataset(options))


__all__ = ['SOURCES', 'SPLITS', 'Source', 'TokenDataset', 'absolute_path', 'bits',
           'check_tokenizer', 'make_dataset', 'make_iterator', 'source']
