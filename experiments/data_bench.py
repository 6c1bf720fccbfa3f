r"""Data pipeline figures: prepare throughput, loader throughput, peak memory against corpus size.

    python -m experiments.data_bench                  # a 1 GB corpus under /tmp/data_bench
    python -m experiments.data_bench --large_mb=64 --small_mb=4 --throughput_mb=8   # quick look

Steps:
  1. corpus: --large_mb of text in 64 MB files, documents of about 4 KB separated by blank lines
     (Shakespeare paragraphs drawn at random when that text is present, random words otherwise);
     the small corpus is the first --small_mb of it.
  2. `prepare` the small corpus with bpe:<--vocab> (this trains the tokenizer), then time
     `prepare` over --throughput_mb of input with that trained tokenizer (as hf:tokenizer.json:
     the same tokenization, no training) and with `byte`, on 1 and 2 worker processes.
  3. `prepare` the large corpus with bpe:<--vocab> on 2 workers: wall time and peak memory.
  4. loader: tokens/s of `data.make_iterator` at T=1024 over the large dataset, one process.
  5. training: peak RSS of `fastslow_jax.train` (dense, tiny, 50 steps) on the large and on the
     small dataset.
The report goes to experiments/reports/data_bench/ (report.md, results.json). A `prepare` step
whose dataset and figures are in --workdir is not run again (delete them to re-time it).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import flags

from experiments import repo, report
from fastslow_jax import cli, data
from fastslow_jax.configs import schema

def define_flags() -> None:
  flags.DEFINE_string('workdir', '/tmp/data_bench', 'Corpora, datasets and runs.')
  flags.DEFINE_integer('large_mb', 1024, 'Size of the large corpus (MB).', lower_bound=1)
  flags.DEFINE_integer('small_mb', 10, 'Size of the small corpus (MB).', lower_bound=1)
  flags.DEFINE_integer('throughput_mb', 64, 'Input timed per prepare row (MB).', lower_bound=1)
  flags.DEFINE_integer('vocab', 2048, 'BPE vocabulary size.', lower_bound=1)
  flags.DEFINE_integer('seq_len', 1024, 'Window length T of the loader benchmark.', lower_bound=1)
  flags.DEFINE_integer('batch_size', 8, 'Windows per batch of the loader benchmark.',
                       lower_bound=1)
  flags.DEFINE_float('loader_seconds', 50.0, 'How long the loader is timed.', lower_bound=0)
  flags.DEFINE_integer('train_steps', 50, 'Steps of each training run.', lower_bound=1)
  flags.DEFINE_string('out_dir', None, 'Report directory (default: experiments/reports/).')


F = flags.FLAGS
MB = 10**6
FILE_MB = 64
WORDS = 'the of and to a in that is was he for it with as his on be at by had not'.split()


def write_corpus(directory: pathlib.Path, size_mb: int, seed: int = 0) -> list[pathlib.Path]:
  """`size_mb` of blank-line-separated documents of about 4 KB in files of FILE_MB."""
  directory.mkdir(parents=True, exist_ok=True)
  if repo.DEFAULT_TEXT.exists():
    paragraphs = [p.replace('\n', ' ') for p in repo.DEFAULT_TEXT.read_text().split('\n\n')]
  else:
    rng = np.random.default_rng(seed)
    paragraphs = [' '.join(rng.choice(WORDS, rng.integers(5, 40))) for _ in range(5000)]
  rng, files, written = np.random.default_rng(seed), [], 0
  while written < size_mb * MB:
    path = directory / f'part-{len(files):04d}.txt'
    with open(path, 'w') as f:
      size = 0
      while size < min(FILE_MB, size_mb - written / MB) * MB:
        doc = '\n'.join(paragraphs[i] for i in rng.integers(0, len(paragraphs), 30)) + '\n\n'
        size += f.write(doc)
    files.append(path)
    written += path.stat().st_size
  return files


# Runs a command in a process forked from this small interpreter and writes the command's peak
# RSS and CPU seconds (its worker processes included): on Linux a child's ru_maxrss starts from
# its parent's size at fork, so the benchmark (with JAX imported) must not be the parent.
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
  os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], 'w') as f:
  f.write(f'{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}')
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(args: list[str], log: pathlib.Path) -> dict[str, float]:
  """Wall and CPU seconds and the peak RSS (MB) of the command's largest process; its output
  goes to `log`."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['PYTHONPATH'] = str(repo.REPO)
  rss_file = log.with_suffix('.maxrss')
  start = time.perf_counter()
  with open(log, 'w') as out:
    code = subprocess.run([sys.executable, '-c', _MEASURE, str(rss_file), *args], cwd=repo.REPO,
                          env=env, stdout=out, stderr=subprocess.STDOUT).returncode
  if code:
    raise SystemExit(f'{" ".join(args)} failed: see {log}')
  rss, cpu = rss_file.read_text().split()
  return {'seconds': time.perf_counter() - start, 'cpu_seconds': float(cpu),
          'peak_rss_mb': int(rss) / 1024}


