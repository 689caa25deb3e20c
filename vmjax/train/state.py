"""Train state and optimizer."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vmjax.train.optimizer import clip_adamw


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
    """Adam(W) with linear warmup, cosine decay and global-norm clipping, as one fused update
    (vmjax.train.optimizer: optax's chain(clip_by_global_norm, adamw) in fewer passes).

    decay_matrices_only: weight decay on parameters of 2 or more dimensions (kernels,
    embeddings) only, not on biases, norm scales or scalars such as a learned temperature.
    """
    schedule = learning_rate_schedule(opt, num_train_steps)
    mask = decay_mask if decay_matrices_only else None
    return clip_adamw(schedule, clip_norm=opt.clip_norm, weight_decay=opt.weight_decay, mask=mask)


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
    Compiled as one program: run op by op, a model's initialisation dispatches (and, the
    first time, compiles) every initialiser and optimizer-state zero on its own, which took
    longer than the whole program (configs/yt8m.py:frame,smoke's `init_run`, 2-core CPU VM,
    nothing else running, median of 3: 5.0 s (4.7-5.4) op by op, 2.9 s (2.7-2.9) compiled).
    The values equal those of op-by-op initialisation up to float rounding (compiled
    together, a few may differ in the last bit).
    """

    def init(inputs, rng):
        base_rng, init_rng = jax.random.split(rng)
        variables = dict(model.init(init_rng, inputs, train=False))
        params = variables.pop("params")
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=variables,
            rng=base_rng,
        )

    return jax.jit(init)(example_inputs, rng)
