"""Pure train and eval steps: (state, batch, rng) -> (state, metrics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vmjax.data import yt8m
from vmjax.train.state import TrainState


def model_inputs(batch: dict) -> dict:
    """Model inputs from a batch: uint8 frames are dequantized here, on the device."""
    inputs = {}
    for key in ("rgb", "audio"):
        x = batch[key]
        inputs[key] = yt8m.dequantize(x, xp=jnp) if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    for key in ("mask", "text_tokens", "text_mask"):
        if key in batch:
            inputs[key] = batch[key]
    return inputs


def weighted_loss(
    logits: jax.Array, labels: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Sum over classes of binary cross-entropy, summed over weighted videos; and the weight sum."""
    per_video = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).sum(-1)
    return (per_video * weights).sum(), weights.sum()


def train_step(
    state: TrainState, batch: dict, rng: jax.Array, *, model, tx: optax.GradientTransformation
) -> tuple[TrainState, dict]:
    """One optimizer step on the mean per-video loss; updates batch statistics if any."""
    mutable = list(state.model_state)

    def loss_fn(params):
        logits, new_model_state = model.apply(
            {"params": params, **state.model_state},
            model_inputs(batch),
            train=True,
            rngs={"dropout": rng},
            mutable=mutable,
        )
        total, count = weighted_loss(logits, batch["labels"], batch["weights"])
        return total / jnp.maximum(count, 1.0), new_model_state

    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, model_state=dict(model_state)
    )
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def eval_step(state: TrainState, batch: dict, *, model) -> dict:
    """Class probabilities and the summed loss of a batch (padding rows weigh 0)."""
    variables = {"params": state.params, **state.model_state}
    logits = model.apply(variables, model_inputs(batch), train=False)
    total, count = weighted_loss(logits, batch["labels"], batch["weights"])
    return {"scores": jax.nn.sigmoid(logits), "loss_sum": total, "count": count}
