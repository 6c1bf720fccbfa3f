r"""The zoo at matched compute: every model family against the dense baseline.

    python -m experiments.zoo                          # 500k and 5M tokens, 3 seeds, 2 sources
    python -m experiments.zoo --tokens=500k --seeds=0  # a quick look
    python -m experiments.zoo --report_only            # re-render from results.json

Models: `dense` (the baseline every family shares) and the full model (`arm=coupled`) of each
family in `models.FAMILIES`. Each model's MLP width is chosen so that its analytic training FLOPs
per token match dense's (within `FLOP_TOLERANCE`; `match_flops`), so the families compete at
equal compute per token, not at equal width. Every (data source, budget, seed, model) run trains
through `fastslow_jax.train`; the report (experiments/reports/zoo/report.md) gives per data source
and budget the final validation loss (mean ± std over seeds), bits per byte (text) or the gap to
the Bayes optimum (synthetic), step time relative to dense (interleaved benchmark), every pair of
models compared over the shared seeds (`experiments/stats.py`), and plots of the validation
curves and of final loss against budget.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import os
import pathlib
from typing import Any, Sequence

import matplotlib.ticker
import ml_collections
import numpy as np

from experiments import grid, repo, report, stats, timing
from fastslow_jax import data, models
from fastslow_jax.errors import UsageError

FLOP_TOLERANCE = 0.05  # Matched: analytic training FLOPs per token within 5% of dense's.
MLP_MULTIPLE = 8  # MLP widths are multiples of this.
BUDGETS = (500_000, 5_000_000)
MODEL_COLORS = {'dense': 'tab:gray', 'fastslow': 'tab:blue', 'hourglass': 'tab:red',
                'compressed': 'tab:purple'}


# --------------------------------------------------------------------------- configs


def match_flops(config: ml_collections.ConfigDict, target: float) -> ml_collections.ConfigDict:
  """`config` with `model.mlp_dim` (a multiple of MLP_MULTIPLE) giving the training FLOPs per
  token nearest to `target`; a one-line UsageError if no width comes within FLOP_TOLERANCE."""
  def flops_at(width: int) -> float:
    trial = ml_collections.ConfigDict(config.to_dict())
    trial.model.mlp_dim = width
    return grid.training_flops(trial)

  # FLOPs grow linearly in the MLP width: two points give the width that hits the target.
  low, high = MLP_MULTIPLE, 2 * MLP_MULTIPLE
  slope = (flops_at(high) - flops_at(low)) / (high - low)
  ideal = low + (target - flops_at(low)) / slope
  width = max(MLP_MULTIPLE, MLP_MULTIPLE * round(ideal / MLP_MULTIPLE))
  got = flops_at(width)
  if abs(got / target - 1) > FLOP_TOLERANCE:
    raise UsageError(f'model.family={config.model.family} cannot match {target:.4g} training '
                     f'FLOPs per token by its MLP width (best {got:.4g} at {width}): change the '
                     'size or the family\'s other widths.')
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.mlp_dim = width
  return config


def build_runs(*, data_specs: Sequence[str], families: Sequence[str], seeds: Sequence[int],
               budgets: Sequence[int], size: str, P: int, checkpoints: int, evals: int = 5,
               overrides: dict[str, Any] | None = None) -> list[grid.Run]:
  """Budget, then data, then seed, then model: the smaller budget's grid finishes first, and the
  models of one seed run back to back, so drifts in the machine's load spread over them instead
  of biasing one."""
  runs = []
  for tokens, spec, seed in itertools.product(budgets, data_specs, seeds):
    spec = spec if spec == 'synthetic' else os.path.abspath(spec)
    make = lambda arm, **extra: grid.make_config(
        arm, size=size, P=P, seed=seed, data_spec=spec, tokens=tokens, checkpoints=checkpoints,
        evals=evals, overrides={**(overrides or {}), **extra})
    dense = make('dense')
    target = grid.training_flops(dense)
    group = f'{grid.data_label(spec)}/{grid.tokens_label(tokens)}'
    runs.append(grid.Run(f'{group}/dense-s{seed}', group, 'dense', seed, dense, label='dense'))
    for family in families:
      config = match_flops(make('coupled', **{'model.family': family}), target)
      runs.append(grid.Run(f'{group}/{family}-s{seed}', group, 'coupled', seed, config,
                             label=family))
  return runs


# --------------------------------------------------------------------------- summary


@dataclasses.dataclass
class ModelSummary:
  """One model's figures in one (data source, budget) group."""
  n: int
  val: list[float]
  flops: float
  params: int
  mlp_dim: int
  step_s: float  # Interleaved benchmark (or the runs' own median step when not timed).
  rel_step: float
  bits_per_byte: float | None
  gap: float | None


