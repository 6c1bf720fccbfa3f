r"""The paper's ablation table at a token budget: dense, coupled, gate_frozen, slow_frozen.

    python -m experiments.paper_500k                  # 500k tokens, 3 seeds, synthetic + text
    python -m experiments.paper_500k --tokens=10M --checkpoints=10 --name=paper_10m  # longer
    python -m experiments.paper_500k --size=124m --data=synthetic,/data/owt.txt   # on a pod

The paper's claim: at 500k training tokens the coupling is neutral (the gate stays closed,
coupled and frozen are within run-to-run noise, at a wall-clock cost comparable to dense). Every
(data source, seed, arm) run trains through `fastslow_jax.train` with the same config apart from
the arm; the report (experiments/reports/<name>/report.md) gives the final validation loss per
arm, the stated test of coupled − frozen against seed noise (Welch's t-test), gate and slow-share
trajectories per layer (PNG), step time per arm relative to dense and a verdict computed from
these numbers.
"""

from __future__ import annotations

import collections
import math
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from experiments import common
from fastslow_jax import data, models

PAIRS = (('coupled', 'gate_frozen'), ('coupled', 'slow_frozen'), ('coupled', 'dense'),
         ('gate_frozen', 'dense'))
WALL_TOLERANCE = 0.10  # "Comparable to dense": step time within 10% of dense.


def build_runs(*, data_specs: Sequence[str], arms: Sequence[str], seeds: Sequence[int],
               tokens: int, size: str, P: int, checkpoints: int, evals: int = 5,
               overrides: dict[str, Any] | None = None) -> list[common.Run]:
  """Data-major, then seed, then arm: the arms of one seed run back to back, so slow drifts in
  the machine's load spread over the arms instead of biasing one."""
  runs = []
  for spec in data_specs:
    for seed in seeds:
      for arm in arms:
        spec = spec if spec == 'synthetic' else os.path.abspath(spec)
        config = common.make_config(arm, size=size, P=P, seed=seed, data_spec=spec,
                                    tokens=tokens, checkpoints=checkpoints, evals=evals,
                                    overrides=overrides)
        group = common.data_label(spec)
        runs.append(common.Run(f'{group}/{arm}-s{seed}', group, arm, seed, config))
  return runs


def first_open_step(results: list[dict[str, Any]]) -> int | None:
  """The first checkpoint step where the seed-mean largest slow share reaches OPEN_SHARE."""
  steps = sorted({int(s) for r in results for s in r.get('share', {})})
  for step in steps:
    values = [common.max_share(r, str(step)) for r in results if str(step) in r.get('share', {})]
    if values and np.mean(values) >= common.OPEN_SHARE:
      return step
  return None


# --------------------------------------------------------------------------- plots


def plot_gates(results, root: pathlib.Path, out_dir: pathlib.Path, groups) -> str:
  """Gate per layer vs training tokens, arms with a learned gate: thin lines g of each seed (its
  sign is arbitrary), thick lines the seed mean of |g|."""
  gated = [r for r in results if r['arm'] in ('coupled', 'slow_frozen')]
  layers = sorted({k for r in gated for k in r['gate']}, key=lambda k: int(k.split('_')[1]))
  fig, axes = common.new_figure(max(1, len(layers)), len(groups), width=4.2, height=3.0)
  for gi, group in enumerate(groups):
    for li, layer in enumerate(layers):
      ax = axes[gi][li]
      for arm in ('coupled', 'slow_frozen'):
        curves = []
        for r in (r for r in gated if r['group'] == group and r['arm'] == arm):
          recs = [m for m in common.read_metrics(root / r['name']) if 'gate' in m]
          per_step = r['tokens'] / r['steps']
          x = np.array([m['step'] for m in recs]) * per_step
          y = np.array([m['gate'].get(layer, np.nan) for m in recs])
          ax.plot(x, y, color=common.COLORS[arm], lw=0.6, alpha=0.4)
          curves.append(y)
        if curves:
          n = min(len(c) for c in curves)
          ax.plot(x[:n], np.mean([np.abs(c[:n]) for c in curves], 0), color=common.COLORS[arm],
                  lw=2, label=f'{arm}: mean |g| (thin: g per seed)')
      ax.axhline(0, color='k', lw=0.5)
      ax.set_title(f'{group}: gate, {layer}', fontsize=9)
      common.token_axis(ax)
      if li == 0:
        ax.set_ylabel('g')
      ax.legend(fontsize=7)
  return common.save_figure(fig, out_dir / 'gates.png')


