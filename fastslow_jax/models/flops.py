"""Analytic FLOPs per token: fast path, slow path and output head, forward or forward+backward.

Conventions: a multiply-add is 2 FLOPs; only matmuls are counted (norms, softmax, rotary, pooling
and the gate are elementwise and left out); training costs 3x the forward pass (the backward pass
computes gradients for activations and weights). The embedding lookup is a gather: 0 FLOPs.

Causal attention is counted honestly by default: query t scores t+1 keys, (T+1)/2 on average, so
the score and value matmuls cost 2 * 2 * d * (T+1)/2 per token. `causal=False` counts the full
T x T product that a masked dense kernel actually executes; that is the figure that compares with
XLA's `compiled.cost_analysis()`. A slow path works on N = T/P pooled tokens, so its per-token
cost is its per-block cost divided by P.

Each family counts its own model (`flops_per_token` in its module) with the pieces below.
"""

from __future__ import annotations

import dataclasses

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


def attention(length: int, d_model: int, causal: bool) -> float:
  """Score + weighted-value matmuls per query, over `length` causally visible keys."""
  keys = (length + 1) / 2 if causal else length
  return 2 * 2 * d_model * keys


def projections(d_model: int) -> float:
  """q, k, v and output projections of one attention layer, per position."""
  return 2 * 4 * d_model * d_model


def swiglu(d_model: int, hidden: int) -> float:
  return 2 * 3 * d_model * hidden


def layer(cfg: ModelConfig, length: int, causal: bool) -> float:
  """One plain transformer layer (attention + SwiGLU MLP) per position of a `length` sequence."""
  return (projections(cfg.d_model) + attention(length, cfg.d_model, causal)
          + swiglu(cfg.d_model, cfg.mlp_dim))


def head(cfg: ModelConfig) -> float:
  return 2 * cfg.d_model * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, *, training: bool = True, causal: bool = True,
                    seq_len: int | None = None) -> FlopCount:
  """FLOPs per token of the model `cfg` describes (any family and arm), for sequences of
  `seq_len` (default `cfg.seq_len`)."""
  count = families.module(cfg).flops_per_token(cfg, causal=causal, seq_len=seq_len or cfg.seq_len)
  return count * (3 if training else 1)
