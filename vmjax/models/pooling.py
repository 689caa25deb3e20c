"""Pooling of frame features over time, respecting the padding mask."""

import jax
import jax.numpy as jnp


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `x: [batch, time, dim]` over valid frames `mask: [batch, time]`; zeros if none."""
    valid = mask[..., None]
    # `where`, not `x * mask`: padded frames may hold inf/NaN and 0 * inf is NaN.
    total = jnp.sum(jnp.where(valid, x, 0), axis=1)
    count = jnp.sum(valid, axis=1, dtype=x.dtype)
    return total / jnp.maximum(count, 1)


def masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Max of `x: [batch, time, dim]` over valid frames `mask: [batch, time]`; zeros if none."""
    valid = mask[..., None]
    pooled = jnp.max(jnp.where(valid, x, -jnp.inf), axis=1)
    # A 0-frame video would otherwise give -inf, which poisons the head and its gradient.
    return jnp.where(jnp.any(valid, axis=1), pooled, 0)
