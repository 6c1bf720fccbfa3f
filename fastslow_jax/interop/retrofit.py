"""Starting a model of any family from a pretrained dense one (`config.init_from`).

    source = retrofit.check(config)              # the source fits the run, or one line says why
    params = retrofit.load_shared(model_cfg, params, source)  # the shared parameters loaded
    model = retrofit.load_model('path/to/llama')  # the pretrained dense model itself

The shared parameters are those of the dense model: embedding, every layer's norms, fast
attention and MLP, the final norm and the head. The dense model's layers fill the family's layer
stacks in order (the hourglass: pre, inner, post), and everything else (slow paths, gates, the
hourglass's resampling) keeps its fresh init. A gated family's gates start at 0, so its function
is the dense model's, bitwise, until the first update; the hourglass has no gate and differs from
the first step on, which it says.
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import numpy as np
import tqdm
from absl import logging
from flax import nnx

from fastslow_jax import metrics, models
from fastslow_jax.errors import UsageError
from fastslow_jax.interop import llama, sources
from fastslow_jax.models import families, scan


def layer_count(cfg: models.ModelConfig) -> int:
  """Layers of the model's stacks together (the hourglass's stages may differ from num_layers)."""
  return sum(map(len, families.module(cfg).layer_stacks(cfg).values()))


def check(config) -> sources.HFSource | sources.RunSource:
  """The source `config.init_from` names, opened; a one-line UsageError naming the first model
  field in which it differs from the run's model (`llama.FIELDS`)."""
  source = sources.open_source(config.init_from, config.init_from_step)
  cfg = models.ModelConfig.from_mapping(config.model)
  theirs = dict(source.fields, num_kv_heads=source.fields['num_kv_heads'] or
                source.fields['num_heads'])
  ours = dict({k: getattr(cfg, k) for k in llama.FIELDS}, num_kv_heads=cfg.kv_heads,
              num_layers=layer_count(cfg))
  for key in llama.FIELDS:
    if theirs[key] != ours[key]:
      fix = ("give model.hourglass_layers stages that add up to it" if key == 'num_layers'
             and cfg.family == 'hourglass' and cfg.arm != 'dense' else
             f'set --config.model.{key}={theirs[key]}')
      raise UsageError(f'config.init_from={config.init_from} has model.{key}={theirs[key]} and '
                       f'this run {ours[key]}: {fix} (or pass init_from= in the --config argument, '
                       'which takes every such field from the source).')
  return source


def dense_path(path: tuple, cfg: models.ModelConfig) -> tuple:
  """The dense model's unrolled path of the parameter at unrolled `path` of `cfg`'s model: its
  layer numbered across the family's stacks in order."""
  where = scan.layer_path(path)
  if where is None:
    return path
  prefix, _, index, rest = where
  offset = 0
  for stack, pattern in families.module(cfg).layer_stacks(cfg).items():
    if stack == prefix:
      return ('blocks', offset + index, *rest)
    offset += len(pattern)
  return path  # Not a layer of a stack: no dense counterpart.


def load_shared(cfg: models.ModelConfig, params: nnx.State, source) -> nnx.State:
  """`params` of `cfg`'s model (either layout, on any mesh) with every parameter the pretrained
  `source` has (`check`, `sources.open_source`) loaded in place, each keeping its sharding; one
  log line says what was loaded and what stayed fresh. Streams: one source tensor at a time."""
  if cfg.arm != 'dense' and not families.family(cfg.family).gated:
    logging.warning('init_from: the %s family has no gate, so this model\'s function differs from '
                    'the pretrained dense model\'s from the first step on.', cfg.family)
  if cfg.fast_window != source.fast_window:
    logging.warning('init_from: model.fast_window=%d here and %d in the source, so this model\'s '
                    'function differs from the pretrained one\'s.', cfg.fast_window,
                    source.fast_window)
  available, groups = set(source.names()), models.layer_groups(cfg)
  flat = nnx.to_flat_state(params)
  loaded, fresh = 0, collections.Counter()
  bar = tqdm.tqdm(total=len(flat), desc='init_from', unit='tensor', dynamic_ncols=True,
                  disable=not metrics.interactive() or jax.process_index() != 0)
  out = []
  for path, leaf in flat:
    wanted = [dense_path(u, cfg) for u in scan.unrolled_paths(path, groups)]
    if all(w in available for w in wanted):
      where = scan.layer_path(path)
      leaf = _placed(leaf, [source.read(w) for w in wanted], '/'.join(map(str, path)),
                     stacked=where is not None and where[1] == 'stack')
      loaded += np.size(_value(leaf))
    else:
      fresh[type(leaf).__name__] += 1
    out.append((path, leaf))
    bar.update(1)
  bar.close()
  logging.info('init_from %s: loaded %d tensors (%s parameters) of the dense model; fresh: %s; '
               'optimizer state fresh.', source.describe, len(flat) - sum(fresh.values()),
               f'{loaded:,}', ', '.join(f'{n} {kind}' for kind, n in sorted(fresh.items()))
               or 'nothing')
  return nnx.from_flat_state(out)


def _value(leaf):
  return leaf[...] if isinstance(leaf, nnx.Variable) else leaf


def _placed(leaf, values: list[np.ndarray], name: str, *, stacked: bool):
  """`leaf` (a Variable or an array) holding `values` (stacked on a new axis where the layout
  stacks layers), cast to its dtype, with its sharding."""
  current = _value(leaf)
  value = np.stack(values) if stacked else values[0]
  if value.shape != current.shape:
    raise UsageError(f'init_from: parameter {name} is {value.shape} in the source and '
                     f'{current.shape} here: the source does not fit this model.')
  value = value.astype(current.dtype)
  array = jax.make_array_from_callback(value.shape, current.sharding, lambda index: value[index])
  return leaf.replace(array) if isinstance(leaf, nnx.Variable) else array


def load_model(spec: str, step: int | None = None, **fields: Any) -> models.LanguageModel:
  """The pretrained dense model at `spec` (a Hugging Face Llama directory, or a dense run at
  `step`, default its latest), with any other model `fields` set (seq_len, scan_layers, ...)."""
  cfg = models.ModelConfig(**{'arm': 'dense', **sources.model_fields(spec), **fields})
  model = models.build(cfg)
  nnx.update(model, load_shared(cfg, nnx.state(model, nnx.Param), sources.open_source(spec, step)))
  return model
