r"""Compile the train step for TPUs or GPUs you do not have, and print its per-device memory.

    python -m launch.aot_compile --topology=v5e:4x4 \
        --config=configs/fastslow.py:arm=coupled,size=1b [--config.batch_size=256 ...]
    python -m launch.aot_compile --topology=v4-32 --config=configs/fastslow.py:size=350m
    python -m launch.aot_compile --topology=h100:8 --config=configs/fastslow.py:size=124m \
        --config.model.attention_impl=cudnn
    python -m launch.aot_compile --topology=cpu:8 --config=configs/fastslow.py:size=tiny

The train step is lowered and compiled exactly as `fastslow_jax.train` does it (same mesh, same
shardings, same donated state), but for compile-only devices described from the topology name:
an out-of-memory config (or an attention kernel that does not compile for the target) is caught
before a job is queued. A TPU topology needs the `libtpu` package (`pip install libtpu` matching
your jax, or `pip install -e '.[test]'`; Linux x86_64 only). A GPU topology (`<model>:<gpus per
host>` or `<model>:<hosts>x<gpus per host>`, models as in launch/gpu_targets/) needs JAX's CUDA
plugin and, for cuDNN attention, the cuDNN libraries (`pip install -e '.[aot-gpu]'`), no GPU.
Where these cannot be had the script prints one `skipped:` line and exits 0. `cpu:N` compiles for
N local CPU devices, which tests the script anywhere.

Exit status: 0 compiled (or skipped), 1 the step does not fit in device memory, 2 bad flags or
config (one line on stderr).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import re
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from fastslow_jax import cli


# Accelerator-type prefix -> (topology generation, cores per chip counted in the type: v4-32 is
# 16 chips).
_ACCELERATOR_TYPES = {'v4': ('v4', 2), 'v5p': ('v5p', 2), 'v5litepod': ('v5e', 1),
                      'v5e': ('v5e', 1), 'v6e': ('v6e', 1)}
_THREE_D = ('v4', 'v5p', 'tpu7x')  # Generations with a 3-D chip torus.
# libtpu keyword arguments per generation: v4 chips are one JAX device each (megacore), as on
# real v4 slices; libtpu's default would expose each of the two TensorCores separately.
_TOPOLOGY_KWARGS = {'v4': dict(chip_config_name='megacore')}
# One XLA GPU target description (stream_executor.GpuTargetConfigProto, text) per GPU model,
# named <model>.txtpb: what deviceless compilation for that GPU needs instead of the GPU.
GPU_TARGETS = pathlib.Path(__file__).resolve().parent / 'gpu_targets'


def gpu_models() -> tuple[str, ...]:
  return tuple(sorted(path.stem for path in GPU_TARGETS.glob('*.txtpb')))


def chip_grid(generation: str, chips: int) -> str:
  """The usual slice shape for `chips` chips: 16 -> '4x4' (2-D) or '2x2x4' (3-D)."""
  if chips < 1 or chips & (chips - 1) or (chips == 2):
    raise ValueError(f'{chips} chips of {generation} is not a slice shape this script knows: give '
                     f'the topology itself, e.g. --topology={generation}:'
                     f'{"2x2x1" if generation in _THREE_D else "2x2"}.')
  if chips == 1:
    return '1x1x1' if generation in _THREE_D else '1x1'
  dims = [2, 2, 1] if generation in _THREE_D else [2, 2]
  while math.prod(dims) < chips:  # Double the smallest dimension, the last one on ties.
    smallest = min(dims)
    dims[max(i for i, d in enumerate(dims) if d == smallest)] *= 2
  return 'x'.join(map(str, dims))


def parse_topology(topology: str) -> tuple[str, str]:
  """('v5e', '4x4') from 'v5e:4x4' or 'v5litepod-16'; ('cpu', 'N') from 'cpu:N'; ('h100', '2x8')
  (hosts x GPUs per host) from 'h100:2x8', ('h100', '1x8') from 'h100:8'."""
  if ':' in topology:
    kind, _, shape = topology.partition(':')
    kind = {'v5litepod': 'v5e'}.get(kind, kind)
    valid = shape.replace('x', '').isdigit() and all(shape.split('x'))
    if kind == 'cpu' and shape.isdigit() and int(shape) > 0:
      return kind, shape
    if kind in gpu_models() and re.fullmatch(r'([1-9]\d*x)?[1-9]\d*', shape):
      return kind, shape if 'x' in shape else f'1x{shape}'
    if kind != 'cpu' and kind.startswith(('v', 'tpu')) and valid:
      return kind, shape
  else:
    prefix, _, cores = topology.rpartition('-')
    if prefix in _ACCELERATOR_TYPES and cores.isdigit():
      generation, per_chip = _ACCELERATOR_TYPES[prefix]
      return generation, chip_grid(generation, int(cores) // per_chip)
  raise ValueError(f'--topology={topology!r} is invalid: use e.g. v5e:4x4, v4:2x2x2, v5litepod-16, '
                   f'v4-32, h100:8 (GPU models: {", ".join(gpu_models())}) or cpu:8.')


def cuda_plugin_available() -> bool:
  if importlib.util.find_spec('jax_plugins') is None:  # No JAX plugin at all.
    return False
  return any(importlib.util.find_spec(f'jax_plugins.xla_cuda{v}') for v in (12, 13))


def libtpu_available() -> bool:
  path = os.environ.get('TPU_LIBRARY_PATH')
  return bool(path and os.path.exists(path)) or importlib.util.find_spec('libtpu') is not None


def target_devices(kind: str, shape: str, num_slices: int):
  """Devices to compile for, or None where libtpu is missing. Must run before JAX's backends."""
  import jax

  jax.config.update('jax_platforms', 'cpu')  # Never grab (or wait for) an attached accelerator.
  if kind == 'cpu':
    if num_slices != 1:
      raise ValueError('--num_slices applies to TPU topologies only: for CPU devices give '
                       '--topology=cpu:<total devices> and --config.mesh.dcn_data.')
    jax.config.update('jax_num_cpu_devices', int(shape))
    return jax.devices()
  if kind in gpu_models():
    return _gpu_devices(kind, shape, num_slices)
  if not libtpu_available():
    return None
  # libtpu reads the TPU VM environment at start-up; describe a lone host instead of letting it
  # query a metadata server that is not there.
  chips = math.prod(int(n) for n in shape.split('x'))
  accelerator = (f'v5litepod-{chips}' if kind == 'v5e' else f'{kind}-{chips}' if kind == 'v6e'
                 else f'{kind}-{2 * chips}')
  for name, value in (('TPU_SKIP_MDS_QUERY', '1'), ('TPU_ACCELERATOR_TYPE', accelerator),
                      ('TPU_WORKER_HOSTNAMES', 'localhost'), ('TPU_WORKER_ID', '0'),
                      ('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')):  # No lock: runs side by side.
    os.environ.setdefault(name, value)
  from jax.experimental import topologies
  try:
    return topologies.get_topology_desc(f'{kind}:{shape}', platform='tpu', num_slices=num_slices,
                                        **_TOPOLOGY_KWARGS.get(kind, {})).devices
  except Exception as e:  # libtpu rejects the name or the shape.
    raise ValueError(f'libtpu cannot describe --topology={kind}:{shape}: '
                     f'{str(e).strip().splitlines()[0]}') from None


