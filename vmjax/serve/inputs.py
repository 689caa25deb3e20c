"""Request bodies -> model input rows, as the pipeline makes them: the input spec and TFRecords.

The model is a classifier (scores of rgb and audio) or the video side of an encoder run (a
retrieval run's video tower, an audio-visual run's rgb or audio tower: embeddings); features a
model does not read are decoded and checked as the record format asks, then dropped.

Records are framed and CRC-checked by vmjax.data.tfrecord, decoded by vmjax.data.yt8m, cut to
the first max_frames frames (the evaluation reader's choice) and padded by the pipeline's own
collate (vmjax.data.pipeline), so the server feeds the model exactly what evaluation did.
JSON bodies are read by jsonbody.py into the same examples and go through the same collate.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from vmjax import export as export_lib
from vmjax.data import pipeline, tfrecord, yt8m
from vmjax.serve.errors import RequestError, past_deadline

# The YT8M features a served model may read, in the order of the pipeline's batch.
FEATURES = ("rgb", "audio")

__all__ = [
    "FEATURES",
    "InputSpec",
    "RequestError",
    "Videos",
    "collate",
    "frames_as",
    "parse_tfrecords",
]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the exported model takes, read from its header."""

    level: str  # 'frame' or 'video'
    num_classes: int | None  # None: an encoder, which returns embeddings
    inputs: dict[str, tuple[tuple, np.dtype]]  # name -> (shape without batch, dtype)
    batch_size: int | None  # the fixed batch size it was exported for; None = any
    max_frames: int  # frame level: frames per video (0 at video level)
    max_text_tokens: int  # 0 when the model reads no text
    text_vocab_size: int
    output: str = "scores"  # the header's output: 'scores', or an encoder's '<tower>_embeddings'
    embedding_dim: int | None = None  # an encoder's E (embeddings [b, E])

    @classmethod
    def from_header(cls, header: dict) -> InputSpec:
        inputs = {
            i["name"]: (tuple(i["shape"][1:]), np.dtype(i["dtype"])) for i in header["inputs"]
        }
        level = header["data_level"]
        output = header["output"]["name"]
        encoder = output != "scores"
        features = [k for k in FEATURES if k in inputs]
        if encoder and not features:
            raise export_lib.ExportError(
                f"the server serves classifiers and the video-side towers of encoder runs; this "
                f"is a text tower ({output}, inputs {sorted(inputs)}): search the run's videos "
                "by text with `python -m vmjax.main --mode retrieve --query ...` (vmjax.search), "
                "or embed token ids with vmjax.export.load(file)"
            )
        if level not in pipeline.LEVELS or len(features) < (1 if encoder else 2):
            raise export_lib.ExportError(
                f"the server takes models of YT8M rgb/audio features; this one is {level}-level "
                f"with inputs {sorted(inputs)}"
            )
        dim = header["inputs"][0]["shape"][0]
        return cls(
            level=level,
            num_classes=None if encoder else int(header["num_classes"]),
            inputs=inputs,
            batch_size=None if dim == export_lib.BATCH else int(dim),
            max_frames=inputs[features[0]][0][0] if level == "frame" else 0,
            max_text_tokens=inputs["text_tokens"][0][0] if "text_tokens" in inputs else 0,
            text_vocab_size=_text_vocab_size(header),
            output=output,
            embedding_dim=int(header["output"]["shape"][-1]) if encoder else None,
        )

    @property
    def is_encoder(self) -> bool:
        return self.num_classes is None

    @property
    def features(self) -> tuple[str, ...]:
        """The YT8M features the model reads (a classifier: both)."""
        return tuple(k for k in FEATURES if k in self.inputs)

    def batch_spec(self) -> pipeline.BatchSpec:
        return pipeline.BatchSpec(
            level=self.level,
            num_classes=self.num_classes or 0,
            max_frames=max(self.max_frames, 1),
            max_text_tokens=self.max_text_tokens,
            text_vocab_size=self.text_vocab_size,
        )

    def zeros(self, n: int) -> dict[str, np.ndarray]:
        """n all-zero rows of every input (padding, and compiling each batch size once)."""
        return {k: np.zeros((n, *shape), dtype) for k, (shape, dtype) in self.inputs.items()}

    def unread(self, frames: int) -> np.ndarray:
        """What stands in for a feature the model does not read: no values, `frames` frames (the
        collate takes the frame count, hence the mask, from it)."""
        return np.zeros((frames, 0) if self.level == "frame" else 0, np.float32)

    def describe(self) -> str:
        dims = {"rgb": yt8m.RGB_DIM, "audio": yt8m.AUDIO_DIM}
        if self.level == "video":
            each = ", ".join(f"'{k}': [{dims[k]} floats]" for k in self.features)
            return f"video-level: {{{each}}} per video"
        each = ", ".join(f"'{k}': [[{dims[k]} floats] per frame]" for k in self.features)
        return f"frame-level: {{{each}}} per video (the first {self.max_frames} frames are used)"


