"""Losing a process mid-run: the survivors' watch, the launchers' restarts, bitwise resumption."""

import os
import pathlib
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import subprocess_env, tiny_config
from fastslow_jax import distributed, errors

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOCAL = ROOT / 'launch' / 'local.sh'


class Store:
  """The coordination service's key-value store, in memory; `down` makes it stop answering."""

  def __init__(self):
    self.values, self.down, self.lock = {}, False, threading.Lock()

  def key_value_set(self, key, value, allow_overwrite=False):
    with self.lock:
      if self.down:
        raise ConnectionError('unavailable')
      self.values[key] = value

  def key_value_dir_get(self, prefix):
    with self.lock:
      if self.down:
        raise ConnectionError('unavailable')
      return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def watch(store, process, lost, timeout=0.6):
  return distributed.PeerWatch(timeout, lambda: 'the last complete checkpoint is step 4',
                               lost.append, client=store, process=(process, 3))


def test_peer_watch_names_the_lost_process_and_never_a_slow_one():
  store, lost = Store(), []
  with watch(store, 0, lost), watch(store, 1, []) as one, watch(store, 2, []) as two:
    time.sleep(2.0)  # Every process beats from a thread of its own: busy work stops nothing.
    assert not lost
    two.__exit__(None, None, None)  # Process 2 is gone.
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
      time.sleep(0.05)
    del one
  assert len(lost) == 1 and lost[0].startswith('lost process 2 of 3 (whose heartbeat stopped')
  assert lost[0].endswith('; the last complete checkpoint is step 4.')


def test_peer_watch_counts_an_unanswering_coordinator_as_process_0_lost():
  store, lost = Store(), []
  with watch(store, 1, lost), watch(store, 0, []), watch(store, 2, []):
    time.sleep(0.5)
    store.down = True
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
      time.sleep(0.05)
  assert lost and lost[0].startswith('lost process 0 of 3 (the coordinator')


def test_a_collective_failing_before_the_timeout_ends_with_the_lost_line_not_the_error():
  """gloo reports a vanished peer at once ("connection closed by peer"), before its heartbeat is
  overdue: the watch holds the error until it has judged, so the survivor's last word is the
  lost-process line; among live peers the error is raised (after the same wait)."""
  import jax
  store, lost = Store(), []
  failure = jax.errors.JaxRuntimeError('UNKNOWN: Gloo all-reduce failed: connection closed')
  with watch(store, 1, []) as one, watch(store, 2, []):
    time.sleep(0.5)
    with pytest.raises(jax.errors.JaxRuntimeError):
      with watch(store, 0, lost):
        time.sleep(0.5)
        one.__exit__(None, None, None)  # Process 1 is gone; the collective fails at once.
        raise failure
    assert len(lost) == 1 and lost[0].startswith('lost process 1 of 3'), lost
    start, alive = time.monotonic(), []
    with pytest.raises(jax.errors.JaxRuntimeError):
      with watch(store, 0, alive) as zero:
        zero._moved = {2: zero._moved[2]}  # Process 1 ended cleanly: no longer a peer.
        raise failure
    assert not alive and time.monotonic() - start < 3


FAKE_RUN = '''import os, pathlib, signal, sys, time
state = pathlib.Path(sys.argv[1])
i, attempt = os.environ['JAX_PROCESS_ID'], len(list(state.glob(f'start-{os.environ["JAX_PROCESS_ID"]}-*')))
(state / f'start-{i}-{attempt}').touch()
plan = sys.argv[2].split(',')  # Per attempt: what process 1 does; the others follow it.
what = plan[attempt] if attempt < len(plan) else 'ok'
if what == 'ok':
  sys.exit(0)
if i == '1':
  if what == 'kill':
    os.kill(os.getpid(), signal.SIGKILL)
  sys.exit(int(what))
time.sleep(0.5)
sys.exit({'kill': 75}.get(what, int(what)))  # Survivors of a kill stop resumably.
'''


