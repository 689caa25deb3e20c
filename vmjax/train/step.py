"""Pure train and eval steps: (state, batch) -> (state, metrics).

One step serves every kind of parallelism: under `jax.jit` on global arrays (one device or a
`Mesh`) `axis_name` is None and XLA inserts the collectives; under `jax.pmap` the step sees its
device's shard and `axis_name` names the device axis for the gradient all-reduce. Either way the
update is that of the mean per-video loss over the whole global batch, so results do not depend
on how the batch is split (across devices or into `grad_accum` micro-batches).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vmjax.compress import distillation
from vmjax.data.augment import augment_batch
from vmjax.data.device import DTYPES, cast_floats, model_inputs
from vmjax.models.aux_losses import AUX_LOGITS, pop_aux_logits
from vmjax.train.state import TrainState

_AUGMENT_STREAM = 0x617567  # "aug"


def weighted_loss(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    label_weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Sum over classes of binary cross-entropy, summed over weighted videos; and the weight sum.

    label_weights [batch, classes] weighs each class's term (segments: 1 on rated classes only).
    """
    logits = logits.astype(jnp.float32)
    per_class = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
    if label_weights is not None:
        per_class = per_class * label_weights
    return (per_class.sum(-1) * weights).sum(), weights.sum()


def micro_batches(batch: dict, n: int) -> dict:
    """`[B, ...]` leaves -> `[n, B/n, ...]`; micro-batch j takes rows j, j+n, j+2n, ...

    Strided rather than contiguous so each device's rows of a batch-sharded array stay on that
    device: every micro-batch is spread over all devices like the full batch.
    """
    size = jax.tree.leaves(batch)[0].shape[0]
    if size % n:
        raise ValueError(f"batch of {size} rows does not split into grad_accum={n} micro-batches")
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(size // n, n, *x.shape[1:]), 0, 1), batch)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def augment_key(step_rng: jax.Array) -> jax.Array:
    """The augmentation stream of a step's key (apart from dropout's, which uses it as is)."""
    return jax.random.fold_in(step_rng, _AUGMENT_STREAM)


def train_step(
    state: TrainState,
    batch: dict,
    max_loss: jax.Array | float = float("inf"),
    *,
    model,
    tx: optax.GradientTransformation,
    dtype: str = "float32",
    grad_accum: int = 1,
    axis_name: str | None = None,
    skip_nonfinite: bool = False,
    skip_diverged: bool = False,
    augment: ml_collections.ConfigDict | None = None,
) -> tuple[TrainState, dict]:
    """One optimizer step on the mean per-video loss of the (global) batch.

    dtype: 'bfloat16' runs the model in bf16 on a cast copy of the float32 parameters; the
      gradients, parameters and optimizer state stay float32, the loss is summed in float32.
    grad_accum: the batch is split into this many micro-batches whose gradients are summed
      (a `lax.scan`, so activations of one micro-batch are live at a time).
    axis_name: the `pmap` device axis; gradients, losses and counts are summed over it.
    skip_nonfinite: where the loss, a gradient or an updated parameter is NaN/Inf, keep the old
      parameters and optimizer state (the step counter still advances); metrics['finite']
      says which steps were bad.
    skip_diverged: where the (finite) loss is above `max_loss` (config.on_divergence='skip',
      vmjax.train.guards.DivergenceGuard.limit), keep the old parameters, optimizer state and
      model state likewise; metrics['diverged'] says which steps were skipped.
    augment: the config's `augment` block (vmjax.data.augment): the batch is augmented here, on
      the device, before the forward pass.
    Dropout draws from `fold_in(state.rng, step)` (and the device index under pmap), augmentation
    from `augment_key` of the same. With a distillation teacher in the optimizer state
    (vmjax.compress.distillation), the loss is the distillation loss against its logits. Logits a
    model sows as auxiliary (vmjax.models.aux_losses) add their weighted loss to the total.
    """
    compute_dtype = DTYPES[dtype]
    mutable = list(state.model_state)
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    if augment is not None:
        batch = augment_batch(augment_key(rng), batch, augment)

    teacher = distillation.find(state.opt_state)  # config.compress.method='distill'

    def loss_fn(params, model_state, micro, rng):
        inputs = model_inputs(micro, compute_dtype)
        logits, new_model_state = model.apply(
            {"params": cast_floats(params, compute_dtype), **model_state},
            inputs,
            train=True,
            rngs={"dropout": rng},
            mutable=[*mutable, AUX_LOGITS],
        )
        new_model_state, aux_logits = pop_aux_logits(new_model_state)
        if teacher is None:
            total, count = weighted_loss(logits, micro["labels"], micro["weights"])
        else:
            teacher_logits = teacher.logits(inputs, lambda p: cast_floats(p, compute_dtype))
            total, count = distillation.distillation_loss(
                logits,
                teacher_logits,
                micro["labels"],
                micro["weights"],
                teacher.temperature,
                teacher.alpha,
            )
        for aux, weight in aux_logits:  # e.g. late fusion heads (model.modality_loss)
            total = total + weight * weighted_loss(aux, micro["labels"], micro["weights"])[0]
        return total, (count, new_model_state)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum == 1:
        (total, (count, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng)
    else:

        def accumulate(carry, micro):
            grads, total, count, model_state, i = carry
            (t, (c, model_state)), g = grad_fn(
                state.params, model_state, micro, jax.random.fold_in(rng, i)
            )
            grads = jax.tree.map(jnp.add, grads, g)
            return (grads, total + t, count + c, dict(model_state), i + 1), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        init = (zeros, jnp.zeros(()), jnp.zeros(()), dict(state.model_state), 0)
        (grads, total, count, model_state, _), _ = jax.lax.scan(
            accumulate, init, micro_batches(batch, grad_accum)
        )
    if axis_name is not None:
        grads, total, count = jax.lax.psum((grads, total, count), axis_name)
        model_state = jax.lax.pmean(model_state, axis_name)
    scale = 1.0 / jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    loss = total * scale

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    # Finite loss and gradients can still overflow the parameters (a huge learning rate).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params)
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite}
    update = finite if skip_nonfinite else None
    if skip_diverged:
        metrics["diverged"] = diverged = finite & (loss > max_loss)
        update = ~diverged if update is None else update & ~diverged
    if update is not None:

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(update, a, b), new, old)

        params = keep(params, state.params)
        opt_state = keep(opt_state, state.opt_state)
        model_state = keep(dict(model_state), state.model_state)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, model_state=dict(model_state)
    )
    return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, model, dtype: str = "float32") -> dict:
    """Class probabilities and the summed loss of a batch (padding rows weigh 0).

    Also passes the batch's labels and weights through, so a multi-process evaluation can gather
    scores and labels of the global batch together.
    """
    compute_dtype = DTYPES[dtype]
    variables = {"params": cast_floats(state.params, compute_dtype), **state.model_state}
    logits = model.apply(variables, model_inputs(batch, compute_dtype), train=False)
    total, count = weighted_loss(
        logits, batch["labels"], batch["weights"], batch.get("label_weights")
    )
    return {
        "scores": jax.nn.sigmoid(logits.astype(jnp.float32)),
        "logits": logits.astype(jnp.float32),  # test views may average these (data/views.py)
        "loss_sum": total,
        "count": count,
        "labels": batch["labels"],
        "weights": batch["weights"],
    }
