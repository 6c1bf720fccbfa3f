"""Metrics out: metrics.jsonl, TensorBoard event files, a progress bar, and MFU.

Only process 0 writes; every other process gets a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import jax
import tqdm
from etils import epath

from fastslow_jax.devices import peak_flops  # noqa: F401 (train's MFU: metrics.peak_flops)
from fastslow_jax.rundir import RunDir

def interactive() -> bool:
  """Progress bars only for a person at a terminal: not under CI, not when output is piped."""
  return sys.stderr.isatty() and not os.environ.get('CI')


def progress(total: int, initial: int = 0, desc: str = 'train') -> tqdm.tqdm:
  """A progress bar with ETA; silent unless interactive and on process 0."""
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit='step', dynamic_ncols=True,
                   disable=not interactive() or jax.process_index() != 0)


def truncate_jsonl(path: str | os.PathLike, after_step: int) -> None:
  """Drops records past `after_step` (steps redone after a resume), keeping the file's order."""
  path = epath.Path(path)
  if not path.exists():
    return
  kept = [r for r in read_jsonl(path) if r['step'] <= after_step]
  tmp = path.with_suffix('.tmp')
  tmp.write_text(''.join(json.dumps(r) + '\n' for r in kept))
  tmp.replace(path)  # Atomic: a crash leaves the old file or the new one.


class MetricsWriter:
  """Appends one JSON object per call to the run's metrics.jsonl and mirrors scalars to
  TensorBoard (`RunDir.metrics`, `RunDir.tensorboard`)."""

  def __init__(self, run: RunDir):
    self.enabled = jax.process_index() == 0
    self._path = run.metrics
    self._tb = None
    self._remote = '://' in str(run.path)  # gs://, s3://: written through etils.epath.
    self._lines = [line + '\n' for line in self._path.read_text().splitlines()] if (
        self._remote and self.enabled and self._path.exists()) else []
    if self.enabled:
      from tensorboardX import SummaryWriter  # Pure-Python event files; no TensorFlow needed.
      self._path.parent.mkdir(parents=True, exist_ok=True)
      self._tb = SummaryWriter(str(run.tensorboard))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **_plain(metrics)}
    line = json.dumps(record) + '\n'
    if self._remote:  # Object stores cannot append: rewrite (metrics files are small).
      self._lines.append(line)
      self._path.write_text(''.join(self._lines))
    else:
      with self._path.open('a') as f:
        f.write(line)
    for key, value in _flatten(record).items():
      if key != 'step' and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(key, value, global_step=int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc) -> None:  # Also on errors: TensorBoard's writer thread must stop.
    self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Records of a metrics.jsonl file, in order."""
  return [json.loads(line) for line in epath.Path(path).read_text().splitlines() if line.strip()]


def _plain(tree):
  if isinstance(tree, dict):
    return {k: _plain(v) for k, v in tree.items()}
  if hasattr(tree, 'item'):
    return tree.item()
  return tree


def _flatten(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(_flatten(value, f'{name}/'))
    else:
      out[name] = value
  return out
