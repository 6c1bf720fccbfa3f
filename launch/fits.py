r"""Which size fits which TPU slice: compiles every size for every listed slice, writes FITS.md.

    python -m launch.fits                          # every size x v4-32, v5litepod-16, v5p-16, v6e-8
    python -m launch.fits --sizes=124m --topologies=v5e:2x2 --out=/tmp/FITS.md

Each row is `python -m launch.aot_compile` of the coupled arm at the size's default config (its
batch, remat policy, layer scan, mesh), run in its own process: compile seconds on this machine
(wall, and CPU seconds of all the compiler's threads, which hardly depend on the machine's load),
generated code, per-device memory against the chip's HBM, and XLA's FLOPs of the step (loops
unrolled) against the analytic count. Rows with the layer scan off show what scanning changes
where it matters. Results are kept in `--cache_dir` (one JSON per row), so an interrupted run
resumes and the table can be rewritten without compiling again. Needs libtpu.
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


def define_flags() -> None:
  flags.DEFINE_list('sizes', list(SIZES), 'Sizes of the fastslow config.')
  flags.DEFINE_list('topologies', list(TOPOLOGIES), 'Slices, as aot_compile --topology takes.')
  flags.DEFINE_bool('extra_rows', True, 'Also the rows of EXTRA_ROWS (scan off, targets).')
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


def table(rows: list[dict]) -> str:
  """The Markdown table of the rows."""
  from fastslow_jax import configlib

  head = ['size', 'slice', 'scan', 'remat', 'batch (accum)', 'compile', 'compile CPU',
          'generated code', 'memory / device', 'HBM', 'fits', 'XLA / analytic FLOPs']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    config = configlib.load(f'fastslow:arm=coupled,size={r["size"]}', r['overrides'])
    scan = 'on' if config.model.scan_layers else 'off'
    batch = f'{config.batch_size} ({config.grad_accum_steps})'
    if r['status'] != 'compiled':
      lines.append(f'| {r["size"]} | {r["topology"]} | {scan} | {config.model.remat} | {batch} | '
                   f'{r["wall_s"]:.0f} s | | | | | no: {r["status"]} | |')
      continue
    ratio = (f'{r["xla_flops_unrolled"] / r["analytic_flops_full"]:.3f}'
             if r.get('xla_flops_unrolled') else 'n/a')
    fits = '' if r['fits'] is None else 'yes' if r['fits'] else '**no**'
    lines.append(f'| {r["size"]} | {r["topology"]} | {scan} | {config.model.remat} | {batch} | '
                 f'{r["compile_s"]:.0f} s | {r["compile_cpu_s"]:.0f} s | '
                 f'{_mib(r["generated_code"])} | {_gib(r["total"])} | '
                 f'{r["hbm_gib"]:g} GiB | {fits} | {ratio} |')
  return '\n'.join(lines) + '\n'


def main():
  f = flags.FLAGS
  jobs = [(s, t, {}) for s in f.sizes for t in f.topologies]
  if f.extra_rows:
    jobs += [job for job in EXTRA_ROWS if job[0] in f.sizes]
  cache = pathlib.Path(f.cache_dir)
  rows = []
  bar = tqdm.tqdm(jobs, desc='compile', unit='config', disable=not sys.stderr.isatty())
  for size, topology, overrides in bar:
    bar.set_postfix_str(f'{size} on {topology}')
    rows.append(compile_row(size, topology, overrides, cache, f.timeout))
  now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  command = ' '.join(['python -m launch.fits', *sys.argv[1:]])
  text = (f'# Which size fits which slice\n\n```\n{command}\n```\n\nGenerated {now} on '
          f'{os.cpu_count()} CPU cores shared with other work: '
          '"compile" is wall seconds (read it as an upper bound), "compile CPU" the CPU seconds of '
          'all the compiler\'s threads, which the load hardly changes. Coupled arm at each size\'s '
          'default config (`fastslow_jax/configs/fastslow.py`: its batch, compute dtype, remat '
          'policy and layer scan; data parallel below `124m`, FSDP over the slice from there), '
          'compiled by `python -m launch.aot_compile` for compile-only devices of the slice '
          '(libtpu; v5litepod-16 is the v5e:4x4 topology). "memory / device" is XLA\'s compiled '
          'estimate (arguments + outputs - aliased + temporaries + generated code) against the '
          'chip\'s HBM. "XLA / analytic FLOPs" compares XLA\'s count of the step with every loop '
          'unrolled (from the lowered program) against `models.flops_per_token` with attention '
          'counted as the masked T x T product the reference kernel executes; the excess is the '
          'elementwise work the analytic count leaves out (softmax, norms, AdamW) and, under '
          '`full` remat, the forward recomputed in the backward pass (a third more).\n\n'
          + table(rows))
  pathlib.Path(f.out).write_text(text)
  print(text)


if __name__ == '__main__':
  cli.run(main, define_flags)
