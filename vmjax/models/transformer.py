"""Pre-LayerNorm ViT encoder pieces with a boolean key mask for padded tokens.

Sources: scaled dot-product and multi-head attention (Vaswani et al. 2017, arXiv:1706.03762,
eq. 1 and Sec. 3.2.2); the pre-LayerNorm block and final LayerNorm of ViT (Dosovitskiy et al.
2021, arXiv:2010.11929, eqs. 2-4) with its reference code's initialisers (Xavier-uniform
kernels, near-zero MLP biases).
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# ViT's initialisers: Xavier-uniform Dense kernels, tiny-normal MLP biases.
KERNEL_INIT = nn.initializers.xavier_uniform()
_MLP_BIAS_INIT = nn.initializers.normal(stddev=1e-6)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    key_mask: jax.Array | None = None,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v over the key axis, skipping keys where `key_mask` is False.

    Args:
      query: `[..., q_len, heads, head_dim]`.
      key, value: `[..., k_len, heads, head_dim]`.
      key_mask: `[..., k_len]`, True for tokens that may be attended to.
      dropout: applied to the attention weights (identity when None).

    Returns `[..., q_len, heads, head_dim]`. A query whose keys are all padded gets zeros.
    """
    depth = query.shape[-1]
    logits = jnp.einsum("...qhd,...khd->...hqk", query, key) / jnp.sqrt(depth).astype(query.dtype)
    if key_mask is not None:
        valid = key_mask[..., None, None, :]
        # A finite floor, not -inf: an all-padded row then softmaxes to uniform, not NaN.
        logits = jnp.where(valid, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if key_mask is not None:
        # Zero the uniform weights of all-padded rows so padded values never leak anywhere.
        weights = jnp.where(valid, weights, 0)
    if dropout is not None:
        weights = dropout(weights)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention over the second-to-last axis of `x: [..., tokens, dim]`."""

    num_heads: int
    attention_dropout: float = 0.0

    @nn.compact
    def __call__(
        self, x: jax.Array, key_mask: jax.Array | None = None, *, train: bool
    ) -> jax.Array:
        dim = x.shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"token dim {dim} is not divisible by num_heads={self.num_heads}")
        heads = (self.num_heads, dim // self.num_heads)
        q = nn.DenseGeneral(heads, kernel_init=KERNEL_INIT, name="query")(x)
        k = nn.DenseGeneral(heads, kernel_init=KERNEL_INIT, name="key")(x)
        v = nn.DenseGeneral(heads, kernel_init=KERNEL_INIT, name="value")(x)
        drop = nn.Dropout(self.attention_dropout)
        out = dot_product_attention(
            q, k, v, key_mask, dropout=lambda w: drop(w, deterministic=not train)
        )
        return nn.DenseGeneral(dim, axis=(-2, -1), kernel_init=KERNEL_INIT, name="out")(out)


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> GELU -> dropout -> Dense(dim) -> dropout, applied per token."""

    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        dim = x.shape[-1]
        y = nn.Dense(self.mlp_dim, kernel_init=KERNEL_INIT, bias_init=_MLP_BIAS_INIT)(x)
        y = nn.gelu(y)
        y = nn.Dropout(self.dropout)(y, deterministic=not train)
        y = nn.Dense(dim, kernel_init=KERNEL_INIT, bias_init=_MLP_BIAS_INIT)(y)
        return nn.Dropout(self.dropout)(y, deterministic=not train)


class EncoderBlock(nn.Module):
    """x + MHSA(LN(x)), then x + MLP(LN(x)); `key_mask: [..., tokens]` hides padded tokens."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0

    @nn.compact
    def __call__(
        self, x: jax.Array, key_mask: jax.Array | None = None, *, train: bool
    ) -> jax.Array:
        y = nn.LayerNorm(name="ln_attention")(x)
        y = MultiHeadAttention(self.num_heads, self.attention_dropout, name="attention")(
            y, key_mask, train=train
        )
        x = x + nn.Dropout(self.dropout)(y, deterministic=not train)
        y = nn.LayerNorm(name="ln_mlp")(x)
        return x + MlpBlock(self.mlp_dim, self.dropout, name="mlp")(y, train=train)


class Encoder(nn.Module):
    """`num_layers` EncoderBlocks and a final LayerNorm: `[..., tokens, dim]` -> same shape."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0

    @nn.compact
    def __call__(
        self, x: jax.Array, key_mask: jax.Array | None = None, *, train: bool
    ) -> jax.Array:
        for i in range(self.num_layers):
            x = EncoderBlock(
                self.num_heads,
                self.mlp_dim,
                self.dropout,
                self.attention_dropout,
                name=f"block_{i}",
            )(x, key_mask, train=train)
        return nn.LayerNorm(name="ln_final")(x)
