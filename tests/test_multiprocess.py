"""A real multi-process run: 2 processes x 4 CPU devices through launch/local.sh (gloo)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from fastslow_jax import configlib, data, evaluate, metrics, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'configs' / 'fastslow.py'
OVERRIDES = {'total_steps': 4, 'log_every': 1, 'eval_every': 2, 'eval_batches': 2,
             'checkpoint_every': 2, 'model.seq_len': 32, 'data.num_train_windows': 256,
             'data.num_val_windows': 64}


def records(workdir):
  return metrics.read_jsonl(pathlib.Path(workdir) / 'metrics.jsonl')


def losses(workdir):
  return {r['step']: r['loss'] for r in records(workdir) if 'loss' in r}


@pytest.mark.slow  # Sharded training equals one device: tests/test_train.py.
def test_two_processes_train_like_one_and_their_checkpoint_moves(tmp_path):
  # 2 processes x 4 devices: steps 1-2 of a 4-step schedule, checkpointed at step 2. The data
  # axis spans the two processes as it would span TPU slices over DCN (mesh.dcn_data=2).
  multi = tmp_path / 'multi'
  command = [sys.executable, '-m', 'fastslow_jax.train', f'--config={CONFIG}:arm=coupled,size=tiny',
             f'--workdir={multi}', '--stop_at_step=2', '--config.mesh.dcn_data=2',
             *(f'--config.{k}={v}' for k, v in OVERRIDES.items())]
  run = subprocess.run(['bash', str(ROOT / 'launch' / 'local.sh'), '-n', '2', '-d', '4',
                        '-l', str(tmp_path / 'logs'), '--', *command], cwd=ROOT,
                       env={**os.environ, 'CI': 'true'}, capture_output=True, text=True,
                       timeout=600)
  assert run.returncode == 0, run.stderr[-3000:] + (tmp_path / 'logs' / 'process_1.log').read_text()[-3000:]
  data_state = multi / 'checkpoints' / '2' / 'data'
  positions = [json.loads((data_state / f'process_{i}-of-2.json').read_text()) for i in range(2)]
  assert positions == [{'next_index': 2}] * 2  # Each process kept its own iterator state.

  # The same schedule in one process with 8 devices, unbroken.
  config = configlib.load(f'{CONFIG}:arm=coupled,size=tiny', OVERRIDES)
  single = tmp_path / 'single'
  train.train(config, single)
  expected = losses(single)

  # Another global batch cannot take over the 2-process data position: refused, nothing changed.
  bigger = configlib.load(f'{CONFIG}:arm=coupled,size=tiny', {**OVERRIDES, 'batch_size': 32})
  saved_config = (multi / 'config.json').read_text()
  with pytest.raises(ValueError, match='batch_size=16 on 2 processes'):
    train.train(bigger, multi)
  assert (multi / 'config.json').read_text() == saved_config

  # One process resumes the 2-process checkpoint (the data position is re-sharded) to the end.
  train.train(config, multi)
  got = losses(multi)
  assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
  np.testing.assert_allclose([got[s] for s in range(1, 5)], [expected[s] for s in range(1, 5)],
                             rtol=2e-5)

  # A single process evaluates the 2-process checkpoint: the loss the 2 processes measured.
  val_at_2 = [r['val_loss'] for r in records(multi) if r['step'] == 2 and 'val_loss' in r][0]
  np.testing.assert_allclose(evaluate.evaluate(multi, step=2)['loss'], val_at_2, rtol=1e-5)


def test_process_shards_are_disjoint():
  """What each of 2 processes reads in training: disjoint windows, together the global batch."""
  config = configlib.load(f'{CONFIG}:arm=coupled,size=tiny', OVERRIDES)
  ds = data.make_dataset(config.data, seq_len=32, split='train')
  shards = [data.make_iterator(ds, batch_size=8, seed=0, shard_index=i, shard_count=2)
            for i in range(2)]
  whole = data.make_iterator(ds, batch_size=16, seed=0)
  for _ in range(4):
    a, b, both = next(shards[0]), next(shards[1]), next(whole)
    assert not {w.tobytes() for w in a} & {w.tobytes() for w in b}
    assert {w.tobytes() for w in a} | {w.tobytes() for w in b} == {w.tobytes() for w in both}
