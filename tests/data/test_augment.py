"""Augmentations: each one's defining property, checked against numpy on small batches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmjax.data import augment, yt8m

KEY = jax.random.key(0)


def _keys(n: int) -> list:
    # fold_in compiles once for any n (unstacking a split of n keys compiles per n).
    return [jax.random.fold_in(KEY, i) for i in range(1, n + 1)]


def _frames(b: int, t: int, counts) -> tuple[np.ndarray, np.ndarray]:
    """Frames `[b, t, 2]` whose values name (video, frame); the pipeline's zero padding."""
    mask = np.arange(t)[None, :] < np.asarray(counts)[:, None]
    ids = 100.0 * np.arange(1, b + 1)[:, None] + np.arange(t)[None, :]
    frames = np.stack([ids, -ids], -1).astype(np.float32) * mask[..., None]
    return frames, mask


def _feature_batch(rng: np.random.Generator, weights) -> dict:
    b, t = len(weights), 6
    counts = rng.integers(0, t + 1, b)
    mask = np.arange(t)[None, :] < counts[:, None]
    return {
        "rgb": (rng.integers(0, 256, (b, t, 8)) * mask[..., None]).astype(np.uint8),
        "audio": (rng.integers(0, 256, (b, t, 4)) * mask[..., None]).astype(np.uint8),
        "mask": mask,
        "num_frames": counts.astype(np.int32),
        "labels": rng.integers(0, 2, (b, 5)).astype(np.uint8),
        "weights": np.asarray(weights, np.float32),
    }


# Pixels.


