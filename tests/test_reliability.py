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

import numpy as np
import orbax.checkpoint as ocp
import pytest

from fastslow_jax import metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = f'{ROOT}/configs/fastslow.py'
ENV = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
       'JAX_PLATFORMS': 'cpu', 'CI': 'true'}
# A tiny run whose steps take long enough to be interrupted at chosen points.
SMALL = ['--config.model.seq_len=64', '--config.data.num_train_windows=512',
         '--config.data.num_val_windows=32', '--config.eval_batches=1', '--config.log_every=1',
         '--config.eval_every=1000']


def train_command(workdir, *extra, arg='arm=coupled,size=tiny'):
  return [sys.executable, '-m', 'fastslow_jax.train', f'--config={CONFIG}:{arg}',
          f'--workdir={workdir}', *SMALL, *extra]


def run(command, timeout=300):
  return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True,
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
  import jax
  jax.tree_util.tree_map_with_path(collect, restored.params)
  return flat


# ------------------------------------------------------------------------------- bad input


@pytest.fixture(scope='module')
def text_files(tmp_path_factory):
  base = tmp_path_factory.mktemp('text')
  (base / 'empty.txt').write_text('')
  (base / 'short.txt').write_text('to be or not')
  return base


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  result = run(train_command(workdir, '--config.total_steps=2'))
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


BAD_INPUT = [  # (config arg, overrides, words the message must contain)
    ('', ['--config.mesh.data=3'], 'mesh.data=3'),
    ('', ['--config.batch_size=12'], 'batch_size=12'),
    ('', ['--config.mesh.data=1', '--config.mesh.tensor=8'], 'model.num_heads=4'),
    ('', ['--config.model.seq_len=100'], 'model.seq_len=100'),
    ('arm=frozen', [], "model.arm='frozen'"),
    ('size=huge', [], "size='huge'"),
    ('', ['--config.data.kind=wiki'], "data.kind='wiki'"),
    ('', ['--config.model.num_haeds=3'], 'num_haeds'),
    ('', ['--config.data.kind=text', '--config.data.path=/no/such/file.txt'], 'data.path'),
    ('', ['--config.data.kind=text', '--config.data.path={text}/empty.txt'], 'data.path'),
    ('', ['--config.data.kind=text', '--config.data.path={text}/short.txt'], 'fewer than one window'),
    ('', ['--config.data.kind=tfds', '--config.data.tfds_name=no_such_set',
          '--config.data.tfds_data_dir={text}'], 'data.tfds_name'),
    ('', ['--config.data.kind=tfds', '--config.data.tfds_name=x',
          '--config.data.tfds_data_dir=/no/such/dir'], 'data.tfds_data_dir'),
    # Numeric fields out of their declared range (all of them: tests/test_ranges.py).
    ('', ['--config.total_steps=-1'], 'total_steps=-1 is invalid'),
    ('', ['--config.optim.lr=-0.001'], 'optim.lr=-0.001 is invalid'),
    ('', ['--config.checkpoint_every=0'], 'checkpoint_every=0 is invalid'),
]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, text_files):
  def attempt(i, case):
    arg, overrides, expected = case
    workdir = tmp_path / f'case{i}'
    command = train_command(workdir, *(o.format(text=text_files) for o in overrides),
                            arg='arm=coupled,size=tiny' + (f',{arg}' if arg else ''))
    return case, workdir, run(command)

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    outcomes = list(pool.map(lambda ic: attempt(*ic), enumerate(BAD_INPUT)))
  for (arg, overrides, expected), workdir, result in outcomes:
    where = f'{arg} {overrides}: {result.stderr[-1500:]}'
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, where
    assert len(lines) == 1 and lines[0].startswith('error: ') and expected in lines[0], where
    assert not workdir.exists(), where


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


def test_bad_evaluate_flags_and_workdir_are_refused(tmp_path, trained_workdir):
  evaluate = [sys.executable, '-m', 'fastslow_jax.evaluate', f'--workdir={trained_workdir}']
  assert_refused([
      (evaluate + ['--step=-1'], '--step=-1'),
      (evaluate + ['--batches=0'], '--batches=0'),
      (evaluate + ['--mesh=1,0,1'], "--mesh='1,0,1' is invalid"),
      (evaluate[:-1] + [f'--workdir={tmp_path}'], 'config.json not found'),
  ], tmp_path, trained_workdir)


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
  result = run(train_command(trained_workdir, '--config.total_steps=2', '--config.model.d_model=96',
                             '--config.model.num_heads=4'))
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert 'different model' in last and 'model.d_model: 64 -> 96' in last and '--overwrite' in last
  assert snapshot(trained_workdir) == before


# ---------------------------------------------------------------------------- interruptions


def start(command, log: pathlib.Path):
  """A training process whose output goes to `log` (a pipe nobody reads would fill and block)."""
  with log.open('a') as f:
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT)


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


def test_sigterm_checkpoints_and_exits_0(tmp_path):
  workdir = tmp_path / 'run'
  log = tmp_path / 'train.log'
  process = start(train_command(workdir, '--config.total_steps=100000',
                                '--config.checkpoint_every=100000'), log)
  wait_for_step(workdir, 3, process)
  process.send_signal(signal.SIGTERM)
  process.wait(timeout=120)
  stderr = log.read_text()
  assert process.returncode == 0, stderr[-2000:]
  assert 'Rerun the same command to resume' in stderr
  with ocp.CheckpointManager(workdir / 'checkpoints') as mngr:
    stopped_at = mngr.latest_step()
  assert stopped_at >= 3 and stopped_at == max(logged_losses(workdir))
  # The same command resumes there (here: two more steps, then stop again).
  result = run(train_command(workdir, '--config.total_steps=100000',
                             '--config.checkpoint_every=100000', f'--stop_at_step={stopped_at + 2}'))
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(logged_losses(workdir)) == list(range(1, stopped_at + 3))


@pytest.mark.slow
def test_kill_9_at_random_steps_then_resume_is_bitwise_identical(tmp_path):
  steps, common = 40, ['--config.total_steps=40', '--config.checkpoint_every=5']
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


@pytest.mark.parametrize('how', ['truncate', pytest.param('delete', marks=pytest.mark.slow)])
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
