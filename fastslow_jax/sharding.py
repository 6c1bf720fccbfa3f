"""Device mesh and logical-axis rules.

The mesh has three axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and
optimizer state sharded) and `tensor` (tensor parallel). Model code only names logical axes; the
rules in the config (`config.sharding_rules`, default `configs.schema.SHARDING_RULES`) decide
where each goes, MaxText style:

    ('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('heads', 'tensor'), ('mlp', 'tensor'), ...
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from fastslow_jax.configs import schema
from fastslow_jax.errors import UsageError

MESH_AXES = ('data', 'fsdp', 'tensor')
LOGICAL_AXES = ('batch', 'length', 'vocab', 'embed', 'heads', 'kv_heads', 'kv', 'mlp', 'norm',
                'layers', 'compress')
# Logical axes that rules written before the axis existed may leave out, and where they then go:
# the stacked axis of scanned layers and the compressed family's MLP width, both replicated; key
# and value heads (grouped-query attention) wherever the rules put the heads.
_LATER_AXES = (('layers', None), ('compress', None), ('kv_heads', 'heads'))

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def parse_mesh(text: str, flag: str = '--mesh') -> dict[str, int]:
  """'data,fsdp,tensor' (e.g. '1,-1,1') as {'data': 1, 'fsdp': -1, 'tensor': 1}; a one-line
  UsageError naming `flag` otherwise."""
  parts = [p.strip() for p in str(text).split(',')]
  sizes = [int(p) for p in parts if p.lstrip('-').isdigit()]
  fix = (f'{flag}={text!r} is invalid: give three sizes data,fsdp,tensor, positive integers of '
         'which one may be -1 (the rest of the devices), e.g. 1,-1,1.')
  if len(sizes) != len(parts) or len(sizes) != len(MESH_AXES) or sizes.count(-1) > 1:
    raise UsageError(fix)
  for axis, size in zip(MESH_AXES, sizes):
    try:
      schema.check_value(f'mesh.{axis}', size)
    except UsageError:
      raise UsageError(fix) from None
  return dict(zip(MESH_AXES, sizes))


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves mesh sizes (checked by `schema.check`) in MESH_AXES order; one size may be -1,
  meaning 'the rest'."""
  shape = [sizes[a] for a in MESH_AXES]
  given = ', '.join(f'mesh.{a}={s}' for a, s in zip(MESH_AXES, shape))
  if shape.count(-1) > 1:
    raise UsageError(f'{given} is invalid: at most one size may be -1 ("the rest").')
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise UsageError(f'{given} cannot fill {num_devices} devices: the fixed sizes must divide '
                       f'{num_devices}.')
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise UsageError(f'{given} multiplies to {math.prod(shape)} but there are {num_devices} '
                     f'devices: make the product {num_devices} (or set one size to -1).')
  return tuple(shape)


def make_mesh(sizes, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `devices` (default: all) with Auto axes, so jit propagates shardings.

  `sizes` holds data, fsdp, tensor and optionally `dcn_data`: the number of slices (TPU
  multi-slice) or hosts that the data axis spans over the slower data-centre network. FSDP and
  tensor parallelism then stay inside a slice, on the fast interconnect (ICI).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(sizes, len(devices))
  dcn = sizes.get('dcn_data', 1)
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if dcn > 1:
    if shape[0] % dcn:
      raise UsageError(f'mesh.data={shape[0]} is not a multiple of mesh.dcn_data={dcn}: the data '
                       'axis spans the slices, so make it a multiple of the slice count.')
    ici = (shape[0] // dcn, *shape[1:])
    # TPU slices report distinct slice indices; elsewhere (GPU hosts, CPU processes) a process is
    # the unit connected by the slower network.
    granule_is_process = len({getattr(d, 'slice_index', 0) for d in devices}) == 1
    grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn, 1, 1), devices,
                                                process_is_granule=granule_is_process)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types)
  # A subset, or compile-only devices of a described TPU topology (ahead-of-time compilation).
  return Mesh(mesh_utils.create_device_mesh(shape, devices), MESH_AXES, axis_types=axis_types)


def check_rules(rules: Rules) -> Rules:
  """Rules as a tuple of pairs; every logical axis must be mapped (None = replicated), except
  those added after older configs were written (`_LATER_AXES`, completed here)."""
  rules = tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in rules)
  given = dict(rules)
  rules += tuple((name, given.get(target) if target in LOGICAL_AXES else target)
                 for name, target in _LATER_AXES if name not in given)
  missing = sorted(set(LOGICAL_AXES) - {k for k, _ in rules})
  if missing:
    raise UsageError(f'sharding_rules lacks logical axes {missing}: map each to a mesh axis or None.')
  for name, target in rules:
    targets = target if isinstance(target, tuple) else (target,)
    bad = [t for t in targets if t is not None and t not in MESH_AXES]
    if bad:
      raise UsageError(f'sharding_rules maps {name!r} to unknown mesh axes {bad}: use {MESH_AXES}.')
  return rules


def logical_shardings(tree, mesh: Mesh, rules: Rules):
  """NamedShardings for a tree of nnx Variables (abstract or concrete) by their logical axes."""
  with nnx.logical_axis_rules(rules):
    return nnx.get_named_sharding(tree, mesh)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a [batch, ...] array: batch split over (data, fsdp)."""
  return NamedSharding(mesh, PartitionSpec(('data', 'fsdp')))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