def local(tmp_path, plan: str, *options):
  state = tmp_path / 'state'
  state.mkdir()
  result = subprocess.run(['bash', str(LOCAL), '-n', '2', '-d', '1', '-l', str(tmp_path / 'logs'),
                           *options, '--', sys.executable, '-c', FAKE_RUN, str(state), plan],
                          capture_output=True, text=True, timeout=60)
  return result, len(list(state.glob('start-0-*')))


def test_local_restarts_a_run_that_lost_a_process_and_reports_the_restarts(tmp_path):
  result, attempts = local(tmp_path, 'kill,kill', '-r', '3')
  assert result.returncode == 0 and attempts == 3, result.stderr
  restarts = [line for line in result.stderr.splitlines() if 'ended by a lost process' in line]
  assert len(restarts) == 2 and all('process 1: 137' in line for line in restarts), restarts
  assert 'local.sh: finished; 2 of 3 restart(s) used' in result.stderr


@pytest.mark.parametrize('plan,status,why', [('2', 2, 'not resumable'), ('1', 1, 'not resumable'),
                                             ('kill,kill', 137, 'no restart left')])
def test_local_does_not_restart_errors_or_past_its_budget(tmp_path, plan, status, why):
  result, attempts = local(tmp_path, plan, '-r', '1')
  assert result.returncode == status, result.stderr
  assert attempts == (2 if why == 'no restart left' else 1)
  assert result.stderr.strip().splitlines()[-1].endswith(f'{why}); 1 of 1 restart(s) used') or (
      why != 'no restart left' and f'{why}); 0 of 1 restart(s) used' in result.stderr)


def process_with_id(workdir, index: int) -> int:
  """The pid of the training process of `workdir` whose JAX_PROCESS_ID is `index`."""
  for pid in (int(p) for p in os.listdir('/proc') if p.isdigit()):
    try:
      args = pathlib.Path(f'/proc/{pid}/cmdline').read_bytes().split(b'\0')
      environ = pathlib.Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
    except OSError:
      continue
    if (f'--workdir={workdir}'.encode() in args and b'fastslow_jax.train' in args
        and f'JAX_PROCESS_ID={index}'.encode() in environ):
      return pid
  raise AssertionError(f'no process {index} of {workdir}')


def alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return pathlib.Path(f'/proc/{pid}/stat').read_text().split()[2] != 'Z'


def params_on_one_device(workdir) -> dict:
  """The latest checkpoint's parameters (written by several processes), read onto one device."""
  import jax
  from flax import nnx
  from fastslow_jax import restoring
  restored = restoring.restore(str(workdir), devices=jax.devices()[:1], mesh='1,1,1')
  return {path: np.asarray(v) for path, v in nnx.to_flat_state(restored.params)}


def read_losses(workdir):
  from fastslow_jax import metrics
  return {r['step']: r['loss'] for r in metrics.read_jsonl(pathlib.Path(workdir) / 'metrics.jsonl')
          if 'loss' in r}


