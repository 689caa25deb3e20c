"""python -m vmjax.sweep: flags -> the sweep's runs -> a launcher -> the gathered results."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from vmjax.sweep import gather as gather_lib
from vmjax.sweep import local, slurm
from vmjax.sweep.grid import Run, SweepError, expand, parse_assignment, parse_grid, resolve
from vmjax.sweep.runs import (
    check_sweep,
    run_dir,
    run_task,
    status,
    task_command,
    write_run,
)

PROG = "python -m vmjax.sweep"
DESCRIPTION = """\
Train one vmjax config over a grid of overrides and seeds, locally or as a SLURM job array,
and gather the final evaluations into OUT/results.json and a mean ± std table, OUT/results.md.

Each run is `python -m vmjax.main --config CONFIG --workdir OUT/runs/<name> --config.K=V ...`
with <name> made of its overrides and seed, e.g. optimizer.learning_rate=0.001,seed=0. A run
is finished when vmjax.main exited 0 and its metrics.jsonl has the final step (a DONE file in
its directory). Running the same command again skips finished runs and reruns failed ones
(each resumes from its last checkpoint), so a sweep can be resumed, or grown by adding grid
values or seeds, across days: only the new or unfinished runs start.
"""
EPILOG = """\
local (parallel processes sized to the cores, GPUs and memory of this machine):
  python -m vmjax.sweep --config configs/yt8m.py:smoke --out /tmp/sweep \\
      --grid optimizer.learning_rate=1e-3,3e-3,1e-2 --grid model.num_mixtures=2,4 --seeds 3
  python -m vmjax.sweep ... --parallel 2 --dry_run     # print the commands, run nothing

SLURM (one array task per run; sbatch options go in --slurm_option):
  python -m vmjax.sweep --config configs/yt8m.py --out /shared/sweep1 \\
      --grid optimizer.learning_rate=1e-3,3e-3 --seeds 3 --launcher slurm \\
      --slurm_option=--partition=gpu --slurm_option=--gpus-per-task=1 \\
      --slurm_option=--cpus-per-task=8 --slurm_option=--time=04:00:00 --wait
  ... --launcher slurm --dry_run    # print the sbatch script (its --array line), submit nothing
  Without --wait, submit and return; later: python -m vmjax.sweep gather --out /shared/sweep1
  OUT must be on a file system the compute nodes see; the script runs in this directory.

vmapped seeds (local; a cell's seeds as one jitted program, jax.vmap over the seed axis:
vmjax.train.seeds; each seed keeps its own run directory, so gather, eval and export are
unchanged; a seed that hits NaN/Inf or diverges is FAILED, never averaged in):
  python -m vmjax.sweep --config yt8m:smoke --out /tmp/sweep --seeds 5 --vmap_seeds

gather (rewrite results.json and results.md from the run directories):
  python -m vmjax.sweep gather --out /tmp/sweep
"""


class _Parser(argparse.ArgumentParser):
    """User errors in two lines (what is wrong, where to read more), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\nTry '{PROG} --help'.\n")


