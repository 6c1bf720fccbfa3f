"""One schema owns every config field: declared once, checked everywhere, refused in one line."""

import dataclasses
import math

import ml_collections
import pytest
from absl import flags

from fastslow_jax import cli, configlib, evaluate, models, runtime, train
from fastslow_jax.configs import schema
from fastslow_jax.configs.fastslow import _MODEL_SIZES
from fastslow_jax.errors import UsageError
from fastslow_jax.rundir import RunDir

TINY = 'fastslow:arm=coupled,size=tiny'
VARIANTS = [f'fastslow:family={family},arm={arm},size={size}' for family in models.FAMILIES
            for size in _MODEL_SIZES for arm in models.FAMILIES[family].arms]
RANGED = sorted(name for name, f in schema.FIELDS.items() if f.range is not None)


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


def outside(field: schema.Field) -> list:
  """Values just outside a field's range (below, above, not finite, not an integer), none of them
  special."""
  spec, is_int = field.range, float not in field.kinds
  specials = {v for v, _ in spec.special}
  values = []
  if spec.low is not None:
    below = spec.low - (1 if is_int else 0.5)
    while below in specials:
      below -= 1
    values += [spec.low] if spec.low_open else [below]
  if spec.high is not None:
    values += [spec.high] if spec.high_open else [spec.high + (1 if is_int else 0.5)]
  values += [spec.low + 0.5, True] if is_int else [math.nan, math.inf]
  return values


def test_every_variant_holds_exactly_the_declared_fields_all_valid():
  for spec in VARIANTS:
    config = configlib.load(spec)
    assert {name for name, _ in schema.leaves(config.to_dict())} == set(schema.FIELDS), spec
    schema.check(config)  # The shipped configs are valid.


def test_model_config_is_the_model_section():
  fields = dataclasses.fields(models.ModelConfig)
  assert [f.name for f in fields] == list(schema.MODEL)
  assert all(f.default == schema.MODEL[f.name].default for f in fields)
  assert all(f.metadata['schema'] is schema.MODEL[f.name] for f in fields)
  # In a config, -1 means 'taken from the data'; a model needs the resolved size.
  with pytest.raises(UsageError, match=r'model.vocab_size=-1 is invalid: use a positive integer.$'):
    models.ModelConfig(vocab_size=-1)
  with pytest.raises(UsageError, match="model.gate='wide' is invalid: choose one of scalar"):
    models.ModelConfig(gate='wide')


# What evaluate sets itself, whatever the run's config.json says: the mesh of the local devices
# (--mesh) and no gradient accumulation (it runs no train step).
EVALUATE_SETS = ('mesh.data', 'mesh.fsdp', 'mesh.tensor', 'mesh.dcn_data', 'grad_accum_steps')


def assert_one_line(error: pytest.ExceptionInfo, name: str, value):
  message = str(error.value)
  assert '\n' not in message and f'{name}={value!r} is invalid' in message, (value, message)


@pytest.mark.parametrize('name', RANGED)
def test_out_of_range_values_are_refused_before_anything_is_written(name, tmp_path):
  """Every ranged field, with values just outside its range: train refuses it before creating
  its workdir, and evaluate refuses a run whose config.json holds it, writing nothing."""
  run = RunDir(tmp_path / 'evaluated')
  run.path.mkdir()
  for value in outside(schema.FIELDS[name]):
    config = tiny_with(name, value)
    with pytest.raises(UsageError) as e:
      runtime.resolve_config(config, num_devices=8)
    assert_one_line(e, name, value)
    with pytest.raises(UsageError) as e:
      train.train(config, tmp_path / 'trained')
    assert_one_line(e, name, value)
    assert not (tmp_path / 'trained').exists()
    if name in EVALUATE_SETS:
      continue
    run.write_config(config)
    with pytest.raises(UsageError) as e:
      evaluate.evaluate(str(run.path))
    assert_one_line(e, name, value)
    assert sorted(p.name for p in run.path.iterdir()) == ['config.json']


