r"""Compile the train step for a TPU slice you do not have, and print its per-device memory.

    python -m launch.aot_compile --topology=v5e:4x4 \
        --config=configs/fastslow.py:arm=coupled,size=1b [--config.batch_size=256 ...]
    python -m launch.aot_compile --topology=cpu:8 --config=configs/fastslow.py:size=tiny

A TPU topology needs the `libtpu` package (`pip install libtpu`, Linux x86_64); it compiles
against a described slice without the hardware, so an out-of-memory config is caught before a
job is queued. `cpu:N` compiles for N simulated CPU devices (for testing the script). Where
libtpu cannot be had the script says so in one line and exits 0 ("skipped").
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config (as for train).',
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string('topology', None, "'<tpu generation>:<chips>' such as v4:2x2x2, "
                                "v5e:4x4, v5p:2x2x2, v6e:4x4, or 'cpu:N' for N CPU devices.")
flags.mark_flags_as_required(['config', 'topology'])

# Chip names used in topology strings -> names libtpu understands.
_TPU_NAMES = {'v4': 'v4', 'v5e': 'v5e', 'v5litepod': 'v5e', 'v5p': 'v5p', 'v6e': 'v6e'}


def compile_devices(topology: str):
  """Compile-only devices for `topology`, or None (with a printed reason) if unavailable."""
  import jax

  kind, _, shape = topology.partition(':')
  if kind == 'cpu':
    count = int(shape or 1)
    if jax.device_count() < count:
      raise ValueError(f'--topology={topology} needs {count} CPU devices but JAX has '
                       f'{jax.device_count()}: set XLA_FLAGS=--xla_force_host_platform_device_count'
                       f'={count} (this script does so when it starts jax itself).')
    return jax.devices()[:count]
  if kind not in _TPU_NAMES or not shape:
    raise ValueError(f'--topology={topology!r} is invalid: use e.g. v5e:4x4, v4:2x2x2 or cpu:8.')
  from jax.experimental import topologies
  try:
    return topologies.get_topology_desc(f'{_TPU_NAMES[kind]}:{shape}', platform='tpu').devices
  except Exception as e:  # No libtpu, or a libtpu that does not know the topology.
    print(f'skipped: cannot describe TPU {topology} here ({type(e).__name__}: '
          f'{str(e).splitlines()[0] if str(e) else ""}); `pip install libtpu` on Linux x86_64.')
    return None


def main(argv):
  del argv
  from fastslow_jax import models, train

  devices = compile_devices(_TOPOLOGY.value)
  if devices is None:
    return
  config = train.resolve_config(_CONFIG.value, num_devices=len(devices))
  setup = train.Setup(config, devices)
  try:
    compiled = setup.compile_train_step(config.batch_size)
  except Exception as e:  # XLA reports an out-of-memory program as a compile error.
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    print(f'does not fit {_TOPOLOGY.value}: {str(e).splitlines()[0]}')
    sys.exit(1)
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  gib = lambda b: f'{(b or 0) / 2**30:8.3f} GiB'
  fields = ('argument_size_in_bytes', 'output_size_in_bytes', 'temp_size_in_bytes',
            'generated_code_size_in_bytes', 'alias_size_in_bytes')
  print(f'{config.model.arm} d_model={config.model.d_model} layers={config.model.num_layers} '
        f'T={config.model.seq_len} P={config.model.P}: '
        f'{models.param_count(setup.abstract_state.params):,} params')
  print(f'{len(devices)} x {devices[0].device_kind} ({_TOPOLOGY.value}), mesh '
        f'{dict(setup.mesh.shape)}, global batch {config.batch_size}')
  print('per-device memory (compiled estimate):')
  for field in fields:
    print(f'  {field.removesuffix("_size_in_bytes"):<16} {gib(getattr(memory, field, 0))}')
  total = sum(getattr(memory, f, 0) or 0 for f in fields[:4]) - (memory.alias_size_in_bytes or 0)
  print(f'  {"total":<16} {gib(total)}')
  if cost and 'flops' in cost:
    print(f'XLA FLOPs per device per step: {cost["flops"]:.4g}')


if __name__ == '__main__':
  if '--topology=cpu' in ' '.join(sys.argv):  # Simulated devices must exist before JAX starts.
    count = next(a for a in sys.argv if a.startswith('--topology=')).partition(':')[2] or '1'
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={count}')
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  app.run(main)
