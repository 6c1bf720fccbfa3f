r"""The paper's ablation table at a token budget: dense, coupled, gate_frozen, slow_frozen.

    python -m experiments.paper_500k                  # 500k tokens, 3 seeds, synthetic + text
    python -m experiments.paper_500k --tokens=10M --data=synthetic --arms=dense,coupled \
        --checkpoints=10 --evals=10 --name=paper_10m  # the longer budget (6 runs)
    python -m experiments.paper_500k --size=124m --data=synthetic,/data/owt.txt   # on a pod
    python -m experiments.paper_500k --report_only    # re-render from results.json

The paper's claim: at 500k training tokens the coupling is neutral (the gate stays closed,
coupled equals the frozen arms, at a wall-clock cost comparable to dense). Every (data source,
seed, arm) run trains through `fastslow_jax.train` with the same config apart from the arm; the
report (experiments/reports/<name>/report.md) gives the final validation loss per arm, paired
comparisons over the shared seeds (`experiments/stats.py`), gate and slow-share trajectories per
layer (PNG), step time per arm relative to dense and a verdict computed from these numbers.
"""

from __future__ import annotations

import collections
import math
import os
import pathlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from experiments import grid, probes, repo, report, stats, timing
from fastslow_jax import data, models

PAIRS = (('coupled', 'gate_frozen'), ('coupled', 'slow_frozen'), ('coupled', 'dense'),
         ('gate_frozen', 'dense'))
WALL_TOLERANCE = 0.10  # "Comparable to dense": step time within 10% of dense.
GATED = ('coupled', 'slow_frozen')  # The arms with a learned gate.


def build_runs(*, data_specs: Sequence[str], arms: Sequence[str], seeds: Sequence[int],
               tokens: int, size: str, P: int, checkpoints: int, evals: int = 5,
               overrides: dict[str, Any] | None = None) -> list[grid.Run]:
  """Data-major, then seed, then arm: the arms of one seed run back to back, so slow drifts in
  the machine's load spread over the arms instead of biasing one."""
  runs = []
  for spec in data_specs:
    for seed in seeds:
      for arm in arms:
        spec = spec if spec == 'synthetic' else os.path.abspath(spec)
        config = grid.make_config(arm, size=size, P=P, seed=seed, data_spec=spec,
                                  tokens=tokens, checkpoints=checkpoints, evals=evals,
                                  overrides=overrides)
        group = grid.data_label(spec)
        runs.append(grid.Run(f'{group}/{arm}-s{seed}', group, arm, seed, config))
  return runs


def first_open_step(results: list[dict[str, Any]]) -> int | None:
  """The first checkpoint step where the seed-mean largest slow share reaches OPEN_SHARE."""
  steps = sorted({int(s) for r in results for s in r.get('share', {})})
  for step in steps:
    values = [probes.max_share(r, str(step)) for r in results if str(step) in r.get('share', {})]
    if values and np.mean(values) >= probes.OPEN_SHARE:
      return step
  return None


# --------------------------------------------------------------------------- plots


def _gate_curves(ax, runs, root: pathlib.Path, layer: str, arm: str) -> None:
  """Thin lines: g of each seed (its sign is arbitrary); thick: the seed mean of |g|."""
  curves = []
  for r in runs:
    recs = [m for m in grid.read_metrics(root / r['name']) if 'gate' in m]
    x = np.array([m['step'] for m in recs]) * r['tokens'] / r['steps']
    y = np.array([m['gate'].get(layer, np.nan) for m in recs])
    ax.plot(x, y, color=report.COLORS[arm], lw=0.6, alpha=0.4)
    curves.append(y)
  if curves:
    n = min(len(c) for c in curves)
    ax.plot(x[:n], np.mean([np.abs(c[:n]) for c in curves], 0), color=report.COLORS[arm],
            lw=2, label=f'{arm}: mean |g| (thin: g per seed)')


def plot_gates(results, root: pathlib.Path, out_dir: pathlib.Path, groups) -> str:
  """Gate per layer vs training tokens, arms with a learned gate (from metrics.jsonl)."""
  gated = [r for r in results if r['arm'] in GATED]
  layers = sorted({k for r in gated for k in r['gate']}, key=lambda k: int(k.split('_')[1]))
  fig, axes = report.new_figure(max(1, len(layers)), len(groups), width=4.2, height=3.0)
  for gi, group in enumerate(groups):
    for li, layer in enumerate(layers):
      ax = axes[gi][li]
      for arm in GATED:
        _gate_curves(ax, [r for r in gated if r['group'] == group and r['arm'] == arm], root,
                     layer, arm)
      ax.axhline(0, color='k', lw=0.5)
      ax.set_title(f'{group}: gate, {layer}', fontsize=9)
      report.token_axis(ax)
      if li == 0:
        ax.set_ylabel('g')
      ax.legend(fontsize=7)
  return report.save_figure(fig, out_dir / 'gates.png')


