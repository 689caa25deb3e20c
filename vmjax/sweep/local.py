"""The local launcher: runs as parallel processes, each on its own cores (and GPU, if any).

Each run is pinned to a disjoint set of cores and its thread pools are sized to them
(vmjax.sweep.runs.thread_env), so K parallel runs on C cores do not each start C threads.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from vmjax.sweep.runs import (
    final_metrics,
    mark_running,
    record_end,
    task_command,
    thread_env,
)

# vmjax.train.seeds.EXIT_SEEDS_STOPPED (not imported: this wrapper stays free of JAX; a test
# checks they agree): some seeds of the program stopped, the others finished.
EXIT_SEEDS_STOPPED = 3
STOP_GRACE_S = 60  # after Ctrl-C: time for runs to checkpoint (on SIGTERM) before SIGKILL


class Stopped(Exception):
    """The launcher was stopped (Ctrl-C or SIGTERM) after stopping its runs."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one run at a time executes."""

    cpus: tuple[int, ...]
    gpu: str | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    directory: str
    final_step: int | None
    command: tuple[str, ...]
    # --vmap_seeds: every seed's run directory of a cell trained by one command (`directory`
    # is the first); () for a run of its own.
    directories: tuple[str, ...] = ()

    def wrapped(self, cpus: Sequence[int] = ()) -> list[str]:
        """The `python -m vmjax.sweep _task` command line that runs this task."""
        args = task_command(self.directory, self.final_step, self.command, cpus)
        more = [a for d in self.directories[1:] for a in ("--run_dir", d)]
        return [*args[:6], *more, *args[6:]]  # after the first --run_dir


