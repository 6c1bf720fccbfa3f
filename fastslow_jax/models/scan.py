"""Scanned layers: stacking blocks, running them with `jax.lax.scan`, remat policies, and
converting parameters between the scanned and the unrolled layout.

A model keeps each stack of layers as two lists under some path prefix (the `Decoder` at the
top, the hourglass per stage: `pre`, `slow/inner`, `post`):

    unrolled   <prefix>/blocks/<i>/...              layer i, for i < layers of the stack
    scanned    <prefix>/stack/<j>/...  [r, ...]     layer rep * k + j, for rep < r, j < k
               <prefix>/blocks/<m>/...              layer r * k + m: the unscanned remainder

where (k, r) = `config.repeating_groups` of the stack's layer pattern. A stacked parameter
carries the logical axis `layers` in front of its own, so the sharding rules place it like any
other axis (replicated by default). Both layouts of one seed hold the same numbers, so a
checkpoint converts either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fastslow_jax.models.remat import remat

LAYERS_AXIS = 'layers'
SHARDING_KEY = 'out_sharding'  # The Variable metadata holding logical axis names.


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


def build_stack(blocks: Sequence[nnx.Module], groups: tuple[int, int]) -> tuple[nnx.List, nnx.List]:
  """(stack, blocks) of a model for `blocks` in the layout `groups` = (k, r)."""
  k, r = groups
  stack = nnx.List([stack_modules(blocks[j:r * k:k]) for j in range(k)] if r else [])
  return stack, nnx.List(blocks[r * k:])


def run_stack(stack: nnx.List, blocks: nnx.List, h: jax.Array, policy: str):
  """The layers of (`stack`, `blocks`) over h in order: (output, per layer its block's parts)."""
  parts = []
  if len(stack):
    h, parts = scan_stack(stack, h, policy)
  for block in blocks:
    h, block_parts = remat(type(block).__call__, policy)(block, h)
    parts.append(block_parts)
  return h, parts


def check_unrolled(stack: nnx.List) -> None:
  """Decoding runs layer by layer: a scanned stack must be converted first."""
  if len(stack):
    raise ValueError('decoding runs on the unrolled layout: pass models.unrolled(model).')


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


def layer_path(path: tuple) -> tuple[tuple, str, int, tuple] | None:
  """(prefix, 'stack' | 'blocks', index, rest) of a parameter path inside a stack of layers."""
  for i, part in enumerate(path[:-1]):
    if part in ('stack', 'blocks') and isinstance(path[i + 1], int):
      return path[:i], part, path[i + 1], path[i + 2:]
  return None


def _flat(params: nnx.State) -> list[tuple[tuple, object]]:
  return [(tuple(_key(p) for p in path), leaf) for path, leaf in nnx.to_flat_state(params)]


def unstack_layers(params: nnx.State) -> nnx.State:
  """Scanned layout -> unrolled layout (see the module docstring); unrolled input is returned
  as is. Leaves may be `nnx.Variable`s or arrays (e.g. restored from a checkpoint)."""
  flat = _flat(params)
  groups: dict[tuple, tuple[set, int]] = {}  # prefix -> (stack indices, repeats)
  for path, leaf in flat:
    where = layer_path(path)
    if where and where[1] == 'stack':
      indices, _ = groups.get(where[0], (set(), 0))
      groups[where[0]] = (indices | {where[2]}, _value(leaf).shape[0])
  if not groups:
    return params
  out = []
  for path, leaf in flat:
    where = layer_path(path)
    if where is None or where[0] not in groups:
      out.append((path, leaf))
      continue
    prefix, kind, index, rest = where
    k, r = len(groups[prefix][0]), groups[prefix][1]
    if kind == 'stack':
      out += [((*prefix, 'blocks', rep * k + index, *rest), _unstacked(leaf, rep))
              for rep in range(r)]
    else:
      out.append(((*prefix, 'blocks', r * k + index, *rest), leaf))
  return nnx.from_flat_state(sorted(out, key=lambda item: _sort_key(item[0])))


def stack_layers(params: nnx.State, groups: dict[tuple, tuple[int, int]]) -> nnx.State:
  """Unrolled layout -> scanned layout with (k, r) = `groups[prefix]` for the stack of layers
  under each path prefix (`config.repeating_groups`; prefixes not listed stay unrolled)."""
  params = unstack_layers(params)
  layers: dict[tuple, dict[int, object]] = {}
  out = []
  for path, leaf in _flat(params):
    where = layer_path(path)
    k, r = groups.get(where[0], (1, 0)) if where else (1, 0)
    if where is None or r == 0:
      out.append((path, leaf))
      continue
    prefix, _, index, rest = where
    if index < r * k:
      layers.setdefault((*prefix, 'stack', index % k, *rest), {})[index // k] = leaf
    else:
      out.append(((*prefix, 'blocks', index - r * k, *rest), leaf))
  for path, by_rep in layers.items():
    leaves = [by_rep[rep] for rep in range(len(by_rep))]
    if isinstance(leaves[0], nnx.Variable):
      axes = leaves[0].get_metadata(SHARDING_KEY) if leaves[0].has_metadata(SHARDING_KEY) else None
      value = jnp.stack([v[...] for v in leaves])
      out.append((path, _with_axes(leaves[0], value, None if axes is None
                                   else (LAYERS_AXIS, *axes))))
    else:
      out.append((path, jnp.stack(leaves)))
  return nnx.from_flat_state(sorted(out, key=lambda item: _sort_key(item[0])))


def unrolled_paths(path: tuple, groups: dict[tuple, tuple[int, int]]) -> list[tuple]:
  """The unrolled paths of the layers a parameter at `path` holds in the layout `groups`
  describes (as `stack_layers` takes it): one for an unstacked parameter, r for a stacked one
  (in the order of its leading axis)."""
  where = layer_path(path)
  if where is None:
    return [path]
  prefix, kind, index, rest = where
  k, r = groups.get(prefix, (1, 0))
  if kind == 'blocks':
    return [(*prefix, 'blocks', r * k + index, *rest)]
  return [(*prefix, 'blocks', rep * k + index, *rest) for rep in range(r)]


def stored_path(path: tuple, groups: dict[tuple, tuple[int, int]]) -> tuple[tuple, int | None]:
  """Where the parameter at unrolled `path` lives in the layout `groups` describes: (its path
  there, its index on the stacked axis, or None where it is not stacked)."""
  where = layer_path(path)
  if where is None:
    return path, None
  prefix, _, index, rest = where
  k, r = groups.get(prefix, (1, 0))
  if index < r * k:
    return (*prefix, 'stack', index % k, *rest), index // k
  return (*prefix, 'blocks', index - r * k, *rest), None


def _sort_key(path):
  return tuple((0, p, '') if isinstance(p, int) else (1, 0, str(p)) for p in path)
