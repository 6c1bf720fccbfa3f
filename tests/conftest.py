"""Test setup: 8 simulated CPU devices, so sharded code paths run on any machine."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

SHARED_TEXT = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'tinyshakespeare.txt'


@pytest.fixture
def shakespeare_path():
  """The public-domain text beside the repo, when present; tests using it skip otherwise."""
  if not SHARED_TEXT.exists():
    pytest.skip(f'{SHARED_TEXT} not present')
  return SHARED_TEXT


@pytest.fixture(scope='module')
def compilation_cache(tmp_path_factory):
  """A persistent XLA cache while a module runs (`pytestmark = pytest.mark.usefixtures(
  'compilation_cache')`): the experiments' miniature runs share most programs (seeds of one
  model, the step-time benchmark), and compiling dominates their time. Restored afterwards;
  skipped where JAX's cache internals differ."""
  try:
    from jax._src import compilation_cache as cc
    old = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
  except (ImportError, AttributeError):
    yield
    return
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  cc.reset_cache()
  yield
  jax.config.update('jax_compilation_cache_dir', old[0])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', old[1])
  cc.reset_cache()
