"""Per-process shares and grain read options of the indexed sources (ArrayRecord, video files)."""

from __future__ import annotations

import grain
import numpy as np


def check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, {process_count})")


def eval_slice(num_items: int, process_index: int, process_count: int) -> range:
    """The contiguous block of item indices process `process_index` evaluates."""
    check_process(process_index, process_count)
    return range(
        process_index * num_items // process_count,
        (process_index + 1) * num_items // process_count,
    )


def shuffle_seed(seed: int, salt: int) -> int:
    """The 32-bit seed of epoch 0's permutation; epoch e uses it + e (grain's rule).

    `salt` keeps sources that share a run seed from sharing a permutation.
    """
    return int(np.random.SeedSequence([seed, salt]).generate_state(1)[0])


def read_options(prefetch: int, threads: int) -> grain.ReadOptions:
    # grain's thread pool rather than ThreadPrefetchIterDataset: its daemon thread, caught at
    # interpreter exit inside C++ (index_shuffle, ArrayRecord reads), aborts the process
    # (std::terminate, exit status 134); pool threads are joined before finalisation.
    if not prefetch:
        return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return grain.ReadOptions(num_threads=max(threads, 1), prefetch_buffer_size=prefetch)