@pytest.mark.slow
def test_two_processes_killed_twice_restart_and_end_bitwise_as_uninterrupted(tmp_path):
  """launch/local.sh, 2 processes x 2 devices: process 1 is killed (kill -9) at random steps in
  two attempts; the survivors stop on their own within the peer timeout with one line, the
  launcher restarts the run, and it ends with the per-step losses and final parameters of an
  uninterrupted run, bitwise. A config error is not retried."""
  from test_reliability import TINY, wait_for_step
  steps, every, timeout = 400, 50, 6  # Steps of a few ms: kills land mid-run.
  flags = [*TINY, f'--config.total_steps={steps}', f'--config.checkpoint_every={every}',
           f'--config.peer_timeout={timeout}']
  env = subprocess_env(devices=2)

  def launcher(workdir, *options, extra=()):
    return subprocess.Popen(
        ['bash', str(LOCAL), '-n', '2', '-d', '2', *options, '--', sys.executable, '-m',
         'fastslow_jax.train', f'--config={ROOT}/configs/fastslow.py:arm=coupled,size=tiny,P=8',
         f'--workdir={workdir}', *flags, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)

  baseline = launcher(tmp_path / 'baseline')
  assert baseline.wait(timeout=600) == 0, baseline.stderr.read()[-3000:]

  run = launcher(tmp_path / 'run', '-r', '3')
  rng = random.Random(0)
  # Two kills in two attempts: the second target lies beyond anything the first attempt logged.
  for target in (rng.randrange(60, 140), rng.randrange(260, 340)):
    wait_for_step(tmp_path / 'run', target, run, timeout=300)
    time.sleep(rng.random() * 0.3)
    victim, survivor = (process_with_id(tmp_path / 'run', i) for i in (1, 0))
    killed_at = time.monotonic()
    os.kill(victim, 9)
    while alive(survivor) and time.monotonic() - killed_at < 60:
      time.sleep(0.2)
    assert time.monotonic() - killed_at < timeout + 15  # The survivor ended by itself.
  out, err = run.communicate(timeout=600)
  assert run.returncode == 0, err[-3000:]
  lines = [line for line in err.splitlines() if line.startswith('error: lost process 1 of 2')]
  assert len(lines) == 2 and all('the last complete checkpoint is step' in l for l in lines), err
  assert 'local.sh: finished; 2 of 3 restart(s) used' in err
  assert read_losses(tmp_path / 'run') == read_losses(tmp_path / 'baseline')
  got, want = (params_on_one_device(tmp_path / name) for name in ('run', 'baseline'))
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))

  bad = launcher(tmp_path / 'bad', '-r', '3', extra=['--config.mesh.data=3'])
  _, err = bad.communicate(timeout=120)
  assert bad.returncode == errors.EXIT_USAGE and 'restarting' not in err, err[-2000:]


# ------------------------------------------------------------- TPU and SLURM, against stand-ins

from test_launch import SLURM, TPU, TPU_FLAGS, bash, fake_slurm, fake_tpu, write_exe  # noqa: E402,F401

PLANNED_RUN = r'''
  #!/usr/bin/env bash
  # Attempt k of the run does what word k of $FAKE_PLAN says: 0, an exit status, or 'preempt'
  # (the slice is taken away under the run: its state becomes PREEMPTED, the ssh session drops).
  n=$(cat "$FAKE_ATTEMPTS" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_ATTEMPTS"
  read -ra plan <<<"$FAKE_PLAN"
  what=${plan[n]:-0}
  echo "attempt $((n + 1)): $what"
  if [[ "$what" == preempt ]]; then echo PREEMPTED > "$FAKE_STATE_FILE"; exit 255; fi
  exit "$what"
  '''


@pytest.fixture
def planned_tpu(fake_tpu, tmp_path):
  """The fake gcloud with a slice whose state lives in a file (create: READY, delete: gone)."""
  env, calls, logs = fake_tpu
  state = tmp_path / 'state'
  state.write_text('READY v5litepod-16\n')
  gcloud = pathlib.Path(env['PATH'].split(':')[0]) / 'gcloud'
  text = gcloud.read_text()
  assert 'case " $* " in' in text
  gcloud.write_text(text.replace('case " $* " in', '''case " $* " in
  *" create "*) echo READY > "$FAKE_STATE_FILE"; exit 0 ;;
  *" delete "*) rm -f "$FAKE_STATE_FILE"; exit 0 ;;
  *" describe "*) [[ -f "$FAKE_STATE_FILE" ]] && { cat "$FAKE_STATE_FILE"; exit 0; }
    echo "ERROR: NOT_FOUND: not found" >&2; exit 1 ;;
  *" scp "*) exit 0 ;;
  *"tar -xzf"*) exit 0 ;;  # An install: recorded, not run (it would fetch packages).''', 1))
  write_exe(pathlib.Path(env['FAKE_HOME']) / 'fastslow-jax' / '.venv' / 'bin' / 'python',
            PLANNED_RUN)
  env = {**env, 'FAKE_STATE_FILE': str(state), 'FAKE_ATTEMPTS': str(tmp_path / 'attempts')}
  return env, calls, logs