def available_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def visible_gpus() -> list[str]:
    """The GPUs a child can be given (CUDA_VISIBLE_DEVICES, else what nvidia-smi lists)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def slots(
    num_runs: int,
    parallel: int | None = None,
    mem_per_run_gb: float = 3.0,
    cpus: Sequence[int] | None = None,
    gpus: Sequence[str] | None = None,
    memory_gb: float | None = None,
) -> list[Slot]:
    """`parallel` slots (default: as many as the cores, GPUs and memory allow), each with its
    share of the cores and, on a GPU machine, one GPU."""
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else list(cpus)
    gpus = visible_gpus() if gpus is None else list(gpus)
    if parallel is None:
        memory_gb = available_memory_gb() if memory_gb is None else memory_gb
        by_memory = int(memory_gb // mem_per_run_gb) if memory_gb else len(cpus)
        parallel = min(len(gpus) or len(cpus), by_memory, num_runs)
    parallel = max(1, parallel)
    if parallel <= len(cpus):  # contiguous, near-equal shares
        shares = [
            tuple(cpus[i * len(cpus) // parallel : (i + 1) * len(cpus) // parallel])
            for i in range(parallel)
        ]
    else:  # more runs than cores (asked for): they share cores round-robin
        shares = [(cpus[i % len(cpus)],) for i in range(parallel)]
    return [Slot(share, gpus[i % len(gpus)] if gpus else None) for i, share in enumerate(shares)]


def run_all(
    tasks: Sequence[Task], slots: Sequence[Slot], log: Callable[[str], None] | None = None
) -> dict[str, int]:
    """Runs the tasks, at most one per slot at a time; returns {name: exit status}.

    Ctrl-C or SIGTERM stops the runs (each checkpoints on SIGTERM) and raises Stopped.
    """
    log = log or _stderr
    queue = list(tasks)
    free = list(slots)
    running: dict[subprocess.Popen, tuple[Task, Slot, float]] = {}
    codes: dict[str, int] = {}
    total = len(tasks)

    def on_sigterm(signum, frame):
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        while queue or running:
            while queue and free:
                task, slot = queue.pop(0), free.pop(0)
                # A local run is no SLURM array task, even when the launcher runs inside one.
                env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_ARRAY_")}
                if slot.gpu is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slot.gpu
                command = task.wrapped(slot.cpus)
                # A session of its own: Ctrl-C reaches this launcher only, which then stops
                # each run with SIGTERM (vmjax.main checkpoints on it).
                proc = subprocess.Popen(command, env=env, start_new_session=True)
                running[proc] = (task, slot, time.monotonic())
                where = f"cpus {_ranges(slot.cpus)}" + (f", GPU {slot.gpu}" if slot.gpu else "")
                log(f"started {task.name} ({where})")
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                task, slot, start = running.pop(proc)
                free.append(slot)
                codes[task.name] = proc.returncode
                outcome = "finished" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                log(
                    f"[{len(codes)}/{total}] {outcome}: {task.name} "
                    f"after {time.monotonic() - start:.0f} s"
                )
    except (KeyboardInterrupt, Stopped) as e:
        log(
            f"interrupted: stopping {len(running)} runs (SIGTERM, then SIGKILL after "
            f"{STOP_GRACE_S} s); run the same command to resume"
        )
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stop once, even if signalled again
        _stop(list(running))
        raise Stopped(getattr(e, "signum", signal.SIGINT)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return codes


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the wrapper and vmjax.main (and its data workers)
    except ProcessLookupError:
        pass


def _ranges(cpus: Sequence[int]) -> str:
    """(0, 1, 2, 5) -> '0-2,5'."""
    parts, start = [], None
    for i, c in enumerate(cpus):
        if start is None:
            start = c
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            parts.append(str(c) if c == start else f"{start}-{c}")
            start = None
    return ",".join(parts)


def run_cell(
    directories: Sequence[str],
    final_step: int | None,
    command: Sequence[str],
    cpus: Sequence[int] = (),
) -> int:
    """--vmap_seeds: runs `command` (vmjax.train.seeds) once for the seeds of one cell, whose run
    directories are `directories`; writes each one's DONE or FAILED as vmjax.sweep.runs.run_task
    does for a run of its own, and copies the output into each one's log.txt.

    A seed is DONE when its metrics.jsonl has the final step and the command exited 0, or with
    vmjax.train.seeds.EXIT_SEEDS_STOPPED (other seeds stopped; this one finished).
    """
    import socket

    if cpus:
        os.sched_setaffinity(0, cpus)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    marker = {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": None}
    marker.update(started=started, seeds_with=[os.path.basename(d) for d in directories])
    for directory in directories:
        os.makedirs(directory, exist_ok=True)
        mark_running(directory, marker)
    signal.signal(signal.SIGTERM, lambda *_: None)  # the command checkpoints; we record it
    logs = [open(os.path.join(d, "log.txt"), "ab") for d in directories]  # noqa: SIM115
    try:
        header = f"\n=== vmjax.sweep (seeds vmapped in one program): {shlex.join(command)}\n"
        for log in logs:
            log.write(header.encode())
            log.flush()
        try:
            proc = subprocess.Popen(
                list(command),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=thread_env(len(cpus) or None, dict(os.environ)),
            )
            for line in proc.stdout:
                for log in logs:
                    log.write(line)
                    log.flush()
            code = proc.wait()
        except OSError as e:
            for log in logs:
                log.write(f"vmjax.sweep: cannot start the command: {e}\n".encode())
            code = 127
    finally:
        for log in logs:
            log.close()
    result = {**marker, "ended": time.strftime("%Y-%m-%dT%H:%M:%S"), "returncode": code}
    finished = code in (0, EXIT_SEEDS_STOPPED)
    failed = 0
    for directory in directories:
        metrics = final_metrics(directory, final_step) if finished else None
        reason = None
        if code < 0:
            reason = f"killed by signal {-code}"
        elif not finished:
            reason = f"exit status {code}"
        elif metrics is None:
            reason = (
                f"no evaluation at the final step {final_step} (this seed stopped: NaN/Inf "
                "or diverged, see its history.jsonl; or the program was preempted)"
            )
        failed += reason is not None
        record_end(directory, result, final_step, reason)
    if code < 0:
        return 128 - code
    return code if code and not finished else int(failed > 0)
