"""Every family through every tool: sharded training equals one device, checkpoints restore for
evaluation onto another mesh, the frozen arms hold their parameters, generation from a run.

The model-level properties (causality, gate 0 == dense, decoding == parallel, scan parity, FLOPs
against XLA) are in test_models, test_generate, test_scan and test_flops, parametrized over the
families; this file runs them through `train`, `evaluate` and `generate` on 8 simulated devices.
"""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from fastslow_jax import configlib, evaluate, generate, metrics, models, restoring, runtime, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
NEW_FAMILIES = [f for f in models.FAMILIES if f != 'fastslow']  # fastslow: test_train.py.


def family_config(family: str, arm: str = 'coupled', **overrides):
  """A 6-step run of the tiny size, shrunk further, of `family` and `arm`."""
  config = configlib.load(f'{ROOT}/configs/fastslow.py:family={family},arm={arm},size=tiny,P=4', {
      'model.seq_len': 32, 'model.d_model': 32, 'model.mlp_dim': 64, 'model.num_heads': 2,
      'model.compress_dim': 16, 'batch_size': 16, 'total_steps': 6, 'log_every': 1,
      'eval_every': 3, 'eval_batches': 2, 'checkpoint_every': 3, 'data.num_train_windows': 256,
      'data.num_val_windows': 64, 'optim.warmup_steps': 2, 'optim.lr': 1e-2, **overrides})
  return config


def losses(workdir) -> list[float]:
  records = metrics.read_jsonl(pathlib.Path(workdir) / 'metrics.jsonl')
  return [r['loss'] for r in records if 'loss' in r]


@pytest.mark.slow  # The fastslow family's: tests/test_train.py.
@pytest.mark.parametrize('family', NEW_FAMILIES)
def test_sharded_training_matches_one_device_and_evaluates_anywhere(family, tmp_path):
  one, sharded = tmp_path / 'one', tmp_path / 'sharded'
  train.train(family_config(family, **{'mesh.data': 1}), one, devices=jax.devices()[:1])
  train.train(family_config(family, **{'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2}),
              sharded)
  assert len(losses(one)) == 6
  # Different reduction orders across shards: equal to float32 round-off, not bitwise.
  np.testing.assert_allclose(losses(sharded), losses(one), rtol=2e-5)
  # The sharded run's checkpoint restores onto another mesh (parameters only) and scores as the
  # one-device run's does.
  here = evaluate.evaluate(str(sharded), mesh='1,-1,1')
  there = evaluate.evaluate(str(one), mesh='1,1,1', devices=jax.devices()[:1])
  assert here['step'] == there['step'] == 6
  np.testing.assert_allclose(here['loss'], there['loss'], rtol=2e-5)


@pytest.mark.slow  # The fastslow family's: tests/test_train.py.
@pytest.mark.parametrize('family,arm', [('hourglass', 'slow_frozen'), ('compressed', 'slow_frozen'),
                                        ('compressed', 'gate_frozen')])
def test_frozen_arms_hold_their_parameters_through_train(family, arm, tmp_path):
  config = runtime.resolve_config(family_config(family, arm, **{'mesh.data': 1}), num_devices=1)
  setup = runtime.TrainSetup(config, jax.devices()[:1])
  before = {p: np.asarray(v) for p, v in nnx.to_flat_state(setup.init_state().params)}
  train.train(config, tmp_path, devices=jax.devices()[:1])
  after = restoring.restore(str(tmp_path), devices=jax.devices()[:1]).params
  role = models.SlowParam if arm == 'slow_frozen' else models.Gate
  held = {p for p, _ in nnx.to_flat_state(nnx.filter_state(after, role))}
  moved = {p: not np.array_equal(np.asarray(v), before[p]) for p, v in nnx.to_flat_state(after)}
  assert held
  for path, changed in moved.items():
    assert changed != (path in held), path  # Frozen ones stay; everything else trains.


@pytest.mark.slow  # Decoding == the parallel forward per family: tests/test_generate.py.
@pytest.mark.parametrize('family', NEW_FAMILIES)
def test_generate_from_a_trained_run(family, tmp_path):
  """The restored model decodes (through its caches) exactly what its parallel forward says."""
  train.train(family_config(family, **{'mesh.data': 1, 'total_steps': 3}), tmp_path,
              devices=jax.devices()[:1])
  model = restoring.restore(str(tmp_path), devices=jax.devices()[:1]).model()
  prompt = [3, 1, 4, 1, 5]
  new, seen = generate.generate(model, [prompt], max_new_tokens=8, return_logits=True)
  full = np.asarray(model(np.asarray([prompt + new[0]], np.int32)))[0]
  np.testing.assert_allclose(seen[0], full[len(prompt) - 1:-1], atol=1e-5, rtol=1e-5)
  assert new[0] == list(np.argmax(full[len(prompt) - 1:-1], -1))


def test_logical_rules_shard_the_families_parameters():
  """The default rules place the new parameters too: the compressed gate and block MLPs by
  heads / replicated, the hourglass's learned resampling by embed (FSDP) and mlp (tensor)."""
  specs = {}
  for family, extra in (('compressed', {}), ('hourglass', {'model.hourglass_pool': 'linear',
                                                          'model.hourglass_upsample': 'linear'})):
    config = runtime.resolve_config(family_config(family, **{
        'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2, **extra}))
    setup = runtime.ModelSetup(config)
    specs.update({path: s.spec for path, s in nnx.to_flat_state(setup.params_sharding)})
  P = jax.sharding.PartitionSpec
  assert specs[('blocks', 0, 'gate')] == P('tensor')
  assert specs[('blocks', 0, 'slow', 'compress_k', 'w_in')] == P(None, None, None)
  assert specs[('slow', 'pool')] == P(None, 'fsdp', 'tensor')
  assert specs[('slow', 'upsample')] == P('tensor', None, 'fsdp')
