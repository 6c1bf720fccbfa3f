"""Shared layers: embedding, RMSNorm, rotary positions, causal attention, SwiGLU, output head.

Every parameter is an `nnx.Param` of its role (`roles.py`) that carries logical axis names under
the `out_sharding` metadata key (vocab, embed, heads, kv, mlp, norm); the training pipeline maps
them onto mesh axes with logical rules. Parameters live in `param_dtype`; compute happens in
`dtype`.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec

from fastslow_jax.models import remat, roles
from fastslow_jax.models.attention_backends import ATTENTION_BACKENDS  # noqa: F401
# The attention switch lives beside its kernels (attention_kernels.py); layers re-exports it.
from fastslow_jax.models.attention_kernels import attention, masked_attention

Array = jax.Array
default_init = nnx.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
embed_init = nnx.initializers.normal(stddev=0.02)


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype,
          role: type[nnx.Param] = nnx.Param) -> nnx.Param:
  """A parameter of `role` (its slow variant inside `roles.slow_path()`), initialised by `init`
  and annotated with logical axis names."""
  assert len(shape) == len(axes), (shape, axes)
  return roles.resolve(role)(init(rngs.params(), shape, dtype), out_sharding=axes)


def constrain(x: Array, axes: tuple[str | None, ...]) -> Array:
  """Sharding hint for an activation by logical axis names; a no-op outside a mesh and rules."""
  rules = flax_spmd.get_logical_axis_rules()
  if jax.sharding.get_abstract_mesh().empty or not rules:
    return x
  spec = PartitionSpec(*flax_spmd.from_sharding_rules(axes, rules))
  return jax.lax.with_sharding_constraint(x, spec)


def side_by_side_matmuls(x: Array, weights: tuple[Array, ...], dtype) -> tuple[Array, ...]:
  """x [..., S, D] times each of `weights` (one shape, [D, ...]) in `dtype`, as one matmul
  against the weights stacked: one kernel instead of len(weights) in each of the forward,
  backward and rematerialised passes. Stacking the query, key and value projections and SwiGLU's
  gate and up takes 124m's TPU program for v5e:2x2 from 57 to 42 MiB of generated code
  (launch/FITS.md); CPU train steps are as fast. A decoding step (S == 1) keeps one matmul per
  weight, since there the stack would copy every weight for each new token.
  """
  weights = tuple(w.astype(dtype) for w in weights)
  if x.shape[-2] == 1 or len(weights) == 1:
    return tuple(jnp.tensordot(x, w, axes=1) for w in weights)
  stacked = jnp.tensordot(x, jnp.stack(weights, axis=1), axes=1)  # [..., S, len(weights), ...]
  return tuple(jax.lax.index_in_dim(stacked, i, axis=x.ndim - 1, keepdims=False)
               for i in range(len(weights)))


# --------------------------------------------------------------------------- rotary positions


def rotary(x: Array, positions: Array, theta: float) -> Array:
  """Rotary position embedding of x [B, T, H, D] at integer `positions` [T] or [B, T]."""
  half = x.shape[-1] // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions.astype(jnp.float32)[..., None] * freq  # [(B,) T, D/2]
  sin, cos = jnp.sin(angle)[..., None, :], jnp.cos(angle)[..., None, :]  # Broadcast over heads.
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


# --------------------------------------------------------------------------- modules


@flax.struct.dataclass
class KVCache:
  """Keys and values of one attention layer for decoding, [B, cache length, H, head_dim] each."""
  k: Array
  v: Array


def step_where_blocks_complete(completes: Array, index: Array, step, caches, outputs):
  """Decoding's once-per-block step: `step()` -> (updated caches, new outputs), taken for the
  rows where `completes` [B] and run only when some row completes a block (`jax.lax.cond`).
  `step` may change each cache leaf [B, L, ...] only at [row, index[row]]. The cond's branches
  carry those entries and the outputs, not the caches, so a token that completes no block costs
  a gather of one entry per row, never a copy of a cache. Returns (caches, outputs)."""
  rows = jnp.arange(completes.shape[0])
  entries = lambda tree: jax.tree.map(lambda leaf: leaf[rows, index], tree)
  keep = lambda new, old: jnp.where(completes.reshape(-1, *[1] * (new.ndim - 1)), new, old)

  def run(_):
    new_caches, new_outputs = step()
    return entries(new_caches), new_outputs

  new_entries, new_outputs = jax.lax.cond(completes.any(), run,
                                          lambda _: (entries(caches), outputs), None)
  caches = jax.tree.map(lambda leaf, new: leaf.at[rows, index].set(keep(new, leaf[rows, index])),
                        caches, new_entries)
  return caches, jax.tree.map(keep, new_outputs, outputs)


class Embed(nnx.Module):
  """Token embedding; `attend` reuses the table as a tied output head."""

  def __init__(self, vocab_size: int, d_model: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.table = param(rngs, embed_init, (vocab_size, d_model), ('vocab', 'embed'), param_dtype,
                       roles.Embedding)
    self.dtype = dtype

  def __call__(self, tokens: Array) -> Array:
    # Gather the table's embedding dimension first (FSDP: weights are all-gathered for use). Left
    # sharded, the lookup yields activations split over `embed` that the partitioner can only
    # turn into batch-split ones by replicating them ("involuntary full rematerialization").
    table = constrain(self.table[...], ('vocab', None))
    return jnp.take(table, tokens, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    return jnp.einsum('btd,vd->btv', x, self.table[...].astype(self.dtype),
                      preferred_element_type=jnp.float32)


class RMSNorm(nnx.Module):
  def __init__(self, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    self.scale = param(rngs, nnx.initializers.ones, (dim,), ('norm',), param_dtype, roles.NormScale)
    self.eps, self.dtype = eps, dtype

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (x32 * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class CausalSelfAttention(nnx.Module):
  """Causal multi-head self-attention with rotary positions, over a sequence of d_model vectors.

  Used twice in a fast-slow block: over the T tokens (fast) and over the T/P pooled blocks (slow),
  each with its own projections and head count. With `num_kv_heads` < `num_heads` (grouped-query
  attention) each key and value head serves num_heads / num_kv_heads consecutive query heads.
  With a local `window` W > 0, position t sees positions t-W < s <= t only, and the decoding
  cache is a ring of W entries (position s in slot s % W).
  """

  def __init__(self, d_model: int, num_heads: int, *, rope_theta: float, impl: str, dtype,
               param_dtype, rngs: nnx.Rngs, output_name: str = remat.FAST_ATTN, block_q: int = 0,
               block_kv: int = 0, num_kv_heads: int | None = None, window: int = 0):
    head_dim = d_model // num_heads
    kv_heads = num_kv_heads or num_heads
    self.wq = param(rngs, default_init, (d_model, num_heads, head_dim), ('embed', 'heads', 'kv'),
                    param_dtype)
    kv_shape, kv_axes = (d_model, kv_heads, head_dim), ('embed', 'kv_heads', 'kv')
    self.wk = param(rngs, default_init, kv_shape, kv_axes, param_dtype)
    self.wv = param(rngs, default_init, kv_shape, kv_axes, param_dtype)
    out_init = nnx.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=(0, 1),
                                                 out_axis=2)
    self.wo = param(rngs, out_init, (num_heads, head_dim, d_model), ('heads', 'kv', 'embed'),
                    param_dtype)
    self.rope_theta, self.impl, self.dtype = rope_theta, impl, dtype
    self.output_name = output_name  # What remat policies call the output (`checkpoint_name`).
    self.block_q, self.block_kv = block_q, block_kv  # Tiles of fused kernels; 0: their default.
    self.window = window  # 0: full causal attention.

  def __call__(self, x: Array) -> Array:
    """Causal self-attention over the whole sequence x [B, T, D] (training, evaluation)."""
    q, k, v = self.project(x)
    q, k = self.rotate(q, k, jnp.arange(x.shape[1]))
    return self.output(self.attend(q, k, v))

  def extend(self, x: Array, cache: KVCache, positions: Array) -> tuple[Array, KVCache]:
    """Incremental attention (decoding): the S new vectors x [B, S, D] sit at `positions` [B, S]
    of their rows. Their keys and values are written into `cache` there, and each query attends
    to the cached keys at positions <= its own (S == 1 with a window). Returns (output [B, S, D],
    updated cache)."""
    q, k, v = self.project(x)
    q, k = self.rotate(q, k, positions)
    heads, cache = self.attend_cached(q, k, v, cache, positions)
    return self.output(heads), cache

  def prefill(self, x: Array, lengths: Array, cache_length: int) -> tuple[Array, KVCache]:
    """Attention over right-padded prompts x [B, L, D] of `lengths` [B], and the decoding cache
    they leave for `cache_length` positions per row. Returns (output [B, L, D], cache)."""
    q, k, v = self.project(x)
    q, k = self.rotate(q, k, jnp.arange(x.shape[1]))
    heads, cache = self.attend_prompt(q, k, v, lengths, cache_length)
    return self.output(heads), cache

  def empty_cache(self, batch: int, length: int) -> KVCache:
    """Zero keys and values for `length` positions per row (a ring of at most `window`)."""
    _, heads, head_dim = self.wk.shape
    zeros = jnp.zeros((batch, self.cache_size(length), heads, head_dim), self.dtype)
    return KVCache(k=zeros, v=zeros)

  def cache_size(self, length: int) -> int:
    """Entries a row's cache holds for `length` positions: all of them, or a ring of W."""
    return min(self.window, length) if self.window else length

  # The steps of a call, for blocks that combine attention with more (compressed.py).

  def project(self, x: Array) -> tuple[Array, Array, Array]:
    """Queries [B, T, H, head_dim] and keys and values [B, T, KV heads, head_dim] of x [B, T, D],
    before rotary positions."""
    if self.wq.shape == self.wk.shape:
      return side_by_side_matmuls(x, (self.wq[...], self.wk[...], self.wv[...]), self.dtype)
    q, = side_by_side_matmuls(x, (self.wq[...],), self.dtype)
    k, v = side_by_side_matmuls(x, (self.wk[...], self.wv[...]), self.dtype)
    return q, k, v

  def rotate(self, q: Array, k: Array, positions: Array) -> tuple[Array, Array]:
    """Rotary positions on queries and keys at `positions` [T] or [B, T]."""
    return rotary(q, positions, self.rope_theta), rotary(k, positions, self.rope_theta)

  def attend(self, q: Array, k: Array, v: Array) -> Array:
    """Causal (local, with a window) attention per head [B, T, H, head_dim] through the
    configured backend."""
    return attention(q, k, v, causal=True, impl=self.impl, block_q=self.block_q,
                     block_kv=self.block_kv, window=self.window)

  def attend_prompt(self, q: Array, k: Array, v: Array, lengths: Array,
                    cache_length: int) -> tuple[Array, KVCache]:
    """`attend` over right-padded prompts of `lengths` [B] (positions 0..L-1), and the cache
    they leave: every position, or with a window the last W of each row, in slot s % W."""
    b, length = q.shape[:2]
    if not self.window:
      positions = jnp.broadcast_to(jnp.arange(length), (b, length))
      return self.attend_cached(q, k, v, self.empty_cache(b, cache_length), positions)
    size = self.cache_size(cache_length)
    kept = lengths[:, None] - size + jnp.arange(size)  # Positions the ring keeps; < 0: none yet.
    index = jnp.clip(kept, 0, length - 1)[..., None, None]
    slots, rows = kept % size, jnp.arange(b)[:, None]
    ring = lambda x: jnp.zeros((b, size, *x.shape[2:]), self.dtype).at[rows, slots].set(
        jnp.take_along_axis(x, index, axis=1).astype(self.dtype))
    return self.attend(q, k, v), KVCache(k=ring(k), v=ring(v))

  def attend_cached(self, q: Array, k: Array, v: Array, cache: KVCache,
                    positions: Array) -> tuple[Array, KVCache]:
    """`attend` for new queries, keys and values at `positions` [B, S] against `cache`: the keys
    and values are written there first, and each query reads the positions <= its own (and,
    with a window, one token at a time, the W latest: the ring's slots)."""
    rows = jnp.arange(q.shape[0])[:, None]
    size = cache.k.shape[1]
    slots = positions % size if self.window else positions
    cache = KVCache(k=cache.k.at[rows, slots].set(k.astype(cache.k.dtype)),
                    v=cache.v.at[rows, slots].set(v.astype(cache.v.dtype)))
    if self.window:
      assert q.shape[1] == 1, 'a ring cache is extended one position at a time'
      # Slot j holds the latest position <= t that is j modulo the ring size (< 0: none yet).
      held = positions - (positions - jnp.arange(size)) % size  # [B, ring size]
      mask = ((held >= 0) & (held > positions - self.window))[:, None]
    else:
      mask = jnp.arange(size) <= positions[:, :, None]  # [B, S, cache length]
    return masked_attention(q, cache.k, cache.v, mask), cache

  def output(self, heads: Array) -> Array:
    """The output projection of per-head results [B, T, H, head_dim] to [B, T, D]."""
    wo = self.wo[...].astype(self.dtype)
    return checkpoint_name(jnp.einsum('bthk,hkd->btd', heads, wo), self.output_name)


