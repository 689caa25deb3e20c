"""End to end on synthetic videos: pixels model -> vmjax.extract -> a feature-level model.

  python benchmarks/extracted_features.py            # ~10 minutes on 2 CPU cores
  python benchmarks/extracted_features.py --pixel_steps 100 --feature_steps 100   # quicker

1. trains `configs/vivit_pixels.py:smoke,cnn_lstm` (CNN + LSTM on the synthetic mp4s of
   vmjax.data.synthetic_video: 11 classes, 4 labels per video) into OUT/pixels;
2. extracts the train and validate videos into YouTube-8M records with that run's frame
   encoder (python -m vmjax.extract; the validate split reuses the train split's PCA);
3. trains feature-level models of `configs/yt8m.py` (frame_logistic, lstm) on the records;
4. prints GAP and Hit@1 of each model against chance computed from the label distribution
   (the class prior as scores, ties broken at random and averaged over draws; random scores),
   and each model's per-class AP on the validate split.

The tone classes are heard, not seen: the pixel model cannot get them, while the records carry
the audio (as PCA'd log-mel patches), so the feature models can.
"""

import argparse
import csv
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from vmjax import extract, metrics  # noqa: E402
from vmjax.data import synthetic_video  # noqa: E402
from vmjax.tools import configs  # noqa: E402
from vmjax.train import inference, loop  # noqa: E402

FEATURE_MODELS = ("frame_logistic", "lstm")


def get_config(name: str, arg: str):
    return configs.get_config(ROOT / "configs" / f"{name}.py", arg)


def read_labels(path: str, num_classes: int) -> np.ndarray:
    """uint8 [videos, classes] of a `path,labels` CSV."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.zeros([len(rows), num_classes], np.uint8)
    for i, row in enumerate(rows):
        labels[i, [int(x) for x in row["labels"].split()]] = 1
    return labels


def chance(train: np.ndarray, evals: np.ndarray, draws: int = 20) -> dict[str, float]:
    """GAP and Hit@1 of the train class prior as scores, and of uniformly random scores."""
    rng = np.random.default_rng(0)
    prior = train.mean(0)
    out = {"prior_gap": 0.0, "prior_hit_at_1": 0.0, "random_gap": 0.0, "random_hit_at_1": 0.0}
    for _ in range(draws):
        # Every video gets the same prior scores: a tiny jitter breaks the ties at random.
        scores = prior + 1e-6 * rng.random(evals.shape)
        out["prior_gap"] += metrics.gap(scores, evals) / draws
        out["prior_hit_at_1"] += metrics.hit_at_one(scores, evals) / draws
        scores = rng.random(evals.shape)
        out["random_gap"] += metrics.gap(scores, evals) / draws
        out["random_hit_at_1"] += metrics.hit_at_one(scores, evals) / draws
    return out


def per_class_ap(config, workdir: str) -> np.ndarray:
    """AP of each class on the eval split (the checkpoint evaluated again, per class)."""
    step = inference.evaluate_checkpoint(config, workdir)["step"]
    with open(os.path.join(workdir, "eval", f"per_class_ap_step_{step}.csv"), newline="") as f:
        return np.array([float(row["AP"]) for row in csv.DictReader(f)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="working directory (default: a temp dir)")
    parser.add_argument(
        "--num_videos", type=int, default=512, help="synthetic videos (both splits)"
    )
    parser.add_argument("--pixel_steps", type=int, default=300, help="cnn_lstm training steps")
    parser.add_argument("--feature_steps", type=int, default=300, help="feature model steps")
    parser.add_argument("--workers", type=int, default=1, help="extract: decoding processes")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="vmjax-extracted-")
    os.makedirs(out, exist_ok=True)
    timings = {}
    start = time.perf_counter()

    pixels = get_config("vivit_pixels", "smoke,cnn_lstm")
    pixels.data.cache_dir = os.path.join(out, "cache")
    pixels.data.synthetic_video.num_videos = args.num_videos
    pixels.num_train_steps = args.pixel_steps
    pixels.eval_every = pixels.checkpoint_every = args.pixel_steps
    pixel_workdir = os.path.join(out, "pixels")
    t = time.perf_counter()
    pixel_result = loop.train_and_evaluate(pixels, pixel_workdir)
    timings["train_pixels"] = time.perf_counter() - t

    data_dir = synthetic_video.ensure(
        pixels.data.cache_dir, log=lambda s: None, **pixels.data.synthetic_video.to_dict()
    )
    features = os.path.join(out, "features")
    for split in ("train", "validate"):
        t = time.perf_counter()
        summary = extract.extract(
            os.path.join(data_dir, f"{split}.csv"),
            features,
            pixel_workdir,
            split=split,
            shard_size=128,
            workers=args.workers,
            progress=False,
        )
        timings[f"extract_{split}"] = time.perf_counter() - t
        timings[f"extract_{split}_videos_per_s"] = (
            summary["videos_written"] / timings[f"extract_{split}"]
        )

    results, configs = {}, {}
    for name in FEATURE_MODELS:
        c = get_config("yt8m", name)
        c.data.train_pattern = os.path.join(features, "frame", "train-*.tfrecord")
        c.data.eval_pattern = os.path.join(features, "frame", "validate-*.tfrecord")
        c.data.num_classes = len(synthetic_video.CLASSES)
        c.data.max_frames = 8  # the 2-second videos have 2 frames at 1 fps
        c.data.shuffle_buffer = 512
        c.batch_size = 32
        c.eval_batch_size = 128
        c.num_train_steps = args.feature_steps
        c.eval_every = c.checkpoint_every = args.feature_steps
        c.log_every = 50
        c.optimizer.warmup_steps = 30
        c.model.hidden_size = 128
        c.model.num_layers = 1
        t = time.perf_counter()
        configs[name] = c
        results[name] = loop.train_and_evaluate(c, os.path.join(out, f"features_{name}"))
        timings[f"train_{name}"] = time.perf_counter() - t

    num_classes = len(synthetic_video.CLASSES)
    base = chance(
        read_labels(os.path.join(data_dir, "train.csv"), num_classes),
        read_labels(os.path.join(data_dir, "validate.csv"), num_classes),
    )
    aps = {"cnn_lstm": per_class_ap(pixels, pixel_workdir)}
    for name in FEATURE_MODELS:
        aps[name] = per_class_ap(configs[name], os.path.join(out, f"features_{name}"))
    timings["total"] = time.perf_counter() - start
    rows = [("cnn_lstm on pixels (the encoder's own run)", pixel_result)]
    rows += [(f"{name} on extracted features", results[name]) for name in FEATURE_MODELS]
    print(f"\nwork directory: {out}")
    print(f"{'model':48s} {'GAP':>7s} {'Hit@1':>7s}")
    for label, r in rows:
        print(f"{label:48s} {r['gap']:7.4f} {r['hit_at_1']:7.4f}")
    print(
        f"{'chance: train class prior as scores':48s} {base['prior_gap']:7.4f} "
        f"{base['prior_hit_at_1']:7.4f}"
    )
    print(f"{'chance: random scores':48s} {base['random_gap']:7.4f} {base['random_hit_at_1']:7.4f}")
    print(f"\nper-class AP on validate: {'class':16s} " + " ".join(f"{k:>14s}" for k in aps))
    for i, name in enumerate(synthetic_video.CLASSES):
        print(f"{'':26s}{name:16s} " + " ".join(f"{ap[i]:14.3f}" for ap in aps.values()))
    print("seconds: " + json.dumps({k: round(v, 1) for k, v in timings.items()}))


if __name__ == "__main__":
    main()
