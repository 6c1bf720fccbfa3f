r"""Step time, throughput, FLOP/s and memory: dense vs coupled, over T and P.

    python -m experiments.bench                      # small size, T in {256, 1024}, P in {8, 16, 32}
    python -m experiments.bench --size=124m --batch_size=32 --seq_lens=1024,2048
    python -m experiments.bench --size=tiny --d_model=128 --num_layers=4 --num_heads=4 \
        --mlp_dim=512 --seq_lens=64 --batch_size=12 --Ps= --steps=60   # the CPU throughput shape

Each row is one jitted train step (forward, backward, AdamW) on random tokens, timed over `--steps`
calls after `--warmup`, median reported; the rows of one T are timed round-robin in an order rotated
every round (`experiments/timing.py`, the harness the grids' step times use), and a `--peak_n`
square matmul in the compute dtype, one more member of the round, measures what one device's matmuls
reach in the same process under the same load. FLOP/s uses the analytic training count with causal
attention counted honestly; "of peak" is that over the measured matmul peak of all devices, MFU over
the vendor's peak where the device has one (`fastslow_jax.devices`). Memory is XLA's compiled
estimate as `devices.compiled_memory` counts it (arguments + outputs - aliased + temporaries +
generated code, as launch.aot_compile reports it) and, where the device reports it, the
measured peak. The last column is the step-time
ratio of each coupled row to the dense row with the same T (target at P=16, T=1024: <= 1.05).
`--Ps=` (empty) times the dense row alone.

On one device each row's matmuls are also timed alone ("mm ms"; `--nomatmuls_alone` skips it):
every dot_general of its train step, on random operands of the same shapes, one after another in
one program, as one more member of the round. A step runs those matmuls and more, so its FLOPs
over that time ("ceiling") bound its "of peak" by what the matmul kernels reach at the step's
shapes rather than at the peak's.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import flags

from experiments import timing
from fastslow_jax import cli, configlib, devices, models, runtime, sharding


def define_flags() -> None:
  flags.DEFINE_string('size', 'small', 'Model size from configs/fastslow.py.')
  flags.DEFINE_list('seq_lens', ['256', '1024'], 'Sequence lengths T.')
  flags.DEFINE_list('Ps', ['8', '16', '32'], 'Pooling periods for the coupled arm.')
  flags.DEFINE_integer('batch_size', 4, 'Global batch (sequences).', lower_bound=1)
  flags.DEFINE_integer('steps', 5, 'Timed steps per row.', lower_bound=1)
  flags.DEFINE_integer('warmup', 2, 'Untimed steps per row (after compilation).', lower_bound=0)
  flags.DEFINE_enum('attention_impl', 'reference', list(models.ATTENTION_BACKENDS),
                    'Attention backend.')
  flags.DEFINE_string('dtype', None, 'Compute dtype (default: the size\'s).')
  flags.DEFINE_string('mesh', '-1,1,1', 'data,fsdp,tensor.')
  flags.DEFINE_integer('d_model', None, 'Model width (default: the size\'s).', lower_bound=1)
  flags.DEFINE_integer('num_layers', None, 'Layers (default: the size\'s).', lower_bound=1)
  flags.DEFINE_integer('num_heads', None, 'Fast and slow attention heads (default: the size\'s).',
                       lower_bound=1)
  flags.DEFINE_integer('mlp_dim', None, 'SwiGLU hidden width, phi_theta\'s too (default: the '
                       'size\'s).', lower_bound=1)
  flags.DEFINE_integer('peak_n', 2048, 'Side of the square matmul that measures the peak (0: '
                       'none).', lower_bound=0)
  flags.DEFINE_boolean('matmuls_alone', True, 'Also time each row\'s matmuls alone, one at a '
                       'time (the "ceiling" column).')


SHAPE_FLAGS = (('d_model', ('d_model',)), ('num_layers', ('num_layers',)),
               ('num_heads', ('num_heads', 'slow_num_heads')), ('mlp_dim', ('mlp_dim', 'phi_dim')))


def row_config(f, arm: str, T: int, P: int):
  """The config of one row: the size's, at this T and P, with the shape flags given."""
  mesh = sharding.parse_mesh(f.mesh)
  overrides = {'model.seq_len': T, 'model.vocab_size': 256, 'batch_size': f.batch_size,
               'model.attention_impl': f.attention_impl,
               **{f'mesh.{axis}': size for axis, size in mesh.items()}}
  if f.dtype:
    overrides['model.dtype'] = f.dtype
  for name, fields in SHAPE_FLAGS:
    if f[name].value is not None:
      overrides.update({f'model.{field}': f[name].value for field in fields})
  return configlib.load(f'fastslow:arm={arm},size={f.size},P={P}', overrides)


