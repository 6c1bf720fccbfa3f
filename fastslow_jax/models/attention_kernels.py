"""Attention kernels behind one switch: `attention(q, k, v, causal=, impl=, window=)` on
[B, T, H, D].

The backends, where they run and what they need are listed in `attention_backends.py`; each
names one function below. Every kernel computes softmax(q k^T / sqrt(D)) v (the Pallas kernels
causal only) and returns [B, T, H, D] in the dtype of the inputs. With a local `window` W, query
t sees keys t-W < s <= t, at O(T W) cost (`local_attention` for the XLA backends).

Pallas kernels (`splash`, `pallas_gpu`) are opaque to XLA's partitioner, so under a mesh they run
inside `shard_map` on each device's rows and heads (the logical rules say which mesh axes those
are); the sequence and head dimension stay whole. On CPU they run only in Pallas interpret mode
(`with interpret_kernels(): ...`), which tests use to check them against `reference`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import warnings

import jax
import jax.numpy as jnp
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec

from fastslow_jax.models import attention_backends
from fastslow_jax.errors import UsageError

Array = jax.Array

_INTERPRET = contextvars.ContextVar('interpret_kernels', default=False)


@contextlib.contextmanager
def interpret_kernels():
  """Within: Pallas kernels traced from now on run in interpret mode (CPU checks and debugging).

  Applies when a function is traced, so use it around a fresh `jax.jit`, not a cached one.
  """
  token = _INTERPRET.set(True)
  try:
    yield
  finally:
    _INTERPRET.reset(token)


def attention(q: Array, k: Array, v: Array, *, causal: bool, impl: str = 'reference',
              block_q: int = 0, block_kv: int = 0, window: int = 0) -> Array:
  """Multi-head attention of queries q [B, T, H, D] over keys and values [B, T, K, D] through
  the backend `impl`; K divides H (grouped-query attention: key head j serves query heads
  [j H/K, (j+1) H/K)).

  `block_q` / `block_kv` are the tiled kernels' tile sizes (0: the backend default); the other
  backends ignore them. `window` W > 0 (causal only): query t sees keys t-W < s <= t; a window
  as long as the sequence hides nothing and is plain causal attention.
  """
  spec = attention_backends.backend(impl)
  kernel = globals()[spec.kernel]
  if window and not causal:
    raise NotImplementedError('a local window is causal attention: pass causal=True.')
  attention_backends.check_window(impl, window)
  window = window if window < q.shape[1] else 0
  if spec.tiled:  # The Pallas kernels take one key and value head per query head.
    k, v = (repeat_kv_heads(x, q.shape[2]) for x in (k, v))
    return kernel(q, k, v, causal, block_q=block_q, block_kv=block_kv, window=window)
  return kernel(q, k, v, causal, window=window)


def repeat_kv_heads(x: Array, num_heads: int) -> Array:
  """Keys or values [B, T, K, D] with each head repeated for its group: [B, T, num_heads, D]."""
  groups = num_heads // x.shape[2]
  return x if groups == 1 else jnp.repeat(x, groups, axis=2)


# --------------------------------------------------------------------------- XLA backends


def reference_attention(q: Array, k: Array, v: Array, causal: bool, window: int = 0) -> Array:
  """Plain softmax attention; masked logits are set to -inf (never a finite stand-in)."""
  if window:
    return local_attention(q, k, v, window, masked_attention)
  mask = None
  if causal:
    mask = jnp.arange(q.shape[1])[:, None] >= jnp.arange(k.shape[1])[None, :]
  return masked_attention(q, k, v, mask)


def masked_attention(q: Array, k: Array, v: Array, mask: Array | None) -> Array:
  """Softmax attention of q [B, Tq, H, D] over k, v [B, Tk, K, D] where `mask` (broadcastable
  to [B, Tq, Tk]) is True; used directly by decoding, whose queries read a key cache. K divides
  H: key head j serves query heads [j H/K, (j+1) H/K), read in place (no copy per query head).
  A query that may see no key at all gets exactly zero (and a zero gradient), never NaN."""
  b, tq, h, d = q.shape
  q = q.reshape(b, tq, k.shape[2], h // k.shape[2], d)  # Query head j * groups + g -> (j, g).
  logits = jnp.einsum('bqjgd,bkjd->bjgqk', q, k, preferred_element_type=jnp.float32) * d ** -0.5
  if mask is None:
    weights = jax.nn.softmax(logits, axis=-1)
  else:
    mask = (mask[None] if mask.ndim == 2 else mask)[:, None, None]  # [B, 1, 1, Tq, Tk]
    sees_any = jnp.any(mask, axis=-1, keepdims=True)
    # Rows that see nothing take a finite stand-in (so softmax stays finite) and are zeroed.
    logits = jnp.where(mask, logits, jnp.where(sees_any, -jnp.inf, 0.0))
    weights = jnp.where(sees_any, jax.nn.softmax(logits, axis=-1), 0.0)
  out = jnp.einsum('bjgqk,bkjd->bqjgd', weights.astype(v.dtype), v)
  return out.reshape(b, tq, h, d)


def local_attention(q: Array, k: Array, v: Array, window: int, masked) -> Array:
  """Causal attention within a window of W keys (query t sees t-W < s <= t), chunk by chunk:
  the queries of chunk c (W positions each) attend over the keys of chunks c-1 and c through
  `masked(q, k, v, mask)`, one chunk at a time (vmapped), so memory and FLOPs are O(T W): 2W
  keys per query. A trailing partial chunk is zero-padded; causal masking hides the padding."""
  b, t = q.shape[:2]
  n = -(-t // window)
  chunks = lambda x: _pad_sequence(x, n * window).reshape(b, n, window, *x.shape[2:])
  with_previous = lambda x: jnp.concatenate(
      [jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0)))[:, :-1], x], axis=2)
  q_c, k_c, v_c = chunks(q), with_previous(chunks(k)), with_previous(chunks(v))
  # Query cW + i and key (c-1)W + j are W + i - j apart: visible iff i < j <= i + W.
  i, j = jnp.arange(window)[:, None], jnp.arange(2 * window)[None]
  band = (j > i) & (j <= i + window)
  mask = jnp.stack([band & (j >= window)] + [band] * (n - 1))  # Chunk 0 has no previous chunk.
  out = jax.vmap(masked, in_axes=(1, 1, 1, 0), out_axes=1)(q_c, k_c, v_c, mask)
  return out.reshape(b, n * window, *out.shape[3:])[:, :t]


def xla_attention(q: Array, k: Array, v: Array, causal: bool, window: int = 0) -> Array:
  if window:
    return local_attention(q, k, v, window, lambda q, k, v, mask: jax.nn.dot_product_attention(
        q, k, v, mask=mask[None, None], implementation='xla'))
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation='xla')


def cudnn_attention(q: Array, k: Array, v: Array, causal: bool, window: int = 0) -> Array:
  """cuDNN's fused flash attention (16-bit inputs), with its sliding window where `window`;
  partitions itself under a mesh."""
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation='cudnn',
                                      local_window_size=(window - 1, 0) if window else None)


# --------------------------------------------------------------------------- Pallas kernels


def _per_device(kernel):
  """Runs `kernel(q, k, v)` on each device's block of rows and heads when a mesh is active."""
  @functools.wraps(kernel)
  def run(q, k, v):
    rules = flax_spmd.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not rules:
      return kernel(q, k, v)
    spec = PartitionSpec(*flax_spmd.from_sharding_rules(('batch', 'length', 'heads', 'kv'),
                                                        rules))
    if spec[1] is not None or spec[3] is not None:
      raise UsageError(f'the sharding rules split the sequence or head dimension ({spec}): fused '
                       "attention kernels need ('length', None) and ('kv', None).")
    return jax.shard_map(kernel, in_specs=(spec, spec, spec), out_specs=spec,
                         check_vma=False)(q, k, v)
  return run


