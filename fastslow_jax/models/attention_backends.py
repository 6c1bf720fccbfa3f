"""The attention backends: their names, where they run and what they need. Imports no jax.

This table is the one owner of the backend names: `ModelConfig` validates `model.attention_impl`
against it (cheaply, without loading any kernel) and `attention_kernels.attention` calls the kernel
function an entry names. Adding a backend is one entry here plus its function in
`attention_kernels.py`.

Tiled kernels (`splash`, `pallas_gpu`) cut the sequence into blocks of `model.attention_block_q`
query and `model.attention_block_kv` key positions (0: the backend's default). A sequence whose
length is not a multiple of the backend's minimum block (the slow path's T/P pooled blocks can be
1, 2, 3, ... long) is padded at the end to the next multiple; causal masking already hides the
padded keys from every real query, and the padded queries are cut off, so the result and its
gradients are those of the unpadded sequence (tests/test_attention.py checks both).

Local attention (`model.fast_window` = W > 0: query t sees keys t-W < s <= t) costs O(T W) where
the backend can skip what the window hides: `reference` and `xla` attend chunk by chunk (the
queries of chunk c over chunks c-1 and c, chunks of W positions), splash skips the blocks its
local mask hides, cuDNN takes a sliding window. A backend without it (`windowed=False`) refuses a
window in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from fastslow_jax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class AttentionBackend:
  """What one backend needs; `kernel` names its function in `attention_kernels`."""

  kernel: str
  about: str
  platforms: tuple[str, ...] | None = None  # JAX device platforms it runs on; None: any.
  dtypes: tuple[str, ...] | None = None  # Compute dtypes it accepts; None: any.
  min_block: int = 0  # Smallest (and granularity of) tile; 0: not a tiled kernel.
  default_block: int = 0  # Tile used when the config gives 0.
  windowed: bool = True  # Takes a local window (model.fast_window) at O(T W) cost.

  @property
  def tiled(self) -> bool:
    return self.min_block > 0


ATTENTION_BACKENDS: dict[str, AttentionBackend] = {
    'reference': AttentionBackend('reference_attention', 'einsum softmax, -inf masking'),
    'xla': AttentionBackend('xla_attention', 'jax.nn.dot_product_attention, XLA implementation'),
    'cudnn': AttentionBackend('cudnn_attention', 'cuDNN fused attention (NVIDIA GPU)',
                              platforms=('gpu',), dtypes=('bfloat16', 'float16')),
    # Splash tiles are multiples of the TPU's 128 lanes.
    'splash': AttentionBackend('splash_attention', 'Pallas splash attention (TPU)',
                               platforms=('tpu',), min_block=128, default_block=512),
    # Triton dots need tiles of at least 16.
    'pallas_gpu': AttentionBackend('pallas_gpu_attention', 'Pallas flash attention (GPU, Triton)',
                                   platforms=('gpu',), min_block=16, default_block=64,
                                   windowed=False),
}


def backend(impl: str) -> AttentionBackend:
  """The table entry for `impl`; an unknown name is a one-line UsageError."""
  if impl not in ATTENTION_BACKENDS:
    raise UsageError(f'model.attention_impl={impl!r} is invalid: choose one of '
                     f'{", ".join(ATTENTION_BACKENDS)}.')
  return ATTENTION_BACKENDS[impl]


def check_block(impl: str, field: str, block: int) -> None:
  """`block` (a model.attention_block_* value) is 0 or a tile size the backend accepts."""
  spec = backend(impl)
  if block == 0:
    return
  power_of_two = block > 0 and block & (block - 1) == 0
  if not power_of_two or block < max(spec.min_block, 1):
    smallest = max(spec.min_block, 1)
    raise UsageError(f'model.{field}={block} is invalid for attention_impl={impl!r}: use 0 (the '
                     f'backend default) or a power of two >= {smallest}.')


def check_dtype(impl: str, dtype: str) -> None:
  """The compute dtype is one the backend accepts (e.g. cuDNN attention needs 16-bit floats)."""
  spec = backend(impl)
  if spec.dtypes is not None and dtype not in spec.dtypes:
    raise UsageError(f'model.attention_impl={impl!r} needs model.dtype in '
                     f'{{{", ".join(spec.dtypes)}}}, not {dtype!r}: set --config.model.dtype='
                     f'{spec.dtypes[0]} or choose another attention_impl.')


def check_window(impl: str, window: int) -> None:
  """A local window (`model.fast_window` > 0) needs a backend that takes one."""
  if window and not backend(impl).windowed:
    local = [n for n, s in ATTENTION_BACKENDS.items() if s.windowed]
    raise UsageError(f'model.attention_impl={impl!r} has no local window (model.fast_window='
                     f'{window}): choose one of {", ".join(local)}, or model.fast_window=0.')


def check_attention_platform(impl: str, devices: Iterable) -> None:
  """Fails in one line where `impl` cannot run on `devices` (e.g. splash on GPU or CPU).

  Call it once the devices are known (the training mesh's devices, or the compile-only devices of
  an ahead-of-time target). `devices` are JAX devices or anything with a `.platform`.
  """
  spec = backend(impl)
  platforms = sorted({d.platform for d in devices})
  if spec.platforms is None or not platforms:
    return
  wrong = [p for p in platforms if p not in spec.platforms]
  if wrong:
    runs_on = [n for n, s in ATTENTION_BACKENDS.items()
               if s.platforms is None or wrong[0] in s.platforms]
    raise UsageError(f'model.attention_impl={impl!r} runs on {"/".join(spec.platforms)} only, '
                     f'not on {wrong[0]}: choose one of {", ".join(runs_on)}.')


def tile(impl: str, block: int, length: int) -> tuple[int, int]:
  """(padded length, tile) for a tiled backend over `length` positions with configured `block`.

  The padded length is `length` rounded up to the backend's minimum tile; the tile is the largest
  power-of-two multiple of that minimum, at most `block` (or the default), that divides it.
  """
  spec = backend(impl)
  assert spec.tiled, impl
  smallest = spec.min_block
  padded = -(-length // smallest) * smallest
  t = block or spec.default_block
  while padded % t:
    t //= 2
  return padded, t
