#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (one host or a pod): create or reuse the slice, install this
# checkout on every worker, run the same command on all workers, collect every worker's log.
#
#   launch/tpu_pod.sh --project=my-project --zone=us-central2-b --tpu=fastslow-v4-32 \
#       --accelerator-type=v4-32 -- \
#       --config=configs/fastslow.py:arm=coupled,size=350m --workdir=gs://my-bucket/runs/c350m
#
# Everything after `--` goes to `python -m fastslow_jax.train` (or --module) on every worker.
# Each worker reads its rank and the worker list from the TPU metadata server and passes them to
# JAX as JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (coordinator: worker 0,
# port 8482). Training runs under nohup: a dropped connection does not stop it; Ctrl-C here sends
# SIGTERM to every worker (checkpoint, then exit) and waits for them. Needs the gcloud CLI,
# authenticated (`gcloud auth login`), and a gs:// workdir on pods: every worker writes its part
# of each checkpoint there.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --project=P --zone=Z --tpu=NAME [options] -- ARGS...
       launch/tpu_pod.sh --project=P --zone=Z --tpu=NAME --stop

Creates (or reuses) TPU VM NAME, installs this checkout on every worker, runs
`python -m fastslow_jax.train ARGS...` on all workers at once, and collects their logs.

required (or from the environment):
  --project=P            Google Cloud project                 (default: $CLOUDSDK_CORE_PROJECT)
  --zone=Z               zone of the TPU, e.g. us-central2-b  (default: $CLOUDSDK_COMPUTE_ZONE)
  --tpu=NAME             TPU VM name                          (default: $TPU_NAME)
options:
  --accelerator-type=T   slice to create if NAME does not exist, e.g. v4-32, v5p-16,
                         v5litepod-16, v6e-16 (required then; ignored when reusing)
  --version=V            TPU software version when creating (default by type: v4
                         tpu-ubuntu2204-base, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite,
                         v6e v2-alpha-tpuv6e)
  --spot                 create a Spot (preemptible) slice
  --module=M             Python module to run (default fastslow_jax.train; e.g.
                         fastslow_jax.evaluate)
  --env=NAME=VALUE       environment variable for the run on every worker (repeatable),
                         e.g. --env=LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true
  --repo-dir=D           project directory on the workers, relative to the home directory
                         (default fastslow-jax)
  --log-dir=D            local directory for the logs (default logs/tpu-NAME-DATE): the live
                         stream of all workers in all-workers.log, and one log per worker
  --skip-install         run the copy already installed on the workers
  --delete-after         delete the TPU VM when the run ends (whatever its outcome)
  --max-restarts=N       run again, up to N times, when the run ends resumably: a lost worker
                         (its host gone, or killed), a worker stopped by its peers' watch or
                         by a preemption signal (exit 75), or a preempted slice, which is
                         deleted, created again (as a Spot slice with --spot) and reinstalled;
                         never after bad input (2) or a crash / non-finite loss (1) (default 0)
  --stop                 send SIGTERM to a run started earlier (it checkpoints and exits) and
                         wait for it (SIGKILL after 10 minutes); no ARGS
  -h, --help             this help

Exit status: the run's last attempt's (non-zero if any worker failed); 2 for bad arguments.
EOF
}

die() { echo "tpu_pod.sh: error: $*" >&2; exit 2; }

project=${CLOUDSDK_CORE_PROJECT:-} zone=${CLOUDSDK_COMPUTE_ZONE:-} tpu=${TPU_NAME:-}
accelerator="" version="" spot=() module=fastslow_jax.train envs=() repo_dir=fastslow-jax
log_dir="" install=1 delete_after=0 stop_only=0 max_restarts=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project=*) project=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --tpu=*) tpu=${1#*=} ;;
    --accelerator-type=*) accelerator=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --spot) spot=(--spot) ;;
    --module=*) module=${1#*=} ;;
    --env=*) envs+=("${1#*=}") ;;
    --repo-dir=*) repo_dir=${1#*=} ;;
    --log-dir=*) log_dir=${1#*=} ;;
    --skip-install) install=0 ;;
    --delete-after) delete_after=1 ;;
    --max-restarts=*) max_restarts=${1#*=} ;;
    --stop) stop_only=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; die "unknown option '$1' (arguments of the run go after --)" ;;
  esac
  shift
