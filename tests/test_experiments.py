"""The experiments' house: configs from a budget, the timing harness's order, reports rendered
from results alone (what --report_only does), and miniatures of every experiment (tiny model, a
few steps; slow) so that none of them can rot.

A miniature runs the experiment's `run` function, as its command does, into tmp_path on one
device and checks that the report and its plots exist with the expected sections and numbers;
each command line itself is started once, with a flag out of range.
"""

import json
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import equilibrium, grid, p_sweep, paper_500k, report, stats, timing
from fastslow_jax.data import ctmc
from fastslow_jax.errors import UsageError

ROOT = pathlib.Path(__file__).resolve().parents[1]

MINI = {'model.d_model': 32, 'model.num_layers': 1, 'model.num_heads': 2,
        'model.slow_num_heads': 2, 'model.mlp_dim': 64, 'model.phi_dim': 64, 'model.seq_len': 32,
        'batch_size': 8, 'data.vocab_size': 16, 'data.num_train_windows': 64,
        'data.num_val_windows': 16, 'eval_batches': 2}
PROVENANCE = {'command': 'python -m experiments.x', 'date': '2026-01-01 00:00 UTC',
              'trained_at': 'commit `abc1234`', 'device': '1 x cpu', 'cpu_cores': 2,
              'took_s': 60.0}


def one_device():
  return jax.devices()[:1]


def assert_pngs(report_path, names):
  text = report_path.read_text()
  for name in names:
    assert (report_path.parent / name).stat().st_size > 1000, name
    assert f']({name})' in text, name


def test_helpers():
  assert grid.parse_tokens('500k') == 500_000 and grid.parse_tokens('10M') == 10**7
  assert grid.tokens_label(500_000) == '500k' and grid.tokens_label(10**7) == '10m'
  assert grid.parse_overrides('a.b=1,c=x') == {'a.b': 1, 'c': 'x'}
  with pytest.raises(UsageError, match='token budget') as info:
    grid.parse_tokens('lots')
  assert '\n' not in str(info.value)
  config = grid.make_config('coupled', size='cpu', tokens=500_000)
  assert config.total_steps == 245 and config.model.d_model == 96  # ceil(500k / (16 * 128)).
  assert (config.optim.warmup_steps, config.eval_every, config.eval_batches) == (24, 49, 32)
  explicit = grid.make_config('coupled', size='cpu', overrides={'eval_batches': 3})
  assert explicit.eval_batches == 3


def test_headroom_sentence_says_whether_the_regime_is_within_reach():
  h = {'whole_past': 3.50, 'regime_blind': 3.60, 'last_block': {'16': 3.55}}
  above = report.headroom_reached(h, {'dense': 3.63, 'coupled': 3.62})
  assert 'the best, coupled, by 0.0200 nats' in above and '0.0500 nats' in above
  below = report.headroom_reached(h, {'dense': 3.58})
  assert below.startswith('The best model (dense) ends 0.0200 nats below') and '0.0800' in below
  assert report.headroom_reached(None, {'dense': 3.6}) == ''


def test_ctmc_source_is_exact():
  source = ctmc.CTMCSource(6, levels=8, seed=3)
  for y in (0.0, 0.4, 1.0):
    Q = source.Q(y)
    assert np.all(Q - np.diag(np.diag(Q)) >= 0) and np.allclose(Q.sum(1), 0)
    p = source.stationary(y)
    assert np.allclose(p @ Q, 0, atol=1e-12) and np.isclose(p.sum(), 1)
  assert np.allclose(source.p_st[3] @ source.M[3], source.p_st[3])  # Stationary for expm(Q) too.
  tokens, level = source.sample(np.random.default_rng(0), 4, 50)
  assert tokens.shape == level.shape == (4, 50) and tokens.max() < 6 and level.max() <= 8


def test_round_robin_rotates_the_order_and_skips_warm_up():
  order = []

  class Member(timing.Timed):
    def __init__(self, name):
      self.name, self.times, self.calls = name, [], 1
    def call(self):
      order.append(self.name)
      return 0

  members = [Member(n) for n in 'abc']
  timing.round_robin(members, rounds=3, warmup=1)
  assert ''.join(order) == 'abc' + 'bca' + 'cab' + 'abc'
  assert [len(m.times) for m in members] == [3, 3, 3]


def test_report_only_needs_results(tmp_path):
  with pytest.raises(UsageError, match='--report_only needs') as info:
    report.load_results(tmp_path)
  assert '\n' not in str(info.value)


# --------------------------------------------------------------------------- rendering


def _run(group, arm, seed, val, **extra):
  return {'name': f'{group}/{arm}-s{seed}', 'group': group, 'arm': arm, 'seed': seed,
          'label': extra.pop('label', ''), 'val_loss': val, 'wall_s': 10.0, 'train_s': 8.0,
          'step_s': 0.05, 'steps': 245, 'tokens': 501_760, 'gate': extra.pop('gate', {}),
          'share': extra.pop('share', {}), **extra}


