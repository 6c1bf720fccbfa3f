"""The layout of a run directory (`--workdir`), defined once for every tool that reads or writes it.

    WORKDIR/config.json              the resolved config the run trained with
    WORKDIR/metrics.jsonl            one JSON record per logged step (process 0)
    WORKDIR/tensorboard/             TensorBoard event files of the same metrics, and profiles
    WORKDIR/checkpoints/<step>/      Orbax checkpoints (see `checkpointing`)
    WORKDIR/eval_<split>_<step>.json results of `fastslow_jax.evaluate`

Paths may be local or remote (gs://...): everything goes through `etils.epath`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
from etils import epath

from fastslow_jax.configs import schema
from fastslow_jax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class RunDir:
  """A run directory; `RunDir(workdir).metrics` and so on name its files."""

  path: epath.Path

  def __init__(self, workdir: str | os.PathLike):
    workdir = os.fspath(workdir)
    if not workdir.strip():  # abspath('') would quietly be the current directory.
      raise UsageError('--workdir is empty: name the run directory.')
    if '://' not in workdir:  # Orbax needs absolute local paths (gs:// and the like are).
      workdir = os.path.abspath(workdir)
    object.__setattr__(self, 'path', epath.Path(workdir))

  @property
  def config(self) -> epath.Path:
    return self.path / 'config.json'

  @property
  def metrics(self) -> epath.Path:
    return self.path / 'metrics.jsonl'

  @property
  def tensorboard(self) -> epath.Path:
    return self.path / 'tensorboard'

  @property
  def checkpoints(self) -> epath.Path:
    return self.path / 'checkpoints'

  def eval_result(self, split: str, step: int) -> epath.Path:
    return self.path / f'eval_{split}_{step}.json'

  def eval_positions_plot(self, split: str, step: int) -> epath.Path:
    """The plot of an evaluation's loss by position in the context."""
    return self.path / f'eval_{split}_{step}_positions.png'

  def layout(self) -> tuple[tuple[epath.Path, bool], ...]:
    """(path, is a directory) of the entries tools write directly in the run directory."""
    return ((self.config, False), (self.metrics, False), (self.checkpoints, True),
            (self.tensorboard, True))

  def check(self, *, run: bool = False, write: bool = True) -> None:
    """The filesystem preconditions of a tool using this directory, checked before anything is
    compiled or written; a one-line UsageError naming the path and the fix otherwise.

    `run`: it must be a run directory already (training wrote its config); `write`: the tool
    writes here, so the directory (or the nearest existing ancestor that it would be created
    under) must be a writable directory. Remote paths (gs://...) get only the `run` check.
    """
    local = '://' not in str(self.path)
    if local and os.path.exists(self.path) and not os.path.isdir(self.path):
      raise UsageError(f'--workdir {self.path} is a file, not a directory: choose another '
                       '--workdir.')
    if local:
      for path, is_dir in self.layout():
        _check_kind(str(path), is_dir)
    if run and not self.config.exists():
      raise UsageError(self._not_a_run())
    if local and write:
      check_writable_dir(str(self.path), '--workdir', [(str(p), d) for p, d in self.layout()])

  def create(self) -> None:
    """Creates the directory (and its parents); a one-line UsageError where that fails after the
    checks passed (e.g. a filesystem that refuses even root)."""
    try:
      self.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise UsageError(f'--workdir {self.path} cannot be created ({e.strerror or e}): choose '
                       'another --workdir.') from None

  def _not_a_run(self) -> str:
    return f'{self.config} not found: --workdir must be a directory written by fastslow_jax.train.'

  def has_checkpoints(self) -> bool:
    return self.checkpoints.exists() and any(self.checkpoints.iterdir())

  def read_config(self) -> ml_collections.ConfigDict:
    """The resolved config a training run wrote here, with the fields declared since it was
    written at their defaults; a one-line UsageError if there is none."""
    if not self.config.exists():
      raise UsageError(self._not_a_run())
    try:
      return schema.complete(json.loads(self.config.read_text()))
    except json.JSONDecodeError as e:
      raise UsageError(f'{self.config} is not valid JSON ({e}): restore it, or train into a new '
                       '--workdir.') from None

  def write_config(self, config: ml_collections.ConfigDict) -> None:
    self.config.write_text(config.to_json_best_effort(indent=2) + '\n')


def _check_kind(path: str, is_dir: bool) -> None:
  """A local `path`, where it exists, is a directory (`is_dir`) or a file, as the layout says."""
  if os.path.lexists(path) and not os.path.exists(path):
    raise UsageError(f'{path} is a broken symbolic link: remove it or choose another --workdir.')
  if os.path.exists(path) and os.path.isdir(path) != is_dir:
    kind, want = ('a file', 'a directory') if is_dir else ('a directory', 'a file')
    raise UsageError(f'{path} is {kind}, but the run directory needs {want} there: remove it or '
                     'choose another --workdir.')


def check_writable_dir(path: str, flag: str,
                       entries: list[tuple[str, bool]] = ()) -> None:
  """A local directory `path` (named by `flag` in messages) can be created, or it and the
  existing `entries` in it ((path, is a directory)) can be written; a one-line UsageError naming
  the path and the fix otherwise. Read-only filesystems are refused too: they refuse root, whom
  permission bits do not stop. Creates nothing."""
  path = existing = os.path.abspath(path)
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if existing != path:  # To be created under `existing`.
    if not os.path.isdir(existing):
      raise UsageError(f'{flag} {path} cannot be created: {existing} is a file. Choose another '
                       f'{flag}.')
    if _read_only(existing):
      raise UsageError(f'{flag} {path} cannot be created: {existing} is on a read-only '
                       f'filesystem. Choose another {flag}.')
    if not os.access(existing, os.W_OK | os.X_OK):
      raise UsageError(f'{flag} {path} cannot be created: {existing} is not writable. Fix its '
                       f'permissions or choose another {flag}.')
    return
  if _read_only(path):
    raise UsageError(f'{flag} {path} is on a read-only filesystem: choose another {flag}.')
  for entry, is_dir in ((path, True), *entries):
    if os.path.exists(entry) and not os.access(entry, os.W_OK | (os.X_OK if is_dir else 0)):
      raise UsageError(f'{entry} is not writable: fix its permissions or choose another {flag}.')


def _read_only(path: str) -> bool:
  """Whether `path` lies on a filesystem mounted read-only."""
  try:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except OSError:
    return False