def _text_vocab_size(header: dict) -> int:
    """The run's text vocabulary size for token checks: the export header's (files exported
    before it held one: from the run directory, when still there; else no check)."""
    if header.get("text_vocab_size"):
        return int(header["text_vocab_size"])
    from vmjax import run as run_lib
    from vmjax.errors import RunDirectoryError

    try:
        return int(run_lib.Run.open(header["workdir"]).config.data.text_vocab_size)
    except (RunDirectoryError, KeyError, AttributeError, TypeError, ValueError):
        return 2**31 - 1


@dataclasses.dataclass
class Videos:
    """Parsed videos of one request: model input rows and their ids (None where none was given)."""

    rows: dict[str, np.ndarray]
    ids: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)


def parse_tfrecords(body: bytes, spec: InputSpec, deadline: float | None = None) -> Videos:
    """Videos from TFRecord bytes of SequenceExamples (frame-level) or Examples (video-level).

    deadline: a time.monotonic() after which decoding stops (the request was answered 503).
    """
    try:
        records = list(tfrecord.read_records("<request body>", data=body))
    except tfrecord.RecordError as e:
        raise RequestError(400, f"TFRecord body: {_where(e)}: {e.message}") from None
    examples = []
    for index, offset, payload in records:
        if deadline is not None and time.monotonic() > deadline:
            raise past_deadline("decoding records")
        try:
            examples.append(_decode(payload, index, offset, spec))
        except tfrecord.RecordError as e:
            message = f"TFRecord body: {_where(e)}: {e.message}{_hint(e, spec)}"
            raise RequestError(422, message) from None
    return collate(examples, [ex["id"] for ex in examples], spec)


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
        out = {key: ex[key][keep] for key in FEATURES}
    for key in FEATURES:  # an encoder tower may read one of them: the other is not copied
        if key not in spec.inputs:
            out[key] = spec.unread(len(out[key]) if spec.level == "frame" else 0)
        elif spec.level == "frame":
            out[key] = frames_as(out[key], spec.inputs[key][1])
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


def frames_as(frames: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Frames in the model's input dtype: float frames are quantized for a uint8 model, as the
    extractor writes them (the model dequantizes them again)."""
    if dtype == np.uint8 and frames.dtype != np.uint8:
        return yt8m.quantize(frames)
    if dtype != np.uint8 and frames.dtype == np.uint8:
        return yt8m.dequantize(frames)
    return frames


def collate(examples: list[dict], ids: list[str | None], spec: InputSpec) -> Videos:
    """Pipeline examples (rgb, audio, text_tokens) -> the model's input rows, padded (only the
    inputs the model takes: a feature it does not read is dropped here)."""
    if not examples:
        raise RequestError(400, "the body holds no videos")
    for ex in examples:
        ex["labels"] = np.zeros(0, np.int64)  # not a model input
    batch = pipeline.make_collate(spec.batch_spec(), len(examples))(examples)
    rows = {}
    for name, (_, dtype) in spec.inputs.items():
        rows[name] = np.ascontiguousarray(batch[name], dtype)
    return Videos(rows, ids)
