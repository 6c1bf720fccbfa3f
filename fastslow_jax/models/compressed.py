"""The compressed family: causal attention plus a gated branch over compressed blocks (the
compression branch of DeepSeek's Native Sparse Attention, 2025).

In a layer with a slow path, per head h, with q, k, v the layer's own queries, keys and values:

    Kc_j = phi_K(k[jP:(j+1)P] + E_K),   Vc_j = phi_V(v[jP:(j+1)P] + E_V)
    out_h(t) = CausalAttn_h(t) + g_h * softmax_{j < (t+1)//P}(q_t . Kc_j / sqrt(d)) Vc_j

phi is a small MLP over the P keys (or values) of a completed block, flattened, with a learned
intra-block position embedding E; it is shared by the heads of a layer. Block j is visible at
token t iff it is complete (j < (t+1)//P), the rule of the fast-slow family; a token with no
visible block gets zero from the branch. The per-head gate g starts at zero, so a fresh layer is
exactly the dense layer (phi keeps an ordinary init, so g gets a gradient from the first step).
The branch reads queries and keys before rotary positions: the block mask orders the blocks, E
the tokens inside one. Its attention over T/P blocks is the einsum kernel on every backend. With
`fast_window` W the causal attention is NSA's sliding window (t-W < s <= t) and the compressed
blocks are how older tokens reach t.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from fastslow_jax.models import decoder, fastslow, flops, roles
from fastslow_jax.models.attention_kernels import masked_attention
from fastslow_jax.models.config import ModelConfig
from fastslow_jax.models.layers import (KVCache, default_init, embed_init, param,
                                        step_where_blocks_complete)

Array = jax.Array


def visible_blocks(positions: Array, P: int, num_blocks: int) -> Array:
  """[..., num_blocks] booleans: block j is visible at token position t iff j < (t+1)//P."""
  return jnp.arange(num_blocks) < ((positions + 1) // P)[..., None]


class BlockCompressor(nnx.Module):
  """phi(x + E): P vectors of a block (per head) -> one vector, by an MLP over their concat."""

  def __init__(self, P: int, head_dim: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.position = param(rngs, embed_init, (P, head_dim), ('length', 'kv'), param_dtype)
    self.w_in = param(rngs, nnx.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal',
                                                              in_axis=(0, 1), out_axis=2),
                      (P, head_dim, hidden), ('length', 'kv', 'compress'), param_dtype)
    self.w_out = param(rngs, default_init, (hidden, head_dim), ('compress', 'kv'), param_dtype)
    self.dtype = dtype

  def __call__(self, blocks: Array) -> Array:
    """[B, N, P, H, head_dim] blocks -> [B, N, H, head_dim], one vector per block and head."""
    cast = lambda w: w[...].astype(self.dtype)
    x = blocks + cast(self.position)[:, None]
    hidden = jax.nn.silu(jnp.einsum('bnphk,pkc->bnhc', x, cast(self.w_in)))
    return jnp.einsum('bnhc,ck->bnhk', hidden, cast(self.w_out))


class CompressedBranch(nnx.Module):
  """The compressed keys and values of completed blocks, and attention over them."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    self.compress_k = BlockCompressor(cfg.P, cfg.head_dim, cfg.compress_dim, **kw)
    self.compress_v = BlockCompressor(cfg.P, cfg.head_dim, cfg.compress_dim, **kw)
    self.P = cfg.P

  def compress(self, k: Array, v: Array) -> tuple[Array, Array]:
    """Keys and values [B, S, H, head_dim] (S a multiple of P) -> one per block [B, S/P, H, hd]."""
    blocks = lambda x: x.reshape(x.shape[0], -1, self.P, *x.shape[2:])
    return self.compress_k(blocks(k)), self.compress_v(blocks(v))

  def __call__(self, q: Array, k: Array, v: Array) -> tuple[Array, dict[str, Array]]:
    """Per-head output [B, T, H, hd] for the T tokens of q, k, v, and its parts: the compressed
    keys and values `k_blocks`, `v_blocks` [B, ceil(T/P), H, hd]."""
    t = q.shape[1]
    pad = lambda x: jnp.pad(x, ((0, 0), (0, -t % self.P), (0, 0), (0, 0)))
    kc, vc = self.compress(pad(k), pad(v))  # A trailing incomplete block is never visible.
    out = masked_attention(q, kc, vc, visible_blocks(jnp.arange(t), self.P, kc.shape[1]))
    return out, {'k_blocks': kc, 'v_blocks': vc}


@flax.struct.dataclass
class CompressedState:
  """The branch's decoding state: compressed keys and values of the completed blocks
  ([B, blocks, H, hd]) and the raw keys and values of the open block ([B, P, H, hd])."""
  cache: KVCache
  open_k: Array
  open_v: Array


class CompressedBlock(fastslow.Block):
  """Pre-norm transformer block; with `slow=True`, attention gains the compressed branch of the
  module docstring. The fast parameters are those of `fastslow.Block` for the same streams."""

  def _slow_path(self, cfg: ModelConfig, rngs: nnx.Rngs):
    with roles.slow_path():
      branch = CompressedBranch(cfg, rngs=rngs)
    return branch, param(rngs, nnx.initializers.zeros, (cfg.num_heads,), ('heads',),
                         jnp.dtype(cfg.param_dtype), roles.Gate)

  def __call__(self, h: Array) -> tuple[Array, dict[str, Array]]:
    """Residual stream [B, T, D] -> (output, parts): `fast` (the causal attention update), and
    in a slow layer `gated` (the gated compressed update) and the branch's parts."""
    if self.slow is None:
      return super().__call__(h)
    x = self.attn_norm(h)
    q0, k0, v = self.fast.project(x)
    q, k = self.fast.rotate(q0, k0, jnp.arange(x.shape[1]))
    full = self.fast.attend(q, k, v)
    compressed, parts = self.slow(q0, k0, v)
    gated = self._gated(compressed)
    parts.update(fast=self.fast.output(full), gated=self.fast.output(gated))
    return self._residual(h, self.fast.output(full + gated), None), parts

  def prefill(self, h: Array, lengths: Array, cache_length: int) -> tuple[Array, dict]:
    """`__call__` over right-padded prompts h [B, L, D] of `lengths` [B], with the decoding
    cache for `cache_length` positions per row ({'fast': KVCache, 'slow': CompressedState})."""
    if self.slow is None:
      return super().prefill(h, lengths, cache_length)
    b, length = h.shape[:2]
    x = self.attn_norm(h)
    q0, k0, v = self.fast.project(x)
    q, k = self.fast.rotate(q0, k0, jnp.arange(length))
    full, fast_cache = self.fast.attend_prompt(q, k, v, lengths, cache_length)
    compressed, parts = self.slow(q0, k0, v)
    blocks = parts['k_blocks'].shape[1]
    num_blocks = -(-cache_length // self.slow.P)
    cache = KVCache(*(jnp.zeros((b, num_blocks, *parts[name].shape[2:]), parts[name].dtype)
                      .at[:, :blocks].set(parts[name]) for name in ('k_blocks', 'v_blocks')))
    # The open block's raw keys and values (positions past a row's prompt are written before
    # its block completes).
    index = jnp.minimum((lengths // self.slow.P)[:, None] * self.slow.P
                        + jnp.arange(self.slow.P), length - 1)[..., None, None]
    state = CompressedState(cache=cache, open_k=jnp.take_along_axis(k0, index, axis=1),
                            open_v=jnp.take_along_axis(v, index, axis=1))
    out = self.fast.output(full + self._gated(compressed))
    return self._residual(h, out, None), {'fast': fast_cache, 'slow': state}

  def decode(self, h: Array, cache: dict, positions: Array) -> tuple[Array, dict]:
    """One token per row, h [B, 1, D] at `positions` [B]: its key and value join the open block;
    where that completes block (t+1)//P - 1, the block is compressed into the cache (skipped
    entirely while no row completes one); then the token attends to the visible blocks."""
    if self.slow is None:
      return super().decode(h, cache, positions)
    x = self.attn_norm(h)
    q0, k0, v = self.fast.project(x)
    q, k = self.fast.rotate(q0, k0, positions[:, None])
    full, fast_cache = self.fast.attend_cached(q, k, v, cache['fast'], positions[:, None])
    state, P, rows = cache['slow'], self.slow.P, jnp.arange(h.shape[0])
    open_k = state.open_k.at[rows, positions % P].set(k0[:, 0])
    open_v = state.open_v.at[rows, positions % P].set(v[:, 0])
    completes = (positions + 1) % P == 0
    block = jnp.maximum((positions + 1) // P - 1, 0)

    def compress_block():
      kc, vc = self.slow.compress(open_k, open_v)  # [B, 1, H, hd]
      return KVCache(k=state.cache.k.at[rows, block].set(kc[:, 0]),
                     v=state.cache.v.at[rows, block].set(vc[:, 0])), ()

    blocks, _ = step_where_blocks_complete(completes, block, compress_block, state.cache, ())
    mask = visible_blocks(positions[:, None], P, blocks.k.shape[1])
    compressed = masked_attention(q0, blocks.k, blocks.v, mask)
    out = self.fast.output(full + self._gated(compressed))
    new_state = CompressedState(cache=blocks, open_k=open_k, open_v=open_v)
    return self._residual(h, out, None), {'fast': fast_cache, 'slow': new_state}

  def _gated(self, compressed: Array) -> Array:
    return self.gate[...].astype(compressed.dtype)[:, None] * compressed  # Per head.


# --------------------------------------------------------------------------- family hooks


def build(cfg: ModelConfig, rngs: nnx.Rngs) -> decoder.Decoder:
  """The decoder of compressed blocks (layers per `cfg.slow_layers`)."""
  return decoder.Decoder(cfg, CompressedBlock, rngs=rngs)


layer_stacks = fastslow.layer_stacks


def flops_per_token(cfg: ModelConfig, *, causal: bool, seq_len: int) -> flops.FlopCount:
  """Forward FLOPs per token: full-rate layers, and per slow layer the compression of each block
  (two MLPs per head, amortised over its P tokens) plus attention over the visible blocks."""
  d, P, hd, n = cfg.d_model, cfg.P, cfg.head_dim, -(-seq_len // cfg.P)
  mlp = 2 * (P * hd * cfg.compress_dim + cfg.compress_dim * hd)  # One block, one head.
  compress = 2 * cfg.kv_heads * mlp / P  # Keys and values, per key head.
  # Token t sees (t+1)//P blocks: (n-1)/2 + 1/P on average over T = nP; a masked kernel all n.
  visible = sum((t + 1) // P for t in range(seq_len)) / seq_len if causal else n
  slow = len(cfg.slow_layer_ids) * (compress + 2 * 2 * d * visible)
  return flops.FlopCount(fast=cfg.num_layers * flops.layer(cfg, seq_len, causal), slow=slow,
                         head=flops.head(cfg))
