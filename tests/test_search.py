"""vmjax.search.Index against numpy brute force, by hand on ties, and through save/load."""

import numpy as np
import pytest

from vmjax.errors import RunDirectoryError
from vmjax.search import Index

DIM = 16


def brute_force(items, queries, k, metric):
    """Best-first positions and scores over all items in float64; ties: lower position first."""
    items, queries = items.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        unit = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        scores = q @ unit.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = np.sqrt(((queries[:, None, :] - items[None, :, :]) ** 2).sum(-1))
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def _random(n, seed):
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize(
    "size, top_k, block_size, query_block",
    [
        (1000, 10, 128, 16),  # 1000 = 7 * 128 + 104: a padded last block
        (300, 70, 32, 64),  # top_k > block_size: the running top k spans blocks
        (50, 80, 16, 8),  # top_k > index: k is clamped to the index size
    ],
)
def test_search_equals_brute_force(metric, size, top_k, block_size, query_block):
    items, queries = _random(size, 0), _random(37, 1)  # 37: a padded last query block
    index = Index(DIM, block_size=block_size, query_block=query_block)
    split = size // 3  # two adds: positions continue
    index.add(items[:split], np.arange(split) + 1000)
    index.add(items[split:], np.arange(split, size) + 1000)
    hits = index.search(queries, top_k, metric=metric)
    want, want_scores = brute_force(items, queries, min(top_k, size), metric)
    assert hits.positions.shape == hits.scores.shape == (37, min(top_k, size))
    # Random float data: near-ties within float32 rounding are possible but rare; allow a few.
    assert np.mean(hits.positions == want) > 0.995
    np.testing.assert_allclose(hits.scores, want_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(hits.ids, hits.positions + 1000)
    assert hits.classes is None


def test_ties_go_to_the_item_added_first_in_every_block_layout():
    # Items with four +-1 entries have norm 2: unit entries +-0.5, and all dot products are
    # exact in float32, so equal scores are bitwise equal. Duplicates force ties.
    rng = np.random.default_rng(3)
    base = np.zeros((6, 8), np.float32)
    for row in base:
        row[rng.choice(8, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    items = base[rng.integers(0, 6, 45)]  # 45 items, each a copy of one of 6
    queries = base[rng.integers(0, 6, 5)]
    # Scaled queries: cosine normalises them back exactly (norm 6, entries +-0.5).
    for metric, q in (("cosine", 3 * queries), ("euclidean", queries)):
        want, _ = brute_force(items, q, 20, metric)
        for block_size in (7, 64):  # k = 20 spans blocks of 7; one padded block of 64
            index = Index(8, block_size=block_size, query_block=2)
            index.add(items, np.arange(45))
            np.testing.assert_array_equal(
                index.search(q, 20, metric).positions, want, err_msg=f"{metric} {block_size}"
            )


def test_hand_built_cosine_and_euclidean():
    index = Index(2)
    index.add(np.array([[1, 0], [0, 2], [3, 3], [-1, 0]], np.float32), ["a", "b", "c", "d"])
    hits = index.search(np.array([[2, 0]], np.float32), 4, "cosine")
    np.testing.assert_array_equal(hits.ids, [["a", "c", "b", "d"]])
    np.testing.assert_allclose(hits.scores, [[1, np.sqrt(0.5), 0, -1]], rtol=1e-6, atol=1e-7)
    hits = index.search(np.array([[2, 0]], np.float32), 4, "euclidean")
    np.testing.assert_array_equal(hits.ids, [["a", "b", "d", "c"]])
    np.testing.assert_array_equal(hits.positions, [[0, 1, 3, 2]])
    np.testing.assert_allclose(hits.scores, [[1, np.sqrt(8), 3, np.sqrt(10)]], rtol=1e-6)


def test_classes_and_string_ids_follow_the_hits():
    index = Index(DIM, block_size=8)
    items = _random(20, 4)
    index.add(items[:12], [f"v{i}" for i in range(12)], classes=["cat"] * 6 + ["dog"] * 6)
    index.add(items[12:], [f"v{i}" for i in range(12, 20)], classes=["eel"] * 8)
    hits = index.search(items[[3, 15]], 1)
    np.testing.assert_array_equal(hits.ids, [["v3"], ["v15"]])  # each item is its own nearest
    np.testing.assert_array_equal(hits.classes, [["cat"], ["eel"]])
    np.testing.assert_allclose(index.embeddings(), items, rtol=1e-6, atol=1e-7)


def test_save_load_round_trip(tmp_path):
    index = Index(DIM, block_size=64)
    items = _random(150, 5)
    index.add(items, [f"clip{i:03d}" for i in range(150)], classes=[str(i % 7) for i in range(150)])
    queries = _random(9, 6)
    path = tmp_path / "sub" / "index.npz"
    index.save(path)
    index.save(path)  # overwriting is atomic too
    assert sorted(p.name for p in path.parent.iterdir()) == ["index.npz"]  # no temp files left
    loaded = Index.load(path, block_size=32)
    assert len(loaded) == 150 and loaded.dim == DIM
    np.testing.assert_array_equal(loaded.ids, index.ids)
    np.testing.assert_array_equal(loaded.classes, index.classes)
    n = len(index)  # the stored vectors come back bit for bit
    np.testing.assert_array_equal(loaded._unit[:n], index._unit[:n])
    np.testing.assert_array_equal(loaded._norms[:n], index._norms[:n])
    for metric in ("cosine", "euclidean"):
        a, b = index.search(queries, 5, metric), loaded.search(queries, 5, metric)
        np.testing.assert_array_equal(a.positions, b.positions)
        # Block sizes 64 and 32 make matmuls of other shapes, whose kernels may sum in another
        # order: the last bit of a score may differ (it did on an AVX-512 CPU).
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(a.classes, b.classes)
    loaded.add(_random(2, 7), ["new0", "new1"], classes=["x", "y"])  # still growable
    assert len(loaded) == 152


def test_errors_name_the_problem(tmp_path):
    index = Index(DIM)
    with pytest.raises(ValueError, match="the index is empty"):
        index.search(_random(1, 0), 3)
    with pytest.raises(ValueError, match=r"embeddings must be \[n, 16\].*got \(4, 15\)"):
        index.add(np.zeros((4, 15)), np.arange(4))
    index.add(_random(4, 0), np.arange(4))
    with pytest.raises(ValueError, match=r"queries must be \[q, 16\].*got \(2, 8\)"):
        index.search(np.zeros((2, 8)), 3)
    with pytest.raises(ValueError, match="metric='dot' is unknown; expected one of"):
        index.search(_random(1, 0), 3, metric="dot")
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        index.search(_random(1, 0), 0)
    with pytest.raises(ValueError, match="ids must be distinct"):
        index.add(_random(2, 1), [3, 4])
    with pytest.raises(ValueError, match="4 embeddings but 3 ids"):
        index.add(_random(4, 1), [5, 6, 7])
    with pytest.raises(ValueError, match="NaN or Inf"):
        index.add(np.full((1, DIM), np.nan), [9])
    with pytest.raises(ValueError, match="classes for every add or for none"):
        index.add(_random(1, 1), [9], classes=["x"])
    with pytest.raises(ValueError, match="index holds int64 ids"):
        index.add(_random(1, 1), ["nine"])
    index.add(np.zeros((0, DIM)), [])  # an empty add is a no-op
    assert len(index) == 4  # failed adds change nothing
    other = tmp_path / "other.npz"
    np.savez(other, unit=np.zeros((1, DIM)))
    with pytest.raises(ValueError, match=r"other.npz: not a vmjax.retrieval.Index file"):
        Index.load(other)


def test_build_index_reuses_the_saved_index_only_for_the_latest_checkpoint(tmp_path):
    from vmjax import search

    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    saved = Index(DIM)
    saved.add(_random(6, 8), [f"v{i}" for i in range(6)], classes=["Music; Guitar"] * 6)
    saved.save(tmp_path / search.INDEX_FILE)
    (tmp_path / search.INDEX_INFO).write_text('{"step": 5, "split": "validate"}')
    loaded = search.build_index(str(tmp_path))  # no model, no data: read from disk
    np.testing.assert_array_equal(loaded.ids, saved.ids)
    np.testing.assert_array_equal(loaded.classes, saved.classes)
    # Another split, or a newer checkpoint: the saved index is stale and a rebuild needs the
    # run (its config.json), which this directory does not have.
    with pytest.raises(RunDirectoryError, match="has no config.json|does not exist"):
        search.build_index(str(tmp_path), "train")
    (tmp_path / "checkpoints" / "7").mkdir()
    with pytest.raises(RunDirectoryError, match="has no config.json|does not exist"):
        search.build_index(str(tmp_path))


def test_unknown_words_are_the_words_encoding_only_as_unk():
    from vmjax import search
    from vmjax.data import text

    tokenizer = text.build_vocabulary(["a video of a guitar", "rock concert, live"], 32)
    assert search.unknown_words(tokenizer, "Guitar solo on stage") == ["solo", "on", "stage"]
    assert search.unknown_words(tokenizer, "a rock concert!") == []
    assert search.unknown_words(tokenizer, "qwzx") == ["qwzx"]
