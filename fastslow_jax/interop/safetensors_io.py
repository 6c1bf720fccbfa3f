"""Safetensors files read and written with numpy, one tensor at a time (no torch).

    reader = safetensors_io.Reader(directory)     # model.safetensors, or shards and their index
    reader.names(), reader.shape(name), reader.dtype(name)
    array = reader.read(name)                      # a numpy copy of one tensor, from a memory map
    safetensors_io.write(directory, specs, produce, max_shard_bytes=...)

The format: 8 bytes (little-endian length N), N bytes of JSON header ({name: {dtype, shape,
data_offsets: [begin, end]}, '__metadata__': {...}}), then the tensors' bytes. A tensor is read
through a memory map of its own byte range, and a write computes each tensor only when its bytes
are due, so neither direction holds more than one tensor (plus the page cache) at a time. bfloat16
and float8 are `ml_dtypes` types (numpy has none).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Callable, Sequence

import ml_dtypes
import numpy as np

from fastslow_jax.errors import UsageError

DTYPES = {
    'F64': np.dtype(np.float64), 'F32': np.dtype(np.float32), 'F16': np.dtype(np.float16),
    'BF16': np.dtype(ml_dtypes.bfloat16), 'F8_E4M3': np.dtype(ml_dtypes.float8_e4m3fn),
    'F8_E5M2': np.dtype(ml_dtypes.float8_e5m2), 'I64': np.dtype(np.int64),
    'I32': np.dtype(np.int32), 'I16': np.dtype(np.int16), 'I8': np.dtype(np.int8),
    'U64': np.dtype(np.uint64), 'U32': np.dtype(np.uint32), 'U16': np.dtype(np.uint16),
    'U8': np.dtype(np.uint8), 'BOOL': np.dtype(np.bool_),
}
CODES = {dtype: code for code, dtype in DTYPES.items()}
SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
MAX_HEADER_BYTES = 100 << 20  # The reference implementation's limit.


@dataclasses.dataclass(frozen=True)
class Spec:
  """A tensor to write: its name, shape and dtype."""
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def read_header(path: str) -> tuple[dict, int]:
  """(the header's tensors by name, where the data start) of the file at `path`; a one-line
  UsageError for a file that is not safetensors."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    n = struct.unpack('<Q', head)[0] if len(head) == 8 else -1
    if not 0 < n <= min(MAX_HEADER_BYTES, size - 8):
      raise UsageError(f'{path} is not a safetensors file (header length {n}): save the model '
                       'again with safetensors.')
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise UsageError(f'{path} has a damaged safetensors header ({e}): save it again.') from None
  header.pop('__metadata__', None)
  for name, entry in header.items():
    begin, end = entry['data_offsets']
    nbytes = int(np.prod(entry['shape'], dtype=np.int64)) * _dtype(entry['dtype'], path).itemsize
    if end - begin != nbytes or end > size - 8 - n:
      raise UsageError(f'{path}: tensor {name!r} does not fit its shape or the file (truncated?): '
                       'copy or save the file again.')
  return header, 8 + n


def _dtype(code: str, path: str) -> np.dtype:
  if code not in DTYPES:
    raise UsageError(f'{path} holds tensors of dtype {code}, which is not read here: use one of '
                     f'{", ".join(DTYPES)}.')
  return DTYPES[code]


class Reader:
  """The tensors of a Hugging Face model directory: `model.safetensors`, or the shards its
  `model.safetensors.index.json` names (without an index, every `*.safetensors` file)."""

  def __init__(self, directory: str):
    self.directory = directory
    index = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index):
      with open(index) as f:
        files = sorted(set(json.load(f)['weight_map'].values()))
    else:
      files = sorted(n for n in os.listdir(directory) if n.endswith('.safetensors'))
    if not files:
      raise UsageError(f'{directory} holds no .safetensors files (pytorch_model.bin is not read): '
                       'save the model with save_pretrained(..., safe_serialization=True).')
    self._where: dict[str, tuple[str, dict, int]] = {}
    for name in files:
      path = os.path.join(directory, name)
      if not os.path.isfile(path):
        raise UsageError(f'{path} is missing ({INDEX_FILE} names it): copy the whole model.')
      header, start = read_header(path)
      for tensor, entry in header.items():
        if tensor in self._where:
          raise UsageError(f'{directory}: tensor {tensor!r} is in two files: remove stale shards.')
        self._where[tensor] = (path, entry, start)

  def names(self) -> list[str]:
    return sorted(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._where[name][1]['shape'])

  def dtype(self, name: str) -> np.dtype:
    path, entry, _ = self._where[name]
    return _dtype(entry['dtype'], path)

  def read(self, name: str) -> np.ndarray:
    """A copy of tensor `name`, read through a memory map of its bytes alone."""
    path, entry, start = self._where[name]
    dtype, shape = self.dtype(name), self.shape(name)
    begin, end = entry['data_offsets']
    if end == begin:
      return np.zeros(shape, dtype)
    view = np.memmap(path, dtype=np.uint8, mode='r', offset=start + begin, shape=(end - begin,))
    try:
      return np.array(view.view(dtype).reshape(shape))
    finally:
      del view


