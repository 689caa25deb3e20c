"""Segment-level evaluation and predictions (2019 data): `--mode eval|predict --segments`.

Every segment listed in a frame-level eval record (vmjax.data.segments: 5 frames, its rated
classes) goes through the model as a short video: its frames sit at the start of a
data.max_frames clip and the rest is masked, so the eval step compiled for videos is reused.

eval: MAP@100,000 over the rated (segment, class) pairs (metrics.segment_map) and the mean
  binary cross-entropy over them -> WORKDIR/eval/segments_step_<N>.json.
predict: the Kaggle segment file (`Class,Segments`, per class of the segment vocabulary the top
  100,000 segments by descending score as `video_id:start`)
  -> WORKDIR/segment_predictions_step_<N>.csv.
  It keeps every segment's scores for those classes in memory: segments x classes x 4 bytes
  (950 MB for the 2019 validate set's ~237K segments and 1000 classes).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from vmjax import metrics
from vmjax.data import pipeline, segments, streams, tfrecord, yt8m
from vmjax.train import inference, inputs

SEGMENTS_PER_CLASS = 100_000  # the Kaggle file's limit per class, and the MAP cut-off


def segment_batches(
    config: ml_collections.ConfigDict,
    files: list[str],
    batch_size: int,
    bad_records: pipeline.BadRecords | None = None,
) -> Iterator[dict]:
    """Batches of every listed segment of `files`, in file order, padded to data.max_frames.

    Each batch is `segments.collate_segments`'s (with `ids`, `segment_starts`, `label_weights`),
    its rgb/audio/mask padded along time to data.max_frames. Records without segment fields add
    nothing. With `bad_records` a bad record (or bad segment fields) is skipped and counted.
    """
    spec = pipeline.BatchSpec.from_config(config.data)
    if spec.level != "frame":
        raise ValueError(
            "segment evaluation needs frame-level data (config.data.level='frame'), got "
            f"{spec.level!r}"
        )
    if spec.max_frames < segments.SEGMENT_FRAMES:
        raise ValueError(
            f"config.data.max_frames={spec.max_frames} is shorter than a segment "
            f"({segments.SEGMENT_FRAMES} frames)"
        )
    records = streams.InterleavedRecords(
        grain.MapDataset.source(list(files)), cycle_length=1, on_error=bad_records
    )
    pending: list[dict] = []
    for path, index, offset, payload, _ in records:
        try:
            pending += _segments_of(payload, path, index, offset, spec, config.data)
        except tfrecord.RecordError as e:
            if bad_records is None:
                raise
            bad_records(e)
        while len(pending) >= batch_size:
            yield _collate(pending[:batch_size], batch_size, spec)
            pending = pending[batch_size:]
    if pending:
        yield _collate(pending, batch_size, spec)


def _segments_of(payload, path, index, offset, spec, data_config) -> list[dict]:
    where = {"path": path, "index": index, "offset": offset, "num_classes": spec.num_classes}
    example = yt8m.decode_frame_example(payload, **where)
    try:
        return segments.segment_examples(
            example,
            num_classes=spec.num_classes,
            pad_past_end=data_config.segment_pad_past_end,
        )
    except ValueError as e:  # name the file and record, not only the video
        raise tfrecord.RecordError(path, index, offset, "segment_*", str(e)) from None


def _collate(examples: list[dict], batch_size: int, spec: pipeline.BatchSpec) -> dict:
    batch = segments.collate_segments(
        examples, batch_size, spec.num_classes, max_text_tokens=spec.max_text_tokens
    )
    pad = spec.max_frames - batch["mask"].shape[1]
    for key in ("rgb", "audio", "mask"):
        x = batch[key]
        batch[key] = np.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return batch


def _batches(config):
    """(segment batches of the eval data, the skipped-record counter under on_error='skip')."""
    if jax.process_count() > 1:
        raise NotImplementedError("segment eval/predict run in one process")
    _, eval_files, _ = inputs.resolve_data(config)
    bad = pipeline.BadRecords() if config.data.on_error == "skip" else None
    return segment_batches(config, eval_files, config.eval_batch_size, bad), bad


def evaluate_segments(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> dict:
    """Segment MAP@100,000 and loss of a checkpoint on the eval data's rated segments."""
    par, state, step = inference.restore(config, workdir, step)
    batches, bad = _batches(config)
    scores, positive, classes = [], [], []
    loss_sum = 0.0
    num_segments = 0
    for batch in batches:
        out = par.eval_step(state, par.put_batch(batch))
        rated = batch["label_weights"] * batch["weights"][:, None]
        rows, cols = np.nonzero(rated)
        scores.append(np.asarray(out["scores"])[rows, cols])
        positive.append(batch["labels"][rows, cols])
        classes.append(cols)
        loss_sum += float(out["loss_sum"])
        num_segments += int(batch["weights"].sum())
    if not num_segments:
        raise ValueError(
            "no segments in the eval data: segment evaluation needs 2019-style frame-level "
            "records with segment_start_times / segment_labels / segment_scores"
        )
    scores, positive, classes = (np.concatenate(x) for x in (scores, positive, classes))
    result = {
        "step": step,
        "segment_map": metrics.segment_map(scores, positive, classes, k=SEGMENTS_PER_CLASS),
        "loss": loss_sum / max(len(scores), 1),  # mean cross-entropy per rated pair
        "num_segments": num_segments,
        "num_rated_pairs": int(len(scores)),
        "num_rated_positive": int(np.count_nonzero(positive)),
        "num_classes_rated_positive": int(len(np.unique(classes[positive != 0]))),
    }
    if bad is not None:
        result["bad_records"] = bad.count
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"segments_step_{step}.json"), "w") as f:
        json.dump(result, f, indent=2)
    logging.info("Wrote %s/segments_step_%d.json", out, step)
    return result


def predict_segments(
    config: ml_collections.ConfigDict,
    workdir: str,
    step: int | None = None,
    out: str | None = None,
) -> str:
    """Writes the Kaggle `Class,Segments` CSV for the eval data's segments; returns its path."""
    par, state, step = inference.restore(config, workdir, step)
    batches, bad = _batches(config)
    classes = segments.segment_classes(config.data.num_classes, config.data.segment_classes)
    names, all_scores = [], []
    for batch in batches:
        scores = np.asarray(par.eval_step(state, par.put_batch(batch))["scores"])
        valid = np.flatnonzero(batch["weights"])
        all_scores.append(scores[np.ix_(valid, classes)])
        names += [f"{batch['ids'][r]}:{batch['segment_starts'][r]}" for r in valid]
    if not names:
        raise ValueError("no segments in the eval data to predict")
    scores = np.concatenate(all_scores)
    names = np.array(names)
    out = out or os.path.join(workdir, f"segment_predictions_step_{step}.csv")
    tmp = out + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Class", "Segments"])
        for j, c in enumerate(classes):
            order = _top_descending(scores[:, j], SEGMENTS_PER_CLASS)
            w.writerow([int(c), " ".join(names[order])])
    os.replace(tmp, out)  # complete files only
    logging.info("Wrote predictions of %d segments, %d classes: %s", len(names), len(classes), out)
    return out


def _top_descending(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first; ties keep the earlier segment."""
    order = np.argsort(-scores, kind="stable")
    return order[:k]
