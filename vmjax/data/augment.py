"""Training-time data augmentation: pure JAX functions of an RNG key.

Every function takes the key first and draws per-video randomness from it, so a run is
reproducible from its seed and the whole augmentation can sit inside the jitted train step on
the accelerator. Shapes are static: temporal augmentations move frames and clear the mask
instead of changing the time axis, and crops are resized back to a fixed size.

Batches follow vmjax.data.pipeline: frame-level `rgb: [batch, time, 1024]` and
`audio: [batch, time, 128]` (uint8-quantized or float32), `mask: bool [batch, time]`,
`labels: uint8 [batch, classes]`, `weights: float32 [batch]` (0 on padding rows); pixel batches
carry `pixels: [batch, time, height, width, 3]` (uint8 in [0, 255] or float in [0, 1]).

The functions are jitted, with their sizes, ranges and rates static (pass tuples, not lists):
an eager call compiles once per shape, and inside a jitted step they are simply inlined.

Only the training step calls `augment_batch`; evaluation and prediction see the batches exactly
as the pipeline made them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vmjax.data import yt8m

FRAME_KEYS = ("rgb", "audio", "pixels")  # batch entries laid out [batch, time, ...] like `mask`
FEATURE_KEYS = ("rgb", "audio")  # entries that are (possibly quantized) features
GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's contrast uses
CROP_TRIES = 10  # boxes drawn per video before falling back to a centre crop (Inception-style)
# One key per augmentation, so switching one on or off does not change the others' draws.
STAGES = (
    "temporal_crop",
    "temporal_jitter",
    "frame_dropout",
    "crop",
    "flip",
    "color",
    "noise",
    "mixup",
)


def default_config() -> ml_collections.ConfigDict:
    """The `augment` config block with every augmentation off."""
    c = ml_collections.ConfigDict()
    c.flip = False  # pixels: flip each video left-right with probability 1/2
    c.crop_scale = 0.0  # pixels: smallest crop area / frame area (e.g. 0.08), resized back; 0 off
    c.crop_ratio = (3 / 4, 4 / 3)  # pixels: range of crop aspect ratios (width / height)
    c.brightness = 0.0  # pixels: scale by a factor in [1 - b, 1 + b] per video; 0 off
    c.contrast = 0.0  # pixels: blend with the video's mean gray by [1 - c, 1 + c]; 0 off
    c.temporal_jitter = 0  # frames: drop up to this many leading valid frames; 0 off
    c.temporal_crop = 0  # frames: keep a random window of this many valid frames; 0 off
    c.frame_dropout = 0.0  # frames: mask out this fraction of valid frames (never all); 0 off
    c.feature_noise = 0.0  # rgb/audio: stddev of Gaussian noise on (dequantized) valid frames
    c.mixup_alpha = 0.0  # mix pairs of videos with a Beta(alpha, alpha) weight per batch; 0 off
    return c


def _expand(mask: jax.Array, x: jax.Array) -> jax.Array:
    """`mask: [b, t]` with trailing unit axes to broadcast against `x: [b, t, ...]`."""
    return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))


def _max_value(x: jax.Array, max_value: float | None) -> float:
    if max_value is not None:
        return max_value
    return 255.0 if jnp.issubdtype(x.dtype, jnp.integer) else 1.0


def _like(y: jax.Array, x: jax.Array) -> jax.Array:
    """Float result `y` in the dtype of `x` (rounded and clipped for integer pixels)."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        info = jnp.iinfo(x.dtype)
        return jnp.clip(jnp.round(y), info.min, info.max).astype(x.dtype)
    return y.astype(x.dtype)


