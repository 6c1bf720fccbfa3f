"""Device facts (`fastslow_jax.devices`) and the compiler's step-time estimate of
`launch.aot_compile` / `launch.fits`: what libtpu's estimate does with loops and its -1 s
sentinels, the unrolled twins the estimate is taken from, and the tables it fills."""

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from fastslow_jax import devices, metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # launch/ is not installed.


@dataclasses.dataclass
class FakeDevice:
  device_kind: str
  stats: dict | None = None

  def memory_stats(self):
    return self.stats


# --------------------------------------------------------------------------- devices


@pytest.mark.parametrize('kind,peak,hbm_gib', [
    ('TPU v4', 275e12, 32), ('TPU v5 lite', 197e12, 16), ('TPU v5', 459e12, 95),
    ('TPU v6 lite', 918e12, 32), ('TPU7x', 1153.5e12, 96)])
def test_tpu_kinds_by_longest_prefix(kind, peak, hbm_gib):
  device = FakeDevice(kind)
  assert devices.peak_flops(device) == peak
  assert devices.hbm_bytes(device) == hbm_gib * 2**30


def test_unknown_kinds_and_reported_memory():
  assert devices.peak_flops(FakeDevice('cpu')) is None
  assert devices.hbm_bytes(FakeDevice('cpu')) is None
  assert devices.hbm_bytes(FakeDevice('cpu', {'bytes_limit': 123})) == 123
  # A GPU name covering several capacities: the device's own figure.
  assert devices.hbm_bytes(FakeDevice('NVIDIA H100 PCIe', {'bytes_limit': 7})) == 7
  assert devices.peak_flops(FakeDevice('NVIDIA H100 PCIe')) == 989e12
  assert metrics.peak_flops is devices.peak_flops  # train.py's MFU reads it there.


@pytest.mark.parametrize('target', sorted((ROOT / 'launch' / 'gpu_targets').glob('*.txtpb')),
                         ids=lambda p: p.stem)
def test_every_gpu_target_has_its_facts_in_the_table(target):
  """aot_compile's GPU targets take their memory from the table: the figures agree."""
  text = target.read_text()
  kind = re.search(r'device_description_str: "([^"]+)"', text).group(1)
  memory = int(re.search(r'device_memory_size: (\d+)', text).group(1))
  assert devices.hbm_bytes(FakeDevice(kind)) == memory
  assert devices.peak_flops(FakeDevice(kind))


def test_compiled_memory_counts_an_aliased_output_once():
  import jax
  import jax.numpy as jnp

  x = jnp.zeros((256, 256), jnp.float32)
  compiled = jax.jit(lambda a: (a * 2, a.sum()), donate_argnums=0).lower(x).compile()
  m = devices.compiled_memory(compiled)
  assert set(m) == {'argument', 'output', 'alias', 'temp', 'generated_code', 'total', 'peak'}
  assert m['total'] == (m['argument'] + m['output'] - m['alias'] + m['temp']
                        + m['generated_code'])
  assert m['argument'] >= x.nbytes


# --------------------------------------------------------------------------- twins


def model_config(**fields):
  from fastslow_jax import models

  base = dict(d_model=64, num_layers=12, num_heads=4, mlp_dim=128, seq_len=64, vocab_size=256,
              slow_num_heads=4, phi_dim=64, P=16, scan_layers=True)
  return models.ModelConfig(**{**base, **fields})


@pytest.mark.parametrize('fields,units,twins', [
    ({}, 12, {2: {'num_layers': 2}, 4: {'num_layers': 4}}),
    ({'arm': 'dense', 'num_layers': 24}, 24, {2: {'num_layers': 2}, 4: {'num_layers': 4}}),
    ({'family': 'hourglass'}, 3, {1: {'num_layers': 4, 'hourglass_layers': '1,2,1'},
                                  2: {'num_layers': 8, 'hourglass_layers': '2,4,2'}}),
    ({'slow_layers': 'every:3'}, 4, {1: {'num_layers': 3, 'slow_layers': '2'},
                                     2: {'num_layers': 6, 'slow_layers': '2,5'}}),
    ({'num_layers': 4}, 4, {4: {'num_layers': 4}}),  # Too shallow: the whole stack unrolled.
    ({'slow_layers': '0,5', 'num_layers': 6}, 1, {1: {'num_layers': 6, 'slow_layers': '0,5'}}),
])
def test_depth_twins(fields, units, twins):
  from launch import aot_compile

  n, got = aot_compile.depth_twins(model_config(**fields))
  assert n == units
  assert got == {m: {**t, 'scan_layers': False} for m, t in twins.items()}


