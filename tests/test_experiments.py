"""Miniatures of every experiment (tiny model, a few steps), so that none of them can rot.

Each runs the experiment's `run` function, as its command does, into tmp_path on one device and
checks that the report and its plots exist with the expected sections and numbers; each command
line itself is started once, with a flag out of range.
"""

import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import common, equilibrium, p_sweep, paper_500k
from fastslow_jax.data import ctmc

ROOT = pathlib.Path(__file__).resolve().parents[1]

MINI = {'model.d_model': 32, 'model.num_layers': 1, 'model.num_heads': 2, 'model.slow_num_heads': 2, 'model.mlp_dim': 64,
        'model.phi_dim': 64, 'model.seq_len': 32, 'batch_size': 8, 'data.vocab_size': 16,
        'data.num_train_windows': 64, 'data.num_val_windows': 16, 'eval_batches': 2}


pytestmark = pytest.mark.usefixtures('compilation_cache')


def one_device():
  return jax.devices()[:1]


def assert_pngs(report, names):
  text = report.read_text()
  for name in names:
    assert (report.parent / name).stat().st_size > 1000, name
    assert f']({name})' in text, name


def test_helpers():
  assert common.parse_tokens('500k') == 500_000 and common.parse_tokens('10M') == 10**7
  assert common.tokens_label(500_000) == '500k' and common.tokens_label(10**7) == '10m'
  assert common.parse_overrides('a.b=1,c=x') == {'a.b': 1, 'c': 'x'}
  config = common.make_config('coupled', size='cpu', tokens=500_000)
  assert config.total_steps == 245 and config.model.d_model == 96  # ceil(500k / (16 * 128)).
  same = common.compare([1.0, 1.1, 0.9], [1.0, 1.1, 0.9])
  assert same['within_noise'] and same['diff'] == 0
  far = common.compare([1.0, 1.01, 0.99], [2.0, 2.01, 1.99])
  assert far['within_noise'] is False and far['p'] < 0.05
  assert common.compare([1.0], [2.0])['within_noise'] is None


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


@pytest.mark.parametrize('name,bad_flag', [
    ('paper_500k', '--checkpoints=0'), ('p_sweep', '--timing_rounds=-1'),
    ('equilibrium', '--probes=1')])
def test_command_line_refuses_a_flag_out_of_range(name, bad_flag):
  """Each experiment's command defines its flags with ranges (the entry-point rule) and refuses a
  value outside one in a line on stderr, exit status 2, before anything runs."""
  result = subprocess.run([sys.executable, '-m', f'experiments.{name}', bad_flag], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith(f'error: flag {bad_flag}: '), lines


def test_paper_grid_miniature(tmp_path):
  report = paper_500k.run(
      name='mini', data_specs=['synthetic'], arms=['coupled', 'gate_frozen'], seeds=[0, 1],
      tokens=8 * 32 * 4, size='tiny', checkpoints=1, timing_rounds=1, timing_steps=1,
      overrides=MINI,
      workdir_root=str(tmp_path / 'runs'), out_dir=str(tmp_path / 'report'),
      command='python -m experiments.paper_500k --mini', devices=one_device(), log=lambda s: None)
  text = report.read_text()
  assert text.startswith('# Ablation grid at 1.024k') or text.startswith('# Ablation grid')
  assert 'python -m experiments.paper_500k --mini' in text and 'commit `' in text
  for section in ('## Verdict', '## synthetic', 'coupled − gate_frozen', 'Welch', 'vs dense'):
    assert section in text, section
  assert re.search(r'\| coupled \| 2 \| \d\.\d{4} ± \d\.\d{4} \|', text)
  assert_pngs(report, ['val_loss.png', 'gates.png', 'slow_share.png'])
  assert (report.parent / 'results.json').exists()


def test_p_sweep_miniature(tmp_path):
  report = p_sweep.run(
      Ps=[4, 8], seeds=[0], tokens=8 * 32 * 3, size='tiny', dense=False, timing_rounds=1,
      timing_steps=1, overrides=MINI,
      workdir_root=str(tmp_path / 'runs'), out_dir=str(tmp_path / 'report'), command='mini',
      devices=one_device(), log=lambda s: None)
  text = report.read_text()
  for section in ('## Conclusion', 'The best P is', '## Results', '| 4 | 0.2500 |', '| 8 | 0.1250 |'):
    assert section in text, section
  assert_pngs(report, ['quality_vs_P.png', 'step_time_vs_P.png'])


def test_equilibrium_miniature(tmp_path):
  overrides = {k: v for k, v in MINI.items() if not k.startswith('data.')}
  report = equilibrium.run(
      Ps=[4, 8], tokens=8 * 32 * 3, size='tiny', probes=2, probe_windows=8,
      source_kwargs={'vocab_size': 16, 'levels': 16}, overrides=overrides,
      workdir_root=str(tmp_path / 'runs'), out_dir=str(tmp_path / 'report'), command='mini',
      devices=one_device(), log=lambda s: None)
  text = report.read_text()
  for section in ('## Conclusion', 'read-out from phi_theta reaches a mean TV',
                  '## Where the trained network departs from the theorem', 'not a linear generator',
                  '## Results (final probe)', 'drift floor'):
    assert section in text, section
  assert re.search(r'\| 4 \| 0\.2500 \| 8 \| 0\.\d{3} \|', text)
  assert_pngs(report, ['tv_vs_training.png', 'tv_vs_P.png'])
