"""The YouTube-8M starter code's metric algorithm, for timing beside ours.

Written here (not imported: the starter is TF1 code) following the steps of its eval_util.py
and average_precision_calculator.py for one batch: Hit@1 by argmax; PERR by a Python loop over
videos with an argpartition each; each video's top k by argpartition, regrouped per class in
Python lists; every (score, label) pair pushed into a heap of the pooled (GAP) calculator and of
its class's calculator; at the end each heap is sorted and its AP computed. Only the time is
used; the values are not compared (the starter breaks ties by a random shuffle).
"""

import heapq

import numpy as np


class _APCalculator:
    """Pairs kept in a heap, AP computed once at the end (as the starter's calculator does)."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, float]] = []
        self.positives = 0.0

    def accumulate(self, scores: list[float], labels: list[float], positives: float) -> None:
        for pair in zip(scores, labels, strict=True):
            heapq.heappush(self.heap, pair)
        self.positives += positives

    def ap(self) -> float:
        if not self.heap or self.positives == 0:
            return 0.0
        scores, labels = (np.array(x) for x in zip(*self.heap, strict=True))
        order = np.argsort(-scores)
        hits = labels[order] > 0
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        return float(np.sum(precision * hits) / self.positives)


class StarterMetrics:
    """Accumulates batches like the starter's EvaluationMetrics."""

    def __init__(self, num_classes: int, k: int = 20) -> None:
        self.k = k
        self.pooled = _APCalculator()
        self.per_class = [_APCalculator() for _ in range(num_classes)]
        self.hit_sum = self.perr_sum = 0.0
        self.num_videos = 0

    def accumulate(self, scores: np.ndarray, labels: np.ndarray) -> None:
        rows = np.arange(len(scores))
        self.hit_sum += float(labels[rows, np.argmax(scores, 1)].sum())
        for row in rows:  # PERR, one video at a time
            n = int(labels[row].sum())
            if n:
                top = np.argpartition(scores[row], -n)[-n:]
                self.perr_sum += sum(labels[row][c] for c in top if scores[row][c] > 0) / n
        by_class_scores = [[] for _ in self.per_class]
        by_class_labels = [[] for _ in self.per_class]
        for row in rows:  # each video's top k, regrouped per class
            for c in np.argpartition(scores[row], -self.k)[-self.k :]:
                by_class_scores[c].append(scores[row][c])
                by_class_labels[c].append(labels[row][c])
        positives = labels.sum(axis=0)
        for c, calculator in enumerate(self.per_class):
            calculator.accumulate(by_class_scores[c], by_class_labels[c], positives[c])
        self.pooled.accumulate(
            [s for per in by_class_scores for s in per],
            [y for per in by_class_labels for y in per],
            float(positives.sum()),
        )
        self.num_videos += len(scores)

    def result(self) -> dict[str, float]:
        aps = [c.ap() for c in self.per_class if c.positives > 0]
        return {
            "gap": self.pooled.ap(),
            "map": float(np.mean(aps)),
            "hit_at_1": self.hit_sum / self.num_videos,
            "perr": self.perr_sum / self.num_videos,
        }
