"""AdamW with warmup + cosine decay, global-norm clipping, a weight-decay mask and frozen arms.

Parameters an arm does not train (see `models.trainable_filter`) get `optax.set_to_zero()`: no
optimizer state, no update, excluded from the clipping norm, so they stay bitwise at their init.
"""

from __future__ import annotations

import jax
import ml_collections
import optax
from flax import nnx

from fastslow_jax import models


def learning_rate(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=optim.lr * optim.min_lr_ratio)


def _path_names(path) -> set[str]:
  return {str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path}


def decay_mask(params, no_decay: str):
  """True for parameters that get weight decay: all but those with a path component (parameter
  or module name, e.g. 'scale' of RMSNorm, 'gate') listed in the comma-separated `no_decay`."""
  exempt = {p.strip() for p in no_decay.split(',') if p.strip()}
  return jax.tree_util.tree_map_with_path(lambda path, _: not exempt & _path_names(path), params)


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int,
                   model: models.Decoder) -> optax.GradientTransformation:
  """The optimizer for `model`'s parameters (`nnx.state(model, nnx.Param)`), honouring its arm."""
  train = optax.chain(
      optax.clip_by_global_norm(optim.clip_norm),
      optax.adamw(learning_rate(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                  weight_decay=optim.weight_decay,
                  mask=lambda params: decay_mask(params, optim.no_decay)),
  )
  labels = nnx.map_state(lambda _, trainable: 'train' if trainable else 'frozen',
                         models.trainable_mask(model))
  return optax.multi_transform({'train': train, 'frozen': optax.set_to_zero()}, labels)
