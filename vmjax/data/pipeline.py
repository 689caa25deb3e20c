"""grain input pipelines over YouTube-8M TFRecord shards.

Training streams shards: the file list is sharded by JAX process, shuffled anew
each epoch and repeated; records are interleaved across files, window-shuffled,
decoded and batched. Frames stay uint8 (dequantized on the device, inside the
jitted step) and are padded to `max_frames` with a mask. Evaluation reads each
file of its process once, in order, and pads the last batch with zero weights.

grain ships `TFRecordIterDataset`, but it skips CRC checks and its errors do not
name the file, so records come from our own verified reader (vmjax.data.streams).

Bad input (a truncated file, a CRC mismatch, a wrong feature size, a label outside
num_classes, a missing key) raises a RecordError naming file, record and field. With a
`BadRecords` counter (config.data.on_error='skip') such records are skipped instead: each
is logged once and counted, the rest of a file whose framing is broken is skipped, and a
batch that lost records is filled with zero-weight rows.

Training uses every core by default: data.workers='auto' (see `worker_count`) reads, decodes and
batches in grain worker processes, which write each batch straight into one of a few
shared-memory blocks they reuse (vmjax.data.batch_memory); the training process only maps it.
The worker count travels with the iterator state, so a run resumes exactly on a machine with
another number of cores.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Callable, Iterator, Sequence

import grain
import ml_collections
import numpy as np
from absl import logging

from vmjax.data import batch_memory, streams, tfrecord, yt8m
from vmjax.data import workers as workers_lib

LEVELS = ("frame", "video")


ON_ERROR = ("raise", "skip")
HOST_KEYS = ("ids",)  # batch entries that stay on the host (strings)
FRAME_SAMPLINGS = ("first", "uniform", "window")
AUTO = "auto"  # data.workers: pick the worker count from the cores (worker_count)
MAX_AUTO_WORKERS = 16  # 'auto' stops here: each worker is a process with its own buffers


class BadRecords:
    """Skipped bad records of this process: each logged once (the first time), and counted."""

    def __init__(self):
        self.seen: set[tuple[str, int]] = set()

    def __call__(self, error: tfrecord.RecordError) -> None:
        key = (error.path, error.index)
        if key not in self.seen:
            self.seen.add(key)
            logging.warning("Skipping bad record (data.on_error='skip'): %s", error)

    @property
    def count(self) -> int:
        return len(self.seen)


def resolve_files(pattern: str, field: str) -> list[str]:
    """Sorted files matching a glob (or comma-separated globs); fails fast on none."""
    if not pattern:
        raise ValueError(f"config.{field} is empty: give a glob of YT8M TFRecord files")
    files = []
    for p in pattern.split(","):
        files.extend(glob.glob(os.path.expanduser(p.strip())))
    files = sorted(set(files))
    if not files:
        raise FileNotFoundError(f"config.{field}={pattern!r} matched no files")
    for f in files:
        if not os.access(f, os.R_OK) or os.path.isdir(f):
            raise PermissionError(f"config.{field}: {f} is not a readable file")
    return files


def shard_files(files: Sequence[str], process_index: int, process_count: int) -> list[str]:
    """This process's share of the files (every process needs at least one)."""
    if len(files) < process_count:
        raise ValueError(
            f"{len(files)} files cannot be sharded over {process_count} processes; "
            "write more shards"
        )
    return list(files[process_index::process_count])


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, cgroups' cpusets), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1


def shm_free_bytes() -> int | None:
    """Free bytes in /dev/shm, where worker batches live; None where there is none to ask."""
    try:
        st = os.statvfs("/dev/shm")
    except (AttributeError, OSError):
        return None
    return st.f_bavail * st.f_frsize