def test_flip_reverses_width_per_video_and_twice_is_identity():
    pixels = np.random.default_rng(0).integers(0, 256, (8, 2, 3, 5, 3)).astype(np.uint8)
    once = np.asarray(augment.horizontal_flip(KEY, pixels))
    np.testing.assert_array_equal(augment.horizontal_flip(KEY, once), pixels)
    np.testing.assert_array_equal(augment.horizontal_flip(KEY, pixels, 1.0), pixels[..., ::-1, :])
    flipped = [(v == p[..., ::-1, :]).all() for v, p in zip(once, pixels, strict=True)]
    kept = [(v == p).all() for v, p in zip(once, pixels, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each video: all or nothing
    assert 0 < sum(flipped) < len(pixels)


def test_crop_boxes_lie_in_the_frame_with_the_asked_area_and_ratio():
    height, width = 24, 40
    boxes = np.asarray(augment.sample_crop_boxes(KEY, 512, height, width, (0.1, 0.6), (0.5, 2.0)))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    # Rounding the sides to whole pixels moves area and ratio a little.
    area = h * w / (height * width)
    assert (area > 0.1 * 0.85).all() and (area < 0.6 * 1.15).all()
    assert (w / h > 0.5 * 0.85).all() and (w / h < 2.0 * 1.15).all()
    assert len(set(top)) > 5 and len(set(left)) > 5 and len(set(h)) > 5
    # A box larger than the frame never fits: the fallback is the largest box of an allowed ratio.
    fallback = np.asarray(augment.sample_crop_boxes(KEY, 4, 10, 40, (1.0, 1.0), (1.0, 2.0)))
    np.testing.assert_array_equal(fallback[:, 2:], [[10, 20]] * 4)


def test_crop_takes_only_pixels_of_its_box_the_same_for_all_frames():
    height, width = 16, 20
    y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    frame = np.stack([y, x, y * width + x], -1).astype(np.float32)  # a unique value per pixel
    # Frame t holds frame 0's values + 1000 t (channel 2): one box for all frames keeps the shift.
    shifts = np.zeros((3, 1, 1, 3), np.float32)
    shifts[:, ..., 2] = 1000 * np.arange(3)[:, None, None]
    pixels = np.broadcast_to(frame + shifts, (4, 3, *frame.shape))
    boxes = np.asarray(augment.sample_crop_boxes(KEY, 4, height, width, (0.2, 0.5), (0.75, 1.33)))
    nearest = np.asarray(
        augment.random_resized_crop(
            KEY, pixels, out_size=(7, 9), scale=(0.2, 0.5), ratio=(0.75, 1.33), method="nearest"
        )
    )
    area = np.asarray(
        augment.random_resized_crop(
            KEY, pixels, out_size=(7, 9), scale=(0.2, 0.5), ratio=(0.75, 1.33), method="area"
        )
    )
    assert nearest.shape == area.shape == (4, 3, 7, 9, 3)
    for (top, left, h, w), near, avg in zip(boxes, nearest, area, strict=True):
        window = frame[top : top + h, left : left + w, 2]
        assert set(near[0, ..., 2].ravel()) <= set(window.ravel())
        # Nearest keeps whole rows and columns of the box, including its corners.
        assert near[0, 0, 0, 2] == window[0, 0] and near[0, -1, -1, 2] == window[-1, -1]
        # Area averages pixels of the box only: every coordinate stays inside it.
        assert (avg[..., 0] >= top - 1e-4).all() and (avg[..., 0] <= top + h - 1 + 1e-4).all()
        assert (avg[..., 1] >= left - 1e-4).all() and (avg[..., 1] <= left + w - 1 + 1e-4).all()
        for crop in (near, avg):
            shift = np.broadcast_to(1000.0 * np.arange(1, 3)[:, None, None], (2, 7, 9))
            np.testing.assert_allclose(crop[1:, ..., 2] - crop[:1, ..., 2], shift, atol=1e-2)


def test_full_frame_crop_is_a_resize():
    pixels = np.random.default_rng(1).integers(0, 256, (2, 2, 8, 8, 3)).astype(np.uint8)
    crop = augment.random_resized_crop(KEY, pixels, out_size=(4, 6), scale=(1, 1), ratio=(1, 1))
    assert crop.dtype == np.uint8
    resized = jax.image.resize(pixels.astype(np.float32), (2, 2, 4, 6, 3), "linear")
    np.testing.assert_allclose(crop, np.round(resized), atol=1)  # 1: rounding of x.5


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.float32, 1.0)])
def test_color_jitter_keeps_the_range_and_is_identity_at_zero(dtype, top):
    rng = np.random.default_rng(2)
    pixels = (rng.uniform(0, 1, (4, 2, 6, 6, 3)) * top).astype(dtype)
    np.testing.assert_array_equal(augment.color_jitter(KEY, pixels), pixels)
    strong = np.asarray(augment.color_jitter(KEY, pixels, brightness=2.0, contrast=2.0))
    assert strong.dtype == dtype and strong.min() >= 0 and strong.max() <= top
    assert strong.max() == top  # a factor near 3 saturates some pixels
    assert not np.array_equal(strong, pixels)


def test_brightness_scales_each_video_and_contrast_keeps_its_mean_gray():
    rng = np.random.default_rng(3)
    pixels = rng.uniform(0.3, 0.7, (6, 2, 5, 5, 3)).astype(np.float32)  # no clipping
    mask = np.ones((6, 2), bool)
    mask[0, 1] = False
    bright = np.asarray(augment.color_jitter(KEY, pixels, brightness=0.4))
    factor = bright / pixels
    one_per_video = np.broadcast_to(factor[:, :1, :1, :1, :1], factor.shape)
    np.testing.assert_allclose(factor, one_per_video, rtol=1e-5)
    assert (factor > 0.6 - 1e-6).all() and (factor < 1.4 + 1e-6).all()
    assert len(np.unique(factor[:, 0, 0, 0, 0].round(4))) == 6  # per video

    contrasted = np.asarray(augment.color_jitter(KEY, pixels, contrast=0.3, mask=mask))
    np.testing.assert_array_equal(contrasted[0, 1], pixels[0, 1])  # padding frame untouched
    spreads = []
    for v in range(6):
        before, after = pixels[v][mask[v]] @ augment.GRAY, contrasted[v][mask[v]] @ augment.GRAY
        np.testing.assert_allclose(after.mean(), before.mean(), rtol=1e-5)
        spreads.append(after.std() / before.std())
    assert all(0.7 - 1e-4 < s < 1.3 + 1e-4 for s in spreads) and len(set(spreads)) == 6


