r"""Quality and step time vs the pooling period P (eps = 1/P) of the coupled model.

    python -m experiments.p_sweep                       # P in {4,8,16,32,64}, 2 seeds, synthetic
    python -m experiments.p_sweep --data=../shared/data/tinyshakespeare.txt --seeds=0,1,2
    python -m experiments.p_sweep --report_only         # re-render from results.json

Every P trains the coupled arm with the same config (T=256 by default so that even P=64 leaves 4
slow blocks per window), plus a dense reference with the same seeds. The report
(experiments/reports/p_sweep/report.md) gives the final validation loss, coupled − dense paired
over the seeds (`experiments/stats.py`), the final gates and slow share, the measured step time
and the analytic slow FLOP share per P, two plots (quality vs P, step time vs P) and a conclusion
computed from them.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from experiments import grid, probes, repo, report, stats, timing
from fastslow_jax import data, models

DEFAULT_PS = (4, 8, 16, 32, 64)
DEFAULT_SET = {'model.seq_len': 256, 'batch_size': 8}


def build_runs(*, data_spec: str, Ps: Sequence[int], seeds: Sequence[int], tokens: int, size: str,
               dense: bool, checkpoints: int, overrides: dict[str, Any]) -> list[grid.Run]:
  """Per seed: the dense reference (if asked), then the coupled arm at every P."""
  runs = []
  group = grid.data_label(data_spec)
  for seed in seeds:
    if dense:
      config = grid.make_config('dense', size=size, P=Ps[0], seed=seed, data_spec=data_spec,
                                  tokens=tokens, checkpoints=checkpoints, overrides=overrides)
      runs.append(grid.Run(f'dense-s{seed}', group, 'dense', seed, config, label='dense'))
    for P in Ps:
      config = grid.make_config('coupled', size=size, P=P, seed=seed, data_spec=data_spec,
                                  tokens=tokens, checkpoints=checkpoints, overrides=overrides)
      runs.append(grid.Run(f'coupled-P{P}-s{seed}', group, 'coupled', seed, config,
                             label=f'P={P}'))
  return runs


def _p_row(rs: list[dict[str, Any]], step_s: float, dense_step: float) -> dict[str, Any]:
  """One P's figures."""
  cfg = ml_collections.ConfigDict(rs[0]['config'])
  cfg.model.vocab_size = data.source(cfg.data).vocab_size
  flops = models.flops_per_token(models.ModelConfig.from_mapping(cfg.model))
  val = [r['val_loss'] for r in rs]
  val_mean, val_std = report.mean_std(val)
  return {
      'val': val, 'val_mean': val_mean, 'val_std': val_std,
      'gate': {k: float(np.mean([r['gate'][k] for r in rs])) for k in rs[0]['gate']},
      'share': float(np.mean([probes.max_share(r) for r in rs])),
      'step_s': step_s, 'rel_step': step_s / dense_step,
      'run_step_s': float(np.mean([r['step_s'] for r in rs])),
      'slow_flop_share': flops.slow / flops.total, 'blocks': cfg.model.seq_len // cfg.model.P,
  }


def summarise(results: list[dict[str, Any]], Ps: Sequence[int],
              timing: dict[str, float] | None = None) -> dict[str, Any]:
  """Per P: quality, gates, slow share and step times (`timing`: the interleaved benchmark,
  keyed 'dense' and 'P=<P>'; else the runs' own step times)."""
  timing = timing or {}
  dense = [r for r in results if r['arm'] == 'dense']
  run_step = lambda rs: float(np.mean([r['step_s'] for r in rs])) if rs else math.nan
  dense_step = timing.get('dense', run_step(dense))
  rows = {}
  for P in Ps:
    rs = [r for r in results if r['label'] == f'P={P}']
    rows[P] = _p_row(rs, timing.get(f'P={P}', run_step(rs)), dense_step)
  return {'P': rows, 'dense': {'val': [r['val_loss'] for r in dense], 'step_s': dense_step,
                               'run_step_s': run_step(dense)},
          'benchmark': bool(timing)}


def comparisons(runs: list[dict[str, Any]], Ps: Sequence[int]) -> dict[int, stats.Comparison]:
  """Coupled − dense at every P, paired over the seeds, as one family (none without dense)."""
  dense = report.by_seed(runs, arm='dense')
  if not dense:
    return {}
  family = stats.family({P: stats.paired(report.by_seed(runs, label=f'P={P}'), dense)
                         for P in Ps})
  return dict(family)


