"""Your own videos -> YouTube-8M records, embedded by a trained pixel run's frame or clip encoder.

    python -m vmjax.extract --videos my_videos.csv --out features/ --workdir runs/cnn_lstm
    python -m vmjax.extract --videos my_videos.csv --out features/ --workdir runs/vivit_b

For each video of the `path,labels` CSV (vmjax.data.video_files.read_label_csv):

1. decode one frame per second (`fps`) at the run's image size, centre-cropped, and the audio
   track at 16 kHz (vmjax.data.video.decode_video; `workers` processes decode);
2. rgb: embed every frame with the run's per-frame image encoder (the `cnn` FrameResNet of a
   cnn_lstm run), in this process. A clip encoder (the ViViT of a vivit_pixels run, the VideoMAE
   of a videomae_pixels run, e.g. a transformers checkpoint converted by
   vmjax.tools.from_transformers) reads clips of the run's data.num_frames frames: the video's
   frames are tiled into consecutive clips, the last one padded by repeating the last frame,
   and frame i's feature is the encoder's output for its temporal token: the mean of the
   final (normalized) spatial tokens of that time position (ViViT; for factorised_encoder its
   temporal token), or VideoMAE's pooling (fc_norm of the mean, or the mean of LN) over that
   position's tokens, shared by the `patch_size[0]` frames of the tubelet. So a frame's
   feature depends on its own clip only. The sampled frames are `fps` apart: a clip of a
   32-frame K400 model spans 32 s at the default 1 fps, far slower than the ~12 frames per
   second it was trained on (raise --fps for motion, at the cost of more frames per video);
   audio: the pixel models have no audio encoder, so the audio feature of frame i is the
   VGGish *input*, the 96 x 64 log-mel patch of the 0.96 s starting at i / fps, flattened to
   6144 values (vmjax.data.video.log_mel). Audio shorter than the frames is padded with
   silence (zeros in the waveform); a video without an audio track gets audio features of 0;
3. PCA with YouTube-8M's whitening, fitted once on a sample of the videos and saved as
   DIR/pca.npz: x -> ((x - mean) @ components.T) / scale with scale = sqrt(variance + 1e-4),
   to 1024 (rgb) and 128 (audio) dimensions. Components the data cannot give (an encoder
   narrower than 1024, fewer sample frames than dimensions, directions with no variance) are
   zero rows, so records always have YouTube-8M's shapes and every vmjax feature model reads
   them;
4. quantize as YouTube-8M (vmjax.data.yt8m.quantize) and write frame-level SequenceExamples to
   DIR/frame/SPLIT-NNNNN-of-MMMMM.tfrecord and video-level Examples (mean_rgb, mean_audio: the
   means of the dequantized frames) to DIR/video/, `shard_size` videos per shard.

Each shard is written under a temporary name and renamed when complete, so a rerun skips the
finished shards and reuses DIR/pca.npz (also across splits: extract `--split validate` into the
same DIR to use the train split's PCA). The record `id` is the video's path relative to the
CSV's folder (as the CSV usually writes it). See docs/extract.md.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import functools
import glob
import itertools
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vmjax.data import tfrecord, video, yt8m

if TYPE_CHECKING:
    import ml_collections

# Pixel models with a per-frame image encoder: model name -> the encoder's submodule name.
FRAME_ENCODERS = {"cnn_lstm": "cnn"}
# Pixel models with a clip encoder over data.num_frames frames: model name -> its submodule.
CLIP_ENCODERS = {"vivit_pixels": "vivit", "videomae_pixels": "videomae"}
ON_ERROR = ("raise", "skip")
# YouTube-8M's feature extractor divides by sqrt(eigenvalue + 1e-4) when it whitens.
WHITEN_EPSILON = 1e-4
# Components with less variance than this fraction of the largest are left zero: with fewer
# sample frames than dimensions the trailing directions are arbitrary, and whitening would
# blow them up.
MIN_RELATIVE_VARIANCE = 1e-6
AUDIO_PATCH_SHAPE = (96, 64)  # VGGish's input example: 96 frames of 10 ms x 64 mel bins
AUDIO_INPUT_DIM = AUDIO_PATCH_SHAPE[0] * AUDIO_PATCH_SHAPE[1]
# Waveform samples that give exactly one 96-frame log-mel example (25 ms windows, 10 ms hop).
_HOP_SAMPLES = round(video.SAMPLE_RATE * video.HOP_SECONDS)
_WINDOW_SAMPLES = round(video.SAMPLE_RATE * video.WINDOW_SECONDS)
_PATCH_SAMPLES = (AUDIO_PATCH_SHAPE[0] - 1) * _HOP_SAMPLES + _WINDOW_SAMPLES
LEVELS = ("frame", "video")
PCA_FILE = "pca.npz"
SKIPPED_FILE = "skipped.txt"


class ExtractError(ValueError):
    """A run, CSV or output directory that extraction cannot use."""


# ----------------------------------------------------------------------------- decoding


def audio_patches(waveform: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """float32 [num_frames, 6144]: frame i's flattened log-mel patch of the 0.96 s from i / fps.

    Audio that ends before the last patch is padded with zeros (silence).
    """
    starts = np.round(np.arange(num_frames) / fps * video.SAMPLE_RATE).astype(np.int64)
    length = max(len(waveform), int(starts[-1]) + _PATCH_SAMPLES if num_frames else 0)
    padded = np.zeros([length], np.float32)
    padded[: len(waveform)] = waveform
    out = np.zeros([num_frames, AUDIO_INPUT_DIM], np.float32)
    for i, start in enumerate(starts):
        out[i] = video.log_mel(padded[start : start + _PATCH_SAMPLES]).reshape(-1)
    return out


def decode(path: str, *, fps: float, max_frames: int, size: tuple[int, int]) -> dict[str, Any]:
    """One video's frames uint8 [T, H, W, 3] at `fps` and audio patches [T, 6144] (None: no
    audio track); an unreadable file gives {"error": VideoError} instead of raising, so that a
    worker process hands it back in order."""
    try:
        clip = video.decode_video(
            path, num_frames=max_frames, sampling="fps", fps=fps, size=size, crop="center"
        )
    except video.VideoError as e:
        return {"path": path, "error": e}
    frames = clip["frames"][clip["mask"]]
    audio = None
    if clip["has_audio"] and len(clip["audio"]):
        audio = audio_patches(clip["audio"], len(frames), fps)
    # Longer than max_frames at this rate: the rest is cut, as YouTube-8M cut at 300 s. Counted.
    cut = bool(clip["duration"] > max_frames / fps)  # NaN (unknown duration) compares False
    return {"path": path, "frames": frames, "audio": audio, "cut": cut}


def decoded(paths: Iterable[str], decode_fn: Callable[[str], dict], workers: int) -> Iterator[dict]:
    """decode_fn(path) of each path, in order; `workers` > 0 decodes in that many processes."""
    if workers == 0:
        yield from map(decode_fn, paths)
        return
    # spawn, not fork: this process runs JAX's threads, which a fork would copy mid-flight.
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")
    )
    try:
        paths = iter(paths)
        # A bounded window keeps decoded frames from piling up while the encoder catches up.
        window = itertools.islice(paths, 2 * workers)
        pending = collections.deque(pool.submit(decode_fn, p) for p in window)
        while pending:
            result = pending.popleft().result()
            path = next(paths, None)
            if path is not None:
                pending.append(pool.submit(decode_fn, path))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- encoder


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config of the run in `workdir` (vmjax.run: config.json with its recorded changes)."""
    from vmjax import run as run_lib
    from vmjax.errors import RunDirectoryError

    try:
        return run_lib.Run.open(workdir).config
    except RunDirectoryError as e:
        raise ExtractError(str(e)) from None


