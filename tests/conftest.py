"""Test setup: 8 simulated CPU devices, so sharded code paths run on any machine."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_TEXT = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'tinyshakespeare.txt'


@pytest.fixture
def shakespeare_path():
  """The public-domain text beside the repo, when present; tests using it skip otherwise."""
  if not SHARED_TEXT.exists():
    pytest.skip(f'{SHARED_TEXT} not present')
  return SHARED_TEXT
