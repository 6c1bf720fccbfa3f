"""Byte-level token streams from local text files or TFDS datasets.

Tokens are the UTF-8 bytes (0..255) plus END_OF_DOCUMENT (256), which follows every document (each
text file, each TFDS example): vocabulary 257. There is no BOS token; a window starting mid-text is
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

from fastslow_jax.configs import ranges

END_OF_DOCUMENT = 256
VOCAB_SIZE = 257


def encode_documents(documents) -> np.ndarray:
  """UTF-8 bytes of each document (str or bytes), each followed by END_OF_DOCUMENT, as uint16."""
  parts = []
  for doc in documents:
    raw = doc.encode('utf-8') if isinstance(doc, str) else bytes(doc)
    parts += [np.frombuffer(raw, np.uint8), np.array([END_OF_DOCUMENT], np.uint16)]
  return np.concatenate(parts).astype(np.uint16) if parts else np.zeros((0,), np.uint16)


def resolve_paths(spec: str) -> list[str]:
  """Comma-separated paths or globs -> the list of files, in the given order (globs sorted)."""
  paths = []
  for item in filter(None, (s.strip() for s in str(spec or '').split(','))):
    matches = sorted(glob.glob(os.path.expanduser(item)))
    if not matches:
      raise ValueError(f'data.path={item!r} matches no file: give existing text files '
                       '(comma-separated paths or globs).')
    paths.extend(m for m in matches if os.path.isfile(m))
  if not paths:
    raise ValueError(f'data.path={spec!r} names no text file: set --config.data.path to one or '
                     'more text files (comma-separated paths or globs).')
  return paths


def read_text_files(spec: str) -> np.ndarray:
  """The token stream of the files in `spec`, in order."""
  documents = []
  for path in resolve_paths(spec):
    with open(path, 'rb') as f:
      documents.append(f.read())
  if not any(documents):
    raise ValueError(f'data.path={spec!r} holds only empty files: give files with text.')
  return encode_documents(documents)


def split_stream(stream: np.ndarray, val_fraction: float, split: str) -> np.ndarray:
  """The head (train) or the last `val_fraction` (validation) of a token stream."""
  ranges.check_value('data.val_fraction', val_fraction)
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
    raise ValueError('data.tfds_name is empty: set it to a TFDS dataset prepared (array_record) '
                     'in data.tfds_data_dir.')
  if data_dir and not epath.Path(data_dir).exists():
    raise ValueError(f'data.tfds_data_dir={data_dir!r} does not exist: point it at the directory '
                     'holding the prepared dataset.')
  where = f'data.tfds_data_dir={data_dir or "~/tensorflow_datasets"!r}'
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # DatasetNotFoundError, AssertionError (version), ...
    raise ValueError(f'data.tfds_name={name!r} is not found in {where} ({_one_line(e)}): fix the '
                     'name or prepare the dataset there with file_format=array_record.') from None
  if not builder.is_prepared():
    raise ValueError(f'data.tfds_name={name!r} is not prepared in {where}: prepare it there first '
                     f'(tfds build {name} --data_dir=... --file_format=array_record).')
  return builder


def _has_split(builder, split: str) -> bool:
  """Whether every part of a split expression ('train', 'train[:90%]+test') exists."""
  names = [re.split(r'[\[(]', part)[0].strip() for part in split.split('+')]
  return all(n in builder.info.splits for n in names)


def read_tfds(cfg, split: str) -> np.ndarray:
  """The token stream of `split` ('train' | 'validation') of the configured TFDS dataset.

  Validation reads `data.tfds_val_split`; when the dataset lacks it, validation is the last
  `data.val_fraction` of the train split's stream and train is the rest (disjoint).
  """
  builder = tfds_builder(cfg.tfds_name, cfg.tfds_data_dir)
  choices = sorted(builder.info.splits)
  if not _has_split(builder, cfg.tfds_train_split):
    raise ValueError(f'data.tfds_train_split={cfg.tfds_train_split!r} is not a split of '
                     f'{cfg.tfds_name!r}: choose one of {choices}.')
  if _has_split(builder, cfg.tfds_val_split):
    name = cfg.tfds_train_split if split == 'train' else cfg.tfds_val_split
    return _read_split(builder, cfg, name)
  return split_stream(_read_split(builder, cfg, cfg.tfds_train_split), cfg.val_fraction, split)


def _read_split(builder, cfg, split: str) -> np.ndarray:
  """All documents of one split, in the dataset's (deterministic) record order."""
  try:
    source = builder.as_data_source(split=split)
  except Exception as e:  # E.g. prepared as tfrecord, which has no random access.
    raise ValueError(f'data.tfds_name={cfg.tfds_name!r} split {split!r} cannot be read with '
                     f'random access ({_one_line(e)}): prepare it with file_format=array_record.'
                     ) from None
  feature, documents = cfg.tfds_text_feature, []
  for start in range(0, len(source), 1024):
    for example in source.__getitems__(list(range(start, min(start + 1024, len(source))))):
      if feature not in example:
        raise ValueError(f'data.tfds_text_feature={feature!r} is not a feature of '
                         f'{cfg.tfds_name!r}: choose one of {sorted(example)}.')
      documents.append(example[feature])
  return encode_documents(documents)