def _uniform(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    # Drawn flat: XLA:CPU compiles threefry over a multi-axis shape several times slower.
    return jax.random.uniform(rng, (math.prod(shape),)).reshape(shape)


def _uniform_int(u: jax.Array, n: jax.Array) -> jax.Array:
    """Integers uniform in [0, n) from uniform floats `u` in [0, 1)."""
    return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def _as_float_features(x: jax.Array) -> jax.Array:
    return yt8m.dequantize(x, xp=jnp) if x.dtype == jnp.uint8 else x


# Pixels.


@functools.partial(jax.jit, static_argnames=("batch_size", "height", "width", "scale", "ratio"))
def sample_crop_boxes(
    rng: jax.Array,
    batch_size: int,
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> jax.Array:
    """Inception-style crop boxes inside a `height x width` frame: int32 `[b, 4]` (top, left, h, w).

    Each video tries CROP_TRIES boxes of area `scale * frame area` and aspect ratio (w / h)
    log-uniform in `ratio`, keeps the first that fits the frame, and otherwise takes the largest
    centred box whose ratio lies in `ratio`. These are the boxes `random_resized_crop` uses for
    the same key.
    """
    if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"crop scale {scale} must lie in (0, 1] and ratio {ratio} be positive")
    # The fallback only depends on the static frame shape, as in torchvision.
    frame_ratio = width / height
    if frame_ratio < ratio[0]:
        fallback_w, fallback_h = width, round(width / ratio[0])
    elif frame_ratio > ratio[1]:
        fallback_w, fallback_h = round(height * ratio[1]), height
    else:
        fallback_w, fallback_h = width, height

    # One draw for everything: each random op is a large threefry program to compile.
    u = _uniform(rng, (batch_size, 2 * CROP_TRIES + 2))
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, :CROP_TRIES])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[:, CROP_TRIES : 2 * CROP_TRIES])
    w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = jnp.argmax(fits, axis=1)[:, None]
    any_fits = fits.any(1)
    h = jnp.where(any_fits, jnp.take_along_axis(h, first, 1)[:, 0], fallback_h)
    w = jnp.where(any_fits, jnp.take_along_axis(w, first, 1)[:, 0], fallback_w)
    top = _uniform_int(u[:, -2], height - h + 1)
    left = _uniform_int(u[:, -1], width - w + 1)
    return jnp.stack([top, left, h, w], axis=1).astype(jnp.int32)


def _crop_nearest(video: jax.Array, box: jax.Array, out_h: int, out_w: int) -> jax.Array:
    top, left, h, w = box
    rows = top + jnp.floor((jnp.arange(out_h) + 0.5) * h / out_h).astype(jnp.int32)
    cols = left + jnp.floor((jnp.arange(out_w) + 0.5) * w / out_w).astype(jnp.int32)
    return video[:, rows][:, :, cols]


def _crop_resample(
    video: jax.Array, box: jax.Array, out_h: int, out_w: int, method: str
) -> jax.Array:
    top, left, h, w = box.astype(jnp.float32)
    scale = jnp.stack([out_h / h, out_w / w])
    # Input coordinate c lands at c * scale + translation, so the box's corner lands at 0.
    translation = -jnp.stack([top, left]) * scale
    shape = (video.shape[0], out_h, out_w, video.shape[-1])
    return jax.image.scale_and_translate(
        video.astype(jnp.float32), shape, (1, 2), scale, translation, method
    )


@functools.partial(jax.jit, static_argnames=("out_size", "scale", "ratio", "method"))
def random_resized_crop(
    rng: jax.Array,
    pixels: jax.Array,
    *,
    out_size: int | tuple[int, int],
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    method: str = "linear",
) -> jax.Array:
    """One random box per video (the same for all its frames), resized to `out_size`.

    pixels: `[b, t, h, w, c]` -> `[b, t, out_h, out_w, c]`, in the input's dtype.
    method: 'nearest' copies pixels of the box; 'linear', 'cubic', 'lanczos3', 'area' resample
      with jax.image.scale_and_translate (antialiased when shrinking, so a border pixel may
      blend with its neighbour just outside the box; nothing outside the frame is read).
    """
    out_h, out_w = (out_size, out_size) if isinstance(out_size, int) else out_size
    b, _, height, width, _ = pixels.shape
    boxes = sample_crop_boxes(rng, b, height, width, scale, ratio)
    if method == "nearest":
        return jax.vmap(_crop_nearest, (0, 0, None, None))(pixels, boxes, out_h, out_w)
    out = jax.vmap(_crop_resample, (0, 0, None, None, None))(pixels, boxes, out_h, out_w, method)
    return _like(out, pixels)


@jax.jit
def horizontal_flip(rng: jax.Array, pixels: jax.Array, prob: float = 0.5) -> jax.Array:
    """Flips each video (all its frames) left-right with probability `prob`."""
    flip = jax.random.uniform(rng, pixels.shape[:1]) < prob
    return jnp.where(_expand(flip, pixels), jnp.flip(pixels, axis=-2), pixels)


