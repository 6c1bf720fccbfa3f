"""Rematerialisation: the named values a block saves, and the policies by name.

Blocks name their outputs with `checkpoint_name(x, <constant below>)`; the 'minimal' policy keeps
exactly these for the backward pass and recomputes the rest. The policy names are declared with
the config (`configs.schema.REMAT_POLICIES`: none, full, dots_saveable, minimal).
"""

from __future__ import annotations

import jax

FAST_ATTN = 'fast_attn'  # The fast attention's output projection.
SLOW_ATTN = 'slow_attn'  # The slow attention's output projection.
PHI = 'phi'  # phi_theta's output.
MLP = 'mlp'  # The MLP sub-layer's output.
SAVED_NAMES = (FAST_ATTN, SLOW_ATTN, PHI, MLP)

POLICIES = {
    'full': None,  # Save nothing: recompute the whole block.
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'minimal': jax.checkpoint_policies.save_only_these_names(*SAVED_NAMES),
}


def remat(fn, policy: str, *, prevent_cse: bool = True):
  """`fn` rematerialised in the backward pass under a named policy ('none' returns `fn`)."""
  if policy == 'none':
    return fn
  return jax.checkpoint(fn, policy=POLICIES[policy], prevent_cse=prevent_cse)
