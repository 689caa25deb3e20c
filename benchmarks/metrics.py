"""Times Evaluator.update over N x C random scores in batches, plus result().

Usage: python benchmarks/metrics.py [--num_videos 1112356] [--num_classes 3862] [--batch_size 4096]
Only the metric calls are timed; generating the random batches is not.
"""

import argparse
import time

import numpy as np

from vmjax.metrics import Evaluator


def main() -> None:
    """Streams random batches through an Evaluator and prints timings."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num_videos", type=int, default=1_112_356)  # YT8M 2018 validate
    parser.add_argument("--num_classes", type=int, default=3862)
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--labels_per_video", type=int, default=3)  # YT8M averages ~3
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    evaluator = Evaluator(args.num_classes, args.k)
    scores = np.empty((args.batch_size, args.num_classes), np.float32)
    labels = np.zeros((args.batch_size, args.num_classes), np.float32)
    update_seconds = 0.0
    for start in range(0, args.num_videos, args.batch_size):
        rows = min(args.batch_size, args.num_videos - start)
        # Like an eval loop: the last batch is padded and masked with weights.
        rng.random(out=scores, dtype=np.float32)
        labels[:] = 0
        positives = rng.integers(0, args.num_classes, (args.batch_size, args.labels_per_video))
        np.put_along_axis(labels, positives, 1.0, axis=1)
        scores[labels > 0] += 0.5  # positives tend to score higher, as after training
        weights = (np.arange(args.batch_size) < rows).astype(np.float32)
        t0 = time.perf_counter()
        evaluator.update(scores, labels, weights)
        update_seconds += time.perf_counter() - t0

    t0 = time.perf_counter()
    result = evaluator.result()
    result_seconds = time.perf_counter() - t0
    # A second call shows how much of the first was first-touch page faults.
    t0 = time.perf_counter()
    evaluator.result()
    result_again_seconds = time.perf_counter() - t0
    total = update_seconds + result_seconds
    print(f"num_videos {args.num_videos}")
    print(f"num_classes {args.num_classes}")
    print(f"batch_size {args.batch_size}")
    print(f"update_seconds {update_seconds:.3f}")
    print(f"result_seconds {result_seconds:.3f}")
    print(f"result_again_seconds {result_again_seconds:.3f}")
    print(f"metric_seconds {total:.3f}")
    print(f"videos_per_s {args.num_videos / total:.0f}")
    print(" ".join(f"{name} {value:.5f}" for name, value in result.items() if name != "num_videos"))


if __name__ == "__main__":
    main()
