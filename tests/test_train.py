"""The training pipeline on 8 simulated CPU devices: sharding, determinism, checkpoints, eval."""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import subprocess_env, tiny_config
from fastslow_jax import configlib, evaluate, metrics, models, runtime, train
from fastslow_jax.errors import NonFiniteError

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / 'configs' / 'fastslow.py')


def losses(workdir) -> dict[int, float]:
  return {r['step']: r['loss'] for r in metrics.read_jsonl(pathlib.Path(workdir) / 'metrics.jsonl')
          if 'loss' in r}


def assert_same_losses(run, reference):
  expected, got = losses(reference), losses(run)
  assert sorted(got) == list(range(1, 7))
  # Different reduction orders across shards: equal to float32 round-off, not bitwise.
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=2e-5)


def test_sharded_training_matches_one_device(sharded_run, one_device_run):
  """data x fsdp x tensor = 2 x 2 x 2 trains like one device."""
  assert_same_losses(sharded_run, one_device_run)


@pytest.mark.slow
@pytest.mark.parametrize('mesh', [(8, 1, 1), (1, 4, 2)])
def test_sharded_training_matches_one_device_on_other_meshes(mesh, one_device_run, tmp_path):
  data, fsdp, tensor = mesh
  train.train(tiny_config(**{'mesh.data': data, 'mesh.fsdp': fsdp, 'mesh.tensor': tensor}),
              tmp_path)
  assert_same_losses(tmp_path, one_device_run)


