r"""Sharded training for every arm: one loop, the arm is config.

    python -m fastslow_jax.train --workdir=/tmp/run \
        --config=configs/fastslow.py:arm=coupled,size=tiny,P=16

Parameters and optimizer state are created sharded by the logical rules (never whole on one
device); one step is `jax.jit` with explicit in/out shardings and the state donated. Running the
same command on the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from typing import Any

import flax
import jax
from etils import epath
import jax.numpy as jnp
import ml_collections
import optax
from absl import flags, logging
from flax import nnx
from ml_collections import config_flags

from fastslow_jax import checkpointing, cli, data, metrics, models, optim, sharding

CONFIG_FILE = 'config.json'
# Model fields that change how, not what, is computed: a checkpoint survives changing them.
EXECUTION_ONLY_FIELDS = ('dtype', 'attention_impl', 'remat')


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState


# --------------------------------------------------------------------------- config


def resolve_config(config: ml_collections.ConfigDict,
                   num_devices: int | None = None) -> ml_collections.ConfigDict:
  """Fills derived fields (vocab size from the data) and checks everything that needs no compile.

  Raises ValueError with a one-line message naming the field and the fix.
  """
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy; the caller's is untouched.
  vocab = data.vocab_size(config.data)
  if config.model.vocab_size == -1:
    config.model.vocab_size = vocab
  elif config.model.vocab_size < vocab:
    raise ValueError(f'model.vocab_size={config.model.vocab_size} is smaller than the data '
                     f'vocabulary ({vocab}): set it to -1 or >= {vocab}.')
  model_cfg = models.ModelConfig.from_mapping(config.model)
  num_devices = num_devices or jax.device_count()
  shape = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(config.mesh, num_devices)))
  dp = shape['data'] * shape['fsdp']
  if config.batch_size % (dp * config.grad_accum_steps):
    raise ValueError(f'batch_size={config.batch_size} must be divisible by data*fsdp*'
                     f'grad_accum_steps={dp * config.grad_accum_steps}: change batch_size or mesh.')
  if config.batch_size % jax.process_count():
    raise ValueError(f'batch_size={config.batch_size} must be divisible by the process count '
                     f'({jax.process_count()}).')
  for field, heads in (('num_heads', model_cfg.num_heads), ('slow_num_heads', model_cfg.slow_num_heads)):
    if heads % shape['tensor']:
      raise ValueError(f'model.{field}={heads} is not divisible by mesh.tensor={shape["tensor"]}: '
                       'choose a tensor size that divides the head count.')
  sharding.check_rules(config.sharding_rules)
  return config


# --------------------------------------------------------------------------- steps


def cross_entropy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of token losses, token count) in float32."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return losses.sum(), jnp.asarray(losses.size, jnp.float32)


def loss_fn(graphdef: nnx.GraphDef, params: nnx.State, tokens: jax.Array):
  """Mean next-token loss of windows `tokens` [B, T+1]."""
  total, count = cross_entropy(nnx.merge(graphdef, params)(tokens[:, :-1]), tokens[:, 1:])
  return total / count


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, accum_steps: int,
                    batch_sharding: jax.sharding.NamedSharding):
  """(state, tokens [B, T+1]) -> (state, metrics), averaging gradients over `accum_steps`."""
  grad_fn = jax.value_and_grad(lambda p, t: loss_fn(graphdef, p, t))

  def step(state: TrainState, tokens: jax.Array):
    if accum_steps == 1:
      loss, grads = grad_fn(state.params, tokens)
    else:
      # Micro-batch i takes rows i, i+A, ...: every device keeps its own rows.
      micro = tokens.reshape(-1, accum_steps, tokens.shape[-1]).swapaxes(0, 1)

      def accumulate(carry, mb):
        loss, grads = grad_fn(state.params, jax.lax.with_sharding_constraint(mb, batch_sharding))
        return jax.tree.map(jnp.add, carry, (loss, grads)), None

      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(accumulate, zeros, micro)
      loss, grads = jax.tree.map(lambda x: x / accum_steps, (loss, grads))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {'loss': loss, 'grad_norm': optax.tree.norm(grads)}

  return step


def make_eval_step(graphdef: nnx.GraphDef):
  """(params, tokens) -> (sum of token losses, token count)."""
  def step(params, tokens):
    return cross_entropy(nnx.merge(graphdef, params)(tokens[:, :-1]), tokens[:, 1:])
  return step


# --------------------------------------------------------------------------- setup


class Setup:
  """Everything a run derives from its config: mesh, model structure, optimizer, shardings."""

  def __init__(self, config: ml_collections.ConfigDict, devices=None):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh, devices)
    self.rules = sharding.check_rules(config.sharding_rules)
    self.model_config = models.ModelConfig.from_mapping(config.model)
    abstract_model = nnx.eval_shape(lambda: models.build(self.model_config, rngs=config.seed))
    self.graphdef, _ = nnx.split(abstract_model, nnx.Param)
    self.tx = optim.make_optimizer(config.optim, config.total_steps, abstract_model)
    if config.skip_nonfinite:
      self.tx = optax.apply_if_finite(self.tx, max_consecutive_errors=config.max_nonfinite_skips)
    self.lr = optim.learning_rate(config.optim, config.total_steps)
    self.abstract_state = jax.eval_shape(self._init)
    self.state_sharding = sharding.logical_shardings(self.abstract_state, self.mesh, self.rules)
    self.batch_sharding = sharding.batch_sharding(self.mesh)

  def _init(self) -> TrainState:
    params = nnx.state(models.build(self.model_config, rngs=self.config.seed), nnx.Param)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

  def init_state(self) -> TrainState:
    """A fresh state, created directly in its sharded layout."""
    with self.activate():
      return jax.jit(self._init, out_shardings=self.state_sharding)()

  def abstract_state_with_sharding(self) -> TrainState:
    return checkpointing.abstract_with_shardings(self.abstract_state, self.state_sharding)

  @contextlib.contextmanager
  def activate(self):
    """Context in which model code sees the mesh and the logical rules."""
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      yield

  def compile_train_step(self, global_batch: int):
    step = make_train_step(self.graphdef, self.tx, self.config.grad_accum_steps,
                           self.batch_sharding)
    jitted = jax.jit(step, in_shardings=(self.state_sharding, self.batch_sharding),
                     out_shardings=(self.state_sharding, sharding.replicated(self.mesh)),
                     donate_argnums=0)
    tokens = jax.ShapeDtypeStruct((global_batch, self.model_config.seq_len + 1), jnp.int32,
                                  sharding=self.batch_sharding)
    with self.activate():
      return jitted.lower(self.abstract_state_with_sharding(), tokens).compile()

  def compile_eval_step(self):
    return jax.jit(make_eval_step(self.graphdef),
                   in_shardings=(self.state_sharding.params, self.batch_sharding),
                   out_shardings=sharding.replicated(self.mesh))

  def global_batch(self, local_batch) -> jax.Array:
    """A global array from this process's rows (each process reads only its shard)."""
    return jax.make_array_from_process_local_data(self.batch_sharding, local_batch)


