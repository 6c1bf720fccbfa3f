r"""Sharded training for every arm: one loop, the arm is config.

    python -m fastslow_jax.train --workdir=/tmp/run \
        --config=configs/fastslow.py:arm=coupled,size=tiny,P=16

Parameters and optimizer state are created sharded by the logical rules (never whole on one
device); one step is `jax.jit` with explicit in/out shardings and the state donated
(`fastslow_jax.runtime`). Running the same command on the same workdir resumes from the latest
checkpoint. This module is the loop: data, checkpoints, metrics, evaluation, signals, the
non-finite guard and the command line.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from typing import Any, NamedTuple

import jax
import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from fastslow_jax import checkpointing, cli, data, distributed, errors, metrics, models, runtime
from fastslow_jax.configs import schema
from fastslow_jax.interop import retrofit
from fastslow_jax.rundir import RunDir
from fastslow_jax.errors import NonFiniteError, UsageError


# --------------------------------------------------------------------------- the loop


class StopSignals:
  """SIGTERM / SIGINT (preemption, Ctrl-C) become a request to checkpoint and stop cleanly.

  With several processes, Orbax's preemption sync makes every process stop at the same step.
  """

  def __init__(self):
    self.reason: str | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    self.reason = signal.Signals(signum).name

  def requested(self, mngr, step: int) -> bool:
    if jax.process_count() > 1:
      if mngr.reached_preemption(step):
        self.reason = self.reason or 'preemption'
        return True
      return False
    return self.reason is not None


def check_workdir(run: RunDir, config: ml_collections.ConfigDict, source: data.Source,
                  overwrite: bool) -> None:
  """Refuses a workdir whose checkpoints belong to a different model (a model field changed that
  is not execution-only, `configs.schema`), unless `overwrite`, and always one trained on data of
  another tokenizer (`source`: the configured data)."""
  if not run.config.exists() or not run.has_checkpoints():
    return
  saved = run.read_config()
  data.check_tokenizer(source, saved.data.get('tokenizer_fingerprint'), where=str(run.path))
  changed = schema.model_changes(saved.model, config.model)
  if not changed:
    return
  if not overwrite:
    raise UsageError(f'{run.path} holds checkpoints of a different model ({"; ".join(changed)}): '
                     'use a new --workdir, or pass --overwrite to delete them.')
  if jax.process_index() == 0:
    logging.warning('Deleting %s (--overwrite; %s).', run.checkpoints, '; '.join(changed))
    run.checkpoints.rmtree()
    run.metrics.unlink(missing_ok=True)


class Datasets(NamedTuple):
  """The random-access windows a run trains and validates on (`data.Source.open`)."""
  train: Any
  validation: Any


def train(config: ml_collections.ConfigDict, workdir: str, *, devices=None,
          stop_at_step: int | None = None, overwrite: bool = False,
          datasets: Datasets | None = None) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`; returns the last logged metrics and validation loss.

  `devices` defaults to all; `stop_at_step` ends the run early (with a checkpoint; 0 checkpoints
  the initial state) without changing the schedule, as a preemption would: rerunning resumes
  there. `overwrite` deletes checkpoints of a different model instead of refusing the workdir.
  `datasets` replaces the sources `config.data` describes (an experiment's own data); the
  caller then owns their meaning, including on resume.
  """
  run = RunDir(workdir)
  run.check(write=True)  # Config, data and the filesystem are checked before anything is written.
  config = runtime.resolve_config(config, len(devices) if devices else None)
  with distributed.PeerWatch(config.peer_timeout, lambda: resume_line(run)):
    return _train(config, run, devices, stop_at_step, overwrite, datasets)


def _train(config, run: RunDir, devices, stop_at_step, overwrite, datasets) -> dict[str, Any]:
  """`train` from its resolved config on: data, setup, checks, then the loop."""
  T, batch = config.model.seq_len, config.batch_size
  source = data.source(config.data)
  if datasets is None:
    datasets = Datasets(*(source.open(split, seq_len=T) for split in data.SPLITS))
  train_iter = data.make_iterator(datasets.train, batch_size=batch // jax.process_count(),
                                  seed=config.seed, shard_index=jax.process_index(),
                                  shard_count=jax.process_count(), shuffle=config.data.shuffle)
  setup = runtime.TrainSetup(config, devices)
  check_workdir(run, config, source, overwrite)
  if config.init_from and not run.has_checkpoints():  # A new run: check its source up front.
    retrofit.check(config)
  if jax.process_index() == 0:  # Only once the config and the data have been checked.
    run.create()

  mngr = checkpointing.manager(run.path, save_every=config.checkpoint_every,
                               keep=config.keep_checkpoints)
  try:
    return _run(config, setup, run, mngr, train_iter, datasets.validation, stop_at_step)
  finally:  # Also on errors: let pending async saves finish.
    mngr.wait_until_finished()
    mngr.close()


