"""The prepared-dataset layout (written by `prepare`, read by the `tokens` source), defined once.

    DIR/dataset.json          format, tokenizer record, dtype, per split: tokens, bytes,
                              documents and the shard list (file, tokens, bytes, documents, sha256)
    DIR/tokenizer.json|.model the tokenizer's model file (not for `byte`)
    DIR/train-00000.bin ...   flat little-endian token ids (uint16, or uint32 past 65536 ids);
    DIR/validation-00000.bin  every document followed by the end-of-document id
    DIR/prepare.json          only while `prepare` runs: the shards finished so far (to resume)

A split is the concatenation of its shards in order. Windows are read on demand with `pread` into
a fresh buffer: nothing of the corpus stays resident (no memory map whose touched pages would
count against the process as an epoch goes by). A reader accepts only the shards dataset.json
lists, whose sizes it checks when opening (`open_split`); `verify` checks their checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import threading

import numpy as np

from fastslow_jax.data import tokenizers
from fastslow_jax.errors import UsageError

FORMAT = 'fastslow-tokens/1'
DATASET_FILE = 'dataset.json'
PROGRESS_FILE = 'prepare.json'  # prepare's record of finished shards; gone once dataset.json is.
SHARD_SUFFIX = '.bin'
SPLITS = ('train', 'validation')


def shard_name(split: str, index: int) -> str:
  return f'{split}-{index:05d}{SHARD_SUFFIX}'


def read_manifest(path: str, field: str = 'data.path') -> dict:
  """DIR/dataset.json, checked; errors name `field` (where the directory came from)."""
  if not path:
    raise UsageError(f'{field} is empty: set it to a directory written by '
                     'python -m fastslow_jax.data.prepare.')
  file = os.path.join(os.path.expanduser(path), DATASET_FILE)
  if not os.path.isdir(os.path.expanduser(path)):
    raise UsageError(f'{field}={path!r} is not a directory: point it at a dataset written by '
                     'python -m fastslow_jax.data.prepare.')
  if not os.path.isfile(file):
    raise UsageError(f'{field}={path!r} has no {DATASET_FILE}: it is not a prepared dataset, or '
                     'its prepare did not finish (rerun the same prepare command to complete it).')
  try:
    with open(file) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise UsageError(f'{file} cannot be read ({type(e).__name__}): prepare the dataset '
                     'again.') from None
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    raise UsageError(f'{file} is not a {FORMAT} dataset: prepare it again with this version.')
  return manifest


def tokenizer(path: str, field: str = 'data.path') -> tokenizers.Tokenizer:
  """The tokenizer a prepared dataset was written with (its model file checked by hash)."""
  return tokenizers.from_record(read_manifest(path, field)['tokenizer'], os.path.expanduser(path))


class ShardedStream:
  """The tokens of a split's shard files as one array-like: len() and contiguous slices.

  Reads are `os.preadv` into the returned array (thread-safe: no shared file offset). File
  descriptors stay open when the process may hold them all, else each read opens its file.
  Picklable: descriptors are reopened on first use.
  """

  def __init__(self, files: list[str], lengths: list[int], dtype, vocab_size: int):
    self.files, self.dtype, self.vocab_size = list(files), np.dtype(dtype), vocab_size
    self._ends = np.cumsum(np.asarray(lengths, np.int64))
    self._starts = self._ends - np.asarray(lengths, np.int64)
    self._cache_fds = _may_open(len(files))
    self.__setstate__(None)

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ('_fds', '_lock')}

  def __setstate__(self, state):
    if state is not None:
      self.__dict__.update(state)
    self._fds, self._lock = {}, threading.Lock()

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, key: slice) -> np.ndarray:
    start, stop, step = key.indices(len(self))
    if step != 1:
      raise IndexError('ShardedStream reads contiguous slices only')
    out = np.empty(max(0, stop - start), self.dtype)
    pos, i = start, int(np.searchsorted(self._ends, start, side='right'))
    while pos < stop:  # A window crosses at most a few shard boundaries.
      take = min(stop, int(self._ends[i])) - pos
      self._read(i, out[pos - start:pos - start + take], pos - int(self._starts[i]))
      pos, i = pos + take, i + 1
    if out.size and int(out.max()) >= self.vocab_size:
      raise UsageError(f'a shard of {os.path.dirname(self.files[0])} holds token id '
                       f'{int(out.max())} >= the vocabulary ({self.vocab_size}): it is damaged; '
                       'prepare the dataset again.')
    return out

  def _read(self, i: int, out: np.ndarray, offset: int) -> None:
    view = memoryview(out).cast('B')
    if self._cache_fds:
      with self._lock:
        fd = self._fds.get(i)
        if fd is None:
          fd = self._fds[i] = os.open(self.files[i], os.O_RDONLY)
      got = os.preadv(fd, [view], offset * self.dtype.itemsize)
    else:
      fd = os.open(self.files[i], os.O_RDONLY)
      try:
        got = os.preadv(fd, [view], offset * self.dtype.itemsize)
      finally:
        os.close(fd)
    if got != view.nbytes:
      raise UsageError(f'{self.files[i]} is shorter than dataset.json says: it is damaged; '
                       'prepare the dataset again.')

  def close(self) -> None:
    with self._lock:
      for fd in self._fds.values():
        os.close(fd)
      self._fds.clear()

  def __del__(self):
    if hasattr(self, '_lock'):
      self.close()


def _may_open(num_files: int) -> bool:
  """Whether a reader may keep `num_files` files open, raising the soft limit if that helps.

  Half the limit, less a margin, is the budget: the rest is for everything else the process opens.
  """
  def fits(limit):
    return limit == resource.RLIM_INFINITY or num_files <= limit // 2 - 256
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  if fits(soft):
    return True
  if fits(hard):
    try:
      resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
      return True
    except (ValueError, OSError):
      pass
  return False


def open_split(path: str, split: str, field: str = 'data.path') -> tuple[ShardedStream, dict]:
  """(the split's tokens, its dataset.json entry); every shard must exist with its listed size."""
  manifest = read_manifest(path, field)
  directory, info = os.path.expanduser(path), manifest['splits'][split]
  dtype = np.dtype(manifest['dtype']).newbyteorder('<')  # As written, whatever this host is.
  files = []
  for shard in info['shards']:
    file = os.path.join(directory, shard['file'])
    size = os.path.getsize(file) if os.path.isfile(file) else None
    if size != shard['tokens'] * dtype.itemsize:
      what = 'is missing' if size is None else f'has {size} bytes, not {shard["tokens"]} tokens'
      raise UsageError(f'{file} {what}: the dataset is damaged; prepare it again (rerun the same '
                       'prepare command into a new --output).')
    files.append(file)
  stream = ShardedStream(files, [s['tokens'] for s in info['shards']], dtype,
                         manifest['tokenizer']['vocab_size'])
  return stream, info


def file_sha256(file: str) -> str:
  h = hashlib.sha256()
  with open(file, 'rb') as f:
    while chunk := f.read(1 << 24):
      h.update(chunk)
  return h.hexdigest()


def verify(path: str, field: str = '--output') -> dict[str, int]:
  """Checks every shard's size and sha256 against dataset.json; returns tokens per split."""
  manifest = read_manifest(path, field)
  for split in SPLITS:
    open_split(path, split, field)  # Sizes first: cheap.
    for shard in manifest['splits'][split]['shards']:
      file = os.path.join(os.path.expanduser(path), shard['file'])
      if file_sha256(file) != shard['sha256']:
        raise UsageError(f'{file} does not match its checksum in {DATASET_FILE}: it is damaged; '
                         'prepare the dataset again.')
  tokenizer(path, field)
  return {s: manifest['splits'][s]['tokens'] for s in SPLITS}
