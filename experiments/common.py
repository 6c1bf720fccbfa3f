"""Shared machinery of the experiments: configs from a token budget, a resumable grid of training
runs, probes of a trained model's slow paths, statistics, plots and Markdown reports.

Every experiment is `python -m experiments.<name> [--flags]`; its module exposes a `run(...)`
function (used by the tests at miniature scale) and defines its absl flags only when run as a
script. Runs go to `--workdir_root` (default `workdirs/<name>/`, git-ignored); a run whose
`result.json` matches its config is reused, so an interrupted grid resumes where it stopped.
Reports (Markdown + PNG) go to `experiments/reports/<name>/`.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import pathlib
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.ticker
import ml_collections
import numpy as np
from flax import nnx
from scipy import stats

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from fastslow_jax import configlib, data, metrics, models, restoring, runtime, train  # noqa: E402
from fastslow_jax.errors import UsageError  # noqa: E402
from fastslow_jax.rundir import RunDir  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
REPORTS = REPO / 'experiments' / 'reports'
DEFAULT_TEXT = REPO.parent / 'shared' / 'data' / 'tinyshakespeare.txt'
RESULT_FILE = 'result.json'  # An experiment's summary of one finished run, in its workdir.
COLORS = {'dense': 'tab:gray', 'coupled': 'tab:blue', 'gate_frozen': 'tab:orange',
          'slow_frozen': 'tab:green'}

# Named sizes beyond configs/fastslow.py: (base size, overrides). 'cpu' is the default of the
# experiments: the whole 500k-token grid (24 runs) fits in about half an hour on 2 CPU cores.
# Any size of the config file (tiny, small, 124m, 350m, 1b) is used as is.
PRESETS = {
    'cpu': ('tiny', {'model.d_model': 96, 'model.num_layers': 2, 'model.num_heads': 4,
                     'model.slow_num_heads': 4, 'model.mlp_dim': 384, 'model.phi_dim': 384,
                     'model.seq_len': 128, 'batch_size': 16}),
}

# A run's slow path counts as "open" when the gated slow contribution reaches this fraction of
# the fast attention update (RMS over validation tokens) in some layer.
OPEN_SHARE = 0.05
ALPHA = 0.05  # Significance level of the stated tests.


# --------------------------------------------------------------------------- configs


def parse_tokens(text: str | int) -> int:
  """'500k' -> 500_000, '10M' -> 10_000_000, '2e6' -> 2_000_000."""
  if isinstance(text, int):
    return text
  s = str(text).strip().lower().replace('_', '')
  scale = {'k': 10**3, 'm': 10**6, 'g': 10**9, 'b': 10**9}.get(s[-1:], 1)
  return int(float(s[:-1] if scale > 1 else s) * scale)


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
  """'synthetic' -> 'synthetic'; a text path -> its file stem."""
  return 'synthetic' if spec == 'synthetic' else pathlib.Path(spec.split(',')[0]).stem


def make_config(arm: str, *, size: str = 'cpu', P: int = 16, seed: int = 0,
                data_spec: str = 'synthetic', tokens: int = 500_000, evals: int = 5,
                checkpoints: int = 5, overrides: dict[str, Any] | None = None
                ) -> ml_collections.ConfigDict:
  """A training config of configs/fastslow.py for one run of a grid.

  `size` is a config size or a PRESETS name; `data_spec` is 'synthetic' or text file(s);
  `total_steps` is the token budget over batch_size * seq_len (rounded up); the run validates on
  the whole validation set `evals` times and checkpoints `checkpoints` times (for probes).
  `overrides` (dotted fields) come last and win.
  """
  base, preset = PRESETS.get(size, (size, {}))
  config = configlib.load(f'fastslow:arm={arm},size={base},P={P}', preset)
  config.seed = seed
  if data_spec != 'synthetic':
    config.data.kind, config.data.path = 'text', data_spec
  for key, value in (overrides or {}).items():
    configlib.set_field(config, key, value)
  per_step = config.batch_size * config.model.seq_len
  steps = max(1, math.ceil(tokens / per_step))
  if data_spec == 'synthetic':  # Enough fresh windows for the budget (one epoch at most).
    config.data.num_train_windows = max(config.data.num_train_windows, steps * config.batch_size)
  explicit = overrides or {}
  config.total_steps = explicit.get('total_steps', steps)
  steps = config.total_steps
  if 'optim.warmup_steps' not in explicit:
    config.optim.warmup_steps = min(1000, steps // 10)
  if 'log_every' not in explicit:
    config.log_every = max(1, steps // 100)
  if 'eval_every' not in explicit:
    config.eval_every = max(1, steps // max(1, evals))
  if 'eval_batches' not in explicit:
    config.eval_batches = 32
  if 'checkpoint_every' not in explicit:
    config.checkpoint_every = max(1, steps // max(1, checkpoints))
  if 'keep_checkpoints' not in explicit:
    config.keep_checkpoints = checkpoints + 1
  return config


def define_sources_flags(per: str) -> None:
  """The data sources, seeds and validation points of a grid whose runs differ by `per` (arm,
  model): the flags paper_500k and zoo share."""
  from absl import flags
  flags.DEFINE_list('data', ['synthetic', str(pathlib.Path('..') / 'shared' / 'data' /
                                              'tinyshakespeare.txt')],
                    "Data sources: 'synthetic' and/or text files (one source per entry).")
  flags.DEFINE_list('seeds', ['0', '1', '2'], f'Seeds (init and data order) per {per}.')
  flags.DEFINE_integer('evals', 5, 'Validation points per run.', lower_bound=1)


def define_grid_flags(name: str | None, *, tokens_help: str = 'Training tokens per run (500k, 10M, ...).',
                      set_default: Sequence[str] = (), timing: bool = True) -> None:
  """The flags every experiment shares: budget, size, overrides, where runs and report go."""
  from absl import flags
  flags.DEFINE_string('tokens', '500k', tokens_help)
  flags.DEFINE_string('size', 'cpu', 'A size of the fastslow config (tiny, small, 124m, ...) or '
                      f'a preset of experiments/common.py ({", ".join(PRESETS)}).')
  flags.DEFINE_list('set', list(set_default), 'Config overrides field=value, e.g. '
                    'optim.lr=1e-3,batch_size=32.')
  if timing:
    flags.DEFINE_integer('timing_rounds', 20, 'Interleaved rounds of the step-time benchmark '
                         "(0: use the runs' own step times).", lower_bound=0)
  flags.DEFINE_string('name', name, 'Report / workdir name' + ('.' if name else
                      ' (default paper_<tokens>).'))
  flags.DEFINE_string('workdir_root', None, 'Where the runs go (default workdirs/<name>).')
  flags.DEFINE_string('out_dir', None, 'Where the report goes (default experiments/reports/<name>).')


# --------------------------------------------------------------------------- running a grid


def runs_root(name: str, workdir_root: str | os.PathLike | None = None) -> pathlib.Path:
  """Where an experiment's runs go: `workdir_root`, else workdirs/<name> in the repository."""
  return pathlib.Path(workdir_root or REPO / 'workdirs' / name)


