r"""Long context on this machine: full attention beside a local fast path with the slow path.

    python -m experiments.bench_long_context                # train step time and memory vs T
    python -m experiments.bench_long_context --mode=decode  # decode ms/token and cache bytes
    python -m experiments.bench_long_context --attention_impl=cudnn --dtype=bfloat16  # on a GPU

`--mode=train`: per T in `--seq_lens`, one jitted train step (forward, backward, AdamW) of the
`--size` model on random tokens, `dense full` (causal attention over all T) and `fastslow W=..`
(the coupled arm with a local fast path of `--window` and its slow path, P = `--P`), timed
round-robin in one process (`timing.round_robin`, median of `--steps` rounds) so that the
machine's load hits both alike; memory is XLA's compiled estimate of the step (arguments +
outputs - aliased + temporaries + code). A step whose estimate exceeds `--memory_gib` is
reported as not fitting and not run.

`--mode=decode`: per context length c in `--contexts`, the cost of one decoding step with c
positions of context: a short prompt is prefilled with caches for c positions, then `--tokens`
jitted decode steps (caches donated) run at positions c - tokens .. c - 1; the work of a step does
not depend on what the cache holds. Cache bytes per layer stack: the fast path's keys and values
(all c positions, or the ring of W) and the slow path's state (one entry per completed block).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

from experiments import timing
from fastslow_jax import cli, configlib, devices, models
from fastslow_jax.errors import UsageError


def define_flags() -> None:
  flags.DEFINE_enum('mode', 'train', ['train', 'decode'], 'What to measure.')
  flags.DEFINE_string('size', 'small', 'Model size of the fastslow config.')
  flags.DEFINE_list('seq_lens', ['1024', '2048', '4096', '8192', '16384'], 'train: T.')
  flags.DEFINE_list('contexts', ['1024', '2048', '4096', '8192', '16384'],
                    'decode: context lengths.')
  flags.DEFINE_integer('window', 256, 'W of the local fast path.', lower_bound=1)
  flags.DEFINE_integer('P', 16, 'Pooling period of the slow path.', lower_bound=1)
  flags.DEFINE_integer('batch_size', 1, 'Sequences per step.', lower_bound=1)
  flags.DEFINE_integer('steps', 3, 'train: timed rounds (median reported).', lower_bound=1)
  flags.DEFINE_integer('tokens', 32, 'decode: steps per round.', lower_bound=1)
  flags.DEFINE_integer('rounds', 3, 'decode: timed rounds (median reported).', lower_bound=1)
  flags.DEFINE_integer('target_T', 8192, 'train: the T whose step-time ratio is checked.',
                       lower_bound=1)
  flags.DEFINE_float('target_ratio', 0.5, 'train: the windowed step\'s target, a fraction of '
                     'dense full\'s at --target_T.', lower_bound=0)
  flags.DEFINE_enum('remat', 'full', list(models.REMAT_POLICIES), 'train: remat policy of both.')
  flags.DEFINE_string('attention_impl', 'xla', 'Attention backend of both.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype of both '
                    "(cuDNN attention takes bfloat16).")
  flags.DEFINE_float('memory_gib', None, 'train: a step whose compiled estimate exceeds this is '
                     'not run (default: the accelerator\'s memory, or on the CPU 60% of the '
                     'memory available at start).', lower_bound=0)


def memory_limit_gib(f) -> float:
  """--memory_gib, else the device's memory, else 60% of the host's available memory."""
  if f.memory_gib is not None:
    return f.memory_gib
  hbm = devices.hbm_bytes(jax.devices()[0])
  if hbm:
    return hbm / 2**30
  return 0.6 * os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES') / 2**30


def lengths(flag: str, values, least: int) -> list[int]:
  """A flag's list of lengths as ints, each at least `least`, or a one-line UsageError."""
  try:
    out = [int(v) for v in values]
  except ValueError:
    raise UsageError(f'--{flag}={",".join(values)}: give whole numbers of tokens.') from None
  if not out or min(out) < least:
    raise UsageError(f'--{flag}={",".join(values)}: give lengths of at least {least}.')
  return out


def model_overrides(f, T: int, window: int) -> dict:
  return {'model.seq_len': T, 'model.vocab_size': 256, 'model.fast_window': window,
          'model.attention_impl': f.attention_impl, 'model.remat': f.remat,
          'model.dtype': f.dtype, 'model.scan_layers': False, 'batch_size': f.batch_size,
          'mesh.data': 1}


def models_of(f) -> dict[str, tuple[str, int]]:
  """label: (arm, window)."""
  return {'dense full': ('dense', 0), f'fastslow W={f.window}': ('coupled', f.window)}


# --------------------------------------------------------------------------- train


