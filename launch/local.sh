#!/usr/bin/env bash
# Runs N vmjax processes on this machine, on CPU, joined by jax.distributed over
# loopback: a test of multi-process training without a cluster.
#
# Usage: launch/local.sh N [--dry-run] [--port P] -- TRAINER_ARGS...
#   N           number of processes (a positive integer)
#   --dry-run   print the N commands, one per line, and run nothing (or DRY_RUN=1)
#   --port P    coordinator port on 127.0.0.1 (default: a free port picked now)
#   --help      this text
# Launcher options go before `--`; everything after it goes to
# `python -m vmjax.main` unchanged, followed by --coordinator_address,
# --num_processes and --process_id.
#
# Environment:
#   PYTHON    interpreter to run (default: python)
#   LOG_DIR   where process_I.log goes (default: .); process 0 also prints to the terminal
#
# The first process to fail stops the others (SIGTERM, then SIGKILL after 10 s, to
# each process group) and its exit status is returned; 0 when all succeed. Run it
# from the repository root unless vmjax is installed.
#
# Example:
#   launch/local.sh 2 -- --config configs/yt8m.py:smoke --workdir /tmp/two
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() {
    echo "local.sh: $*" >&2
    echo "Try 'launch/local.sh --help'." >&2
    exit 2
}

python=${PYTHON:-python}
log_dir=${LOG_DIR:-.}
dry_run=${DRY_RUN:-0}
port=""
num=""
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --dry-run) dry_run=1 ;;
        --port) (($# >= 2)) || die "--port needs a value"; port=$2; shift ;;
        --port=*) port=${1#--port=} ;;
        --) shift; break ;;
        -*) die "unknown option '$1' (trainer arguments go after '--')" ;;
        *) [[ -z $num ]] || die "unexpected argument '$1' (trainer arguments go after '--')"; num=$1 ;;
    esac
    shift
done
trainer_args=("$@")

[[ -n $num ]] || die "missing N, the number of processes"
[[ $num =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$num'"
((${#trainer_args[@]})) || die "missing trainer arguments after '--', e.g. -- --config configs/yt8m.py:smoke --workdir /tmp/w"
if [[ -n $port ]]; then
    if ! [[ $port =~ ^[1-9][0-9]*$ ]] || ((port > 65535)); then
        die "--port must be in 1..65535, got '$port'"
    fi
else
    # Bind to port 0 and let the OS choose; it stays free until process 0 binds it
    # unless something else grabs it in between.
    port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
        die "could not pick a free port with '$python'; pass --port P"
fi

# Sets `cmd` to the command line of process $1.
build_cmd() {
    cmd=("$python" -m vmjax.main "${trainer_args[@]}"
        "--coordinator_address=127.0.0.1:$port" "--num_processes=$num" "--process_id=$1")
}

if [[ $dry_run == 1 ]]; then
    for ((i = 0; i < num; i++)); do
        build_cmd "$i"
        log=$(printf '%q' "$log_dir/process_$i.log")
        if ((i == 0)); then
            redirect="2>&1 | tee $log"
        else
            redirect="> $log 2>&1"
        fi
        echo "JAX_PLATFORMS=cpu $(printf '%q ' "${cmd[@]}")$redirect"
    done
    exit 0
fi

mkdir -p "$log_dir"
pids=()
stop_all() {
    local pid deadline
    ((${#pids[@]})) || return 0
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
trap stop_all EXIT
trap 'echo "local.sh: interrupted; stopping all processes." >&2; exit 130' INT
trap 'exit 143' TERM

# Job control while starting gives each process its own process group, so stopping
# a process also stops whatever it started (e.g. data-loading workers).
set -m
for ((i = 0; i < num; i++)); do
    build_cmd "$i"
    log=$log_dir/process_$i.log
    if ((i == 0)); then
        JAX_PLATFORMS=cpu "${cmd[@]}" </dev/null > >(tee "$log") 2>&1 &
    else
        JAX_PLATFORMS=cpu "${cmd[@]}" </dev/null >"$log" 2>&1 &
    fi
    pids[i]=$!
done
set +m
echo "local.sh: started $num processes, coordinator 127.0.0.1:$port, logs in $log_dir/process_*.log" >&2

# Poll rather than `wait -n`: polling tells which process ended, on any bash.
running=("${pids[@]}")
while ((${#running[@]})); do
    for i in "${!running[@]}"; do
        kill -0 "${running[i]}" 2>/dev/null && continue
        status=0
        wait "${running[i]}" || status=$?
        unset 'running[i]'
        if ((status != 0)); then
            echo "local.sh: process $i exited with status $status; stopping the others." >&2
            if ((i != 0)); then # process 0 already printed its output
                echo "local.sh: last lines of $log_dir/process_$i.log:" >&2
                tail -n 20 "$log_dir/process_$i.log" >&2 || true
            fi
            exit "$status"
        fi
    done
    sleep 0.2
done
pids=()
echo "local.sh: all $num processes finished." >&2
