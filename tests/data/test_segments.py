"""2019 segment examples: frames, labels and weights checked by hand on hand-built records."""

import numpy as np
import pytest

from vmjax.data import pipeline, segments, yt8m

C = 8  # classes
T = 20  # frames per video


def _frames(seed: int, num_frames: int = T) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (num_frames, yt8m.RGB_DIM), dtype=np.uint8)
    audio = rng.integers(0, 256, (num_frames, yt8m.AUDIO_DIM), dtype=np.uint8)
    return rgb, audio


def _record(rows, *, video_id="vid1", seed=0, num_frames=T, text_tokens=None, **kw):
    """Decoded record; rows are (start, end, class, score)."""
    rgb, audio = _frames(seed, num_frames)
    fields = None
    if rows is not None:
        starts, ends, classes, scores = zip(*rows, strict=True) if rows else ([], [], [], [])
        fields = {"start_times": starts, "end_times": ends, "labels": classes, "scores": scores}
    data = yt8m.encode_frame_example(
        video_id, [1, 3], rgb, audio, segments=fields, text_tokens=text_tokens, **kw
    )
    return yt8m.decode_frame_example(data), rgb, audio


# Hand-made ratings: start 10 listed first and its rows interleaved with others, class 3 rated
# in two segments with different scores, one row repeated verbatim.
ROWS = [
    (10, 15, 3, 0.0),
    (0, 5, 3, 1.0),
    (10, 15, 1, 1.0),
    (0, 5, 5, 0.0),
    (10, 15, 7, 1.0),
    (10, 15, 1, 1.0),
    (15, 20, 6, 0.0),
]


def test_frames_are_the_hand_picked_frames_of_each_segment():
    example, rgb, audio = _record(ROWS)
    out = segments.segment_examples(example, num_classes=C)
    assert [s["segment_start"] for s in out] == [0, 10, 15]
    for s, start in zip(out, (0, 10, 15), strict=True):
        assert s["id"] == "vid1" and s["num_frames"] == 5
        assert s["rgb"].dtype == np.uint8 and s["rgb"].shape == (5, 1024)
        assert s["audio"].dtype == np.uint8 and s["audio"].shape == (5, 128)
        np.testing.assert_array_equal(s["rgb"], rgb[start : start + 5])
        np.testing.assert_array_equal(s["audio"], audio[start : start + 5])
        s["rgb"][0, 0] ^= 1  # copies, writable, not views of the read-only record bytes
    np.testing.assert_array_equal(out[0]["rgb"][1:], rgb[1:5])


def test_labels_and_weights_by_hand():
    example, _, _ = _record(ROWS)
    s0, s10, s15 = segments.segment_examples(example, num_classes=C)
    # start 0: class 3 positive, class 5 rated negative.
    np.testing.assert_array_equal(s0["labels"], [3])
    np.testing.assert_array_equal(s0["label_weights"], [0, 0, 0, 1, 0, 1, 0, 0])
    # start 10 (rows 0, 2, 4, 5 merged): class 3 negative here, 1 and 7 positive; the
    # repeated row of class 1 counts once.
    np.testing.assert_array_equal(s10["labels"], [1, 7])
    np.testing.assert_array_equal(s10["label_weights"], [0, 1, 0, 1, 0, 0, 0, 1])
    # start 15, the video's last 5 frames: only a negative.
    assert s15["labels"].dtype == np.int32 and s15["labels"].size == 0
    np.testing.assert_array_equal(s15["label_weights"], [0, 0, 0, 0, 0, 0, 1, 0])
    assert s15["label_weights"].dtype == np.float32


def test_video_without_segments_gives_nothing():
    assert segments.segment_examples(_record(None)[0], num_classes=C) == []
    assert segments.segment_examples(_record([])[0], num_classes=C) == []
    # decode_frame_example(segments=False) leaves the fields out too.
    rgb, audio = _frames(0)
    data = yt8m.encode_frame_example("v", [], rgb, audio, segments=_fields(ROWS))
    example = yt8m.decode_frame_example(data, segments=False)
    assert segments.segment_examples(example, num_classes=C) == []


