"""Gradual magnitude pruning (Zhu & Gupta 2017) as an optax transformation after the optimizer.

    tx = optax.chain(optimizer, magnitude_pruning(sparsity=0.9, begin_step=0, end_step=400,
                                                  update_every=50, regex=r"(^|/)kernel$"))

Zhu & Gupta, "To prune, or not to prune" (arXiv:1710.01878), eq. 1: at mask updates
t = t0, t0 + dt, ..., t0 + n dt the sparsity of every pruned tensor is
    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3,    here with s_i = 0,
and the s_t fraction of its weights smallest in magnitude are masked to zero. Between updates the
masks stay fixed; after t0 + n dt (end_step) they stay at s_f for the rest of training. Step t
is the optimizer update made when state.step == t (0-based, like Zhu & Gupta's), so the
parameters of step t + 1 onwards carry that update's masks; end_step is also an update step
when end_step - begin_step is not a multiple of update_every.

What optax provides and what is written here: `optax.masked` restricts the transformation to
the leaves the regex picks (the others pass through untouched and get no mask in the state).
optax has no magnitude pruning transformation (its `contrib` has none either), so the schedule,
the per-tensor top-k masks and the update masking are written here: at a mask update the new
mask keeps the largest |w| of the current (already masked) weights, and every step the update
of a pruned weight is -w, so the weight becomes exactly 0 when the mask updates and stays 0.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def sparsity_at(step, sparsity: float, begin_step: int, end_step: int, update_every: int):
    """The sparsity of the masks the update at `step` (state.step == step) applies.

    Masks are recomputed at begin_step, begin_step + update_every, ... and at end_step, so the
    sparsity is the formula's at the last of those update steps <= step (0 before begin_step).
    Works on Python ints and on traced scalars.
    """
    span = end_step - begin_step
    if span == 0:  # one update, straight to the target
        return jnp.where(jnp.asarray(step) < begin_step, 0.0, sparsity)
    t = jnp.clip(jnp.asarray(step) - begin_step, 0, span)
    t = jnp.where(t < span, t - t % update_every, span)  # the last mask update so far
    s = sparsity * (1.0 - (1.0 - t / span) ** 3)
    return jnp.where(jnp.asarray(step) < begin_step, 0.0, s)


def is_update_step(step, begin_step: int, end_step: int, update_every: int):
    """True at the steps where the masks are recomputed."""
    step = jnp.asarray(step)
    regular = (step - begin_step) % update_every == 0
    return (step >= begin_step) & (step <= end_step) & (regular | (step == end_step))


def magnitude_mask(w: jax.Array, sparsity) -> jax.Array:
    """A bool mask zeroing exactly round(sparsity * w.size) entries of w, the smallest |w|.

    Ties at the threshold (e.g. weights already pruned to 0) are broken by position, so the
    count is exact: round(sparsity * size) in float32 (for tensors over 2^23 entries that
    product can be one off the exact one). A sort of |w| gives the threshold, the largest
    pruned magnitude (cheaper on CPU than an argsort and a scatter of ranks).
    """
    a = jnp.abs(w).ravel()
    k = jnp.round(sparsity * a.size).astype(jnp.int32)
    threshold = jnp.sort(a)[jnp.maximum(k - 1, 0)]
    below = a < threshold
    tied = a == threshold
    # Of the weights equal to the threshold, the first (k - #below) by position are pruned.
    pruned = below | (tied & (jnp.cumsum(tied) <= k - below.sum()))
    return jnp.where(k > 0, ~pruned, True).reshape(w.shape)


class PruningState(NamedTuple):
    """`count`: updates done so far; `masks`: True where a weight is kept."""

    count: jax.Array
    masks: optax.Params


def _prune_selected(
    sparsity: float, begin_step: int, end_step: int, update_every: int
) -> optax.GradientTransformation:
    """Pruning of every leaf it sees (optax.masked hands it only the selected ones)."""

    def init(params):
        masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
        return PruningState(jnp.zeros((), jnp.int32), masks)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("magnitude_pruning needs the parameters: tx.update(g, s, params)")
        step = state.count
        target = sparsity_at(step, sparsity, begin_step, end_step, update_every)

        def recompute(masks):
            return jax.tree.map(lambda p: magnitude_mask(p, target), params)

        masks = jax.lax.cond(
            is_update_step(step, begin_step, end_step, update_every),
            recompute,
            lambda masks: masks,
            state.masks,
        )
        # A pruned weight's update is -w: it lands on exactly 0 (x + -x == 0 in floating point).
        updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params, masks)
        return updates, PruningState(step + 1, masks)

    return optax.GradientTransformation(init, update)


def selected(params, regex: str):
    """A bool tree: True for the leaves whose '/'-joined path matches `regex` (re.search)."""
    pattern = re.compile(regex)

    def pick(path, _):
        return bool(pattern.search("/".join(_key_name(k) for k in path)))

    return jax.tree_util.tree_map_with_path(pick, params)


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def magnitude_pruning(
    sparsity: float,
    begin_step: int,
    end_step: int,
    update_every: int,
    regex: str = r"(^|/)kernel$",
) -> optax.GradientTransformation:
    """Gradual magnitude pruning of the leaves `regex` selects; chain it after the optimizer.

    sparsity: s_f, the final fraction of zeros in each selected tensor.
    begin_step, end_step, update_every: t0, t0 + n dt and dt of the schedule (in updates).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"config.compress.sparsity={sparsity}; expected 0 <= sparsity < 1")
    if update_every < 1 or end_step < begin_step or begin_step < 0:
        raise ValueError(
            f"config.compress: begin_step={begin_step}, end_step={end_step}, "
            f"update_every={update_every}; expected 0 <= begin_step <= end_step, update_every >= 1"
        )
    inner = _prune_selected(sparsity, begin_step, end_step, update_every)
    return optax.masked(inner, lambda params: selected(params, regex))


def masks_of(opt_state) -> list:
    """The mask arrays held in an optimizer state (empty if it does no pruning)."""
    found = [
        x
        for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruningState))
        if isinstance(x, PruningState)
    ]
    return [m for state in found for m in jax.tree.leaves(state.masks)]


def sparsity_report(params, regex: str) -> dict:
    """Zeros / size over the selected leaves and over all parameters (numpy, for reports)."""
    pick = jax.tree.leaves(selected(params, regex))
    leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    chosen = [x for x, p in zip(leaves, pick, strict=True) if p]
    zeros = sum(int((x == 0).sum()) for x in chosen)
    size = sum(x.size for x in chosen)
    total = sum(x.size for x in leaves)
    all_zeros = sum(int((x == 0).sum()) for x in leaves)
    return {
        "pruned_sparsity": zeros / max(size, 1),
        "overall_sparsity": all_zeros / max(total, 1),
        "pruned_params": size,
        "params": total,
    }
