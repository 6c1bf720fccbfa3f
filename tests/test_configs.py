"""Config files ship with the package, import no jax, and are named by path or by name."""

import pathlib
import subprocess
import sys

import pytest

from fastslow_jax import configlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_packaged_config_imports_no_jax():
  code = ('import sys; from fastslow_jax import configlib; '
          "c = configlib.load('fastslow:arm=dense,size=1b'); "
          "assert c.model.arm == 'dense'; "
          "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'grain', 'optax')); "
          'assert not heavy, heavy')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


def test_name_and_checkout_path_give_the_same_config():
  by_name = configlib.load('fastslow:arm=slow_frozen,size=small,P=8')
  by_path = configlib.load(f'{ROOT}/configs/fastslow.py:arm=slow_frozen,size=small,P=8')
  assert by_name.to_dict() == by_path.to_dict()
  assert by_name.model.P == 8 and by_name.model.arm == 'slow_frozen'
  assert 'fastslow' in configlib.packaged_names()


@pytest.mark.parametrize('spec,message', [
    ('nosuch:arm=dense', 'names no config'),
    ('configs/nosuch.py', 'does not exist'),
    ('fastslow:arm=wide', 'arm'),
])
def test_bad_config_names_are_one_line_errors(spec, message):
  with pytest.raises(ValueError, match=message) as e:
    config = configlib.load(spec)
    from fastslow_jax import models
    models.ModelConfig.from_mapping(config.model)
  assert '\n' not in str(e.value)
