r"""Evaluate a run's checkpoint on whatever devices are here.

    python -m fastslow_jax.evaluate --workdir=/tmp/run [--step=N] [--split=validation]

Restores parameters only (no optimizer state) onto a mesh built for the local devices, runs a
fixed number of batches in a fixed order, prints and writes DIR/eval_<split>_<step>.json: loss,
perplexity, bits per byte (text) or per token (synthetic), tokens evaluated, the gap to the Bayes
optimum (synthetic source) and the gate value per layer.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
from absl import flags, logging
from flax import nnx

from fastslow_jax import checkpointing, cli, data, models, runtime, sharding
from fastslow_jax.configs import ranges
from fastslow_jax.rundir import RunDir


@dataclasses.dataclass
class Restored:
  """A run's parameters at one checkpoint, laid out on a mesh of the local devices."""
  setup: runtime.ModelSetup
  step: int
  params: nnx.State

  @property
  def config(self):
    return self.setup.config

  def model(self) -> models.Decoder:
    return self.setup.model(self.params)


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the run's committed checkpoints, oldest first."""
  mngr = checkpointing.manager(workdir, read_only=True)
  try:
    return sorted(mngr.all_steps())
  finally:
    mngr.close()


def mesh_sizes(mesh: str) -> tuple[int, int, int]:
  """'data,fsdp,tensor' (e.g. '1,-1,1') as three sizes; a one-line ValueError otherwise."""
  parts = [p.strip() for p in str(mesh).split(',')]
  sizes = tuple(int(p) for p in parts if p.lstrip('-').isdigit())
  if (len(sizes) != len(parts) or len(sizes) != len(sharding.MESH_AXES) or sizes.count(-1) > 1
      or not all(ranges.RANGES[f'mesh.{axis}'].contains(size)
                 for axis, size in zip(sharding.MESH_AXES, sizes))):
    raise ValueError(f'--mesh={mesh!r} is invalid: give three sizes data,fsdp,tensor, positive '
                     'integers of which one may be -1 (the rest of the devices), e.g. 1,-1,1.')
  return sizes


def restore(workdir: str, step: int | None = None, *, mesh: str = '1,-1,1', devices=None,
            scan_layers: bool | None = None) -> Restored:
  """The parameters alone (no optimizer state) of the checkpoint at `step` (default latest),
  onto a `mesh` ('data,fsdp,tensor') over `devices` (default all). Evaluation, decoding and the
  experiments' analyses all restore through here.

  `scan_layers` picks the layer layout of the restored model (default: the run's own); a
  checkpoint of either layout converts to the other (`models.scan`).
  """
  run = RunDir(workdir)
  run.check(run=True, write=False)
  config = run.read_config()
  # The data at data.path must still be tokenized as the run was trained (a directory prepared
  # again with another tokenizer would be scored, or prompts encoded, with the wrong ids).
  data.check_tokenizer(config.data, config.data.get('tokenizer_fingerprint'), where=str(run.path),
                      fix=f'at data.path (as in {run.config})')
  restored = _restore(workdir, step, config, mesh, devices)
  if scan_layers is None or scan_layers == restored.config.model.get('scan_layers', False):
    return restored
  config = restored.config
  config.model.scan_layers = scan_layers
  setup = runtime.ModelSetup(config, devices)
  params = models.convert_layout(restored.params, setup.model_config)
  with setup.activate():
    params = jax.device_put(params, setup.params_sharding)
  return Restored(setup=setup, step=restored.step, params=params)


