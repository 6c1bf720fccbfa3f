"""The layout of a run directory (`--workdir`), defined once for every tool that reads or writes it.

    WORKDIR/config.json              the resolved config the run trained with
    WORKDIR/metrics.jsonl            one JSON record per logged step (process 0)
    WORKDIR/tensorboard/             TensorBoard event files of the same metrics
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


@dataclasses.dataclass(frozen=True)
class RunDir:
  """A run directory; `RunDir(workdir).metrics` and so on name its files."""

  path: epath.Path

  def __init__(self, workdir: str | os.PathLike):
    workdir = os.fspath(workdir)
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

  def has_checkpoints(self) -> bool:
    return self.checkpoints.exists() and any(self.checkpoints.iterdir())

  def read_config(self) -> ml_collections.ConfigDict:
    """The resolved config a training run wrote here; a one-line ValueError if there is none."""
    if not self.config.exists():
      raise ValueError(f'{self.config} not found: --workdir must be a directory written by '
                       'fastslow_jax.train.')
    return ml_collections.ConfigDict(json.loads(self.config.read_text()))

  def write_config(self, config: ml_collections.ConfigDict) -> None:
    self.config.write_text(config.to_json_best_effort(indent=2) + '\n')
