r"""Conversions: Hugging Face Llama directories into runs of ours, and dense runs out to them.

    python -m fastslow_jax.convert import --hf_dir=path/to/llama --workdir=runs/llama \
        [--config=fastslow:family=fastslow,arm=dense,size=small] [--config.data.path=...]
    python -m fastslow_jax.convert export --workdir=runs/llama --hf_dir=out/llama \
        [--step=N] [--dtype=bfloat16] [--max_shard_mb=5000]

`import` writes a run at step 0 whose model (any family and arm of `--config`, dense by default)
holds the directory's parameters: the architecture fields come from its config.json, the rest
(data, training, the family's slow path) from `--config`. `train`, `evaluate`, `generate` and
`export` then work on it like on any run. It is `train` with `config.init_from` stopped at step 0
(`interop.retrofit`).

`export` writes a dense run's checkpoint (any step, either layer layout) as a directory that
`transformers` loads as `LlamaForCausalLM`: config.json, safetensors (sharded beyond
`--max_shard_mb`, with their index) and, where the run's data were tokenized with a
tokenizer.json, that file. Both directions hold one tensor at a time beyond the model.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import tqdm
from absl import flags, logging
from ml_collections import config_flags

from fastslow_jax import cli, configlib, data, metrics, rundir, train
from fastslow_jax.configs import schema
from fastslow_jax.data import tokenizers
from fastslow_jax.errors import UsageError
from fastslow_jax.interop import llama, safetensors_io, sources
from fastslow_jax.models.config import ModelConfig

DEFAULT_CONFIG = 'fastslow:arm=dense'


def import_hf(hf_dir: str, workdir: str, config: ml_collections.ConfigDict | None = None, *,
              devices=None) -> None:
  """Writes a new run in `workdir` at step 0 whose model holds the Hugging Face Llama directory's
  parameters (its shared parameters, for a family's other arms); `config` (default: the dense
  model of the packaged config) gives everything the directory does not."""
  if not sources.is_hf_dir(hf_dir):
    raise UsageError(f'--hf_dir {hf_dir} is not a Hugging Face model directory (no config.json '
                     'with a model_type).')
  if rundir.RunDir(workdir).has_checkpoints():
    raise UsageError(f'--workdir {workdir} already holds a run: import into a new --workdir.')
  config = configlib.load(DEFAULT_CONFIG) if config is None else config
  sources.adopt(config, hf_dir)
  train.train(config, workdir, devices=devices, stop_at_step=0)


def export_hf(workdir: str, hf_dir: str, *, step: int | None = None, dtype: str | None = None,
              max_shard_bytes: int = 5 << 30) -> list[str]:
  """Writes the dense run in `workdir` at `step` (default its latest checkpoint) as a Hugging
  Face `LlamaForCausalLM` directory `hf_dir` (new or empty), its tensors in `dtype` (default the
  run's parameter dtype). Returns the files written."""
  source = sources.RunSource(workdir, step)  # Refuses runs other than dense.
  cfg = ModelConfig.from_mapping(source.model)
  dtype = dtype or cfg.param_dtype
  _check_output(hf_dir)
  tok = _tokenizer(workdir)
  config = llama.hf_config(cfg, dtype=dtype, eos_id=tok and tok.eod_id)
  os.makedirs(hf_dir, exist_ok=True)
  by_name = {t.hf: t for t in llama.tensors(cfg)}
  specs = [safetensors_io.Spec(t.hf, t.shape, np.dtype(dtype)) for t in by_name.values()]
  bar = tqdm.tqdm(total=len(specs), desc='export', unit='tensor', dynamic_ncols=True,
                  disable=not metrics.interactive())
  files = safetensors_io.write(hf_dir, specs, lambda name: by_name[name].to_hf(
      source.read(by_name[name].ours)), max_shard_bytes=max_shard_bytes, progress=bar)
  bar.close()
  files += _write_json(hf_dir, 'config.json', config)
  if tok is not None and tok.kind in ('hf', 'bpe'):
    with open(os.path.join(hf_dir, 'tokenizer.json'), 'wb') as f:
      f.write(tok.blob)
    eos = {'eos_token': tok.eod_token} if tok.eod_token else {}
    files += ['tokenizer.json'] + _write_json(hf_dir, 'tokenizer_config.json', {
        'tokenizer_class': 'PreTrainedTokenizerFast', 'model_max_length': cfg.seq_len, **eos})
  logging.info('Exported %s (%d tensors) to %s: %s.', source.describe, len(specs), hf_dir,
               ', '.join(files))
  return files


def _check_output(hf_dir: str) -> None:
  rundir.check_writable_dir(hf_dir, '--hf_dir')
  if os.path.isdir(hf_dir) and os.listdir(hf_dir):
    raise UsageError(f'--hf_dir {hf_dir} is not empty: export into a new or empty directory.')


def _tokenizer(workdir: str) -> tokenizers.Tokenizer | None:
  """The run's tokenizer, or None (with a warning) where its data are no longer there."""
  config = rundir.RunDir(workdir).read_config()
  try:
    return data.source(config.data).tokenizer
  except UsageError as e:
    logging.warning('No tokenizer exported: the run\'s data cannot be read (%s).', e)
    return None


def _write_json(directory: str, name: str, value: dict) -> list[str]:
  with open(os.path.join(directory, name), 'w') as f:
    json.dump(value, f, indent=2)
    f.write('\n')
  return [name]


# --------------------------------------------------------------------------- CLI


def define_flags() -> None:
  config_flags.DEFINE_config_file('config', None, 'import: the config of the run, e.g. '
                                  f'{DEFAULT_CONFIG},size=small (its model\'s architecture comes '
                                  'from --hf_dir).', lock_config=True)
  flags.DEFINE_string('hf_dir', None, 'The Hugging Face model directory: read by import, '
                      'written by export.')
  flags.DEFINE_string('workdir', None, 'The run: written by import, read by export.')
  flags.DEFINE_integer('step', None, 'export: the checkpoint (default the latest).', lower_bound=0)
  flags.DEFINE_enum('dtype', None, schema.DTYPES, 'export: the tensors\' dtype (default the '
                    'run\'s parameter dtype).')
  flags.DEFINE_integer('max_shard_mb', 5000, 'export: the largest safetensors file, in MB.',
                       lower_bound=1)
  flags.mark_flags_as_required(['hf_dir', 'workdir'])


def main(command: str) -> None:
  f = flags.FLAGS
  if command == 'import':
    import_hf(f.hf_dir, f.workdir, f.config)
  else:
    export_hf(f.workdir, f.hf_dir, step=f.step, dtype=f.dtype,
              max_shard_bytes=f.max_shard_mb * 1_000_000)


if __name__ == '__main__':
  cli.run(main, define_flags, commands=('import', 'export'))
