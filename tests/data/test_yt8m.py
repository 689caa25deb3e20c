"""YouTube-8M records against a hand-written protobuf wire codec, TF-written files and the spec."""

import functools
import json
import pathlib
import struct

import numpy as np
import pytest
from tensorflow_datasets.proto import tf_example_pb2

from tests.data.test_tfrecord import frame_record
from vmjax.data import yt8m
from vmjax.data.tfrecord import RecordError, read_records, write_records

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

# --- A minimal protobuf wire-format codec for the tf.train.Example schema. ---


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # Negative int64s are 10-byte two's complement varints.
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field: tag (wire type 2), length, payload."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def bytes_feature(values) -> bytes:  # Feature{1: BytesList{1: repeated bytes}}
    return _ld(1, b"".join(_ld(1, v) for v in values))


def float_feature(values) -> bytes:  # Feature{2: FloatList{1: packed float}}
    return _ld(2, _ld(1, struct.pack(f"<{len(values)}f", *values)))


def int64_feature(values) -> bytes:  # Feature{3: Int64List{1: packed int64}}
    return _ld(3, _ld(1, b"".join(_varint(v) for v in values)))


def _map(entries: dict) -> bytes:
    """A map<string, message> field 1: each entry is a message {1: key, 2: value}."""
    return b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, v)) for k, v in entries.items())


def example(features: dict) -> bytes:  # Example{1: Features{1: map<string, Feature>}}
    return _ld(1, _map(features))


def sequence_example(context: dict, feature_lists: dict) -> bytes:
    # SequenceExample{1: Features, 2: FeatureLists}; FeatureLists{1: map<string, FeatureList>};
    # FeatureList{1: repeated Feature}.
    lists = {k: b"".join(_ld(1, f) for f in frames) for k, frames in feature_lists.items()}
    return _ld(1, _map(context)) + _ld(2, _map(lists))


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        result |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return result, pos


def _fields(buf: bytes) -> list[tuple[int, bytes | int]]:
    """(field number, value) pairs of a message with varint / length-delimited fields."""
    pos, out = 0, []
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        if key & 7 == 0:
            value, pos = _read_varint(buf, pos)
        else:
            assert key & 7 == 2, f"unexpected wire type {key & 7}"
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        out.append((key >> 3, value))
    return out


def parse_feature(buf: bytes) -> tuple[str | None, list]:
    if not buf:
        return None, []
    [(kind, inner)] = _fields(buf)
    values = [v for _, v in _fields(inner)]
    if kind == 1:
        return "bytes", values
    if kind == 2:
        packed = b"".join(values)
        return "float", list(struct.unpack(f"<{len(packed) // 4}f", packed))
    ints, pos, packed = [], 0, b"".join(values)
    while pos < len(packed):
        v, pos = _read_varint(packed, pos)
        ints.append(v - (1 << 64) if v >> 63 else v)
    return "int64", ints


def _parse_map(buf: bytes) -> dict[str, bytes]:
    out = {}
    for _, entry in _fields(buf):
        parts = dict(_fields(entry))
        out[parts[1].decode()] = parts.get(2, b"")
    return out


def parse_example(buf: bytes) -> dict:
    return {k: parse_feature(v) for k, v in _parse_map(dict(_fields(buf))[1]).items()}


def parse_sequence_example(buf: bytes) -> tuple[dict, dict]:
    top = dict(_fields(buf))
    context = {k: parse_feature(v) for k, v in _parse_map(top.get(1, b"")).items()}
    lists = {k: [parse_feature(f) for _, f in _fields(v)] for k, v in _parse_map(top[2]).items()}
    return context, lists


# --- Quantization. ---


def _float32(x: float) -> float:
    """Rounds a float64 to the nearest float32 (once)."""
    return float(np.float32(x))


def test_dequantize_exact_values():
    # float32(4/255): 4/255 = 2**-6 * (1 + 2**-8 + 2**-16 + 2**-24 + ...); the tail past 23 bits
    # exceeds half an ulp, so it rounds up to 2**-6 * (1 + 2**-8 + 2**-16 + 2**-23)
    # = 8421505 * 2**-29. The bias 4/512 - 2 = -255/128 is exact.
    assert np.float32(4 / 255) == 8421505 * 2.0**-29
    assert np.float32(4 / 512 - 2) == -255 / 128
    # q=128: 128 * scale = 8421505 * 2**-22 is exact; adding -255/128 = -8355840 * 2**-22
    # leaves 65665 * 2**-22, exact in float32.
    # q=255: 255 * scale = 4 + 127 * 2**-29 rounds to 4.0 (float32 spacing at 4 is
    # 2**-21 = 256 * 2**-29); 4.0 - 1.9921875 = 2.0078125.
    got = yt8m.dequantize(np.array([0, 128, 255], np.uint8))
    assert got.dtype == np.float32
    assert got.tolist() == [-1.9921875, 65665 * 2.0**-22, 2.0078125]


