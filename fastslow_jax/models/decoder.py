"""The decoder of the block families (fastslow, compressed, and `dense` for every family).

    h = Embed(tokens);  h = Block_i(h) for each layer i;  logits = Head(norm(h))

A family's block class decides what a layer with a slow path adds; layers without one are the
plain pre-norm transformer block. A block has `__call__(h) -> (h, parts)` for training and
`prefill` / `decode` with explicit caches for generation (see `fastslow.Block`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fastslow_jax.models import scan
from fastslow_jax.models.config import ModelConfig, repeating_groups
from fastslow_jax.models.layers import Embed, LMHead, RMSNorm, constrain

# Stream offset for slow-path parameters, so an arm's fast parameters do not depend on whether
# slow paths exist: `dense`, `coupled` and the frozen arms built with one seed share them.
SLOW_STREAM = 1


def slow_stream(rngs: nnx.Rngs) -> nnx.Rngs:
  """The parameter stream of the slow paths, derived from (and independent of) `rngs`."""
  return nnx.Rngs(params=jax.random.fold_in(rngs.params.key[...], SLOW_STREAM))


def _dtypes(cfg: ModelConfig) -> dict:
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


class LanguageModel(nnx.Module):
  """What every model of the zoo is: tokens [B, T] int32 -> logits [B, T, V] float32.

  It shares the token embedding, the final norm and the (tied or untied) output head around its
  layers; parameters are created embedding first, head last, the layers' in between. A family
  defines `forward_embeddings` (training) and `prefill` / `decode` (generation), and keeps its
  `ModelConfig` as `config`.
  """

  def _init_input(self, cfg: ModelConfig, rngs: nnx.Rngs) -> None:
    self.embed = Embed(cfg.vocab_size, cfg.d_model, **_dtypes(cfg), rngs=rngs)

  def _init_output(self, cfg: ModelConfig, rngs: nnx.Rngs) -> None:
    self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, **_dtypes(cfg), rngs=rngs)
    self.head = None if cfg.tie_embeddings else LMHead(cfg.d_model, cfg.vocab_size,
                                                       **_dtypes(cfg), rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Logits [B, T, V] float32 of tokens [B, T] int32."""
    return self.forward(tokens)[0]

  def forward(self, tokens: jax.Array) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """(logits [B, T, V] float32, per layer the parts of its block) for tokens [B, T]."""
    return self.forward_embeddings(self.embed(tokens))

  def forward_embeddings(self, h: jax.Array) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """`forward` from the token embeddings [B, T, D] on (for gradients with respect to them)."""
    raise NotImplementedError

  def prefill(self, tokens: jax.Array, lengths: jax.Array, cache_length: int):
    """One parallel pass over right-padded prompts tokens [B, L] of `lengths` [B]: (logits
    [B, L, V], the decoding caches for `cache_length` positions per row). Unrolled layout."""
    raise NotImplementedError

  def decode(self, tokens: jax.Array, positions: jax.Array, caches):
    """One token per row, tokens [B] at `positions` [B]: (logits [B, V], updated caches)."""
    raise NotImplementedError

  def _logits(self, h: jax.Array) -> jax.Array:
    h = self.final_norm(h)
    logits = self.embed.attend(h) if self.head is None else self.head(h)
    return constrain(logits, ('batch', 'length', 'vocab'))


