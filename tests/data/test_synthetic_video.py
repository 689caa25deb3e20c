"""Synthetic mp4s decode, show and sound like their labels, and repeat for a seed."""

import csv
import dataclasses
import hashlib
import os

import numpy as np
import pytest

from vmjax.data import synthetic_video as sv
from vmjax.data import video

GROUPS = {
    "shape": {0: "square", 1: "circle"},
    "colour": {2: "red", 3: "green", 4: "blue"},
    "direction": {5: "left_to_right", 6: "right_to_left"},
    "tone": {7: 300, 8: 600, 9: 1200, 10: 2400},
}
ARGS = dict(num_videos=6, seconds=1.5, size=32, fps=8.0, validate_fraction=1 / 3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic_video"))
    sv.main(["--out", out, "--seed", "3"] + [f"--{k}={v}" for k, v in ARGS.items()])
    return out


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _digests(out):
    return {
        os.path.relpath(os.path.join(root, name), out): hashlib.sha256(
            open(os.path.join(root, name), "rb").read()
        ).hexdigest()
        for root, _, names in os.walk(out)
        for name in names
    }


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as info:
        sv.main(["--help"])
    assert info.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--out", "--num_videos", "--seconds", "--size", "--fps", "--seed"):
        assert flag in usage


def test_csv_files(data):
    classes = _read(os.path.join(data, "classes.csv"))
    assert [(int(r["Index"]), r["Name"]) for r in classes] == list(enumerate(sv.CLASSES))
    rows = _read(os.path.join(data, "labels.csv"))
    assert len(rows) == 6 and list(rows[0]) == ["path", "labels"]
    for row in rows:
        assert os.path.isfile(os.path.join(data, row["path"])) and not os.path.isabs(row["path"])
        labels = [int(x) for x in row["labels"].split(" ")]
        # one label from each group, in group order
        assert [next(g for g, ids in GROUPS.items() if i in ids) for i in labels] == list(GROUPS)
    train = _read(os.path.join(data, "train.csv"))
    validate = _read(os.path.join(data, "validate.csv"))
    assert len(validate) == 2 and len(train) == 4
    assert sorted(r["path"] for r in train + validate) == sorted(r["path"] for r in rows)
    assert all(r["path"].startswith("validate/") for r in validate)


def test_files_decode_and_show_their_labels(data):
    for row in _read(os.path.join(data, "labels.csv")):
        shape, colour, direction, tone = (
            GROUPS[g][int(i)] for g, i in zip(GROUPS, row["labels"].split(" "), strict=True)
        )
        clip = video.decode_video(
            os.path.join(data, row["path"]), num_frames=16, sampling="stride", size=None
        )
        assert clip["mask"].sum() == 12 and clip["frames"].shape == (16, 32, 32, 3)
        assert clip["fps"] == 8 and clip["has_audio"]
        assert abs(len(clip["audio"]) - 1.5 * 16_000) < 0.05 * 1.5 * 16_000
        frames = clip["frames"][:12].astype(np.float64)
        background = np.median(frames, axis=(0, 1, 2))  # the shape covers under a fifth
        inside = np.abs(frames - background).sum(axis=-1) > 60  # [t, h, w]
        assert inside.any(axis=(1, 2)).all()
        # colour: the shape's mean colour is nearest its class's colour
        mean = frames[inside].mean(axis=0)
        nearest = min(sv.COLOURS, key=lambda c: np.abs(np.subtract(sv.COLOURS[c], mean)).sum())
        assert nearest == colour, (row, mean)
        # direction: the shape's centre of mass moves the way the label says (pixel rounding
        # may hold it still for a frame, so fit a line)
        xs = np.array([np.nonzero(m)[1].mean() for m in inside])
        slope = np.polyfit(np.arange(len(xs)), xs, 1)[0]
        assert (slope > 0.3) if direction == "left_to_right" else (slope < -0.3), (row, xs)
        # shape: a square fills its bounding box, a circle about pi/4 of it
        m = inside[len(inside) // 2]
        rows_, cols = np.nonzero(m)
        fill = m.sum() / ((np.ptp(rows_) + 1) * (np.ptp(cols) + 1))
        assert (fill > 0.92) if shape == "square" else (0.65 < fill < 0.9), (row, fill)
        # tone: the loudest mel bin is the one nearest the tone
        centers = video.hertz_to_mel(video.mel_centers_hz())
        peak = np.argmax(clip["log_mel"].mean(axis=(0, 1)))
        assert peak == np.argmin(np.abs(centers - video.hertz_to_mel(tone))), row


def test_direction_classes_differ_only_in_frame_order():
    clip = sv.sample_clip(np.random.default_rng(0), 32)
    forward = dataclasses.replace(clip, direction="left_to_right")
    backward = dataclasses.replace(clip, direction="right_to_left")
    a = sv.render_frames(forward, num_frames=10, size=32)
    b = sv.render_frames(backward, num_frames=10, size=32)
    assert a.shape == (10, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[::-1], b)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(
        sv.render_audio(forward, seconds=1.0), sv.render_audio(backward, seconds=1.0)
    )
    assert forward.labels != backward.labels


def test_deterministic_for_a_seed(data, tmp_path):
    again = str(tmp_path / "again")
    sv.generate(again, seed=3, **ARGS)
    assert _digests(again) == _digests(data)
    other = str(tmp_path / "other")
    sv.generate(other, seed=4, **ARGS)
    assert _digests(other) != _digests(data)


def test_bad_arguments():
    for kwargs in ({"size": 33}, {"num_videos": 0}, {"fps": 0.0}):
        with pytest.raises(ValueError):
            sv.generate("unused", **kwargs)