def validation_loss(setup: Setup, eval_step, params, dataset, num_batches: int) -> dict[str, float]:
  """Mean loss over the first `num_batches` global batches of `dataset` (fixed order)."""
  local_batch = setup.config.batch_size // jax.process_count()
  num_batches = max(1, min(num_batches, len(dataset) // setup.config.batch_size))
  iterator = data.make_iterator(dataset, batch_size=local_batch, seed=0,
                                shard_index=jax.process_index(), shard_count=jax.process_count(),
                                shuffle=False, num_epochs=1)
  total = count = 0.0
  with setup.activate():
    for _, batch in zip(range(num_batches), iterator):
      s, c = eval_step(params, setup.global_batch(batch))
      total, count = total + float(s), count + float(c)
  return {'loss': total / count, 'tokens': count, 'windows': num_batches * setup.config.batch_size}


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


def check_workdir(workdir: epath.Path, config: ml_collections.ConfigDict,
                  overwrite: bool) -> None:
  """Refuses a workdir whose checkpoints belong to a different model, unless `overwrite`."""
  saved, checkpoints = workdir / CONFIG_FILE, workdir / checkpointing.CHECKPOINT_DIR
  if not saved.exists() or not checkpoints.exists() or not any(checkpoints.iterdir()):
    return
  old = json.loads(saved.read_text())['model']
  changed = [f'model.{k}: {old.get(k)!r} -> {v!r}' for k, v in config.model.items()
             if k not in EXECUTION_ONLY_FIELDS and old.get(k) != v]
  if not changed:
    return
  if not overwrite:
    raise ValueError(f'{workdir} holds checkpoints of a different model ({"; ".join(changed)}): '
                     'use a new --workdir, or pass --overwrite to delete them.')
  if jax.process_index() == 0:
    logging.warning('Deleting %s (--overwrite; %s).', checkpoints, '; '.join(changed))
    checkpoints.rmtree()
    (workdir / metrics.METRICS_FILE).unlink(missing_ok=True)


def train(config: ml_collections.ConfigDict, workdir: str, *, devices=None,
          stop_at_step: int | None = None, overwrite: bool = False) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`; returns the last logged metrics and validation loss.

  `devices` defaults to all; `stop_at_step` ends the run early (with a checkpoint) without
  changing the schedule, as a preemption would: rerunning resumes there. `overwrite` deletes
  checkpoints of a different model instead of refusing the workdir.
  """
  config = resolve_config(config, len(devices) if devices else None)
  T, batch = config.model.seq_len, config.batch_size
  local_batch = batch // jax.process_count()
  train_ds = data.make_dataset(config.data, seq_len=T, split='train')
  val_ds = data.make_dataset(config.data, seq_len=T, split='validation')
  train_iter = data.make_iterator(train_ds, batch_size=local_batch, seed=config.seed,
                                  shard_index=jax.process_index(),
                                  shard_count=jax.process_count())
  setup = Setup(config, devices)
  workdir = epath.Path(workdir)
  check_workdir(workdir, config, overwrite)
  if jax.process_index() == 0:  # Only once the config and the data have been checked.
    workdir.mkdir(parents=True, exist_ok=True)

  mngr = checkpointing.manager(workdir, save_every=config.checkpoint_every,
                               keep=config.keep_checkpoints)
  try:
    return _run(config, setup, workdir, mngr, train_iter, val_ds, stop_at_step)
  finally:  # Also on errors: let pending async saves finish.
    mngr.wait_until_finished()
    mngr.close()


def _run(config, setup: Setup, workdir: epath.Path, mngr, train_iter, val_ds,
         stop_at_step: int | None) -> dict[str, Any]:
  """The loop proper: restore or init, then step, log, evaluate and checkpoint."""
  model_cfg, T, batch = setup.model_config, setup.model_config.seq_len, config.batch_size
  is_main = jax.process_index() == 0
  with setup.activate():
    state = checkpointing.restore_latest(mngr, setup.abstract_state_with_sharding(), train_iter,
                                         batch_size=batch)
  if state is None:
    state = setup.init_state()
  step = int(state.step)
  if is_main:  # The run is now committed to this config.
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2) + '\n')
    metrics.truncate_jsonl(workdir / metrics.METRICS_FILE, after_step=step)
  train_step = setup.compile_train_step(batch)
  eval_step = setup.compile_eval_step()

  flops = models.flops_per_token(model_cfg)
  peak = metrics.peak_flops()
  writer = metrics.MetricsWriter(workdir)
  if is_main:
    logging.info('%s: %s params, %.3g train FLOPs/token (fast %.3g, slow %.3g); mesh %s; '
                 'starting at step %d.', model_cfg.arm, f'{models.param_count(state.params):,}',
                 flops.total, flops.fast, flops.slow, dict(setup.mesh.shape), step)
  bar = metrics.progress(config.total_steps, initial=step)
  guard = NonFiniteGuard(config, mngr)
  last: dict[str, Any] = {}
  tick, steps_since = time.perf_counter(), 0
  end = min(config.total_steps, stop_at_step or config.total_steps)
  with setup.activate(), StopSignals() as stop:
    while step < end:
      state, step_metrics = train_step(state, setup.global_batch(next(train_iter)))
      step, steps_since = step + 1, steps_since + 1
      guard.push(step, step_metrics)  # Checks the previous step: dispatch stays ahead.
      bar.update(1)
      if stop.requested(mngr, step):
        end = step  # Checkpoint below, then leave.
        logging.warning('Stopping at step %d on %s; checkpoint in %s. Rerun the same command to '
                        'resume.', step, stop.reason, workdir)
      if step % config.log_every == 0 or step == end:
        step_metrics = jax.device_get(step_metrics)
        elapsed = time.perf_counter() - tick
        tokens_per_sec = steps_since * batch * T / elapsed
        achieved = tokens_per_sec * flops.total / jax.device_count()
        last = {'loss': float(step_metrics['loss']), 'lr': float(setup.lr(step - 1)),
                'grad_norm': float(step_metrics['grad_norm']),
                'tokens_per_sec': tokens_per_sec, 'steps_per_sec': steps_since / elapsed,
                'gflops_per_device': achieved / 1e9,
                'mfu': achieved / peak if peak else None,
                'gate': models.gate_values(state.params)}
        writer.write(step, last)
        bar.set_postfix(loss=f'{last["loss"]:.4f}', tok_s=f'{tokens_per_sec:,.0f}')
        tick, steps_since = time.perf_counter(), 0
      if step % config.eval_every == 0 or step == config.total_steps:
        val = validation_loss(setup, eval_step, state.params, val_ds, config.eval_batches)
        last['val_loss'] = val['loss']
        writer.write(step, {'val_loss': val['loss']})
        tick = time.perf_counter()  # Keep evaluation out of the throughput figures.
      if mngr.should_save(step) or step == end:
        guard.check_now()  # Never checkpoint a non-finite state.
        checkpointing.save(mngr, step, state, train_iter, batch_size=batch, force=step == end)
  bar.close()
  writer.close()
  if is_main:
    logging.info('Done at step %d: %s', step, json.dumps(last))
  return last


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
    raise FloatingPointError(
        f'non-finite loss {loss} / grad norm {grad_norm} at step {step}; the last good checkpoint '
        f'is step {self.mngr.latest_step()}: lower optim.lr or set skip_nonfinite=True, then rerun.')


# --------------------------------------------------------------------------- CLI

def define_flags() -> None:
  config_flags.DEFINE_config_file('config', None, 'Config file, e.g. '
                                  'configs/fastslow.py:arm=coupled,size=tiny,P=16.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, config).')
  flags.DEFINE_integer('stop_at_step', None, 'Stop (with a checkpoint) at this step without '
                       'changing the schedule; the same command without it resumes.')
  flags.DEFINE_bool('overwrite', False, 'Delete checkpoints of a different model in --workdir '
                    'instead of refusing it.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main():
  f = flags.FLAGS
  train(f.config, f.workdir, stop_at_step=f.stop_at_step, overwrite=f.overwrite)


if __name__ == '__main__':
  cli.run(main, define_flags)
