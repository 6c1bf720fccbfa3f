r"""Which size fits which TPU slice: compiles every size for every listed slice, writes FITS.md.

    python -m launch.fits                          # every size x v4-32, v5litepod-16, v5p-16, v6e-8
    python -m launch.fits --sizes=124m --topologies=v5e:2x2 --out=/tmp/FITS.md

Each row is `python -m launch.aot_compile` of the coupled arm at the size's default config (its
batch, remat policy, layer scan, mesh), run in its own process: compile seconds on this machine
(wall, and CPU seconds of all the compiler's threads, which hardly depend on the machine's load),
generated code, per-device memory against the chip's HBM, XLA's FLOPs of the step (loops
unrolled) against the analytic count, and the compiler's estimate of the step time, tokens/s per
chip and MFU. Rows with the layer scan off show what scanning changes where it matters; the
comparison rows (`COMPARISONS`) set what a user chooses between side by side on one slice: arms
and families, attention kernels, remat policies. Results are kept in `--cache_dir` (one JSON per
row, `launch/fits_rows/`, committed with the table), so an interrupted run resumes and the table
can be rewritten on any machine without compiling again.
Needs libtpu.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import subprocess
import sys
import time

import tqdm
from absl import flags

from fastslow_jax import cli

HERE = pathlib.Path(__file__).resolve().parent
SIZES = ('tiny', 'small', '124m', '350m', '1b')
TOPOLOGIES = ('v4-32', 'v5litepod-16', 'v5p-16', 'v6e-8')
# Rows beside the grid: the layer scan off where it matters (an unscanned 24-layer model takes
# over 15 minutes to compile here, so the 12-layer 124m shows it), the 1b compile-time target,
# and 350m and 1b with the two changes the estimate credits most, splash attention and the least
# recomputation that fits (launch/README.md, "The targets").
_SPLASH = {'model.attention_impl': 'splash'}
EXTRA_ROWS = (('124m', 'v5litepod-16', {'model.scan_layers': False}),
              ('124m', 'v5e:2x2', {}), ('124m', 'v5e:2x2', {'grad_accum_steps': 4}),
              ('1b', 'v5e:4x4', {}),
              ('350m', 'v5p-16', {**_SPLASH, 'model.remat': 'none'}),
              ('350m', 'v5litepod-16', {**_SPLASH, 'model.remat': 'dots_saveable'}),
              ('1b', 'v5p-16', {**_SPLASH, 'model.remat': 'dots_saveable'}))

# What a user chooses between, on one slice: per group, sets of rows (size, slice, variants) that
# differ in one respect, each set against its first variant.
_ARMS = (('dense', {'model.arm': 'dense'}), ('coupled', {}),
         ('hourglass', {'model.family': 'hourglass'}),
         ('compressed', {'model.family': 'compressed'}))
_KERNELS = (('reference', {}), ('splash', _SPLASH))
_REMATS = (('full', {}), *((p, {'model.remat': p}) for p in ('none', 'dots_saveable', 'minimal')))
# The slow path's cost against its block length: per-block work falls as 1/P, token-rate work
# (pooling, broadcasting, the gate) does not (launch/README.md, "The targets").
_BLOCKS = (_ARMS[0], ('coupled, P=16', {}),
           *((f'coupled, P={P}', {'model.P': P}) for P in (32, 64)))
COMPARISONS = (
    ('Arm and family', 'dense', (('124m', 'v5litepod-16', _ARMS), ('350m', 'v5litepod-16', _ARMS),
                                 ('124m', 'v5p-16', _ARMS[:2]), ('350m', 'v5p-16', _ARMS[:2]),
                                 ('1b', 'v5p-16', _ARMS[:2]))),
    ('Slow path block length', 'dense', (('124m', 'v5litepod-16', _BLOCKS),
                                         ('124m', 'v5p-16', _BLOCKS))),
    ('Attention kernel', 'reference', (('124m', 'v5litepod-16', _KERNELS),
                                       ('350m', 'v5litepod-16', _KERNELS),
                                       ('350m', 'v5p-16', _KERNELS), ('1b', 'v5p-16', _KERNELS))),
    ('Remat policy', 'full', (('124m', 'v5litepod-16', _REMATS), ('350m', 'v5p-16', _REMATS),
                              ('1b', 'v5p-16', _REMATS))),
)
# Full vs windowed fast attention at long T: compiled once the model has the local fast path
# (`model.fast_window`); until then the group is listed as waiting for it.
_LONG_T = {'model.seq_len': 8192, 'batch_size': 32}
WINDOWED = ('Full vs windowed attention, T=8192', 'full', (
    ('124m', 'v5litepod-16', (('full', _LONG_T), ('window 1024', {**_LONG_T,
                                                                  'model.fast_window': 1024}))),))
# Long context: full dense attention against the local fast path with the slow path, at
# T = 32k and 128k on the v5e and v5p slices named 16; splash attention for both (the reference
# kernel's T x T scores would not fit), a global batch of 16 sequences: one or two per chip.
_LONG = lambda T: {'model.seq_len': T, 'batch_size': 16, 'model.attention_impl': 'splash'}
LONG_CONTEXT = tuple((size, T, (('dense full', {**_LONG(T), 'model.arm': 'dense'}),
                                ('fastslow W=1024', {**_LONG(T), 'model.fast_window': 1024})))
                     for size in ('124m', '350m') for T in (32_768, 131_072))
LONG_SLICES = ('v5litepod-16', 'v5p-16')


def define_flags() -> None:
  flags.DEFINE_list('sizes', list(SIZES), 'Sizes of the fastslow config.')
  flags.DEFINE_list('topologies', list(TOPOLOGIES), 'Slices, as aot_compile --topology takes.')
  flags.DEFINE_bool('extra_rows', True, 'Also the rows of EXTRA_ROWS (scan off, targets).')
  flags.DEFINE_bool('comparisons', True, 'Also the comparison rows of COMPARISONS (arms and '
                    'families, attention kernels, remat policies, windowed attention).')
  flags.DEFINE_bool('long_context', True, 'Also the long-context rows of LONG_CONTEXT (full vs '
                    'windowed attention at T = 32k and 128k on the LONG_SLICES listed).')
  flags.DEFINE_bool('compile', True, 'Compile the rows missing from --cache_dir; --nocompile '
                    'writes the table from the cache alone, the missing rows marked so.')
  flags.DEFINE_string('out', str(HERE / 'FITS.md'), 'The Markdown table to write.')
  flags.DEFINE_string('cache_dir', str(HERE / 'fits_rows'),
                      'One JSON of figures per row (committed beside FITS.md); delete it to '
                      'compile the row again.')
  flags.DEFINE_integer('timeout', 3600, 'Seconds one compile may take.', lower_bound=1)


def row_key(size: str, topology: str, overrides: dict) -> str:
  extra = ''.join(f',{k}={v}' for k, v in sorted(overrides.items()))
  return f'{size}@{topology}{extra}'.replace(':', '_').replace('/', '_')


def compile_row(size: str, topology: str, overrides: dict, cache: pathlib.Path,
                timeout: int) -> dict:
  """The figures of one row, from the cache or a fresh `aot_compile` process."""
  path = cache / f'{row_key(size, topology, overrides)}.json'
  if path.exists():
    return json.loads(path.read_text())
  same = cached_as(size, topology, overrides, cache)
  if same is not None:  # The same slice under another name (v5e:4x4 is v5litepod-16).
    return {**same, 'topology': topology}
  cache.mkdir(parents=True, exist_ok=True)
  twin = scan_twin_estimate(size, topology, overrides, cache)
  command = [sys.executable, '-m', 'launch.aot_compile', f'--topology={topology}',
             f'--config=fastslow:arm=coupled,size={size}', f'--json_out={path}.tmp',
             *[f'--config.{k}={v}' for k, v in overrides.items()],
             *(['--notwins'] if twin else [])]
  start = time.perf_counter()
  done = subprocess.run(command, cwd=HERE.parent, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  wall = time.perf_counter() - start
  if done.returncode == 0 and 'skipped:' in done.stdout:
    raise ValueError(f'{done.stdout.strip()}')
  if done.returncode == 0:
    figures = next(iter(json.loads(pathlib.Path(f'{path}.tmp').read_text()).values()))
    pathlib.Path(f'{path}.tmp').unlink()
    result = {'status': 'compiled', **figures, **twin}
  elif done.returncode == 1 and 'does not fit' in done.stderr:
    result = {'status': 'does not fit', 'message': done.stderr.strip().splitlines()[-1]}
  else:
    raise RuntimeError(f'{" ".join(command)} failed (exit {done.returncode}): '
                       f'{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""}')
  result.update(size=size, topology=topology, overrides=overrides, wall_s=wall)
  path.write_text(json.dumps(result, indent=1) + '\n')
  return result


def cached_as(size: str, topology: str, overrides: dict, cache: pathlib.Path) -> dict | None:
  """The cached row of the same size and overrides on the same slice named otherwise, if any."""
  from launch import aot_compile

  shape = aot_compile.parse_topology(topology)
  for path in sorted(cache.glob(f'{size}@*.json')):
    r = json.loads(path.read_text())
    if r['overrides'] == overrides and aot_compile.parse_topology(r['topology']) == shape:
      return r
  return None


def scan_twin_estimate(size: str, topology: str, overrides: dict, cache: pathlib.Path) -> dict:
  """The estimate of the row with the layer scan toggled, where cached and taken from twins: the
  same twins (unscanned by construction), so the same estimate ({} where none)."""
  for scan in (True, False):
    path = cache / f'{row_key(size, topology, {**overrides, "model.scan_layers": scan})}.json'
    other = json.loads(path.read_text()) if path.exists() else {}
    if other.get('est_twins') and other['overrides'] != overrides:
      return {**{k: v for k, v in other.items() if k.startswith('est_')
                 and not k.startswith('est_as_compiled')},
              'est_compile_s': 0.0, 'est_from': row_key(size, topology, other['overrides'])}
  return {}


def missing_row(size: str, topology: str, overrides: dict) -> dict:
  return dict(status='not compiled', size=size, topology=topology, overrides=overrides)


def _fits_cell(r: dict) -> str:
  """'yes', '**no**' or why the row has no figures."""
  if r['status'] == 'not compiled':
    return 'not compiled yet'
  if r['status'] != 'compiled':
    return f'no: {r["status"]}'
  return '' if r['fits'] is None else 'yes' if r['fits'] else '**no**'


def _mib(num_bytes: float) -> str:
  return f'{num_bytes / 2**20:,.2f} MiB'


def _gib(num_bytes: float) -> str:
  return f'{num_bytes / 2**30:.2f} GiB'


def estimate_cells(r: dict) -> list[str]:
  """The compiler's estimate of a row: step seconds, tokens/s per chip, MFU ('' where none)."""
  step = r.get('est_step_s')
  if not step:
    return ['', '', '']
  mfu = r.get('est_mfu')
  return [f'{step:.3g} s', f'{r["est_tokens_per_s_device"]:,.0f}',
          f'{100 * mfu:.1f}%' if mfu else '']


