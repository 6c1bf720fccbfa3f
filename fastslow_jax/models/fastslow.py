"""The fast-slow family: the fast-slow block, its slow path, and the family's hooks.

    x  = norm(h)
    h <- h + FastAttn(x) + g * Broadcast(phi_theta(SlowAttn(Pool(x))))
    h <- h + MLP(norm(h))

Causality (the rule every function below keeps): pooled block j is the mean of x over tokens
[jP, (j+1)P); block j attends to blocks <= j; token t reads block (t+1)//P - 1, i.e. only blocks
that are complete at t, and zero while none is. The gate g starts at zero, so a fresh block is
exactly a dense transformer block; phi_theta keeps its ordinary (non-zero) init so that g receives
a gradient from the first step.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from fastslow_jax.models import decoder, flops, remat, roles
from fastslow_jax.models.config import ModelConfig
from fastslow_jax.models.layers import (CausalSelfAttention, KVCache, RMSNorm, SwiGLU, constrain,
                                        param, step_where_blocks_complete)

Array = jax.Array


def block_mean_pool(x: Array, P: int) -> Array:
  """[B, T, D] -> [B, ceil(T/P), D]; block j is the mean of tokens [jP, (j+1)P).

  A trailing incomplete block (T not a multiple of P, inference only) is padded; no token ever
  reads it, because token t only reads blocks j < (t+1)//P.
  """
  b, t, d = x.shape
  x = jnp.pad(x, ((0, 0), (0, -t % P), (0, 0)))
  return x.reshape(b, -1, P, d).mean(axis=2)


def broadcast_completed_blocks(y: Array, P: int, T: int) -> Array:
  """[B, N, D] -> [B, T, D]: token t gets y[(t+1)//P - 1], and zero before block 0 is complete.

  Repeating each block P times gives token t block t//P; shifting right by P-1 turns that into
  block (t-P+1)//P = (t+1)//P - 1, with the P-1 leading tokens padded by zeros.
  """
  per_token = jnp.repeat(y, P, axis=1)
  return jnp.pad(per_token, ((0, 0), (P - 1, 0), (0, 0)))[:, :T]


class SlowPath(nnx.Module):
  """Broadcast(phi_theta(SlowAttn(Pool(x)))): a slow sub-system stepping once per P tokens.

  It owns P: pooling the tokens into blocks and broadcasting each complete block's output back to
  the tokens that may read it both happen here.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.attn = CausalSelfAttention(cfg.d_model, cfg.slow_num_heads, rope_theta=cfg.rope_theta,
                                    impl=cfg.attention_impl, dtype=dtype, param_dtype=param_dtype,
                                    rngs=rngs, output_name=remat.SLOW_ATTN,
                                    block_q=cfg.attention_block_q,
                                    block_kv=cfg.attention_block_kv)
    self.phi = SwiGLU(cfg.d_model, cfg.phi_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                      output_name=remat.PHI)
    self.P = cfg.P

  def __call__(self, x: Array) -> tuple[Array, dict[str, Array]]:
    """Normalised layer input [B, T, D] -> (slow output per token [B, T, D], its parts).

    The parts, for analyses: `pooled` (Pool(x)), `y` (the slow states) and `phi` (phi_theta(y)),
    each [B, ceil(T/P), D], one row per pooled block.
    """
    pooled = block_mean_pool(x, self.P)  # Block j: the mean of its P tokens.
    y = self.attn(pooled)  # Block-causal: block j attends to blocks <= j.
    phi = self.phi(y)  # phi_theta(y): the slow state mapped back to the fast space.
    per_token = broadcast_completed_blocks(phi, self.P, x.shape[1])
    return per_token, {'pooled': pooled, 'y': y, 'phi': phi}

  # ------------------------------------------------------------------------- decoding

  def prefill(self, x: Array, lengths: Array, cache_length: int) -> tuple[Array, SlowState]:
    """The parallel pass over prompts x [B, L, D] of `lengths` [B] (right-padded), with the
    decoding state it leaves: every complete block's keys and values, the running sum of the
    incomplete block, and the output the next tokens read."""
    pooled = block_mean_pool(x, self.P)
    b, n = pooled.shape[:2]
    cache = self.attn.empty_cache(b, -(-cache_length // self.P))
    y, cache = self.attn.extend(pooled, cache, jnp.broadcast_to(jnp.arange(n), (b, n)))
    phi = self.phi(y)
    complete = lengths // self.P  # Blocks of row b complete within its prompt.
    tokens = jnp.arange(x.shape[1])
    in_open_block = (tokens >= (complete * self.P)[:, None]) & (tokens < lengths[:, None])
    state = SlowState(
        cache=cache,
        block_sum=jnp.sum(jnp.where(in_open_block[..., None], x.astype(jnp.float32), 0.0), 1),
        output=jnp.where((complete > 0)[:, None],
                         phi[jnp.arange(b), jnp.maximum(complete - 1, 0)], 0).astype(x.dtype))
    return broadcast_completed_blocks(phi, self.P, x.shape[1]), state

  def decode(self, x: Array, state: SlowState, positions: Array) -> tuple[Array, SlowState]:
    """One token per row, x [B, 1, D] at `positions` [B]: add it to its block; where that
    completes block j = (t+1)//P - 1, pool it, attend over the cached blocks <= j and apply
    phi_theta (skipped entirely while no row completes a block); then read the latest output."""
    block_sum = state.block_sum + x[:, 0].astype(jnp.float32)
    completes = (positions + 1) % self.P == 0
    block = jnp.maximum((positions + 1) // self.P - 1, 0)

    def step_slow():
      pooled = (block_sum / self.P).astype(x.dtype)[:, None]
      y, cache = self.attn.extend(pooled, state.cache, block[:, None])
      return cache, self.phi(y)[:, 0]

    cache, output = step_where_blocks_complete(completes, block, step_slow, state.cache,
                                               state.output)
    block_sum = jnp.where(completes[:, None], 0.0, block_sum)
    return output[:, None], SlowState(cache=cache, block_sum=block_sum, output=output)


@flax.struct.dataclass
class SlowState:
  """A slow path's decoding state: the completed blocks' keys and values, the running sum of the
  current block (float32), and phi_theta's output for the latest completed block ([B, D])."""
  cache: KVCache
  block_sum: Array
  output: Array


class Block(nnx.Module):
  """Pre-norm transformer block; with `slow=True`, the fast-slow block of the module docstring."""

  def __init__(self, cfg: ModelConfig, *, slow: bool, rngs: nnx.Rngs, slow_rngs: nnx.Rngs):
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, rngs=rngs, **kw)
    self.fast = CausalSelfAttention(cfg.d_model, cfg.num_heads, rope_theta=cfg.rope_theta,
                                    impl=cfg.attention_impl, block_q=cfg.attention_block_q,
                                    block_kv=cfg.attention_block_kv, rngs=rngs,
                                    output_name=remat.FAST_ATTN, num_kv_heads=cfg.kv_heads,
                                    window=cfg.fast_window, **kw)
    self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, rngs=rngs, **kw)
    self.mlp = SwiGLU(cfg.d_model, cfg.mlp_dim, rngs=rngs, output_name=remat.MLP, **kw)
    path, gate = self._slow_path(cfg, slow_rngs) if slow else (None, None)
    self.slow = path
    if slow:
      self.gate = gate

  def _slow_path(self, cfg: ModelConfig, rngs: nnx.Rngs) -> tuple[nnx.Module, roles.Gate]:
    """The layer's slow path and its zero-initialised gate (scalar or per channel)."""
    with roles.slow_path():
      slow = SlowPath(cfg, rngs=rngs)
    shape, axes = ((), ()) if cfg.gate == 'scalar' else ((cfg.d_model,), ('norm',))
    return slow, param(rngs, nnx.initializers.zeros, shape, axes, jnp.dtype(cfg.param_dtype),
                       roles.Gate)

  def __call__(self, h: Array) -> tuple[Array, dict[str, Array]]:
    """Residual stream [B, T, D] -> (the block's output, its parts).

    The parts report what analyses need without re-running the block: `fast` (FastAttn(x)) and,
    in a slow layer, `gated` (g * Broadcast(phi_theta(...)), per token) plus the slow path's
    `pooled`, `y` and `phi`. Under `jax.jit` the parts nobody reads cost nothing.
    """
    x = self.attn_norm(h)
    fast = self.fast(x)
    parts = {'fast': fast}
    slow = None
    if self.slow is not None:
      slow, slow_parts = self.slow(x)
      parts.update(slow_parts, gated=self._gated(slow))
    return self._residual(h, fast, slow), parts

  def prefill(self, h: Array, lengths: Array, cache_length: int) -> tuple[Array, dict]:
    """`__call__` over right-padded prompts h [B, L, D] of `lengths` [B]; also returns the
    decoding cache for `cache_length` positions per row ({'fast': KVCache, 'slow': SlowState})."""
    x = self.attn_norm(h)
    fast, fast_cache = self.fast.prefill(x, lengths, cache_length)
    cache, slow = {'fast': fast_cache}, None
    if self.slow is not None:
      slow, cache['slow'] = self.slow.prefill(x, lengths, cache_length)
    return self._residual(h, fast, slow), cache

  def decode(self, h: Array, cache: dict, positions: Array) -> tuple[Array, dict]:
    """One token per row, h [B, 1, D] at `positions` [B], against the cache of `prefill`."""
    x = self.attn_norm(h)
    fast, fast_cache = self.fast.extend(x, cache['fast'], positions[:, None])
    new_cache, slow = {'fast': fast_cache}, None
    if self.slow is not None:
      slow, new_cache['slow'] = self.slow.decode(x, cache['slow'], positions)
    return self._residual(h, fast, slow), new_cache

  def _gated(self, slow: Array) -> Array:
    return self.gate[...].astype(slow.dtype) * slow

  def _residual(self, h: Array, fast: Array, slow: Array | None) -> Array:
    """h + FastAttn(x) + g * slow, then the MLP sub-layer: the block's equation."""
    update = fast if slow is None else fast + self._gated(slow)
    h = constrain(h + update, ('batch', 'length', None))
    return constrain(h + self.mlp(self.mlp_norm(h)), ('batch', 'length', None))


# --------------------------------------------------------------------------- family hooks


def build(cfg: ModelConfig, rngs: nnx.Rngs) -> decoder.Decoder:
  """The decoder of fast-slow blocks (every arm; `dense` has no slow layer)."""
  return decoder.Decoder(cfg, Block, rngs=rngs)


def layer_stacks(cfg: ModelConfig) -> dict[tuple, tuple[bool, ...]]:
  """One stack of layers at the top of the model; per layer whether it has a slow path."""
  return {(): cfg.slow_pattern}


def flops_per_token(cfg: ModelConfig, *, causal: bool, seq_len: int) -> flops.FlopCount:
  """Forward FLOPs per token: the fast layers, the slow paths (per block, amortised over its P
  tokens: attention over the T/P blocks plus phi_theta) and the head."""
  d, n_blocks = cfg.d_model, -(-seq_len // cfg.P)
  per_block = (flops.projections(d) + flops.attention(n_blocks, d, causal)
               + flops.swiglu(d, cfg.phi_dim))
  return flops.FlopCount(
      fast=cfg.num_layers * flops.layer(cfg, seq_len, causal),
      slow=len(cfg.slow_layer_ids) * per_block * n_blocks / seq_len,
      head=flops.head(cfg))
