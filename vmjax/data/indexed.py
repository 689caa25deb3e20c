"""grain pipelines over indexed YouTube-8M datasets (ArrayRecord files written by convert.py).

Random access makes three things exact that a stream of TFRecord shards only approximates:

- Global shuffle. Each epoch is a fresh permutation of the whole split (grain's
  `MapDataset.shuffle` before `.repeat()`: in grain 0.2.18 element i of the repeated dataset is
  element `index_shuffle(i mod N, seed=(seed + i // N) mod 2**32)`, so every epoch has its
  own permutation, computed per index without a buffer). We hash the user's seed first, so
  seed s and s + 1 do not share permutations one epoch apart.
- Process sharding. Every process computes the same global sequence of epochs and takes the
  elements `process_index::process_count` of it. Within each epoch the processes' shares are
  disjoint and cover the split, and a different random share each epoch; with per-process
  batches of B, step s of all processes together is elements [s*B*P, (s+1)*B*P) of the global
  sequence, the same examples a single process would train on with batch B*P. Batches run on
  across epoch boundaries (nothing is dropped at the end of an epoch).
- Resumption. An iterator's state is the index of its next batch; `get_state`/`set_state`
  (which the trainer checkpoints with the model) continue with exactly the same batches.

Evaluation reads each process's contiguous block of the split once, in order.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from google.protobuf import message

from vmjax.data import tfds_yt8m
from vmjax.data import workers as workers_lib
from vmjax.data.sharding import check_process, eval_slice, read_options, shuffle_seed
from vmjax.data.tfrecord import RecordError

Item = tuple[str, int, int, bytes]  # (path, index, byte offset or -1, payload), as decoders take
# Mixed into the seed hash so these permutations do not coincide with other uses of the seed.
_SHUFFLE_SALT = 0x7938_6D61


class Source:
    """One split of an indexed dataset: `source[i]` is record i's original serialized proto."""

    def __init__(self, data_dir: str, split: str, data_source: Any, info: Any):
        self.data_dir, self.split, self.level = data_dir, split, info.config_name
        self.name = f"{data_dir}:{split}"
        self._data_source = data_source
        self._features = info.features
        instructions = info.splits[split].file_instructions
        self._files = [f.filename for f in instructions]
        self._skips = [f.skip for f in instructions]
        self._starts = np.cumsum([0] + [f.take for f in instructions]).tolist()

    def __len__(self) -> int:
        return len(self._data_source)

    def __getitem__(self, index: int) -> bytes:
        raw = self._data_source[index]
        payload = tfds_yt8m.unwrap(raw)
        if payload is None:  # not laid out as we write it: let TFDS parse the example
            try:
                payload = self._features.deserialize_example_np(raw)["record"]
            except message.DecodeError as e:
                payload, problem = None, f"cannot parse as a tf.train.Example ({e})"
            else:
                problem = "has no 'record' bytes"
            if not isinstance(payload, bytes):
                # Not written by convert.py or the builder (each checks every record): a
                # damaged or foreign dataset, which skipping records would not make right.
                path, record = self.locate(index)
                raise RecordError(
                    path, record, -1, "record", f"{problem}; expected a {tfds_yt8m.NAME} entry"
                )
        return payload

    def locate(self, index: int) -> tuple[str, int]:
        """(shard file, record index within it) of record `index`, for error messages."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: record {index} is outside [0, {len(self)})")
        shard = bisect.bisect_right(self._starts, index) - 1
        return self._files[shard], self._skips[shard] + index - self._starts[shard]

    def item(self, index: int) -> Item:
        """The (path, index, -1, payload) tuple `pipeline.make_decoder`'s decode takes."""
        path, record = self.locate(index)
        return path, record, -1, self[index]

    def __repr__(self) -> str:
        return f"Source({self.name!r}, level={self.level!r}, records={len(self)})"


