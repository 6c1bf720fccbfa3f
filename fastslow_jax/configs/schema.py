"""Every config field, declared once: type, default, choices, range, resume rule, one line of help.

Imports no jax. Everything else derives from the declarations below:

    schema.defaults()          a ConfigDict of every field at its default (config files start
                               from it and set only what differs per size, arm and family)
    schema.check(config)       every field declared, of its type, among its choices, in its range
    models.ModelConfig         the dataclass of the `model.*` fields (`dataclass_of('model')`)
    schema.model_changes(...)  what a resumed run may not change (all but `execution_only`)

A field is `Field(default, help, ...)` in its section's table; the dotted name (`model.P`) is its
name everywhere: in `--config.model.P=8`, in error messages, in config.json. Adding a field is one
line here, and it is then range-checked, resume-checked and in every config file's defaults.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_collections

from fastslow_jax.errors import UsageError


# --------------------------------------------------------------------------- declarations


@dataclasses.dataclass(frozen=True)
class Range:
  """Numbers between `low` and `high` (either may be open or absent), plus `special` values
  outside that interval with a meaning of their own, e.g. -1: 'the rest'."""

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  special: tuple[tuple[int, str], ...] = ()

  def contains(self, value: Any, *, allow_special: bool = True) -> bool:
    if allow_special and any(value == v for v, _ in self.special):
      return True
    if not math.isfinite(value):  # NaN compares false both ways; inf is never a setting.
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    return self.high is None or (value < self.high if self.high_open else value <= self.high)

  def describe(self, kind: type, *, allow_special: bool = True) -> str:
    """'a positive integer', 'a number in [0, 1)', ...: the fix a message proposes."""
    noun = 'an integer' if kind is int else 'a number'
    positive = self.high is None and (self.low == 0 and self.low_open or (
        kind is int and self.low == 1 and not self.low_open))
    if positive:
      text = f'a positive {noun.split()[-1]}'
    elif self.high is None:
      text = f'{noun} {">" if self.low_open else ">="} {self.low:g}'
    elif self.low is None:
      text = f'{noun} {"<" if self.high_open else "<="} {self.high:g}'
    else:
      text = (f'{noun} in {"(" if self.low_open else "["}{self.low:g}, {self.high:g}'
              f'{")" if self.high_open else "]"}')
    if allow_special:
      text += ''.join(f', or {v} ({meaning})' for v, meaning in self.special)
    return text


@dataclasses.dataclass(frozen=True)
class Table:
  """Choices owned by a table elsewhere (the model families, the attention backends, the data
  sources): its keys, imported only when a value is checked."""

  module: str
  name: str

  def keys(self) -> tuple[str, ...]:
    return tuple(getattr(importlib.import_module(self.module), self.name))


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field. `kind` defaults to the default's type (a float field takes ints too).

  `execution_only`: changes how, not what, is computed, so a resumed run may change it (dtype,
  kernels, remat). `derived`: filled in by `runtime.resolve_config`, recorded in config.json.
  `placeholder`: its range's special values stand for what `runtime.resolve_config` fills in
  (a vocabulary of -1: the data's), so a model never takes them.
  """

  default: Any
  help: str
  range: Range | None = None
  choices: tuple[Any, ...] | Table | None = None
  kind: type | tuple[type, ...] | None = None
  execution_only: bool = False
  derived: bool = False
  placeholder: bool = False

  @property
  def kinds(self) -> tuple[type, ...]:
    kind = self.kind or type(self.default)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return kinds + (int,) if float in kinds else kinds

  def allowed(self) -> tuple[Any, ...] | None:
    return self.choices.keys() if isinstance(self.choices, Table) else self.choices


def _int(low: int, *special: tuple[int, str]) -> Range:
  return Range(low, special=special)