def check_frame_encoder(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The name of the run's frame or clip encoder submodule; ExtractError when it has none."""
    name = config.model.name
    encoders = FRAME_ENCODERS | CLIP_ENCODERS
    if name not in encoders or config.data.get("format") != "video_files":
        kind = "has no frame or clip encoder"
        if config.data.get("format") != "video_files":
            kind = "reads YouTube-8M features, not pixels"
        supported = ", ".join(f"{m} (its `{s}`)" for m, s in encoders.items())
        raise ExtractError(
            f"{workdir}: the run's model {name!r} {kind}; extract embeds frames with the "
            f"encoder of: {supported}"
        )
    return encoders[name]


@dataclasses.dataclass
class FrameEncoder:
    """A trained run's frame (or clip) encoder: uint8 frames [T, H, W, 3] -> float32 [T, dim].

    Frames go through in chunks of `batch_frames`, a short chunk padded to the next power of
    two (masked), so that a handful of shapes are compiled. Frames are independent (GroupNorm,
    or BatchNorm with running averages), so the chunking changes the features by float
    rounding at most. With `clip_frames` > 0 the encoder reads whole clips (module docstring).
    """

    model_name: str
    step: int
    image_size: tuple[int, int]
    dim: int
    batch_frames: int
    variables: Any
    # jitted (variables, pixels [1, n, H, W, 3], mask [1, n]) -> [1, n, dim]; for a clip encoder
    # (variables, clips [n, clip_frames, H, W, 3]) -> [n, clip_frames, dim]
    apply: Callable
    clip_frames: int = 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if self.clip_frames:
            return self._clips(frames)
        out = np.zeros([len(frames), self.dim], np.float32)
        for start in range(0, len(frames), self.batch_frames):
            chunk = frames[start : start + self.batch_frames]
            size = min(self.batch_frames, 1 << (len(chunk) - 1).bit_length())
            pixels = np.zeros([1, size, *chunk.shape[1:]], np.uint8)
            pixels[0, : len(chunk)] = chunk
            mask = np.arange(size)[None] < len(chunk)
            embeddings = self.apply(self.variables, pixels, mask)
            out[start : start + len(chunk)] = np.asarray(embeddings)[0, : len(chunk)]
        return out

    def _clips(self, frames: np.ndarray) -> np.ndarray:
        """Consecutive clips of `clip_frames` (the last padded with the last frame) -> [T, dim]."""
        n, size = len(frames), self.clip_frames
        if n == 0:
            return np.zeros([0, self.dim], np.float32)
        num_clips = -(-n // size)
        clips = frames[np.minimum(np.arange(num_clips * size), n - 1)]
        clips = clips.reshape(num_clips, size, *frames.shape[1:])
        per_call = max(1, self.batch_frames // size)
        out = np.zeros([num_clips, size, self.dim], np.float32)
        for start in range(0, num_clips, per_call):
            chunk = clips[start : start + per_call]
            # Padded with black clips to a power of two: a few compiled shapes; clips are
            # encoded independently, so the padding changes nothing else.
            count = min(per_call, 1 << (len(chunk) - 1).bit_length())
            batch = np.zeros([count, *chunk.shape[1:]], np.uint8)
            batch[: len(chunk)] = chunk
            out[start : start + len(chunk)] = np.asarray(self.apply(self.variables, batch))[
                : len(chunk)
            ]
        return out.reshape(num_clips * size, self.dim)[:n]


def load_encoder(workdir: str, step: int | None = None, batch_frames: int = 64) -> FrameEncoder:
    """The frame encoder of checkpoint `step` (default: the latest) of the run in `workdir`."""
    import jax

    from vmjax import trained
    from vmjax.errors import RunDirectoryError

    workdir = os.path.abspath(os.path.expanduser(workdir))
    config = read_run_config(workdir)
    sub = check_frame_encoder(config, workdir)
    try:
        # Parameters from shapes only: no initialisation computed just to be overwritten.
        run = trained.load(workdir, step)
    except RunDirectoryError as e:
        raise ExtractError(str(e)) from None
    model, step = run.model, run.step
    variables = {"params": run.params[sub]}
    # Non-parameter collections (BatchNorm's batch_stats) of the encoder, in eval mode.
    variables |= {k: v[sub] for k, v in run.model_state.items() if sub in v}
    variables = jax.device_get(variables)
    size = config.data.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    clip_frames = 0
    if config.model.name in CLIP_ENCODERS:
        clip_frames = int(config.data.num_frames)
        apply = _jitted_clip_encoder(config.model.name, json.dumps(_clip_fields(model)))
        probe = jax.eval_shape(apply, variables, np.zeros([1, clip_frames, *size, 3], np.uint8))
    else:
        apply = _jitted_encoder(json.dumps(getattr(model, sub), sort_keys=True))
        probe = jax.eval_shape(
            apply, variables, np.zeros([1, 1, *size, 3], np.uint8), np.ones([1, 1], bool)
        )
    return FrameEncoder(
        config.model.name,
        int(step),
        size,
        probe.shape[-1],
        batch_frames,
        variables,
        apply,
        clip_frames,
    )


def _clip_fields(model) -> dict:
    """A clip model's encoder fields and pixel normalization (JSON: the jit cache's key)."""
    from vmjax.models.vivit import ViViTEncoder

    fields = {"pixel_mean": list(model.pixel_mean), "pixel_std": list(model.pixel_std)}
    if hasattr(model, "videomae"):
        return fields | {"videomae": dict(model.videomae)}
    names = [f for f in ViViTEncoder.__dataclass_fields__ if f not in ("parent", "name")]
    return fields | {"vivit": {f: getattr(model, f) for f in names if hasattr(model, f)}}


@functools.lru_cache(maxsize=8)
def _jitted_clip_encoder(model_name: str, fields: str) -> Callable:
    """The jitted clip encoder: uint8 clips [n, F, H, W, 3] -> per-frame features [n, F, D]."""
    import einops
    import jax
    import jax.numpy as jnp

    from vmjax.models.cnn import normalize_pixels
    from vmjax.models.videomae import VideoMAE, encoder_fields
    from vmjax.models.vivit import ViViTEncoder

    spec = json.loads(fields)
    mean, std = tuple(spec["pixel_mean"]), tuple(spec["pixel_std"])
    if model_name == "videomae_pixels":
        kwargs = encoder_fields(spec["videomae"])
        encoder = VideoMAE(**kwargs)
        pt = tuple(kwargs.get("patch_size", (2, 16, 16)))[0]
    else:
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["vivit"].items()}
        encoder = ViViTEncoder(**kwargs)
        pt = kwargs["patch_size"][0]

    @jax.jit
    def apply(variables, clips):
        x = normalize_pixels(clips, mean, std)
        if model_name == "videomae_pixels":
            _, per_time = encoder.apply(variables, x, train=False, return_time_features=True)
        else:
            _, tokens = encoder.apply(variables, x, train=False, return_tokens=True)
            per_time = jnp.mean(tokens, axis=2)  # [n, nt, ns, D] -> [n, nt, D]
        # One temporal token covers the pt frames of its tubelet.
        return einops.repeat(per_time, "n t d -> n (t pt) d", pt=pt)

    return apply


@functools.lru_cache(maxsize=8)
def _jitted_encoder(fields: str) -> Callable:
    """The jitted FrameResNet apply for these JSON fields, shared by every encoder loaded in
    this process (one compilation per frame count, not per `load_encoder`)."""
    import jax

    from vmjax.models.cnn import FrameResNet

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(fields).items()}
    cnn = FrameResNet(**kwargs)

    @jax.jit
    def apply(variables, pixels, mask):
        return cnn.apply(variables, pixels, mask, train=False)

    return apply


# ----------------------------------------------------------------------------- PCA


@dataclasses.dataclass(frozen=True)
class Pca:
    """x [T, D] -> ((x - mean) @ components.T) / scale [T, K]: PCA with YouTube-8M's whitening.

    Rows of `components` past `num_fitted` are zero (with scale 1): those outputs are 0.
    """

    mean: np.ndarray  # float32 [D]
    components: np.ndarray  # float32 [K, D], unit rows, by decreasing variance
    scale: np.ndarray  # float32 [K]: sqrt(variance + 1e-4)
    num_fitted: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32) - self.mean
        return (x @ self.components.T) / self.scale