def prepare(inputs: str, out: pathlib.Path, tokenizer: str, workers: int,
            log_dir: pathlib.Path) -> dict:
  """Runs `prepare` afresh (or reuses a finished run's figures); returns its timing, memory and
  dataset totals."""
  cached = log_dir / f'prepare-{out.name}.json'
  key = {'inputs': inputs, 'tokenizer': tokenizer, 'workers': workers}
  if cached.exists() and (out / 'dataset.json').exists():
    row = json.loads(cached.read_text())
    if row.pop('key') == key:
      return row
  shutil.rmtree(out, ignore_errors=True)
  measured = run_measured(
      [sys.executable, '-m', 'fastslow_jax.data.prepare', f'--input={inputs}', f'--output={out}',
       f'--tokenizer={tokenizer}', '--documents=paragraph', f'--num_workers={workers}'],
      log_dir / f'prepare-{out.name}.log')
  manifest = json.loads((out / 'dataset.json').read_text())
  nbytes = sum(manifest['splits'][s]['bytes'] for s in data.SPLITS)
  ntokens = sum(manifest['splits'][s]['tokens'] for s in data.SPLITS)
  seconds = measured['seconds']
  row = {'tokenizer': tokenizer, 'workers': workers, **measured, 'MB': nbytes / MB,
         'MB_per_s': nbytes / MB / seconds, 'MB_per_cpu_s': nbytes / MB / measured['cpu_seconds'],
         'tokens': ntokens, 'tokens_per_s': ntokens / seconds}
  cached.write_text(json.dumps({**row, 'key': key}))
  return row


# Tokenizes the first MB megabytes of a file with a tokenizer.json in one thread, no prepare.
_ENCODE = """
import os, sys
os.environ['TOKENIZERS_PARALLELISM'] = 'false'
import tokenizers
tok = tokenizers.Tokenizer.from_file(sys.argv[1])
with open(sys.argv[2]) as f:
  docs = f.read(int(sys.argv[3]) * 10**6).split('\\n\\n')
tok.encode_batch_fast(docs, add_special_tokens=False)
"""


def concurrency_control(tokenizer_json: pathlib.Path, sample: str, mb: int = 16) -> dict:
  """MB/s of the bare tokenizer in 1 process, then in 2 at once: what this machine's cores give
  two independent processes, whatever prepare does."""
  mb = min(mb, os.path.getsize(sample) // MB)

  def run(copies: int) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, '-c', _ENCODE, str(tokenizer_json), sample,
                               str(mb)]) for _ in range(copies)]
    if any(p.wait() for p in procs):
      raise SystemExit('the tokenizer control failed')
    return copies * mb / (time.perf_counter() - start)
  return {'MB': mb, 'one_process_MB_per_s': run(1), 'two_processes_MB_per_s': run(2)}


