"""Multi-view testing of pixel models: N temporal clips x M spatial crops per video, averaged.

As MMAction2 (SampleFrames(num_clips, test_mode=True) + ThreeCrop, `average_clips`) and Scenic
(`num_test_clips`, `do_three_spatial_crop`) test video classifiers. `--mode eval` and `predict`
of a pixel config (data.format='video_files') read `config.eval`:

- num_clips N: clips of data.num_frames frames, evenly spaced. 'stride' (and 'fps', over the
  frames its 1/fps grid picks): clip n starts at floor(n * (T - span) / (N - 1)) of the video's T
  frames, span = (num_frames - 1) * stride + 1, so the first clip starts at the first frame and
  the last ends at the last frame (DMVR's linspace offsets, as Scenic reads them; MMAction2's
  test-mode SampleFrames centres each clip in its 1/N of the video instead, which for N=1 would
  not be the clip training reads). 'uniform':
  clip n takes frame floor((j + (n + 0.5) / N) * T / num_frames) of segment j, i.e. each clip
  spreads over the whole video, shifted by 1/N of a segment. N=1 is the clip training and the
  evaluations during training read. A video shorter than one clip gives N equal zero-padded
  clips (`mask` False past its end), as a single clip is padded.
- num_crops M: 1 = the centre square; 3 = start, centre and end of the long side (MMAction2's
  ThreeCrop after scaling the short side to data.image_size), centred on the short side.
- average: 'prob' (default, MMAction2's `average_clips='prob'`): the mean of the views' sigmoid
  scores; 'score': the sigmoid of the mean of their logits.

Views are laid out clip-major: view v = n * M + m. The eval batch of a multi-view run holds
eval_batch_size / (N * M) videos, each as N * M consecutive rows.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from vmjax.errors import UserError

AVERAGES = ("prob", "score")
NUM_CROPS = (1, 3)
SAMPLINGS = ("uniform", "stride")  # 'fps' is 'stride' with stride 1 over its grid of frames


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """How many views of each video an evaluation reads, and how their scores combine."""

    num_clips: int = 1
    num_crops: int = 1
    average: str = "prob"

    def __post_init__(self):
        if self.num_clips < 1:
            raise UserError(f"config.eval.num_clips={self.num_clips}: expected an int >= 1")
        if self.num_crops not in NUM_CROPS:
            raise UserError(f"config.eval.num_crops={self.num_crops}: expected one of {NUM_CROPS}")
        if self.average not in AVERAGES:
            raise UserError(f"config.eval.average={self.average!r}: expected one of {AVERAGES}")

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, process_count: int = 1) -> ViewSpec:
        """`config.eval`'s views (1 x 1 when a config has no `eval` block), checked at the door.

        Several views need pixel data, and each process's eval batch must hold whole videos.
        """
        if "eval" not in config:
            return cls()
        e = config.eval
        spec = cls(int(e.num_clips), int(e.num_crops), str(e.average))
        if spec.num_views == 1:
            return spec
        if config.data.format != "video_files":
            raise UserError(
                f"config.eval.num_clips={spec.num_clips}, num_crops={spec.num_crops}: several "
                f"views need decoded videos (data.format='video_files'), not "
                f"{config.data.format!r}; set both to 1"
            )
        rows = config.eval_batch_size // process_count
        if rows % spec.num_views or config.eval_batch_size % process_count:
            raise UserError(
                f"config.eval_batch_size={config.eval_batch_size}: expected a multiple of "
                f"{spec.num_views * process_count} (eval.num_clips x eval.num_crops = "
                f"{spec.num_clips} x {spec.num_crops} views per video, x {process_count} "
                "process(es)), so that each batch holds whole videos"
            )
        return spec


@dataclasses.dataclass(frozen=True)
class Views:
    """The views of one video and where they came from.

    pixels: [N * M, clip_frames, h, w, C], zero where `mask` is False.
    mask: bool [N * M, clip_frames]: False past the end of a short video.
    frame_indices: int64 [N, clip_frames], positions in the frames given (-1: padding).
    boxes: int64 [M, 4], (top, left, height, width) of each crop in the frame.
    """

    pixels: np.ndarray
    mask: np.ndarray
    frame_indices: np.ndarray
    boxes: np.ndarray


def clip_indices(
    num_source: int, *, num_clips: int, clip_frames: int, sampling: str, stride: int = 1
) -> np.ndarray:
    """int64 [num_clips, clip_frames]: which of `num_source` frames each clip takes (-1: padding).

    See the module docstring; with num_clips=1 these are the frames `video.decode_video` reads.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if num_source < 0 or num_clips < 1 or clip_frames < 1 or stride < 1:
        raise ValueError(
            f"need num_source >= 0, num_clips, clip_frames, stride >= 1; got {num_source}, "
            f"{num_clips}, {clip_frames}, {stride}"
        )
    j = np.arange(clip_frames)
    if sampling == "uniform":
        if num_source <= clip_frames:  # every frame once, then padding
            one = np.where(j < num_source, j, -1)
            return np.tile(one, (num_clips, 1)).astype(np.int64)
        phase = (np.arange(num_clips)[:, None] + 0.5) / num_clips
        return np.floor((j + phase) * num_source / clip_frames).astype(np.int64)
    span = (clip_frames - 1) * stride + 1
    room = max(num_source - span, 0)
    offsets = np.zeros([num_clips], np.int64)
    if num_clips > 1:
        offsets = np.arange(num_clips) * room // (num_clips - 1)
    out = offsets[:, None] + j * stride
    return np.where(out < num_source, out, -1).astype(np.int64)