def _gpu_devices(model: str, shape: str, num_slices: int):
  """Compile-only CUDA devices of `shape` (hosts x GPUs) from the model's target description."""
  if num_slices != 1:
    raise ValueError('--num_slices applies to TPU topologies only: for several GPU hosts give '
                     '--topology=<model>:<hosts>x<gpus per host>.')
  if not cuda_plugin_available():
    return None
  from jax.experimental import topologies
  hosts, per_host = shape.split('x')
  return topologies.get_topology_desc(
      platform='cuda', target_config=(GPU_TARGETS / f'{model}.txtpb').read_text(),
      topology=f'1x{hosts}x{per_host}').devices


def size(num_bytes: float) -> str:
  for unit, scale in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
    if num_bytes >= scale:
      return f'{num_bytes / scale:8.2f} {unit}'
  return f'{num_bytes:8.0f} B  '


def measure(config, setup, compiled, devices, seconds: tuple[float, float]) -> dict:
  """The compiled step's per-device memory (bytes), whether it fits, and its FLOPs; `seconds`:
  the compile's (wall, CPU) seconds."""
  from fastslow_jax import devices as device_facts, models

  out = device_facts.compiled_memory(compiled)
  hbm = device_facts.hbm_bytes(devices[0])
  out['hbm_gib'] = None if hbm is None else hbm / 2**30
  out['fits'] = None if hbm is None else out['total'] <= hbm
  model, batch = setup.model_config, config.batch_size
  out['params'] = models.param_count(setup.abstract_state.params)
  out['compile_s'], out['compile_cpu_s'] = seconds
  out['device_kind'] = devices[0].device_kind
  out['mesh'] = dict(setup.mesh.shape)
  out['analytic_flops'] = models.flops_per_token(model).total * batch * model.seq_len / len(devices)
  out['analytic_flops_full'] = (models.flops_per_token(model, causal=False).total * batch
                                * model.seq_len / len(devices))
  out['xla_flops'] = _flops(compiled)  # Counts a loop's body once.
  # Every target on one footing, scanned or not: a TPU compile's own count differs (0.83 of the
  # analytic count for the unscanned 124m, 1.28 from the lowered program).
  out['xla_flops_unrolled'] = unrolled_flops(config, devices)
  out['peak_flops'] = device_facts.peak_flops(devices[0])
  return out


