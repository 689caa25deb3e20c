"""A ResNet (He et al. 2016) frame encoder for raw pixels: BasicBlocks, GroupNorm or BatchNorm.

Source: "Deep Residual Learning for Image Recognition", arXiv:1512.03385: the building block
of Fig. 2 (two 3x3 convs, Fig. 5 left), eq. 2 for projection shortcuts, the 18- and 34-layer
columns of Table 1; GroupNorm is Wu & He 2018 (arXiv:1803.08494, Sec. 3).

`ResNet` maps normalised images `[N, H, W, 3]` to embeddings `[N, D]` by global average pooling,
`D = width * 2 ** (len(stage_sizes) - 1)`. `FrameResNet` applies it to every frame of pixel
videos `[B, T, H, W, 3]` (uint8 in [0, 255] or float in [0, 1]) at once and honours a frame mask.

The layout follows torchvision's ResNet-18/34 (7x7/2 stem, 3x3/2 max pool, stages doubling the
width and halving the resolution, 1x1/2 projection shortcuts, explicit torch paddings, convs
without bias), so ResNet-18 has torchvision's 11,176,512 non-classifier parameters (with either
norm: both have a scale and a bias per channel) and with norm='batch' could take its weights.

Normalisation: 'group' (default) normalises each frame on its own, so padded frames and the
other videos of a batch cannot change a frame's features, and there are no running statistics
to drift between train and eval or to average across devices. 'batch' keeps torchvision's
BatchNorm (`batch_stats`, carried by the trainer's `TrainState.model_state`); its training
statistics skip masked frames, so they do not depend on how much padding a batch holds.
"""

import math
from collections.abc import Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("group", "batch")
# ImageNet RGB statistics of [0, 1] pixels (torchvision's), the usual choice for a ResNet.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's epsilon for both norms, so ported weights give the same activations.
_EPSILON = 1e-5


