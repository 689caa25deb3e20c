"""data.workers: the 'auto' count, worker processes, shared-memory batches (reused blocks,
vmjax.data.batch_memory), exact resume."""

import gc
import glob
import json
import multiprocessing
import os
import pickle
import signal
import time

import grain
import numpy as np
import pytest

from vmjax.data import batch_memory, pipeline, synthetic, tfrecord, yt8m
from vmjax.data import workers as workers_lib

C = 3862
MAX_FRAMES = 40


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("workers") / "data")
    spec = synthetic.Spec(seed=2, num_train=48, num_validate=8, num_train_shards=4)
    synthetic.generate(out, spec, workers=1, log=lambda *_: None)
    return sorted(glob.glob(os.path.join(out, "frame", "train-*.tfrecord")))


def _spec():
    return pipeline.BatchSpec("frame", C, MAX_FRAMES, 32, 8192)


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


@pytest.mark.parametrize(
    "cores, files, want",
    [
        (1, 100, 0),  # one core: everything in the training process
        (2, 100, 2),  # 2 and 3 cores: a worker per core (the trainer needs little)
        (3, 100, 3),
        (4, 100, 3),  # from 4 cores one is left to the training process
        (8, 100, 7),
        (64, 1000, pipeline.MAX_AUTO_WORKERS),
        (8, 5, 5),  # at most one worker per file
        (8, 1, 0),  # one file: a single worker would only move the work elsewhere
        (2, 1, 0),
        (8, None, 7),  # no file cap (workers that take turns at batches)
    ],
)
def test_auto_worker_count(cores, files, want):
    n, why = pipeline.worker_count("auto", files, cores)
    assert n == want
    assert why.startswith("data.workers='auto'") and f"{cores} core" in why


def test_explicit_worker_count_is_kept_and_shared_memory_caps_auto():
    assert pipeline.worker_count(5, 2, 1) == (5, "data.workers=5")  # train_dataset checks files
    assert pipeline.worker_count(0, 10, 16)[0] == 0
    mib = 1 << 20
    # Each worker holds 2 x prefetch (2) + 4 blocks of a batch; auto uses at most half of the
    # free /dev/shm.
    n, why = pipeline.worker_count("auto", 100, 8, shm_free=192 * mib, batch_bytes=4 * mib)
    assert n == (192 // 2) // (8 * 4) == 3 and "/dev/shm has 192 MiB free" in why
    n, why = pipeline.worker_count("auto", 100, 8, shm_free=8 * mib, batch_bytes=4 * mib)
    assert n == 0 and "training process" in why
    assert pipeline.worker_count("auto", 100, 8, shm_free=None, batch_bytes=4 * mib)[0] == 7


def test_auto_follows_cpu_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert pipeline.available_cores() == 3
    assert pipeline.worker_count("auto", 10) == (
        3,
        "data.workers='auto': 3 worker processes (3 cores)",
    )
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1}, raising=False)
    assert pipeline.worker_count("auto", 10)[0] == 0


def test_batcher_writes_shared_memory_with_the_same_contents(files):
    spec = _spec()
    items = [
        (files[0], i, off, payload, 0)
        for i, off, payload in list(tfrecord.read_records(files[0]))[:3]
    ]
    plain = pipeline.make_batcher(spec, 4)(items)
    batcher = pipeline.make_batcher(spec, 4)
    batcher.enable_shared_memory_output()  # as grain does in each worker process
    shared = batcher(items)
    for key, value in plain.items():
        # The large arrays are allocated in shared memory; grain moves small ones itself.
        if key in ("rgb", "audio", "labels", "text_tokens", "weights"):
            assert isinstance(shared[key], grain.multiprocessing.SharedMemoryArray), key
        np.testing.assert_array_equal(shared[key], value)
        assert shared[key].dtype == value.dtype
    assert (shared["rgb"][3] == 0).all() and shared["weights"][3] == 0  # padding row


def _by_id(files):
    out = {}
    for k, path in enumerate(files):
        for _, _, payload in tfrecord.read_records(path):
            ex = yt8m.decode_frame_example(payload)
            out[ex["id"]] = (k, ex)
    return out


