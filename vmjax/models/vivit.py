"""ViViT (Arnab et al. 2021): tubelet / frame-feature embeddings and the paper's four encoders.

Source: "ViViT: A Video Vision Transformer", arXiv:2103.15691: tubelet embedding (Sec. 3.2),
Models 1-4 (Sec. 3.3), positional embeddings (Sec. 3.4), parameter counts (Table 2).

Tokens are `[batch, time, space, dim]` throughout (`nt` time indices, `ns` tokens per index), so
every variant can honour a temporal mask `[batch, nt]`: padded time steps are never attended to
by valid tokens and are left out of mean pooling (the paper has no masks).

Checked against Table 2 and Scenic's projects/vivit/model.py at the K400 setup (ViViT-B,
tubelets 2x16x16, 32 frames of 224x224, a linear 400-class head; tests/models/test_vivit.py
counts each model from shapes):
  Model  paper    before   now (configs/vivit_k400.py)
  1      88.9M    86.7M    88,953,232
  2      115.1M   115.1M   115,061,392
  3      117.3M   115.1M   117,319,312
  4      88.9M    86.7M    88,952,464
Fixed:
- Positional embeddings. Models 1, 3 and 4 added a time table plus a space table, nt + ns =
  212 rows; the paper (Sec. 3.4: ViT's table repeated over time) and Scenic (one learned
  embedding per token of the sequence) have one row per token, nt * ns = 3,136 (2.25M more
  parameters at D = 768). This was the whole gap of Models 1, 3 and 4. posemb_layout='auto'
  picks the paper's tables (joint for Models 1, 3, 4; a space table per frame and a time
  table for Model 2, which already matched); configs/vivit_k400.py sets it. The module
  default stays 'factorised', so runs saved before the field and the frame-feature configs
  keep their parameters.
- Pooling. Models 3 and 4 have no CLS token (nor does Scenic's: it asserts 'gap'), so the
  former default pooling='cls' made selecting them alone fail. pooling='auto' (the default)
  picks CLS for Models 1 and 2 and the token mean for 3 and 4; an explicit 'cls' there is a
  ValueError naming config.model.pooling and config.model.variant.
Already as the paper: Model 3's temporal attention has its own LayerNorm (its 12 extra
attentions and LayerNorms are the 2.36M between Models 1 and 3); Model 4 has Model 1's weights
(its heads split, half over space, half over time); each encoder ends in a LayerNorm; Model 2
has 4 temporal layers and CLS tokens in both encoders.
Left as is (no effect on the counts beyond 0.1%, or not the model's shape):
- CLS tokens carry no positional embedding; Scenic adds one at the CLS position too (768
  parameters per table), which only re-parameterises the learned CLS.
- Model 4 gives the first half of the heads to space; Scenic gives it to time. Heads are
  interchangeable, so the function class is the same.
- Model 3 attends over space, then time, as the paper's description; Scenic's block takes
  the order from its config (attention_order).
- Initialisation: the paper starts from ImageNet-21k ViT (positional embeddings repeated over
  time, 'central frame' tubelet kernels) and Scenic zero-inits the head; we train from
  ViT-style random init (posemb_init 'sincos' is our addition for frame features). No
  stochastic depth (Scenic's droplayer, one of the paper's regularisers).
"""

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from vmjax.models.transformer import (
    KERNEL_INIT,
    Encoder,
    MlpBlock,
    MultiHeadAttention,
    dot_product_attention,
)

VARIANTS = (
    "spatio_temporal",  # Model 1
    "factorised_encoder",  # Model 2
    "factorised_self_attention",  # Model 3
    "factorised_dot_product",  # Model 4
)
# 'auto': the CLS token where the variant has one (Models 1, 2), else the token mean (3, 4).
POOLINGS = ("auto", "cls", "mean")
POSEMB_INITS = ("normal", "sincos")
# factorised: a time table plus a space table; joint: one table over all nt*ns tokens (as the
# ViViT and VideoMAE checkpoints of Hugging Face transformers store it).
# auto: the paper's (Sec. 3.4): joint for Models 1, 3 and 4, factorised for Model 2, whose
# spatial and temporal encoders each have their own table.
POSEMB_LAYOUTS = ("factorised", "joint", "auto")
# Models 3 and 4 mix tokens along the time and space axes of a [nt, ns] grid; a CLS token has no
# place on that grid, so (as in the paper) they pool by the mean.
_NO_CLS_VARIANTS = ("factorised_self_attention", "factorised_dot_product")