def paper_numbers():
  """Four arms, four seeds: gate_frozen is dense exactly, coupled within 1e-4 of it (equal),
  slow_frozen 0.05 nats above (different)."""
  base = [3.84, 3.80, 3.91, 3.77]
  noise = [1e-4, -1e-4, 0.0, 5e-5]
  gated = {'gate': {'layer_0': 0.02}, 'share': {'245': {'layer_0': 0.01}}}
  runs = []
  for seed, b in enumerate(base):
    runs += [_run('synthetic', 'dense', seed, b), _run('synthetic', 'gate_frozen', seed, b),
             _run('synthetic', 'coupled', seed, b + noise[seed], **gated),
             _run('synthetic', 'slow_frozen', seed, b + 0.05 + noise[seed], **gated)]
  bench = {'synthetic': {'dense': 0.100, 'coupled': 0.103, 'gate_frozen': 0.1,
                         'slow_frozen': 0.1}}
  return {'title': 'Ablation grid (test)', 'provenance': PROVENANCE,
          'config': json.loads(grid.make_config('dense').to_json_best_effort()),
          'params': {'synthetic': {'vocab_size': 64, 'dense': 1000, 'coupled': 2000}},
          'validation': {'synthetic': [512, 512]}, 'root': 'workdirs/test',
          'summary': paper_500k.summarise(runs, ['synthetic'], bench),
          'optima': {'synthetic': 3.38}, 'timing_notes': {}, 'runs': runs}


def rerender(module, out: pathlib.Path) -> str:
  """The report again from its results.json (what --report_only does), header aside."""
  module.render(report.load_results(out), out, rerendered=True)
  return (out / 'report.md').read_text().split('\n', 8)[-1]


def test_paper_report_takes_its_words_from_stats(tmp_path):
  path = paper_500k.render(paper_numbers(), tmp_path)
  text = path.read_text()
  assert 'trained at commit `abc1234`' in text and 'Report written' in text
  assert 'Coupled − gate_frozen = ' in text and 'nats: equal (within ±0.01)' in text
  assert re.search(r'Coupled − slow_frozen = -0\.0500 \[.*\] nats: different', text)
  assert "the paper's claim does not hold at 501,760 tokens** (fails: coupled = frozen)" in text
  assert 'within noise' not in text and 'Welch' not in text
  assert '| gate_frozen − dense | 4 | +0.0000 [+0.0000, +0.0000] |' in text
  assert 'all 512 windows (32 batches) for synthetic' in text
  numbers = json.loads((tmp_path / 'results.json').read_text())
  assert numbers['comparisons']['synthetic']['coupled − slow_frozen']['verdict'] == stats.DIFFERENT
  assert_pngs(path, ['slow_share.png'])
  assert 'val_loss.png' not in text  # Drawn from metrics.jsonl only: absent here, not linked.
  assert rerender(paper_500k, tmp_path) == text.split('\n', 8)[-1]


def test_paper_report_without_frozen_arms_names_only_the_arms_it_ran(tmp_path):
  numbers = paper_numbers()
  numbers['runs'] = [r for r in numbers['runs'] if r['arm'] in ('dense', 'coupled')]
  numbers['summary'] = paper_500k.summarise(numbers['runs'], ['synthetic'])
  text = paper_500k.render(numbers, tmp_path).read_text()
  assert 'frozen' not in text.split('## Runs')[0]
  assert 'Coupled − dense = ' in text and "the paper's claim holds" in text


def sweep_numbers():
  runs = []
  for seed, base in enumerate([3.849, 3.842, 3.846]):
    config = json.loads(grid.make_config('dense', P=4, overrides=p_sweep.DEFAULT_SET)
                        .to_json_best_effort())
    runs.append(_run('synthetic', 'dense', seed, base, label='dense', config=config))
    for P, shift in ((4, 0.0001 * (seed - 1)), (8, 0.03 + 0.001 * seed)):
      config = json.loads(grid.make_config('coupled', P=P, overrides=p_sweep.DEFAULT_SET)
                          .to_json_best_effort())
      runs.append(_run('synthetic', 'coupled', seed, base + shift, label=f'P={P}',
                       config=config, gate={'layer_0': 0.01}, share={'1': {'layer_0': 0.01}}))
  summary = p_sweep.summarise(runs, [4, 8])
  return {'title': 'P sweep (test)', 'provenance': PROVENANCE, 'config': runs[0]['config'],
          'validation': [256, 512], 'root': 'workdirs/test', 'summary': summary,
          'optimum': 3.38, 'timing_note': '', 'runs': grid.without_configs(runs)}


def test_p_sweep_report_and_its_quality_plot(tmp_path):
  path = p_sweep.render(sweep_numbers(), tmp_path)
  text = path.read_text()
  assert 'equal to dense at P in {4}' in text and 'different to dense at P in {8}' in text
  assert '| P=8 − dense | 3 |' in text and 'the first 256 of 512 validation windows' in text
  assert_pngs(path, ['quality_vs_P.png', 'step_time_vs_P.png'])
  assert rerender(p_sweep, tmp_path) == text.split('\n', 8)[-1]


