"""The SLURM launcher: one job array per submission, one array task per run.

The script names every task's command in a `case` on SLURM_ARRAY_TASK_ID, so it can be read
(and rerun by hand) without vmjax. Submissions are recorded in OUT/slurm/jobs.json; squeue over
those jobs tells which runs are queued or running, so a resumed sweep never submits them twice.
sacct is not needed (many clusters, and a single-node test cluster, run without accounting).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from vmjax.sweep.grid import SweepError
from vmjax.sweep.runs import read_json, write_json

ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
    "SIGNALING",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
}


def slurm_dir(out: str) -> str:
    return os.path.join(out, "slurm")


def script(
    out: str,
    tasks: Sequence[tuple[str, Sequence[str]]],
    options: Sequence[str] = (),
    max_parallel: int | None = None,
    cwd: str | None = None,
) -> str:
    """The sbatch script of a job array running `tasks` ((run name, command), one per task).

    options: extra sbatch options, e.g. '--partition=gpu' or '--gpus-per-task=1', written as
      #SBATCH lines; max_parallel: at most this many tasks at once (the array's %K).
    """
    array = f"0-{len(tasks) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    log = os.path.join(slurm_dir(out), "%A_%a.out")
    lines = [
        "#!/usr/bin/env bash",
        f"# vmjax sweep {out}: {len(tasks)} runs, one array task each.",
        "# Written by python -m vmjax.sweep; each run's own output goes to its log.txt.",
        "#SBATCH --job-name=vmjax-sweep",
        f"#SBATCH --array={array}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --output={log}",
        *(f"#SBATCH {o}" for o in options),
        "set -euo pipefail",
        f"cd {shlex.quote(cwd or os.getcwd())}",
        'case "$SLURM_ARRAY_TASK_ID" in',
    ]
    for i, (name, command) in enumerate(tasks):
        lines.append(f"# {name}")
        lines.append(f"{i}) exec {shlex.join(command)} ;;")
    lines.append('*) echo "vmjax sweep: no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;')
    lines.append("esac")
    return "\n".join(lines) + "\n"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise SweepError(f"--launcher slurm: no '{name}' on PATH; is this a SLURM login node?")
    return path


def submit(out: str, text: str, names: Sequence[str]) -> str:
    """Writes the script under OUT/slurm/, submits it, records the job; returns the job id."""
    directory = slurm_dir(out)
    os.makedirs(directory, exist_ok=True)  # sbatch writes --output there but makes no folders
    jobs = read_json(os.path.join(directory, "jobs.json")) or {"jobs": []}
    path = os.path.join(directory, f"array_{len(jobs['jobs'])}.sbatch")
    with open(path, "w") as f:
        f.write(text)
    done = subprocess.run(
        [_tool("sbatch"), "--parsable", path], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SweepError(f"sbatch {path} failed: {done.stderr.strip() or done.stdout.strip()}")
    job_id = done.stdout.strip().split(";")[0]  # --parsable prints 'id' or 'id;cluster'
    jobs["jobs"].append({"job_id": job_id, "script": path, "runs": list(names)})
    write_json(os.path.join(directory, "jobs.json"), jobs)
    return job_id


def active(out: str) -> tuple[set[str], set[str]] | None:
    """(names of runs whose array tasks are queued or running, their 'JOB_TASK' ids).

    None where this sweep never submitted a job; raises where squeue is needed but missing.
    """
    jobs = (read_json(os.path.join(slurm_dir(out), "jobs.json")) or {}).get("jobs", [])
    if not jobs:
        return None
    states = _squeue([j["job_id"] for j in jobs])
    names, tasks = set(), set()
    for job in jobs:
        for i, name in enumerate(job["runs"]):
            task = f"{job['job_id']}_{i}"
            if states.get(task) in ACTIVE_STATES:
                names.add(name)
                tasks.add(task)
    return names, tasks


def _squeue(job_ids: Sequence[str]) -> dict[str, str]:
    """{'JOB_TASK': state} of the array tasks squeue still lists (finished ones drop out)."""
    done = subprocess.run(
        [_tool("squeue"), "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:  # every job finished and was purged
            return {}
        raise SweepError(f"squeue failed: {done.stderr.strip()}")
    states = {}
    for line in done.stdout.splitlines():
        task, _, state = line.strip().partition("|")
        states[task] = state
    return states


def wait(job_id: str, poll_s: float = 30, log: Callable[[str], None] | None = None) -> None:
    """Returns once squeue lists no task of the job."""
    last = None
    while True:
        states = _squeue([job_id])
        counts = {}
        for task, state in states.items():
            if task == job_id or task.startswith(f"{job_id}_"):
                counts[state] = counts.get(state, 0) + 1
        if not counts:
            return
        summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        if summary != last:
            (log or _stderr)(f"job {job_id}: {summary}")
            last = summary
        time.sleep(poll_s)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
