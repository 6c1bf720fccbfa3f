"""Launchers: syntax, lint, documented flags, argument errors, ahead-of-time compilation."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / 'launch').glob('*.sh')) + sorted((ROOT / 'launch').glob('*.sbatch'))


def test_there_are_launchers():
  assert {p.name for p in SCRIPTS} >= {'local.sh', 'tpu_pod.sh', 'slurm_gpu.sbatch'}


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  subprocess.run(['bash', '-n', str(script)], check=True)


@pytest.mark.skipif(shutil.which('shellcheck') is None, reason='shellcheck is not installed')
@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
  result = subprocess.run(['shellcheck', str(script)], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize('script', ['local.sh', 'tpu_pod.sh'])
def test_help_documents_every_option(script):
  path = ROOT / 'launch' / script
  source = path.read_text()
  help_text = subprocess.run(['bash', str(path), '--help' if script == 'tpu_pod.sh' else '-h'],
                             capture_output=True, text=True, check=True).stdout
  if script == 'tpu_pod.sh':
    options = set(re.findall(r'^\s+(--[a-z-]+)(?:=\*)?\)', source, re.M))  # case patterns
  else:
    options = {f'-{o}' for o in re.search(r'getopts ":([a-z:]+)"', source).group(1).replace(':', '')}
  assert options, 'no options parsed'
  for option in options:
    assert option in help_text, option


def test_slurm_help_names_the_environment_knobs():
  out = subprocess.run(['bash', str(ROOT / 'launch' / 'slurm_gpu.sbatch'), '--help'],
                       capture_output=True, text=True, check=True).stdout
  for knob in ('FASTSLOW_VENV', 'FASTSLOW_LOG_DIR', 'EXTRA_XLA_FLAGS', 'sbatch'):
    assert knob in out


@pytest.mark.parametrize('args,message', [
    (['-n', '0', '--', 'true'], 'positive integers'),
    (['-n', '2'], 'no command'),
    (['-x', '--', 'true'], 'unknown option'),
])
def test_local_launcher_argument_errors(args, message):
  result = subprocess.run(['bash', str(ROOT / 'launch' / 'local.sh'), *args],
                          capture_output=True, text=True)
  assert result.returncode == 2 and message in result.stderr


def test_local_launcher_stops_the_others_and_returns_the_failure():
  command = [sys.executable, '-c', 'import os, sys, time\n'
             'if os.environ["JAX_PROCESS_ID"] == "1": sys.exit(7)\n'
             'time.sleep(60)']
  result = subprocess.run(['bash', str(ROOT / 'launch' / 'local.sh'), '-n', '3', '-d', '1', '--',
                           *command], capture_output=True, text=True, timeout=30)
  assert result.returncode == 7 and 'stopping the others' in result.stderr


def test_local_launcher_sets_the_coordinator_environment(tmp_path):
  command = [sys.executable, '-c', 'import os\n'
             f'open("{tmp_path}/p" + os.environ["JAX_PROCESS_ID"], "w").write('
             'os.environ["JAX_NUM_PROCESSES"] + " " + os.environ["JAX_COORDINATOR_ADDRESS"] + " " '
             '+ os.environ["XLA_FLAGS"])']
  subprocess.run(['bash', str(ROOT / 'launch' / 'local.sh'), '-n', '2', '-d', '3', '--', *command],
                 check=True, timeout=30)
  seen = [(tmp_path / f'p{i}').read_text().split() for i in range(2)]
  assert seen[0][:2] == seen[1][:2] and seen[0][0] == '2'
  assert seen[0][1].startswith('127.0.0.1:')
  assert '--xla_force_host_platform_device_count=3' in seen[0]


def _aot(topology):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return subprocess.run([sys.executable, '-m', 'launch.aot_compile', f'--topology={topology}',
                         f'--config={ROOT}/configs/fastslow.py:size=tiny'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_aot_compile_on_cpu_devices_prints_memory():
  result = _aot('cpu:8')
  assert result.returncode == 0, result.stderr[-2000:]
  assert "mesh {'data': 8, 'fsdp': 1, 'tensor': 1}" in result.stdout
  total = re.search(r'total\s+([\d.]+) GiB', result.stdout)
  assert total and float(total.group(1)) > 0


def test_aot_compile_for_tpu_compiles_or_skips_in_one_line():
  result = _aot('v5e:2x2')
  assert result.returncode == 0, result.stderr[-2000:]
  if result.stdout.startswith('skipped:'):
    assert len(result.stdout.strip().splitlines()) == 1 and 'libtpu' in result.stdout
  else:
    assert '4 x TPU v5' in result.stdout and 'total' in result.stdout