@functools.partial(jax.jit, static_argnames=("brightness", "contrast", "max_value"))
def color_jitter(
    rng: jax.Array,
    pixels: jax.Array,
    brightness: float = 0.0,
    contrast: float = 0.0,
    *,
    mask: jax.Array | None = None,
    max_value: float | None = None,
) -> jax.Array:
    """Per-video brightness and contrast factors (as torchvision's), clipped to [0, max_value].

    brightness: pixels are scaled by a factor uniform in [max(0, 1 - b), 1 + b].
    contrast: pixels are blended with the video's mean gray level by a factor uniform in
      [max(0, 1 - c), 1 + c]; with `mask` the mean is over valid frames and padding frames are
      left as they were.
    max_value: top of the valid range; None means 255 for integer pixels and 1 for floats.
    0 turns a jitter off; with both off the pixels come back unchanged.
    """
    if brightness < 0 or contrast < 0:
        raise ValueError(f"color_jitter: brightness={brightness}, contrast={contrast} must be >= 0")
    if not brightness and not contrast:
        return pixels
    top = _max_value(pixels, max_value)
    b = pixels.shape[0]
    lo = jnp.asarray([max(0.0, 1 - brightness), max(0.0, 1 - contrast)])[:, None]
    hi = jnp.asarray([1 + brightness, 1 + contrast])[:, None]
    factors = lo + (hi - lo) * _uniform(rng, (2, b))
    x = pixels.astype(jnp.float32)
    if brightness:
        x = jnp.clip(x * _expand(factors[0], x), 0, top)
    if contrast:
        gray = x @ jnp.asarray(GRAY, jnp.float32)  # [b, t, h, w]
        valid = jnp.ones(gray.shape[:2], bool) if mask is None else mask.astype(bool)
        frame_mean = gray.mean((2, 3))
        mean = (frame_mean * valid).sum(1) / jnp.maximum(valid.sum(1), 1)
        mean = _expand(mean, x)
        x = jnp.clip((x - mean) * _expand(factors[1], x) + mean, 0, top)
    out = _like(x, pixels)
    if mask is not None:
        out = jnp.where(_expand(mask.astype(bool), pixels), out, pixels)
    return out


# Time.


def _take_valid(
    frames: Any, mask: jax.Array, start: jax.Array, count: jax.Array
) -> tuple[Any, jax.Array]:
    """Valid frames `start .. start + count - 1` of each video moved to the front; rest masked.

    Valid frames are counted in order, so a mask with holes (after frame dropout) works too.
    Positions past `count` are zeroed, like the pipeline's padding.
    """
    mask = mask.astype(bool)
    t = mask.shape[1]
    # Stable: the valid positions first, in their original order.
    order = jnp.argsort(~mask, axis=1, stable=True)
    src = jnp.take_along_axis(order, jnp.clip(start[:, None] + jnp.arange(t), 0, t - 1), axis=1)
    new_mask = jnp.arange(t) < count[:, None]

    def move(x):
        x = jax.vmap(lambda v, i: v[i])(x, src)
        return jnp.where(_expand(new_mask, x), x, jnp.zeros((), x.dtype))

    return jax.tree.map(move, frames), new_mask


@functools.partial(jax.jit, static_argnames=("max_shift",))
def temporal_jitter(
    rng: jax.Array, frames: Any, mask: jax.Array, max_shift: int
) -> tuple[Any, jax.Array]:
    """Starts each clip a random 0..max_shift valid frames later (always keeping one frame).

    frames: a `[b, t, ...]` array (features or pixels) or a pytree of them, which all move
      together (rgb and audio stay aligned).
    Returns (frames, mask): the remaining valid frames at the front, the rest masked and zeroed.
    """
    if max_shift < 0:
        raise ValueError(f"temporal_jitter: max_shift={max_shift} must be >= 0")
    n = mask.astype(jnp.int32).sum(1)
    highest = jnp.clip(jnp.minimum(max_shift, n - 1), 0, None)
    shift = _uniform_int(jax.random.uniform(rng, n.shape), highest + 1)
    return _take_valid(frames, mask, shift, n - shift)


@functools.partial(jax.jit, static_argnames=("length",))
def random_temporal_crop(
    rng: jax.Array, frames: Any, mask: jax.Array, length: int
) -> tuple[Any, jax.Array]:
    """A random window of `length` consecutive valid frames per video (all of a shorter one).

    frames: a `[b, t, ...]` array or a pytree of them, cropped together.
    Returns (frames, mask): the window at the front, the rest masked and zeroed.
    """
    if length < 1:
        raise ValueError(f"random_temporal_crop: length={length} must be >= 1")
    n = mask.astype(jnp.int32).sum(1)
    start = _uniform_int(jax.random.uniform(rng, n.shape), jnp.maximum(n - length, 0) + 1)
    return _take_valid(frames, mask, start, jnp.minimum(n, length))