def test_two_workers_run_in_parallel_share_memory_and_resume_exactly(files, monkeypatch):
    monkeypatch.setattr(workers_lib, "WORKER_SIGNAL_GRACE", 1.5)
    records = _by_id(files)
    it = iter(_train(files, 2))
    first = [next(it) for _ in range(4)]
    workers = multiprocessing.active_children()
    assert len({p.pid for p in workers if p.is_alive()}) >= 2  # both alive at the same time
    # Worker w reads files [2w, 2w + 2); grain hands out their batches in turn.
    for b, batch in enumerate(first):
        assert batch_memory.block_of(batch["rgb"]) is not None  # in a worker's block
        for row, video_id in enumerate(batch["ids"]):
            k, ex = records[str(video_id)]
            assert k // 2 == b % 2, (b, k)
            t = min(len(ex["rgb"]), MAX_FRAMES)
            assert batch["num_frames"][row] == t
            np.testing.assert_array_equal(batch["rgb"][row, :t], ex["rgb"][:t])
            np.testing.assert_array_equal(batch["audio"][row, :t], ex["audio"][:t])
            assert (batch["rgb"][row, t:] == 0).all()
            np.testing.assert_array_equal(np.flatnonzero(batch["labels"][row]), ex["labels"])
    state = json.loads(json.dumps(it.get_state()))  # as the checkpoint stores it
    assert state["workers"] == 2
    want = [next(it) for _ in range(6)]
    # A SIGTERM to the process group (preemption) must not kill the workers under a training
    # process that still waits for a batch; they go WORKER_SIGNAL_GRACE seconds later.
    for p in workers:
        os.kill(p.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert all(p.is_alive() for p in workers)
    for _ in range(4):
        next(it)
    deadline = time.monotonic() + 20
    while any(p.is_alive() for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(p.is_alive() for p in workers)
    it.close()
    # Restored into a pipeline that asked for another count (another machine's 'auto', or 0):
    # the saved count wins, and the continuation is the uninterrupted one.
    again = iter(_train(files, 0))
    again.set_state(state)
    assert again.workers == 2
    for w in want:
        got = next(again)
        for key in w:
            np.testing.assert_array_equal(got[key], w[key])
    again.close()


def test_states_without_a_worker_count_restore_as_before(files):
    it = iter(_train(files, 0))
    next(it)
    state = it.get_state()
    want = next(it)
    again = iter(_train(files, 0))
    again.set_state(state["pipeline"])  # a checkpoint written before the count was kept
    np.testing.assert_array_equal(next(again)["ids"], want["ids"])


_HOLD_WORKERS = """
import multiprocessing, sys, time
from vmjax.data import pipeline

if __name__ == "__main__":
    spec = pipeline.BatchSpec("frame", 3862, 8, 4, 8192)
    ds = pipeline.train_dataset(
        sys.argv[1:], spec, batch_size=2, seed=0, shuffle_buffer=1, cycle_length=1, workers=2
    )
    it = iter(ds)
    next(it)
    print(*[p.pid for p in multiprocessing.active_children()], flush=True)
    time.sleep(600)
"""


def test_workers_exit_when_the_training_process_is_killed(files, tmp_path):
    import subprocess
    import sys

    script = tmp_path / "hold.py"
    script.write_text(_HOLD_WORKERS)
    proc = subprocess.Popen(
        [sys.executable, str(script), *files], stdout=subprocess.PIPE, text=True
    )
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) >= 2, pids  # the workers (and grain's resource tracker)
    proc.send_signal(signal.SIGKILL)  # no cleanup runs in the training process
    proc.wait()
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if os.path.exists(f"/proc/{p}") and not _zombie(p)]
    assert not alive, f"worker processes {alive} outlived their training process"
    proc.stdout.close()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


# Reused shared-memory blocks for worker batches (vmjax.data.batch_memory).


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


def _gone(path: str, seconds: float = 10.0) -> bool:
    """Whether `path` is gone within `seconds`: once grain's mp_prefetch has run in a process,
    its shared memory is unlinked by a thread (SharedMemoryArray.enable_async_del)."""
    deadline = time.monotonic() + seconds
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not os.path.exists(path)


def test_arrays_that_do_not_fit_the_block_travel_in_grain_shared_memory(pool):
    # A block sized for uint8 frames gets float ones (some extractors write float lists).
    lease = pool.lease(1024)
    small = lease.zeros(16, np.int32)
    big = lease.zeros((64, 300), np.float32)  # 76,800 bytes: not in the block
    assert isinstance(big, grain.multiprocessing.SharedMemoryArray) and not big.any()
    small[:] = np.arange(16)
    big[:] = 2.5
    name = big.shm.name
    batch = batch_memory.Opener()(_send(lease.seal({"small": small, "big": big})))
    np.testing.assert_array_equal(batch["small"], np.arange(16))
    np.testing.assert_array_equal(batch["big"], np.full((64, 300), 2.5, np.float32))
    assert batch_memory.block_of(batch["small"]) == pool.blocks[0].name
    del big, batch
    gc.collect()
    assert _gone(f"/dev/shm/{name}")  # the training process unlinked it
    # Dropped unopened: the block is freed and the array's own shared memory unlinked.
    lease = pool.lease(1024)
    big = lease.zeros((64, 300), np.float32)
    name = big.shm.name
    received = _send(lease.seal({"big": big}))
    del received, big
    gc.collect()
    assert _state(pool) == [batch_memory.FREE] and not os.path.exists(f"/dev/shm/{name}")


def test_no_pool_outside_worker_processes(files):
    batch = pipeline.make_batcher(_spec(), 4)(_items(files[0], 2))
    assert isinstance(batch, dict) and batch_memory.block_of(batch["rgb"]) is None
    shared = pipeline.make_batcher(_spec(), 4)
    shared.enable_shared_memory_output()  # grain's own shared memory, as before
    assert isinstance(shared(_items(files[0], 2))["rgb"], grain.multiprocessing.SharedMemoryArray)


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