class Decoder(LanguageModel):
  """Decoder-only language model: tokens [B, T] int32 -> logits [B, T, V] float32.

  `block` is the family's block class, built per layer with `slow=` whether the layer carries a
  slow path (`cfg.slow_pattern`). With `scan_layers`, the repeating layers live stacked in
  `stack` and run as one scan; `blocks` holds the layers run one by one (all of them otherwise).
  See `models.scan` for the layouts.
  """

  def __init__(self, cfg: ModelConfig, block: type[nnx.Module], *, rngs: nnx.Rngs):
    self.config = cfg
    slow_rngs = slow_stream(rngs)
    self._init_input(cfg, rngs)
    # Every layer is initialised in turn whatever the layout, so a seed gives the same numbers
    # scanned or unrolled (and the same as before scanning existed); scanning stacks them.
    blocks = [block(cfg, slow=slow, rngs=rngs, slow_rngs=slow_rngs) for slow in cfg.slow_pattern]
    self.stack, self.blocks = scan.build_stack(blocks, cfg.scan_groups)
    self._init_output(cfg, rngs)

  def forward_embeddings(self, h: jax.Array) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """`forward` from the token embeddings [B, T, D] on (for gradients with respect to them).

    The parts (the blocks' `__call__`) are what analyses read: the fast update and, in slow
    layers, what the slow path computed and the gated update it adds.
    """
    h = constrain(h, ('batch', 'length', None))
    h, parts = scan.run_stack(self.stack, self.blocks, h, self.config.remat)
    return self._logits(h), parts

  # ------------------------------------------------------------------------- decoding

  def prefill(self, tokens: jax.Array, lengths: jax.Array,
              cache_length: int) -> tuple[jax.Array, list[dict]]:
    """One parallel pass over right-padded prompts tokens [B, L] of `lengths` [B]: (logits
    [B, L, V], per layer the decoding cache for `cache_length` positions per row). No row reads
    another row's tokens or its own padding. Unrolled layout only (see `models.unrolled`)."""
    h, caches = prefill_layers(self.stack, self.blocks, self.embed(tokens), lengths, cache_length)
    return self._logits(h), caches

  def decode(self, tokens: jax.Array, positions: jax.Array,
             caches: list[dict]) -> tuple[jax.Array, list[dict]]:
    """One token per row, tokens [B] at `positions` [B]: (logits [B, V], updated caches)."""
    h, caches = decode_layers(self.stack, self.blocks, self.embed(tokens[:, None]), caches,
                              positions)
    return self._logits(h)[:, 0], caches


class LayerStack(nnx.Module):
  """A stack of plain transformer layers (`fastslow.Block` without slow path), scanned or not as
  `cfg.scan_layers` says: a stage of a model whose layers are not all at the top (hourglass)."""

  def __init__(self, cfg: ModelConfig, num_layers: int, block: type[nnx.Module], *,
               rngs: nnx.Rngs):
    self.remat = cfg.remat
    blocks = [block(cfg, slow=False, rngs=rngs, slow_rngs=rngs) for _ in range(num_layers)]
    groups = repeating_groups((False,) * num_layers) if cfg.scan_layers else (1, 0)
    self.stack, self.blocks = scan.build_stack(blocks, groups)

  def __call__(self, h: jax.Array) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    return scan.run_stack(self.stack, self.blocks, h, self.remat)

  def prefill(self, h: jax.Array, lengths: jax.Array, cache_length: int):
    return prefill_layers(self.stack, self.blocks, h, lengths, cache_length)

  def decode(self, h: jax.Array, caches: list[dict], positions: jax.Array):
    return decode_layers(self.stack, self.blocks, h, caches, positions)


def prefill_layers(stack: nnx.List, blocks: nnx.List, h: jax.Array, lengths: jax.Array,
                   cache_length: int) -> tuple[jax.Array, list[dict]]:
  """Each layer's `prefill` in turn: (output, per layer its decoding cache)."""
  scan.check_unrolled(stack)
  caches = []
  for block in blocks:
    h, cache = block.prefill(h, lengths, cache_length)
    caches.append(cache)
  return h, caches


def decode_layers(stack: nnx.List, blocks: nnx.List, h: jax.Array, caches: list[dict],
                  positions: jax.Array) -> tuple[jax.Array, list[dict]]:
  """Each layer's `decode` of one position per row in turn: (output, updated caches)."""
  scan.check_unrolled(stack)
  new_caches = []
  for block, cache in zip(blocks, caches):
    h, cache = block.decode(h, cache, positions)
    new_caches.append(cache)
  return h, new_caches
