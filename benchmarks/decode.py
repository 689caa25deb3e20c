"""Video decoding throughput: frames/s of vmjax's video-file pipeline against a plain PyAV loop.

  python -m vmjax.data.synthetic_video --out /tmp/vids --num_videos 64 --size 128 --seconds 4
  python benchmarks/decode.py --videos /tmp/vids
  python benchmarks/decode.py --csv /tmp/vids/labels.csv --num_frames 16 --sampling uniform

Both read the same files in the same run, alternately `--repeats` times (the median is printed):

- pyav: for each file, `av.open`, decode every frame of the first video stream (FFmpeg codec
  threads on, as in ours) and `to_ndarray` it as RGB at `--size` (no resizing by default);
- ours: one evaluation pass of `vmjax.data.video_files.video_dataset` (decode_video per file,
  centre crop, batching, grain reading), in this process or `--workers` processes.

By default ours keeps every frame too (sampling 'stride' 1, num_frames = the longest video's),
so both do the same decoding and the ratio is the pipeline's overhead. With `--sampling uniform
--num_frames 16` ours stops after the last wanted frame and converts only 16 frames per video;
frames/s then counts the frames each delivers, and `ratio_videos_per_s` is the fair comparison.
Printed: `pyav_frames_per_s`, `ours_frames_per_s`, the same per video, `ratio_ours_over_pyav`
(of frames/s) and `ratio_videos_per_s`.
"""

import argparse
import glob
import os
import statistics
import sys
import time

import av

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")


def _log(msg: str) -> None:
    print(f"decode: {msg}", file=sys.stderr, flush=True)


def list_files(args) -> list[str]:
    if args.csv:
        from vmjax.data import video_files

        # Labels do not matter here; any class index is accepted.
        return [p for p, _ in video_files.read_label_csv(args.csv, num_classes=1 << 30)]
    pattern = os.path.join(os.path.expanduser(args.videos), "**", "*")
    files = sorted(p for p in glob.glob(pattern, recursive=True) if p.endswith(VIDEO_SUFFIXES))
    if not files:
        raise SystemExit(f"--videos {args.videos}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    return files


def probe(path: str) -> tuple[int, int, int]:
    """(frames, height, width) of the first video stream, from the header."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        return stream.frames, stream.height, stream.width


def run_pyav(files: list[str], size: tuple[int, int]) -> int:
    """Decodes every frame of every file to RGB; returns the number of frames."""
    height, width = size
    frames = 0
    for path in files:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
                frames += 1
    return frames


def run_ours(files: list[str], args, size: tuple[int, int], num_frames: int) -> int:
    """One evaluation pass of the pipeline; returns the number of real frames delivered."""
    from vmjax.data import video_files

    ds = video_files.video_dataset(
        [(path, ()) for path in files],
        batch_size=args.batch_size,
        num_classes=1,
        num_frames=num_frames,
        size=size,
        sampling=args.sampling,
        stride=1,
        fps=args.fps,
        seed=0,
        process_index=0,
        process_count=1,
        train=False,
        prefetch=2,
        workers=args.workers,
    )
    frames = 0
    it = iter(ds)
    for batch in it:
        frames += int(batch["mask"].sum())
    if hasattr(it, "close"):
        it.close()
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", help="folder searched (recursively) for video files")
    source.add_argument("--csv", help="a path,labels CSV (paths relative to its folder)")
    parser.add_argument("--limit", type=int, default=0, help="use the first N files (0: all)")
    parser.add_argument(
        "--num_frames", type=int, default=0, help="frames per clip (0: the longest video's)"
    )
    parser.add_argument("--sampling", default="stride", choices=["stride", "uniform", "fps"])
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second (--sampling fps)")
    parser.add_argument(
        "--size", type=int, default=0, help="square frame side (0: the first video's size)"
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="grain worker processes (ours)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed passes")
    args = parser.parse_args()

    files = list_files(args)
    if args.limit:
        files = files[: args.limit]
    longest = max(probe(p)[0] for p in files)
    _, height, width = probe(files[0])
    size = (args.size, args.size) if args.size else (height, width)
    num_frames = args.num_frames or longest
    _log(
        f"{len(files)} files, {num_frames} frames per clip ({args.sampling}), {size[0]}x{size[1]}"
        f", workers {args.workers}, {len(os.sched_getaffinity(0))} cores"
    )
    run_pyav(files[:2], size)  # imports, codec start-up and file cache are not timed
    run_ours(files[:2], args, size, num_frames)
    times = {"pyav": [], "ours": []}
    frames = {}
    for _ in range(args.repeats):
        for name, fn in (
            ("pyav", lambda: run_pyav(files, size)),
            ("ours", lambda: run_ours(files, args, size, num_frames)),
        ):
            start = time.perf_counter()
            frames[name] = fn()
            times[name].append(time.perf_counter() - start)
    rates, video_rates = {}, {}
    for name in ("pyav", "ours"):
        seconds = statistics.median(times[name])
        rates[name], video_rates[name] = frames[name] / seconds, len(files) / seconds
        print(f"{name}_frames {frames[name]}")
        print(f"{name}_seconds_each {' '.join(f'{t:.3f}' for t in times[name])}")
        print(f"{name}_frames_per_s {rates[name]:.1f}")
        print(f"{name}_videos_per_s {video_rates[name]:.2f}")
    print(f"ratio_ours_over_pyav {rates['ours'] / rates['pyav']:.3f}")
    print(f"ratio_videos_per_s {video_rates['ours'] / video_rates['pyav']:.3f}")
    if args.sampling == "stride" and not args.num_frames and frames["ours"] != frames["pyav"]:
        _log(f"warning: ours delivered {frames['ours']} frames, pyav decoded {frames['pyav']}")


if __name__ == "__main__":
    main()
