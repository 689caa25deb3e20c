"""Test views (N clips x M crops) against hand-computed frame indices, crop boxes and means."""

import math

import numpy as np
import pytest

from vmjax import configs_check
from vmjax.data import synthetic_video, video, views
from vmjax.errors import UserError


@pytest.mark.parametrize(
    "sampling, stride, num_source, num_clips, want",
    [
        # span 4 of 10 frames: room 6, offsets 0, 3, 6 (first clip at the start, last at the end)
        ("stride", 1, 10, 3, [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]),
        # stride 2: span 7, room 3, offsets floor(0, 1.5, 3)
        ("stride", 2, 10, 3, [[0, 2, 4, 6], [1, 3, 5, 7], [3, 5, 7, 9]]),
        ("stride", 2, 10, 1, [[0, 2, 4, 6]]),  # one clip: the first frames, as decode_video
        ("stride", 1, 4, 2, [[0, 1, 2, 3], [0, 1, 2, 3]]),  # no room: the same clip twice
        ("stride", 2, 5, 2, [[0, 2, 4, -1], [0, 2, 4, -1]]),  # short: padded
        # segments of 2.5 frames; clip n at (j + (n + 0.5) / 2) * 2.5
        ("uniform", 1, 10, 2, [[0, 3, 5, 8], [1, 4, 6, 9]]),
        ("uniform", 1, 10, 1, [[1, 3, 6, 8]]),  # (j + 0.5) * 2.5: decode_video's
        ("uniform", 1, 3, 2, [[0, 1, 2, -1], [0, 1, 2, -1]]),  # short: every frame, padded
    ],
)
def test_clip_indices_are_the_hand_computed_frames(sampling, stride, num_source, num_clips, want):
    got = views.clip_indices(
        num_source, num_clips=num_clips, clip_frames=4, sampling=sampling, stride=stride
    )
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64


def test_crop_boxes_take_start_centre_and_end_of_the_long_side():
    # (top, left, height, width)
    wide = views.crop_boxes(4, 8, num_crops=3, size=4)
    np.testing.assert_array_equal(wide, [[0, 0, 4, 4], [0, 2, 4, 4], [0, 4, 4, 4]])
    tall = views.crop_boxes(9, 4, num_crops=3, size=4)  # centre: int(0.5 * (9 - 4 + 1)) = 3
    np.testing.assert_array_equal(tall, [[0, 0, 4, 4], [3, 0, 4, 4], [5, 0, 4, 4]])
    np.testing.assert_array_equal(views.crop_boxes(9, 4, num_crops=1, size=4), [[3, 0, 4, 4]])
    # A square frame: three equal crops (MMAction2's ThreeCrop does the same).
    np.testing.assert_array_equal(views.crop_boxes(4, 4, num_crops=3, size=4), [[0, 0, 4, 4]] * 3)
    with pytest.raises(ValueError, match="do not fit"):
        views.crop_boxes(3, 8, num_crops=3, size=4)
    with pytest.raises(ValueError, match="num_crops"):
        views.crop_boxes(4, 8, num_crops=2, size=4)