def _fields(rows):
    starts, ends, classes, scores = zip(*rows, strict=True)
    return {"start_times": starts, "end_times": ends, "labels": classes, "scores": scores}


def test_text_tokens_and_float_frames_carry_over():
    rgb, audio = _frames(3)
    data = yt8m.encode_frame_example(
        "f",
        [],
        yt8m.dequantize(rgb),
        yt8m.dequantize(audio),
        segments=_fields([(5, 10, 2, 1.0)]),
        text_tokens=[4, 9],
        float_features=True,
    )
    (s,) = segments.segment_examples(yt8m.decode_frame_example(data), num_classes=C)
    assert s["rgb"].dtype == np.float32
    np.testing.assert_array_equal(s["rgb"], yt8m.dequantize(rgb[5:10]))
    np.testing.assert_array_equal(s["text_tokens"], [4, 9])


@pytest.mark.parametrize(
    "rows, match",
    [
        ([(16, 21, 2, 1.0)], r"'vid1', segment starting at frame 16: frames \[16, 21\) run past"),
        ([(20, 25, 2, 1.0)], r"'vid1', segment starting at frame 20"),
        ([(0, 6, 2, 1.0)], r"segment row 0 \(start 0\): segment_end_times 6 is not start \+ 5"),
        ([(0, 5, 2, 1.0), (-5, 0, 2, 1.0)], r"segment row 1 \(start -5\).*is negative"),
        ([(0, 5, C, 1.0)], rf"segment_labels {C} not in \[0, {C}\)"),
        ([(0, 5, 2, 0.5)], r"segment_scores 0.5 is not 0 or 1"),
        ([(5, 10, 2, 1.0), (5, 10, 2, 0.0)], r"frame 5: class 2 is rated both 0 and 1"),
    ],
)
def test_bad_segments_name_the_video_and_segment(rows, match):
    example, _, _ = _record(rows)
    with pytest.raises(ValueError, match=match):
        segments.segment_examples(example, num_classes=C)


def test_pad_past_end_zero_fills_and_masks():
    example, rgb, _ = _record([(17, 22, 2, 1.0), (0, 5, 1, 0.0)])
    s0, s17 = segments.segment_examples(example, num_classes=C, pad_past_end=True)
    assert s0["num_frames"] == 5 and s17["num_frames"] == 3
    np.testing.assert_array_equal(s17["rgb"][:3], rgb[17:])
    assert not s17["rgb"][3:].any() and not s17["audio"][3:].any()
    batch = segments.collate_segments([s0, s17], 2, C)
    np.testing.assert_array_equal(batch["mask"], [[True] * 5, [True] * 3 + [False] * 2])
    # A segment with no frame inside the video is still an error.
    example, _, _ = _record([(20, 25, 2, 1.0)])
    with pytest.raises(ValueError, match="frame 20"):
        segments.segment_examples(example, num_classes=C, pad_past_end=True)


def test_incomplete_segment_fields_are_an_error():
    example, _, _ = _record(ROWS)
    del example["segment_scores"]
    with pytest.raises(ValueError, match=r"'vid1'.*not \['segment_scores'\]"):
        segments.segment_examples(example, num_classes=C)


