"""Classifier evaluation: GAP@20, mAP, Hit@1, PERR and loss over one pass of the eval data."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from vmjax import metrics
from vmjax.data import pipeline
from vmjax.data.views import ViewSpec, average, first_view
from vmjax.errors import DataError
from vmjax.train.inputs import eval_batches_in_step, eval_stream


def evaluate(
    eval_fn,
    state,
    files: list[str],
    config: ml_collections.ConfigDict,
    class_groups: dict[str, np.ndarray] | None = None,
    bad_records: pipeline.BadRecords | None = None,  # or video_files.BadFiles
    per_class: bool = False,
    views: ViewSpec | None = None,
) -> dict:
    """GAP@20, mAP, Hit@1, PERR and mean loss over one pass of the eval data `files`.

    Each process reads its share (eval_stream).

    `eval_fn(state, batch)` takes this process's batch and returns the global batch's `scores`,
    `labels`, `weights`, `loss_sum` and `count` (gathered over processes; also `logits` for
    views averaged by score), so every process computes the metrics of the whole evaluation set.
    With `class_groups` (name -> class indices), also `gap_<name>`: GAP@20 over those
    classes' columns only (e.g. per class kind of the embedded data).
    With `views` (`--mode eval` of a pixel config: config.eval), each video is read as several
    test views whose scores are averaged before the metrics (vmjax.data.views); `loss` is then
    the mean over all views' losses.
    """
    views = views or ViewSpec()
    video = config.data.format == "video_files"
    spec = None if video else pipeline.BatchSpec.from_config(config.data)
    evaluator = metrics.Evaluator(config.data.num_classes, threshold=0.5 if per_class else None)
    groups = {
        name: (cols, metrics.Evaluator(len(cols)))
        for name, cols in (class_groups or {}).items()
        if len(cols)
    }
    loss_sum = count = 0.0
    batch_size = config.eval_batch_size // jax.process_count()
    # batch_size rows: whole videos of num_views rows each
    batches = eval_stream(config, spec, files, batch_size // views.num_views, bad_records, views)
    for batch in eval_batches_in_step(batches, config.data, batch_size):
        out = eval_fn(state, batch)
        scores = average(out["scores"], out.get("logits"), views)
        labels, weights = (first_view(out[k], views) for k in ("labels", "weights"))
        if not np.isfinite(scores[weights > 0]).all():
            raise FloatingPointError("eval scores are NaN: the parameters have diverged")
        evaluator.update(scores, labels, weights=weights)
        for cols, group in groups.values():
            group.update(scores[:, cols], labels[:, cols], weights=weights)
        loss_sum += float(out["loss_sum"])
        count += float(out["count"])
    if count == 0:
        skipped = f" ({bad_records.count} bad records skipped)" if bad_records else ""
        raise DataError(
            f"the eval files hold no readable video{skipped}: {_describe(files)} "
            "(config.data.eval_pattern)"
        )
    result = evaluator.result()
    out = {
        "gap": result["gap"],
        "map": result["map"],
        "hit_at_1": result["hit_at_1"],
        "perr": result["perr"],
        "loss": loss_sum / max(count, 1.0),
        "num_videos": int(result["num_videos"]),
    }
    for name, (_, group) in groups.items():
        out[f"gap_{name}"] = group.result()["gap"]
    if per_class:  # also precision/recall/F1 of scores >= 0.5 and per-class AP arrays
        out.update({k: result[k] for k in ("precision", "recall", "f1")})
        out["per_class_ap"], out["class_positives"] = evaluator.per_class_ap()
    return out


def _describe(files: list) -> str:
    """The first few files (or video items) of a list, for messages."""
    names = [f[0] if isinstance(f, tuple) else f for f in files[:3]]
    more = f" and {len(files) - 3} more" if len(files) > 3 else ""
    return ", ".join(str(n) for n in names) + more
