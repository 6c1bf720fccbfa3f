r"""Evaluate a run's checkpoint on whatever devices are here.

    python -m fastslow_jax.evaluate --workdir=/tmp/run [--step=N] [--split=validation]

Restores parameters only (no optimizer state) onto a mesh built for the local devices, runs a
fixed number of batches in a fixed order, prints and writes DIR/eval_<split>_<step>.json: loss,
perplexity, bits per byte (text) or per token (synthetic), tokens evaluated, the gap to the Bayes
optimum (synthetic source) and the gate value per layer.
"""

from __future__ import annotations

import json
import math
from typing import Any

import jax
from absl import flags, logging

from fastslow_jax import cli, data, models, restoring, runtime
from fastslow_jax.errors import UsageError
from fastslow_jax.rundir import RunDir


def evaluate(workdir: str, *, step: int | None = None, split: str = 'validation',
             num_batches: int | None = None, mesh: str = '1,-1,1', devices=None,
             dataset=None) -> dict[str, Any]:
  """Evaluates the checkpoint at `step` (default latest) of `workdir`; returns the results and
  writes them to the run directory. `dataset` replaces the split of the run's configured data."""
  if num_batches is not None and num_batches < 1:
    raise UsageError(f'--batches={num_batches} is invalid: use a positive integer (or leave it '
                     'out for the run\'s eval_batches).')
  run = RunDir(workdir)
  run.check(run=True, write=True)
  restored = restoring.restore(run, step, mesh=mesh, devices=devices)
  config, step, source = restored.config, restored.step, restored.source
  configured = dataset is None
  if configured:
    dataset = source.open(split, seq_len=config.model.seq_len)
  setup = restored.setup
  result = runtime.validation_loss(setup, setup.compile_eval_step(), restored.params, dataset,
                                   num_batches or config.eval_batches)
  loss = result['loss']
  out = {
      'step': step, 'split': split, 'family': config.model.family, 'arm': config.model.arm,
      'P': config.model.P, 'loss': loss, 'perplexity': math.exp(min(loss, 700.0)),
      **data.bits(dataset, loss), 'tokens': int(result['tokens']),
      'gate': models.gate_values(restored.params),
  }
  if configured and hasattr(source, 'bayes_optimal_ce'):
    optimum = source.bayes_optimal_ce(seq_len=config.model.seq_len,
                                      num_windows=result['windows'], split=split)
    out['bayes_optimal_loss'] = optimum
    out['gap_to_optimum'] = loss - optimum
  if jax.process_index() == 0:
    run.eval_result(split, step).write_text(json.dumps(out, indent=2) + '\n')
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
