"""Analytic FLOPs per token: fast path, slow path and output head, forward or forward+backward.

Conventions: a multiply-add is 2 FLOPs; only matmuls are counted (norms, softmax, rotary, pooling
and the gate are elementwise and left out); training costs 3x the forward pass (the backward pass
computes gradients for activations and weights). The embedding lookup is a gather: 0 FLOPs.

Causal attention is counted honestly by default: query t scores t+1 keys, (T+1)/2 on average, so
the score and value matmuls cost 2 * 2 * d * (T+1)/2 per token; within a local window W
(`model.fast_window`) query t scores min(t+1, W) keys, about W for T >> W. `causal=False` counts
what a masked kernel actually executes: the full T x T product, or with a window the chunked
kernel's 2W keys per query over the sequence padded to whole chunks of W; that is the figure that
compares with XLA's `compiled.cost_analysis()`. A slow path works on N = T/P pooled tokens, so its
per-token cost is its per-block cost divided by P.

Each family counts its own model (`flops_per_token` in its module) with the pieces below.
"""

from __future__ import annotations

import dataclasses
import math

import jax.extend.core

from fastslow_jax.models import families
from fastslow_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """FLOPs per token, split by path."""

  fast: float  # Full-rate layers (attention + MLP sub-layers).
  slow: float  # The family's slow path, amortised per token.
  head: float  # Output projection to the vocabulary.

  @property
  def total(self) -> float:
    return self.fast + self.slow + self.head

  def __mul__(self, factor: float) -> FlopCount:
    return FlopCount(self.fast * factor, self.slow * factor, self.head * factor)


def attention(length: int, d_model: int, causal: bool, window: int = 0) -> float:
  """Score + weighted-value matmuls per query of a `length` sequence, over the causally visible
  keys (within a local `window`, 0: all of them)."""
  if window and window < length:
    keys = ((window * (window + 1) / 2 + (length - window) * window) / length if causal
            else 2 * window * -(-length // window) * window / length)
  else:
    keys = (length + 1) / 2 if causal else length
  return 2 * 2 * d_model * keys


def projections(d_model: int, kv_dim: int | None = None) -> float:
  """q, k, v and output projections of one attention layer, per position; keys and values of
  width `kv_dim` (default d_model; grouped-query attention: key heads x head size)."""
  kv_dim = d_model if kv_dim is None else kv_dim
  return 2 * (2 * d_model * d_model + 2 * d_model * kv_dim)


def swiglu(d_model: int, hidden: int) -> float:
  return 2 * 3 * d_model * hidden


def layer(cfg: ModelConfig, length: int, causal: bool, window: int | None = None) -> float:
  """One plain transformer layer (attention + SwiGLU MLP) per position of a `length` sequence,
  its attention local within `window` (default `cfg.fast_window`; 0: full)."""
  window = cfg.fast_window if window is None else window
  return (projections(cfg.d_model, cfg.kv_heads * cfg.head_dim)
          + attention(length, cfg.d_model, causal, window) + swiglu(cfg.d_model, cfg.mlp_dim))


def head(cfg: ModelConfig) -> float:
  return 2 * cfg.d_model * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, *, training: bool = True, causal: bool = True,
                    seq_len: int | None = None) -> FlopCount:
  """FLOPs per token of the model `cfg` describes (any family and arm), for sequences of
  `seq_len` (default `cfg.seq_len`)."""
  count = families.module(cfg).flops_per_token(cfg, causal=causal, seq_len=seq_len or cfg.seq_len)
  return count * (3 if training else 1)


# --------------------------------------------------------------------------- programs


def program_matmuls(jaxpr: jax.extend.core.Jaxpr, repeats: int = 1) -> list:
  """The dot_general equations a program runs, one entry per execution, from its `jaxpr` and the
  jaxprs its equations carry: a scan's body counts `length` times, a cond only its costliest
  branch. `experiments.bench` times them alone."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      found += [eqn] * repeats
    inner = repeats * (eqn.params['length'] if eqn.primitive.name == 'scan' else 1)
    subs = [program_matmuls(sub, inner) for sub in jax.extend.core.jaxprs_in_params(eqn.params)]
    if eqn.primitive.name == 'cond' and subs:
      subs = [max(subs, key=lambda eqns: sum(map(matmul_flops, eqns)))]
    found += [e for sub in subs for e in sub]
  return found


def matmul_flops(eqn) -> int:
  """FLOPs of one dot_general equation: 2 per multiply-add."""
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  (_, rhs_contracting), (_, rhs_batch) = eqn.params['dimension_numbers']
  rhs_free = [n for d, n in enumerate(rhs) if d not in (*rhs_contracting, *rhs_batch)]
  return 2 * math.prod(lhs) * math.prod(rhs_free)
