"""What the contrastive trainers share: steps jitted on a mesh, their Task, InfoNCE on the host.

vmjax.train.retrieval (text-video retrieval) and vmjax.train.audiovisual (audio-visual
pretraining) differ in their model, batches and evaluation; `place` jits their steps over the
('data', 'fsdp') mesh (the batch sharded over both axes, the state donated) and `task` hands
them to the one training loop (vmjax.train.fit), which owns resume, guards, progress,
TensorBoard, metrics.jsonl and checkpoints with the data iterator's state.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vmjax import metrics
from vmjax import run as run_lib
from vmjax.train import fit as fit_lib
from vmjax.train import logs, parallel


@dataclasses.dataclass
class Placement:
    """The steps jitted over a ('data', 'fsdp') mesh, and how to put state and batches there.

    init() -> the initial state (host layout); train(state, device_batch, rng, max_loss) ->
    (state, metrics), see `guarded`; embed(params, host_batch) -> host numpy dict;
    model_batch(host_batch) -> the arrays the device steps read; embed_text(params, tokens,
    mask) -> host numpy `[B, E]` (retrieval only).
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

    train = jax.jit(
        guarded(train_step, skip_nonfinite=config.on_nonfinite_loss == "skip"),
        out_shardings=(None, replicated),
        donate_argnums=0,
    )
    embed = jax.jit(embed_step, out_shardings=replicated)
    create = jax.jit(init)
    embed_text = None
    if embed_text_step is not None:
        jitted_text = jax.jit(embed_text_step, out_shardings=replicated)

        def embed_text(params, tokens, mask):
            # The same rows on every process: each puts its share, so the global array is them.
            n, i = jax.process_count(), jax.process_index()
            share = len(tokens) // n
            mine = slice(i * share, (i + 1) * share)
            return np.asarray(jitted_text(params, *put_batch((tokens[mine], mask[mine]))))

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


def guarded(train_step: Callable, *, skip_nonfinite: bool) -> Callable:
    """train_step(state, batch, rng) -> step(state, batch, rng, max_loss) that may keep the
    old parameters and optimizer state (the step counter still advances).

    metrics['finite']: the loss, gradient norm and new parameters are finite; where not, and
    `skip_nonfinite`, the update is dropped. metrics['diverged']: a finite loss above `max_loss`
    (config.on_divergence='skip'; inf otherwise): the update is dropped.
    """

    def step(state, batch, rng, max_loss=float("inf")):
        new, metrics = train_step(state, batch, rng)
        loss = metrics["loss"]
        params_finite = jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(new.params)])
        finite = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"]) & params_finite.all()
        diverged = finite & (loss > max_loss)
        update = ~diverged & finite if skip_nonfinite else ~diverged

        def keep(new_tree, old_tree):
            return jax.tree.map(lambda a, b: jnp.where(update, a, b), new_tree, old_tree)

        new = new.replace(
            params=keep(new.params, state.params), opt_state=keep(new.opt_state, state.opt_state)
        )
        return new, {**metrics, "finite": finite, "diverged": diverged}

    return step


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


def task(
    place_: Placement,
    config: ml_collections.ConfigDict,
    *,
    evaluate: Callable[[object], dict],
    log_eval: Callable[[dict, logs.Writer, object], None],
    desc: str,
) -> fit_lib.Task:
    """The contrastive trainers' Task for the one loop (vmjax.train.fit).

    evaluate(params) -> metrics, every `eval_every` steps and at the end; log_eval(result,
    writer, progress) writes them. Each step's dropout key is fold_in(state.rng, step). The
    steps can skip NaN/Inf and diverged updates (config.on_nonfinite_loss / on_divergence).
    """
    state = place_.init()
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("%s: %s parameters on %d devices", desc, f"{num_params:,}", jax.device_count())

    def train_step(state, batch, step, max_loss=float("inf")):
        device_batch = place_.put_batch(place_.model_batch(batch))
        rng = jax.random.fold_in(state.rng, step)
        return place_.train(state, device_batch, rng, max_loss)

    return fit_lib.Task(
        desc=desc,
        state=place_.put_state(state),
        train_step=train_step,
        evaluate=lambda state, step: evaluate(state.params),
        log_eval=log_eval,
        put_state=place_.put_state,
        on_nonfinite_loss=config.on_nonfinite_loss,
        skips=("nonfinite", "divergence"),
    )


def restore_params(place_: Placement, run: run_lib.Run, step: int | None) -> tuple:
    """(params on the mesh, step) of checkpoint `step` (default: the newest good one).

    The template comes from jax.eval_shape of the initial state; only the parameters and the
    step are read, never the optimizer state.
    """
    from vmjax.train.checkpoint import restore_checkpoint

    shapes = jax.eval_shape(place_.init)
    replicated = NamedSharding(place_.mesh, P())
    like = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        {"params": shapes.params, "step": shapes.step},
    )
    state, step = restore_checkpoint(run.checkpoint_dir, like, step, partial=True)
    return state["params"], step


def write_eval(workdir: str, result: dict) -> str:
    """WORKDIR/eval/step_N.json (process 0), as the classifier's `--mode eval` writes."""
    out = os.path.join(workdir, "eval")
    path = os.path.join(out, f"step_{result['step']}.json")
    if jax.process_index() == 0:
        os.makedirs(out, exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2, default=float)
        logging.info("Wrote %s", path)
    return path


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
