"""Reliability through the real CLI: bad input, SIGTERM, kill -9 resume, damaged checkpoints."""

import concurrent.futures
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import subprocess_env, tiny_config
from fastslow_jax import configlib, errors, metrics, train
from fastslow_jax.configs import schema
from fastslow_jax.errors import UsageError

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = f'{ROOT}/configs/fastslow.py'
ENV = subprocess_env()
# The suite's tiny model as flags (the programs other tests compile: cache hits), validating
# rarely so that steps come quickly.
TINY = [f'--config.{k}={v}' for k, v in schema.leaves(tiny_config().to_dict())
        if k not in ('model.arm', 'model.family', 'model.P', 'sharding_rules',
                     'data.tokenizer_fingerprint')] + ['--config.eval_every=1000']


def train_command(workdir, *extra, arg='arm=coupled,size=tiny,P=8'):
  return [sys.executable, '-m', 'fastslow_jax.train', f'--config={CONFIG}:{arg}',
          f'--workdir={workdir}', *TINY, *extra]


def run(command, timeout=300, env=ENV):
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


def snapshot(path: pathlib.Path):
  """Every file under `path` with its size and modification time (None if absent)."""
  if not path.exists():
    return None
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob('*'))}


def logged_losses(workdir):
  return {r['step']: r['loss'] for r in metrics.read_jsonl(pathlib.Path(workdir) / 'metrics.jsonl')
          if 'loss' in r}


def final_params(workdir, step):
  with ocp.CheckpointManager(pathlib.Path(workdir) / 'checkpoints') as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
  flat = {}
  def collect(path, x):
    flat[path] = np.asarray(x)
  jax.tree_util.tree_map_with_path(collect, restored.params)
  return flat


# ------------------------------------------------------------------------------- bad input


@pytest.fixture(scope='module')
def text_files(tmp_path_factory):
  base = tmp_path_factory.mktemp('text')
  (base / 'empty.txt').write_text('')
  (base / 'short.txt').write_text('to be or not')
  return base


@pytest.fixture
def trained_workdir(trained_copy):
  """A trained run of the suite's tiny model (a private copy of the session's)."""
  return trained_copy


BAD_INPUT = [  # (config arg, overrides, words the message must contain)
    ('', {'mesh.data': 3}, 'mesh.data=3'),
    ('', {'batch_size': 12}, 'batch_size=12'),
    ('', {'mesh.data': 1, 'mesh.tensor': 8}, 'is not divisible by mesh.tensor=8'),
    ('', {'model.seq_len': 100}, 'model.seq_len=100'),
    ('arm=frozen', {}, "model.arm='frozen'"),
    ('', {'data.kind': 'wiki'}, "data.kind='wiki'"),
    ('', {'data.kind': 'text', 'data.path': '/no/such/file.txt'}, 'data.path'),
    ('', {'data.kind': 'text', 'data.path': '{text}/empty.txt'}, 'data.path'),
    ('', {'data.kind': 'text', 'data.path': '{text}/short.txt'}, 'fewer than one window'),
    ('', {'data.kind': 'tfds', 'data.tfds_name': 'no_such_set', 'data.tfds_data_dir': '{text}'},
     'data.tfds_name'),
    ('', {'data.kind': 'tfds', 'data.tfds_name': 'x', 'data.tfds_data_dir': '/no/such/dir'},
     'data.tfds_data_dir'),
    # Fields out of their declared range (all of them: tests/test_schema.py).
    ('', {'total_steps': -1}, 'total_steps=-1 is invalid'),
    ('', {'optim.lr': -0.001}, 'optim.lr=-0.001 is invalid'),
    ('', {'checkpoint_every': 0}, 'checkpoint_every=0 is invalid'),
]