done
args=("$@")
[[ -n "$project" ]] || die "--project is required (or set CLOUDSDK_CORE_PROJECT)"
[[ -n "$zone" ]] || die "--zone is required (or set CLOUDSDK_COMPUTE_ZONE)"
[[ -n "$tpu" ]] || die "--tpu is required (or set TPU_NAME)"
[[ "$module" =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || die "--module takes a Python module, got '$module'"
[[ "$repo_dir" =~ ^[A-Za-z0-9._/-]+$ && "$repo_dir" != /* ]] ||
  die "--repo-dir must be a plain path relative to the home directory, got '$repo_dir'"
[[ "$max_restarts" =~ ^[0-9]+$ ]] ||
  die "--max-restarts takes a number of restarts, got '$max_restarts'"
for env in ${envs[@]+"${envs[@]}"}; do
  [[ "$env" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env takes NAME=VALUE, got '$env'"
done
if ((stop_only)); then
  ((${#args[@]} == 0)) || die "--stop takes no arguments after --"
elif ((${#args[@]} == 0)); then
  die "nothing to run: add -- --config=... --workdir=gs://..."
fi
command -v gcloud >/dev/null || die "the gcloud CLI is not installed (https://cloud.google.com/sdk)"

gc=(gcloud --project="$project" compute tpus tpu-vm)
on_all() { "${gc[@]}" ssh "$tpu" --zone="$zone" --worker=all --command="$1" "${@:2}"; }
pidfile="$repo_dir/logs/run.pid"
# Sends SIGTERM to the run on every worker and waits until it has exited (SIGKILL after 10 min).
stop_remote() {
  on_all "pid=\$(cat $pidfile 2>/dev/null) || exit 0; kill -TERM \$pid 2>/dev/null || exit 0
    for i in \$(seq 300); do kill -0 \$pid 2>/dev/null || exit 0; sleep 2; done; kill -KILL \$pid"
}
if ((stop_only)); then
  echo "Sending SIGTERM to the run on every worker of $tpu; waiting for it to exit."
  stop_remote
  exit 0
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run=run-$(date +%Y%m%d-%H%M%S)
log_dir=${log_dir:-$here/logs/tpu-$tpu-${run#run-}}
mkdir -p "$log_dir"

# 1. Create the slice, or reuse it.
slice_state() {  # Sets state (READY, PREEMPTED, ...; '' when the slice does not exist).
  local out
  if ! out=$("${gc[@]}" describe "$tpu" --zone="$zone" --format='value(state,acceleratorType)' \
      2>&1); then
    # A missing TPU is NOT_FOUND; anything else (auth, API, project) is gcloud's own message.
    [[ "$out" == *NOT_FOUND* || "$out" == *"not found"* ]] || die "gcloud: $out"
    out=""
  fi
  read -r state type <<<"$out" || true
  # Remembered, to create the slice again should it be preempted.
  [[ -n "$accelerator" || -z "${type:-}" ]] || accelerator=$type
}
create_slice() {
  [[ -n "$accelerator" ]] ||
    die "TPU VM $tpu does not exist in $zone: give --accelerator-type to create it"
  if [[ -z "$version" ]]; then
    case "$accelerator" in
      v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
      v5p-*) version=v2-alpha-tpuv5 ;;
      v6e-*) version=v2-alpha-tpuv6e ;;
      *) version='tpu-ubuntu2204-base' ;;
    esac
  fi
  echo "Creating TPU VM $tpu ($accelerator, $version) in $zone ..."
  "${gc[@]}" create "$tpu" --zone="$zone" --accelerator-type="$accelerator" --version="$version" \
    ${spot[@]+"${spot[@]}"}
}
slice_state
if [[ -z "$state" ]]; then
  create_slice
elif [[ "$state" != READY ]]; then
  die "TPU VM $tpu is $state, not READY: start it (gcloud compute tpus tpu-vm start $tpu" \
    "--zone=$zone) or, if preempted, delete it (... delete $tpu --zone=$zone) and rerun"
else
  echo "Reusing TPU VM $tpu in $zone."
fi

# 2. Ship this checkout (tracked and untracked files, not ignored ones) to every worker; install
#    it in a Python 3.12 virtualenv (made by uv, which fetches 3.12 if the image lacks it) with
#    JAX for TPU. A virtualenv from an earlier install is kept and updated.
install_all() {
  archive=$(mktemp "${TMPDIR:-/tmp}/fastslow-XXXXXX")
  if git -C "$here" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$here" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done |
      tar --null -T - -czf "$archive")
  else
    tar -C "$here" --exclude=.venv --exclude=.git --exclude=logs --exclude=runs \
      --exclude=workdirs --exclude=__pycache__ -czf "$archive" .
  fi
  echo "Installing on every worker of $tpu (~$(du -k "$archive" | cut -f1) KiB of sources) ..."
  "${gc[@]}" scp "$archive" "$tpu:/tmp/fastslow-jax.tar.gz" --zone="$zone" --worker=all
  rm -f "$archive"
  on_all "set -e; d=$repo_dir; rm -rf \$d.new; mkdir -p \$d.new \$d
    tar -xzf /tmp/fastslow-jax.tar.gz -C \$d.new; rm -f /tmp/fastslow-jax.tar.gz
    for keep in .venv logs; do if [ -e \$d/\$keep ]; then mv \$d/\$keep \$d.new/; fi; done
    rm -rf \$d; mv \$d.new \$d; cd \$d; export PATH=\$HOME/.local/bin:\$PATH
    command -v uv >/dev/null || python3 -m pip install -q --user uv ||
      python3 -m pip install -q --user --break-system-packages uv
    uv venv -q --allow-existing --python 3.12 .venv
    uv pip install -q --python .venv/bin/python -e '.[gcs]' 'jax[tpu]'"
}
((install == 0)) || install_all

# 3. The same command on every worker, under nohup; this stream shows all workers' output. Each
#    worker records the run's exit status in logs/RUN.status.
quoted=$(printf ' %q' "${args[@]}")
env_quoted=""
((${#envs[@]} == 0)) || env_quoted=$(printf ' %q' "${envs[@]}")
remote="set -e; cd $repo_dir; mkdir -p logs
md() { curl -sf -H 'Metadata-Flavor: Google' \
  http://\${GCE_METADATA_IP:-metadata.google.internal}/computeMetadata/v1/instance/attributes/\$1; }
endpoints=\$(md worker-network-endpoints || true)
workers=\$(printf '%s' \"\$endpoints\" | tr ',' '\n' | grep -c . || true)
if [ \"\$workers\" -gt 1 ]; then
  export JAX_COORDINATOR_ADDRESS=\$(printf '%s' \"\${endpoints%%,*}\" | awk -F: '{print \$NF}'):8482
  export JAX_NUM_PROCESSES=\$workers JAX_PROCESS_ID=\$(md agent-worker-number)
fi
: >> logs/$run.log; rm -f logs/$run.status
offset=\$((\$(wc -c < logs/$run.log) + 1))  # This attempt's output: a restart appends.
nohup env${env_quoted} .venv/bin/python -m $module${quoted} >> logs/$run.log 2>&1 < /dev/null &
pid=\$!; echo \$pid > logs/run.pid
tail -c +\$offset -f --pid=\$pid logs/$run.log || true
wait \$pid && rc=0 || rc=\$?
echo \$rc > logs/$run.status; rm -f logs/run.pid
exit \$rc"
for arg in "${args[@]}"; do
  if [[ "$arg" == --workdir=* && "$arg" != --workdir=gs://* ]]; then
    echo "warning: $arg is not on GCS: on a pod every worker must see the workdir" \
      "(use --workdir=gs://BUCKET/...)" >&2
  fi
done
echo "Running on every worker of $tpu: python -m $module${quoted}"
echo "Logs: $log_dir (Ctrl-C stops the run with a checkpoint)"
interrupted=0
trap 'interrupted=1' INT
worker_statuses() {  # One line per worker: its run's exit status, or 'lost' when there is none.
  on_all "cat $repo_dir/logs/$run.status 2>/dev/null || echo lost" 2>/dev/null | grep -Ex '[0-9]+|lost' ||
    echo lost
}
resumable() {  # Sets why; true when every failure was a lost worker or a resumable stop.
  local code
  slice_state
  if [[ "$state" != READY ]]; then
    why="the slice is ${state:-gone} (preempted)"
    return 0
  fi
  why=""
  for code in $(worker_statuses); do
    case "$code" in
      0) continue ;;
      lost|75|134|137|143|255) why+="${why:+, }$code" ;;
      *) why="a worker failed with status $code"; return 1 ;;
    esac
  done
  [[ -n "$why" ]] || { why="the run failed (status $status)"; return 1; }
  why="a lost or stopped worker (statuses: $why)"
}
used=0
while true; do
  status=0
  on_all "$remote" 2>&1 | tee -a "$log_dir/all-workers.log" || status=$?
  if ((interrupted)); then
    echo "Interrupted: sending SIGTERM to the run on every worker; waiting for it to exit ..."
    trap - INT
    stop_remote || true
    status=130
    break
  fi
  ((status != 0)) || break
  if ! resumable; then
    ((max_restarts == 0)) || echo "tpu_pod.sh: not restarting: $why" >&2
    break
  fi
  if ((used >= max_restarts)); then
    ((max_restarts == 0)) || echo "tpu_pod.sh: $why; no restart left" >&2
    break
  fi
  used=$((used + 1))
  echo "tpu_pod.sh: the run ended: $why; restarting it (restart $used of $max_restarts)" >&2
  if [[ "$state" != READY ]]; then
    [[ -z "$state" ]] || "${gc[@]}" delete "$tpu" --zone="$zone" --quiet
    create_slice
    install_all
  fi
done

# 4. Each worker's own log, whatever the outcome (one file per worker in the log directory).
on_all "cat $repo_dir/logs/$run.log" --output-directory="$log_dir" >/dev/null 2>&1 ||
  echo "warning: could not fetch every worker's log ($repo_dir/logs/$run.log on the workers)" >&2
if ((delete_after)); then
  "${gc[@]}" delete "$tpu" --zone="$zone" --quiet
fi
echo "Done (status $status; $used of $max_restarts restart(s) used). Logs: $log_dir"
exit "$status"
