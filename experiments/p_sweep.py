r"""Quality and step time vs the pooling period P (eps = 1/P) of the coupled model.

    python -m experiments.p_sweep                       # P in {4,8,16,32,64}, 2 seeds, synthetic
    python -m experiments.p_sweep --data=../shared/data/tinyshakespeare.txt --seeds=0,1,2

Every P trains the coupled arm with the same config (T=256 by default so that even P=64 leaves 4
slow blocks per window), plus a dense reference with the same seeds. The report
(experiments/reports/p_sweep/report.md) gives the final validation loss, its difference to dense
with Welch's t-test, the final gates and slow share, the measured step time and the analytic slow
FLOP share per P, two plots (quality vs P, step time vs P) and a conclusion computed from them.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from experiments import common
from fastslow_jax import data, models

DEFAULT_PS = (4, 8, 16, 32, 64)
DEFAULT_SET = {'model.seq_len': 256, 'batch_size': 8}


def build_runs(*, data_spec: str, Ps: Sequence[int], seeds: Sequence[int], tokens: int, size: str,
               dense: bool, checkpoints: int, overrides: dict[str, Any]) -> list[common.Run]:
  runs = []
  group = common.data_label(data_spec)
  for seed in seeds:
    if dense:
      config = common.make_config('dense', size=size, P=Ps[0], seed=seed, data_spec=data_spec,
                                  tokens=tokens, checkpoints=checkpoints, overrides=overrides)
      runs.append(common.Run(f'dense-s{seed}', group, 'dense', seed, config, label='dense'))
    for P in Ps:
      config = common.make_config('coupled', size=size, P=P, seed=seed, data_spec=data_spec,
                                  tokens=tokens, checkpoints=checkpoints, overrides=overrides)
      runs.append(common.Run(f'coupled-P{P}-s{seed}', group, 'coupled', seed, config,
                             label=f'P={P}'))
  return runs


def summarise(results: list[dict[str, Any]], Ps: Sequence[int],
              timing: dict[str, float] | None = None) -> dict[str, Any]:
  """Per P: quality, the test against dense, gates, slow share and step times (`timing`: the
  interleaved benchmark, keyed 'dense' and 'P=<P>'; else the runs' own step times)."""
  timing = timing or {}
  dense = [r for r in results if r['arm'] == 'dense']
  dense_val = [r['val_loss'] for r in dense]
  dense_step = timing.get('dense', float(np.mean([r['step_s'] for r in dense])) if dense
                          else math.nan)
  rows = {}
  for P in Ps:
    rs = [r for r in results if r['label'] == f'P={P}']
    cfg = common.ml_collections.ConfigDict(rs[0]['config'])
    cfg.model.vocab_size = data.source(cfg.data).vocab_size
    flops = models.flops_per_token(models.ModelConfig.from_mapping(cfg.model))
    val = [r['val_loss'] for r in rs]
    step_s = timing.get(f'P={P}', float(np.mean([r['step_s'] for r in rs])))
    val_mean, val_std = common.mean_std(val)
    rows[P] = {
        'val': val, 'val_mean': val_mean, 'val_std': val_std,
        'vs_dense': common.compare(val, dense_val) if dense_val else None,
        'gate': {k: float(np.mean([r['gate'][k] for r in rs])) for k in rs[0]['gate']},
        'share': float(np.mean([common.max_share(r) for r in rs])),
        'step_s': step_s, 'rel_step': step_s / dense_step if dense else math.nan,
        'run_step_s': float(np.mean([r['step_s'] for r in rs])),
        'slow_flop_share': flops.slow / flops.total,
        'blocks': cfg.model.seq_len // P,
    }
  return {'P': rows, 'dense': {'val': dense_val, 'step_s': dense_step,
                               'run_step_s': float(np.mean([r['step_s'] for r in dense]))
                               if dense else math.nan},
          'benchmark': bool(timing)}


def conclusion(s: dict[str, Any], optimum: float | None) -> str:
  """A short paragraph computed from the summary."""
  rows, dense = s['P'], s['dense']
  Ps = sorted(rows)
  best = min(Ps, key=lambda P: rows[P]['val_mean'])
  worst = max(Ps, key=lambda P: rows[P]['val_mean'])
  out = [f'The best P is {best} (validation loss {rows[best]["val_mean"]:.4f}), the worst '
         f'{worst} ({rows[worst]["val_mean"]:.4f}); the spread over P is '
         f'{rows[worst]["val_mean"] - rows[best]["val_mean"]:.4f} nats.']
  if dense['val']:
    dmean = float(np.mean(dense['val']))
    better = [P for P in Ps if rows[P]['vs_dense'] and rows[P]['vs_dense']['within_noise'] is False
              and rows[P]['vs_dense']['diff'] < 0]
    worse = [P for P in Ps if rows[P]['vs_dense'] and rows[P]['vs_dense']['within_noise'] is False
             and rows[P]['vs_dense']['diff'] > 0]
    untestable = all(rows[P]['vs_dense'] is None or rows[P]['vs_dense']['within_noise'] is None
                     for P in Ps)
    out.append(f'Dense reaches {dmean:.4f}. ' + (
        'With one seed no difference to dense can be tested.' if untestable else
        f'Coupled is significantly better than dense (Welch, alpha={common.ALPHA:g}) at P in '
        f'{{{", ".join(map(str, better))}}}' if better else
        'No P is significantly better than dense (Welch, '
        f'alpha={common.ALPHA:g})') + (f'; significantly worse at P in {{{", ".join(map(str, worse))}}}.'
                                       if worse else '.'))
  if optimum is not None:
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
  return ' '.join(out)


def _closed(best: float, dense: dict[str, Any], optimum: float) -> str:
  if not dense['val']:
    return 'n/a'
  gap = float(np.mean(dense['val'])) - optimum
  return f'{(float(np.mean(dense["val"])) - best) / gap:+.1%}' if gap > 0 else 'n/a'


def plot(s: dict[str, Any], out_dir: pathlib.Path, optimum: float | None) -> tuple[str, str]:
  rows, dense = s['P'], s['dense']
  Ps = sorted(rows)
  fig, axes = common.new_figure(1, 1, width=5.2, height=3.6)
  ax = axes[0][0]
  ax.errorbar(Ps, [rows[P]['val_mean'] for P in Ps],
              yerr=[0 if math.isnan(rows[P]['val_std']) else rows[P]['val_std'] for P in Ps],
              marker='o', capsize=3, color=common.COLORS['coupled'], label='coupled (seed mean ± std)')
  for P in Ps:
    ax.scatter([P] * len(rows[P]['val']), rows[P]['val'], s=8, color=common.COLORS['coupled'],
               alpha=0.4)
  if dense['val']:
    m, sd = common.mean_std(dense['val'])
    ax.axhline(m, color=common.COLORS['dense'], label='dense (mean)')
    if not math.isnan(sd):
      ax.axhspan(m - sd, m + sd, color=common.COLORS['dense'], alpha=0.2, label='dense ± std')
  if optimum is not None:
    ax.axhline(optimum, color='k', ls=':', lw=0.8, label='Bayes optimum')
  ax.set_xscale('log', base=2)
  ax.set_xticks(Ps, [str(P) for P in Ps])
  ax.set_xlabel('P (tokens per slow step; eps = 1/P)')
  ax.set_ylabel('final validation loss (nats / token)')
  ax.legend(fontsize=7)
  quality = common.save_figure(fig, out_dir / 'quality_vs_P.png')

  fig, axes = common.new_figure(1, 1, width=5.2, height=3.6)
  ax = axes[0][0]
  how = 'interleaved benchmark' if s['benchmark'] else 'median in runs'
  ax.plot(Ps, [rows[P]['step_s'] * 1e3 for P in Ps], marker='o', color=common.COLORS['coupled'],
          label=f'coupled ({how})')
  ax.plot(Ps, [rows[P]['run_step_s'] * 1e3 for P in Ps], marker='.', ls=':', lw=0.8,
          color=common.COLORS['coupled'], label='coupled (median in runs)')
  if dense['val']:
    ax.axhline(dense['step_s'] * 1e3, color=common.COLORS['dense'], label=f'dense ({how})')
    ax.axhline(dense['run_step_s'] * 1e3, color=common.COLORS['dense'], ls=':', lw=0.8,
               label='dense (median in runs)')
  ax.set_xscale('log', base=2)
  ax.set_xticks(Ps, [str(P) for P in Ps])
  ax.set_xlabel('P')
  ax.set_ylabel('train step time (ms)')
  twin = ax.twinx()
  twin.plot(Ps, [100 * rows[P]['slow_flop_share'] for P in Ps], ls='--', marker='s', ms=3,
            color='tab:red', label='slow FLOP share (analytic)')
  twin.set_ylabel('slow share of training FLOPs (%)', color='tab:red')
  lines = ax.get_legend_handles_labels()
  more = twin.get_legend_handles_labels()
  ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)
  timing = common.save_figure(fig, out_dir / 'step_time_vs_P.png')
  return quality, timing