@functools.partial(jax.jit, static_argnames=("rate",))
def frame_dropout(rng: jax.Array, mask: jax.Array, rate: float) -> jax.Array:
    """Clears each valid frame of `mask` with probability `rate`, never all frames of a video.

    A video that would lose all its frames keeps one of them, drawn uniformly.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"frame_dropout: rate={rate} must lie in [0, 1)")
    mask = mask.astype(bool)
    if not rate:
        return mask
    u = _uniform(rng, mask.shape)
    keep = (u >= rate) & mask
    emptied = mask.any(1) & ~keep.any(1)
    # In an emptied video every valid u is below `rate`, so their argmax is a uniform pick.
    rescue = jnp.argmax(jnp.where(mask, u, -1.0), axis=1)
    rescued = jax.nn.one_hot(rescue, mask.shape[1], dtype=bool) & emptied[:, None]
    return keep | rescued


# Features.


@functools.partial(jax.jit, static_argnames=("stddev",))
def feature_noise(rng: jax.Array, x: Any, stddev: float, *, mask: jax.Array | None = None) -> Any:
    """Adds N(0, stddev^2) noise to features, only at frames where `mask` is true.

    x: a `[b, t, d]` array, or a pytree of them (rgb and audio); uint8 features are dequantized
      first (the result is float32).
    mask: `[b, t]`, or None to add noise everywhere (video-level features `[b, d]`).
    """
    if stddev < 0:
        raise ValueError(f"feature_noise: stddev={stddev} must be >= 0")
    if not stddev:
        return x
    leaves, tree = jax.tree.flatten(jax.tree.map(_as_float_features, x))
    # One flat draw for all leaves: see _uniform.
    noise = jax.random.normal(rng, (sum(leaf.size for leaf in leaves),), jnp.float32)
    out, start = [], 0
    for leaf in leaves:
        delta = (stddev * noise[start : start + leaf.size]).reshape(leaf.shape).astype(leaf.dtype)
        start += leaf.size
        keep = True if mask is None else _expand(mask.astype(bool), leaf)
        out.append(jnp.where(keep, leaf + delta, leaf))
    return jax.tree.unflatten(tree, out)


@functools.partial(jax.jit, static_argnames=("alpha",))
def mixup_pairs(rng: jax.Array, weights: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """Mixup's weight `lam ~ Beta(alpha, alpha)` and partner rows `perm: int32 [b]`.

    `perm` shuffles the real rows (weight > 0) among themselves and maps each padding row to
    itself, so padding never mixes into a real video. These are the draws `mixup` makes for the
    same key.
    """
    if alpha <= 0:
        raise ValueError(f"mixup: alpha={alpha} must be > 0")
    k_lam, k_perm = jax.random.split(rng)
    lam = jax.random.beta(k_lam, alpha, alpha)
    real = weights > 0
    b = weights.shape[0]
    # Real rows in a random order, and real rows in their own order: pairing the two lists
    # position by position is a random permutation of the real rows.
    shuffled = jnp.argsort(jnp.where(real, jax.random.uniform(k_perm, (b,)), 2.0), stable=True)
    ordered = jnp.argsort(~real, stable=True)
    rows = jnp.arange(b, dtype=jnp.int32)
    perm = rows.at[ordered].set(jnp.where(real[ordered], shuffled, ordered).astype(jnp.int32))
    return lam, perm


def mixup(rng: jax.Array, batch: dict, alpha: float) -> dict:
    """Mixes each real video with a random other one: `lam * x + (1 - lam) * x[perm]`.

    rgb/audio become float32 (dequantized), pixels keep their dtype, labels become float32
    soft labels, and the frame mask is the OR of the pair's masks. Where only one video of the
    pair has a frame, that frame is taken as it is: the other's padding is not data. Weights,
    text and padding rows (weight 0) stay as they were. See `mixup_pairs` for `lam` and `perm`.
    """
    lam, perm = mixup_pairs(rng, batch["weights"], alpha)
    keys = [k for k in (*FRAME_KEYS, "mask", "num_frames", "labels", "weights") if k in batch]
    return {**batch, **_mix(lam, perm, {k: batch[k] for k in keys})}


@jax.jit
def _mix(lam: jax.Array, perm: jax.Array, batch: dict) -> dict:
    real = batch["weights"] > 0
    out = dict(batch)

    def mix(x, x_mask=None):
        y = x[perm]
        mixed = lam * x + (1 - lam) * y
        if x_mask is not None:
            own, other = _expand(x_mask, x), _expand(x_mask[perm], x)
            mixed = jnp.where(own & other, mixed, jnp.where(own, x, y))
            mixed = jnp.where(own | other, mixed, x)
        return jnp.where(_expand(real, x), mixed, x)

    mask = batch["mask"].astype(bool) if "mask" in batch else None
    for key in FRAME_KEYS:
        if key not in batch:
            continue
        x = batch[key]
        if key == "pixels":
            out[key] = _like(mix(x.astype(jnp.float32), mask), x)
        else:
            out[key] = mix(_as_float_features(x).astype(jnp.float32), mask)
    out["labels"] = mix(batch["labels"].astype(jnp.float32))
    if mask is not None:
        out["mask"] = jnp.where(real[:, None], mask | mask[perm], mask)
        if "num_frames" in batch:
            out["num_frames"] = out["mask"].sum(1).astype(batch["num_frames"].dtype)
    return out


# The batch.


def augment_batch(rng: jax.Array, batch: dict, config: ml_collections.ConfigDict) -> dict:
    """Applies the augmentations switched on in `config` (the `augment` block) to a batch.

    Order: temporal crop, temporal jitter, frame dropout (frames and mask), then on pixels
    crop, flip and colour, then feature noise on rgb/audio, then mixup. Only the training step
    calls this; evaluation never augments. `num_frames`, where present, follows the new mask.
    With everything off the batch's arrays come back as they are, in a new dict (the caller's
    dict is never changed).
    """
    keys = dict(zip(STAGES, jax.random.split(rng, len(STAGES)), strict=True))
    out = dict(batch)
    frame_keys = [k for k in FRAME_KEYS if k in out and "mask" in out]

    def need(field, *entries):
        missing = [e for e in entries if e not in out]
        if missing:
            raise ValueError(
                f"config.augment.{field} needs batch entries {missing}; the batch has {sorted(out)}"
            )

    def set_frames(frames, mask):
        out.update(frames)
        out["mask"] = mask
        if "num_frames" in out:
            out["num_frames"] = mask.sum(1).astype(out["num_frames"].dtype)

    if config.temporal_crop:
        need("temporal_crop", "mask")
        frames = {k: out[k] for k in frame_keys}
        set_frames(
            *random_temporal_crop(keys["temporal_crop"], frames, out["mask"], config.temporal_crop)
        )
    if config.temporal_jitter:
        need("temporal_jitter", "mask")
        frames = {k: out[k] for k in frame_keys}
        set_frames(
            *temporal_jitter(keys["temporal_jitter"], frames, out["mask"], config.temporal_jitter)
        )
    if config.frame_dropout:
        need("frame_dropout", "mask")
        set_frames({}, frame_dropout(keys["frame_dropout"], out["mask"], config.frame_dropout))
    pixel_fields = ("crop_scale", "flip", "brightness", "contrast")
    for field in pixel_fields:
        if config[field]:
            need(field, "pixels")
    if any(config[field] for field in pixel_fields):
        pixels = out["pixels"]
        # Float until the end, so uint8 pixels are rounded once rather than after every stage.
        x = pixels.astype(jnp.float32)
        if config.crop_scale:
            x = random_resized_crop(
                keys["crop"],
                x,
                out_size=x.shape[2:4],
                scale=(config.crop_scale, 1.0),
                ratio=tuple(config.crop_ratio),
            )
        if config.flip:
            x = horizontal_flip(keys["flip"], x)
        if config.brightness or config.contrast:
            x = color_jitter(
                keys["color"],
                x,
                config.brightness,
                config.contrast,
                mask=out.get("mask"),
                max_value=_max_value(pixels, None),
            )
        out["pixels"] = _like(x, pixels)
    if config.feature_noise:
        if not any(k in out for k in FEATURE_KEYS):
            raise ValueError(
                f"config.augment.feature_noise needs 'rgb' or 'audio' in the batch; it has "
                f"{sorted(out)}"
            )
        # Video-level features ([b, d]) have no frames to mask.
        frame_level = "mask" in out and all(out[k].ndim == 3 for k in FEATURE_KEYS if k in out)
        features = {k: out[k] for k in FEATURE_KEYS if k in out}
        out.update(
            feature_noise(
                keys["noise"],
                features,
                config.feature_noise,
                mask=out["mask"] if frame_level else None,
            )
        )
    if config.mixup_alpha:
        need("mixup_alpha", "labels", "weights")
        out = mixup(keys["mixup"], out, config.mixup_alpha)
    return out
