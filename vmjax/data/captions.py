"""Captions for text-to-video retrieval: caption files, their tokenizer, captioned batches.

A generated dataset (vmjax.data.synthetic, whose docstring says exactly how a caption is made)
holds `DIR/captions/<split>.csv`: a header `id,caption`, then one row per video. Datasets
generated before captions existed get theirs from `ensure_captions`, which replays the
generator from the manifest's spec and checks the replay against the records' labels.

`caption_tokenizer` builds the word vocabulary (vmjax.data.text) from the train captions and
keeps it in `DIR/captions/vocabulary.json`. A `CaptionTable` holds every caption of a file as
padded token ids; `add_captions` looks each batch row's video id up in it and adds

    caption_tokens: int32 [batch, max_caption_tokens]  (0 = [PAD] after the caption)
    caption_mask: bool [batch, max_caption_tokens]

to a batch of the frame- or video-level pipeline (vmjax.data.pipeline), which it wraps in
`eval_batches` and `train_dataset`. Padding rows (id '') get zeros. `class_queries` gives the
texts of zero-shot classification, one query per class.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import glob
import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from vmjax.data import pipeline, synthetic, text, tfrecord, yt8m

VOCABULARY = "vocabulary.json"
HEADER = ["id", "caption"]
QUERY_TEMPLATE = "a video of {name}"  # the captions' most common opening, one class at a time


def caption_path(data_dir: str, split: str) -> str:
    """`DIR/captions/<split>.csv`."""
    return synthetic.caption_path(data_dir, split)


def vocabulary_path(data_dir: str) -> str:
    return os.path.join(data_dir, synthetic.CAPTIONS_DIR, VOCABULARY)


def read_captions(path: str) -> dict[str, str]:
    """Video id -> caption of an `id,caption` file; errors name the file and line.

    Blank lines are skipped; a wrong header, a row without exactly two fields, an empty id or
    caption and a repeated id are errors.
    """
    captions: dict[str, str] = {}
    first_line: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, strict=True)
            header = next(reader, None)
            if header != HEADER:
                raise ValueError(f"{path} line 1: expected the header 'id,caption', got {header}")
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != 2:
                    raise ValueError(
                        f"{path} line {line}: expected 2 fields (id,caption), got {len(row)}: "
                        f"{row!r} (quote captions that hold commas)"
                    )
                video_id, caption = row[0].strip(), row[1].strip()
                if not video_id:
                    raise ValueError(f"{path} line {line}: empty id")
                if not caption:
                    raise ValueError(f"{path} line {line}: empty caption for id {video_id!r}")
                if video_id in captions:
                    raise ValueError(
                        f"{path} line {line}: id {video_id!r} repeats line {first_line[video_id]}"
                    )
                captions[video_id] = caption
                first_line[video_id] = line
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e})") from None
    except csv.Error as e:
        raise ValueError(f"{path} line {reader.line_num}: malformed CSV ({e})") from None
    return captions


def _manifest_spec(data_dir: str) -> synthetic.Spec:
    path = os.path.join(data_dir, "manifest.json")
    with open(path) as f:
        fields = json.load(f)["spec"]
    try:
        return synthetic.Spec(**fields)
    except TypeError as e:
        raise ValueError(
            f"{path}: spec {fields} is not a vmjax.data.synthetic.Spec of this version ({e}); "
            "regenerate the dataset"
        ) from None


def _check_replay(data_dir: str, split: str, replayed: dict[str, tuple]) -> None:
    """The replayed ids and labels must be the video-level records' (else captions would lie)."""
    seen = 0
    for path in sorted(glob.glob(os.path.join(data_dir, "video", f"{split}-*.tfrecord"))):
        for index, offset, payload in tfrecord.read_records(path):
            ex = yt8m.decode_video_example(payload, path=path, index=index, offset=offset)
            got = replayed.get(ex["id"])
            if got is None or list(got[1]) != ex["labels"].tolist():
                raise ValueError(
                    f"{path} record {index}: video {ex['id']!r} with labels "
                    f"{ex['labels'].tolist()} is not what the generator gives for the spec in "
                    f"{data_dir}/manifest.json ({'no such id' if got is None else got[1]}); "
                    "the dataset was made by another generator version: regenerate it"
                )
            seen += 1
    if seen != len(replayed):
        raise ValueError(
            f"{data_dir}/video/{split}-*.tfrecord hold {seen} videos, the spec in "
            f"{data_dir}/manifest.json {len(replayed)}: regenerate the dataset"
        )