def _config(r: dict):
  from fastslow_jax import configlib

  return configlib.load(f'fastslow:arm=coupled,size={r["size"]}', r['overrides'])


def table(rows: list[dict]) -> str:
  """The Markdown table of the rows."""
  head = ['size', 'slice', 'scan', 'remat', 'attention', 'batch (accum)', 'compile', 'compile CPU',
          'generated code', 'memory / device', 'HBM', 'fits', 'XLA / analytic FLOPs',
          'step (est.)', 'tokens/s/chip (est.)', 'MFU (est.)']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    config = _config(r)
    scan = 'on' if config.model.scan_layers else 'off'
    setting = f'{scan} | {config.model.remat} | {config.model.attention_impl}'
    batch = f'{config.batch_size} ({config.grad_accum_steps})'
    if r['status'] != 'compiled':
      wall = f'{r["wall_s"]:.0f} s' if 'wall_s' in r else ''
      lines.append(f'| {r["size"]} | {r["topology"]} | {setting} | {batch} | {wall} | | | | | '
                   f'{_fits_cell(r)} | | | | |')
      continue
    ratio = (f'{r["xla_flops_unrolled"] / r["analytic_flops_full"]:.3f}'
             if r.get('xla_flops_unrolled') else 'n/a')
    fits = _fits_cell(r)
    lines.append(f'| {r["size"]} | {r["topology"]} | {setting} | {batch} | '
                 f'{r["compile_s"]:.0f} s | {r["compile_cpu_s"]:.0f} s | '
                 f'{_mib(r["generated_code"])} | {_gib(r["total"])} | '
                 f'{r["hbm_gib"]:g} GiB | {fits} | {ratio} | '
                 + ' | '.join(estimate_cells(r)) + ' |')
  return '\n'.join(lines) + '\n'


