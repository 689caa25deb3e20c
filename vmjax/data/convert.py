"""Converts YouTube-8M TFRecord shards into an indexed dataset (ArrayRecord in TFDS layout).

    python -m vmjax.data.convert --src '/data/yt8m/frame/train*.tfrecord' --dst /data/yt8m_frame
    python -m vmjax.data.convert --src '/data/yt8m/frame/validate*.tfrecord' --dst /data/yt8m_frame

One run converts one split and adds it to `--dst` (a dataset directory, which
`tfds.builder_from_directory` and `vmjax.data.indexed.open_source` read): `dataset_info.json`,
`features.json` and `yt8m-<split>.array_record-NNNNN-of-MMMMM`. Each record is CRC-checked
and decoded (a bad one stops the run, naming file, record and field) and stored unchanged,
wrapped as the `record` bytes of a TFDS example (see `vmjax.data.tfds_yt8m`). Records keep
their input order; input files are grouped in order into the output shards.

Nothing half-written looks like a dataset: shards are written into a hidden temporary
directory beside `--dst` and moved in at the end; `dataset_info.json`, which lists the splits
and their shard lengths, is replaced last, under a lock, so runs for different splits may go
in parallel. No TensorFlow is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import multiprocessing
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Sequence

import tensorflow_datasets as tfds
import tqdm
from array_record.python import array_record_module
from etils import epath
from google.protobuf import message
from tensorflow_datasets.core import naming
from tensorflow_datasets.proto import tf_example_pb2

from vmjax.data import tfds_yt8m as ds
from vmjax.data import tfrecord

# One record per chunk, as TFDS writes, so a random read touches only its own record.
_GROUP_SIZE = "group_size:1"
# Uncompressed by default: on uint8 YT8M-like frames zstd:3 (ArrayRecord's and TFDS's default)
# saved ~12% of the bytes but made each random read ~5x slower (0.78 vs 0.15 ms per 300-frame
# record, more than decoding and batching it) and writing ~3x slower.
DEFAULT_COMPRESSION = "uncompressed"
_COMPRESSION = re.compile(r"uncompressed|snappy|zstd:-?\d+|brotli:\d+")
_FRAMING = 16  # TFRecord bytes around each payload: length, its CRC, data CRC


def resolve_files(src: str | Sequence[str]) -> list[str]:
    """Sorted files matching a glob, comma-separated globs or a list of them."""
    patterns = src.split(",") if isinstance(src, str) else list(src)
    files = sorted({f for p in patterns for f in glob.glob(os.path.expanduser(p.strip()))})
    if not files:
        raise FileNotFoundError(f"--src {src!r} matched no files")
    for f in files:
        if os.path.isdir(f) or not os.access(f, os.R_OK):
            raise PermissionError(f"--src: {f} is not a readable file")
    return files


def infer_split(files: Sequence[str]) -> str:
    """The split all file names start with (train, validate or test)."""
    found = {s for f in files for s in ds.SPLITS if os.path.basename(f).startswith(s)}
    named = [f for f in files if any(os.path.basename(f).startswith(s) for s in ds.SPLITS)]
    if len(found) != 1 or len(named) != len(files):
        raise ValueError(
            f"cannot tell the split from the file names (found {sorted(found) or 'none'} of "
            f"{ds.SPLITS}); pass --split"
        )
    return found.pop()


def infer_level(files: Sequence[str]) -> str:
    """'frame' or 'video', from the first record of the inputs."""
    for path in files:
        for index, offset, payload in tfrecord.read_records(path):
            # A video-level Example parses as a SequenceExample too (its features = context).
            try:
                example = tf_example_pb2.SequenceExample.FromString(payload)
            except message.DecodeError as e:
                raise tfrecord.RecordError(
                    path, index, offset, "<proto>", f"cannot parse as a tf.train.Example ({e})"
                ) from None
            if {"rgb", "audio"} & set(example.feature_lists.feature_list):
                return "frame"
            if "mean_rgb" in example.context.feature:
                return "video"
            raise tfrecord.RecordError(
                path,
                index,
                offset,
                "<proto>",
                "has neither rgb/audio feature lists (frame level) nor mean_rgb (video level); "
                "pass --level",
            )
    raise ValueError("the --src files hold no records")


def _shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{ds.NAME}-{split}.{ds.FILE_FORMAT}-{shard:05d}-of-{num_shards:05d}"


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_shard(
    task: tuple[list[str], str, str, str], progress: Callable[[int], None] | None = None
) -> tuple[int, int]:
    """Writes the records of `files` to one ArrayRecord file; returns (records, stored bytes)."""
    files, out_path, level, compression = task
    decode = ds.DECODERS[level]
    writer = array_record_module.ArrayRecordWriter(out_path, f"{_GROUP_SIZE},{compression}")
    count = num_bytes = 0
    try:
        for path in files:
            for index, offset, payload in tfrecord.read_records(path):
                decode(payload, path=path, index=index, offset=offset)
                example = ds.wrap(payload)
                writer.write(example)
                count += 1
                num_bytes += len(example)
                if progress is not None:
                    progress(len(payload) + _FRAMING)
    finally:
        writer.close()
    _fsync(out_path)  # before any rename makes the file part of a dataset
    return count, num_bytes


def _write_shard_task(task: tuple[list[str], str, str, str]) -> tuple[int, int]:
    return _write_shard(task)


def _make_hidden_dir(parent: str, prefix: str) -> str:
    """A new directory `parent/prefix-XXXXXXXX`, with the umask's permissions (mkdtemp's 0700
    would carry over to the renamed dataset and lock other users out)."""
    while True:
        path = os.path.join(parent, f"{prefix}-{uuid.uuid4().hex[:8]}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def _locked(directory: str):
    """An exclusive flock on `directory`, serialising commits of runs into the same parent."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def existing_splits(dst: str, level: str) -> dict[str, tfds.core.SplitInfo]:
    """The splits already in `dst` (none if it does not exist); checks it holds `level` data."""
    if not os.path.exists(dst):
        return {}
    if not os.path.exists(os.path.join(dst, "dataset_info.json")):
        if os.listdir(dst):
            raise FileExistsError(f"--dst {dst} exists and is not a dataset directory")
        return {}
    info = tfds.builder_from_directory(dst).info
    if info.name != ds.NAME or info.config_name != level:
        raise ValueError(
            f"--dst {dst} holds {info.name}/{info.config_name} data, not {ds.NAME}/{level}"
        )
    return dict(info.splits.items())


