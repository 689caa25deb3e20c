"""YouTube-8M metrics (GAP@k, mAP@k, Hit@1, PERR) and a streaming evaluator.

Semantics follow the starter code's eval_util.py, except for tied scores: the
starter breaks ties with a seeded shuffle, we return the expectation over all
orderings of tied scores (McSherry & Najork 2008), which is deterministic and
equals the starter's value in expectation. Tie rules, all documented here:
- GAP/mAP ranking: expected AP over all orders of tied scores.
- Which items enter a video's top k when scores tie at the k-th place: the
  lowest class indices, exactly as `np.argsort(-scores, kind='stable')[:k]`.
- Hit@1: share of positives among the tied maxima.
- PERR: hits strictly above the n-th score plus, for the remaining slots, the
  share of hits in the tie group at the n-th score.
- Retrieval ranks (R@k, median/mean rank): pessimistic, ties count against the
  correct item (see `retrieval_ranks`).
Scores must not be NaN.
"""

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Rows per internal chunk: bounds temporaries when a whole data set is passed
# at once, and lets (row, score, class) fit in one 64-bit sort key.
_CHUNK_ROWS = 4096


@functools.cache
def _thread_pool(threads: int) -> ThreadPoolExecutor:
    """One shared pool per thread count (evaluators come and go, threads stay)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="vmjax-metrics")


def _descending_bits(scores: np.ndarray) -> np.ndarray:
    """uint32 keys whose ascending order is float32 scores' descending order."""
    bits = (scores + np.float32(0)).view(np.uint32)  # a copy; + 0 maps -0.0 to 0.0
    # Non-negative floats flip all bits but the sign, negative ones keep theirs.
    # In-place ops: fresh arrays of pooled-pair size cost more than the math.
    flip = bits >> np.uint32(31)
    flip -= np.uint32(1)
    flip &= np.uint32(0x7FFFFFFF)
    bits ^= flip
    return bits


