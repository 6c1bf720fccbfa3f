"""The model zoo: one decoder, four ablation arms chosen by `ModelConfig.arm`.

    from fastslow_jax import models
    model = models.build(models.ModelConfig(arm='coupled', P=16), rngs=0)
    logits = model(tokens)  # int32 [B, T] -> float32 [B, T, V]
"""

from fastslow_jax.models.attention_backends import check_attention_platform
from fastslow_jax.models.config import ARMS, REMAT_POLICIES, ModelConfig
from fastslow_jax.models.fastslow import Block, SlowPath, block_mean_pool, broadcast_completed_blocks
from fastslow_jax.models.flops import FlopCount, flops_per_token
from fastslow_jax.models.layers import ATTENTION_BACKENDS, attention
from fastslow_jax.models.model import (Decoder, build, convert_layout, gate_values, param_count,
                                       trainable_filter, trainable_mask, unrolled)

__all__ = [
    'ARMS', 'ATTENTION_BACKENDS', 'REMAT_POLICIES', 'Block', 'Decoder', 'FlopCount', 'ModelConfig',
    'SlowPath', 'attention', 'block_mean_pool', 'broadcast_completed_blocks', 'build',
    'check_attention_platform', 'convert_layout', 'flops_per_token', 'gate_values', 'param_count',
    'trainable_filter', 'trainable_mask', 'unrolled',
]
