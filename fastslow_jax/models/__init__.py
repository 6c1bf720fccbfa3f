"""The model zoo: families of decoders (`ModelConfig.family`), each with the ablation arms of
`ModelConfig.arm`.

    from fastslow_jax import models
    model = models.build(models.ModelConfig(family='fastslow', arm='coupled', P=16), rngs=0)
    logits = model(tokens)  # int32 [B, T] -> float32 [B, T, V]

The families are listed once, in `families.FAMILIES`; each is one module here.
"""

from fastslow_jax.models.attention_backends import check_attention_platform
from fastslow_jax.models.config import ARMS, REMAT_POLICIES, ModelConfig
from fastslow_jax.models.decoder import Decoder, LanguageModel
from fastslow_jax.models.families import FAMILIES
from fastslow_jax.models.fastslow import Block, SlowPath, block_mean_pool, broadcast_completed_blocks
from fastslow_jax.models.flops import FlopCount, flops_per_token
from fastslow_jax.models.layers import ATTENTION_BACKENDS, attention
from fastslow_jax.models.model import (build, convert_layout, gate_values, layer_groups,
                                       param_count, trainable_filter, trainable_mask, unrolled)

__all__ = [
    'ARMS', 'ATTENTION_BACKENDS', 'Block', 'Decoder', 'FAMILIES', 'FlopCount', 'LanguageModel',
    'ModelConfig', 'REMAT_POLICIES', 'SlowPath', 'attention', 'block_mean_pool',
    'broadcast_completed_blocks', 'build', 'check_attention_platform', 'convert_layout',
    'flops_per_token', 'gate_values', 'layer_groups', 'param_count', 'trainable_filter',
    'trainable_mask', 'unrolled',
]