def plot_shares(results, out_dir: pathlib.Path, groups) -> str:
  """Slow share (RMS gated slow update / RMS fast update) per layer at each checkpoint."""
  fig, axes = report.new_figure(len(groups), 1, width=4.8, height=3.4)
  for gi, group in enumerate(groups):
    ax = axes[0][gi]
    for arm in GATED:
      runs = [r for r in results if r['group'] == group and r['arm'] == arm and r['share']]
      if not runs:
        continue
      per_step = runs[0]['tokens'] / runs[0]['steps']
      steps = sorted({int(s) for r in runs for s in r['share']})
      for li, layer in enumerate(sorted(runs[0]['share'][str(steps[0])])):
        y = [np.mean([r['share'][str(s)][layer] for r in runs if str(s) in r['share']])
             for s in steps]
        ax.plot(np.array([0] + steps) * per_step, [0.0] + y, marker='o', ms=3,
                color=report.COLORS[arm], ls=['-', '--', ':', '-.'][li % 4],
                label=f'{arm} {layer}')
    ax.axhline(probes.OPEN_SHARE, color='r', lw=0.8, ls=':', label=f'open ({probes.OPEN_SHARE:g})')
    ax.set_title(f'{group}: gated slow share (seed mean)', fontsize=9)
    report.token_axis(ax)
    ax.set_ylabel('RMS(g·slow) / RMS(fast attn)')
    ax.legend(fontsize=6)
  return report.save_figure(fig, out_dir / 'slow_share.png')


def plot_val(results, root: pathlib.Path, out_dir: pathlib.Path, groups, optima) -> str:
  """Validation loss vs training tokens per arm (seed mean; bars: seed std; metrics.jsonl)."""
  fig, axes = report.new_figure(len(groups), 1, width=4.8, height=3.4)
  for gi, group in enumerate(groups):
    ax = axes[0][gi]
    for arm in models.ARMS:
      curves = collections.defaultdict(list)
      for r in (r for r in results if r['group'] == group and r['arm'] == arm):
        for m in grid.read_metrics(root / r['name']):
          if 'val_loss' in m:
            curves[m['step'] * r['tokens'] / r['steps']].append(m['val_loss'])
      if not curves:
        continue
      x = sorted(curves)
      ax.errorbar(x, [np.mean(curves[k]) for k in x],
                  yerr=[np.std(curves[k], ddof=1) if len(curves[k]) > 1 else 0 for k in x],
                  color=report.COLORS[arm], marker='o', ms=3, capsize=2, label=arm,
                  ls='--' if arm == 'gate_frozen' else '-')
    if optima.get(group) is not None:
      ax.axhline(optima[group], color='k', lw=0.8, ls=':', label='Bayes optimum')
    ax.set_title(f'{group}: validation loss', fontsize=9)
    report.token_axis(ax)
    ax.set_ylabel('nats / token')
    ax.legend(fontsize=7)
  return report.save_figure(fig, out_dir / 'val_loss.png')


# --------------------------------------------------------------------------- summary


def _arm_summary(rs: list[dict[str, Any]], bench: dict[str, float], dense_step: float | None,
                 arm: str) -> dict[str, Any]:
  """One arm's figures in one data source."""
  mean, std = report.mean_std([r['val_loss'] for r in rs])
  gates = collections.defaultdict(list)
  for r in rs:
    for k, v in r['gate'].items():
      gates[k].append(v)
  step_s = float(np.mean([r['step_s'] for r in rs]))
  rel_run = step_s / dense_step if dense_step else math.nan
  return {
      'n': len(rs), 'val_mean': mean, 'val_std': std,
      'gate': {k: float(np.mean(v)) for k, v in sorted(gates.items())},
      'share': float(np.mean([probes.max_share(r) for r in rs])) if rs[0]['share'] else math.nan,
      'abs_gate': {k: float(np.mean(np.abs(v))) for k, v in sorted(gates.items())},
      'phi_gain': _phi_gain(rs), 'step_s': step_s,
      'wall_s': float(np.mean([r['wall_s'] for r in rs])), 'rel_run_step': rel_run,
      'bench_s': bench.get(arm, math.nan),
      'rel_step': bench[arm] / bench['dense'] if arm in bench and bench.get('dense') else rel_run,
      'open_step': first_open_step(rs) if rs[0]['share'] else None,
  }