def comparison_table(title: str, baseline: str, sets: list[tuple[str, str, list]]) -> str:
  """One comparison group: per set (size, slice, [(variant, row)]), each variant's estimate
  against the set's first."""
  head = ['size', 'slice', 'variant', 'step (est.)', f'vs {baseline}', 'tokens/s/chip (est.)',
          'MFU (est.)', 'memory / device', 'fits']
  lines = [f'### {title}\n', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for size, topology, variants in sets:
    base = variants[0][1].get('est_step_s')
    for label, r in variants:
      if r['status'] != 'compiled':
        lines.append(f'| {size} | {topology} | {label} | | | | | | {_fits_cell(r)} |')
        continue
      step, tokens, mfu = estimate_cells(r)
      ratio = f'{r["est_step_s"] / base:.3f}' if base and r.get('est_step_s') else ''
      fits = _fits_cell(r)
      lines.append(f'| {size} | {topology} | {label} | {step} | {ratio} | {tokens} | {mfu} | '
                   f'{_gib(r["total"])} | {fits} |')
  return '\n'.join(lines) + '\n'


def windowed_available() -> bool:
  """Whether the model has the local fast path the windowed-attention rows compare."""
  import dataclasses
  from fastslow_jax import models

  return 'fast_window' in {f.name for f in dataclasses.fields(models.ModelConfig)}


def groups(sizes, topologies, include_windowed: bool) -> list:
  """The comparison groups, each with only its sets of the given sizes and slices."""
  chosen = COMPARISONS + ((WINDOWED,) if include_windowed else ())
  return [(title, baseline, [s for s in sets if s[0] in sizes and s[1] in topologies])
          for title, baseline, sets in chosen]


INTRO = (
    'Generated {now} on {cpus} CPU cores shared with other work: "compile" is wall seconds (read '
    'it as an upper bound), "compile CPU" the CPU seconds of all the compiler\'s threads, which '
    'the load hardly changes. Coupled arm at each size\'s default config '
    '(`fastslow_jax/configs/fastslow.py`: its batch, compute dtype, remat policy and layer scan; '
    'data parallel below `124m`, FSDP over the slice from there), compiled by '
    '`python -m launch.aot_compile` for compile-only devices of the slice (libtpu; v5litepod-16 is '
    'the v5e:4x4 topology). "memory / device" is XLA\'s compiled estimate (arguments + outputs - '
    'aliased + temporaries + generated code) against the chip\'s HBM. "XLA / analytic FLOPs" '
    'compares XLA\'s count of the step with every loop unrolled (from the lowered program) against '
    '`models.flops_per_token` with attention counted as the masked T x T product the reference '
    'kernel executes; the excess is the elementwise work the analytic count leaves out (softmax, '
    'norms, AdamW) and, under `full` remat, the forward recomputed in the backward pass (a third '
    'more).\n\n'
    '"(est.)" columns are **the compiler\'s estimate**, not a measurement: libtpu\'s cost model '
    '(`optimal_seconds`) of the step, taken from twins of it with the layers unrolled at two '
    'depths and extrapolated, one micro-batch times the accumulation steps, and XLA\'s windowed '
    'einsum off (launch/README.md, "Step time without a TPU", says how, what it models and how '
    'far to trust it). "tokens/s/chip" is the global batch\'s tokens over the estimated step and '
    'the chips; "MFU" the analytic training FLOPs (`models.flops_per_token`, causal attention at '
    'half) over the estimated step times the chips\' peak bf16 FLOP/s '
    '(`fastslow_jax.devices`).\n\n')


def compare_text(results: dict, chosen: list, include_windowed: bool) -> str:
  """The comparison section: a table per group of `chosen` (from `groups`), and why the windowed
  group is not compiled yet where it is not."""
  text = ('\n## Comparisons on one slice\n\nEach set of rows differs from its first row in one '
          'respect, at the size\'s default config otherwise; "vs" is the estimated step over the '
          'first row\'s. Sets on the v5litepod-16 and v5p-16 only.\n\n')
  for title, baseline, sets in chosen:
    if not sets:
      continue
    filled = [(size, topology, [(label, results[row_key(size, topology, over)])
                                for label, over in variants])
              for size, topology, variants in sets]
    text += comparison_table(title, baseline, filled) + '\n'
  if not include_windowed:
    text += (f'### {WINDOWED[0]}\n\nNot compiled yet: it compares full attention with the local '
             'fast path, `model.fast_window`, which the model does not have yet; the rows '
             '(`fits.WINDOWED`) are compiled as soon as it does.\n')
  return text


def long_jobs(sizes, topologies) -> list:
  """The long-context rows of the given sizes and slices: (size, T, slice, variants)."""
  return [(size, T, topology, variants) for size, T, variants in LONG_CONTEXT if size in sizes
          for topology in LONG_SLICES if topology in topologies]


def jobs_of(f) -> tuple[list, list]:
  """(grid rows, comparison and long-context rows) to compile, as (size, slice, overrides)."""
  grid = [(s, t, {}) for s in f.sizes for t in f.topologies]
  if f.extra_rows:
    grid += [job for job in EXTRA_ROWS if job[0] in f.sizes]
  compare = [(size, topology, over) for _, _, sets in groups(f.sizes, f.topologies,
                                                            windowed_available())
             for size, topology, variants in sets for _, over in variants] if f.comparisons else []
  if f.long_context:
    compare += [(size, topology, over) for size, _, topology, variants
                in long_jobs(f.sizes, f.topologies) for _, over in variants]
  return grid, compare


LONG_TEXT = (
    '\n## Long context\n\nFull dense attention against the local fast path (W = 1024) with the '
    'slow path (`fastslow`, P = 16), at the size\'s default config otherwise, splash attention for '
    'both, a global batch of 16 sequences of T tokens, on the v5litepod-16 and v5p-16 slices only '
    '(`fits.LONG_SLICES`: 16 and 8 chips). "TFLOP / chip" is the analytic training count of one '
    'step per chip (causal attention at its honest cost: half of T x T, or about W keys per query '
    'with the window), "at peak" the time those FLOPs take at the chip\'s peak: no step is '
    'faster. The compiler prices the splash kernel by what it reads and writes, not by its FLOPs '
    '(launch/README.md), so at long T it misses most of full attention\'s cost: an estimate under '
    'the floor (marked "< floor", with an MFU over 100%) says only that, and the floor is the '
    'better figure of the two: "vs dense full" is the larger of each row\'s estimate and floor '
    'over the same of the dense row. Windowed attention\'s kernel does a small share of the '
    'step\'s work and is missed less. The other columns as above. Vocabulary: the default data\'s (so the '
    'output layer is small here: a 50k vocabulary adds its logits, T x 50k per sequence).\n\n')


def long_context_table(results: dict, sizes, topologies) -> str:
  """The long-context rows: per size, T and slice, full against windowed."""
  head = ['size', 'T', 'slice', 'variant', 'sequences / chip', 'memory / device', 'HBM', 'fits',
          'compile', 'compile CPU', 'TFLOP / chip', 'at peak', 'step (est.)', 'vs dense full',
          'tokens/s/chip (est.)', 'MFU (est.)']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for size, T, topology, variants in long_jobs(sizes, topologies):
    rows = [(label, results[row_key(size, topology, over)]) for label, over in variants]
    first = rows[0][1]
    base = first.get('est_step_s') and max(first['est_step_s'],
                                           first['analytic_flops'] / first['peak_flops'])
    for label, r in rows:
      cells = [size, f'{T // 1024}k', topology, label]
      if r['status'] != 'compiled':
        why = ('no: needs the sequence split over chips (a sequence-sharded mesh, which the fused '
               'kernels do not take yet)' if r['status'] == 'does not fit' else _fits_cell(r))
        lines.append('| ' + ' | '.join(cells) + f' | | | | {why} |' + ' |' * 8)
        continue
      chips = math.prod(r['mesh'].values())
      step, tokens, mfu = estimate_cells(r)
      floor = r['analytic_flops'] / r['peak_flops']
      if r.get('est_step_s') and r['est_step_s'] < floor:
        step += ' (< floor)'
      ratio = f'{max(r["est_step_s"], floor) / base:.3f}' if base and r.get('est_step_s') else ''
      batch = r['overrides']['batch_size']
      cells += [f'{batch / chips:g}', _gib(r['total']), f'{r["hbm_gib"]:g} GiB', _fits_cell(r),
                f'{r["compile_s"]:.0f} s', f'{r["compile_cpu_s"]:.0f} s',
                f'{r["analytic_flops"] / 1e12:,.1f}', f'{floor:.3g} s', step, ratio, tokens, mfu]
      lines.append('| ' + ' | '.join(cells) + ' |')
  return LONG_TEXT + '\n'.join(lines) + '\n'


def row_label(r: dict) -> str:
  over = ', '.join(f'{k.removeprefix("model.")}={v}' for k, v in r['overrides'].items())
  return f'{r["size"]} on {r["topology"]}' + (f' ({over})' if over else '')


def missing_text(grid: list[dict], others: list[dict]) -> str:
  """The paragraph on the rows not compiled yet ('' where none): the grid's by name, the
  comparison and long-context rows by count."""
  missing = [r for r in grid if r['status'] == 'not compiled']
  rest = [r for r in others if r['status'] == 'not compiled']
  if not missing and not rest:
    return ''
  named = [f'of the grid, {"; ".join(map(row_label, missing))}'] if missing else []
  counted = [f'{len(rest)} of the {len(others)} comparison and long-context rows'] if rest else []
  return (f'**Not compiled yet:** {"; and ".join(named + counted)}. Their cells say "not compiled '
          'yet"; `python -m launch.fits` compiles what its cache lacks (a row from `124m` up takes '
          '2 to 18 minutes on 2 shared cores, most of it the estimate\'s twins).\n\n')


def main():
  f = flags.FLAGS
  grid, compare = jobs_of(f)
  cache = pathlib.Path(f.cache_dir)
  results = {}
  bar = tqdm.tqdm(grid + compare, desc='compile', unit='config', disable=not sys.stderr.isatty())
  for size, topology, overrides in bar:
    bar.set_postfix_str(f'{size} on {topology}')
    key = row_key(size, topology, overrides)
    if f.compile or (cache / f'{key}.json').exists():
      results[key] = compile_row(size, topology, overrides, cache, f.timeout)
    else:
      results[key] = (cached_as(size, topology, overrides, cache)
                      or missing_row(size, topology, overrides))
      results[key] = {**results[key], 'topology': topology}
  now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  command = ' '.join(['python -m launch.fits', *sys.argv[1:]])
  text = (f'# Which size fits which slice\n\n```\n{command}\n```\n\n'
          + INTRO.format(now=now, cpus=os.cpu_count())
          + missing_text([results[row_key(*job)] for job in grid],
                         list({row_key(*job): results[row_key(*job)] for job in compare
                               if job not in grid}.values()))
          + table([results[row_key(*job)] for job in grid]))
  if f.comparisons:
    windowed = windowed_available()
    text += compare_text(results, groups(f.sizes, f.topologies, windowed), windowed)
  if f.long_context:
    text += long_context_table(results, f.sizes, f.topologies)
  pathlib.Path(f.out).write_text(text)
  print(text)


if __name__ == '__main__':
  cli.run(main, define_flags)
