"""The training loop: data -> model -> jitted steps -> metrics -> checkpoints."""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from vmjax import metrics
from vmjax.data import pipeline, synthetic
from vmjax.models import build_model
from vmjax.train import state as state_lib
from vmjax.train.checkpoint import Checkpointer
from vmjax.train.step import eval_step, model_inputs, train_step


def resolve_data(config: ml_collections.ConfigDict) -> tuple[list[str], list[str], str | None]:
    """Train and eval files; with no patterns, the embedded dataset (generated once)."""
    d = config.data
    if bool(d.train_pattern) != bool(d.eval_pattern):
        raise ValueError(
            "set both config.data.train_pattern and config.data.eval_pattern, or "
            "neither (to use the embedded dataset)"
        )
    data_dir = None
    train_pattern, eval_pattern = d.train_pattern, d.eval_pattern
    if not train_pattern:
        spec = synthetic.Spec(num_classes=d.num_classes, **d.synthetic.to_dict())
        data_dir = synthetic.ensure(d.cache_dir, spec, log=logging.info)
        train_pattern, eval_pattern = synthetic.patterns(data_dir, d.level)
    return (
        pipeline.resolve_files(train_pattern, "data.train_pattern"),
        pipeline.resolve_files(eval_pattern, "data.eval_pattern"),
        data_dir,
    )


def evaluate(
    eval_fn,
    state,
    files: list[str],
    config: ml_collections.ConfigDict,
    class_groups: dict[str, np.ndarray] | None = None,
) -> dict:
    """GAP@20, mAP, Hit@1, PERR and mean loss over one pass of `files`.

    With `class_groups` (name -> class indices), also `gap_<name>`: GAP@20 over those
    classes' columns only (e.g. per class kind of the embedded data).
    """
    spec = pipeline.BatchSpec.from_config(config.data)
    evaluator = metrics.Evaluator(spec.num_classes)
    groups = {
        name: (cols, metrics.Evaluator(len(cols)))
        for name, cols in (class_groups or {}).items()
        if len(cols)
    }
    loss_sum = count = 0.0
    batch_size = config.eval_batch_size // jax.process_count()
    for batch in pipeline.eval_batches(files, spec, batch_size=batch_size):
        out = jax.device_get(eval_fn(state, batch))
        scores = np.asarray(out["scores"])
        evaluator.update(scores, batch["labels"], weights=batch["weights"])
        for cols, group in groups.values():
            group.update(scores[:, cols], batch["labels"][:, cols], weights=batch["weights"])
        loss_sum += float(out["loss_sum"])
        count += float(out["count"])
    result = evaluator.result()
    out = {
        "gap": result["gap"],
        "map": result["map"],
        "hit_at_1": result["hit_at_1"],
        "perr": result["perr"],
        "loss": loss_sum / max(count, 1.0),
        "num_videos": int(result["num_videos"]),
    }
    for name, (_, group) in groups.items():
        out[f"gap_{name}"] = group.result()["gap"]
    return out


