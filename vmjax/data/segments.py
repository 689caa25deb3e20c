"""Segment-level examples of the 2019 YouTube-8M data: one example per rated 5-frame segment.

A 2019 frame-level record rates a few (segment, class) pairs: context fields
`segment_start_times`, `segment_end_times`, `segment_labels` and `segment_scores`, one row per
pair (docs/yt8m_format.md). As in the official starter's segment reader, rows with the same start
time are one segment; a class rated in it counts with its score (1 positive, 0 negative) and every
unrated class gets label weight 0, so only rated pairs enter the loss and the metric.

Segments must lie inside the video: the format doc promises nothing about segments past the
released frames, and the starter reads such frames as zeros (its 300-frame padding) without
saying so. Here a segment that runs past the last frame is an error naming the video and the
segment, unless `pad_past_end` is set: then its missing frames are zero and masked out.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from vmjax.data import yt8m

SEGMENT_FRAMES = 5  # frames (seconds) per rated segment of the 2019 data
_ASSETS = os.path.join(os.path.dirname(__file__), "assets")
_FIELDS = ("segment_start_times", "segment_end_times", "segment_labels", "segment_scores")


def _rows(example: dict[str, Any]) -> tuple[np.ndarray, ...] | None:
    """The four segment fields as arrays of one length; None when the video has none."""
    present = [key for key in _FIELDS if key in example]
    if not present:
        return None
    if len(present) != len(_FIELDS):
        missing = sorted(set(_FIELDS) - set(present))
        raise ValueError(f"video {example['id']!r}: has {present[0]} but not {missing}")
    rows = tuple(np.asarray(example[key]).reshape(-1) for key in _FIELDS)
    if len({len(r) for r in rows}) != 1:
        sizes = {key: len(r) for key, r in zip(_FIELDS, rows, strict=True)}
        raise ValueError(f"video {example['id']!r}: segment fields differ in length: {sizes}")
    return rows


def _check_rows(
    video_id: str,
    rows: tuple[np.ndarray, ...],
    num_classes: int,
    segment_frames: int,
) -> None:
    """Each row: start >= 0, end = start + segment_frames, class in range, score 0 or 1."""
    starts, ends, classes, scores = rows
    problems = (
        ("segment_start_times", starts < 0, "is negative"),
        (
            "segment_end_times",
            ends != starts + segment_frames,
            f"is not start + {segment_frames} (segments are {segment_frames} frames)",
        ),
        ("segment_labels", (classes < 0) | (classes >= num_classes), f"not in [0, {num_classes})"),
        ("segment_scores", (scores != 0) & (scores != 1), "is not 0 or 1"),
    )
    for key, bad, what in problems:
        if bad.any():
            i = int(np.argmax(bad))
            value = rows[_FIELDS.index(key)][i]
            raise ValueError(
                f"video {video_id!r}, segment row {i} (start {starts[i]}): {key} {value} {what}"
            )


def segment_examples(
    example: dict[str, Any],
    *,
    num_classes: int,
    segment_frames: int = SEGMENT_FRAMES,
    pad_past_end: bool = False,
) -> list[dict[str, Any]]:
    """One example per rated segment of a decoded frame-level record, by ascending start time.

    Each holds `id`, `segment_start`, `rgb` [segment_frames, 1024] and `audio`
    [segment_frames, 128] (the record's dtype, copied out of the record), `num_frames` (real
    frames: segment_frames unless padded), `labels` (int32 classes rated positive),
    `label_weights` float32 [num_classes] (1 on rated classes, positive or negative, else 0) and
    the video's `text_tokens`. A video without segment fields gives [].

    Args:
      example: a `yt8m.decode_frame_example` result (with its segment fields).
      pad_past_end: zero-fill and mask the frames of a segment that runs past the video's last
        frame instead of raising; a segment with no frame inside the video still raises.
    """
    rows = _rows(example)
    if rows is None or len(rows[0]) == 0:
        return []
    video_id = example["id"]
    _check_rows(video_id, rows, num_classes, segment_frames)
    starts, _, classes, scores = rows
    rgb, audio = example["rgb"], example["audio"]
    num_video_frames = len(rgb)
    out = []
    for start in np.unique(starts).tolist():
        where = f"video {video_id!r}, segment starting at frame {start}"
        in_video = min(segment_frames, num_video_frames - start)
        if in_video < segment_frames and (not pad_past_end or in_video <= 0):
            raise ValueError(
                f"{where}: frames [{start}, {start + segment_frames}) run past the video's "
                f"{num_video_frames} frames (pad_past_end={pad_past_end})"
            )
        rated = starts == start
        rated_classes, rated_scores = classes[rated], scores[rated]
        score_of: dict[int, float] = {}
        for c, s in zip(rated_classes.tolist(), rated_scores.tolist(), strict=True):
            if score_of.setdefault(c, s) != s:
                raise ValueError(f"{where}: class {c} is rated both 0 and 1")
        label_weights = np.zeros(num_classes, np.float32)
        label_weights[rated_classes] = 1
        segment = {"id": video_id, "segment_start": start, "num_frames": in_video}
        for key, frames in (("rgb", rgb), ("audio", audio)):
            window = np.zeros((segment_frames, frames.shape[-1]), frames.dtype)
            window[:in_video] = frames[start : start + in_video]
            segment[key] = window
        segment["labels"] = np.array(sorted(c for c, s in score_of.items() if s == 1), np.int32)
        segment["label_weights"] = label_weights
        segment["text_tokens"] = example["text_tokens"]
        out.append(segment)
    return out


def collate_segments(
    examples: Sequence[dict[str, Any]],
    batch_size: int,
    num_classes: int,
    *,
    max_text_tokens: int = 0,
) -> dict[str, np.ndarray]:
    """Stacks segment examples into a batch padded to `batch_size` rows (weights 0 on padding).

    Keys and dtypes follow `pipeline.make_collate` for frame-level videos (rgb, audio, mask,
    num_frames, labels, weights, text_tokens, text_mask, and the host-only `ids`) plus
    `segment_starts` int32 [batch] and `label_weights` float32 [batch, num_classes], 0 on
    unrated classes and on padding rows.

    Args:
      max_text_tokens: text_tokens kept and padded to (config.data.max_text_tokens); 0 leaves
        [batch, 0] text arrays for models without text.
    """
    n = len(examples)
    if not 1 <= n <= batch_size:
        raise ValueError(f"collate_segments: got {n} examples for a batch of {batch_size}")
    segment_frames = len(examples[0]["rgb"])
    for ex in examples:
        if len(ex["rgb"]) != segment_frames or ex["label_weights"].shape != (num_classes,):
            raise ValueError(
                f"collate_segments: video {ex['id']!r} segment {ex['segment_start']} has "
                f"{len(ex['rgb'])} frames and {ex['label_weights'].shape[0]} classes, expected "
                f"{segment_frames} and {num_classes}"
            )
    labels = np.zeros((batch_size, num_classes), np.uint8)
    label_weights = np.zeros((batch_size, num_classes), np.float32)
    text_tokens = np.zeros((batch_size, max_text_tokens), np.int32)
    num_tokens = np.zeros(batch_size, np.int32)
    num_frames = np.zeros(batch_size, np.int32)
    for row, ex in enumerate(examples):
        labels[row, ex["labels"]] = 1
        label_weights[row] = ex["label_weights"]
        tokens = ex["text_tokens"][:max_text_tokens]
        num_tokens[row] = len(tokens)
        text_tokens[row, : len(tokens)] = tokens
        num_frames[row] = ex["num_frames"]
    weights = np.zeros(batch_size, np.float32)
    weights[:n] = 1
    batch = {
        "ids": np.array([ex["id"] for ex in examples] + [""] * (batch_size - n)),  # host only
        "segment_starts": np.array(
            [ex["segment_start"] for ex in examples] + [0] * (batch_size - n), np.int32
        ),
        "labels": labels,
        "label_weights": label_weights,
        "weights": weights,
        "text_tokens": text_tokens,
        "text_mask": np.arange(max_text_tokens)[None, :] < num_tokens[:, None],
        "num_frames": num_frames,
        "mask": np.arange(segment_frames)[None, :] < num_frames[:, None],
    }
    # As make_collate: uint8 stays uint8; float-list frames make that key's batch float32 (each
    # key decides alone: a record may hold uint8 rgb and float audio).
    for key in ("rgb", "audio"):
        is_float = any(ex[key].dtype != np.uint8 for ex in examples)
        dim = examples[0][key].shape[-1]
        out = np.zeros((batch_size, segment_frames, dim), np.float32 if is_float else np.uint8)
        for row, ex in enumerate(examples):
            x = ex[key]
            out[row] = yt8m.dequantize(x) if is_float and x.dtype == np.uint8 else x
        batch[key] = out
    return batch


def segment_classes(num_classes: int, path: str = "") -> np.ndarray:
    """Sorted class indices of the segment task: the `Index` column of a CSV at `path`.

    With no path: the 2019 segment vocabulary's 1000 classes (shipped in vmjax/data/assets) for
    the 2018 vocabulary's 3862 classes, else every class (e.g. the embedded data's).
    """
    if not path:
        if num_classes != 3862:
            return np.arange(num_classes)
        path = os.path.join(_ASSETS, "yt8m_segment_vocabulary.csv")
    with open(os.path.expanduser(path), newline="") as f:
        reader = csv.DictReader(f)
        if "Index" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no 'Index' column (header {reader.fieldnames})")
        classes = np.array(sorted({int(row["Index"]) for row in reader}), np.int64)
    if classes.size == 0 or classes[0] < 0 or classes[-1] >= num_classes:
        raise ValueError(f"{path}: segment classes must be in [0, {num_classes}), got {classes}")
    return classes