# --------------------------------------------------------------------------- TPU compiles


def tpu_env() -> dict[str, str]:
  """This environment without the test session's CPU flags and compilation cache: what the
  compiler says of a program is read from a fresh compile."""
  drop = ('XLA_FLAGS', 'JAX_PLATFORMS', 'JAX_COMPILATION_CACHE_DIR',
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')
  return {k: v for k, v in os.environ.items() if k not in drop}


def run_tpu(code: str) -> dict:
  """Runs `code` (which prints one JSON line last) in a fresh process: libtpu's compile-only
  devices must not meet this process's CPU-only JAX."""
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=tpu_env(),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  last = done.stdout.strip().splitlines()[-1]
  if last.startswith('skip'):
    pytest.skip(last)
  return json.loads(last)


FACTS = '''
import json, sys
from launch import aot_compile as ac
devices = ac.target_devices('v5e', '1x1', 1)
if devices is None: print('skip: libtpu is not installed'); sys.exit()
import jax, jax.numpy as jnp
from fastslow_jax import configlib, runtime
s = jax.sharding.SingleDeviceSharding(devices[0])
x = jax.ShapeDtypeStruct((4096, 4096), jnp.bfloat16, sharding=s)
w = jax.ShapeDtypeStruct((10, 4096, 4096), jnp.bfloat16, sharding=s)
def unrolled(x, w):
  for i in range(10): x = x @ w[i]
  return x
programs = {'one': lambda x, w: x @ w[0], 'unrolled': unrolled,
            'scanned': lambda x, w: jax.lax.scan(lambda c, wi: (c @ wi, None), x, w)[0]}
out = {k: ac.compiler_seconds(jax.jit(f).lower(x, w).compile()) for k, f in programs.items()}
config = runtime.resolve_config(configlib.load(
    'fastslow:arm=dense,size=tiny', {'model.seq_len': 512}), num_devices=1)
compiled = runtime.TrainSetup(config, devices).compile_train_step(config.batch_size)
out['raw'] = compiled.cost_analysis()['optimal_seconds']
out['corrected'] = ac.compiler_seconds(compiled)[0]
out['sentinels'] = compiled.as_text().count(ac._SENTINEL)
print(json.dumps(out))
'''


@pytest.fixture(scope='module')
def tpu_facts() -> dict:
  """What libtpu estimates for a few v5e programs (one process for all of them)."""
  return run_tpu(FACTS)


@pytest.mark.slow
@pytest.mark.tpu
def test_the_estimate_counts_a_loop_body_once(tpu_facts):
  """A 4096^3 bf16 matmul on a v5e: 0.88 ms; ten unrolled 7.3 ms; ten in a scan 1.15 ms."""
  one, unrolled, scanned = (tpu_facts[k][0] for k in ('one', 'unrolled', 'scanned'))
  assert 0.7e-3 < one < 1.1e-3, tpu_facts  # 2 * 4096^3 FLOPs at 197 TFLOP/s: 0.70 ms.
  assert 7 * one < unrolled < 10 * one and tpu_facts['unrolled'][1] == 0
  assert one < scanned < 2 * one and tpu_facts['scanned'][1] == 1  # One loop, counted once.


@pytest.mark.slow
@pytest.mark.tpu
def test_the_estimate_is_corrected_for_its_sentinels(tpu_facts):
  """Each ConcatBitcast counts -1 s in libtpu's estimate (the raw figure of this small step is
  negative); adding them back leaves a small positive time."""
  got = tpu_facts
  assert got['sentinels'] >= 1 and got['raw'] < 0, got
  assert 0 < got['corrected'] < 0.05, got
  assert got['corrected'] == pytest.approx(got['raw'] + got['sentinels'])


def aot_json(tmp_path, *args) -> dict:
  out = tmp_path / 'figures.json'
  done = subprocess.run([sys.executable, '-m', 'launch.aot_compile', f'--json_out={out}', *args],
                        cwd=ROOT, env=tpu_env(), capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-2000:]
  if done.stdout.startswith('skipped:'):
    pytest.skip(done.stdout.strip())
  return next(iter(json.loads(out.read_text()).values())), done.stdout


@pytest.mark.slow
@pytest.mark.tpu
def test_extrapolated_twins_match_the_whole_stack_unrolled(tmp_path):
  """A 6-layer scanned step with 2 accumulation steps, estimated from 2- and 4-layer twins of one
  micro-batch, against the 6-layer step unscanned, one micro-batch, as compiled (x 2).

  At T=512: the layers must dominate the step for its estimate to grow linearly with depth. At
  the tiny size's T=128 (two sequences per chip) the step takes a few hundred microseconds and
  what the compiler keeps in on-chip memory sets how it grows: 2, 4, 6 and 8 layers are estimated
  at 120, 163, 239 and 461 us (FLOPs exactly linear, asynchronous copies 410, 164, 218, 1562), and
  2 and 4 layers extrapolate to 14% under 6. At T=512 they extrapolate to 1% under it."""
  config = f'--config={ROOT}/configs/fastslow.py:size=tiny'
  common = ('--topology=v5e:2x2', config, '--config.model.num_layers=6',
            '--config.model.seq_len=512')
  scanned, stdout = aot_json(tmp_path, *common, '--config.model.scan_layers=true',
                             '--config.grad_accum_steps=2')
  assert scanned['est_method'] == ('2 and 4-layer unscanned twins extrapolated to 6, one '
                                   'micro-batch x 2')
  assert scanned['est_loops'] == 0 and set(scanned['est_twins']) == {'2', '4'}
  assert re.search(r"^step time, compiler's estimate: [\d.e-]+ s \(2 and 4-layer", stdout, re.M)
  assert re.search(r"^  compiler's estimate: [\d,]+ tokens/s per device, MFU [\d.]+%", stdout,
                   re.M)
  whole, _ = aot_json(tmp_path, *common, '--config.batch_size=8')
  assert whole['est_method'] == 'the step as compiled'
  assert scanned['est_step_s'] == pytest.approx(2 * whole['est_step_s'], rel=0.03)
  assert scanned['est_mfu'] == pytest.approx(
      scanned['analytic_flops'] / (scanned['est_step_s'] * 197e12))


def test_no_estimate_for_cpu_programs():
  import jax
  import jax.numpy as jnp
  from launch import aot_compile

  compiled = jax.jit(lambda a: a @ a).lower(jnp.zeros((64, 64))).compile()
  assert aot_compile.compiler_seconds(compiled) == (None, 0)


# --------------------------------------------------------------------------- fits tables


def cached_row(size, topology, overrides, step, fits=True, mfu=0.5):
  return dict(status='compiled', size=size, topology=topology, overrides=overrides, wall_s=9.0,
              generated_code=2**20, total=2**30, hbm_gib=16, fits=fits, compile_s=1.0,
              compile_cpu_s=1.0, est_step_s=step, est_tokens_per_s_device=1234.4, est_mfu=mfu)


def test_comparison_tables_set_each_row_against_the_first_of_its_set():
  from launch import fits

  sets = fits.groups(['124m'], ['v5litepod-16'], include_windowed=False)
  assert [title for title, _, _ in sets] == [g[0] for g in fits.COMPARISONS]
  results = {}
  for _, _, group in sets:
    for size, topology, variants in group:
      for i, (_, over) in enumerate(variants):  # The coupled default row is in every group.
        results.setdefault(fits.row_key(size, topology, over),
                           cached_row(size, topology, over, 1 + i / 10))
  results[fits.row_key('124m', 'v5litepod-16', {'model.remat': 'none'})] = dict(
      status='does not fit', size='124m', topology='v5litepod-16', wall_s=3.0, overrides={})
  text = fits.compare_text(results, sets, include_windowed=False)
  tables = {t.split('\n')[0]: t for t in text.split('### ')[1:]}
  arms = tables['Arm and family']
  assert '| 124m | v5litepod-16 | dense | 1 s | 1.000 | 1,234 | 50.0% | 1.00 GiB | yes |' in arms
  assert '| 124m | v5litepod-16 | coupled | 1.1 s | 1.100 |' in arms
  assert '| 124m | v5litepod-16 | compressed | 1.3 s | 1.300 |' in arms
  assert '| 124m | v5litepod-16 | none | | | | | | no: does not fit |' in tables['Remat policy']
  assert 'model.fast_window' in tables['Full vs windowed attention, T=8192']


def test_windowed_rows_wait_for_the_fast_window_field():
  from launch import fits

  assert fits.WINDOWED[2][0][2][1][1]['model.fast_window'] > 0
  chosen = fits.groups(fits.SIZES, fits.TOPOLOGIES, include_windowed=True)
  assert chosen[-1][0] == fits.WINDOWED[0] and chosen[-1][2]



def test_long_context_rows_say_what_they_need_and_what_is_missing():
  from launch import fits

  jobs = fits.long_jobs(['124m'], ['v5p-16', 'v6e-8'])
  assert {t for _, _, t, _ in jobs} == {'v5p-16'} and {T for _, T, _, _ in jobs} == {32768, 131072}
  results = {}
  for size, T, topology, variants in jobs:
    (_, dense), (_, windowed) = variants
    row = cached_row(size, topology, dense, 2.0)
    results[fits.row_key(size, topology, dense)] = {
        **row, 'mesh': {'fsdp': 16}, 'analytic_flops': 3e12, 'compile_s': 5.0, 'peak_flops': 459e12,
        'est_step_s': 2.0 if T == 32768 else 0.001}
    results[fits.row_key(size, topology, windowed)] = (
        fits.missing_row(size, topology, windowed) if T == 32768
        else dict(status='does not fit', size=size, topology=topology, overrides=windowed))
  text = fits.long_context_table(results, ['124m'], ['v5p-16', 'v6e-8'])
  assert ('| 124m | 32k | v5p-16 | dense full | 1 | 1.00 GiB | 16 GiB | yes | 5 s | 1 s | 3.0 | '
          '0.00654 s | 2 s | 1.000 | 1,234 | 50.0% |') in text
  assert '| 124m | 128k | v5p-16 | dense full |' in text and '| 0.001 s (< floor) | 1.000 |' in text
  assert '| 124m | 32k | v5p-16 | fastslow W=1024 | | | | not compiled yet |' in text
  assert '| 124m | 128k | v5p-16 | fastslow W=1024 | | | | no: needs the sequence split' in text
  # Against the dense row's floor where its estimate is under it (splash's FLOPs unpriced).
  extra = dict(mesh={'fsdp': 8}, analytic_flops=3e12, peak_flops=459e12)
  for _, _, _, ((_, dense), (_, windowed)) in fits.long_jobs(['350m'], ['v5p-16']):
    results[fits.row_key('350m', 'v5p-16', dense)] = {
        **cached_row('350m', 'v5p-16', dense, 0.001), **extra}
    results[fits.row_key('350m', 'v5p-16', windowed)] = {
        **cached_row('350m', 'v5p-16', windowed, 0.00327), **extra, 'analytic_flops': 1e12}
  text = fits.long_context_table(results, ['350m'], ['v5p-16'])
  assert '| 0.00654 s | 0.001 s (< floor) | 1.000 |' in text
  assert '| 0.00218 s | 0.00327 s | 0.500 |' in text
  grid = [cached_row('1b', 'v5p-16', {}, 1.0), fits.missing_row('tiny', 'v4-32', {})]
  others = [fits.missing_row('124m', 'v5p-16', {'model.remat': 'none'})]
  assert fits.missing_text(grid, others).startswith(
      '**Not compiled yet:** of the grid, tiny on v4-32; and 1 of the 1 comparison and '
      'long-context rows.')
  assert fits.missing_text(grid[:1], []) == ''


def test_a_slice_named_twice_is_compiled_once(tmp_path):
  from launch import fits

  row = cached_row('1b', 'v5litepod-16', {}, 7.9)
  (tmp_path / f'{fits.row_key("1b", "v5litepod-16", {})}.json').write_text(json.dumps(row))
  assert fits.compile_row('1b', 'v5e:4x4', {}, tmp_path, 1) == {**row, 'topology': 'v5e:4x4'}
  assert fits.cached_as('1b', 'v5e:2x2', {}, tmp_path) is None
  assert fits.cached_as('1b', 'v5e:4x4', {'model.remat': 'none'}, tmp_path) is None


def test_a_row_takes_the_estimate_of_its_twin_with_the_scan_toggled(tmp_path):
  """Twins are unscanned either way: 124m with the layer scan on and off have the same ones."""
  from launch import fits

  off = {'model.scan_layers': False}
  row = {**cached_row('124m', 'v5litepod-16', off, 0.25), 'est_twins': {'2': 0.04, '4': 0.08},
         'est_as_compiled_s': 0.3, 'est_compile_s': 400.0}
  (tmp_path / f'{fits.row_key("124m", "v5litepod-16", off)}.json').write_text(json.dumps(row))
  got = fits.scan_twin_estimate('124m', 'v5litepod-16', {}, tmp_path)
  assert got == {'est_step_s': 0.25, 'est_tokens_per_s_device': 1234.4, 'est_mfu': 0.5,
                 'est_twins': {'2': 0.04, '4': 0.08}, 'est_compile_s': 0.0,
                 'est_from': fits.row_key('124m', 'v5litepod-16', off)}
  assert fits.scan_twin_estimate('124m', 'v5litepod-16', off, tmp_path) == {}
  assert fits.scan_twin_estimate('124m', 'v5p-16', {}, tmp_path) == {}
