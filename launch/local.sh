#!/usr/bin/env bash
# Run N JAX processes on this machine, each with M simulated CPU devices: a multi-host job in
# miniature, for tests and for users without accelerators.
#
#   launch/local.sh -n 2 -d 4 -- python -m fastslow_jax.train \
#       --config=configs/fastslow.py:arm=coupled,size=tiny --workdir=runs/mp
#
# Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (read by
# fastslow_jax.train and fastslow_jax.evaluate), JAX_PLATFORMS=cpu and
# XLA_FLAGS=--xla_force_host_platform_device_count=M. Process 0 prints to the terminal; process i
# logs to LOG_DIR/process_i.log. If one process fails, the others are stopped and the exit status
# is the first failure's; SIGINT / SIGTERM are forwarded to every process.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/local.sh [-n PROCESSES] [-d DEVICES] [-p PORT] [-l LOG_DIR] -- COMMAND [ARGS...]

  -n PROCESSES  number of processes (default 2)
  -d DEVICES    simulated CPU devices per process (default 4)
  -p PORT       coordinator port on 127.0.0.1 (default: a free port)
  -l LOG_DIR    where process_<i>.log files go for i > 0 (default: a new temporary directory)
  -h            this help
EOF
}

processes=2 devices=4 port="" log_dir=""
while getopts ":n:d:p:l:h" opt; do
  case "$opt" in
    n) processes=$OPTARG ;;
    d) devices=$OPTARG ;;
    p) port=$OPTARG ;;
    l) log_dir=$OPTARG ;;
    h) usage; exit 0 ;;
    :) echo "error: -$OPTARG needs a value" >&2; usage >&2; exit 2 ;;
    *) echo "error: unknown option -$OPTARG" >&2; usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if [[ $# -eq 0 ]]; then
  echo "error: no command given: put it after --" >&2; usage >&2; exit 2
fi
for value in "$processes" "$devices"; do
  if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: -n and -d take positive integers, got '$value'" >&2; exit 2
  fi
done
if [[ -z "$port" ]]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
log_dir=${log_dir:-$(mktemp -d -t fastslow-local-XXXXXX)}
mkdir -p "$log_dir"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap 'stop_all' INT TERM

for ((i = 0; i < processes; i++)); do
  (
    export JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$processes" \
      JAX_PROCESS_ID="$i" JAX_PLATFORMS=cpu \
      XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"  # Last wins.
    if [[ $i -eq 0 ]]; then exec "$@"; else exec "$@" >"$log_dir/process_$i.log" 2>&1; fi
  ) &
  pids+=($!)
done
[[ $processes -gt 1 ]] && echo "local.sh: $processes processes x $devices devices; logs of processes 1.. in $log_dir" >&2

status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  set +e
  wait -n -p finished "${running[@]}"  # bash >= 5.1
  code=$?
  set -e
  for k in "${!running[@]}"; do [[ "${running[k]}" == "$finished" ]] && unset 'running[k]'; done
  if ((code != 0 && status == 0)); then
    status=$code
    echo "local.sh: a process exited with status $code; stopping the others (logs: $log_dir)" >&2
    stop_all
  fi
done
exit "$status"