def report_dir(name: str, out_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Where an experiment's report goes: `out_dir`, else experiments/reports/<name>."""
  return pathlib.Path(out_dir or REPORTS / name)


@dataclasses.dataclass(eq=False)
class Run:
  """One training run of a grid: `group` (e.g. the data source), arm, seed, a free `label`."""
  name: str
  group: str
  arm: str
  seed: int
  config: ml_collections.ConfigDict
  label: str = ''


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


def run_grid(runs: Sequence[Run], root: str | os.PathLike, *, devices=None,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Trains every run in root/<name> (reusing finished ones); returns one result dict per run.

  A result holds the final validation loss, the measured times (`wall_s`: the whole train.train
  call; `train_s` and `step_s`: training steps only, from metrics.jsonl), final gates, the
  gated slow share per layer at each checkpoint (`share`), and the config.
  """
  results = []
  for i, run in enumerate(runs):
    workdir = pathlib.Path(root) / run.name
    result_path = workdir / RESULT_FILE
    config_json = json.loads(run.config.to_json_best_effort())
    if result_path.exists():
      old = json.loads(result_path.read_text())
      if old.get('config') == config_json:
        log(f'[{i + 1}/{len(runs)}] {run.name}: reused ({result_path})')
        results.append(old)
        continue
      shutil.rmtree(workdir)  # A different config under the same name: start that run afresh.
    log(f'[{i + 1}/{len(runs)}] {run.name}: {run.config.total_steps} steps ...')
    start = time.perf_counter()
    last = train.train(run.config, str(workdir), devices=devices, overwrite=True)
    wall = time.perf_counter() - start
    records = read_metrics(workdir)
    train_s, step_s = train_seconds(records)
    result = {
        'name': run.name, 'group': run.group, 'arm': run.arm, 'seed': run.seed,
        'label': run.label, 'val_loss': last['val_loss'], 'wall_s': wall, 'train_s': train_s,
        'step_s': step_s, 'steps': run.config.total_steps,
        'tokens': run.config.total_steps * run.config.batch_size * run.config.model.seq_len,
        'gate': last.get('gate', {}),
        'share': slow_shares(workdir, devices=devices) if run.arm != 'dense' else {},
        'config': config_json,
    }
    log(f'    val_loss {result["val_loss"]:.4f}, {wall:.0f} s ({train_s:.0f} s training)')
    result_path.write_text(json.dumps(result, indent=1) + '\n')
    results.append(result)
  return results


def time_steps(configs: dict[str, ml_collections.ConfigDict], *, rounds: int = 20,
               steps_per_round: int = 3, devices=None) -> dict[str, float]:
  """Median seconds per jitted train step of each config, on random tokens.

  The configs are timed round-robin (all compiled first; each round runs `steps_per_round` steps
  of every config, in an order rotated every round), so a machine whose load changes over time
  (other processes, thermal limits) slows every config alike: the ratios stay fair.
  """
  live = {}
  for key, config in configs.items():
    config = runtime.resolve_config(config, len(devices) if devices else None)
    setup = runtime.TrainSetup(config, devices)
    T, B = config.model.seq_len, config.batch_size
    tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (B, T + 1),
                                               dtype=np.int32)
    live[key] = [setup, setup.compile_train_step(B), setup.init_state(),
                 setup.global_batch(tokens)]
  keys, times = list(configs), {key: [] for key in configs}
  for r in range(rounds + 1):  # Round 0 warms up.
    for key in keys[r % len(keys):] + keys[:r % len(keys)]:
      setup, step, state, tokens = live[key]
      with setup.activate():
        start = time.perf_counter()
        for _ in range(steps_per_round):
          state, m = step(state, tokens)
        jax.block_until_ready(m)
      live[key][2] = state
      if r:
        times[key].append((time.perf_counter() - start) / steps_per_round)
  return {key: statistics.median(t) for key, t in times.items()}


def cached_step_times(path: str | os.PathLike, configs: dict[str, ml_collections.ConfigDict],
                      **kwargs) -> tuple[dict[str, float], str]:
  """`time_steps`, stored in `path` (JSON) and reused while the configs and settings match.

  Returns (seconds per step by key, a note of the machine's 1-minute load average before and
  after timing: other work on the machine inflates small-op configs most)."""
  path = pathlib.Path(path)
  key = {'configs': {k: json.loads(c.to_json_best_effort()) for k, c in configs.items()},
         'settings': {k: v for k, v in kwargs.items() if k != 'devices'}}
  if path.exists():
    old = json.loads(path.read_text())
    if old.get('key') == key:
      return old['step_s'], old.get('note', '')
  before = os.getloadavg()[0]
  step_s = time_steps(configs, **kwargs)
  note = (f'load average {before:.1f} before and {os.getloadavg()[0]:.1f} after timing, on '
          f'{os.cpu_count()} CPU cores')
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({'key': key, 'step_s': step_s, 'note': note}, indent=1) + '\n')
  return step_s, note


def time_grid(runs: Sequence[Run], root: str | os.PathLike, *, key: Callable[[Run], str],
              group: Callable[[Run], str] = lambda run: run.group, rounds: int = 20,
              steps_per_round: int = 3, devices=None, log: Callable[[str], None] = print
              ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
  """The interleaved step-time benchmark of a grid: per `group` of runs, the first config of
  each `key` among the first seed's runs, timed together (`cached_step_times`, cached in
  root/timing_<group>.json). Returns ({group: {key: seconds per step}}, {group: load note})."""
  timing, notes = {}, {}
  for name in dict.fromkeys(group(r) for r in runs):
    configs = {}
    for r in runs:
      if group(r) == name and r.seed == runs[0].seed:
        configs.setdefault(key(r), r.config)
    log(f'Timing {", ".join(configs)} on {name} ({rounds} interleaved rounds) ...')
    timing[name], notes[name] = cached_step_times(
        pathlib.Path(root) / f'timing_{name}.json', configs, rounds=rounds,
        steps_per_round=steps_per_round, devices=devices)
  return timing, notes


# --------------------------------------------------------------------------- probing a model


@functools.lru_cache(maxsize=32)
def _jitted(graphdef, fn: Callable):
  return jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))


def apply_jitted(model, fn: Callable, *args):
  """fn(model, *args) under jax.jit (the model split into graph and state; compiled once per
  model structure and fn)."""
  graphdef, state = nnx.split(model)
  return _jitted(graphdef, fn)(state, *args)


def _shares(model, tokens):
  _, parts = model.forward(tokens)
  return [jnp.sqrt(jnp.mean(jnp.square(r['gated'])) / jnp.mean(jnp.square(r['fast'])))
          if 'gated' in r else None for r in parts]


def slow_share_of(model, tokens) -> dict[str, float]:
  """Per slow layer: RMS of the gated slow update over RMS of the fast attention update."""
  shares = apply_jitted(model, _shares, tokens)
  return {f'layer_{i}': float(s) for i, s in enumerate(shares) if s is not None}


def slow_shares(workdir: str | os.PathLike, *, devices=None,
                num_windows: int = 64) -> dict[str, dict[str, float]]:
  """{step: slow share per layer} at every checkpoint of a run, on validation windows; empty for
  a family without a gate (nothing gated to measure)."""
  run = RunDir(workdir)
  cfg = run.read_config()
  if not models.FAMILIES[cfg.model.family].gated:
    return {}
  ds = data.make_dataset(cfg.data, seq_len=cfg.model.seq_len, split='validation')
  tokens = jnp.asarray(np.stack([ds[i][:-1] for i in range(min(num_windows, len(ds)))]))
  out = {}
  for step in restoring.checkpoint_steps(run):
    restored = restoring.restore(run, step, devices=devices)
    with restored.setup.activate():
      out[str(step)] = slow_share_of(restored.model(), tokens)
  return out


# --------------------------------------------------------------------------- run results


def bayes_optimum(result: dict[str, Any]) -> float | None:
  """The Bayes-optimal validation loss over the windows a synthetic run was scored on."""
  cfg = ml_collections.ConfigDict(result['config'])
  if cfg.data.kind != 'synthetic':
    return None
  windows = min(cfg.eval_batches, cfg.data.num_val_windows // cfg.batch_size) * cfg.batch_size
  return data.source(cfg.data).bayes_optimal_ce(seq_len=cfg.model.seq_len, num_windows=windows)


def max_share(result: dict[str, Any], step: str | None = None) -> float:
  """Largest slow share over layers at checkpoint `step` (default the last)."""
  shares = result.get('share') or {}
  if not shares:
    return math.nan
  step = step or max(shares, key=int)
  return max(shares[step].values())


def runs_table(results: list[dict[str, Any]]) -> str:
  """A Markdown row per run: final validation loss, gates, slow share, step time, wall time."""
  rows = [[r['name'], fmt(r['val_loss']),
           ', '.join(f'{v:+.3f}' for v in r['gate'].values()) or '—',
           fmt(max_share(r), 3) if r['share'] else '—', f'{r["step_s"] * 1e3:.0f} ms',
           fmt_seconds(r['wall_s'])] for r in results]
  return markdown_table(['run', 'val loss', 'gate', 'slow share', 'step', 'wall'], rows)


def runs_section(results: list[dict[str, Any]], root: str | os.PathLike) -> str:
  """A report's closing section: a row per run and where the run directories are."""
  return (f'## Runs\n\n{runs_table(results)}\nRun directories (config.json, metrics.jsonl, '
          f'checkpoints): `{display_path(root)}`.\n')


def without_configs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Run results as a report's results.json keeps them (configs live in the run directories)."""
  return [{k: v for k, v in r.items() if k != 'config'} for r in results]


# --------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (nan for fewer than two values)."""
  v = np.asarray(values, float)
  return float(v.mean()) if len(v) else math.nan, float(v.std(ddof=1)) if len(v) > 1 else math.nan


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
  """The stated test of a − b: Welch's t-test (two-sided) plus the seed-noise yardstick.

  Returns diff (mean a − mean b), noise (pooled seed std), t, p and `within_noise`: p >= ALPHA
  (nan p, i.e. fewer than two seeds per arm, counts as untestable: within_noise is None).
  """
  a, b = np.asarray(a, float), np.asarray(b, float)
  diff = float(a.mean() - b.mean())
  noise = float(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)) if min(len(a), len(b)) > 1 else math.nan
  if min(len(a), len(b)) < 2 or (noise == 0 and diff == 0):
    t, p = (0.0, 1.0) if noise == 0 and diff == 0 else (math.nan, math.nan)
  else:
    t, p = (float(x) for x in stats.ttest_ind(a, b, equal_var=False))
  return {'diff': diff, 'noise': noise, 't': t, 'p': p,
          'within_noise': None if math.isnan(p) else bool(p >= ALPHA)}


