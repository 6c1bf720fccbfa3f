r"""Decoding speed: KV-cache decode vs re-running the full forward per token, dense vs each family.

    python -m experiments.bench_decode                       # small size at T=1024, 124m at T=1024
    python -m experiments.bench_decode --sizes=small --seq_len=1024 --tokens=64 --models=dense,fastslow

Per row (size, model: `dense` or a family's full model, `arm=coupled`): a random-weight model, a
prompt filling the context up to `seq_len - tokens`,
then `tokens` jitted one-token decode steps (caches donated, updated in place; the slow path's
block step included, once per P tokens), median over rounds; against it, the jitted parallel
forward over the whole context, which is what each token costs without a cache. The rows of one
size are timed round-robin so that a machine's changing load hits them alike. Prints ms per
token, tokens/s, the cache speed-up and the ratio to dense.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from fastslow_jax import cli, configlib, models
from fastslow_jax.errors import UsageError


def define_flags() -> None:
  flags.DEFINE_list('sizes', ['small', '124m'], 'Model sizes of the fastslow config.')
  flags.DEFINE_list('models', ['dense', *models.FAMILIES], "'dense' and/or families (their "
                    'coupled arm); the first is the reference of the ratio column.')
  flags.DEFINE_integer('seq_len', 1024, 'Context length T (a multiple of P).', lower_bound=2)
  flags.DEFINE_integer('P', 16, 'Pooling period of the coupled arm.', lower_bound=1)
  flags.DEFINE_integer('tokens', 64, 'Decode steps per round (the last tokens of the context).',
                       lower_bound=1)
  flags.DEFINE_integer('batch_size', 1, 'Sequences decoded together.', lower_bound=1)
  flags.DEFINE_integer('rounds', 3, 'Timed rounds (median reported).', lower_bound=1)


class Row:
  """One model, its decode step and its full forward, compiled and warmed up."""

  def __init__(self, size: str, name: str, f):
    family, arm = ('fastslow', 'dense') if name == 'dense' else (name, 'coupled')
    config = configlib.load(f'fastslow:family={family},arm={arm},size={size},P={f.P}')
    cfg = models.ModelConfig.from_mapping({**config.model.to_dict(), 'vocab_size': 256,
                                           'seq_len': f.seq_len, 'dtype': 'float32',
                                           'scan_layers': False, 'remat': 'none'})
    self.size, self.name, self.cfg, self.f = size, name, cfg, f
    model = models.build(cfg, rngs=0)
    graphdef, self.params = nnx.split(model)
    rng = np.random.default_rng(0)
    self.context = jnp.asarray(rng.integers(0, 256, (f.batch_size, f.seq_len), dtype=np.int32))
    prompt_len = f.seq_len - f.tokens
    lengths = jnp.full((f.batch_size,), prompt_len, jnp.int32)
    prefill = jax.jit(lambda p, t: nnx.merge(graphdef, p).prefill(t, lengths, f.seq_len)[1])
    self.caches = prefill(self.params, self.context[:, :prompt_len])
    self.start = prompt_len
    # The caches are donated and updated in place, as in `generate`'s decode loop.
    self.decode = jax.jit(lambda p, t, pos, c: nnx.merge(graphdef, p).decode(t, pos, c),
                          donate_argnums=3)
    self.forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
    self.decode_s, self.forward_s = [], []
    self.time_round()  # Compiles and warms up; not recorded.
    self.decode_s, self.forward_s = [], []

  def time_round(self) -> None:
    caches, batch = jax.tree.map(jnp.copy, self.caches), self.f.batch_size
    start = time.perf_counter()
    for i in range(self.f.tokens):
      pos = jnp.full((batch,), self.start + i, jnp.int32)
      logits, caches = self.decode(self.params, self.context[:, self.start + i], pos, caches)
    jax.block_until_ready(logits)
    self.decode_s.append((time.perf_counter() - start) / self.f.tokens)
    start = time.perf_counter()
    jax.block_until_ready(self.forward(self.params, self.context))
    self.forward_s.append(time.perf_counter() - start)

  def result(self) -> dict:
    decode, forward = statistics.median(self.decode_s), statistics.median(self.forward_s)
    return {'size': self.size, 'model': self.name, 'decode_ms': decode * 1e3,
            'tokens_per_s': self.f.batch_size / decode, 'recompute_ms': forward * 1e3,
            'speedup': forward / decode}


def main():
  f = flags.FLAGS
  print(f'{jax.device_count()} x {jax.devices()[0].device_kind}; T={f.seq_len}, P={f.P}, '
        f'batch {f.batch_size}, {f.tokens} decode steps per round, median of {f.rounds} rounds')
  header = (f'{"size":<6} {"model":<10} {"decode ms/tok":>13} {"tok/s":>8} '
            f'{"recompute ms/tok":>16} {"cache speed-up":>14} {"vs " + f.models[0]:>9}')
  print(header + '\n' + '-' * len(header), flush=True)
  for size in f.sizes:
    unknown = [m for m in f.models if m != 'dense' and m not in models.FAMILIES]
    if unknown:
      raise UsageError(f'--models={",".join(f.models)} is invalid: use dense and/or '
                       f'{", ".join(models.FAMILIES)}.')
    rows = [Row(size, name, f) for name in f.models]
    for _ in range(f.rounds):
      for row in rows:
        row.time_round()
    results = [row.result() for row in rows]
    for r in results:
      print(f'{r["size"]:<6} {r["model"]:<10} {r["decode_ms"]:>13.2f} {r["tokens_per_s"]:>8.1f} '
            f'{r["recompute_ms"]:>16.1f} {r["speedup"]:>13.1f}x '
            f'{r["decode_ms"] / results[0]["decode_ms"]:>9.3f}', flush=True)


if __name__ == '__main__':
  cli.run(main, define_flags)