def bench_train(f) -> None:
  seq_lens = lengths('seq_lens', f.seq_lens, 2)
  print(f'{jax.devices()[0].device_kind}; size {f.size}, batch {f.batch_size}, remat {f.remat}, '
        f'attention {f.attention_impl}, {f.dtype}, P={f.P}; median of {f.steps} interleaved '
        'rounds')
  header = (f'{"T":>6} {"model":<16} {"step ms":>9} {"tokens/s":>9} {"memory GiB":>10} '
            f'{"vs dense":>8}')
  print(header + '\n' + '-' * len(header), flush=True)
  ratios, limit = {}, memory_limit_gib(f)
  for T in seq_lens:
    members = {}
    for label, (arm, window) in models_of(f).items():
      config = configlib.load(f'fastslow:arm={arm},size={f.size},P={f.P}',
                              model_overrides(f, T, window))
      member = timing.TrainStep(config, jax.devices()[:1])
      member.memory = devices.compiled_memory(member.compiled)['total'] / 2**30
      members[label] = member
    running = {k: m for k, m in members.items() if m.memory <= limit}
    timing.round_robin(list(running.values()), f.steps)
    dense = running['dense full'].median() if 'dense full' in running else None
    for label, m in members.items():
      if label not in running:
        print(f'{T:>6} {label:<16} {"does not fit here":>19} {m.memory:>10.2f}', flush=True)
        continue
      step = m.median()
      ratio = f'{step / dense:>8.3f}' if dense else f'{"-":>8}'
      print(f'{T:>6} {label:<16} {step * 1e3:>9.1f} {f.batch_size * T / step:>9.0f} '
            f'{m.memory:>10.2f} {ratio}', flush=True)
    if T == f.target_T and dense:
      windowed = running.get(f'fastslow W={f.window}')
      ratios[T] = windowed.median() / dense if windowed else None
    del members, running
  for T, ratio in ratios.items():
    print(f'Target at T={T}: fastslow W={f.window} step <= {f.target_ratio:g}x dense full: ' + (
        'not run' if ratio is None else
        f'{ratio:.3f}x, {"met" if ratio <= f.target_ratio else "not met"}'), flush=True)


# --------------------------------------------------------------------------- decode


class Decoding(timing.Timed):
  """`tokens` decode steps of a random-weight model at positions c - tokens .. c - 1 of caches
  for c positions, filled by prefilling a short prompt."""

  def __init__(self, f, arm: str, window: int, context: int):
    config = configlib.load(f'fastslow:arm={arm},size={f.size},P={f.P}',
                            model_overrides(f, context, window))
    cfg = models.ModelConfig.from_mapping(config.model)
    graphdef, self.params = nnx.split(models.build(cfg, rngs=0))
    prompt = jnp.ones((f.batch_size, min(64, context - f.tokens)), jnp.int32)
    lengths = jnp.full((f.batch_size,), prompt.shape[1], jnp.int32)
    self.caches = jax.jit(lambda p: nnx.merge(graphdef, p).prefill(prompt, lengths, context)[1])(
        self.params)
    self.fast_bytes = sum(x.nbytes for c in self.caches for x in jax.tree.leaves(c['fast']))
    self.slow_bytes = sum(x.nbytes for c in self.caches for x in jax.tree.leaves(c.get('slow')))
    self.decode = jax.jit(lambda p, t, pos, c: nnx.merge(graphdef, p).decode(t, pos, c),
                          donate_argnums=3)
    self.positions = [jnp.full((f.batch_size,), context - f.tokens + i, jnp.int32)
                      for i in range(f.tokens)]
    self.token = jnp.ones((f.batch_size,), jnp.int32)
    super().__init__(self.steps, warm=False)
    self.step(record=False)  # Compiles.

  def steps(self, caches):
    for pos in self.positions:
      logits, caches = self.decode(self.params, self.token, pos, caches)
    return logits

  def step(self, record: bool) -> None:
    """One round on a fresh copy of the caches (the copy not timed: decoding donates them)."""
    self.args = (jax.block_until_ready(jax.tree.map(jnp.copy, self.caches)),)
    super().step(record)

  def per_token_ms(self) -> float:
    return self.median() / len(self.positions) * 1e3


def bench_decode(f) -> None:
  contexts = lengths('contexts', f.contexts, f.tokens + 1)
  print(f'{jax.devices()[0].device_kind}; size {f.size}, batch {f.batch_size}, {f.dtype}, '
        f'P={f.P}; '
        f'{f.tokens} decode steps per round, median of {f.rounds} interleaved rounds')
  header = (f'{"context":>7} {"model":<16} {"ms/token":>9} {"fast cache":>11} '
            f'{"slow cache":>11} {"cache total":>11}')
  print(header + '\n' + '-' * len(header), flush=True)
  mib = lambda b: f'{b / 2**20:>7.2f} MiB'
  for context in contexts:
    members = {label: Decoding(f, arm, window, context)
               for label, (arm, window) in models_of(f).items()}
    timing.round_robin(list(members.values()), f.rounds)
    for label, m in members.items():
      print(f'{context:>7} {label:<16} {m.per_token_ms():>9.2f} {mib(m.fast_bytes):>11} '
            f'{mib(m.slow_bytes):>11} {mib(m.fast_bytes + m.slow_bytes):>11}', flush=True)


def main():
  f = flags.FLAGS
  (bench_train if f.mode == 'train' else bench_decode)(f)


if __name__ == '__main__':
  cli.run(main, define_flags)
