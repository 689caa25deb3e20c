"""Tests for vmjax.metrics against hand-computed values and plain-Python references."""

import itertools

import numpy as np
import pytest

from vmjax import metrics

# --- Plain-Python references: the starter's "sort, then loop", averaged over
# every ordering of tied scores (with distinct scores there is exactly one).


def _orderings(scores: list[float]):
    """Every index order with nonincreasing scores, i.e. every way to break ties."""
    levels = sorted(set(scores), reverse=True)
    groups = [[i for i, s in enumerate(scores) if s == level] for level in levels]
    for combo in itertools.product(*(itertools.permutations(g) for g in groups)):
        yield [i for group in combo for i in group]


def _mean_ap_over_orderings(pairs: list[tuple[float, int]], num_positives: int) -> float:
    """Plain AP (precision at each positive / all positives), averaged over tie orders."""
    if num_positives == 0:
        return 0.0
    aps = []
    for order in _orderings([s for s, _ in pairs]):
        hits, total = 0, 0.0
        for rank, i in enumerate(order, start=1):
            if pairs[i][1]:
                hits += 1
                total += hits / rank
        aps.append(total / num_positives)
    return float(np.mean(aps)) if aps else 0.0


def _top_k(scores: np.ndarray, labels: np.ndarray, k: int) -> list[tuple[float, int, int]]:
    """Pooled (score, label, class) of each video's top k; ties keep the lowest class."""
    pairs = []
    for row, row_labels in zip(scores.tolist(), labels.tolist(), strict=True):
        ranked = sorted(range(len(row)), key=lambda c, row=row: (-row[c], c))
        pairs += [(row[c], int(row_labels[c]), c) for c in ranked[:k]]
    return pairs


def ref_gap(scores, labels, k):
    pairs = _top_k(scores, labels, k)
    return _mean_ap_over_orderings([(s, y) for s, y, _ in pairs], int(labels.sum()))


def ref_map(scores, labels, k):
    pairs = _top_k(scores, labels, k)
    aps = []
    for c in range(scores.shape[1]):
        if labels[:, c].sum() > 0:
            class_pairs = [(s, y) for s, y, pc in pairs if pc == c]
            aps.append(_mean_ap_over_orderings(class_pairs, int(labels[:, c].sum())))
    return float(np.mean(aps))


def ref_hit_at_one(scores, labels):
    total = 0.0
    for row, row_labels in zip(scores.tolist(), labels.tolist(), strict=True):
        total += np.mean([row_labels[order[0]] for order in _orderings(row)])
    return total / len(scores)


def ref_perr(scores, labels):
    total = 0.0
    for row, row_labels in zip(scores.tolist(), labels.tolist(), strict=True):
        n = int(sum(row_labels))
        if n == 0:
            continue  # adds 0 but still counts in the denominator, as in the starter
        precisions = [
            sum(1 for c in order[:n] if row_labels[c] and row[c] > 0) / n
            for order in _orderings(row)
        ]
        total += np.mean(precisions)
    return total / len(scores)


def _distinct_scores(rng, n, c):
    """Scores without ties (a permutation), half of them negative."""
    return ((rng.permutation(n * c) - n * c / 2) / (n * c)).reshape(n, c).astype(np.float32)


def _tied_scores(rng, n, c, levels=(-0.5, 0.0, 0.5, 1.0)):
    return rng.choice(np.array(levels, np.float32), size=(n, c))


# --- Hand-computed cases.

# 3 videos x 4 classes, k = 2.
HAND_SCORES = np.array(
    [[0.9, 0.8, 0.1, 0.05], [0.2, 0.7, 0.6, 0.3], [0.4, 0.1, 0.95, 0.5]], np.float32
)
HAND_LABELS = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1]])


def test_gap_hand_counts_positives_outside_top_k():
    # Top 2 per video, pooled and sorted: 0.95(+) 0.9(+) 0.8(-) 0.7(+) 0.6(-) 0.5(+).
    # Video 0's positive at 0.05 is outside its top 2 but still counts in P = 5.
    # sum precision@positives = 1/1 + 2/2 + 3/4 + 4/6 = 41/12; GAP = 41/60.
    assert metrics.gap(HAND_SCORES, HAND_LABELS, k=2) == pytest.approx(41 / 60, abs=1e-12)


