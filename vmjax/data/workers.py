"""Worker processes of the input pipelines: grain's mp_prefetch, tied to the training process.

Every pipeline of the package that prepares batches in processes (pipeline.py's YT8M streams,
indexed.py's ArrayRecord sources, video_files.py's decoded clips) goes through `in_processes`,
so each worker exits with its training process and outlives a group SIGTERM long enough for
the trainer's preemption save (`init_worker`).
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time

import grain

from vmjax.data import batch_memory

WORKER_SIGNAL_GRACE = 30.0  # seconds a worker serves on after SIGTERM/SIGINT (init_worker)
# Shared-memory blocks a worker reuses (in_processes): twice its queue's batches (grain's
# training-process side buffers as many again per worker) and EXTRA_BLOCKS more: the one it
# writes, one in the pipe, and those the training process holds.
EXTRA_BLOCKS = 4


def blocks_per_worker(prefetch: int) -> int:
    """How many batches' shared memory a worker with `prefetch` queued batches reuses."""
    return 2 * max(prefetch, 1) + EXTRA_BLOCKS


def init_worker(
    parent: int,
    index: int = 0,
    count: int = 1,
    *,
    grace: float = WORKER_SIGNAL_GRACE,
    blocks: int = 0,
) -> None:
    """grain worker_init_fn: ties a worker's life to its training process `parent`.

    - The worker exits once `parent` is gone. grain stops its workers when the iterator is
      closed, but a SIGKILLed (or crashed) training process closes nothing: its workers would
      live on, blocked on a full queue, holding memory, shared memory and the parent's
      stdout/stderr (a caller waiting for those would hang). A thread watches the parent pid;
      prctl(PR_SET_PDEATHSIG) would fire when the *thread* that started the worker ends, and
      grain starts workers from a thread pool.
    - SIGTERM/SIGINT sent to the whole process group (Slurm, a TPU VM shutting down, Ctrl-C)
      do not kill the worker at once: the training process, which saves a checkpoint at the end
      of its step (vmjax.train.guards.Preemption), may be waiting for the worker's next batch,
      and grain raises as soon as a worker dies. The worker exits `grace` seconds later, or
      with its parent, whichever comes first.
    - Batch functions that support it write into up to `blocks` reused shared-memory blocks
      (vmjax.data.batch_memory); 0: grain's shared memory, a new file per batch.
    """
    del index, count
    batch_memory.configure(blocks)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    def later(signum, frame) -> None:
        del frame
        timer = threading.Timer(grace, os._exit, args=(128 + signum,))
        timer.daemon = True
        timer.start()

    threading.Thread(target=watch, name="vmjax-exit-with-parent", daemon=True).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, later)


def in_processes(
    ds: grain.IterDataset, workers: int, prefetch: int, **options
) -> grain.IterDataset:
    """`ds.mp_prefetch` with `workers` processes (each buffering `prefetch` batches, at least 1)
    that run `init_worker`; `options` go to mp_prefetch (e.g. sequential_slice).

    Each worker reuses up to `blocks_per_worker(prefetch)` shared-memory blocks for its
    batches (vmjax.data.batch_memory; its Opener maps them back into dicts of arrays here)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads its absl flags in the workers
        flags.FLAGS.mark_as_parsed()
    buffered = max(prefetch, 1)
    out = ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffered),
        worker_init_fn=functools.partial(
            init_worker, os.getpid(), grace=WORKER_SIGNAL_GRACE, blocks=blocks_per_worker(prefetch)
        ),
        **options,
    )
    return out.map(batch_memory.Opener())
