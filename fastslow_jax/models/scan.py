"""Scanned layers: stacking blocks, running them with `jax.lax.scan`, remat policies, and
converting parameters between the scanned and the unrolled layout.

Layouts (parameter paths of a `Decoder`):

    unrolled   blocks/<i>/...                 layer i, for i < num_layers
    scanned    stack/<j>/...  [r, ...]        layer rep * k + j, for rep < r, j < k
               blocks/<m>/...                 layer r * k + m: the unscanned remainder

where (k, r) = `ModelConfig.scan_groups`. A stacked parameter carries the logical axis `layers`
in front of its own, so the sharding rules place it like any other axis (replicated by default).
Both layouts of one seed hold the same numbers, so a checkpoint converts either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fastslow_jax.models.fastslow import SAVED_NAMES

LAYERS_AXIS = 'layers'
SHARDING_KEY = 'out_sharding'  # The Variable metadata holding logical axis names.

_POLICIES = {
    'full': None,  # Save nothing: recompute the whole block.
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'minimal': jax.checkpoint_policies.save_only_these_names(*SAVED_NAMES),
}


def remat(fn, policy: str, *, prevent_cse: bool = True):
  """`fn` rematerialised in the backward pass under a named policy ('none' returns `fn`)."""
  if policy == 'none':
    return fn
  return jax.checkpoint(fn, policy=_POLICIES[policy], prevent_cse=prevent_cse)


def _with_axes(variable: nnx.Variable, value, axes) -> nnx.Variable:
  out = variable.replace(value)
  if variable.has_metadata(SHARDING_KEY):
    out.set_metadata(SHARDING_KEY, axes)
  return out


def stack_modules(modules: Sequence[nnx.Module]) -> nnx.Module:
  """One module of the same structure whose variables stack those of `modules` on a new leading
  `layers` axis."""
  graphdef, first = nnx.split(modules[0])
  states = [nnx.state(m) for m in modules]

  def stack(*variables):
    v = variables[0]
    axes = v.get_metadata(SHARDING_KEY) if v.has_metadata(SHARDING_KEY) else None
    value = jnp.stack([x[...] for x in variables])
    return _with_axes(v, value, None if axes is None else (LAYERS_AXIS, *axes))

  stacked = jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable))
  del first
  return nnx.merge(graphdef, stacked)


def scan_stack(stack: nnx.List, h: jax.Array, policy: str):
  """Runs the k stacked blocks of `stack` r times over `h` [B, T, D]; returns the output and
  each block call's parts, per layer in order (layer rep * k + j)."""
  graphdef, state = nnx.split(stack)

  def body(h, layer_state):
    group = nnx.merge(graphdef, layer_state)
    group_parts = []
    for block in group:
      h, parts = block(h)
      group_parts.append(parts)
    return h, group_parts

  h, stacked_parts = jax.lax.scan(remat(body, policy, prevent_cse=False), h, state)
  repeats = jax.tree.leaves(state)[0].shape[0]
  per_layer = [jax.tree.map(lambda x, rep=rep: x[rep], group_parts)
               for rep in range(repeats) for group_parts in stacked_parts]
  return h, per_layer


# --------------------------------------------------------------------------- layout conversion


def _key(part) -> str | int:
  return getattr(part, 'key', getattr(part, 'idx', part))


def _value(leaf):
  return leaf[...] if isinstance(leaf, nnx.Variable) else leaf


def _unstacked(leaf, rep: int):
  if isinstance(leaf, nnx.Variable):
    axes = leaf.get_metadata(SHARDING_KEY) if leaf.has_metadata(SHARDING_KEY) else None
    return _with_axes(leaf, leaf[...][rep], None if axes is None else tuple(axes[1:]))
  return leaf[rep]


def unstack_layers(params: nnx.State) -> nnx.State:
  """Scanned layout -> unrolled layout (see the module docstring); unrolled input is returned
  as is. Leaves may be `nnx.Variable`s or arrays (e.g. restored from a checkpoint)."""
  flat = [(tuple(_key(p) for p in path), leaf) for path, leaf in nnx.to_flat_state(params)]
  stacked = [(path, leaf) for path, leaf in flat if path[0] == 'stack']
  if not stacked:
    return params
  k = len({path[1] for path, _ in stacked})
  r = _value(stacked[0][1]).shape[0]
  out = []
  for path, leaf in flat:
    if path[0] == 'stack':
      out += [(('blocks', rep * k + path[1], *path[2:]), _unstacked(leaf, rep)) for rep in range(r)]
    elif path[0] == 'blocks':
      out.append((('blocks', r * k + path[1], *path[2:]), leaf))
    else:
      out.append((path, leaf))
  return nnx.from_flat_state(sorted(out, key=lambda item: _sort_key(item[0])))


def stack_layers(params: nnx.State, groups: tuple[int, int]) -> nnx.State:
  """Unrolled layout -> scanned layout with (k, r) = `groups` (`ModelConfig.scan_groups`)."""
  params = unstack_layers(params)
  k, r = groups
  if r == 0:
    return params
  flat = [(tuple(_key(p) for p in path), leaf) for path, leaf in nnx.to_flat_state(params)]
  layers: dict[tuple, dict[int, object]] = {}
  out = []
  for path, leaf in flat:
    if path[0] == 'blocks' and path[1] < r * k:
      layers.setdefault(('stack', path[1] % k, *path[2:]), {})[path[1] // k] = leaf
    elif path[0] == 'blocks':
      out.append((('blocks', path[1] - r * k, *path[2:]), leaf))
    else:
      out.append((path, leaf))
  for path, by_rep in layers.items():
    leaves = [by_rep[rep] for rep in range(r)]
    if isinstance(leaves[0], nnx.Variable):
      axes = leaves[0].get_metadata(SHARDING_KEY) if leaves[0].has_metadata(SHARDING_KEY) else None
      value = jnp.stack([v[...] for v in leaves])
      out.append((path, _with_axes(leaves[0], value, None if axes is None
                                   else (LAYERS_AXIS, *axes))))
    else:
      out.append((path, jnp.stack(leaves)))
  return nnx.from_flat_state(sorted(out, key=lambda item: _sort_key(item[0])))


def _sort_key(path):
  return tuple((0, p, '') if isinstance(p, int) else (1, 0, str(p)) for p in path)
