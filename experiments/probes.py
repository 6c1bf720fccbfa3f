"""Probes of a trained model's slow paths, read from the parts the model reports
(`Decoder.forward`): the gated slow share per layer at every checkpoint of a run."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fastslow_jax import data, models, restoring
from fastslow_jax.rundir import RunDir

# A run's slow path counts as "open" when the gated slow contribution reaches this fraction of
# the fast attention update (RMS over validation tokens) in some layer.
OPEN_SHARE = 0.05


@functools.lru_cache(maxsize=32)
def _jitted(graphdef, fn: Callable):
  return jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))


def apply_jitted(model, fn: Callable, *args):
  """fn(model, *args) under jax.jit (the model split into graph and state; compiled once per
  model structure and fn)."""
  graphdef, state = nnx.split(model)
  return _jitted(graphdef, fn)(state, *args)


def _shares(model, tokens):
  _, parts = model.forward(tokens)
  return [jnp.sqrt(jnp.mean(jnp.square(r['gated'])) / jnp.mean(jnp.square(r['fast'])))
          if 'gated' in r else None for r in parts]


def slow_share_of(model, tokens) -> dict[str, float]:
  """Per slow layer: RMS of the gated slow update over RMS of the fast attention update."""
  shares = apply_jitted(model, _shares, tokens)
  return {f'layer_{i}': float(s) for i, s in enumerate(shares) if s is not None}


def slow_shares(workdir: str | os.PathLike, *, devices=None,
                num_windows: int = 64) -> dict[str, dict[str, float]]:
  """{step: slow share per layer} at every checkpoint of a run, on validation windows; empty for
  a family without a gate (nothing gated to measure)."""
  run = RunDir(workdir)
  cfg = run.read_config()
  if not models.FAMILIES[cfg.model.family].gated:
    return {}
  ds = data.make_dataset(cfg.data, seq_len=cfg.model.seq_len, split='validation')
  tokens = jnp.asarray(np.stack([ds[i][:-1] for i in range(min(num_windows, len(ds)))]))
  out = {}
  for step in restoring.checkpoint_steps(run):
    restored = restoring.restore(run, step, devices=devices)
    with restored.setup.activate():
      out[str(step)] = slow_share_of(restored.model(), tokens)
  return out


def max_share(result: dict[str, Any], step: str | None = None) -> float:
  """Largest slow share over layers at checkpoint `step` (default the last) of a run's result."""
  shares = result.get('share') or {}
  if not shares:
    return math.nan
  step = step or max(shares, key=int)
  return max(shares[step].values())