def resume_line(run: RunDir) -> str:
  """What a stopped run says about resuming: its last complete checkpoint and the command."""
  steps = checkpointing.committed_steps(run.checkpoints)
  where = f'step {steps[-1]} in {run.checkpoints}' if steps else f'none yet in {run.checkpoints}'
  return (f'the last complete checkpoint is {where}; rerun the same command (every process) to '
          'resume')


def _run(config, setup: runtime.TrainSetup, run: RunDir, mngr, train_iter, val_ds,
         stop_at_step: int | None) -> dict[str, Any]:
  """The loop proper: restore or init, then step, log, evaluate and checkpoint."""
  model_cfg, batch = setup.model_config, config.batch_size
  is_main = jax.process_index() == 0
  with setup.activate():
    state = checkpointing.restore_latest(mngr, setup.abstract_state_with_sharding(), train_iter,
                                         batch_size=batch)
  if state is None:
    state = setup.init_state()
    if config.init_from:  # Shared parameters from a pretrained model, the rest fresh.
      state = state.replace(params=retrofit.load_shared(model_cfg, state.params,
                                                        retrofit.check(config)))
  step = int(state.step)
  if is_main:  # The run is now committed to this config.
    run.write_config(config)
    metrics.truncate_jsonl(run.metrics, after_step=step)
  end = min(config.total_steps, config.total_steps if stop_at_step is None else stop_at_step)
  if step >= end:  # Nothing to train: keep the state at hand (e.g. the init) checkpointed.
    if mngr.latest_step() != step:
      checkpointing.save(mngr, step, state, train_iter, batch_size=batch, force=True)
    return {}
  train_step = setup.compile_train_step(batch)
  eval_step = setup.compile_eval_step()

  flops = models.flops_per_token(model_cfg)
  peak = metrics.peak_flops()
  if is_main:
    logging.info('%s %s: %s params, %.3g train FLOPs/token (fast %.3g, slow %.3g); mesh %s; '
                 'starting at step %d.', model_cfg.family, model_cfg.arm,
                 f'{models.param_count(state.params):,}',
                 flops.total, flops.fast, flops.slow, dict(setup.mesh.shape), step)
  bar = metrics.progress(config.total_steps, initial=step)
  guard = NonFiniteGuard(config, mngr)
  last: dict[str, Any] = {}
  stopped_by = None  # What stopped the run before its end (a signal, a preemption), if anything.
  tick, steps_since = time.perf_counter(), 0
  with (setup.activate(), StopSignals() as stop, metrics.MetricsWriter(run) as writer,
        StepProfiler(config, str(run.tensorboard)) as profiler):
    while step < end:
      profiler.before_step(step + 1)
      state, step_metrics = train_step(state, setup.global_batch(next(train_iter)))
      step, steps_since = step + 1, steps_since + 1
      profiler.after_step(step, state)
      guard.push(step, step_metrics)  # Checks the previous step: dispatch stays ahead.
      bar.update(1)
      if stop.requested(mngr, step):
        end, stopped_by = step, stop.reason  # Checkpoint below, then leave.
        logging.warning('Stopping at step %d on %s; checkpoint in %s. Rerun the same command to '
                        'resume.', step, stop.reason, run.path)
      if step % config.log_every == 0 or step == end:
        last = _step_record(setup, state, step, step_metrics, steps=steps_since, since=tick,
                            flops=flops, peak=peak)
        writer.write(step, last)
        bar.set_postfix(loss=f'{last["loss"]:.4f}', tok_s=f'{last["tokens_per_sec"]:,.0f}')
        tick, steps_since = time.perf_counter(), 0
      if step % config.eval_every == 0 or step == config.total_steps:
        val = runtime.validation_loss(setup, eval_step, state.params, val_ds, config.eval_batches)
        last['val_loss'] = val['loss']
        writer.write(step, {'val_loss': val['loss']})
        # Keep evaluation out of the throughput figures: the next record counts from here.
        tick, steps_since = time.perf_counter(), 0
      if mngr.should_save(step) or step == end:
        guard.check_now()  # Never checkpoint a non-finite state.
        checkpointing.save(mngr, step, state, train_iter, batch_size=batch, force=step == end)
  bar.close()
  if is_main:
    logging.info('Done at step %d: %s', step, json.dumps(last))
  return {**last, 'stopped': stopped_by} if stopped_by else last