def test_gap_k_larger_than_num_classes_uses_all_pairs():
    # k = 10 > C = 4 keeps all 12 pairs; positives land at ranks 1, 2, 4, 6, 12:
    # (1 + 1 + 3/4 + 4/6 + 5/12) / 5 = 46/60.
    assert metrics.gap(HAND_SCORES, HAND_LABELS, k=10) == pytest.approx(46 / 60, abs=1e-12)
    assert metrics.mean_ap(HAND_SCORES, HAND_LABELS, k=10) == pytest.approx(
        metrics.mean_ap(HAND_SCORES, HAND_LABELS, k=4), abs=1e-12
    )


def test_map_hand():
    # Top-2 pairs by class: c0: 0.9(+); c1: 0.8(-) 0.7(+); c2: 0.95(+) 0.6(-); c3: 0.5(+).
    # AP: c0 1/1; c1 (1/2)/1; c2 1/1; c3 1/2 because P_3 = 2 (0.05 fell out). Mean 3/4.
    assert metrics.mean_ap(HAND_SCORES, HAND_LABELS, k=2) == pytest.approx(0.75, abs=1e-12)


def test_map_excludes_classes_without_positives():
    scores = np.array([[0.9, 0.2, 0.8], [0.3, 0.6, 0.7]], np.float32)
    labels = np.array([[1, 0, 0], [1, 1, 0]])
    # k = 2: video 0 keeps c0 0.9(+), c2 0.8(-); video 1 keeps c2 0.7(-), c1 0.6(+).
    # c0: 1 hit of P_0 = 2 -> 1/2; c1: 1/1; c2 has no positives -> excluded
    # (including it as 0 would give 1/2). mAP = 3/4.
    assert metrics.mean_ap(scores, labels, k=2) == pytest.approx(0.75, abs=1e-12)


def test_hit_at_one_hand():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.4, 0.3], [0.3, 0.3, 0.1]], np.float32)
    labels = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 0]])
    # Video 0 top is c1 (negative): 0; video 1 top c0 (positive): 1;
    # video 2 ties c0/c1, one positive: 1/2. Mean (0 + 1 + 0.5) / 3.
    assert metrics.hit_at_one(scores, labels) == pytest.approx(0.5, abs=1e-12)


def test_perr_hand():
    scores = np.array(
        [
            [0.9, -0.5, -0.6, -0.7],
            [0.0, -0.1, -0.2, -0.3],
            [0.5, 0.4, 0.3, 0.2],
            [0.2, 0.6, 0.4, 0.1],
        ],
        np.float32,
    )
    labels = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]])
    # v0: n=2, top 2 = c0 (0.9, +), c1 (-0.5, + but score <= 0 is no hit): 1/2.
    # v1: n=1, top 1 = c0 (0.0, +, score <= 0): 0.
    # v2: no positives: 0, still counted. v3: n=2, top 2 = c1, c2 both +: 1.
    # PERR = (1/2 + 0 + 0 + 1) / 4.
    assert metrics.perr(scores, labels) == pytest.approx(0.375, abs=1e-12)


# --- Ties.


def test_two_tied_items_one_positive_is_three_quarters():
    # Orders give AP 1 (positive first) and 1/2 (second); the expectation is 3/4,
    # whichever class holds the positive.
    scores = np.array([[0.5, 0.5]], np.float32)
    assert metrics.gap(scores, np.array([[0, 1]]), k=2) == pytest.approx(0.75)
    assert metrics.gap(scores, np.array([[1, 0]]), k=2) == pytest.approx(0.75)
    assert metrics.hit_at_one(scores, np.array([[0, 1]])) == pytest.approx(0.5)


def test_top_k_ties_keep_lowest_class_index():
    # All 300 scores tie; k = 2 keeps classes 0 and 1, so the positive at class 0
    # enters and the one at class 299 does not: pairs (+, -) tied, P = 2 -> 0.75 / 2.
    scores = np.full((1, 300), 0.25, np.float32)
    labels = np.zeros((1, 300), int)
    labels[0, [0, 299]] = 1
    assert metrics.gap(scores, labels, k=2) == pytest.approx(0.375)
    labels[0, 0] = 0
    assert metrics.gap(scores, labels, k=2) == 0.0