def bad_config(arg, overrides, text_files):
  config = configlib.load(f'{CONFIG}:arm=coupled,size=tiny' + (f',{arg}' if arg else ''))
  for key, value in overrides.items():
    configlib.set_field(config, key, value.format(text=text_files) if isinstance(value, str)
                        else value)
  return config


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, text_files):
  """Every case raises the one-line UsageError the command line prints (exit 2), before
  anything is written; the command line itself: the tests below."""
  for i, (arg, overrides, expected) in enumerate(BAD_INPUT):
    workdir = tmp_path / f'case{i}'
    with pytest.raises(UsageError) as e:
      train.train(bad_config(arg, overrides, text_files), workdir)
    assert '\n' not in str(e.value) and expected in str(e.value), (arg, overrides, str(e.value))
    assert not workdir.exists(), (arg, overrides)


def assert_exits_2(result, expected: str):
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-1500:]
  assert len(lines) == 1 and lines[0].startswith('error: ') and expected in lines[0], lines


def test_train_command_line_bad_input_exits_2_with_one_line(tmp_path):
  """A UsageError and an error of absl's own flag parsing (a misspelt field), each one line."""
  cases = [(train_command(tmp_path / 'a', '--config.mesh.data=3'), 'mesh.data=3'),
           (train_command(tmp_path / 'b', '--config.model.num_haeds=3'), 'num_haeds')]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda case: run(case[0]), cases))
  for (_, expected), result in zip(cases, results):
    assert_exits_2(result, expected)
  assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


@pytest.mark.slow
def test_every_bad_input_through_the_command_line(tmp_path, text_files):
  cases = [(arg, [f'--config.{k}={v.format(text=text_files) if isinstance(v, str) else v}'
                  for k, v in overrides.items()], expected)
           for arg, overrides, expected in BAD_INPUT]
  cases += [('size=huge', [], "size='huge'")]

  def attempt(i, case):
    arg, flags, _ = case
    workdir = tmp_path / f'case{i}'
    command = train_command(workdir, *flags,
                            arg='arm=coupled,size=tiny' + (f',{arg}' if arg else ''))
    return workdir, run(command)

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    outcomes = list(pool.map(lambda ic: attempt(*ic), enumerate(cases)))
  for (_, _, expected), (workdir, result) in zip(cases, outcomes):
    assert_exits_2(result, expected)
    assert not workdir.exists(), expected


def assert_refused(cases, *unchanged: pathlib.Path):
  """Each (command, words) exits 2 with one stderr line holding the words; `unchanged` stay so."""
  before = [snapshot(path) for path in unchanged]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda case: run(case[0]), cases))
  for (command, expected), result in zip(cases, results):
    where = f'{command[2:]}: {result.stderr[-1500:]}'
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, where
    assert len(lines) == 1 and lines[0].startswith('error: ') and expected in lines[0], where
  assert [snapshot(path) for path in unchanged] == before