_POSEMB_INIT = nn.initializers.normal(stddev=0.02)


def sincos_init(key, shape, dtype=jnp.float32) -> jax.Array:
    """Sinusoidal positions (Vaswani et al. 2017) along the one axis of `shape` longer than 1.

    For `[1, n, 1, d]` or `[1, 1, n, d]`: row p holds sin(p w_i) in its first d/2 features and
    cos(p w_i) in the rest, w_i = 10000^(-2i/d). Used as the initial value of a learned
    embedding, it gives attention a notion of order from step 0 (a dot product of two rows
    depends on their offset).
    """
    del key
    d = shape[-1]
    n = max(shape[:-1])
    half = d // 2
    freq = 10000.0 ** (-jnp.arange(half, dtype=jnp.float32) * 2 / d)
    angle = jnp.arange(n, dtype=jnp.float32)[:, None] * freq[None, :]
    emb = jnp.concatenate([jnp.sin(angle), jnp.cos(angle), jnp.zeros((n, d - 2 * half))], axis=1)
    return emb.reshape(shape).astype(dtype)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `x: [batch, tokens, dim]` over `mask: [batch, tokens]`; zeros if none valid."""
    total = jnp.sum(jnp.where(mask[..., None], x, 0), axis=1)
    count = jnp.sum(mask, axis=1, dtype=x.dtype)[:, None]
    return total / jnp.maximum(count, 1)


def _prepend_cls(x: jax.Array, cls: jax.Array) -> jax.Array:
    """`[batch, tokens, dim]` -> `[batch, 1 + tokens, dim]` with the learned `cls: [1, 1, dim]`."""
    return jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)


def _prepend_valid(key_mask: jax.Array) -> jax.Array:
    """Marks a prepended CLS token as always attendable: `[batch, n]` -> `[batch, 1 + n]`."""
    return jnp.concatenate([jnp.ones_like(key_mask[:, :1]), key_mask], axis=1)


class TubeletEmbedding(nn.Module):
    """Pixels `[B, T, H, W, C]` -> tokens `[B, T/pt, (H/ph)*(W/pw), D]` by a strided 3D conv.

    Kernel = stride = patch_size, so this equals cutting non-overlapping `pt x ph x pw` tubelets
    and projecting each flattened tubelet with one shared matrix (the paper's tubelet embedding).
    """

    hidden_size: int
    patch_size: tuple[int, int, int]  # (pt, ph, pw)

    @nn.compact
    def __call__(self, video: jax.Array) -> jax.Array:
        _, t, h, w, _ = video.shape
        pt, ph, pw = self.patch_size
        if t % pt or h % ph or w % pw:
            raise ValueError(
                f"video [B, T, H, W, C] = {video.shape} is not divisible by tubelet "
                f"patch_size (pt, ph, pw) = {self.patch_size}"
            )
        tokens = nn.Conv(
            self.hidden_size,
            kernel_size=self.patch_size,
            strides=self.patch_size,
            padding="VALID",
            name="conv",
        )(video)
        return einops.rearrange(tokens, "b nt nh nw d -> b nt (nh nw) d")


class FrameFeatureEmbedding(nn.Module):
    """YT8M frame features `[B, T, F]` -> tokens `[B, T, tokens_per_frame, D]` by one Dense.

    With `tokens_per_frame = n > 1` the Dense maps to `n * D` features that are split into `n`
    spatial tokens, giving the spatial attention of the factorised variants something to mix.
    """

    hidden_size: int
    tokens_per_frame: int = 1

    @nn.compact
    def __call__(self, frames: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if mask is not None:
            # Padded frames may hold anything (inf/NaN); zero them so neither the forward pass
            # nor the kernel's gradient (x^T dy) can pick it up.
            frames = jnp.where(mask[..., None], frames, 0)
        tokens = nn.Dense(self.tokens_per_frame * self.hidden_size, name="projection")(frames)
        return einops.rearrange(tokens, "b t (n d) -> b t n d", n=self.tokens_per_frame)


class FactorisedSelfAttentionBlock(nn.Module):
    """Model 3 block: x + MSA_space(LN(x)); x + MSA_time(LN(x)); x + MLP(LN(x)).

    On `x: [B, nt, ns, D]` spatial attention mixes tokens of one time index, temporal attention
    tokens of one spatial index; `mask: [B, nt]` hides padded time indices from both.
    """

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        ns = x.shape[2]
        spatial_mask = einops.repeat(mask, "b t -> b t s", s=ns)
        y = nn.LayerNorm(name="ln_spatial")(x)
        y = MultiHeadAttention(self.num_heads, self.attention_dropout, name="spatial_attention")(
            y, spatial_mask, train=train
        )
        x = x + nn.Dropout(self.dropout)(y, deterministic=not train)

        temporal_mask = einops.repeat(mask, "b t -> b s t", s=ns)
        y = nn.LayerNorm(name="ln_temporal")(x)
        y = einops.rearrange(y, "b t s d -> b s t d")
        y = MultiHeadAttention(self.num_heads, self.attention_dropout, name="temporal_attention")(
            y, temporal_mask, train=train
        )
        y = einops.rearrange(y, "b s t d -> b t s d")
        x = x + nn.Dropout(self.dropout)(y, deterministic=not train)

        y = nn.LayerNorm(name="ln_mlp")(x)
        return x + MlpBlock(self.mlp_dim, self.dropout, name="mlp")(y, train=train)


class FactorisedDotProductAttention(nn.Module):
    """Model 4 attention: the first half of the heads attend over space, the rest over time.

    On `x: [B, nt, ns, D]`; both halves' outputs are concatenated along the heads and projected
    back to D by one output matrix, as in multi-head attention.
    """

    num_heads: int
    attention_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        dim, ns = x.shape[-1], x.shape[2]
        if self.num_heads % 2 or dim % self.num_heads:
            raise ValueError(
                f"factorised_dot_product needs an even num_heads dividing the token dim; got "
                f"num_heads={self.num_heads}, dim={dim}"
            )
        heads = (self.num_heads, dim // self.num_heads)
        q = nn.DenseGeneral(heads, kernel_init=KERNEL_INIT, name="query")(x)
        k = nn.DenseGeneral(heads, kernel_init=KERNEL_INIT, name="key")(x)
        v = nn.DenseGeneral(heads, kernel_init=KERNEL_INIT, name="value")(x)
        drop = nn.Dropout(self.attention_dropout)

        def dropout(w: jax.Array) -> jax.Array:
            return drop(w, deterministic=not train)

        half = self.num_heads // 2
        spatial = dot_product_attention(
            q[..., :half, :],
            k[..., :half, :],
            v[..., :half, :],
            einops.repeat(mask, "b t -> b t s", s=ns),
            dropout,
        )
        to_time_major = "b t s h d -> b s t h d"
        temporal = dot_product_attention(
            einops.rearrange(q[..., half:, :], to_time_major),
            einops.rearrange(k[..., half:, :], to_time_major),
            einops.rearrange(v[..., half:, :], to_time_major),
            einops.repeat(mask, "b t -> b s t", s=ns),
            dropout,
        )
        temporal = einops.rearrange(temporal, "b s t h d -> b t s h d")
        out = jnp.concatenate([spatial, temporal], axis=-2)
        return nn.DenseGeneral(dim, axis=(-2, -1), kernel_init=KERNEL_INIT, name="out")(out)


class FactorisedDotProductBlock(nn.Module):
    """Model 4 block: x + FactorisedDotProductAttention(LN(x)); x + MLP(LN(x))."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        y = nn.LayerNorm(name="ln_attention")(x)
        y = FactorisedDotProductAttention(self.num_heads, self.attention_dropout, name="attention")(
            y, mask, train=train
        )
        x = x + nn.Dropout(self.dropout)(y, deterministic=not train)
        y = nn.LayerNorm(name="ln_mlp")(x)
        return x + MlpBlock(self.mlp_dim, self.dropout, name="mlp")(y, train=train)


class ViViT(nn.Module):
    """ViViT encoder on embedded tokens `[B, nt, ns, D]` (+ mask `[B, nt]`) -> pooled `[B, D]`.

    variant:
      spatio_temporal: one encoder over all nt*ns tokens (+ CLS).
      factorised_encoder: a spatial encoder per time index (CLS or mean per frame), then a
        temporal encoder of `num_temporal_layers` over the nt frame vectors (+ temporal CLS).
      factorised_self_attention: blocks of spatial MSA, temporal MSA, MLP; mean pooling only.
      factorised_dot_product: blocks whose heads split half spatial, half temporal; mean only.
    `num_layers` counts all blocks, or the spatial encoder's for factorised_encoder.
    pooling: 'auto' (CLS where the variant has one, else the mean), 'cls' or 'mean'.
    Positional embeddings are learned, sized by the tokens seen at init, so later inputs keep
    that nt and ns (pad and mask shorter ones); by default factorised: one per time index plus
    one per spatial index.
    posemb_init: 'normal' (ViT's N(0, 0.02), the paper's) or 'sincos' (sinusoidal initial
    values, still learned: order is visible from the first step, which frame features need).
    posemb_layout 'joint' replaces the two tables by one `[1, nt*ns, D]` table (not for
    factorised_encoder, whose encoders add space and time positions at different places);
    'auto' is the paper's: joint, or factorised for factorised_encoder.
    With `return_tokens=True` also returns the final tokens: `[B, nt, ns, D]`, or the temporal
    encoder's frame tokens `[B, nt, 1, D]` for factorised_encoder.
    """

    variant: str
    num_layers: int
    hidden_size: int
    num_heads: int
    mlp_dim: int
    num_temporal_layers: int = 0
    pooling: str = "auto"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    posemb_init: str = "normal"
    posemb_layout: str = "factorised"

    def _pooling(self) -> str:
        """`pooling` with 'auto' resolved: 'cls' where the variant has a CLS token, else 'mean'."""
        if self.pooling != "auto":
            return self.pooling
        return "mean" if self.variant in _NO_CLS_VARIANTS else "cls"

    def _posemb_layout(self) -> str:
        """`posemb_layout` with 'auto' resolved to the paper's table(s) for the variant."""
        if self.posemb_layout != "auto":
            return self.posemb_layout
        return "factorised" if self.variant == "factorised_encoder" else "joint"

    def _check(self, tokens: jax.Array) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(
                f"ViViT variant={self.variant!r} is unknown; expected one of {VARIANTS}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"ViViT pooling={self.pooling!r} is unknown; expected one of {POOLINGS}"
            )
        if self.pooling == "cls" and self.variant in _NO_CLS_VARIANTS:
            raise ValueError(
                f"ViViT variant={self.variant!r} has no CLS token (as in the paper), so "
                "pooling='cls' is impossible: set config.model.pooling (config.model.vivit.pooling "
                "for frame features) to pooling='auto' or pooling='mean', or choose a "
                "config.model.variant with one: spatio_temporal, factorised_encoder"
            )
        if self.posemb_init not in POSEMB_INITS:
            raise ValueError(
                f"ViViT posemb_init={self.posemb_init!r} is unknown; expected one of {POSEMB_INITS}"
            )
        if self.posemb_layout not in POSEMB_LAYOUTS or (
            self._posemb_layout() == "joint" and self.variant == "factorised_encoder"
        ):
            raise ValueError(
                f"ViViT posemb_layout={self.posemb_layout!r} is unknown or unsupported for "
                f"variant={self.variant!r}; expected one of {POSEMB_LAYOUTS} ('factorised' only "
                "for factorised_encoder)"
            )
        if self.variant == "factorised_encoder" and self.num_temporal_layers < 1:
            raise ValueError(
                f"ViViT factorised_encoder needs num_temporal_layers >= 1; got "
                f"{self.num_temporal_layers}"
            )
        if tokens.ndim != 4 or tokens.shape[-1] != self.hidden_size:
            raise ValueError(
                f"ViViT expects tokens [batch, time, space, hidden_size={self.hidden_size}]; "
                f"got shape {tokens.shape}"
            )

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        mask: jax.Array | None = None,
        *,
        train: bool,
        return_tokens: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        self._check(tokens)
        b, nt, ns, d = tokens.shape
        if mask is None:
            mask = jnp.ones((b, nt), bool)
        # Zero padded tokens so inf/NaN padding cannot reach even masked-out arithmetic.
        tokens = jnp.where(mask[:, :, None, None], tokens, 0)
        posemb_init = sincos_init if self.posemb_init == "sincos" else _POSEMB_INIT
        if self._posemb_layout() == "joint":
            pos = self.param("pos_embedding", posemb_init, (1, nt * ns, d))
            positions = [einops.rearrange(pos, "1 (t s) d -> 1 t s d", t=nt)]
        else:
            pos_time = self.param("pos_embedding_time", posemb_init, (1, nt, 1, d))
            pos_space = self.param("pos_embedding_space", posemb_init, (1, 1, ns, d))
            # Added one by one (tokens + time + space), the float sums of the original layout.
            positions = [pos_time, pos_space]
        encoder_kwargs = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
        )
        use_cls = self._pooling() == "cls"

        if self.variant == "factorised_encoder":
            x = nn.Dropout(self.dropout)(tokens + pos_space, deterministic=not train)
            # Tokens of one frame share its validity, so the spatial encoder needs no mask.
            x = einops.rearrange(x, "b t s d -> (b t) s d")
            if use_cls:
                x = _prepend_cls(x, self.param("cls_space", nn.initializers.zeros, (1, 1, d)))
            x = Encoder(self.num_layers, name="spatial_encoder", **encoder_kwargs)(x, train=train)
            frames = x[:, 0] if use_cls else jnp.mean(x, axis=1)
            frames = einops.rearrange(frames, "(b t) d -> b t d", b=b) + pos_time[:, :, 0]
            key_mask = mask
            if use_cls:
                frames = _prepend_cls(
                    frames, self.param("cls_time", nn.initializers.zeros, (1, 1, d))
                )
                key_mask = _prepend_valid(mask)
            x = Encoder(self.num_temporal_layers, name="temporal_encoder", **encoder_kwargs)(
                frames, key_mask, train=train
            )
            pooled = x[:, 0] if use_cls else _masked_mean(x, mask)
            out_tokens = einops.rearrange(x[:, 1:] if use_cls else x, "b t d -> b t 1 d")

        elif self.variant == "spatio_temporal":
            x = nn.Dropout(self.dropout)(sum(positions, tokens), deterministic=not train)
            x = einops.rearrange(x, "b t s d -> b (t s) d")
            token_mask = einops.repeat(mask, "b t -> b (t s)", s=ns)
            key_mask = token_mask
            if use_cls:
                x = _prepend_cls(x, self.param("cls", nn.initializers.zeros, (1, 1, d)))
                key_mask = _prepend_valid(token_mask)
            x = Encoder(self.num_layers, name="encoder", **encoder_kwargs)(x, key_mask, train=train)
            pooled = x[:, 0] if use_cls else _masked_mean(x, token_mask)
            out_tokens = einops.rearrange(x[:, 1:] if use_cls else x, "b (t s) d -> b t s d", t=nt)

        else:
            block = {
                "factorised_self_attention": FactorisedSelfAttentionBlock,
                "factorised_dot_product": FactorisedDotProductBlock,
            }[self.variant]
            x = nn.Dropout(self.dropout)(sum(positions, tokens), deterministic=not train)
            for i in range(self.num_layers):
                x = block(name=f"block_{i}", **encoder_kwargs)(x, mask, train=train)
            out_tokens = nn.LayerNorm(name="ln_final")(x)
            pooled = _masked_mean(
                einops.rearrange(out_tokens, "b t s d -> b (t s) d"),
                einops.repeat(mask, "b t -> b (t s)", s=ns),
            )

        return (pooled, out_tokens) if return_tokens else pooled