def _verdict_sets(comps: dict[int, stats.Comparison]) -> str:
  """'equal to dense at P in {...}; undetermined at this power at P in {...}'."""
  words = {}
  for P, c in comps.items():
    words.setdefault(c.verdict, []).append(P)
  order = (stats.EQUAL, stats.DIFFERENT, stats.UNDETERMINED)
  return '; '.join(f'{w} {"to dense " if w != stats.UNDETERMINED else ""}at P in '
                   f'{{{", ".join(map(str, words[w]))}}}' for w in order if w in words)


def conclusion(s: dict[str, Any], comps: dict[int, stats.Comparison],
               optimum: float | None, headroom: dict | None = None) -> str:
  """A short paragraph computed from the summary and the verdicts of stats (and the source's
  headroom, where it has one)."""
  rows, dense = s['P'], s['dense']
  Ps = sorted(rows)
  best = min(Ps, key=lambda P: rows[P]['val_mean'])
  worst = max(Ps, key=lambda P: rows[P]['val_mean'])
  out = [f'The lowest mean loss is at P={best} ({rows[best]["val_mean"]:.4f}), the highest at '
         f'P={worst} ({rows[worst]["val_mean"]:.4f}); the spread of the means over P is '
         f'{rows[worst]["val_mean"] - rows[best]["val_mean"]:.4f} nats.']
  if dense['val']:
    widest = max(comps.values(), key=lambda c: c.high - c.low)
    power = ('' if widest.verdict != stats.UNDETERMINED else
             f'; {stats.power_phrase(widest)}')
    out.append(f'Dense reaches {np.mean(dense["val"]):.4f}. Coupled − dense, paired over the '
               f'seeds: {_verdict_sets(comps)} (the widest 95% interval: {widest.interval()} '
               f'nats{power}).')
  if optimum is not None and dense['val']:
    out.append(f'The Bayes optimum is {optimum:.4f}: the best P closes '
               f'{_closed(rows[best]["val_mean"], dense, optimum)} of dense\'s gap to it.')
  shares = [rows[P]['share'] for P in Ps]
  out.append(f'The gated slow share ranges {min(shares):.3f}-{max(shares):.3f} over P '
             f'(largest at P={Ps[int(np.argmax(shares))]}).')
  steps = [rows[P]['rel_step'] for P in Ps]
  if not any(math.isnan(x) for x in steps):
    out.append(f'Step time relative to dense goes from {steps[0]:.2f}x at P={Ps[0]} to '
               f'{steps[-1]:.2f}x at P={Ps[-1]}, while the analytic slow FLOP share goes from '
               f'{rows[Ps[0]]["slow_flop_share"]:.1%} to {rows[Ps[-1]]["slow_flop_share"]:.1%}.')
  losses = {f'P={P}': rows[P]['val_mean'] for P in Ps}
  if dense['val']:
    losses['dense'] = float(np.mean(dense['val']))
  out.append(report.headroom_reached(headroom, losses))
  return ' '.join(filter(None, out))


def _closed(best: float, dense: dict[str, Any], optimum: float) -> str:
  gap = float(np.mean(dense['val'])) - optimum
  return f'{(float(np.mean(dense["val"])) - best) / gap:+.1%}' if gap > 0 else 'n/a'


# --------------------------------------------------------------------------- plots


def _quality_panel(ax, s: dict[str, Any], optimum: float | None) -> None:
  """Final validation loss per P, its range set by the runs (the Bayes optimum noted)."""
  rows, dense = s['P'], s['dense']
  Ps = sorted(rows)
  ax.errorbar(Ps, [rows[P]['val_mean'] for P in Ps],
              yerr=[0 if math.isnan(rows[P]['val_std']) else rows[P]['val_std'] for P in Ps],
              marker='o', capsize=3, color=report.COLORS['coupled'],
              label='coupled (seed mean ± std)')
  for P in Ps:
    ax.scatter([P] * len(rows[P]['val']), rows[P]['val'], s=8, color=report.COLORS['coupled'],
               alpha=0.4)
  if dense['val']:
    m, sd = report.mean_std(dense['val'])
    ax.axhline(m, color=report.COLORS['dense'], label='dense (mean)')
    if not math.isnan(sd):
      ax.axhspan(m - sd, m + sd, color=report.COLORS['dense'], alpha=0.2, label='dense ± std')
  if optimum is not None:
    low, high = ax.get_ylim()
    if low <= optimum <= high:
      ax.axhline(optimum, color='k', ls=':', lw=0.8, label='Bayes optimum')
    else:  # A line far from the runs would flatten the differences this plot shows.
      where = 'below' if optimum < low else 'above'
      ax.set_title(f'Bayes optimum {optimum:.4f}: {where} the range shown', fontsize=8)
  ax.set_ylabel('final validation loss (nats / token)')
  ax.legend(fontsize=7)