def _pad_sequence(x: Array, length: int) -> Array:
  """Zero-pads [B, T, H, D] at the end of T; causal masking hides padded keys from real queries."""
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _tiles(impl: str, length: int, block_q: int, block_kv: int) -> tuple[int, int, int]:
  padded, bq = attention_backends.tile(impl, block_q, length)
  _, bkv = attention_backends.tile(impl, block_kv, length)
  return padded, bq, bkv


def _require_causal(impl: str, causal: bool) -> None:
  if not causal:  # Both paths of the zoo are causal; without the mask, padding would be attended.
    raise NotImplementedError(f'attention_impl={impl!r} implements causal attention only.')


def splash_attention(q: Array, k: Array, v: Array, causal: bool, *, block_q: int = 0,
                     block_kv: int = 0, window: int = 0) -> Array:
  """TPU splash attention with a causal mask (local within `window`: the blocks it hides are
  skipped); [B, T, H, D] in and out."""
  _require_causal('splash', causal)
  t = q.shape[1]
  padded, bq, bkv = _tiles('splash', t, block_q, block_kv)
  interpret = _INTERPRET.get()

  def per_device(q, k, v):
    kernel = _splash_kernel(q.shape[2], padded, bq, bkv, interpret, window)
    to_heads_first = lambda x: _pad_sequence(x, padded).transpose(0, 2, 1, 3)  # [B, H, T, D]
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)  # Splash leaves the scaling to the caller.
    out = jax.vmap(kernel)(to_heads_first(q), to_heads_first(k), to_heads_first(v))
    return out.transpose(0, 2, 1, 3)[:, :t]

  return _per_device(per_device)(q, k, v)