def shard_plan(specs: Sequence[Spec], max_shard_bytes: int) -> list[list[Spec]]:
  """`specs` in order, cut into files of at most `max_shard_bytes` (a larger tensor alone)."""
  shards: list[list[Spec]] = [[]]
  size = 0
  for spec in specs:
    if shards[-1] and size + spec.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(spec)
    size += spec.nbytes
  return shards


def write(directory: str, specs: Sequence[Spec], produce: Callable[[str], np.ndarray], *,
          max_shard_bytes: int = 5 << 30, progress=None) -> list[str]:
  """Writes the tensors `specs` describes, each computed by `produce(name)` when its bytes are
  due, into `model.safetensors` or, beyond `max_shard_bytes`, shards with their index (Hugging
  Face's names). Each file is written under a temporary name and renamed; `progress` (a tqdm
  bar) advances by one per tensor. Returns the files written."""
  shards = shard_plan(specs, max_shard_bytes)
  names = ([SINGLE_FILE] if len(shards) == 1 else
           [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))])
  for name, shard in zip(names, shards):
    _write_file(os.path.join(directory, name), shard, produce, progress)
  if len(shards) > 1:
    index = {'metadata': {'total_size': sum(s.nbytes for s in specs)},
             'weight_map': {s.name: n for n, shard in zip(names, shards) for s in shard}}
    _replace(os.path.join(directory, INDEX_FILE), json.dumps(index, indent=2).encode())
  return names + ([INDEX_FILE] if len(shards) > 1 else [])


def _write_file(path: str, specs: Sequence[Spec], produce, progress) -> None:
  header, offset = {'__metadata__': {'format': 'pt'}}, 0
  for spec in specs:
    header[spec.name] = {'dtype': CODES[np.dtype(spec.dtype)], 'shape': list(spec.shape),
                         'data_offsets': [offset, offset + spec.nbytes]}
    offset += spec.nbytes
  text = json.dumps(header, separators=(',', ':')).encode()
  text += b' ' * (-len(text) % 8)  # The data start 8-byte aligned, as the reference pads.
  tmp = f'{path}.tmp'
  with open(tmp, 'wb') as f:
    f.write(struct.pack('<Q', len(text)) + text)
    for spec in specs:
      array = np.array(produce(spec.name), dtype=spec.dtype, order='C', copy=None)
      if array.shape != tuple(spec.shape):
        raise ValueError(f'{spec.name}: produced {array.shape}, declared {spec.shape}')
      f.write(array.reshape(-1).view(np.uint8).data)  # No copy of the bytes.
      del array
      if progress is not None:
        progress.update(1)
  os.replace(tmp, path)


def _replace(path: str, data: bytes) -> None:
  with open(f'{path}.tmp', 'wb') as f:
    f.write(data)
  os.replace(f'{path}.tmp', path)