POSITIVE_INT = _int(1)
COUNT = _int(0)  # Seeds, step counts that may be zero.
POSITIVE = Range(0, low_open=True)
UNIT_OPEN = Range(0, 1, low_open=True, high_open=True)
BETA = Range(0, 1, high_open=True)  # Adam's moment decay: 1 would never forget.
MESH_SIZE = _int(1, (-1, 'the rest of the devices'))

DTYPES = ('float32', 'bfloat16', 'float16')
# What the backward pass keeps of a block (`models.remat` names the saved values).
REMAT_POLICIES = ('none', 'full', 'dots_saveable', 'minimal')
# Parameter roles (`models.roles`) that weight decay can exempt.
DECAY_ROLES = ('norm', 'gate', 'embedding')

# Logical axis -> mesh axes (data, fsdp, tensor); None replicates. See `fastslow_jax.sharding`.
SHARDING_RULES = (
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),  # Key and value heads (grouped-query attention).
    ('kv', None),
    ('mlp', 'tensor'),
    ('norm', None),
    ('layers', None),  # The stacked axis of scanned layers.
    ('compress', None),  # Hidden width of the compressed family's block MLPs (small).
)

TOP = {
    'seed': Field(0, 'Initialisation and data order.', COUNT),
    'total_steps': Field(300, 'Training steps (the schedule spans them).', POSITIVE_INT),
    'batch_size': Field(16, 'Global batch, in sequences of model.seq_len tokens.', POSITIVE_INT),
    'grad_accum_steps': Field(1, 'Micro-batches per step (gradients averaged).', POSITIVE_INT),
    'skip_nonfinite': Field(False, 'Skip updates with non-finite gradients instead of stopping.'),
    'max_nonfinite_skips': Field(10, '...up to this many steps in a row.', COUNT),
    'log_every': Field(10, 'Steps between metrics records.', POSITIVE_INT),
    'eval_every': Field(100, 'Steps between validation losses.', POSITIVE_INT),
    'eval_batches': Field(8, 'Global batches per validation loss.', POSITIVE_INT),
    'checkpoint_every': Field(100, 'Steps between checkpoints.', POSITIVE_INT),
    'keep_checkpoints': Field(3, 'Checkpoints kept.', POSITIVE_INT),
    'init_from': Field('', 'A pretrained dense model a new run starts from (a resumed run '
                       'ignores it): a Hugging Face Llama directory or a dense run\'s workdir; its '
                       'shared parameters are loaded, the rest fresh (interop/retrofit.py).'),
    'init_from_step': Field(-1, 'The checkpoint of an init_from run.',
                            _int(0, (-1, 'its latest'))),
    'profile_start_step': Field(0, 'First step of a jax.profiler trace in the run\'s tensorboard '
                                'directory.', _int(1, (0, 'no profile'))),
    'profile_steps': Field(5, 'Steps the trace spans.', POSITIVE_INT),
    'peer_timeout': Field(30.0, 'Multi-process runs: seconds without a heartbeat from a peer after '
                          'which it counts as lost and this process stops (exit 75, resumable).',
                          POSITIVE),
    'sharding_rules': Field(SHARDING_RULES, 'Logical axis -> mesh axes (`sharding`).',
                            kind=(tuple, list), execution_only=True),
}