def _flops(stage) -> float | None:
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) if cost and cost.get('flops') else None


def unrolled_flops(config, devices) -> float | None:
  """XLA's FLOPs per device of the same step with every loop unrolled (layers not scanned, no
  gradient accumulation): the whole program lowered for one local CPU device (no compile), over
  the number of target devices. Lowered programs of compile-only devices have no cost analysis."""
  import jax
  import jax.numpy as jnp
  from fastslow_jax import runtime

  twin = runtime.resolve_config(config, num_devices=len(devices))
  twin.model.scan_layers, twin.grad_accum_steps = False, 1
  twin.mesh.data, twin.mesh.fsdp, twin.mesh.tensor, twin.mesh.dcn_data = 1, 1, 1, 1
  twin.model.attention_impl = 'reference'  # The kernels' FLOPs are opaque to the analysis.
  setup = runtime.TrainSetup(twin, jax.devices('cpu')[:1])
  step = runtime.make_train_step(setup.graphdef, setup.tx, 1, setup.batch_sharding)
  tokens = jax.ShapeDtypeStruct((twin.batch_size, setup.model_config.seq_len + 1), jnp.int32)
  with setup.activate():
    lowered = jax.jit(step).lower(setup.abstract_state, tokens)
  flops = _flops(lowered)
  return None if flops is None else flops / len(devices)


# --------------------------------------------------------------------------- the step-time estimate
# A TPU program compiled through libtpu carries the compiler's estimate of its run time,
# `cost_analysis()['optimal_seconds']`. Three things in it need care (launch/README.md, "Step
# time without a TPU", has the checks):
# - a while loop's body counts once: layer scans, gradient accumulation, and the windowed-einsum
#   loops XLA builds under FSDP to overlap a weight's all-gather (or its gradient's
#   reduce-scatter) with its matmul, one shard per iteration;
# - each `ConcatBitcast` (a free concatenation of asynchronously sliced pieces) counts -1 s;
# - it sums per-operation estimates: no overlap of communication with compute is credited.
# So the estimate is taken from twins of the step: layers unrolled at two depths and extrapolated
# linearly, one micro-batch (times the accumulation steps), windowed einsum off.
ESTIMATE_OPTIONS = {'xla_jf_spmd_threshold_for_windowed_einsum_mib': 1 << 30}
_SENTINEL = 'custom_call_target="ConcatBitcast"'


