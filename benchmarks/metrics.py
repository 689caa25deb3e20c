"""Times Evaluator.update over N x C random scores in batches, plus result().

Usage: python benchmarks/metrics.py [--num_videos 1112356] [--num_classes 3862] [--batch_size 4096]
Only the metric calls are timed; generating the random batches is not. In the same run, the
starter code's algorithm (benchmarks/starter_metrics_reference.py) is timed on the first
--reference_videos videos and its time scaled linearly to --num_videos (it is linear: per-video
Python loops and heap pushes, plus one sort per class at the end).
"""

import argparse
import time

import numpy as np
from starter_metrics_reference import StarterMetrics

from vmjax.metrics import Evaluator


def batches(args):
    """(scores, labels uint8, weights) batches; the last padded and masked, as in eval."""
    rng = np.random.default_rng(args.seed)
    scores = np.empty((args.batch_size, args.num_classes), np.float32)
    # uint8 0/1 labels, as vmjax.data.pipeline's batches carry them.
    labels = np.zeros((args.batch_size, args.num_classes), np.uint8)
    for start in range(0, args.num_videos, args.batch_size):
        rows = min(args.batch_size, args.num_videos - start)
        rng.random(out=scores, dtype=np.float32)
        labels[:] = 0
        positives = rng.integers(0, args.num_classes, (args.batch_size, args.labels_per_video))
        np.put_along_axis(labels, positives, 1, axis=1)
        scores[labels > 0] += 0.5  # positives tend to score higher, as after training
        yield scores, labels, (np.arange(args.batch_size) < rows).astype(np.float32)


def main() -> None:
    """Streams random batches through an Evaluator and prints timings."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num_videos", type=int, default=1_112_356)  # YT8M 2018 validate
    parser.add_argument("--num_classes", type=int, default=3862)
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--labels_per_video", type=int, default=3)  # YT8M averages ~3
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="default: cores, at most 4")
    parser.add_argument("--reference_videos", type=int, default=8192, help="0: skip it")
    args = parser.parse_args()

    evaluator = Evaluator(args.num_classes, args.k, threads=args.threads)
    update_seconds = 0.0
    for scores, labels, weights in batches(args):
        t0 = time.perf_counter()
        evaluator.update(scores, labels, weights)
        update_seconds += time.perf_counter() - t0

    t0 = time.perf_counter()
    result = evaluator.result()
    result_seconds = time.perf_counter() - t0
    total = update_seconds + result_seconds
    print(f"num_videos {args.num_videos}")
    print(f"num_classes {args.num_classes}")
    print(f"batch_size {args.batch_size}")
    print(f"threads {evaluator.threads}")
    print(f"update_seconds {update_seconds:.3f}")
    print(f"result_seconds {result_seconds:.3f}")
    print(f"metric_seconds {total:.3f}")
    print(f"videos_per_s {args.num_videos / total:.0f}")
    print(" ".join(f"{name} {value:.5f}" for name, value in result.items() if name != "num_videos"))
    if args.reference_videos:
        reference = StarterMetrics(args.num_classes, args.k)
        subset = argparse.Namespace(**{**vars(args), "num_videos": args.reference_videos})
        reference_seconds = 0.0
        for scores, labels, weights in batches(subset):
            keep = weights > 0
            t0 = time.perf_counter()
            reference.accumulate(scores[keep], labels[keep])
            reference_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        reference.result()
        reference_seconds += time.perf_counter() - t0
        scaled = reference_seconds * args.num_videos / args.reference_videos
        print(f"starter_seconds_on_{args.reference_videos} {reference_seconds:.3f}")
        print(f"starter_seconds_scaled {scaled:.1f}")
        print(f"ratio_starter_over_ours {scaled / total:.1f}")


if __name__ == "__main__":
    main()
