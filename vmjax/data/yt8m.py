"""YouTube-8M records: video-level tf.train.Example and frame-level SequenceExample, TF-free.

The format is described in docs/yt8m_format.md; protos come from tensorflow-datasets, which ships
them without TensorFlow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from google.protobuf import message
from tensorflow_datasets.proto import tf_example_pb2
from tensorflow_datasets.proto import tf_feature_generated_pb2 as tf_feature_pb2

from vmjax.data import wire
from vmjax.data.tfrecord import RecordError

RGB_DIM = 1024
AUDIO_DIM = 128
MAX_FRAMES = 300

_DIMS = {"rgb": RGB_DIM, "audio": AUDIO_DIM}
# Dequantization constants, rounded to float32 once so every backend computes the same values.
_SCALE = np.float32(4 / 255)
_BIAS = np.float32(4 / 512 - 2)
# Context keys of the 2019 segment data, keyed by the name `encode_frame_example` accepts.
_SEGMENTS = {
    "start_times": ("segment_start_times", "int64_list"),
    "end_times": ("segment_end_times", "int64_list"),
    "labels": ("segment_labels", "int64_list"),
    "scores": ("segment_scores", "float_list"),
}

_Err = Callable[[str, str], RecordError]


def quantize(x: np.ndarray) -> np.ndarray:
    """Quantizes features to uint8 as the official extractor: rint((clip(x, -2, 2) + 2) * 255/4)."""
    x = np.asarray(x, np.float32)
    if np.isnan(x).any():
        raise ValueError("quantize: input contains NaN")
    # 255/4 = 63.75 is exact in float32, so this equals the extractor's float32 arithmetic;
    # np.rint rounds half to even like Python's round().
    return np.rint((np.clip(x, -2.0, 2.0) + 2.0) * np.float32(255 / 4)).astype(np.uint8)


# Every uint8 level's value, computed once as the spec says: a float32 multiply then a
# float32 add (two roundings). A table lookup keeps it bit-exact on every backend, where
# compilers (XLA under jit, GPU) fuse q * scale + bias into one FMA, which rounds once and
# differs in 157 of the 256 levels (tests/data/test_yt8m.py). Two products exact in float32
# (scale's top 16 and low 8 significant bits) would also be exact and, unlike the lookup (a
# gather), fuse into a plain sum on XLA:CPU; they were tried and not kept: the models' masked
# means are not fused either way, so the train step did not get faster.
DEQUANTIZED = np.arange(256, dtype=np.float32) * _SCALE + _BIAS


def dequantize(q: Any, xp: Any = np) -> Any:
    """Dequantizes uint8 features: float32(q) * float32(4/255) + float32(4/512 - 2).

    Bit-exact: q=0 -> -1.9921875 and q=255 -> 2.0078125. `xp` may be jax.numpy to
    dequantize on the accelerator (inside a jitted step).
    """
    return xp.asarray(DEQUANTIZED)[xp.asarray(q)]


def _set_ints(feature: tf_example_pb2.Feature, values: Any) -> None:
    feature.int64_list.value.extend(np.asarray(values, np.int64).reshape(-1).tolist())


def _set_floats(feature: tf_example_pb2.Feature, values: Any) -> None:
    feature.float_list.value.extend(np.asarray(values, np.float32).reshape(-1).tolist())


def _set_context(features: Any, video_id: str, labels: Any, text_tokens: Any) -> None:
    features["id"].bytes_list.value.append(video_id.encode("utf-8"))
    _set_ints(features["labels"], labels)
    if text_tokens is not None:
        _set_ints(features["text_tokens"], text_tokens)


def _check_shape(name: str, array: np.ndarray, shape: tuple[int | None, ...]) -> None:
    if array.ndim != len(shape) or any(
        s is not None and s != a for s, a in zip(shape, array.shape, strict=True)
    ):
        expected = "[" + ", ".join("T" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(array.shape)}, expected {expected}")


def encode_video_example(
    video_id: str,
    labels: Sequence[int] | np.ndarray,
    mean_rgb: np.ndarray,
    mean_audio: np.ndarray,
    *,
    text_tokens: Sequence[int] | np.ndarray | None = None,
) -> bytes:
    """Serializes a video-level tf.train.Example (id, labels, mean_rgb, mean_audio)."""
    mean_rgb, mean_audio = np.asarray(mean_rgb), np.asarray(mean_audio)
    _check_shape("mean_rgb", mean_rgb, (RGB_DIM,))
    _check_shape("mean_audio", mean_audio, (AUDIO_DIM,))
    example = tf_example_pb2.Example()
    features = example.features.feature
    _set_context(features, video_id, labels, text_tokens)
    _set_floats(features["mean_rgb"], mean_rgb)
    _set_floats(features["mean_audio"], mean_audio)
    # Deterministic sorts map keys, so equal inputs give equal bytes.
    return example.SerializeToString(deterministic=True)


def encode_frame_example(
    video_id: str,
    labels: Sequence[int] | np.ndarray,
    rgb: np.ndarray,
    audio: np.ndarray,
    *,
    segments: dict[str, Any] | None = None,
    text_tokens: Sequence[int] | np.ndarray | None = None,
    float_features: bool = False,
) -> bytes:
    """Serializes a frame-level tf.train.SequenceExample.

    Args:
      rgb, audio: uint8 [T, 1024] and [T, 128], one bytes entry per frame; float arrays
        written as float lists when `float_features` is set.
      segments: 2019 segment data with keys 'start_times', 'end_times', 'labels', 'scores'.
    """
    rgb, audio = np.asarray(rgb), np.asarray(audio)
    _check_shape("rgb", rgb, (None, RGB_DIM))
    _check_shape("audio", audio, (None, AUDIO_DIM))
    if len(rgb) != len(audio):
        raise ValueError(f"rgb has {len(rgb)} frames but audio has {len(audio)}")
    if not float_features and (rgb.dtype != np.uint8 or audio.dtype != np.uint8):
        raise ValueError(
            f"rgb/audio must be uint8 (got {rgb.dtype}/{audio.dtype}); quantize() them "
            "or pass float_features=True"
        )
    example = tf_example_pb2.SequenceExample()
    context = example.context.feature
    _set_context(context, video_id, labels, text_tokens)
    if segments is not None:
        if set(segments) != set(_SEGMENTS):
            raise ValueError(f"segments keys {sorted(segments)}, expected {sorted(_SEGMENTS)}")
        if len({np.size(v) for v in segments.values()}) != 1:
            raise ValueError("segment fields must all have the same length")
        for name, (key, kind) in _SEGMENTS.items():
            setter = _set_ints if kind == "int64_list" else _set_floats
            setter(context[key], segments[name])
    for key, frames in (("rgb", rgb), ("audio", audio)):
        # Indexing the map creates the entry, so a 0-frame video still has empty lists.
        feature_list = example.feature_lists.feature_list[key].feature
        for frame in frames:
            if float_features:
                _set_floats(feature_list.add(), frame)
            else:
                feature_list.add().bytes_list.value.append(frame.tobytes())
    return example.SerializeToString(deterministic=True)


def _values(features: Any, key: str, kind: str, err: _Err, *, required: bool = True) -> Any:
    """The repeated values of features[key] as `kind`; None when absent and not required."""
    if key not in features:
        if required:
            raise err(key, f"missing; expected a {kind}")
        return None
    actual = features[key].WhichOneof("kind")
    if actual is None:  # An empty Feature is an empty list of any type, as in TF.
        return []
    if actual != kind:
        raise err(key, f"is a {actual}, expected a {kind}")
    return getattr(features[key], kind).value


def _check_classes(key: str, labels: np.ndarray, err: _Err, num_classes: int | None) -> None:
    upper = 2**31 if num_classes is None else num_classes
    bad = (labels < 0) | (labels >= upper)
    if bad.any():
        i = int(np.argmax(bad))
        raise err(key, f"label {labels[i]} at position {i} is outside [0, {upper})")


def _check_finite(key: str, values: np.ndarray, err: _Err, what: str = "") -> None:
    if not np.isfinite(values).all():
        flat = int(np.argmax(~np.isfinite(values.reshape(-1))))
        where = tuple(int(i) for i in np.unravel_index(flat, values.shape))
        raise err(key, f"non-finite value {values.reshape(-1)[flat]} at {what}{where}")


def _ints(features: Any, key: str, err: _Err, *, required: bool = True) -> np.ndarray | None:
    values = _values(features, key, "int64_list", err, required=required)
    return None if values is None else np.array(values, np.int64)


def _float_vector(features: Any, key: str, size: int, err: _Err) -> np.ndarray:
    values = np.array(_values(features, key, "float_list", err), np.float32)
    if values.shape != (size,):
        raise err(key, f"has {values.size} floats, expected {size}")
    _check_finite(key, values, err, "index ")
    return values


def _context(features: Any, err: _Err, num_classes: int | None) -> dict[str, Any]:
    """Decodes id, labels and text_tokens shared by both record kinds."""
    key = "id" if "id" in features or "video_id" not in features else "video_id"
    if key not in features:
        raise err("id", "missing; expected a bytes_list with one id ('video_id' in 2017 data)")
    ids = _values(features, key, "bytes_list", err)
    if len(ids) != 1:
        raise err(key, f"has {len(ids)} values, expected 1")
    try:
        video_id = ids[0].decode("utf-8")
    except UnicodeDecodeError as e:
        raise err(key, f"is not UTF-8 ({e})") from None
    # Unlabelled (test) data may leave `labels` out; the starter reads it as a VarLenFeature.
    labels = _ints(features, "labels", err, required=False)
    if labels is None:
        labels = np.zeros(0, np.int64)
    _check_classes("labels", labels, err, num_classes)
    text_tokens = _ints(features, "text_tokens", err, required=False)
    return {
        "id": video_id,
        "labels": labels.astype(np.int32),
        "text_tokens": np.zeros(0, np.int64) if text_tokens is None else text_tokens,
    }


def _parse(proto_cls: Any, data: bytes, err: _Err) -> Any:
    try:
        return proto_cls.FromString(data)
    except message.DecodeError as e:
        raise err("<proto>", f"cannot parse as tf.train.{proto_cls.__name__} ({e})") from None


def decode_video_example(
    data: bytes,
    *,
    path: str = "<bytes>",
    index: int = 0,
    offset: int = 0,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Decodes a video-level record into id, labels, mean_rgb, mean_audio and text_tokens.

    Args:
      path, index, offset: where the record came from, for error messages.
      num_classes: if given, labels outside [0, num_classes) are errors.
    """
    err = functools.partial(RecordError, path, index, offset)
    fast = _fast_video(data)
    if fast is not None:  # the usual layout: protobuf parses only id, labels and tokens
        features_bytes, vectors = fast
        out = _context(
            _parse(tf_feature_pb2.Features, features_bytes, err).feature, err, num_classes
        )
        for key, values in vectors.items():
            _check_finite(key, values, err, "index ")
            out[key] = values
        return out
    features = _parse(tf_example_pb2.Example, data, err).features.feature
    out = _context(features, err, num_classes)
    out["mean_rgb"] = _float_vector(features, "mean_rgb", RGB_DIM, err)
    out["mean_audio"] = _float_vector(features, "mean_audio", AUDIO_DIM, err)
    return out


