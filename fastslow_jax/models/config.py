"""Model hyper-parameters: one frozen dataclass, validated once, shared by every family and arm.

Its fields are the `model.*` declarations of `configs/schema.py` (type, default, choices, range,
help); this module adds what relates them. A model family is a value of `ModelConfig.family`
(`families.FAMILIES`: fastslow, hourglass, compressed) and an ablation arm a value of
`ModelConfig.arm`, never a different config class:

  dense        no slow path at all (the GPT baseline, the same for every family).
  coupled      the family's full model: slow path (+ gate), everything trained.
  gate_frozen  slow path computed, gate held at 0: same cost as coupled, same function as dense
               (gated families only).
  slow_frozen  slow-path parameters held at their init, the rest (gate included) trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fastslow_jax.configs import schema
from fastslow_jax.errors import UsageError
from fastslow_jax.models import attention_backends, families

ARMS = families.ARMS
REMAT_POLICIES = schema.REMAT_POLICIES


@schema.dataclass_of('model')
class ModelConfig:
  """Decoder-only transformer of one family, with its slow path per the arm (fields: the
  `model.*` entries of `configs/schema.py`)."""

  def __post_init__(self):
    if isinstance(self.remat, bool):  # True / False, from older configs: 'full' / 'none'.
      object.__setattr__(self, 'remat', 'full' if self.remat else 'none')
    for field in dataclasses.fields(self):  # Types, choices and ranges: declared once.
      schema.check_value(f'model.{field.name}', getattr(self, field.name),
                         allow_special=not field.metadata['schema'].placeholder)
    family = families.family(self.family)
    _check(self.arm in family.arms, 'arm', self.arm,
           f'family {self.family!r} has no gate; choose one of {", ".join(family.arms)}')
    if not family.slow_layers:
      _check(self.slow_layers == 'all', 'slow_layers', self.slow_layers,
             f"family {self.family!r} has no per-layer slow path; leave it at 'all'")
    self.hourglass_stages  # Validates the stage layer counts.
    self._check_attention()
    _check(self.d_model % self.num_heads == 0, 'num_heads', self.num_heads,
           f'it must divide model.d_model={self.d_model}; pick a divisor of {self.d_model}')
    _check((self.d_model // self.num_heads) % 2 == 0, 'num_heads', self.num_heads,
           'model.d_model / model.num_heads must be even for rotary embeddings')
    _check(self.num_heads % self.kv_heads == 0, 'num_kv_heads', self.num_kv_heads,
           f'it must divide model.num_heads={self.num_heads} (each key and value head serves a '
           'group of query heads)')
    if self.has_slow_path:
      _check(self.seq_len % self.P == 0, 'seq_len', self.seq_len,
             f'it must be a multiple of model.P={self.P}; use e.g. '
             f'{max(self.P, self.seq_len // self.P * self.P)} or {(self.seq_len // self.P + 1) * self.P}')
      self.slow_layer_ids  # Validates the layer selection.
    if self.has_slow_path and self.family == 'fastslow':
      _check(self.d_model % self.slow_num_heads == 0, 'slow_num_heads', self.slow_num_heads,
             f'it must divide model.d_model={self.d_model}; pick a divisor of {self.d_model}')
      _check((self.d_model // self.slow_num_heads) % 2 == 0, 'slow_num_heads', self.slow_num_heads,
             'model.d_model / model.slow_num_heads must be even for rotary embeddings')

  def _check_attention(self) -> None:
    """The backend takes the compute dtype, the window and the tile sizes (platform: at run
    time)."""
    attention_backends.check_dtype(self.attention_impl, self.dtype)
    attention_backends.check_window(self.attention_impl, self.fast_window)
    for field in ('attention_block_q', 'attention_block_kv'):
      attention_backends.check_block(self.attention_impl, field, getattr(self, field))

  @classmethod
  def from_mapping(cls, cfg: Mapping[str, Any]) -> ModelConfig:
    """Builds from a dict or `ml_collections.ConfigDict` (e.g. `config.model`); unknown keys fail."""
    cfg = dict(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
      raise UsageError(f'unknown model field(s) {unknown}: valid fields are {sorted(known)}')
    return cls(**cfg)

  @property
  def has_slow_path(self) -> bool:
    return self.arm != 'dense'

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def kv_heads(self) -> int:
    """Key and value heads of the fast attention: `num_kv_heads`, 0 meaning `num_heads`."""
    return self.num_kv_heads or self.num_heads

  @property
  def slow_head_dim(self) -> int:
    return self.d_model // self.slow_num_heads

  @property
  def hourglass_stages(self) -> tuple[int, int, int]:
    """(pre, inner, post) layer counts of the hourglass: `hourglass_layers`, or from num_layers
    n: a quarter of the layers (at least one) on each side of max(1, the rest) inner layers,
    e.g. 2 -> (1, 1, 1), 6 -> (2, 2, 2), 12 -> (3, 6, 3), 24 -> (6, 12, 6)."""
    spec = str(self.hourglass_layers).strip()
    if not spec:
      side = max(1, round(self.num_layers / 4))
      return side, max(1, self.num_layers - 2 * side), side
    parts = [p.strip() for p in spec.split(',')]
    ok = len(parts) == 3 and all(p.isdigit() for p in parts) and int(parts[1]) >= 1
    _check(ok, 'hourglass_layers', self.hourglass_layers,
           "give 'pre,inner,post' layer counts with at least one inner layer, e.g. '2,4,2', or "
           "'' to derive them from model.num_layers")
    pre, inner, post = (int(p) for p in parts)
    return pre, inner, post

  @property
  def slow_layer_ids(self) -> tuple[int, ...]:
    """Indices of the layers that carry a per-layer slow path (empty for `dense` and for
    families whose slow path is not per layer)."""
    if not self.has_slow_path or not families.family(self.family).slow_layers:
      return ()
    spec, n = self.slow_layers, self.num_layers
    fix = ("use 'all', 'every:k' (1 <= k <= model.num_layers) or comma-separated layer ids below "
           'model.num_layers')
    if isinstance(spec, str):
      spec = spec.strip()
      if spec == 'all':
        return tuple(range(n))
      if spec.startswith('every:'):
        k = spec.removeprefix('every:')
        _check(k.isdigit() and int(k) >= 1, 'slow_layers', self.slow_layers, fix)
        ids = tuple(i for i in range(n) if (i + 1) % int(k) == 0)
        _check(bool(ids), 'slow_layers', self.slow_layers, fix)  # k > num_layers: no slow layer.
        return ids
      parts = [p.strip() for p in spec.split(',') if p.strip()]
      _check(all(p.isdigit() for p in parts), 'slow_layers', self.slow_layers, fix)
      spec = [int(p) for p in parts]
    ids = tuple(sorted(set(int(i) for i in spec)))
    _check(bool(ids) and all(0 <= i < n for i in ids), 'slow_layers', self.slow_layers, fix)
    return ids


  @property
  def slow_pattern(self) -> tuple[bool, ...]:
    """Per layer, whether it carries a slow path."""
    slow = set(self.slow_layer_ids)
    return tuple(i in slow for i in range(self.num_layers))

  @property
  def scan_groups(self) -> tuple[int, int]:
    """(k, r): with `scan_layers`, layers [0, r*k) are r repeats of a group of k consecutive
    layers, run by one scan; layers from r*k on form an unscanned remainder. (1, 0) when nothing
    is scanned.

    k is the period that leaves the fewest distinct layer bodies (k + remainder): 'all' and dense
    stacks give (1, num_layers); 'every:3' over 13 layers gives (3, 4) plus one layer.
    """
    return repeating_groups(self.slow_pattern) if self.scan_layers else (1, 0)


def repeating_groups(pattern: tuple) -> tuple[int, int]:
  """(k, r) for a stack of layers whose kinds are `pattern`: layers [0, r*k) are r repeats of a
  group of k consecutive layers, the rest an unscanned remainder; k leaves the fewest distinct
  layer bodies (k + remainder). (1, 0) when nothing repeats."""
  n = len(pattern)
  best, best_cost = (1, 0), n
  for k in range(1, n // 2 + 1):
    r = n // k
    if all(pattern[i] == pattern[i % k] for i in range(r * k)) and k + n - r * k < best_cost:
      best, best_cost = (k, r), k + n - r * k
  return best


def _check(ok: bool, field: str, value: Any, fix: str) -> None:
  if not ok:
    raise UsageError(f'model.{field}={value!r} is invalid: {fix}.')
