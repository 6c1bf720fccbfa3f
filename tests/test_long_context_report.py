"""experiments/long_context.py: its report rendered from synthetic results (nothing trained), its
words taken from stats, and the same text again from results.json (--report_only)."""

import json

import numpy as np
import pytest

from experiments import long_context, report

PROVENANCE = {'command': 'python -m experiments.long_context', 'date': '2026-01-01 00:00 UTC',
              'trained_at': 'commit `abc1234`', 'device': '1 x cpu', 'cpu_cores': 2,
              'took_s': 60.0}
BUCKETS = [[0, 1], [1, 2], [2, 4], [4, 8], [8, 16], [16, 32], [32, 64], [64, 127]]
# Final validation loss above dense full's, per arm: fastslow within 1e-4 (equal), dense local
# 0.05 above (different), the other two 0.02 above with noise (undetermined).
OFFSET = {'dense full': 0.0, 'dense local': 0.05, 'fastslow local': 0.0,
          'compressed local': 0.02, 'hourglass local': 0.02}
NOISE = {'dense full': [0, 0, 0], 'dense local': [1e-4, -1e-4, 0],
         'fastslow local': [1e-4, -1e-4, 0], 'compressed local': [0.03, -0.02, 0.0],
         'hourglass local': [-0.03, 0.04, 0.0]}


def numbers(reach_optimum=4.0):
  config = long_context.arm_config('dense full', spec='long_range', seq_len=128, window=16, P=16,
                                   seed=0, flops_budget=1e9, evals=2)
  results = []
  for seed, base in enumerate([4.10, 4.05, 4.20]):
    for label, (_, arm, local) in long_context.ARMS.items():
      val = base + OFFSET[label] + NOISE[label][seed]
      curve = {'buckets': BUCKETS, 'loss': list(np.linspace(4.5, val, len(BUCKETS)))}
      if local:
        curve.update(optimum=list(np.linspace(4.4, 3.9, 8)),
                     optimum_window=list(np.linspace(4.4, 4.0, 8)))
      attention = {'fast': 2e4 if local else 1e5, 'full': 1e5, 'slow': 5e3 if arm != 'dense' else 0}
      results.append({
          'name': f'long_range/{label.replace(" ", "_")}-s{seed}', 'group': 'long_range',
          'arm': arm, 'seed': seed, 'label': label, 'val_loss': val, 'wall_s': 30.0,
          'train_s': 20.0, 'step_s': 0.1, 'steps': 40, 'tokens': 40 * 256, 'gate': {},
          'share': {}, 'commit': 'abc1234',
          'details': {'eval': {'loss': val, 'loss_by_position': curve},
                      'curve': [[5120, 5e9, 10.0, val + 0.3], [10240, 1e10, 20.0, val]],
                      'flops_per_token': 1e6, 'attention': attention, 'step_s': 0.5}})
  summary = long_context.summarise(results)
  summary['long_range']['optimum'] = 3.95
  optimum = {'whole past': 3.95, 'last 16 tokens': 4.02,
             "last 31 tokens (the local stack's reach)": reach_optimum, 'one token': 4.3}
  return {'provenance': PROVENANCE, 'config': json.loads(config.to_json_best_effort()),
          'root': 'workdirs/test', 'window': 16, 'sources': {'long_range': {'optimum': optimum}},
          'summary': summary, 'timing_notes': {'long_range': 'load average 1.0 before'},
          'runs': results}


def test_long_context_report_answers_from_stats(tmp_path):
  path = long_context.render(numbers(), tmp_path)
  text = path.read_text()
  assert '**The question.**' in text and '## Answer' in text
  assert 'fastslow local recovers full attention\'s quality at 25% of its attention FLOPs' in text
  assert 'dense local falls short of full attention at 20% of its attention FLOPs' in text
  assert 'compressed local is undetermined against full attention' in text
  assert 'The arms end 0.167 to 0.217 nats above the whole-past optimum' in text
  assert 'The best any predictor can do from the last 31 tokens' in text
  assert 'fastslow local − optimum of the last 31 tokens = +0.1167' in text
  assert 'No local arm is shown below it, and the local fast path alone ends 0.167' in text
  assert 'undetermined at this power' in text and 'the whole past 3.9500' in text
  assert 'last 16 tokens: 4.0200 (+0.0700)' in text
  for name in ('loss_vs_flops.png', 'loss_vs_time.png', 'loss_by_position.png'):
    assert (tmp_path / name).stat().st_size > 1000 and f']({name})' in text
  long_context.render(report.load_results(tmp_path), tmp_path, rerendered=True)
  assert (tmp_path / 'report.md').read_text().split('\n', 8)[-1] == text.split('\n', 8)[-1]


def test_long_context_report_says_when_a_slow_path_beats_the_window(tmp_path):
  # Every local arm ends ~0.9 nats below what its stack's reach allows: shown beyond the window.
  text = long_context.render(numbers(reach_optimum=5.0), tmp_path).read_text()
  assert 'fastslow local − optimum of the last 31 tokens = -0.8833' in text
  assert 'end below what any predictor of the last 31 tokens can reach' in text
  assert 'No local arm is shown below it' not in text


def test_long_context_refuses_budgets_that_do_not_match_the_sources():
  with pytest.raises(long_context.UsageError, match='one per --data entry'):
    long_context.run(specs=['long_range'], budgets=[1, 2])


def test_long_context_overrides_reach_every_arm_but_not_its_window():
  runs = long_context.build_runs(
      specs=['long_range'], seeds=[0], budgets=[4096], seq_len=128, window=8, P=16, evals=1,
      overrides={'data.long_range_bits': 8, 'data.long_range_bias': 0.4,
                 'model.fast_window': 99})
  assert len(runs) == len(long_context.ARMS)
  for run in runs:
    assert (run.config.data.long_range_bits, run.config.data.long_range_bias) == (8, 0.4)
    assert run.config.model.fast_window == (8 if long_context.ARMS[run.label][2] else 0)
