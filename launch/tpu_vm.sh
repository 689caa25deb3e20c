#!/usr/bin/env bash
# Trains vmjax on every worker of a Cloud TPU VM slice at once, over gcloud ssh.
# On a multi-worker slice vmjax.main calls jax.distributed.initialize(), which
# finds the other workers by itself.
#
# Usage: launch/tpu_vm.sh TPU_NAME ZONE [OPTIONS] -- TRAINER_ARGS...
#   --project P     Google Cloud project (default: gcloud's configured one)
#   --repo-dir D    the vmjax checkout on every worker (default: ~/vmjax)
#   --python P      interpreter on the workers (default: python3; e.g. ~/venv/bin/python)
#   --dry-run       print the gcloud command and run nothing (or DRY_RUN=1)
#   --help          this text
# Launcher options go before `--`; everything after it goes to
# `python -m vmjax.main` on each worker, each argument quoted for the remote shell.
# The checkout and its dependencies must already be on every worker, and the
# workdir must be a POSIX path they all see (NFS, a Filestore or gcsfuse mount):
# metrics and config are written with plain file I/O.
#
# Environment: GCLOUD, the gcloud binary (default: gcloud).
#
# Example:
#   launch/tpu_vm.sh my-tpu us-central2-b -- --config configs/yt8m.py --workdir /mnt/shared/run1
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() {
    echo "tpu_vm.sh: $*" >&2
    echo "Try 'launch/tpu_vm.sh --help'." >&2
    exit 2
}
need_value() { (($# >= 2)) || die "$1 needs a value"; }

dry_run=${DRY_RUN:-0}
project=""
# shellcheck disable=SC2088 # the ~ is for the worker's shell to expand
repo_dir="~/vmjax"
python=python3
positional=()
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --dry-run) dry_run=1 ;;
        --project) need_value "$@"; project=$2; shift ;;
        --project=*) project=${1#*=} ;;
        --repo-dir | --repo_dir) need_value "$@"; repo_dir=$2; shift ;;
        --repo-dir=* | --repo_dir=*) repo_dir=${1#*=} ;;
        --python) need_value "$@"; python=$2; shift ;;
        --python=*) python=${1#*=} ;;
        --) shift; break ;;
        -*) die "unknown option '$1' (trainer arguments go after '--')" ;;
        *) positional+=("$1") ;;
    esac
    shift
done

((${#positional[@]} >= 1)) || die "missing TPU_NAME and ZONE"
((${#positional[@]} >= 2)) || die "missing ZONE (e.g. us-central2-b)"
((${#positional[@]} == 2)) ||
    die "unexpected argument '${positional[2]}' (trainer arguments go after '--')"
tpu_name=${positional[0]}
zone=${positional[1]}
(($#)) || die "missing trainer arguments after '--', e.g. -- --config configs/yt8m.py --workdir /mnt/shared/run"
[[ -n $repo_dir ]] || die "--repo-dir must not be empty"
[[ -n $python ]] || die "--python must not be empty"

# Quotes a path for the remote shell, leaving a leading ~ to expand there.
# shellcheck disable=SC2088
remote_path() {
    case $1 in
        "~") printf '~' ;;
        "~/"*) printf '~/%q' "${1#"~/"}" ;;
        *) printf '%q' "$1" ;;
    esac
}
remote="cd $(remote_path "$repo_dir") && $(remote_path "$python") -m vmjax.main$(printf ' %q' "$@")"

cmd=("${GCLOUD:-gcloud}" compute tpus tpu-vm ssh "$tpu_name" --zone "$zone")
if [[ -n $project ]]; then
    cmd+=(--project "$project")
fi
cmd+=(--worker=all --command "$remote")

if [[ $dry_run == 1 ]]; then
    # The remote command in single quotes reads better than %q's backslashes.
    printf '%q ' "${cmd[@]:0:${#cmd[@]}-1}"
    printf "'%s'\n" "${remote//\'/\'\\\'\'}"
    exit 0
fi
exec "${cmd[@]}"