class Row(timing.TrainStep):
  """One configuration's train step, compiled and ready to be timed a step at a time."""

  def __init__(self, f, arm: str, T: int, P: int):
    super().__init__(row_config(f, arm, T, P))
    self.arm, self.T, self.P, self.batch = arm, T, P, self.setup.config.batch_size

  def result(self, peak_matmul: float | None, alone: MatmulsAlone | None) -> dict:
    """The row's figures: times, throughput, FLOP/s, fractions of the peaks, memory."""
    estimate = devices.compiled_memory(self.compiled)['total']
    step_s = self.median()
    matmuls_s = alone.median() if alone else None
    flops = models.flops_per_token(self.setup.model_config)
    tokens_per_s = self.batch * self.T / step_s
    stats = jax.devices()[0].memory_stats() or {}
    peak = devices.peak_flops()
    return {'arm': self.arm, 'T': self.T, 'P': self.P if self.arm != 'dense' else None,
            'step_s': step_s, 'steps_per_s': 1 / step_s, 'tokens_per_s': tokens_per_s,
            'gflops_per_s': tokens_per_s * flops.total / 1e9,
            'mfu': tokens_per_s * flops.total / (peak * jax.device_count()) if peak else None,
            'of_peak': (tokens_per_s * flops.total / (peak_matmul * jax.device_count())
                        if peak_matmul else None),
            'slow_flop_share': flops.slow / flops.total, 'compile_s': self.compile_s,
            'mem_estimate_gib': estimate / 2**30,
            'mem_peak_gib': stats.get('peak_bytes_in_use', 0) / 2**30 or None,
            'params': models.param_count(self.state.params),
            'matmuls_s': matmuls_s,
            'ceiling': (flops.total * self.batch * self.T / matmuls_s / peak_matmul
                        if matmuls_s and peak_matmul else None)}


class MatmulsAlone(timing.Timed):
  """A row's matmuls alone: every dot_general of its train step, on random operands of the same
  shapes and dtypes, run one after another in one program. Their time is what this machine's
  matmul kernels need for the step's matmuls with nothing else running beside them, so the
  step's FLOPs over it bound the step's fraction of the peak (the "ceiling" column)."""

  def __init__(self, row: Row):
    with row.setup.activate():
      jaxpr = jax.make_jaxpr(row.setup.train_step_fn())(row.state, row.tokens).jaxpr
    eqns = models.flops.program_matmuls(jaxpr)
    rng = np.random.default_rng(0)
    operands = [tuple(jax.numpy.asarray(rng.standard_normal(v.aval.shape), v.aval.dtype)
                      for v in eqn.invars) for eqn in eqns]
    specs = [(eqn.params['dimension_numbers'], eqn.params['preferred_element_type'])
             for eqn in eqns]
    self.count, self.flops = len(eqns), sum(map(models.flops.matmul_flops, eqns))

    def run(operands):
      outputs, last = [], jax.numpy.zeros(())
      for (lhs, rhs), (dimension_numbers, dtype) in zip(operands, specs):
        # The barrier makes each matmul wait for the one before: one at a time, each on every core.
        lhs, rhs, _ = jax.lax.optimization_barrier((lhs, rhs, last))
        last = jax.lax.dot_general(lhs, rhs, dimension_numbers, preferred_element_type=dtype)
        outputs.append(last)
      return outputs

    super().__init__(jax.jit(run).lower(operands).compile(
        runtime.compiler_options(jax.devices()[:1])), operands)


class MatmulPeak(timing.Timed):
  """FLOP/s of an n x n matmul in `dtype` on one device: what its matmuls reach on this machine
  at this moment, timed between the train steps so that both see the same load."""

  def __init__(self, n: int, dtype: str):
    self.n, self.dtype = n, dtype
    x = jax.block_until_ready(jax.random.normal(jax.random.key(0), (n, n), dtype))
    super().__init__(jax.jit(lambda a: a @ a), x)

  def flops_per_s(self) -> float:
    return 2 * self.n**3 / self.median()


