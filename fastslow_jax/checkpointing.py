"""Orbax checkpoints of a training run: params, optimizer state, step and data-iterator state.

Layout: <run dir>/checkpoints/<step>/{params, opt_state, step, data} (`rundir.RunDir`). Training restores everything
with abstract targets that carry the current shardings; evaluation restores `params` alone, onto
whatever mesh it runs on.
"""

from __future__ import annotations

import json
import os

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from fastslow_jax.rundir import RunDir
from fastslow_jax.errors import UsageError


def manager(workdir: str | os.PathLike, *, save_every: int = 1, keep: int | None = None,
            read_only: bool = False) -> ocp.CheckpointManager:
  """The run's `CheckpointManager`: async saves every `save_every` steps, keeping `keep`."""
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=0 if read_only else save_every, max_to_keep=keep, create=not read_only,
      enable_async_checkpointing=not read_only, read_only=read_only)
  # Orbax warns on every read-only manager that it is read-only: we asked for it.
  def asked_for(record) -> bool:
    return not (read_only and record.getMessage().startswith('Given directory is read only'))
  logger = logging.get_absl_logger()
  logger.addFilter(asked_for)
  try:
    return ocp.CheckpointManager(RunDir(workdir).checkpoints, options=options)
  finally:
    logger.removeFilter(asked_for)


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator, *, batch_size: int,
         force: bool = False) -> bool:
  """Saves the train state and the data iterator at `step` (if due, or `force`)."""
  return mngr.save(step, force=force, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state.params),
      opt_state=ocp.args.StandardSave(state.opt_state),
      step=ocp.args.JsonSave({'step': int(step), 'batch_size': int(batch_size),
                              'process_count': jax.process_count()}),
      data=grain.checkpoint.CheckpointSave(data_iterator),
  ))


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iterator, *,
            batch_size: int):
  """Restores params, optimizer state and step onto `abstract_state`'s shardings, and the data
  iterator in place. Returns the train state.

  Grain keeps one iterator state per process. A checkpoint from another process count resumes
  exactly when the global batch is unchanged and every process stood at the same batch index
  (our iterators read a global order in which batch k of all shards together is global batch k);
  anything else is refused with a message saying what to do.
  """
  meta = mngr.restore(step, args=ocp.args.Composite(step=ocp.args.JsonRestore())).step
  items = dict(params=ocp.args.StandardRestore(abstract_state.params),
               opt_state=ocp.args.StandardRestore(abstract_state.opt_state))
  same_layout = meta.get('process_count', 1) == jax.process_count()
  if same_layout:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  else:
    data_iterator.set_state(_resharded_data_state(mngr, step, meta, batch_size))
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  step_array = jax.device_put(meta['step'], abstract_state.step.sharding)
  return abstract_state.replace(step=step_array, params=restored.params,
                                opt_state=restored.opt_state)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, data_iterator, *,
                   batch_size: int):
  """The newest checkpoint that restores, or None when there is none at all.

  A damaged checkpoint (truncated or missing files) is skipped with a warning naming it; if every
  checkpoint is damaged this raises rather than silently starting again from step 0. Saves are
  atomic (Orbax commits a finished save by renaming its directory), so a crash mid-save leaves
  only an uncommitted temporary directory that is never listed here.
  """
  skipped = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state = restore(mngr, step, abstract_state, data_iterator, batch_size=batch_size)
    except CheckpointError:
      raise
    except Exception as e:  # Orbax / tensorstore raise many types for damaged files.
      logging.warning('Checkpoint %d in %s is damaged and skipped (%s: %s).', step,
                      mngr.directory, type(e).__name__, str(e).splitlines()[0] if str(e) else '')
      skipped.append(step)
      continue
    if skipped:
      logging.warning('Resuming from step %d; skipped damaged checkpoints %s.', step, skipped)
    else:
      logging.info('Resuming from step %d in %s.', step, mngr.directory)
    return state
  if skipped:
    raise CheckpointError(f'every checkpoint in {mngr.directory} is damaged (steps {skipped}): '
                          'move that directory away (or delete it) to start over.')
  return None


class CheckpointError(UsageError):
  """A checkpoint that exists but cannot be used as asked; the message says what to do."""


def _resharded_data_state(mngr: ocp.CheckpointManager, step: int, meta: dict,
                          batch_size: int) -> dict:
  """The iterator state for this process from a checkpoint written by another process count."""
  old = meta.get('process_count', 1)
  where = f'checkpoint {step} in {mngr.directory}'
  fix = (f'resume with {old} processes, or keep only the parameters: evaluate them, or start a '
         'new --workdir')
  if meta.get('batch_size') != batch_size:
    raise CheckpointError(f'{where} was written with batch_size={meta.get("batch_size")} on {old} '
                     f'processes; the data position cannot move to batch_size={batch_size} on '
                     f'{jax.process_count()} processes: {fix}.')
  data_dir = epath.Path(mngr.directory) / str(step) / 'data'
  states = [json.loads((data_dir / f'process_{i}-of-{old}.json').read_text()) for i in range(old)]
  if any(s != states[0] for s in states) or set(states[0]) != {'next_index'}:
    raise CheckpointError(f'{where} holds per-process data positions that cannot be re-sharded '
                     f'({states[0]} ...): {fix}.')
  logging.warning('Re-sharding the data position of %s from %d to %d processes.', where, old,
                  jax.process_count())
  return states[0]


def committed_steps(directory) -> list[int]:
  """The steps whose checkpoints Orbax finished committing in `directory` (oldest first), read
  from the directory itself: any thread may ask (a save in progress is not among them)."""
  from orbax.checkpoint._src.path import step as step_lib  # Orbax's own test of a commit.
  directory = epath.Path(directory)
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and step_lib.is_path_finalized(p))


def restore_params(mngr: ocp.CheckpointManager, step: int, abstract_params):
  """Restores only the parameters, laid out as `abstract_params` (shapes + new shardings)."""
  return mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params))).params


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` that carry `shardings` (restore targets for another mesh)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
