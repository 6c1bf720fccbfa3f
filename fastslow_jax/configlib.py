"""Helpers for ml_collections configs: naming, argument parsing and loading outside absl flags.

A config is named by a path, `path/to/file.py[:arg]`, or by the name of a config that ships with
the package, `fastslow[:arg]` (fastslow_jax/configs/fastslow.py). Imports no jax.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Any

import ml_collections

from fastslow_jax.errors import UsageError

PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / 'configs'


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses 'a=1,b=x' into a ConfigDict, typed like `defaults`; an unknown key is an error."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    key = key.strip()
    if not sep or key not in defaults:
      raise UsageError(f'config argument {item!r} is invalid: use key=value with key in '
                       f'{sorted(defaults)}.')
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.strip().lower() in ('1', 'true', 'yes')
    else:
      try:
        out[key] = kind(value.strip())
      except ValueError:
        raise UsageError(f'config argument {key}={value!r} is invalid: expected {kind.__name__}.') from None
  return out


def packaged_names() -> list[str]:
  """Names of the config files in fastslow_jax/configs: its modules that define `get_config`
  (the others hold what configs share, e.g. the schema of every field)."""
  return sorted(p.stem for p in PACKAGED_CONFIGS.glob('*.py')
                if 'def get_config(' in p.read_text())


def resolve(spec: str) -> str:
  """'fastslow:arg' -> '<package>/configs/fastslow.py:arg'; a path spec is checked and kept.

  Raises a one-line UsageError for a missing file or an unknown packaged name.
  """
  path, sep, arg = str(spec).partition(':')
  if not path.endswith('.py') and os.sep not in path and '/' not in path:
    if path not in packaged_names():
      raise UsageError(f'--config={spec!r} names no config: use a packaged config '
                       f'({", ".join(packaged_names())}) or a path to a .py file.')
    return f'{PACKAGED_CONFIGS / path}.py{sep}{arg}'
  if not os.path.isfile(path):
    raise UsageError(f'--config file {path!r} does not exist: give the path of a config file '
                     f'(e.g. configs/fastslow.py) or a packaged name ({", ".join(packaged_names())}).')
  return spec


def load(spec: str, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  """Loads 'path/to/config.py[:arg]' or 'name[:arg]' like `--config=` does, then applies dotted
  overrides.

  `overrides={'model.P': 8}` is the same as `--config.model.P=8`; unknown fields fail.
  """
  path, _, arg = resolve(spec).partition(':')
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for dotted, value in (overrides or {}).items():
    set_field(config, dotted, value)
  return config


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """Sets config.<dotted> = value, failing on unknown fields (as a locked config does)."""
  *parents, leaf = dotted.split('.')
  node = config
  for name in parents:
    node = node[name]
  if leaf not in node:
    raise UsageError(f'config has no field {dotted!r}: check the spelling (see the config file).')
  node[leaf] = value
