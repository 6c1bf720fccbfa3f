"""The decoder (every arm) and the public model API: build, trainable filter, gate read-out."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from fastslow_jax.models import scan
from fastslow_jax.models.config import ModelConfig
from fastslow_jax.models.fastslow import Block
from fastslow_jax.models.layers import Embed, LMHead, RMSNorm, constrain

# Stream offset for slow-path parameters, so an arm's fast parameters do not depend on whether
# slow paths exist: `dense`, `coupled` and the frozen arms built with one seed share them.
_SLOW_STREAM = 1


class Decoder(nnx.Module):
  """Decoder-only language model: tokens [B, T] int32 -> logits [B, T, V] float32.

  With `scan_layers`, the repeating layers live stacked in `stack` and run as one scan; `blocks`
  holds the layers run one by one (all of them otherwise). See `models.scan` for the layouts.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    slow_rngs = nnx.Rngs(params=jax.random.fold_in(rngs.params.key[...], _SLOW_STREAM))
    self.embed = Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
                       rngs=rngs)
    # Every layer is initialised in turn whatever the layout, so a seed gives the same numbers
    # scanned or unrolled (and the same as before scanning existed); scanning stacks them.
    blocks = [Block(cfg, slow=slow, rngs=rngs, slow_rngs=slow_rngs) for slow in cfg.slow_pattern]
    k, r = cfg.scan_groups
    self.stack = nnx.List([scan.stack_modules(blocks[j:r * k:k]) for j in range(k)] if r else [])
    self.blocks = nnx.List(blocks[r * k:])
    self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)
    self.head = None if cfg.tie_embeddings else LMHead(
        cfg.d_model, cfg.vocab_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return self.forward(tokens)[0]

  def forward(self, tokens: jax.Array) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """(logits [B, T, V] float32, per layer the parts of its block) for tokens [B, T].

    The parts (`Block.__call__`) are what analyses read: the fast update and, in slow layers, the
    pooled input, slow states, phi_theta's output and the gated per-token slow update.
    """
    return self.forward_embeddings(self.embed(tokens))

  def forward_embeddings(self, h: jax.Array) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """`forward` from the token embeddings [B, T, D] on (for gradients with respect to them)."""
    h = constrain(h, ('batch', 'length', None))
    parts = []
    if len(self.stack):
      h, parts = scan.scan_stack(self.stack, h, self.config.remat)
    call = scan.remat(Block.__call__, self.config.remat)
    for block in self.blocks:
      h, block_parts = call(block, h)
      parts.append(block_parts)
    return self._logits(h), parts

  # ------------------------------------------------------------------------- decoding

  def prefill(self, tokens: jax.Array, lengths: jax.Array,
              cache_length: int) -> tuple[jax.Array, list[dict]]:
    """One parallel pass over right-padded prompts tokens [B, L] of `lengths` [B]: (logits
    [B, L, V], per layer the decoding cache for `cache_length` positions per row). No row reads
    another row's tokens or its own padding. Unrolled layout only (see `unrolled`)."""
    self._check_unrolled()
    h, caches = self.embed(tokens), []
    for block in self.blocks:
      h, cache = block.prefill(h, lengths, cache_length)
      caches.append(cache)
    return self._logits(h), caches

  def decode(self, tokens: jax.Array, positions: jax.Array,
             caches: list[dict]) -> tuple[jax.Array, list[dict]]:
    """One token per row, tokens [B] at `positions` [B]: (logits [B, V], updated caches)."""
    self._check_unrolled()
    h, new_caches = self.embed(tokens[:, None]), []
    for block, cache in zip(self.blocks, caches):
      h, cache = block.decode(h, cache, positions)
      new_caches.append(cache)
    return self._logits(h)[:, 0], new_caches

  def _logits(self, h: jax.Array) -> jax.Array:
    h = self.final_norm(h)
    logits = self.embed.attend(h) if self.head is None else self.head(h)
    return constrain(logits, ('batch', 'length', 'vocab'))

  def _check_unrolled(self) -> None:
    if len(self.stack):
      raise ValueError('decoding runs on the unrolled layout: pass models.unrolled(model).')


def build(config: ModelConfig | Mapping[str, Any], rngs: nnx.Rngs | int = 0) -> Decoder:
  """Builds the model of any arm.

  Args:
    config: a `ModelConfig`, or a dict / `ml_collections.ConfigDict` of its fields
      (e.g. `config.model` of a training config).
    rngs: `nnx.Rngs` with a `params` stream, or an int seed.

  Returns:
    An NNX `Decoder`; `model(tokens)` maps int32 tokens [B, T] to float32 logits [B, T, V].
    Parameters carry logical axis names; sharding them is the caller's business (see
    `fastslow_jax.sharding`), so no mesh is needed here.
  """
  if not isinstance(config, ModelConfig):
    config = ModelConfig.from_mapping(config)
  if isinstance(rngs, int):
    rngs = nnx.Rngs(params=rngs)
  with nnx.use_eager_sharding(False):
    return Decoder(config, rngs=rngs)


def trainable_filter(config: ModelConfig) -> nnx.filterlib.Filter:
  """The NNX filter of parameters that an arm trains; everything else stays at its init.

  `gate_frozen` holds every `gate` at zero; `slow_frozen` holds every parameter under a `slow`
  path (slow attention and phi_theta) at its init while the gates learn.
  """
  frozen = {'gate_frozen': 'gate', 'slow_frozen': 'slow'}.get(config.arm)
  if frozen is None:
    return nnx.Param
  return nnx.All(nnx.Param, nnx.Not(nnx.PathContains(frozen)))


def trainable_mask(model: Decoder) -> nnx.State:
  """State of booleans shaped like `nnx.state(model, nnx.Param)`: True where the arm trains."""
  params = nnx.state(model, nnx.Param)
  trainable = set(path for path, _ in nnx.to_flat_state(
      nnx.state(model, trainable_filter(model.config))))
  return nnx.map_state(lambda path, _: path in trainable, params)


def gate_values(params: nnx.State | Decoder) -> dict[str, float]:
  """Mean gate value per slow layer, keyed 'layer_<i>' (empty for `dense`); either layout."""
  if isinstance(params, nnx.Module):
    params = nnx.state(params, nnx.Param)
  return {f'layer_{path[1]}': float(jnp.mean(jnp.asarray(value)))
          for path, value in nnx.to_flat_state(scan.unstack_layers(params)) if 'gate' in path}


def convert_layout(params: nnx.State, config: ModelConfig) -> nnx.State:
  """Parameters of either layer layout (scanned or unrolled) in the layout `config` asks for."""
  unrolled = scan.unstack_layers(params)
  return scan.stack_layers(unrolled, config.scan_groups) if config.scan_layers else unrolled


def unrolled(model: Decoder) -> Decoder:
  """The same model in the unrolled layer layout (itself when already unrolled)."""
  if not len(model.stack):
    return model
  config = dataclasses.replace(model.config, scan_layers=False)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(config)), nnx.Param)
  return nnx.merge(graphdef, convert_layout(nnx.state(model, nnx.Param), config))


def param_count(params: nnx.State | Decoder) -> int:
  """Number of parameter scalars of a model or a parameter state."""
  if isinstance(params, nnx.Module):
    params = nnx.state(params, nnx.Param)
  return sum(x.size for x in jax.tree.leaves(params))
