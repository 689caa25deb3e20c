"""An exact nearest-neighbour index over embeddings: cosine or Euclidean top-k in fixed blocks.

Items are kept on the host as float32 unit vectors plus their norms, so one index answers both
metrics: cosine is q^ . x^, and for Euclidean ||q - x||^2 = ||q||^2 - n (2 q . x^ - n) with
n = ||x||. `search` walks the index in blocks of `block_size` items (and the queries in blocks
of `query_block` rows), each block one jitted kernel: a matmul, `jax.lax.top_k` of the block,
and a merge into the running top k. Memory beyond the index is two item blocks (one in
flight, one being scored) and the `[query_block, block_size]` score blocks, however large the
index grows. Chosen by benchmarks/retrieval.py (1,000,000 x 256 items, 1,024 queries, top
10, a shared 2-core CPU): 17.9 CPU-seconds, against 32.3 for the same blocked walk with numpy
`argpartition` and 47.1 for numpy brute force (`queries @ items.T` + `argpartition`).

Ties: equal scores rank the item added first (lower position) first.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import tempfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

METRICS = ("cosine", "euclidean")
_FORMAT = "vmjax.retrieval.Index"  # the files' format name (the module was vmjax.retrieval)
_VERSION = 1
_NORM_EPS = 1e-12
_ROW_ALIGN = 8  # small blocks are rounded up to this many rows (fewer distinct compiles)


class Hits(NamedTuple):
    """Search results, best first, `[queries, k]` each (k = min(top_k, len(index)))."""

    positions: np.ndarray  # int64 rows of the index, in the order items were added
    ids: np.ndarray  # the items' ids
    scores: np.ndarray  # float32: cosine similarity (descending) or distance (ascending)
    classes: np.ndarray | None  # the items' class names, if the index has them


def _norms(x: np.ndarray) -> np.ndarray:
    """float32 row norms of float32 `x: [n, d]`, without an [n, d] temporary."""
    return np.sqrt(np.einsum("nd,nd->n", x, x)).astype(np.float32, copy=False)


def _unit(x: np.ndarray, norms: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows of `x` scaled to unit norm; zero rows stay zero."""
    return np.divide(x, np.maximum(norms, _NORM_EPS)[:, None], out=out)


