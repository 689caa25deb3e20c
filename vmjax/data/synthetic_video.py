"""Tiny real mp4 files of moving shapes with a tone, for testing the raw-video path end to end.

Each video shows one shape crossing the frame over a flat background and carries one sine tone.
It has four labels, one from each group of classes:

- shape: square or circle (seen in any single frame);
- colour: red, green or blue (seen in any single frame);
- direction: left_to_right or right_to_left. A right_to_left video is exactly the frames of a
  left_to_right one in reverse, so these classes are separable only by frame order;
- tone: the sine frequency of the audio track (heard only).

Files are h264 (yuv420p) with AAC audio, mono 16 kHz, under DIR/train/ and DIR/validate/.
DIR/labels.csv, DIR/train.csv and DIR/validate.csv hold `path,labels` rows (paths relative to
DIR, labels space-separated class indices); DIR/classes.csv holds `Index,Name`. The same seed
gives the same files, byte for byte, with the same PyAV/FFmpeg build.

    python -m vmjax.data.synthetic_video --out DIR [--num_videos 64 --seconds 2 --size 64 ...]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np

SHAPES = ("square", "circle")
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230)}
DIRECTIONS = ("left_to_right", "right_to_left")
TONES_HZ = (300, 600, 1200, 2400)  # about an octave apart: distinct VGGish mel bins
CLASSES = (*SHAPES, *COLOURS, *DIRECTIONS, *(f"tone_{hz}hz" for hz in TONES_HZ))
SPLITS = ("train", "validate")
SAMPLE_RATE = 16_000


@dataclasses.dataclass(frozen=True)
class Clip:
    """Everything that determines one video; `labels` are its class indices."""

    shape: str
    colour: str
    direction: str
    tone_hz: int
    rgb: tuple[int, int, int]  # the colour class's base colour, jittered
    background: int  # grey level
    radius: float  # half the side of a square, the radius of a circle (pixels)
    y: float  # vertical centre (pixels)
    x_from: float  # horizontal centre in the first and last frame of a left_to_right pass
    x_to: float
    amplitude: float
    phase: float
    audio_seed: int

    @property
    def labels(self) -> tuple[int, ...]:
        names = (self.shape, self.colour, self.direction, f"tone_{self.tone_hz}hz")
        return tuple(CLASSES.index(name) for name in names)


def sample_clip(rng: np.random.Generator, size: int) -> Clip:
    """A random clip for frames of `size` x `size` pixels."""
    colour = str(rng.choice(list(COLOURS)))
    jitter = rng.integers(-20, 21, size=3)
    radius = float(rng.uniform(0.12, 0.2) * size)
    return Clip(
        shape=str(rng.choice(SHAPES)),
        colour=colour,
        direction=str(rng.choice(DIRECTIONS)),
        tone_hz=int(rng.choice(TONES_HZ)),
        rgb=tuple(int(c) for c in np.clip(np.add(COLOURS[colour], jitter), 0, 255)),
        background=int(rng.integers(20, 90)),
        radius=radius,
        y=float(rng.uniform(radius, size - radius)),
        x_from=float(rng.uniform(radius, 0.35 * size)),
        x_to=float(rng.uniform(0.65 * size, size - radius)),
        amplitude=float(rng.uniform(0.2, 0.5)),
        phase=float(rng.uniform(0, 2 * np.pi)),
        audio_seed=int(rng.integers(2**31)),
    )


def render_frames(clip: Clip, *, num_frames: int, size: int) -> np.ndarray:
    """uint8 [num_frames, size, size, 3] RGB frames of the clip."""
    # Draw the left_to_right pass and reverse it, so that the two direction classes hold the
    # same frames and differ only in their order.
    x = np.linspace(clip.x_from, clip.x_to, num_frames)[:, None, None]  # [t, 1, 1]
    yy, xx = np.mgrid[:size, :size] + 0.5  # pixel centres
    dx, dy = np.abs(xx - x), np.abs(yy - clip.y)  # [t, size, size]
    if clip.shape == "square":
        inside = (dx <= clip.radius) & (dy <= clip.radius)
    else:
        inside = dx**2 + dy**2 <= clip.radius**2
    frames = np.where(inside[..., None], np.uint8(clip.rgb), np.uint8(clip.background))
    return frames[::-1].copy() if clip.direction == "right_to_left" else frames


def render_audio(clip: Clip, *, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [samples] mono: the clip's tone plus faint white noise."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    noise = np.random.default_rng(clip.audio_seed).normal(0.0, 0.005, t.shape)
    wave = clip.amplitude * np.sin(2 * np.pi * clip.tone_hz * t + clip.phase) + noise
    return wave.astype(np.float32)


def write_mp4(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    *,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> None:
    """Write uint8 [t, h, w, 3] RGB frames as h264/yuv420p, and float mono audio as AAC."""
    _, height, width, _ = frames.shape
    with av.open(os.fspath(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        # Files must not depend on the machine that wrote them: one thread (x264's output
        # depends on its thread count) and x264's C code, no assembly (asm=0): its output
        # differs between instruction sets, and with AVX-512 (an AMD EPYC, family 25 model 17)
        # the same frames gave different bytes from one call to the next. The clips are small.
        video.options = {
            "crf": "18",
            "preset": "veryfast",
            "threads": "1",
            "x264-params": "asm=0",
        }
        # Every stream must exist before the first packet is muxed (that writes the header).
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            samples = np.asarray(audio, np.float32)[None]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, 0
            container.mux(sound.encode(frame))  # PyAV cuts it into AAC's 1024-sample frames
            container.mux(sound.encode())


def generate(
    out: str | os.PathLike[str],
    *,
    num_videos: int = 64,
    seconds: float = 2.0,
    size: int = 64,
    fps: float = 8.0,
    seed: int = 0,
    validate_fraction: float = 0.25,
) -> list[dict[str, Any]]:
    """Write the videos and CSV files under `out`; returns one row per video.

    Args:
      validate_fraction: share of videos (rounded) that go to the validate split.
    """
    if num_videos < 1 or seconds <= 0 or fps <= 0:
        raise ValueError(
            f"need num_videos >= 1, seconds > 0, fps > 0; got {num_videos}, {seconds}, {fps}"
        )
    if size < 16 or size % 2:
        raise ValueError(f"size must be even (yuv420p) and >= 16, got {size}")
    if not 0 <= validate_fraction <= 1:
        raise ValueError(f"validate_fraction must be in [0, 1], got {validate_fraction}")
    num_frames = max(1, round(seconds * fps))
    num_validate = round(num_videos * validate_fraction)
    validate = {
        int(i) for i in np.random.default_rng([seed, 1]).permutation(num_videos)[:num_validate]
    }
    rows = []
    for split in SPLITS:
        os.makedirs(os.path.join(out, split), exist_ok=True)
    for i in range(num_videos):
        # One generator per video: video i does not change with --num_videos.
        clip = sample_clip(np.random.default_rng([seed, 0, i]), size)
        split = "validate" if i in validate else "train"
        path = f"{split}/video_{i:05d}.mp4"
        write_mp4(
            os.path.join(out, path),
            render_frames(clip, num_frames=num_frames, size=size),
            fps=fps,
            audio=render_audio(clip, seconds=num_frames / fps),
        )
        rows.append({"path": path, "labels": clip.labels, "split": split, "clip": clip})
    _write_labels(os.path.join(out, "labels.csv"), rows)
    for split in SPLITS:
        _write_labels(os.path.join(out, f"{split}.csv"), [r for r in rows if r["split"] == split])
    with open(os.path.join(out, "classes.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Index", "Name"])
        writer.writerows(enumerate(CLASSES))
    return rows


def ensure(cache_dir: str | os.PathLike[str], log=print, **spec: Any) -> str:
    """The directory of the videos `generate(**spec)` writes, under `cache_dir`, made once.

    The name holds a hash of `spec`, so other settings get another directory. Videos are
    written into a temporary sibling and renamed into place when complete, so an interrupted
    run never leaves a partial dataset that a later one would take as done.
    """
    import hashlib
    import json
    import shutil

    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    out = os.path.join(os.path.expanduser(os.fspath(cache_dir)), f"synthetic-video-{digest}")
    if os.path.exists(os.path.join(out, "classes.csv")):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    log(f"Generating {spec.get('num_videos', 64)} synthetic videos into {out} (once)")
    generate(tmp, **spec)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished it first
        if not os.path.exists(os.path.join(out, "classes.csv")):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_labels(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        writer.writerows((r["path"], " ".join(map(str, r["labels"]))) for r in rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vmjax.data.synthetic_video",
        description=(
            "Write small mp4 videos of moving squares and circles with a sine tone, labelled "
            "by shape, colour, motion direction and tone, with train/validate label CSVs."
        ),
    )
    parser.add_argument("--out", required=True, help="directory to write into")
    parser.add_argument("--num_videos", type=int, default=64, help="number of videos")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each video")
    parser.add_argument("--size", type=int, default=64, help="frame height and width (even)")
    parser.add_argument("--fps", type=float, default=8.0, help="frames per second")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    parser.add_argument(
        "--validate_fraction", type=float, default=0.25, help="share of videos for validate"
    )
    args = parser.parse_args(argv)
    try:
        rows = generate(
            args.out,
            num_videos=args.num_videos,
            seconds=args.seconds,
            size=args.size,
            fps=args.fps,
            seed=args.seed,
            validate_fraction=args.validate_fraction,
        )
    except (ValueError, OSError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")  # the user's input: 2, as argparse
    counts = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    print(f"{args.out}: {len(rows)} videos ({counts}), {len(CLASSES)} classes", file=sys.stderr)


if __name__ == "__main__":
    main()
