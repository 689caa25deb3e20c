"""The classifier's training loop: data -> model -> jitted steps -> metrics -> checkpoints.

The run directory is vmjax.run's (config check, lock, history, metrics.jsonl); the guards
(NaN/Inf, divergence, SIGTERM, preemption) are vmjax.train.guards'; data selection is
vmjax.train.inputs'; evaluation vmjax.train.evaluate's.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from vmjax import compress
from vmjax import run as run_lib
from vmjax.compress import distillation
from vmjax.data import pipeline, synthetic
from vmjax.train import inputs, logs, parallel, pretrained, setup
from vmjax.train import state as state_lib
from vmjax.train.checkpoint import Checkpointer, check_keep, complete_steps
from vmjax.train.evaluate import evaluate
from vmjax.train.fit import Task, fit
from vmjax.train.inputs import resolve_data, train_stream


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow: tuple[str, ...] = ()
) -> dict | None:
    """Trains, evaluates every `eval_every` steps and checkpoints; resumes automatically.

    allow: config keys that may differ from an existing run's stored config (vmjax.run).
    Returns the last evaluation's metrics (plus the oracle's GAP on embedded data). On SIGTERM
    (or a multi-host preemption notice) it saves a checkpoint at the current step and returns
    {'preempted_at': step}; running the same command again continues exactly from there.
    """
    run_lib.Run.check_resume(config, workdir, allow)  # before anything is written
    is_main = jax.process_index() == 0
    d = config.data
    local_batch = parallel.local_batch_size(config.batch_size)
    parallel.local_batch_size(config.eval_batch_size, "eval_batch_size")  # splits evenly?
    per_device = local_batch // jax.local_device_count()
    if config.grad_accum < 1 or per_device % config.grad_accum:
        raise ValueError(
            f"config.grad_accum={config.grad_accum} must divide the per-device batch "
            f"({per_device} = batch_size {config.batch_size} / {jax.device_count()} devices)"
        )
    if d.on_error not in pipeline.ON_ERROR:
        raise ValueError(
            f"config.data.on_error={d.on_error!r}; expected one of {pipeline.ON_ERROR}"
        )
    video = d.format == "video_files"
    bad_records = None
    if d.on_error == "skip":
        from vmjax.data import video_files

        bad_records = video_files.BadFiles() if video else pipeline.BadRecords()
    if config.on_nonfinite_loss not in ("stop", "skip"):
        raise ValueError(
            f"config.on_nonfinite_loss={config.on_nonfinite_loss!r}; expected 'stop' or 'skip'"
        )
    check_keep(config.keep_checkpoints)
    train_files, eval_files, data_dir = resolve_data(config)
    resolved = inputs.resolved_info(train_files, eval_files, data_dir)
    with run_lib.training(config, workdir, resolved, allow=allow, main_process=is_main) as run:
        if compress.method(config) == "ptq":
            return _quantize_and_evaluate(config, run, eval_files, data_dir, bad_records)
        return _train(config, run, train_files, eval_files, data_dir, bad_records)


def _train(config, run: run_lib.Run, train_files, eval_files, data_dir, bad_records):
    d = config.data
    video = d.format == "video_files"
    local_batch = parallel.local_batch_size(config.batch_size)
    model, tx, state = setup.init_run(config)
    if pretrained.init_workdir(config) and not complete_steps(run.checkpoint_dir):
        params = pretrained.initialize(config, state.params)
        state = state.replace(params=params, opt_state=tx.init(params))
    par = parallel.create(config, model, tx)
    spec = None if video else pipeline.BatchSpec.from_config(d)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info(
        "Model %s: %s parameters; %s over %d devices (%d processes), %s compute",
        config.model.name,
        f"{num_params:,}",
        config.parallelism,
        jax.device_count(),
        jax.process_count(),
        config.dtype,
    )
    state = par.put_state(state)

    train_iter = train_stream(config, spec, train_files, local_batch, bad_records)

    def eval_fn(state, batch):
        return par.eval_step(state, par.put_batch(batch))

    # The oracle and class kinds belong to the embedded YT8M features, not the synthetic videos.
    oracle = synthetic.read_oracle(data_dir) if data_dir and not video else None
    kinds = synthetic.class_kinds(data_dir) if data_dir and not video else None

    def evaluate_at(state, step: int) -> dict:
        result = evaluate(eval_fn, state, eval_files, config, kinds, bad_records)
        if oracle:
            result["oracle_gap"] = oracle["gap"]
            for kind in synthetic.KINDS:
                result[f"oracle_gap_{kind}"] = oracle[f"gap_{kind}"]
        return result

    put_state, checkpoint_view = par.put_state, par.checkpoint_view
    teacher = distillation.find(state.opt_state) if compress.method(config) == "distill" else None
    if teacher is not None:  # the teacher is its own run's: checkpoints never carry it

        def checkpoint_view(s):
            s = par.checkpoint_view(s)
            return s.replace(opt_state=distillation.without_teacher(s.opt_state))

        def put_state(s):
            return par.put_state(
                s.replace(opt_state=distillation.with_teacher(s.opt_state, teacher))
            )

    batch_log = logs.BatchLog(run.workdir) if config.log_batches else None
    task = Task(
        desc="train",
        state=state,
        train_step=lambda state, batch, step, max_loss=float("inf"): par.train_step(
            state, par.put_batch(batch), max_loss
        ),
        evaluate=evaluate_at,
        log_eval=logs.log_classifier_eval,
        put_state=put_state,
        checkpoint_view=checkpoint_view,
        on_nonfinite_loss=config.on_nonfinite_loss,
        skips=("nonfinite", "divergence"),
        before_step=batch_log.write if batch_log else None,
        at_end=(lambda s, step: batch_log.write_params(step, checkpoint_view(s).params))
        if batch_log
        else None,
    )
    try:
        return fit(
            config,
            run,
            task,
            train_iter,
            bad_records=bad_records,
            bad_what="video file(s)" if video else "record(s)",
        )
    finally:
        if batch_log:
            batch_log.close()


def _quantize_and_evaluate(config, run: run_lib.Run, eval_files, data_dir, bad_records) -> dict:
    """compress.method='ptq': int8 parameters of compress.source_workdir, evaluated like a run.

    Writes workdir/quantized.npz (vmjax.compress.quantization.save) and one metrics.jsonl line
    at the source run's step; trains nothing.
    """
    from vmjax.compress import quantization

    qmodel, qparams, model_state, step, source = quantization.quantize_run(config)
    state = state_lib.TrainState(
        step=np.int32(step), params=qparams, opt_state=None, model_state=model_state, rng=None
    )
    # The run's checkpoint: the source's float parameters at its step, so that eval, predict,
    # export and serve open a PTQ run like any other (they quantize them as this run did).
    ckpt = Checkpointer(run.checkpoint_dir, config.keep_checkpoints)
    try:
        if step not in complete_steps(run.checkpoint_dir):
            float_state = state_lib.TrainState(
                step=np.int32(step),
                params=source.params,
                opt_state={},
                model_state=model_state,
                rng=np.zeros((2,), np.uint32),
            )
            ckpt.save(step, float_state)
    finally:
        ckpt.close()
    if jax.process_index() == 0:
        path = run.path("quantized.npz")
        size = quantization.save(path, state.params)
        logging.info(
            "Quantized %s (step %d): %s bytes in %s",
            config.compress.source_workdir,
            step,
            f"{size:,}",
            path,
        )
    par = parallel.create(config, qmodel, None)
    state = par.put_state(state)

    def eval_fn(state, batch):
        return par.eval_step(state, par.put_batch(batch))

    video = config.data.format == "video_files"
    kinds = synthetic.class_kinds(data_dir) if data_dir and not video else None
    result = {"step": step, **evaluate(eval_fn, state, eval_files, config, kinds, bad_records)}
    if jax.process_index() == 0:
        run.forget_metrics_after(step - 1)
        writer = logs.Writer(run)
        try:
            logs.log_classifier_eval(result, writer, tqdm.tqdm)  # tqdm.write: no bar
        finally:
            writer.close()
    return result