@pytest.mark.parametrize("seed", range(40))
def test_ties_equal_brute_force_over_orderings(seed):
    rng = np.random.default_rng(seed)
    n, c, k = int(rng.integers(1, 4)), int(rng.integers(2, 5)), 2
    scores = _tied_scores(rng, n, c)
    labels = (rng.random((n, c)) < 0.4).astype(np.int64)
    assert metrics.gap(scores, labels, k) == pytest.approx(ref_gap(scores, labels, k), abs=1e-12)
    assert metrics.hit_at_one(scores, labels) == pytest.approx(
        ref_hit_at_one(scores, labels), abs=1e-12
    )
    assert metrics.perr(scores, labels) == pytest.approx(ref_perr(scores, labels), abs=1e-12)
    if labels.any():
        assert metrics.mean_ap(scores, labels, k) == pytest.approx(
            ref_map(scores, labels, k), abs=1e-12
        )


def test_large_tie_group_with_many_positives():
    # One video, 6 tied scores, 3 positives, k = 6: brute force over 6! orders.
    scores = np.full((1, 6), 0.3, np.float32)
    labels = np.array([[1, 0, 1, 0, 0, 1]])
    assert metrics.gap(scores, labels, 6) == pytest.approx(ref_gap(scores, labels, 6), abs=1e-12)


# --- Starter algorithm on data without ties.


