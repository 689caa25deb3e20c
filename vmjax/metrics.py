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
Scores must not be NaN.
"""

import numpy as np

# Rows per internal chunk: bounds temporaries when a whole data set is passed
# at once, and lets (row, score, class) fit in one 64-bit sort key.
_CHUNK_ROWS = 4096


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


def _expected_ap_sums(
    scores: np.ndarray, positive: np.ndarray, segment: np.ndarray | None, num_segments: int
) -> np.ndarray:
    """Per segment, E[sum_i precision@i * rel_i] over all orders of tied scores.

    A tie group at ranks a+1..a+n with t positives and c positives before it
    adds (t/n) * sum_j (c + 1 + j (t-1)/(n-1)) / (a + 1 + j), j = 0..n-1.
    """
    # One integer sort ranks everything: segment, then score descending, then
    # positives first, so each tie group starts with its positives.
    positive = positive.astype(bool, copy=False)
    key = _descending_bits(scores).astype(np.uint64)
    key <<= np.uint64(1)
    key |= ~positive
    if segment is not None:
        segment_bits = segment.astype(np.uint64)
        segment_bits <<= np.uint64(33)
        key |= segment_bits
        del segment_bits
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
    if segment is None:
        seg_size, seg_pos = np.array([len(key)]), np.array([len(at)])
    else:
        seg_size = np.bincount(segment, minlength=num_segments)
        seg_pos = np.bincount(segment[positive], minlength=num_segments)
    a = start - (np.cumsum(seg_size) - seg_size)[seg]
    c = np.cumsum(t) - t - (np.cumsum(seg_pos) - seg_pos)[seg]
    # D = sum_j 1/(a+1+j), E = sum_j j/(a+1+j); only tie groups need the sum.
    inv_sum, j_inv_sum = 1.0 / (a + 1), np.zeros(len(a))
    tied = np.flatnonzero(n > 1)
    if tied.size:
        size = n[tied]
        offset = np.cumsum(size) - size
        j = np.arange(size.sum()) - np.repeat(offset, size)
        inv = 1.0 / (np.repeat(a[tied], size) + 1 + j)
        inv_sum[tied] = np.add.reduceat(inv, offset)
        j_inv_sum[tied] = np.add.reduceat(j * inv, offset)
    contrib = t / n * ((c + 1) * inv_sum + (t - 1) / np.maximum(n - 1, 1) * j_inv_sum)
    return np.bincount(seg, weights=contrib, minlength=num_segments)


class Evaluator:
    """Streams GAP@k, mAP@k, Hit@1 and PERR; keeps only each video's top k."""

    def __init__(self, num_classes: int, k: int = 20, threshold: float | None = None):
        if not 1 <= num_classes <= 2**20 or k < 1:  # classes must fit the sort keys' bits
            raise ValueError(
                f"Evaluator: need 1 <= num_classes <= 2**20 and k >= 1, got {num_classes}, {k}"
            )
        self.num_classes = num_classes
        self.k = min(k, num_classes)
        # With a threshold, also precision / recall / F1 of scores >= it (two more passes over
        # every batch, so off by default).
        self.threshold = None if threshold is None else np.float32(threshold)
        self.reset()

    def reset(self) -> None:
        """Forget all videos seen so far."""
        self._scores: list[np.ndarray] = []  # float32 [videos * k] per update
        self._classes: list[np.ndarray] = []  # int32
        self._positive: list[np.ndarray] = []  # bool
        self._class_positives = np.zeros(self.num_classes, np.int64)
        self._hit_sum = 0.0
        self._perr_sum = 0.0
        self._num_videos = 0
        self._true_positives = 0  # scores >= threshold that are positives
        self._predicted = 0  # scores >= threshold

    def update(
        self, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
    ) -> None:
        """Adds a batch: scores float [B, C], labels {0,1} [B, C], weights 0/1 [B] (0 = padding)."""
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
        for begin in range(0, len(scores), _CHUNK_ROWS):
            self._update_chunk(
                scores[begin : begin + _CHUNK_ROWS], labels[begin : begin + _CHUNK_ROWS]
            )

    def _update_chunk(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Adds at most _CHUNK_ROWS videos."""
        flat, start, count = _top_candidates(scores, self.k)
        values = scores.reshape(-1)[flat]
        positive = labels.reshape(-1)[flat] != 0
        in_top_k = np.arange(len(flat)) - np.repeat(start, count) < self.k
        self._scores.append(values[in_top_k])
        self._classes.append((flat[in_top_k] % self.num_classes).astype(np.int32))
        self._positive.append(positive[in_top_k])
        self._class_positives += labels.sum(axis=0).astype(np.int64)
        self._num_videos += len(scores)
        if self.threshold is not None:
            above = scores >= self.threshold
            self._predicted += int(np.count_nonzero(above))
            self._true_positives += int(np.count_nonzero(above & (labels != 0)))

        ones = np.ones(len(scores), np.int64)
        self._hit_sum += float(_expected_hits(values, positive, start, count, ones).sum())
        # PERR: a video with no positives adds 0; one whose n-th score's tie
        # group may reach past the candidates (n > count) gets its full row sorted.
        n = labels.sum(axis=1).astype(np.int64)
        n_fast = np.clip(n, 1, count)
        hit = positive & (values > 0)
        precision = _expected_hits(values, hit, start, count, n_fast) / n_fast
        precision[n == 0] = 0.0
        slow = np.flatnonzero(n > count)
        if slow.size:
            order = np.argsort(-scores[slow], axis=1)
            row_values = np.take_along_axis(scores[slow], order, axis=1).reshape(-1)
            row_hit = np.take_along_axis(labels[slow], order, axis=1).reshape(-1) != 0
            full = np.full(len(slow), self.num_classes)
            precision[slow] = (
                _expected_hits(
                    row_values, row_hit & (row_values > 0), np.cumsum(full) - full, full, n[slow]
                )
                / n[slow]
            )
        self._perr_sum += float(precision.sum())

    def result(self) -> dict[str, float]:
        """Metrics over every video added since the last reset."""
        if self._num_videos == 0:
            return {"gap": 0.0, "map": 0.0, "hit_at_1": 0.0, "perr": 0.0, "num_videos": 0}
        scores = np.concatenate(self._scores)
        classes = np.concatenate(self._classes)
        positive = np.concatenate(self._positive)
        total = self._class_positives.sum()
        gap_value = _expected_ap_sums(scores, positive, None, 1)[0] / total if total else 0.0
        has_pos = self._class_positives > 0
        class_sums = _expected_ap_sums(scores, positive, classes, self.num_classes)
        aps = class_sums[has_pos] / self._class_positives[has_pos]
        out = {
            "gap": float(gap_value),
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
            sums = _expected_ap_sums(
                np.concatenate(self._scores),
                np.concatenate(self._positive),
                np.concatenate(self._classes),
                self.num_classes,
            )
            has_pos = self._class_positives > 0
            ap[has_pos] = sums[has_pos] / self._class_positives[has_pos]
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
    sums = _expected_ap_sums(scores[keep], positive[keep], classes[keep], num_classes)
    rated = positives > 0
    return float(np.mean(sums[rated] / positives[rated])) if rated.any() else 0.0
