#!/usr/bin/env bash
# Run N JAX processes on this machine, each with M simulated CPU devices: a multi-host job in
# miniature, for tests and for trying multi-process code without accelerators.
#
#   launch/local.sh -n 2 -d 4 -- python -m fastslow_jax.train \
#       --config=configs/fastslow.py:arm=coupled,size=tiny --workdir=runs/mp
#   launch/local.sh -n 2 -d 4 -- python -m fastslow_jax.evaluate --workdir=runs/mp
#
# Each process gets JAX_COORDINATOR_ADDRESS=127.0.0.1:<port>, JAX_NUM_PROCESSES=N and
# JAX_PROCESS_ID=i (read by fastslow_jax.train and fastslow_jax.evaluate), JAX_PLATFORMS=cpu and
# XLA_FLAGS=--xla_force_host_platform_device_count=M. Process 0 prints to the terminal; process
# i > 0 writes LOG_DIR/process_<i>.log. If one process fails, the others get SIGTERM (SIGKILL
# after the grace period) and the exit status is the first failure's. SIGINT / SIGTERM / SIGHUP
# are forwarded to every process (a second one kills them); train then checkpoints and stops.
#
# With -r N, a run that ends because a process was lost (killed, or ended by its peers' watch:
# exit 75) is started again, every process, up to N times; train resumes from the last complete
# checkpoint. A run that fails otherwise (bad input: 2, a crash or a non-finite loss: 1) is not.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/local.sh [-n PROCESSES] [-d DEVICES] [-p PORT] [-l LOG_DIR] [-g SECONDS] \
                       [-r RESTARTS] -- COMMAND [ARGS...]

Runs COMMAND as PROCESSES cooperating JAX processes on this machine (CPU only).

  -n PROCESSES  number of processes (default 2)
  -d DEVICES    simulated CPU devices per process (default 4)
  -p PORT       coordinator port on 127.0.0.1 (default: a free port)
  -l LOG_DIR    directory for process_<i>.log, i > 0 (default: WORKDIR/logs when COMMAND has
                --workdir=WORKDIR on a local path, else a new temporary directory)
  -g SECONDS    grace period between SIGTERM and SIGKILL when stopping processes (default 60:
                longer than train's peer timeout, 30 s, so survivors of a lost process end
                with their own line)
  -r RESTARTS   start every process again, up to RESTARTS times, when a run ends by a lost
                process (killed by a signal) or a resumable stop (exit 75) (default 0)
  -h, --help    this help

Exit status: 0 if every process succeeded, else the first failure's status of the last attempt
(128+signal when interrupted); 2 for bad arguments.
EOF
}

die() { echo "local.sh: error: $*" >&2; exit 2; }

[[ "${1:-}" == "--help" ]] && { usage; exit 0; }
processes=2 devices=4 port="" log_dir="" grace=60 restarts=0
while getopts ":n:d:p:l:g:r:h" opt; do
  case "$opt" in
    n) processes=$OPTARG ;;
    d) devices=$OPTARG ;;
    p) port=$OPTARG ;;
    l) log_dir=$OPTARG ;;
    g) grace=$OPTARG ;;
    r) restarts=$OPTARG ;;
    h) usage; exit 0 ;;
    :) usage >&2; die "-$OPTARG needs a value" ;;
    *) usage >&2; die "unknown option -$OPTARG" ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