def _model_summary(rs, step_s: float, dense_step: float, per_byte: float | None,
                   optimum: float | None) -> ModelSummary:
  cfg = grid.model_config(ml_collections.ConfigDict(rs[0]['config']))
  val = [r['val_loss'] for r in rs]
  mean = float(np.mean(val))
  return ModelSummary(
      n=len(rs), val=val, flops=models.flops_per_token(cfg).total,
      params=models.param_count(_abstract(cfg)), mlp_dim=cfg.mlp_dim, step_s=step_s,
      rel_step=step_s / dense_step,
      bits_per_byte=None if per_byte is None else mean / per_byte / math.log(2),
      gap=None if optimum is None else mean - optimum)


def summarise(results: list[dict[str, Any]], timing: dict[str, dict[str, float]]
              ) -> dict[str, dict[str, Any]]:
  """Per group: per model its figures (as dicts), the Bayes optimum, tokens and steps."""
  out = {}
  for group in dict.fromkeys(r['group'] for r in results):
    by_model = collections.defaultdict(list)
    for r in results:
      if r['group'] == group:
        by_model[r['label']].append(r)
    bench = timing.get(group.split('/')[0], {})
    config = ml_collections.ConfigDict(by_model['dense'][0]['config'])
    optimum, per_byte = grid.bayes_optimum(config), _bytes_per_token(config)
    step = {m: bench.get(m, float(np.median([r['step_s'] for r in rs])))
            for m, rs in by_model.items()}
    out[group] = {'models': {name: dataclasses.asdict(_model_summary(
                      rs, step[name], step['dense'], per_byte, optimum))
                             for name, rs in by_model.items()},
                  'optimum': optimum, 'headroom': grid.headroom(config),
                  'tokens': by_model['dense'][0]['tokens'],
                  'steps': by_model['dense'][0]['steps']}
  return out


def _abstract(cfg: models.ModelConfig):
  from flax import nnx
  return nnx.eval_shape(lambda: models.build(cfg, rngs=0))


def _bytes_per_token(config: ml_collections.ConfigDict) -> float | None:
  """UTF-8 bytes per token of the validation split (text sources), else None."""
  ds = data.make_dataset(config.data, seq_len=config.model.seq_len, split='validation')
  return ds.bytes_per_token


def comparisons(runs: list[dict[str, Any]], groups: Sequence[str]
                ) -> dict[str, dict[str, stats.Comparison]]:
  """Every pair of models in every group, paired over seeds, as one family."""
  names = {g: [m for m in MODEL_COLORS if any(r['group'] == g and r['label'] == m for r in runs)]
           for g in groups}
  return report.grouped_comparisons(
      runs, 'label', {g: list(itertools.combinations(names[g], 2)) for g in groups})


# --------------------------------------------------------------------------- plots


