"""Raw video files -> sampled RGB frames, a 16 kHz mono waveform and VGGish log-mel examples.

Decoding uses PyAV (FFmpeg) with codec threading, in one sequential pass that stops as soon as
the last wanted frame is out. Only the chosen frames are converted, and FFmpeg's scaler resizes
them while converting to RGB, so numpy only slices the crop.

    clip = decode_video("cat.mp4", num_frames=16, sampling="fps", fps=1.0, size=(224, 224))
    clip["frames"]  # uint8 [16, 224, 224, 3]; clip["mask"] says which are real
    clip["log_mel"]  # float32 [n, 96, 64] VGGish input examples

Any failure to read a file (missing, corrupt, not a video) raises `VideoError`, which names it.
"""

from __future__ import annotations

import math
import os
from typing import Any

import av
import numpy as np

SAMPLE_RATE = 16_000  # the rate VGGish (and YouTube-8M's audio features) expect
SAMPLINGS = ("uniform", "stride", "fps")
CROPS = ("center", "random")

# VGGish's vggish_params.py: the log-mel front end its weights were trained with.
WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
_NUM_MEL_BINS = 64
_MEL_MIN_HZ = 125.0
_MEL_MAX_HZ = 7500.0
_LOG_OFFSET = 0.01
_EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames per example, examples do not overlap


class VideoError(ValueError):
    """A file that cannot be read as a video; `str()` names the file."""

    def __init__(self, path: str | os.PathLike[str], message: str):
        self.path = os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")

    def __reduce__(self):
        # The default pickling replays args=(formatted str,) into __init__, which needs two;
        # grain workers pickle exceptions back to the main process.
        return type(self), (self.path, self.message)


def decode_video(
    path: str | os.PathLike[str],
    *,
    num_frames: int,
    sampling: str = "uniform",
    stride: int = 1,
    fps: float = 1.0,
    size: tuple[int, int] | None = (224, 224),
    crop: str = "center",
    rng: np.random.Generator | None = None,
    with_audio: bool = True,
) -> dict[str, Any]:
    """Decode `num_frames` frames (and the audio track) of a video file.

    Args:
      num_frames: length of the clip. Videos with fewer frames than the sampling asks for are
        zero-padded at the end and `mask` is False there; they are never dropped.
      sampling: "uniform": `num_frames` frames spread evenly over the whole video (the middle
        frame of each of `num_frames` equal segments); "stride": frames 0, stride, 2*stride, ...;
        "fps": the first frame at or after each multiple of 1/`fps` seconds (`fps`=1 is
        YouTube-8M's 1 frame per second), as many as the video has, up to `num_frames`.
      size: (height, width) of the output frames: the frame is scaled (aspect kept) until it
        covers `size`, then cropped. None keeps the source resolution and ignores `crop`.
      crop: "center", or "random": one window for all frames, placed by `rng` (required), so
        the same generator state gives the same crop.
      with_audio: decode the audio track. Without it `audio` and `log_mel` are empty, while
        `has_audio` still says whether the file has an audio stream.

    Returns:
      A dict with `frames` uint8 [num_frames, H, W, 3] RGB; `mask` bool [num_frames];
      `timestamps` float64 [num_frames] seconds since the first frame (0 where padded);
      `frame_indices` int64 [num_frames] positions in the decoded stream (-1 where padded);
      `fps` and `duration` of the source (NaN when the file does not say); `crop_box`
      (top, left, height, width) in the scaled frame and `scaled_size` (height, width) it was
      cut from; `has_audio`; `audio` float32 [samples] at `sample_rate` (16 kHz), the mean of
      the channels; `log_mel` float32 [n, 96, 64] (see `log_mel`).
    """
    _check_args(num_frames, sampling, stride, fps, size, crop, rng)
    try:
        out, has_audio = _decode_frames(path, num_frames, sampling, stride, fps, size, crop, rng)
        waveform = np.zeros([0], np.float32)
        if with_audio and has_audio:
            waveform = _decode_audio(path)
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:  # all of PyAV's errors
        raise VideoError(path, f"cannot decode: {type(e).__name__}: {e}") from e
    out.update(has_audio=has_audio, audio=waveform, log_mel=log_mel(waveform))
    out["sample_rate"] = SAMPLE_RATE
    return out