def test_boundaries_special_values_types_and_choices():
  accepted = {'optim.b1': 0.0, 'optim.min_lr_ratio': 1.0, 'optim.warmup_steps': 0, 'seed': 0,
              'mesh.fsdp': -1, 'model.vocab_size': -1, 'data.regime_period': 1,
              'optim.weight_decay': 0.0, 'optim.lr': 3, 'model.remat': True}
  refused = {'optim.b2': 1.0, 'data.val_fraction': 0.0, 'mesh.data': -2, 'model.vocab_size': 0,
             'data.vocab_size': 1, 'optim.lr': 0.0, 'batch_size': 16.0, 'model.P': '16',
             'model.scan_layers': 1, 'model.dtype': 'float64', 'model.family': 'mamba',
             'data.kind': 'wiki', 'model.attention_impl': 'flash'}
  for name, value in accepted.items():
    schema.check_value(name, value)
  for name, value in refused.items():
    with pytest.raises(UsageError, match=f'^{name}={value!r} is invalid: '):
      schema.check_value(name, value)


def test_an_undeclared_field_is_refused_at_resolve_time():
  for name, value in (('new_knob', 3), ('optim.new_knob', 0.5), ('data.new_name', 'x')):
    with pytest.raises(UsageError, match=f"config field '{name}' is not declared"):
      runtime.resolve_config(tiny_with(name, value), num_devices=8)


def test_a_field_declared_in_one_place_is_checked_everywhere(monkeypatch):
  """One line in the schema: the config file's default, the range check, ModelConfig's field
  and its check, and the resume rule all follow."""
  knob = schema.Field(3, 'A new model knob.', schema.POSITIVE_INT)
  monkeypatch.setitem(schema.MODEL, 'new_knob', knob)
  monkeypatch.setitem(schema.FIELDS, 'model.new_knob', knob)
  config = configlib.load(TINY)
  assert config.model.new_knob == 3  # The config file's default.
  config.model.new_knob = 0
  with pytest.raises(UsageError, match=r'^model.new_knob=0 is invalid: use a positive integer.$'):
    runtime.resolve_config(config, num_devices=8)

  @schema.dataclass_of('model')
  class WithKnob(models.ModelConfig):
    pass

  assert WithKnob().new_knob == 3 and WithKnob(new_knob=5).new_knob == 5
  with pytest.raises(UsageError, match='model.new_knob=-1 is invalid'):
    WithKnob(new_knob=-1)
  saved = dict(configlib.load(TINY).model)
  assert schema.model_changes(saved, {**saved, 'new_knob': 4}) == ['model.new_knob: 3 -> 4']
  del saved['new_knob']  # A run saved before the field existed had its default.
  assert schema.model_changes(saved, {**saved, 'new_knob': 3}) == []
  monkeypatch.setitem(schema.MODEL, 'new_knob', dataclasses.replace(knob, execution_only=True))
  assert schema.model_changes(saved, {**saved, 'new_knob': 4}) == []


def test_execution_only_fields_may_change_on_resume():
  assert set(schema.execution_only('model')) == {
      'attention_impl', 'attention_block_q', 'attention_block_kv', 'dtype', 'remat',
      'scan_layers'}
  saved = dict(configlib.load(TINY).model)
  assert schema.model_changes(saved, {**saved, 'dtype': 'bfloat16', 'remat': 'full'}) == []
  assert schema.model_changes(saved, {**saved, 'P': 8}) == ['model.P: 16 -> 8']


def test_an_older_config_reads_with_new_fields_at_their_defaults():
  old = configlib.load(TINY).to_dict()
  del old['model']['gate'], old['profile_steps']
  config = schema.complete(old)
  assert config.model.gate == 'scalar' and config.profile_steps == 5
  schema.check(config)


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
                                    'fastslow_jax.convert', 'launch.aot_compile', 'launch.fits'])
def test_every_entry_point_bounds_its_numeric_flags(module):
  define = __import__(module, fromlist=['define_flags']).define_flags
  before = set(flags.FLAGS)
  try:
    define()
    cli.check_flag_ranges(set(flags.FLAGS) - before)
  finally:
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)


def test_the_schema_and_the_tables_import_no_jax():
  import subprocess
  import sys
  code = ('import sys; import fastslow_jax.configs.schema, fastslow_jax.models.config, '
          'fastslow_jax.models.families, fastslow_jax.models.attention_backends, '
          'fastslow_jax.configlib; from fastslow_jax import configlib; '
          "configlib.load('fastslow:size=124m'); "
          "print(sorted(m for m in ('jax', 'flax') if m in sys.modules))")
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]'