def ensure_captions(data_dir: str, *, workers: int | None = None, log=print) -> dict[str, str]:
    """Split -> caption file of a generated dataset, writing the missing ones (atomically).

    A dataset generated before captions existed is upgraded in place: the generator is replayed
    from the manifest's spec (the same captions a fresh generation writes, byte for byte) in
    `workers` processes (default: one per shard, at most the CPU count).
    """
    paths = {s: caption_path(data_dir, s) for s in synthetic.SPLITS}
    missing = [s for s, p in paths.items() if not os.path.exists(p)]
    if not missing:
        return paths
    spec = _manifest_spec(data_dir)
    jobs = synthetic.shard_jobs(spec, missing)
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    log(f"Writing the captions of {data_dir} ({', '.join(missing)}) by replaying its generator...")
    replayed: dict[str, dict] = {s: {} for s in missing}
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")  # fork after JAX starts threads is unsafe
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = {pool.submit(synthetic.replay_shard, spec, s, i): s for s, i in jobs}
            for fut in concurrent.futures.as_completed(futures):
                replayed[futures[fut]].update(fut.result())
    else:
        for s, i in jobs:
            replayed[s].update(synthetic.replay_shard(spec, s, i))
    for s in missing:
        _check_replay(data_dir, s, replayed[s])
        synthetic.write_captions(paths[s], {i: row[2] for i, row in replayed[s].items()})
    return paths


def _vocabulary(tokenizer: text.Tokenizer) -> list[str]:
    return tokenizer.tokens(range(tokenizer.vocab_size))


def caption_tokenizer(data_dir: str, vocab_size: int) -> text.Tokenizer:
    """The word tokenizer of the train captions, saved as `DIR/captions/vocabulary.json`.

    The first call builds and saves it; later calls load the file, after checking that it is
    still the vocabulary of these captions at this `vocab_size` (building one is cheap).
    """
    train = caption_path(data_dir, "train")
    if not os.path.exists(train):
        raise FileNotFoundError(f"{train} does not exist: call ensure_captions({data_dir!r}) first")
    built = text.build_vocabulary(read_captions(train).values(), vocab_size)
    path = vocabulary_path(data_dir)
    if not os.path.exists(path):
        tmp = f"{path}.tmp-{os.getpid()}"
        built.save(tmp)
        os.replace(tmp, path)
    saved = text.Tokenizer.load(path)
    if _vocabulary(saved) != _vocabulary(built):
        raise ValueError(
            f"{path} is not the vocabulary of {train} at vocab_size={vocab_size} (it has "
            f"{saved.vocab_size} ids, the captions give {built.vocab_size}); delete it to rebuild"
        )
    return saved


@dataclasses.dataclass(frozen=True, eq=False)
class CaptionTable:
    """Every caption of a file as padded token ids, looked up by video id."""

    path: str  # the captions file, for error messages
    rows: dict[str, int]  # video id -> row of `tokens`
    tokens: np.ndarray  # int32 [num_captions, max_caption_tokens], 0 after each caption
    lengths: np.ndarray  # int32 [num_captions]

    @classmethod
    def build(cls, path: str, tokenizer: text.Tokenizer, max_caption_tokens: int) -> CaptionTable:
        """Reads `path` and tokenizes each caption, keeping its first `max_caption_tokens` ids."""
        if max_caption_tokens < 1:
            raise ValueError(f"max_caption_tokens must be >= 1, got {max_caption_tokens}")
        captions = read_captions(path)
        tokens = np.zeros((len(captions), max_caption_tokens), np.int32)
        lengths = np.zeros(len(captions), np.int32)
        rows = {}
        for row, (video_id, caption) in enumerate(captions.items()):
            ids = tokenizer.encode(caption, max_caption_tokens)
            tokens[row, : len(ids)], lengths[row] = ids, len(ids)
            rows[video_id] = row
        return cls(path, rows, tokens, lengths)

    @property
    def max_caption_tokens(self) -> int:
        return self.tokens.shape[1]