def test_views_cut_the_hand_computed_frames_and_boxes_clip_major():
    t, h, w = 10, 4, 8
    frames = np.zeros([t, h, w, 3], np.int64)  # each pixel says where it came from
    frames[..., 0] = np.arange(t)[:, None, None] + 1
    frames[..., 1] = np.arange(h)[None, :, None]
    frames[..., 2] = np.arange(w)[None, None, :]
    out = views.views(
        frames, num_clips=3, num_crops=3, clip_frames=4, size=4, sampling="stride", stride=1
    )
    assert out.pixels.shape == (9, 4, 4, 4, 3)
    np.testing.assert_array_equal(out.frame_indices, [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
    np.testing.assert_array_equal(out.boxes[:, 1], [0, 2, 4])
    for n, first in enumerate([0, 3, 6]):
        for m, left in enumerate([0, 2, 4]):
            v = out.pixels[n * 3 + m]
            np.testing.assert_array_equal(v[:, 0, 0, 0], np.arange(first, first + 4) + 1)
            np.testing.assert_array_equal(v[0, :, 0, 1], np.arange(4))
            np.testing.assert_array_equal(v[0, 0, :, 2], np.arange(left, left + 4))
    assert out.mask.all()

    short = views.views(frames[:5], num_clips=2, num_crops=1, clip_frames=4, size=4, stride=2)
    np.testing.assert_array_equal(short.mask, [[1, 1, 1, 0]] * 2)
    np.testing.assert_array_equal(short.pixels[:, :3, 0, 0, 0], [[1, 3, 5]] * 2)
    assert not short.pixels[:, 3].any()  # padding frames are zero


def test_average_prob_and_score_are_the_hand_computed_means():
    # One video, two views, two classes: logits (1, -1) and (3, 1).
    logits = np.array([[1.0, -1.0], [3.0, 1.0]], np.float32)
    scores = 1 / (1 + np.exp(-logits))

    def sig(x):
        return 1 / (1 + math.exp(-x))

    prob = views.average(scores, logits, views.ViewSpec(2, 1, "prob"))
    np.testing.assert_allclose(prob, [[(sig(1) + sig(3)) / 2, (sig(-1) + sig(1)) / 2]], rtol=1e-6)
    score = views.average(scores, logits, views.ViewSpec(2, 1, "score"))
    np.testing.assert_allclose(score, [[sig(2.0), 0.5]], rtol=1e-6)
    # One view: the step's scores, untouched.
    np.testing.assert_array_equal(views.average(scores, None, views.ViewSpec()), scores)
    np.testing.assert_array_equal(
        views.first_view(np.array([5, 5, 7, 7]), views.ViewSpec(2)), [5, 7]
    )
    with pytest.raises(ValueError, match="whole videos"):
        views.average(scores[:1], logits[:1], views.ViewSpec(2))


def _config(**eval_fields):
    from vmjax.configs import vivit_pixels

    c = vivit_pixels.get_config("smoke")
    c.eval_batch_size = 12
    for k, v in eval_fields.items():
        c.eval[k] = v
    return c


def test_view_settings_are_checked_at_the_door():
    assert views.ViewSpec.from_config(_config()) == views.ViewSpec(1, 1, "prob")
    spec = views.ViewSpec.from_config(_config(num_clips=2, num_crops=3, average="score"))
    assert (spec.num_views, spec.average) == (6, "score")
    with pytest.raises(UserError, match=r"eval_batch_size=12: expected a multiple of 24"):
        views.ViewSpec.from_config(_config(num_clips=4, num_crops=3), process_count=2)
    with pytest.raises(UserError, match=r"eval_batch_size=12: expected a multiple of 9"):
        views.ViewSpec.from_config(_config(num_clips=3, num_crops=3))
    with pytest.raises(UserError, match=r"num_crops=2: expected one of \(1, 3\)"):
        views.ViewSpec.from_config(_config(num_crops=2))
    with pytest.raises(UserError, match=r"average='mean': expected one of \('prob', 'score'\)"):
        views.ViewSpec.from_config(_config(average="mean"))
    features = _config(num_clips=2)
    features.data.format = "tfrecord"
    with pytest.raises(UserError, match="several views need decoded videos"):
        views.ViewSpec.from_config(features)
    # The config rules table says the same before any run starts.
    with pytest.raises(
        configs_check.ConfigError, match=r"config.eval.num_crops=2: expected 1 or 3"
    ):
        configs_check.validate(_config(num_crops=2))
    with pytest.raises(configs_check.ConfigError, match=r"config.eval.average='mean'"):
        configs_check.validate(_config(average="mean"))
    with pytest.raises(configs_check.ConfigError, match=r"config.eval.num_clips=0"):
        configs_check.validate(_config(num_clips=0))


@pytest.fixture(scope="module")
def wide_video(tmp_path_factory):
    """10 frames of 32 x 48 at 4 fps: a shape crossing a frame wider than it is tall."""
    clip = synthetic_video.sample_clip(np.random.default_rng(3), 32)
    frames = synthetic_video.render_frames(clip, num_frames=10, size=32)
    frames = np.concatenate([frames, frames[:, :, :16]], axis=2)
    path = str(tmp_path_factory.mktemp("views") / "wide.mp4")
    synthetic_video.write_mp4(path, frames, fps=4.0)
    return path


@pytest.mark.parametrize("sampling", ["uniform", "stride", "fps"])
def test_one_view_decodes_as_decode_video(wide_video, sampling):
    kw = dict(num_frames=4, sampling=sampling, stride=2, fps=2.0, size=(32, 32))
    want = video.decode_video(wide_video, with_audio=False, **kw)
    got = video.decode_views(wide_video, num_clips=1, num_crops=1, **kw)
    np.testing.assert_array_equal(got["frames"][0], want["frames"])
    np.testing.assert_array_equal(got["mask"][0], want["mask"])
    np.testing.assert_array_equal(got["frame_indices"][0], want["frame_indices"])
    np.testing.assert_array_equal(got["crop_boxes"][0], want["crop_box"])


@pytest.mark.parametrize(
    "sampling, stride, indices",
    [
        ("stride", 1, [[0, 1, 2, 3], [6, 7, 8, 9]]),
        ("uniform", 1, [[0, 3, 5, 8], [1, 4, 6, 9]]),
        ("stride", 3, [[0, 3, 6, 9], [0, 3, 6, 9]]),  # span 10: no room
        ("fps", 1, [[0, 2, 4, 6], [2, 4, 6, 8]]),  # 2 fps of 4: grid 0, 2, .., 8; windows of it
    ],
)
def test_decoded_views_are_the_frames_and_boxes_of_a_full_decode(
    wide_video, sampling, stride, indices
):
    got = video.decode_views(
        wide_video,
        num_frames=4,
        num_clips=2,
        num_crops=3,
        sampling=sampling,
        stride=stride,
        fps=2.0,
        size=(32, 32),
    )
    np.testing.assert_array_equal(got["frame_indices"], indices)
    np.testing.assert_array_equal(got["crop_boxes"][:, :2], [[0, 0], [0, 8], [0, 16]])
    assert got["scaled_size"] == (32, 48) and got["mask"].all()
    # Every frame at the source size (the short side is already 32), cropped by hand.
    every = video.decode_video(
        wide_video, num_frames=10, sampling="stride", size=None, with_audio=False
    )["frames"]
    for n, clip in enumerate(indices):
        for m, left in enumerate([0, 8, 16]):
            want = every[clip][:, :, left : left + 32]
            np.testing.assert_array_equal(got["frames"][n * 3 + m], want)