# Time.


def _valid_runs(out: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    return [o[m, 0] for o, m in zip(out, mask, strict=True)]


def test_temporal_jitter_drops_leading_frames_and_keeps_the_rest_in_order():
    counts = [6, 3, 1, 0]
    frames, mask = _frames(4, 6, counts)
    seen = set()
    for key in _keys(16):
        out, new_mask = augment.temporal_jitter(key, {"rgb": frames, "audio": -frames}, mask, 2)
        out, new_mask = {k: np.asarray(v) for k, v in out.items()}, np.asarray(new_mask)
        np.testing.assert_array_equal(out["audio"], -out["rgb"])  # modalities move together
        np.testing.assert_array_equal(new_mask, np.arange(6) < new_mask.sum(1)[:, None])
        assert (out["rgb"][~new_mask] == 0).all()
        for v, (run, n) in enumerate(zip(_valid_runs(out["rgb"], new_mask), counts, strict=True)):
            shift = n - len(run)
            assert 0 <= shift <= min(2, max(n - 1, 0)) and (len(run) > 0) == (n > 0)
            np.testing.assert_array_equal(run, frames[v, shift:n, 0])
            seen.add((v, shift))
    assert {(0, 0), (0, 1), (0, 2), (1, 2)} <= seen


def test_temporal_crop_is_a_window_of_consecutive_valid_frames():
    frames, mask = _frames(3, 8, [8, 3, 0])
    mask[0, [1, 4]] = False  # holes, as after frame dropout: the valid frames count
    valid = [frames[v, mask[v], 0] for v in range(3)]
    starts = set()
    for key in _keys(24):
        out, new_mask = map(np.asarray, augment.random_temporal_crop(key, frames, mask, 3))
        assert list(new_mask.sum(1)) == [3, 3, 0]
        runs = _valid_runs(out, new_mask)
        start = int(np.flatnonzero(valid[0] == runs[0][0])[0])
        np.testing.assert_array_equal(runs[0], valid[0][start : start + 3])
        np.testing.assert_array_equal(runs[1], valid[1])
        starts.add(start)
    assert starts == {0, 1, 2, 3}


def test_frame_dropout_never_empties_a_video_and_drops_rate_on_average():
    rng = np.random.default_rng(4)
    mask = np.arange(40)[None, :] < rng.integers(0, 41, 64)[:, None]
    mask[:4] = [True] * 2 + [False] * 38  # short videos, the likeliest to be emptied
    heavy = np.asarray(augment.frame_dropout(KEY, mask, 0.95))
    assert not (heavy & ~mask).any()
    np.testing.assert_array_equal(heavy.any(1), mask.any(1))
    full = np.ones((64, 50), bool)
    kept = np.asarray(augment.frame_dropout(KEY, full, 0.3)).mean()
    assert abs((1 - kept) - 0.3) < 0.03
    np.testing.assert_array_equal(augment.frame_dropout(KEY, mask, 0.0), mask)


def test_feature_noise_touches_only_valid_frames_with_the_asked_stddev():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 30, 16)).astype(np.float32)
    mask = rng.random((8, 30)) < 0.6
    out = augment.feature_noise(KEY, {"rgb": x, "audio": x[..., :4]}, 0.2, mask=mask)
    out = {k: np.asarray(v) for k, v in out.items()}
    np.testing.assert_array_equal(out["rgb"][~mask], x[~mask])
    noise = out["rgb"][mask] - x[mask]
    assert abs(noise.std() - 0.2) < 0.01 and abs(noise.mean()) < 0.01
    audio_noise = out["audio"][mask] - x[mask][:, :4]
    assert abs(np.corrcoef(audio_noise.ravel(), noise[:, :4].ravel())[0, 1]) < 0.1  # independent
    q = rng.integers(0, 256, (2, 3, 4)).astype(np.uint8)
    quantized = np.asarray(augment.feature_noise(KEY, q, 0.1, mask=np.array([[1, 0, 1]] * 2)))
    assert quantized.dtype == np.float32
    np.testing.assert_array_equal(quantized[:, 1], yt8m.dequantize(q)[:, 1])
    np.testing.assert_array_equal(augment.feature_noise(KEY, x, 0.0), x)


