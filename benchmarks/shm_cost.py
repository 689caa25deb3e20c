"""What a batch in grain's shared memory costs a worker, against the same batch in np.zeros.

  python benchmarks/shm_cost.py

One frame-level batch as the training pipeline makes it (256 videos x 300 frames x 1,152 uint8
features, 160 of the 300 frames written): allocate, fill, free; the median of 10 rounds each.
grain's `SharedMemoryArray` is a new /dev/shm file per batch, whose tmpfs pages fault in as
they are written and are freed with the file; the worker processes of `data.workers` pay this
for every batch (benchmarks/README.md, data_throughput).
"""

import time

import grain
import numpy as np

SHAPE, FILLED = (256, 300, 1152), 160


def shared(shape, dtype):
    array = grain.multiprocessing.SharedMemoryArray(shape, dtype)
    array.unlink_on_del()  # as the trainer's side does: the file goes with the array
    return array


def median_ms(alloc, rounds: int = 10) -> float:
    frames = np.ones((SHAPE[0], FILLED, SHAPE[2]), np.uint8)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        batch = alloc(SHAPE, np.uint8)
        batch[:, :FILLED] = frames
        del batch
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


if __name__ == "__main__":
    print(f"np.zeros {median_ms(np.zeros):.1f} ms, grain shared memory {median_ms(shared):.1f} ms")
