"""Helpers for ml_collections configs: `file.py:arg` parsing and loading outside absl flags."""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses 'a=1,b=x' into a ConfigDict, typed like `defaults`; an unknown key is an error."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    key = key.strip()
    if not sep or key not in defaults:
      raise ValueError(f'config argument {item!r} is invalid: use key=value with key in '
                       f'{sorted(defaults)}.')
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.strip().lower() in ('1', 'true', 'yes')
    else:
      try:
        out[key] = kind(value.strip())
      except ValueError:
        raise ValueError(f'config argument {key}={value!r} is invalid: expected {kind.__name__}.') from None
  return out


def load(spec: str, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  """Loads 'path/to/config.py[:arg]' like `--config=` does, then applies dotted overrides.

  `overrides={'model.P': 8}` is the same as `--config.model.P=8`; unknown fields fail.
  """
  path, _, arg = spec.partition(':')
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
    raise ValueError(f'config has no field {dotted!r}: check the spelling (see the config file).')
  node[leaf] = value
