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
The masks live in the optimizer state; they are recomputed (under `lax.cond`) only at the update
steps, and every other step applies the stored ones. With update_every = 1 (e.g. a short run
whose schedule follows num_train_steps) every step in the window recomputes them: each
recomputation is ~31 counting passes over the pruned weights.
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
    product can be one off the exact one). The threshold, the k-th smallest |w|, is found by
    bisection on the bit patterns of |w| (31 counting passes over w, vectorised) rather than by a
    full sort of |w| (n log n comparisons, on one thread on CPU).
    """
    bits = _magnitude_bits(w)
    k = jnp.round(sparsity * bits.size).astype(jnp.int32)
    threshold = _kth_smallest(bits, jnp.maximum(k, 1))
    below = bits < threshold
    tied = bits == threshold
    need = k - below.sum()  # how many of the tied are pruned; <= tied.sum() by construction

    def first_by_position():
        return below | (tied & (jnp.cumsum(tied) <= need))

    # The cumulative sum is needed only when more weights tie than are pruned (rare after the
    # first update: the zeros pruned before lie strictly below the new threshold).
    pruned = jax.lax.cond(tied.sum() > need, first_by_position, lambda: below | tied)
    return jnp.where(k > 0, ~pruned, True).reshape(w.shape)


def _magnitude_bits(w: jax.Array) -> jax.Array:
    """|w| (as float32) as int32 bit patterns, flat: for floats >= 0 they sort like the values.

    Exact for float32, bfloat16 and float16 weights (their float32 casts keep the order).
    """
    a = jnp.abs(w).astype(jnp.float32).ravel()
    return jax.lax.bitcast_convert_type(a, jnp.int32)


def _kth_smallest(bits: jax.Array, k) -> jax.Array:
    """The k-th smallest (1-based) of non-negative int32s: the least t with #(bits <= t) >= k."""

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits <= mid, dtype=jnp.int32) >= k
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    # hi - lo at least halves each pass: 31 passes take [0, 2^31 - 1] to one value.
    lo, _ = jax.lax.fori_loop(0, 31, halve, (jnp.int32(0), jnp.int32(2**31 - 1)))
    return lo


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
