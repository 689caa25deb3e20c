"""Auxiliary losses: extra logits a model asks the train step to score against the labels.

A model calls `sow_aux_logits(self, name, logits, weight)` inside its `__call__`; the train
step (vmjax.train.step) applies the model with the `AUX_LOGITS` collection mutable, takes
the sown entries out with `pop_aux_logits` and adds `weight * loss(logits, labels)` for each
to the loss of the model's output (the same per-video sum of binary cross-entropies). Where
the collection is not mutable (evaluation, inference, export) sowing does nothing, so the
model's output and its saved variables are unchanged.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

AUX_LOGITS = "aux_logits"


def sow_aux_logits(module: nn.Module, name: str, logits: jax.Array, weight: float) -> None:
    """Asks for `weight` x the loss of `logits` [batch, classes] against the batch's labels.

    `name` shares the module's namespace: it must differ from its submodules' names."""
    if module.is_initializing():  # init makes every collection mutable: keep it out of the state
        return
    module.sow(AUX_LOGITS, name, {"logits": logits, "weight": jnp.float32(weight)})


def pop_aux_logits(variables: dict) -> tuple[dict, list[tuple[jax.Array, jax.Array]]]:
    """`variables` without the AUX_LOGITS collection, and its (logits, weight) pairs."""
    rest = {k: v for k, v in variables.items() if k != AUX_LOGITS}
    sown = variables.get(AUX_LOGITS, {})
    entries = jax.tree.leaves(sown, is_leaf=lambda x: isinstance(x, dict) and "logits" in x)
    return rest, [(e["logits"], e["weight"]) for e in entries]