def decode_views(
    path: str | os.PathLike[str],
    *,
    num_frames: int,
    num_clips: int,
    num_crops: int,
    sampling: str = "uniform",
    stride: int = 1,
    fps: float = 1.0,
    size: tuple[int, int] = (224, 224),
) -> dict[str, Any]:
    """The num_clips x num_crops test views of a video file (vmjax.data.views), no audio.

    Only the frames some clip takes are converted, scaled (aspect kept) to cover `size`; the
    views are then cut from them. With "fps" sampling the clips are windows of consecutive
    frames of the 1/fps grid. 1 x 1 gives `decode_video`'s frames (centre crop).

    Returns:
      A dict with `frames` uint8 [V, num_frames, H, W, 3] (V = num_clips * num_crops, clip-major);
      `mask` bool [V, num_frames]; `frame_indices` int64 [num_clips, num_frames] positions in the
      decoded stream (-1 where padded); `crop_boxes` int64 [num_crops, 4] (top, left, height,
      width) in the scaled frame of `scaled_size`; `fps` and `duration` of the source.
    """
    from vmjax.data import views

    _check_args(num_frames, sampling, stride, fps, size, "center", None)
    if size is None:
        raise ValueError("decode_views needs size=(height, width) of the crops")
    try:
        count = _count_frames(path)
        if sampling == "fps":  # every frame of the grid, then windows of it
            source, _ = _decode_frames(path, count, "fps", 1, fps, size, "none", None)
            taken = int(source["mask"].sum())
            at = views.clip_indices(
                taken, num_clips=num_clips, clip_frames=num_frames, sampling="stride"
            )
        else:
            at = views.clip_indices(
                count, num_clips=num_clips, clip_frames=num_frames, sampling=sampling, stride=stride
            )
            wanted = np.unique(at[at >= 0])
            source, _ = _decode_frames(
                path, len(wanted), sampling, stride, fps, size, "none", None, indices=wanted
            )
            at = np.where(at >= 0, np.searchsorted(wanted, at), -1)
        # A header that promises more frames than the stream holds: the missing ones are padding.
        at = np.where(at < int(source["mask"].sum()), at, -1)
        boxes = views.crop_boxes(*source["scaled_size"], num_crops=num_crops, size=size)
        taken = views.take_views(source["frames"], at, boxes)
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(path, f"cannot decode: {type(e).__name__}: {e}") from e
    return {
        "frames": taken.pixels,
        "mask": taken.mask,
        "frame_indices": np.where(at >= 0, source["frame_indices"][at], -1),
        "crop_boxes": boxes,
        "scaled_size": source["scaled_size"],
        "fps": source["fps"],
        "duration": source["duration"],
    }


