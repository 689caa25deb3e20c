"""Checkpointable record streams for the training pipeline: file interleaving, window shuffle.

grain has both (InterleaveIterDataset, WindowShuffleIterDataset), but on frame-level YT8M they
cost about a third of the pipeline's time on one core: the interleave hands every record over
from a reader thread, and the window shuffle computes a Philox index per record (~30 us). These
do the same in the consuming thread with numpy permutations, and keep grain's iterator protocol
(get_state/set_state), so resumption stays exact.
"""

from __future__ import annotations

import grain
import numpy as np

from vmjax.data import tfrecord
from vmjax.errors import DataError


class InterleavedRecords(grain.IterDataset):
    """(path, index, offset, payload, visit) from `cycle_length` files at a time, round robin.

    `visit` counts the files opened so far (over all epochs): a record's key for per-epoch
    randomness such as random frame windows.

    `files` is a MapDataset of paths. With `repeat`, epochs follow each other forever, each in
    its own file order: a permutation seeded by (seed, epoch), or the given order when `seed`
    is None. When a file ends, the next one takes its slot. Records are CRC-checked
    (tfrecord.read_records; `on_error` as there). grain's mp_prefetch may slice `files` per
    worker.
    """

    def __init__(
        self,
        files: grain.MapDataset,
        cycle_length: int,
        *,
        seed: int | None = None,
        repeat: bool = False,
        on_error=None,
    ):
        super().__init__(files)  # a parent, so grain's mp_prefetch can slice it per worker
        if cycle_length < 1:
            raise ValueError(f"cycle_length must be >= 1, got {cycle_length}")
        self._cycle_length, self._seed, self._repeat = cycle_length, seed, repeat
        self._on_error = on_error

    def __iter__(self) -> _InterleavedIterator:
        return _InterleavedIterator(
            self._parent, self._cycle_length, self._seed, self._repeat, self._on_error
        )


class NoRecordsError(DataError):
    """A repeating stream whose files, read through once, gave no record: it would spin forever."""

    def __init__(self, files: grain.MapDataset, on_error):
        names = [files[i] for i in range(min(len(files), 3))]
        more = f" and {len(files) - 3} more" if len(files) > 3 else ""
        skipped = (
            f"; data.on_error='skip' skipped {on_error.count} bad record(s)"
            if on_error is not None and hasattr(on_error, "count")
            else ""
        )
        super().__init__(
            f"the train files hold no readable record: {', '.join(names)}{more} "
            f"({len(files)} file(s){skipped}). Check config.data.train_pattern."
        )


class _InterleavedIterator(grain.DatasetIterator):
    def __init__(self, files: grain.MapDataset, cycle_length: int, seed, repeat: bool, on_error):
        super().__init__()
        self._files, self._cycle_length = files, cycle_length
        self._seed, self._repeat, self._on_error = seed, repeat, on_error
        self._size = len(files)
        self._next_file = 0  # files opened so far, over all epochs
        self._order, self._order_epoch = None, -1
        self._slots: list[dict] = []  # open files: position, path, next index and offset
        self._readers: list = []
        self._turn = 0
        self._files_without_record = 0  # files ended in a row without yielding a record

    def _has_next_file(self) -> bool:
        return self._size > 0 and (self._repeat or self._next_file < self._size)

    def _file(self, k: int) -> str:
        """The path of the k-th file opened: epoch k // size, in that epoch's order."""
        epoch, i = divmod(k, self._size)
        if self._seed is None:
            return self._files[i]
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self._seed, epoch]).permutation(self._size)
            self._order_epoch = epoch
        return self._files[int(self._order[i])]

    def _open(self, slot: dict):
        return tfrecord.read_records(
            slot["path"],
            start_offset=slot["offset"],
            start_index=slot["index"],
            on_error=self._on_error,
        )

    def _new_slot(self) -> dict:
        slot = {"file": self._next_file, "path": self._file(self._next_file)}
        slot.update(index=0, offset=0)
        self._next_file += 1
        return slot

    def _fill(self) -> None:
        while len(self._slots) < self._cycle_length and self._has_next_file():
            self._slots.append(self._new_slot())
            self._readers.append(self._open(self._slots[-1]))

    def __next__(self):
        while True:
            self._fill()
            if not self._slots:
                raise StopIteration
            self._turn %= len(self._slots)
            slot, reader = self._slots[self._turn], self._readers[self._turn]
            try:
                index, offset, payload = next(reader)
            except StopIteration:  # the file ended: the next file takes its slot
                self._files_without_record += 1
                if self._repeat and self._files_without_record > self._size:
                    raise NoRecordsError(self._files, self._on_error) from None
                if self._has_next_file():
                    self._slots[self._turn] = self._new_slot()
                    self._readers[self._turn] = self._open(self._slots[self._turn])
                else:
                    del self._slots[self._turn], self._readers[self._turn]
                continue
            self._files_without_record = 0
            slot["index"] = index + 1
            slot["offset"] = offset + len(payload) + 16  # header (8 + 4) and data CRC (4)
            self._turn += 1
            return slot["path"], index, offset, payload, slot["file"]

    def get_state(self) -> dict:
        return {
            "next_file": self._next_file,
            "turn": self._turn,
            "open": [[s["file"], s["index"], s["offset"]] for s in self._slots],
        }

    def set_state(self, state: dict) -> None:
        self._next_file, self._turn = int(state["next_file"]), int(state["turn"])
        self._slots = [
            {"file": f, "path": self._file(f), "index": i, "offset": o} for f, i, o in state["open"]
        ]
        self._readers = [self._open(s) for s in self._slots]


class WindowShuffle(grain.IterDataset):
    """Shuffles `parent` within consecutive windows of `window_size` elements.

    Window w is permuted by numpy's Generator seeded with (seed, w): deterministic per seed. The
    state is the parent's state at the window's start plus the position in the window, so a
    restore re-reads that one window.
    """

    def __init__(self, parent: grain.IterDataset, window_size: int, seed: int):
        super().__init__(parent)
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self._window_size, self._seed = window_size, seed

    def __iter__(self) -> _WindowShuffleIterator:
        return _WindowShuffleIterator(self._parent.__iter__(), self._window_size, self._seed)


class _WindowShuffleIterator(grain.DatasetIterator):
    def __init__(self, parent, window_size: int, seed: int):
        super().__init__(parent)
        self._window_size, self._seed = window_size, seed
        self._window = -1  # index of the buffered window
        self._start = None  # parent state at the buffered window's start
        self._buffer: list = []
        self._order = np.zeros(0, np.int64)
        self._pos = 0

    def _load(self, window: int) -> None:
        self._start = self._parent.get_state()
        self._buffer = []
        for _ in range(self._window_size):
            try:
                self._buffer.append(next(self._parent))
            except StopIteration:
                break
        self._window = window
        rng = np.random.default_rng([self._seed, window])
        self._order = rng.permutation(len(self._buffer))
        self._pos = 0

    def __next__(self):
        if self._pos >= len(self._buffer):
            self._load(self._window + 1)
            if not self._buffer:
                raise StopIteration
        item = self._buffer[self._order[self._pos]]
        self._pos += 1
        return item

    def get_state(self) -> dict:
        if self._start is None:  # nothing read yet
            return {"parent": self._parent.get_state(), "window": 0, "pos": 0, "fresh": True}
        return {"parent": self._start, "window": self._window, "pos": self._pos, "fresh": False}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        if state["fresh"]:
            self._window, self._start, self._buffer, self._pos = -1, None, [], 0
            return
        self._load(int(state["window"]))
        self._pos = int(state["pos"])