def rss_mb() -> tuple[float, float]:
  """(current, peak) resident memory of this process in MB, from /proc/self/status."""
  status = dict(line.split(':', 1) for line in open('/proc/self/status'))
  return (int(status['VmRSS'].split()[0]) / 1024, int(status['VmHWM'].split()[0]) / 1024)


def loader_throughput(path: pathlib.Path) -> dict:
  """Tokens/s of the training iterator over a prepared dataset, and this process's memory."""
  cfg = schema.defaults().data
  cfg.update({'kind': 'tokens', 'path': str(path)})
  dataset = data.make_dataset(cfg, seq_len=F.seq_len, split='train')
  iterator = data.make_iterator(dataset, batch_size=F.batch_size, seed=0)
  for _ in range(10):
    next(iterator)
  rss_before = rss_mb()[0]
  start, count = time.perf_counter(), 0
  while time.perf_counter() - start < F.loader_seconds:
    count += next(iterator).shape[0] * F.seq_len
  elapsed = time.perf_counter() - start
  return {'T': F.seq_len, 'batch': F.batch_size, 'windows': len(dataset),
          'tokens_per_s': count / elapsed, 'tokens_read': count, 'rss_mb_before': rss_before,
          'rss_mb_after': rss_mb()[0]}


def train_rss(path: pathlib.Path, root: pathlib.Path) -> dict:
  workdir = root / f'run-{path.name}'
  shutil.rmtree(workdir, ignore_errors=True)
  measured = run_measured(
      [sys.executable, '-m', 'fastslow_jax.train',
       '--config=configs/fastslow.py:arm=dense,size=tiny', '--config.data.kind=tokens',
       f'--config.data.path={path}', f'--config.total_steps={F.train_steps}',
       f'--workdir={workdir}'], root / f'train-{path.name}.log')
  manifest = json.loads((path / 'dataset.json').read_text())
  return {'dataset': path.name, 'train_tokens': manifest['splits']['train']['tokens'],
          **measured}


def corpora(root: pathlib.Path) -> tuple[str, str, str]:
  """(large, small, throughput) inputs as globs / lists of files, written when missing."""
  large_dir = root / f'corpus-{F.large_mb}mb'
  if not (large_dir / 'done').exists():
    print(f'Writing a {F.large_mb} MB corpus to {large_dir}...')
    write_corpus(large_dir, F.large_mb)
    (large_dir / 'done').touch()
  def head(mb: int) -> str:  # The first `mb` of the large corpus (whole files, or a cut file).
    target = root / f'head-{mb}mb.txt'
    if not target.exists():
      with open(large_dir / 'part-0000.txt') as f:
        cut = f.read(mb * MB)
      target.write_text(cut[:cut.rfind('\n\n') + 2])
    return str(target)
  return f'{large_dir}/part-*.txt', head(F.small_mb), head(F.throughput_mb)


def main() -> None:
  root = pathlib.Path(F.workdir)
  root.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  large, small, sample = corpora(root)
  bpe = f'bpe:{F.vocab}'
  results = {'small_prepare': prepare(small, root / 'small', bpe, 2, root)}
  trained = f'hf:{root / "small" / "tokenizer.json"}'
  results['throughput'] = []
  for name, tokenizer in (('byte', 'byte'), ('bpe', trained)):
    for workers in (1, 2):
      row = prepare(sample, root / f'tp-{name}-{workers}', tokenizer, workers, root)
      print(row)
      results['throughput'].append(row)
  results['control'] = concurrency_control(root / 'small' / 'tokenizer.json', sample)
  print(results['control'])
  print(f'Preparing the {F.large_mb} MB corpus ({bpe}, 2 workers)...')
  results['large_prepare'] = prepare(large, root / 'large', bpe, 2, root)
  results['loader'] = loader_throughput(root / 'large')
  print(results['loader'])
  results['train'] = [train_rss(root / name, root) for name in ('large', 'small')]
  print(results['train'])
  write(results, time.perf_counter() - started)


