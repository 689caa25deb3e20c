"""N seeds of one classifier config trained as one jitted program: `jax.vmap` over the seed axis.

    python -m vmjax.train.seeds --config yt8m:smoke --seeds 0,1,2 --workdir '/tmp/s/seed={seed}'

Seed k's run is the ordinary run of the config with `seed=k` (vmjax.train.loop), computed in
one program with the others: its initial state is `create_train_state` with PRNGKey(k) (vmapped
over the seeds' keys), its data order is its own input pipeline (`train_stream` of the config
with seed k: shuffle and frame windows), its updates are the same pure step (vmjax.train.step)
vmapped over the leading seed axis of state and batch, jitted once with the state donated, and
it is evaluated with the same evaluator. Its final parameters, optimizer state and metrics
equal the single run's up to float rounding (vmapped matmuls may sum in another order; on CPU
they came out bitwise equal for moe, and for dbof whose BatchNorm statistics stay per seed;
tests/train/test_seeds.py allows 1e-4).

Each seed keeps its own run directory, opened through vmjax.run (config.json with its seed,
history.jsonl, metrics.jsonl, TensorBoard, checkpoints by the Checkpointer with its pipeline's
position), so eval, predict, export, a resumed single run and vmjax.sweep.gather treat it as
any other run. A run directory is per seed, which is why this is its own short loop rather than
a `vmjax.train.fit` Task (fit owns one run); it applies fit's guards to each seed: NaN/Inf
('stop': the seed stops, 'skip': its update is skipped), divergence, and SIGTERM (every seed
saves and stops). A stopped seed is reported (its history.jsonl and the summary), never
averaged in: the other seeds go on, and its run has no final evaluation.

What it cannot run, refused before any work (`check_vmappable`): other tasks than 'classify',
compression (pruning masks, QAT, a distillation teacher, PTQ), `init_from` (another run's
weights), `parallelism='pmap'` or `mesh.fsdp > 1`, several processes. The program runs on
one device (a GPU machine's sweep gives each cell its own).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vmjax import run as run_lib
from vmjax.errors import UserError
from vmjax.train import guards, logs
from vmjax.train import step as step_lib
from vmjax.train.checkpoint import Checkpointer
from vmjax.train.evaluate import evaluate
from vmjax.train.state import create_train_state, make_optimizer

EXIT_SEEDS_STOPPED = 3  # some seeds stopped (NaN/Inf, divergence); the others finished


def check_vmappable(config: ml_collections.ConfigDict) -> None:
    """UserError naming every setting of `config` that N vmapped seeds cannot honour."""
    problems = []
    task = config.get("task", "classify")
    if task != "classify":
        problems.append(f"task={task!r}: only the classifier ('classify') is vmapped")
    method = config.compress.method if "compress" in config else "none"
    if method != "none":
        problems.append(
            f"compress.method={method!r}: pruning masks, QAT, teachers and PTQ are per-run "
            "state outside the step"
        )
    if "init_from" in config and config.init_from.workdir:
        problems.append("init_from.workdir is set: another run's weights, loaded per run")
    if config.parallelism != "mesh" or config.mesh.fsdp != 1:
        problems.append(
            f"parallelism={config.parallelism!r}, mesh.fsdp={config.mesh.fsdp}: the seeds run "
            "on one device (use 'mesh' with fsdp=1)"
        )
    if config.get("on_divergence") == "skip":
        problems.append(
            "on_divergence='skip': each seed would need its own loss limit in the step (use "
            "'stop' or 'off')"
        )
    if problems:
        raise UserError(
            "cannot train these seeds as one vmapped program:\n  "
            + "\n  ".join(problems)
            + "\n  train them as separate runs (vmjax.main, or vmjax.sweep without --vmap_seeds)"
        )


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """A copy of `config` with `seed` (and what refers to it, e.g. data.seed), as
    `--config.seed=SEED` makes it."""
    c = copy.deepcopy(config)
    c.seed = seed
    return c


def init_states(config: ml_collections.ConfigDict, seeds: Sequence[int]):
    """(model, tx, states): the single run's model and optimizer (vmjax.train.setup.init_run's)
    and the seeds' initial TrainStates, initialised by one vmapped program, on a leading axis."""
    from vmjax import compress
    from vmjax.data import pipeline
    from vmjax.data.device import model_inputs
    from vmjax.models import build_model
    from vmjax.train import pretrained

    model = build_model(config.model, config.data.num_classes)
    tx = pretrained.freeze(config, make_optimizer(config.optimizer, config.num_train_steps))
    model, tx = compress.apply(config, model, tx)
    inputs = model_inputs(pipeline.config_example_batch(config.data))
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    states = jax.jit(jax.vmap(lambda key: create_train_state(model, tx, inputs, key)))(keys)
    return model, tx, states