def write(results, *, Ps, root: pathlib.Path, out_dir: pathlib.Path, command: str,
          title: str, timing: dict[str, float] | None = None,
          timing_note: str = '') -> pathlib.Path:
  out_dir.mkdir(parents=True, exist_ok=True)
  s = summarise(results, Ps, timing)
  optimum = common.bayes_optimum(results[0])
  first = common.ml_collections.ConfigDict(results[0]['config'])
  m = first.model
  total = sum(r['wall_s'] for r in results)
  lines = [common.report_header(title, command, total)]
  lines.append(
      f'**Setup.** Coupled arm at P in {{{", ".join(map(str, Ps))}}}'
      + (' plus a dense reference' if s['dense']['val'] else '')
      + f'; seeds {", ".join(map(str, sorted({r["seed"] for r in results})))}; data '
      f'{results[0]["group"]}. d_model={m.d_model}, {m.num_layers} layers, T={m.seq_len}, batch '
      f'{first.batch_size}, {first.total_steps} steps = {results[0]["tokens"]:,} tokens per run. '
      'Quality is the final validation loss (first '
      f'{first.eval_batches} validation batches); "vs dense" is Welch\'s two-sided t-test over '
      f'seeds (significant when p < {common.ALPHA:g}). Step time is the median time of one jitted '
      'train step of each config (seed 0) on random tokens, all configs timed round-robin in '
      'rotating order (`common.time_steps`) so that a shared machine\'s load hits them alike; '
      '"in runs" is the median logged step of the runs themselves. The slow FLOP '
      'share is `models.flops_per_token` (training FLOPs of the slow paths / all). "took" above '
      'is the sum of the runs\' wall times.\n')
  lines.append('## Conclusion\n')
  lines.append(conclusion(s, optimum) + '\n')
  lines.append('## Results\n')
  header = ['P', 'eps = 1/P', 'slow blocks / window', 'final val loss', 'coupled − dense',
            'Welch p', 'final gate per layer', 'slow share (max layer)', 'step time', 'vs dense',
            'step time (in runs)', 'slow FLOP share']
  rows = []
  for P in Ps:
    r = s['P'][P]
    t = r['vs_dense']
    rows.append([P, f'{1 / P:.4f}', r['blocks'], common.fmt_pm(r['val']),
                 common.fmt(t['diff'], sign=True) if t else '—', common.fmt(t['p'], 3) if t else '—',
                 ', '.join(f'{v:+.3f}' for v in r['gate'].values()), common.fmt(r['share'], 3),
                 f'{r["step_s"] * 1e3:.1f} ms', common.fmt(r['rel_step'], 3) + 'x',
                 f'{r["run_step_s"] * 1e3:.0f} ms', f'{r["slow_flop_share"]:.1%}'])
  if s['dense']['val']:
    rows.append(['dense', '—', '—', common.fmt_pm(s['dense']['val']), '—', '—', '—', '—',
                 f'{s["dense"]["step_s"] * 1e3:.1f} ms', '1.000x',
                 f'{s["dense"]["run_step_s"] * 1e3:.0f} ms',
                 '0.0%'])
  lines.append(common.markdown_table(header, rows))
  if optimum is not None:
    lines.append(f'Bayes-optimal loss on the same validation windows: {optimum:.4f} nats/token.\n')
  if timing_note:
    lines.append(f'Step-time benchmark: {timing_note}.\n')
  quality, timing = plot(s, out_dir, optimum)
  lines.append('## Plots\n')
  lines.append(f'![quality vs P]({quality})\n')
  lines.append(f'![step time vs P]({timing})\n')
  lines.append(common.runs_section(results, root))
  return common.write_report(out_dir, '\n'.join(lines),
                             {'summary': s, 'optimum': optimum, 'runs': common.without_configs(results)})


