"""Multi-controller start-up and host loss: one JAX process per host (TPU) or per GPU (SLURM, MPI).

`initialize()` calls `jax.distributed.initialize` explicitly when a coordinator is given (flags or
the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment), with no arguments
when a cluster JAX can auto-detect is present, and not at all for a single process.

`PeerWatch` ends a process whose peer is gone: without it, a survivor blocks in its next
collective until JAX's coordination service aborts it (exit 134 and thread dumps, over a minute
later). Every process beats in the coordination service's key-value store from a thread of its
own, so a slow step, a long compile or a long checkpoint write never stops its heartbeat; a peer
whose beat has not moved for `timeout` seconds is lost, and so is the coordinator when the store
stops answering for as long. The watch then prints one line (which process, the last complete
checkpoint, how to resume) and ends the process with `errors.EXIT_RESUMABLE`, which the
launchers restart. A checkpoint being written at that moment stays uncommitted (Orbax renames it
into place only once every process has written its part), so it never looks complete.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

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


class PeerWatch:
  """Heartbeats between the processes of a multi-process run; see the module docstring.

  Two threads: one beats and reads the others' beats through the coordination service (a call
  that may block when a host vanishes), one judges from what was last read and never blocks.
  `describe_stop()` gives the rest of the line printed when a peer is lost (e.g. the last
  complete checkpoint and how to resume). Use as a context manager around the work; nothing
  happens in a single-process run.
  """

  _PREFIX = 'fastslow/heartbeat/'

  def __init__(self, timeout: float, describe_stop: Callable[[], str] = lambda: '',
               on_lost: Callable[[str], None] | None = None, *, client=None,
               process: tuple[int, int] | None = None):
    """`client` (a key-value store with JAX's client's methods) and `process` (this process's
    index, the process count) default to JAX's runtime's."""
    self.timeout, self.describe_stop = timeout, describe_stop
    self.interval = max(0.1, min(2.0, timeout / 10))
    self.on_lost = on_lost or _exit_resumable
    self._client = client
    self._me, self._count = process or (None, None)
    self._stop = threading.Event()
    self._judged = threading.Event()  # Set once a peer was declared lost.
    self._threads = []
    self._lock = threading.Lock()
    self._answered = time.monotonic()  # When the coordination service last answered.
    self._moved = {}  # Peer -> (its last beat read, when it last moved).

  def __enter__(self) -> PeerWatch:
    if self._me is None:
      self._me, self._count = jax.process_index(), jax.process_count()
    if self._count > 1:
      if self._client is None:
        from jax._src import distributed as jax_distributed  # The client JAX's runtime started.
        self._client = jax_distributed.global_state.client
      now = time.monotonic()
      self._answered = now
      self._moved = {i: (None, now) for i in range(self._count) if i != self._me}
      self._threads = [threading.Thread(target=target, name=f'peer-watch-{name}', daemon=True)
                       for name, target in (('beat', self._beat), ('judge', self._judge))]
      for thread in self._threads:
        thread.start()
    return self

  def __exit__(self, kind, error, traceback) -> None:
    if self._threads and isinstance(error, jax.errors.JaxRuntimeError):
      # A collective with a vanished peer can fail (gloo: "connection closed by peer") before
      # that peer's heartbeat is overdue. Give the judge its time: a lost peer then ends this
      # process with its one line (not a traceback) and a status the launchers restart; any
      # other runtime error is raised once the peers are seen alive.
      self._judged.wait(self.timeout + 3 * self.interval)
    self._stop.set()
    for thread in self._threads:
      thread.join(timeout=self.interval * 2)  # A beat blocked on a vanished host is left.

  def _beat(self) -> None:
    beat = 0
    while not self._stop.wait(self.interval):
      beat += 1
      try:
        self._client.key_value_set(f'{self._PREFIX}{self._me}', str(beat), allow_overwrite=True)
        beats = dict(self._client.key_value_dir_get(self._PREFIX))
      except Exception:  # The coordination service (process 0) does not answer.
        continue
      now = time.monotonic()
      with self._lock:
        self._answered = now
        for peer, (last, since) in self._moved.items():
          value = beats.get(f'{self._PREFIX}{peer}')
          self._moved[peer] = (value, now) if value != last else (last, since)

  def _judge(self) -> None:
    while not self._stop.wait(self.interval):
      now = time.monotonic()
      with self._lock:
        # A peer's silence counts up to the service's last answer: while the service itself is
        # silent, every peer looks silent, and the coordinator is the one lost.
        silent = {peer: self._answered - since for peer, (_, since) in self._moved.items()}
        unanswered = now - self._answered
      if unanswered > self.timeout:
        return self._lost(0, unanswered, 'the coordinator, whose service stopped answering')
      for peer, seconds in silent.items():
        if seconds > self.timeout:
          return self._lost(peer, seconds, 'whose heartbeat stopped')

  def _lost(self, peer: int, silent: float, how: str) -> None:
    if self._stop.is_set():  # The run ended meanwhile: nothing to report.
      return
    detail = self.describe_stop()
    self.on_lost(f'lost process {peer} of {self._count} ({how} {silent:.0f} s ago)'
                 f'{"; " + detail if detail else ""}.')
    self._judged.set()  # After on_lost: the default ends the process before a waiter wakes.


def _exit_resumable(message: str) -> None:
  """Ends this process at once with one line and `errors.EXIT_RESUMABLE`: its main thread may be
  blocked in a collective with the lost peer, which nothing else would end."""
  from fastslow_jax import errors
  print(f'error: {message}', file=sys.stderr, flush=True)
  os._exit(errors.EXIT_RESUMABLE)