def _restore(workdir: str, step: int | None, config, mesh: str, devices) -> Restored:
  """`restore` in the layout the run was trained with."""
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_sizes(mesh)
  config.mesh.dcn_data = 1  # The local devices are laid out afresh.
  config.grad_accum_steps = 1  # No train step here: batches need only divide the new mesh.
  config = runtime.resolve_config(config, len(devices) if devices else None)
  setup = runtime.ModelSetup(config, devices)
  mngr = checkpointing.manager(workdir, read_only=True)
  try:
    step = mngr.latest_step() if step is None else step
    if step is None or step not in mngr.all_steps():
      raise ValueError(f'no checkpoint at step {step} in {workdir} (have {list(mngr.all_steps())}'
                       '): pass an existing --step or train first.')
    with setup.activate():
      try:
        params = checkpointing.restore_params(mngr, step, setup.abstract_params())
      except Exception as e:  # Orbax raises many types for missing / truncated files.
        raise ValueError(f'checkpoint {step} in {workdir} cannot be read, it is damaged '
                         f'({type(e).__name__}): evaluate another --step '
                         f'({sorted(mngr.all_steps())}) or retrain.') from e
  finally:
    mngr.close()
  return Restored(setup=setup, step=int(step), params=params)


def evaluate(workdir: str, *, step: int | None = None, split: str = 'validation',
             num_batches: int | None = None, mesh: str = '1,-1,1', devices=None,
             dataset=None) -> dict[str, Any]:
  """Evaluates the checkpoint at `step` (default latest) of `workdir`; returns the results and
  writes them to the run directory. `dataset` replaces the split of the run's configured data."""
  RunDir(workdir).check(run=True, write=True)
  if num_batches is not None and num_batches < 1:
    raise ValueError(f'--batches={num_batches} is invalid: use a positive integer (or leave it '
                     'out for the run\'s eval_batches).')
  restored = restore(workdir, step, mesh=mesh, devices=devices)
  config, step = restored.config, restored.step
  configured = dataset is None
  if configured:
    dataset = data.make_dataset(config.data, seq_len=config.model.seq_len, split=split)
  setup = restored.setup
  result = runtime.validation_loss(setup, setup.compile_eval_step(), restored.params, dataset,
                                   num_batches or config.eval_batches)
  loss = result['loss']
  out = {
      'step': step, 'split': split, 'family': config.model.get('family', 'fastslow'),
      'arm': config.model.arm, 'P': config.model.P,
      'loss': loss, 'perplexity': math.exp(min(loss, 700.0)),
      **data.bits(dataset, loss), 'tokens': int(result['tokens']),
      'gate': models.gate_values(restored.params),
  }
  if configured and config.data.kind == 'synthetic':
    optimum = data.bayes_optimal_ce(config.data, seq_len=config.model.seq_len,
                                    num_windows=result['windows'], split=split)
    out['bayes_optimal_loss'] = optimum
    out['gap_to_optimum'] = loss - optimum
  if jax.process_index() == 0:
    RunDir(workdir).eval_result(split, step).write_text(json.dumps(out, indent=2) + '\n')
  return out


def format_result(out: dict[str, Any]) -> str:
  """A small aligned table of an evaluation result."""
  rows = [(k, f'{v:.4f}' if isinstance(v, float) else str(v)) for k, v in out.items()
          if k != 'gate']
  rows += [(f'gate/{k}', f'{v:+.4f}') for k, v in out['gate'].items()]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Run directory written by fastslow_jax.train.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).', lower_bound=0)
  flags.DEFINE_enum('split', 'validation', ['train', 'validation'], 'Data split.')
  flags.DEFINE_integer('batches', None, 'Batches to evaluate (default: the run\'s eval_batches).',
                       lower_bound=1)
  flags.DEFINE_string('mesh', '1,-1,1', 'data,fsdp,tensor sizes over the local devices.')
  flags.mark_flags_as_required(['workdir'])


def main():
  f = flags.FLAGS
  out = evaluate(f.workdir, step=f.step, split=f.split, num_batches=f.batches, mesh=f.mesh)
  if jax.process_index() == 0:
    print(format_result(out))
    logging.info('Wrote eval_%s_%d.json', out['split'], out['step'])


if __name__ == '__main__':
  cli.run(main, define_flags)