@pytest.mark.parametrize("num_classes,k", [(7, 3), (300, 20), (40, 50)])
def test_matches_starter_reference_without_ties(num_classes, k):
    rng = np.random.default_rng(num_classes)
    scores = _distinct_scores(rng, 120, num_classes)
    labels = (rng.random((120, num_classes)) < 3 / num_classes).astype(np.float32)
    labels[:5] = 0  # some videos without positives
    labels[5, : num_classes // 2 + 1] = 1  # one with more positives than k
    assert metrics.gap(scores, labels, k) == pytest.approx(ref_gap(scores, labels, k), abs=1e-12)
    assert metrics.mean_ap(scores, labels, k) == pytest.approx(
        ref_map(scores, labels, k), abs=1e-12
    )
    assert metrics.hit_at_one(scores, labels) == pytest.approx(
        ref_hit_at_one(scores, labels), abs=1e-12
    )
    assert metrics.perr(scores, labels) == pytest.approx(ref_perr(scores, labels), abs=1e-12)


def test_no_positives_gives_zero():
    scores = np.random.default_rng(0).random((4, 5)).astype(np.float32)
    labels = np.zeros((4, 5))
    assert metrics.gap(scores, labels) == 0.0
    assert metrics.mean_ap(scores, labels) == 0.0
    assert metrics.perr(scores, labels) == 0.0


# --- Streaming evaluator.


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(
    "batch_size, label_dtype", [(1, np.float32), (7, np.uint8), (64, bool), (500, np.float64)]
)
def test_evaluator_streaming_equals_in_memory(ties, batch_size, label_dtype):
    rng = np.random.default_rng(batch_size)
    n, c, k = 233, 150, 5
    scores = _tied_scores(rng, n, c) if ties else _distinct_scores(rng, n, c)
    labels = (rng.random((n, c)) < rng.uniform(0, 0.1, (n, 1))).astype(label_dtype)
    evaluator = metrics.Evaluator(c, k)
    for start in range(0, n, batch_size):
        batch_scores = scores[start : start + batch_size]
        batch_labels = labels[start : start + batch_size]
        # Pad the last batch to full size with junk rows masked out by weights.
        pad = batch_size - len(batch_scores)
        weights = np.r_[np.ones(len(batch_scores)), np.zeros(pad)]
        batch_scores = np.concatenate([batch_scores, rng.random((pad, c), np.float32) + 5])
        batch_labels = np.concatenate([batch_labels, np.ones((pad, c), label_dtype)])
        evaluator.update(batch_scores, batch_labels, weights)
    result = evaluator.result()
    assert result["num_videos"] == n
    assert result["gap"] == pytest.approx(metrics.gap(scores, labels, k), abs=1e-12)
    assert result["map"] == pytest.approx(metrics.mean_ap(scores, labels, k), abs=1e-12)
    assert result["hit_at_1"] == pytest.approx(metrics.hit_at_one(scores, labels), abs=1e-12)
    assert result["perr"] == pytest.approx(metrics.perr(scores, labels), abs=1e-12)
    if not ties:
        assert result["gap"] == pytest.approx(ref_gap(scores, labels, k), abs=1e-12)
    # Memory: only the top k of each kept video is stored, not the full rows.
    assert sum(a.size for a in evaluator._keys) == n * k


def test_evaluator_reset():
    rng = np.random.default_rng(1)
    scores, labels = rng.random((50, 30), np.float32), rng.random((50, 30)) < 0.1
    evaluator = metrics.Evaluator(30, k=4)
    evaluator.update(rng.random((20, 30), np.float32), np.ones((20, 30)))
    evaluator.reset()
    assert evaluator.result()["num_videos"] == 0
    evaluator.update(scores, labels)
    expected = {
        "gap": metrics.gap(scores, labels, 4),
        "map": metrics.mean_ap(scores, labels, 4),
        "hit_at_1": metrics.hit_at_one(scores, labels),
        "perr": metrics.perr(scores, labels),
        "num_videos": 50,
    }
    assert evaluator.result() == pytest.approx(expected, abs=1e-12)


def test_threshold_precision_recall_f1_and_per_class_ap_by_hand():
    scores = np.array([[0.9, 0.6, 0.1], [0.4, 0.7, 0.8]], np.float32)
    labels = np.array([[1, 0, 1], [0, 1, 0]])
    evaluator = metrics.Evaluator(3, k=3, threshold=0.5)
    evaluator.update(scores[:1], labels[:1])
    evaluator.update(scores[1:], labels[1:])
    result = evaluator.result()
    # Above 0.5: 0.9 (pos), 0.6 (neg), 0.7 (pos), 0.8 (neg) -> TP 2 of 4 predicted, 3 positives.
    assert result["precision"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    ap, positives = evaluator.per_class_ap()
    assert positives.tolist() == [1, 1, 1]
    # class 0: positive ranked 1st (AP 1); class 1: positive 0.7 above the negative 0.6 (1);
    # class 2: positive 0.1 below the negative 0.8 (1/2).
    np.testing.assert_allclose(ap, [1.0, 1.0, 0.5])
    assert np.nanmean(ap) == pytest.approx(result["map"])
    empty = metrics.Evaluator(3)
    empty.update(scores, np.zeros((2, 3)))
    assert np.isnan(empty.per_class_ap()[0]).all()


def test_evaluator_rejects_wrong_shape():
    with pytest.raises(ValueError, match="Evaluator.update"):
        metrics.Evaluator(10).update(np.zeros((2, 9)), np.zeros((2, 9)))


def _segment_ap_reference(scores, positive, classes, k):
    """Per class: sort rated segments by score, AP over the top k, divided by all positives."""
    aps = []
    for c in np.unique(classes):
        s, p = scores[classes == c], positive[classes == c]
        if not p.any():
            continue
        ranked = p[np.argsort(-s, kind="stable")][:k]
        hits = np.cumsum(ranked)
        precision = hits / np.arange(1, len(ranked) + 1)
        aps.append((precision * ranked).sum() / p.sum())
    return float(np.mean(aps))


@pytest.mark.parametrize("k", [3, 100_000])
def test_segment_map_matches_a_per_class_reference(k):
    rng = np.random.default_rng(7)
    n = 400
    classes = rng.choice([3, 7, 11, 50, 1000], n)
    positive = rng.random(n) < 0.3
    scores = (rng.random(n) + 0.3 * positive).astype(np.float32)
    got = metrics.segment_map(scores, positive, classes, k=k)
    assert got == pytest.approx(_segment_ap_reference(scores, positive, classes, k), abs=1e-9)


def test_segment_map_by_hand_and_unrated_classes_do_not_count():
    # class 1: positive ranked 2nd of 2 -> AP 1/2; class 2: no positive rating -> left out.
    scores = np.array([0.9, 0.4, 0.8], np.float32)
    positive = np.array([0, 1, 0])
    classes = np.array([1, 1, 2])
    assert metrics.segment_map(scores, positive, classes) == pytest.approx(0.5)
    # With k=1 the positive is cut off: AP 0.
    assert metrics.segment_map(scores, positive, classes, k=1) == 0.0
    assert metrics.segment_map([], [], []) == 0.0


# --- Retrieval ranks and R@k.


def _ref_ranks(similarity, targets):
    """Rank of the correct item, ties counted against it: 1 + items other than it scoring >=."""
    ranks = []
    for row, t in zip(similarity.tolist(), targets, strict=True):
        ranks.append(1 + sum(1 for j, s in enumerate(row) if j != t and s >= row[t]))
    return np.array(ranks)


def test_retrieval_hand_built_with_ties_both_directions():
    sim = np.array([[0.9, 0.1, 0.3], [0.5, 0.5, 0.2], [0.7, 0.8, 0.6]], np.float32)
    # text->video: row 0 first; row 1 ties with item 0 (counted against: rank 2); row 2 third.
    np.testing.assert_array_equal(metrics.retrieval_ranks(sim), [1, 2, 3])
    # video->text (the transpose): 0.9 first; 0.5 below 0.8; 0.6 above 0.3 and 0.2.
    np.testing.assert_array_equal(metrics.retrieval_ranks(sim.T), [1, 2, 1])
    out = metrics.text_video_retrieval(sim)
    assert out["text_to_video/r@1"] == pytest.approx(1 / 3)
    assert out["text_to_video/r@5"] == out["text_to_video/r@10"] == 1.0
    assert out["text_to_video/median_rank"] == 2.0
    assert out["text_to_video/mean_rank"] == 2.0
    assert out["video_to_text/r@1"] == pytest.approx(2 / 3)
    assert out["video_to_text/median_rank"] == 1.0
    assert out["video_to_text/mean_rank"] == pytest.approx(4 / 3)
    assert out["video_to_text/num_queries"] == 3


def test_retrieval_all_equal_scores_rank_last():
    ranks = metrics.retrieval_ranks(np.zeros((4, 4)))
    np.testing.assert_array_equal(ranks, [4, 4, 4, 4])
    assert metrics.retrieval_metrics(np.zeros((4, 4)))["r@1"] == 0.0


def test_retrieval_r_at_k_counts_ranks_up_to_k():
    # Query i's correct item (the diagonal) scores below exactly i others: rank i + 1.
    n = 12
    sim = np.zeros((n, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        sim[i, others[:i]] = 2.0
        sim[i, i] = 1.0
    np.testing.assert_array_equal(metrics.retrieval_ranks(sim), np.arange(1, n + 1))
    out = metrics.retrieval_metrics(sim)
    assert out["r@1"] == pytest.approx(1 / 12)
    assert out["r@5"] == pytest.approx(5 / 12)
    assert out["r@10"] == pytest.approx(10 / 12)
    assert out["median_rank"] == 6.5 and out["mean_rank"] == 6.5


@pytest.mark.parametrize("seed", range(3))
def test_retrieval_ranks_with_targets_match_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    sim = rng.integers(0, 4, (9, 20)).astype(np.float64)  # few levels: many ties
    targets = rng.integers(0, 20, 9)
    ranks = metrics.retrieval_ranks(sim, targets)
    np.testing.assert_array_equal(ranks, _ref_ranks(sim, targets))
    out = metrics.retrieval_metrics(sim, targets, ks=(1, 3))
    assert out["r@3"] == pytest.approx(np.mean(_ref_ranks(sim, targets) <= 3))
    assert sorted(out) == ["mean_rank", "median_rank", "num_queries", "r@1", "r@3"]


def test_retrieval_float64_scores_are_not_rounded_into_ties():
    sim = np.array([[1.0, 1.0 + 1e-12]])  # equal in float32, not in float64
    np.testing.assert_array_equal(metrics.retrieval_ranks(sim, [1]), [1])


def test_retrieval_rejects_bad_inputs():
    with pytest.raises(ValueError, match="similarity contains NaN"):
        metrics.retrieval_ranks(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\)"):
        metrics.retrieval_ranks(np.eye(2), [0, 2])
    with pytest.raises(ValueError, match="targets must be 2 integer item indices"):
        metrics.retrieval_ranks(np.eye(2), [0.0, 1.0])
    with pytest.raises(ValueError, match="diagonal ground truth needs items >= queries"):
        metrics.retrieval_ranks(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="must be square"):
        metrics.text_video_retrieval(np.zeros((2, 3)))