def test_dequantize_all_levels_match_two_roundings():
    # Products of an 8-bit int and a 24-bit float are exact in float64, as are the sums, so
    # rounding each to float32 once reproduces float32 multiply-then-add.
    scale, bias = _float32(4 / 255), _float32(4 / 512 - 2)
    expected = [_float32(_float32(q * scale) + bias) for q in range(256)]
    got = yt8m.dequantize(np.arange(256, dtype=np.uint8))
    assert got.tolist() == expected


def test_dequantize_jax_is_bit_exact():
    jnp = pytest.importorskip("jax.numpy")
    q = np.arange(256, dtype=np.uint8).reshape(16, 16)
    got = np.asarray(yt8m.dequantize(jnp.asarray(q), xp=jnp))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), yt8m.dequantize(q).view(np.uint32))


def test_quantize_edges():
    x = np.array([-2.0, 2.0, -7.0, 9.0, -np.inf, np.inf, 0.0, 1.0], np.float32)
    # 0 -> 2 * 63.75 = 127.5, rounded half to even -> 128; 1 -> 3 * 63.75 = 191.25 -> 191.
    np.testing.assert_array_equal(yt8m.quantize(x), [0, 255, 0, 255, 0, 255, 128, 191])
    assert yt8m.quantize(x).dtype == np.uint8
    with pytest.raises(ValueError, match="NaN"):
        yt8m.quantize(np.array([0.0, np.nan]))


def test_quantize_round_trip_error_bound():
    x = np.random.default_rng(0).uniform(-2, 2, 100_000).astype(np.float32)
    error = np.abs(yt8m.dequantize(yt8m.quantize(x)) - x)
    # Rounding costs half a step (2/255); dequantize adds a half-bin offset of 4/512.
    assert error.max() <= 2 / 255 + 4 / 512 + 1e-6
    q = np.arange(256, dtype=np.uint8)
    # Each level maps back to itself despite the offset (it is under half a step).
    np.testing.assert_array_equal(yt8m.quantize(yt8m.dequantize(q)), q)


# --- Decoding bytes built by hand. ---


def _write(tmp_path, name: str, payloads: list[bytes]) -> str:
    path = tmp_path / name
    path.write_bytes(b"".join(frame_record(p) for p in payloads))
    return str(path)


def _decode_all(path: str, decode, **kwargs) -> list[dict]:
    return [decode(p, path=path, index=i, offset=o, **kwargs) for i, o, p in read_records(path)]


def _video_fields(rng, vid: str, key: str = "id", labels=(3, 0, 3861)) -> tuple[dict, dict]:
    mean_rgb = rng.integers(-128, 129, 1024) / 64
    mean_audio = rng.standard_normal(128).astype(np.float32)
    fields = {
        key: bytes_feature([vid.encode()]),
        "labels": int64_feature(labels),
        "mean_rgb": float_feature(mean_rgb.tolist()),
        "mean_audio": float_feature(mean_audio.tolist()),
    }
    return fields, {
        "id": vid,
        "labels": list(labels),
        "mean_rgb": mean_rgb,
        "mean_audio": mean_audio,
    }


def test_decode_hand_built_video_records(tmp_path):
    rng = np.random.default_rng(0)
    fields0, want0 = _video_fields(rng, "aB3x")
    fields0["text_tokens"] = int64_feature([7, -1, 2**40])
    fields1, want1 = _video_fields(rng, "old", key="video_id", labels=())  # 2017 key, no labels
    path = _write(tmp_path, "video.tfrecord", [example(fields0), example(fields1)])
    got = _decode_all(path, yt8m.decode_video_example, num_classes=3862)
    for record, want in zip(got, [want0, want1], strict=True):
        assert record["id"] == want["id"]
        assert record["labels"].dtype == np.int32 and record["labels"].tolist() == want["labels"]
        assert record["mean_rgb"].dtype == np.float32
        np.testing.assert_array_equal(record["mean_rgb"], want["mean_rgb"])
        np.testing.assert_array_equal(record["mean_audio"], want["mean_audio"])
    assert got[0]["text_tokens"].tolist() == [7, -1, 2**40]
    assert got[1]["text_tokens"].dtype == np.int64 and got[1]["text_tokens"].size == 0


