"""Shared-memory blocks that each input worker process writes batch after batch into.

grain's mp_prefetch hands a worker's batch to the training process through shared memory: a new
/dev/shm file per array per batch (`grain.multiprocessing.SharedMemoryArray`). Its pages fault in
one by one as the worker writes them and again as the training process reads them, and are freed
with the file; for a frame-level batch (88 MB) that is ~50 ms in the worker and ~46 ms in the
training process, against ~7 and ~15 ms in memory mapped before (`benchmarks/shm_cost.py`).
grain has no way to reuse its shared memory, hence this module.

Here each worker keeps a few blocks (`BlockPool`, at most `max_blocks`) and writes each batch
into a free one (`Lease.zeros`); it sends a `SealedBatch`, the block's name and where each array
lies. The training process maps a block the first time it sees it, unlinks its name (the memory
lives while either process maps it, so nothing is left in /dev/shm) and keeps the mapping
(`Opener`). It returns numpy views of the block; once the last of a batch's views is gone (copied
to the device and dropped, or the jax array that aliases it deleted), a finalizer marks the block
free and the worker writes into it again. A worker that finds every block in use writes that
batch the old way, into grain's per-batch shared memory: a consumer that holds on to many
batches slows it down but never blocks it. A batch that is dropped before it is opened (grain
discards prefetched batches on set_state) frees its block too.

Block layout: a 64-byte header whose first int64 is the state (FREE / LEASED), then the arrays,
each at a 64-byte aligned offset.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from multiprocessing import shared_memory

import grain
import numpy as np

HEADER = 64  # bytes before the first array; the state is its first int64
SHARED = -1  # a SealedBatch layout offset: the array is in grain shared memory of its own
ALIGN = 64
FREE, LEASED = 0, 1

_pool: BlockPool | None = None  # this worker process's pool (`configure`)


def configure(max_blocks: int) -> None:
    """Called in each worker process (workers.init_worker): its batches reuse up to
    `max_blocks` blocks. Not called (the training process, grain used directly): no pool."""
    global _pool
    _pool = BlockPool(max_blocks) if max_blocks > 0 else None


def worker_pool() -> BlockPool | None:
    """This process's pool, if it is a worker process of `workers.in_processes`."""
    return _pool


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _address(shm: shared_memory.SharedMemory) -> int:
    # The mapping's address, without holding an export of shm.buf (which would keep
    # SharedMemory.close from releasing it); the mapping's lifetime is kept by hand.
    probe = ctypes.c_char.from_buffer(shm.buf)
    address = ctypes.addressof(probe)
    del probe
    return address


def _view(address: int, size: int) -> ctypes.Array:
    """A ctypes array over [address, address + size): the buffer numpy views are built on."""
    return (ctypes.c_char * size).from_address(address)


def _state(address: int) -> np.ndarray:
    return np.frombuffer(_view(address, 8), np.int64)


class Block:
    """One mapped block: its SharedMemory, address and state word."""

    def __init__(self, shm: shared_memory.SharedMemory):
        self.shm, self.name, self.size = shm, shm.name, shm.size
        self.address = _address(shm)
        self.state = _state(self.address)


class BlockPool:
    """A worker process's blocks (see the module docstring)."""

    def __init__(self, max_blocks: int):
        self.max_blocks = max_blocks
        self.blocks: list[Block] = []
        self._lock = threading.Lock()

    def lease(self, nbytes: int) -> Lease | None:
        """A free block of at least `nbytes` (after the header), marked LEASED; None when all
        `max_blocks` are in use (write this batch elsewhere)."""
        with self._lock:
            for block in self.blocks:
                if block.state[0] == FREE and block.size >= HEADER + nbytes:
                    block.state[0] = LEASED
                    return Lease(block)
            if len(self.blocks) < self.max_blocks:
                block = Block(shared_memory.SharedMemory(create=True, size=HEADER + nbytes))
                block.state[0] = LEASED
                self.blocks.append(block)
                return Lease(block)
        return None