def _splash_kernel(heads: int, length: int, bq: int, bkv: int, interpret: bool, window: int = 0):
  """A causal splash kernel for [H, length, D], local within `window` if not 0 (query t sees
  keys t-W+1 .. t). Built per trace: its mask tables become constants of the traced program
  (splash caches the mask preprocessing itself).

  Splash masks logits with a large finite value, not -inf; every causal row keeps its diagonal,
  so masked weights underflow to exactly 0 (tests check future keys change nothing, bitwise).
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as splash, splash_attention_mask as mask_lib)

  one = (mask_lib.LocalMask((length, length), window_size=(window - 1, 0), offset=0) if window
         else mask_lib.CausalMask((length, length)))
  mask = mask_lib.MultiHeadMask([one] * heads)
  sizes = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                            block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                            block_kv_dq=bkv)
  return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                interpret=interpret)


# Backward tiles of the Triton kernel; jax's own default, small enough for its shared memory.
_PALLAS_GPU_BACKWARD_BLOCK = 32


def pallas_gpu_attention(q: Array, k: Array, v: Array, causal: bool, *, block_q: int = 0,
                         block_kv: int = 0, window: int = 0) -> Array:
  """Pallas (Triton) flash attention for GPUs; [B, T, H, D] in and out. No local window (the
  backend table says so, and a config asking for one is refused)."""
  del window  # attention_backends.check_window refused it.
  _require_causal('pallas_gpu', causal)
  with warnings.catch_warnings():  # The module announces its successor on import; it still works.
    warnings.simplefilter('ignore', DeprecationWarning)
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention
  t = q.shape[1]
  padded, bq, bkv = _tiles('pallas_gpu', t, block_q, block_kv)
  back = min(bq, bkv, _PALLAS_GPU_BACKWARD_BLOCK)
  sizes = gpu_attention.BlockSizes(block_q=bq, block_k=bkv, block_q_dkv=back, block_kv_dkv=back,
                                   block_q_dq=back, block_kv_dq=back)
  interpret = _INTERPRET.get()

  def per_device(q, k, v):
    q, k, v = (_pad_sequence(x, padded) for x in (q, k, v))
    out = gpu_attention.mha(q, k, v, None, sm_scale=q.shape[-1] ** -0.5, causal=True,
                            block_sizes=sizes, interpret=interpret)
    return out[:, :t].astype(q.dtype)

  return _per_device(per_device)(q, k, v)
