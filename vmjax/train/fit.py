"""The one training loop: every trainer (classifier, retrieval, audio-visual pretraining,
distillation, compression-aware training) is a `Task` handed to `fit`.

A task says what differs: its placed initial state, how a host batch becomes an update, how
to evaluate and how to log an evaluation. `fit` owns the rest, the same for every trainer:
resuming from the newest good checkpoint (with the input pipeline's position), the guards
(NaN/Inf, divergence, SIGTERM and multi-host preemption, a stalled input pipeline), the
progress bar, TensorBoard and metrics.jsonl through the run directory's owner, and saving
checkpoints that are never NaN.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vmjax import run as run_lib
from vmjax.errors import UserError
from vmjax.train import guards, logs
from vmjax.train.checkpoint import Checkpointer


@dataclasses.dataclass
class Task:
    """What one kind of training adds to the loop.

    state: the initial state, placed on the devices (a TrainState: step, params, ..., rng).
    train_step(state, host_batch, step) -> (state, metrics): one update; metrics hold 'loss'
      and optionally 'finite' (False when the step skipped or produced a NaN/Inf update) and
      other scalars for TensorBoard.
    evaluate(state, step) -> result: the evaluation every eval_every steps (all processes).
    log_eval(result, writer, progress): its metrics.jsonl line and console line (process 0).
    put_state / checkpoint_view: between the host layout a checkpoint holds and the devices.
    after_step(step, host_batch) / at_end(state, step): hooks (the classifier's batch log).
    skips: what train_step can skip, keeping the old parameters: 'nonfinite' (a NaN/Inf step,
      with on_nonfinite_loss='skip') and 'divergence' (then with config.on_divergence='skip' it
      is called with max_loss=, and a step whose loss is above it keeps the old parameters and
      sets metrics['diverged']).
    """

    desc: str
    state: Any
    train_step: Callable[[Any, dict, int], tuple[Any, dict]]
    evaluate: Callable[[Any, int], dict]
    log_eval: Callable[[dict, logs.Writer, Any], None]
    put_state: Callable[[Any], Any] = lambda s: s
    checkpoint_view: Callable[[Any], Any] = lambda s: s
    on_nonfinite_loss: str = "stop"
    before_step: Callable[[int, dict], None] | None = None
    at_end: Callable[[Any, int], None] | None = None
    skips: tuple[str, ...] = ("nonfinite",)


def fit(
    config: ml_collections.ConfigDict,
    run: run_lib.Run,
    task: Task,
    train_iter: Iterator[dict],
    *,
    bad_records=None,
    bad_what: str = "record(s)",
) -> dict | None:
    """Trains `task` to config.num_train_steps from the newest good checkpoint of `run`.

    Returns the last evaluation (from metrics.jsonl when the run was already complete), or
    {'preempted_at': step} after a SIGTERM (saved at that step unless the input pipeline had
    stalled; running the same command again continues exactly from there).
    """
    is_main = jax.process_index() == 0
    check_skips(config, task)
    ckpt = Checkpointer(run.checkpoint_dir, config.keep_checkpoints)
    state = task.state
    restored = ckpt.resume(task.checkpoint_view(state), train_iter, config.num_train_steps)
    if restored is not None:
        state = task.put_state(restored)
    step = int(np.asarray(task.checkpoint_view(state).step))
    if is_main:
        run.forget_metrics_after(step)

    writer = logs.Writer(run, enabled=is_main)
    nonfinite = guards.NonFiniteGuard(task.on_nonfinite_loss, ckpt, "nonfinite" in task.skips)
    divergence = guards.DivergenceGuard(
        config.on_divergence,
        config.divergence_factor,
        run,
        ckpt,
        max_skips=config.divergence_max_skips,
    )
    preemption = guards.Preemption()
    last_eval = None
    progress = logs.progress_bar(config, step, task.desc, disable=not is_main)
    tick, tick_step = time.perf_counter(), step
    try:
        while step < config.num_train_steps:
            with preemption.waiting():
                batch = next(train_iter)
            if task.before_step:
                task.before_step(step + 1, batch)
            if divergence.skipping:
                state, train_metrics = task.train_step(
                    state, batch, step, max_loss=divergence.limit()
                )
            else:
                state, train_metrics = task.train_step(state, batch, step)
            step += 1
            progress.update(1)
            finite = train_metrics.get("finite")
            nonfinite.add(step, jnp.isfinite(train_metrics["loss"]) if finite is None else finite)
            divergence.add(step, train_metrics.get("diverged"))
            if step == 1:
                divergence.first_step(train_metrics["loss"])
            last = step == config.num_train_steps
            if step % config.log_every == 0 or last:
                nonfinite.check()
                divergence.check_skips()
                loss = float(train_metrics["loss"])
                divergence.check(step, loss)
                now = time.perf_counter()
                rate = (step - tick_step) * config.batch_size / (now - tick)
                tick, tick_step = now, step
                progress.set_postfix(loss=f"{loss:.3f}", ex_per_s=f"{rate:,.0f}")
                for key, value in train_metrics.items():
                    if key not in ("finite", "diverged"):
                        writer.scalar(f"train/{key}", value, step)
                writer.scalar("train/examples_per_s", rate, step)
                writer.scalar("train/skipped_updates", nonfinite.skipped, step)
                if divergence.skipping:
                    writer.scalar("train/skipped_diverged", divergence.skipped, step)
            if step % config.eval_every == 0 or last:
                nonfinite.check()
                divergence.check_skips()
                try:
                    result = task.evaluate(state, step)
                except FloatingPointError as e:
                    raise nonfinite.error(f"{e} at step {step}") from None
                last_eval = {"step": step, **result, "train_loss": float(train_metrics["loss"])}
                if is_main:
                    task.log_eval(last_eval, writer, progress)
            preempted = preemption.reached(step)  # every process asks at every step
            if step % config.checkpoint_every == 0 or last or preempted:
                nonfinite.check()  # never checkpoint parameters a NaN has reached
                divergence.check_skips()
                ckpt.save(step, task.checkpoint_view(state), train_iter)
            if preempted and not last:
                ckpt.wait()
                _say(
                    progress,
                    f"Preempted (SIGTERM) at step {step}: saved checkpoint "
                    f"{ckpt.directory}/{step}; run the same command to resume",
                )
                return {"preempted_at": step}
        if task.at_end:
            task.at_end(state, step)
    except guards.Stopped:
        _say(
            progress,
            f"Stopped (SIGTERM) while waiting for data after step {step}; "
            f"{guards.last_good(ckpt)}; run the same command to resume",
        )
        return {"preempted_at": ckpt.latest_step() or 0}
    finally:
        preemption.restore()
        progress.close()
        ckpt.close()
        writer.close()
    if bad_records is not None:
        logging.warning(
            "data.on_error='skip': skipped %d bad %s in all (logged above)%s",
            bad_records.count,
            bad_what,
            "; worker processes, if any, count their own" if config.data.get("workers") else "",
        )
    if last_eval is None:
        last_eval = run.last_eval()
        logging.info("Already trained to step %d; last evaluation: %s", step, last_eval)
    return last_eval


def check_skips(config: ml_collections.ConfigDict, task: Task) -> None:
    """Refuses a skip mode the task's step cannot do (trainers check it at the door, too)."""
    wanted = {
        "nonfinite": ("on_nonfinite_loss", task.on_nonfinite_loss),
        "divergence": ("on_divergence", config.on_divergence),
    }
    for what, (key, mode) in wanted.items():
        if mode == "skip" and what not in task.skips:
            allowed = "'stop' or 'off'" if what == "divergence" else "'stop'"
            raise UserError(
                f"config.{key}='skip': the {task.desc!r} trainer cannot skip such steps; "
                f"set it to {allowed}"
            )


def _say(progress, message: str) -> None:
    (progress.write if jax.process_index() == 0 else logging.info)(message)