class Lease:
    """A leased block being filled with one batch's arrays."""

    def __init__(self, block: Block):
        self.block, self.cursor = block, HEADER
        self._placed: dict[int, tuple[np.ndarray, int]] = {}

    def _place(self, shape: tuple, dtype: np.dtype) -> np.ndarray | None:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        offset = aligned(self.cursor)
        if offset + nbytes > self.block.size:
            return None
        array = np.frombuffer(
            _view(self.block.address + offset, max(nbytes, 1)),
            dtype,
            count=nbytes // dtype.itemsize,
        ).reshape(shape)
        self.cursor = offset + nbytes
        self._placed[id(array)] = (array, offset)
        return array

    def zeros(self, shape, dtype) -> np.ndarray:
        """np.zeros(shape, dtype) in the block; once the block is full (e.g. float frames, 4x
        the uint8 ones it is sized for), in grain's shared memory of its own."""
        shape, dtype = (shape,) if isinstance(shape, int) else tuple(shape), np.dtype(dtype)
        array = self._place(shape, dtype)
        if array is None:
            return grain.multiprocessing.SharedMemoryArray(shape, dtype)  # reads as zeros
        array.fill(0)
        return array

    def release(self) -> None:
        """Gives the block back unsent (the batch function failed)."""
        self.block.state[0] = FREE

    def seal(self, batch: dict) -> SealedBatch:
        """The batch as a SealedBatch: its arrays in the block (copying in those made
        elsewhere, where they fit); other values travel as they are."""
        layout = []
        for key, value in batch.items():
            placed = self._placed.get(id(value))
            if placed is not None and placed[0] is value:
                layout.append((key, placed[1], (value.shape, value.dtype.str)))
                continue
            if isinstance(value, grain.multiprocessing.SharedMemoryArray):
                layout.append((key, SHARED, value.metadata))  # opened and unlinked by the trainer
                continue
            if isinstance(value, np.ndarray) and not value.dtype.hasobject:
                copy = self._place(value.shape, value.dtype)
                if copy is not None:
                    copy[...] = value
                    layout.append((key, self._placed[id(copy)][1], (value.shape, value.dtype.str)))
                    continue
            layout.append((key, None, value))
        return SealedBatch(self.block.name, layout)


def _free(state: np.ndarray, block: Block) -> None:
    del block  # the mapping stays until the last view of the batch is gone, then:
    state[0] = FREE


class SealedBatch:
    """A batch in a worker's block, as sent to the training process (small to pickle):
    layout is (key, offset, (shape, dtype)) for arrays in the block, (key, SHARED, metadata)
    for arrays that did not fit (grain shared memory), (key, None, value) for the rest, in the
    batch's order."""

    def __init__(self, name: str, layout: list):
        self.name, self.layout = name, layout
        self.unopened: Block | None = None  # the receiving process's mapping, until opened

    def __reduce__(self):
        return _received, (self.name, self.layout)

    def open(self, block: Block) -> dict:
        """The batch, its arrays as views of `block`; the block is freed (the worker may write
        it again) once the last of these views is gone."""
        self.unopened = None
        memory = _view(block.address, block.size)
        memory.block_name = block.name  # for `block_of`
        weakref.finalize(memory, _free, block.state, block)
        batch = {}
        for key, offset, value in self.layout:
            if offset is None:
                batch[key] = value
                continue
            if offset == SHARED:
                batch[key] = grain.multiprocessing.SharedMemoryArray.from_metadata(value)
                batch[key].unlink_on_del()
                continue
            shape, dtype = value[0], np.dtype(value[1])
            count = int(np.prod(shape, dtype=np.int64))
            batch[key] = np.frombuffer(memory, dtype, count=count, offset=offset).reshape(shape)
        return batch

    def __del__(self):
        if self.unopened is not None:  # dropped unopened (grain discarded it): free the block
            self.unopened.state[0] = FREE
            for _, offset, value in self.layout:
                if offset == SHARED:
                    value.close_and_unlink_shm()


def block_of(array: np.ndarray) -> str | None:
    """The name of the block an opened batch's array lies in; None for other arrays."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return getattr(base, "block_name", None)


# Blocks mapped in this process, by name: a block is mapped once (its name is unlinked then).
_mapped: weakref.WeakValueDictionary[str, Block] = weakref.WeakValueDictionary()


def _received(name: str, layout: list) -> SealedBatch:
    sealed = SealedBatch(name, layout)
    sealed.unopened = _find(name)
    return sealed


def _find(name: str) -> Block | None:
    """The block `name` mapped in this process: the training process's, or a worker's own
    (grain drains a worker's queue in the worker when it stops); None for a block whose name
    is gone and that this process no longer maps (a queue drained after its iterator closed)."""
    block = _mapped.get(name)
    if block is None and _pool is not None:
        block = next((b for b in _pool.blocks if b.name == name), None)
    if block is None:
        try:
            block = _map(name)
        except FileNotFoundError:
            return None
    return block


def _map(name: str) -> Block:
    """Maps a worker's block in this process and unlinks its name (see the module doc)."""
    shm = shared_memory.SharedMemory(name)
    block = Block(shm)
    shm.unlink()  # the memory stays while the worker or this process maps it
    _mapped[name] = block
    return block


class Opener:
    """grain map function in the training process: SealedBatch -> dict of arrays; anything
    else passes. It keeps the blocks it has seen mapped for as long as it lives."""

    def __init__(self):
        self.blocks: dict[str, Block] = {}

    def __call__(self, element):
        if not isinstance(element, SealedBatch):
            return element
        block = self.blocks.get(element.name) or element.unopened
        if block is None:
            raise RuntimeError(f"input pipeline: batch block {element.name} is gone")
        self.blocks[element.name] = block
        return element.open(block)
