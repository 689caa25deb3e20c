"""Train state and optimizer."""

from __future__ import annotations

import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a step updates, and all a checkpoint needs to continue the run exactly."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # non-parameter collections, e.g. {'batch_stats': ...}; {} if none
    rng: jax.Array  # base key of the run: step s draws dropout from fold_in(rng, s)


def make_optimizer(
    opt: ml_collections.ConfigDict, num_train_steps: int, *, decay_matrices_only: bool = False
) -> optax.GradientTransformation:
    """Adam(W) with linear warmup, cosine decay and global-norm clipping.

    decay_matrices_only: weight decay on parameters of 2 or more dimensions (kernels,
    embeddings) only, not on biases, norm scales or scalars such as a learned temperature.
    """
    schedule = learning_rate_schedule(opt, num_train_steps)
    mask = decay_mask if decay_matrices_only else None
    adam = optax.adamw(schedule, weight_decay=opt.weight_decay, mask=mask)
    if opt.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt.clip_norm), adam)
    return adam


def decay_mask(params: Any) -> Any:
    """True for the parameters weight decay applies to: those with 2 or more dimensions."""
    return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def learning_rate_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
    warmup = min(opt.warmup_steps, max(num_train_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(num_train_steps, warmup + 1),
        end_value=opt.learning_rate * opt.end_learning_rate_factor,
    )


def create_train_state(
    model, tx: optax.GradientTransformation, example_inputs: dict, rng: jax.Array
) -> TrainState:
    """Initialises parameters from example inputs, the optimizer state and the step key.

    `rng` splits into the run's base key (kept in the state) and the initialisation key.
    """
    base_rng, init_rng = jax.random.split(rng)
    variables = dict(model.init(init_rng, example_inputs, train=False))
    params = variables.pop("params")
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=variables,
        rng=base_rng,
    )


def init_run(config: ml_collections.ConfigDict):
    """(model, optimizer, initial TrainState) of the run `config` describes, seeded by it.

    The state's structure is what a checkpoint of that run holds, so it also serves as the
    template to restore one into. `config.compress` may wrap the model (qat) or chain the
    optimizer (prune, distill: the latter loads the teacher run); see vmjax.compress.
    `config.freeze` keeps modules fixed (vmjax.train.pretrained); `config.init_from` is applied
    by the training loop, not here.
    """
    from vmjax import compress
    from vmjax.data import pipeline
    from vmjax.models import build_model
    from vmjax.train import pretrained
    from vmjax.train.step import model_inputs

    model = build_model(config.model, config.data.num_classes)
    tx = pretrained.freeze(config, make_optimizer(config.optimizer, config.num_train_steps))
    model, tx = compress.apply(config, model, tx)
    inputs = model_inputs(pipeline.config_example_batch(config.data))
    return model, tx, create_train_state(model, tx, inputs, jax.random.PRNGKey(config.seed))


def read_run_config(workdir: str) -> tuple[ml_collections.ConfigDict, str]:
    """(config, absolute workdir) of a run directory's config.json."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} a vmjax run directory?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f)["config"]), workdir


def restore_latest(config: ml_collections.ConfigDict, workdir: str):
    """(model, state, step) of the latest checkpoint in WORKDIR/checkpoints of run `config`.

    The restore template is `init_run`'s state traced with jax.eval_shape: shapes only, no
    parameters are initialised just to be overwritten. The model is init_run's (compress-wrapped
    where the run's config says so).
    """
    from vmjax.train.checkpoint import restore_checkpoint

    built = {}

    def template():
        built["model"], _, state = init_run(config)
        return state

    like = jax.eval_shape(template)
    state, step = restore_checkpoint(os.path.join(workdir, "checkpoints"), like)
    return built["model"], state, step
