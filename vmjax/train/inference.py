"""Evaluating and predicting with a saved checkpoint: `vmjax.main --mode eval|predict`.

eval: GAP@20, mAP, Hit@1, PERR, precision/recall/F1 at a threshold and per-class AP of a
  checkpoint on the eval data -> WORKDIR/eval/step_<N>.json and per_class_ap_step_<N>.csv.
predict: the Kaggle video-level file (`VideoId,LabelConfidencePairs`, each row the top 20
  `label score` pairs by descending score) -> WORKDIR/predictions_step_<N>.csv, and with
  top_k_jsonl also one JSON line per video with class names.
Both read a pixel config's videos as config.eval's test views (num_clips x num_crops, scores
averaged per video: vmjax.data.views); the evaluations during training read one view.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from vmjax import compress, trained
from vmjax.data import pipeline, synthetic
from vmjax.data.views import ViewSpec, average, first_view
from vmjax.train import evaluate, inputs, parallel
from vmjax.train import state as state_lib

KAGGLE_TOP_K = 20


def restore(config: ml_collections.ConfigDict, workdir: str, step: int | None = None):
    """(placement, state on the devices, step) of checkpoint `step` (default: the newest good).

    The parameters come from shapes (vmjax.trained), never through the run's optimizer; a
    quantization-aware run evaluates with its fake-quantized forward pass, as it trained.
    """
    run = trained.load(workdir, step, config)
    model, params = run.model, run.params
    method = compress.method(config)
    if method in ("qat", "ptq"):
        from vmjax.compress import quantization

        if method == "qat":  # as it trained: fake-quantized matmuls on its float parameters
            model = quantization.qat_model(model, config.compress)
        else:  # int8 parameters, as the PTQ run evaluated when it was made
            example = trained.example_inputs(config)
            model, params = quantization.deployed(config, model, params, example)
    par = parallel.create(config, model, None)
    state = state_lib.TrainState(
        step=np.int32(run.step),
        params=params,
        opt_state=None,
        model_state=run.model_state,
        rng=None,
    )
    logging.info("Restored %s", os.path.join(run.run.checkpoint_dir, str(run.step)))
    return par, par.put_state(state), run.step


def class_names(config: ml_collections.ConfigDict, data_dir: str | None) -> list[str]:
    """Names by class index ('' where unknown): a video-file run's vocabulary CSV, else what
    the data directory or the class count tells (synthetic.class_names)."""
    d = config.data
    if d.format == "video_files" and d.get("vocabulary"):
        from vmjax.data import video_files

        names = [""] * d.num_classes
        for name, index in video_files.read_vocabulary(d.vocabulary, d.num_classes).items():
            names[index] = name
        return names
    return synthetic.class_names(data_dir, d.num_classes)


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> dict:
    """Metrics of a checkpoint on the eval data, written under WORKDIR/eval/."""
    views = ViewSpec.from_config(config, jax.process_count())
    par, state, step = restore(config, workdir, step)
    _, eval_files, data_dir = inputs.resolve_data(config)
    # Class kinds belong to the embedded YT8M features, not to the synthetic videos.
    video = config.data.format == "video_files"
    kinds = synthetic.class_kinds(data_dir) if data_dir and not video else None

    def eval_fn(state, batch):
        return par.eval_step(state, par.put_batch(batch))

    result = evaluate.evaluate(
        eval_fn, state, eval_files, config, kinds, per_class=True, views=views
    )
    ap, positives = result.pop("per_class_ap"), result.pop("class_positives")
    result = {"step": step, **result}
    if views.num_views > 1:
        result["views"] = dataclasses.asdict(views)
    if jax.process_index() == 0:
        out = os.path.join(workdir, "eval")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"step_{step}.json"), "w") as f:
            json.dump(result, f, indent=2)
        names = class_names(config, data_dir)
        with open(os.path.join(out, f"per_class_ap_step_{step}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Index", "Name", "Positives", "AP"])
            for c in np.flatnonzero(positives):
                w.writerow([c, names[c], int(positives[c]), f"{ap[c]:.6f}"])
        logging.info("Wrote %s/step_%d.json and per_class_ap_step_%d.csv", out, step, step)
    return result


def predict(
    config: ml_collections.ConfigDict,
    workdir: str,
    step: int | None = None,
    out: str | None = None,
    top_k_jsonl: bool = False,
) -> str:
    """Writes the Kaggle video-level CSV for the eval data; returns its path."""
    if jax.process_count() > 1:
        raise NotImplementedError("--mode predict runs in one process (video ids stay local)")
    views = ViewSpec.from_config(config)
    par, state, step = restore(config, workdir, step)
    _, eval_files, data_dir = inputs.resolve_data(config)
    video = config.data.format == "video_files"  # decoded clips: no feature BatchSpec
    spec = None if video else pipeline.BatchSpec.from_config(config.data)
    out = out or os.path.join(workdir, f"predictions_step_{step}.csv")
    names = class_names(config, data_dir) if top_k_jsonl else None
    tmp = out + ".tmp"
    jsonl = open(os.path.splitext(out)[0] + ".jsonl.tmp", "w") if top_k_jsonl else None
    rows = 0
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["VideoId", "LabelConfidencePairs"])
        videos = config.eval_batch_size // views.num_views  # rows: views of whole videos
        batches = inputs.eval_stream(config, spec, eval_files, videos, views=views)
        for batch in batches:
            views_out = par.eval_step(state, par.put_batch(batch))
            scores = average(views_out["scores"], views_out.get("logits"), views)
            ids, weights = first_view(batch["ids"], views), first_view(batch["weights"], views)
            top = np.argsort(-scores, axis=1, kind="stable")[:, :KAGGLE_TOP_K]
            for r in np.flatnonzero(weights):
                pairs = " ".join(f"{c} {scores[r, c]:.6f}" for c in top[r])
                w.writerow([ids[r], pairs])
                if jsonl:
                    classes = [
                        {"index": int(c), "name": names[c], "score": round(float(scores[r, c]), 6)}
                        for c in top[r]
                    ]
                    jsonl.write(json.dumps({"id": str(ids[r]), "top": classes}) + "\n")
                rows += 1
    os.replace(tmp, out)  # complete files only
    if jsonl:
        jsonl.close()
        os.replace(jsonl.name, os.path.splitext(out)[0] + ".jsonl")
    logging.info("Wrote %d videos' predictions to %s", rows, out)
    return out