def step_functions(config: ml_collections.ConfigDict, model, tx):
    """(train, eval): the vmapped train step (seed axis on state and batch; state donated) and
    one seed's eval step, both jitted."""
    train = functools.partial(
        step_lib.train_step,
        model=model,
        tx=tx,
        dtype=config.dtype,
        grad_accum=config.grad_accum,
        skip_nonfinite=config.on_nonfinite_loss == "skip",
        augment=config.augment if "augment" in config else None,
    )
    evaluate_one = functools.partial(step_lib.eval_step, model=model, dtype=config.dtype)
    return jax.jit(jax.vmap(train), donate_argnums=0), jax.jit(evaluate_one)


def seed_state(states, k: int):
    """Seed k's TrainState out of the stacked ones."""
    return jax.tree.map(lambda x: x[k], states)


def stack_batches(batches: Sequence[dict]) -> dict:
    """The seeds' host batches -> one batch with a leading seed axis (device entries only)."""
    from vmjax.data.pipeline import device_part

    parts = [device_part(b) for b in batches]
    return {key: np.stack([p[key] for p in parts]) for key in parts[0]}


def check_workdirs(seeds: Sequence[int], workdirs: Sequence[str]) -> list[str]:
    """One run directory per seed: `workdirs` as given, or one pattern with `{seed}`."""
    if not seeds:
        raise UserError("no seeds given: name one or more, e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {','.join(map(str, seeds))}: a seed appears twice")
    if any(s < 0 for s in seeds):
        raise UserError(f"--seeds {','.join(map(str, seeds))}: seeds are >= 0")
    if len(workdirs) == 1 and "{seed}" in workdirs[0]:
        workdirs = [workdirs[0].replace("{seed}", str(s)) for s in seeds]
    if len(workdirs) != len(seeds):
        raise UserError(
            f"{len(workdirs)} --workdir for {len(seeds)} seeds: give one per seed, in the "
            "order of --seeds, or one with {seed} in it (e.g. --workdir '/tmp/runs/seed={seed}')"
        )
    if len(set(workdirs)) != len(workdirs):
        raise UserError(f"--workdir: two seeds share a run directory ({list(workdirs)})")
    return list(workdirs)


def train_seeds(
    config: ml_collections.ConfigDict,
    seeds: Sequence[int],
    workdirs: Sequence[str],
    allow: tuple[str, ...] = (),
) -> list[dict]:
    """Trains `config` with each seed as one vmapped program; seed k's run lives in workdirs[k].

    Returns per seed what vmjax.train.loop.train_and_evaluate would: the last evaluation (or
    {'preempted_at': step} after a SIGTERM), or {'stopped': reason} for a seed that hit NaN/Inf
    or diverged. Resumes when every unfinished seed's newest good checkpoint is at one step.
    """
    from vmjax.train import inputs

    check_vmappable(config)
    workdirs = check_workdirs(seeds, workdirs)
    if jax.process_count() > 1:
        raise UserError("vmapped seeds run in one process; this job has several")
    configs = [seed_config(config, s) for s in seeds]
    for c, w in zip(configs, workdirs, strict=True):
        run_lib.Run.check_resume(c, w, allow)  # every seed before anything is written
    if config.on_nonfinite_loss not in ("stop", "skip"):
        raise ValueError(
            f"config.on_nonfinite_loss={config.on_nonfinite_loss!r}; expected 'stop' or 'skip'"
        )
    if config.grad_accum < 1 or config.batch_size % config.grad_accum:
        raise ValueError(
            f"config.grad_accum={config.grad_accum} must divide batch_size {config.batch_size}"
        )
    train_files, eval_files, data_dir = inputs.resolve_data(config)
    resolved = {**inputs.resolved_info(train_files, eval_files, data_dir), "jax_devices": 1}
    with contextlib.ExitStack() as stack:
        runs = [
            stack.enter_context(run_lib.training(c, w, resolved, allow=allow))
            for c, w in zip(configs, workdirs, strict=True)
        ]
        program = _Seeds(configs, runs, train_files, eval_files, data_dir)
        stack.callback(program.close)  # also when resuming fails
        return program.train()