def _difference_panel(ax, comps: dict[int, stats.Comparison]) -> None:
  """Coupled − dense per P, paired over seeds: mean, 95% interval and the ±MARGIN band."""
  Ps = sorted(comps)
  means = [comps[P].mean for P in Ps]
  ax.errorbar(Ps, means, yerr=[[m - comps[P].low for P, m in zip(Ps, means)],
                               [comps[P].high - m for P, m in zip(Ps, means)]],
              marker='o', capsize=3, color=report.COLORS['coupled'],
              label='coupled − dense (mean, 95% CI)')
  ax.axhspan(-stats.MARGIN, stats.MARGIN, color='tab:green', alpha=0.15,
             label=f'±{stats.MARGIN:g} (equivalence margin)')
  ax.axhline(0, color='k', lw=0.5)
  ax.set_ylabel('paired difference (nats / token)')
  ax.legend(fontsize=7)


def plot_quality(s: dict[str, Any], comps: dict[int, stats.Comparison], out_dir: pathlib.Path,
                 optimum: float | None) -> str:
  """quality_vs_P.png: the losses per P and, beside dense, the paired differences."""
  fig, axes = report.new_figure(2 if comps else 1, 1, width=5.2, height=3.6)
  _quality_panel(axes[0][0], s, optimum)
  if comps:
    _difference_panel(axes[0][1], comps)
  for ax in axes[0]:
    ax.set_xscale('log', base=2)
    ax.set_xticks(sorted(s['P']), [str(P) for P in sorted(s['P'])])
    ax.set_xlabel('P (tokens per slow step; eps = 1/P)')
  return report.save_figure(fig, out_dir / 'quality_vs_P.png')


def plot_step_time(s: dict[str, Any], out_dir: pathlib.Path) -> str:
  """step_time_vs_P.png: step times per P beside dense's, and the analytic slow FLOP share."""
  rows, dense = s['P'], s['dense']
  Ps = sorted(rows)
  fig, axes = report.new_figure(1, 1, width=5.2, height=3.6)
  ax = axes[0][0]
  how = 'interleaved benchmark' if s['benchmark'] else 'median in runs'
  ax.plot(Ps, [rows[P]['step_s'] * 1e3 for P in Ps], marker='o', color=report.COLORS['coupled'],
          label=f'coupled ({how})')
  ax.plot(Ps, [rows[P]['run_step_s'] * 1e3 for P in Ps], marker='.', ls=':', lw=0.8,
          color=report.COLORS['coupled'], label='coupled (median in runs)')
  if dense['val']:
    ax.axhline(dense['step_s'] * 1e3, color=report.COLORS['dense'], label=f'dense ({how})')
    ax.axhline(dense['run_step_s'] * 1e3, color=report.COLORS['dense'], ls=':', lw=0.8,
               label='dense (median in runs)')
  ax.set_xscale('log', base=2)
  ax.set_xticks(Ps, [str(P) for P in Ps])
  ax.set_xlabel('P')
  ax.set_ylabel('train step time (ms)')
  twin = ax.twinx()
  twin.plot(Ps, [100 * rows[P]['slow_flop_share'] for P in Ps], ls='--', marker='s', ms=3,
            color='tab:red', label='slow FLOP share (analytic)')
  twin.set_ylabel('slow share of training FLOPs (%)', color='tab:red')
  lines, more = ax.get_legend_handles_labels(), twin.get_legend_handles_labels()
  ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)
  return report.save_figure(fig, out_dir / 'step_time_vs_P.png')


# --------------------------------------------------------------------------- report

