"""The training runtime: config resolution, the model and train setups, the jitted steps.

Everything a tool needs to run the model on a mesh, without the training loop:

    config = runtime.resolve_config(config)         # derived fields + checks, no compile
    setup = runtime.TrainSetup(config)               # mesh, model, optimizer, state shardings
    state = setup.init_state()                       # created sharded, never whole on one device
    step = setup.compile_train_step(config.batch_size)

`ModelSetup` is the parameters-only part (evaluation, decoding, analyses); `TrainSetup` adds the
optimizer and its state. The loop itself lives in `fastslow_jax.train`.
"""

from __future__ import annotations

import contextlib
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from fastslow_jax import checkpointing, data, models, optim, sharding
from fastslow_jax.configs import schema
from fastslow_jax.errors import UsageError


# XLA:CPU options of the train step. XLA:CPU's default also hands elementwise ops to YNNPACK; the
# weight gradients' dots (contracting batch and time together) then read a transposed copy of the
# activation gradient into which its elementwise ops are fused again, with strided reads: a
# quarter of a CPU step at d_model=128, T=64, 40% at `small`. With YNNPACK taking dots only that
# copy is a plain transpose: 1.25x faster steps there, 1.4x to 1.6x at `small` (README,
# Benchmarks). XLA_FLAGS naming an option wins.
CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}


def compiler_options(devices) -> dict[str, str]:
  """XLA options for compiling the train step on `devices`: `CPU_COMPILER_OPTIONS` on CPUs."""
  if any(d.platform != 'cpu' for d in devices):
    return {}
  env = os.environ.get('XLA_FLAGS', '')
  return {k: v for k, v in CPU_COMPILER_OPTIONS.items() if f'--{k}=' not in env}


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState


# --------------------------------------------------------------------------- config


def resolve_config(config: ml_collections.ConfigDict,
                   num_devices: int | None = None) -> ml_collections.ConfigDict:
  """Fills derived fields (vocab size from the data) and checks everything that needs no compile.

  Raises UsageError with a one-line message naming the field and the fix. Every field is first
  checked against its declaration (`configs.schema`).
  """
  schema.check(config)
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy; the caller's is untouched.
  config.data.path = data.absolute_path(config.data.path)  # config.json is read from anywhere.
  source = data.source(config.data)
  # What the data are tokenized with, recorded in config.json: a resumed run refuses other data.
  config.data.tokenizer_fingerprint = source.fingerprint
  vocab = source.vocab_size
  if config.model.vocab_size == -1:
    config.model.vocab_size = vocab
  elif config.model.vocab_size < vocab:
    raise UsageError(f'model.vocab_size={config.model.vocab_size} is smaller than the data '
                     f'vocabulary ({vocab}): set it to -1 or >= {vocab}.')
  model_cfg = models.ModelConfig.from_mapping(config.model)
  num_devices = num_devices or jax.device_count()
  shape = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(config.mesh, num_devices)))
  dp = shape['data'] * shape['fsdp']
  if config.batch_size % (dp * config.grad_accum_steps):
    raise UsageError(f'batch_size={config.batch_size} must be divisible by data*fsdp*'
                     f'grad_accum_steps={dp * config.grad_accum_steps}: change batch_size or mesh.')
  if config.batch_size % jax.process_count():
    raise UsageError(f'batch_size={config.batch_size} must be divisible by the process count '
                     f'({jax.process_count()}).')
  for field, heads in (('num_heads', model_cfg.num_heads), ('num_kv_heads', model_cfg.kv_heads),
                       ('slow_num_heads', model_cfg.slow_num_heads)):
    if heads % shape['tensor']:
      raise UsageError(f'model.{field}={heads} is not divisible by mesh.tensor={shape["tensor"]}: '
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


def make_eval_step(graphdef: nnx.GraphDef, per_position: bool = False):
  """(params, tokens) -> (sum of token losses, token count); `per_position`: the sums at each
  position of the window [T] (over the batch) instead of their total."""
  def step(params, tokens):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    if not per_position:
      return cross_entropy(logits, tokens[:, 1:])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             tokens[:, 1:])
    return losses.sum(0), jnp.asarray(losses.size, jnp.float32)
  return step


# --------------------------------------------------------------------------- setups


