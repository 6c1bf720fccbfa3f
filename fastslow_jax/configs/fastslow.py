r"""Every model family and ablation arm of the zoo, at every size: one config file.

    python -m fastslow_jax.train --workdir=/tmp/run \
        --config=configs/fastslow.py:family=fastslow,arm=coupled,size=tiny,P=16 \
        --config.total_steps=500 --config.data.kind=text --config.data.path=input.txt

The argument after ':' picks `family` (fastslow | hourglass | compressed), `arm` (dense |
coupled | gate_frozen | slow_frozen), `size` (tiny | small | 124m | 350m | 1b) and `P`; any field
below can then be overridden with `--config.<field>=<value>`. The config is locked: a misspelt
field is an error. Every size works for every family: the hourglass's stage depths default from
`num_layers` (`model.hourglass_layers`), the compressed branch's MLP width from the head size.
"""

import ml_collections

from fastslow_jax import configlib
from fastslow_jax.configs.common import SHARDING_RULES, default_data_config

# d_model, layers, heads, mlp, seq_len, slow heads, phi width, the compressed family's block-MLP
# width (twice the head size); accelerator sizes scan their layers (compile time independent of
# depth) and rematerialise blocks (launch/FITS.md).
_MODEL_SIZES = {
    'tiny': dict(d_model=64, num_layers=2, num_heads=4, mlp_dim=256, seq_len=128,
                 slow_num_heads=4, phi_dim=256, compress_dim=32),
    'small': dict(d_model=256, num_layers=6, num_heads=8, mlp_dim=1024, seq_len=256,
                  slow_num_heads=4, phi_dim=512, compress_dim=64),
    '124m': dict(d_model=768, num_layers=12, num_heads=12, mlp_dim=2048, seq_len=1024,
                 slow_num_heads=12, phi_dim=2048, compress_dim=128, remat='full',
                 scan_layers=True),
    '350m': dict(d_model=1024, num_layers=24, num_heads=16, mlp_dim=2816, seq_len=1024,
                 slow_num_heads=16, phi_dim=2816, compress_dim=128, remat='full',
                 scan_layers=True),
    '1b': dict(d_model=2048, num_layers=24, num_heads=16, mlp_dim=5632, seq_len=2048,
               slow_num_heads=16, phi_dim=5632, compress_dim=256, remat='full',
               scan_layers=True),
}

# Batch (global, sequences), steps, peak LR, mesh and dtypes per size. Accelerator sizes use
# bf16 compute, FSDP over every device and rematerialised blocks; tensor parallelism is a
# --config.mesh.tensor away. Check that a size fits a slice before queueing it:
#   python -m launch.aot_compile --topology=v5e:4x4 --config=configs/fastslow.py:size=1b
_TRAIN_SIZES = {
    'tiny': dict(batch_size=16, total_steps=300, lr=3e-3, mesh=(-1, 1, 1), dtype='float32'),
    'small': dict(batch_size=32, total_steps=2000, lr=1e-3, mesh=(-1, 1, 1), dtype='float32'),
    '124m': dict(batch_size=256, total_steps=20_000, lr=6e-4, mesh=(1, -1, 1), dtype='bfloat16'),
    '350m': dict(batch_size=256, total_steps=40_000, lr=3e-4, mesh=(1, -1, 1), dtype='bfloat16'),
    '1b': dict(batch_size=512, total_steps=60_000, lr=2e-4, mesh=(1, -1, 1), dtype='bfloat16',
               grad_accum_steps=8),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Config for `family`, `arm`, `size` and `P` given as 'family=fastslow,arm=coupled,size=tiny,
  P=16' (each optional)."""
  arg = configlib.parse_arg(arg, family='fastslow', arm='coupled', size='tiny', P=16)
  if arg.size not in _MODEL_SIZES:
    raise ValueError(f'size={arg.size!r} is unknown: choose one of {", ".join(_MODEL_SIZES)}.')
  train = _TRAIN_SIZES[arg.size]
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = train['total_steps']
  config.batch_size = train['batch_size']  # Global, in sequences of seq_len tokens.
  config.grad_accum_steps = train.get('grad_accum_steps', 1)
  config.skip_nonfinite = False  # Skip updates with non-finite gradients instead of stopping...
  config.max_nonfinite_skips = 10  # ...up to this many steps in a row.

  config.model = ml_collections.ConfigDict(dict(
      family=arg.family, arm=arg.arm, P=arg.P, vocab_size=-1,  # -1: taken from the data source.
      slow_layers='all', gate='scalar', tie_embeddings=True, rope_theta=10_000.0,
      # hourglass: 'pre,inner,post' layer counts ('': from num_layers), shortening, upsampling.
      hourglass_layers='', hourglass_pool='average', hourglass_upsample='repeat',
      attention_impl='reference', attention_block_q=0, attention_block_kv=0,  # 0: kernel default.
      dtype=train['dtype'], param_dtype='float32', remat='none', scan_layers=False, norm_eps=1e-6))
  config.model.update(_MODEL_SIZES[arg.size])

  config.data = default_data_config()

  config.optim = ml_collections.ConfigDict(dict(
      lr=train['lr'], warmup_steps=min(1000, train['total_steps'] // 10), min_lr_ratio=0.1,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0,
      no_decay='scale,gate,bias',  # Parameter/module names exempt from weight decay.
  ))

  data, fsdp, tensor = train['mesh']
  # dcn_data: slices (TPU multi-slice) or hosts the data axis spans over DCN; fsdp and tensor
  # stay inside a slice.
  config.mesh = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, dcn_data=1))
  config.sharding_rules = SHARDING_RULES

  config.log_every = 10
  config.eval_every = 100
  config.eval_batches = 8
  config.checkpoint_every = 100
  config.keep_checkpoints = 3
  # A jax.profiler trace of this many steps from profile_start_step (0: none), in the run's
  # tensorboard directory (TensorBoard's Profile tab).
  config.profile_start_step = 0
  config.profile_steps = 5
  config.lock()
  return config
