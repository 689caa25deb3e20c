"""What a run reads: its train and eval files (or the embedded data), as batch streams.

resolve_data picks the files (generating the embedded dataset once when no pattern is given);
train_stream and eval_stream turn them into this process's batches for every data format
(YT8M TFRecords, ArrayRecord datasets, video files).
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging

from vmjax.data import pipeline, synthetic

FORMATS = ("tfrecord", "array_record", "video_files")
CSV_LAYOUTS = ("labels", "kinetics")


def resolve_data(config: ml_collections.ConfigDict) -> tuple[list, list, str | None]:
    """Train and eval files; with no patterns, the embedded dataset (generated once).

    For data.format 'video_files' the "files" are (video path, class indices) items and the
    embedded dataset is synthetic mp4s (vmjax.data.synthetic_video).
    """
    d = config.data
    if bool(d.train_pattern) != bool(d.eval_pattern):
        raise ValueError(
            "set both config.data.train_pattern and config.data.eval_pattern, or "
            "neither (to use the embedded dataset)"
        )
    if d.format == "video_files":
        return _video_items(d)
    if d.format == "array_record":
        if not d.train_pattern:
            raise ValueError(
                "data.format='array_record' needs data.train_pattern and data.eval_pattern as "
                "DIR:SPLIT of a dataset written by `python -m vmjax.data.convert`"
            )
        return [_split_ref(d.train_pattern)], [_split_ref(d.eval_pattern)], None
    if d.format != "tfrecord":
        raise ValueError(f"config.data.format={d.format!r}; expected one of {FORMATS}")
    data_dir = None
    train_pattern, eval_pattern = d.train_pattern, d.eval_pattern
    if not train_pattern:
        spec = synthetic.Spec(num_classes=d.num_classes, **d.synthetic.to_dict())
        # Process 0 generates while the others wait; they then find it (on a shared disk) or
        # generate the identical data themselves (on a local one).
        if jax.process_count() > 1 and jax.process_index() > 0:
            barrier("embedded data")
        data_dir = synthetic.ensure(d.cache_dir, spec, log=logging.info)
        if jax.process_count() > 1 and jax.process_index() == 0:
            barrier("embedded data")
        train_pattern, eval_pattern = synthetic.patterns(data_dir, d.level)
    train_files = pipeline.resolve_files(train_pattern, "data.train_pattern")
    eval_files = pipeline.resolve_files(eval_pattern, "data.eval_pattern")
    check_level(train_files, d.level, "data.train_pattern")
    check_level(eval_files, d.level, "data.eval_pattern")
    return (
        train_files,
        eval_files,
        data_dir,
    )


_LEVEL_FIX = {
    "frame": "a frame-level config (e.g. --config yt8m:frame, whose models read frames)",
    "video": "a video-level config (e.g. --config yt8m, whose models read mean features)",
}


def check_level(files: list[str], level: str, field: str) -> None:
    """DataError when the first readable record of `files` is of the other data level.

    Checked before any work: a frame-level model given video-level files (or the reverse)
    otherwise fails deep in the pipeline or the model without naming the level.
    """
    from vmjax.data import tfrecord, yt8m
    from vmjax.errors import DataError

    for path in files[:1]:
        try:
            first = next(tfrecord.read_records(path), None)
        except (OSError, tfrecord.RecordError):
            return  # a damaged file: the pipeline names it (or skips it) with its record
        found = yt8m.record_level(first[2]) if first else None
        if found and found != level:
            raise DataError(
                f"config.data.level={level!r}, but {path} ({field}) holds {found}-level "
                f"records: use {_LEVEL_FIX[found]}, or point {field} at {level}-level files"
            )


def _video_items(d: ml_collections.ConfigDict) -> tuple[list, list, str | None]:
    """(path, class indices) of the train and eval videos; with no CSVs, synthetic mp4s."""
    from vmjax.data import synthetic_video, video_files

    if d.csv_layout not in CSV_LAYOUTS:
        raise ValueError(f"config.data.csv_layout={d.csv_layout!r}; expected one of {CSV_LAYOUTS}")
    if d.csv_layout == "kinetics" and d.train_pattern and not d.video_root:
        raise ValueError("config.data.csv_layout='kinetics' needs config.data.video_root")
    data_dir, layout = None, d.csv_layout
    train_csv, eval_csv = d.train_pattern, d.eval_pattern
    if not train_csv:
        if d.num_classes != len(synthetic_video.CLASSES):
            raise ValueError(
                f"the synthetic videos have {len(synthetic_video.CLASSES)} classes; "
                f"config.data.num_classes is {d.num_classes}"
            )
        # As for the embedded YT8M data: process 0 generates, the others wait, then reuse it.
        if jax.process_count() > 1 and jax.process_index() > 0:
            barrier("synthetic videos")
        data_dir = synthetic_video.ensure(
            d.cache_dir, log=logging.info, **d.synthetic_video.to_dict()
        )
        if jax.process_count() > 1 and jax.process_index() == 0:
            barrier("synthetic videos")
        train_csv = os.path.join(data_dir, "train.csv")
        eval_csv = os.path.join(data_dir, "validate.csv")
        layout = "labels"
    train_csv, eval_csv = os.path.expanduser(train_csv), os.path.expanduser(eval_csv)
    if layout == "kinetics":
        classes = video_files.kinetics_classes(train_csv)
        if len(classes) != d.num_classes:
            raise ValueError(
                f"{train_csv} names {len(classes)} classes; config.data.num_classes is "
                f"{d.num_classes}"
            )
        train = video_files.read_kinetics_csv(train_csv, _split_root(d.video_root, train_csv))
        evals = video_files.read_kinetics_csv(
            eval_csv, _split_root(d.video_root, eval_csv), classes
        )
    else:
        vocabulary = os.path.expanduser(d.vocabulary) if d.vocabulary else None
        train = video_files.read_label_csv(train_csv, d.num_classes, vocabulary)
        evals = video_files.read_label_csv(eval_csv, d.num_classes, vocabulary)
    for items, csv_path in ((train, train_csv), (evals, eval_csv)):
        if not items:
            raise ValueError(f"{csv_path} lists no videos")
    return train, evals, data_dir


def _split_root(video_root: str, csv_path: str) -> str:
    """The folder of a Kinetics split's clips: video_root/<CSV name> if it exists, else video_root.

    video_root/train for train.csv is the layout of the common Kinetics downloaders.
    """
    root = os.path.expanduser(video_root)
    split = os.path.join(root, os.path.splitext(os.path.basename(csv_path))[0])
    return split if os.path.isdir(split) else root


def _video_dataset(
    config, items: list, batch_size: int, bad_files, *, train: bool, views=None, workers: int = 0
):
    from vmjax.data import video_files

    d = config.data
    return video_files.video_dataset(
        items,
        batch_size=batch_size,
        num_classes=d.num_classes,
        num_frames=d.num_frames,
        size=d.image_size,
        sampling=d.sampling,
        stride=d.frame_stride,
        fps=d.fps,
        seed=d.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        train=train,
        on_error=d.on_error,
        bad_files=bad_files,
        prefetch=d.prefetch,
        read_threads=d.read_threads,
        # Worker processes stream training batches; one eval pass is not worth starting them.
        workers=workers if train else 0,
        num_clips=views.num_clips if views else 1,  # a vmjax.data.views.ViewSpec (eval only)
        num_crops=views.num_crops if views else 1,
    )


def _split_ref(ref: str) -> str:
    """Checks a DIR:SPLIT reference to an indexed dataset and opens nothing yet."""
    data_dir, _, split = ref.rpartition(":")
    if not data_dir or not split:
        raise ValueError(f"{ref!r} is not DIR:SPLIT (e.g. /data/yt8m_ar:train)")
    if not os.path.exists(os.path.join(os.path.expanduser(data_dir), "dataset_info.json")):
        raise FileNotFoundError(f"{data_dir} has no dataset_info.json (see vmjax.data.convert)")
    return ref


def _open_split(ref: str, level: str):
    from vmjax.data import indexed

    data_dir, _, split = ref.rpartition(":")
    return indexed.open_source(data_dir, split, level=level)


def train_stream(config, spec, files: list[str], batch_size: int, bad_records=None):
    """This process's infinite iterator of training batches (TFRecords, ArrayRecord, videos).

    data.workers='auto' becomes a worker count (pipeline.worker_count, logged once); the
    iterator state keeps the count, so a restore rebuilds the pipeline with the saved one.
    """
    d = config.data
    workers = d.workers
    if d.format != "tfrecord" and workers == pipeline.AUTO:
        # No file cap: these workers take turns at whole batches instead of reading own files.
        one = pipeline.config_example_batch(d, 1)
        workers = pipeline.resolve_workers(
            workers,
            shm_free=pipeline.shm_free_bytes(),
            batch_bytes=batch_size * sum(np.asarray(v).nbytes for v in one.values()),
            prefetch=d.prefetch,
        )
    if d.format == "video_files":

        def build_videos(n: int):
            return _video_dataset(config, files, batch_size, bad_records, train=True, workers=n)

        return iter(pipeline.WorkerPipeline(build_videos, workers))
    if d.format == "array_record":
        from vmjax.data import indexed

        def build_indexed(n: int):
            return indexed.train_dataset(
                _open_split(files[0], d.level),
                lambda item: item,  # the batch function decodes (and skips bad records)
                batch_size=batch_size,
                seed=config.seed,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                collate=pipeline.make_batcher(spec, batch_size, bad_records),
                prefetch=d.prefetch,
                workers=n,
            )

        return iter(pipeline.WorkerPipeline(build_indexed, workers))
    my_files = pipeline.shard_files(files, jax.process_index(), jax.process_count())
    return iter(
        pipeline.train_dataset(
            my_files,
            spec,
            batch_size=batch_size,
            seed=config.seed,
            shuffle_buffer=d.shuffle_buffer,
            cycle_length=d.cycle_length,
            prefetch=d.prefetch,
            workers=d.workers,
            bad_records=bad_records,
        )
    )


def eval_stream(config, spec, files: list[str], batch_size: int, bad_records=None, views=None):
    """This process's share of the evaluation batches, in order, one pass.

    views: video files only: a vmjax.data.views.ViewSpec; each batch then holds `batch_size`
    videos as batch_size x views rows.
    """
    if config.data.format == "video_files":
        return iter(
            _video_dataset(config, files, batch_size, bad_records, train=False, views=views)
        )
    if config.data.format == "array_record":
        from vmjax.data import indexed

        spec = spec.for_eval()
        return indexed.eval_batches(
            _open_split(files[0], config.data.level),
            lambda item: item,
            pipeline.make_batcher(spec, batch_size, bad_records),
            batch_size,
            jax.process_index(),
            jax.process_count(),
        )
    my_files = pipeline.shard_files(files, jax.process_index(), jax.process_count())
    return pipeline.eval_batches(my_files, spec, batch_size=batch_size, bad_records=bad_records)


def barrier(name: str) -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def eval_batches_in_step(batches, data: ml_collections.ConfigDict, batch_size: int):
    """This process's eval batches; with several processes, until all are done.

    Every process must join each (collective) eval step, so a process whose share ran out
    joins with zero-weight batches until the last one finishes.
    """
    if jax.process_count() == 1:
        yield from batches
        return
    from jax.experimental import multihost_utils

    empty = pipeline.config_example_batch(data, batch_size)
    while True:
        batch = next(batches, None)
        if not multihost_utils.process_allgather(np.array(batch is not None)).any():
            return
        yield empty if batch is None else batch


def resolved_info(train_files, eval_files, data_dir) -> dict:
    """What a run's config resolved to (files, embedded data, devices), kept in config.json."""

    def first(files):  # a file name, or a (video path, labels) item's path
        return files[0][0] if isinstance(files[0], tuple) else files[0]

    return {
        "train_files": len(train_files),
        "eval_files": len(eval_files),
        "train_first": first(train_files),
        "eval_first": first(eval_files),
        "embedded_data_dir": data_dir,
        "jax_devices": len(jax.devices()),
        "jax_processes": jax.process_count(),
    }
