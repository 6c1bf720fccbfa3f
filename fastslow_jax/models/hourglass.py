"""The hourglass family (Nawrot et al. 2021, "Hierarchical Transformers Are More Efficient
Language Models"): full-rate layers, a shortened stack at T/P, full-rate layers again.

    h = PreLayers(Embed(tokens))                     T tokens
    s = Shorten(ShiftRight(h, P - 1))                T/P groups: group j holds h[jP-P+1 .. jP]
    z = InnerLayers(s)                               causal over the groups
    u = h + Upsample(z)                              token t reads z[t // P]
    logits = Head(norm(PostLayers(u)))

Causality: group j ends at token jP and token t reads group t//P, whose last token (t//P)*P is
at most t; the shift by P - 1 is what keeps the future out (a shift by P - 2 would leak).
Shorten averages a group (`hourglass_pool='average'`) or maps its P tokens by a learned matrix
(`'linear'`); Upsample repeats z_j over the P tokens of its positions (`hourglass_upsample=
'repeat'`) or maps it by a learned matrix per position in the group (`'linear'`). Every layer is
the plain pre-norm transformer block; `hourglass_layers` sets the three stage depths. With
`fast_window` W the full-rate layers attend locally (t-W < s <= t); the inner layers always
attend over every group. The slow path (shortening, inner layers, upsampling) is what the
`slow_frozen` arm holds at its init; there is no gate.
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from fastslow_jax.models import decoder, fastslow, flops, roles
from fastslow_jax.models.config import ModelConfig
from fastslow_jax.models.layers import constrain, default_init, param, step_where_blocks_complete

Array = jax.Array


def shift_right(h: Array, shift: int) -> Array:
  """[B, T, D] -> [B, T + shift, D]: `shift` zero vectors in front (position i holds h[i - shift])."""
  return jnp.pad(h, ((0, 0), (shift, 0), (0, 0)))


class Shortened(nnx.Module):
  """Shorten -> inner layers -> Upsample: the hourglass's slow path, one step per P tokens."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, P, param_dtype = cfg.d_model, cfg.P, jnp.dtype(cfg.param_dtype)
    self.P, self.dtype = P, jnp.dtype(cfg.dtype)
    pool_init = nnx.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal',
                                                  in_axis=(0, 1), out_axis=2)
    self.pool = None if cfg.hourglass_pool == 'average' else param(
        rngs, pool_init, (P, d, d), ('length', 'embed', 'mlp'), param_dtype)
    _, inner, _ = cfg.hourglass_stages
    # The inner layers attend over all T/P groups: a local window is the full-rate layers' only.
    self.inner = decoder.LayerStack(dataclasses.replace(cfg, fast_window=0), inner,
                                    fastslow.Block, rngs=rngs)
    self.upsample = None if cfg.hourglass_upsample == 'repeat' else param(
        rngs, default_init, (d, P, d), ('mlp', 'length', 'embed'), param_dtype)

  def shorten(self, groups: Array) -> Array:
    """[B, N, P, D] groups of P consecutive (shifted) tokens -> [B, N, D]."""
    if self.pool is None:
      return groups.mean(axis=2)
    return jnp.einsum('bnpd,pde->bne', groups, self.pool[...].astype(self.dtype))

  def expand(self, z: Array, offsets: Array) -> Array:
    """z [B, S, D] read at `offsets` [S] or [B, S] (position within its group) -> [B, S, D]."""
    if self.upsample is None:
      return z
    w = self.upsample[...].astype(self.dtype).transpose(1, 0, 2)[offsets]  # [(B,) S, D, D]
    return jnp.einsum('bsd,sde->bse' if offsets.ndim == 1 else 'bsd,bsde->bse', z, w)

  def __call__(self, h: Array) -> tuple[Array, list[dict[str, Array]]]:
    """Pre-layer output h [B, T, D] -> (the upsampled slow update per token [B, T, D], the inner
    layers' parts)."""
    t, P = h.shape[1], self.P
    n = -(-t // P)  # Groups read by some token: t//P < n.
    groups = shift_right(h, P - 1)[:, :n * P].reshape(h.shape[0], n, P, h.shape[2])
    z, parts = self.inner(self.shorten(groups))
    per_token = jnp.repeat(z, P, axis=1)[:, :t]  # Token t reads group t//P.
    return self.expand(per_token, jnp.arange(t) % P), parts

  # ------------------------------------------------------------------------- decoding

  def prefill(self, h: Array, lengths: Array, cache_length: int) -> tuple[Array, ShortState]:
    """The parallel pass over prompts h [B, L, D] of `lengths` [B] (right-padded), and the state
    it leaves: the inner layers' caches, the open group's tokens and the output tokens read."""
    b, t, P = h.shape[0], h.shape[1], self.P
    n = -(-t // P)
    groups = shift_right(h, P - 1)[:, :n * P].reshape(b, n, P, h.shape[2])
    z, caches = self.inner.prefill(self.shorten(groups), (lengths - 1) // P + 1,
                                   -(-cache_length // P))
    per_token = self.expand(jnp.repeat(z, P, axis=1)[:, :t], jnp.arange(t) % P)
    # The next group to complete, g = (length-1)//P + 1, holds tokens (g-1)P+1 .. gP; those
    # already in the prompt go in its slots (the rest are written before g completes).
    start = ((lengths - 1) // P) * P + 1
    index = jnp.minimum(start[:, None] + jnp.arange(P), t - 1)[..., None]
    state = ShortState(caches=caches, open_group=jnp.take_along_axis(h, index, axis=1),
                       output=z[jnp.arange(b), (lengths - 1) // P])
    return per_token, state

  def decode(self, h: Array, state: ShortState, positions: Array) -> tuple[Array, ShortState]:
    """One token per row, h [B, 1, D] at `positions` [B]: it joins the open group; where it
    completes group t//P (t a multiple of P), the group is shortened and the inner layers step
    once (skipped entirely while no row completes one); then the token reads the latest output."""
    P, rows = self.P, jnp.arange(h.shape[0])
    open_group = state.open_group.at[rows, (positions - 1) % P].set(h[:, 0])
    completes = positions % P == 0

    def step_inner():
      z, caches = self.inner.decode(self.shorten(open_group[:, None]), state.caches,
                                    positions // P)
      return caches, z[:, 0]

    caches, output = step_where_blocks_complete(completes, positions // P, step_inner,
                                                state.caches, state.output)
    per_token = self.expand(output[:, None], (positions % P)[:, None])
    return per_token, ShortState(caches=caches, open_group=open_group, output=output)


@flax.struct.dataclass
class ShortState:
  """The shortened stack's decoding state: the inner layers' caches (one entry per group), the
  tokens of the open group [B, P, D] and the inner output of the latest group [B, D]."""
  caches: list
  open_group: Array
  output: Array


class HourglassDecoder(decoder.LanguageModel):
  """Pre layers, the shortened stack (`slow`), post layers; the layout of each stage's layers
  (scanned or not) follows `models.scan` under the prefixes `pre`, `slow/inner` and `post`."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    slow_rngs = decoder.slow_stream(rngs)
    pre, _, post = cfg.hourglass_stages
    self._init_input(cfg, rngs)
    self.pre = decoder.LayerStack(cfg, pre, fastslow.Block, rngs=rngs)
    self.post = decoder.LayerStack(cfg, post, fastslow.Block, rngs=rngs)
    with roles.slow_path():
      self.slow = Shortened(cfg, rngs=slow_rngs)
    self._init_output(cfg, rngs)

  def forward_embeddings(self, h: Array) -> tuple[Array, list[dict[str, Array]]]:
    """`forward` from the token embeddings [B, T, D]; the parts are those of every layer, in the
    order pre, inner, post."""
    h = constrain(h, ('batch', 'length', None))
    h, pre_parts = self.pre(h)
    up, inner_parts = self.slow(h)
    h, post_parts = self.post(constrain(h + up, ('batch', 'length', None)))
    return self._logits(h), pre_parts + inner_parts + post_parts

  def prefill(self, tokens: Array, lengths: Array, cache_length: int) -> tuple[Array, dict]:
    """As `LanguageModel.prefill`: logits [B, L, V] and the caches of every stage."""
    h, pre = self.pre.prefill(self.embed(tokens), lengths, cache_length)
    up, slow = self.slow.prefill(h, lengths, cache_length)
    h, post = self.post.prefill(h + up, lengths, cache_length)
    return self._logits(h), {'pre': pre, 'slow': slow, 'post': post}

  def decode(self, tokens: Array, positions: Array, caches: dict) -> tuple[Array, dict]:
    """As `LanguageModel.decode`: one token per row, logits [B, V] and the updated caches."""
    h, pre = self.pre.decode(self.embed(tokens[:, None]), caches['pre'], positions)
    up, slow = self.slow.decode(h, caches['slow'], positions)
    h, post = self.post.decode(h + up, caches['post'], positions)
    return self._logits(h)[:, 0], {'pre': pre, 'slow': slow, 'post': post}


# --------------------------------------------------------------------------- family hooks


def build(cfg: ModelConfig, rngs: nnx.Rngs) -> HourglassDecoder:
  return HourglassDecoder(cfg, rngs=rngs)


def layer_stacks(cfg: ModelConfig) -> dict[tuple, tuple[bool, ...]]:
  """The three stages' stacks of plain layers, by path prefix."""
  pre, inner, post = cfg.hourglass_stages
  return {('pre',): (False,) * pre, ('slow', 'inner'): (False,) * inner, ('post',): (False,) * post}


def flops_per_token(cfg: ModelConfig, *, causal: bool, seq_len: int) -> flops.FlopCount:
  """Forward FLOPs per token: pre and post layers at full rate; inner layers over the T/P groups
  (per group, amortised over its P tokens) plus the linear shortening / upsampling if any."""
  pre, inner, post = cfg.hourglass_stages
  d, n = cfg.d_model, -(-seq_len // cfg.P)
  resample = 2 * d * d * ((cfg.hourglass_pool == 'linear') + (cfg.hourglass_upsample == 'linear'))
  return flops.FlopCount(fast=(pre + post) * flops.layer(cfg, seq_len, causal),
                         slow=inner * flops.layer(cfg, n, causal, window=0) / cfg.P + resample,
                         head=flops.head(cfg))