def tests_table(tests: dict[str, dict[str, float]]) -> str:
  """A Markdown row per stated test (`compare`'s results, keyed by the difference's name)."""
  rows = [[pair, fmt(t['diff'], sign=True), fmt(t['noise']), fmt(t['t'], 2), fmt(t['p'], 3),
           {True: 'yes', False: '**no**', None: 'n/a'}[t['within_noise']]]
          for pair, t in tests.items()]
  return markdown_table(['difference', 'mean (nats)', 'seed std', 'Welch t', 'p', 'within noise'],
                        rows)


def fmt(x: float | None, digits: int = 4, sign: bool = False) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return 'n/a'
  return f'{x:+.{digits}f}' if sign else f'{x:.{digits}f}'


def fmt_pm(values: Sequence[float], digits: int = 4) -> str:
  m, s = mean_std(values)
  return f'{fmt(m, digits)} ± {fmt(s, digits)}' if len(values) > 1 else fmt(m, digits)


def fmt_seconds(s: float) -> str:
  return f'{s:.0f} s' if s < 120 else f'{s / 60:.1f} min' if s < 7200 else f'{s / 3600:.1f} h'


# --------------------------------------------------------------------------- plots and reports


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6):
  fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
  return fig, axes


def token_axis(ax) -> None:
  """Training tokens on the x axis, labelled 100k, 1M, ..."""
  ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=''))
  ax.set_xlabel('training tokens')


