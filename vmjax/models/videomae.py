"""VideoMAE's encoder (Tong et al. 2022) for classification, built from ViViT's layers.

It is ViViT Model 1 (one encoder over all tubelet tokens, vmjax.models.vivit) with the choices
VideoMAE made differently:
    x_0 = TubeletEmbed(video) + P                  P: fixed sinusoids over the flat token index
    a   = x + W_o MHSA(LN(x))                      LN epsilon `layer_norm_epsilon` (HF: 1e-12)
    x'  = a + W_2 gelu(W_1 LN(a) + b_1) + b_2      exact (erf) GELU unless `approximate_gelu`
    pooled = LN_fc(mean_n x_L)                     'mean': no final LN before the mean;
                                                   'first': LN(x_L)[:, 0] (there is no CLS)
VideoMAE has no key bias; a key bias never changes attention (q . b_k is the same for every key
of a query, and softmax ignores a shift), so MultiHeadAttention's key bias simply stays zero.
"""

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmjax.models.transformer import KERNEL_INIT, MultiHeadAttention
from vmjax.models.vivit import TubeletEmbedding

POOLINGS = ("mean", "first")


def interleaved_sinusoids(num_positions: int, dim: int) -> np.ndarray:
    """`[num_positions, dim]`: row p, feature j = sin(p w_j) for even j, cos(p w_j) for odd j.

    w_j = 10000^(-2 floor(j/2) / dim), as VideoMAE's table; ViViT's `sincos_init` instead puts
    all sines before all cosines, so the two tables are not interchangeable.
    """
    j = np.arange(dim)
    angle = np.arange(num_positions)[:, None] / np.power(10000.0, 2 * (j // 2) / dim)[None, :]
    return np.where(j % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)


class Mlp(nn.Module):
    """fc2(dropout(gelu(fc1(x)))), dropout after fc2; the GELU variant is a field."""

    mlp_dim: int
    approximate_gelu: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = nn.Dense(self.mlp_dim, kernel_init=KERNEL_INIT, name="fc1")(x)
        y = nn.gelu(y, approximate=self.approximate_gelu)
        y = nn.Dropout(self.dropout)(y, deterministic=not train)
        y = nn.Dense(x.shape[-1], kernel_init=KERNEL_INIT, name="fc2")(y)
        return nn.Dropout(self.dropout)(y, deterministic=not train)


class Block(nn.Module):
    """x + MHSA(LN(x)), then x + Mlp(LN(x)), with VideoMAE's LN epsilon and GELU."""

    num_heads: int
    mlp_dim: int
    layer_norm_epsilon: float
    approximate_gelu: bool = False
    dropout: float = 0.0
    attention_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        # Two-pass variance, as PyTorch: with epsilon 1e-12 the fast E[x^2] - E[x]^2 form has
        # nothing to hide its cancellation error behind.
        norm = dict(epsilon=self.layer_norm_epsilon, use_fast_variance=False)
        y = nn.LayerNorm(name="ln_attention", **norm)(x)
        y = MultiHeadAttention(self.num_heads, self.attention_dropout, name="attention")(
            y, train=train
        )
        x = x + nn.Dropout(self.dropout)(y, deterministic=not train)
        y = nn.LayerNorm(name="ln_mlp", **norm)(x)
        return x + Mlp(self.mlp_dim, self.approximate_gelu, self.dropout, name="mlp")(
            y, train=train
        )


class VideoMAE(nn.Module):
    """Pixels `[B, T, H, W, C]` -> pooled `[B, D]` (see the module docstring for the equations).

    fc_norm_epsilon: the pooled vector's LN (HF builds it with PyTorch's default, 1e-5).
    """

    num_layers: int
    hidden_size: int
    num_heads: int
    mlp_dim: int
    patch_size: tuple[int, int, int] = (2, 16, 16)  # tubelet (pt, ph, pw)
    pooling: str = "mean"
    layer_norm_epsilon: float = 1e-12
    fc_norm_epsilon: float = 1e-5
    approximate_gelu: bool = False
    dropout: float = 0.0
    attention_dropout: float = 0.0

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool) -> jax.Array:
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"VideoMAE pooling={self.pooling!r} is unknown; expected one of {POOLINGS}"
            )
        tokens = TubeletEmbedding(self.hidden_size, tuple(self.patch_size), name="embedding")(video)
        x = einops.rearrange(tokens, "b nt ns d -> b (nt ns) d")
        # Fixed, not learned: a constant of the token count, so it is no parameter.
        x = x + jnp.asarray(interleaved_sinusoids(x.shape[1], x.shape[2]), x.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        for i in range(self.num_layers):
            x = Block(
                self.num_heads,
                self.mlp_dim,
                self.layer_norm_epsilon,
                self.approximate_gelu,
                self.dropout,
                self.attention_dropout,
                name=f"block_{i}",
            )(x, train=train)
        if self.pooling == "mean":
            return nn.LayerNorm(self.fc_norm_epsilon, use_fast_variance=False, name="fc_norm")(
                jnp.mean(x, axis=1)
            )
        x = nn.LayerNorm(self.layer_norm_epsilon, use_fast_variance=False, name="ln_final")(x)
        return x[:, 0]