def test_collate_shapes_padding_and_values():
    a, _, _ = _record(ROWS, text_tokens=[5, 6, 7])
    b, _, _ = _record([(5, 10, 4, 1.0)], video_id="vid2", seed=1)
    examples = segments.segment_examples(a, num_classes=C)
    examples += segments.segment_examples(b, num_classes=C)
    batch = segments.collate_segments(examples, 6, C, max_text_tokens=2)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "rgb": ((6, 5, 1024), np.uint8),
        "audio": ((6, 5, 128), np.uint8),
        "mask": ((6, 5), np.bool_),
        "num_frames": ((6,), np.int32),
        "labels": ((6, C), np.uint8),
        "label_weights": ((6, C), np.float32),
        "weights": ((6,), np.float32),
        "text_tokens": ((6, 2), np.int32),
        "text_mask": ((6, 2), np.bool_),
        "ids": ((6,), np.dtype("<U4")),
        "segment_starts": ((6,), np.int32),
    }
    assert batch["ids"].tolist() == [ex["id"] for ex in examples] + ["", ""]
    assert batch["segment_starts"].tolist() == [ex["segment_start"] for ex in examples] + [0, 0]
    np.testing.assert_array_equal(batch["weights"], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(batch["mask"], np.repeat(np.arange(6)[:, None] < 4, 5, axis=1))
    np.testing.assert_array_equal(batch["num_frames"], [5, 5, 5, 5, 0, 0])
    for row, ex in enumerate(examples):
        np.testing.assert_array_equal(batch["rgb"][row], ex["rgb"])
        np.testing.assert_array_equal(batch["audio"][row], ex["audio"])
        np.testing.assert_array_equal(batch["label_weights"][row], ex["label_weights"])
    np.testing.assert_array_equal(batch["labels"][:4].nonzero(), ([0, 1, 1, 3], [3, 1, 7, 4]))
    assert not batch["rgb"][4:].any() and not batch["label_weights"][4:].any()
    assert not batch["labels"][4:].any()
    np.testing.assert_array_equal(batch["text_tokens"][:, 0], [5, 5, 5, 0, 0, 0])
    np.testing.assert_array_equal(batch["text_mask"].sum(1), [2, 2, 2, 0, 0, 0])


def test_collate_matches_the_video_collate_where_keys_overlap():
    """A full segment batch equals make_collate's batch of the same 5-frame clips."""
    example, _, _ = _record(ROWS, text_tokens=[3, 1, 4])
    examples = segments.segment_examples(example, num_classes=C)
    batch = segments.collate_segments(examples, 4, C, max_text_tokens=2)
    spec = pipeline.BatchSpec("frame", C, 5, 2, 8192)
    videos = [
        {k: ex[k] for k in ("id", "rgb", "audio", "labels")}
        | {"text_tokens": ex["text_tokens"][:2]}
        for ex in examples
    ]
    reference = pipeline.make_collate(spec, 4)(videos)
    assert set(reference) <= set(batch)
    for key, value in reference.items():
        assert batch[key].dtype == value.dtype, key
        np.testing.assert_array_equal(batch[key], value, err_msg=key)


def test_collate_float_frames_dequantizes_uint8_rows():
    rgb, audio = _frames(2)
    data = yt8m.encode_frame_example(
        "f",
        [],
        yt8m.dequantize(rgb),
        yt8m.dequantize(audio),
        segments=_fields([(0, 5, 2, 1.0)]),
        float_features=True,
    )
    floats = segments.segment_examples(yt8m.decode_frame_example(data), num_classes=C)
    ints = segments.segment_examples(_record([(0, 5, 2, 1.0)], seed=2)[0], num_classes=C)
    batch = segments.collate_segments(floats + ints, 2, C)
    assert batch["rgb"].dtype == np.float32
    np.testing.assert_array_equal(batch["rgb"][0], batch["rgb"][1])


def test_collate_errors():
    example, _, _ = _record(ROWS)
    examples = segments.segment_examples(example, num_classes=C)
    with pytest.raises(ValueError, match="got 3 examples for a batch of 2"):
        segments.collate_segments(examples, 2, C)
    with pytest.raises(ValueError, match="got 0 examples"):
        segments.collate_segments([], 2, C)
    with pytest.raises(ValueError, match=r"'vid1' segment 0 has 5 frames and 8 classes"):
        segments.collate_segments(examples, 4, C + 1)