class ModelSetup:
  """What running the model needs: mesh, logical rules, model structure, parameter shardings.

  No optimizer: evaluation, decoding and analyses restore parameters onto `abstract_params()`.
  """

  def __init__(self, config: ml_collections.ConfigDict, devices=None):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh, devices)
    self.rules = sharding.check_rules(config.sharding_rules)
    self.model_config = models.ModelConfig.from_mapping(config.model)
    models.check_attention_platform(self.model_config.attention_impl, self.mesh.devices.flat)
    self.abstract_model = nnx.eval_shape(lambda: models.build(self.model_config, rngs=config.seed))
    self.graphdef, params = nnx.split(self.abstract_model, nnx.Param)
    self.params_sharding = sharding.logical_shardings(params, self.mesh, self.rules)
    self.batch_sharding = sharding.batch_sharding(self.mesh)

  @contextlib.contextmanager
  def activate(self):
    """Context in which model code sees the mesh and the logical rules."""
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      yield

  def abstract_params(self) -> nnx.State:
    """Shapes, dtypes and shardings of the parameters (restore targets for this mesh)."""
    _, params = nnx.split(self.abstract_model, nnx.Param)
    return checkpointing.abstract_with_shardings(params, self.params_sharding)

  def model(self, params: nnx.State) -> models.LanguageModel:
    return nnx.merge(self.graphdef, params)

  def compile_eval_step(self, per_position: bool = False):
    return jax.jit(make_eval_step(self.graphdef, per_position),
                   in_shardings=(self.params_sharding, self.batch_sharding),
                   out_shardings=sharding.replicated(self.mesh))

  def global_batch(self, local_batch) -> jax.Array:
    """A global array from this process's rows (each process reads only its shard)."""
    return jax.make_array_from_process_local_data(self.batch_sharding, local_batch)


class TrainSetup(ModelSetup):
  """A `ModelSetup` plus the optimizer, the train state's shardings and the compiled step."""

  def __init__(self, config: ml_collections.ConfigDict, devices=None):
    super().__init__(config, devices)
    self.tx = optim.make_optimizer(config.optim, config.total_steps, self.abstract_model)
    if config.skip_nonfinite:
      self.tx = optax.apply_if_finite(self.tx, max_consecutive_errors=config.max_nonfinite_skips)
    self.lr = optim.learning_rate(config.optim, config.total_steps)
    self.abstract_state = jax.eval_shape(self._init)
    self.state_sharding = sharding.logical_shardings(self.abstract_state, self.mesh, self.rules)

  def _init(self) -> TrainState:
    params = nnx.state(models.build(self.model_config, rngs=self.config.seed), nnx.Param)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

  def init_state(self) -> TrainState:
    """A fresh state, created directly in its sharded layout."""
    with self.activate():
      return jax.jit(self._init, out_shardings=self.state_sharding)()

  def abstract_state_with_sharding(self) -> TrainState:
    return checkpointing.abstract_with_shardings(self.abstract_state, self.state_sharding)

  def train_step_fn(self):
    """The train step, not yet jitted: (state, tokens) -> (state, metrics)."""
    return make_train_step(self.graphdef, self.tx, self.config.grad_accum_steps,
                           self.batch_sharding)

  def compile_train_step(self, global_batch: int):
    jitted = jax.jit(self.train_step_fn(), in_shardings=(self.state_sharding, self.batch_sharding),
                     out_shardings=(self.state_sharding, sharding.replicated(self.mesh)),
                     donate_argnums=0)
    tokens = jax.ShapeDtypeStruct((global_batch, self.model_config.seq_len + 1), jnp.int32,
                                  sharding=self.batch_sharding)
    with self.activate():
      return jitted.lower(self.abstract_state_with_sharding(), tokens).compile(
          compiler_options(self.mesh.devices.flat))


def validation_loss(setup: ModelSetup, eval_step, params, dataset,
                    num_batches: int) -> dict[str, float]:
  """Mean loss over the first `num_batches` global batches of `dataset` (fixed order); with a
  per-position `eval_step`, also the mean loss at each position of the window
  (`loss_by_position`, float64 [T])."""
  local_batch = setup.config.batch_size // jax.process_count()
  num_batches = max(1, min(num_batches, len(dataset) // setup.config.batch_size))
  iterator = data.make_iterator(dataset, batch_size=local_batch, seed=0,
                                shard_index=jax.process_index(), shard_count=jax.process_count(),
                                shuffle=False, num_epochs=1)
  total, count = 0.0, 0.0
  with setup.activate():
    for _, batch in zip(range(num_batches), iterator):
      s, c = eval_step(params, setup.global_batch(batch))
      total, count = total + np.asarray(s, np.float64), count + float(c)
  windows = num_batches * setup.config.batch_size
  out = {'loss': float(np.sum(total)) / count, 'tokens': count, 'windows': windows}
  if np.ndim(total):
    out['loss_by_position'] = total / windows
  return out
