"""Orbax checkpoints of a training run: params, optimizer state, step and data-iterator state.

Layout: WORKDIR/checkpoints/<step>/{params, opt_state, step, data}. Training restores everything
with abstract targets that carry the current shardings; evaluation restores `params` alone, onto
whatever mesh it runs on.
"""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'


def manager(workdir: str | os.PathLike, *, save_every: int = 1, keep: int | None = None,
            read_only: bool = False) -> ocp.CheckpointManager:
  """The run's `CheckpointManager`: async saves every `save_every` steps, keeping `keep`."""
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_every, max_to_keep=keep, create=not read_only,
      enable_async_checkpointing=not read_only, read_only=read_only)
  return ocp.CheckpointManager(os.path.join(os.fspath(workdir), CHECKPOINT_DIR), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator, *,
         force: bool = False) -> bool:
  """Saves the train state and the data iterator at `step` (if due, or `force`)."""
  return mngr.save(step, force=force, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state.params),
      opt_state=ocp.args.StandardSave(state.opt_state),
      step=ocp.args.JsonSave({'step': int(step)}),
      data=grain.checkpoint.CheckpointSave(data_iterator),
  ))


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iterator):
  """Restores params, optimizer state and step onto `abstract_state`'s shardings; the data
  iterator is restored in place. Returns the train state."""
  restored = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_state.params),
      opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
      step=ocp.args.JsonRestore(),
      data=grain.checkpoint.CheckpointRestore(data_iterator),
  ))
  step_array = jax.device_put(restored.step['step'], abstract_state.step.sharding)
  return abstract_state.replace(step=step_array, params=restored.params,
                                opt_state=restored.opt_state)


def restore_params(mngr: ocp.CheckpointManager, step: int, abstract_params):
  """Restores only the parameters, laid out as `abstract_params` (shapes + new shardings)."""
  return mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params))).params


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` that carry `shardings` (restore targets for another mesh)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