class _Seeds:
    """The vmapped program and each seed's run, pipeline, checkpointer and guards."""

    def __init__(self, configs, runs, train_files, eval_files, data_dir):
        from vmjax.data import pipeline, synthetic
        from vmjax.train import inputs

        self.config, self.configs, self.runs = configs[0], configs, runs
        self.seeds = [c.seed for c in configs]
        self.eval_files = eval_files
        video = self.config.data.format == "video_files"
        self.bad = [None] * len(configs)
        if self.config.data.on_error == "skip":
            from vmjax.data import video_files

            self.bad = [video_files.BadFiles() if video else pipeline.BadRecords() for _ in runs]
        self.iters = [
            inputs.train_stream(
                c,
                None if video else pipeline.BatchSpec.from_config(c.data),
                train_files,
                c.batch_size,
                bad,
            )
            for c, bad in zip(configs, self.bad, strict=True)
        ]
        self.kinds = self.oracle = None
        if data_dir and not video:  # the embedded YT8M features' oracle and class kinds
            self.kinds, self.oracle = (
                synthetic.class_kinds(data_dir),
                synthetic.read_oracle(data_dir),
            )
        self.ckpts = [
            Checkpointer(r.checkpoint_dir, c.keep_checkpoints)
            for c, r in zip(configs, runs, strict=True)
        ]
        self.stopped: dict[int, str] = {}

    def train(self) -> list[dict]:
        config, n = self.config, len(self.runs)
        model, tx, states = init_states(config, self.seeds)
        train_step, eval_step = step_functions(config, model, tx)
        self.eval_step = eval_step
        template = jax.device_get(seed_state(states, 0))  # what each seed's checkpoint holds
        states, step = self._resume(template, states)
        for run in self.runs:
            run.forget_metrics_after(step)
        logging.info(
            "Model %s: %s parameters x %d seeds %s in one vmapped program on %s",
            config.model.name,
            f"{sum(x.size for x in jax.tree.leaves(template.params)):,}",
            n,
            self.seeds,
            jax.devices()[0],
        )
        writers = [logs.Writer(r) for r in self.runs]
        batch_logs = [logs.BatchLog(r.workdir) for r in self.runs] if config.log_batches else []
        nonfinite = [guards.NonFiniteGuard(config.on_nonfinite_loss, c) for c in self.ckpts]
        divergence = [
            guards.DivergenceGuard(config.on_divergence, config.divergence_factor, r, c)
            for r, c in zip(self.runs, self.ckpts, strict=True)
        ]
        preemption = guards.Preemption()
        pending: list[tuple[int, jax.Array]] = []  # (step, each seed's `finite`), read lazily
        last_eval: list[dict | None] = [None] * n
        progress = logs.progress_bar(config, step, f"train {n} seeds")
        tick, tick_step = time.perf_counter(), step

        def check_finite():
            flags = np.asarray(jax.device_get([f for _, f in pending])).reshape(-1, n)
            for k in self._live():
                for (s, _), row in zip(pending, flags, strict=True):
                    nonfinite[k].add(s, row[k])
                try:
                    nonfinite[k].check()
                except FloatingPointError as e:
                    self._stop(k, str(e), progress)
            pending.clear()

        try:
            while step < config.num_train_steps and self._live():
                with preemption.waiting():
                    host = [next(it) for it in self.iters]
                for k, batch_log in enumerate(batch_logs):
                    batch_log.write(step + 1, host[k])
                states, metrics = train_step(states, stack_batches(host))
                step += 1
                progress.update(1)
                pending.append((step, metrics["finite"]))
                if step == 1:
                    losses = np.asarray(metrics["loss"])
                    for k in self._live():
                        divergence[k].first_step(losses[k])
                last = step == config.num_train_steps
                if step % config.log_every == 0 or last:
                    check_finite()
                    losses = np.asarray(metrics["loss"])
                    values = {key: np.asarray(v) for key, v in metrics.items() if key != "finite"}
                    now = time.perf_counter()
                    rate = (step - tick_step) * config.batch_size / (now - tick)
                    tick, tick_step = now, step
                    for k in self._live():
                        try:
                            divergence[k].check(step, float(losses[k]))
                        except FloatingPointError as e:
                            self._stop(k, str(e), progress)
                            continue
                        for key, v in values.items():
                            writers[k].scalar(f"train/{key}", v[k], step)
                        writers[k].scalar("train/examples_per_s", rate, step)
                        writers[k].scalar("train/skipped_updates", nonfinite[k].skipped, step)
                    progress.set_postfix(
                        loss=",".join(f"{x:.3f}" for x in losses), ex_per_s=f"{n * rate:,.0f}"
                    )
                if step % config.eval_every == 0 or last:
                    check_finite()
                    for k in self._live():
                        try:
                            result = self._evaluate(seed_state(states, k), k)
                        except FloatingPointError as e:
                            self._stop(
                                k, nonfinite[k].error(f"{e} at step {step}").args[0], progress
                            )
                            continue
                        loss = float(np.asarray(metrics["loss"])[k])
                        last_eval[k] = {"step": step, **result, "train_loss": loss}
                        logs.log_classifier_eval(
                            last_eval[k], writers[k], _Prefixed(progress, f"seed {self.seeds[k]}")
                        )
                preempted = preemption.reached(step)
                if step % config.checkpoint_every == 0 or last or preempted:
                    check_finite()  # never checkpoint parameters a NaN has reached
                    for k in self._live():
                        host_state = jax.device_get(seed_state(states, k))
                        self.ckpts[k].save(step, host_state, self.iters[k])
                if preempted and not last:
                    for c in self.ckpts:
                        c.wait()
                    progress.write(
                        f"Preempted (SIGTERM) at step {step}: saved the seeds' checkpoints "
                        f"<workdir>/checkpoints/{step}; run the same command to resume"
                    )
                    return [
                        {"stopped": self.stopped[k]}
                        if k in self.stopped
                        else {"preempted_at": step}
                        for k in range(n)
                    ]
            for k, batch_log in enumerate(batch_logs):
                if k not in self.stopped:
                    batch_log.write_params(step, jax.device_get(seed_state(states, k).params))
        except guards.Stopped:
            progress.write(
                f"Stopped (SIGTERM) while waiting for data after step {step}; run the same "
                "command to resume from each seed's last checkpoint"
            )
            return [{"preempted_at": c.latest_step() or 0} for c in self.ckpts]
        finally:
            preemption.restore()
            progress.close()
            for c in self.ckpts:
                c.close()
            for w in writers:
                w.close()
            for b in batch_logs:
                b.close()
        for k, bad in enumerate(self.bad):
            if bad is not None and bad.count:
                logging.warning(
                    "seed %d: data.on_error='skip' skipped %d bad record(s)",
                    self.seeds[k],
                    bad.count,
                )
        results = []
        for k, run in enumerate(self.runs):
            if k in self.stopped:
                results.append({"stopped": self.stopped[k]})
            else:
                results.append(last_eval[k] or run.last_eval())
        return results

    def close(self) -> None:
        for c in self.ckpts:
            c.close()

    def _live(self) -> list[int]:
        return [k for k in range(len(self.runs)) if k not in self.stopped]

    def _stop(self, k: int, why: str, progress) -> None:
        """Seed k stops (recorded in its history.jsonl); the others go on."""
        self.stopped[k] = why
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.runs[k].append_history({"time": now, "event": "stopped", "reason": why})
        progress.write(f"seed {self.seeds[k]} STOPPED (the other seeds go on): {why}")

    def _resume(self, template, states):
        """(states, step): each seed's newest good checkpoint, if all are at one step, or the
        initial states when none has one."""
        restored = [
            c.resume(template, it, self.config.num_train_steps)
            for c, it in zip(self.ckpts, self.iters, strict=True)
        ]
        found = [r is not None for r in restored]
        if not any(found):
            return states, 0
        steps = [int(r.step) if r is not None else 0 for r in restored]
        if not all(found) or len(set(steps)) > 1:
            listed = ", ".join(
                f"seed {s}: step {t}" for s, t in zip(self.seeds, steps, strict=True)
            )
            raise UserError(
                f"the seeds' runs are at different steps ({listed}); a vmapped program resumes "
                "them only from one step: finish them as separate runs (vmjax.main), or use new "
                "run directories"
            )
        stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *restored)
        return stacked, steps[0]

    def _evaluate(self, state, k: int) -> dict:
        def eval_fn(state, batch):
            from vmjax.data.pipeline import device_part

            return jax.device_get(self.eval_step(state, device_part(batch)))

        result = evaluate(eval_fn, state, self.eval_files, self.configs[k], self.kinds, self.bad[k])
        if self.oracle:
            from vmjax.data import synthetic

            result["oracle_gap"] = self.oracle["gap"]
            for kind in synthetic.KINDS:
                result[f"oracle_gap_{kind}"] = self.oracle[f"gap_{kind}"]
        return result