def _frames(rng, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        rng.integers(0, 256, (num_frames, 1024), dtype=np.uint8),
        rng.integers(0, 256, (num_frames, 128), dtype=np.uint8),
    )


def _frame_lists(rgb, audio, as_floats=False) -> dict:
    if as_floats:
        return {
            "rgb": [float_feature(f.tolist()) for f in rgb],
            "audio": [float_feature(f.tolist()) for f in audio],
        }
    return {
        "rgb": [bytes_feature([f.tobytes()]) for f in rgb],
        "audio": [bytes_feature([f.tobytes()]) for f in audio],
    }


@pytest.mark.parametrize("num_frames", [0, 1, 5, 300, 301, 420])
def test_decode_hand_built_frame_record(tmp_path, num_frames):
    rng = np.random.default_rng(num_frames)
    rgb, audio = _frames(rng, num_frames)
    context = {"id": bytes_feature([b"vid"]), "labels": int64_feature([1, 2])}
    path = _write(tmp_path, "f.tfrecord", [sequence_example(context, _frame_lists(rgb, audio))])
    [record] = _decode_all(path, yt8m.decode_frame_example)
    assert record["id"] == "vid" and record["labels"].tolist() == [1, 2]
    assert record["rgb"].dtype == np.uint8 and record["rgb"].shape == (num_frames, 1024)
    np.testing.assert_array_equal(record["rgb"], rgb)  # All frames: no truncation here.
    np.testing.assert_array_equal(record["audio"], audio)
    assert "segment_labels" not in record


def test_decode_hand_built_segments_floats_and_2017_key():
    rng = np.random.default_rng(1)
    rgb = rng.standard_normal((3, 1024)).astype(np.float32)
    audio = rng.standard_normal((3, 128)).astype(np.float32)
    context = {
        "video_id": bytes_feature([b"seg"]),
        "labels": int64_feature([5]),
        "segment_start_times": int64_feature([0, 35]),
        "segment_end_times": int64_feature([5, 40]),
        "segment_labels": int64_feature([5, 5]),
        "segment_scores": float_feature([1.0, 0.0]),
        "text_tokens": int64_feature([11, 12]),
    }
    data = sequence_example(context, _frame_lists(rgb, audio, as_floats=True))
    record = yt8m.decode_frame_example(data, num_classes=3862)
    assert record["id"] == "seg" and record["text_tokens"].tolist() == [11, 12]
    assert record["rgb"].dtype == np.float32
    np.testing.assert_array_equal(record["rgb"], rgb)
    np.testing.assert_array_equal(record["audio"], audio)
    assert record["segment_start_times"].tolist() == [0, 35]
    assert record["segment_end_times"].tolist() == [5, 40]
    assert record["segment_labels"].dtype == np.int64
    assert record["segment_labels"].tolist() == [5, 5]
    assert record["segment_scores"].dtype == np.float32
    assert record["segment_scores"].tolist() == [1.0, 0.0]


# --- Our encoder, read back by the hand-written parser. ---


def test_encode_video_example_wire_format():
    rng = np.random.default_rng(2)
    mean_rgb = rng.standard_normal(1024).astype(np.float32)
    mean_audio = rng.standard_normal(128).astype(np.float32)
    data = yt8m.encode_video_example("id1", [4, 2], mean_rgb, mean_audio, text_tokens=[9, -3])
    parsed = parse_example(data)
    assert set(parsed) == {"id", "labels", "mean_rgb", "mean_audio", "text_tokens"}
    assert parsed["id"] == ("bytes", [b"id1"])
    assert parsed["labels"] == ("int64", [4, 2])
    assert parsed["text_tokens"] == ("int64", [9, -3])
    assert parsed["mean_rgb"] == ("float", mean_rgb.tolist())
    assert parsed["mean_audio"] == ("float", mean_audio.tolist())
    # And our decoder inverts it.
    decoded = yt8m.decode_video_example(data)
    np.testing.assert_array_equal(decoded["mean_rgb"], mean_rgb)