def fit_pca(x: np.ndarray, out_dim: int, seed: int = 0) -> Pca:
    """PCA of the rows of `x` [N, D] to `out_dim` whitened outputs (scikit-learn's PCA)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, np.float32)
    n, dim = x.shape
    components = np.zeros([out_dim, dim], np.float32)
    scale = np.ones([out_dim], np.float32)
    mean = x.mean(0) if n else np.zeros([dim], np.float32)
    k = min(out_dim, dim, n)
    fitted = 0
    if n >= 2 and k > 0:
        # Exact solvers (not "auto", which may pick the randomized one): the covariance's
        # eigenvectors when frames outnumber dimensions, else an SVD of the frames.
        solver = "covariance_eigh" if n >= dim else "full"
        pca = PCA(n_components=k, svd_solver=solver, random_state=seed).fit(x)
        variance = pca.explained_variance_
        fitted = int(np.sum(variance > MIN_RELATIVE_VARIANCE * max(variance[0], 1e-30)))
        mean = pca.mean_
        components[:fitted] = pca.components_[:fitted]
        scale[:fitted] = np.sqrt(variance[:fitted] + WHITEN_EPSILON)
    return Pca(mean.astype(np.float32), components, scale, fitted)


def save_pca(path: str, pcas: dict[str, Pca], info: dict) -> None:
    """Writes {modality: Pca} and `info` (JSON) to an .npz, atomically."""
    arrays = {}
    for key, pca in pcas.items():
        arrays |= {
            f"{key}_mean": pca.mean,
            f"{key}_components": pca.components,
            f"{key}_scale": pca.scale,
            f"{key}_num_fitted": np.int64(pca.num_fitted),
        }
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, info=np.array(json.dumps(info)), **arrays)
    os.replace(tmp, path)


def load_pca(path: str) -> tuple[dict[str, Pca], dict]:
    """({"rgb": Pca, "audio": Pca}, info) of a file `save_pca` wrote."""
    with np.load(path) as f:
        pcas = {
            key: Pca(
                f[f"{key}_mean"],
                f[f"{key}_components"],
                f[f"{key}_scale"],
                int(f[f"{key}_num_fitted"]),
            )
            for key in ("rgb", "audio")
        }
        return pcas, json.loads(str(f["info"]))


# ----------------------------------------------------------------------------- records


def shard_path(out: str, level: str, split: str, shard: int, num_shards: int) -> str:
    return os.path.join(out, level, f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")


def video_records(
    video_id: str, labels: Sequence[int], rgb: np.ndarray, audio: np.ndarray
) -> tuple[bytes, bytes]:
    """(frame-level, video-level) serialized records of float features [T, 1024] / [T, 128]."""
    q_rgb, q_audio = yt8m.quantize(rgb), yt8m.quantize(audio)
    frame = yt8m.encode_frame_example(video_id, labels, q_rgb, q_audio)
    mean_rgb = yt8m.dequantize(q_rgb).mean(0)
    mean_audio = yt8m.dequantize(q_audio).mean(0)
    return frame, yt8m.encode_video_example(video_id, labels, mean_rgb, mean_audio)


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class _Skipped:
    """Unreadable videos: raise at the first, or record them (`on_error` "skip")."""

    on_error: str
    errors: dict[str, str] = dataclasses.field(default_factory=dict)

    def __call__(self, result: dict) -> bool:
        """True when `result` is an unreadable video (recorded), after raising if asked to."""
        if "error" not in result:
            return False
        if self.on_error == "raise":
            raise result["error"]
        self.errors[result["path"]] = str(result["error"].message)
        return True


def _video_id(path: str, folder: str) -> str:
    rel = os.path.relpath(path, folder)
    return path if rel.startswith(os.pardir) else rel


def extract(
    videos: str,
    out: str,
    workdir: str,
    *,
    split: str = "train",
    step: int | None = None,
    fps: float = 1.0,
    max_frames: int = yt8m.MAX_FRAMES,
    shard_size: int = 1000,
    pca_sample: int = 500,
    pca_max_frames: int = 20_000,
    seed: int = 0,
    workers: int = 0,
    on_error: str = "raise",
    batch_frames: int = 64,
    num_classes: int | None = None,
    vocabulary: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Extracts the videos listed in the CSV `videos` into YouTube-8M records under `out`.

    Returns a summary: shards written and skipped, videos written, skipped video paths.
    Arguments are those of the command line (see `main`).
    """
    from vmjax.data import video_files

    if on_error not in ON_ERROR:
        raise ExtractError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if min(shard_size, pca_sample, max_frames, batch_frames) < 1 or workers < 0 or fps <= 0:
        raise ExtractError(
            "need shard_size, pca_sample, max_frames, batch_frames >= 1, workers >= 0, fps > 0; "
            f"got {shard_size}, {pca_sample}, {max_frames}, {batch_frames}, {workers}, {fps}"
        )
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config = read_run_config(workdir)
    check_frame_encoder(config, workdir)  # before any decoding
    if num_classes is None:
        num_classes = config.data.num_classes
    if vocabulary is None and config.data.get("vocabulary"):
        vocabulary = os.path.expanduser(config.data.vocabulary)
    items = video_files.read_label_csv(videos, num_classes, vocabulary)
    if not items:
        raise ExtractError(f"{videos} lists no videos")
    folder = os.path.dirname(os.path.abspath(videos))
    ids = [_video_id(path, folder) for path, _ in items]
    duplicates = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
    if duplicates:
        raise ExtractError(f"{videos}: videos listed more than once: {duplicates[:5]}")

    for level in LEVELS:
        os.makedirs(os.path.join(out, level), exist_ok=True)
        # Leftovers of an interrupted run: TFRecordWriter's temp files never become shards.
        for stale in glob.glob(os.path.join(out, level, f"{split}-*.tfrecord.tmp-*")):
            os.remove(stale)
    num_shards = math.ceil(len(items) / shard_size)
    done = [
        s
        for s in range(num_shards)
        if all(os.path.exists(shard_path(out, lv, split, s, num_shards)) for lv in LEVELS)
    ]
    others = [
        p
        for p in glob.glob(os.path.join(out, "frame", f"{split}-*-of-*.tfrecord"))
        if not p.endswith(f"-of-{num_shards:05d}.tfrecord")
    ]
    if others:
        log(
            f"Warning: {len(others)} {split} shard(s) in {out}/frame were written with another "
            f"shard count (e.g. {os.path.basename(others[0])}); they are neither reused nor removed"
        )
    todo = [s for s in range(num_shards) if s not in done]
    log(
        f"{len(items)} videos -> {num_shards} {split} shard(s) of up to {shard_size}; "
        f"{len(done)} already complete (skipped), {len(todo)} to write"
    )
    skipped = _Skipped(on_error)
    summary = {"num_shards": num_shards, "shards_skipped": len(done), "shards_written": 0}
    if not todo:
        return summary | {"videos_written": 0, "skipped": []}

    encoder = load_encoder(workdir, step, batch_frames)
    clips = f" in clips of {encoder.clip_frames}" if encoder.clip_frames else ""
    log(
        f"Encoder: {encoder.model_name} step {encoder.step} of {workdir}, frames "
        f"{encoder.image_size[0]}x{encoder.image_size[1]}{clips} -> {encoder.dim} dims"
    )
    decode_fn = functools.partial(decode, fps=fps, max_frames=max_frames, size=encoder.image_size)
    pca_path = os.path.join(out, PCA_FILE)
    if os.path.exists(pca_path):
        pcas, info = load_pca(pca_path)
        _check_pca(pca_path, pcas, encoder.dim)
        if info.get("workdir") != workdir or info.get("step") != encoder.step:
            log(
                f"Warning: {pca_path} was fitted for {info.get('workdir')} step {info.get('step')}"
                f", not {workdir} step {encoder.step}"
            )
        log(f"Reusing {pca_path} ({_describe_pca(pcas)})")
    else:
        pcas = _fit_pcas(
            items,
            encoder,
            decode_fn,
            skipped,
            pca_sample,
            pca_max_frames,
            seed,
            workers,
            progress,
            log,
        )
        info = {"workdir": workdir, "step": encoder.step, "encoder_dim": encoder.dim, "fps": fps}
        info |= {"videos": os.path.abspath(videos), "pca_sample": pca_sample, "seed": seed}
        save_pca(pca_path, pcas, info)
        pcas, _ = load_pca(pca_path)  # the float32 arrays a resumed run reads
        log(f"Saved {pca_path} ({_describe_pca(pcas)})")
    for key, dim in (("rgb", yt8m.RGB_DIM), ("audio", yt8m.AUDIO_DIM)):
        if pcas[key].num_fitted < dim:
            log(
                f"Note: {key} components {pcas[key].num_fitted}..{dim - 1} of {dim} are zero "
                f"(the {key} input has {pcas[key].mean.shape[0]} dims and the PCA sample had "
                "too few frames or too little variance for more)"
            )

    order = [i for s in todo for i in range(s * shard_size, min((s + 1) * shard_size, len(items)))]
    results = decoded((items[i][0] for i in order), decode_fn, workers)
    bar = _progress(len(order), f"extract {split}", progress)
    written = 0
    cut = []  # videos longer than max_frames frames at fps
    start = time.perf_counter()
    try:
        for shard in todo:
            paths = {lv: shard_path(out, lv, split, shard, num_shards) for lv in LEVELS}
            with (
                tfrecord.TFRecordWriter(paths["frame"]) as frames_out,
                tfrecord.TFRecordWriter(paths["video"]) as videos_out,
            ):
                for i in range(shard * shard_size, min((shard + 1) * shard_size, len(items))):
                    result = next(results)
                    bar.update(1)
                    if skipped(result):
                        continue
                    if result["cut"]:
                        cut.append(result["path"])
                    rgb, audio = features(result, encoder, pcas)
                    frame_record, video_record = video_records(ids[i], items[i][1], rgb, audio)
                    frames_out.write(frame_record)
                    videos_out.write(video_record)
                    written += 1
            summary["shards_written"] += 1
    finally:
        bar.close()
        results.close()
        _write_skipped(os.path.join(out, SKIPPED_FILE), skipped.errors, {p for p, _ in items})
    seconds = time.perf_counter() - start
    log(
        f"Wrote {written} videos into {summary['shards_written']} shard(s) of {out}/frame and "
        f"{out}/video in {seconds:.1f} s ({written / max(seconds, 1e-9):.2f} videos/s)"
    )
    if cut:
        log(
            f"{len(cut)} video(s) longer than max_frames={max_frames} frames at {fps} fps kept "
            f"only their first {max_frames} frames (YouTube-8M's limit; raise --max_frames to "
            "keep more): " + ", ".join(cut[:5]) + (" ..." if len(cut) > 5 else "")
        )
    if skipped.errors:
        log(
            f"Skipped {len(skipped.errors)} unreadable video(s) (listed in "
            f"{os.path.join(out, SKIPPED_FILE)}):\n  " + "\n  ".join(skipped.errors)
        )
    summary["videos_cut"] = len(cut)
    return summary | {"videos_written": written, "skipped": sorted(skipped.errors)}