MODEL = {
    'family': Field('fastslow', 'The model family.',
                    choices=Table('fastslow_jax.models.families', 'FAMILIES')),
    'arm': Field('coupled', 'The ablation arm (models/config.py).',
                 choices=Table('fastslow_jax.models.families', 'ARMS')),
    'vocab_size': Field(256, 'Vocabulary size; -1 in a config file: taken from the data.',
                        _int(1, (-1, 'taken from the data')), placeholder=True),
    'seq_len': Field(128, 'T: training context length.', POSITIVE_INT),
    'd_model': Field(128, 'Width of the residual stream.', POSITIVE_INT),
    'num_layers': Field(2, 'Layers.', POSITIVE_INT),
    'num_heads': Field(4, 'Heads of the fast attention (queries).', POSITIVE_INT),
    'num_kv_heads': Field(0, 'Key and value heads of the fast attention (grouped-query attention: '
                          'each serves num_heads / num_kv_heads query heads).',
                          _int(1, (0, 'as many as model.num_heads'))),
    'mlp_dim': Field(512, 'SwiGLU hidden width.', POSITIVE_INT),
    'fast_window': Field(0, 'W: the fast attention of token t sees tokens s with t - W < s <= t '
                         '(local; older tokens only through the slow path).',
                         _int(1, (0, 'full causal attention'))),
    # Slow path.
    'P': Field(16, 'Pooling period: one slow step per P tokens (eps = 1/P).', POSITIVE_INT),
    'slow_layers': Field('all', "Layers with a slow path: 'all', 'every:k', '0,2,5' or a tuple "
                         'of layer ids.', kind=(str, tuple, list)),
    'slow_num_heads': Field(4, 'Heads of the slow attention.', POSITIVE_INT),
    'phi_dim': Field(512, 'Hidden width of phi_theta.', POSITIVE_INT),
    'gate': Field('scalar', 'The fastslow gate: one scalar or one per channel (compressed gates '
                  'per head).', choices=('scalar', 'channel')),
    # Hourglass.
    'hourglass_layers': Field('', "Layers before shortening, at T/P, after upsampling: "
                              "'pre,inner,post' ('': from num_layers)."),
    'hourglass_pool': Field('average', 'Shortening: the mean of a group of P tokens, or a learned '
                            'map of them.', choices=('average', 'linear')),
    'hourglass_upsample': Field('repeat', 'Upsampling: repeat a group\'s output, or a learned map '
                                'per position in the group.', choices=('repeat', 'linear')),
    # Compressed.
    'compress_dim': Field(64, 'Hidden width of the MLP that compresses a block\'s P keys (or '
                          'values) per head.', POSITIVE_INT),
    # Shared.
    'tie_embeddings': Field(True, 'The output head reuses the token embedding.'),
    'rope_theta': Field(10_000.0, 'Rotary position base.', POSITIVE),
    'norm_eps': Field(1e-6, 'RMSNorm epsilon.', POSITIVE),  # 0 divides by zero on a zero row.
    'attention_impl': Field('reference', 'Attention backend (models/attention_backends.py).',
                            choices=Table('fastslow_jax.models.attention_backends',
                                          'ATTENTION_BACKENDS'), execution_only=True),
    'attention_block_q': Field(0, 'Query tile of the fused kernels (splash, pallas_gpu), in '
                               'positions; 0: the kernel\'s default.', COUNT, execution_only=True),
    'attention_block_kv': Field(0, 'Key tile of the fused kernels; 0: the kernel\'s default.',
                                COUNT, execution_only=True),
    'dtype': Field('float32', 'Compute dtype.', choices=DTYPES, execution_only=True),
    'param_dtype': Field('float32', 'Parameter dtype.', choices=DTYPES),
    'remat': Field('none', "What the backward pass recomputes: 'none', 'full' (each block), "
                   "'dots_saveable' (keeps matmul outputs) or 'minimal' (keeps the named "
                   'attention and MLP outputs).', choices=REMAT_POLICIES, kind=(str, bool),
                   execution_only=True),
    'scan_layers': Field(False, 'Run repeating layers with one jax.lax.scan (compile time '
                         'independent of depth); a checkpoint converts either way.',
                         execution_only=True),
}