def _he_normal_fan_out(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """torch's ResNet init, kaiming_normal_(mode='fan_out'): N(0, 2 / (k_h * k_w * out)).

    Drawn flat, then reshaped (the same values): XLA:CPU took ~12 s to compile one rank-4
    `random.normal` against under 1 s flat, which made a tiny ResNet's `init` take half a minute.
    """
    fan_out = math.prod(shape[:-2]) * shape[-1]
    flat = jax.random.normal(key, (math.prod(shape),), dtype)
    return (math.sqrt(2.0 / fan_out) * flat).reshape(shape)


def normalize_pixels(pixels: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 [0, 255] or float [0, 1] pixels `[..., C]` -> `(x - mean) / std` per channel.

    Integer pixels become float32; float pixels keep their dtype (bfloat16 stays bfloat16).
    """
    if jnp.issubdtype(pixels.dtype, jnp.integer):
        x = pixels.astype(jnp.float32) / 255.0
    else:
        x = jnp.asarray(pixels)  # a numpy float64 array becomes JAX's float32 (x64 is off)
    if len(mean) != x.shape[-1] or len(std) != x.shape[-1]:
        raise ValueError(
            f"pixels have {x.shape[-1]} channels but pixel_mean={tuple(mean)} and "
            f"pixel_std={tuple(std)}; expected one value per channel"
        )
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def _norm(
    x: jax.Array, mask: jax.Array | None, kind: str, num_groups: int, train: bool, name: str
) -> jax.Array:
    """GroupNorm, or BatchNorm whose batch statistics count only the images in `mask: [N]`."""
    channels = x.shape[-1]
    if kind == "group":
        groups = min(num_groups, channels)
        if channels % groups:
            raise ValueError(
                f"GroupNorm: {channels} channels do not split into num_groups={groups}; "
                "choose cnn.num_groups dividing every stage width"
            )
        return nn.GroupNorm(num_groups=groups, epsilon=_EPSILON, name=name)(x)
    if kind == "batch":
        if mask is not None:
            # With no valid image at all, statistics of nothing would be NaN; use them all.
            mask = mask | ~jnp.any(mask)
            mask = mask[:, None, None, None]
        return nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=_EPSILON, name=name
        )(x, mask=mask)
    raise ValueError(f"cnn.norm={kind!r} is unknown; expected one of {NORMS}")


def _conv(features: int, kernel: int, strides: int, name: str) -> nn.Conv:
    """A bias-free conv with torch's symmetric padding `kernel // 2` (Flax's SAME is not)."""
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=_he_normal_fan_out,
        name=name,
    )


class BasicBlock(nn.Module):
    """ResNet-18/34 block: y = relu(s(x) + norm2(conv2(relu(norm1(conv1(x)))))).

    conv1 is 3x3 with stride `strides`, conv2 3x3 with stride 1. The shortcut s(x) is x itself,
    or norm(conv 1x1/strides(x)) when the stride or the width changes.
    """

    features: int
    strides: int = 1
    norm: str = "group"
    num_groups: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, train: bool) -> jax.Array:
        y = _conv(self.features, 3, self.strides, "conv1")(x)
        y = nn.relu(_norm(y, mask, self.norm, self.num_groups, train, "norm1"))
        y = _conv(self.features, 3, 1, "conv2")(y)
        y = _norm(y, mask, self.norm, self.num_groups, train, "norm2")
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = _conv(self.features, 1, self.strides, "shortcut_conv")(x)
            shortcut = _norm(shortcut, mask, self.norm, self.num_groups, train, "shortcut_norm")
        return nn.relu(shortcut + y)


class ResNet(nn.Module):
    """Normalised images `[N, H, W, C]` -> embeddings `[N, width * 2 ** (stages - 1)]`.

    stage_sizes: BasicBlocks per stage; (2, 2, 2, 2) is ResNet-18, (3, 4, 6, 3) ResNet-34.
    width: channels of the stem and the first stage; each later stage doubles them and halves
      the resolution. `mask: [N]` only matters for norm='batch' (statistics of valid images).
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    width: int = 64
    norm: str = "group"
    num_groups: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, train: bool) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ResNet expects images [N, H, W, C]; got shape {x.shape}")
        x = _conv(self.width, 7, 2, "stem_conv")(x)
        x = nn.relu(_norm(x, mask, self.norm, self.num_groups, train, "stem_norm"))
        # Max pooling pads with -inf, like torch's padding=1.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = BasicBlock(
                    self.width * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    norm=self.norm,
                    num_groups=self.num_groups,
                    name=f"stage{i}_block{j}",
                )(x, mask, train=train)
        return jnp.mean(x, axis=(1, 2))


class FrameResNet(nn.Module):
    """Pixel videos `[B, T, H, W, 3]` (+ mask `[B, T]`) -> frame embeddings `[B, T, D]`.

    Pixels are normalised here (`normalize_pixels`), and all B * T frames go through one
    `ResNet` call. Masked frames are zeroed before the CNN (so inf/NaN padding cannot reach the
    arithmetic) and their embeddings are zero.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    width: int = 64
    norm: str = "group"
    num_groups: int = 32
    pixel_mean: Sequence[float] = IMAGENET_MEAN
    pixel_std: Sequence[float] = IMAGENET_STD

    @nn.compact
    def __call__(
        self, pixels: jax.Array, mask: jax.Array | None = None, *, train: bool
    ) -> jax.Array:
        if pixels.ndim != 5:
            raise ValueError(
                f"FrameResNet expects pixels [batch, time, H, W, C]; got shape {pixels.shape}"
            )
        b, t = pixels.shape[:2]
        mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
        if mask.shape != (b, t):
            raise ValueError(f"mask {mask.shape} does not match pixels [batch, time] = {(b, t)}")
        x = normalize_pixels(pixels, self.pixel_mean, self.pixel_std)
        x = jnp.where(mask[:, :, None, None, None], x, 0)
        frames = einops.rearrange(x, "b t h w c -> (b t) h w c")
        resnet = ResNet(
            tuple(self.stage_sizes), self.width, self.norm, self.num_groups, name="resnet"
        )
        embeddings = resnet(frames, einops.rearrange(mask, "b t -> (b t)"), train=train)
        embeddings = einops.rearrange(embeddings, "(b t) d -> b t d", b=b)
        return jnp.where(mask[..., None], embeddings, 0)