_VECTORS = {"mean_rgb": RGB_DIM, "mean_audio": AUDIO_DIM}


def _fast_video(data: bytes) -> tuple[bytes, dict[str, np.ndarray]] | None:
    """(the other features as a Features message, {'mean_rgb', 'mean_audio'} float32) of a
    video-level Example, read with one np.frombuffer per vector; None for anything unusual.

    Example = {1: Features}; Features = repeated {1: key, 2: Feature} map entries; a Feature's
    float_list is field 2, a FloatList's values field 1, packed little-endian float32 (as TF
    and our encoder write them). Through protobuf, each of the 1152 floats would become a
    Python float first. Any other layout (unpacked or repeated fields, a wrong size or type)
    returns None, and the protobuf path decodes it or names the problem.
    """
    try:
        top = list(wire.len_fields(data, 0, len(data)))
        if len(top) != 1 or top[0][0] != 1:
            return None
        others, vectors = bytearray(), {}
        for field, start, end in wire.len_fields(data, top[0][1], top[0][2]):
            parts = [(f, a, b) for f, a, b in wire.len_fields(data, start, end)]
            fields = [f for f, _, _ in parts]
            if field != 1 or fields not in ([1, 2], [1]):
                return None
            key = data[parts[0][1] : parts[0][2]].decode("utf-8")
            if key not in _VECTORS:
                others += b"\x0a" + wire.varint(end - start) + data[start:end]
                continue
            if key in vectors or len(parts) != 2:
                return None
            vectors[key] = _packed_floats(data, parts[1][1], parts[1][2], _VECTORS[key])
            if vectors[key] is None:
                return None
        if len(vectors) != len(_VECTORS):
            return None
        return bytes(others), {key: vectors[key] for key in _VECTORS}
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def _packed_floats(data: bytes, start: int, end: int, size: int) -> np.ndarray | None:
    """float32[size] from a Feature's bytes holding just a packed float_list of `size` values."""
    feature = list(wire.len_fields(data, start, end))
    if len(feature) != 1 or feature[0][0] != 2:  # 2: float_list
        return None
    values = list(wire.len_fields(data, feature[0][1], feature[0][2]))
    if len(values) != 1 or values[0][0] != 1 or values[0][2] - values[0][1] != 4 * size:
        return None
    return np.frombuffer(data, "<f4", count=size, offset=values[0][1]).astype(np.float32)