def worker_count(
    requested: int | str,
    files: int | None = None,
    cores: int | None = None,
    *,
    shm_free: int | None = None,
    batch_bytes: int = 0,
    prefetch: int = 2,
) -> tuple[int, str]:
    """(worker processes, why) for config.data.workers = `requested` (an int, or 'auto').

    An int is taken as it is. 'auto' starts one worker per core of `cores` (default: this
    process's CPU affinity), less one left to the training process from 4 cores up (below 4,
    one worker fewer would cost a third to a half of the pipeline, and the training process
    does little of the input work: it maps the workers' batches), at most MAX_AUTO_WORKERS,
    at most `files` (each worker reads its own files), and no more than half of `shm_free`
    bytes of shared memory holds (each worker keeps `workers.blocks_per_worker(prefetch)`
    batches of `batch_bytes`).
    Fewer than 2 is 0: a single worker would only move the same work to another process.
    'auto' never fails; a low count says why.
    """
    if requested != AUTO:
        return int(requested), f"data.workers={requested}"
    cores = available_cores() if cores is None else cores
    if cores < 2:
        return 0, "data.workers='auto': 1 core, so batches are read in the training process"
    n = cores - 1 if cores >= 4 else cores
    why = [f"{cores} cores" + (", one left to the training process" if cores >= 4 else "")]
    if n > MAX_AUTO_WORKERS:
        n = MAX_AUTO_WORKERS
        why.append(f"at most {MAX_AUTO_WORKERS} automatically (set data.workers for more)")
    if files is not None and files < n:
        n = files
        why.append(f"{files} file(s) to read, one worker per file at most")
    if shm_free is not None and batch_bytes > 0:
        fits = (shm_free // 2) // (workers_lib.blocks_per_worker(prefetch) * batch_bytes)
        if fits < n:
            n = fits
            why.append(
                f"/dev/shm has {shm_free >> 20} MiB free for batches of "
                f"{max(batch_bytes >> 20, 1)} MiB"
            )
    if n < 2:
        return 0, f"data.workers='auto': {'; '.join(why)}: reading in the training process"
    return n, f"data.workers='auto': {n} worker processes ({'; '.join(why)})"


def resolve_workers(requested: int | str, files: int | None = None, **kw) -> int:
    """worker_count's number, logged once with its reason (for 'auto')."""
    n, why = worker_count(requested, files, **kw)
    if requested == AUTO:
        logging.info("Input pipeline: %s", why)
    return n


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """What a batch holds: the data fields of the config that shape it."""

    level: str  # 'frame' or 'video'
    num_classes: int
    max_frames: int  # frame level: frames kept and padded to
    max_text_tokens: int  # text_tokens kept and padded to
    text_vocab_size: int  # token ids must lie in [0, text_vocab_size)
    frame_sampling: str = "first"  # which max_frames of a longer video (see sample_frames)
    seed: int = 0  # of the random windows

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"data.level must be one of {LEVELS}, got {self.level!r}")
        if self.frame_sampling not in FRAME_SAMPLINGS:
            raise ValueError(
                f"data.frame_sampling must be one of {FRAME_SAMPLINGS}, got {self.frame_sampling!r}"
            )

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict) -> BatchSpec:
        return cls(
            level=data.level,
            num_classes=data.num_classes,
            max_frames=data.max_frames,
            max_text_tokens=data.max_text_tokens,
            text_vocab_size=data.text_vocab_size,
            frame_sampling=data.get("frame_sampling", "first"),
            seed=data.get("seed", 0),
        )

    def for_eval(self) -> BatchSpec:
        """Evaluation sees the full length the starter does: the first max_frames frames."""
        return dataclasses.replace(self, frame_sampling="first")


def sample_frames(num_frames: int, max_frames: int, how: str, rng_key=()) -> slice | np.ndarray:
    """Which frames of a `num_frames` video to keep, at most `max_frames` of them.

    first: the first max_frames (the official reader; also evaluation's "full length").
    uniform: max_frames frames at an even stride over the whole video.
    window: a random contiguous window of max_frames frames, its start drawn from numpy's
      Generator seeded with `rng_key` (so a given video visit always gets the same window,
      which keeps resumed runs exact).
    A video with at most max_frames frames keeps them all, in every mode.
    """
    if num_frames <= max_frames or how == "first":
        return slice(0, max_frames)
    if how == "uniform":
        return (np.arange(max_frames) * num_frames) // max_frames
    start = int(np.random.default_rng(rng_key).integers(0, num_frames - max_frames + 1))
    return slice(start, start + max_frames)