def log_mel(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [n, 96, 64] log-mel examples of a mono waveform, as VGGish's inputs.

    Follows the parameters of VGGish's mel_features.py / vggish_input.py: frames of 25 ms
    (window N = 400 samples at 16 kHz) every 10 ms (hop 160), periodic Hann window
    w[i] = 0.5 - 0.5 cos(2 pi i / N), magnitude spectrum |rfft(w * x_m, 512)| (the FFT length is
    the next power of two), triangular mel filters whose 66 edges are equally spaced in
    mel(f) = 1127 ln(1 + f / 700) between 125 and 7500 Hz (the DC bin gets no weight), then
    log(mel + 0.01). The [frames, 64] log-mel image is cut into non-overlapping 0.96 s examples of
    96 frames; a partial last example is dropped, so audio shorter than 0.975 s gives none.

    Args:
      waveform: float samples in [-1, 1], shape [samples].
    """
    x = np.asarray(waveform, np.float64)
    if x.ndim != 1:
        raise ValueError(f"log_mel: expected a mono waveform [samples], got shape {x.shape}")
    window = round(sample_rate * WINDOW_SECONDS)
    hop = round(sample_rate * HOP_SECONDS)
    fft_length = 2 ** math.ceil(math.log2(window))
    if x.shape[0] < window:
        return np.zeros([0, _EXAMPLE_FRAMES, _NUM_MEL_BINS], np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, window)[::hop]  # [m, window]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi / window * np.arange(window))
    spectrum = np.abs(np.fft.rfft(frames * hann, n=fft_length))  # [m, fft_length // 2 + 1]
    mel = spectrum @ mel_matrix(spectrum.shape[1], sample_rate)
    log = np.log(mel + _LOG_OFFSET)
    num_examples = log.shape[0] // _EXAMPLE_FRAMES
    log = log[: num_examples * _EXAMPLE_FRAMES]
    return log.reshape(num_examples, _EXAMPLE_FRAMES, _NUM_MEL_BINS).astype(np.float32)


def mel_matrix(num_spectrogram_bins: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """[num_spectrogram_bins, 64] weights from magnitude-spectrum bins to VGGish's mel bins."""
    bins_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2, num_spectrogram_bins))
    edges = np.linspace(hertz_to_mel(_MEL_MIN_HZ), hertz_to_mel(_MEL_MAX_HZ), _NUM_MEL_BINS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # VGGish ignores DC
    return weights


def mel_centers_hz() -> np.ndarray:
    """Centre frequency (Hz) of each of the 64 mel bins."""
    edges = np.linspace(hertz_to_mel(_MEL_MIN_HZ), hertz_to_mel(_MEL_MAX_HZ), _NUM_MEL_BINS + 2)
    return 700.0 * (np.exp(edges[1:-1] / 1127.0) - 1.0)


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale VGGish uses: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def _check_args(num_frames, sampling, stride, fps, size, crop, rng) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (height, width) of positive ints or None, got {size}")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if crop == "random" and size is not None and rng is None:
        raise ValueError('crop="random" needs rng (a numpy Generator), for reproducible crops')


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    try:
        return av.open(os.fspath(path), "r")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(path, f"cannot open: {type(e).__name__}: {e}") from e


def _count_frames(path: str | os.PathLike[str]) -> int:
    """Frames in the first video stream, by demuxing (no decoding) when the header lacks them."""
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return stream.frames
        return sum(1 for packet in container.demux(stream) if packet.size)


def _wanted_indices(sampling: str, num_frames: int, stride: int, path) -> np.ndarray | None:
    """Stream positions to keep, in order; None for "fps", which goes by timestamps."""
    if sampling == "stride":
        return np.arange(num_frames) * stride
    if sampling == "uniform":
        count = _count_frames(path)
        if count <= num_frames:
            return np.arange(count)
        return np.floor((np.arange(num_frames) + 0.5) * count / num_frames).astype(np.int64)
    return None


def _scaled_size(height: int, width: int, size: tuple[int, int] | None) -> tuple[int, int]:
    """The smallest aspect-preserving size that covers `size`."""
    if size is None:
        return height, width
    scale = max(size[0] / height, size[1] / width)
    return max(size[0], round(height * scale)), max(size[1], round(width * scale))


def _decode_frames(
    path, num_frames, sampling, stride, fps, size, crop, rng, indices=None
) -> tuple[dict[str, Any], bool]:
    """The frames part of `decode_video`'s result, and whether the file has an audio stream.

    indices: increasing stream positions to take instead of `sampling`'s (decode_views).
    crop: also "none": the whole frame, scaled to cover `size`.
    """
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(path, "no video stream (not a video file?)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        source_fps = float(rate) if rate else math.nan
        duration = _duration(container, stream, source_fps)
        has_audio = bool(container.streams.audio)
        if indices is None:
            wanted = _wanted_indices(sampling, num_frames, stride, path)
        else:
            wanted = indices
        limit = num_frames if wanted is None else len(wanted)
        if limit == 0:
            raise VideoError(path, "the video stream has no frames")
        # Rounding of container timestamps (e.g. whole milliseconds) must not skip the frame
        # that sits exactly on a whole second; half a frame is the most that can be allowed.
        tolerance = min(1e-3, 0.5 / source_fps) if source_fps > 0 else 1e-3
        position = rng.random(2) if crop == "random" and size is not None else np.full(2, 0.5)

        frames = timestamps = indices = None
        taken, origin, scaled, box = 0, None, None, None
        for index, frame in enumerate(container.decode(stream)):
            if origin is None:
                origin = frame.pts
            if frame.pts is not None and origin is not None:
                time = float((frame.pts - origin) * frame.time_base)
            else:
                time = index / source_fps if source_fps > 0 else 0.0
            if wanted is None:
                take = time >= taken / fps - tolerance
            else:
                take = index == wanted[taken]
            if not take:
                continue
            if frames is None:
                scaled = _scaled_size(frame.height, frame.width, size)
                out_h, out_w = size if size is not None and crop != "none" else scaled
                top = min(int(position[0] * (scaled[0] - out_h + 1)), scaled[0] - out_h)
                left = min(int(position[1] * (scaled[1] - out_w + 1)), scaled[1] - out_w)
                box = (top, left, out_h, out_w)
                frames = np.zeros([num_frames, out_h, out_w, 3], np.uint8)
                timestamps = np.zeros([num_frames], np.float64)
                indices = np.full([num_frames], -1, np.int64)
            rgb = frame.reformat(
                width=scaled[1], height=scaled[0], format="rgb24", interpolation="AREA"
            ).to_ndarray()
            frames[taken] = rgb[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
            timestamps[taken] = time
            indices[taken] = index
            taken += 1
            if taken == limit:
                break
    if frames is None:
        raise VideoError(path, "the video stream has no decodable frames")
    out = {
        "frames": frames,
        "mask": np.arange(num_frames) < taken,
        "timestamps": timestamps,
        "frame_indices": indices,
        "fps": source_fps,
        "duration": duration,
        "crop_box": box,
        "scaled_size": scaled,
    }
    return out, has_audio


def _duration(container, stream, source_fps: float) -> float:
    """Seconds, from the stream header, else the container's, else frames / fps, else NaN."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    if stream.frames > 0 and source_fps > 0:
        return stream.frames / source_fps
    return math.nan


def _decode_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """The first audio stream as float32 mono at SAMPLE_RATE."""
    with _open(path) as container:
        stream = container.streams.audio[0]
        # Resample every channel and average them in numpy, as VGGish's input code does:
        # FFmpeg's own downmix adds channels at -3 dB, so a loud stereo track could exceed 1.
        resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
        chunks = []
        for frame in container.decode(stream):
            chunks += [f.to_ndarray().mean(axis=0) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().mean(axis=0) for f in resampler.resample(None)]
    if not chunks:
        return np.zeros([0], np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)