def run(*, name: str = 'p_sweep', data_spec: str = 'synthetic', Ps: Sequence[int] = DEFAULT_PS,
        seeds: Sequence[int] = (0, 1), tokens: int = 500_000, size: str = 'cpu',
        dense: bool = True, checkpoints: int = 1, timing_rounds: int = 20,
        timing_steps: int = 3, overrides: dict[str, Any] | None = None,
        workdir_root: str | None = None, out_dir: str | None = None, command: str = '',
        devices=None, log=print) -> pathlib.Path:
  """Runs (or reuses) the sweep and writes the report; returns the report's path."""
  overrides = dict(DEFAULT_SET if overrides is None else overrides)
  data_spec = data_spec if data_spec == 'synthetic' else os.path.abspath(data_spec)
  root, out = common.runs_root(name, workdir_root), common.report_dir(name, out_dir)
  Ps = sorted(Ps)
  runs = build_runs(data_spec=data_spec, Ps=Ps, seeds=seeds, tokens=tokens, size=size,
                    dense=dense, checkpoints=checkpoints, overrides=overrides)
  results = common.run_grid(runs, root, devices=devices, log=log)
  timing, note = None, ''
  if timing_rounds:
    log(f'Timing the configs ({timing_rounds} interleaved rounds) ...')
    timing, note = common.cached_step_times(
        root / 'timing.json', {r.label: r.config for r in runs if r.seed == seeds[0]},
        rounds=timing_rounds, steps_per_round=timing_steps, devices=devices)
  if not common.is_main_process():
    return out / 'report.md'
  title = f'Quality and step time vs P ({name}, {common.tokens_label(tokens)} tokens per run)'
  path = write(results, Ps=Ps, root=root, out_dir=out, command=command, title=title,
               timing=timing, timing_note=note)
  log(f'Wrote {path}')
  return path


