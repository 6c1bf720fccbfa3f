"""The zoo experiment: FLOP matching of the families, and a miniature of the whole grid."""

import json

import jax
import pytest

from experiments import common, zoo
from fastslow_jax import models

pytestmark = pytest.mark.usefixtures('compilation_cache')

MINI = {'model.d_model': 32, 'model.num_layers': 2, 'model.num_heads': 2,
        'model.slow_num_heads': 2, 'model.mlp_dim': 64, 'model.phi_dim': 64, 'model.seq_len': 32,
        'model.compress_dim': 16, 'batch_size': 8, 'data.vocab_size': 16,
        'data.num_train_windows': 64, 'data.num_val_windows': 16, 'eval_batches': 2}


@pytest.mark.parametrize('size', ['cpu', 'tiny', 'small'])
def test_every_family_matches_dense_flops(size):
  dense = common.make_config('dense', size=size, tokens=500_000)
  target = zoo.training_flops(dense)
  for family in models.FAMILIES:
    raw = common.make_config('coupled', size=size, tokens=500_000,
                             overrides={'model.family': family})
    matched = zoo.match_flops(raw, target)
    assert abs(zoo.training_flops(matched) / target - 1) < zoo.FLOP_TOLERANCE, family
    assert matched.model.mlp_dim % zoo.MLP_MULTIPLE == 0
    # Matching only moves the MLP width, towards dense's FLOPs.
    assert (abs(zoo.training_flops(matched) - target)
            <= abs(zoo.training_flops(raw) - target) + 1e-6)
    assert {k: v for k, v in matched.model.items() if k != 'mlp_dim'} == {
        k: v for k, v in raw.model.items() if k != 'mlp_dim'}


def test_unreachable_flops_are_a_one_line_error():
  config = common.make_config('coupled', size='tiny', tokens=500_000,
                              overrides={'model.family': 'hourglass'})
  with pytest.raises(ValueError, match='cannot match') as info:
    zoo.match_flops(config, target=zoo.training_flops(config) * 0.1)
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
  for png in ('val_loss.png', 'loss_vs_budget.png'):
    assert (report.parent / png).stat().st_size > 1000 and f']({png})' in text
  numbers = json.loads((report.parent / 'results.json').read_text())['summary']
  assert sorted(numbers) == sorted(groups)
  for group in numbers.values():
    dense = group['models']['dense']['flops']
    for x in group['models'].values():
      assert abs(x['flops'] / dense - 1) < zoo.FLOP_TOLERANCE
      assert len(x['val']) == 2 and all(v > 0 for v in x['val'])
    assert len(group['tests']) == 6  # Every pair of the four models.


def test_zoo_miniature(tmp_path):
  """Every family and dense, two seeds, one budget: the report's tables, tests and plots."""
  _check_report(_miniature(tmp_path, [2 * 8 * 32]), ['synthetic/512'])


@pytest.mark.slow
def test_zoo_miniature_two_budgets(tmp_path):
  _check_report(_miniature(tmp_path, [2 * 8 * 32, 4 * 8 * 32]),
                ['synthetic/512', 'synthetic/1024'])