[[ $# -gt 0 ]] || { usage >&2; die "no command given: put it after --"; }
[[ "$processes" =~ ^[1-9][0-9]*$ ]] || die "-n takes a positive integer, got '$processes'"
[[ "$devices" =~ ^[1-9][0-9]*$ ]] || die "-d takes a positive integer, got '$devices'"
[[ "$grace" =~ ^[0-9]+$ ]] || die "-g takes a number of seconds, got '$grace'"
[[ "$restarts" =~ ^[0-9]+$ ]] || die "-r takes a number of restarts, got '$restarts'"
if [[ -n "$port" ]] && ! { [[ "$port" =~ ^[1-9][0-9]*$ ]] && ((port < 65536)); }; then
  die "-p takes a port number (1-65535), got '$port'"
fi

fixed_port=$port
free_port() {  # A port nobody listens on now (each attempt gets its own coordinator).
  local python
  python=$(command -v python3 || command -v python) || die "no python3 to find a free port: use -p"
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}
[[ -n "$port" ]] || port=$(free_port)
# Default log directory: WORKDIR/logs for a local --workdir=WORKDIR (or --workdir WORKDIR).
if [[ -z "$log_dir" ]] && ((processes > 1)); then
  workdir="" previous=""
  for arg in "$@"; do
    case "$arg" in --workdir=*) workdir=${arg#--workdir=} ;; esac
    [[ "$previous" == "--workdir" ]] && workdir=$arg
    previous=$arg
  done
  if [[ -n "$workdir" && "$workdir" != *://* ]]; then
    log_dir=$workdir/logs
  else
    log_dir=$(mktemp -d "${TMPDIR:-/tmp}/fastslow-local-XXXXXX")
  fi
fi
((processes == 1)) || mkdir -p "$log_dir"

if ((processes > 1)); then
  echo "local.sh: $processes processes x $devices CPU devices, coordinator 127.0.0.1:$port;" \
    "logs of processes 1-$((processes - 1)) in $log_dir" >&2
fi
# Each process leads its own session where setsid exists: a Ctrl-C in the terminal reaches the
# processes once, through this script, and stopping one stops whatever it started.
setsid=()
command -v setsid >/dev/null && setsid=(setsid)
start() {  # start I COMMAND...: process I, in the background.
  local i=$1
  shift
  export JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$processes" \
    JAX_PROCESS_ID="$i" JAX_PLATFORMS=cpu \
    XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"  # Last wins.
  if ((i == 0)); then  # Its stderr is the terminal's (fd 3), like this script's messages.
    exec ${setsid[@]+"${setsid[@]}"} "$@" 2>&3 3>&-
  else  # Appended: a restarted run's processes continue their logs.
    exec ${setsid[@]+"${setsid[@]}"} "$@" >>"$log_dir/process_$i.log" 2>&1 3>&-
  fi
}
# From here on, messages go to fd 3: bash's own "Killed" job reports to stderr are dropped.
exec 3>&2 2>/dev/null

pids=() running=() statuses=()
signal_all() {  # signal_all SIG: every process still running (its whole session with setsid).
  local pid
  for pid in ${running[@]+"${running[@]}"}; do
    if ((${#setsid[@]})); then
      kill -s "$1" -- "-$pid" 2>/dev/null || kill -s "$1" "$pid" 2>/dev/null || true
    else
      kill -s "$1" "$pid" 2>/dev/null || true
    fi
  done
}
interrupted=0 deadline="" others=""
((processes == 1)) || others="; stopping the others (logs: $log_dir)"
stop() {  # stop SIG: ask every process to stop; SIGKILL after the grace period.
  signal_all "$1"
  [[ -n "$deadline" ]] || deadline=$((SECONDS + grace))
}
# shellcheck disable=SC2317,SC2329  # Invoked by the traps below.
on_signal() {  # on_signal SIG NUMBER
  if ((interrupted)); then
    echo "local.sh: second $1: killing every process" >&3
    signal_all KILL
  else
    interrupted=$2
    echo "local.sh: $1: forwarding it to every process" >&3
    stop "$1"
  fi
}
trap 'on_signal INT 2' INT
trap 'on_signal TERM 15' TERM
trap 'on_signal HUP 1' HUP

attempt() {  # attempt COMMAND...: every process once; statuses[i] is process i's exit status,
  local i pid code  # status the first failure's in the order they ended (0: none).
  pids=() statuses=() deadline="" status=0
  for ((i = 0; i < processes; i++)); do
    start "$i" "$@" &
    pids+=("$!")
    statuses+=(0)
  done
  running=("${pids[@]}")
  while ((${#running[@]} > 0)); do
    local still=() ended=()
    for pid in "${running[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then still+=("$pid"); else ended+=("$pid"); fi
    done
    running=(${still[@]+"${still[@]}"})
    for pid in ${ended[@]+"${ended[@]}"}; do
      code=0
      wait "$pid" || code=$?
      ((code == 0)) && continue
      for i in "${!pids[@]}"; do [[ "${pids[i]}" == "$pid" ]] && break; done
      statuses[i]=$code
      ((status != 0)) || status=$code
      if [[ -n "$deadline" ]]; then  # Already stopping.
        echo "local.sh: process $i exited with status $code" >&3
      else
        echo "local.sh: process $i exited with status $code$others" >&3
        stop TERM
      fi
    done
    if [[ -n "$deadline" ]] && ((SECONDS >= deadline && ${#running[@]} > 0)); then
      echo "local.sh: ${#running[@]} process(es) still running after ${grace}s: SIGKILL" >&3
      signal_all KILL
      deadline=$((SECONDS + 3600))
    fi
    ((${#running[@]} == 0)) || sleep 0.2
  done
}

resumable() {  # Every failure is a lost process (killed by a signal) or a resumable stop (75).
  local code any=0
  for code in "${statuses[@]}"; do
    case "$code" in
      0) ;;
      75|134|137|143) any=1 ;;  # 134: JAX's coordination service aborting a survivor.
      *) return 1 ;;
    esac
  done
  ((any))
}
describe() {  # "process 1: 137, process 0: 75" for the processes that failed.
  local i text=""
  for i in "${!statuses[@]}"; do
    ((statuses[i] == 0)) || text+="${text:+, }process $i: ${statuses[i]}"
  done
  echo "$text"
}

used=0
while true; do
  attempt "$@"
  if ((status == 0 || interrupted)) || ! resumable || ((used >= restarts)); then
    break
  fi
  used=$((used + 1))
  echo "local.sh: attempt $used ended by a lost process ($(describe)); restarting every" \
    "process (restart $used of $restarts)" >&3
  [[ -n "$fixed_port" ]] || port=$(free_port)
done
if ((restarts > 0)); then
  if ((status == 0)); then
    echo "local.sh: finished; $used of $restarts restart(s) used" >&3
  else
    why="not resumable"
    ((interrupted)) && why="interrupted"
    resumable && ((!interrupted)) && why="no restart left"
    echo "local.sh: failed ($(describe); $why); $used of $restarts restart(s) used" >&3
  fi
fi
if ((status == 0 && interrupted)); then status=$((128 + interrupted)); fi
exit "$status"
