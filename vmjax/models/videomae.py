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

`VideoMAEPixels` is the classifier the model registry builds (model.name 'videomae_pixels',
the encoder's fields under model.videomae): what vmjax.tools.from_transformers writes for a
transformers VideoMAEForVideoClassification checkpoint.
"""

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmjax.models.cnn import normalize_pixels
from vmjax.models.heads import LogisticHead
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
    def __call__(
        self, video: jax.Array, *, train: bool, return_time_features: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """`[B, D]`; with `return_time_features` also `[B, nt, D]`: the pooling applied to the
        tokens of each temporal position alone (the spatial mean through fc_norm for 'mean',
        the spatial mean of LN(x_L) for 'first')."""
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"VideoMAE pooling={self.pooling!r} is unknown; expected one of {POOLINGS}"
            )
        tokens = TubeletEmbedding(self.hidden_size, tuple(self.patch_size), name="embedding")(video)
        nt = tokens.shape[1]
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
        per_time = einops.rearrange(x, "b (nt ns) d -> b nt ns d", nt=nt)
        if self.pooling == "mean":
            fc_norm = nn.LayerNorm(self.fc_norm_epsilon, use_fast_variance=False, name="fc_norm")
            pooled = fc_norm(jnp.mean(x, axis=1))
            time_features = fc_norm(jnp.mean(per_time, axis=2))
        else:
            ln = nn.LayerNorm(self.layer_norm_epsilon, use_fast_variance=False, name="ln_final")
            pooled = ln(x)[:, 0]
            time_features = jnp.mean(ln(per_time), axis=2)
        return (pooled, time_features) if return_time_features else pooled


class VideoMAEPixels(nn.Module):
    """VideoMAE on raw pixels: normalize, encoder (`videomae`: VideoMAE's fields), linear head.

    Reads `inputs["pixels"]: [batch, time, H, W, 3]` (uint8 in [0, 255] or float in [0, 1]),
    normalised by `pixel_mean` / `pixel_std`, and `inputs["mask"]: [batch, time]`. VideoMAE has
    no attention mask, so frames outside the mask become 0 after normalization (the mean
    colour) and still count as tokens: a clip shorter than data.num_frames is read as padded.
    """

    num_classes: int
    videomae: dict
    pixel_mean: tuple[float, ...]  # per channel, of [0, 1] pixels
    pixel_std: tuple[float, ...]

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        if "pixels" not in inputs:
            raise ValueError(
                f"videomae_pixels reads inputs['pixels'] [batch, time, H, W, 3]; got keys "
                f"{sorted(inputs)}"
            )
        pixels = normalize_pixels(inputs["pixels"], self.pixel_mean, self.pixel_std)
        if inputs.get("mask") is not None:
            pixels = jnp.where(inputs["mask"][:, :, None, None, None], pixels, 0)
        embedding = VideoMAE(**encoder_fields(self.videomae), name="videomae")(pixels, train=train)
        return LogisticHead(self.num_classes, name="head")(embedding)


def encoder_fields(videomae: dict) -> dict:
    """VideoMAE's keyword arguments from a config's model.videomae (JSON lists as tuples)."""
    fields = dict(videomae)
    if "patch_size" in fields:
        fields["patch_size"] = tuple(fields["patch_size"])
    return fields