@functools.partial(jax.jit, static_argnames=("top_k", "metric"), donate_argnums=(0, 1))
def _merge_block(
    best_scores: jax.Array,
    best_positions: jax.Array,
    queries: jax.Array,
    items: jax.Array,
    norms: jax.Array,
    offset: jax.Array,
    valid: jax.Array,
    *,
    top_k: int,
    metric: str,
) -> tuple[jax.Array, jax.Array]:
    """The running top k `[Q, top_k]` updated with one block of unit `items: [I, D]`.

    Scores rise with similarity: q^ . x^ for cosine, 2 q . x - ||x||^2 (= ||q||^2 minus the
    squared distance) for Euclidean. Columns at or past `valid` are padding.
    """
    dots = jnp.dot(queries, items.T, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs
    scores = dots if metric == "cosine" else norms * (2 * dots - norms)
    scores = jnp.where(jnp.arange(items.shape[0]) < valid, scores, -jnp.inf)
    block_scores, block_columns = jax.lax.top_k(scores, min(top_k, items.shape[0]))
    # The running best holds lower positions than this block, and top_k puts the lower index
    # first among equals, so ties keep going to the item added first.
    scores = jnp.concatenate([best_scores, block_scores], axis=1)
    positions = jnp.concatenate([best_positions, block_columns + offset], axis=1)
    best_scores, pick = jax.lax.top_k(scores, top_k)
    return best_scores, jnp.take_along_axis(positions, pick, axis=1)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Index:
    """Exact top-k search over item embeddings `[n, dim]` with ids and optional class names.

    block_size: items per search block; query_block: queries per block. Together they bound the
    score block (`query_block * block_size` float32s, 64 MiB by default).
    """

    def __init__(self, dim: int, *, block_size: int = 16384, query_block: int = 1024):
        if dim < 1 or block_size < 1 or query_block < 1:
            raise ValueError(
                f"Index: dim, block_size and query_block must be >= 1; got {dim}, "
                f"{block_size}, {query_block}"
            )
        self.dim = dim
        self.block_size = block_size
        self.query_block = query_block
        self._size = 0
        self._unit = np.zeros((0, dim), np.float32)  # capacity grows by doubling
        self._norms = np.zeros(0, np.float32)
        self._ids: np.ndarray | None = None
        self._classes: np.ndarray | None = None

    def __len__(self) -> int:
        return self._size

    @property
    def ids(self) -> np.ndarray:
        """The items' ids, in the order they were added."""
        return self._ids[: self._size] if self._ids is not None else np.zeros(0, np.int64)

    @property
    def classes(self) -> np.ndarray | None:
        """The items' class names, or None if the index was built without them."""
        return self._classes

    def embeddings(self) -> np.ndarray:
        """The items' embeddings as added (up to float32 rounding), `[n, dim]`."""
        return self._unit[: self._size] * self._norms[: self._size, None]

    def add(
        self,
        embeddings: np.ndarray,
        ids: np.ndarray | list,
        classes: np.ndarray | list | None = None,
    ) -> None:
        """Appends `embeddings: [n, dim]` with their `ids` (n distinct ints or strings).

        classes: a class name per item; give them for every add or for none.
        """
        x = np.asarray(embeddings, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"Index.add: embeddings must be [n, {self.dim}] (the index's dim); got {x.shape}"
            )
        if len(x) == 0:
            return
        if not np.isfinite(x).all():
            raise ValueError("Index.add: embeddings contain NaN or Inf")
        ids = np.asarray(ids).reshape(-1)
        if len(ids) != len(x):
            raise ValueError(f"Index.add: {len(x)} embeddings but {len(ids)} ids")
        if ids.dtype.kind not in "iuU":
            raise ValueError(f"Index.add: ids must be integers or strings; got {ids.dtype}")
        if self._ids is not None and (ids.dtype.kind == "U") != (self._ids.dtype.kind == "U"):
            raise ValueError(
                f"Index.add: ids are {ids.dtype} but the index holds {self._ids.dtype} ids"
            )
        if len(np.unique(ids)) != len(ids) or np.isin(ids, self.ids).any():
            raise ValueError("Index.add: ids must be distinct, also from the ids already added")
        if (classes is None) != (self._classes is None) and self._size:
            raise ValueError(
                "Index.add: give classes for every add or for none (the index "
                + ("has" if self._classes is not None else "has no")
                + " classes)"
            )
        if classes is not None:
            classes = np.asarray(classes, str).reshape(-1)
            if len(classes) != len(x):
                raise ValueError(f"Index.add: {len(x)} embeddings but {len(classes)} classes")
        if self._size + len(x) >= 2**31:
            raise ValueError("Index.add: the index holds at most 2**31 - 1 items")

        norms = _norms(x)
        end = self._size + len(x)
        if end > len(self._unit):
            capacity = max(end, 2 * len(self._unit))
            grown = np.empty((capacity, self.dim), np.float32)
            grown[: self._size] = self._unit[: self._size]
            grown_norms = np.empty(capacity, np.float32)
            grown_norms[: self._size] = self._norms[: self._size]
            self._unit, self._norms = grown, grown_norms
        _unit(x, norms, out=self._unit[self._size : end])
        self._norms[self._size : end] = norms
        self._ids = ids if self._ids is None else np.concatenate([self.ids, ids])
        if classes is not None:
            self._classes = (
                classes if self._classes is None else np.concatenate([self._classes, classes])
            )
        self._size = end

    def search(self, queries: np.ndarray, top_k: int, metric: str = "cosine") -> Hits:
        """The `top_k` nearest items of each of `queries: [q, dim]` by `metric`."""
        if metric not in METRICS:
            raise ValueError(
                f"Index.search: metric={metric!r} is unknown; expected one of {METRICS}"
            )
        q = np.asarray(queries, np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(
                f"Index.search: queries must be [q, {self.dim}] (the index's dim); got {q.shape}"
            )
        if not np.isfinite(q).all():
            raise ValueError("Index.search: queries contain NaN or Inf")
        if top_k < 1:
            raise ValueError(f"Index.search: top_k must be >= 1; got {top_k}")
        if self._size == 0:
            raise ValueError("Index.search: the index is empty")
        k = min(top_k, self._size)
        num_queries = len(q)
        if metric == "cosine":
            q = _unit(q, _norms(q))
        rows = min(self.query_block, _round_up(max(num_queries, 1), _ROW_ALIGN))
        padded = np.zeros((_round_up(max(num_queries, 1), rows), self.dim), np.float32)
        padded[:num_queries] = q
        query_blocks = [jnp.asarray(padded[s : s + rows]) for s in range(0, len(padded), rows)]
        best = [
            (jnp.full((rows, k), -jnp.inf, jnp.float32), jnp.full((rows, k), -1, jnp.int32))
            for _ in query_blocks
        ]
        block = min(self.block_size, _round_up(self._size, _ROW_ALIGN))
        # Items outer, queries inner: each item block crosses to the device once.
        for start in range(0, self._size, block):
            valid = min(block, self._size - start)
            items = self._unit[start : start + block]
            norms = self._norms[start : start + block]
            if valid < block:  # the last block, padded to the compiled shape
                items = np.concatenate([items, np.zeros((block - valid, self.dim), np.float32)])
                norms = np.concatenate([norms, np.zeros(block - valid, np.float32)])
            items, norms = jnp.asarray(items), jnp.asarray(norms)
            # Dispatch is asynchronous: without a wait, the loop would queue copies of every
            # item block at once. Waiting for the previous block keeps at most two in flight.
            jax.block_until_ready(best)
            for i, query_rows in enumerate(query_blocks):
                best[i] = _merge_block(
                    *best[i],
                    query_rows,
                    items,
                    norms,
                    jnp.int32(start),
                    jnp.int32(valid),
                    top_k=k,
                    metric=metric,
                )
        scores = np.concatenate([np.asarray(s) for s, _ in best])[:num_queries]
        positions = np.concatenate([np.asarray(p) for _, p in best])[:num_queries]
        positions = positions.astype(np.int64)
        if metric == "euclidean":
            squared = np.sum(np.square(q, dtype=np.float64), axis=1, keepdims=True)
            scores = np.sqrt(np.maximum(squared - scores, 0)).astype(np.float32)
        classes = None if self._classes is None else self._classes[positions]
        return Hits(positions, self.ids[positions], scores, classes)

    def save(self, path: str | os.PathLike) -> None:
        """Writes one `.npz` file (no pickles) atomically: a temp file, then a rename."""
        path = pathlib.Path(path)
        header = {
            "format": _FORMAT,
            "version": _VERSION,
            "dim": self.dim,
            "size": self._size,
            "has_classes": self._classes is not None,
        }
        arrays = {
            "header": np.frombuffer(json.dumps(header).encode(), np.uint8),
            "unit": self._unit[: self._size],
            "norms": self._norms[: self._size],
            "ids": self.ids,
        }
        if self._classes is not None:
            arrays["classes"] = self._classes
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, block_size: int = 16384, query_block: int = 1024
    ) -> Index:
        """An index written by `save`."""
        path = pathlib.Path(path)
        with np.load(path, allow_pickle=False) as data:
            if "header" not in data:
                raise ValueError(f"{path}: not a {_FORMAT} file (no 'header' array)")
            header = json.loads(data["header"].tobytes().decode())
            if header.get("format") != _FORMAT or header.get("version") != _VERSION:
                raise ValueError(
                    f"{path}: header format/version {header.get('format')!r}/"
                    f"{header.get('version')!r}; expected {_FORMAT!r}/{_VERSION}"
                )
            index = cls(header["dim"], block_size=block_size, query_block=query_block)
            unit, norms, ids = data["unit"], data["norms"], data["ids"]
            classes = data["classes"] if header["has_classes"] else None
        size = header["size"]
        expected = {"unit": (size, index.dim), "norms": (size,), "ids": (size,)}
        if classes is not None:
            expected["classes"] = (size,)
        got = {"unit": unit.shape, "norms": norms.shape, "ids": ids.shape}
        if classes is not None:
            got["classes"] = classes.shape
        if got != expected:
            raise ValueError(f"{path}: array shapes {got} do not match the header's {expected}")
        index._unit = np.ascontiguousarray(unit, np.float32)
        index._norms = np.ascontiguousarray(norms, np.float32)
        index._ids = ids if size else None
        index._classes = classes
        index._size = size
        return index


# --- an index of a trained retrieval run's videos (vmjax.train.retrieval), and text search.

INDEX_FILE = "index.npz"  # WORKDIR/index.npz: the saved index of `build_index`
INDEX_INFO = "index.json"  # which checkpoint step and split it holds


def embed_dataset(
    workdir: str, split: str = "validate", *, config=None, trained=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, unit video embeddings `[n, E]`, class names) of every video of `split`.

    Embeds with the latest checkpoint of the retrieval run in `workdir` (or `trained`, a
    vmjax.train.retrieval.Trained); a video's class names are its labels' names joined by
    '; ' ('class N' for a class without a name).
    """
    from vmjax.data import synthetic
    from vmjax.train import retrieval

    trained = trained or retrieval.load_trained(workdir, config)
    embedded = retrieval.embed_split(
        trained.place.embed,
        trained.params,
        trained.config,
        trained.data_dir,
        trained.tokenizer,
        split,
    )
    names = synthetic.class_names(trained.data_dir, trained.config.data.num_classes)
    classes = [
        "; ".join(names[c] or f"class {c}" for c in np.flatnonzero(row)) for row in embedded.labels
    ]
    return embedded.ids, embedded.video, np.array(classes, str)


def build_index(
    workdir: str, split: str = "validate", *, config=None, trained=None, rebuild: bool = False
) -> Index:
    """The index of every `split` video of the retrieval run in `workdir`, with class names.

    Saved as WORKDIR/index.npz (with index.json naming its checkpoint step and split) and
    loaded from there while both still match the run's latest checkpoint; `rebuild` ignores it.
    """
    from vmjax.train import checkpoint, retrieval

    workdir = os.path.abspath(os.path.expanduser(workdir))
    path, info_path = os.path.join(workdir, INDEX_FILE), os.path.join(workdir, INDEX_INFO)
    steps = checkpoint.complete_steps(os.path.join(workdir, "checkpoints"))
    if trained is not None:
        info = {"step": trained.step, "split": split}
    else:
        info = {"step": steps[-1] if steps else None, "split": split}
    if not rebuild and os.path.exists(path) and os.path.exists(info_path):
        with open(info_path) as f:
            if json.load(f) == info:
                return Index.load(path)
    trained = trained or retrieval.load_trained(workdir, config)
    ids, embeddings, classes = embed_dataset(workdir, split, trained=trained)
    index = Index(embeddings.shape[1])
    index.add(embeddings, ids, classes)
    index.save(path)
    with open(info_path, "w") as f:
        json.dump({"step": trained.step, "split": split}, f)
    return index


def unknown_words(tokenizer, query: str) -> list[str]:
    """The whitespace-separated words of `query` that encode only as [UNK]."""
    from vmjax.data import text

    return [
        w
        for w in query.split()
        if (ids := tokenizer.encode(w, None)).size and (ids == text.UNK_ID).all()
    ]


class TextHits(NamedTuple):
    """`search_text`'s answer: the hits of the query, and what its words meant to the model."""

    hits: Hits  # [1, k]
    step: int  # the checkpoint that embedded the query
    num_videos: int  # the index's size
    unknown: list[str]  # query words the tokenizer reads as [UNK] only
    all_unknown: bool  # no query token is in the vocabulary: the ranking is meaningless


def search_text(
    workdir: str, query: str, top_k: int, *, config=None, split: str | None = None
) -> TextHits:
    """The `top_k` videos of the run's index (`build_index`) nearest to the text `query`.

    The query is tokenized as the run's captions were: with its caption vocabulary
    (WORKDIR/vocabulary.json; words outside it become [UNK]) or, for a MiniLM text tower, with
    the checkpoint's WordPiece tokenizer (free text splits into known pieces), and embedded by
    the latest checkpoint's text tower.
    """
    from vmjax.data import text
    from vmjax.train import retrieval

    if not query.strip():
        raise ValueError("search_text: the query is empty")
    trained = retrieval.load_trained(workdir, config)
    c = trained.config
    index = build_index(workdir, split or c.index_split, trained=trained)
    tokens, mask = retrieval.tokenize(trained.tokenizer, [query], c.data.max_caption_tokens)
    if isinstance(trained.tokenizer, retrieval.MiniLMTokenizer):
        unknown = trained.tokenizer.unknown_words(query)
        unk = trained.tokenizer.tokenizer.token_to_id("[UNK]")
        special = {trained.tokenizer.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]")}
        content = [i for i in tokens[0][mask[0]].tolist() if i not in special]
        all_unknown = bool(content) and all(i == unk for i in content)
    else:
        unknown = unknown_words(trained.tokenizer, query)
        all_unknown = bool((tokens[0][mask[0]] == text.UNK_ID).all())
    embedding = retrieval.embed_texts(
        trained.place.embed_text,
        trained.params,
        trained.tokenizer,
        [query],
        c.data.max_caption_tokens,
        c.eval_batch_size,
    )
    hits = index.search(embedding, top_k, metric=c.index_metric)
    return TextHits(hits, trained.step, len(index), unknown, all_unknown)