class ViViTEncoder(nn.Module):
    """Pixels `[B, T, H, W, C]` (tubelets) or frame features `[B, T, F]` (+ mask) -> `[B, D]`.

    The input's rank picks the embedding. A frame mask `[B, T]` is honoured for both; with
    pixels a tubelet counts as valid when any of its `pt` frames is.
    """

    variant: str
    num_layers: int
    hidden_size: int
    num_heads: int
    mlp_dim: int
    num_temporal_layers: int = 0
    pooling: str = "auto"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    posemb_init: str = "normal"
    posemb_layout: str = "factorised"
    patch_size: tuple[int, int, int] = (2, 16, 16)  # (pt, ph, pw), pixels only
    tokens_per_frame: int = 1  # frame features only

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        train: bool,
        return_tokens: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """`[B, D]`, or with `return_tokens` also ViViT's final tokens (see `ViViT`)."""
        if x.ndim == 5:
            if mask is not None:
                x = jnp.where(mask[:, :, None, None, None], x, 0)
                mask = einops.reduce(mask, "b (nt pt) -> b nt", "max", pt=self.patch_size[0])
            tokens = TubeletEmbedding(self.hidden_size, tuple(self.patch_size), name="embedding")(x)
        elif x.ndim == 3:
            tokens = FrameFeatureEmbedding(
                self.hidden_size, self.tokens_per_frame, name="embedding"
            )(x, mask)
        else:
            raise ValueError(
                f"ViViTEncoder expects pixels [B, T, H, W, C] or frame features [B, T, F]; got "
                f"shape {x.shape}"
            )
        return ViViT(
            variant=self.variant,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            num_temporal_layers=self.num_temporal_layers,
            pooling=self.pooling,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            posemb_init=self.posemb_init,
            posemb_layout=self.posemb_layout,
            name="vivit",
        )(tokens, mask, train=train, return_tokens=return_tokens)
