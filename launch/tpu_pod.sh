#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (single host or pod): create or reuse the slice, install this
# project on every worker, run the same train command on all of them, collect the logs.
#
#   launch/tpu_pod.sh --project=my-project --zone=us-central2-b --tpu=fastslow-v4-32 \
#       --accelerator-type=v4-32 -- \
#       --config=configs/fastslow.py:arm=coupled,size=350m --workdir=gs://my-bucket/runs/c350m
#
# Everything after `--` goes to `python -m fastslow_jax.train` on every worker. On a pod, JAX
# finds its peers from the TPU environment (fastslow_jax.train calls jax.distributed.initialize()
# with no arguments when TPU_WORKER_HOSTNAMES lists several workers). Use a gs:// workdir: every
# worker writes its part of each checkpoint there. Needs the gcloud CLI, authenticated.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --project=P --zone=Z --tpu=NAME [options] -- TRAIN_ARGS...

required:
  --project=P            Google Cloud project
  --zone=Z               zone of the TPU (e.g. us-central2-b, us-east5-a)
  --tpu=NAME             TPU VM name; created if it does not exist
options:
  --accelerator-type=T   slice type when creating, e.g. v4-32, v5litepod-16, v6e-16 (default v4-8)
  --version=V            TPU VM runtime when creating (default tpu-ubuntu2204-base)
  --spot                 create a Spot (preemptible) slice
  --repo-dir=D           project directory on the workers, relative to the home directory
                         (default fastslow-jax)
  --log-dir=D            local directory for the collected logs (default logs/tpu-NAME-DATE)
  --skip-install         reuse the project already installed on the workers
  --delete-after         delete the slice when training ends
  -h, --help             this help
TRAIN_ARGS               arguments of `python -m fastslow_jax.train` (--config=..., --workdir=...)
EOF
}

project="" zone="" tpu="" accelerator="v4-8" version="tpu-ubuntu2204-base" spot=""
repo_dir=fastslow-jax log_dir="" install=1 delete_after=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project=*) project=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --tpu=*) tpu=${1#*=} ;;
    --accelerator-type=*) accelerator=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --spot) spot="--spot" ;;
    --repo-dir=*) repo_dir=${1#*=} ;;
    --log-dir=*) log_dir=${1#*=} ;;
    --skip-install) install=0 ;;
    --delete-after) delete_after=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "error: unknown option '$1' (train arguments go after --)" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
train_args=("$@")
for required in project zone tpu; do
  if [[ -z "${!required}" ]]; then echo "error: --$required is required" >&2; usage >&2; exit 2; fi
done
if [[ ${#train_args[@]} -eq 0 ]]; then
  echo "error: no train arguments: add -- --config=... --workdir=gs://..." >&2; exit 2
fi
command -v gcloud >/dev/null || { echo "error: the gcloud CLI is not installed" >&2; exit 2; }

here=$(cd "$(dirname "$0")/.." && pwd)
log_dir=${log_dir:-$here/logs/tpu-$tpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$log_dir"
gc=(gcloud --project="$project" compute tpus tpu-vm)

# 1. Create the slice, or reuse it.
if "${gc[@]}" describe "$tpu" --zone="$zone" >/dev/null 2>&1; then
  echo "Reusing TPU VM $tpu in $zone."
else
  echo "Creating TPU VM $tpu ($accelerator, $version) in $zone ..."
  "${gc[@]}" create "$tpu" --zone="$zone" --accelerator-type="$accelerator" \
    --version="$version" $spot
fi
on_all() { "${gc[@]}" ssh "$tpu" --zone="$zone" --worker=all --command="$1"; }

# 2. Ship this checkout (committed files) to every worker and install it with JAX for TPU.
if [[ $install -eq 1 ]]; then
  archive=$(mktemp -t fastslow-XXXXXX.tar.gz)
  git -C "$here" archive --format=tar.gz -o "$archive" HEAD
  "${gc[@]}" scp "$archive" "$tpu:/tmp/fastslow-jax.tar.gz" --zone="$zone" --worker=all
  rm -f "$archive"
  on_all "set -e; rm -rf $repo_dir && mkdir -p $repo_dir && tar -xzf /tmp/fastslow-jax.tar.gz -C $repo_dir
    cd $repo_dir && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[gcs]' 'jax[tpu]'"
fi

# 3. The same command on every worker; each worker's output is kept in its own log.
quoted=$(printf '%q ' "${train_args[@]}")
echo "Training on all workers of $tpu; logs in $log_dir"
status=0
on_all "cd $repo_dir && .venv/bin/python -m fastslow_jax.train $quoted 2>&1 | tee /tmp/fastslow-train.log" \
  > "$log_dir/all-workers.log" 2>&1 || status=$?

# 4. Collect each worker's log, whatever the outcome.
workers=$("${gc[@]}" describe "$tpu" --zone="$zone" --format='value(networkEndpoints.len())' || echo 1)
for ((w = 0; w < ${workers:-1}; w++)); do
  "${gc[@]}" scp "$tpu:/tmp/fastslow-train.log" "$log_dir/worker-$w.log" --zone="$zone" \
    --worker="$w" >/dev/null 2>&1 || echo "warning: no log from worker $w" >&2
done

if [[ $delete_after -eq 1 ]]; then
  "${gc[@]}" delete "$tpu" --zone="$zone" --quiet
fi
echo "Done (status $status). Logs: $log_dir"
exit "$status"
