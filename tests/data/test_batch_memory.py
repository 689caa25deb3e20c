"""Reused shared-memory blocks for worker batches (vmjax.data.batch_memory)."""

import gc
import glob
import os
import pickle

import grain
import numpy as np
import pytest

from vmjax.data import batch_memory, pipeline, synthetic, tfrecord
from vmjax.data import workers as workers_lib

C = 3862
MAX_FRAMES = 40


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("blocks") / "data")
    spec = synthetic.Spec(seed=3, num_train=72, num_validate=8, num_train_shards=4)
    synthetic.generate(out, spec, workers=1, log=lambda *_: None)
    return sorted(glob.glob(os.path.join(out, "frame", "train-*.tfrecord")))


def _spec():
    return pipeline.BatchSpec("frame", C, MAX_FRAMES, 32, 8192)


def _items(path, n):
    return [(path, i, off, payload, 0) for i, off, payload in list(tfrecord.read_records(path))[:n]]


def _plain(items, batch_size=4):
    """The batch in ordinary memory (what Batcher makes outside a worker)."""
    decode = pipeline.make_decoder(_spec())
    return pipeline.make_collate(_spec(), batch_size)([decode(item) for item in items])


@pytest.fixture
def pool():
    """This process as a worker with a pool of 2 blocks (reset afterwards)."""
    batch_memory.configure(2)
    yield batch_memory.worker_pool()
    batch_memory.configure(0)


def _send(batch):
    """Through a pipe as grain sends it: pickled in the worker, unpickled in the trainer."""
    assert isinstance(batch, batch_memory.SealedBatch)
    return pickle.loads(pickle.dumps(batch))


def _state(pool):
    return [int(b.state[0]) for b in pool.blocks]


def test_a_batch_through_a_block_equals_the_plain_batch(files, pool):
    items = _items(files[0], 3)
    plain = _plain(items)
    opener = batch_memory.Opener()
    batch = opener(_send(pipeline.make_batcher(_spec(), 4)(items)))
    assert list(batch) == list(plain)  # keys in the same order
    for key, value in plain.items():
        np.testing.assert_array_equal(batch[key], value, err_msg=key)
        assert batch[key].dtype == value.dtype and batch[key].shape == value.shape, key
        assert batch_memory.block_of(batch[key]) == pool.blocks[0].name, key  # all in the block
    assert (batch["rgb"][3] == 0).all() and batch["weights"][3] == 0  # padding row


def test_a_block_is_written_again_only_after_its_batch_is_gone(files, pool):
    batcher, opener = pipeline.make_batcher(_spec(), 4), batch_memory.Opener()
    first = opener(_send(batcher(_items(files[0], 4))))
    rgb_before = first["rgb"].copy()
    assert _state(pool) == [batch_memory.LEASED]
    second = opener(_send(batcher(_items(files[1], 4))))  # the first is held: another block
    assert batch_memory.block_of(second["rgb"]) != batch_memory.block_of(first["rgb"])
    np.testing.assert_array_equal(first["rgb"], rgb_before)
    # Both blocks held: the next batch is written elsewhere (in a worker: grain's shared memory).
    third = batcher(_items(files[2], 4))
    assert isinstance(third, dict) and len(pool.blocks) == 2
    labels = first["labels"]  # a view keeps its batch's block leased
    del first
    gc.collect()
    assert _state(pool) == [batch_memory.LEASED, batch_memory.LEASED]
    del labels, second
    gc.collect()
    assert _state(pool) == [batch_memory.FREE, batch_memory.FREE]
    fourth = opener(_send(batcher(_items(files[3], 4))))
    assert batch_memory.block_of(fourth["rgb"]) == pool.blocks[0].name  # reused
    np.testing.assert_array_equal(fourth["rgb"], _plain(_items(files[3], 4))["rgb"])


def test_a_batch_dropped_unopened_frees_its_block_and_a_failure_gives_it_back(files, pool):
    batcher = pipeline.make_batcher(_spec(), 4)
    received = _send(batcher(_items(files[0], 2)))
    assert _state(pool) == [batch_memory.LEASED]
    del received  # grain discarded it (set_state) without opening it
    gc.collect()
    assert _state(pool) == [batch_memory.FREE]
    bad = [(files[0], 0, 0, b"not a record", 0)]
    with pytest.raises(tfrecord.RecordError):
        batcher(bad)
    assert _state(pool) == [batch_memory.FREE]


def test_no_pool_outside_worker_processes(files):
    batch = pipeline.make_batcher(_spec(), 4)(_items(files[0], 2))
    assert isinstance(batch, dict) and batch_memory.block_of(batch["rgb"]) is None
    shared = pipeline.make_batcher(_spec(), 4)
    shared.enable_shared_memory_output()  # grain's own shared memory, as before
    assert isinstance(shared(_items(files[0], 2))["rgb"], grain.multiprocessing.SharedMemoryArray)


def _train(files, workers):
    return pipeline.train_dataset(
        files,
        _spec(),
        batch_size=3,
        seed=0,
        shuffle_buffer=4,
        cycle_length=2,
        prefetch=1,
        workers=workers,
    )


def test_worker_batches_reuse_blocks_and_held_batches_stay_intact(files):
    n = 24
    held_it = iter(_train(files, 2))
    held = [next(held_it) for _ in range(n)]  # all held: more than the workers' blocks
    held_it.close()
    streamed_it = iter(_train(files, 2))
    names = []
    for k in range(n):
        batch = next(streamed_it)
        for key, value in held[k].items():
            np.testing.assert_array_equal(batch[key], value, err_msg=f"batch {k} {key}")
        names.append(batch_memory.block_of(batch["rgb"]))
        del batch  # consumed, as a training step does
    streamed_it.close()
    # Two workers with prefetch 1 reuse at most blocks_per_worker(1) = 6 blocks each. A batch
    # written while all of a worker's blocks were in use lies elsewhere (None): rare.
    blocks = set(names) - {None}
    assert len(blocks) <= 2 * workers_lib.blocks_per_worker(1) < n
    assert names.count(None) <= 2, names
    assert not any(os.path.exists(f"/dev/shm/{name}") for name in blocks)  # unlinked