def summarise(results: list[dict[str, Any]], groups: Sequence[str],
              timing: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
  """Per data source: per-arm figures. Step time relative to dense comes from the interleaved
  benchmark `timing` where given, else from the runs' own logged step times."""
  summary = {}
  for group in groups:
    by_arm = collections.defaultdict(list)
    for r in results:
      if r['group'] == group:
        by_arm[r['arm']].append(r)
    dense_step = np.mean([r['step_s'] for r in by_arm['dense']]) if 'dense' in by_arm else None
    bench = (timing or {}).get(group) or {}
    first = by_arm[next(iter(by_arm))][0]
    summary[group] = {'arms': {arm: _arm_summary(rs, bench, dense_step, arm)
                               for arm, rs in by_arm.items()},
                      'tokens': first['tokens'], 'steps': first['steps']}
  return summary


def _phi_gain(rs: list[dict[str, Any]]) -> dict[str, float]:
  """Per layer, seed mean of final share / |g| = RMS(broadcast phi output) / RMS(fast update):
  how large phi_theta's output is next to the fast attention update, gate aside."""
  out = {}
  for layer in (rs[0]['gate'] if rs[0]['share'] else {}):
    vals = [r['share'][max(r['share'], key=int)][layer] / abs(r['gate'][layer]) for r in rs
            if abs(r['gate'][layer]) > 1e-8]
    if vals:
      out[layer] = float(np.mean(vals))
  return out


def comparisons(runs: list[dict[str, Any]], groups: Sequence[str]
                ) -> dict[str, dict[str, stats.Comparison]]:
  """Every pair of PAIRS that ran, per data source, as one family: {group: {'a − b': ...}}."""
  arms = {g: {r['arm'] for r in runs if r['group'] == g} for g in groups}
  return report.grouped_comparisons(runs, 'arm', {
      g: [(a, b) for a, b in PAIRS if {a, b} <= arms[g]] for g in groups})


# --------------------------------------------------------------------------- verdict


def _gate_sentence(s: dict[str, Any]) -> tuple[bool, str]:
  """(closed, the sentence about the gate and phi_theta's size)."""
  c = s['arms']['coupled']
  closed = not c['share'] >= probes.OPEN_SHARE
  when = ''
  if not closed and c['open_step'] is not None:
    when = (f'; the seed-mean share first reaches {probes.OPEN_SHARE:g} by checkpoint step '
            f'{c["open_step"]} ({c["open_step"] * s["tokens"] // s["steps"]:,} tokens)')
  gain = ', '.join(f'{v:.1f}x' for v in c['phi_gain'].values())
  big = max(c['phi_gain'].values(), default=0) > 1
  return closed, (
      f'The gate {"stays closed" if closed else "opens"}: final gates per layer '
      f'{report.gates_text(c["gate"])} (seed mean of |g|: '
      f'{", ".join(f"{v:.3f}" for v in c["abs_gate"].values())}), the gated slow path carries '
      f'{c["share"]:.3f} of the fast attention update in its largest layer (threshold '
      f'{probes.OPEN_SHARE:g}){when}. Gate aside, phi_theta\'s output is {gain} the RMS of the '
      'fast update per layer' + (': phi_theta grew, so a small g alone does not mean a closed '
                                 'slow path.' if big else '.'))


def _neutral(comps: dict[str, stats.Comparison]) -> tuple[str, bool | None, list[str]]:
  """(what coupled is compared with, whether it equals it: True equal, False different, None
  undetermined, the sentences). The frozen arms where they ran, else dense."""
  names = [n for n in ('coupled − gate_frozen', 'coupled − slow_frozen') if n in comps]
  against = 'frozen'
  if not names and 'coupled − dense' in comps:
    names, against = ['coupled − dense'], 'dense'
  words = [comps[n].verdict for n in names]
  ok = (False if stats.DIFFERENT in words else True if words and all(
      w == stats.EQUAL for w in words) else None)
  return against, ok, [comps[n].sentence(n.capitalize()) for n in names]


def verdict(group: str, s: dict[str, Any], comps: dict[str, stats.Comparison],
            headroom: dict | None = None) -> str:
  """One paragraph, every statement computed from the numbers and the verdicts of stats (and,
  on a synthetic source, where the losses stand against its headroom)."""
  arms, parts, checks = s['arms'], [], {}
  if 'coupled' in arms:
    checks['gate closed'], sentence = _gate_sentence(s)
    parts.append(sentence)
  against, neutral, sentences = _neutral(comps)
  if sentences:
    checks[f'coupled = {against}'] = neutral
    parts += sentences
  if 'coupled' in arms and 'dense' in arms:
    ratio = arms['coupled']['rel_step']
    checks['wall-clock comparable'] = ok = abs(ratio - 1) <= WALL_TOLERANCE
    parts.append(f'A coupled step takes {ratio:.2f}x a dense step '
                 f'({"comparable" if ok else "not comparable"}, tolerance ±{WALL_TOLERANCE:.0%}).')
  parts.append(report.headroom_reached(headroom, {a: v['val_mean'] for a, v in arms.items()}))
  return _verdict_head(group, s['tokens'], checks) + ' ' + ' '.join(filter(None, parts))


def _verdict_head(group: str, tokens: int, checks: dict[str, bool | None]) -> str:
  """The claim holds when its three parts do, fails when one fails, else is undetermined."""
  failed = [name for name, ok in checks.items() if ok is False]
  untested = [name for name, ok in checks.items() if ok is None]
  if not checks:
    return f'**{group}: not enough arms or seeds to test the claim.**'
  if failed:
    return (f'**{group}: the paper\'s claim does not hold at {tokens:,} tokens** (fails: '
            f'{", ".join(failed)}' + (f'; undetermined: {", ".join(untested)}' if untested
                                      else '') + ').')
  if untested or len(checks) < 3:
    untested += ['the parts these arms cannot test'] if len(checks) < 3 else []
    return (f'**{group}: the paper\'s claim is undetermined at this power at {tokens:,} '
            f'tokens** (undetermined: {", ".join(untested)}).')
  return f'**{group}: the paper\'s claim holds at {tokens:,} tokens.**'


# --------------------------------------------------------------------------- report

SETUP = (
    '**Setup.** Arms {arms}; seeds {seeds}; data {groups}. Model d_model={m.d_model}, '
    '{m.num_layers} layers, {m.num_heads} heads (slow {m.slow_num_heads}), MLP {m.mlp_dim}, phi '
    '{m.phi_dim}, T={m.seq_len}, P={m.P}, gate {m.gate}, {m.dtype}; parameters {params}. Batch '
    '{c.batch_size} x {m.seq_len} tokens, {c.total_steps} steps = {tokens:,} training tokens per '
    'run; AdamW lr {c.optim.lr:g}, warmup {c.optim.warmup_steps}, cosine to '
    '{c.optim.min_lr_ratio:g}x. Validation, on the validation split in a fixed order: '
    '{validation}; at the end of training and every {c.eval_every} steps. "took" above is the sum '
    'of the runs\' wall times.\n')
SAME_FUNCTION = (
    'Runs share their seed across arms, so `gate_frozen` and `dense` compute the same function '
    'and should agree to rounding.\n')
GATE_OPEN = (
    '**Gate "open".** The slow share of a layer is RMS(g · broadcast(phi(SlowAttn(Pool(x))))) / '
    'RMS(FastAttn(x)) over 64 validation windows, measured at each checkpoint; the gate is called '
    'open when the seed mean of the largest layer\'s share reaches {open:g}.\n')
WALL = (
    '**Wall-clock.** "Step time (benchmark)" is the median time of one jitted train step of each '
    'arm\'s config (seed 0) on random tokens, the arms timed round-robin in rotating order '
    '(`timing.time_steps`) so that the load of a shared machine hits all arms alike; the verdict '
    'uses its ratio to dense. "Step time (in runs)" is the median logged step of the runs '
    'themselves (compilation and evaluation excluded): it also measures whatever else the machine '
    'was doing at the time. "Wall per run" is the whole train.train call, compilation, evaluation '
    'and checkpoints included.\n')
ARM_HEADER = ['arm', 'seeds', 'final val loss (mean ± std)', None, 'final gate per layer',
              'slow share (max layer)', 'step time (benchmark)', 'vs dense',
              'step time (in runs)', 'vs dense', 'wall per run']


def setup_text(numbers: dict[str, Any]) -> str:
  """The setup paragraph, from the first run's config and the figures results.json keeps."""
  config = ml_collections.ConfigDict(numbers['config'])
  runs, groups = numbers['runs'], list(numbers['summary'])
  params = '; '.join(f'{p["dense"]:,} dense / {p["coupled"]:,} coupled on {g} (vocabulary '
                     f'{p["vocab_size"]})' for g, p in numbers['params'].items())
  validation = '; '.join(_windows_text(*numbers['validation'][g], config.batch_size, g)
                         for g in groups)
  return SETUP.format(
      arms=', '.join(dict.fromkeys(r['arm'] for r in runs)), groups=', '.join(groups),
      seeds=', '.join(map(str, sorted({r['seed'] for r in runs}))), m=config.model, c=config,
      params=params, tokens=runs[0]['tokens'], validation=validation)


def _windows_text(scored: int, split: int, batch: int, group: str) -> str:
  which = f'all {split}' if scored == split else f'the first {scored} of {split}'
  return f'{which} windows ({scored // batch} batches) for {group}'


def group_section(group: str, numbers: dict[str, Any], comps: dict[str, stats.Comparison]) -> str:
  """A data source's table of arms, its benchmark note and its comparisons."""
  s, opt = numbers['summary'][group], numbers['optima'].get(group)
  header = list(ARM_HEADER)
  header[3] = 'gap to Bayes optimum' if opt is not None else 'bits per byte'
  rows = []
  for arm in (a for a in models.ARMS if a in s['arms']):
    a = s['arms'][arm]
    vals = [r['val_loss'] for r in numbers['runs'] if r['group'] == group and r['arm'] == arm]
    quality = a['val_mean'] - opt if opt is not None else a['val_mean'] / math.log(2)
    rows.append([arm, a['n'], report.fmt_pm(vals), report.fmt(quality),
                 report.gates_text(a['gate']),
                 report.fmt(a['share'], 3) if not math.isnan(a['share']) else '—',
                 f'{a["bench_s"] * 1e3:.1f} ms' if not math.isnan(a['bench_s']) else '—',
                 f'{a["rel_step"]:.3f}x', f'{a["step_s"] * 1e3:.0f} ms',
                 f'{a["rel_run_step"]:.2f}x', report.fmt_seconds(a['wall_s'])])
  lines = [f'## {group}\n', report.markdown_table(header, rows)]
  if opt is not None:
    lines.append(f'Bayes-optimal loss on the same validation windows: {opt:.4f} nats/token.\n')
  lines.append(report.headroom_text(numbers.get('headroom', {}).get(group)))
  if numbers['timing_notes'].get(group):
    lines.append(f'Step-time benchmark: {numbers["timing_notes"][group]}.\n')
  lines.append(report.comparisons_table(comps))
  return '\n'.join(lines)


def render(numbers: dict[str, Any], out_dir: pathlib.Path, rerendered: bool = False
           ) -> pathlib.Path:
  """report.md and results.json from the numbers alone (results.json's content): statistics and
  the slow-share plot recomputed, the plots drawn from metrics.jsonl linked where present."""
  runs, groups = numbers['runs'], list(numbers['summary'])
  comps = comparisons(runs, groups)
  numbers['comparisons'] = {g: {n: stats.to_json(c) for n, c in cs.items()}
                            for g, cs in comps.items()}
  arms = {r['arm'] for r in runs}
  lines = [report.header(numbers['title'], numbers['provenance'], rerendered), setup_text(numbers),
           stats.method(sum(map(len, comps.values())))
           + (SAME_FUNCTION if {'gate_frozen', 'dense'} <= arms else ''),
           GATE_OPEN.format(open=probes.OPEN_SHARE), WALL, '## Verdict\n']
  lines += [verdict(g, numbers['summary'][g], comps[g], numbers.get('headroom', {}).get(g))
            + '\n' for g in groups]
  lines += [group_section(g, numbers, comps[g]) for g in groups]
  plots = [('validation loss', report.kept_figure(out_dir, 'val_loss.png'))]
  if arms & set(GATED):
    plots += [('gate per layer', report.kept_figure(out_dir, 'gates.png')),
              ('slow share', plot_shares(runs, out_dir, groups))]
  lines.append('## Plots\n')
  lines += [f'![{alt}]({name})\n' for alt, name in plots if name]
  lines.append(report.runs_section(runs, numbers['root']))
  return report.write_report(out_dir, '\n'.join(lines), numbers)


def _params(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameters of dense and coupled at this config's model and data."""
  model = {**config.model.to_dict(), 'vocab_size': data.source(config.data).vocab_size}
  out = {'vocab_size': model['vocab_size']}
  for arm in ('dense', 'coupled'):
    cfg = models.ModelConfig.from_mapping({**model, 'arm': arm})
    out[arm] = models.param_count(models.build(cfg, rngs=0))
  return out


def write(results, *, root: pathlib.Path, out_dir: pathlib.Path, command: str, title: str,
          timing: dict[str, dict[str, float]] | None = None,
          timing_notes: dict[str, str] | None = None) -> pathlib.Path:
  """The plots drawn from the runs' metrics.jsonl, then the report from the numbers."""
  out_dir.mkdir(parents=True, exist_ok=True)
  groups = list(dict.fromkeys(r['group'] for r in results))
  configs = {g: ml_collections.ConfigDict(next(r for r in results if r['group'] == g)['config'])
             for g in groups}
  optima = {g: grid.bayes_optimum(c) for g, c in configs.items()}
  plot_val(results, root, out_dir, groups, optima)
  if any(r['arm'] in GATED for r in results):
    plot_gates(results, root, out_dir, groups)
  numbers = {
      'title': title, 'provenance': report.provenance(command, results,
                                                      sum(r['wall_s'] for r in results)),
      'config': results[0]['config'], 'params': {g: _params(c) for g, c in configs.items()},
      'validation': {g: grid.validation_windows(c) for g, c in configs.items()},
      'root': repo.display_path(root), 'summary': summarise(results, groups, timing),
      'optima': optima, 'headroom': {g: grid.headroom(c) for g, c in configs.items()},
      'timing_notes': timing_notes or {}, 'runs': grid.without_configs(results)}
  return render(numbers, out_dir)


def run(*, name: str = 'paper_500k', data_specs: Sequence[str] = repo.DEFAULT_SOURCES,
        arms: Sequence[str] = models.ARMS, seeds: Sequence[int] = (0, 1, 2),
        tokens: int = 500_000, size: str = 'cpu', P: int = 16, checkpoints: int = 5,
        evals: int = 5, timing_rounds: int = 20, timing_steps: int = 3,
        overrides: dict[str, Any] | None = None, workdir_root: str | None = None,
        out_dir: str | None = None, command: str = '', devices=None, log=print) -> pathlib.Path:
  """Runs (or reuses) the grid and writes the report; returns the report's path."""
  root, out = repo.runs_root(name, workdir_root), repo.report_dir(name, out_dir)
  runs = build_runs(data_specs=data_specs, arms=arms, seeds=seeds, tokens=tokens, size=size, P=P,
                    checkpoints=checkpoints, evals=evals, overrides=overrides)
  results = grid.run_grid(runs, root, devices=devices, log=log)
  times, notes = {}, {}
  if timing_rounds:
    times, notes = timing.time_grid(runs, root, key=lambda r: r.arm, rounds=timing_rounds,
                                    steps_per_round=timing_steps, devices=devices, log=log)
  if not grid.is_main_process():
    return out / 'report.md'
  title = f'Ablation grid at {grid.tokens_label(tokens)} training tokens ({name})'
  path = write(results, root=root, out_dir=out, command=command, title=title, timing=times,
               timing_notes=notes)
  log(f'Wrote {path}')
  return path


def main():
  from absl import flags
  f = flags.FLAGS
  tokens = grid.parse_tokens(f.tokens)
  name = f.name or f'paper_{grid.tokens_label(tokens)}'
  if not report.start(name, f, render):
    return
  run(name=name, data_specs=f.data, arms=f.arms, seeds=[int(s) for s in f.seeds], tokens=tokens,
      size=f.size, P=f.P, checkpoints=f.checkpoints, evals=f.evals,
      timing_rounds=f.timing_rounds, overrides=grid.parse_overrides(f.set),
      workdir_root=f.workdir_root, out_dir=f.out_dir,
      command=report.command_line('experiments.paper_500k'))


def define_flags():
  from absl import flags
  grid.define_sources_flags('arm')
  flags.DEFINE_list('arms', list(models.ARMS), 'Arms of the grid.')
  flags.DEFINE_integer('P', 16, 'Pooling period of the slow path.', lower_bound=1)
  flags.DEFINE_integer('checkpoints', 5, 'Checkpoints per run (slow-share trajectory points).',
                       lower_bound=1)
  grid.define_grid_flags(None)
  flags.adopt_module_key_flags(grid)  # Listed in --help beside this module's own.


if __name__ == '__main__':
  from fastslow_jax import cli
  cli.run(main, define_flags)