def _frame_header(dim: int) -> np.ndarray:
    """Wire bytes before each frame's data in a FeatureList of 1-string bytes_list frames.

    FeatureList.feature (field 1), Feature.bytes_list (field 1) and BytesList.value (field 1)
    are each a tag 0x0a and a varint length: 0a L1 0a L2 0a L3, L3 = dim.
    """
    value = b"\x0a" + wire.varint(dim)
    bytes_list = b"\x0a" + wire.varint(len(value) + dim)
    feature = b"\x0a" + wire.varint(len(bytes_list) + len(value) + dim)
    return np.frombuffer(feature + bytes_list + value, np.uint8)


_FRAME_HEADERS = {dim: _frame_header(dim) for dim in (RGB_DIM, AUDIO_DIM)}


def _split_sequence_example(data: bytes) -> tuple[bytes, dict[str, tuple[int, int]]] | None:
    """Context bytes and the byte range of each FeatureList of a serialized SequenceExample.

    SequenceExample = {1: context Features, 2: feature_lists FeatureLists}; FeatureLists =
    repeated {1: key, 2: FeatureList} map entries. Only this plain layout is split (what TF and
    our encoder write); anything unusual (unknown or repeated fields) returns None and the
    caller parses with protobuf instead.
    """
    try:
        context, lists = b"", {}
        seen = set()
        for field, start, end in wire.len_fields(data, 0, len(data)):
            if field in seen or field not in (1, 2):
                return None
            seen.add(field)
            if field == 1:
                context = data[start:end]
                continue
            for entry_field, e_start, e_end in wire.len_fields(data, start, end):
                if entry_field != 1:
                    return None
                parts = {f: (a, b) for f, a, b in wire.len_fields(data, e_start, e_end)}
                if set(parts) - {1, 2} or 1 not in parts:
                    return None
                key = data[slice(*parts[1])].decode("utf-8")
                if key in lists:
                    return None
                lists[key] = parts.get(2, (e_end, e_end))
        return context, lists
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def _regular_frames(data: bytes, start: int, end: int, dim: int) -> np.ndarray | None:
    """[T, dim] uint8 from a FeatureList's bytes without a Python step per frame.

    When every frame is one dim-byte string, the FeatureList is T rows of (header + dim) bytes;
    the rows are checked and the data columns copied out with numpy. Any other layout (float
    frames, wrong sizes, several strings per frame) returns None: the per-frame path decodes it
    or names the bad frame.
    """
    header = _FRAME_HEADERS[dim]
    stride = len(header) + dim
    if (end - start) % stride:
        return None
    rows = np.frombuffer(data, np.uint8, count=end - start, offset=start).reshape(-1, stride)
    if not (rows[:, : len(header)] == header).all():
        return None
    # A read-only view over the record's bytes: the batch collation copies it exactly once.
    return rows[:, len(header) :]


