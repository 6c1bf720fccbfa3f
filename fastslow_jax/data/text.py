"""Byte-level token streams from local text files or TFDS datasets, read whole into memory.

Tokens are those of the byte tokenizer (`tokenizers.BYTE`): the UTF-8 bytes (0..255) plus
END_OF_DOCUMENT (256), which follows every document (each text file, each TFDS example):
vocabulary 257. Corpora too large for memory, or other tokenizers, go through `prepare` and the
`tokens` source instead. There is no BOS token; a window starting mid-text is
scored from its second token on, like any other. Streams are kept as uint16 (half of int32).

Splits are deterministic: validation is the last `val_fraction` of the concatenated stream (over
all files, in path order), train is everything before it. A TFDS dataset with its own validation
split uses it as is.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

from fastslow_jax.data.tokenizers import BYTE, END_OF_DOCUMENT, VOCAB_SIZE  # noqa: F401
from fastslow_jax.errors import UsageError


def encode_documents(documents) -> np.ndarray:
  """UTF-8 bytes of each document (str or bytes), each followed by END_OF_DOCUMENT, as uint16."""
  return BYTE.encode_documents(documents)


def resolve_paths(spec: str, field: str = 'data.path') -> list[str]:
  """Comma-separated paths or globs -> the list of files, in the given order (globs sorted).

  Errors name `field`, the flag or config field the spec came from.
  """
  paths = []
  for item in filter(None, (s.strip() for s in str(spec or '').split(','))):
    matches = sorted(glob.glob(os.path.expanduser(item)))
    if not matches:
      raise UsageError(f'{field}={item!r} matches no file: give existing text files '
                       '(comma-separated paths or globs).')
    paths.extend(m for m in matches if os.path.isfile(m))
  if not paths:
    raise UsageError(f'{field}={spec!r} names no text file: set it to one or more text files '
                     '(comma-separated paths or globs).')
  return paths


def read_text_files(spec: str) -> np.ndarray:
  """The token stream of the files in `spec`, in order."""
  documents = []
  for path in resolve_paths(spec):
    with open(path, 'rb') as f:
      documents.append(f.read())
  if not any(documents):
    raise UsageError(f'data.path={spec!r} holds only empty files: give files with text.')
  return encode_documents(documents)


def split_stream(stream: np.ndarray, val_fraction: float, split: str) -> np.ndarray:
  """The head (train) or the last `val_fraction` (validation) of a token stream."""
  cut = int(len(stream) * (1 - val_fraction))
  return stream[:cut] if split == 'train' else stream[cut:]


# ----------------------------------------------------------------------------------------- TFDS


def _one_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0]}' if text else type(e).__name__


def tfds_builder(name: str, data_dir: str):
  """The builder of a TFDS dataset prepared in `data_dir` (no download, no TensorFlow).

  A name whose builder code is not importable here is read from the files alone (TFDS's
  read-only builder), so any `name[/config][:version]` prepared in `data_dir` works.
  """
  import tensorflow_datasets as tfds  # Lazily: slow to import, and only this source needs it.
  from etils import epath

  if not name:
    raise UsageError('data.tfds_name is empty: set it to a TFDS dataset prepared (array_record) '
                     'in data.tfds_data_dir.')
  if data_dir and not epath.Path(data_dir).exists():
    raise UsageError(f'data.tfds_data_dir={data_dir!r} does not exist: point it at the directory '
                     'holding the prepared dataset.')
  where = f'data.tfds_data_dir={data_dir or "~/tensorflow_datasets"!r}'
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # DatasetNotFoundError, AssertionError (version), ...
    raise UsageError(f'data.tfds_name={name!r} is not found in {where} ({_one_line(e)}): fix the '
                     'name or prepare the dataset there with file_format=array_record.') from None
  if not builder.is_prepared():
    raise UsageError(f'data.tfds_name={name!r} is not prepared in {where}: prepare it there first '
                     f'(tfds build {name} --data_dir=... --file_format=array_record).')
  return builder


def _has_split(builder, split: str) -> bool:
  """Whether every part of a split expression ('train', 'train[:90%]+test') exists."""
  names = [re.split(r'[\[(]', part)[0].strip() for part in split.split('+')]
  return all(n in builder.info.splits for n in names)


def tfds_splits(cfg) -> tuple[object, str, str | None]:
  """(builder, train split, validation split or None when the dataset lacks it), checked."""
  builder = tfds_builder(cfg.tfds_name, cfg.tfds_data_dir)
  choices = sorted(builder.info.splits)
  if not _has_split(builder, cfg.tfds_train_split):
    raise UsageError(f'data.tfds_train_split={cfg.tfds_train_split!r} is not a split of '
                     f'{cfg.tfds_name!r}: choose one of {choices}.')
  val = cfg.tfds_val_split if _has_split(builder, cfg.tfds_val_split) else None
  return builder, cfg.tfds_train_split, val


def read_tfds(cfg, split: str) -> np.ndarray:
  """The token stream of `split` ('train' | 'validation') of the configured TFDS dataset.

  Validation reads `data.tfds_val_split`; when the dataset lacks it, validation is the last
  `data.val_fraction` of the train split's stream and train is the rest (disjoint).
  """
  builder, train, val = tfds_splits(cfg)
  if val is not None:
    source = tfds_source(builder, cfg, train if split == 'train' else val)
    return encode_documents(tfds_documents(source, cfg))
  stream = encode_documents(tfds_documents(tfds_source(builder, cfg, train), cfg))
  return split_stream(stream, cfg.val_fraction, split)


def tfds_source(builder, cfg, split: str):
  """The random-access source of one split (`len()` is its number of documents)."""
  try:
    return builder.as_data_source(split=split)
  except Exception as e:  # E.g. prepared as tfrecord, which has no random access.
    raise UsageError(f'data.tfds_name={cfg.tfds_name!r} split {split!r} cannot be read with '
                     f'random access ({_one_line(e)}): prepare it with file_format=array_record.'
                     ) from None


def tfds_documents(source, cfg):
  """The text feature of every record, in the dataset's (fixed) record order."""
  feature = cfg.tfds_text_feature
  for first in range(0, len(source), 1024):
    for example in source.__getitems__(list(range(first, min(first + 1024, len(source))))):
      if feature not in example:
        raise UsageError(f'data.tfds_text_feature={feature!r} is not a feature of '
                         f'{cfg.tfds_name!r}: choose one of {sorted(example)}.')
      yield example[feature]
