"""The loop shared by the contrastive trainers: steps jitted on a mesh, train, evaluate, resume.

vmjax.train.contrastive (text-video retrieval) and vmjax.train.audiovisual (audio-visual
pretraining) differ in their model, batches and evaluation; both hand those to `place` and
`fit`, which own the rest: the ('data', 'fsdp') mesh, jitted steps with the batch sharded over
both axes and the state donated, the progress bar, TensorBoard and metrics.jsonl, orbax
checkpoints with the data iterator's state, and resuming from the latest one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vmjax import metrics
from vmjax.train import loop, parallel
from vmjax.train.checkpoint import Checkpointer


@dataclasses.dataclass
class Placement:
    """The steps jitted over a ('data', 'fsdp') mesh, and how to put state and batches there.

    init() -> the initial state (host layout); train(state, device_batch, rng) -> (state,
    metrics); embed(params, host_batch) -> host numpy dict; model_batch(host_batch) -> the
    arrays the device steps read; embed_text(params, tokens, mask) -> host numpy `[B, E]`
    (retrieval only).
    """

    mesh: jax.sharding.Mesh
    init: Callable
    put_state: Callable
    put_batch: Callable
    train: Callable
    embed: Callable
    model_batch: Callable
    embed_text: Callable | None = None


def place(
    config: ml_collections.ConfigDict,
    *,
    init: Callable,
    init_args: tuple,
    train_step: Callable,
    embed_step: Callable,
    model_batch: Callable,
    embed_text_step: Callable | None = None,
) -> Placement:
    """Jits the steps on the mesh of `config.mesh`.

    init(*init_args) -> the initial TrainState (arrays in init_args, e.g. pretrained weights,
    are arguments, not constants baked into the compiled function); train_step(state, batch,
    rng) -> (state, metrics); embed_step(params, batch) -> dict of arrays;
    embed_text_step(params, tokens, mask) -> `[B, E]`.
    """
    mesh = parallel.make_mesh(config.mesh.fsdp)
    batch_sharding = NamedSharding(mesh, P(parallel.BATCH_AXES))
    replicated = NamedSharding(mesh, P())

    def put_state(state):
        shardings = jax.tree.map(
            lambda x: NamedSharding(mesh, parallel.fsdp_spec(np.shape(x), config.mesh.fsdp)),
            state,
        )
        return jax.device_put(state, shardings)

    def put_batch(batch):
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(batch_sharding, np.asarray(x)),
            batch,
        )

    train = jax.jit(train_step, out_shardings=(None, replicated), donate_argnums=0)
    embed = jax.jit(embed_step, out_shardings=replicated)
    create = jax.jit(init)
    embed_text = None
    if embed_text_step is not None:
        jitted_text = jax.jit(embed_text_step, out_shardings=replicated)

        def embed_text(params, tokens, mask):
            return np.asarray(jitted_text(params, *put_batch((tokens, mask))))

    return Placement(
        mesh,
        lambda: create(*init_args),
        put_state,
        put_batch,
        train,
        lambda params, batch: jax.device_get(embed(params, put_batch(model_batch(batch)))),
        model_batch,
        embed_text,
    )


_SETUPS: dict[tuple, tuple] = {}  # (builder, config JSON) -> (model, tx, Placement)
_MAX_SETUPS = 4


def memoized(config: ml_collections.ConfigDict, build: Callable) -> tuple:
    """build(config) -> (model, tx, Placement), memoized by `build` and the config's JSON.

    Jitted functions compile once per function object, so a second run of the same config in
    this process (a resume, an evaluation after training) reuses the compiled steps.
    """
    key = (build.__module__, build.__qualname__, config.to_json_best_effort(sort_keys=True))
    if key not in _SETUPS:
        _SETUPS[key] = build(config)
        while len(_SETUPS) > _MAX_SETUPS:
            del _SETUPS[next(iter(_SETUPS))]
    return _SETUPS[key]


def fit(
    config: ml_collections.ConfigDict,
    workdir: str,
    place_: Placement,
    train_iter: Iterator[dict],
    *,
    evaluate: Callable[[object], dict],
    log_eval: Callable[[dict, str, object, object], None],
    desc: str,
) -> dict | None:
    """Trains to config.num_train_steps from the latest checkpoint in WORKDIR/checkpoints.

    evaluate(params) -> metrics, every `eval_every` steps and at the end; log_eval(result,
    workdir, writer, progress) writes them (result holds 'step' and 'train_loss' too). Each
    step's dropout key is fold_in(state.rng, step). Returns the last evaluation (from
    metrics.jsonl when the run was already complete).
    """
    state = place_.init()
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("%s: %s parameters on %d devices", desc, f"{num_params:,}", jax.device_count())
    state = place_.put_state(state)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    restored = ckpt.resume(state, train_iter, config.num_train_steps)
    if restored is not None:
        state = place_.put_state(restored)

    import tensorboardX  # clu's writers need TensorFlow; tensorboardX does not

    writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
    step = int(np.asarray(state.step))
    last_eval = None
    progress = loop.progress_bar(config, step, desc)
    tick, tick_step = time.perf_counter(), step
    try:
        while step < config.num_train_steps:
            batch = place_.put_batch(place_.model_batch(next(train_iter)))
            rng = jax.random.fold_in(state.rng, step)
            state, train_metrics = place_.train(state, batch, rng)
            step += 1
            progress.update(1)
            last = step == config.num_train_steps
            if step % config.log_every == 0 or last:
                loss = float(train_metrics["loss"])
                if not np.isfinite(loss):
                    raise FloatingPointError(
                        f"train loss is NaN/Inf at step {step}; lower the learning rate"
                    )
                now = time.perf_counter()
                rate = (step - tick_step) * config.batch_size / (now - tick)
                tick, tick_step = now, step
                progress.set_postfix(loss=f"{loss:.3f}", ex_per_s=f"{rate:,.0f}")
                for key, value in train_metrics.items():
                    writer.add_scalar(f"train/{key}", float(value), step)
                writer.add_scalar("train/examples_per_s", rate, step)
            if step % config.eval_every == 0 or last:
                result = evaluate(state.params)
                train_loss = float(train_metrics["loss"])  # of this step's batch
                last_eval = {"step": step, "train_loss": train_loss, **result}
                log_eval(last_eval, workdir, writer, progress)
            if step % config.checkpoint_every == 0 or last:
                ckpt.save(step, state, train_iter)
    finally:
        progress.close()
        ckpt.wait()
        ckpt.close()
        writer.close()
    if last_eval is None:
        last_eval = loop.last_logged_eval(workdir)
        logging.info("Already trained to step %d; last evaluation: %s", step, last_eval)
    return last_eval


def infonce_np(video: np.ndarray, text_emb: np.ndarray, log_scale: float) -> float:
    """The symmetric InfoNCE of all pairs (float64), as vmjax.models.retrieval.infonce_loss.

    For evaluation on the host: `text_emb` is the second view (captions, or audio).
    """
    scale = min(np.exp(log_scale), 100.0)
    logits = scale * text_emb.astype(np.float64) @ video.astype(np.float64).T

    def cross_entropy(x):
        x = x - x.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(x).sum(axis=1)) - np.diag(x)))

    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


def recall_lines(result: dict, directions: dict[str, str]) -> list[str]:
    """Console lines of a final evaluation: per direction (result key prefix -> name) R@k with
    chance, median rank (chance: the middle) and mean rank."""
    n = result["num_videos"]
    lines = []
    for direction, name in directions.items():
        recalls = "  ".join(
            f"R@{k} {result[f'{direction}/r@{k}']:.3f} (chance {min(k / n, 1):.3f})"
            for k in metrics.RECALL_KS
        )
        lines.append(
            f"  {name}: {recalls}  median rank {result[f'{direction}/median_rank']:.0f} "
            f"(chance {(n + 1) / 2:.0f})  mean rank {result[f'{direction}/mean_rank']:.1f}"
        )
    return lines