def test_parameters_are_sharded(sharded_run):
  del sharded_run  # Has compiled the init of this mesh into the session's cache.
  config = tiny_config(**{'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2})
  setup = runtime.TrainSetup(runtime.resolve_config(config))
  state = setup.init_state()
  wq = state.params['blocks'][0]['fast']['wq'][...]  # [embed, heads, kv] -> (fsdp, tensor, -)
  assert wq.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor', None)
  shard_shape = wq.addressable_shards[0].data.shape
  assert shard_shape == (wq.shape[0] // 2, wq.shape[1] // 2, wq.shape[2])
  # Optimizer moments follow their parameters.
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.shape == wq.shape]
  assert len(moments) >= 2 and all(x.sharding.spec == wq.sharding.spec for x in moments)


def test_same_seed_same_losses_and_resume_matches(one_device_run, tmp_path):
  """Stop after step 3 (checkpointed), rerun the same command: losses equal an unbroken run."""
  config = tiny_config(**{'mesh.data': 1})
  train.train(config, tmp_path, devices=jax.devices()[:1], stop_at_step=3)
  assert sorted(losses(tmp_path)) == [1, 2, 3]
  train.train(config, tmp_path, devices=jax.devices()[:1])
  assert losses(tmp_path) == losses(one_device_run)  # Bitwise: same program, same data.


def test_evaluate_on_another_mesh_gives_same_loss(trained_copy):
  one = evaluate.evaluate(trained_copy, devices=jax.devices()[:1], mesh='1,1,1')
  eight = evaluate.evaluate(trained_copy, mesh='2,2,2')
  assert one['step'] == eight['step'] == 6
  np.testing.assert_allclose(eight['loss'], one['loss'], rtol=1e-5)
  assert one['tokens'] == eight['tokens'] > 0
  assert 0 < one['bayes_optimal_loss'] < one['loss']
  assert set(one['gate']) == {'layer_0', 'layer_1'}
  written = json.loads((trained_copy / 'eval_validation_6.json').read_text())
  assert written['step'] == 6


@pytest.mark.slow
def test_gradient_accumulation_matches_one_big_batch(tmp_path):
  runs = {}
  for accum in (1, 2):
    workdir = tmp_path / f'accum{accum}'
    train.train(tiny_config(grad_accum_steps=accum, total_steps=2), workdir)
    runs[accum] = losses(workdir)
  np.testing.assert_allclose(list(runs[2].values()), list(runs[1].values()), rtol=1e-5)


@pytest.mark.slow
def test_profile_traces_the_configured_steps_into_tensorboard(tmp_path):
  # A run that ends inside the window stops its trace (else the next start_trace would fail).
  train.train(tiny_config(total_steps=3, profile_start_step=2, profile_steps=5), tmp_path / 'short')
  assert list((tmp_path / 'short' / 'tensorboard').glob('plugins/profile/*/*.xplane.pb'))
  train.train(tiny_config(total_steps=4, profile_start_step=2, profile_steps=2), tmp_path / 'on')
  traces = list((tmp_path / 'on' / 'tensorboard' / 'plugins' / 'profile').glob('*/*.xplane.pb'))
  assert len(traces) == 1, traces
  assert b'jit_step' in traces[0].read_bytes()  # The train step ran inside the trace.
  train.train(tiny_config(total_steps=2), tmp_path / 'off')  # Default: no trace.
  assert not (tmp_path / 'off' / 'tensorboard' / 'plugins').exists()


@pytest.mark.parametrize('arm,frozen', [
    ('slow_frozen', models.SlowParam),
    pytest.param('gate_frozen', models.Gate, marks=pytest.mark.slow)])
def test_frozen_arms_hold_their_parameters(arm, frozen):
  config = runtime.resolve_config(tiny_config(arm))
  setup = runtime.TrainSetup(config)
  state = setup.init_state()
  before = {p: np.asarray(v) for p, v in nnx.to_flat_state(state.params)}
  held = {p for p, _ in nnx.to_flat_state(nnx.filter_state(state.params, frozen))}
  assert held
  step = setup.compile_train_step(config.batch_size)
  rng = np.random.default_rng(0)
  with setup.activate():
    for _ in range(2):
      tokens = rng.integers(0, config.model.vocab_size, (16, 33), dtype=np.int32)
      state, _ = step(state, setup.global_batch(tokens))
  after = {p: np.asarray(v) for p, v in nnx.to_flat_state(state.params)}
  for path in before:
    same = np.array_equal(before[path], after[path])
    assert same == (path in held), path


def test_config_typo_and_bad_mesh_are_errors(tmp_path):
  config = tiny_config()
  with pytest.raises(ValueError, match='no field'):
    configlib.set_field(config, 'model.num_haeds', 3)
  config.mesh.data, config.mesh.fsdp = 3, 1
  with pytest.raises(ValueError, match='mesh.data=3'):
    train.train(config, tmp_path / 'never')
  assert not (tmp_path / 'never').exists()


def test_cli_train_then_evaluate(tmp_path, one_device_run):
  """The command line trains the suite's tiny model on one device (the programs of the
  session's one-device run: cache hits) and evaluates it; the config comes as the user types
  it."""
  workdir = tmp_path / 'cli'  # Given to the CLI as a relative path, as users type it.
  common = [sys.executable, '-m']
  env = subprocess_env(devices=1)
  tiny = [f'--config.{k}={v}' for k, v in schema_leaves(tiny_config()) if k not in (
      'model.arm', 'model.family', 'model.P', 'sharding_rules', 'data.tokenizer_fingerprint')]
  subprocess.run(common + ['fastslow_jax.train', f'--config={CONFIG}:arm=coupled,size=tiny,P=8',
                           '--workdir=cli', '--config.mesh.data=1', *tiny],
                 check=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['model']['seq_len'] == 32 and saved['model']['vocab_size'] > 0
  assert losses(workdir) == losses(one_device_run)
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  out = subprocess.run(common + ['fastslow_jax.evaluate', '--workdir=cli'], check=True,
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert 'gap_to_optimum' in out.stdout and 'gate/layer_0' in out.stdout
  assert (workdir / 'eval_validation_6.json').exists()


def schema_leaves(config):
  from fastslow_jax.configs import schema
  return schema.leaves(config.to_dict())


@pytest.mark.slow
def test_cli_non_finite_loss_is_one_line_and_exit_1(tmp_path):
  """Stopping mid-run ends like any other error: one line on stderr (besides the log), no
  traceback from writers left open (TensorBoard's thread at interpreter shutdown)."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'CI': 'true'}
  env.pop('XLA_FLAGS', None)
  result = subprocess.run(
      [sys.executable, '-m', 'fastslow_jax.train', f'--config={CONFIG}:size=tiny',
       f'--workdir={tmp_path}/nan', '--config.optim.lr=1e8', '--config.optim.clip_norm=1e30',
       '--config.optim.warmup_steps=0', '--config.total_steps=20', '--config.model.seq_len=32'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines()
           if line.strip() and not re.match(r'^[IWE]\d{4} ', line)]
  assert len(lines) == 1 and lines[0].startswith('error: non-finite loss'), lines


@pytest.mark.slow  # Compiles a train step of its own (the learning rate is in the program).
def test_non_finite_loss_stops_at_the_step_and_keeps_the_good_checkpoint(tmp_path):
  config = tiny_config(**{'optim.lr': 1e30, 'optim.warmup_steps': 0, 'optim.clip_norm': 1e30,
                          'total_steps': 8, 'checkpoint_every': 1})
  with pytest.raises(NonFiniteError, match=r'non-finite .* at step (\d+); the last good') as e:
    train.train(config, tmp_path)
  bad_step = int(re.search(r'at step (\d+)', str(e.value)).group(1))
  good = evaluate.evaluate(tmp_path)  # The newest checkpoint is the last finite state.
  assert good['step'] < bad_step and np.isfinite(good['loss'])


@pytest.mark.slow
def test_skip_nonfinite_skips_updates_then_gives_up(tmp_path, caplog):
  config = tiny_config(**{'optim.lr': 1e30, 'optim.warmup_steps': 0, 'optim.clip_norm': 1e30,
                          'total_steps': 12, 'skip_nonfinite': True, 'max_nonfinite_skips': 2})
  with pytest.raises(NonFiniteError, match='at step'):
    train.train(config, tmp_path)
  assert 'update skipped (1 in a row)' in caplog.text
  assert 'update skipped (2 in a row)' in caplog.text


@pytest.mark.slow
def test_fsdp_tensor_mesh_compiles_without_involuntary_rematerialization():
  """On (data=1, fsdp=4, tensor=2) the partitioner once replicated whole activations (the
  embedding lookup on an fsdp-split table); XLA says so on stderr, so the compile runs apart."""
  code = '''if True:
    from fastslow_jax import configlib, runtime
    for scan in (False, True):
      config = runtime.resolve_config(configlib.load('fastslow:arm=coupled,size=tiny', {
          'mesh.data': 1, 'mesh.fsdp': 4, 'mesh.tensor': 2, 'model.scan_layers': scan}))
      runtime.TrainSetup(config).compile_train_step(config.batch_size)
    print('compiled')'''
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu', 'JAX_ENABLE_COMPILATION_CACHE': 'false'}  # XLA must speak.
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0 and 'compiled' in done.stdout, done.stderr[-2000:]
  assert 'Involuntary full rematerialization' not in done.stderr, done.stderr[-2000:]


# ------------------------------------------------------------------------------- bad workdirs


def refused(call, match: str):
  """`call()` raises a one-line ValueError matching `match`."""
  with pytest.raises(ValueError, match=match) as e:
    call()
  assert '\n' not in str(e.value)


def test_workdirs_that_cannot_be_used_are_refused_writing_nothing(tmp_path, monkeypatch):
  config = tiny_config()
  a_file = tmp_path / 'a_file'
  a_file.write_text('kept\n')
  refused(lambda: train.train(config, a_file), 'is a file, not a directory')
  refused(lambda: train.train(config, a_file / 'run'), f'cannot be created: {a_file} is a file')
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'checkpoints').write_text('')
  refused(lambda: train.train(config, tmp_path / 'run'), 'checkpoints is a file')
  # A read-only filesystem refuses root too, whom permission bits do not stop.
  real_statvfs = os.statvfs
  def statvfs(path):
    result = real_statvfs(path)
    if not str(path).startswith(str(tmp_path / 'mounted')):
      return result
    return os.statvfs_result((*result[:8], result.f_flag | os.ST_RDONLY, result.f_namemax))
  (tmp_path / 'mounted').mkdir()
  monkeypatch.setattr(os, 'statvfs', statvfs)
  refused(lambda: train.train(config, tmp_path / 'mounted' / 'run'),
          'cannot be created: .*mounted is on a read-only filesystem')
  refused(lambda: train.train(config, tmp_path / 'mounted'), 'is on a read-only filesystem')
  assert sorted(p.name for p in tmp_path.rglob('*')) == ['a_file', 'checkpoints', 'mounted', 'run']
  assert a_file.read_text() == 'kept\n'


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='needs Linux /proc')
def test_a_workdir_the_filesystem_refuses_to_create_is_one_line():
  """Under /proc nobody can create a directory, root included, whatever the permission bits
  say: the failure to create it is the one-line error, before anything else is written."""
  refused(lambda: train.train(tiny_config(), '/proc/fastslow-jax-test/run'),
          'cannot be created .*: choose another --workdir')


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes through permission bits')
def test_a_workdir_under_a_directory_without_write_permission_is_refused(tmp_path):
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o555)
  try:
    refused(lambda: train.train(tiny_config(), locked / 'run'), f'{locked} is not writable')
    assert not (locked / 'run').exists()
  finally:
    locked.chmod(0o755)


def test_key_heads_shard_like_heads_and_older_rules_complete_them():
  from fastslow_jax import sharding
  from fastslow_jax.configs import schema
  assert dict(schema.SHARDING_RULES)['kv_heads'] == dict(schema.SHARDING_RULES)['heads']
  older = [rule for rule in schema.SHARDING_RULES if rule[0] != 'kv_heads']
  older = [(name, 'fsdp' if name == 'heads' else target) for name, target in older]
  assert dict(sharding.check_rules(older))['kv_heads'] == 'fsdp'  # Wherever the heads go.
  config = tiny_config(**{'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2,
                          'model.num_kv_heads': 1})
  with pytest.raises(ValueError, match='model.num_kv_heads=1 is not divisible by mesh.tensor=2'):
    runtime.resolve_config(config)


def test_throughput_counts_a_step_until_its_results_are_in(tmp_path, monkeypatch):
  """Dispatch returns before a step has run: the logged step time must include the wait for
  its results (here a device_get held for 50 ms), not only the dispatch. A record after an
  evaluation counts only the steps since it (step 4's: one step, evaluated after step 3)."""
  wait = 0.05
  real = jax.device_get

  def slow_device_get(tree):
    time.sleep(wait)
    return real(tree)

  monkeypatch.setattr(train.jax, 'device_get', slow_device_get)
  train.train(tiny_config(**{'mesh.data': 1, 'log_every': 2, 'eval_every': 3}), tmp_path,
              devices=jax.devices()[:1])
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  rates = {r['step']: r['steps_per_sec'] for r in records if 'steps_per_sec' in r}
  assert sorted(rates) == [2, 4, 6], rates
  assert rates[4] <= 1 / wait and rates[2] <= 2 / wait and rates[6] <= 2 / wait, rates