def test_encode_frame_example_wire_format():
    rng = np.random.default_rng(3)
    rgb, audio = _frames(rng, 4)
    segments = {"start_times": [0, 5], "end_times": [5, 10], "labels": [7, 8], "scores": [0.0, 1.0]}
    data = yt8m.encode_frame_example("v", [7], rgb, audio, segments=segments, text_tokens=[1])
    context, lists = parse_sequence_example(data)
    assert context == {
        "id": ("bytes", [b"v"]),
        "labels": ("int64", [7]),
        "segment_start_times": ("int64", [0, 5]),
        "segment_end_times": ("int64", [5, 10]),
        "segment_labels": ("int64", [7, 8]),
        "segment_scores": ("float", [0.0, 1.0]),
        "text_tokens": ("int64", [1]),
    }
    assert lists == {
        "rgb": [("bytes", [f.tobytes()]) for f in rgb],
        "audio": [("bytes", [f.tobytes()]) for f in audio],
    }
    # Equal inputs give equal bytes (map keys sorted).
    assert data == yt8m.encode_frame_example(
        "v", [7], rgb, audio, segments=segments, text_tokens=[1]
    )


def test_encode_float_frames_and_zero_frames():
    rgb = np.full((2, 1024), 0.5, np.float32)
    audio = np.full((2, 128), -0.25, np.float32)
    data = yt8m.encode_frame_example("v", [], rgb, audio, float_features=True)
    _, lists = parse_sequence_example(data)
    assert lists["rgb"] == [("float", [0.5] * 1024)] * 2
    record = yt8m.decode_frame_example(data)
    np.testing.assert_array_equal(record["audio"], audio)
    # 0 frames still writes both (empty) feature lists.
    empty = yt8m.encode_frame_example(
        "e", [1], np.zeros((0, 1024), np.uint8), np.zeros((0, 128), np.uint8)
    )
    assert parse_sequence_example(empty)[1] == {"rgb": [], "audio": []}
    record = yt8m.decode_frame_example(empty)
    assert record["rgb"].shape == (0, 1024) and record["audio"].shape == (0, 128)


def test_encode_rejects_bad_inputs():
    rgb, audio = np.zeros((2, 1024), np.uint8), np.zeros((2, 128), np.uint8)
    with pytest.raises(ValueError, match="mean_rgb"):
        yt8m.encode_video_example("v", [], np.zeros(1000), np.zeros(128))
    with pytest.raises(ValueError, match="uint8"):
        yt8m.encode_frame_example("v", [], rgb.astype(np.float32), audio)
    with pytest.raises(ValueError, match="frames"):
        yt8m.encode_frame_example("v", [], rgb, audio[:1])
    with pytest.raises(ValueError, match="same length"):
        segments = {"start_times": [0], "end_times": [5], "labels": [1, 2], "scores": [1.0]}
        yt8m.encode_frame_example("v", [], rgb, audio, segments=segments)


# --- Malformed records. ---


def _good_video() -> dict:
    fields, _ = _video_fields(np.random.default_rng(4), "v")
    return fields


def _good_context() -> dict:
    return {"id": bytes_feature([b"v"]), "labels": int64_feature([1])}


def _good_segments() -> dict:
    return {
        "segment_start_times": int64_feature([0, 5]),
        "segment_end_times": int64_feature([5, 10]),
        "segment_labels": int64_feature([1, 1]),
        "segment_scores": float_feature([1.0, 0.0]),
    }


def _video_with(**changes) -> bytes:
    fields = _good_video()
    for key, value in changes.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    return example(fields)


def _frames_with(context=None, rgb=None, audio=None) -> bytes:
    rgb_frames, audio_frames = _frames(np.random.default_rng(5), 4)
    lists = _frame_lists(rgb_frames, audio_frames)
    lists["rgb"] = lists["rgb"] if rgb is None else rgb
    lists["audio"] = lists["audio"] if audio is None else audio
    return sequence_example(_good_context() if context is None else context, lists)