class _Prefixed:
    """A progress bar whose `write` names the seed."""

    def __init__(self, progress, prefix: str):
        self.progress, self.prefix = progress, prefix

    def write(self, message: str) -> None:
        self.progress.write(f"{self.prefix}: {message}")


def main(argv: list[str]) -> int:
    """python -m vmjax.train.seeds: flags -> train_seeds -> a line per seed; exit status 0 when
    every seed finished, EXIT_SEEDS_STOPPED when some stopped (the others finished)."""
    import sys

    from absl import app, flags

    from vmjax import cli
    from vmjax.configs_check import validate

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    try:
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        raise UserError(f"--seeds {','.join(FLAGS.seeds)}: expected integers, e.g. 0,1,2") from None
    cli.setup_logging()
    config = FLAGS.config
    if any(a.lstrip("-").split("=")[0] == "config.seed" for a in sys.argv[1:]):
        raise UserError("--config.seed: the seeds come from --seeds")
    validate(config, num_devices=1)
    results = train_seeds(config, seeds, FLAGS.workdir, tuple(FLAGS.allow_config_change))
    stopped = 0
    for seed, result in zip(seeds, results, strict=True):
        if "stopped" in result:
            stopped += 1
            print(f"seed {seed}: STOPPED: {result['stopped']}")
        elif "preempted_at" in result:
            print(f"seed {seed}: preempted at step {result['preempted_at']}")
        elif result:
            shown = ("step", "gap", "map", "hit_at_1", "perr", "loss")
            print(f"seed {seed}: " + ", ".join(f"{k} {result[k]}" for k in shown if k in result))
    return EXIT_SEEDS_STOPPED if stopped else 0


def _define_flags() -> None:
    from absl import flags

    from vmjax import cli

    cli.define_config_flag()
    flags.adopt_module_key_flags(cli)  # --config (and --debug) in this command's --help
    flags.DEFINE_list("seeds", None, "The seeds (config.seed) trained together, e.g. 0,1,2.")
    flags.DEFINE_multi_string(
        "workdir",
        None,
        "Run directory of each seed, in the order of --seeds (repeat the flag), or one with "
        "{seed} in it, e.g. --workdir '/tmp/runs/seed={seed}'. Each is an ordinary run "
        "directory (vmjax.run): eval, predict, export and resuming work on it as on any run.",
    )
    flags.DEFINE_list(
        "allow_config_change",
        [],
        "As vmjax.main's: config keys that may differ from the runs' stored configs.",
    )
    flags.mark_flags_as_required(["config", "seeds", "workdir"])


if __name__ == "__main__":
    from vmjax import cli

    _define_flags()
    cli.run(main)