DATA = {
    'kind': Field('synthetic', 'The data source (fastslow_jax/data/sources.py).',
                  choices=Table('fastslow_jax.data.sources', 'SOURCES')),
    'shuffle': Field(True, 'Read windows in a seeded order, reshuffled each epoch.'),
    'val_fraction': Field(0.05, 'text / tfds without a validation split: the last fraction of '
                          'the stream; prepare\'s share of held-out documents.', UNIT_OPEN),
    'path': Field('', 'text: files (comma-separated paths or globs); tokens: a directory written '
                  'by fastslow_jax.data.prepare.'),
    'tfds_name': Field('', "tfds: 'name', 'name/config' or 'name:version' (array_record)."),
    'tfds_data_dir': Field('', 'tfds: where the dataset is prepared (\'\': the TFDS default).'),
    'tfds_text_feature': Field('text', 'tfds: the text feature.'),
    'tfds_train_split': Field('train', 'tfds: the training split.'),
    'tfds_val_split': Field('validation', 'tfds: the validation split.'),
    # synthetic: a hidden regime selects which Markov chain emits the next token (data/synthetic.py;
    # the setting before this default: num_regimes=4, regime_period=16, regime_contrast=1).
    'vocab_size': Field(64, 'synthetic, ctmc: tokens.', _int(2)),
    'num_regimes': Field(16, 'synthetic: hidden regimes.', POSITIVE_INT),
    'regime_period': Field(1024.0, 'synthetic: expected tokens between regime switches (the slow '
                           "variable's dwell; 1024 = 64 blocks of P=16).", _int(1)),
    'regime_contrast': Field(0.25, "synthetic: the share of a regime's chain that is its own (the "
                             'rest is shared by all regimes); 1: independent chains.',
                             Range(0, 1, low_open=True)),
    'concentration': Field(0.3, 'synthetic, long_range: Dirichlet concentration of the chains\' '
                           'rows.', POSITIVE),
    'source_seed': Field(1234, 'synthetic, ctmc, long_range: seed of the generative parameters.',
                         COUNT),
    'num_train_windows': Field(20_000, 'synthetic, ctmc, long_range: training windows.',
                               POSITIVE_INT),
    'num_val_windows': Field(512, 'synthetic, ctmc, long_range: validation windows.', POSITIVE_INT),
    # long_range: a code fixed per window, evidenced a little by every token (data/long_range.py).
    'long_range_symbols': Field(8, 'long_range: symbols of the fast chain (vocabulary: symbols x '
                                '2 x bits).', _int(2)),
    'long_range_bits': Field(32, 'long_range: bits of the code a window keeps.', POSITIVE_INT),
    'long_range_bias': Field(0.25, "long_range: how far a code symbol's probability moves from "
                             '1/2 with its bit.', Range(0, 0.5, low_open=True, high_open=True)),
    # ctmc: a continuous-time Markov chain whose generator a slow sinusoid drives (data/ctmc.py).
    'ctmc_levels': Field(256, 'ctmc: grid values of the slow variable y.', POSITIVE_INT),
    'ctmc_period_min': Field(384.0, 'ctmc: shortest period of y, in tokens.', POSITIVE),
    'ctmc_period_max': Field(1536.0, 'ctmc: longest period of y, in tokens.', POSITIVE),
    'ctmc_rate': Field(1.0, 'ctmc: mean exit rate of a state per token.', POSITIVE),
    'ctmc_concentration': Field(0.5, 'ctmc: Dirichlet concentration of the attraction weights.',
                                POSITIVE),
    'ctmc_window_seed': Field(0, 'ctmc: split s (1 train, 2 validation) draws its windows from '
                              'numpy.random.default_rng([ctmc_window_seed, s, ctmc_window_salt]).',
                              COUNT),
    'ctmc_window_salt': Field(0, 'ctmc: see ctmc_window_seed (runs that must not share windows '
                              'differ in it).', COUNT),
    'tokenizer_fingerprint': Field(None, 'The tokenizer the data is encoded with (a resumed run '
                                   'refuses other data).', kind=(str, type(None)), derived=True),
}

