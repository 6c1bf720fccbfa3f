"""Multi-controller start-up: one JAX process per host (TPU) or per GPU (SLURM, MPI, Kubernetes).

`initialize()` calls `jax.distributed.initialize` explicitly when a coordinator is given (flags or
the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment), with no arguments
when a cluster JAX can auto-detect is present, and not at all for a single process.
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

from fastslow_jax.errors import UsageError


def define_flags() -> None:
  """Flags of a multi-process entry point (defaults from the JAX_* environment)."""
  env = os.environ.get
  flags.DEFINE_string('coordinator_address', env('JAX_COORDINATOR_ADDRESS'),
                      'host:port of process 0; set for explicit multi-process runs.')
  flags.DEFINE_integer('num_processes', int(env('JAX_NUM_PROCESSES', 0)) or None,
                       'Number of processes (with --coordinator_address).', lower_bound=1)
  flags.DEFINE_integer('process_id', None if env('JAX_PROCESS_ID') is None
                       else int(env('JAX_PROCESS_ID')),
                       'This process id, 0-based (with --coordinator_address).', lower_bound=0)
  flags.DEFINE_enum('distributed', 'auto', ['auto', 'off'],
                    "'auto': initialise when a coordinator is given or a cluster is detected.")


# Environment variables by which JAX's cluster auto-detection recognises a multi-process job.
_CLUSTER_ENV = {
    'SLURM_NTASKS': 'SLURM',
    'OMPI_COMM_WORLD_SIZE': 'Open MPI',
    'TPU_WORKER_HOSTNAMES': 'Cloud TPU',
    'MEGASCALE_NUM_SLICES': 'Cloud TPU multi-slice',
}


def detected_cluster() -> str | None:
  """Name of a multi-process cluster environment, or None for a single process."""
  for var, name in _CLUSTER_ENV.items():
    value = os.environ.get(var, '')
    count = len(value.split(',')) if var == 'TPU_WORKER_HOSTNAMES' else int(value or 1)
    if count > 1:
      return name
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, mode: str = 'auto') -> None:
  """Starts the multi-controller runtime if this is a multi-process job (see module doc)."""
  if mode == 'off' or jax.distributed.is_initialized():
    return
  # Cross-process collectives between CPU devices (tests, local runs); GPU/TPU ignore it. Must be
  # set before any backend starts, like jax.distributed.initialize itself.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise UsageError('--coordinator_address needs --num_processes and --process_id '
                       '(or JAX_NUM_PROCESSES / JAX_PROCESS_ID).')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif cluster := detected_cluster():
    logging.info('Detected %s: initialising jax.distributed from the environment.', cluster)
    jax.distributed.initialize()
  else:
    return
  logging.info('Process %d of %d, %d local / %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.process_index() != 0:  # One voice: other processes report only warnings and errors.
    logging.set_verbosity(logging.WARNING)


def initialize_from_flags() -> None:
  """`initialize` with the values of `define_flags`' flags."""
  f = flags.FLAGS
  initialize(f.coordinator_address, f.num_processes, f.process_id, f.distributed)