def _split_info(dst: str, split: str, lengths: list[int], num_bytes: int) -> tfds.core.SplitInfo:
    template = naming.ShardedFileTemplate(
        data_dir=epath.Path(dst),
        template=ds.FILENAME_TEMPLATE,
        dataset_name=ds.NAME,
        split=split,
        filetype_suffix=ds.FILE_FORMAT,
    )
    return tfds.core.SplitInfo(
        name=split, shard_lengths=lengths, num_bytes=num_bytes, filename_template=template
    )


def _write_info(directory: str, dst: str, level: str, splits) -> None:
    """Writes dataset_info.json and features.json describing `dst` into `directory`."""
    info = ds.make_info(ds.identity(level, dst), tfds.core.SplitDict(list(splits)))
    info.write_to_directory(directory)
    for name in ("features.json", "dataset_info.json"):
        _fsync(os.path.join(directory, name))


def _replace_info(dst: str, level: str, splits) -> None:
    """Atomically replaces the metadata of `dst` (features.json first, dataset_info.json last)."""
    scratch = _make_hidden_dir(os.path.dirname(dst), ".info")
    try:
        _write_info(scratch, dst, level, splits)
        for name in ("features.json", "dataset_info.json"):
            os.replace(os.path.join(scratch, name), os.path.join(dst, name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _commit(tmp: str, dst: str, level: str, split: tfds.core.SplitInfo, overwrite: bool) -> None:
    """Moves the shards in `tmp` into `dst` and lists the split; `dst` always stays readable."""
    with _locked(os.path.dirname(dst)):
        # Re-read under the lock: another run may have added a split meanwhile.
        splits = existing_splits(dst, level)
        if split.name in splits and not overwrite:
            raise FileExistsError(f"{dst} already has split {split.name!r}; pass --overwrite")
        others = [s for name, s in splits.items() if name != split.name]
        if not splits:
            _write_info(tmp, dst, level, [split])
            if os.path.isdir(dst):  # empty, checked above
                os.rmdir(dst)
            os.rename(tmp, dst)
            return
        if split.name in splits:  # hide the old split, then remove its files
            _replace_info(dst, level, others)
            prefix = f"{ds.NAME}-{split.name}.{ds.FILE_FORMAT}-"
            for name in os.listdir(dst):
                if name.startswith(prefix):
                    os.remove(os.path.join(dst, name))
        for name in os.listdir(tmp):
            os.rename(os.path.join(tmp, name), os.path.join(dst, name))
        _replace_info(dst, level, [*others, split])
    shutil.rmtree(tmp, ignore_errors=True)


def convert(
    src: str | Sequence[str],
    dst: str,
    *,
    level: str | None = None,
    split: str | None = None,
    num_shards: int | None = None,
    workers: int = 1,
    compression: str = DEFAULT_COMPRESSION,
    overwrite: bool = False,
    progress: bool = True,
) -> tfds.core.SplitInfo:
    """Converts the TFRecord files matching `src` into split `split` of the dataset in `dst`.

    Args:
      src: glob, comma-separated globs or a list of them.
      level: 'frame' or 'video'; inferred from the first record when None.
      split: split name; inferred from the file names (train*, validate*, test*) when None.
      num_shards: output shards, each a run of consecutive input files; default one per file.
      workers: processes writing shards in parallel.
      compression: ArrayRecord chunk compression: 'uncompressed', 'snappy', 'zstd:N' or
        'brotli:N'. Readers need not know it.
      overwrite: replace `split` if `dst` already has it.
    """
    files = resolve_files(src)
    level = level or infer_level(files)
    if level not in ds.LEVELS:
        raise ValueError(f"--level must be one of {ds.LEVELS}, got {level!r}")
    split = split or infer_split(files)
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ValueError(f"--split {split!r}: use letters, digits and underscores")
    if not _COMPRESSION.fullmatch(compression):
        raise ValueError(
            f"--compression {compression!r}: use uncompressed, snappy, zstd:N or brotli:N"
        )
    if workers < 1:
        raise ValueError(f"--workers={workers}: give at least 1")
    num_shards = num_shards or len(files)
    if not 1 <= num_shards <= len(files):
        raise ValueError(f"--num_shards={num_shards}: give 1 to {len(files)} (one per file)")
    dst = os.path.abspath(os.path.expanduser(dst))
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    if split in existing_splits(dst, level) and not overwrite:  # fail before the long part
        raise FileExistsError(f"{dst} already has split {split!r}; pass --overwrite")

    groups = [
        files[k * len(files) // num_shards : (k + 1) * len(files) // num_shards]
        for k in range(num_shards)
    ]
    tmp = _make_hidden_dir(parent, f".{os.path.basename(dst)}.incomplete-{split}")
    tasks = [
        (g, os.path.join(tmp, _shard_name(split, k, num_shards)), level, compression)
        for k, g in enumerate(groups)
    ]
    total = sum(os.path.getsize(f) for f in files)
    bar = tqdm.tqdm(
        total=total, unit="B", unit_scale=True, desc=f"{level}/{split}", disable=not progress
    )
    try:
        if workers > 1:
            ctx = multiprocessing.get_context("spawn")  # no forked copies of library threads
            with ctx.Pool(workers) as pool:
                results = []
                for task, result in zip(tasks, pool.imap(_write_shard_task, tasks), strict=True):
                    results.append(result)
                    bar.update(sum(os.path.getsize(f) for f in task[0]))
        else:
            results = [_write_shard(task, bar.update) for task in tasks]
        lengths = [count for count, _ in results]
        if not sum(lengths):
            raise ValueError(f"--src {src!r}: the files hold no records")
        info = _split_info(dst, split, lengths, sum(b for _, b in results))
        _commit(tmp, dst, level, info, overwrite)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vmjax.data.convert",
        description=(
            "Convert YouTube-8M TFRecord shards (one split per run) into ArrayRecord files in "
            "TFDS layout, for random access, global shuffling and exact resumption. Records "
            "are CRC-checked, decoded to validate them, and stored unchanged."
        ),
    )
    parser.add_argument("--src", required=True, help="glob(s) of input .tfrecord files, quoted")
    parser.add_argument("--dst", required=True, help="dataset directory to create or add to")
    parser.add_argument("--level", choices=ds.LEVELS, help="default: from the first record")
    parser.add_argument("--split", help="split name; default: from file names (train*, ...)")
    parser.add_argument("--num_shards", type=int, help="output shards; default one per input")
    parser.add_argument("--workers", type=int, default=1, help="parallel shard writers")
    parser.add_argument(
        "--compression",
        default=DEFAULT_COMPRESSION,
        help="uncompressed (default: fastest random reads), snappy, zstd:N or brotli:N",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing split")
    args = parser.parse_args(argv)
    try:
        info = convert(
            args.src,
            args.dst,
            level=args.level,
            split=args.split,
            num_shards=args.num_shards,
            workers=args.workers,
            compression=args.compression,
            overwrite=args.overwrite,
            progress=True,
        )
    except (ValueError, OSError) as e:  # RecordError is a ValueError
        parser.exit(2, f"{parser.prog}: error: {e}\n")  # the user's input: 2, as argparse
    print(
        f"{args.dst}: split {info.name!r}, {info.num_examples} records in "
        f"{len(info.shard_lengths)} shards",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
