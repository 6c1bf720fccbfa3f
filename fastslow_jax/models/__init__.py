"""The model zoo: families of decoders (`ModelConfig.family`), each with the ablation arms of
`ModelConfig.arm`.

    from fastslow_jax import models
    model = models.build(models.ModelConfig(family='fastslow', arm='coupled', P=16), rngs=0)
    logits = model(tokens)  # int32 [B, T] -> float32 [B, T, V]

The families are listed once, in `families.FAMILIES`; each is one module here. The names below
load on first use, so the tables that import no jax (`families`, `attention_backends`, `config`)
can be imported without loading flax.
"""

import importlib

_EXPORTS = {
    'attention_backends': ('check_attention_platform',),
    'config': ('ARMS', 'REMAT_POLICIES', 'ModelConfig'),
    'decoder': ('Decoder', 'LanguageModel'),
    'families': ('FAMILIES',),
    'fastslow': ('Block', 'SlowPath', 'block_mean_pool', 'broadcast_completed_blocks'),
    'flops': ('FlopCount', 'flops_per_token'),
    'layers': ('ATTENTION_BACKENDS', 'attention'),
    'model': ('build', 'convert_layout', 'gate_values', 'layer_groups', 'param_count',
              'trainable_filter', 'trainable_mask', 'unrolled'),
    'roles': ('Embedding', 'Gate', 'NormScale', 'SlowParam'),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
  if name in _WHERE:
    return getattr(importlib.import_module(f'{__name__}.{_WHERE[name]}'), name)
  try:  # A submodule, e.g. models.flops.
    return importlib.import_module(f'{__name__}.{name}')
  except ModuleNotFoundError as e:
    if e.name != f'{__name__}.{name}':
      raise
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}') from None


def __dir__():
  return __all__
