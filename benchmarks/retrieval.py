"""Times Index.search (top-k cosine) against numpy brute force on the same random index.

Usage: python benchmarks/retrieval.py [--size 1000000] [--dim 256] [--queries 1024] [--top_k 10]
The index holds --size random unit vectors. Index.search is compiled first on a one-block index
of the same shapes (not timed). Brute force is `queries @ items.T` then `np.argpartition` and a
sort of the k winners, over --brute_rows queries at a time so its [rows, size] score matrix
stays a few hundred MB (all 1024 queries at once would need 4 GB for scores alone). Peak extra
memory is the largest resident-set growth over the call, sampled every 2 ms (approximate:
memory an earlier call freed to the allocator can hide part of a later call's). CPU seconds
(all threads) are printed too: on a shared machine they move less than wall time. Also timed (skip
with --skip_numpy_blocks): Index's blocked walk with numpy argpartition instead of the jitted
`jax.lax.top_k` kernel, the alternative Index was chosen over.
"""

import argparse
import threading
import time

import numpy as np

from vmjax.search import Index


def rss_bytes() -> int:
    """This process's resident set size (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def timed(fn):
    """(result, (wall seconds, CPU seconds of all threads), peak extra RSS in bytes) of fn()."""
    base = rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    seconds = time.perf_counter() - start, time.process_time() - cpu_start
    done.set()
    sampler.join()
    return result, seconds, max(peak[0], rss_bytes()) - base


def brute_force(items: np.ndarray, queries: np.ndarray, k: int, rows: int):
    """Top-k positions and scores of unit `queries` against unit `items`, best first."""
    positions, scores = [], []
    for start in range(0, len(queries), rows):
        sim = queries[start : start + rows] @ items.T
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(sim, top, axis=1)
        # Best first; equal scores: lower position first, as Index.search orders them.
        order = np.lexsort((top, -top_scores), axis=1)
        positions.append(np.take_along_axis(top, order, axis=1))
        scores.append(np.take_along_axis(top_scores, order, axis=1))
    return np.concatenate(positions), np.concatenate(scores)


def numpy_blocks(items: np.ndarray, queries: np.ndarray, k: int, block: int):
    """The alternative to Index's jitted kernel: the same blocked walk with numpy argpartition."""
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best = np.full((len(queries), k), -1, np.int64)
    for start in range(0, len(items), block):
        sim = queries @ items[start : start + block].T
        kk = min(k, sim.shape[1])
        top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        scores = np.concatenate([best_scores, np.take_along_axis(sim, top, axis=1)], axis=1)
        positions = np.concatenate([best, top + start], axis=1)
        order = np.lexsort((positions, -scores), axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, order, axis=1)
        best = np.take_along_axis(positions, order, axis=1)
    return best, best_scores


def main() -> None:
    """Builds the random index, times both searches, checks they agree, prints the numbers."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--block_size", type=int, default=16384, help="Index items per block")
    parser.add_argument("--query_block", type=int, default=1024, help="Index queries per block")
    parser.add_argument("--brute_rows", type=int, default=64, help="brute-force queries per matmul")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_numpy_blocks", action="store_true", help="skip that variant")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    items = np.empty((args.size, args.dim), np.float32)
    for start in range(0, args.size, 65536):  # chunks: no float64 or second full-size copy
        chunk = rng.standard_normal((min(65536, args.size - start), args.dim), np.float32)
        items[start : start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    queries = rng.standard_normal((args.queries, args.dim), np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def make_index(n: int) -> Index:
        index = Index(args.dim, block_size=args.block_size, query_block=args.query_block)
        index.add(items[:n], np.arange(n))
        return index

    make_index(min(args.size, args.block_size)).search(queries, args.top_k)  # compile
    index = make_index(args.size)
    hits, index_seconds, index_memory = timed(lambda: index.search(queries, args.top_k))
    if not args.skip_numpy_blocks:

        def blocked():
            # query_block rows at a time, so its score blocks match Index's.
            parts = [
                numpy_blocks(items, queries[s : s + args.query_block], args.top_k, args.block_size)
                for s in range(0, len(queries), args.query_block)
            ]
            return np.concatenate([p for p, _ in parts])

        blocked_positions, blocked_seconds, blocked_memory = timed(blocked)

    (positions, scores), brute_seconds, brute_memory = timed(
        lambda: brute_force(items, queries, args.top_k, args.brute_rows)
    )

    same = float(np.mean(hits.positions == positions))
    pairs = zip(hits.positions, positions, strict=True)
    same_sets = float(np.mean([len(np.intersect1d(a, b)) / args.top_k for a, b in pairs]))
    score_diff = float(np.max(np.abs(hits.scores - scores)))
    print(
        f"index {args.size} x {args.dim} float32, {args.queries} queries, top {args.top_k} cosine"
    )
    print(f"index_search_seconds {index_seconds[0]:.3f} (cpu {index_seconds[1]:.3f})")
    print(f"index_queries_per_second {args.queries / index_seconds[0]:.1f}")
    print(f"index_peak_extra_mib {index_memory / 2**20:.0f}")
    print(f"brute_force_seconds {brute_seconds[0]:.3f} (cpu {brute_seconds[1]:.3f})")
    print(f"brute_force_queries_per_second {args.queries / brute_seconds[0]:.1f}")
    print(f"brute_force_peak_extra_mib {brute_memory / 2**20:.0f}")
    print(f"speedup_index_over_brute_force {brute_seconds[0] / index_seconds[0]:.2f}")
    print(f"cpu_ratio_brute_force_over_index {brute_seconds[1] / index_seconds[1]:.2f}")
    if not args.skip_numpy_blocks:
        print(f"numpy_blocks_seconds {blocked_seconds[0]:.3f} (cpu {blocked_seconds[1]:.3f})")
        print(f"numpy_blocks_queries_per_second {args.queries / blocked_seconds[0]:.1f}")
        print(f"numpy_blocks_peak_extra_mib {blocked_memory / 2**20:.0f}")
        print(f"numpy_blocks_same_positions {np.mean(blocked_positions == positions):.6f}")
    print(f"same_position_at_each_rank {same:.6f}")
    print(f"same_top_k_sets {same_sets:.6f}")
    print(f"max_score_difference {score_diff:.2e}")
    # Float32 matmuls in different libraries round differently, so two near-equal scores may
    # swap ranks; anything more is a bug.
    assert same_sets > 0.999 and score_diff < 1e-5, "Index.search disagrees with brute force"


if __name__ == "__main__":
    main()
