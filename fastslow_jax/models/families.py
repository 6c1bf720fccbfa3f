"""The model families of the zoo: one table, the one owner of their names. Imports no jax.

`ModelConfig` validates `model.family` (and which arms a family has) against this table without
loading any model code; `models.build`, the FLOP count and the layer layouts look the family's
module up here. Adding a family is one module implementing `models.model.FamilyModule` (build,
flops_per_token, layer_stacks) plus one entry.

`arm='dense'` is one baseline shared by every family: the plain decoder of the `fastslow` family
without slow paths, so a seed gives the same dense model whatever the family.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

from fastslow_jax.errors import UsageError

# The ablation arms (PAPER.md): `dense` (no slow path), `coupled` (the full model), the gate frozen
# at 0, and the slow path frozen at its init.
ARMS = ('dense', 'coupled', 'gate_frozen', 'slow_frozen')


@dataclasses.dataclass(frozen=True)
class Family:
  """What a family is and which ablation arms it has."""

  module: str  # The family's module under fastslow_jax.models.
  about: str
  gated: bool  # Has a zero-initialised gate (the `gate_frozen` arm applies).
  slow_layers: bool = True  # `model.slow_layers` picks which layers carry its slow path.

  @property
  def arms(self) -> tuple[str, ...]:
    """The arms this family has: every arm, less `gate_frozen` without a gate."""
    return tuple(arm for arm in ARMS if arm != 'gate_frozen' or self.gated)


FAMILIES: dict[str, Family] = {
    'fastslow': Family('fastslow', 'causal attention + gated slow attention over block means',
                       gated=True),
    'hourglass': Family('hourglass', 'pre layers, shortened inner layers at T/P, upsampled post '
                        'layers (Nawrot et al. 2021)', gated=False, slow_layers=False),
    'compressed': Family('compressed', 'causal attention + gated attention over compressed '
                         'blocks per head (NSA compression branch)', gated=True),
}


def family(name: str) -> Family:
  """The table entry for `name`; an unknown name is a one-line UsageError."""
  if name not in FAMILIES:
    raise UsageError(f'model.family={name!r} is invalid: choose one of {", ".join(FAMILIES)}.')
  return FAMILIES[name]


def module(cfg) -> ModuleType:
  """The module (a `models.model.FamilyModule`) implementing the model `cfg` (a ModelConfig)
  describes; `dense` is the plain decoder of the fastslow family whatever `cfg.family` says."""
  name = 'fastslow' if cfg.arm == 'dense' else cfg.family
  return importlib.import_module(f'fastslow_jax.models.{family(name).module}')
