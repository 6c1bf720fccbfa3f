"""Every numeric config field and CLI flag has a declared range, refused outside it in one line."""

import dataclasses
import math

import ml_collections
import pytest
from absl import flags

from fastslow_jax import cli, configlib, evaluate, models, runtime, train
from fastslow_jax.configs import ranges
from fastslow_jax.configs.fastslow import _MODEL_SIZES
from fastslow_jax.rundir import RunDir

TINY = 'fastslow:arm=coupled,size=tiny'
# Every variant of the packaged config (each family where the zoo has several, arm and size): a
# field that only some of them have is walked too.
_FAMILY_ARGS = [f'family={name},' for name in getattr(models, 'FAMILIES', ())] or ['']
VARIANTS = [f'fastslow:{family}arm={arm},size={size}' for family in _FAMILY_ARGS
            for size in _MODEL_SIZES for arm in models.ARMS]


def numeric_fields(config) -> dict:
  return dict(ranges.numeric_leaves(config.to_dict()))


def every_numeric_field() -> dict[str, str]:
  """Each numeric field of any variant of the config -> the first variant that has it."""
  fields = {}
  for spec in VARIANTS:
    for name in numeric_fields(configlib.load(spec)):
      fields.setdefault(name, spec)
  return fields


FIELDS = every_numeric_field()


def tiny_with(name: str, value, spec: str = TINY) -> ml_collections.ConfigDict:
  """The config `spec` with field `name` set to `value`, of any type (a locked config would
  refuse a float in an int field before our check could)."""
  tree = configlib.load(spec).to_dict()
  *parents, leaf = name.split('.')
  node = tree
  for part in parents:
    node = node[part]
  node[leaf] = value
  return ml_collections.ConfigDict(tree)


def outside(spec: ranges.Range) -> list:
  """Values just outside `spec` (below, above, not finite, not an integer), none of them special."""
  specials = {v for v, _ in spec.special}
  values = []
  if spec.low is not None:
    below = spec.low - (0.5 if spec.kind is float else 1)
    while below in specials:
      below -= 1
    values += [spec.low] if spec.low_open else [below]
  if spec.high is not None:
    values += [spec.high] if spec.high_open else [spec.high + (0.5 if spec.kind is float else 1)]
  values += [math.nan, math.inf] if spec.kind is float else [spec.low + 0.5, True]
  return values


def test_every_numeric_field_of_every_variant_is_declared_and_in_range():
  for spec in VARIANTS:
    config = configlib.load(spec)
    undeclared = sorted(set(numeric_fields(config)) - set(ranges.RANGES))
    assert not undeclared, f'declare a range in configs/ranges.py for {undeclared}'
    ranges.check(config)  # The shipped defaults are valid.


def test_every_declared_range_names_a_numeric_field():
  assert set(ranges.RANGES) == set(FIELDS)  # No stale entries.


# What evaluate sets itself, whatever the run's config.json says: the mesh of the local devices
# (--mesh) and no gradient accumulation (it runs no train step).
EVALUATE_SETS = ('mesh.data', 'mesh.fsdp', 'mesh.tensor', 'mesh.dcn_data', 'grad_accum_steps')


def assert_one_line(error: pytest.ExceptionInfo, name: str, value, spec: ranges.Range):
  message = str(error.value)
  assert '\n' not in message and f'{name}={value!r}' in message, (value, message)
  assert spec.describe() in message


