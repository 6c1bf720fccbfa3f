r"""Long context: does a local fast path plus a global slow path recover full attention's quality
at a fraction of its attention cost?

    python -m experiments.long_context                    # 3 seeds x 2 sources x 5 arms
    python -m experiments.long_context --seeds=0 --data=long_range --budgets=50k --name=lc_smoke
    python -m experiments.long_context --report_only      # re-render from results.json

Arms at T = `--seq_len`, every one with the same training FLOPs per run (analytic,
`models.flops_per_token`, causal attention counted honestly): `dense full` (causal attention over
the whole context), `dense local` (a window of W = `--window` tokens), and the full model of each
family with the same local fast path: `fastslow local`, `compressed local` (NSA's sliding window
plus compressed blocks), `hourglass local` (windowed full-rate layers around the shortened
stack). A cheaper arm trains on more tokens. Sources: `long_range` (a code fixed per window that
every token evidences a little: its exact optimum with the whole past and with the last w tokens
is known) and a prepared corpus of long documents (`--data`, read without repeating an epoch,
scored in bits per byte too). Every run trains through `fastslow_jax.train` and is evaluated by
`fastslow_jax.evaluate` (loss by position in the context); the arms' step times come from one
interleaved benchmark per source (`timing.time_grid`). The report pairs the arms over the seeds
(`experiments/stats.py`), plots loss against training FLOPs, against measured time and by
position, and answers the question from the data.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import grid, repo, report, stats, timing
from fastslow_jax import data, evaluate, models
from fastslow_jax.errors import UsageError
from fastslow_jax.models import flops as flop_count
from fastslow_jax.rundir import RunDir

CORPUS = 'data/debian-bpe8k'  # Built by the commands of CORPUS_COMMANDS (git-ignored).
# label: (family, arm, local fast path)
ARMS = {'dense full': ('fastslow', 'dense', False), 'dense local': ('fastslow', 'dense', True),
        'fastslow local': ('fastslow', 'coupled', True),
        'compressed local': ('compressed', 'coupled', True),
        'hourglass local': ('hourglass', 'coupled', True)}
COLORS = {'dense full': 'black', 'dense local': 'tab:gray', 'fastslow local': 'tab:blue',
          'compressed local': 'tab:purple', 'hourglass local': 'tab:red'}
# The comparisons of the report, per source: each local arm against full attention (the
# question), and each slow path against the same local fast path without one.
PAIRS = [(a, 'dense full') for a in ARMS if a != 'dense full'] + [
    (a, 'dense local') for a in ARMS if a not in ('dense full', 'dense local')]
# The model every arm shares (a `tiny` base shrunk to what 2 CPU cores train in minutes).
BASE = {'model.d_model': 64, 'model.num_layers': 2, 'model.num_heads': 2,
        'model.slow_num_heads': 2, 'model.mlp_dim': 256, 'model.phi_dim': 256,
        'model.compress_dim': 32, 'model.attention_impl': 'xla', 'optim.lr': 1e-2,
        'batch_size': 2, 'eval_batches': 8}


# --------------------------------------------------------------------------- configs


def source_overrides(spec: str) -> dict[str, Any]:
  """The data fields of a source: 'long_range', or a directory prepared by data.prepare."""
  if spec == 'long_range':
    return {'data.kind': 'long_range'}
  if not grid.is_prepared(spec):
    raise UsageError(f'--data entry {spec!r} is neither long_range nor a prepared directory '
                     '(python -m fastslow_jax.data.prepare; the report says how to build it).')
  return {'data.kind': 'tokens', 'data.path': spec}


def arm_config(label: str, *, spec: str, seq_len: int, window: int, P: int, seed: int,
               flops_budget: float, evals: int, overrides: dict[str, Any] | None = None
               ) -> ml_collections.ConfigDict:
  """The config of one run: the arm's model at `seq_len`, steps for `flops_budget` FLOPs;
  `overrides` (dotted fields, every arm alike: a source's parameters, the learning rate) come
  after BASE."""
  family, arm, local = ARMS[label]
  over = {**BASE, **source_overrides(spec), **(overrides or {}), 'model.seq_len': seq_len,
          'model.family': family, 'model.fast_window': window if local else 0}
  config = grid.make_config(arm, size='tiny', P=P, seed=seed, tokens=1, evals=evals,
                            checkpoints=1, overrides=over)
  per_step = config.batch_size * seq_len * grid.training_flops(config)
  over['total_steps'] = max(1, round(flops_budget / per_step))
  config = grid.make_config(arm, size='tiny', P=P, seed=seed, evals=evals, checkpoints=1,
                            tokens=over['total_steps'] * config.batch_size * seq_len,
                            overrides=over)
  if spec == 'long_range':  # Fresh windows for the whole budget.
    config.data.num_train_windows = max(config.data.num_train_windows,
                                        config.total_steps * config.batch_size)
  return config


def attention_flops(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Training FLOPs per token of the fast attention (scores and weighted values of every
  full-rate layer) and of the whole slow path, beside the same model's fast attention without a
  window: what 'a fraction of its attention cost' is measured in."""
  cfg = grid.model_config(config)
  layers = sum(cfg.hourglass_stages[::2]) if cfg.family == 'hourglass' and cfg.has_slow_path \
      else cfg.num_layers
  fast = lambda window: 3 * layers * flop_count.attention(cfg.seq_len, cfg.d_model, True, window)
  return {'fast': fast(cfg.fast_window), 'full': fast(0),
          'slow': models.flops_per_token(cfg).slow}


def build_runs(*, specs: Sequence[str], seeds: Sequence[int], budgets: Sequence[float],
               seq_len: int, window: int, P: int, evals: int,
               overrides: dict[str, Any] | None = None) -> list[grid.Run]:
  """Per source (its budget: dense full's tokens x its FLOPs per token), per seed, every arm."""
  runs = []
  for spec, budget_tokens in zip(specs, budgets):
    group = 'long_range' if spec == 'long_range' else grid.data_label(spec)
    make = lambda label, seed, flops: arm_config(label, spec=spec, seq_len=seq_len,
                                                 window=window, P=P, seed=seed,
                                                 flops_budget=flops, evals=evals,
                                                 overrides=overrides)
    reference = make('dense full', 0, 1.0)
    flops_budget = budget_tokens * grid.training_flops(reference)
    for seed in seeds:
      for label in ARMS:
        config = make(label, seed, flops_budget)
        name = f'{group}/{label.replace(" ", "_")}-s{seed}'
        runs.append(grid.Run(name, group, ARMS[label][1], seed, config, label=label))
  return runs


# --------------------------------------------------------------------------- after training


def evaluated(workdir: pathlib.Path, steps: int) -> dict[str, Any]:
  """The run's final evaluation with its loss by position (computed once, then read back)."""
  path = pathlib.Path(RunDir(workdir).eval_result('validation', steps))
  if path.exists() and 'loss_by_position' in json.loads(path.read_text()):
    return json.loads(path.read_text())
  return evaluate.evaluate(str(workdir), mesh='1,1,1', devices=jax.devices()[:1], plot=False)


def curves(workdir: pathlib.Path, config: ml_collections.ConfigDict, step_s: float
           ) -> list[list[float]]:
  """[tokens, FLOPs, training seconds, validation loss] at each validation of a run; seconds are
  steps times the arm's step time from the interleaved benchmark (`step_s`)."""
  per_token = grid.training_flops(config)
  tokens_per_step = config.batch_size * config.model.seq_len
  return [[r['step'] * tokens_per_step, r['step'] * tokens_per_step * per_token,
           r['step'] * step_s, r['val_loss']]
          for r in grid.read_metrics(workdir) if 'val_loss' in r]


def run_details(result: dict[str, Any], root: pathlib.Path, step_s: float) -> dict[str, Any]:
  """What the report needs of one finished run beyond grid.run_grid's result."""
  config = ml_collections.ConfigDict(result['config'])
  workdir = root / result['name']
  out = evaluated(workdir, config.total_steps)
  return {'eval': {k: out[k] for k in ('loss', 'loss_by_position', 'bits_per_byte',
                                       'bayes_optimal_loss') if k in out},
          'curve': curves(workdir, config, step_s), 'flops_per_token': grid.training_flops(config),
          'attention': attention_flops(config), 'step_s': step_s}


def stack_reach(num_layers: int, window: int) -> int:
  """How far back a stack of `num_layers` windowed layers sees: L (W - 1) + 1 tokens."""
  return num_layers * (window - 1) + 1


def reach_name(reach: int) -> str:
  """The name of the optimum over the local stack's reach in a source's optima."""
  return f"last {reach} tokens (the local stack's reach)"


def source_facts(config: ml_collections.ConfigDict, window: int) -> dict[str, Any]:
  """The exact optima of the long-range source on the validation windows scored (whole past,
  the last W tokens, the dense local stack's reach, one token), or the corpus's epoch check."""
  scored, _ = grid.validation_windows(config)
  source = data.source(config.data)
  T = config.model.seq_len
  if config.data.kind == 'long_range':
    reach = stack_reach(config.model.num_layers, window)
    optimum = lambda w: source.bayes_optimal_ce(seq_len=T, num_windows=scored, window=w)
    return {'optimum': {'whole past': optimum(None), f'last {window} tokens': optimum(window),
                        reach_name(reach): optimum(reach), 'one token': optimum(1)}}
  manifest = data.sources.tokens.read_manifest(config.data.path)
  return {'train_tokens': manifest['splits']['train']['tokens'],
          'validation_tokens': manifest['splits']['validation']['tokens']}


# --------------------------------------------------------------------------- summary


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """Per source, per arm: seeds, final losses, tokens, FLOPs, step time, bits per byte, the
  loss by position (mean over seeds) and the validation curves."""
  out = {}
  for group in dict.fromkeys(r['group'] for r in results):
    arms = {}
    for label in ARMS:
      rs = [r for r in results if r['group'] == group and r['label'] == label]
      if not rs:
        continue
      positions = [r['details']['eval']['loss_by_position'] for r in rs]
      arms[label] = {
          'seeds': [r['seed'] for r in rs], 'val': [r['val_loss'] for r in rs],
          'tokens': rs[0]['tokens'], 'steps': rs[0]['steps'],
          'flops_per_token': rs[0]['details']['flops_per_token'],
          'attention': rs[0]['details']['attention'],
          'step_s': rs[0]['details']['step_s'],
          'train_s': float(np.mean([r['train_s'] for r in rs])),
          'bits_per_byte': _mean_of(r['details']['eval'].get('bits_per_byte') for r in rs),
          'buckets': positions[0]['buckets'],
          'by_position': np.mean([p['loss'] for p in positions], 0).tolist(),
          'by_position_seeds': [p['loss'] for p in positions],
          'curves': [r['details']['curve'] for r in rs]}
    out[group] = {'arms': arms, 'optimum_by_position': _optimum_curve(results, group)}
  return out


def _mean_of(values) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def _optimum_curve(results, group) -> dict[str, list[float]]:
  """The source's optima by position bucket (whole past; last W), where it has them."""
  for r in results:
    curve = r['details']['eval']['loss_by_position']
    if r['group'] == group and 'optimum_window' in curve:
      return {'whole past': curve['optimum'], 'last W': curve['optimum_window']}
  return {}


def comparisons(results: list[dict[str, Any]], groups: Sequence[str]
                ) -> dict[str, dict[str, stats.Comparison]]:
  """PAIRS in every source, paired over seeds, Holm over the whole report."""
  return report.grouped_comparisons(results, 'label', {
      g: [p for p in PAIRS if all(any(r['group'] == g and r['label'] == a for r in results)
                                  for a in p)] for g in groups})


def late_positions(summary: dict[str, Any], group: str, a: str, b: str, start: int
                   ) -> stats.Comparison | None:
  """a − b on the mean loss over positions >= `start`, paired over seeds (alone, not in the
  report's Holm family: a description of where the difference lies)."""
  arms = summary[group]['arms']
  if a not in arms or b not in arms:
    return None
  late = lambda x: {s: float(np.average(
      [v for (lo, hi), v in zip(x['buckets'], curve) if lo >= start],
      weights=[hi - lo for lo, hi in x['buckets'] if lo >= start]))
      for s, curve in zip(x['seeds'], x['by_position_seeds'])}
  return stats.family({0: stats.paired(late(arms[a]), late(arms[b]))})[0]


# --------------------------------------------------------------------------- plots


def _mean_curve(curves: list[list[list[float]]], x: int) -> tuple[list[float], list[float]]:
  """(x, mean validation loss) over seeds, point by point (the seeds validate at the same steps)."""
  n = min(len(c) for c in curves)
  return ([float(np.mean([c[i][x] for c in curves])) for i in range(n)],
          [float(np.mean([c[i][3] for c in curves])) for i in range(n)])


def plot_curves(summary: dict[str, Any], out_dir: pathlib.Path, x: int, name: str,
                xlabel: str) -> str:
  """Validation loss (mean over seeds) against column `x` of the runs' curves, per source."""
  fig, axes = report.new_figure(len(summary), 1, width=4.8, height=3.5)
  for ax, (group, s) in zip(axes[0], summary.items()):
    for label, arm in s['arms'].items():
      xs, ys = _mean_curve(arm['curves'], x)
      ax.plot(xs, ys, marker='o', ms=3, color=COLORS[label], label=label)
    ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel('validation loss (nats / token)')
    ax.set_title(group, fontsize=9)
    ax.legend(fontsize=7)
  return report.save_figure(fig, out_dir / name)


def plot_positions(summary: dict[str, Any], out_dir: pathlib.Path, window: int) -> str:
  """Loss by position in the context (mean over seeds), per source, with the optima."""
  fig, axes = report.new_figure(len(summary), 1, width=4.8, height=3.5)
  for ax, (group, s) in zip(axes[0], summary.items()):
    for label, arm in s['arms'].items():
      x = [math.sqrt(max(lo, 1) * hi) for lo, hi in arm['buckets']]
      ax.plot(x, arm['by_position'], marker='o', ms=3, color=COLORS[label], label=label)
    for (name, curve), style in zip(s['optimum_by_position'].items(), (':', '--')):
      ax.plot(x, curve, 'k' + style, lw=0.9,
              label=f'optimum, {name if name != "last W" else f"last {window} tokens"}')
    ax.axvline(window, color='tab:gray', lw=0.6, ls='-.')
    ax.set_xscale('log', base=2)
    ax.set_xlabel('position in the context')
    ax.set_ylabel('loss (nats / token)')
    ax.set_title(f'{group}: loss by position (final checkpoints)', fontsize=9)
    ax.legend(fontsize=6)
  return report.save_figure(fig, out_dir / 'loss_by_position.png')


# --------------------------------------------------------------------------- report


QUESTION = (
    '**The question.** Does a local fast path (a window of W = {W} tokens) plus a global slow path '
    'recover the full-attention model\'s quality at a fraction of its attention cost? Answered by '
    'the paired difference `fastslow local − dense full` of the final validation loss at equal '
    'training FLOPs, on each source (the other slow paths, compressed and hourglass, beside it); '
    '`X local − dense local` says whether a slow path helps the same local fast path at all.\n')
SETUP = (
    '**Setup.** Every arm: d_model={m.d_model}, {m.num_layers} layers ({m.num_heads} heads, '
    'head size {head}), MLP {m.mlp_dim}, T={m.seq_len}, batch {c.batch_size} windows, P={m.P}; '
    'fastslow: {m.slow_num_heads} slow heads, phi {m.phi_dim}, scalar gate; compressed: block MLP '
    '{m.compress_dim}, a gate per head; hourglass: (pre, inner, post) layers {stages} with the '
    'window in the pre and post layers. Attention backend `{m.attention_impl}` (chunked local '
    'attention with a window). AdamW at lr {o.lr:g}, warmup 10%, cosine to {o.min_lr_ratio:g}. '
    'Equal training FLOPs per run within a source: dense full\'s tokens times its analytic '
    'training FLOPs per token, the budget every arm spends (its steps rounded), so a cheaper arm '
    'sees more tokens. Validation: the first {v} windows of the validation split in a fixed '
    'order, {evals} times per run; the final checkpoint is evaluated once more by '
    '`fastslow_jax.evaluate` for the loss by position.\n')


def setup_text(numbers: dict[str, Any]) -> str:
  config = ml_collections.ConfigDict(numbers['config'])
  m = config.model
  stages = models.ModelConfig.from_mapping(
      {**m.to_dict(), 'family': 'hourglass', 'vocab_size': 64}).hourglass_stages
  return SETUP.format(m=m, c=config, o=config.optim, head=m.d_model // m.num_heads, stages=stages,
                      v=config.eval_batches * config.batch_size,
                      evals=config.total_steps // config.eval_every)


def budget_text(numbers: dict[str, Any]) -> str:
  """What the experiment cost on this machine."""
  runs = numbers['runs']
  total = sum(r['wall_s'] for r in runs)
  per = {g: sum(r['wall_s'] for r in runs if r['group'] == g) for g in numbers['summary']}
  return ('**Budget.** ' + f'{len(runs)} runs, {report.fmt_seconds(total)} of training and '
          'evaluation in all (' + ', '.join(f'{g}: {report.fmt_seconds(s)}'
                                             for g, s in per.items())
          + f') on {numbers["provenance"]["cpu_cores"]} CPU cores shared with other work. Step '
          'times (the arm table, the loss against measured time) come from one interleaved '
          'benchmark per source after training (`timing.time_grid`: each arm\'s train step once '
          'per round, the order rotated, one warm-up round; '
          + '; '.join(f'{g}: {n}' for g, n in numbers.get('timing_notes', {}).items())
          + '): this machine\'s (one XLA:CPU device), not an accelerator\'s.\n')


def source_text(group: str, facts: dict[str, Any], tokens: int, data_config: dict[str, Any]
                ) -> str:
  """The long-range source's parameters and exact optima, or the corpus's size against the
  budget."""
  if 'optimum' in facts:
    whole = facts['optimum']['whole past']
    parts = '; '.join(f'{name}: {v:.4f} (+{v - whole:.4f})' for name, v in facts['optimum'].items()
                      if name != 'whole past')
    d = data_config
    return (f'**{group}** (`data.long_range_symbols={d["long_range_symbols"]}`, '
            f'`long_range_bits={d["long_range_bits"]}`, `long_range_bias={d["long_range_bias"]}`: '
            f'a vocabulary of {2 * d["long_range_symbols"] * d["long_range_bits"]}). '
            '**The exact optima** on the validation windows scored (nats/token): the '
            f'whole past {whole:.4f}; {parts}. The gap between the last W tokens and the whole '
            'past is what a slow path can capture over the local fast path alone.\n')
  epochs = tokens / facts['train_tokens']
  return (f'**{group}**: {facts["train_tokens"]:,} training and {facts["validation_tokens"]:,} '
          f'validation tokens; the largest run reads {tokens:,} training tokens, {epochs:.3f} of '
          'an epoch: no window is seen twice.\n')


ARM_HEADER = ['arm', 'seeds', 'tokens', 'train FLOPs / token', 'fast attention FLOPs / token',
              'slow path FLOPs / token', 'attention cost vs dense full', 'step', 'final val loss',
              None]


def group_section(group: str, s: dict[str, Any], comps: dict[str, stats.Comparison],
                  late: dict[str, stats.Comparison | None], start: int) -> str:
  """A source's table of arms and its comparisons."""
  header = list(ARM_HEADER)
  corpus = any(a['bits_per_byte'] is not None for a in s['arms'].values())
  header[-1] = 'bits per byte' if corpus else 'final val loss − Bayes optimum'
  full = s['arms']['dense full']['attention']['full'] if 'dense full' in s['arms'] else math.nan
  rows = []
  for label, a in s['arms'].items():
    att = a['attention']
    last = (report.fmt(a['bits_per_byte']) if corpus
            else report.fmt(float(np.mean(a['val'])) - s['optimum']))
    rows.append([label, len(a['seeds']), f'{a["tokens"]:,}', f'{a["flops_per_token"] / 1e6:.3f} M',
                 f'{att["fast"] / 1e6:.3f} M', f'{att["slow"] / 1e6:.3f} M',
                 f'{(att["fast"] + att["slow"]) / full:.3f}x', f'{a["step_s"]:.2f} s',
                 report.fmt_pm(a['val']), last])
  lines = [f'## {group}\n', report.markdown_table(header, rows),
           report.comparisons_table(comps)]
  described = [c.sentence(f'{name}, positions >= {start}') for name, c in late.items() if c]
  if described:
    lines.append(f'Where the difference lies: the same paired differences on the mean loss at '
                 f'positions from {start} on (each alone, outside the family above): '
                 + ' '.join(described) + '\n')
  return '\n'.join(lines)


def answer(summary: dict[str, Any], comps: dict[str, dict[str, stats.Comparison]],
           sources: dict[str, Any], reach: int) -> str:
  """The question's answer on each source, in the words of stats, with the attention cost, and
  (on a source with known optima) whether the arms use more than their windows can see."""
  lines = ['## Answer\n']
  for group, s in summary.items():
    arms = s['arms']
    if 'dense full' not in arms:
      continue
    full = arms['dense full']['attention']['full']
    parts = []
    for label in ('fastslow local', 'compressed local', 'hourglass local', 'dense local'):
      c = comps[group].get(f'{label} − dense full')
      if c is None:
        continue
      att = arms[label]['attention']
      cost = (att['fast'] + att['slow']) / full
      word = {stats.EQUAL: 'recovers full attention\'s quality',
              stats.DIFFERENT: ('beats full attention' if c.mean < 0 else
                                'falls short of full attention')}.get(
                                    c.verdict, 'is undetermined against full attention')
      parts.append(f'{label} {word} at {cost:.0%} of its attention FLOPs '
                   f'({c.sentence(f"{label} − dense full").rstrip(".")})')
    helps = [c.sentence(name) for name, c in comps[group].items() if name.endswith('dense local')]
    lines.append(f'**{group}:** ' + '; '.join(parts) + '. Against the same local fast path '
                 'alone: ' + ' '.join(helps) + '\n')
    optimum = sources.get(group, {}).get('optimum', {})
    beyond = beyond_reach(arms, optimum, reach)
    if beyond:
      lines.append(beyond_text(group, arms, optimum, reach, beyond))
  return '\n'.join(lines)


def beyond_reach(arms: dict[str, Any], optimum: dict[str, float], reach: int
                 ) -> dict[str, stats.Comparison]:
  """Each local arm's final loss minus the optimum of its stack's reach, over its seeds (Holm
  over these comparisons alone): below zero, the arm uses tokens older than any window of its
  stack can see, which only its slow path brings. Empty without that optimum."""
  value = optimum.get(reach_name(reach))
  if value is None:
    return {}
  pairs = {label: stats.paired(dict(zip(a['seeds'], a['val'])), {s: value for s in a['seeds']})
           for label, a in arms.items() if label != 'dense full'}
  return stats.family(pairs) if pairs else {}


def beyond_text(group: str, arms: dict[str, Any], optimum: dict[str, float], R: int,
                beyond: dict[str, stats.Comparison]) -> str:
  """Where the arms end against what their windows can know (the optimum over the last R
  tokens), and what the data say of it."""
  value = optimum[reach_name(R)]
  whole = optimum['whole past']
  gaps = [float(np.mean(a['val'])) - whole for a in arms.values()]
  below = [label for label, c in beyond.items()
           if c.verdict == stats.DIFFERENT and c.mean < 0]
  parts = ' '.join(c.sentence(f'{label} − optimum of the last {R} tokens')
                   for label, c in beyond.items())
  local = beyond.get('dense local')
  if below:
    verdict = (f'{", ".join(below)} end{"s" if len(below) == 1 else ""} below what any '
               f'predictor of the last {R} tokens can reach: at this budget the slow path brings '
               'tokens from beyond the window into the prediction.')
  elif local is not None and local.verdict == stats.EQUAL:
    verdict = ('The local fast path alone has learned what its window shows, yet no slow path '
               'is shown below it: at this budget the slow paths do not bring the distant past '
               'into the prediction.')
  elif local is not None and local.mean > value - whole:
    verdict = ('No local arm is shown below it, and the local fast path alone ends '
               f'{local.mean:.3f} above it on average, more than the {value - whole:.3f} the whole '
               'past adds: the models have not yet learned what their windows show, so a slow '
               'path has little to add yet, and the differences above measure how fast each arm '
               'learns the local structure at equal FLOPs (a local arm takes more tokens) more '
               'than the value of the distant past.')
  else:
    verdict = ('No local arm is shown below it: the data do not show a slow path bringing the '
               'distant past into the prediction at this budget.')
  return (f'**Beyond the window on {group}.** The arms end {min(gaps):.3f} to {max(gaps):.3f} '
          f'nats above the whole-past optimum. The best any predictor can do from the last {R} '
          "tokens (the local stack's reach: each windowed layer looks W - 1 tokens back) is "
          f'{value:.4f}, {value - whole:.4f} above the whole past: a local arm below it must use '
          'older tokens, which only its slow path (the hourglass: its shortened stack) brings. '
          'The optimum is exact on the validation windows scored; each arm minus it over its '
          f'seeds, Holm over these comparisons alone: {parts} {verdict}\n')


def render(numbers: dict[str, Any], out_dir: pathlib.Path, rerendered: bool = False
           ) -> pathlib.Path:
  """report.md and its plots from results.json's numbers alone."""
  summary, window = numbers['summary'], numbers['window']
  comps = comparisons(numbers['runs'], list(summary))
  numbers['comparisons'] = {g: {n: stats.to_json(c) for n, c in cs.items()}
                            for g, cs in comps.items()}
  start = 4 * window
  lines = [report.header('Long context: a local fast path, a global slow path (long_context)',
                         numbers['provenance'], rerendered),
           QUESTION.format(W=window), setup_text(numbers), budget_text(numbers)]
  lines += [source_text(g, numbers['sources'][g], max(a['tokens'] for a in s['arms'].values()),
                        numbers['config']['data'])
            for g, s in summary.items()]
  lines += [stats.method(sum(map(len, comps.values()))),
            answer(summary, comps, numbers['sources'],
                   stack_reach(numbers['config']['model']['num_layers'], window))]
  for g, s in summary.items():
    late = {f'{a} − {b}': late_positions(summary, g, a, b, start)
            for a, b in (('fastslow local', 'dense local'), ('fastslow local', 'dense full'))}
    lines.append(group_section(g, s, comps[g], late, start))
  # Each run's step: its arm's interleaved step time (the train loop's own figure is not used).
  runs_timed = [{**r, 'step_s': r['details']['step_s']} for r in numbers['runs']]
  flops = plot_curves(summary, out_dir, 1, 'loss_vs_flops.png', 'training FLOPs')
  seconds = plot_curves(summary, out_dir, 2, 'loss_vs_time.png',
                        'training seconds (steps x interleaved step time, this machine)')
  lines += ['## Plots\n', f'![loss against training FLOPs]({flops})\n',
            f'![loss against measured time]({seconds})\n',
            f'![loss by position]({plot_positions(summary, out_dir, window)})\n',
            CORPUS_COMMANDS, report.runs_section(runs_timed, numbers['root']).replace(
                '## Runs\n\n', f'## Runs\n\n{RUNS_NOTE}\n', 1)]
  return report.write_report(out_dir, '\n'.join(lines), numbers)


RUNS_NOTE = (
    '"step" is the run\'s arm in the interleaved benchmark; "wall" is the whole '
    '`train.train` call (compilation, validation and checkpoints included). The step times in '
    'the runs\' metrics.jsonl are not used: on this XLA:CPU device they time the dispatch of a '
    'step, not its execution.\n')
CORPUS_COMMANDS = (
    '## Rebuilding the corpus\n\nThe corpus is not committed. It is built from Debian 12 main '
    'packages and prepared with an 8192-token byte-level BPE (`experiments/debian_corpus.py` '
    'lists the packages, licences and filters):\n\n```\n'
    'python -m experiments.debian_corpus --output=data/debian\n'
    "python -m fastslow_jax.data.prepare --input='data/debian/documents-*.jsonl' \\\n"
    '    --tokenizer=bpe:8192 --output=data/debian-bpe8k\n```\n')


def write(results: list[dict[str, Any]], *, root: pathlib.Path, out_dir: pathlib.Path,
          command: str, window: int, timing: dict[str, dict[str, float]],
          timing_notes: dict[str, str]) -> pathlib.Path:
  """The numbers behind the report (summary, source facts, runs), then the report."""
  out_dir.mkdir(parents=True, exist_ok=True)
  for r in results:
    r['details'] = run_details(r, root, timing[r['group']][r['label']])
  summary = summarise(results)
  sources = {}
  for group in summary:
    config = ml_collections.ConfigDict(next(r['config'] for r in results if r['group'] == group))
    sources[group] = source_facts(config, window)
    if 'optimum' in sources[group]:
      summary[group]['optimum'] = sources[group]['optimum']['whole past']
  numbers = {'provenance': report.provenance(command, results, sum(r['wall_s'] for r in results)),
             'config': repo.portable_config(results[0]['config']),
             'root': repo.display_path(root), 'window': window, 'sources': sources,
             'summary': summary, 'timing_notes': timing_notes,
             'runs': grid.without_configs(results)}
  return render(numbers, out_dir)


def run(*, name: str = 'long_context', specs: Sequence[str] = ('long_range', CORPUS),
        seeds: Sequence[int] = (0, 1, 2), budgets: Sequence[float] = (131_072, 32_768),
        seq_len: int = 2048, window: int = 64, P: int = 16, evals: int = 3,
        timing_rounds: int = 3, overrides: dict[str, Any] | None = None,
        workdir_root: str | None = None, out_dir: str | None = None, command: str = '',
        log=print) -> pathlib.Path:
  """Runs (or reuses) the grid, evaluates every run and writes the report."""
  if len(budgets) != len(specs):
    raise UsageError(f'--budgets gives {len(budgets)} budgets for {len(specs)} sources: give one '
                     'per --data entry (dense full\'s training tokens).')
  root, out = repo.runs_root(name, workdir_root), repo.report_dir(name, out_dir)
  runs = build_runs(specs=specs, seeds=seeds, budgets=budgets, seq_len=seq_len, window=window,
                    P=P, evals=evals, overrides=overrides)
  results = grid.run_grid(runs, root, devices=jax.devices()[:1], log=log)
  times, notes = timing.time_grid(runs, root, key=lambda r: r.label, rounds=timing_rounds,
                                  steps_per_round=1, devices=jax.devices()[:1], log=log)
  path = write(results, root=root, out_dir=out, command=command, window=window, timing=times,
               timing_notes=notes)
  log(f'Wrote {path}')
  return path


def main():
  from absl import flags
  f = flags.FLAGS
  if not report.start(f.name, f, render):
    return
  run(name=f.name, specs=f.data, seeds=[int(s) for s in f.seeds],
      budgets=[grid.parse_tokens(b) for b in f.budgets], seq_len=f.seq_len, window=f.window,
      P=f.P, evals=f.evals, timing_rounds=f.timing_rounds,
      overrides=grid.parse_overrides(f.set), workdir_root=f.workdir_root,
      out_dir=f.out_dir, command=report.command_line('experiments.long_context'))


def define_flags():
  from absl import flags
  flags.DEFINE_list('data', ['long_range', CORPUS], "Sources: 'long_range' and/or directories "
                    'prepared by fastslow_jax.data.prepare.')
  flags.DEFINE_list('budgets', ['131072', '32768'], 'Per source, the training tokens of dense '
                    'full; every arm gets the same training FLOPs.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (init and data order) per arm.')
  flags.DEFINE_integer('seq_len', 2048, 'T: the context every arm trains at.', lower_bound=2)
  flags.DEFINE_integer('window', 64, 'W: the local fast path\'s window.', lower_bound=1)
  flags.DEFINE_integer('P', 16, 'Pooling / shortening period.', lower_bound=1)
  flags.DEFINE_integer('evals', 3, 'Validation points per run.', lower_bound=1)
  flags.DEFINE_integer('timing_rounds', 3, 'Interleaved rounds of the step-time benchmark (one '
                       'step per arm per round, after one warm-up round).', lower_bound=1)
  flags.DEFINE_list('set', [], 'Config overrides field=value for every arm, e.g. the source: '
                    'data.long_range_bits=8,data.long_range_bias=0.4.')
  flags.DEFINE_string('name', 'long_context', 'Report / workdir name.')
  flags.DEFINE_string('workdir_root', None, 'Where the runs go (default workdirs/<name>).')
  flags.DEFINE_string('out_dir', None, 'Where the report goes (default '
                      'experiments/reports/<name>).')
  flags.DEFINE_bool('report_only', False, 'Re-render the report from <out_dir>/results.json.')


if __name__ == '__main__':
  from fastslow_jax import cli
  cli.run(main, define_flags)