# Mixup.


MIXUP_WEIGHTS = [1, 1, 0, 1, 1, 0, 1]


def test_mixup_mixes_real_rows_only_as_lam_y_plus_one_minus_lam_y_perm():
    batch = _feature_batch(np.random.default_rng(6), MIXUP_WEIGHTS)
    batch["ids"] = np.array(list("abcdefg"))  # host-only entries pass through
    lam, perm = map(np.asarray, augment.mixup_pairs(KEY, batch["weights"], 0.4))
    out = {k: np.asarray(v) for k, v in augment.mixup(KEY, batch, 0.4).items()}
    assert out["ids"] is batch["ids"]
    real = np.asarray(MIXUP_WEIGHTS) > 0
    np.testing.assert_array_equal(perm[~real], np.flatnonzero(~real))
    assert sorted(perm[real]) == list(np.flatnonzero(real)) and (perm != np.arange(7)).any()

    y = batch["labels"].astype(np.float32)
    expected = np.where(real[:, None], lam * y + (1 - lam) * y[perm], y)
    assert out["labels"].dtype == np.float32
    np.testing.assert_allclose(out["labels"], expected, rtol=1e-6)
    mask = batch["mask"]
    np.testing.assert_array_equal(out["mask"], np.where(real[:, None], mask | mask[perm], mask))
    np.testing.assert_array_equal(out["num_frames"], out["mask"].sum(1))
    np.testing.assert_array_equal(out["weights"], batch["weights"])
    for key in ("rgb", "audio"):
        x = yt8m.dequantize(batch[key])
        own, other = mask[..., None], mask[perm][..., None]
        mixed = np.where(own & other, lam * x + (1 - lam) * x[perm], np.where(other, x[perm], x))
        np.testing.assert_allclose(out[key], np.where(real[:, None, None], mixed, x), rtol=1e-5)
        np.testing.assert_array_equal(out[key][~real], x[~real])  # padding rows untouched


def test_mixup_weight_follows_beta_and_never_pairs_with_padding():
    weights = jnp.asarray(MIXUP_WEIGHTS, jnp.float32)
    # A loop reuses the compiled sampler; vmap would compile the gamma sampler again (slow).
    draws = [augment.mixup_pairs(key, weights, 0.4) for key in _keys(1000)]
    lam = np.array([np.asarray(lam) for lam, _ in draws])
    perm = np.array([np.asarray(perm) for _, perm in draws])
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); bounds ~4 standard errors of 1000 draws
    # (Beta(1, 1), i.e. uniform, would have variance 1/12 = 0.083 instead of 0.139).
    assert abs(lam.mean() - 0.5) < 0.05
    assert abs(lam.var() - 1 / (4 * (2 * 0.4 + 1))) < 0.027
    real = np.asarray(MIXUP_WEIGHTS) > 0
    assert real[perm[:, real]].all() and (perm[:, ~real] == np.flatnonzero(~real)).all()


# The batch.

# All but mixup, whose Beta sampler takes seconds to compile: it has its own test below.
ALL_BUT_MIXUP = dict(
    temporal_crop=3,
    temporal_jitter=1,
    frame_dropout=0.3,
    crop_scale=0.3,
    flip=True,
    brightness=0.3,
    contrast=0.3,
    feature_noise=0.1,
)


