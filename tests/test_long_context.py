"""Long context: the long-range synthetic source (exact optima with the whole past and with the last
w tokens), the loss by position in the context that `evaluate` reports, and a windowed model
trained and evaluated by config on one device and on eight."""

import itertools
import json

import jax
import numpy as np
import pytest

from conftest import tiny_config
from fastslow_jax import configlib, data, evaluate, metrics, train
from fastslow_jax.data import long_range


def brute_force_log_prob(source: long_range.LongRangeSource, row, t: int, window) -> float:
  """log p(x_{t+1} | context) summed over every code: the definition the exact optima keep."""
  first = 0 if window is None else max(0, t - window + 1)
  code_p = lambda c, code: (0.5 + source.bias * (2 * code[c // 2 % source.M] - 1)
                            * (2 * (c % 2) - 1)) / source.M
  num = den = 0.0
  for code in itertools.product([0, 1], repeat=source.M):
    p = np.prod([code_p(row[s] % (2 * source.M), code) for s in range(first, t + 1)])
    den, num = den + p, num + p * code_p(row[t + 1] % (2 * source.M), code)
  a, b = row[t] // (2 * source.M), row[t + 1] // (2 * source.M)
  return float(np.log(num / den) + np.log(source.chain[a, b]))


def test_long_range_optima_are_exact():
  source = long_range.LongRangeSource(symbols=3, bits=2, bias=0.3, concentration=0.5, seed=1)
  tokens, _ = source.sample(np.arange(4), 12, 'train')
  for window in (None, 1, 3):
    got = source.optimal_log_probs(tokens, window)
    want = [[brute_force_log_prob(source, row, t, window) for t in range(11)] for row in tokens]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=f'window={window}')


def test_long_range_optimum_keeps_falling_beyond_a_window():
  """By config: the default source's optimum at T=512 gains over a 64-token context in nats that
  a model could measure, and keeps falling over positions well beyond 64."""
  config = configlib.load('fastslow:size=tiny', {'data.kind': 'long_range'})
  source = data.source(config.data)
  assert source.vocab_size == 8 * 2 * 32 and source.open('train', seq_len=64)[3].shape == (65,)
  whole, local = (source.bayes_optimal_ce_per_position(seq_len=512, num_windows=64, window=w)
                  for w in (None, 64))
  assert local.mean() - whole.mean() > 0.03
  assert whole[64:128].mean() - whole[384:512].mean() > 0.02  # Still falling past 64.
  np.testing.assert_allclose(local[:64], whole[:64])  # The same context there.


def test_long_range_windows_are_random_access():
  source = long_range.source_for(8, 4, 0.25, 0.3, 7)
  some, _ = source.sample([5, 2], 40, 'validation')
  many, _ = source.sample(np.arange(8), 40, 'validation')
  np.testing.assert_array_equal(some, many[[5, 2]])
  assert not np.array_equal(many, source.sample(np.arange(8), 40, 'train')[0])


def test_evaluate_reports_the_loss_by_position(trained_copy):
  """Buckets of positions cover the window, their mean weighted by size is the loss, and the
  synthetic source's optimum comes by bucket too; the plot is written beside the result."""
  out = evaluate.evaluate(trained_copy, devices=jax.devices()[:1], mesh='1,1,1')
  curve = out['loss_by_position']
  assert curve['buckets'] == [[0, 16], [16, 32]]  # T = 32.
  sizes = [hi - lo for lo, hi in curve['buckets']]
  np.testing.assert_allclose(np.dot(sizes, curve['loss']) / 32, out['loss'], rtol=1e-6)
  np.testing.assert_allclose(np.dot(sizes, curve['optimum']) / 32, out['bayes_optimal_loss'])
  assert (trained_copy / 'eval_validation_6_positions.png').stat().st_size > 1000
  assert evaluate.position_buckets(2048)[-3:] == [(256, 512), (512, 1024), (1024, 2048)]


def windowed_run(**overrides):
  """The suite's tiny model with a window of 8 on the long-range source."""
  return tiny_config(**{'data.kind': 'long_range', 'data.long_range_bits': 4,
                        'model.fast_window': 8, **overrides})


def test_a_windowed_model_trains_and_evaluates_on_the_long_range_source(tmp_path):
  train.train(windowed_run(**{'mesh.data': 1, 'total_steps': 2, 'eval_every': 2}), tmp_path,
              devices=jax.devices()[:1])
  out = evaluate.evaluate(tmp_path, devices=jax.devices()[:1], mesh='1,1,1', plot=False)
  curve = out['loss_by_position']
  assert out['fast_window'] == 8 and len(curve['optimum_window']) == len(curve['buckets'])
  assert all(w >= o - 1e-12 for w, o in zip(curve['optimum_window'], curve['optimum']))
  assert json.loads((tmp_path / 'config.json').read_text())['model']['fast_window'] == 8


@pytest.mark.slow  # Sharded training of the plain model: tests/test_train.py.
def test_windowed_sharded_training_matches_one_device(tmp_path):
  one, eight = tmp_path / 'one', tmp_path / 'eight'
  train.train(windowed_run(**{'mesh.data': 1}), one, devices=jax.devices()[:1])
  train.train(windowed_run(**{'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2}), eight)
  losses = lambda run: [r['loss'] for r in metrics.read_jsonl(run / 'metrics.jsonl') if 'loss' in r]
  assert len(losses(one)) == 6
  np.testing.assert_allclose(losses(eight), losses(one), rtol=2e-5)
