r"""Evaluate a run's checkpoint on whatever devices are here.

    python -m fastslow_jax.evaluate --workdir=/tmp/run [--step=N] [--split=validation]

Restores parameters only (no optimizer state) onto a mesh built for the local devices, runs a
fixed number of batches in a fixed order, prints and writes DIR/eval_<split>_<step>.json: loss,
perplexity, bits per byte (text) or per token (synthetic), tokens evaluated, the gap to the Bayes
optimum (synthetic sources), the gate value per layer, and the loss by position in the context
(mean over the windows, in buckets of positions doubling in length; for synthetic sources beside
the optimum with the whole past and, for a model with a local fast path, with the last W tokens),
plotted in DIR/eval_<split>_<step>_positions.png: the curve that shows where a longer reach
helps, for any model.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import jax
import numpy as np
from absl import flags, logging
from etils import epath

from fastslow_jax import cli, data, models, restoring, runtime
from fastslow_jax.errors import UsageError
from fastslow_jax.rundir import RunDir


def evaluate(workdir: str, *, step: int | None = None, split: str = 'validation',
             num_batches: int | None = None, mesh: str = '1,-1,1', devices=None,
             dataset=None, plot: bool = True) -> dict[str, Any]:
  """Evaluates the checkpoint at `step` (default latest) of `workdir`; returns the results and
  writes them to the run directory (with the plot of the loss by position unless not `plot`).
  `dataset` replaces the split of the run's configured data."""
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
  result = runtime.validation_loss(setup, setup.compile_eval_step(per_position=True),
                                   restored.params, dataset, num_batches or config.eval_batches)
  loss = result['loss']
  out = {
      'step': step, 'split': split, 'family': config.model.family, 'arm': config.model.arm,
      'P': config.model.P, 'fast_window': config.model.fast_window, 'loss': loss,
      'perplexity': math.exp(min(loss, 700.0)), **data.bits(dataset, loss),
      'tokens': int(result['tokens']), 'gate': models.gate_values(restored.params),
  }
  optima = {}
  if configured and hasattr(source, 'bayes_optimal_ce_per_position'):
    optima = {name: source.bayes_optimal_ce_per_position(
        seq_len=config.model.seq_len, num_windows=result['windows'], split=split, window=w)
        for name, w in (('optimum', None), ('optimum_window', config.model.fast_window))
        if name == 'optimum' or w}
    out['bayes_optimal_loss'] = float(optima['optimum'].mean())
    out['gap_to_optimum'] = loss - out['bayes_optimal_loss']
  out['loss_by_position'] = by_position(result['loss_by_position'], **optima)
  if jax.process_index() == 0:
    run.eval_result(split, step).write_text(json.dumps(out, indent=2) + '\n')
    if plot:
      plot_by_position([(f'{out["family"]} {out["arm"]}', out)],
                       run.eval_positions_plot(split, step))
  return out


def position_buckets(seq_len: int) -> list[tuple[int, int]]:
  """[lo, hi) ranges of positions of a window (position t predicts token t+1 from t+1 tokens of
  context): [0, 16), then ranges doubling in length, [16, 32), [32, 64), ..., up to seq_len."""
  edges = [0, *(16 * 2**i for i in range(max(1, seq_len).bit_length()) if 16 * 2**i < seq_len),
           seq_len]
  return list(zip(edges, edges[1:]))


def by_position(loss: np.ndarray, **curves: np.ndarray) -> dict[str, list]:
  """Per-position losses [T] (and any other curves of the same length) as bucket means."""
  buckets = position_buckets(len(loss))
  mean = lambda curve: [float(np.mean(curve[lo:hi])) for lo, hi in buckets]
  return {'buckets': [list(b) for b in buckets], 'loss': mean(loss),
          **{name: mean(curve) for name, curve in curves.items()}}


def plot_by_position(results: list[tuple[str, dict]], path, title: str = '') -> None:
  """The loss by position of each (label, evaluation result), with the optima the first one
  holds, on a log axis of the position, written to `path` as PNG."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  fig, ax = plt.subplots(figsize=(5.2, 3.6))
  for label, r in results:
    curve = r['loss_by_position']
    x = [math.sqrt(max(lo, 1) * hi) for lo, hi in curve['buckets']]
    ax.plot(x, curve['loss'], marker='o', ms=3, label=label)
  curve = results[0][1]['loss_by_position']
  for name, style in (('optimum', ':'), ('optimum_window', '--')):
    if name in curve:
      w = results[0][1]['fast_window']
      ax.plot(x, curve[name], 'k' + style, lw=0.9,
              label='Bayes optimum' if name == 'optimum' else f'optimum, last {w} tokens')
  ax.set_xscale('log', base=2)
  ax.set_xlabel('position in the context (bucket)')
  ax.set_ylabel('loss (nats / token)')
  ax.set_title(title or 'loss by position', fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=110)
  plt.close(fig)
  epath.Path(path).write_bytes(buffer.getvalue())  # Local or gs:// alike.


def format_result(out: dict[str, Any]) -> str:
  """A small aligned table of an evaluation result."""
  rows = [(k, f'{v:.4f}' if isinstance(v, float) else str(v)) for k, v in out.items()
          if k not in ('gate', 'loss_by_position')]
  rows += [(f'gate/{k}', f'{v:+.4f}') for k, v in out['gate'].items()]
  curve = out['loss_by_position']
  rows += [(f'loss/positions {lo}-{hi - 1}', f'{v:.4f}')
           for (lo, hi), v in zip(curve['buckets'], curve['loss'])]
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
