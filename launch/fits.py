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
row), so an interrupted run resumes and the table can be rewritten without compiling again.
Needs libtpu.
"""

from __future__ import annotations

import datetime
import json
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
# over 15 minutes to compile here, so the 12-layer 124m shows it), and the 1b compile-time target.
EXTRA_ROWS = (('124m', 'v5litepod-16', {'model.scan_layers': False}),
              ('124m', 'v5e:2x2', {}), ('124m', 'v5e:2x2', {'grad_accum_steps': 4}),
              ('1b', 'v5e:4x4', {}))

# What a user chooses between, on one slice: per group, sets of rows (size, slice, variants) that
# differ in one respect, each set against its first variant.
_ARMS = (('dense', {'model.arm': 'dense'}), ('coupled', {}),
         ('hourglass', {'model.family': 'hourglass'}),
         ('compressed', {'model.family': 'compressed'}))
_KERNELS = (('reference', {}), ('splash', {'model.attention_impl': 'splash'}))
_REMATS = (('full', {}), *((p, {'model.remat': p}) for p in ('none', 'dots_saveable', 'minimal')))
COMPARISONS = (
    ('Arm and family', 'dense', (('124m', 'v5litepod-16', _ARMS), ('350m', 'v5litepod-16', _ARMS),
                                 ('124m', 'v5p-16', _ARMS[:2]), ('350m', 'v5p-16', _ARMS[:2]),
                                 ('1b', 'v5p-16', _ARMS[:2]))),
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


def define_flags() -> None:
  flags.DEFINE_list('sizes', list(SIZES), 'Sizes of the fastslow config.')
  flags.DEFINE_list('topologies', list(TOPOLOGIES), 'Slices, as aot_compile --topology takes.')
  flags.DEFINE_bool('extra_rows', True, 'Also the rows of EXTRA_ROWS (scan off, targets).')
  flags.DEFINE_bool('comparisons', True, 'Also the comparison rows of COMPARISONS (arms and '
                    'families, attention kernels, remat policies, windowed attention).')
  flags.DEFINE_string('out', str(HERE / 'FITS.md'), 'The Markdown table to write.')
  flags.DEFINE_string('cache_dir', str(HERE.parent / 'workdirs' / 'fits'),
                      'One JSON of figures per row; delete it to compile again.')
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
  cache.mkdir(parents=True, exist_ok=True)
  command = [sys.executable, '-m', 'launch.aot_compile', f'--topology={topology}',
             f'--config=fastslow:arm=coupled,size={size}', f'--json_out={path}.tmp',
             *[f'--config.{k}={v}' for k, v in overrides.items()]]
  start = time.perf_counter()
  done = subprocess.run(command, cwd=HERE.parent, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  wall = time.perf_counter() - start
  if done.returncode == 0 and 'skipped:' in done.stdout:
    raise ValueError(f'{done.stdout.strip()}')
  if done.returncode == 0:
    figures = next(iter(json.loads(pathlib.Path(f'{path}.tmp').read_text()).values()))
    pathlib.Path(f'{path}.tmp').unlink()
    result = {'status': 'compiled', **figures}
  elif done.returncode == 1 and 'does not fit' in done.stderr:
    result = {'status': 'does not fit', 'message': done.stderr.strip().splitlines()[-1]}
  else:
    raise RuntimeError(f'{" ".join(command)} failed (exit {done.returncode}): '
                       f'{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""}')
  result.update(size=size, topology=topology, overrides=overrides, wall_s=wall)
  path.write_text(json.dumps(result, indent=1) + '\n')
  return result


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
  head = ['size', 'slice', 'scan', 'remat', 'batch (accum)', 'compile', 'compile CPU',
          'generated code', 'memory / device', 'HBM', 'fits', 'XLA / analytic FLOPs',
          'step (est.)', 'tokens/s/chip (est.)', 'MFU (est.)']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    config = _config(r)
    scan = 'on' if config.model.scan_layers else 'off'
    batch = f'{config.batch_size} ({config.grad_accum_steps})'
    if r['status'] != 'compiled':
      lines.append(f'| {r["size"]} | {r["topology"]} | {scan} | {config.model.remat} | {batch} | '
                   f'{r["wall_s"]:.0f} s | | | | | no: {r["status"]} | | | | |')
      continue
    ratio = (f'{r["xla_flops_unrolled"] / r["analytic_flops_full"]:.3f}'
             if r.get('xla_flops_unrolled') else 'n/a')
    fits = '' if r['fits'] is None else 'yes' if r['fits'] else '**no**'
    lines.append(f'| {r["size"]} | {r["topology"]} | {scan} | {config.model.remat} | {batch} | '
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
        lines.append(f'| {size} | {topology} | {label} | | | | | | no: {r["status"]} |')
        continue
      step, tokens, mfu = estimate_cells(r)
      ratio = f'{r["est_step_s"] / base:.3f}' if base and r.get('est_step_s') else ''
      fits = '' if r['fits'] is None else 'yes' if r['fits'] else '**no**'
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
          'first row\'s.\n\n')
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


def jobs_of(f) -> tuple[list, list]:
  """(grid rows, comparison rows) to compile, as (size, slice, overrides)."""
  grid = [(s, t, {}) for s in f.sizes for t in f.topologies]
  if f.extra_rows:
    grid += [job for job in EXTRA_ROWS if job[0] in f.sizes]
  compare = [(size, topology, over) for _, _, sets in groups(f.sizes, f.topologies,
                                                            windowed_available())
             for size, topology, variants in sets for _, over in variants] if f.comparisons else []
  return grid, compare


def main():
  f = flags.FLAGS
  grid, compare = jobs_of(f)
  cache = pathlib.Path(f.cache_dir)
  results = {}
  bar = tqdm.tqdm(grid + compare, desc='compile', unit='config', disable=not sys.stderr.isatty())
  for size, topology, overrides in bar:
    bar.set_postfix_str(f'{size} on {topology}')
    results[row_key(size, topology, overrides)] = compile_row(size, topology, overrides, cache,
                                                              f.timeout)
  now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  command = ' '.join(['python -m launch.fits', *sys.argv[1:]])
  text = (f'# Which size fits which slice\n\n```\n{command}\n```\n\n'
          + INTRO.format(now=now, cpus=os.cpu_count())
          + table([results[row_key(*job)] for job in grid]))
  if f.comparisons:
    windowed = windowed_available()
    text += compare_text(results, groups(f.sizes, f.topologies, windowed), windowed)
  pathlib.Path(f.out).write_text(text)
  print(text)


if __name__ == '__main__':
  cli.run(main, define_flags)