@pytest.mark.parametrize('name', sorted(FIELDS))
def test_out_of_range_values_are_refused_before_anything_compiles(name, tmp_path):
  """Every numeric field, with values just outside its range: train refuses it before creating
  its workdir, and evaluate refuses a run whose config.json holds it, writing nothing."""
  spec, variant = ranges.RANGES[name], FIELDS[name]
  values = outside(spec)
  assert values
  run = RunDir(tmp_path / 'evaluated')
  run.path.mkdir()
  for value in values:
    config = tiny_with(name, value, variant)
    with pytest.raises(ValueError) as e:
      runtime.resolve_config(config, num_devices=8)
    assert_one_line(e, name, value, spec)
    with pytest.raises(ValueError) as e:
      train.train(config, tmp_path / 'trained')
    assert_one_line(e, name, value, spec)
    assert not (tmp_path / 'trained').exists()
    if name in EVALUATE_SETS:
      continue
    run.write_config(config)
    with pytest.raises(ValueError) as e:
      evaluate.evaluate(str(run.path))
    assert_one_line(e, name, value, spec)
    assert sorted(p.name for p in run.path.iterdir()) == ['config.json']


def test_boundaries_and_special_values():
  accepted = {'optim.b1': 0.0, 'optim.min_lr_ratio': 1.0, 'optim.warmup_steps': 0, 'seed': 0,
              'mesh.fsdp': -1, 'model.vocab_size': -1, 'data.regime_period': 1,
              'optim.weight_decay': 0.0, 'optim.lr': 3}
  refused = {'optim.b2': 1.0, 'data.val_fraction': 0.0, 'mesh.data': -2, 'model.vocab_size': 0,
             'data.vocab_size': 1, 'optim.lr': 0.0, 'batch_size': 16.0}
  for name, value in accepted.items():
    ranges.check_value(name, value)
  for name, value in refused.items():
    with pytest.raises(ValueError, match=f'{name}='):
      ranges.check_value(name, value)


def test_a_numeric_field_without_a_range_fails_at_resolve_time():
  for name, value in (('new_knob', 3), ('optim.new_knob', 0.5), ('data.new_knob', 7)):
    with pytest.raises(ValueError, match=f"'{name}' has no declared range.*RANGES"):
      runtime.resolve_config(tiny_with(name, value), num_devices=8)
  for name, value in (('new_switch', True), ('data.new_name', 'x')):  # Need no range.
    runtime.resolve_config(tiny_with(name, value), num_devices=8)


def test_model_config_checks_its_fields_against_the_same_table():
  numeric = [f.name for f in dataclasses.fields(models.ModelConfig) if f.type in ('int', 'float')]
  undeclared = [name for name in numeric if f'model.{name}' not in ranges.RANGES]
  assert numeric and not undeclared, f'declare a range in configs/ranges.py for {undeclared}'
  # In a config, -1 means 'taken from the data'; a model needs the resolved size.
  with pytest.raises(ValueError, match=r'model.vocab_size=-1 is invalid: use a positive integer.$'):
    models.ModelConfig(vocab_size=-1)
  with pytest.raises(ValueError, match='model.norm_eps=0.0'):
    models.ModelConfig(norm_eps=0.0)


def test_numeric_flags_must_declare_a_range():
  values = flags.FlagValues()
  flags.DEFINE_integer('bounded', None, 'h', lower_bound=0, flag_values=values)
  flags.DEFINE_float('scale', 1.0, 'h', upper_bound=2.0, flag_values=values)
  flags.DEFINE_string('name', 'x', 'h', flag_values=values)
  flags.DEFINE_integer('unbounded', 3, 'h', flag_values=values)
  cli.check_flag_ranges(['bounded', 'scale', 'name'], values)
  with pytest.raises(TypeError, match='--unbounded declares no range'):
    cli.check_flag_ranges(['bounded', 'unbounded'], values)


@pytest.mark.parametrize('module', ['fastslow_jax.train', 'fastslow_jax.evaluate',
                                    'fastslow_jax.generate', 'fastslow_jax.data.prepare',
                                    'fastslow_jax.demo', 'fastslow_jax.distributed',
                                    'launch.aot_compile', 'launch.fits'])
def test_every_entry_point_bounds_its_numeric_flags(module):
  define = __import__(module, fromlist=['define_flags']).define_flags
  before = set(flags.FLAGS)
  try:
    define()
    cli.check_flag_ranges(set(flags.FLAGS) - before)
  finally:
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)
