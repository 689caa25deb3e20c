"""Input pipeline throughput: videos/s through read, CRC check, parse, pad and batch.

  python benchmarks/data_throughput.py --pattern '/tmp/yt8m/frame/train-*.tfrecord' --level frame
  python benchmarks/data_throughput.py --pattern GLOB --cores 1 --workers 0 \\
      --reference_python /tmp/tfvenv/bin/python      # per core, against TensorFlow's pipeline
  python benchmarks/data_throughput.py --pattern GLOB --table [--reference_python PY]

Runs vmjax's training pipeline (vmjax.data.pipeline.train_dataset: interleaved CRC-checked
TFRecord reads, TF-free decoding, padding to max_frames, uint8 batches) for --seconds and prints
`videos_per_s X` and `videos_per_s_per_core X`. With --reference_python, the same files also go
through the YT8M starter's tf.data pipeline (benchmarks/tf_reference_pipeline.py, run by that
Python, which must have TensorFlow) under the same CPU pinning, and `ratio X` is ours / theirs.
--cores K pins this process and the reference to the first K cores. --workers defaults to the
shipped config's data.workers ('auto': vmjax.data.pipeline.worker_count picks from the cores).

--table runs one pinned subprocess per row (1 core, 2 cores, all cores) with that default
worker setting, prints videos/s per row (and the reference's with --reference_python) and the
2-core / 1-core ratio: how the defaults a user gets scale with cores; then the same ratio for
two plain workloads (a Python loop, 8 MB memory copies) run as 1 and 2 pinned processes: what
the machine itself gives a second core.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from vmjax.configs import yt8m

ROOT = Path(__file__).resolve().parents[1]


def _log(msg: str) -> None:
    print(f"data_throughput: {msg}", file=sys.stderr, flush=True)


def run_ours(args) -> tuple[float, int]:
    """(videos/s, worker processes used)."""
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
    for _ in range(max(ds.workers, 1)):  # start-up (worker processes, first files): not timed
        next(it)
    videos, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        batch = next(it)
        videos += len(batch["weights"])
    seconds = time.perf_counter() - start
    if hasattr(it, "close"):
        it.close()
    return videos / seconds, ds.workers


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
    parser.add_argument(
        "--workers",
        type=_workers,
        default=DEFAULT_WORKERS,
        help=f"grain worker processes, or 'auto' (default: the config's {DEFAULT_WORKERS!r})",
    )
    parser.add_argument(
        "--table", action="store_true", help="rows for 1, 2 and all cores (one process each)"
    )
    parser.add_argument("--cores", type=int, default=0, help="pin to the first K cores (0: all)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--max_frames", type=int, default=300)
    parser.add_argument("--num_classes", type=int, default=3862)
    parser.add_argument("--shuffle_buffer", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=20, help="timed seconds per pipeline")
    parser.add_argument("--reference_python", help="a Python with TensorFlow, for the reference")
    args = parser.parse_args()
    if args.table:
        table(args)
        return
    cores = sorted(os.sched_getaffinity(0))
    if args.cores:
        if args.cores > len(cores):
            parser.error(f"--cores {args.cores}: only {len(cores)} available")
        cores = cores[: args.cores]
        os.sched_setaffinity(0, cores)
    _log(
        f"{args.level} level, batch {args.batch_size}, {len(cores)} core(s), "
        f"data.workers={args.workers}"
    )
    ours, workers = run_ours(args)
    print(f"cores {len(cores)}")
    print(f"workers {workers}")
    print(f"videos_per_s {ours:.1f}")
    print(f"videos_per_s_per_core {ours / len(cores):.1f}")
    if args.reference_python:
        _log("running the TensorFlow reference pipeline")
        theirs = run_reference(args)
        print(f"reference_videos_per_s {theirs:.1f}")
        print(f"reference_videos_per_s_per_core {theirs / len(cores):.1f}")
        print(f"ratio {ours / theirs:.2f}")


DEFAULT_WORKERS = yt8m.get_config().data.workers


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: give an int >= 0 or 'auto'")
    return n


def _busy(work: str, core: int, seconds: float, out) -> None:
    """Pinned to `core`, does `work` for `seconds`; puts the number of rounds done."""
    import numpy as np

    os.sched_setaffinity(0, [core])
    src = np.ones(8 << 20, np.uint8)  # 8 MB: beyond L2, as a batch of frames is
    dst = np.empty_like(src)
    rounds, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        if work == "python loop":
            sum(range(10_000))
        else:
            np.copyto(dst, src)
        rounds += 1
    out.put(rounds)


def machine_scaling(seconds: float) -> dict[str, float]:
    """Rounds/s of the same work in 2 processes on 2 cores over 1 process on 1 core: what the
    machine gives a second core (shared memory bandwidth, caches, or SMT siblings), for a pure
    Python loop and for 8 MB memory copies."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    cores = sorted(os.sched_getaffinity(0))[:2]
    ratios = {}
    for work in ("python loop", "memory copy"):
        done = []
        for k in (1, 2):
            out = ctx.Queue()
            procs = [ctx.Process(target=_busy, args=(work, c, seconds, out)) for c in cores[:k]]
            for proc in procs:
                proc.start()
            done.append(sum(out.get() for _ in procs))
            for proc in procs:
                proc.join()
        ratios[work] = done[1] / done[0]
    return ratios


def table(args) -> None:
    """One pinned subprocess per core count; prints the rows and the 2-core / 1-core ratio."""
    available = len(os.sched_getaffinity(0))
    counts = sorted({k for k in (1, 2, available) if k <= available})
    passed = [
        f"--pattern={args.pattern}",
        f"--level={args.level}",
        f"--workers={args.workers}",
        f"--batch_size={args.batch_size}",
        f"--max_frames={args.max_frames}",
        f"--num_classes={args.num_classes}",
        f"--shuffle_buffer={args.shuffle_buffer}",
        f"--seconds={args.seconds}",
    ]
    if args.reference_python:
        passed.append(f"--reference_python={args.reference_python}")
    rows = {}
    for k in counts:
        _log(f"row: {k} core(s)")
        cmd = [sys.executable, str(Path(__file__).resolve()), *passed, f"--cores={k}"]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(f"the {k}-core run failed:\n{out.stderr[-3000:]}")
        rows[k] = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    ref = bool(args.reference_python)
    print(
        f"{args.level} level, batch {args.batch_size}, data.workers={args.workers}, "
        f"{args.seconds:g} s per row"
    )
    header = f"{'cores':>5} {'workers':>7} {'videos/s':>10}"
    print(header + (f" {'tf.data videos/s':>16} {'ours/tf.data':>12}" if ref else ""))
    for k, row in rows.items():
        line = f"{k:>5} {row['workers']:>7} {float(row['videos_per_s']):>10.1f}"
        if ref:
            theirs = float(row["reference_videos_per_s"])
            line += f" {theirs:>16.1f} {float(row['ratio']):>12.2f}"
        print(line)
    if 1 in rows and 2 in rows:
        one, two = float(rows[1]["videos_per_s"]), float(rows[2]["videos_per_s"])
        print(f"2 cores / 1 core: {two / one:.2f}x")
        for work, ratio in machine_scaling(min(args.seconds, 5.0)).items():
            print(f"2 cores / 1 core ({work}, the machine's own ceiling): {ratio:.2f}x")
        if ref:
            one = float(rows[1]["reference_videos_per_s"])
            two = float(rows[2]["reference_videos_per_s"])
            print(f"2 cores / 1 core (tf.data): {two / one:.2f}x")


if __name__ == "__main__":
    main()