def _batch(rng: np.random.Generator) -> dict:
    """Features and pixels of 7 videos (2 of them padding), 4 frames each at most."""
    batch = _feature_batch(rng, MIXUP_WEIGHTS)
    batch = {k: v[:, :4] if k in ("rgb", "audio", "mask") else v for k, v in batch.items()}
    batch["num_frames"] = batch["mask"].sum(1).astype(np.int32)
    batch["pixels"] = rng.integers(0, 256, (7, 4, 8, 8, 3)).astype(np.uint8)
    return batch


def _config(**fields):
    config = augment.default_config()
    config.update(fields)
    return config


def test_default_config_is_all_off_and_returns_the_same_arrays():
    config = augment.default_config()
    assert not any(v for k, v in config.items() if k != "crop_ratio")
    batch = _batch(np.random.default_rng(7))
    out = augment.augment_batch(KEY, batch, config)
    assert out is not batch and out.keys() == batch.keys()
    assert all(out[k] is batch[k] for k in batch)
    jitted = jax.jit(functools.partial(augment.augment_batch, config=config))(KEY, batch)
    for k in batch:
        np.testing.assert_array_equal(jitted[k], batch[k])


def test_augment_batch_under_jit_is_reproducible_and_keeps_the_batch_consistent():
    batch = _batch(np.random.default_rng(8))
    copy = {k: v.copy() for k, v in batch.items()}
    step = jax.jit(functools.partial(augment.augment_batch, config=_config(**ALL_BUT_MIXUP)))
    out, again, other = (
        {k: np.asarray(v) for k, v in step(key, batch).items()}
        for key in (KEY, KEY, jax.random.key(1))
    )
    for k in batch:
        np.testing.assert_array_equal(batch[k], copy[k])  # the caller's arrays are not changed
        np.testing.assert_array_equal(out[k], again[k])
        assert out[k].shape == batch[k].shape
    for k in ("rgb", "audio", "pixels", "mask"):
        assert not np.array_equal(out[k], other[k]), k
    assert out["pixels"].dtype == np.uint8 and out["rgb"].dtype == np.float32
    for k in ("labels", "weights"):
        np.testing.assert_array_equal(out[k], batch[k])
    np.testing.assert_array_equal(out["num_frames"], out["mask"].sum(1))
    # Windows of at most 3 frames, moved to the front; dropout only clears frames.
    assert not out["mask"][:, 3:].any() and not (out["mask"] & ~batch["mask"]).any()
    np.testing.assert_array_equal(out["mask"].any(1), batch["mask"].any(1))  # none emptied


def test_augment_batch_mixes_with_its_own_key_for_mixup():
    batch = _batch(np.random.default_rng(10))
    out = augment.augment_batch(KEY, batch, _config(mixup_alpha=0.4))
    key = jax.random.split(KEY, len(augment.STAGES))[augment.STAGES.index("mixup")]
    expected = augment.mixup(key, batch, 0.4)
    assert out.keys() == expected.keys() and out["labels"].dtype == np.float32
    for k in out:
        np.testing.assert_array_equal(out[k], expected[k])


def test_augmentations_that_do_not_fit_the_batch_name_the_field():
    batch = _feature_batch(np.random.default_rng(9), [1, 1])
    with pytest.raises(ValueError, match="config.augment.flip"):
        augment.augment_batch(KEY, batch, _config(flip=True))
    video = {k: batch[k] for k in ("labels", "weights")} | {"rgb": np.zeros((2, 8), np.float32)}
    with pytest.raises(ValueError, match="config.augment.temporal_crop.*mask"):
        augment.augment_batch(KEY, video, _config(temporal_crop=2))
    with pytest.raises(ValueError, match="rate"):
        augment.frame_dropout(KEY, batch["mask"], 1.0)