def make_decoder(spec: BatchSpec) -> Callable:
    """Returns a function (path, index, offset, payload[, visit]) -> example dict.

    `visit` (which opening of the file this record came from; it changes every epoch) seeds the
    random frame window together with spec.seed and the record index.
    """

    def decode(item):
        path, index, offset, payload, *visit = item
        where = {"path": path, "index": index, "offset": offset, "num_classes": spec.num_classes}
        if spec.level == "video":
            ex = yt8m.decode_video_example(payload, **where)
            out = {"rgb": ex["mean_rgb"], "audio": ex["mean_audio"]}
        else:
            ex = yt8m.decode_frame_example(payload, **where, segments=False)
            # The official reader keeps the first max_frames frames, num_frames = min(T, max).
            key = (spec.seed, *visit, index)
            keep = sample_frames(len(ex["rgb"]), spec.max_frames, spec.frame_sampling, key)
            out = {"rgb": ex["rgb"][keep], "audio": ex["audio"][keep]}
        tokens = ex["text_tokens"]
        if len(tokens):  # most records have none: skip the two comparisons
            bad = (tokens < 0) | (tokens >= spec.text_vocab_size)
            if bad.any():
                raise tfrecord.RecordError(
                    path,
                    index,
                    offset,
                    "text_tokens",
                    f"token {tokens[bad][0]} is outside [0, {spec.text_vocab_size}) "
                    "(config.data.text_vocab_size)",
                )
        out["text_tokens"] = tokens[: spec.max_text_tokens]
        out["labels"] = ex["labels"]
        out["id"] = ex["id"]
        return out

    return decode


def make_collate(
    spec: BatchSpec, batch_size: int, alloc: Callable = np.zeros
) -> Callable[[Sequence[dict]], dict]:
    """Stacks examples into a batch padded to `batch_size` rows (weights 0 on padding).

    The small fields (labels, tokens, lengths) are set for the whole batch with one numpy
    scatter each; frames are copied once, from the records' bytes into the batch. `alloc(shape,
    dtype)` makes each zero-filled output array (shared memory in grain's worker processes).
    """

    def scatter(out: np.ndarray, values: list[np.ndarray]) -> np.ndarray:
        """Writes values[r] into out[r, :len(values[r])]; returns the lengths."""
        lengths = np.fromiter((len(v) for v in values), np.int64, len(values))
        total = int(lengths.sum())
        if total:
            rows = np.repeat(np.arange(len(values)), lengths)
            cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            out[rows, cols] = np.concatenate(values)
        return lengths

    def collate(examples: Sequence[dict]) -> dict:
        n = len(examples)
        labels = alloc((batch_size, spec.num_classes), np.uint8)
        label_lists = [ex["labels"] for ex in examples]
        counts = np.fromiter((len(v) for v in label_lists), np.int64, n)
        if counts.sum():
            labels[np.repeat(np.arange(n), counts), np.concatenate(label_lists)] = 1
        text_tokens = alloc((batch_size, spec.max_text_tokens), np.int32)
        num_tokens = np.zeros(batch_size, np.int32)
        num_tokens[:n] = scatter(text_tokens, [ex["text_tokens"] for ex in examples])
        weights = alloc(batch_size, np.float32)
        weights[:n] = 1
        batch = {
            # Video ids as a fixed-width str array ('' on padding rows); they stay on the host.
            "ids": np.array([ex.get("id", "") for ex in examples] + [""] * (batch_size - n)),
            "labels": labels,
            "weights": weights,
            "text_tokens": text_tokens,
            "text_mask": np.arange(spec.max_text_tokens)[None, :] < num_tokens[:, None],
        }
        if spec.level == "video":
            for key in ("rgb", "audio"):
                out = alloc((batch_size, examples[0][key].shape[-1]), np.float32)
                np.stack([ex[key] for ex in examples], out=out[:n])
                batch[key] = out
            return batch
        num_frames = np.zeros(batch_size, np.int32)
        num_frames[:n] = [len(ex["rgb"]) for ex in examples]
        for key in ("rgb", "audio"):
            # uint8 frames stay uint8; float-list frames (some extractors) make that key's batch
            # float. Each key decides alone: a record may hold uint8 rgb and float audio.
            is_float = any(ex[key].dtype != np.uint8 for ex in examples)
            dim = examples[0][key].shape[-1]
            out = alloc((batch_size, spec.max_frames, dim), np.float32 if is_float else np.uint8)
            for row, ex in enumerate(examples):  # one copy, from a view of the record bytes
                x = ex[key]
                out[row, : len(x)] = yt8m.dequantize(x) if is_float and x.dtype == np.uint8 else x
            batch[key] = out
        batch["num_frames"] = num_frames
        batch["mask"] = np.arange(spec.max_frames)[None, :] < num_frames[:, None]
        return batch

    return collate


