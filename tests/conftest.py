"""Test setup: 8 simulated CPU devices, one compilation cache, and runs trained once per session.

Compiling dominates the suite's time, so: programs are compiled without LLVM's optimisations
(tiny models compile 2-4x faster and run a little slower; every test compares programs compiled
alike, including the command-line subprocesses, which inherit the flags); most tests compile the
same few programs (the tiny model's init, train and eval steps), and every test process of a
session (xdist workers and the subprocesses they start) shares one persistent XLA cache; runs
that several tests read (the tiny model trained on one device and on eight) are trained once per
session, by whichever worker asks first, under a file lock.
"""

import contextlib
import fcntl
import os
import pathlib
import shutil

COMPILER_FLAGS = '--xla_backend_optimization_level=0'
XLA_FLAGS = f'--xla_force_host_platform_device_count=8 {COMPILER_FLAGS}'
os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {XLA_FLAGS}'.strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

SHARED_TEXT = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'tinyshakespeare.txt'
ROOT = pathlib.Path(__file__).resolve().parents[1]


def session_dir(config: pytest.Config) -> pathlib.Path:
  """A directory every process of this test session shares (the xdist workers' common parent)."""
  base = config._tmp_path_factory.getbasetemp()  # noqa: SLF001 (pytest's own factory)
  return base.parent if hasattr(config, 'workerinput') else base


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
  """The session's compilation cache, for this process and the subprocesses it starts."""
  cache = session_dir(config) / 'jax_cache'
  os.environ['JAX_COMPILATION_CACHE_DIR'] = str(cache)
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  jax.config.update('jax_compilation_cache_dir', str(cache))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def subprocess_env(devices: int = 8, **extra: str) -> dict[str, str]:
  """The environment of a command-line subprocess: this process's (the session's compiler
  flags and cache), `devices` CPU devices, not interactive, plus `extra`. One device compiles
  the programs this process runs on `jax.devices()[:1]` (e.g. `one_device_run`'s)."""
  flags = f'--xla_force_host_platform_device_count={devices} {COMPILER_FLAGS}'
  return {**os.environ, 'XLA_FLAGS': flags, 'JAX_PLATFORMS': 'cpu', 'CI': 'true', **extra}


@contextlib.contextmanager
def without_compilation_cache():
  """Within: every program is compiled afresh (for tests that read what the compiler says)."""
  old = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  try:
    yield
  finally:
    jax.config.update('jax_enable_compilation_cache', old)


@pytest.fixture(scope='session')
def shared_dir(request) -> pathlib.Path:
  return session_dir(request.config)


def once_per_session(shared: pathlib.Path, name: str, make) -> pathlib.Path:
  """shared/name, made by `make(path)` by the first process of the session to ask (the others
  wait on a file lock and reuse it). A failed `make` leaves nothing behind."""
  path = shared / name
  with open(shared / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (path / '.done').exists():
      shutil.rmtree(path, ignore_errors=True)
      path.mkdir(parents=True)
      try:
        make(path)
      except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
      (path / '.done').touch()
  return path


def tiny_config(arm='coupled', **overrides):
  """The suite's one tiny model (the `tiny` config shrunk further): 6-step runs compile and
  train in seconds, and every test that trains shares its compiled programs."""
  from fastslow_jax import configlib
  config = configlib.load(f'{ROOT / "configs" / "fastslow.py"}:arm={arm},size=tiny,P=8', {
      'model.seq_len': 32, 'model.d_model': 32, 'model.mlp_dim': 64, 'model.phi_dim': 64,
      'model.num_heads': 2, 'model.slow_num_heads': 2,
      'batch_size': 16, 'total_steps': 6, 'log_every': 1, 'eval_every': 3, 'eval_batches': 2,
      'checkpoint_every': 2, 'data.num_train_windows': 256, 'data.num_val_windows': 64,
      'optim.warmup_steps': 2, 'optim.lr': 1e-2,
  })
  for key, value in overrides.items():
    configlib.set_field(config, key, value)
  return config


@pytest.fixture(scope='session')
def one_device_run(shared_dir) -> pathlib.Path:
  """The tiny coupled model trained 6 steps on one device (checkpoints at 2, 4, 6)."""
  from fastslow_jax import train
  return once_per_session(shared_dir, 'one_device_run', lambda path: train.train(
      tiny_config(**{'mesh.data': 1}), path, devices=jax.devices()[:1]))


@pytest.fixture(scope='session')
def sharded_run(shared_dir) -> pathlib.Path:
  """The same run on eight devices, data x fsdp x tensor = 2 x 2 x 2."""
  from fastslow_jax import train
  return once_per_session(shared_dir, 'sharded_run', lambda path: train.train(
      tiny_config(**{'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2}), path))


@pytest.fixture
def trained_copy(one_device_run, tmp_path) -> pathlib.Path:
  """A private copy of `one_device_run`, for tests that change or damage it."""
  copy = tmp_path / 'run'
  shutil.copytree(one_device_run, copy, ignore=shutil.ignore_patterns('.done'))
  return copy


@pytest.fixture
def shakespeare_path():
  """The public-domain text beside the repo, when present; tests using it skip otherwise."""
  if not SHARED_TEXT.exists():
    pytest.skip(f'{SHARED_TEXT} not present')
  return SHARED_TEXT


@pytest.fixture(scope='module')
def compilation_cache():
  """Kept for modules that ask for it: the whole session shares one cache now."""
  yield
