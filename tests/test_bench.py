"""The benchmark script runs and prints its table, and the CPU train step is compiled with the
options its CPU figures rest on. Only what is deterministic is asserted (counts, parameters, the
arithmetic between printed figures): timings and their targets are printed figures, which a
loaded machine moves. Every test here compiles: they run with the slow tests."""

import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def bench(*args: str) -> str:
  # One CPU device (the suite's 8 simulated ones only slow compilation here).
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  result = subprocess.run([sys.executable, '-m', 'experiments.bench', '--size=tiny', *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow  # About a minute of compilation; CI runs it with the slow tests.
def test_bench_prints_a_row_per_arm_and_the_ratio():
  out = bench('--seq_lens=32', '--Ps=4,8', '--steps=1', '--warmup=0', '--batch_size=8')
  rows = [line for line in out.splitlines() if re.match(r'(dense|coupled)\s+32\s', line)]
  assert [r.split()[0] for r in rows] == ['dense', 'coupled', 'coupled']
  assert rows[0].split()[-1] == '1.000' and all(float(r.split()[-1]) > 0 for r in rows)


@pytest.mark.slow
def test_bench_shape_flags_and_the_fraction_of_the_measured_matmul_peak():
  from fastslow_jax import configlib, models
  from flax import nnx

  shape = {'d_model': 32, 'num_layers': 1, 'num_heads': 2, 'mlp_dim': 64}
  out = bench('--Ps=', '--seq_lens=16', '--batch_size=2', '--steps=3', '--warmup=0',
              '--peak_n=256', *(f'--{k}={v}' for k, v in shape.items()))
  rows = [line.split() for line in out.splitlines() if re.match(r'(dense|coupled)\s', line)]
  assert [r[0] for r in rows] == ['dense']  # --Ps= : the dense row alone.
  config = configlib.load('fastslow:arm=dense,size=tiny', {
      'model.vocab_size': 256, **{f'model.{k}': v for k, v in shape.items()}})
  model = nnx.eval_shape(lambda: models.build(models.ModelConfig.from_mapping(config.model)))
  assert int(rows[0][3].replace(',', '')) == models.param_count(model)
  gflops, of_peak = float(rows[0][6].replace(',', '')), float(rows[0][7].rstrip('%')) / 100
  peak = float(re.search(r'^matmul peak \(256x256 float32, one device, median of 3\): '
                         r'([\d,.]+) GFLOP/s', out, re.M).group(1).replace(',', ''))
  # Both printed figures are rounded (0.05 GFLOP/s, 0.05%).
  assert of_peak == pytest.approx(gflops / peak, abs=0.0005 + 0.05 / peak)
  # The ceiling and the matmuls' own time are printed (their size against "of peak" is a
  # measurement, not asserted).
  assert float(rows[0][8].rstrip('%')) > 0 and float(rows[0][9]) > 0
  count = re.search(r'^Matmuls alone, dense T=16: its (\d+) matmuls', out, re.M).group(1)
  assert int(count) == 21  # 7 in the forward pass (q/k/v, scores, mix, out, gate/up, down, head).


@pytest.mark.slow
def test_cpu_train_step_gives_ynnpack_its_dots_only(monkeypatch):
  """XLA:CPU's default also hands elementwise ops to YNNPACK, which costs a transposing copy in
  front of every weight-gradient dot (README, Benchmarks); the train step keeps YNNPACK to dots."""
  from fastslow_jax import configlib, runtime

  config = runtime.resolve_config(configlib.load('fastslow:arm=coupled,size=tiny',
                                                 {'mesh.data': 1}), num_devices=1)
  setup = runtime.TrainSetup(config, jax.devices()[:1])
  text = setup.compile_train_step(config.batch_size).as_text()
  computations = dict(re.findall(r'^(%[\w.]+) [^\n]*\{\n(.*?)\n\}', text, re.M | re.S))
  ynn = re.findall(r'calls=(%[\w.]+)[^\n]*"kind":"__ynn_fusion"', text)
  assert ynn and all(' dot(' in computations[c] for c in ynn)
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise')
  assert runtime.compiler_options(jax.devices()[:1]) == {}  # XLA_FLAGS naming it wins.