def tpu_run(planned_tpu, plan, *options):
  env, calls, logs = planned_tpu
  result = bash(TPU, *TPU_FLAGS, '--spot', f'--log-dir={logs}', *options, '--',
                '--workdir=gs://b/r', env={**env, 'FAKE_PLAN': plan})
  return result, calls.read_text()


def test_tpu_recreates_a_preempted_slice_and_reruns_a_lost_worker(planned_tpu):
  result, calls = tpu_run(planned_tpu, 'preempt 75 0', '--max-restarts=3')
  assert result.returncode == 0, result.stderr
  assert 'the slice is PREEMPTED (preempted); restarting it (restart 1 of 3)' in result.stderr
  assert 'a lost or stopped worker (statuses: 75); restarting it (restart 2 of 3)' in result.stderr
  assert 'Done (status 0; 2 of 3 restart(s) used)' in result.stdout
  assert calls.count(' delete pod ') == 1 and calls.count(' create pod ') == 1
  assert ('create pod --zone=us-central2-b --accelerator-type=v5litepod-16 '
          '--version=v2-alpha-tpuv5-lite --spot') in calls  # The type it had, Spot again.
  assert calls.count('tar -xzf') == 1  # Reinstalled on the new slice (not before: reused).


@pytest.mark.parametrize('plan,options,status,message', [
    ('2', ['--max-restarts=3'], 2, 'not restarting: a worker failed with status 2'),
    ('1', ['--max-restarts=3'], 1, 'not restarting: a worker failed with status 1'),
    ('75 75', ['--max-restarts=1'], 75, 'statuses: 75); no restart left'),
])
def test_tpu_does_not_restart_errors_or_past_its_budget(planned_tpu, plan, options, status,
                                                        message):
  result, _ = tpu_run(planned_tpu, plan, *options)
  assert result.returncode == status and message in result.stderr, result.stderr


@pytest.fixture
def planned_slurm(fake_slurm, tmp_path):
  """The fake srun with task 1 exiting as $FAKE_TASK1 says, and an scontrol that records."""
  env, project = fake_slurm
  bin_dir = pathlib.Path(env['PATH'].split(':')[0])
  scontrol = bin_dir / 'scontrol'
  scontrol.write_text(scontrol.read_text() +
                      '[[ "$1" == requeue ]] && echo "$*" >> "$FAKE_CALLS"\nexit 0\n')
  write_exe(project / '.venv' / 'bin' / 'python', r'''
    #!/usr/bin/env bash
    [[ "$SLURM_PROCID" == 1 ]] && exit "${FAKE_TASK1:-0}"
    exit 0
    ''')
  srun = bin_dir / 'srun'
  srun.write_text(srun.read_text().replace('"$@" > "${out//%t/$t}"',
                                           '"$@" > "${out//%t/$t}" || rc=$?') +
                  'exit "${rc:-0}"\n')
  return {**env, 'FAKE_CALLS': str(tmp_path / 'calls')}, project, tmp_path / 'calls'


@pytest.mark.parametrize('task1,restarts,count,requeued,message', [
    ('75', '2', '0', True, 'ended resumably (task 1: 75); requeueing job 4100 (restart 1 of 2)'),
    ('75', '2', '2', False, 'with no restart left (2 of 2 used)'),
    ('2', '2', '0', False, 'the run failed (task 1: 2; not resumable)'),
])
def test_slurm_requeues_a_resumable_end_within_its_budget(planned_slurm, task1, restarts, count,
                                                          requeued, message):
  env, project, calls = planned_slurm
  result = bash(SLURM, '--workdir=/x', cwd=project,
                env={**env, 'FAKE_TASK1': task1, 'FASTSLOW_MAX_RESTARTS': restarts,
                     'SLURM_RESTART_COUNT': count})
  assert result.returncode == int(task1) and message in result.stderr, result.stderr
  assert calls.exists() == requeued
  if requeued:
    assert calls.read_text().strip() == 'requeue 4100'
