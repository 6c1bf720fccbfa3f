"""The step-timing harness: members timed round-robin, so that a machine whose load changes over
time (other processes, thermal limits) slows every member alike and the ratios stay fair.

A member is a `Timed` program with its arguments, or a `TrainStep`: a config's jitted train step
on random tokens. `round_robin` runs warm-up rounds, then timed rounds, each member once per
round in an order rotated every round. The grids (paper_500k, p_sweep, zoo) time their configs'
train steps with `time_steps` (cached per grid by `cached_step_times` and `time_grid`);
experiments/bench.py times its rows, their matmuls alone and a matmul peak the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np

from fastslow_jax import runtime


class Timed:
  """A program and its arguments, timed `calls` times in a row per round (seconds per call)."""

  def __init__(self, program: Callable, *args, calls: int = 1, warm: bool = True):
    self.program, self.args, self.calls = program, args, calls
    self.times: list[float] = []
    if warm:
      jax.block_until_ready(program(*args))  # Compiles where `program` is only jitted.

  def call(self):
    """One call; returns what to wait for."""
    return self.program(*self.args)

  def context(self):
    """What the calls run inside (a mesh for a train step)."""
    return contextlib.nullcontext()

  def step(self, record: bool) -> None:
    """One round's calls, timed together; their mean kept when `record`."""
    with self.context():
      start = time.perf_counter()
      for _ in range(self.calls):
        out = self.call()
      jax.block_until_ready(out)
    if record:
      self.times.append((time.perf_counter() - start) / self.calls)

  def median(self) -> float:
    """Median seconds per call over the recorded rounds."""
    return statistics.median(self.times)


class TrainStep(Timed):
  """A config's jitted train step (forward, backward, AdamW) on random tokens; the state
  advances with every call. `compile_s` is the compilation's wall time."""

  def __init__(self, config: ml_collections.ConfigDict, devices=None, calls: int = 1):
    config = runtime.resolve_config(config, len(devices) if devices else None)
    self.setup = setup = runtime.TrainSetup(config, devices)
    self.state = setup.init_state()
    start = time.perf_counter()
    self.compiled = setup.compile_train_step(config.batch_size)
    self.compile_s = time.perf_counter() - start
    T, B = config.model.seq_len, config.batch_size
    tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (B, T + 1),
                                               dtype=np.int32)
    self.tokens = setup.global_batch(tokens)
    super().__init__(self.compiled, calls=calls, warm=False)

  def call(self):
    self.state, metrics = self.compiled(self.state, self.tokens)
    return metrics

  def context(self):
    return self.setup.activate()


def round_robin(members: Sequence[Timed], rounds: int, warmup: int = 1) -> None:
  """`warmup` untimed rounds, then `rounds` timed ones; each round steps every member once, in
  an order rotated by one every round (A B C, B C A, C A B, ...)."""
  members = list(members)
  for r in range(warmup + rounds):
    k = r % len(members)
    for member in members[k:] + members[:k]:
      member.step(record=r >= warmup)


def time_steps(configs: dict[str, ml_collections.ConfigDict], *, rounds: int = 20,
               steps_per_round: int = 3, devices=None) -> dict[str, float]:
  """Median seconds per jitted train step of each config, on random tokens, the configs timed
  round-robin (all compiled first; one warm-up round)."""
  members = {key: TrainStep(config, devices, calls=steps_per_round)
             for key, config in configs.items()}
  round_robin(list(members.values()), rounds)
  return {key: member.median() for key, member in members.items()}


def cached_step_times(path: str | os.PathLike, configs: dict[str, ml_collections.ConfigDict],
                      **kwargs) -> tuple[dict[str, float], str]:
  """`time_steps`, stored in `path` (JSON) and reused while the configs and settings match.

  Returns (seconds per step by key, a note of the machine's 1-minute load average before and
  after timing: other work on the machine inflates small-op configs most)."""
  path = pathlib.Path(path)
  key = {'configs': {k: json.loads(c.to_json_best_effort()) for k, c in configs.items()},
         'settings': {k: v for k, v in kwargs.items() if k != 'devices'}}
  if path.exists():
    old = json.loads(path.read_text())
    if old.get('key') == key:
      return old['step_s'], old.get('note', '')
  before = os.getloadavg()[0]
  step_s = time_steps(configs, **kwargs)
  note = (f'load average {before:.1f} before and {os.getloadavg()[0]:.1f} after timing, on '
          f'{os.cpu_count()} CPU cores')
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({'key': key, 'step_s': step_s, 'note': note}, indent=1) + '\n')
  return step_s, note


def time_grid(runs, root: str | os.PathLike, *, key: Callable, group: Callable = None,
              rounds: int = 20, steps_per_round: int = 3, devices=None,
              log: Callable[[str], None] = print
              ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
  """The step-time benchmark of a grid (`grid.Run`s): per `group` of runs (default: the run's
  group), the first config of each `key` among the first seed's runs, timed together (cached in
  root/timing_<group>.json). Returns ({group: {key: seconds per step}}, {group: load note})."""
  group = group or (lambda run: run.group)
  timing, notes = {}, {}
  for name in dict.fromkeys(group(r) for r in runs):
    configs = {}
    for r in runs:
      if group(r) == name and r.seed == runs[0].seed:
        configs.setdefault(key(r), r.config)
    log(f'Timing {", ".join(configs)} on {name} ({rounds} interleaved rounds) ...')
    timing[name], notes[name] = cached_step_times(
        pathlib.Path(root) / f'timing_{name}.json', configs, rounds=rounds,
        steps_per_round=steps_per_round, devices=devices)
  return timing, notes