_BYTES_FRAME = bytes_feature([bytes(1024)])
_VIDEO_ERRORS = {
    "garbage": (b"\x0a\xff\xff\xff", "<proto>", "parse"),
    "missing_id": (_video_with(id=None), "id", "missing"),
    "id_wrong_type": (_video_with(id=int64_feature([1])), "id", "bytes_list"),
    "two_ids": (_video_with(id=bytes_feature([b"a", b"b"])), "id", "expected 1"),
    "labels_as_floats": (_video_with(labels=float_feature([1.0])), "labels", "int64_list"),
    "negative_label": (_video_with(labels=int64_feature([2, -1])), "labels", "label -1"),
    "label_too_big": (_video_with(labels=int64_feature([3862])), "labels", "[0, 3862)"),
    "short_mean_rgb": (_video_with(mean_rgb=float_feature([0.0] * 1023)), "mean_rgb", "1024"),
    "long_mean_audio": (_video_with(mean_audio=float_feature([0.0] * 129)), "mean_audio", "128"),
    "nan_mean_rgb": (
        _video_with(mean_rgb=float_feature([np.nan] + [0.0] * 1023)),
        "mean_rgb",
        "non-finite",
    ),
    "inf_mean_audio": (
        _video_with(mean_audio=float_feature([np.inf] * 128)),
        "mean_audio",
        "non-finite",
    ),
}


@pytest.mark.parametrize("name", list(_VIDEO_ERRORS))
def test_video_errors_name_the_field(name):
    data, field, text = _VIDEO_ERRORS[name]
    with pytest.raises(RecordError) as info:
        yt8m.decode_video_example(
            data, path="train0.tfrecord", index=17, offset=123456, num_classes=3862
        )
    assert info.value.field == field
    message = str(info.value)
    assert message.startswith("train0.tfrecord: record 17 (byte offset 123456), field ")
    assert text in message


def _short_rgb_frame() -> list[bytes]:
    frames = [_BYTES_FRAME] * 4
    frames[3] = bytes_feature([bytes(1000)])
    return frames


_FRAME_ERRORS = {
    "garbage": (b"\x12\x05\x0a", "<proto>", "parse"),
    "missing_id": (_frames_with(context={"labels": int64_feature([1])}), "id", "missing"),
    "label_too_big": (
        _frames_with(context={**_good_context(), "labels": int64_feature([5000])}),
        "labels",
        "outside [0, 3862)",
    ),
    "short_rgb_frame": (
        _frames_with(rgb=_short_rgb_frame()),
        "rgb",
        "frame 3 has 1000 bytes, expected 1024",
    ),
    "long_audio_frame": (
        _frames_with(audio=[bytes_feature([bytes(129)])] * 4),
        "audio",
        "frame 0 has 129 bytes, expected 128",
    ),
    "two_byte_strings": (
        _frames_with(rgb=[bytes_feature([bytes(512)] * 2)] * 4),
        "rgb",
        "2 byte strings",
    ),
    "float_frame_wrong_size": (
        _frames_with(audio=[float_feature([0.0] * 127)] * 4),
        "audio",
        "127 floats, expected 128",
    ),
    "mixed_frame_kinds": (
        _frames_with(rgb=[_BYTES_FRAME] * 3 + [float_feature([0.0] * 1024)]),
        "rgb",
        "frame 3",
    ),
    "int_frames": (_frames_with(rgb=[int64_feature([0] * 1024)] * 4), "rgb", "int64_list"),
    "nonfinite_float_frame": (
        _frames_with(
            rgb=[float_feature([0.0] * 1024)] * 2
            + [float_feature([0.0] * 9 + [np.inf] + [0.0] * 1014)] * 2
        ),
        "rgb",
        "(2, 9)",
    ),
    "frame_counts_differ": (
        _frames_with(audio=[bytes_feature([bytes(128)])] * 3),
        "audio",
        "3 frames, rgb has 4",
    ),
    "missing_rgb": (sequence_example(_good_context(), {"audio": []}), "rgb", "missing"),
    "segment_lengths": (
        _frames_with(
            context={
                **_good_context(),
                **_good_segments(),
                "segment_labels": int64_feature([1, 1, 1]),
            }
        ),
        "segment_labels",
        "3 values",
    ),
    "segment_missing_field": (
        _frames_with(context={**_good_context(), "segment_start_times": int64_feature([0])}),
        "segment_end_times",
        "missing",
    ),
    "segment_label_range": (
        _frames_with(
            context={
                **_good_context(),
                **_good_segments(),
                "segment_labels": int64_feature([1, 9999]),
            }
        ),
        "segment_labels",
        "9999",
    ),
    "segment_score_nan": (
        _frames_with(
            context={
                **_good_context(),
                **_good_segments(),
                "segment_scores": float_feature([np.nan, 1.0]),
            }
        ),
        "segment_scores",
        "non-finite",
    ),
}


