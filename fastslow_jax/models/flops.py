"""Analytic FLOPs per token: fast path, slow path and output head, forward or forward+backward.

Conventions: a multiply-add is 2 FLOPs; only matmuls are counted (norms, softmax, rotary, pooling
and the gate are elementwise and left out); training costs 3x the forward pass (the backward pass
computes gradients for activations and weights). The embedding lookup is a gather: 0 FLOPs.

Causal attention is counted honestly by default: query t scores t+1 keys, (T+1)/2 on average, so
the score and value matmuls cost 2 * 2 * d * (T+1)/2 per token. `causal=False` counts the full
T x T product that a masked dense kernel actually executes; that is the figure that compares with
XLA's `compiled.cost_analysis()`. The slow path works on N = T/P pooled tokens, so its per-token
cost is its per-block cost divided by P.
"""

from __future__ import annotations

import dataclasses

from fastslow_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """FLOPs per token, split by path."""

  fast: float  # Fast attention + MLP sub-layers, all layers.
  slow: float  # Slow paths (pooled attention + phi_theta), amortised per token.
  head: float  # Output projection to the vocabulary.

  @property
  def total(self) -> float:
    return self.fast + self.slow + self.head


def _attention_flops(length: int, d_model: int, causal: bool) -> float:
  """Score + weighted-value matmuls per query, over `length` keys."""
  keys = (length + 1) / 2 if causal else length
  return 2 * 2 * d_model * keys


def flops_per_token(cfg: ModelConfig, *, training: bool = True, causal: bool = True,
                    seq_len: int | None = None) -> FlopCount:
  """FLOPs per token for sequences of `seq_len` (default `cfg.seq_len`)."""
  T, d = seq_len or cfg.seq_len, cfg.d_model
  projections = 2 * 4 * d * d  # q, k, v, o.
  swiglu = lambda hidden: 2 * 3 * d * hidden
  fast = cfg.num_layers * (projections + _attention_flops(T, d, causal) + swiglu(cfg.mlp_dim))
  n_blocks = -(-T // cfg.P)
  per_block = projections + _attention_flops(n_blocks, d, causal) + swiglu(cfg.phi_dim)
  slow = len(cfg.slow_layer_ids) * per_block * n_blocks / T
  head = 2 * d * cfg.vocab_size
  factor = 3 if training else 1
  return FlopCount(fast=factor * fast, slow=factor * slow, head=factor * head)