SETUP = (
    '**Setup.** Coupled arm at P in {{{Ps}}}{dense}; seeds {seeds}; data {group}. '
    'd_model={m.d_model}, {m.num_layers} layers, T={m.seq_len}, batch {c.batch_size}, '
    '{c.total_steps} steps = {tokens:,} tokens per run. Quality is the final validation loss '
    '({validation}). Step time is the median time of one jitted train step of each config (seed '
    '0) on random tokens, all configs timed round-robin in rotating order (`timing.time_steps`) '
    'so that a shared machine\'s load hits them alike; "in runs" is the median logged step of '
    'the runs themselves. The slow FLOP share is `models.flops_per_token` (training FLOPs of the '
    'slow paths / all). "took" above is the sum of the runs\' wall times.\n')
HEADER = ['P', 'eps = 1/P', 'slow blocks / window', 'final val loss', 'coupled − dense [95% CI]',
          'verdict', 'final gate per layer', 'slow share (max layer)', 'step time', 'vs dense',
          'step time (in runs)', 'slow FLOP share']


def setup_text(numbers: dict[str, Any]) -> str:
  """The setup paragraph, from the first run's config and results.json's figures."""
  config, runs = ml_collections.ConfigDict(numbers['config']), numbers['runs']
  scored, split = numbers['validation']
  which = f'all {split}' if scored == split else f'the first {scored} of {split}'
  return SETUP.format(
      Ps=', '.join(map(str, sorted(map(int, numbers['summary']['P'])))),
      dense=' plus a dense reference' if numbers['summary']['dense']['val'] else '',
      seeds=', '.join(map(str, sorted({r['seed'] for r in runs}))), group=runs[0]['group'],
      m=config.model, c=config, tokens=runs[0]['tokens'],
      validation=f'{which} validation windows, {scored // config.batch_size} batches')


def results_rows(s: dict[str, Any], comps: dict[int, stats.Comparison]) -> list[list[Any]]:
  """A row per P (and dense's): quality, the comparison, gates, share, step times."""
  rows = []
  for P in sorted(s['P']):
    r, c = s['P'][P], comps.get(P)
    rows.append([P, f'{1 / P:.4f}', r['blocks'], report.fmt_pm(r['val']),
                 c.interval() if c else '—', c.verdict if c else '—', report.gates_text(r['gate']),
                 report.fmt(r['share'], 3), f'{r["step_s"] * 1e3:.1f} ms',
                 report.fmt(r['rel_step'], 3) + 'x', f'{r["run_step_s"] * 1e3:.0f} ms',
                 f'{r["slow_flop_share"]:.1%}'])
  if s['dense']['val']:
    rows.append(['dense', '—', '—', report.fmt_pm(s['dense']['val']), '—', '—', '—', '—',
                 f'{s["dense"]["step_s"] * 1e3:.1f} ms', '1.000x',
                 f'{s["dense"]["run_step_s"] * 1e3:.0f} ms', '0.0%'])
  return rows


def render(numbers: dict[str, Any], out_dir: pathlib.Path, rerendered: bool = False
           ) -> pathlib.Path:
  """report.md, its plots and results.json from the numbers alone (results.json's content)."""
  s = numbers['summary']
  s['P'] = {int(P): row for P, row in s['P'].items()}  # JSON keys are strings.
  comps = comparisons(numbers['runs'], sorted(s['P']))
  numbers['comparisons'] = {f'P={P}': stats.to_json(c) for P, c in comps.items()}
  optimum = numbers['optimum']
  lines = [report.header(numbers['title'], numbers['provenance'], rerendered),
           setup_text(numbers), stats.method(len(comps)), '## Conclusion\n',
           conclusion(s, comps, optimum, numbers.get('headroom')) + '\n', '## Results\n',
           report.markdown_table(HEADER, results_rows(s, comps))]
  if optimum is not None:
    lines.append(f'Bayes-optimal loss on the same validation windows: {optimum:.4f} nats/token.\n')
  lines.append(report.headroom_text(numbers.get('headroom')))
  if numbers.get('timing_note'):
    lines.append(f'Step-time benchmark: {numbers["timing_note"]}.\n')
  if comps:
    lines.append(report.comparisons_table({f'P={P} − dense': c for P, c in comps.items()}))
  lines += ['## Plots\n', f'![quality vs P]({plot_quality(s, comps, out_dir, optimum)})\n',
            f'![step time vs P]({plot_step_time(s, out_dir)})\n',
            report.runs_section(numbers['runs'], numbers['root'])]
  return report.write_report(out_dir, '\n'.join(lines), numbers)


