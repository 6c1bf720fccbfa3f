"""A run's parameters restored for use: evaluation, decoding, analyses, experiments.

    restored = restoring.restore(RunDir(workdir), step=None, mesh='1,-1,1')
    restored.model()       # the model with the checkpoint's parameters, on a mesh of local devices
    restored.source        # the run's data source (its tokenizer encodes prompts)

Restores parameters only (no optimizer state), onto any mesh and device count, in either layer
layout; `checkpointing` holds the Orbax side (the train state, its manager).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from fastslow_jax import checkpointing, data, models, runtime, sharding
from fastslow_jax.errors import UsageError
from fastslow_jax.rundir import RunDir


@dataclasses.dataclass
class Restored:
  """A run's parameters at one checkpoint, laid out on a mesh of the local devices."""
  setup: runtime.ModelSetup
  step: int
  params: nnx.State
  source: data.Source

  @property
  def config(self):
    return self.setup.config

  def model(self) -> models.LanguageModel:
    return self.setup.model(self.params)


def checkpoint_steps(run: RunDir) -> list[int]:
  """The steps of the run's committed checkpoints, oldest first."""
  mngr = checkpointing.manager(run.path, read_only=True)
  try:
    return sorted(mngr.all_steps())
  finally:
    mngr.close()


def restore(run: RunDir | str, step: int | None = None, *, mesh: str = '1,-1,1', devices=None,
            scan_layers: bool | None = None) -> Restored:
  """The parameters alone of the checkpoint at `step` (default the latest) of `run` (a RunDir or
  a workdir), onto a `mesh` ('data,fsdp,tensor') over `devices` (default all).

  `scan_layers` picks the layer layout of the restored model (default: the run's own); a
  checkpoint of either layout converts to the other (`models.scan`). The run's data must still be
  tokenized as it was trained (a directory prepared again with another tokenizer would be scored,
  or prompts encoded, with the wrong ids).
  """
  run = run if isinstance(run, RunDir) else RunDir(run)
  run.check(run=True, write=False)
  config = run.read_config()
  trained_with = config.data.get('tokenizer_fingerprint')
  config.mesh.update(sharding.parse_mesh(mesh))
  config.mesh.dcn_data = 1  # The local devices are laid out afresh.
  config.grad_accum_steps = 1  # No train step here: batches need only divide the new mesh.
  config = runtime.resolve_config(config, len(devices) if devices else None)
  source = data.source(config.data)
  data.check_tokenizer(source, trained_with, where=str(run.path),
                       fix=f'at data.path (as in {run.config})')
  setup = runtime.ModelSetup(config, devices)  # The layout the run was trained in.
  step, params = _read_params(run, step, setup)
  if scan_layers is not None and scan_layers != config.model.scan_layers:
    config.model.scan_layers = scan_layers
    setup = runtime.ModelSetup(config, devices)
    params = models.convert_layout(params, setup.model_config)
    with setup.activate():
      params = jax.device_put(params, setup.params_sharding)
  return Restored(setup=setup, step=step, params=params, source=source)


def _read_params(run: RunDir, step: int | None, setup: runtime.ModelSetup) -> tuple[int, nnx.State]:
  """(step, parameters) of the checkpoint at `step` (default latest), in `setup`'s layout."""
  mngr = checkpointing.manager(run.path, read_only=True)
  try:
    step = mngr.latest_step() if step is None else step
    if step is None or step not in mngr.all_steps():
      raise UsageError(f'no checkpoint at step {step} in {run.path} (have '
                       f'{list(mngr.all_steps())}): pass an existing --step or train first.')
    with setup.activate():
      try:
        return int(step), checkpointing.restore_params(mngr, step, setup.abstract_params())
      except Exception as e:  # Orbax raises many types for missing / truncated files.
        raise UsageError(f'checkpoint {step} in {run.path} cannot be read, it is damaged '
                         f'({type(e).__name__}): evaluate another --step '
                         f'({sorted(mngr.all_steps())}) or retrain.') from e
  finally:
    mngr.close()
