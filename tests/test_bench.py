"""The benchmark script runs and prints its table (figures themselves are not asserted)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # About a minute of compilation; CI runs it with the slow tests.
def test_bench_prints_a_row_per_arm_and_the_ratio():
  # One CPU device (the suite's 8 simulated ones only slow compilation here).
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run([sys.executable, '-m', 'experiments.bench', '--size=tiny', '--seq_lens=32',
                        '--Ps=4,8', '--steps=1', '--warmup=0', '--batch_size=8'], cwd=ROOT,
                       env=env, check=True, capture_output=True, text=True, timeout=300).stdout
  rows = [line for line in out.splitlines() if re.match(r'(dense|coupled)\s+32\s', line)]
  assert [r.split()[0] for r in rows] == ['dense', 'coupled', 'coupled']
  assert rows[0].split()[-1] == '1.000' and all(float(r.split()[-1]) > 0 for r in rows)