def plot_curves(results, root: pathlib.Path, out_dir: pathlib.Path, groups, optima) -> str:
  """Validation loss against training tokens per model and group (seed mean, bars: std), from
  the runs' metrics.jsonl."""
  fig, axes = report.new_figure(len(groups), 1, width=4.6, height=3.4)
  for ax, group in zip(axes[0], groups):
    for name in MODEL_COLORS:
      curves = collections.defaultdict(list)
      for r in (r for r in results if r['group'] == group and r['label'] == name):
        for m in grid.read_metrics(root / r['name']):
          if 'val_loss' in m:
            curves[m['step'] * r['tokens'] / r['steps']].append(m['val_loss'])
      x = sorted(curves)
      if x:
        ax.errorbar(x, [np.mean(curves[k]) for k in x],
                    yerr=[np.std(curves[k], ddof=1) if len(curves[k]) > 1 else 0 for k in x],
                    color=MODEL_COLORS[name], marker='o', ms=3, capsize=2, label=name)
    if optima.get(group) is not None:
      ax.axhline(optima[group], color='k', lw=0.8, ls=':', label='Bayes optimum')
    ax.set_title(group, fontsize=9)
    report.token_axis(ax)
    ax.set_ylabel('validation loss (nats / token)')
    ax.legend(fontsize=7)
  return report.save_figure(fig, out_dir / 'val_loss.png')


def plot_budgets(summary, out_dir: pathlib.Path) -> str:
  """Final validation loss against the budget, one panel per data source; the budgets are the
  only ticks (a log axis would also label its minor ticks, on top of each other), and each
  model's points sit a little apart from the others' so that their error bars stay visible."""
  sources = list(dict.fromkeys(g.split('/')[0] for g in summary))
  fig, axes = report.new_figure(len(sources), 1, width=4.6, height=3.4)
  for ax, source in zip(axes[0], sources):
    groups = [g for g in summary if g.split('/')[0] == source]
    for i, name in enumerate(MODEL_COLORS):
      points = [(summary[g]['tokens'], summary[g]['models'][name]) for g in groups
                if name in summary[g]['models']]
      dodge = 1.04 ** (i - (len(MODEL_COLORS) - 1) / 2)  # A few percent along the log axis.
      if points:
        ax.errorbar([t * dodge for t, _ in points], [np.mean(m['val']) for _, m in points],
                    yerr=[np.std(m['val'], ddof=1) if m['n'] > 1 else 0 for _, m in points],
                    color=MODEL_COLORS[name], marker='o', ms=4, capsize=3, label=name)
    budgets = sorted({summary[g]['tokens'] for g in groups})
    ax.set_xscale('log')
    ax.set_xticks(budgets)
    ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(places=0, sep=''))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel('training tokens')
    ax.set_title(f'{source}: final validation loss', fontsize=9)
    ax.set_ylabel('nats / token')
    ax.legend(fontsize=7)
  return report.save_figure(fig, out_dir / 'loss_vs_budget.png')


# --------------------------------------------------------------------------- report


def verdict(group: str, s: dict[str, Any], comps: dict[str, stats.Comparison]) -> str:
  """Per group: the lowest mean loss, and each family against dense in the words of stats."""
  ranked = sorted(s['models'], key=lambda m: np.mean(s['models'][m]['val']))
  parts = []
  for name in (m for m in ranked if m != 'dense'):
    c = comps.get(f'dense − {name}')
    if c is not None:
      parts.append(c.sentence(f'dense − {name}').rstrip('.'))
  return f'**{group}:** lowest mean loss: {ranked[0]}. ' + '; '.join(parts) + '.'


SETUP = (
    '**Setup.** Models: dense and the full model (`arm=coupled`) of each family; seeds {seeds}; '
    'groups (data source / budget) {groups}. Base model d_model={m.d_model}, {m.num_layers} '
    'layers ({m.num_heads} heads), T={m.seq_len}, P={m.P}, batch {c.batch_size}; fastslow: slow '
    'heads {m.slow_num_heads}, phi {m.phi_dim}, scalar gate; hourglass: (pre, inner, post) layers '
    '{stages}, {m.hourglass_pool} shortening, {m.hourglass_upsample} upsampling; compressed: '
    'block MLP {m.compress_dim}, a gate per head. Each model\'s MLP width is set so that its '
    'analytic training FLOPs per token (`models.flops_per_token`) match dense\'s within '
    '{tolerance:.0%} (the table gives the width and the ratio), so the models differ in width '
    'and their initialisations differ wherever their shapes do. AdamW, warmup + cosine as in the '
    'config. Validation, on the validation split in a fixed order: {validation}; {evals} times '
    'per run. "took" above sums the runs\' wall times.\n')
