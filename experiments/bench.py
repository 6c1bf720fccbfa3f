r"""Step time, throughput, FLOP/s and memory: dense vs coupled, over T and P.

    python -m experiments.bench                      # small size, T in {256, 1024}, P in {8, 16, 32}
    python -m experiments.bench --size=124m --batch_size=32 --seq_lens=1024,2048

Each row is one jitted train step (forward, backward, AdamW) on random tokens, timed over
`--steps` calls after `--warmup`, median reported; the rows of one T are timed round-robin. FLOP/s uses the analytic training count with
causal attention counted honestly. Memory is XLA's compiled estimate (arguments + outputs +
temporaries) and, where the device reports it, the measured peak. The last column is the step-time
ratio of each coupled row to the dense row with the same T (target at P=16, T=1024: <= 1.05).
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from absl import app, flags

from fastslow_jax import configlib, metrics, models, runtime

_SIZE = flags.DEFINE_string('size', 'small', 'Model size from configs/fastslow.py.')
_SEQ_LENS = flags.DEFINE_list('seq_lens', ['256', '1024'], 'Sequence lengths T.')
_PS = flags.DEFINE_list('Ps', ['8', '16', '32'], 'Pooling periods for the coupled arm.')
_BATCH = flags.DEFINE_integer('batch_size', 4, 'Global batch (sequences).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per row.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps per row (after compilation).')
_IMPL = flags.DEFINE_enum('attention_impl', 'reference', list(models.ATTENTION_BACKENDS),
                          'Attention backend.')
_DTYPE = flags.DEFINE_string('dtype', None, 'Compute dtype (default: the size\'s).')
_MESH = flags.DEFINE_string('mesh', '-1,1,1', 'data,fsdp,tensor.')

class Row:
  """One compiled configuration, ready to be timed a step at a time."""

  def __init__(self, arm: str, T: int, P: int):
    data, fsdp, tensor = (int(x) for x in _MESH.value.split(','))
    overrides = {'model.seq_len': T, 'model.vocab_size': 256, 'batch_size': _BATCH.value,
                 'model.attention_impl': _IMPL.value, 'mesh.data': data, 'mesh.fsdp': fsdp,
                 'mesh.tensor': tensor}
    if _DTYPE.value:
      overrides['model.dtype'] = _DTYPE.value
    config = runtime.resolve_config(configlib.load(
        f'fastslow:arm={arm},size={_SIZE.value},P={P}', overrides))
    self.setup = setup = runtime.TrainSetup(config)
    self.state = setup.init_state()
    start = time.perf_counter()
    self.compiled = setup.compile_train_step(config.batch_size)
    self.compile_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    self.tokens = setup.global_batch(
        rng.integers(0, 256, (config.batch_size, T + 1), dtype=np.int32))
    self.arm, self.T, self.P, self.batch = arm, T, P, config.batch_size
    self.times: list[float] = []

  def step(self, record: bool) -> None:
    with self.setup.activate():
      start = time.perf_counter()
      self.state, m = self.compiled(self.state, self.tokens)
      jax.block_until_ready(m)
    if record:
      self.times.append(time.perf_counter() - start)

  def result(self) -> dict:
    memory = self.compiled.memory_analysis()
    estimate = sum(getattr(memory, f, 0) or 0 for f in
                   ('argument_size_in_bytes', 'output_size_in_bytes', 'temp_size_in_bytes'))
    step_s = statistics.median(self.times)
    flops = models.flops_per_token(self.setup.model_config)
    tokens_per_s = self.batch * self.T / step_s
    stats = jax.devices()[0].memory_stats() or {}
    peak = metrics.peak_flops()
    return {'arm': self.arm, 'T': self.T, 'P': self.P if self.arm != 'dense' else None,
            'step_s': step_s, 'steps_per_s': 1 / step_s, 'tokens_per_s': tokens_per_s,
            'tflops_per_s': tokens_per_s * flops.total / 1e12,
            'mfu': tokens_per_s * flops.total / (peak * jax.device_count()) if peak else None,
            'slow_flop_share': flops.slow / flops.total, 'compile_s': self.compile_s,
            'mem_estimate_gib': estimate / 2**30,
            'mem_peak_gib': stats.get('peak_bytes_in_use', 0) / 2**30 or None,
            'params': models.param_count(self.state.params)}


def bench_seq_len(T: int, Ps: list[int]) -> list[dict]:
  """Dense and coupled at every P for one T, timed round-robin (A B C A B C ...) so that a
  machine slowing down or speeding up affects every row alike and the ratios stay honest."""
  rows = [Row('dense', T, Ps[0])] + [Row('coupled', T, P) for P in Ps]
  for i in range(_WARMUP.value + _STEPS.value):
    for row in rows:
      row.step(record=i >= _WARMUP.value)
  return [row.result() for row in rows]


def format_table(rows: list[dict]) -> str:
  dense = {r['T']: r['step_s'] for r in rows if r['arm'] == 'dense'}
  header = (f'{"arm":<8} {"T":>5} {"P":>3} {"params":>11} {"step ms":>9} {"tok/s":>10} '
            f'{"TFLOP/s":>8} {"MFU":>6} {"slow%":>6} {"mem GiB":>8} {"peak GiB":>8} {"vs dense":>8}')
  lines = [header, '-' * len(header)]
  for r in rows:
    ratio = r['step_s'] / dense[r['T']] if r['T'] in dense else float('nan')
    mfu = f'{r["mfu"]:.1%}' if r['mfu'] is not None else '-'
    peak = f'{r["mem_peak_gib"]:.2f}' if r['mem_peak_gib'] else '-'
    lines.append(f'{r["arm"]:<8} {r["T"]:>5} {r["P"] or "-":>3} {r["params"]:>11,} '
                 f'{r["step_s"] * 1e3:>9.1f} {r["tokens_per_s"]:>10,.0f} {r["tflops_per_s"]:>8.3f} '
                 f'{mfu:>6} {r["slow_flop_share"]:>6.1%} {r["mem_estimate_gib"]:>8.3f} {peak:>8} '
                 f'{ratio:>8.3f}')
  return '\n'.join(lines)


def main(argv):
  del argv
  print(f'{jax.device_count()} x {jax.devices()[0].device_kind}, size={_SIZE.value}, '
        f'batch={_BATCH.value}, attention={_IMPL.value}')
  rows = []
  for T in (int(t) for t in _SEQ_LENS.value):
    rows += bench_seq_len(T, [int(p) for p in _PS.value])
    print(format_table(rows), flush=True)


if __name__ == '__main__':
  app.run(main)