def _frames(feature_lists: Any, key: str, err: _Err) -> np.ndarray:
    """Decodes a feature list to [T, D]: uint8 from bytes frames, float32 from float frames."""
    dim = _DIMS[key]
    if key not in feature_lists:
        raise err(key, f"missing feature list; expected one entry of {dim} values per frame")
    frames = feature_lists[key].feature
    if not frames:
        return np.zeros((0, dim), np.uint8)
    kind = frames[0].WhichOneof("kind")
    if kind not in ("bytes_list", "float_list"):
        raise err(key, f"frame 0 is a {kind}, expected a bytes_list or float_list")
    chunks = []
    for t, frame in enumerate(frames):
        if frame.WhichOneof("kind") != kind:
            raise err(key, f"frame {t} is a {frame.WhichOneof('kind')}, frame 0 a {kind}")
        values = getattr(frame, kind).value
        if kind == "bytes_list":
            if len(values) != 1:
                raise err(key, f"frame {t} has {len(values)} byte strings, expected 1")
            values = values[0]
        if len(values) != dim:
            unit = "bytes" if kind == "bytes_list" else "floats"
            raise err(key, f"frame {t} has {len(values)} {unit}, expected {dim}")
        chunks.append(values)
    if kind == "bytes_list":
        # One join + frombuffer instead of a numpy call per frame; bytearray keeps it writable.
        return np.frombuffer(bytearray().join(chunks), np.uint8).reshape(-1, dim)
    out = np.array(chunks, np.float32)
    _check_finite(key, out, err, "(frame, index) ")
    return out


