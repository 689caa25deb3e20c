"""Pooling of frame features over time, respecting the padding mask.

Sources: Deep Bag of Frames (Abu-El-Haija et al. 2016, arXiv:1609.08675, Sec. 4, as the
starter code has it); NetVLAD (Arandjelovic et al. 2016, arXiv:1511.07247, eqs. 1-4) as in
WILLOW's YouTube-8M entry (Miech et al. 2017, arXiv:1706.06905); NeXtVLAD (Lin et al. 2018,
arXiv:1811.05014, Sec. 3.2); attention pooling is the additive attention of Yang et al. 2016
(Hierarchical Attention Networks, NAACL, eqs. 5-7) with Lin et al. 2017's several heads
(A Structured Self-Attentive Sentence Embedding, arXiv:1703.03130, eq. 6).
"""

import einops
import flax.linen as nn
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


def _l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / sqrt(max(sum x^2, eps)) as tf.nn.l2_normalize: 0 stays 0, with a finite gradient."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), eps))


def _zero_padding(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Zeros padded frames so that no later op (matmul, BN, grad) ever sees their garbage."""
    return jnp.where(mask[..., None], x, 0)


def _masked_batch_norm(x: jax.Array, valid: jax.Array, *, train: bool, name: str) -> jax.Array:
    """BatchNorm whose batch statistics use only positions where `valid` (broadcast to x) holds.

    A batch with no valid position at all falls back to every position, so a train step on an
    all-padding batch gives finite statistics instead of 0/0.
    """
    valid = jnp.where(jnp.any(valid), valid, True)
    bn = nn.BatchNorm(use_running_average=not train, name=name)
    return bn(x, mask=jnp.broadcast_to(valid, x.shape))


class AttentionPooling(nn.Module):
    """Attention-weighted sum of frames: a_t = softmax_t(w^T tanh(W x_t + b)), y = sum_t a_t x_t.

    The softmax runs over valid frames only; a 0-frame row gets a = 0 and y = 0. With H heads
    each head has its own w (W, b shared) and the H sums are concatenated: y is [batch, H * dim].
    The weights a: [batch, time, heads] are sown as intermediates "weights".
    """

    hidden: int
    num_heads: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        del train  # No batch norm or dropout; kept for the shared pooling contract.
        x = _zero_padding(x, mask)
        h = jnp.tanh(nn.Dense(self.hidden, name="proj")(x))
        # A bias on the score would cancel in the softmax.
        scores = nn.Dense(self.num_heads, use_bias=False, name="score")(h)
        valid = mask[..., None]
        scores = jnp.where(valid, scores, jnp.finfo(scores.dtype).min)
        # Multiplying by the mask zeroes the uniform weights a 0-frame row would otherwise get.
        a = jax.nn.softmax(scores, axis=1) * valid
        self.sow("intermediates", "weights", a)
        y = jnp.einsum("bth,btd->bhd", a, x)
        return einops.rearrange(y, "b h d -> b (h d)")


class DBoF(nn.Module):
    """Deep Bag of Frames, as the YouTube-8M starter's DbofModel (without its frame sampling).

    With add_batch_norm (the starter's default):
      z_t = relu6(BN(W_c BN(x_t)))          per frame, cluster_size units
      p   = max_t z_t  or  mean_t z_t       over valid frames
      y   = relu6(BN(W_h p))                hidden_size units
    Without it the two BNs on linear layers become biases and the input BN is dropped. The batch
    statistics skip padded frames, and 0-frame rows in the hidden BN.
    """

    cluster_size: int
    hidden_size: int
    pooling: str = "max"
    add_batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        if self.pooling not in ("max", "mean"):
            raise ValueError(f"DBoF.pooling={self.pooling!r}; expected 'max' or 'mean'")
        bn = self.add_batch_norm
        frames_valid = mask[..., None]
        x = _zero_padding(x, mask)
        if bn:
            x = _masked_batch_norm(x, frames_valid, train=train, name="input_bn")
        z = nn.Dense(self.cluster_size, use_bias=not bn, name="cluster")(x)
        if bn:
            z = _masked_batch_norm(z, frames_valid, train=train, name="cluster_bn")
        z = jax.nn.relu6(z)
        pooled = masked_max(z, mask) if self.pooling == "max" else masked_mean(z, mask)
        y = nn.Dense(self.hidden_size, use_bias=not bn, name="hidden")(pooled)
        if bn:
            rows_valid = jnp.any(mask, axis=1, keepdims=True)
            y = _masked_batch_norm(y, rows_valid, train=train, name="hidden_bn")
        return jax.nn.relu6(y)


class NetVLAD(nn.Module):
    """NetVLAD (Arandjelovic et al. 2016, eqs. 1-4), as in WILLOW's YouTube-8M entry.

      a_k(x_t) = softmax_k(w_k^T x_t + b_k)
      V(j, k)  = sum_t a_k(x_t) (x_t(j) - c_k(j))      over valid frames
      y        = L2(flatten_k(L2_j(V)))                 intra-normalisation, then global L2
    Output [batch, K * dim], cluster-major: y[k * dim + j] is V(j, k) after normalisation.
    """

    num_clusters: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        del train
        dim = x.shape[-1]
        x = _zero_padding(x, mask)
        a = jax.nn.softmax(nn.Dense(self.num_clusters, name="assign")(x), axis=-1)
        a = a * mask[..., None]
        centers = self.param(
            "centers", nn.initializers.normal(dim**-0.5), (self.num_clusters, dim), x.dtype
        )
        # sum_t a (x - c) = sum_t a x - (sum_t a) c: one matmul, no [b, t, k, d] tensor.
        v = jnp.einsum("btk,btd->bkd", a, x) - jnp.sum(a, axis=1)[..., None] * centers
        v = _l2_normalize(v, axis=-1)
        return _l2_normalize(einops.rearrange(v, "b k d -> b (k d)"))


class NeXtVLAD(nn.Module):
    """NeXtVLAD (Lin et al. 2018, arXiv:1811.05014 sec. 3.2): NetVLAD over G weighted groups.

      x_dot_t       = W_e x_t + b_e                   dim lambda * D, split into G groups x~_gt
      alpha_g(x_t)  = sigmoid(w_g^T x_dot_t + b_g)                                     (5)
      alpha_gk(x_t) = softmax_k(w_gk^T x_dot_t + b_gk)                                 (4)
      V(j, k)       = sum_t sum_g alpha_g(x_t) alpha_gk(x_t) (x~_gt(j) - c_k(j))     (3), (6)
      y             = L2(flatten_k(L2_j(V)))          [batch, K * lambda * D / G]
    As in the paper and its code, the assignment and attention read the whole x_dot_t, not only
    group g; t runs over valid frames. With output_size set, y -> dropout -> W_o y -> BN, the
    paper's hidden layer, gives [batch, output_size].
    """

    num_clusters: int
    expansion: int = 2
    groups: int = 8
    output_size: int | None = None
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        k, g = self.num_clusters, self.groups
        expanded = self.expansion * x.shape[-1]
        if expanded % g:
            raise ValueError(
                f"NeXtVLAD: expansion * feature dim = {expanded} must divide into groups={g}"
            )
        n = expanded // g
        x = _zero_padding(x, mask)
        x_dot = nn.Dense(expanded, name="expand")(x)
        alpha_g = jax.nn.sigmoid(nn.Dense(g, name="group_attention")(x_dot))
        logits = nn.Dense(g * k, name="assign")(x_dot)
        alpha_gk = jax.nn.softmax(einops.rearrange(logits, "b t (g k) -> b t g k", g=g), axis=-1)
        w = alpha_g[..., None] * alpha_gk * mask[:, :, None, None]
        x_tilde = einops.rearrange(x_dot, "b t (g n) -> b t g n", g=g)
        centers = self.param("centers", nn.initializers.normal(n**-0.5), (k, n), x.dtype)
        v = jnp.einsum("btgk,btgn->bkn", w, x_tilde)
        v = v - jnp.sum(w, axis=(1, 2))[..., None] * centers
        y = _l2_normalize(einops.rearrange(_l2_normalize(v, axis=-1), "b k n -> b (k n)"))
        if self.output_size is None:
            return y
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        # The BN's offset plays the bias, as in the paper's code.
        y = nn.Dense(self.output_size, use_bias=False, name="output")(y)
        rows_valid = jnp.any(mask, axis=1, keepdims=True)
        return _masked_batch_norm(y, rows_valid, train=train, name="output_bn")