def _top_candidates(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices of each row's scores >= a cheap bound on its k-th largest.

    Returns (flat, start, count): flat is grouped by row, each row ordered by
    score descending then class ascending; row r is flat[start[r]:][:count[r]].
    """
    num_videos, num_classes = scores.shape
    # Column groups r, r + g, r + 2g, ...: the k-th largest group maximum is
    # reached by k distinct scores, so it bounds the row's k-th largest from
    # below and keeps every score tied with it. Much cheaper than argpartition.
    groups = min(num_classes, max(128, 4 * k))
    per_group = num_classes // groups
    group_max = scores[:, : groups * per_group].reshape(num_videos, per_group, groups).max(axis=1)
    bound = np.partition(group_max, groups - k, axis=1)[:, groups - k]
    flat = np.flatnonzero(scores >= bound[:, None])
    row = flat // num_classes
    count = np.bincount(row, minlength=num_videos)
    if count.min() < k:
        raise ValueError(f"metrics: scores contain NaN (a row has < {k} comparable scores)")
    # Sorting one (row, descending score, class) integer key is several times
    # faster than an argsort and breaks ties by lowest class index.
    class_bits = max(1, (num_classes - 1).bit_length())
    key = row.astype(np.uint64) << np.uint64(32 + class_bits)
    key |= _descending_bits(scores.reshape(-1)[flat]).astype(np.uint64) << np.uint64(class_bits)
    key |= (flat - row * num_classes).astype(np.uint64)
    key.sort()
    flat = row * num_classes + (key & np.uint64((1 << class_bits) - 1)).astype(np.int64)
    return flat, np.cumsum(count) - count, count


def _expected_hits(
    values: np.ndarray, hit: np.ndarray, start: np.ndarray, count: np.ndarray, n: np.ndarray
) -> np.ndarray:
    """Per row, expected hits among its top n, ties at the n-th score in random order.

    values, hit: flat rows, each sorted descending and holding the whole tie
    group at its n-th score; row r is values[start[r]:][:count[r]].
    """
    row = np.repeat(np.arange(len(start)), count)
    tau = values[start + n - 1][row]
    above, tied = values > tau, values == tau

    def per_row(mask: np.ndarray) -> np.ndarray:
        return np.bincount(row, weights=mask, minlength=len(start))

    n_above = per_row(above)
    return per_row(hit & above) + (n - n_above) * per_row(hit & tied) / per_row(tied)


def _rank_keys(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """uint64 keys (descending score << 1 | negative): ascending order ranks by score
    descending, positives first within a tie. Bits 33+ are free for a segment id."""
    key = _descending_bits(scores).astype(np.uint64)
    key <<= np.uint64(1)
    key |= ~np.asarray(positive, bool)
    return key


def _expected_ap_sums(key: np.ndarray, num_segments: int) -> np.ndarray:
    """Per segment, E[sum_i precision@i * rel_i] over all orders of tied scores.

    key: _rank_keys, with the segment id in bits 33+ (0 for one segment); sorted in place.
    A tie group at ranks a+1..a+n with t positives and c positives before it
    adds (t/n) * sum_j (c + 1 + j (t-1)/(n-1)) / (a + 1 + j), j = 0..n-1.
    """
    # One integer sort ranks everything: segment, then score descending, then
    # positives first, so each tie group starts with its positives.
    key.sort()
    at = np.flatnonzero(~key.astype(np.uint8) & np.uint8(1))  # sorted positions of positives
    if at.size == 0:
        return np.zeros(num_segments)
    group_key = key[at] >> np.uint64(1)
    first = np.flatnonzero(np.r_[True, group_key[1:] != group_key[:-1]])
    start, group_key = at[first], group_key[first]
    t = np.diff(np.r_[first, len(at)])
    end = start + t
    # Negatives tied with a group's positives (rare) extend it.
    spill = np.flatnonzero(end < len(key))
    spill = spill[key[end[spill]] >> np.uint64(1) == group_key[spill]]
    end[spill] = np.searchsorted(key, (group_key[spill] + np.uint64(1)) << np.uint64(1))
    n = end - start

    seg = (group_key >> np.uint64(32)).astype(np.int64)
    # Sorted keys: each segment is one run, found by binary search.
    bounds = np.searchsorted(key, np.arange(num_segments + 1, dtype=np.uint64) << np.uint64(33))
    seg_first = bounds[:-1]
    seg_pos = np.bincount(seg, weights=t, minlength=num_segments).astype(np.int64)
    a = start - seg_first[seg]
    c = np.cumsum(t) - t - (np.cumsum(seg_pos) - seg_pos)[seg]
    # D = sum_j 1/(a+1+j) (only tie groups need the sum) and E = sum_j j/(a+1+j) = n - (a+1) D.
    inv_sum = 1.0 / (a + 1)
    tied = np.flatnonzero(n > 1)
    if tied.size:
        size = n[tied]
        offset = np.cumsum(size) - size
        rank = np.arange(1, size.sum() + 1, dtype=np.float64)  # a + 1 + j, built in place
        rank += np.repeat(a[tied] - offset, size)
        np.reciprocal(rank, out=rank)
        inv_sum[tied] = np.add.reduceat(rank, offset)
    j_inv_sum = n - (a + 1) * inv_sum
    contrib = t / n * ((c + 1) * inv_sum + (t - 1) / np.maximum(n - 1, 1) * j_inv_sum)
    return np.bincount(seg, weights=contrib, minlength=num_segments)


def _without_segments(keys: list[np.ndarray]) -> np.ndarray:
    """Rank keys with their segment bits cleared, concatenated into one fresh array."""
    out = np.concatenate(keys)
    out &= np.uint64((1 << 33) - 1)
    return out


def _with_segments(key: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """A copy of rank keys with segment ids in bits 33+."""
    out = segment.astype(np.uint64)
    out <<= np.uint64(33)
    out |= key
    return out


def _chunk_stats(
    scores: np.ndarray, labels: np.ndarray, k: int, threshold: np.float32 | None
) -> dict:
    """One chunk's share of every metric: top-k rank keys and classes, and sums."""
    num_videos, num_classes = scores.shape
    # Labels are sparse: find them once, then count per row and class from positions.
    byte = labels.dtype.itemsize == 1 and labels.dtype.kind in "biu"
    label_at = np.flatnonzero(labels.view(bool) if byte else labels != 0)  # bool: fastest
    n = np.bincount(label_at // num_classes, minlength=num_videos)
    out = {"class_positives": np.bincount(label_at % num_classes, minlength=num_classes)}

    flat, start, count = _top_candidates(scores, k)
    values = scores.reshape(-1)[flat]
    positive = labels.reshape(-1)[flat] != 0
    in_top_k = np.arange(len(flat)) - np.repeat(start, count) < k
    # Rank keys with the class in bits 33+: sorted they rank within classes (mAP); masked,
    # they rank the pooled pairs (GAP).
    classes = flat[in_top_k] % num_classes
    out["keys"] = _with_segments(_rank_keys(values[in_top_k], positive[in_top_k]), classes)
    if threshold is not None:
        out["predicted"] = int(np.count_nonzero(scores >= threshold))
        out["true_positives"] = int(np.count_nonzero(scores.reshape(-1)[label_at] >= threshold))

    ones = np.ones(num_videos, np.int64)
    out["hit_sum"] = float(_expected_hits(values, positive, start, count, ones).sum())
    # PERR: a video with no positives adds 0; one whose n-th score's tie
    # group may reach past the candidates (n > count) gets its full row sorted.
    n_fast = np.clip(n, 1, count)
    hit = positive & (values > 0)
    precision = _expected_hits(values, hit, start, count, n_fast) / n_fast
    precision[n == 0] = 0.0
    slow = np.flatnonzero(n > count)
    if slow.size:
        order = np.argsort(-scores[slow], axis=1)
        row_values = np.take_along_axis(scores[slow], order, axis=1).reshape(-1)
        row_hit = np.take_along_axis(labels[slow], order, axis=1).reshape(-1) != 0
        full = np.full(len(slow), num_classes)
        precision[slow] = (
            _expected_hits(
                row_values, row_hit & (row_values > 0), np.cumsum(full) - full, full, n[slow]
            )
            / n[slow]
        )
    out["perr_sum"] = float(precision.sum())
    return out


class Evaluator:
    """Streams GAP@k, mAP@k, Hit@1 and PERR; keeps only each video's top k."""

    def __init__(
        self,
        num_classes: int,
        k: int = 20,
        threshold: float | None = None,
        threads: int | None = None,
    ):
        if not 1 <= num_classes <= 2**20 or k < 1:  # classes must fit the sort keys' bits
            raise ValueError(
                f"Evaluator: need 1 <= num_classes <= 2**20 and k >= 1, got {num_classes}, {k}"
            )
        self.num_classes = num_classes
        self.k = min(k, num_classes)
        # With a threshold, also precision / recall / F1 of scores >= it (two more passes over
        # every batch, so off by default).
        self.threshold = None if threshold is None else np.float32(threshold)
        # Worker threads for update and result (default: the CPU's cores, at most 4).
        self.threads = max(1, threads or min(4, os.cpu_count() or 1))
        self._pool = _thread_pool(self.threads)
        self.reset()

    def reset(self) -> None:
        """Forget all videos seen so far."""
        self._keys: list[np.ndarray] = []  # rank keys of each video's top k with its classes
        self._class_sums: np.ndarray | None = None  # per-class AP sums, cached by result()
        self._class_positives = np.zeros(self.num_classes, np.int64)
        self._hit_sum = 0.0
        self._perr_sum = 0.0
        self._num_videos = 0
        self._true_positives = 0  # scores >= threshold that are positives
        self._predicted = 0  # scores >= threshold

    def update(
        self, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
    ) -> None:
        """Adds a batch: scores float [B, C], labels {0,1} [B, C], weights 0/1 [B] (0 = padding).

        Labels as bool or uint8 (the pipeline's) are cheapest: a byte view finds them.
        """
        scores = np.ascontiguousarray(scores, np.float32)
        labels = np.ascontiguousarray(labels)
        if scores.ndim != 2 or scores.shape[1] != self.num_classes or labels.shape != scores.shape:
            raise ValueError(
                f"Evaluator.update: expected scores and labels [B, {self.num_classes}], "
                f"got {scores.shape} and {labels.shape}"
            )
        if weights is not None:
            keep = np.asarray(weights).reshape(-1) > 0
            if not keep.all():  # copies only on the padded last batch
                scores, labels = scores[keep], labels[keep]
        self._class_sums = None
        # Row blocks, one per thread (numpy releases the GIL in the heavy calls), each at
        # most _CHUNK_ROWS so temporaries stay bounded.
        rows = max(1, min(_CHUNK_ROWS, -(-len(scores) // self.threads)))
        blocks = [slice(b, b + rows) for b in range(0, len(scores), rows)]
        run = lambda block: _chunk_stats(scores[block], labels[block], self.k, self.threshold)  # noqa: E731
        parts = list(self._pool.map(run, blocks)) if len(blocks) > 1 else map(run, blocks)
        for part in parts:  # in row order: results never depend on the thread count
            self._keys.append(part["keys"])
            self._class_positives += part["class_positives"]
            self._hit_sum += part["hit_sum"]
            self._perr_sum += part["perr_sum"]
            self._true_positives += part.get("true_positives", 0)
            self._predicted += part.get("predicted", 0)
        self._num_videos += len(scores)

    def _per_class_sums(self) -> np.ndarray:
        """Per class, the expected AP numerator over the stored top-k pairs (cached)."""
        if self._class_sums is None:
            self._class_sums = _expected_ap_sums(np.concatenate(self._keys), self.num_classes)
        return self._class_sums

    def result(self) -> dict[str, float]:
        """Metrics over every video added since the last reset."""
        if self._num_videos == 0:
            return {"gap": 0.0, "map": 0.0, "hit_at_1": 0.0, "perr": 0.0, "num_videos": 0}
        total = self._class_positives.sum()
        # The pooled (GAP) and per-class sorts are independent: run them side by side.
        pooled = lambda: _expected_ap_sums(_without_segments(self._keys), 1)  # noqa: E731
        gap_sums = self._pool.submit(pooled)
        self._per_class_sums()
        gap_sum = gap_sums.result()[0]
        has_pos = self._class_positives > 0
        aps = self._per_class_sums()[has_pos] / self._class_positives[has_pos]
        out = {
            "gap": float(gap_sum / total) if total else 0.0,
            "map": float(aps.mean()) if aps.size else 0.0,
            "hit_at_1": self._hit_sum / self._num_videos,
            "perr": self._perr_sum / self._num_videos,
            "num_videos": self._num_videos,
        }
        if self.threshold is not None:
            precision = self._true_positives / self._predicted if self._predicted else 0.0
            recall = self._true_positives / total if total else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            out.update(precision=float(precision), recall=float(recall), f1=float(f1))
        return out

    def per_class_ap(self) -> tuple[np.ndarray, np.ndarray]:
        """(AP@k per class, positives per class); NaN AP for classes without positives.

        The same top-k cut as mAP: a class's AP counts only videos where it made the top k.
        """
        ap = np.full(self.num_classes, np.nan)
        if self._num_videos:
            has_pos = self._class_positives > 0
            ap[has_pos] = self._per_class_sums()[has_pos] / self._class_positives[has_pos]
        return ap, self._class_positives.copy()


def _evaluate(scores: np.ndarray, labels: np.ndarray, k: int = 20) -> dict[str, float]:
    """All metrics of one in-memory [N, C] array pair."""
    evaluator = Evaluator(np.shape(scores)[1], k)
    evaluator.update(scores, labels)
    return evaluator.result()


def gap(scores: np.ndarray, labels: np.ndarray, k: int = 20) -> float:
    """Global average precision over the pooled top k of every video."""
    return _evaluate(scores, labels, k)["gap"]


def mean_ap(scores: np.ndarray, labels: np.ndarray, k: int = 20) -> float:
    """Mean over classes with a positive of per-class AP on the top-k pairs."""
    return _evaluate(scores, labels, k)["map"]


def hit_at_one(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of videos whose highest-scored class is positive."""
    return _evaluate(scores, labels, 1)["hit_at_1"]


def perr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Precision at equal recall rate: precision in each video's top n, n = its positives."""
    return _evaluate(scores, labels, 1)["perr"]


def segment_map(
    scores: np.ndarray, positive: np.ndarray, classes: np.ndarray, k: int = 100_000
) -> float:
    """MAP@k of the 2019 segment task over rated (segment, class) pairs.

    One entry per rated pair: its score, whether the rating was positive, and its class. Per
    class, the rated segments are ranked by score and the top k kept; AP = sum_i precision@i *
    rel_i / P with P all of the class's positive ratings (also those cut off). Unrated pairs
    never count. The mean is over classes with at least one positive rating; ties in score
    count at their expected value, as everywhere here.
    """
    scores = np.asarray(scores, np.float32).reshape(-1)
    positive = np.asarray(positive).reshape(-1) != 0
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    if not (len(scores) == len(positive) == len(classes)):
        raise ValueError("segment_map: scores, positive and classes must have equal lengths")
    if len(scores) == 0:
        return 0.0
    _, classes = np.unique(classes, return_inverse=True)  # dense class ids
    num_classes = int(classes.max()) + 1
    # Rank within each class by descending score (ties: input order) to cut at k.
    order = np.lexsort((_descending_bits(scores), classes))
    sizes = np.bincount(classes, minlength=num_classes)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    keep = order[rank < k]
    positives = np.bincount(classes[positive], minlength=num_classes)
    key = _with_segments(_rank_keys(scores[keep], positive[keep]), classes[keep])
    sums = _expected_ap_sums(key, num_classes)
    rated = positives > 0
    return float(np.mean(sums[rated] / positives[rated])) if rated.any() else 0.0


# --- Retrieval: rank the correct item of each query among all items by similarity.

RECALL_KS = (1, 5, 10)


def retrieval_ranks(similarity: np.ndarray, targets: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each query's correct item in `similarity: [queries, items]`.

    targets: the correct item index per query (default: the diagonal, query i <-> item i).
    Ties count against the query (pessimistic): rank = number of items scoring >= the correct
    one, itself included, so a model that scores everything equal ranks last, not first.
    """
    similarity = np.asarray(similarity)  # no cast: float32 could tie float64 scores
    if similarity.ndim != 2:
        raise ValueError(
            f"retrieval_ranks: similarity must be [queries, items]; got {similarity.shape}"
        )
    num_queries, num_items = similarity.shape
    if targets is None:
        if num_items < num_queries:
            raise ValueError(
                f"retrieval_ranks: a diagonal ground truth needs items >= queries; got "
                f"similarity {similarity.shape} (pass targets)"
            )
        targets = np.arange(num_queries)
    targets = np.asarray(targets).reshape(-1)
    if len(targets) != num_queries or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(
            f"retrieval_ranks: targets must be {num_queries} integer item indices; got "
            f"{targets.dtype} {targets.shape}"
        )
    if num_queries and (targets.min() < 0 or targets.max() >= num_items):
        raise ValueError(f"retrieval_ranks: targets must lie in [0, {num_items}); got {targets}")
    if np.isnan(similarity).any():
        raise ValueError("retrieval_ranks: similarity contains NaN")
    ranks = np.empty(num_queries, np.int64)
    # Row chunks keep the [chunk, items] comparison small for big query sets.
    for start in range(0, num_queries, _CHUNK_ROWS):
        rows = similarity[start : start + _CHUNK_ROWS]
        correct = rows[np.arange(len(rows)), targets[start : start + _CHUNK_ROWS]]
        ranks[start : start + len(rows)] = np.count_nonzero(rows >= correct[:, None], axis=1)
    return ranks


def retrieval_metrics(
    similarity: np.ndarray, targets: np.ndarray | None = None, ks: tuple[int, ...] = RECALL_KS
) -> dict[str, float]:
    """R@k (share of queries whose correct item ranks <= k), median and mean rank (1-based).

    Ranks as in `retrieval_ranks` (ties pessimistic). Keys: 'r@1', 'r@5', 'r@10',
    'median_rank', 'mean_rank', 'num_queries'.
    """
    ranks = retrieval_ranks(similarity, targets)
    if ranks.size == 0:
        raise ValueError("retrieval_metrics: no queries")
    out = {f"r@{k}": float(np.mean(ranks <= k)) for k in ks}
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(np.mean(ranks))
    out["num_queries"] = int(ranks.size)
    return out


def text_video_retrieval(similarity: np.ndarray, ks: tuple[int, ...] = RECALL_KS) -> dict:
    """Both directions from `similarity: [texts, videos]`, text i describing video i.

    Keys are `retrieval_metrics`' prefixed by 'text_to_video/' (rows as queries) and
    'video_to_text/' (the transpose).
    """
    similarity = np.asarray(similarity)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(
            f"text_video_retrieval: similarity must be square [texts, videos] with pair i on "
            f"the diagonal; got {similarity.shape}"
        )
    out = {}
    for direction, sim in (("text_to_video", similarity), ("video_to_text", similarity.T)):
        out |= {f"{direction}/{k}": v for k, v in retrieval_metrics(sim, ks=ks).items()}
    return out
