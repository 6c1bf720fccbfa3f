"""The public model API: build any family and arm, trainable filter, gates, layer layouts, and what
a family's module is (`FamilyModule`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from fastslow_jax.models import families, roles, scan
from fastslow_jax.models.config import ModelConfig, repeating_groups
from fastslow_jax.models.decoder import LanguageModel
from fastslow_jax.models.flops import FlopCount


class FamilyModule(Protocol):
  """What a family's module defines (`fastslow.py`, `hourglass.py`, `compressed.py`); the table
  of families (`families.FAMILIES`) names the module."""

  def build(self, cfg: ModelConfig, rngs: nnx.Rngs) -> LanguageModel:
    """The model of `cfg` (arm `coupled` or a frozen arm; `dense` is fastslow's)."""

  def flops_per_token(self, cfg: ModelConfig, *, causal: bool, seq_len: int) -> FlopCount:
    """Forward FLOPs per token for sequences of `seq_len` (`models.flops` conventions)."""

  def layer_stacks(self, cfg: ModelConfig) -> dict[tuple[Any, ...], tuple[bool, ...]]:
    """Where its stacks of layers live: {path prefix: per layer, whether it has a slow path}
    (`models.scan` lays each stack out scanned or unrolled)."""


def build(config: ModelConfig | Mapping[str, Any], rngs: nnx.Rngs | int = 0) -> LanguageModel:
  """Builds the model of any family and arm (`config.family`, `config.arm`).

  Args:
    config: a `ModelConfig`, or a dict / `ml_collections.ConfigDict` of its fields
      (e.g. `config.model` of a training config).
    rngs: `nnx.Rngs` with a `params` stream, or an int seed.

  Returns:
    An NNX `LanguageModel`; `model(tokens)` maps int32 tokens [B, T] to float32 logits [B, T, V].
    Parameters carry logical axis names; sharding them is the caller's business (see
    `fastslow_jax.sharding`), so no mesh is needed here.
  """
  if not isinstance(config, ModelConfig):
    config = ModelConfig.from_mapping(config)
  if isinstance(rngs, int):
    rngs = nnx.Rngs(params=rngs)
  with nnx.use_eager_sharding(False):
    return families.module(config).build(config, rngs)


def trainable_filter(config: ModelConfig) -> nnx.filterlib.Filter:
  """The NNX filter of parameters that an arm trains; everything else stays at its init.

  `gate_frozen` holds every `roles.Gate` at zero; `slow_frozen` holds every `roles.SlowParam`
  (slow attention and phi_theta, block compressors, the shortened stack) at its init while the
  gates learn.
  """
  frozen = {'gate_frozen': roles.Gate, 'slow_frozen': roles.SlowParam}.get(config.arm)
  if frozen is None:
    return nnx.Param
  return nnx.All(nnx.Param, nnx.Not(frozen))


def trainable_mask(model: LanguageModel) -> nnx.State:
  """State of booleans shaped like `nnx.state(model, nnx.Param)`: True where the arm trains."""
  params = nnx.state(model, nnx.Param)
  trainable = set(path for path, _ in nnx.to_flat_state(
      nnx.state(model, trainable_filter(model.config))))
  return nnx.map_state(lambda path, _: path in trainable, params)


def gate_values(params: nnx.State | LanguageModel) -> dict[str, float]:
  """Mean gate value per slow layer, keyed 'layer_<i>' (empty for `dense`); either layout."""
  gates = nnx.state(params, roles.Gate) if isinstance(params, nnx.Module) else (
      nnx.filter_state(params, roles.Gate))
  return {f'layer_{path[1]}': float(jnp.mean(jnp.asarray(value)))
          for path, value in nnx.to_flat_state(scan.unstack_layers(gates))}


def layer_groups(config: ModelConfig) -> dict[tuple, tuple[int, int]]:
  """(k, r) of every stack of layers of the model, by path prefix (`models.scan`): what
  `scan_layers` stacks, (1, 0) everywhere without it."""
  stacks = families.module(config).layer_stacks(config)
  return {prefix: repeating_groups(pattern) if config.scan_layers else (1, 0)
          for prefix, pattern in stacks.items()}


def convert_layout(params: nnx.State, config: ModelConfig) -> nnx.State:
  """Parameters of either layer layout (scanned or unrolled) in the layout `config` asks for."""
  return scan.stack_layers(scan.unstack_layers(params), layer_groups(config))


def unrolled(model: LanguageModel) -> LanguageModel:
  """The same model in the unrolled layer layout (itself when already unrolled)."""
  if not model.config.scan_layers:
    return model
  config = dataclasses.replace(model.config, scan_layers=False)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(config)), nnx.Param)
  return nnx.merge(graphdef, convert_layout(nnx.state(model, nnx.Param), config))


def param_count(params: nnx.State | LanguageModel) -> int:
  """Number of parameter scalars of a model or a parameter state."""
  if isinstance(params, nnx.Module):
    params = nnx.state(params, nnx.Param)
  return sum(x.size for x in jax.tree.leaves(params))