def test_equilibrium_report_calls_one_seed_undetermined(tmp_path):
  curve = lambda tv: [{'step': s, 'val_loss': 2.0, 'gate': {'layer_0': 0.0},
                       'tv': {'phi_0': tv + s * 1e-4, 'pooled_0': 0.1}} for s in (0, 10)]
  base = {'uniform': 0.5, 'best constant': 0.2, 'block histogram': 0.3,
          'histogram read-out': 0.09, 'drift floor': 0.01}
  numbers = {
      'provenance': PROVENANCE, 'probe_windows': 8, 'root': 'workdirs/test',
      'config': json.loads(grid.make_config('coupled', overrides=equilibrium.DEFAULT_SET)
                           .to_json_best_effort()),
      'source': {'V': 16, 'low': 384.0, 'high': 1536.0, 'levels': 257, 'tau': 1.78,
                 'tv_range': 0.5},
      'P': [{'P': P, 'steps': 10, 'tokens': 20480, 'oracle_loss': 1.9, 'baselines': base,
             'curve': curve(tv), 'train_s': 1.0, 'wall_s': 2.0}
            for P, tv in ((4, 0.08), (8, 0.07))]}
  text = equilibrium.render(numbers, tmp_path).read_text()
  assert equilibrium.ONE_SEED in text and stats.UNDETERMINED in text
  assert 'is lower than the same read-out applied' in text and 'beats' not in text
  assert rerender(equilibrium, tmp_path) == text.split('\n', 8)[-1]


# --------------------------------------------------------------------------- command lines


@pytest.mark.parametrize('name,bad_flag', [
    ('paper_500k', '--checkpoints=0'), ('p_sweep', '--timing_rounds=-1'),
    ('equilibrium', '--probes=1'), ('bench', '--steps=0'), ('data_bench', '--large_mb=0')])
def test_command_line_refuses_a_flag_out_of_range(name, bad_flag):
  """Each experiment's command defines its flags in define_flags with ranges (the entry-point
  rule) and refuses a value outside one in a line on stderr, exit status 2, before anything
  runs."""
  result = subprocess.run([sys.executable, '-m', f'experiments.{name}', bad_flag], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith(f'error: flag {bad_flag}: '), lines


# --------------------------------------------------------------------------- miniatures


@pytest.mark.slow
def test_paper_grid_miniature(tmp_path):
  report_path = paper_500k.run(
      name='mini', data_specs=['synthetic'], arms=['coupled', 'gate_frozen'], seeds=[0, 1],
      tokens=8 * 32 * 4, size='tiny', checkpoints=1, timing_rounds=1, timing_steps=1,
      overrides=MINI,
      workdir_root=str(tmp_path / 'runs'), out_dir=str(tmp_path / 'report'),
      command='python -m experiments.paper_500k --mini', devices=one_device(), log=lambda s: None)
  text = report_path.read_text()
  assert text.startswith('# Ablation grid')
  assert 'python -m experiments.paper_500k --mini' in text and 'trained at commit `' in text
  for section in ('## Verdict', '## synthetic', 'coupled − gate_frozen', 'TOST', 'vs dense'):
    assert section in text, section
  assert re.search(r'\| coupled \| 2 \| \d\.\d{4} ± \d\.\d{4} \|', text)
  assert_pngs(report_path, ['val_loss.png', 'gates.png', 'slow_share.png'])
  runs = json.loads((report_path.parent / 'results.json').read_text())['runs']
  assert all(r['commit'] for r in runs)  # Each run records the commit it was trained at.


@pytest.mark.slow
def test_p_sweep_miniature(tmp_path):
  report_path = p_sweep.run(
      Ps=[4, 8], seeds=[0], tokens=8 * 32 * 3, size='tiny', dense=False, timing_rounds=1,
      timing_steps=1, overrides=MINI,
      workdir_root=str(tmp_path / 'runs'), out_dir=str(tmp_path / 'report'), command='mini',
      devices=one_device(), log=lambda s: None)
  text = report_path.read_text()
  for section in ('## Conclusion', 'The lowest mean loss is at P=', '## Results',
                  '| 4 | 0.2500 |', '| 8 | 0.1250 |'):
    assert section in text, section
  assert_pngs(report_path, ['quality_vs_P.png', 'step_time_vs_P.png'])


@pytest.mark.slow
def test_equilibrium_miniature(tmp_path):
  overrides = {k: v for k, v in MINI.items() if not k.startswith('data.')}
  report_path = equilibrium.run(
      Ps=[4, 8], tokens=8 * 32 * 3, size='tiny', probes=2, probe_windows=8,
      source_kwargs={'vocab_size': 16, 'levels': 16}, overrides=overrides,
      workdir_root=str(tmp_path / 'runs'), out_dir=str(tmp_path / 'report'), command='mini',
      devices=one_device(), log=lambda s: None)
  text = report_path.read_text()
  for section in ('## Conclusion', 'read-out from phi_theta reaches a mean TV',
                  '## Where the trained network departs from the theorem', 'not a linear generator',
                  '## Results (final probe)', 'drift floor'):
    assert section in text, section
  assert re.search(r'\| 4 \| 0\.2500 \| 8 \| 0\.\d{3} \|', text)
  assert_pngs(report_path, ['tv_vs_training.png', 'tv_vs_P.png'])
