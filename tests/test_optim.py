"""Optimizer pieces: the weight-decay mask by parameter role."""

import jax
import pytest
from flax import nnx

from fastslow_jax import models, optim
from fastslow_jax.errors import UsageError


def exempt_paths(model, no_decay):
  params = nnx.state(model, nnx.Param)
  mask = optim.decay_mask(params, no_decay)
  flat = jax.tree_util.tree_leaves_with_path(mask)
  return {tuple(getattr(k, 'key', getattr(k, 'idx', k)) for k in path) for path, v in flat if not v}


def test_decay_mask_exempts_norm_scales_and_gates_only():
  model = models.build(models.ModelConfig(num_layers=1), rngs=0)
  exempt = exempt_paths(model, 'norm,gate')
  assert exempt == {('blocks', 0, 'attn_norm', 'scale'), ('blocks', 0, 'mlp_norm', 'scale'),
                    ('blocks', 0, 'gate'), ('final_norm', 'scale')}
  # The SwiGLU gate projection is a matrix, not the coupling gate: it decays. Older configs'
  # names ('scale', 'bias') mean the same.
  assert exempt_paths(model, 'scale,gate,bias') == exempt


def test_roles_not_names_decide_the_mask_in_every_family():
  """The hourglass's inner norms live under a slow path: still norm scales."""
  model = models.build(models.ModelConfig(family='hourglass', num_layers=3), rngs=0)
  exempt = exempt_paths(model, 'norm')
  assert exempt and all(path[-1] == 'scale' for path in exempt)
  assert any(path[0] == 'slow' for path in exempt)
  assert ('embed', 'table') in exempt_paths(model, 'embedding')


def test_unknown_role_is_a_usage_error():
  with pytest.raises(UsageError, match=r"optim.no_decay='norm,bogus' is invalid"):
    optim.exempt_roles('norm,bogus')