def save_figure(fig, path: str | os.PathLike) -> str:
  """Writes a PNG; returns its file name (for a Markdown link beside it)."""
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return pathlib.Path(path).name


def git_commit() -> str:
  """Short hash of HEAD, '+ uncommitted changes' when tracked code differs from it (reports
  and Markdown excluded), or 'unknown' outside a git checkout."""
  git = lambda *args: subprocess.run(['git', *args], cwd=REPO, check=True, capture_output=True,
                                     text=True).stdout.strip()
  try:
    dirty = git('status', '--porcelain', '--untracked-files=no', '--', '.',
                ':(exclude)experiments/reports', ':(exclude)*.md')
    return git('rev-parse', '--short', 'HEAD') + (' + uncommitted changes' if dirty else '')
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
  """The command that ran this process, e.g. 'python -m experiments.p_sweep --seeds=2'."""
  argv = sys.argv[1:] if argv is None else argv
  return ' '.join(['python', '-m', module, *map(shlex.quote, argv)])


def report_header(title: str, command: str, elapsed_s: float | None = None) -> str:
  """Title, then the exact command, the date, the commit and the device it ran on."""
  now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  device = f'{jax.device_count()} x {jax.devices()[0].device_kind}'
  took = f' · took {fmt_seconds(elapsed_s)}' if elapsed_s is not None else ''
  return (f'# {title}\n\n```\n{command}\n```\n\nGenerated {now} · commit `{git_commit()}` · '
          f'{device} ({os.cpu_count()} CPU cores){took}. Regenerate with the command above '
          '(finished runs in its workdir root are reused; delete them to start from scratch).\n')


def display_path(path: str | os.PathLike) -> str:
  """A path relative to the repository where it lies inside it (reports stay portable)."""
  path = pathlib.Path(path).resolve()
  return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def write_report(out_dir: str | os.PathLike, text: str, results: Any = None) -> pathlib.Path:
  """Writes out_dir/report.md (and results.json with the numbers behind it)."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / 'report.md'
  path.write_text(text.rstrip() + '\n')
  if results is not None:
    (out_dir / 'results.json').write_text(json.dumps(results, indent=1, default=str) + '\n')
  return path


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  return metrics.read_jsonl(RunDir(workdir).metrics)


def is_main_process() -> bool:
  return jax.process_index() == 0