def _launch_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", required=True, help="passed to vmjax.main, e.g. configs/yt8m.py:smoke"
    )
    p.add_argument("--out", required=True, help="the sweep directory: runs/, results.json/.md")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a grid axis: config field and its values (repeat for more axes: the cross product)",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (--config.seed) per cell")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every run (repeatable), e.g. num_train_steps=2000",
    )
    p.add_argument(
        "--vmap_seeds",
        action="store_true",
        help="local: train each grid cell's seeds as one jitted program (jax.vmap over the "
        "seeds; python -m vmjax.train.seeds) instead of one process per seed; pays only where one "
        "seed's step leaves the device idle (small models, accelerators): on a 2-core CPU the "
        "default MoE ran 0.90x per step (benchmarks/README.md)",
    )
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument(
        "--parallel",
        type=int,
        help="local: runs at once (default: one per GPU, else per core, within "
        "available memory / --mem_per_run_gb)",
    )
    p.add_argument(
        "--mem_per_run_gb",
        type=float,
        default=3.0,
        help="local: memory one run needs, for the default --parallel (default: %(default)s)",
    )
    p.add_argument(
        "--slurm_option",
        action="append",
        default=[],
        metavar="OPTION",
        help="slurm: an sbatch option (repeatable), e.g. --slurm_option=--time=4:00:00",
    )
    p.add_argument("--max_parallel", type=int, help="slurm: at most this many tasks at once (%%K)")
    p.add_argument(
        "--dry_run", action="store_true", help="print the commands (slurm: the script); run nothing"
    )
    p.add_argument("--wait", action="store_true", help="slurm: wait for the job array, then gather")
    p.add_argument(
        "--poll_s", type=float, default=30.0, help="slurm --wait: seconds between squeue calls"
    )
    # Tests replace vmjax.main with a fake trainer: the command that takes vmjax.main's flags.
    p.add_argument("--command", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["gather"]:
            return _gather(argv[1:])
        if argv[:1] == ["_task"]:
            return _task(argv[1:])
        return _launch(_launch_parser().parse_args(argv))
    except SweepError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _gather(argv: list[str]) -> int:
    p = _Parser(prog=f"{PROG} gather", description="Rewrite OUT/results.json and results.md.")
    p.add_argument("--out", required=True, help="the sweep directory")
    out = os.path.abspath(p.parse_args(argv).out)
    results = gather_lib.gather(out, _slurm_tasks(out, strict=False))
    print(gather_lib.markdown(results, out), end="")
    return 0


def _task(argv: list[str]) -> int:
    p = _Parser(prog=f"{PROG} _task")
    p.add_argument("--run_dir", required=True, action="append")  # several: vmapped seeds
    p.add_argument("--final_step", type=int)
    p.add_argument("--cpus", default="")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("missing the command after --")
    cpus = [int(c) for c in args.cpus.split(",") if c]
    if len(args.run_dir) > 1:
        return local.run_cell(args.run_dir, args.final_step, command, cpus)
    return run_task(args.run_dir[0], args.final_step, command, cpus)


def _slurm_tasks(out: str, strict: bool) -> set[str] | None:
    """The SLURM array tasks of this sweep that squeue lists (None: none submitted, or no
    squeue here and not `strict`, in which case the RUNNING markers are trusted)."""
    try:
        found = slurm.active(out)
    except SweepError:
        if strict:
            raise
        return None
    return None if found is None else found[1]


def _launch(args: argparse.Namespace) -> int:
    if args.parallel is not None and args.parallel < 1:
        raise SweepError(f"--parallel {args.parallel}: expected at least 1")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise SweepError(f"--max_parallel {args.max_parallel}: expected at least 1")
    if args.mem_per_run_gb <= 0:
        raise SweepError(f"--mem_per_run_gb {args.mem_per_run_gb}: expected a positive number")
    slurm_only = {"--wait": args.wait, "--slurm_option": args.slurm_option}
    slurm_only["--max_parallel"] = args.max_parallel is not None
    for flag, given in slurm_only.items():
        if given and args.launcher != "slurm":
            raise SweepError(f"{flag} goes with --launcher slurm")
    if args.parallel is not None and args.launcher != "local":
        raise SweepError("--parallel goes with --launcher local (slurm: --max_parallel)")
    if args.vmap_seeds and args.launcher != "local":
        raise SweepError("--vmap_seeds goes with --launcher local")
    if args.seeds < 1:
        raise SweepError(f"--seeds {args.seeds}: expected at least 1")
    axes = parse_grid(args.grid)
    sets = [parse_assignment(s, "--set") for s in args.set]
    for key, _ in sets:
        if key == "seed" or key in dict(axes):
            raise SweepError(f"--set {key}=...: {key} is set per run (by --seeds or --grid)")
    path, colon, presets = args.config.partition(":")
    if os.path.exists(os.path.expanduser(path)):  # a file: absolute, as runs start elsewhere
        config = os.path.abspath(os.path.expanduser(path)) + colon + presets
    else:  # a shipped config's name (yt8m:frame), resolved by every run itself
        config = args.config
    out = os.path.abspath(os.path.expanduser(args.out))
    if args.launcher == "slurm" and any(c.isspace() for c in out):
        raise SweepError(f"--out {out!r}: #SBATCH lines cannot hold a path with spaces")
    sets, axes, final_step = resolve(config, sets, axes)
    runs = expand(axes, args.seeds)
    if args.vmap_seeds:
        _check_vmappable(config, sets, runs)
    set_texts = [f"{k}={v}" for k, v in sets]
    check_sweep(out, config, set_texts, record=not args.dry_run)

    active = slurm.active(out)  # queued or running array tasks of earlier submissions
    queued, tasks = active if active else (set(), None)
    states = {r.name: status(run_dir(out, r.name), tasks) for r in runs}
    for name in queued & states.keys():
        states[name] = "running"
    todo = [r for r in runs if states[r.name] in ("pending", "failed")]
    counts = {s: sum(v == s for v in states.values()) for s in ("done", "running", "failed")}
    print(
        f"{len(runs)} runs ({len(runs) // args.seeds} cells x {args.seeds} seeds) in {out}: "
        f"{counts['done']} finished, {counts['running']} running or queued, "
        f"{len(todo)} to run ({counts['failed']} of them failed before)",
        file=sys.stderr,
    )
    trainer = "vmjax.train.seeds" if args.vmap_seeds else "vmjax.main"
    prefix = shlex.split(args.command) if args.command else [sys.executable, "-m", trainer]
    sets_flags = [f"--config.{t}" for t in set_texts]
    groups = {}  # --vmap_seeds: the runs trained as one program, in seed order
    for run in todo if args.vmap_seeds else ():
        groups.setdefault(_group(out, run), []).append(run)

    def command(run: Run) -> list[str]:
        if args.vmap_seeds:  # the group's command: every seed it trains, each with its run dir
            same = groups[_group(out, run)]
            dirs = [a for r in same for a in ("--workdir", run_dir(out, r.name))]
            overrides = [f"--config.{k}={v}" for k, v in run.overrides]
            seeds = ",".join(str(r.seed) for r in same)
            return [*prefix, "--config", config, "--seeds", seeds, *dirs, *sets_flags, *overrides]
        workdir = run_dir(out, run.name)
        return [*prefix, "--config", config, "--workdir", workdir, *sets_flags, *run.flags()]

    if not args.dry_run:
        for run in todo:
            write_run(out, run, final_step, command(run))
    if args.launcher == "slurm":
        return _slurm(args, out, todo, final_step, command)
    return _local(args, out, runs, todo, final_step, command, groups)


def _group(out: str, run: Run) -> tuple[str, int]:
    """--vmap_seeds: the seeds of a cell resumed from one checkpoint step train together (one
    program continues its seeds from one step; a new seed starts at 0)."""
    ckpts = os.path.join(run_dir(out, run.name), "checkpoints")
    steps = [int(n) for n in os.listdir(ckpts) if n.isdigit()] if os.path.isdir(ckpts) else []
    return run.cell, max(steps, default=0)


def _check_vmappable(config: str, sets: list[tuple[str, str]], runs: list[Run]) -> None:
    """SweepError, before anything runs, for a cell whose config cannot be vmapped."""
    from vmjax import configs
    from vmjax.errors import UserError
    from vmjax.sweep.grid import _load
    from vmjax.train.seeds import check_vmappable

    path, presets = configs.resolve(config)  # a name or a file, as grid.resolve loads it
    config = f"{path}:{presets}" if presets else path
    base = [f"--config.{k}={v}" for k, v in sets]
    for run in {r.cell: r for r in runs}.values():
        overrides = [f"--config.{k}={v}" for k, v in run.overrides]
        loaded = _load(config, [*base, *overrides], f"--config {config}")
        try:
            check_vmappable(loaded)
        except UserError as e:
            raise SweepError(f"--vmap_seeds, cell {run.cell}: {e}") from None


def _local(args, out, runs, todo, final_step, command, groups) -> int:
    if args.vmap_seeds:  # one task per group of a cell's seeds: all their run directories
        tasks = [
            local.Task(
                f"{same[0].cell}, seeds {','.join(str(r.seed) for r in same)} (vmapped)",
                run_dir(out, same[0].name),
                final_step,
                tuple(command(same[0])),
                tuple(run_dir(out, r.name) for r in same),
            )
            for same in groups.values()
        ]
    else:
        tasks = [
            local.Task(r.name, run_dir(out, r.name), final_step, tuple(command(r))) for r in todo
        ]
    slots = local.slots(len(tasks) or 1, args.parallel, args.mem_per_run_gb)
    if args.dry_run:
        for task, slot in zip(tasks, slots * len(tasks), strict=False):
            env = f"CUDA_VISIBLE_DEVICES={slot.gpu} " if slot.gpu is not None else ""
            print(env + shlex.join(task.wrapped(slot.cpus)))
        return 0
    if tasks:
        what = "cells (seeds vmapped)" if args.vmap_seeds else "runs"
        print(
            f"running {len(tasks)} {what}, {len(slots)} at a time; logs in {out}/runs/*/log.txt",
            file=sys.stderr,
        )
        try:
            local.run_all(tasks, slots)
        except local.Stopped as e:
            return 128 + e.signum  # as a shell reports a command a signal ended
    results = gather_lib.gather(out, _slurm_tasks(out, strict=False))
    print(gather_lib.markdown(results, out), end="")
    unfinished = [r.name for r in runs if status(run_dir(out, r.name)) != "done"]
    return 1 if unfinished else 0


def _slurm(args, out, todo, final_step, command) -> int:
    job_id = None
    if todo:
        tasks = [(r.name, task_command(run_dir(out, r.name), final_step, command(r))) for r in todo]
        text = slurm.script(out, tasks, args.slurm_option, args.max_parallel)
        if args.dry_run:
            print(text, end="")
            return 0
        job_id = slurm.submit(out, text, [r.name for r in todo])
        print(f"submitted job array {job_id}: {len(todo)} tasks; logs in {out}/runs/*/log.txt")
    elif args.dry_run:
        print("nothing to submit: every run is finished, running or queued", file=sys.stderr)
        return 0
    if not args.wait:
        if job_id:
            print(f"when it is done: {PROG} gather --out {out}")
        return 0
    active = slurm.active(out)
    for job in sorted({t.split("_")[0] for t in (active[1] if active else ())}):
        slurm.wait(job, args.poll_s)
    results = gather_lib.gather(out, _slurm_tasks(out, strict=False))
    print(gather_lib.markdown(results, out), end="")
    unfinished = sum(len(c["not_done"]) for c in results["cells"])
    return 1 if unfinished else 0