OPTIM = {
    'lr': Field(3e-3, 'Peak learning rate.', POSITIVE),
    'warmup_steps': Field(30, 'Linear warmup, then cosine decay.', COUNT),
    'min_lr_ratio': Field(0.1, 'Final learning rate / peak.', Range(0, 1)),
    'b1': Field(0.9, 'Adam beta1.', BETA),
    'b2': Field(0.95, 'Adam beta2.', BETA),
    'eps': Field(1e-8, 'Adam epsilon.', POSITIVE),
    'weight_decay': Field(0.1, 'AdamW decoupled weight decay.', Range(0)),
    'clip_norm': Field(1.0, 'Global gradient-norm clip.', POSITIVE),
    'no_decay': Field('norm,gate', 'Parameter roles without weight decay, comma-separated: '
                      f'{", ".join(DECAY_ROLES)}.'),
}

MESH = {
    'data': Field(-1, 'Pure data parallelism.', MESH_SIZE, execution_only=True),
    'fsdp': Field(1, 'Data parallelism with parameters and optimizer state sharded.', MESH_SIZE,
                  execution_only=True),
    'tensor': Field(1, 'Tensor parallelism (heads, MLP, vocabulary).', MESH_SIZE,
                    execution_only=True),
    'dcn_data': Field(1, 'Slices (or hosts) the data axis spans over the data-centre network.',
                      POSITIVE_INT, execution_only=True),
}

SECTIONS: dict[str, dict[str, Field]] = {'': TOP, 'model': MODEL, 'data': DATA, 'optim': OPTIM,
                                         'mesh': MESH}


def fields(sections: Mapping[str, Mapping[str, Field]] | None = None) -> dict[str, Field]:
  """Every field by dotted name ('seed', 'model.P', ...)."""
  sections = SECTIONS if sections is None else sections
  return {f'{s}.{n}' if s else n: f for s, table in sections.items() for n, f in table.items()}


FIELDS = fields()


# --------------------------------------------------------------------------- what derives


def defaults(sections: Mapping[str, Mapping[str, Field]] | None = None
             ) -> ml_collections.ConfigDict:
  """A (not locked) ConfigDict holding every field at its default."""
  sections = SECTIONS if sections is None else sections
  config = ml_collections.ConfigDict({n: f.default for n, f in sections[''].items()})
  for section, table in sections.items():
    if section:
      config[section] = ml_collections.ConfigDict({n: f.default for n, f in table.items()})
  return config


def check_value(name: str, value: Any, *, allow_special: bool = True,
                table: Mapping[str, Field] | None = None) -> None:
  """A UsageError (one line naming the field and the fix) unless `value` is of field `name`'s
  type, among its choices and in its range. `allow_special=False` refuses a range's special
  values too (e.g. a model whose vocabulary size is still -1, 'taken from the data')."""
  spec = (FIELDS if table is None else table)[name]
  kinds = spec.kinds
  if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
    names = ' or '.join(k.__name__ for k in kinds if k is not type(None))
    raise UsageError(f'{name}={value!r} is invalid: use {"a " if len(kinds) == 1 else ""}'
                     f'{names}.')
  allowed = spec.allowed()
  if allowed is not None and isinstance(value, str) and value not in allowed:
    raise UsageError(f'{name}={value!r} is invalid: choose one of {", ".join(allowed)}.')
  if (spec.range is not None and not isinstance(value, bool)
      and isinstance(value, (int, float))
      and not spec.range.contains(value, allow_special=allow_special)):
    fix = spec.range.describe(int if int in spec.kinds and float not in spec.kinds else float,
                              allow_special=allow_special)
    raise UsageError(f'{name}={value!r} is invalid: use {fix}.')


def leaves(tree: Mapping[str, Any], prefix: str = '') -> Iterator[tuple[str, Any]]:
  """(dotted name, value) of every leaf of a nested dict (`config.to_dict()`)."""
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if hasattr(value, 'to_dict'):  # A ConfigDict.
      value = value.to_dict()
    if isinstance(value, Mapping):
      yield from leaves(value, f'{name}.')
    else:
      yield name, value