class Batcher:
    """Decodes raw (path, index, offset, payload[, visit]) records and collates them into a batch.

    One batch function instead of a per-record map stage keeps grain's per-element bookkeeping
    off the hot path. With `bad_records`, records that fail to decode are handed to it and left
    out; their rows are padding (weight 0). In grain's worker processes
    (`enable_shared_memory_output`) the batch is written straight into one of the worker's
    reused shared-memory blocks (vmjax.data.batch_memory), which the training process maps
    without a copy.
    """

    def __init__(self, spec: BatchSpec, batch_size: int, bad_records: BadRecords | None = None):
        self.spec, self.batch_size, self.bad_records = spec, batch_size, bad_records
        self.shared_memory = False
        self._decode = make_decoder(spec)
        self._nbytes: int | None = None

    def enable_shared_memory_output(self) -> None:
        """Called by grain in each worker process (grain's SupportsSharedMemoryOutput)."""
        self.shared_memory = True

    def _collate(self, examples: Sequence[dict]) -> dict | batch_memory.SealedBatch:
        pool = batch_memory.worker_pool()  # set in workers.in_processes' worker processes
        lease = pool.lease(self._block_bytes()) if pool is not None else None
        if lease is None:  # not such a worker, or all its blocks are in use
            # /dev/shm memory reads as zeros until written (POSIX ftruncate), like np.zeros.
            alloc = _shared_zeros if self.shared_memory else np.zeros
            return make_collate(self.spec, self.batch_size, alloc)(examples)
        try:
            return lease.seal(make_collate(self.spec, self.batch_size, lease.zeros)(examples))
        except BaseException:
            lease.release()
            raise

    def _block_bytes(self) -> int:
        """A block that holds a batch of uint8 frames (float frames spill into grain's shared
        memory) and ids of up to 64 characters."""
        if self._nbytes is None:
            arrays = example_batch(self.spec, self.batch_size).values()
            self._nbytes = sum(batch_memory.aligned(a.nbytes) for a in arrays)
            self._nbytes += self.batch_size * 64 * 4 + 16 * batch_memory.ALIGN
        return self._nbytes

    def __call__(self, items: Sequence[tuple]) -> dict:
        if self.bad_records is None:
            return self._collate([self._decode(item) for item in items])
        examples = []
        for item in items:
            try:
                examples.append(self._decode(item))
            except tfrecord.RecordError as e:
                self.bad_records(e)
        if not examples:  # every record of the batch was bad: all padding
            empty = example_batch(self.spec, self.batch_size)
            empty["weights"][:] = 0
            return empty
        return self._collate(examples)


def _shared_zeros(shape, dtype) -> np.ndarray:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return grain.multiprocessing.SharedMemoryArray(shape, dtype)


def make_batcher(
    spec: BatchSpec, batch_size: int, bad_records: BadRecords | None = None
) -> Batcher:
    """A `Batcher`: raw records -> one batch (see there)."""
    return Batcher(spec, batch_size, bad_records)


def device_part(batch: dict) -> dict:
    """The batch without its host-only entries (video ids): what goes to the devices."""
    return {k: v for k, v in batch.items() if k not in HOST_KEYS}


def example_batch(spec: BatchSpec, batch_size: int = 1) -> dict:
    """A zero batch with the shapes and dtypes the pipeline produces (for initialisation)."""
    if spec.level == "video":
        rgb, audio = np.zeros(yt8m.RGB_DIM, np.float32), np.zeros(yt8m.AUDIO_DIM, np.float32)
    else:
        rgb, audio = np.zeros((1, yt8m.RGB_DIM), np.uint8), np.zeros((1, yt8m.AUDIO_DIM), np.uint8)
    example = {
        "rgb": rgb,
        "audio": audio,
        "text_tokens": np.zeros(0, np.int64),
        "id": "",
        "labels": np.zeros(0, np.int64),
    }
    return make_collate(spec, batch_size)([example])


def config_example_batch(data: ml_collections.ConfigDict, batch_size: int = 1) -> dict:
    """A zero batch (all weights 0) shaped like what `data` (config.data) feeds the model.

    For YT8M features (data.format 'tfrecord' / 'array_record') `example_batch`; for raw
    videos (data.format 'video_files') `video_files.empty_batch` of decoded clips.
    """
    if data.format == "video_files":
        from vmjax.data import video_files  # decodes with PyAV: only import it when needed

        return video_files.empty_batch(
            batch_size=batch_size,
            num_classes=data.num_classes,
            num_frames=data.num_frames,
            size=data.image_size,
        )
    batch = example_batch(BatchSpec.from_config(data), batch_size)
    batch["weights"][:] = 0
    return batch


