"""Request bodies -> model input rows: YT8M TFRecords or JSON features, as the pipeline makes them.

Records are framed and CRC-checked by vmjax.data.tfrecord, decoded by vmjax.data.yt8m, cut to
the first max_frames frames (the evaluation reader's choice) and padded by the pipeline's own
collate (vmjax.data.pipeline), so the server feeds the model exactly what evaluation did.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from vmjax import export as export_lib
from vmjax.data import pipeline, tfrecord, yt8m

# A JSON video's keys: features, an optional id, and `quantized` (frames given as uint8 levels).
_JSON_KEYS = ("rgb", "audio", "id", "quantized", "text_tokens")
_DIMS = {"rgb": yt8m.RGB_DIM, "audio": yt8m.AUDIO_DIM}
# Bodies are spooled to a file for tfrecord.read_records; tmpfs keeps that in memory.


class RequestError(ValueError):
    """A bad request: `status` is the HTTP status to answer with, the message says what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the exported model takes, read from its header."""

    level: str  # 'frame' or 'video'
    num_classes: int
    inputs: dict[str, tuple[tuple, np.dtype]]  # name -> (shape without batch, dtype)
    batch_size: int | None  # the fixed batch size it was exported for; None = any
    max_frames: int  # frame level: frames per video (0 at video level)
    max_text_tokens: int  # 0 when the model reads no text
    text_vocab_size: int

    @classmethod
    def from_header(cls, header: dict) -> InputSpec:
        inputs = {
            i["name"]: (tuple(i["shape"][1:]), np.dtype(i["dtype"])) for i in header["inputs"]
        }
        level = header["data_level"]
        if level not in pipeline.LEVELS or "rgb" not in inputs or "audio" not in inputs:
            raise export_lib.ExportError(
                f"the server takes models of YT8M rgb/audio features; this one is {level}-level "
                f"with inputs {sorted(inputs)}"
            )
        dim = header["inputs"][0]["shape"][0]
        return cls(
            level=level,
            num_classes=int(header["num_classes"]),
            inputs=inputs,
            batch_size=None if dim == export_lib.BATCH else int(dim),
            max_frames=inputs["rgb"][0][0] if level == "frame" else 0,
            max_text_tokens=inputs["text_tokens"][0][0] if "text_tokens" in inputs else 0,
            text_vocab_size=_text_vocab_size(header),
        )

    def batch_spec(self) -> pipeline.BatchSpec:
        return pipeline.BatchSpec(
            level=self.level,
            num_classes=self.num_classes,
            max_frames=max(self.max_frames, 1),
            max_text_tokens=self.max_text_tokens,
            text_vocab_size=self.text_vocab_size,
        )

    def zeros(self, n: int) -> dict[str, np.ndarray]:
        """n all-zero rows of every input (padding, and compiling each batch size once)."""
        return {k: np.zeros((n, *shape), dtype) for k, (shape, dtype) in self.inputs.items()}

    def describe(self) -> str:
        if self.level == "video":
            return "video-level: {'rgb': [1024 floats], 'audio': [128 floats]} per video"
        return (
            "frame-level: {'rgb': [[1024 floats] per frame], 'audio': [[128 floats] per frame]} "
            f"per video (the first {self.max_frames} frames are used)"
        )


def _text_vocab_size(header: dict) -> int:
    """The run's text vocabulary size (from its config.json, when still there) for token checks."""
    try:
        with open(os.path.join(header["workdir"], "config.json")) as f:
            return int(json.load(f)["config"]["data"]["text_vocab_size"])
    except (OSError, KeyError, TypeError, ValueError):
        return 2**31 - 1


@dataclasses.dataclass
class Videos:
    """Parsed videos of one request: model input rows and their ids (None where none was given)."""

    rows: dict[str, np.ndarray]
    ids: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)