def _segments(context: Any, err: _Err, num_classes: int | None) -> dict[str, np.ndarray]:
    """Decodes the 2019 segment fields; all four or none must be present, of equal length."""
    present = [key for key, _ in _SEGMENTS.values() if key in context]
    if not present:
        return {}
    out = {}
    for key, kind in _SEGMENTS.values():
        if key not in context:
            raise err(key, f"missing while {present[0]} is present; segment fields come together")
        dtype = np.int64 if kind == "int64_list" else np.float32
        out[key] = np.array(_values(context, key, kind, err), dtype)
        if len(out[key]) != len(out[present[0]]):
            raise err(key, f"has {len(out[key])} values, {present[0]} has {len(out[present[0]])}")
    _check_classes("segment_labels", out["segment_labels"], err, num_classes)
    _check_finite("segment_scores", out["segment_scores"], err, "index ")
    return out


def _fast_frames(data: bytes) -> dict | None:
    """{'context': bytes, 'rgb': [T, 1024], 'audio': [T, 128]} for plain bytes frames, else None."""
    split = _split_sequence_example(data)
    if split is None:
        return None
    context, lists = split
    out = {"context": context}
    for key, dim in _DIMS.items():
        if key not in lists:
            return None
        frames = _regular_frames(data, *lists[key], dim)
        if frames is None:
            return None
        out[key] = frames
    return out


def decode_frame_example(
    data: bytes,
    *,
    path: str = "<bytes>",
    index: int = 0,
    offset: int = 0,
    num_classes: int | None = None,
    segments: bool = True,
) -> dict[str, Any]:
    """Decodes a frame-level record into id, labels, rgb, audio, text_tokens and segment fields.

    All frames are returned (also 0 or more than MAX_FRAMES); truncation is the pipeline's job.
    uint8 frames may be read-only views over `data` (copy them to modify).

    Args:
      path, index, offset: where the record came from, for error messages.
      num_classes: if given, labels and segment labels outside [0, num_classes) are errors.
      segments: decode (and check) the 2019 segment fields; False leaves them out (faster, for
        video-level training, which does not use them).
    """
    err = functools.partial(RecordError, path, index, offset)
    frames = _fast_frames(data)
    if frames is not None:  # the usual layout: protobuf parses only the small context
        context = _parse(tf_feature_pb2.Features, frames.pop("context"), err).feature
    else:
        example = _parse(tf_example_pb2.SequenceExample, data, err)
        context = example.context.feature
        feature_lists = example.feature_lists.feature_list
        frames = {key: _frames(feature_lists, key, err) for key in ("rgb", "audio")}
    out = _context(context, err, num_classes)
    if segments:
        out.update(_segments(context, err, num_classes))
    out["rgb"], out["audio"] = frames["rgb"], frames["audio"]
    if len(out["rgb"]) != len(out["audio"]):
        raise err("audio", f"has {len(out['audio'])} frames, rgb has {len(out['rgb'])}")
    return out


def record_level(data: bytes) -> str | None:
    """'frame' (a SequenceExample with rgb or audio frames), 'video' (an Example with mean_rgb
    or mean_audio), or None when the record says neither (or does not parse).

    An Example parses as a SequenceExample whose context is its features (both are field 1),
    so one parse tells the two apart.
    """
    proto = tf_example_pb2.SequenceExample()
    try:
        proto.ParseFromString(data)
    except message.DecodeError:
        return None
    if {"rgb", "audio"} & set(proto.feature_lists.feature_list):
        return "frame"
    if {"mean_rgb", "mean_audio"} & set(proto.context.feature):
        return "video"
    return None