def features(decoded_video: dict, encoder: FrameEncoder, pcas: dict[str, Pca]):
    """(rgb [T, 1024], audio [T, 128]) float32 features of one decoded video, before quantizing."""
    rgb = pcas["rgb"](encoder(decoded_video["frames"]))
    if decoded_video["audio"] is None:
        audio = np.zeros([len(rgb), yt8m.AUDIO_DIM], np.float32)
    else:
        audio = pcas["audio"](decoded_video["audio"])
    return rgb, audio


def _fit_pcas(
    items, encoder, decode_fn, skipped, pca_sample, max_frames, seed, workers, progress, log
):
    """PCAs of rgb embeddings and audio patches of a seeded sample of `pca_sample` videos."""
    rng = np.random.default_rng([seed, 0x7063_61])
    sample = np.sort(rng.permutation(len(items))[:pca_sample])
    log(f"Fitting the PCA on {len(sample)} of {len(items)} videos")
    rgb, audio = [], []
    bar = _progress(len(sample), "PCA sample", progress)
    results = decoded((items[i][0] for i in sample), decode_fn, workers)
    try:
        for result in results:
            bar.update(1)
            if skipped(result):
                continue
            rgb.append(encoder(result["frames"]))
            if result["audio"] is not None:
                audio.append(result["audio"])
    finally:
        bar.close()
        results.close()
    pcas = {}
    for key, parts, in_dim, out_dim in (
        ("rgb", rgb, encoder.dim, yt8m.RGB_DIM),
        ("audio", audio, AUDIO_INPUT_DIM, yt8m.AUDIO_DIM),
    ):
        x = np.concatenate(parts) if parts else np.zeros([0, in_dim], np.float32)
        if len(x) > max_frames:
            log(f"PCA {key}: using a random {max_frames} of the sample's {len(x)} frames")
            x = x[np.sort(rng.permutation(len(x))[:max_frames])]
        pcas[key] = fit_pca(x, out_dim, seed)
    return pcas


