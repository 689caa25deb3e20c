"""grain pipelines over folders of raw video files (mp4, webm, ...) listed in label CSVs.

The video-file counterpart of indexed.py: a list of (path, class indices) is a random-access
source, so the same three things are exact.

- Global shuffle. Each training epoch is a fresh permutation of all files (grain's
  `MapDataset.shuffle` before `.repeat()`; epoch e uses seed + e, see indexed.py), from a hash
  of the user's seed.
- Process sharding. Every process computes the same global sequence and takes the positions
  `process_index::process_count` of it: within an epoch the shares are disjoint and cover the
  files, and step s of all processes together is what one process with batch B*P would read.
- Resumption. The iterator's state is the index of its next batch; `get_state`/`set_state`
  (the trainer checkpoints it with the model) continue with exactly the same batches, random
  crops included: a file's crop is drawn from a generator seeded by (seed, epoch, file index).

Evaluation reads each process's contiguous block of the files once, in order, centre-cropped,
or as several test views per video (`num_clips`, `num_crops`: vmjax.data.views).

Sources of (path, labels):

    items = read_label_csv("videos/train.csv", num_classes=400, vocabulary="classes.csv")
    items = read_kinetics_csv("kinetics400/train.csv", "kinetics400/train")

A batch holds `pixels` uint8 [batch, time, height, width, 3], `mask` bool [batch, time] (False
on frames past a short video's end), `labels` uint8 [batch, classes], `weights` float32 [batch]
(0 on padding rows), `ids` (the file paths, host-only), and with `log_mel_examples` > 0
`log_mel` float32 [batch, examples, 96, 64] with `log_mel_mask` bool [batch, examples].
"""

from __future__ import annotations

import csv
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import grain
import numpy as np
from absl import logging

from vmjax.data import video
from vmjax.data import workers as workers_lib
from vmjax.data.sharding import check_process, eval_slice, read_options, shuffle_seed

Item = tuple[str, tuple[int, ...]]  # (video file path, class indices)
ON_ERROR = ("raise", "skip")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
# Mixed into the seeds so these permutations and crops do not coincide with other uses of them.
_SHUFFLE_SALT = 0x7669_6466
_CROP_SALT = 0x6372_6F70
_MISSING_EXAMPLES = 5  # missing Kinetics files named in the warning


class BadFiles:
    """Skipped unreadable videos of this process: each logged once (the first time), and counted.

    The same interface as `pipeline.BadRecords` (call it with the error; `count`), keyed by file.
    """

    def __init__(self):
        self.seen: set[str] = set()
        self._lock = threading.Lock()  # batches decode in several threads

    def __call__(self, error: video.VideoError) -> None:
        with self._lock:
            first = error.path not in self.seen
            self.seen.add(error.path)
        if first:
            logging.warning("Skipping unreadable video (data.on_error='skip'): %s", error)

    def __getstate__(self) -> dict:
        # Worker processes get a copy (locks do not pickle) and count their own.
        return {"seen": set(self.seen)}

    def __setstate__(self, state: dict) -> None:
        self.seen, self._lock = state["seen"], threading.Lock()

    @property
    def count(self) -> int:
        return len(self.seen)


def read_vocabulary(path: str | os.PathLike[str], num_classes: int) -> dict[str, int]:
    """Class name -> index from a CSV with `Index` and `Name` columns (YouTube-8M's layout)."""
    path = os.fspath(path)
    names: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        _require_columns(path, reader.fieldnames, ("Index", "Name"))
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            index = _parse_index(row["Index"], num_classes, where)
            name = row["Name"].strip()
            if name in names:
                raise ValueError(f"{where}: class name {name!r} is listed twice")
            names[name] = index
    return names