def compiler_seconds(compiled) -> tuple[float | None, int]:
  """(the compiler's estimate of one run of `compiled` in seconds, corrected for the -1 s it
  counts per ConcatBitcast; the number of while loops, whose bodies it counts once). None where
  the compiler gives no estimate (CPU, GPU)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if not cost or cost.get('optimal_seconds') is None:
    return None, 0
  text = compiled.as_text()
  return float(cost['optimal_seconds']) + text.count(_SENTINEL), text.count(' while(')


def depth_twins(model) -> tuple[int, dict[int, dict]]:
  """(n, {m: model overrides}): the stack is n repeats of one unit of layers; the overrides give
  an unscanned model of m units, for the two depths the estimate extrapolates from (one depth,
  the whole stack, where it is too shallow to extrapolate)."""
  if model.family == 'hourglass':
    stages = model.hourglass_stages
    n = math.gcd(*stages)
    unit = [s // n for s in stages]
    twin = lambda m: {'num_layers': m * sum(unit),
                      'hourglass_layers': ','.join(str(m * s) for s in unit)}
    per_unit = sum(unit)
  else:
    pattern = model.slow_pattern
    k, r = dataclasses.replace(model, scan_layers=True).scan_groups
    n, per_unit = (r, k) if r and k * r == len(pattern) else (1, len(pattern))
    ids = lambda m: ','.join(str(i) for i in range(m * per_unit) if pattern[i % per_unit])
    twin = lambda m: {'num_layers': m * per_unit,
                      **({'slow_layers': ids(m)} if 0 < sum(pattern) < len(pattern) else {})}
  first = max(1, -(-2 // per_unit))  # At least two layers.
  depths = (first, 2 * first) if 2 * first < n else (n,)
  return n, {m: {**twin(m), 'scan_layers': False} for m in depths}


def compile_twin(setup, batch: int):
  """The train step of `setup` compiled as `TrainSetup.compile_train_step` does it, with
  `ESTIMATE_OPTIONS` added."""
  import jax
  import jax.numpy as jnp
  from fastslow_jax import runtime, sharding

  jitted = jax.jit(setup.train_step_fn(), in_shardings=(setup.state_sharding, setup.batch_sharding),
                   out_shardings=(setup.state_sharding, sharding.replicated(setup.mesh)),
                   donate_argnums=0)
  tokens = jax.ShapeDtypeStruct((batch, setup.model_config.seq_len + 1), jnp.int32,
                                sharding=setup.batch_sharding)
  devices = setup.mesh.devices.flat
  with setup.activate():
    return jitted.lower(setup.abstract_state_with_sharding(), tokens).compile(
        {**runtime.compiler_options(devices), **ESTIMATE_OPTIONS})


def estimate_step(config, devices) -> dict:
  """The compiler's estimate of one train step (seconds) from twins of it, with how it was
  made; {} where the compiler gives none. A twin that does not fit leaves no estimate."""
  from fastslow_jax import models, runtime

  model = models.ModelConfig.from_mapping(config.model)
  units, twins = depth_twins(model)
  accum = config.grad_accum_steps
  seconds, loops, compile_s = {}, 0, 0.0
  for m, overrides in twins.items():
    twin = runtime.resolve_config(config, num_devices=len(devices))
    twin.model.update(overrides)
    twin.batch_size, twin.grad_accum_steps = config.batch_size // accum, 1
    start = time.perf_counter()
    try:
      compiled = compile_twin(runtime.TrainSetup(twin, devices), twin.batch_size)
    except Exception as e:
      if 'RESOURCE_EXHAUSTED' in str(e):
        return {'est_note': f'a {overrides["num_layers"]}-layer twin does not fit'}
      raise
    compile_s += time.perf_counter() - start
    seconds[m], twin_loops = compiler_seconds(compiled)
    if seconds[m] is None:
      return {}
    loops += twin_loops
  (m1, s1), (m2, s2) = list(seconds.items())[0], list(seconds.items())[-1]
  step = s1 if m1 == m2 else s1 + (units - m1) * (s2 - s1) / (m2 - m1)
  layers = [twins[m]['num_layers'] for m in seconds]
  return {'est_step_s': accum * step, 'est_compile_s': compile_s, 'est_loops': loops,
          'est_twins': {str(n): s for n, s in zip(layers, seconds.values())},
          'est_method': (f'{" and ".join(map(str, layers))}-layer unscanned twin'
                         f'{"s" if len(layers) > 1 else ""}'
                         f'{f" extrapolated to {model.num_layers}" if len(layers) > 1 else ""}'
                         f'{f", one micro-batch x {accum}" if accum > 1 else ""}')}


def add_estimate(result: dict, config, devices, compiled, twins: bool = True) -> None:
  """Adds the compiler's estimate of the step (seconds, tokens per second per device, MFU) to
  `result`, and its estimate of `compiled` as it stands (loop bodies once) for comparison; only
  the latter without `twins`."""
  result['est_as_compiled_s'], result['est_as_compiled_loops'] = compiler_seconds(compiled)
  if result['est_as_compiled_s'] is None or not twins:
    return
  if (result['est_as_compiled_loops'] == 0 and not config.model.scan_layers
      and config.grad_accum_steps == 1):  # Nothing to unroll: the step itself.
    result.update(est_step_s=result['est_as_compiled_s'], est_method='the step as compiled',
                  est_compile_s=0.0, est_loops=0)
  else:
    result.update(estimate_step(config, devices))
  step = result.get('est_step_s')
  if step:
    tokens = config.batch_size * config.model.seq_len
    result['est_tokens_per_s_device'] = tokens / step / len(devices)
    peak = result.get('peak_flops')
    result['est_mfu'] = result['analytic_flops'] / (step * peak) if peak else None


def report(config, setup, result: dict, topology: str) -> None:
  """Prints the model, the mesh and the compiled step's per-device memory and FLOPs."""
  model = setup.model_config
  print(f'{model.arm} d_model={model.d_model} layers={model.num_layers} T={model.seq_len} '
        f'P={model.P}: {result["params"]:,} params; remat {model.remat}, '
        f'scan_layers {model.scan_layers}, attention {model.attention_impl}')
  print(f'{len(setup.mesh.devices.flat)} x {result["device_kind"]} ({topology}), mesh '
        f'{result["mesh"]}, global batch {config.batch_size}, grad_accum_steps '
        f'{config.grad_accum_steps}; compiled in {result["compile_s"]:.1f} s '
        f'({result["compile_cpu_s"]:.1f} CPU s)')
  print('per-device memory (compiled estimate):')
  for name in ('argument', 'output', 'alias', 'temp', 'generated_code'):
    print(f'  {name:<15} {size(result[name])}')
  hbm = result['hbm_gib']
  share = f'  ({100 * result["total"] / (hbm * 2**30):.1f}% of {hbm:.4g} GiB HBM)' if hbm else ''
  print(f'  {"total":<15} {size(result["total"])}{share}')
  if result['peak']:
    print(f'  {"peak":<15} {size(result["peak"])}')
  print(f'FLOPs per device per step: {result["analytic_flops"]:.4g} (analytic, causal attention '
        'counted at half)')
  if result['xla_flops_unrolled']:
    print(f'  XLA cost analysis: {result["xla_flops_unrolled"]:.4g} (masked attention executes the '
          f'full T x T: analytic {result["analytic_flops_full"]:.4g} counted so)')
  report_estimate(result)