def train_dataset(
    files: Sequence[str],
    spec: BatchSpec,
    *,
    batch_size: int,
    seed: int,
    shuffle_buffer: int,
    cycle_length: int,
    prefetch: int = 2,
    workers: int | str = 0,
    bad_records: BadRecords | None = None,
) -> grain.IterDataset:
    """An infinite, shuffled stream of training batches from this process's files.

    workers > 0 reads, decodes and batches in that many processes (grain's mp_prefetch), each
    on its own slice of the file list (so use at least that many files); 0 keeps it in this
    process with `prefetch` batches prepared ahead in a thread; 'auto' picks the count from the
    cores and files (`worker_count`). The batches depend on the worker count, so the iterator's
    state keeps it and a restore rebuilds the pipeline with the saved count (`WorkerPipeline`).
    """
    if workers == AUTO:
        batch_bytes = batch_size * sum(v.nbytes for v in example_batch(spec, 1).values())
        workers = resolve_workers(
            AUTO, len(files), shm_free=shm_free_bytes(), batch_bytes=batch_bytes, prefetch=prefetch
        )
    elif int(workers) > len(files):
        raise ValueError(
            f"data.workers={workers} needs at least as many files; this process has {len(files)}"
        )

    def build(num_workers: int) -> grain.IterDataset:
        ds = streams.InterleavedRecords(
            grain.MapDataset.source(list(files)),
            cycle_length=min(cycle_length, len(files)),
            seed=seed,
            repeat=True,  # each epoch in a new file order
            on_error=bad_records,
        )
        if shuffle_buffer > 1:  # of raw records; decoding happens per batch
            ds = streams.WindowShuffle(ds, window_size=shuffle_buffer, seed=seed)
        ds = ds.batch(
            batch_size, drop_remainder=True, batch_fn=make_batcher(spec, batch_size, bad_records)
        )
        if num_workers:  # each worker reads a contiguous block of this process's files
            return workers_lib.in_processes(ds, num_workers, prefetch, sequential_slice=True)
        if prefetch:
            ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
        return ds

    return WorkerPipeline(build, int(workers))


class WorkerPipeline(grain.IterDataset):
    """`build(workers)`'s dataset, whose iterator state records `workers`.

    Which records make up a batch depends on the worker count (each worker reads its own
    files), so a state restores exactly only into the same count. set_state rebuilds the
    pipeline with the count the state was saved with (e.g. a run resumed on a machine with
    other cores, where 'auto' picks another); states without one (older checkpoints) restore
    into the pipeline as it is.
    """

    def __init__(self, build: Callable[[int], grain.IterDataset], workers: int):
        super().__init__()
        self._build, self.workers = build, workers

    def __iter__(self) -> _WorkerPipelineIterator:
        return _WorkerPipelineIterator(self._build, self.workers)


class _WorkerPipelineIterator(grain.DatasetIterator):
    def __init__(self, build: Callable[[int], grain.IterDataset], workers: int):
        super().__init__(build(workers).__iter__())
        self._build, self.workers = build, workers

    def __next__(self) -> dict:
        return next(self._parent)

    def get_state(self) -> dict:
        return {"workers": self.workers, "pipeline": self._parent.get_state()}

    def set_state(self, state: dict) -> None:
        if "workers" not in state or "pipeline" not in state:  # saved before the count was kept
            self._parent.set_state(state)
            return
        saved = int(state["workers"])
        if saved != self.workers:
            logging.warning(
                "Input pipeline: resuming with the %d worker process(es) the checkpoint was "
                "saved with (this run asked for %d): the batches depend on the count",
                saved,
                self.workers,
            )
            self._parent.close()
            self.workers = saved
            self._parents = (self._build(saved).__iter__(),)
            self._ctx = self._parent._ctx
        self._parent.set_state(state["pipeline"])


def eval_batches(
    files: Sequence[str],
    spec: BatchSpec,
    *,
    batch_size: int,
    bad_records: BadRecords | None = None,
) -> Iterator[dict]:
    """One ordered pass over `files`; the last batch is padded with zero weights."""
    ds = streams.InterleavedRecords(
        grain.MapDataset.source(list(files)), cycle_length=1, on_error=bad_records
    )
    spec = spec.for_eval()
    ds = ds.batch(batch_size, batch_fn=make_batcher(spec, batch_size, bad_records))
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=2)
    return iter(ds)