STEP_TIME = (
    '**Step time.** Median time of one jitted train step of each model (seed 0, random tokens), '
    'the models timed round-robin in rotating order (`timing.time_steps`), so that the load of a '
    'shared machine hits all alike; its ratio to dense is the cost of the same FLOPs in each '
    'architecture on this machine.\n')
MODEL_HEADER = ['model', 'seeds', 'MLP width', 'params', 'train FLOPs / token', 'vs dense',
                'final val loss (mean ± std)', None, 'step time', 'vs dense']


def setup_text(numbers: dict[str, Any]) -> str:
  """The setup paragraph, from the first run's config and results.json's figures."""
  config, runs = ml_collections.ConfigDict(numbers['config']), numbers['runs']
  model = {**config.model.to_dict(), 'family': 'hourglass', 'vocab_size': 256}
  stages = models.ModelConfig.from_mapping(model).hourglass_stages
  validation = '; '.join(
      f'{"all" if scored == split else f"the first {scored} of"} {split} windows '
      f'({scored // config.batch_size} batches) for {source}'
      for source, (scored, split) in numbers['validation'].items())
  return SETUP.format(
      seeds=', '.join(map(str, sorted({r['seed'] for r in runs}))), stages=stages,
      groups=', '.join(numbers['summary']), m=config.model, c=config, tolerance=FLOP_TOLERANCE,
      validation=validation, evals=config.total_steps // config.eval_every)


def group_section(group: str, s: dict[str, Any], comps: dict[str, stats.Comparison]) -> str:
  """A group's table of models, its Bayes optimum and its comparisons."""
  header = list(MODEL_HEADER)
  header[7] = 'gap to Bayes optimum' if s['optimum'] is not None else 'bits per byte'
  dense_flops = s['models']['dense']['flops']
  rows = [[name, x['n'], x['mlp_dim'], f'{x["params"]:,}', f'{x["flops"] / 1e6:.3f} M',
           f'{x["flops"] / dense_flops:.3f}x', report.fmt_pm(x['val']),
           report.fmt(x['gap'] if s['optimum'] is not None else x['bits_per_byte']),
           f'{x["step_s"] * 1e3:.1f} ms', f'{x["rel_step"]:.3f}x']
          for name, x in ((n, s['models'][n]) for n in MODEL_COLORS if n in s['models'])]
  lines = [f'## {group} ({s["tokens"]:,} tokens, {s["steps"]} steps)\n',
           report.markdown_table(header, rows)]
  if s['optimum'] is not None:
    lines.append(f'Bayes-optimal loss on the same validation windows: {s["optimum"]:.4f} nats.\n')
  if s.get('headroom'):  # Synthetic sources only.
    lines.append(report.headroom_text(s['headroom']))
  lines.append(report.comparisons_table(comps))
  return '\n'.join(lines)


def render(numbers: dict[str, Any], out_dir: pathlib.Path, rerendered: bool = False
           ) -> pathlib.Path:
  """report.md, the budget plot and results.json from the numbers alone (results.json's
  content); the validation curves (from metrics.jsonl) linked where present."""
  summary, runs = numbers['summary'], numbers['runs']
  comps = comparisons(runs, list(summary))
  numbers['comparisons'] = {g: {n: stats.to_json(c) for n, c in cs.items()}
                            for g, cs in comps.items()}
  lines = [report.header('The zoo at matched training FLOPs (zoo)', numbers['provenance'],
                         rerendered), setup_text(numbers),
           stats.method(sum(map(len, comps.values()))), STEP_TIME, '## Verdict\n']
  lines += [verdict(g, summary[g], comps[g]) + '\n' for g in summary]
  lines += [group_section(g, summary[g], comps[g]) for g in summary]
  lines += [f'Step-time benchmark ({source}): {note}.\n'
            for source, note in numbers['timing_notes'].items()]
  lines.append('## Plots\n')
  curves = report.kept_figure(out_dir, 'val_loss.png')
  lines += [f'![validation loss]({curves})\n'] if curves else []
  lines.append(f'![final loss against budget]({plot_budgets(summary, out_dir)})\n')
  lines.append(report.runs_section(runs, numbers['root']))
  return report.write_report(out_dir, '\n'.join(lines), numbers)


def write(results, *, root: pathlib.Path, out_dir: pathlib.Path, command: str,
          timing: dict[str, dict[str, float]], timing_notes: dict[str, str]) -> pathlib.Path:
  """The validation curves from the runs' metrics.jsonl, then the report from the numbers."""
  out_dir.mkdir(parents=True, exist_ok=True)
  summary = summarise(results, timing)
  plot_curves(results, root, out_dir, list(summary), {g: s['optimum'] for g, s in summary.items()})
  sources = {r['group'].split('/')[0]: ml_collections.ConfigDict(r['config']) for r in results}
  numbers = {
      'provenance': report.provenance(command, results, sum(r['wall_s'] for r in results)),
      'config': repo.portable_config(results[0]['config']), 'root': repo.display_path(root),
      'validation': {s: grid.validation_windows(c) for s, c in sources.items()},
      'summary': summary, 'timing_notes': timing_notes, 'runs': grid.without_configs(results)}
  return render(numbers, out_dir)


def run(*, name: str = 'zoo', data_specs: Sequence[str] = repo.DEFAULT_SOURCES,
        families: Sequence[str] = tuple(models.FAMILIES), seeds: Sequence[int] = (0, 1, 2),
        budgets: Sequence[int] = BUDGETS, size: str = 'cpu', P: int = 16, checkpoints: int = 1,
        evals: int = 5, timing_rounds: int = 20, timing_steps: int = 3,
        overrides: dict[str, Any] | None = None, workdir_root: str | None = None,
        out_dir: str | None = None, command: str = '', devices=None, log=print) -> pathlib.Path:
  """Runs (or reuses) the grid and writes the report; returns the report's path."""
  root, out = repo.runs_root(name, workdir_root), repo.report_dir(name, out_dir)
  runs = build_runs(data_specs=data_specs, families=families, seeds=seeds, budgets=budgets,
                    size=size, P=P, checkpoints=checkpoints, evals=evals, overrides=overrides)
  results = grid.run_grid(runs, root, devices=devices, log=log)
  times, notes = {}, {}
  if timing_rounds:  # Per data source, on the first budget's configs.
    times, notes = timing.time_grid(runs, root, key=lambda r: r.label,
                                    group=lambda r: r.group.split('/')[0], rounds=timing_rounds,
                                    steps_per_round=timing_steps, devices=devices, log=log)
  if not grid.is_main_process():
    return out / 'report.md'
  path = write(results, root=root, out_dir=out, command=command, timing=times,
               timing_notes=notes)
  log(f'Wrote {path}')
  return path


def main():
  from absl import flags
  f = flags.FLAGS
  if not report.start(f.name, f, render):
    return
  run(name=f.name, data_specs=f.data, families=f.families, seeds=[int(s) for s in f.seeds],
      budgets=[grid.parse_tokens(t) for t in f.tokens.split(',')], size=f.size, P=f.P,
      checkpoints=f.checkpoints, evals=f.evals, timing_rounds=f.timing_rounds,
      overrides=grid.parse_overrides(f.set), workdir_root=f.workdir_root, out_dir=f.out_dir,
      command=report.command_line('experiments.zoo'))


def define_flags():
  from absl import flags
  grid.define_sources_flags('model')
  flags.DEFINE_list('families', list(models.FAMILIES), 'Families compared with dense.')
  flags.DEFINE_integer('P', 16, 'Pooling / shortening period.', lower_bound=1)
  flags.DEFINE_integer('checkpoints', 1, 'Checkpoints per run.', lower_bound=1)
  grid.define_grid_flags('zoo', tokens_help='Training budgets in tokens, comma-separated.')
  flags.FLAGS.set_default('tokens', ','.join(grid.tokens_label(b) for b in BUDGETS))
  flags.adopt_module_key_flags(grid)


if __name__ == '__main__':
  from fastslow_jax import cli
  cli.run(main, define_flags)
