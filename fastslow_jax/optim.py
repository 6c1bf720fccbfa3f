"""AdamW with warmup + cosine decay, global-norm clipping, a weight-decay mask and frozen arms.

Weight decay skips the parameter roles named in `optim.no_decay` (`models.roles`: norm scales and
gates by default). Parameters an arm does not train (`models.trainable_filter`) get
`optax.set_to_zero()`: no optimizer state, no update, excluded from the clipping norm, so they
stay bitwise at their init.
"""

from __future__ import annotations

import jax
import ml_collections
import optax
from flax import nnx

from fastslow_jax import models
from fastslow_jax.configs import schema
from fastslow_jax.errors import UsageError
from fastslow_jax.models import roles

# Names older configs used for what are now roles: RMSNorm's `scale`, and `bias`, which no model
# has.
_LEGACY_NAMES = {'scale': 'norm', 'bias': None}


def learning_rate(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=optim.lr * optim.min_lr_ratio)


def exempt_roles(no_decay: str) -> tuple[type[nnx.Param], ...]:
  """The role types `optim.no_decay` names ('norm,gate'); a one-line UsageError for others."""
  names = [_LEGACY_NAMES.get(n.strip(), n.strip()) for n in no_decay.split(',') if n.strip()]
  unknown = [n for n in names if n is not None and n not in roles.BY_NAME]
  if unknown:
    raise UsageError(f'optim.no_decay={no_decay!r} is invalid: name roles among '
                     f'{", ".join(schema.DECAY_ROLES)}, comma-separated.')
  return tuple(roles.BY_NAME[n] for n in names if n is not None)


def decay_mask(params, no_decay: str):
  """`params` (a State of parameters) with each parameter replaced by whether weight decay
  applies to it: every parameter but those of the roles `no_decay` names (an optax mask)."""
  exempt = exempt_roles(no_decay)
  return jax.tree.map(lambda v: not isinstance(v, exempt), params,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int,
                   model: models.LanguageModel) -> optax.GradientTransformation:
  """The optimizer for `model`'s parameters (`nnx.state(model, nnx.Param)`), honouring its arm."""
  exempt_roles(optim.no_decay)  # Checked before anything compiles.
  train = optax.chain(
      optax.clip_by_global_norm(optim.clip_norm),
      optax.adamw(learning_rate(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                  weight_decay=optim.weight_decay,
                  mask=lambda params: decay_mask(params, optim.no_decay)),
  )
  labels = nnx.map_state(lambda _, trainable: 'train' if trainable else 'frozen',
                         models.trainable_mask(model))
  return optax.multi_transform({'train': train, 'frozen': optax.set_to_zero()}, labels)