def parse_tfrecords(body: bytes, spec: InputSpec) -> Videos:
    """Videos from TFRecord bytes of SequenceExamples (frame-level) or Examples (video-level)."""
    try:
        records = list(tfrecord.read_records("<request body>", data=body))
    except tfrecord.RecordError as e:
        raise RequestError(400, f"TFRecord body: {_where(e)}: {e.message}") from None
    examples = []
    for index, offset, payload in records:
        try:
            examples.append(_decode(payload, index, offset, spec))
        except tfrecord.RecordError as e:
            message = f"TFRecord body: {_where(e)}: {e.message}{_hint(e, spec)}"
            raise RequestError(422, message) from None
    return _collate(examples, [ex["id"] for ex in examples], spec)


def _where(e: tfrecord.RecordError) -> str:
    return f"record {e.index} (byte offset {e.offset}), field '{e.field}'"


def _hint(e: tfrecord.RecordError, spec: InputSpec) -> str:
    """Says which record kind the model takes when the record looks like the other kind."""
    if spec.level == "video" and e.field in ("mean_rgb", "mean_audio") and "missing" in e.message:
        return (
            " (this model is video-level: it takes tf.train.Example records with mean_rgb and "
            "mean_audio, not frame-level SequenceExamples)"
        )
    if spec.level == "frame" and e.field in ("rgb", "audio") and "missing" in e.message:
        return (
            " (this model is frame-level: it takes tf.train.SequenceExample records with rgb "
            "and audio feature lists, not video-level Examples)"
        )
    return ""


def _decode(payload: bytes, index: int, offset: int, spec: InputSpec) -> dict[str, Any]:
    """One record -> a pipeline example; labels are not model inputs and are not checked."""
    where = {"path": "request body", "index": index, "offset": offset}
    if spec.level == "video":
        ex = yt8m.decode_video_example(payload, **where)
        out = {"rgb": ex["mean_rgb"], "audio": ex["mean_audio"]}
    else:
        ex = yt8m.decode_frame_example(payload, **where, segments=False)
        keep = pipeline.sample_frames(len(ex["rgb"]), spec.max_frames, "first")
        out = {key: _frames_as(ex[key][keep], spec.inputs[key][1]) for key in ("rgb", "audio")}
    tokens = ex["text_tokens"][: spec.max_text_tokens]  # none kept for a model without text
    bad = (tokens < 0) | (tokens >= spec.text_vocab_size)
    if bad.any():
        raise tfrecord.RecordError(
            "request body",
            index,
            offset,
            "text_tokens",
            f"token {tokens[bad][0]} is outside [0, {spec.text_vocab_size})",
        )
    out["text_tokens"] = tokens
    out["id"] = ex["id"]
    return out


def _frames_as(frames: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Frames in the model's input dtype: float frames are quantized for a uint8 model, as the
    extractor writes them (the model dequantizes them again)."""
    if dtype == np.uint8 and frames.dtype != np.uint8:
        return yt8m.quantize(frames)
    if dtype != np.uint8 and frames.dtype == np.uint8:
        return yt8m.dequantize(frames)
    return frames


def _collate(examples: list[dict], ids: list[str | None], spec: InputSpec) -> Videos:
    if not examples:
        raise RequestError(400, "the body holds no videos")
    for ex in examples:
        ex["labels"] = np.zeros(0, np.int64)  # not a model input
    batch = pipeline.make_collate(spec.batch_spec(), len(examples))(examples)
    rows = {}
    for name, (_, dtype) in spec.inputs.items():
        rows[name] = np.ascontiguousarray(batch[name], dtype)
    return Videos(rows, ids)


def parse_json(body: bytes, spec: InputSpec) -> Videos:
    """Videos from a JSON object of features, or a list of them (see InputSpec.describe)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"malformed JSON body: {e}") from None
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise RequestError(400, "the JSON body is an empty list: expected at least one video")
    examples, ids = [], []
    for i, item in enumerate(items):
        where = f"JSON video {i}" if isinstance(doc, list) else "JSON body"
        if not isinstance(item, dict):
            raise RequestError(
                422, f"{where} is a {type(item).__name__}; expected an object: {spec.describe()}"
            )
        unknown = sorted(set(item) - set(_JSON_KEYS))
        if unknown:
            raise RequestError(
                422, f"{where}: unknown key(s) {unknown}; expected keys among {list(_JSON_KEYS)}"
            )
        video_id = item.get("id")
        if video_id is not None and not isinstance(video_id, str):
            raise RequestError(
                422, f"{where}: 'id' is a {type(video_id).__name__}, expected a string"
            )
        examples.append(_json_video(item, where, spec))
        ids.append(video_id)
    return _collate(examples, ids, spec)