def read_label_csv(
    path: str | os.PathLike[str],
    num_classes: int,
    vocabulary: str | os.PathLike[str] | None = None,
) -> list[Item]:
    """(video path, class indices) of each row of a `path,labels` CSV.

    Args:
      path: a CSV with a header naming (at least) `path` and `labels` columns. Relative paths
        are resolved against the CSV's folder. `labels` entries are separated by spaces, or by
        semicolons when the field has one (so that names may contain spaces: "Video game;Car");
        an empty field is a video without labels.
      num_classes: every class index must lie in [0, num_classes).
      vocabulary: a CSV with `Index` and `Name` columns; entries that are not integers are
        looked up there (exactly, else with underscores read as spaces).
    """
    path = os.fspath(path)
    names = read_vocabulary(vocabulary, num_classes) if vocabulary is not None else None
    folder = os.path.dirname(os.path.abspath(path))
    items = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        _require_columns(path, reader.fieldnames, ("path", "labels"))
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            if not (row["path"] or "").strip():
                raise ValueError(f"{where}: empty path")
            field = (row["labels"] or "").strip()
            entries = field.split(";") if ";" in field else field.split()
            labels = tuple(
                _parse_label(entry.strip(), num_classes, names, where, vocabulary)
                for entry in entries
                if entry.strip()
            )
            file = os.path.join(folder, os.path.expanduser(row["path"].strip()))
            items.append((os.path.normpath(file), labels))
    return items


def kinetics_classes(path: str | os.PathLike[str]) -> list[str]:
    """The sorted label names of a Kinetics annotation CSV (their positions are class indices)."""
    return sorted({label for _, label, *_ in _kinetics_rows(os.fspath(path))})