@pytest.mark.slow  # In-process: tests/test_train.py (workdirs), tests/test_configs.py (files).
def test_bad_workdir_config_file_and_train_flags_are_refused(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('kept\n')
  assert_refused([
      ([sys.executable, '-m', 'fastslow_jax.train', '--config=no/such/config.py',
        f'--workdir={tmp_path}/new'], "--config file 'no/such/config.py' does not exist"),
      (train_command(a_file), f'--workdir {a_file} is a file'),
      (train_command(a_file / 'run'), f'cannot be created: {a_file} is a file'),
      (train_command(tmp_path / 'new', '--stop_at_step=-1'), '--stop_at_step=-1'),
  ], tmp_path)


EVALUATE_BAD_INPUT = [(['--mesh=1,0,1'], "--mesh='1,0,1' is invalid"),
                      (['--step=-1'], '--step=-1'), (['--batches=0'], '--batches=0')]


@pytest.mark.parametrize('flags,expected', [EVALUATE_BAD_INPUT[0], *(
    pytest.param(*case, marks=pytest.mark.slow) for case in EVALUATE_BAD_INPUT[1:])])
def test_bad_evaluate_flags_are_refused(trained_workdir, flags, expected):
  evaluate = [sys.executable, '-m', 'fastslow_jax.evaluate', f'--workdir={trained_workdir}']
  assert_refused([(evaluate + flags, expected)], trained_workdir)


def test_evaluate_refuses_a_directory_train_did_not_write(tmp_path):
  from fastslow_jax import evaluate
  with pytest.raises(UsageError, match='config.json not found'):
    evaluate.evaluate(str(tmp_path))
  assert not list(tmp_path.iterdir())


@pytest.mark.slow  # Trains and evaluates the demo model (about 30 s).
def test_demo_prints_its_own_lines_and_no_library_logging(tmp_path):
  result = run([sys.executable, '-m', 'fastslow_jax.demo', '--steps=4',
                f'--workdir={tmp_path}/demo'])
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'gap_to_optimum' in result.stdout and 'gate/layer_1' in result.stdout
  own = re.compile(r'^[IW]\d{4} [\d:.]+ +\d+ (train|evaluate|demo)\.py:\d+\] ')
  foreign = [line for line in result.stderr.splitlines() if not own.match(line)]
  assert not foreign, foreign[:5]


def test_incompatible_workdir_is_refused_untouched_unless_overwrite(trained_workdir):
  before = snapshot(trained_workdir)
  config = tiny_config(**{'mesh.data': 1, 'model.d_model': 48})
  with pytest.raises(UsageError) as e:
    train.train(config, trained_workdir, devices=jax.devices()[:1])
  message = str(e.value)
  assert 'different model' in message and 'model.d_model: 32 -> 48' in message
  assert '--overwrite' in message and '\n' not in message
  assert snapshot(trained_workdir) == before


# ---------------------------------------------------------------------------- interruptions


def start(command, log: pathlib.Path, env=ENV):
  """A training process whose output goes to `log` (a pipe nobody reads would fill and block)."""
  with log.open('a') as f:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def wait_for_step(workdir, step, process, timeout=240):
  deadline = time.time() + timeout
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  while time.time() < deadline:
    if process.poll() is not None:
      raise AssertionError(f'training ended early with status {process.returncode}')
    if path.exists() and max(logged_losses(workdir), default=0) >= step:
      return
    time.sleep(0.05)
  raise AssertionError(f'step {step} not reached')


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_resumable(tmp_path):
  workdir = tmp_path / 'run'
  log = tmp_path / 'train.log'
  process = start(train_command(workdir, '--config.total_steps=100000',
                                '--config.checkpoint_every=100000'), log)
  wait_for_step(workdir, 3, process)
  process.send_signal(signal.SIGTERM)
  process.wait(timeout=120)
  stderr = log.read_text()
  assert process.returncode == errors.EXIT_RESUMABLE, stderr[-2000:]  # The launchers rerun it.
  assert 'Rerun the same command to resume' in stderr
  with ocp.CheckpointManager(workdir / 'checkpoints') as mngr:
    stopped_at = mngr.latest_step()
  assert stopped_at >= 3 and stopped_at == max(logged_losses(workdir))
  # The same command resumes there (here: two more steps, then stop again).
  result = run(train_command(workdir, '--config.total_steps=100000',
                             '--config.checkpoint_every=100000', f'--stop_at_step={stopped_at + 2}'))
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(logged_losses(workdir)) == list(range(1, stopped_at + 3))


def test_kill_9_then_resume_is_bitwise_identical(tmp_path, one_device_run):
  """Killed (kill -9) at a random moment and rerun, the command line's run of the suite's tiny
  model on one device ends with the per-step losses and final parameters of the session's
  uninterrupted run (trained in-process: the same program), bitwise."""
  env = subprocess_env(devices=1)
  command = train_command(tmp_path / 'run', '--config.mesh.data=1', '--config.eval_every=3')
  rng = random.Random(0)
  process = start(command, tmp_path / 'interrupted.log', env=env)
  wait_for_step(tmp_path / 'run', rng.randrange(2, 5), process)
  time.sleep(rng.random() * 0.3)  # Anywhere in a step, a save, or between.
  process.kill()
  process.wait()
  result = run(command, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert_same_run(tmp_path / 'run', one_device_run, steps=6)


@pytest.mark.slow
def test_kill_9_at_random_steps_several_times_then_resume_is_bitwise_identical(tmp_path):
  steps, every = 40, 5
  common = [f'--config.total_steps={steps}', f'--config.checkpoint_every={every}']
  baseline = tmp_path / 'baseline'
  result = run(train_command(baseline, *common))
  assert result.returncode == 0, result.stderr[-2000:]
  workdir = tmp_path / 'interrupted'
  rng = random.Random(0)
  for target in sorted(rng.sample(range(3, steps - 2), 3)):
    process = start(train_command(workdir, *common), tmp_path / 'interrupted.log')
    wait_for_step(workdir, target, process)
    time.sleep(rng.random() * 0.3)  # Anywhere in a step, a save, or between.
    process.kill()
    process.wait()
  result = run(train_command(workdir, *common))
  assert result.returncode == 0, result.stderr[-2000:]
  assert_same_run(workdir, baseline, steps=steps)


def assert_same_run(workdir, baseline, *, steps: int):
  assert logged_losses(workdir) == logged_losses(baseline)  # Bitwise, every step.
  got, expected = final_params(workdir, steps), final_params(baseline, steps)
  assert got.keys() == expected.keys()
  for path in expected:
    np.testing.assert_array_equal(got[path], expected[path], err_msg=str(path))


# --------------------------------------------------------------------------- damaged checkpoints


def _damage(step_dir: pathlib.Path, how: str):
  if how == 'truncate':
    files = [p for p in (step_dir / 'params').rglob('*') if p.is_file() and p.stat().st_size > 64]
    for p in files:
      p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
  else:
    for p in sorted((step_dir / 'opt_state').rglob('*'), reverse=True):
      p.unlink() if p.is_file() else p.rmdir()


@pytest.mark.slow
@pytest.mark.parametrize('how', ['truncate', 'delete'])
def test_damaged_latest_checkpoint_falls_back_with_a_warning(tmp_path, how):
  workdir = tmp_path / 'run'
  common = ['--config.total_steps=8', '--config.checkpoint_every=2']
  result = run(train_command(workdir, *common, '--stop_at_step=6'))
  assert result.returncode == 0, result.stderr[-2000:]
  _damage(workdir / 'checkpoints' / '6', how)

  evaluated = run([sys.executable, '-m', 'fastslow_jax.evaluate', f'--workdir={workdir}',
                   '--step=6'])
  if how == 'truncate':  # Only the params matter to evaluation.
    assert evaluated.returncode == 2
    last = evaluated.stderr.strip().splitlines()[-1]
    assert last.startswith('error: checkpoint 6') and 'damaged' in last

  result = run(train_command(workdir, *common))
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Checkpoint 6' in result.stderr and 'damaged and skipped' in result.stderr
  assert 'Resuming from step 4' in result.stderr
  assert sorted(logged_losses(workdir)) == list(range(1, 9))


@pytest.mark.slow
def test_all_checkpoints_damaged_is_an_error_not_a_fresh_start(tmp_path):
  workdir = tmp_path / 'run'
  result = run(train_command(workdir, '--config.total_steps=4', '--config.checkpoint_every=2'))
  assert result.returncode == 0, result.stderr[-2000:]
  for step_dir in (workdir / 'checkpoints').iterdir():
    if step_dir.name.isdigit():
      _damage(step_dir, 'truncate')
  result = run(train_command(workdir, '--config.total_steps=6', '--config.checkpoint_every=2'))
  assert result.returncode == 2
  assert 'every checkpoint' in result.stderr.strip().splitlines()[-1]
