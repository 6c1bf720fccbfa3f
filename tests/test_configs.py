"""Config files ship with the package, import no jax, and are named by path or by name."""

import fnmatch
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

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


def test_an_installed_copy_finds_its_configs_from_any_directory(tmp_path):
  """What `pip install .` ships (the .py files of the packages pyproject includes) is enough for
  the demo's config and for `--config=fastslow:...`, run from a directory that is no checkout."""
  find = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['setuptools']['packages']
  site = tmp_path / 'site'
  for init in (ROOT / 'fastslow_jax').rglob('__init__.py'):
    package = init.parent.relative_to(ROOT)
    if any(fnmatch.fnmatchcase('.'.join(package.parts), p) for p in find['find']['include']):
      (site / package).mkdir(parents=True)
      for module in init.parent.glob('*.py'):
        shutil.copy(module, site / package)
  code = ('import fastslow_jax, sys; from fastslow_jax import cli, configlib, demo; '
          f'assert fastslow_jax.__file__.startswith({str(site)!r}), fastslow_jax.__file__; '
          "c = configlib.load('fastslow:arm=coupled,size=tiny'); assert c.model.arm == 'coupled'; "
          "[flag] = cli._resolve_config_flag(['--config=fastslow:arm=dense']); "
          f'assert flag.startswith({"--config=" + str(site)!r}), flag')
  env = {**os.environ, 'PYTHONPATH': str(site)}
  subprocess.run([sys.executable, '-c', code], check=True, cwd=tmp_path, env=env)


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
