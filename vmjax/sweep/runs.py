"""A sweep directory's layout, the markers that say how each run ended, and the task wrapper.

OUT/sweep.json             the config and --set overrides every run shares (checked on resume)
OUT/runs/<name>/run.json   the run: overrides, seed, final step, command
OUT/runs/<name>/log.txt    vmjax.main's output (appended on each attempt)
OUT/runs/<name>/DONE       vmjax.main exited 0 and metrics.jsonl has the final step
OUT/runs/<name>/FAILED     the last attempt failed (exit status, or no final evaluation)
OUT/runs/<name>/RUNNING    an attempt is under way (pid, host, SLURM job)
OUT/results.json, OUT/results.md   vmjax.sweep.gather

Every launcher starts a run through `run_task` (python -m vmjax.sweep _task), locally or as a
SLURM array task, so a run's markers mean the same whichever launcher ran it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Sequence

from vmjax.sweep.grid import Run, SweepError

DONE, FAILED, RUNNING = "DONE", "FAILED", "RUNNING"
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
)


def run_dir(out: str, name: str) -> str:
    return os.path.join(out, "runs", name)


def mark_running(directory: str, marker: dict) -> None:
    """A run starts: its old DONE/FAILED markers go, RUNNING holds `marker` (who runs it)."""
    for name in (DONE, FAILED):
        if os.path.exists(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))
    write_json(os.path.join(directory, RUNNING), marker)


def record_end(directory: str, result: dict, final_step: int, reason: str | None) -> None:
    """A run ended: DONE (reason None) or FAILED with `reason` (also printed); RUNNING goes."""
    if reason is None:
        write_json(os.path.join(directory, DONE), {**result, "final_step": final_step})
    else:
        write_json(os.path.join(directory, FAILED), {**result, "reason": reason})
        print(f"vmjax.sweep: {directory}: {reason}; see its log.txt", file=sys.stderr)
    os.remove(os.path.join(directory, RUNNING))


def write_json(path: str, value) -> None:
    """Writes `value` as JSON atomically (a reader never sees half a file)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError) as e:
        raise SweepError(f"{path}: not readable JSON ({e})") from None


def check_sweep(out: str, config: str, sets: Sequence[str], record: bool = True) -> None:
    """Checks a resumed sweep uses the same shared settings; records them on the first launch."""
    path = os.path.join(out, "sweep.json")
    shared = {"config": config, "set": list(sets)}
    saved = read_json(path)
    if saved is None:
        if not record:
            return
        os.makedirs(out, exist_ok=True)
        write_json(path, shared)
    elif {k: saved.get(k) for k in shared} != shared:
        raise SweepError(
            f"{out} holds a sweep of --config {saved.get('config')} --set {saved.get('set')}; "
            f"this one has --config {config} --set {list(sets)}. Use another --out."
        )


def write_run(out: str, run: Run, final_step: int | None, command: Sequence[str]) -> None:
    directory = run_dir(out, run.name)
    os.makedirs(directory, exist_ok=True)
    spec = {
        "name": run.name,
        "cell": run.cell,
        "overrides": dict(run.overrides),
        "seed": run.seed,
        "final_step": final_step,
        "command": list(command),
    }
    write_json(os.path.join(directory, "run.json"), spec)


def status(directory: str, slurm_active: Collection[str] | None = None) -> str:
    """'done', 'running', 'failed' or 'pending' (never tried, or stopped without a marker).

    slurm_active: the SLURM array tasks ('JOB_TASK') squeue lists; None trusts the markers.
    A marker left by a killed attempt (no process, no SLURM task) does not count as running.
    """
    if os.path.exists(os.path.join(directory, DONE)):
        return "done"
    running = read_json(os.path.join(directory, RUNNING))
    if running:
        job = running.get("slurm_job")
        if job and (slurm_active is None or job in slurm_active):
            return "running"
        if not job and _alive_here(running):
            return "running"
    return "failed" if os.path.exists(os.path.join(directory, FAILED)) else "pending"


def _alive_here(marker: dict) -> bool:
    if marker.get("host") != socket.gethostname():
        return False
    try:
        with open(f"/proc/{int(marker['pid'])}/cmdline", "rb") as f:
            return b"vmjax.sweep" in f.read()  # not a later process that reused the pid
    except (OSError, KeyError, ValueError):
        return False


def final_metrics(directory: str, final_step: int | None) -> dict | None:
    """The metrics.jsonl line of the final step (the last one, if a resumed run wrote two)."""
    path = os.path.join(directory, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    found = None
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                metrics = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed run
            if final_step is None or metrics.get("step") == final_step:
                found = metrics
    return found


def task_command(
    directory: str, final_step: int | None, command: Sequence[str], cpus: Sequence[int] = ()
) -> list[str]:
    """The command line of `run_task` (python -m vmjax.sweep _task) for one run."""
    args = [sys.executable, "-m", "vmjax.sweep", "_task", "--run_dir", directory]
    if final_step is not None:
        args += ["--final_step", str(final_step)]
    if cpus:
        args += ["--cpus", ",".join(map(str, cpus))]
    return [*args, "--", *command]


def thread_env(threads: int | None, env: dict[str, str]) -> dict[str, str]:
    """`env` with thread pools sized to `threads` cores (variables the user set are kept)."""
    env = dict(env)
    if not threads:
        return env
    for var in THREAD_VARS:
        env.setdefault(var, str(threads))
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
    return env


def run_task(
    directory: str, final_step: int | None, command: Sequence[str], cpus: Sequence[int] = ()
) -> int:
    """Runs `command` (vmjax.main) for one run; writes DONE or FAILED; returns its exit status.

    cpus: pin the run to these cores (the local launcher gives each run its own); under SLURM
    the job's cores are used, sized by SLURM_CPUS_PER_TASK.
    """
    os.makedirs(directory, exist_ok=True)
    if cpus:
        os.sched_setaffinity(0, cpus)  # inherited by the command and XLA's thread pools
    threads = len(cpus) or int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0) or None
    slurm_job = None
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        slurm_job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    marker = {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": slurm_job}
    marker["started"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    mark_running(directory, marker)
    # A SIGTERM (scancel, a time limit, the local launcher stopping) also reaches the command,
    # which checkpoints and exits; this process waits for it and records the outcome.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with open(os.path.join(directory, "log.txt"), "ab") as log:
        log.write(f"\n=== vmjax.sweep: {shlex.join(command)}\n".encode())
        log.flush()
        try:
            code = subprocess.call(
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=thread_env(threads, dict(os.environ)),
            )
        except OSError as e:
            log.write(f"vmjax.sweep: cannot start the command: {e}\n".encode())
            code = 127
    result = {**marker, "ended": time.strftime("%Y-%m-%dT%H:%M:%S"), "returncode": code}
    metrics = final_metrics(directory, final_step) if code == 0 else None
    reason = None
    if code < 0:
        reason = f"killed by signal {-code}"
    elif code:
        reason = f"exit status {code}"
    elif metrics is None:
        reason = (
            f"exited 0 without an evaluation at the final step {final_step} "
            "(preempted, or stopped early)"
        )
    record_end(directory, result, final_step, reason)
    if code < 0:
        return 128 - code  # as a shell reports a command a signal ended
    return code if code else int(metrics is None)