def _check_pca(path: str, pcas: dict[str, Pca], encoder_dim: int) -> None:
    for key, in_dim, out_dim in (
        ("rgb", encoder_dim, yt8m.RGB_DIM),
        ("audio", AUDIO_INPUT_DIM, yt8m.AUDIO_DIM),
    ):
        if pcas[key].components.shape != (out_dim, in_dim):
            raise ExtractError(
                f"{path}: {key} components have shape {list(pcas[key].components.shape)}, expected "
                f"[{out_dim}, {in_dim}] for this encoder; delete it to fit a new PCA"
            )


def _describe_pca(pcas: dict[str, Pca]) -> str:
    return ", ".join(
        f"{key} {p.mean.shape[0]} -> {p.components.shape[0]} dims, {p.num_fitted} fitted"
        for key, p in pcas.items()
    )


def _write_skipped(path: str, errors: dict[str, str], rerun: set[str]) -> None:
    """DIR/skipped.txt: earlier entries of videos this run did not redo, plus this run's."""
    lines = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                video_path, _, message = line.rstrip("\n").partition("\t")
                if video_path and video_path not in rerun:
                    lines[video_path] = message
    lines |= errors
    if not lines and not os.path.exists(path):
        return
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{p}\t{m}\n" for p, m in sorted(lines.items()))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="video", disable=not enabled, file=sys.stderr)


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vmjax.extract",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Turn your own videos into YouTube-8M records (1024-d rgb, 128-d audio per second,\n"
            "quantized to uint8) with the frame encoder of a trained pixel run (cnn_lstm) or the\n"
            "clip encoder of a vivit_pixels / videomae_pixels run (e.g. converted from\n"
            "transformers by vmjax.tools.from_transformers: one feature per frame, see docs).\n"
            "Audio features are PCA'd VGGish-input log-mel patches (there is no audio encoder)."
        ),
        epilog=(
            "example:\n"
            "  python -m vmjax.main --config configs/vivit_pixels.py:smoke,cnn_lstm --workdir run\n"
            "  python -m vmjax.extract --videos videos/train.csv --out feats --workdir run\n"
            "  python -m vmjax.extract --videos videos/validate.csv --out feats --workdir run \\\n"
            "      --split validate   # reuses feats/pca.npz, fitted on the train videos\n"
            "  # -> feats/frame/train-00000-of-00001.tfrecord, feats/video/..., feats/pca.npz\n"
            "\nsee docs/extract.md"
        ),
    )
    parser.add_argument("--videos", required=True, help="CSV with path,labels columns")
    parser.add_argument("--out", required=True, help="output directory (frame/, video/, pca.npz)")
    parser.add_argument("--workdir", required=True, help="trained run (config.json, checkpoints/)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--split", default="train", help="shard name prefix: train, validate, test")
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second (YT8M: 1)")
    parser.add_argument(
        "--max_frames", type=int, default=yt8m.MAX_FRAMES, help="frames kept per video (YT8M: 300)"
    )
    parser.add_argument("--shard_size", type=int, default=1000, help="videos per output shard")
    parser.add_argument("--pca_sample", type=int, default=500, help="videos the PCA is fitted on")
    parser.add_argument(
        "--pca_max_frames", type=int, default=20_000, help="at most this many frames fit the PCA"
    )
    parser.add_argument("--seed", type=int, default=0, help="picks the PCA sample")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (0: inline)")
    parser.add_argument(
        "--on_error",
        choices=ON_ERROR,
        default="raise",
        help="unreadable videos: raise (naming the file) or skip (listed in DIR/skipped.txt)",
    )
    parser.add_argument(
        "--batch_frames", type=int, default=64, help="frames per encoder call (whole clips)"
    )
    parser.add_argument(
        "--num_classes", type=int, default=None, help="label range (default: the run's)"
    )
    parser.add_argument(
        "--vocabulary", default=None, help="Index,Name CSV for label names (default: the run's)"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        extract(
            args.videos,
            args.out,
            args.workdir,
            split=args.split,
            step=args.step,
            fps=args.fps,
            max_frames=args.max_frames,
            shard_size=args.shard_size,
            pca_sample=args.pca_sample,
            pca_max_frames=args.pca_max_frames,
            seed=args.seed,
            workers=args.workers,
            on_error=args.on_error,
            batch_frames=args.batch_frames,
            num_classes=args.num_classes,
            vocabulary=args.vocabulary,
            progress=not args.no_progress,
            log=lambda s: print(s, file=sys.stderr),
        )
    except (ValueError, OSError) as e:  # ExtractError, VideoError, a bad CSV, a missing file
        parser.exit(2, f"{parser.prog}: error: {e}\n")  # the user's input: 2, as argparse


if __name__ == "__main__":
    main()
