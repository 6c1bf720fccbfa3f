"""A grid of training runs: configs from a token budget, the flags every grid shares, and the
resumable runner.

Runs go to `--workdir_root` (default `workdirs/<name>/`, git-ignored); a run whose `result.json`
matches its config is reused, so an interrupted grid resumes where it stopped. Every run trains
through `fastslow_jax.train.train` and records the commit it was trained at.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections

from experiments import probes, repo
from fastslow_jax import configlib, data, metrics, models, train
from fastslow_jax.configs import schema
from fastslow_jax.errors import UsageError
from fastslow_jax.rundir import RunDir

RESULT_FILE = 'result.json'  # An experiment's summary of one finished run, in its workdir.

# Named sizes beyond configs/fastslow.py: (base size, overrides). 'cpu' is the default of the
# experiments: the whole 500k-token grid (24 runs) fits in about half an hour on 2 CPU cores.
# Any size of the config file (tiny, small, 124m, 350m, 1b) is used as is.
PRESETS = {
    'cpu': ('tiny', {'model.d_model': 96, 'model.num_layers': 2, 'model.num_heads': 4,
                     'model.slow_num_heads': 4, 'model.mlp_dim': 384, 'model.phi_dim': 384,
                     'model.seq_len': 128, 'batch_size': 16}),
}


# --------------------------------------------------------------------------- configs


def parse_tokens(text: str | int) -> int:
  """'500k' -> 500_000, '10M' -> 10_000_000, '2e6' -> 2_000_000."""
  if isinstance(text, int):
    return text
  s = str(text).strip().lower().replace('_', '')
  scale = {'k': 10**3, 'm': 10**6, 'g': 10**9, 'b': 10**9}.get(s[-1:], 1)
  try:
    return int(float(s[:-1] if scale > 1 else s) * scale)
  except ValueError:
    raise UsageError(f'token budget {text!r} is invalid: use e.g. 500k, 10M or 2e6.') from None


def tokens_label(tokens: int) -> str:
  """500_000 -> '500k', 10_000_000 -> '10m'."""
  for unit, scale in (('g', 10**9), ('m', 10**6), ('k', 10**3)):
    if tokens >= scale and tokens % (scale // 10) == 0:
      return f'{tokens / scale:g}{unit}'
  return str(tokens)


def parse_overrides(items: Sequence[str] | str | None) -> dict[str, Any]:
  """['model.d_model=128', 'optim.lr=1e-3'] (or one comma-separated string) -> a dict."""
  if isinstance(items, str):
    items = [s for s in items.split(',') if s]
  out = {}
  for item in items or ():
    key, sep, value = item.partition('=')
    if not sep:
      raise UsageError(f'override {item!r} is invalid: use field=value, e.g. model.d_model=128.')
    try:
      out[key.strip()] = json.loads(value)
    except json.JSONDecodeError:
      out[key.strip()] = value
  return out


def data_label(spec: str) -> str:
  """'synthetic' -> 'synthetic'; a text path or a prepared directory -> its file stem."""
  return 'synthetic' if spec == 'synthetic' else pathlib.Path(spec.split(',')[0].rstrip('/')).stem


def is_prepared(spec: str) -> bool:
  """Whether `spec` is a directory written by `fastslow_jax.data.prepare` (the `tokens` kind)."""
  return (pathlib.Path(spec).expanduser() / 'dataset.json').is_file()


def make_config(arm: str, *, size: str = 'cpu', P: int = 16, seed: int = 0,
                data_spec: str = 'synthetic', tokens: int = 500_000, evals: int = 5,
                checkpoints: int = 5, overrides: dict[str, Any] | None = None
                ) -> ml_collections.ConfigDict:
  """A training config of configs/fastslow.py for one run of a grid.

  `size` is a config size or a PRESETS name; `data_spec` is 'synthetic', text file(s) or a
  directory prepared by `fastslow_jax.data.prepare` (any tokenizer, read without repeating an
  epoch as long as the budget is below the split's tokens);
  `total_steps` is the token budget over batch_size * seq_len (rounded up); the run validates on
  the whole validation set `evals` times and checkpoints `checkpoints` times (for probes).
  `overrides` (dotted fields) come last and win.
  """
  base, preset = PRESETS.get(size, (size, {}))
  config = configlib.load(f'fastslow:arm={arm},size={base},P={P}', preset)
  config.seed = seed
  if data_spec != 'synthetic':
    config.data.kind = 'tokens' if is_prepared(data_spec) else 'text'
    config.data.path = data_spec
  explicit = overrides or {}
  for key, value in explicit.items():
    configlib.set_field(config, key, value)
  steps = max(1, math.ceil(tokens / (config.batch_size * config.model.seq_len)))
  if data_spec == 'synthetic':  # Enough fresh windows for the budget (one epoch at most).
    config.data.num_train_windows = max(config.data.num_train_windows, steps * config.batch_size)
  config.total_steps = steps = explicit.get('total_steps', steps)
  derived = {'optim.warmup_steps': min(1000, steps // 10), 'log_every': max(1, steps // 100),
             'eval_every': max(1, steps // max(1, evals)), 'eval_batches': 32,
             'checkpoint_every': max(1, steps // max(1, checkpoints)),
             'keep_checkpoints': checkpoints + 1}
  for key, value in derived.items():
    if key not in explicit:
      configlib.set_field(config, key, value)
  return config


def model_config(config: ml_collections.ConfigDict) -> models.ModelConfig:
  """The ModelConfig a training config builds (vocabulary taken from its data)."""
  fields = config.model.to_dict()
  if fields['vocab_size'] == -1:
    fields['vocab_size'] = data.source(config.data).vocab_size
  return models.ModelConfig.from_mapping(fields)


def training_flops(config: ml_collections.ConfigDict) -> float:
  """Analytic training FLOPs per token of a run's model (`models.flops_per_token`)."""
  return models.flops_per_token(model_config(config)).total


def validation_windows(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(windows a run's validation loss scores, windows in the validation split): the first
  eval_batches batches, or all whole batches the split has if fewer."""
  ds = data.make_dataset(config.data, seq_len=config.model.seq_len, split='validation')
  batches = max(1, min(config.eval_batches, len(ds) // config.batch_size))
  return batches * config.batch_size, len(ds)


def _scored_windows(config: ml_collections.ConfigDict) -> int:
  return min(config.eval_batches, config.data.num_val_windows // config.batch_size) * (
      config.batch_size)


def bayes_optimum(config: ml_collections.ConfigDict) -> float | None:
  """The Bayes-optimal validation loss over the windows a synthetic run was scored on."""
  if config.data.kind != 'synthetic':
    return None
  return data.source(config.data).bayes_optimal_ce(seq_len=config.model.seq_len,
                                                   num_windows=_scored_windows(config))


def headroom(config: ml_collections.ConfigDict, Ps: Sequence[int] = ()) -> dict | None:
  """What the synthetic source's past is worth on the windows a run was scored on (nats per
  token): the exact optimum with the whole past, ignoring the regime (a bigram), and with only
  the last block of P tokens for each P (default the config's). None for other sources."""
  if config.data.kind != 'synthetic':
    return None
  source, kw = data.source(config.data), dict(seq_len=config.model.seq_len,
                                              num_windows=_scored_windows(config))
  return {'whole_past': source.bayes_optimal_ce(**kw),
          'regime_blind': source.bayes_optimal_ce(window=1, **kw),
          'last_block': {int(P): source.bayes_optimal_ce(window=int(P), **kw)
                         for P in (Ps or (config.model.P,))}}


# --------------------------------------------------------------------------- flags


def define_sources_flags(per: str) -> None:
  """The data sources, seeds and validation points of a grid whose runs differ by `per` (arm,
  model): the flags paper_500k and zoo share."""
  from absl import flags
  flags.DEFINE_list('data', list(repo.DEFAULT_SOURCES),
                    "Data sources: 'synthetic' and/or text files (one source per entry).")
  flags.DEFINE_list('seeds', ['0', '1', '2'], f'Seeds (init and data order) per {per}.')
  flags.DEFINE_integer('evals', 5, 'Validation points per run.', lower_bound=1)


def define_grid_flags(name: str | None, *,
                      tokens_help: str = 'Training tokens per run (500k, 10M, ...).',
                      set_default: Sequence[str] = (), timing: bool = True) -> None:
  """The flags every experiment shares: budget, size, overrides, where runs and report go, and
  --report_only (re-render the report from its results.json, nothing trained)."""
  from absl import flags
  flags.DEFINE_string('tokens', '500k', tokens_help)
  flags.DEFINE_string('size', 'cpu', 'A size of the fastslow config (tiny, small, 124m, ...) or '
                      f'a preset of experiments/grid.py ({", ".join(PRESETS)}).')
  flags.DEFINE_list('set', list(set_default), 'Config overrides field=value, e.g. '
                    'optim.lr=1e-3,batch_size=32.')
  if timing:
    flags.DEFINE_integer('timing_rounds', 20, 'Interleaved rounds of the step-time benchmark '
                         "(0: use the runs' own step times).", lower_bound=0)
  flags.DEFINE_string('name', name, 'Report / workdir name' + ('.' if name else
                      ' (default paper_<tokens>).'))
  flags.DEFINE_string('workdir_root', None, 'Where the runs go (default workdirs/<name>).')
  flags.DEFINE_string('out_dir', None,
                      'Where the report goes (default experiments/reports/<name>).')
  flags.DEFINE_bool('report_only', False, 'Re-render the report (text, statistics and the plots '
                    'results.json holds) from <out_dir>/results.json: nothing is trained or timed.')


# --------------------------------------------------------------------------- running a grid


@dataclasses.dataclass(eq=False)
class Run:
  """One training run of a grid: `group` (e.g. the data source), arm, seed, a free `label`."""
  name: str
  group: str
  arm: str
  seed: int
  config: ml_collections.ConfigDict
  label: str = ''


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of a run's metrics.jsonl."""
  return metrics.read_jsonl(RunDir(workdir).metrics)


def train_seconds(records: list[dict[str, Any]]) -> tuple[float, float]:
  """(total, median per step) training seconds from metrics.jsonl, compilation and evaluation
  excluded. The median per step is robust to other load on the machine and to checkpoint IO."""
  total, per_step, prev = 0.0, [], 0
  for r in records:
    if 'steps_per_sec' in r:
      total += (r['step'] - prev) / r['steps_per_sec']
      per_step.append(1 / r['steps_per_sec'])
      prev = r['step']
  return total, statistics.median(per_step) if per_step else float('nan')


def enable_compilation_cache(path: str | os.PathLike) -> None:
  """Persistent XLA cache: runs of a grid differing only in seed or data reuse compiled steps.
  Call before anything compiles (the command-line entry points do)."""
  jax.config.update('jax_compilation_cache_dir', os.fspath(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def _reused(run: Run, workdir: pathlib.Path, config_json: dict) -> dict[str, Any] | None:
  """The finished result of this run, if its config is unchanged; else removes the stale run."""
  path = workdir / RESULT_FILE
  if not path.exists():
    return None
  old = json.loads(path.read_text())
  if old.get('config') is not None and _completed(old['config']) == _completed(config_json):
    return old
  shutil.rmtree(workdir)  # A different config under the same name: start that run afresh.
  return None


def _completed(config_json: dict) -> dict:
  """A config as JSON with every field it lacks at its default: fields declared after a run
  trained (at their defaults) do not make it stale."""
  return json.loads(schema.complete(config_json).to_json_best_effort())


def run_grid(runs: Sequence[Run], root: str | os.PathLike, *, devices=None,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Trains every run in root/<name> (reusing finished ones); returns one result dict per run.

  A result holds the final validation loss, the measured times (`wall_s`: the whole train.train
  call; `train_s` and `step_s`: training steps only, from metrics.jsonl), final gates, the
  gated slow share per layer at each checkpoint (`share`), the commit the run was trained at
  and the config.
  """
  results = []
  for i, run in enumerate(runs):
    workdir = pathlib.Path(root) / run.name
    config_json = json.loads(run.config.to_json_best_effort())
    old = _reused(run, workdir, config_json)
    if old is not None:
      log(f'[{i + 1}/{len(runs)}] {run.name}: reused ({workdir / RESULT_FILE})')
      results.append(old)
      continue
    log(f'[{i + 1}/{len(runs)}] {run.name}: {run.config.total_steps} steps ...')
    commit, start = repo.git_commit(), time.perf_counter()
    last = train.train(run.config, str(workdir), devices=devices, overwrite=True)
    wall = time.perf_counter() - start
    train_s, step_s = train_seconds(read_metrics(workdir))
    result = {
        'name': run.name, 'group': run.group, 'arm': run.arm, 'seed': run.seed,
        'label': run.label, 'val_loss': last['val_loss'], 'wall_s': wall, 'train_s': train_s,
        'step_s': step_s, 'steps': run.config.total_steps,
        'tokens': run.config.total_steps * run.config.batch_size * run.config.model.seq_len,
        'gate': last.get('gate', {}),
        'share': probes.slow_shares(workdir, devices=devices) if run.arm != 'dense' else {},
        'commit': commit, 'config': config_json,
    }
    log(f'    val_loss {result["val_loss"]:.4f}, {wall:.0f} s ({train_s:.0f} s training)')
    (workdir / RESULT_FILE).write_text(json.dumps(result, indent=1) + '\n')
    results.append(result)
  return results


def trained_at(results: Sequence[dict[str, Any]]) -> str:
  """'commit `abc1234`' (or 'commits ...'): what the runs' results recorded."""
  commits = list(dict.fromkeys(r['commit'] for r in results if r.get('commit')))
  missing = sum(not r.get('commit') for r in results)
  text = ('commit ' if len(commits) == 1 else 'commits ') + ', '.join(f'`{c}`' for c in commits)
  if missing:
    text = (text + ' and ' if commits else '') + f'a commit not recorded ({missing} runs)'
  return text


def without_configs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Run results as a report's results.json keeps them (configs live in the run directories)."""
  return [{k: v for k, v in r.items() if k != 'config'} for r in results]


def is_main_process() -> bool:
  """Whether this process writes reports (process 0 of a multi-process run)."""
  return jax.process_index() == 0
