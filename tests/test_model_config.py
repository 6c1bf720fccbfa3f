"""ModelConfig validation: every bad value fails at construction with a one-line ValueError that
names the field (as `model.<field>`) and says how to fix it."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from fastslow_jax import models
from fastslow_jax.models import ARMS, ModelConfig

SMALL = dict(vocab_size=64, seq_len=32, d_model=32, num_layers=2, num_heads=2, mlp_dim=64, P=4,
             slow_num_heads=2, phi_dim=64)


def make(**kw) -> ModelConfig:
  return ModelConfig(**{**SMALL, **kw})


def config_error(**kw) -> str:
  with pytest.raises(ValueError) as info:
    make(**kw)
  msg = str(info.value)
  assert '\n' not in msg, f'multi-line message: {msg!r}'
  return msg


@pytest.mark.parametrize('arm', ['coupled', 'gate_frozen', 'slow_frozen'])
def test_seq_len_not_multiple_of_P(arm):
  msg = config_error(arm=arm, seq_len=30, P=4)
  assert 'model.seq_len=30' in msg and 'multiple of model.P=4' in msg
  assert '28' in msg and '32' in msg  # Suggests the nearest valid lengths.


def test_seq_len_shorter_than_P_suggests_P():
  msg = config_error(seq_len=3, P=4)
  assert 'model.seq_len=3' in msg and 'use e.g. 4' in msg


def test_dense_ignores_P_divisibility():
  cfg = make(arm='dense', seq_len=30, P=4, slow_num_heads=3)  # No slow path: P is unused.
  assert cfg.slow_layer_ids == () and not cfg.has_slow_path
  model = models.build(cfg, rngs=0)
  assert not any('slow' in path or 'gate' in path
                 for path, _ in nnx.to_flat_state(nnx.state(model)))
  graphdef, params = nnx.split(model, nnx.Param)
  out = jax.eval_shape(lambda p, t: nnx.merge(graphdef, p)(t), params, jnp.zeros((1, 30), jnp.int32))
  assert out.shape == (1, 30, 64)


def test_num_heads_must_divide_d_model():
  msg = config_error(num_heads=3)
  assert 'model.num_heads=3' in msg and 'divide model.d_model=32' in msg


def test_head_dim_must_be_even_for_rotary():
  msg = config_error(d_model=24, num_heads=8, slow_num_heads=2)  # head_dim 3.
  assert 'model.num_heads=8' in msg and 'even' in msg


def test_slow_num_heads_must_divide_d_model():
  msg = config_error(slow_num_heads=5)
  assert 'model.slow_num_heads=5' in msg and 'divide model.d_model=32' in msg


def test_unknown_arm():
  msg = config_error(arm='frozen')
  assert "model.arm='frozen'" in msg
  for arm in ARMS:
    assert arm in msg


@pytest.mark.parametrize('field,value', [('gate', 'vector'), ('attention_impl', 'flash'),
                                         ('dtype', 'float64'), ('param_dtype', 'int8')])
def test_bad_choice_fields(field, value):
  msg = config_error(**{field: value})
  assert f'model.{field}={value!r}' in msg and 'choose' in msg


@pytest.mark.parametrize('field', ['vocab_size', 'seq_len', 'd_model', 'num_layers', 'num_heads',
                                   'mlp_dim', 'P', 'slow_num_heads', 'phi_dim'])
def test_non_positive_sizes(field):
  msg = config_error(**{field: 0})
  assert f'model.{field}=0' in msg and 'positive' in msg


@pytest.mark.parametrize('spec', ['every:0', 'every:x', 'every:', 'every:3', '5', '0,2', 'first', '', ' , ',
                                  (), (0, 2), (-1,)])
def test_bad_slow_layers(spec):
  msg = config_error(slow_layers=spec)
  assert 'model.slow_layers=' in msg and "'all'" in msg and 'every:k' in msg
  # An arm with a slow path but no slow layer would silently be `dense`: also an error.


@pytest.mark.parametrize('spec,ids', [('all', (0, 1, 2, 3)), ('every:2', (1, 3)),
                                      ('every:1', (0, 1, 2, 3)), ('every:4', (3,)),
                                      ('0, 2', (0, 2)), ('3,1,1', (1, 3)), ((2, 0), (0, 2)),
                                      ([3], (3,))])
def test_valid_slow_layers(spec, ids):
  assert make(num_layers=4, slow_layers=spec).slow_layer_ids == ids
  assert make(arm='dense', num_layers=4, slow_layers=spec).slow_layer_ids == ()


def test_from_mapping_unknown_field():
  with pytest.raises(ValueError) as info:
    ModelConfig.from_mapping({**SMALL, 'num_layer': 3})
  msg = str(info.value)
  assert '\n' not in msg
  assert "'num_layer'" in msg and 'valid fields' in msg and 'num_layers' in msg


def test_from_mapping_and_build_accept_dicts():
  cfg = ModelConfig.from_mapping(SMALL)
  assert cfg == make()
  model = models.build(dict(SMALL, arm='dense'), rngs=0)
  assert model.config == make(arm='dense')

  class ConfigDictLike(dict):  # ml_collections.ConfigDict exposes to_dict().
    def to_dict(self):
      return dict(self)

  assert ModelConfig.from_mapping(ConfigDictLike(SMALL)) == cfg


def test_from_mapping_validates_values():
  with pytest.raises(ValueError, match=r'model\.seq_len=30'):
    ModelConfig.from_mapping({**SMALL, 'seq_len': 30})


def test_config_is_frozen_and_hashable():
  cfg = make()
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.P = 8  # type: ignore[misc]
  assert hash(cfg) == hash(make())
  assert cfg.head_dim == 16 and cfg.slow_head_dim == 16


# =========================================================================== families


def test_unknown_family_names_the_choices():
  msg = config_error(family='pyramid')
  assert "model.family='pyramid'" in msg and 'fastslow, hourglass, compressed' in msg


def test_gate_frozen_needs_a_gated_family():
  msg = config_error(family='hourglass', arm='gate_frozen')
  assert 'model.arm' in msg and 'no gate' in msg and 'slow_frozen' in msg
  for family in ('fastslow', 'compressed'):
    make(family=family, arm='gate_frozen')


def test_hourglass_has_no_per_layer_slow_path():
  msg = config_error(family='hourglass', slow_layers='every:2')
  assert 'model.slow_layers' in msg and "'all'" in msg
  make(family='compressed', slow_layers='every:2', num_layers=4)


@pytest.mark.parametrize('layers,stages', [(1, (1, 1, 1)), (2, (1, 1, 1)), (6, (2, 2, 2)),
                                           (12, (3, 6, 3)), (24, (6, 12, 6))])
def test_hourglass_stages_default_from_num_layers(layers, stages):
  assert make(family='hourglass', num_layers=layers).hourglass_stages == stages


@pytest.mark.parametrize('spec', ['1,0,1', '1,2', 'a,b,c', '1,-2,1'])
def test_bad_hourglass_layers(spec):
  msg = config_error(family='hourglass', hourglass_layers=spec)
  assert 'model.hourglass_layers' in msg and 'pre,inner,post' in msg


@pytest.mark.parametrize('field,value', [('hourglass_pool', 'max'),
                                         ('hourglass_upsample', 'nearest')])
def test_bad_hourglass_resampling(field, value):
  msg = config_error(family='hourglass', **{field: value})
  assert f'model.{field}' in msg and 'linear' in msg


def test_every_size_builds_for_every_family():
  """The config's sizes work unchanged for every family (shapes only: nothing is allocated)."""
  from fastslow_jax import configlib
  for size in ('tiny', 'small', '124m', '350m', '1b'):
    for family in models.FAMILIES:
      config = configlib.load(f'fastslow:family={family},size={size}', {'model.vocab_size': 256})
      cfg = ModelConfig.from_mapping(config.model)
      model = nnx.eval_shape(lambda cfg=cfg: models.build(cfg, rngs=0))
      assert models.param_count(model) > 0 and models.flops_per_token(cfg).slow > 0