def write(results, *, Ps, root: pathlib.Path, out_dir: pathlib.Path, command: str, title: str,
          timing: dict[str, float] | None = None, timing_note: str = '') -> pathlib.Path:
  """The numbers results.json keeps, then the report from them."""
  out_dir.mkdir(parents=True, exist_ok=True)
  config = ml_collections.ConfigDict(results[0]['config'])
  numbers = {
      'title': title, 'provenance': report.provenance(command, results,
                                                      sum(r['wall_s'] for r in results)),
      'config': results[0]['config'], 'validation': grid.validation_windows(config),
      'root': repo.display_path(root), 'summary': summarise(results, Ps, timing),
      'optimum': grid.bayes_optimum(config), 'headroom': grid.headroom(config, Ps),
      'timing_note': timing_note,
      'runs': grid.without_configs(results)}
  return render(numbers, out_dir)


def run(*, name: str = 'p_sweep', data_spec: str = 'synthetic', Ps: Sequence[int] = DEFAULT_PS,
        seeds: Sequence[int] = (0, 1), tokens: int = 500_000, size: str = 'cpu',
        dense: bool = True, checkpoints: int = 1, timing_rounds: int = 20,
        timing_steps: int = 3, overrides: dict[str, Any] | None = None,
        workdir_root: str | None = None, out_dir: str | None = None, command: str = '',
        devices=None, log=print) -> pathlib.Path:
  """Runs (or reuses) the sweep and writes the report; returns the report's path."""
  overrides = dict(DEFAULT_SET if overrides is None else overrides)
  data_spec = data_spec if data_spec == 'synthetic' else os.path.abspath(data_spec)
  root, out = repo.runs_root(name, workdir_root), repo.report_dir(name, out_dir)
  Ps = sorted(Ps)
  runs = build_runs(data_spec=data_spec, Ps=Ps, seeds=seeds, tokens=tokens, size=size,
                    dense=dense, checkpoints=checkpoints, overrides=overrides)
  results = grid.run_grid(runs, root, devices=devices, log=log)
  times, note = None, ''
  if timing_rounds:
    log(f'Timing the configs ({timing_rounds} interleaved rounds) ...')
    times, note = timing.cached_step_times(
        root / 'timing.json', {r.label: r.config for r in runs if r.seed == seeds[0]},
        rounds=timing_rounds, steps_per_round=timing_steps, devices=devices)
  if not grid.is_main_process():
    return out / 'report.md'
  title = f'Quality and step time vs P ({name}, {grid.tokens_label(tokens)} tokens per run)'
  path = write(results, Ps=Ps, root=root, out_dir=out, command=command, title=title,
               timing=times, timing_note=note)
  log(f'Wrote {path}')
  return path


def main():
  from absl import flags
  f = flags.FLAGS
  if not report.start(f.name, f, render):
    return
  run(name=f.name, data_spec=f.data, Ps=[int(p) for p in f.Ps], seeds=[int(s) for s in f.seeds],
      tokens=grid.parse_tokens(f.tokens), size=f.size, dense=f.dense, checkpoints=f.checkpoints,
      timing_rounds=f.timing_rounds, overrides=grid.parse_overrides(f.set),
      workdir_root=f.workdir_root, out_dir=f.out_dir,
      command=report.command_line('experiments.p_sweep'))


def define_flags():
  from absl import flags
  flags.DEFINE_string('data', 'synthetic', "'synthetic' or text file(s).")
  flags.DEFINE_list('Ps', [str(p) for p in DEFAULT_PS], 'Pooling periods (must divide T).')
  flags.DEFINE_list('seeds', ['0', '1'], 'Seeds per P.')
  flags.DEFINE_bool('dense', True, 'Also train the dense reference (same seeds).')
  flags.DEFINE_integer('checkpoints', 1, 'Checkpoints per run (slow share measured at each).',
                       lower_bound=1)
  grid.define_grid_flags('p_sweep', set_default=[f'{k}={v}' for k, v in DEFAULT_SET.items()])
  flags.adopt_module_key_flags(grid)  # Listed in --help beside this module's own.


if __name__ == '__main__':
  from fastslow_jax import cli
  cli.run(main, define_flags)
