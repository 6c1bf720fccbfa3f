"""Pretrained dense models to start from or convert: a Hugging Face Llama directory, or a dense
run of ours at any step. Imports no jax until a run's tensors are read.

    sources.model_fields('path/to/llama')        # its ModelConfig fields, from JSON alone
    source = sources.open_source('runs/dense', step=-1)
    source.names()                                # our unrolled paths: ('blocks', 0, 'fast', 'wq')
    source.read(('blocks', 0, 'fast', 'wq'))      # numpy, in our layout; one tensor at a time

A source holds at most one stored tensor in memory (a run's scanned stack serves its layers from
it); callers stream.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from fastslow_jax.errors import UsageError
from fastslow_jax.interop import llama, safetensors_io
from fastslow_jax.models.config import ModelConfig  # The models package loads no jax for it.
from fastslow_jax.rundir import RunDir

HF_CONFIG = 'config.json'


def is_hf_dir(spec: str) -> bool:
  """Whether `spec` is a local directory whose config.json is a Hugging Face model's."""
  path = os.path.join(os.path.expanduser(spec), HF_CONFIG)
  if '://' in spec or not os.path.isfile(path):
    return False
  with open(path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise UsageError(f'{path} is not valid JSON ({e}): copy the model again.') from None
  return 'model_type' in config or 'architectures' in config


def model_fields(spec: str) -> dict[str, Any]:
  """The dense model fields (`llama.FIELDS`) of the source at `spec`, read from its JSON alone."""
  if is_hf_dir(spec):
    with open(os.path.join(os.path.expanduser(spec), HF_CONFIG)) as f:
      return llama.model_fields(json.load(f), where=spec)
  return {k: _run_model(spec)[k] for k in llama.FIELDS}


def _run_model(spec: str) -> dict[str, Any]:
  """The model section of the dense run at `spec` (a one-line UsageError for anything else)."""
  run = RunDir(spec)
  if not run.config.exists():
    raise UsageError(f'{spec} is neither a Hugging Face model directory (config.json with a '
                     'model_type) nor a run directory written by fastslow_jax.train.')
  model = run.read_config().model.to_dict()
  if model['arm'] != 'dense':
    raise UsageError(f'{spec} is a {model["family"]} {model["arm"]} run, which has no Hugging Face '
                     'architecture: only dense runs (model.arm=dense) convert or start other runs.')
  return model


class HFSource:
  """A Hugging Face Llama directory: config.json, safetensors files, maybe tokenizer.json."""

  def __init__(self, directory: str):
    self.directory = os.path.expanduser(directory)
    self.fields = model_fields(directory)
    self.reader = safetensors_io.Reader(self.directory)
    cfg = ModelConfig(arm='dense', **self.fields)
    self._tensors = {t.ours: t for t in llama.tensors(cfg)}
    expected = {t.hf for t in self._tensors.values()}
    stored = {n for n in self.reader.names() if not n.endswith(llama.DERIVED_SUFFIXES)}
    if cfg.tie_embeddings:
      stored.discard('lm_head.weight')  # Some tied checkpoints store the table twice.
    if stored - expected:
      raise UsageError(f'{directory} holds tensors a plain Llama has not (e.g. '
                       f'{sorted(stored - expected)[0]!r}): this zoo does not implement them.')
    if expected - stored:
      raise UsageError(f'{directory} lacks tensor {sorted(expected - stored)[0]!r}: copy the '
                       'whole model (every shard).')
    for t in self._tensors.values():
      if self.reader.shape(t.hf) != t.shape:
        raise UsageError(f'{directory}: tensor {t.hf!r} is {self.reader.shape(t.hf)}, its '
                         f'config.json makes it {t.shape}: the directory is inconsistent.')
    self.describe = f'{directory} (Hugging Face {llama.ARCHITECTURE})'
    self.fast_window = 0  # Llama attends over the whole context.

  def names(self) -> list[tuple]:
    return list(self._tensors)

  def read(self, path: tuple) -> np.ndarray:
    tensor = self._tensors[path]
    return tensor.to_ours(self.reader.read(tensor.hf))


class RunSource:
  """A dense run of ours at one checkpoint step, either layer layout, read tensor by tensor
  (Orbax partial restores into numpy)."""

  def __init__(self, workdir: str, step: int | None = None):
    from fastslow_jax import restoring
    self.model = _run_model(workdir)
    self.fields = {k: self.model[k] for k in llama.FIELDS}
    self.fast_window = self.model.get('fast_window', 0)
    self.groups = {(): ModelConfig.from_mapping(self.model).scan_groups}  # The stored layout.
    run = RunDir(workdir)
    steps = restoring.checkpoint_steps(run)
    self.step = steps[-1] if steps and step in (None, -1) else step
    if self.step not in steps:
      raise UsageError(f'{workdir} has no checkpoint at step {step} (have {steps}): choose one '
                       'of those, or -1 for the latest.')
    self.directory = run.checkpoints / str(self.step) / 'params'
    self._stored = _stored_shapes(self.directory)
    self._cached: tuple[tuple, np.ndarray] | None = None
    self.describe = f'{workdir} step {self.step}'

  def names(self) -> list[tuple]:
    from fastslow_jax.models import scan
    return [path for stored in self._stored for path in scan.unrolled_paths(stored, self.groups)]

  def read(self, path: tuple) -> np.ndarray:
    from fastslow_jax.models import scan
    stored, index = scan.stored_path(path, self.groups)
    if self._cached is None or self._cached[0] != stored:
      self._cached = None  # Free the previous tensor first.
      self._cached = (stored, _restore_leaf(self.directory, stored, self._stored[stored]))
    value = self._cached[1]
    return value if index is None else value[index]


def _stored_shapes(directory) -> dict[tuple, tuple[tuple[int, ...], np.dtype]]:
  """{stored parameter path: (shape, dtype)} of a params checkpoint, from its metadata."""
  import orbax.checkpoint as ocp
  tree = ocp.PyTreeCheckpointHandler().metadata(directory).tree
  out = {}

  def walk(node, path):
    if isinstance(node, dict):
      for key, child in node.items():
        walk(child, path if key == 'value' else (*path, int(key) if key.isdigit() else key))
    else:
      out[path] = (tuple(node.shape), np.dtype(node.dtype))

  walk(tree, ())
  return out


def _restore_leaf(directory, path: tuple, shape_dtype) -> np.ndarray:
  """One stored parameter of a params checkpoint, as numpy (Orbax partial restore)."""
  import jax
  import orbax.checkpoint as ocp
  shape, dtype = shape_dtype
  item = {'value': jax.ShapeDtypeStruct(shape, dtype)}
  args = {'value': ocp.RestoreArgs(restore_type=np.ndarray)}
  for key in reversed(path):
    item, args = {key: item}, {key: args}
  restored = ocp.PyTreeCheckpointer().restore(directory, args=ocp.args.PyTreeRestore(
      item=item, restore_args=args, partial_restore=True))
  for key in path:
    restored = restored[key]
  return np.asarray(restored['value'])


def open_source(spec: str, step: int | None = None) -> HFSource | RunSource:
  """The pretrained model at `spec`: a Hugging Face directory, or a dense run at `step` (None or
  -1: its latest checkpoint)."""
  return HFSource(spec) if is_hf_dir(spec) else RunSource(spec, step)


def adopt(config, spec: str) -> None:
  """Makes `config` (a ConfigDict) start from the pretrained model at `spec`: `init_from` and the
  model fields the source determines (`llama.FIELDS`)."""
  config.init_from = spec
  config.model.update(model_fields(spec))