@pytest.mark.parametrize("name", list(_FRAME_ERRORS))
def test_frame_errors_name_the_field(name):
    data, field, text = _FRAME_ERRORS[name]
    with pytest.raises(RecordError) as info:
        yt8m.decode_frame_example(
            data, path="train0.tfrecord", index=17, offset=123456, num_classes=3862
        )
    assert info.value.field == field
    message = str(info.value)
    assert message.startswith("train0.tfrecord: record 17 (byte offset 123456), field ")
    assert text in message


def test_good_builders_decode():
    # The error cases above differ from these valid records only in the broken field.
    yt8m.decode_video_example(_video_with(), num_classes=3862)
    yt8m.decode_frame_example(
        _frames_with(context={**_good_context(), **_good_segments()}), num_classes=3862
    )


# --- Files written by TensorFlow itself (see fixtures/make_tf_fixtures.py). ---


def _expected() -> dict:
    return json.loads((FIXTURES / "expected.json").read_text())["files"]


def _hex_frames(frames: list[str], dim: int) -> np.ndarray:
    return np.frombuffer(bytes.fromhex("".join(frames)), np.uint8).reshape(-1, dim)


def test_tensorflow_written_video_file():
    path = str(FIXTURES / "video.tfrecord")
    got = _decode_all(path, yt8m.decode_video_example, num_classes=3862)
    want = _expected()["video.tfrecord"]
    assert len(got) == len(want) == 3
    for record, expected in zip(got, want, strict=True):
        assert record["id"] == expected["id"]
        assert record["labels"].tolist() == expected["labels"]
        np.testing.assert_array_equal(record["mean_rgb"], np.float32(expected["mean_rgb"]))
        np.testing.assert_array_equal(record["mean_audio"], np.float32(expected["mean_audio"]))


@pytest.mark.parametrize("name", ["frame.tfrecord", "frame_2017.tfrecord"])
def test_tensorflow_written_frame_files(name):
    path = str(FIXTURES / name)
    got = _decode_all(path, yt8m.decode_frame_example, num_classes=4716)
    want = _expected()[name]
    assert len(got) == len(want)
    for record, expected in zip(got, want, strict=True):
        assert record["id"] == expected["id"]
        assert record["labels"].tolist() == expected["labels"]
        rgb, audio = _hex_frames(expected["rgb"], 1024), _hex_frames(expected["audio"], 128)
        # Float-list frames hold the same integer values as floats.
        dtype = np.float32 if expected["float_frames"] else np.uint8
        assert record["rgb"].dtype == dtype and record["audio"].dtype == dtype
        np.testing.assert_array_equal(record["rgb"], rgb.astype(dtype))
        np.testing.assert_array_equal(record["audio"], audio.astype(dtype))
        segment_keys = [k for k in record if k.startswith("segment_")]
        assert segment_keys == [k for k in expected if k.startswith("segment_")]
        for key in segment_keys:
            assert record[key].tolist() == expected[key]


def test_tensorflow_framing_matches_our_writer(tmp_path):
    # Rewriting TF's payloads with our writer must give the identical file.
    for name in ["video.tfrecord", "frame.tfrecord", "frame_2017.tfrecord"]:
        source = FIXTURES / name
        path = tmp_path / name
        write_records(str(path), [p for _, _, p in read_records(str(source))])
        assert path.read_bytes() == source.read_bytes()


def test_our_encoder_matches_tensorflow_messages():
    # Same values through our encoder give the same protobuf message TF wrote (map order aside).
    for _, _, payload in read_records(str(FIXTURES / "video.tfrecord")):
        record = yt8m.decode_video_example(payload)
        ours = yt8m.encode_video_example(
            record["id"], record["labels"], record["mean_rgb"], record["mean_audio"]
        )
        assert tf_example_pb2.Example.FromString(ours) == tf_example_pb2.Example.FromString(payload)
    for _, _, payload in read_records(str(FIXTURES / "frame.tfrecord")):
        record = yt8m.decode_frame_example(payload)
        segments = None
        if "segment_labels" in record:
            segments = {
                k: record["segment_" + k] for k in ("start_times", "end_times", "labels", "scores")
            }
        ours = yt8m.encode_frame_example(
            record["id"],
            record["labels"],
            record["rgb"],
            record["audio"],
            segments=segments,
            float_features=record["rgb"].dtype == np.float32,
        )
        parse = tf_example_pb2.SequenceExample.FromString
        assert parse(ours) == parse(payload)