def _write_config(
    config: ml_collections.ConfigDict, workdir: str, train_files, eval_files, data_dir
) -> None:
    resolved = {
        "config": json.loads(config.to_json_best_effort()),
        "resolved": {
            "train_files": len(train_files),
            "eval_files": len(eval_files),
            "train_first": train_files[0],
            "eval_first": eval_files[0],
            "embedded_data_dir": data_dir,
            "jax_devices": len(jax.devices()),
            "jax_processes": jax.process_count(),
        },
    }
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(resolved, f, indent=2)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, evaluates every `eval_every` steps and checkpoints; resumes automatically.

    Returns the last evaluation's metrics (plus the oracle's GAP on embedded data).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    d = config.data
    if config.batch_size % jax.process_count():
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by {jax.process_count()} processes"
        )
    train_files, eval_files, data_dir = resolve_data(config)
    if is_main:
        _write_config(config, workdir, train_files, eval_files, data_dir)

    model = build_model(config.model, d.num_classes)
    tx = state_lib.make_optimizer(config.optimizer, config.num_train_steps)
    base_rng, init_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    spec = pipeline.BatchSpec.from_config(d)
    init_inputs = model_inputs(pipeline.example_batch(spec))
    state = state_lib.create_train_state(model, tx, init_inputs, init_rng)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("Model %s: %s parameters", config.model.name, f"{num_params:,}")

    my_files = pipeline.shard_files(train_files, jax.process_index(), jax.process_count())
    train_ds = pipeline.train_dataset(
        my_files,
        spec,
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed,
        shuffle_buffer=d.shuffle_buffer,
        cycle_length=d.cycle_length,
        prefetch=d.prefetch,
    )

    train_iter = iter(train_ds)
    my_eval_files = pipeline.shard_files(eval_files, jax.process_index(), jax.process_count())

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    latest = ckpt.latest_step()
    if latest is not None:
        state, data_state = ckpt.restore(latest, state)
        if data_state is not None:
            train_iter.set_state(data_state)
        logging.info(
            "Resuming from checkpoint %s (step %d of %d)",
            os.path.join(ckpt.directory, str(latest)),
            latest,
            config.num_train_steps,
        )
    else:
        logging.info("No checkpoint in %s: starting from scratch", ckpt.directory)

    train_fn = jax.jit(functools.partial(train_step, model=model, tx=tx), donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_step, model=model))
    writer = None
    if is_main:
        import tensorboardX  # clu's writers need TensorFlow; tensorboardX does not

        writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
    oracle = synthetic.read_oracle(data_dir) if data_dir else None
    kinds = synthetic.class_kinds(data_dir) if data_dir else None

    step = int(state.step)
    last_eval = None
    # Redraw often on a terminal; into a log file, a line every 30 s is plenty.
    progress = tqdm.tqdm(
        total=config.num_train_steps,
        initial=step,
        disable=not is_main,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )
    tick, tick_step = time.perf_counter(), step
    try:
        while step < config.num_train_steps:
            batch = next(train_iter)
            state, train_metrics = train_fn(state, batch, jax.random.fold_in(base_rng, step))
            step += 1
            progress.update(1)
            if step % config.log_every == 0 or step == config.num_train_steps:
                loss = float(train_metrics["loss"])
                if not np.isfinite(loss):
                    raise FloatingPointError(
                        f"train loss is {loss} at step {step}; last good checkpoint: "
                        f"{ckpt.latest_step()} in {ckpt.directory}"
                    )
                now = time.perf_counter()
                rate = (step - tick_step) * config.batch_size / (now - tick)
                tick, tick_step = now, step
                progress.set_postfix(loss=f"{loss:.3f}", ex_per_s=f"{rate:,.0f}")
                if writer:
                    writer.add_scalar("train/loss", loss, step)
                    writer.add_scalar("train/grad_norm", float(train_metrics["grad_norm"]), step)
                    writer.add_scalar("train/examples_per_s", rate, step)
            if step % config.eval_every == 0 or step == config.num_train_steps:
                last_eval = {"step": step, **evaluate(eval_fn, state, my_eval_files, config, kinds)}
                if oracle:
                    last_eval["oracle_gap"] = oracle["gap"]
                    for kind in synthetic.KINDS:
                        last_eval[f"oracle_gap_{kind}"] = oracle[f"gap_{kind}"]
                if is_main:
                    _log_eval(last_eval, workdir, writer, progress)
            if step % config.checkpoint_every == 0 or step == config.num_train_steps:
                ckpt.save(step, state, train_iter.get_state())
    finally:
        progress.close()
        ckpt.wait()
        ckpt.close()
        if writer:
            writer.close()
    if last_eval is None:
        last_eval = _last_logged_eval(workdir)
        logging.info("Already trained to step %d; last evaluation: %s", step, last_eval)
    return last_eval


def _log_eval(result: dict, workdir: str, writer, progress) -> None:
    keys = ["step", "gap", "map", "hit_at_1", "perr", "loss"]
    keys += [k for k in result if k.startswith("gap_")]  # per class kind, on embedded data
    line = {k: result[k] for k in keys}
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")
    if writer:
        for k in keys[1:]:
            writer.add_scalar(f"eval/{k}", result[k], result["step"])
        writer.flush()
    msg = (
        f"step {result['step']}: eval GAP {result['gap']:.4f}  mAP {result['map']:.4f}  "
        f"Hit@1 {result['hit_at_1']:.4f}  PERR {result['perr']:.4f}  loss {result['loss']:.3f}  "
        f"({result['num_videos']} videos)"
    )
    if "oracle_gap" in result:
        msg += (
            f"  | oracle GAP {result['oracle_gap']:.4f}, "
            f"ratio {result['gap'] / result['oracle_gap']:.3f}"
        )
    per_kind = [k for k in keys if k.startswith("gap_")]
    if per_kind:
        msg += "\n  GAP by class kind: " + "  ".join(f"{k[4:]} {result[k]:.3f}" for k in per_kind)
    progress.write(msg)  # above the progress bar; logging it too would print it twice


def _last_logged_eval(workdir: str) -> dict | None:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    return json.loads(lines[-1]) if lines else None