def _step_record(setup: runtime.TrainSetup, state, step: int, step_metrics, *, steps: int,
                 since: float, flops: models.FlopCount, peak: float | None) -> dict[str, Any]:
  """The metrics logged at `step`: loss, learning rate, gradient norm, throughput over the last
  `steps` steps (from `since`, the previous record's end), MFU where the device's peak is known,
  and the gates."""
  step_metrics = jax.device_get(step_metrics)  # Waits for the step: dispatch is not execution.
  seconds = time.perf_counter() - since
  tokens_per_sec = steps * setup.config.batch_size * setup.model_config.seq_len / seconds
  achieved = tokens_per_sec * flops.total / jax.device_count()
  return {'loss': float(step_metrics['loss']), 'lr': float(setup.lr(step - 1)),
          'grad_norm': float(step_metrics['grad_norm']),
          'tokens_per_sec': tokens_per_sec, 'steps_per_sec': steps / seconds,
          'gflops_per_device': achieved / 1e9, 'mfu': achieved / peak if peak else None,
          'gate': models.gate_values(state.params)}


class StepProfiler:
  """A `jax.profiler` trace of training steps `config.profile_start_step` to that plus
  `config.profile_steps` - 1 (steps numbered as in the metrics; 0: no trace) into `logdir`. The
  run's tensorboard directory shows it in TensorBoard's Profile tab beside the metrics (Perfetto
  opens it too); every process traces its own devices. A run resumed past the start traces
  nothing; one that ends inside the window stops the trace there."""

  def __init__(self, config: ml_collections.ConfigDict, logdir: str):
    self.first = config.profile_start_step
    self.last = self.first + config.profile_steps - 1
    self.logdir, self.active, self.traced = logdir, False, 0  # traced: last step in the trace.

  def __enter__(self) -> StepProfiler:
    return self

  def __exit__(self, *exc) -> None:
    self.stop()

  def before_step(self, step: int) -> None:
    """Called before the step that will be numbered `step` runs."""
    if self.first and step == self.first:
      jax.profiler.start_trace(self.logdir)
      self.active = True

  def after_step(self, step: int, state) -> None:
    """Called once step `step` has been dispatched (its results in `state`)."""
    if self.active:
      self.traced = step
      if step >= self.last:
        self.stop(state)

  def stop(self, state=None) -> None:
    if self.active:
      jax.block_until_ready(state)  # The window's steps run inside the trace.
      jax.profiler.stop_trace()
      self.active = False
      logging.info('Profile of steps %d-%d written under %s.', self.first, self.traced,
                   self.logdir)


class NonFiniteGuard:
  """Stops training on a non-finite loss or gradient norm, naming the step and the last good
  checkpoint; with `config.skip_nonfinite` the update is skipped instead (the optimizer is wrapped
  in `optax.apply_if_finite`), up to `config.max_nonfinite_skips` steps in a row."""

  def __init__(self, config: ml_collections.ConfigDict, mngr):
    self.skip, self.max_skips = config.skip_nonfinite, config.max_nonfinite_skips
    self.mngr, self.pending, self.streak = mngr, None, 0

  def push(self, step: int, step_metrics) -> None:
    self.check_now()
    self.pending = (step, step_metrics)

  def check_now(self) -> None:
    if self.pending is None:
      return
    step, m = self.pending
    self.pending = None
    loss, grad_norm = float(m['loss']), float(m['grad_norm'])
    if math.isfinite(loss) and math.isfinite(grad_norm):
      self.streak = 0
      return
    self.streak += 1
    if self.skip and self.streak <= self.max_skips:
      logging.warning('Non-finite loss %s / grad norm %s at step %d: update skipped (%d in a row).',
                      loss, grad_norm, step, self.streak)
      return
    raise NonFiniteError(
        f'non-finite loss {loss} / grad norm {grad_norm} at step {step}; the last good checkpoint '
        f'is step {self.mngr.latest_step()}: lower optim.lr or set skip_nonfinite=True, then rerun.')


# --------------------------------------------------------------------------- CLI

def define_flags() -> None:
  config_flags.DEFINE_config_file('config', None, 'Config file, e.g. '
                                  'configs/fastslow.py:arm=coupled,size=tiny,P=16.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, config).')
  flags.DEFINE_integer('stop_at_step', None, 'Stop (with a checkpoint) at this step without '
                       'changing the schedule; the same command without it resumes.', lower_bound=0)
  flags.DEFINE_bool('overwrite', False, 'Delete checkpoints of a different model in --workdir '
                    'instead of refusing it.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main():
  f = flags.FLAGS
  last = train(f.config, f.workdir, stop_at_step=f.stop_at_step, overwrite=f.overwrite)
  if last.get('stopped'):  # A signal stopped it before the end: the launchers rerun it.
    sys.exit(errors.EXIT_RESUMABLE)


if __name__ == '__main__':
  cli.run(main, define_flags)