def add_captions(batch: dict, table: CaptionTable, *, skip_missing: bool = False) -> dict:
    """`batch` with `caption_tokens` and `caption_mask` of each row's video (a new dict).

    Padding rows (id '') get zeros. A video without a caption is an error, or with
    `skip_missing` a padding row too: zero caption and weight 0.
    """
    ids = batch["ids"]
    rows = np.full(len(ids), -1, np.int64)
    weights = batch["weights"]
    for r, video_id in enumerate(ids.tolist()):
        if not video_id:
            continue
        row = table.rows.get(video_id, -1)
        if row < 0:
            if not skip_missing:
                raise ValueError(
                    f"video {video_id!r} has no caption in {table.path} (pass skip_missing to "
                    "train and evaluate without it)"
                )
            if weights is batch["weights"]:
                weights = weights.copy()
            weights[r] = 0
        rows[r] = row
    found = rows >= 0
    tokens = np.zeros((len(ids), table.max_caption_tokens), np.int32)
    lengths = np.zeros(len(ids), np.int32)
    tokens[found], lengths[found] = table.tokens[rows[found]], table.lengths[rows[found]]
    return {
        **batch,
        "weights": weights,
        "caption_tokens": tokens,
        "caption_mask": np.arange(table.max_caption_tokens)[None, :] < lengths[:, None],
    }


def eval_batches(
    files: Sequence[str],
    spec: pipeline.BatchSpec,
    *,
    batch_size: int,
    table: CaptionTable,
    skip_missing: bool = False,
    bad_records: pipeline.BadRecords | None = None,
) -> Iterator[dict]:
    """pipeline.eval_batches with each video's caption (see `add_captions`)."""
    batches = pipeline.eval_batches(files, spec, batch_size=batch_size, bad_records=bad_records)
    return (add_captions(b, table, skip_missing=skip_missing) for b in batches)


def train_dataset(
    files: Sequence[str],
    spec: pipeline.BatchSpec,
    *,
    table: CaptionTable,
    batch_size: int,
    seed: int,
    shuffle_buffer: int,
    cycle_length: int,
    skip_missing: bool = False,
    prefetch: int = 2,
    workers: int = 0,
    bad_records: pipeline.BadRecords | None = None,
) -> grain.IterDataset:
    """pipeline.train_dataset with each video's caption (see `add_captions`)."""
    ds = pipeline.train_dataset(
        files,
        spec,
        batch_size=batch_size,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        cycle_length=cycle_length,
        prefetch=prefetch,
        workers=workers,
        bad_records=bad_records,
    )
    return ds.map(functools.partial(add_captions, table=table, skip_missing=skip_missing))


def _split_labels(data_dir: str, split: str) -> set[int]:
    files = sorted(glob.glob(os.path.join(data_dir, "video", f"{split}-*.tfrecord")))
    if not files:
        raise FileNotFoundError(f"{data_dir}/video/{split}-*.tfrecord matched no files")
    labels: set[int] = set()
    for path in files:
        for index, offset, payload in tfrecord.read_records(path):
            ex = yt8m.decode_video_example(payload, path=path, index=index, offset=offset)
            labels.update(ex["labels"].tolist())
    return labels


def class_queries(
    data_dir: str, split: str | None = None, template: str = QUERY_TEMPLATE
) -> tuple[np.ndarray, list[str]]:
    """(class indices, query texts) for zero-shot classification, in class order.

    One query per class of the dataset's classes.csv that has a name (lowercased, as in the
    captions); with `split`, only the classes among that split's labels.
    """
    path = os.path.join(data_dir, "classes.csv")
    with open(path, newline="", encoding="utf-8") as f:
        named = [(int(r["Index"]), r["Name"]) for r in csv.DictReader(f) if r["Name"]]
    if split is not None:
        present = _split_labels(data_dir, split)
        named = [(c, name) for c, name in named if c in present]
    named.sort()
    classes = np.array([c for c, _ in named], np.int64)
    return classes, [template.format(name=name.lower()) for _, name in named]
