"""Device facts in one place: peak FLOP/s and memory per device kind, and a compiled program's
memory.

    from fastslow_jax import devices
    devices.peak_flops()                  # dense bf16 FLOP/s of jax.devices()[0], None on CPU
    devices.hbm_bytes(device)             # its memory in bytes, None where unknown
    devices.compiled_memory(compiled)     # {'argument': ..., 'total': ..., 'peak': ...} in bytes

A device kind is matched by the longest prefix of `device.device_kind` in `DEVICE_KINDS` (libtpu
calls a v5e 'TPU v5 lite', a v5p 'TPU v5', a v6e 'TPU v6 lite'). Figures are per JAX device:
one chip for v4 (megacore), v5e, v5p and v6e; one of a TPU7x chip's two TensorCores.
"""

from __future__ import annotations

import dataclasses

import jax

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class DeviceKind:
  """What one device of a kind offers: dense bf16 FLOP/s (vendor figure, no sparsity) and
  memory in bytes (None where one name covers several capacities)."""
  peak_flops: float
  hbm_bytes: int | None


DEVICE_KINDS = {
    'TPU v4': DeviceKind(275e12, 32 * GiB),
    'TPU v5 lite': DeviceKind(197e12, 16 * GiB),  # v5e
    'TPU v5e': DeviceKind(197e12, 16 * GiB),
    'TPU v5': DeviceKind(459e12, 95 * GiB),  # v5p
    'TPU v5p': DeviceKind(459e12, 95 * GiB),
    'TPU v6 lite': DeviceKind(918e12, 32 * GiB),  # v6e (Trillium)
    'TPU v6e': DeviceKind(918e12, 32 * GiB),
    'TPU7x': DeviceKind(2307e12 / 2, 96 * GiB),  # Ironwood: 2 devices per chip.
    # GPUs: memory as the device reports it (launch/gpu_targets/ holds the same figures).
    'NVIDIA A100': DeviceKind(312e12, None),  # 40 or 80 GB.
    'NVIDIA A100-SXM4-80GB': DeviceKind(312e12, 85_100_068_864),
    'NVIDIA H100': DeviceKind(989e12, None),  # PCIe, SXM, NVL.
    'NVIDIA H100 80GB HBM3': DeviceKind(989e12, 84_942_979_072),
    'NVIDIA H200': DeviceKind(989e12, 151_397_597_184),
    'NVIDIA B200': DeviceKind(2250e12, 191_514_411_008),
}


def device_kind(device: jax.Device | None = None) -> DeviceKind | None:
  """The `DEVICE_KINDS` entry of `device` (default: the first device), None where unknown."""
  kind = (device or jax.devices()[0]).device_kind
  for prefix in sorted(DEVICE_KINDS, key=len, reverse=True):
    if kind.startswith(prefix):
      return DEVICE_KINDS[prefix]
  return None


def peak_flops(device: jax.Device | None = None) -> float | None:
  """Peak dense bf16 FLOP/s of one device, None where unknown (e.g. CPU: report achieved
  FLOP/s instead)."""
  entry = device_kind(device)
  return entry.peak_flops if entry else None


def hbm_bytes(device: jax.Device | None = None) -> int | None:
  """Memory of one device in bytes: the table's figure, else what an attached device reports
  (`memory_stats()['bytes_limit']`), else None."""
  device = device or jax.devices()[0]
  entry = device_kind(device)
  if entry and entry.hbm_bytes:
    return entry.hbm_bytes
  try:
    stats = device.memory_stats() or {}
  except Exception:  # Compile-only devices have no runtime to ask.
    return None
  return stats.get('bytes_limit') or None


def compiled_memory(compiled) -> dict[str, int]:
  """Per-device memory of a compiled program (`jax.stages.Compiled`) in bytes, from XLA's
  memory analysis: argument, output, alias (outputs that reuse donated arguments), temp,
  generated_code, peak (0 where not reported), and total = argument + output - alias + temp +
  generated_code, what the program holds at once: an aliased output does not take memory
  twice, the program's code does take some."""
  memory = compiled.memory_analysis()
  get = lambda name: int(getattr(memory, f'{name}_size_in_bytes', 0) or 0)
  out = {name: get(name) for name in ('argument', 'output', 'alias', 'temp', 'generated_code')}
  out['total'] = (out['argument'] + out['output'] - out['alias'] + out['temp']
                  + out['generated_code'])
  out['peak'] = int(getattr(memory, 'peak_memory_in_bytes', 0) or 0)
  return out
