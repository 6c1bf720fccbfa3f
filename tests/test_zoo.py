"""The zoo experiment: FLOP matching of the families, its report rendered from results alone,
and a miniature of the whole grid (slow)."""

import json

import jax
import pytest

from experiments import grid, report, stats, zoo
from fastslow_jax import models

pytestmark = pytest.mark.usefixtures('compilation_cache')

MINI = {'model.d_model': 32, 'model.num_layers': 2, 'model.num_heads': 2,
        'model.slow_num_heads': 2, 'model.mlp_dim': 64, 'model.phi_dim': 64, 'model.seq_len': 32,
        'model.compress_dim': 16, 'batch_size': 8, 'data.vocab_size': 16,
        'data.num_train_windows': 64, 'data.num_val_windows': 16, 'eval_batches': 2}


@pytest.mark.parametrize('size', ['cpu', 'tiny', 'small'])
def test_every_family_matches_dense_flops(size):
  dense = grid.make_config('dense', size=size, tokens=500_000)
  target = grid.training_flops(dense)
  for family in models.FAMILIES:
    raw = grid.make_config('coupled', size=size, tokens=500_000,
                             overrides={'model.family': family})
    matched = zoo.match_flops(raw, target)
    assert abs(grid.training_flops(matched) / target - 1) < zoo.FLOP_TOLERANCE, family
    assert matched.model.mlp_dim % zoo.MLP_MULTIPLE == 0
    # Matching only moves the MLP width, towards dense's FLOPs.
    assert (abs(grid.training_flops(matched) - target)
            <= abs(grid.training_flops(raw) - target) + 1e-6)
    assert {k: v for k, v in matched.model.items() if k != 'mlp_dim'} == {
        k: v for k, v in raw.model.items() if k != 'mlp_dim'}


def test_unreachable_flops_are_a_one_line_error():
  config = grid.make_config('coupled', size='tiny', tokens=500_000,
                              overrides={'model.family': 'hourglass'})
  with pytest.raises(ValueError, match='cannot match') as info:
    zoo.match_flops(config, target=grid.training_flops(config) * 0.1)
  assert '\n' not in str(info.value)


def _miniature(tmp_path, budgets):
  return zoo.run(
      name='mini', data_specs=['synthetic'], seeds=[0, 1], budgets=budgets, size='tiny', P=4,
      checkpoints=1, evals=1, timing_rounds=1, timing_steps=1, overrides={**MINI, 'log_every': 1},
      workdir_root=str(tmp_path / 'runs'), out_dir=str(tmp_path / 'report'),
      command='python -m experiments.zoo (miniature)', devices=jax.devices()[:1],
      log=lambda *_: None)


def _check_report(report, groups):
  text = report.read_text()
  for group in groups:
    assert f'## {group}' in text
  for name in ('dense', 'fastslow', 'hourglass', 'compressed'):
    assert text.count(f'| {name} | 2 |') == len(groups), name
  assert 'fastslow − hourglass' in text and 'Bayes-optimal loss' in text
  assert 'within noise' not in text and 'Welch' not in text
  for png in ('val_loss.png', 'loss_vs_budget.png'):
    assert (report.parent / png).stat().st_size > 1000 and f']({png})' in text
  numbers = json.loads((report.parent / 'results.json').read_text())
  assert sorted(numbers['summary']) == sorted(groups)
  assert all(len(numbers['comparisons'][g]) == 6 for g in groups)  # Every pair of four models.
  for group in numbers['summary'].values():
    dense = group['models']['dense']['flops']
    for x in group['models'].values():
      assert abs(x['flops'] / dense - 1) < zoo.FLOP_TOLERANCE
      assert len(x['val']) == 2 and all(v > 0 for v in x['val'])


@pytest.mark.slow
def test_zoo_miniature(tmp_path):
  """Every family and dense, two seeds, one budget: the report's tables, tests and plots."""
  _check_report(_miniature(tmp_path, [2 * 8 * 32]), ['synthetic/512'])


@pytest.mark.slow
def test_zoo_miniature_two_budgets(tmp_path):
  _check_report(_miniature(tmp_path, [2 * 8 * 32, 4 * 8 * 32]),
                ['synthetic/512', 'synthetic/1024'])


def _model(val, mlp_dim=384):
  return {'n': len(val), 'val': val, 'flops': 2e6, 'params': 300_000, 'mlp_dim': mlp_dim,
          'step_s': 0.05, 'rel_step': 1.0, 'bits_per_byte': None, 'gap': 0.4}


def zoo_numbers():
  """Two models per group and three seeds: compressed within 2e-4 of dense at 500k, hourglass
  0.05 nats above it at both budgets."""
  base, runs, summary = [3.84, 3.80, 3.91], [], {}
  for tokens, group in ((501_760, 'synthetic/500k'), (5_001_216, 'synthetic/5m')):
    vals = {'dense': base, 'compressed': [b + d for b, d in zip(base, (2e-4, -1e-4, 0.0))],
            'hourglass': [b + 0.05 + d for b, d in zip(base, (1e-3, 0.0, -1e-3))]}
    for name, values in vals.items():
      runs += [{'name': f'{group}/{name}-s{s}', 'group': group, 'arm': 'coupled', 'seed': s,
                'label': name, 'val_loss': v, 'wall_s': 1.0, 'train_s': 1.0, 'step_s': 0.05,
                'steps': tokens // 2048, 'tokens': tokens, 'gate': {}, 'share': {}}
               for s, v in enumerate(values)]
    summary[group] = {'models': {n: _model(v) for n, v in vals.items()}, 'optimum': 3.38,
                      'tokens': tokens, 'steps': tokens // 2048}
  return {'provenance': {'command': 'python -m experiments.zoo', 'date': '2026-01-01 00:00 UTC',
                         'trained_at': 'commit `abc1234`', 'device': '1 x cpu', 'cpu_cores': 2,
                         'took_s': 6.0},
          'config': json.loads(grid.make_config('dense').to_json_best_effort()),
          'root': 'workdirs/test', 'validation': {'synthetic': [512, 512]},
          'summary': summary, 'timing_notes': {}, 'runs': runs}


def test_zoo_report_renders_from_results_alone(tmp_path):
  """What --report_only does: every verdict from stats over the whole family, the budget plot
  redrawn, the curves (metrics.jsonl only) left out when absent; the same text twice."""
  path = zoo.render(zoo_numbers(), tmp_path)
  text = path.read_text()
  assert 'The report\'s 6 comparison(s) form one family' in text
  assert text.count('dense − compressed = ') == 2 and 'nats: equal (within ±0.01)' in text
  assert text.count('| dense − hourglass | 3 | -0.0500') == 2 and 'nats: different' in text
  assert 'lowest mean loss: dense' in text or 'lowest mean loss: compressed' in text
  assert 'all 512 windows (32 batches) for synthetic' in text
  assert '](loss_vs_budget.png)' in text and '](val_loss.png)' not in text
  numbers = report.load_results(tmp_path)
  verdicts = {n: c['verdict'] for n, c in numbers['comparisons']['synthetic/5m'].items()}
  assert verdicts == {'dense − compressed': stats.EQUAL, 'dense − hourglass': stats.DIFFERENT,
                      'hourglass − compressed': stats.DIFFERENT}
  again = zoo.render(numbers, tmp_path, rerendered=True).read_text()
  assert again.split('\n', 8)[-1] == text.split('\n', 8)[-1]