def plot_shares(results, out_dir: pathlib.Path, groups) -> str:
  """Slow share (RMS gated slow update / RMS fast update) per layer at each checkpoint."""
  fig, axes = common.new_figure(len(groups), 1, width=4.8, height=3.4)
  for gi, group in enumerate(groups):
    ax = axes[0][gi]
    for arm in ('coupled', 'slow_frozen'):
      runs = [r for r in results if r['group'] == group and r['arm'] == arm and r['share']]
      if not runs:
        continue
      per_step = runs[0]['tokens'] / runs[0]['steps']
      steps = sorted({int(s) for r in runs for s in r['share']})
      for li, layer in enumerate(sorted(runs[0]['share'][str(steps[0])])):
        y = [np.mean([r['share'][str(s)][layer] for r in runs if str(s) in r['share']])
             for s in steps]
        ax.plot(np.array([0] + steps) * per_step, [0.0] + y, marker='o', ms=3,
                color=common.COLORS[arm], ls=['-', '--', ':', '-.'][li % 4],
                label=f'{arm} {layer}')
    ax.axhline(common.OPEN_SHARE, color='r', lw=0.8, ls=':', label=f'open ({common.OPEN_SHARE:g})')
    ax.set_title(f'{group}: gated slow share (seed mean)', fontsize=9)
    common.token_axis(ax)
    ax.set_ylabel('RMS(g·slow) / RMS(fast attn)')
    ax.legend(fontsize=6)
  return common.save_figure(fig, out_dir / 'slow_share.png')


def plot_val(results, root: pathlib.Path, out_dir: pathlib.Path, groups, optima) -> str:
  """Validation loss vs training tokens per arm (seed mean; bars: seed std)."""
  fig, axes = common.new_figure(len(groups), 1, width=4.8, height=3.4)
  for gi, group in enumerate(groups):
    ax = axes[0][gi]
    for arm in models.ARMS:
      runs = [r for r in results if r['group'] == group and r['arm'] == arm]
      if not runs:
        continue
      curves = {}
      for r in runs:
        for m in common.read_metrics(root / r['name']):
          if 'val_loss' in m:
            curves.setdefault(m['step'] * r['tokens'] / r['steps'], []).append(m['val_loss'])
      x = sorted(curves)
      ax.errorbar(x, [np.mean(curves[k]) for k in x],
                  yerr=[np.std(curves[k], ddof=1) if len(curves[k]) > 1 else 0 for k in x],
                  color=common.COLORS[arm], marker='o', ms=3, capsize=2, label=arm,
                  ls='--' if arm == 'gate_frozen' else '-')
    if optima.get(group) is not None:
      ax.axhline(optima[group], color='k', lw=0.8, ls=':', label='Bayes optimum')
    ax.set_title(f'{group}: validation loss', fontsize=9)
    common.token_axis(ax)
    ax.set_ylabel('nats / token')
    ax.legend(fontsize=7)
  return common.save_figure(fig, out_dir / 'val_loss.png')


# --------------------------------------------------------------------------- report