def write(results: dict, elapsed: float) -> None:
  """The report and results.json."""
  loader, (big, little), lp = results['loader'], results['train'], results['large_prepare']
  load = ', '.join(f'{x:.1f}' for x in os.getloadavg())
  rows = [[r['tokenizer'] if r['tokenizer'] == 'byte' else f'bpe:{F.vocab} (trained)',
           r['workers'], f'{r["MB"]:.0f}', f'{r["seconds"]:.1f}', f'{r["MB_per_s"]:.2f}',
           f'{r["MB_per_cpu_s"]:.2f}', f'{r["tokens_per_s"] / 1e6:.2f}M',
           f'{r["peak_rss_mb"]:.0f}']
          for r in results['throughput']]
  text = report.header('Data pipeline: prepare, loader and memory (data_bench)',
                       report.provenance(report.command_line('experiments.data_bench'),
                                         elapsed_s=elapsed))
  text += (
      '\n## Conclusion\n\n'
      f'Loader: {loader["tokens_per_s"] / 1e6:.1f}M tokens/s in one process at T={loader["T"]} '
      f'(target >= 2M). A training run\'s peak RSS is {big["peak_rss_mb"]:.0f} MB on the '
      f'{F.large_mb} MB corpus ({big["train_tokens"] / 1e6:.0f}M train tokens) and '
      f'{little["peak_rss_mb"]:.0f} MB on the {F.small_mb} MB one: '
      f'{big["peak_rss_mb"] - little["peak_rss_mb"]:+.0f} MB (target: within 300 MB). Preparing '
      f'the {F.large_mb} MB corpus with bpe:{F.vocab} on 2 workers took '
      f'{lp["seconds"] / 60:.1f} min ({lp["MB_per_s"]:.2f} MB/s including tokenizer training; '
      f'peak RSS {lp["peak_rss_mb"]:.0f} MB). Load average at the end: {load} on '
      f'{os.cpu_count()} cores (the machine is shared: throughputs move with it).\n\n'
      f'## prepare throughput ({F.throughput_mb} MB of input, wall time with start-up)\n\n')
  text += report.markdown_table(
      ['tokenizer', 'workers', 'MB', 'seconds', 'MB/s', 'MB per CPU-second', 'tokens/s',
       'peak RSS (MB)'], rows)
  control = results['control']
  text += (f'\nControl, no prepare: the bare tokenizer over {control["MB"]} MB of the same text in '
           f'one process ran at {control["one_process_MB_per_s"]:.2f} MB/s; two such processes '
           f'at once at {control["two_processes_MB_per_s"]:.2f} MB/s together: what this '
           'machine\'s cores give a second process at the time.\n')
  text += (f'\n## Loader (one process, T={loader["T"]}, batch {loader["batch"]}, '
           f'{F.loader_seconds:.0f} s)\n\n')
  text += report.markdown_table(
      ['dataset', 'windows', 'tokens/s', 'tokens read', 'RSS before / after (MB)'],
      [[f'{F.large_mb} MB', f'{loader["windows"]:,}', f'{loader["tokens_per_s"] / 1e6:.1f}M',
        f'{loader["tokens_read"] / 1e6:.0f}M',
        f'{loader["rss_mb_before"]:.0f} / {loader["rss_mb_after"]:.0f}']])
  text += f'\n## Training run memory (dense, tiny, {F.train_steps} steps, peak RSS)\n\n'
  text += report.markdown_table(['dataset', 'train tokens', 'seconds', 'peak RSS (MB)'], [
      [f'{mb} MB', f'{r["train_tokens"]:,}', f'{r["seconds"]:.0f}', f'{r["peak_rss_mb"]:.0f}']
      for mb, r in ((F.large_mb, big), (F.small_mb, little))])
  path = report.write_report(repo.report_dir('data_bench', F.out_dir), text, results)
  print(f'Wrote {path}')


if __name__ == '__main__':
  cli.run(main, define_flags)
