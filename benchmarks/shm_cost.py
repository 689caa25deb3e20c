"""What a batch in shared memory costs, per batch: grain's, vmjax's reused blocks, np.zeros.

  python benchmarks/shm_cost.py

One frame-level batch as the training pipeline makes it (256 videos x 300 frames x 1,152 uint8
features, 160 of the 300 frames written); the median of 10 rounds each.

- worker: allocate, fill, free. grain's `SharedMemoryArray` is a new /dev/shm file per batch,
  whose tmpfs pages fault in one by one as they are written and are freed with the file (the
  cost every batch of `data.workers` paid before vmjax.data.batch_memory); a reused block
  (`batch_memory.BlockPool`, what the workers do now) is zeroed and filled in memory already
  mapped; `np.zeros` (the in-process pipeline) for reference.
- training process: map the batch and read all of it once (a copy, as a device transfer
  does): a new mapping per batch faults every page in again; a block mapped before does not.
"""

import time

import grain
import numpy as np

from vmjax.data import batch_memory

SHAPE, FILLED = (256, 300, 1152), 160
NBYTES = int(np.prod(SHAPE))


def median_ms(step, rounds: int = 10) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    frames = np.ones((SHAPE[0], FILLED, SHAPE[2]), np.uint8)

    def grain_batch():
        array = grain.multiprocessing.SharedMemoryArray(SHAPE, np.uint8)
        array.unlink_on_del()  # as the training process's side does: the file goes with it
        array[:, :FILLED] = frames
        return array

    pool = batch_memory.BlockPool(max_blocks=1)

    def block_batch():
        lease = pool.lease(NBYTES)
        array = lease.zeros(SHAPE, np.uint8)
        array[:, :FILLED] = frames
        lease.release()  # as the training process does once the batch is gone

    def zeros_batch():
        np.zeros(SHAPE, np.uint8)[:, :FILLED] = frames

    print("worker, per batch (allocate, fill, free):")
    print(f"  grain shared memory {median_ms(grain_batch):.1f} ms")
    print(f"  reused block        {median_ms(block_batch):.1f} ms")
    print(f"  np.zeros            {median_ms(zeros_batch):.1f} ms")

    def read_new_mapping():
        sent = grain_batch()
        opened = grain.multiprocessing.SharedMemoryArray.from_metadata(sent.metadata)
        start = time.perf_counter()
        np.array(opened)
        return time.perf_counter() - start

    mapped = pool.lease(NBYTES).zeros(SHAPE, np.uint8)
    print("training process, per batch (map, read once):")
    fresh = 1e3 * float(np.median([read_new_mapping() for _ in range(10)]))
    print(f"  a new mapping         {fresh:.1f} ms")
    print(f"  a block mapped before {median_ms(lambda: np.array(mapped)):.1f} ms")
    pool.blocks[0].shm.unlink()  # in the pipeline the training process unlinks it


if __name__ == "__main__":
    main()
