"""Byte-level token streams from local text files or TFDS datasets.

Tokens are the UTF-8 bytes (0..255) plus END_OF_DOCUMENT (256) between documents: vocabulary 257.
A stream is cut into windows of T+1 tokens with stride T, so every token is a target once.
"""

from __future__ import annotations

import glob
import os

import numpy as np

END_OF_DOCUMENT = 256
VOCAB_SIZE = 257


def encode_documents(documents) -> np.ndarray:
  """UTF-8 bytes of each document (str or bytes), joined by END_OF_DOCUMENT, as int32."""
  parts = []
  for doc in documents:
    raw = doc.encode('utf-8') if isinstance(doc, str) else bytes(doc)
    parts.append(np.frombuffer(raw, np.uint8).astype(np.int32))
    parts.append(np.array([END_OF_DOCUMENT], np.int32))
  return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def resolve_paths(spec: str) -> list[str]:
  """Comma-separated paths or globs -> sorted list of existing files."""
  paths = []
  for item in filter(None, (s.strip() for s in spec.split(','))):
    matches = sorted(glob.glob(os.path.expanduser(item)))
    if not matches:
      raise ValueError(f'data.path={item!r} matches no file: give existing text files '
                       '(comma-separated paths or globs).')
    paths.extend(matches)
  if not paths:
    raise ValueError("data.path is empty: set --config.data.path to one or more text files.")
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


def read_tfds(name: str, data_dir: str, split: str, feature: str) -> np.ndarray:
  """The token stream of a TFDS split (array_record, read without TensorFlow)."""
  import tensorflow_datasets as tfds  # Imported lazily: slow, and only this source needs it.

  if data_dir and not os.path.isdir(data_dir):
    raise ValueError(f'data.tfds_data_dir={data_dir!r} does not exist: point it at the directory '
                     'holding the prepared dataset.')
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None,
                              download=False)
  except Exception as e:  # TFDS raises several types for a missing dataset/split/version.
    raise ValueError(f'data.tfds_name={name!r} (split {split!r}) cannot be read from '
                     f'data.tfds_data_dir={data_dir!r}: {type(e).__name__}: '
                     f'{str(e).splitlines()[0] if str(e) else ""}'.rstrip(': ') +
                     ' -- prepare it there first (tfds build) or fix the name.') from None
  documents = []
  for i in range(len(source)):
    example = source[i]
    if feature not in example:
      raise ValueError(f'data.tfds_text_feature={feature!r} is not a feature of {name!r}: '
                       f'choose one of {sorted(example)}.')
    documents.append(example[feature])
  return encode_documents(documents)


def split_stream(stream: np.ndarray, val_fraction: float, split: str) -> np.ndarray:
  """The head (train) or the last `val_fraction` (validation) of a token stream."""
  if not 0 < val_fraction < 1:
    raise ValueError(f'data.val_fraction={val_fraction} is invalid: use a value in (0, 1).')
  cut = int(len(stream) * (1 - val_fraction))
  return stream[:cut] if split == 'train' else stream[cut:]


class WindowDataset:
  """Random access to windows of T+1 tokens of a stream, stride T."""

  bits_per_token_unit = 'byte'
  vocab_size = VOCAB_SIZE

  def __init__(self, stream: np.ndarray, seq_len: int, what: str):
    self.stream, self.seq_len = stream, seq_len
    self._len = max(0, (len(stream) - 1) // seq_len)
    if self._len == 0:
      raise ValueError(f'{what} gives {len(stream)} tokens, fewer than one window of '
                       f'{seq_len + 1}: use more text or a smaller model.seq_len.')

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> np.ndarray:
    start = int(index) * self.seq_len
    return np.asarray(self.stream[start:start + self.seq_len + 1], np.int32)