def read_kinetics_csv(
    path: str | os.PathLike[str],
    video_root: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
) -> list[Item]:
    """(video path, (class index,)) of each clip of a Kinetics annotation CSV found on disk.

    The CSV has a header with `label,youtube_id,time_start,time_end` (and usually `split`). Clip
    files are looked for as `video_root/<label>/<id>_<start:06d>_<end:06d>.mp4` (also with the
    label's spaces as underscores) and as `video_root/<id>_<start:06d>_<end:06d>.mp4`, the
    layouts of the common Kinetics downloaders. Clips with no file are counted and named in one
    warning (downloads always miss some videos); none found at all is an error.

    Args:
      classes: label names in class-index order; default the CSV's sorted label names (pass
        the training CSV's `kinetics_classes` when reading a split that may lack some).
    """
    path, video_root = os.fspath(path), os.fspath(video_root)
    rows = list(_kinetics_rows(path))
    if classes is None:
        classes = sorted({label for _, label, *_ in rows})
    index = {name: i for i, name in enumerate(classes)}
    listings: dict[str, frozenset[str]] = {}  # one listdir per folder, not a stat per clip

    def listing(folder: str) -> frozenset[str]:
        if folder not in listings:
            try:
                listings[folder] = frozenset(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                listings[folder] = frozenset()
        return listings[folder]

    items, missing = [], []
    for line, label, name in rows:
        if label not in index:
            raise ValueError(
                f"{path}, line {line}: label {label!r} is not one of the {len(classes)} classes"
            )
        folders = (
            os.path.join(video_root, label),
            os.path.join(video_root, label.replace(" ", "_")),
        )
        found = next((d for d in (*folders, video_root) if name in listing(d)), None)
        if found is None:
            missing.append(os.path.join(folders[0], name))
            continue
        items.append((os.path.join(found, name), (index[label],)))
    if not items:
        raise FileNotFoundError(
            f"{path}: none of its {len(rows)} clips is under {video_root} (looked for "
            f"<label>/<youtube_id>_<start:06d>_<end:06d>.mp4 and the same without <label>/, "
            f"e.g. {missing[0] if missing else 'no rows'})"
        )
    if missing:
        logging.warning(
            "%s: %d of %d clips have no file under %s and are left out, e.g. %s",
            path,
            len(missing),
            len(rows),
            video_root,
            ", ".join(missing[:_MISSING_EXAMPLES]),
        )
    return items


def _kinetics_rows(path: str) -> Iterable[tuple[int, str, str]]:
    """(line, label, clip file name) of each row."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        _require_columns(path, reader.fieldnames, KINETICS_COLUMNS)
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            try:
                start, end = (round(float(row[k])) for k in ("time_start", "time_end"))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{where}: time_start/time_end must be seconds, got "
                    f"{row['time_start']!r}, {row['time_end']!r}"
                ) from None
            label, youtube_id = (row[k].strip() for k in ("label", "youtube_id"))
            if not label or not youtube_id:
                raise ValueError(f"{where}: empty label or youtube_id")
            yield reader.line_num, label, f"{youtube_id}_{start:06d}_{end:06d}.mp4"


def _require_columns(path: str, fieldnames: Sequence[str] | None, wanted: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in (fieldnames or ())]
    if missing:
        raise ValueError(
            f"{path}: the header row {list(fieldnames or [])} lacks column(s) {missing}; "
            f"expected {','.join(wanted)}"
        )


def _parse_index(text: str, num_classes: int, where: str) -> int:
    try:
        index = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: class index {text!r} is not an integer") from None
    if not 0 <= index < num_classes:
        raise ValueError(f"{where}: class {index} is outside [0, {num_classes}) (num_classes)")
    return index


def _parse_label(
    entry: str,
    num_classes: int,
    names: dict[str, int] | None,
    where: str,
    vocabulary: str | os.PathLike[str] | None,
) -> int:
    if entry.lstrip("-").isdigit():
        return _parse_index(entry, num_classes, where)
    if names is None:
        raise ValueError(f"{where}: label {entry!r} is not a class index and no vocabulary given")
    for name in (entry, entry.replace("_", " ")):
        if name in names:
            return names[name]
    raise ValueError(f"{where}: unknown class name {entry!r} (not in {os.fspath(vocabulary)})")


class _Items:
    """Random access to (file index, path, labels), packed into a few arrays.

    A Python list of tuples costs ~200 bytes per video and is pickled to every worker; millions
    of videos fit in packed UTF-8 bytes and int32 labels.
    """

    def __init__(self, items: Sequence[Item], num_classes: int):
        paths, labels = [], []
        for path, classes in items:
            classes = np.asarray(classes, np.int64).reshape(-1)
            bad = (classes < 0) | (classes >= num_classes)
            if bad.any():
                raise ValueError(
                    f"{os.fspath(path)}: class {classes[bad][0]} is outside [0, {num_classes}) "
                    "(num_classes)"
                )
            paths.append(os.fspath(path).encode())
            labels.append(classes.astype(np.int32))
        self._paths = b"".join(paths)
        self._path_ends = np.cumsum([len(p) for p in paths], dtype=np.int64)
        self._labels = np.concatenate(labels) if labels else np.zeros([0], np.int32)
        self._label_ends = np.cumsum([len(x) for x in labels], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._path_ends)

    def __getitem__(self, index: int) -> tuple[int, str, tuple[int, ...]]:
        p0 = int(self._path_ends[index - 1]) if index else 0
        l0 = int(self._label_ends[index - 1]) if index else 0
        path = self._paths[p0 : int(self._path_ends[index])].decode()
        labels = tuple(self._labels[l0 : int(self._label_ends[index])].tolist())
        return index, path, labels


class _WithEpoch:
    """(index, path, labels) at position i of the repeated sequence -> (..., epoch of i)."""

    def __init__(self, num_items: int):
        self.num_items = num_items

    def __call__(self, position: int, item: tuple) -> tuple:
        return (*item, position // self.num_items)


class _Batcher:
    """Decodes a batch's files and stacks them, padded to `batch_size` rows (weight 0).

    One batch function instead of a per-file map stage keeps grain's per-element bookkeeping
    off the hot path (as pipeline.make_batcher does). A class, so that grain's workers get it by
    reference to this module rather than as a pickled closure.
    """

    def __init__(
        self,
        *,
        batch_size: int,
        num_classes: int,
        num_frames: int,
        size: tuple[int, int],
        sampling: str,
        stride: int,
        fps: float,
        log_mel_examples: int,
        seed: int,
        train: bool,
        bad_files: BadFiles | None,
        num_clips: int = 1,
        num_crops: int = 1,
    ):
        self.batch_size, self.num_classes, self.num_frames = batch_size, num_classes, num_frames
        self.size, self.sampling, self.stride, self.fps = size, sampling, stride, fps
        self.log_mel_examples, self.seed, self.train = log_mel_examples, seed, train
        self.bad_files = bad_files
        self.num_clips, self.num_crops = num_clips, num_crops
        self.num_views = num_clips * num_crops  # rows per video (vmjax.data.views)

    def decode(self, row: tuple) -> dict[str, Any]:
        index, path, labels, *epoch = row
        if self.num_views > 1:  # evaluation only: the test views, one row each
            clip = video.decode_views(
                path,
                num_frames=self.num_frames,
                num_clips=self.num_clips,
                num_crops=self.num_crops,
                sampling=self.sampling,
                stride=self.stride,
                fps=self.fps,
                size=self.size,
            )
            clip.update(path=path, labels=labels)
            return clip
        rng = None
        if self.train:
            rng = np.random.default_rng([self.seed, _CROP_SALT, *epoch, index])
        clip = video.decode_video(
            path,
            num_frames=self.num_frames,
            sampling=self.sampling,
            stride=self.stride,
            fps=self.fps,
            size=self.size,
            crop="random" if self.train else "center",
            rng=rng,
            with_audio=self.log_mel_examples > 0,
        )
        clip.update(path=path, labels=labels)
        return clip

    def __call__(self, rows: Sequence[tuple]) -> dict[str, np.ndarray]:
        if self.bad_files is None:
            return self.collate([self.decode(row) for row in rows])
        clips = []
        for row in rows:
            try:
                clips.append(self.decode(row))
            except video.VideoError as e:
                self.bad_files(e)
        return self.collate(clips)

    def collate(self, clips: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        v = self.num_views
        batch = empty_batch(
            batch_size=self.batch_size * v,
            num_classes=self.num_classes,
            num_frames=self.num_frames,
            size=self.size,
            log_mel_examples=self.log_mel_examples,
        )
        for i, clip in enumerate(clips):
            row = slice(i * v, (i + 1) * v)  # a video's views: consecutive rows
            batch["pixels"][row] = clip["frames"]
            batch["mask"][row] = clip["mask"]
            batch["labels"][row, list(clip["labels"])] = 1
            batch["weights"][row] = 1
            if self.log_mel_examples:
                examples = clip["log_mel"][: self.log_mel_examples]
                batch["log_mel"][row, : len(examples)] = examples
                batch["log_mel_mask"][row, : len(examples)] = True
        # File paths as a fixed-width str array ('' on padding rows); they stay on the host.
        paths = [clip["path"] for clip in clips for _ in range(v)]
        batch["ids"] = np.array(paths + [""] * (v * (self.batch_size - len(clips))))
        return batch


def empty_batch(
    *,
    batch_size: int,
    num_classes: int,
    num_frames: int,
    size: int | tuple[int, int],
    log_mel_examples: int = 0,
) -> dict[str, np.ndarray]:
    """A batch of padding rows only (all weights 0): the pipeline's shapes and dtypes, e.g. to
    initialise a model or to join a collective eval step with nothing left to read."""
    height, width = _size(size)
    batch = {
        "ids": np.array([""] * batch_size),
        "pixels": np.zeros([batch_size, num_frames, height, width, 3], np.uint8),
        "mask": np.zeros([batch_size, num_frames], bool),
        "labels": np.zeros([batch_size, num_classes], np.uint8),
        "weights": np.zeros([batch_size], np.float32),
    }
    if log_mel_examples:
        batch["log_mel"] = np.zeros([batch_size, log_mel_examples, 96, 64], np.float32)
        batch["log_mel_mask"] = np.zeros([batch_size, log_mel_examples], bool)
    return batch


def video_dataset(
    items: Sequence[Item],
    *,
    batch_size: int,
    num_classes: int,
    num_frames: int,
    size: int | tuple[int, int],
    sampling: str = "uniform",
    stride: int = 1,
    fps: float = 1.0,
    seed: int,
    process_index: int,
    process_count: int,
    train: bool,
    shuffle: bool | None = None,
    log_mel_examples: int = 0,
    on_error: str = "raise",
    bad_files: BadFiles | None = None,
    prefetch: int = 2,
    read_threads: int = 1,
    workers: int = 0,
    num_clips: int = 1,
    num_crops: int = 1,
) -> grain.IterDataset:
    """This process's batches of decoded clips: with `train`, an infinite stream; else one pass.

    Training reads the global per-epoch shuffled sequence's positions `process_index::
    process_count`, random-cropped, and runs on across epochs in full batches. Evaluation reads
    the contiguous block `eval_slice(...)` in order, centre-cropped, the last batch padded (a
    process may get one batch fewer than another, or none).

    Args:
      items: (path, class indices) pairs, e.g. from `read_label_csv` or `read_kinetics_csv`.
      num_frames, sampling, stride, fps: which frames of each video (`video.decode_video`).
      size: (height, width) of the frames, or one int for square frames: each video is scaled
        (aspect kept) to cover it, then cropped.
      shuffle: training only: a new permutation each epoch (default) or the files' order.
      log_mel_examples: also decode the audio into this many VGGish log-mel examples per clip
        (`log_mel`, `log_mel_mask`); 0 skips the audio.
      on_error: "raise": an unreadable file raises `video.VideoError` naming it; "skip": it is
        handed to `bad_files` (one is made if None; pass one to read its count) and its row is
        padding. With workers each worker process counts its own.
      prefetch: batches prepared ahead (by `read_threads` threads, or per worker); 0 decodes
        each batch when it is asked for.
      workers: processes decoding batches (grain's mp_prefetch); 0 keeps it in this process.
      num_clips, num_crops: evaluation only: read each video as num_clips x num_crops test
        views (vmjax.data.views), its consecutive rows in a batch of batch_size x views rows,
        each with the video's labels, weight and id.

    Returns:
      A grain IterDataset; `iter()` of it has `get_state`/`set_state` for exact resumption.
    """
    check_process(process_index, process_count)
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if on_error == "raise" and bad_files is not None:
        raise ValueError('bad_files counts skipped files: it needs on_error="skip"')
    if on_error == "skip" and bad_files is None:
        bad_files = BadFiles()
    if shuffle and not train:
        raise ValueError("evaluation reads the files in order: shuffle needs train=True")
    several = num_clips * num_crops > 1
    if num_clips < 1 or num_crops < 1 or (several and (train or log_mel_examples)):
        raise ValueError(
            f"num_clips={num_clips}, num_crops={num_crops}: test views are >= 1 and, beyond "
            "one, for evaluation (train=False) of pixels only (log_mel_examples=0)"
        )
    if batch_size < 1 or log_mel_examples < 0 or workers < 0:
        raise ValueError(
            f"need batch_size >= 1, log_mel_examples >= 0, workers >= 0; got {batch_size}, "
            f"{log_mel_examples}, {workers}"
        )
    size = _size(size)
    # Fail now, not in a worker at the first batch, on arguments decode_video would reject.
    video._check_args(num_frames, sampling, stride, fps, size, "center", None)
    source = _Items(items, num_classes)
    batcher = _Batcher(
        batch_size=batch_size,
        num_classes=num_classes,
        num_frames=num_frames,
        size=size,
        sampling=sampling,
        stride=stride,
        fps=fps,
        log_mel_examples=log_mel_examples,
        seed=seed,
        train=train,
        bad_files=bad_files,
        num_clips=num_clips,
        num_crops=num_crops,
    )
    ds = grain.MapDataset.source(source)
    if train:
        if len(source) < process_count * batch_size:
            raise ValueError(
                f"{len(source)} videos are fewer than one batch of {batch_size} for each of "
                f"{process_count} processes"
            )
        if shuffle is None or shuffle:
            ds = ds.shuffle(seed=shuffle_seed(seed, _SHUFFLE_SALT))
        # The epoch is taken from the global position, before sharding, to seed the crops.
        ds = ds.repeat().map_with_index(_WithEpoch(len(source)))
        ds = ds[process_index::process_count]
        ds = ds.batch(batch_size, drop_remainder=True, batch_fn=batcher)
    else:
        block = eval_slice(len(source), process_index, process_count)
        ds = ds[block.start : block.stop].batch(batch_size, batch_fn=batcher)
    out = ds.to_iter_dataset(read_options(prefetch, read_threads))
    if not workers:
        return out
    # Worker w prepares batches w, w + workers, ...; grain returns them in order.
    return workers_lib.in_processes(out, workers, prefetch)


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (height, width) or one int, got {size}")
    return int(height), int(width)