def check(config: Mapping[str, Any], sections: Mapping[str, Mapping[str, Field]] | None = None
          ) -> None:
  """Checks every field of `config` (a ConfigDict or nested dict) against its declaration.

  Raises a one-line UsageError naming the first field that is not declared, of the wrong type,
  not among its choices or out of its range, and what to use.
  """
  table = FIELDS if sections is None else fields(sections)
  config = config.to_dict() if hasattr(config, 'to_dict') else config
  for name, value in leaves(config):
    if name not in table:
      raise UsageError(f'config field {name!r} is not declared: check the spelling, or declare '
                       f'it in {__name__}.')
    check_value(name, value, table=table)


def complete(config: Mapping[str, Any],
             sections: Mapping[str, Mapping[str, Field]] | None = None
             ) -> ml_collections.ConfigDict:
  """`config` (e.g. read from an older run's config.json) with every field it lacks at its
  default, as a new unlocked ConfigDict."""
  merged = defaults(sections).to_dict()

  def merge(into: dict, tree: Mapping[str, Any]) -> None:
    for key, value in tree.items():
      if isinstance(value, Mapping) and isinstance(into.get(key), dict):
        merge(into[key], value)
      else:
        into[key] = value

  merge(merged, config.to_dict() if hasattr(config, 'to_dict') else config)
  return ml_collections.ConfigDict(merged)


def execution_only(section: str = 'model',
                   sections: Mapping[str, Mapping[str, Field]] | None = None) -> tuple[str, ...]:
  """The fields of `section` that change how, not what, is computed."""
  table = (SECTIONS if sections is None else sections)[section]
  return tuple(name for name, f in table.items() if f.execution_only)


def model_changes(saved: Mapping[str, Any], now: Mapping[str, Any],
                  sections: Mapping[str, Mapping[str, Field]] | None = None) -> list[str]:
  """'model.P: 16 -> 8' for each model field a resumed run changes that is not execution-only;
  a field the saved config lacks (declared since) counts as its default."""
  table = (SECTIONS if sections is None else sections)['model']
  free = execution_only('model', sections)
  old = {**{n: f.default for n, f in table.items()}, **dict(saved)}
  return [f'model.{k}: {_plain(old.get(k))!r} -> {_plain(v)!r}' for k, v in dict(now).items()
          if k not in free and _plain(old.get(k)) != _plain(v)]


def _plain(value):
  """Lists and tuples compare alike (config.json stores tuples as lists)."""
  return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def dataclass_of(section: str) -> Callable[[type], type]:
  """Class decorator: a frozen dataclass whose fields are the declarations of `section`, in
  order, each with its default and its `Field` as metadata['schema']."""
  table = SECTIONS[section]

  def wrap(cls: type) -> type:
    cls.__annotations__ = {name: f.kind or type(f.default) for name, f in table.items()}
    for name, f in table.items():
      setattr(cls, name, dataclasses.field(default=f.default, metadata={'schema': f}))
    return dataclasses.dataclass(frozen=True)(cls)

  return wrap


def describe(sections: Mapping[str, Mapping[str, Field]] | None = None) -> str:
  """Every field with its default, constraint and help, one per line (`python -m
  fastslow_jax.configs.schema`)."""
  lines = []
  for name, f in fields(sections).items():
    rule = (f' choices: {", ".join(map(str, f.allowed()))}' if f.choices else
            f' {f.range.describe(int if isinstance(f.default, int) else float)}' if f.range else '')
    flags = ''.join((' [execution-only]' if f.execution_only else '',
                     ' [derived]' if f.derived else ''))
    lines.append(f'{name} = {f.default!r}{flags}\n    {f.help}{"" if not rule else " (" + rule.strip() + ")"}')
  return '\n'.join(lines)


if __name__ == '__main__':
  print(describe())