def crop_boxes(
    height: int, width: int, *, num_crops: int, size: int | tuple[int, int]
) -> np.ndarray:
    """int64 [num_crops, 4] (top, left, h, w) crops of a `height x width` frame.

    One crop: the centre (the box `video.decode_video` cuts). Three: start, centre and end of the
    side with more room left (the long side), each centred on the other side.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if num_crops not in NUM_CROPS:
        raise ValueError(f"num_crops must be one of {NUM_CROPS}, got {num_crops}")
    if h > height or w > width:
        raise ValueError(f"crops of {h}x{w} do not fit in a {height}x{width} frame")

    def centre(full: int, part: int) -> int:  # as video._decode_frames places a centre crop
        return min(int(0.5 * (full - part + 1)), full - part)

    top, left = centre(height, h), centre(width, w)
    if num_crops == 1:
        return np.array([[top, left, h, w]], np.int64)
    if width - w >= height - h:
        return np.array([[top, x, h, w] for x in (0, left, width - w)], np.int64)
    return np.array([[y, left, h, w] for y in (0, top, height - h)], np.int64)


def take_views(frames: np.ndarray, indices: np.ndarray, boxes: np.ndarray) -> Views:
    """The views of clips `indices` [N, F] (into `frames` [T, H, W, C]; -1 padding) x `boxes`."""
    frames = np.asarray(frames)
    indices = np.asarray(indices, np.int64)
    num_clips, clip_frames = indices.shape
    h, w = int(boxes[0, 2]), int(boxes[0, 3])
    valid = indices >= 0
    pixels = np.zeros([num_clips, len(boxes), clip_frames, h, w, frames.shape[-1]], frames.dtype)
    for n in range(num_clips):
        clip = frames[indices[n, valid[n]]]
        for m, (top, left, bh, bw) in enumerate(boxes):
            pixels[n, m, valid[n]] = clip[:, top : top + bh, left : left + bw]
    mask = np.repeat(valid, len(boxes), axis=0)
    pixels = pixels.reshape(num_clips * len(boxes), clip_frames, h, w, frames.shape[-1])
    return Views(pixels, mask, indices, np.asarray(boxes, np.int64))


def views(
    frames: np.ndarray,
    *,
    num_clips: int,
    num_crops: int,
    clip_frames: int,
    size: int | tuple[int, int],
    sampling: str = "stride",
    stride: int = 1,
) -> Views:
    """The num_clips x num_crops views of a video's frames [T, H, W, C] (scaled to cover `size`)."""
    frames = np.asarray(frames)
    indices = clip_indices(
        len(frames), num_clips=num_clips, clip_frames=clip_frames, sampling=sampling, stride=stride
    )
    boxes = crop_boxes(frames.shape[1], frames.shape[2], num_crops=num_crops, size=size)
    return take_views(frames, indices, boxes)


def average(scores: np.ndarray, logits: np.ndarray | None, spec: ViewSpec) -> np.ndarray:
    """Per-video scores [B, C] from the views' rows [B * V, C] (V consecutive rows per video).

    'prob' averages `scores` (the views' sigmoid probabilities); 'score' takes the sigmoid of
    the mean of `logits`. One view passes `scores` through unchanged.
    """
    v = spec.num_views
    if v == 1:
        return np.asarray(scores)
    if spec.average == "prob":
        return _per_video(np.asarray(scores, np.float32), v).mean(1)
    if logits is None:
        raise ValueError("average='score' needs the views' logits")
    mean = _per_video(np.asarray(logits, np.float64), v).mean(1)
    return np.exp(-np.logaddexp(0.0, -mean)).astype(np.float32)  # sigmoid, without overflow


def first_view(x: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """Each video's row of a per-row array [B * V, ...] that repeats per view (labels, ids)."""
    return np.asarray(x)[:: spec.num_views]


def _per_video(x: np.ndarray, v: int) -> np.ndarray:
    if x.shape[0] % v:
        raise ValueError(f"{x.shape[0]} rows are not whole videos of {v} views")
    return x.reshape(x.shape[0] // v, v, *x.shape[1:])