def test_missing_labels_decode_as_unlabelled():
    """Test-split records may omit `labels`; like the starter's VarLenFeature, that is empty."""
    video = yt8m.decode_video_example(_video_with(labels=None))
    assert video["labels"].shape == (0,) and video["labels"].dtype == np.int32
    frames = yt8m.decode_frame_example(_frames_with(context={"id": bytes_feature([b"v"])}))
    assert frames["id"] == "v" and frames["labels"].shape == (0,)


def _jit_optimized(fn, *args):
    """fn compiled at XLA:CPU's default LLVM optimization level (the suite compiles at 0 to save
    time, where no FMA is formed), applied to args."""
    import jax

    options = {"xla_backend_optimization_level": 2}
    return jax.jit(fn).lower(*args).compile(compiler_options=options)(*args)


def test_dequantize_is_exact_under_jit():
    """XLA fuses q * scale + bias into an FMA; the table keeps the two-rounding values."""
    import jax.numpy as jnp

    q = np.arange(256, dtype=np.uint8).reshape(16, 16)
    want = q.astype(np.float32) * np.float32(4 / 255) + np.float32(4 / 512 - 2)
    got = _jit_optimized(lambda x: yt8m.dequantize(x, xp=jnp), q)
    np.testing.assert_array_equal(np.asarray(got), want)
    # The plain expression, compiled the same way, is not exact (the reason for the table): if
    # XLA stops forming the FMA, this fails and the comment in yt8m.py is out of date.
    naive = _jit_optimized(
        lambda x: x.astype(jnp.float32) * np.float32(4 / 255) + np.float32(4 / 512 - 2), q
    )
    assert (np.asarray(naive) != want).sum() > 100


def _protobuf_frames(data):
    """The per-frame protobuf path, bypassing the wire-format fast path."""
    lists = yt8m.tf_example_pb2.SequenceExample.FromString(data).feature_lists.feature_list
    err = functools.partial(RecordError, "p", 0, 0)
    return {key: yt8m._frames(lists, key, err) for key in ("rgb", "audio")}


@pytest.mark.parametrize("num_frames", [0, 1, 7, 301])
def test_fast_frame_path_equals_the_protobuf_path(num_frames):
    rng = np.random.default_rng(num_frames)
    rgb = rng.integers(0, 256, (num_frames, 1024), dtype=np.uint8)
    audio = rng.integers(0, 256, (num_frames, 128), dtype=np.uint8)
    data = yt8m.encode_frame_example("v", [3, 1], rgb, audio, text_tokens=[4])
    fast = yt8m._fast_frames(data)
    assert fast is not None  # our encoder writes the plain layout
    slow = _protobuf_frames(data)
    for key in ("rgb", "audio"):
        np.testing.assert_array_equal(fast[key], slow[key])
        assert fast[key].dtype == np.uint8 and fast[key].shape == slow[key].shape


def test_tensorflow_written_byte_frames_take_the_fast_path():
    path = str(FIXTURES / "frame.tfrecord")
    expected = _expected()["frame.tfrecord"]
    for (_, _, payload), want in zip(read_records(path), expected, strict=True):
        fast = yt8m._fast_frames(payload)
        if want["float_frames"]:
            assert fast is None  # float frames go through protobuf
            continue
        assert fast is not None
        np.testing.assert_array_equal(fast["rgb"], _hex_frames(want["rgb"], 1024))


def test_unusual_layouts_fall_back_to_protobuf():
    good = yt8m.encode_frame_example(
        "v", [1], np.zeros((2, 1024), np.uint8), np.zeros((2, 128), np.uint8)
    )
    # A second copy of the context field: valid protobuf (fields merge), not the plain layout.
    context = yt8m.tf_example_pb2.SequenceExample.FromString(good).context.SerializeToString()
    doubled = good + b"\x0a" + bytes([len(context)]) + context
    assert yt8m._fast_frames(doubled) is None
    assert yt8m.decode_frame_example(doubled)["rgb"].shape == (2, 1024)
    # A frame of 1023 bytes: the fast path declines, the protobuf path names the frame.
    bad = _frames_with(rgb=[bytes_feature([bytes(1024)])] * 3 + [bytes_feature([bytes(1023)])])
    assert yt8m._fast_frames(bad) is None
    with pytest.raises(RecordError, match="frame 3 has 1023 bytes"):
        yt8m.decode_frame_example(bad)