def _json_video(item: dict, where: str, spec: InputSpec) -> dict[str, Any]:
    quantized = item.get("quantized", False)
    if not isinstance(quantized, bool):
        raise RequestError(422, f"{where}: 'quantized' must be true or false")
    if quantized and spec.level == "video":
        raise RequestError(422, f"{where}: 'quantized' applies to frame-level models only")
    out = {}
    for key, dim in _DIMS.items():
        if key not in item:
            raise RequestError(422, f"{where}: '{key}' is missing; expected {spec.describe()}")
        try:
            x = np.asarray(item[key], np.float64)
        except (TypeError, ValueError):
            raise RequestError(
                422, f"{where}: '{key}' is not a (rectangular) list of numbers"
            ) from None
        if spec.level == "frame" and x.size == 0:
            x = x.reshape(0, dim)  # a video without frames, as records may have
        want = (dim,) if spec.level == "video" else ("T", dim)
        if x.ndim != len(want) or x.shape[-1] != dim:
            got = "a number" if x.ndim == 0 else f"shape {list(x.shape)}"
            expected = f"{dim} values" if spec.level == "video" else f"[frames, {dim}]"
            raise RequestError(
                422,
                f"{where}: '{key}' has {got}; expected {expected} ({spec.level}-level model)",
            )
        if not np.isfinite(x).all():
            flat = int(np.argmax(~np.isfinite(x.reshape(-1))))
            at = tuple(int(j) for j in np.unravel_index(flat, x.shape))
            value = x.reshape(-1)[flat]
            raise RequestError(422, f"{where}: '{key}' has a non-finite value {value} at {at}")
        out[key] = _json_features(x, key, where, quantized, spec)
    if spec.level == "frame" and len(out["rgb"]) != len(out["audio"]):
        raise RequestError(
            422, f"{where}: 'rgb' has {len(out['rgb'])} frames but 'audio' has {len(out['audio'])}"
        )
    out["text_tokens"] = _json_tokens(item.get("text_tokens", []), where, spec)
    return out


def _json_features(x: np.ndarray, key: str, where: str, quantized: bool, spec: InputSpec):
    if spec.level == "video":
        return x.astype(np.float32)
    x = x[: spec.max_frames]  # the first max_frames frames, as evaluation reads records
    if quantized:
        if ((x < 0) | (x > 255) | (x != np.round(x))).any():
            raise RequestError(
                422,
                f"{where}: '{key}' is marked quantized but holds values outside 0..255 "
                "or non-integers",
            )
        return _frames_as(x.astype(np.uint8), spec.inputs[key][1])
    return _frames_as(x.astype(np.float32), spec.inputs[key][1])


def _json_tokens(tokens: Any, where: str, spec: InputSpec) -> np.ndarray:
    try:
        t = np.asarray(tokens, np.float64).reshape(-1)[: spec.max_text_tokens]
    except (TypeError, ValueError):
        raise RequestError(422, f"{where}: 'text_tokens' is not a list of integers") from None
    if (t != np.round(t)).any() or ((t < 0) | (t >= spec.text_vocab_size)).any():
        raise RequestError(
            422, f"{where}: 'text_tokens' must be integers in [0, {spec.text_vocab_size})"
        )
    return t.astype(np.int64)