def bench_seq_len(f, T: int, Ps: list[int]):
  """Dense and coupled at every P for one T, timed round-robin (`timing.round_robin`) so that a
  machine slowing down or speeding up affects every row alike and the ratios stay honest; the
  matmul peak (in the rows' compute dtype) and each row's matmuls alone are members of the
  round too."""
  # P has no effect on dense; any that divides T will do.
  rows = [Row(f, 'dense', T, Ps[0] if Ps else 1)] + [Row(f, 'coupled', T, P) for P in Ps]
  peak = MatmulPeak(f.peak_n, rows[0].setup.model_config.dtype) if f.peak_n else None
  # Matmuls alone run on one device: on a mesh of several they would not be the step's.
  alone = ([MatmulsAlone(row) for row in rows] if f.matmuls_alone and jax.device_count() == 1
           else [None] * len(rows))
  timing.round_robin(rows + [a for a in alone if a] + ([peak] if peak else []), rounds=f.steps,
                     warmup=f.warmup)
  return [row.result(peak.flops_per_s() if peak else None, a)
          for row, a in zip(rows, alone)], peak, alone


def format_table(rows: list[dict]) -> str:
  """The printed table, a line per row, with each row's ratio to dense at its T."""
  dense = {r['T']: r['step_s'] for r in rows if r['arm'] == 'dense'}
  header = (f'{"arm":<8} {"T":>5} {"P":>3} {"params":>11} {"step ms":>9} {"tok/s":>10} '
            f'{"GFLOP/s":>9} {"of peak":>7} {"ceiling":>7} {"mm ms":>7} {"MFU":>6} {"slow%":>6} '
            f'{"mem GiB":>8} {"peak GiB":>8} {"vs dense":>8}')
  lines = [header, '-' * len(header)]
  for r in rows:
    ratio = r['step_s'] / dense[r['T']] if r['T'] in dense else float('nan')
    pct = lambda x: f'{x:.1%}' if x is not None else '-'
    matmuls = f'{r["matmuls_s"] * 1e3:.1f}' if r['matmuls_s'] is not None else '-'
    peak = f'{r["mem_peak_gib"]:.2f}' if r['mem_peak_gib'] else '-'
    lines.append(f'{r["arm"]:<8} {r["T"]:>5} {r["P"] or "-":>3} {r["params"]:>11,} '
                 f'{r["step_s"] * 1e3:>9.1f} {r["tokens_per_s"]:>10,.0f} '
                 f'{r["gflops_per_s"]:>9,.1f} {pct(r["of_peak"]):>7} {pct(r["ceiling"]):>7} '
                 f'{matmuls:>7} {pct(r["mfu"]):>6} {r["slow_flop_share"]:>6.1%} '
                 f'{r["mem_estimate_gib"]:>8.3f} {peak:>8} {ratio:>8.3f}')
  return '\n'.join(lines)


def print_notes(T: int, results: list[dict], peak: MatmulPeak | None, alone) -> None:
  """What the peak and each row's matmuls alone measured."""
  if peak:
    print(f'matmul peak ({peak.n}x{peak.n} {peak.dtype}, one device, median of '
          f'{len(peak.times)}): {peak.flops_per_s() / 1e9:,.1f} GFLOP/s; "of peak" is each '
          f'row\'s GFLOP/s over {jax.device_count()} x that.', flush=True)
  for r, a in zip(results, alone):
    if a:
      name = f'{r["arm"]} T={T}' + (f' P={r["P"]}' if r['P'] else '')
      print(f'Matmuls alone, {name}: its {a.count} matmuls ({a.flops / 1e9:.2f} GFLOP), one '
            f'at a time with nothing beside them, take {r["matmuls_s"] * 1e3:.1f} ms ("mm ms"); '
            f'"ceiling" is the row\'s FLOPs in that time over the peak: the most "of peak" '
            f'this machine\'s matmul kernels allow the step.', flush=True)


def main():
  f = flags.FLAGS
  print(f'{jax.device_count()} x {jax.devices()[0].device_kind}, size={f.size}, '
        f'batch={f.batch_size}, attention={f.attention_impl}')
  rows = []
  for T in (int(t) for t in f.seq_lens):
    results, peak, alone = bench_seq_len(f, T, [int(p) for p in f.Ps])
    rows += results
    print(format_table(rows), flush=True)
    print_notes(T, results, peak, alone)


if __name__ == '__main__':
  cli.run(main, define_flags)
