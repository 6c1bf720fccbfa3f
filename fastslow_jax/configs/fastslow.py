r"""Every model family and ablation arm of the zoo, at every size: one config file.

    python -m fastslow_jax.train --workdir=/tmp/run \
        --config=configs/fastslow.py:family=fastslow,arm=coupled,size=tiny,P=16 \
        --config.total_steps=500 --config.data.kind=text --config.data.path=input.txt

The argument after ':' picks `family` (fastslow | hourglass | compressed), `arm` (dense |
coupled | gate_frozen | slow_frozen), `size` (tiny | small | 124m | 350m | 1b) and `P`, and
`init_from`: a pretrained dense model (a Hugging Face Llama directory or a dense run) whose
architecture replaces the size's and whose parameters the run starts from. Every
field starts at its declared default (`configs/schema.py`, where each is documented); this file
sets only what differs per size. Any field can then be overridden with `--config.<field>=<value>`;
the config is locked, so a misspelt field is an error. Every size works for every family.
"""

import ml_collections

from fastslow_jax import configlib
from fastslow_jax.configs import schema
from fastslow_jax.errors import UsageError

# d_model, layers, heads, mlp, seq_len, slow heads, phi width, the compressed family's block-MLP
# width (twice the head size); accelerator sizes scan their layers (compile time independent of
# depth), rematerialise blocks (launch/FITS.md) and compute in bf16.
_MODEL_SIZES = {
    'tiny': dict(d_model=64, num_layers=2, num_heads=4, mlp_dim=256, seq_len=128,
                 slow_num_heads=4, phi_dim=256, compress_dim=32),
    'small': dict(d_model=256, num_layers=6, num_heads=8, mlp_dim=1024, seq_len=256,
                  slow_num_heads=4, phi_dim=512, compress_dim=64),
    '124m': dict(d_model=768, num_layers=12, num_heads=12, mlp_dim=2048, seq_len=1024,
                 slow_num_heads=12, phi_dim=2048, compress_dim=128, remat='full',
                 scan_layers=True, dtype='bfloat16'),
    '350m': dict(d_model=1024, num_layers=24, num_heads=16, mlp_dim=2816, seq_len=1024,
                 slow_num_heads=16, phi_dim=2816, compress_dim=128, remat='full',
                 scan_layers=True, dtype='bfloat16'),
    '1b': dict(d_model=2048, num_layers=24, num_heads=16, mlp_dim=5632, seq_len=2048,
               slow_num_heads=16, phi_dim=5632, compress_dim=256, remat='full',
               scan_layers=True, dtype='bfloat16'),
}

# Batch (global, sequences), steps, peak LR and mesh per size: FSDP over every device from 124m
# on (tensor parallelism is a --config.mesh.tensor away). Check that a size fits a slice before
# queueing it:  python -m launch.aot_compile --topology=v5e:4x4 --config=configs/fastslow.py:size=1b
_TRAIN_SIZES = {
    'tiny': dict(batch_size=16, total_steps=300, lr=3e-3),
    'small': dict(batch_size=32, total_steps=2000, lr=1e-3),
    '124m': dict(batch_size=256, total_steps=20_000, lr=6e-4, mesh=(1, -1, 1)),
    '350m': dict(batch_size=256, total_steps=40_000, lr=3e-4, mesh=(1, -1, 1)),
    '1b': dict(batch_size=512, total_steps=60_000, lr=2e-4, mesh=(1, -1, 1), grad_accum_steps=8),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Config for `family`, `arm`, `size` and `P` given as 'family=fastslow,arm=coupled,size=tiny,
  P=16' (each optional)."""
  arg = configlib.parse_arg(arg, family='fastslow', arm='coupled', size='tiny', P=16,
                            init_from='')
  if arg.size not in _MODEL_SIZES:
    raise UsageError(f'size={arg.size!r} is unknown: choose one of '
                            f'{", ".join(_MODEL_SIZES)}.')
  train = _TRAIN_SIZES[arg.size]
  config = schema.defaults()
  config.total_steps, config.batch_size = train['total_steps'], train['batch_size']
  config.grad_accum_steps = train.get('grad_accum_steps', 1)
  config.model.update(family=arg.family, arm=arg.arm, P=arg.P,
                      vocab_size=-1,  # Taken from the data source.
                      **_MODEL_SIZES[arg.size])
  config.optim.lr = train['lr']
  config.optim.warmup_steps = min(1000, train['total_steps'] // 10)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = train.get('mesh', (-1, 1, 1))
  if arg.init_from:  # A pretrained dense model: its architecture replaces the size's.
    from fastslow_jax.interop import sources  # Imports no jax.
    sources.adopt(config, arg.init_from)
  config.lock()
  return config
