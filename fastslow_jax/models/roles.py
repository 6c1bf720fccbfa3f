"""Parameter roles are types: what a parameter is decides how the arms and the optimizer treat it.

    SlowParam      a slow path's parameter (slow attention, phi_theta, the compressed family's
                   block compressors, the hourglass's shortened stack): `slow_frozen` holds it
    Gate           a zero-initialised gate: `gate_frozen` holds it at 0; `gate_values` reads it
    NormScale      an RMSNorm scale (`SlowNormScale` inside a slow path)
    Embedding      the token embedding table

Every other parameter is a plain `nnx.Param`. Filters are types (`nnx.state(model, Gate)`), so no
module has to be named a certain way for freezing, weight decay or reporting to find it. A block
builds its slow path inside `with slow_path():`, and every parameter `layers.param` creates there
takes the slow variant of its role.
"""

from __future__ import annotations

import contextlib
import contextvars

from flax import nnx


class SlowParam(nnx.Param):
  """A parameter of a slow path."""


class Gate(nnx.Param):
  """A zero-initialised gate between a slow path and the fast path."""


class NormScale(nnx.Param):
  """The scale of a normalisation layer."""


class SlowNormScale(SlowParam, NormScale):
  """The scale of a normalisation layer inside a slow path."""


class Embedding(nnx.Param):
  """The token embedding table (the tied output head too)."""


# Role names as `optim.no_decay` spells them (`configs.schema.DECAY_ROLES`).
BY_NAME = {'norm': NormScale, 'gate': Gate, 'embedding': Embedding}

_IN_SLOW_PATH = contextvars.ContextVar('in_slow_path', default=False)
_SLOW_VARIANT = {nnx.Param: SlowParam, NormScale: SlowNormScale}


@contextlib.contextmanager
def slow_path():
  """Within: parameters created by `layers.param` belong to a slow path."""
  token = _IN_SLOW_PATH.set(True)
  try:
    yield
  finally:
    _IN_SLOW_PATH.reset(token)


def resolve(role: type[nnx.Param]) -> type[nnx.Param]:
  """The variable type of a new parameter of `role`, given where it is created."""
  return _SLOW_VARIANT.get(role, role) if _IN_SLOW_PATH.get() else role