def report_estimate(result: dict) -> None:
  """Prints the compiler's estimate of the step, labelled as such."""
  if result.get('est_step_s'):
    mfu = result.get('est_mfu')
    seconds = result['est_compile_s']
    twins = f'; twins compiled in {seconds:.0f} s' if seconds else ''
    print(f'step time, compiler\'s estimate: {result["est_step_s"]:.4g} s '
          f'({result["est_method"]}{twins})')
    print(f'  compiler\'s estimate: {result["est_tokens_per_s_device"]:,.0f} tokens/s per device'
          + (f', MFU {100 * mfu:.1f}% (analytic FLOPs over the estimate at '
             f'{result["peak_flops"] / 1e12:g} TFLOP/s peak)' if mfu else ''))
  elif result.get('est_note'):
    print(f'step time, compiler\'s estimate: none ({result["est_note"]})')


def compile_step(config, devices, topology: str):
  """(setup, compiled step, (wall, CPU) seconds of the compile); a step that does not fit ends
  the command (exit 1). CPU seconds (all threads) hardly depend on what else the machine runs."""
  from fastslow_jax import runtime

  setup = runtime.TrainSetup(config, devices)
  start, start_cpu = time.perf_counter(), time.process_time()
  try:
    compiled = setup.compile_train_step(config.batch_size)
  except Exception as e:  # XLA reports a program that does not fit as a compile error.
    if 'cuDNN not found' in str(e):
      print(f'skipped: cuDNN attention for {topology} needs the cuDNN libraries, which are not '
            "installed here (pip install -e '.[aot-gpu]').")
      sys.exit(0)
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    message = next((line for line in str(e).splitlines() if 'RESOURCE_EXHAUSTED' in line), str(e))
    cli.error(ValueError(f'does not fit {topology}: {message.strip()} (shard more with '
                         '--config.mesh.*, lower --config.batch_size or raise '
                         '--config.grad_accum_steps)'), status=1)
  return setup, compiled, (time.perf_counter() - start, time.process_time() - start_cpu)


