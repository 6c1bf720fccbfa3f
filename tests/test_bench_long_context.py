"""experiments/bench_long_context.py runs and prints its tables; only what is deterministic is
asserted (rows, the caches' sizes): its timings and the 0.5x target are printed figures."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def bench(*args: str) -> str:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # One CPU device.
  result = subprocess.run([sys.executable, '-m', 'experiments.bench_long_context', '--size=tiny',
                           '--window=64', *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow  # Compiles two train steps, two prefills and two decoders.
def test_bench_long_context_prints_steps_and_caches():
  out = bench('--seq_lens=256', '--steps=1', '--target_T=256')
  rows = [line.split() for line in out.splitlines() if re.match(r'\s+256 ', line)]
  assert [r[1:3] for r in rows] == [['dense', 'full'], ['fastslow', 'W=64']]
  assert rows[0][-1] == '1.000' and 'Target at T=256: fastslow W=64 step <= 0.5x' in out
  out = bench('--mode=decode', '--contexts=512', '--tokens=4', '--rounds=1')
  caches = {r[1]: [float(r[i]) for i in (4, 6, 8)] for r in
            (line.split() for line in out.splitlines() if re.match(r'\s+512 ', line))}
  dense, windowed = caches['dense'], caches['fastslow']
  assert dense[1] == 0 and windowed[0] == pytest.approx(dense[0] * 64 / 512, abs=0.01)
  assert windowed[1] > 0  # The slow path's completed blocks.


def test_bench_long_context_refuses_bad_lengths():
  result = subprocess.run([sys.executable, '-m', 'experiments.bench_long_context',
                           '--seq_lens=1k'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last == 'error: --seq_lens=1k: give whole numbers of tokens.'