def main():
  from absl import flags
  f = flags.FLAGS
  tokens = common.parse_tokens(f.tokens)
  common.enable_compilation_cache(common.runs_root(f.name, f.workdir_root) / 'jax_cache')
  run(name=f.name, data_spec=f.data, Ps=[int(p) for p in f.Ps], seeds=[int(s) for s in f.seeds],
      tokens=tokens, size=f.size, dense=f.dense, checkpoints=f.checkpoints,
      timing_rounds=f.timing_rounds,
      overrides=common.parse_overrides(f.set), workdir_root=f.workdir_root, out_dir=f.out_dir,
      command=common.command_line('experiments.p_sweep'))


def define_flags():
  from absl import flags
  flags.DEFINE_string('data', 'synthetic', "'synthetic' or text file(s).")
  flags.DEFINE_list('Ps', [str(p) for p in DEFAULT_PS], 'Pooling periods (must divide T).')
  flags.DEFINE_list('seeds', ['0', '1'], 'Seeds per P.')
  flags.DEFINE_bool('dense', True, 'Also train the dense reference (same seeds).')
  flags.DEFINE_integer('checkpoints', 1, 'Checkpoints per run (slow share measured at each).',
                       lower_bound=1)
  common.define_grid_flags('p_sweep', set_default=[f'{k}={v}' for k, v in DEFAULT_SET.items()])
  flags.adopt_module_key_flags(common)  # Listed in --help beside this module's own.


if __name__ == '__main__':
  from fastslow_jax import cli
  cli.run(main, define_flags)