def define_flags() -> None:
  config_flags.DEFINE_config_file(
      'config', None, 'Training config, as for fastslow_jax.train, e.g. '
      'configs/fastslow.py:arm=coupled,size=1b; --config.<field>=<value> overrides.',
      lock_config=True)
  flags.DEFINE_string(
      'topology', None, "Target devices: a TPU topology '<generation>:<chips>' (v4:2x2x2, "
      "v5p:2x2x4, v5e:4x4, v6e:2x4, tpu7x:2x2x1), a Cloud TPU accelerator type (v4-32, v5p-16, "
      "v5litepod-16, v6e-8), a GPU model and count (h100:8, a100:2x8 for 2 hosts of 8; models: "
      "launch/gpu_targets/), or 'cpu:N' for N local CPU devices.")
  flags.DEFINE_integer(
      'num_slices', 1, 'TPU slices joined over DCN (multi-slice); set --config.mesh.dcn_data to '
      'the same number so the data axis spans them.', lower_bound=1)
  flags.DEFINE_list(
      'remat_policies', [], 'Compile once per remat policy (none, full, dots_saveable, minimal) '
      'and compare their memory; default: the config\'s own.')
  flags.DEFINE_bool('estimate', True, "TPU targets: also the compiler's estimate of the step time, "
                    'tokens/s and MFU, from twins of the step compiled with layers unrolled '
                    '(two more compiles of two and four layers; --noestimate skips them).')
  flags.DEFINE_bool('twins', True, "With --estimate: compile the twins; --notwins gives only the "
                    'estimate of the step as compiled, which counts each loop body once.')
  flags.DEFINE_string('json_out', None, 'Also write the figures as JSON (bytes, seconds, FLOPs) '
                      'to this file, keyed by remat policy.')
  flags.mark_flags_as_required(['config', 'topology'])


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  kind, shape = parse_topology(f.topology)
  devices = target_devices(kind, shape, f.num_slices)
  if devices is None:
    print(f'skipped: compiling for {kind}:{shape} needs '
          f'{"the JAX CUDA plugin" if kind in gpu_models() else "libtpu"}, which is not installed '
          "here (pip install -e '.[aot-gpu]' or '.[test]', Linux x86_64).")
    return
  from fastslow_jax import runtime

  slices = f' x {f.num_slices} slices' if f.num_slices > 1 else ''
  topology = f'{kind}:{shape}{slices}'
  results = {}
  for policy in f.remat_policies or [None]:
    config = f.config
    if policy is not None:
      config.model.remat = policy
    config = runtime.resolve_config(config, num_devices=len(devices))
    setup, compiled, seconds = compile_step(config, devices, topology)
    result = results[setup.model_config.remat] = measure(config, setup, compiled, devices,
                                                         seconds)
    if f.estimate and devices[0].platform == 'tpu':
      add_estimate(result, config, devices, compiled, twins=f.twins)
    report(config, setup, results[setup.model_config.remat], topology)
  if len(results) > 1:
    print('\nper-device memory by remat policy:')
    for policy, r in results.items():
      step = f'   step {r["est_step_s"]:.4g} s (estimate)' if r.get('est_step_s') else ''
      print(f'  {policy:<14} total {size(r["total"])}   temp {size(r["temp"])}'
            f'{"" if r["fits"] is None else "   fits" if r["fits"] else "   does not fit"}{step}')
  if f.json_out:
    pathlib.Path(f.json_out).write_text(json.dumps(results, indent=1) + '\n')


def run(argv) -> None:
  try:
    main(argv)
  except ValueError as e:  # Bad topology or config: one line, exit 2.
    cli.error(e)


if __name__ == '__main__':
  cli.define_checked(define_flags)
  if {'-h', '--help', '--helpshort'} & set(sys.argv[1:]):  # absl's own --help exits 1.
    print(__doc__.strip() + '\n\nflags:\n' + flags.FLAGS.main_module_help().strip())
    sys.exit(0)
  app.run(run, flags_parser=cli.parse_flags)
