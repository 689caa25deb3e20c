"""Input pipeline throughput: videos/s through read, CRC check, parse, pad and batch.

  python benchmarks/data_throughput.py --pattern '/tmp/yt8m/frame/train-*.tfrecord' --level frame
  python benchmarks/data_throughput.py --pattern GLOB --cores 1 --workers 0 \\
      --reference_python /tmp/tfvenv/bin/python      # per core, against TensorFlow's pipeline

Runs vmjax's training pipeline (vmjax.data.pipeline.train_dataset: interleaved CRC-checked
TFRecord reads, TF-free decoding, padding to max_frames, uint8 batches) for --seconds and prints
`videos_per_s X` and `videos_per_s_per_core X`. With --reference_python, the same files also go
through the YT8M starter's tf.data pipeline (benchmarks/tf_reference_pipeline.py, run by that
Python, which must have TensorFlow) under the same CPU pinning, and `ratio X` is ours / theirs.
--cores K pins this process and the reference to the first K cores.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _log(msg: str) -> None:
    print(f"data_throughput: {msg}", file=sys.stderr, flush=True)


def run_ours(args) -> float:
    from vmjax.data import pipeline

    files = pipeline.resolve_files(args.pattern, "--pattern")
    spec = pipeline.BatchSpec(
        level=args.level,
        num_classes=args.num_classes,
        max_frames=args.max_frames,
        max_text_tokens=32,
        text_vocab_size=8192,
    )
    ds = pipeline.train_dataset(
        files,
        spec,
        batch_size=args.batch_size,
        seed=0,
        shuffle_buffer=args.shuffle_buffer,
        cycle_length=min(8, len(files)),
        prefetch=2,
        workers=args.workers,
    )
    it = iter(ds)
    next(it)  # start-up (worker processes, first files) is not timed
    videos, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        batch = next(it)
        videos += len(batch["weights"])
    seconds = time.perf_counter() - start
    if hasattr(it, "close"):
        it.close()
    return videos / seconds


def run_reference(args) -> float:
    cmd = [
        args.reference_python,
        str(ROOT / "benchmarks" / "tf_reference_pipeline.py"),
        f"--pattern={args.pattern}",
        f"--level={args.level}",
        f"--batch_size={args.batch_size}",
        f"--max_frames={args.max_frames}",
        f"--num_classes={args.num_classes}",
        f"--seconds={args.seconds}",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)  # inherits the pinning
    if out.returncode:
        raise SystemExit(f"reference pipeline failed:\n{out.stderr[-3000:]}")
    values = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    return float(values["videos_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", required=True, help="glob of YT8M TFRecord files")
    parser.add_argument("--level", default="frame", choices=["frame", "video"])
    parser.add_argument("--workers", type=int, default=0, help="grain worker processes")
    parser.add_argument("--cores", type=int, default=0, help="pin to the first K cores (0: all)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--max_frames", type=int, default=300)
    parser.add_argument("--num_classes", type=int, default=3862)
    parser.add_argument("--shuffle_buffer", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=20, help="timed seconds per pipeline")
    parser.add_argument("--reference_python", help="a Python with TensorFlow, for the reference")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if args.cores:
        if args.cores > len(cores):
            parser.error(f"--cores {args.cores}: only {len(cores)} available")
        cores = cores[: args.cores]
        os.sched_setaffinity(0, cores)
    _log(
        f"{args.level} level, batch {args.batch_size}, {len(cores)} core(s), {args.workers} workers"
    )
    ours = run_ours(args)
    print(f"cores {len(cores)}")
    print(f"workers {args.workers}")
    print(f"videos_per_s {ours:.1f}")
    print(f"videos_per_s_per_core {ours / len(cores):.1f}")
    if args.reference_python:
        _log("running the TensorFlow reference pipeline")
        theirs = run_reference(args)
        print(f"reference_videos_per_s {theirs:.1f}")
        print(f"reference_videos_per_s_per_core {theirs / len(cores):.1f}")
        print(f"ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
