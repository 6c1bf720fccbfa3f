"""The valid range of every numeric config field, declared once. Imports no jax.

`check(config)` runs first in `runtime.resolve_config` (train, evaluate, the launchers, the
benchmarks and the experiments all go through it), before anything is compiled or written. It
refuses a value outside its range, and a numeric field with no entry in `RANGES`: a field added to
a config without declaring its range fails at once, with a message saying where to declare it.
`models.ModelConfig`, the data sources and the mesh check their fields against the same entries.

An entry is keyed by the field's dotted name; bools and strings are not numbers here (strings
with a fixed set of values are checked where they are interpreted).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Range:
  """Numbers of `kind` (int or float) between `low` and `high` (either may be open or absent),
  plus `special` values outside that interval with a meaning of their own, e.g. -1: 'the rest'."""

  kind: type
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  special: tuple[tuple[int, str], ...] = ()

  def contains(self, value: Any, *, allow_special: bool = True) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False
    if allow_special and any(value == v for v, _ in self.special):
      return True
    if self.kind is int and not isinstance(value, int):
      return False
    if not math.isfinite(value):  # NaN compares false both ways; inf is never a setting.
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    return self.high is None or (value < self.high if self.high_open else value <= self.high)

  def describe(self, *, allow_special: bool = True) -> str:
    """'a positive integer', 'a number in [0, 1)', ...: the fix a message proposes."""
    noun = 'an integer' if self.kind is int else 'a number'
    positive = self.high is None and (self.low == 0 and self.low_open or (
        self.kind is int and self.low == 1 and not self.low_open))
    if positive:
      text = f'a positive {noun.split()[-1]}'
    elif self.high is None:
      text = f'{noun} {">" if self.low_open else ">="} {self.low:g}'
    elif self.low is None:
      text = f'{noun} {"<" if self.high_open else "<="} {self.high:g}'
    else:
      text = (f'{noun} in {"(" if self.low_open else "["}{self.low:g}, {self.high:g}'
              f'{")" if self.high_open else "]"}')
    if allow_special:
      text += ''.join(f', or {v} ({meaning})' for v, meaning in self.special)
    return text


def _int(low: int, *, special: tuple[tuple[int, str], ...] = ()) -> Range:
  return Range(int, low, special=special)


def _float(low: float, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Range:
  return Range(float, low, high, low_open=low_open, high_open=high_open)


_POSITIVE_INT = _int(1)
_COUNT = _int(0)  # Seeds, step counts that may be zero.
_POSITIVE = _float(0, low_open=True)
_MESH_SIZE = _int(1, special=((-1, 'the rest of the devices'),))
_BETA = _float(0, 1, high_open=True)  # Adam's moment decay: 1 would never forget.

RANGES: Mapping[str, Range] = {
    # Top level.
    'seed': _COUNT,
    'total_steps': _POSITIVE_INT,
    'batch_size': _POSITIVE_INT,
    'grad_accum_steps': _POSITIVE_INT,
    'max_nonfinite_skips': _COUNT,
    'log_every': _POSITIVE_INT,
    'eval_every': _POSITIVE_INT,
    'eval_batches': _POSITIVE_INT,
    'checkpoint_every': _POSITIVE_INT,
    'keep_checkpoints': _POSITIVE_INT,
    'profile_start_step': _int(1, special=((0, 'no profile'),)),
    'profile_steps': _POSITIVE_INT,
    # Model (`models.ModelConfig` checks its fields against these too).
    'model.vocab_size': _int(1, special=((-1, 'taken from the data'),)),
    'model.seq_len': _POSITIVE_INT,
    'model.d_model': _POSITIVE_INT,
    'model.num_layers': _POSITIVE_INT,
    'model.num_heads': _POSITIVE_INT,
    'model.mlp_dim': _POSITIVE_INT,
    'model.P': _POSITIVE_INT,
    'model.slow_num_heads': _POSITIVE_INT,
    'model.phi_dim': _POSITIVE_INT,
    'model.compress_dim': _POSITIVE_INT,
    'model.rope_theta': _POSITIVE,
    'model.norm_eps': _POSITIVE,  # 0 divides by zero on an all-zero row.
    # Tiles of the fused kernels; 0 is the kernel's default (powers of two: attention_backends).
    'model.attention_block_q': _COUNT,
    'model.attention_block_kv': _COUNT,
    # Data (each field matters only for its `data.kind`, but is checked whatever the kind).
    'data.val_fraction': _float(0, 1, low_open=True, high_open=True),
    'data.vocab_size': _int(2),  # A Markov chain over one token predicts nothing.
    'data.num_regimes': _POSITIVE_INT,
    'data.regime_period': _float(1),  # A switch probability of 1 / regime_period per token.
    'data.concentration': _POSITIVE,  # Dirichlet concentration.
    'data.source_seed': _COUNT,
    'data.num_train_windows': _POSITIVE_INT,
    'data.num_val_windows': _POSITIVE_INT,
    # Optimizer.
    'optim.lr': _POSITIVE,
    'optim.warmup_steps': _COUNT,
    'optim.min_lr_ratio': _float(0, 1),
    'optim.b1': _BETA,
    'optim.b2': _BETA,
    'optim.eps': _POSITIVE,
    'optim.weight_decay': _float(0),
    'optim.clip_norm': _POSITIVE,
    # Mesh (`sharding.mesh_shape` adds: at most one -1, and the product is the device count).
    'mesh.data': _MESH_SIZE,
    'mesh.fsdp': _MESH_SIZE,
    'mesh.tensor': _MESH_SIZE,
    'mesh.dcn_data': _POSITIVE_INT,
}


def check_value(name: str, value: Any, *, allow_special: bool = True) -> None:
  """Raises a one-line ValueError unless `value` is in the declared range of field `name`.

  `allow_special=False` refuses the special values too (e.g. a model whose vocabulary size is
  still -1, 'taken from the data').
  """
  spec = RANGES[name]
  if not spec.contains(value, allow_special=allow_special):
    fix = spec.describe(allow_special=allow_special)
    raise ValueError(f'{name}={value!r} is invalid: use {fix}.')


def numeric_leaves(tree: Mapping[str, Any], prefix: str = '') -> Iterator[tuple[str, Any]]:
  """(dotted name, value) of every int or float leaf of a nested dict (`config.to_dict()`);
  bools are not numbers."""
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      yield from numeric_leaves(value, f'{name}.')
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield name, value


def _get(tree: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
  node = tree
  for part in dotted.split('.'):
    if not isinstance(node, Mapping) or part not in node:
      return False, None
    node = node[part]
  return True, node


def check(config: Mapping[str, Any]) -> None:
  """Checks every numeric field of `config` (a ConfigDict or nested dict) against `RANGES`.

  Raises a one-line ValueError naming the first field out of range (or holding a non-number) and
  what to use, or naming a numeric field that has no declared range.
  """
  config = config.to_dict() if hasattr(config, 'to_dict') else config
  for name, _ in numeric_leaves(config):
    if name not in RANGES:
      raise ValueError(f'config field {name!r} has no declared range: add an entry for it to '
                       f'RANGES in {__name__} (a config field needs one to be checked).')
  for name in RANGES:
    present, value = _get(config, name)
    if present:
      check_value(name, value)