def summarise(results: list[dict[str, Any]], groups: Sequence[str],
              timing: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
  """Per data source: per-arm statistics, the stated tests and the verdict's ingredients.

  Step time relative to dense comes from the interleaved benchmark `timing` where given, else
  from the runs' own logged step times.
  """
  summary = {}
  for group in groups:
    bench = (timing or {}).get(group) or {}
    by_arm = collections.defaultdict(list)
    for r in results:
      if r['group'] == group:
        by_arm[r['arm']].append(r)
    val = {arm: [r['val_loss'] for r in rs] for arm, rs in by_arm.items()}
    step_s = {arm: np.mean([r['step_s'] for r in rs]) for arm, rs in by_arm.items()}
    dense_step = step_s.get('dense')
    dense_bench = bench.get('dense')
    arms = {}
    for arm, rs in by_arm.items():
      mean, std = common.mean_std(val[arm])
      gates = collections.defaultdict(list)
      for r in rs:
        for k, v in r['gate'].items():
          gates[k].append(v)
      arms[arm] = {
          'n': len(rs), 'val_mean': mean, 'val_std': std,
          'gate': {k: float(np.mean(v)) for k, v in sorted(gates.items())},
          'share': float(np.mean([common.max_share(r) for r in rs])) if rs[0]['share'] else math.nan,
          'abs_gate': {k: float(np.mean(np.abs(v))) for k, v in sorted(gates.items())},
          'phi_gain': _phi_gain(rs),
          'step_s': float(step_s[arm]), 'wall_s': float(np.mean([r['wall_s'] for r in rs])),
          'rel_run_step': float(step_s[arm] / dense_step) if dense_step else math.nan,
          'bench_s': bench.get(arm, math.nan),
          'rel_step': (bench[arm] / dense_bench if arm in bench and dense_bench else
                       float(step_s[arm] / dense_step) if dense_step else math.nan),
          'open_step': first_open_step(rs) if rs[0]['share'] else None,
      }
    tests = {f'{a} − {b}': common.compare(val[a], val[b]) for a, b in PAIRS
             if a in val and b in val}
    first = next(r for r in results if r['group'] == group)
    summary[group] = {'arms': arms, 'tests': tests, 'tokens': first['tokens'],
                      'steps': first['steps']}
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


def verdict(group: str, s: dict[str, Any]) -> str:
  """One paragraph, every statement computed from the numbers of `s`."""
  arms, tests = s['arms'], s['tests']
  parts = []
  closed = None
  if 'coupled' in arms:
    c = arms['coupled']
    gate = ', '.join(f'{v:+.3f}' for v in c['gate'].values())
    closed = not c['share'] >= common.OPEN_SHARE
    state = 'stays closed' if closed else 'opens'
    when = ''
    if not closed and c['open_step'] is not None:
      when = (f'; the seed-mean share first reaches {common.OPEN_SHARE:g} by checkpoint step '
              f'{c["open_step"]} ({c["open_step"] * s["tokens"] // s["steps"]:,} tokens)')
    gain = ', '.join(f'{v:.1f}x' for v in c['phi_gain'].values())
    big = max(c['phi_gain'].values(), default=0) > 1
    parts.append(f'The gate {state}: final gates per layer {gate} (seed mean of |g|: '
                 f'{", ".join(f"{v:.3f}" for v in c["abs_gate"].values())}), the gated slow path '
                 f'carries {c["share"]:.3f} of the fast attention update in its largest layer '
                 f'(threshold {common.OPEN_SHARE:g}){when}. Gate aside, phi_theta\'s output is '
                 f'{gain} the RMS of the fast update per layer'
                 + (': phi_theta grew, so a small g alone does not mean a closed slow path.'
                    if big else '.'))
  neutral = []
  for frozen in ('gate_frozen', 'slow_frozen'):
    t = tests.get(f'coupled − {frozen}')
    if t is None and frozen == 'gate_frozen' and 'coupled − dense' in tests:
      t, frozen = tests['coupled − dense'], 'dense (the same function as gate_frozen)'
    if t is None:
      continue
    if t['within_noise'] is None:
      parts.append(f'coupled − {frozen} = {t["diff"]:+.4f} nats cannot be tested with one seed.')
      continue
    neutral.append(t['within_noise'])
    ratio = abs(t['diff']) / t['noise'] if t['noise'] > 0 else math.inf
    parts.append(
        f'Coupled − {frozen} = {t["diff"]:+.4f} nats ({ratio:.1f}x the seed std '
        f'{t["noise"]:.4f}; Welch p = {t["p"]:.3f}): '
        + ('within run-to-run noise.' if t['within_noise'] else
           f'a significant {"gain" if t["diff"] < 0 else "loss"} for coupled at alpha={common.ALPHA:g}.'))
  wall = None
  if 'coupled' in arms and 'dense' in arms:
    ratio = arms['coupled']['rel_step']
    wall = abs(ratio - 1) <= WALL_TOLERANCE
    parts.append(f'A coupled step takes {ratio:.2f}x a dense step '
                 f'({"comparable" if wall else "not comparable"}, tolerance ±{WALL_TOLERANCE:.0%}).')
  checks = [x for x in (closed, all(neutral) if neutral else None, wall) if x is not None]
  if checks and len(checks) == 3 and all(checks):
    head = f'**{group}: the paper\'s claim holds at {s["tokens"]:,} tokens.**'
  elif checks:
    failed = [name for name, ok in (('gate closed', closed), ('coupled ≈ frozen',
              all(neutral) if neutral else None), ('wall-clock comparable', wall)) if ok is False]
    head = (f'**{group}: the paper\'s claim does not fully hold at {s["tokens"]:,} tokens** '
            f'(fails: {", ".join(failed) or "untestable parts"}).')
  else:
    head = f'**{group}: not enough arms or seeds to test the claim.**'
  return head + ' ' + ' '.join(parts)


def write(results, *, root: pathlib.Path, out_dir: pathlib.Path, command: str, title: str,
          elapsed: float | None, timing: dict[str, dict[str, float]] | None = None,
          timing_notes: dict[str, str] | None = None) -> pathlib.Path:
  """The Markdown report and its plots, from the runs' result and metrics files."""
  out_dir.mkdir(parents=True, exist_ok=True)
  groups = list(dict.fromkeys(r['group'] for r in results))
  summary = summarise(results, groups, timing)
  optima = {g: common.bayes_optimum(next(r for r in results if r['group'] == g)) for g in groups}
  first = common.ml_collections.ConfigDict(results[0]['config'])
  m = first.model
  m.vocab_size = data.source(first.data).vocab_size
  params = {arm: models.param_count(models.build(
      models.ModelConfig.from_mapping({**m.to_dict(), 'arm': arm}), rngs=0))
      for arm in ('dense', 'coupled')}
  seeds = sorted({r['seed'] for r in results})
  lines = [common.report_header(title, command, elapsed)]
  lines.append(
      f'**Setup.** Arms {", ".join(dict.fromkeys(r["arm"] for r in results))}; seeds '
      f'{", ".join(map(str, seeds))}; data {", ".join(groups)}. Model d_model={m.d_model}, '
      f'{m.num_layers} layers, {m.num_heads} heads (slow {m.slow_num_heads}), MLP {m.mlp_dim}, '
      f'phi {m.phi_dim}, T={m.seq_len}, P={m.P}, gate {m.gate}, {m.dtype}; '
      f'{params["dense"]:,} parameters dense / {params["coupled"]:,} coupled (vocab '
      f'{m.vocab_size} for the first source). Batch {first.batch_size} x {m.seq_len} tokens, '
      f'{first.total_steps} steps = {results[0]["tokens"]:,} training tokens per run; AdamW '
      f'lr {first.optim.lr:g}, warmup {first.optim.warmup_steps}, cosine to '
      f'{first.optim.min_lr_ratio:g}x. Validation: the first {first.eval_batches} batches (or all, if fewer) of the '
      'validation split (fixed order), at the end of training and '
      f'every {first.eval_every} steps. "took" above is the sum of the runs\' wall times.\n')
  lines.append(
      '**Stated test.** For each pair, Welch\'s two-sided t-test (scipy '
      '`ttest_ind(equal_var=False)`) on the final validation losses of the seeds; a difference '
      f'is "within noise" when p >= {common.ALPHA:g}. "Seed std" is the pooled sample standard '
      'deviation of the two arms. With 3 seeds a test only detects differences of a few seed '
      'stds. Runs share their seed across arms (same fast-path init, same data order), so '
      '`gate_frozen` and `dense` compute the same function and should agree to rounding.\n')
  lines.append(
      f'**Gate "open".** The slow share of a layer is RMS(g · broadcast(phi(SlowAttn(Pool(x))))) '
      f'/ RMS(FastAttn(x)) over 64 validation windows, measured at each checkpoint; the gate is '
      f'called open when the seed mean of the largest layer\'s share reaches {common.OPEN_SHARE:g}.'
      '\n')
  lines.append(
      '**Wall-clock.** "Step time (benchmark)" is the median time of one jitted train step of each '
      'arm\'s config (seed 0) on random tokens, the arms timed round-robin in rotating order '
      '(`common.time_steps`) so that the load of a shared machine hits all arms alike; the verdict '
      'uses its ratio to dense. "Step time (in runs)" is the median logged step of the runs '
      'themselves (compilation and evaluation excluded): it also measures whatever else the '
      'machine was doing at the time. "Wall per run" is the whole train.train call, compilation, '
      'evaluation and checkpoints included.\n')
  lines.append('## Verdict\n')
  for group in groups:
    lines.append(verdict(group, summary[group]) + '\n')
  for group in groups:
    s = summary[group]
    lines.append(f'## {group}\n')
    opt = optima[group]
    header = ['arm', 'seeds', 'final val loss (mean ± std)']
    header += ['gap to Bayes optimum'] if opt is not None else ['bits per byte']
    header += ['final gate per layer', 'slow share (max layer)', 'step time (benchmark)',
               'vs dense', 'step time (in runs)', 'vs dense', 'wall per run']
    rows = []
    for arm in models.ARMS:
      if arm not in s['arms']:
        continue
      a = s['arms'][arm]
      vals = [r['val_loss'] for r in results if r['group'] == group and r['arm'] == arm]
      row = [arm, a['n'], common.fmt_pm(vals)]
      row += [common.fmt(a['val_mean'] - opt)] if opt is not None else [
          common.fmt(a['val_mean'] / math.log(2))]
      row += [', '.join(f'{v:+.3f}' for v in a['gate'].values()) or '—',
              common.fmt(a['share'], 3) if not math.isnan(a['share']) else '—',
              f'{a["bench_s"] * 1e3:.1f} ms' if not math.isnan(a['bench_s']) else '—',
              f'{a["rel_step"]:.3f}x', f'{a["step_s"] * 1e3:.0f} ms',
              f'{a["rel_run_step"]:.2f}x', common.fmt_seconds(a['wall_s'])]
      rows.append(row)
    lines.append(common.markdown_table(header, rows))
    if opt is not None:
      lines.append(f'Bayes-optimal loss on the same validation windows: {opt:.4f} nats/token.\n')
    if (timing_notes or {}).get(group):
      lines.append(f'Step-time benchmark: {timing_notes[group]}.\n')
    lines.append(common.tests_table(s['tests']))
  lines.append('## Plots\n')
  lines.append(f'![validation loss]({plot_val(results, root, out_dir, groups, optima)})\n')
  if any(r['arm'] in ('coupled', 'slow_frozen') for r in results):
    lines.append(f'![gate per layer]({plot_gates(results, root, out_dir, groups)})\n')
    lines.append(f'![slow share]({plot_shares(results, out_dir, groups)})\n')
  lines.append(common.runs_section(results, root))
  return common.write_report(out_dir, '\n'.join(lines),
                             {'summary': summary, 'optima': optima, 'runs': common.without_configs(results)})


def run(*, name: str = 'paper_500k', data_specs: Sequence[str] = ('synthetic', str(common.DEFAULT_TEXT)),
        arms: Sequence[str] = models.ARMS, seeds: Sequence[int] = (0, 1, 2),
        tokens: int = 500_000, size: str = 'cpu', P: int = 16, checkpoints: int = 5,
        evals: int = 5, timing_rounds: int = 20, timing_steps: int = 3, overrides: dict[str, Any] | None = None, workdir_root: str | None = None,
        out_dir: str | None = None, command: str = '', devices=None,
        log=print) -> pathlib.Path:
  """Runs (or reuses) the grid and writes the report; returns the report's path."""
  root, out = common.runs_root(name, workdir_root), common.report_dir(name, out_dir)
  runs = build_runs(data_specs=data_specs, arms=arms, seeds=seeds, tokens=tokens, size=size, P=P,
                    checkpoints=checkpoints, evals=evals, overrides=overrides)
  results = common.run_grid(runs, root, devices=devices, log=log)
  timing, notes = {}, {}
  if timing_rounds:
    timing, notes = common.time_grid(runs, root, key=lambda r: r.arm, rounds=timing_rounds,
                                     steps_per_round=timing_steps, devices=devices, log=log)
  if not common.is_main_process():
    return out / 'report.md'
  title = f'Ablation grid at {common.tokens_label(tokens)} training tokens ({name})'
  path = write(results, root=root, out_dir=out, command=command, title=title,
               elapsed=sum(r['wall_s'] for r in results), timing=timing, timing_notes=notes)
  log(f'Wrote {path}')
  return path


def main():
  from absl import flags
  f = flags.FLAGS
  tokens = common.parse_tokens(f.tokens)
  name = f.name or f'paper_{common.tokens_label(tokens)}'
  common.enable_compilation_cache(common.runs_root(name, f.workdir_root) / 'jax_cache')
  run(name=name, data_specs=f.data, arms=f.arms,
      seeds=[int(s) for s in f.seeds], tokens=tokens, size=f.size, P=f.P,
      checkpoints=f.checkpoints, evals=f.evals, timing_rounds=f.timing_rounds, overrides=common.parse_overrides(f.set),
      workdir_root=f.workdir_root, out_dir=f.out_dir,
      command=common.command_line('experiments.paper_500k'))


def define_flags():
  from absl import flags
  common.define_sources_flags('arm')
  flags.DEFINE_list('arms', list(models.ARMS), 'Arms of the grid.')
  flags.DEFINE_integer('P', 16, 'Pooling period of the slow path.', lower_bound=1)
  flags.DEFINE_integer('checkpoints', 5, 'Checkpoints per run (slow-share trajectory points).',
                       lower_bound=1)
  common.define_grid_flags(None)
  flags.adopt_module_key_flags(common)  # Listed in --help beside this module's own.


if __name__ == '__main__':
  from fastslow_jax import cli
  cli.run(main, define_flags)