class SwiGLU(nnx.Module):
  """silu(x W_gate) * (x W_up) W_down. Also serves as phi_theta on the slow states."""

  def __init__(self, d_model: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs,
               output_name: str = remat.MLP):
    self.w_gate = param(rngs, default_init, (d_model, hidden), ('embed', 'mlp'), param_dtype)
    self.w_up = param(rngs, default_init, (d_model, hidden), ('embed', 'mlp'), param_dtype)
    self.w_down = param(rngs, default_init, (hidden, d_model), ('mlp', 'embed'), param_dtype)
    self.dtype = dtype
    self.output_name = output_name  # What remat policies call the output (`checkpoint_name`).

  def __call__(self, x: Array) -> Array:
    gate, up = side_by_side_matmuls(x, (self.w_gate[...], self.w_up[...]), self.dtype)
    h = jax.nn.silu(gate) * up
    return checkpoint_name(h @ self.w_down[...].astype(self.dtype), self.output_name)


class LMHead(nnx.Module):
  """Untied output projection to vocabulary logits (float32)."""

  def __init__(self, d_model: int, vocab_size: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.w = param(rngs, default_init, (d_model, vocab_size), ('embed', 'vocab'), param_dtype)
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    return jnp.einsum('btd,dv->btv', x, self.w[...].astype(self.dtype),
                      preferred_element_type=jnp.float32)
