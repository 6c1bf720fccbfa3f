"""Data: token windows from a synthetic fast-slow source, local text or TFDS, through Grain.

    ds = data.make_dataset(config.data, seq_len=T, split='train')   # windows of T+1 tokens
    it = data.make_iterator(ds, batch_size=local_batch, seed=0,
                            shard_index=jax.process_index(), shard_count=jax.process_count())
    batch = next(it)   # int32 [local_batch, T+1]; it.get_state() / it.set_state() resume it

Every process reads a disjoint shard of a globally shuffled order (reshuffled each epoch), and the
iterator state goes into the checkpoint (`grain.checkpoint.CheckpointSave`).
"""

from __future__ import annotations

import grain
import ml_collections
import numpy as np

from fastslow_jax.data import synthetic, text
from fastslow_jax.data.config import KINDS, default_data_config

SPLITS = ('train', 'validation')


class SyntheticDataset:
  """Windows of the synthetic fast-slow source."""

  bits_per_token_unit = 'token'

  def __init__(self, cfg: ml_collections.ConfigDict, seq_len: int, split: str):
    self.source = _synthetic_source(cfg)
    num = cfg.num_train_windows if split == 'train' else cfg.num_val_windows
    self.tokens = synthetic.windows(self.source, int(num), seq_len + 1, split)
    self.vocab_size = self.source.V

  def __len__(self) -> int:
    return len(self.tokens)

  def __getitem__(self, index: int) -> np.ndarray:
    return self.tokens[int(index)]


def _check_kind(cfg) -> None:
  if cfg.kind not in KINDS:
    raise ValueError(f'data.kind={cfg.kind!r} is unknown: choose one of {", ".join(KINDS)}.')


def _synthetic_source(cfg) -> synthetic.FastSlowSource:
  return synthetic.source_for(int(cfg.vocab_size), int(cfg.num_regimes), float(cfg.regime_period),
                              float(cfg.concentration), int(cfg.source_seed))


def vocab_size(cfg: ml_collections.ConfigDict) -> int:
  """Vocabulary size of the configured source, without reading any data."""
  _check_kind(cfg)
  return int(cfg.vocab_size) if cfg.kind == 'synthetic' else text.VOCAB_SIZE


def make_dataset(cfg: ml_collections.ConfigDict, *, seq_len: int, split: str):
  """Random-access windows of `seq_len + 1` tokens of `split` ('train' | 'validation')."""
  _check_kind(cfg)
  if split not in SPLITS:
    raise ValueError(f'split={split!r} is unknown: choose one of {SPLITS}.')
  if cfg.kind == 'synthetic':
    return SyntheticDataset(cfg, seq_len, split)
  if cfg.kind == 'text':
    stream = text.split_stream(text.read_text_files(cfg.path), cfg.val_fraction, split)
    return text.WindowDataset(stream, seq_len, f'data.path={cfg.path!r} ({split} split)')
  if not cfg.tfds_name:
    raise ValueError('data.tfds_name is empty: set it to a prepared TFDS dataset name.')
  tfds_split = cfg.tfds_train_split if split == 'train' else cfg.tfds_val_split
  try:
    stream = text.read_tfds(cfg.tfds_name, cfg.tfds_data_dir, tfds_split, cfg.tfds_text_feature)
  except ValueError:
    if split != 'validation' or not _tfds_has_split(cfg, cfg.tfds_train_split):
      raise
    # No validation split: hold out the tail of train (the train split then drops that tail).
    stream = text.read_tfds(cfg.tfds_name, cfg.tfds_data_dir, cfg.tfds_train_split,
                            cfg.tfds_text_feature)
    stream = text.split_stream(stream, cfg.val_fraction, split)
  else:
    if split == 'train' and not _tfds_has_split(cfg, cfg.tfds_val_split):
      stream = text.split_stream(stream, cfg.val_fraction, split)
  return text.WindowDataset(stream, seq_len, f'data.tfds_name={cfg.tfds_name!r} ({split} split)')


def _tfds_has_split(cfg, split: str) -> bool:
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(cfg.tfds_name, data_dir=cfg.tfds_data_dir or None)
    return split in builder.info.splits
  except Exception:  # Missing dataset: the caller reports it.
    return False


def make_iterator(dataset, *, batch_size: int, seed: int, shard_index: int = 0,
                  shard_count: int = 1, shuffle: bool = True,
                  num_epochs: int | None = None) -> grain.DatasetIterator:
  """Batches [batch_size, T+1] of this process's shard; checkpointable, resumes exactly.

  The order is a global shuffle (same `seed` on every process, reshuffled each epoch), of which
  process `shard_index` takes every `shard_count`-th window: shards are disjoint.
  """
  if len(dataset) < shard_count * batch_size:
    raise ValueError(f'the dataset has {len(dataset)} windows, fewer than one global batch '
                     f'({shard_count} x {batch_size}): use more data or a smaller batch_size.')
  ds = grain.MapDataset.source(dataset)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds[shard_index::shard_count].repeat(num_epochs)
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=np.stack)
  return iter(ds.to_iter_dataset())


def bayes_optimal_ce(cfg: ml_collections.ConfigDict, *, seq_len: int, num_windows: int | None = None,
                     split: str = 'validation') -> float:
  """Mean Bayes-optimal loss (nats per predicted token) over the first `num_windows` windows of
  the synthetic `split`, scored like the model: predicting w[1:] from w[:-1]."""
  if cfg.kind != 'synthetic':
    raise ValueError(f'bayes_optimal_ce needs data.kind=synthetic, not {cfg.kind!r}.')
  tokens = make_dataset(cfg, seq_len=seq_len, split=split).tokens[:num_windows]
  return float(-_synthetic_source(cfg).predictive_log_probs(tokens).mean())


__all__ = ['KINDS', 'SPLITS', 'bayes_optimal_ce', 'default_data_config', 'make_dataset',
           'make_iterator', 'vocab_size']