def open_source(data_dir: str, split: str, *, level: str | None = None) -> Source:
    """Opens split `split` (TFDS split syntax, e.g. 'train[:10%]') of a converted dataset.

    Args:
      data_dir: a dataset directory (the one holding dataset_info.json).
      level: if given, the dataset must hold this level ('frame' or 'video').
    """
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.exists(os.path.join(data_dir, "dataset_info.json")):
        raise FileNotFoundError(
            f"{data_dir} has no dataset_info.json; convert TFRecord shards into it with "
            "`python -m vmjax.data.convert`"
        )
    builder = tfds.builder_from_directory(data_dir)
    info = builder.info
    if info.name != tfds_yt8m.NAME or info.config_name not in tfds_yt8m.LEVELS:
        raise ValueError(
            f"{data_dir} holds {info.name}/{info.config_name}, expected {tfds_yt8m.NAME}/frame "
            "or /video (written by vmjax.data.convert or the yt8m builder)"
        )
    if level is not None and info.config_name != level:
        raise ValueError(f"{data_dir} holds {info.config_name}-level records, expected {level}")
    try:
        data_source = builder.as_data_source(
            split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"{data_dir}: no split {split!r} (has {sorted(info.splits)}): {e}"
        ) from None
    return Source(data_dir, split, data_source, info)


class _Items:
    """Random access to (path, index, -1, payload); a plain sequence of bytes works too."""

    def __init__(self, source: Sequence[bytes]):
        self._source = source
        self._name = getattr(source, "name", type(source).__name__)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Item:
        if isinstance(self._source, Source):
            return self._source.item(index)
        return self._name, index, -1, self._source[index]


def train_dataset(
    source: Sequence[bytes],
    decode: Callable[[Item], Any],
    *,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    collate: Callable[[Sequence[Any]], Any],
    prefetch: int = 2,
    read_threads: int = 1,
    workers: int = 0,
) -> grain.IterDataset:
    """An infinite stream of this process's training batches, globally shuffled each epoch.

    Args:
      source: an `open_source` Source (or any sequence of serialized records).
      decode: (path, index, -1, payload) -> example, e.g. `pipeline.make_decoder(spec)`.
      collate: list of examples -> batch, e.g. `pipeline.make_collate(spec, batch_size)`.
      prefetch: batches prepared ahead (by `read_threads` threads, or per worker); 0 reads
        each batch when it is asked for.
      read_threads: threads preparing batches in parallel (more help on network storage).
      workers: processes preparing batches (grain's mp_prefetch); 0 keeps it in this process.
    """
    check_process(process_index, process_count)
    if len(source) < process_count * batch_size:
        raise ValueError(
            f"{getattr(source, 'name', 'source')} has {len(source)} records, fewer than one "
            f"batch of {batch_size} for each of {process_count} processes"
        )
    ds = (
        grain.MapDataset.source(_Items(source))
        .shuffle(seed=shuffle_seed(seed, _SHUFFLE_SALT))
        .repeat()
    )
    ds = ds[process_index::process_count]
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_batcher(decode, collate))
    out = ds.to_iter_dataset(read_options(prefetch, read_threads))
    if workers:  # worker w prepares batches w, w + workers, ...; grain returns them in order
        return workers_lib.in_processes(out, workers, prefetch)
    return out


def _batcher(decode: Callable[[Item], Any], collate: Callable[[Sequence[Any]], Any]):
    # Decoding inside the batch function, not in a map stage, keeps grain's per-element
    # bookkeeping off the hot path (as pipeline.make_batcher does).
    def batch(items: Sequence[Item]) -> Any:
        return collate([decode(item) for item in items])

    return batch


def eval_batches(
    source: Sequence[bytes],
    decode: Callable[[Item], Any],
    collate: Callable[[Sequence[Any]], Any],
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Any]:
    """One ordered pass over this process's block of `source`; the last batch may be short
    (`pipeline.make_collate` pads it with zero weights). Processes' batch counts may differ by
    one; the trainer's eval loop already joins with empty batches."""
    block = eval_slice(len(source), process_index, process_count)
    ds = grain.MapDataset.source(_Items(source))[block.start : block.stop]
    ds = ds.batch(batch_size, batch_fn=_batcher(decode, collate))
    return iter(ds.to_iter_dataset(read_options(prefetch=2, threads=1)))
