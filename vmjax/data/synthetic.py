"""The embedded YouTube-8M-format dataset: real label sets, synthetic features.

Each video draws a real label set (from 80,000 real validation videos), and each
label becomes a generating *event* whose evidence depends on the class's kind:

- visual: an rgb pattern over a random span of frames;
- audio: an audio pattern over a random span;
- cross_modal: an rgb pattern AND an audio pattern over one span. Classes come in
  groups of four over two rgb and two audio patterns (class (i, j) = rgb_i and
  audio_j), so each pattern alone also occurs for other classes;
- temporal: rgb pattern A in a span before pattern B; its partner class has B
  before A, so only models that see order can tell them apart;
- text: a keyword token in the optional `text_tokens` context feature.

Observed labels add noise (dropped labels, spurious labels drawn by class
frequency). The oracle scores each class by its probability of being observed
given the clean events, so `oracle.json` holds the achievable GAP.

Captions (text-to-video retrieval ground truth): `captions/<split>.csv` holds one
`id,caption` row per video, in id order. A caption is made from the video's clean
(generating) labels, never the noisy observed ones, by `make_caption`:

1. names: the 2018 vocabulary names of the clean classes in class order, lowercased,
   duplicates and unnamed classes (56 vocabulary entries have no name) left out, then
   shuffled;
2. noun: one of CAPTION_NOUNS, preceded by one of CAPTION_FILLERS with probability 1/2;
3. the first k names (k uniform in 1..min(2, #names)) fill one of CAPTION_OPENINGS, the
   rest (if any) one of CAPTION_RESTS appended to it; a name list reads "x", "x and y"
   or "x, y and z"; a video without names gets "a {noun}";
4. 1 to 3 distinct CAPTION_DISTRACTORS words (no word of any class name), joined by
   spaces, go before the text ("w1 w2, text") or after it ("text, w1 w2"), 1/2 each.

Every choice is uniform. Captions draw from their own stream, numpy's Generator seeded
with (seed, 1009, split index, shard), one caption per video in shard order, so adding
them left every other file byte-identical; `vmjax.data.captions.ensure_captions` replays
the generator to add them to datasets generated before captions existed.

    python -m vmjax.data.synthetic --out DIR [--num_train 20000 ...]
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import errno
import functools
import importlib.resources
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator, Sequence

import numpy as np

from vmjax import metrics
from vmjax.data import tfrecord, yt8m
from vmjax.data.segments import SEGMENT_FRAMES

KINDS = ("visual", "audio", "cross_modal", "temporal", "text")
# Kinds are dealt by frequency rank in blocks of 20 so that every kind gets a
# fair share of label occurrences, not just of classes.
_KIND_BLOCK = (0,) * 8 + (1,) * 4 + (2,) * 4 + (3,) * 2 + (4,) * 2
SPLITS = ("train", "validate")
LEVELS = ("frame", "video")
CAPTIONS_DIR = "captions"
CAPTION_NOUNS = ("video", "clip", "footage", "recording")
CAPTION_FILLERS = ("short", "amateur", "homemade", "long", "quick", "shaky", "grainy", "nice")
CAPTION_OPENINGS = (
    "a {noun} of {main}",
    "{noun} showing {main}",
    "{main} in a {noun}",
    "{main}, {noun}",
)
CAPTION_RESTS = (
    " and {rest}",
    ", with {rest} in the background",
    ", also {rest}",
    " featuring {rest}",
)
CAPTION_DISTRACTORS = (
    "yesterday",
    "today",
    "morning",
    "evening",
    "afternoon",
    "sunny",
    "rainy",
    "cloudy",
    "outdoors",
    "indoors",
    "slowly",
    "together",
    "someone",
    "weekend",
    "uploaded",
    "filmed",
    "watching",
    "here",
    "there",
    "really",
    "again",
    "finally",
)
_CAPTION_STREAM = 1009  # the captions' own seed entry: the other streams never see their draws


# Below this many videos, generate() writes in its own process: workers (spawned, each
# importing numpy and reading the label sets) cost more than they save (288 videos on a
# 2-core VM, two runs each beside other work, so a rough figure: 2.7 s in one process, 3.4 s
# with 2 workers).
_SMALL_DATASET = 1000


@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything that determines the generated dataset (its cache key)."""

    seed: int = 0
    num_classes: int = 3862
    num_train: int = 20_000
    num_validate: int = 4_000
    num_train_shards: int = 8
    num_validate_shards: int = 2
    min_frames: int = 8
    max_frames: int = 48
    zero_frame_rate: float = 0.01  # videos with no frames at all
    long_rate: float = 0.01  # videos with 301..360 frames (longer than the official reader keeps)
    noise_std: float = 0.4  # per-dimension background noise of a frame
    pattern_scale: float = 0.5  # per-dimension std of a class pattern
    min_span: float = 0.25  # an event covers this fraction of the video at least
    max_span: float = 0.6
    label_drop_rate: float = 0.05  # each true label is missing with this probability
    spurious_label_rate: float = (
        0.05  # a video gains one frequency-sampled wrong label with this probability
    )
    text_rate: float = 0.7  # videos without a text-kind label that still carry (distractor) tokens
    text_vocab_size: int = 8192
    version: int = 3  # bump when the generator changes: it is part of the cache key

    def key(self) -> str:
        """A short stable name for the cache directory."""
        import hashlib

        digest = hashlib.sha1(
            json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        ).hexdigest()
        return f"yt8m-synthetic-s{self.seed}-{digest[:10]}"


@dataclasses.dataclass(frozen=True)
class World:
    """The class table: kind and evidence of each class (-1 where none)."""

    kind: np.ndarray  # [C] index into KINDS
    rgb_a: np.ndarray  # [C] rgb pattern (first pattern for temporal)
    rgb_b: np.ndarray  # [C] second rgb pattern of temporal classes
    audio: np.ndarray  # [C] audio pattern
    token: np.ndarray  # [C] keyword token of text classes
    rgb_patterns: np.ndarray  # [P, 1024]
    audio_patterns: np.ndarray  # [Q, 128]
    prior: np.ndarray  # [C] class frequency (averaged within each group)
    group: np.ndarray  # [C] group id: a temporal pair or cross-modal four share one


def _asset(name: str):
    return importlib.resources.files("vmjax.data") / "assets" / name


@functools.lru_cache(maxsize=1)  # read once per process, not once per shard
def load_label_sets() -> tuple[np.ndarray, ...]:
    """The 80,000 real YouTube-8M validation label sets shipped with vmjax (read-only arrays)."""
    with _asset("yt8m_validate_label_sets.csv").open(newline="") as f:
        sets = tuple(np.array(r["labels"].split(), np.int64) for r in csv.DictReader(f))
    for labels in sets:
        labels.flags.writeable = False  # shared by every caller of the cache
    return sets


def load_class_names() -> list[str]:
    """Class names of the 2018 vocabulary, by index."""
    with _asset("yt8m_vocabulary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    names = [""] * len(rows)
    for r in rows:
        names[int(r["Index"])] = r["Name"]
    return names


@functools.lru_cache(maxsize=4)  # once per process and vocabulary, not once per shard
def label_sets_for(num_classes: int) -> tuple[np.ndarray, ...]:
    """The real label sets a dataset of `num_classes` classes draws from.

    All of them for the 2018 vocabulary (3,862) or more; for fewer classes, each set keeps its
    labels below `num_classes` and sets left empty are dropped (a smaller vocabulary's videos are
    the real videos' label combinations among its classes, at their real frequencies).
    """
    sets = load_label_sets()
    flat = np.concatenate(sets)
    if num_classes > flat.max():
        return sets
    keep = flat < num_classes
    owner = np.repeat(np.arange(len(sets)), [len(x) for x in sets])
    kept = np.split(flat[keep], np.cumsum(np.bincount(owner[keep], minlength=len(sets)))[:-1])
    return tuple(k for k in kept if len(k))


def make_world(spec: Spec, label_sets: Sequence[np.ndarray]) -> World:
    """Deals kinds to classes and draws their patterns, deterministically by seed."""
    rng = np.random.default_rng([spec.seed, 7])
    c = spec.num_classes
    counts = np.bincount(np.concatenate(label_sets), minlength=c)[:c].astype(np.float64)
    prior = counts / counts.sum()
    order = np.argsort(-counts, kind="stable")
    kind = np.empty(c, np.int64)
    for start in range(0, c, len(_KIND_BLOCK)):
        block = rng.permutation(_KIND_BLOCK)
        ranks = order[start : start + len(_KIND_BLOCK)]
        kind[ranks] = block[: len(ranks)]

    rgb_a, rgb_b, audio, token = (np.full(c, -1, np.int64) for _ in range(4))
    n_rgb = n_audio = 0

    def new_rgb(n=1):
        nonlocal n_rgb
        n_rgb += n
        return np.arange(n_rgb - n, n_rgb)

    def new_audio(n=1):
        nonlocal n_audio
        n_audio += n
        return np.arange(n_audio - n, n_audio)

    for cls in np.flatnonzero(kind == 0):
        rgb_a[cls] = new_rgb()[0]
    for cls in np.flatnonzero(kind == 1):
        audio[cls] = new_audio()[0]
    cross = np.flatnonzero(kind == 2)
    for g in range(0, len(cross), 4):
        group = cross[g : g + 4]
        r, s = new_rgb(2), new_audio(2)
        for j, cls in enumerate(group):
            rgb_a[cls], audio[cls] = r[j // 2], s[j % 2]
    temporal = np.flatnonzero(kind == 3)
    for g in range(0, len(temporal), 2):
        a, b = new_rgb(2)
        rgb_a[temporal[g]], rgb_b[temporal[g]] = a, b
        if g + 1 < len(temporal):
            rgb_a[temporal[g + 1]], rgb_b[temporal[g + 1]] = b, a
    text = np.flatnonzero(kind == 4)
    token[text] = 1 + np.arange(len(text))  # 0 stays free for padding
    if len(text) + 1 >= spec.text_vocab_size:
        raise ValueError(f"text_vocab_size={spec.text_vocab_size} leaves no distractor tokens")

    rgb_patterns = rng.normal(0, spec.pattern_scale, (n_rgb, yt8m.RGB_DIM)).astype(np.float32)
    audio_patterns = rng.normal(0, spec.pattern_scale, (n_audio, yt8m.AUDIO_DIM)).astype(np.float32)
    # A drawn label becomes a uniformly random member of its group (a temporal pair, a
    # cross-modal four): partners then share frequency and co-occurring labels, so only the
    # evidence that defines them (order; rgb AND audio) tells them apart, not priors or context.
    group = np.arange(c)
    for members in [temporal[g : g + 2] for g in range(0, len(temporal), 2)] + [
        cross[g : g + 4] for g in range(0, len(cross), 4)
    ]:
        group[members] = members[0]
    group_mass = np.bincount(group, weights=prior, minlength=c)
    group_size = np.bincount(group, minlength=c)
    prior = group_mass[group] / group_size[group]
    return World(kind, rgb_a, rgb_b, audio, token, rgb_patterns, audio_patterns, prior, group)


def resample_within_groups(rng: np.random.Generator, world: World, labels: np.ndarray):
    """Each label replaced by a uniformly random member of its group (see make_world)."""
    out = []
    for label in labels:
        members = np.flatnonzero(world.group == world.group[label])
        out.append(members[int(rng.integers(len(members)))] if len(members) > 1 else label)
    return np.unique(np.array(out, np.int64))


def oracle_scores(world: World, spec: Spec, clean: np.ndarray) -> np.ndarray:
    """P(class observed | clean events) for one video: the Bayes-optimal scores."""
    spurious = spec.spurious_label_rate * world.prior
    scores = spurious.copy()
    scores[clean] = (1 - spec.label_drop_rate) + spec.label_drop_rate * spurious[clean]
    return scores


def blind_partitions(world: World) -> dict[str, tuple[str, np.ndarray]]:
    """Classes a partly blind observer cannot tell apart, as a partition id per class.

    order_blind: the two classes of a temporal pair (same patterns, opposite order);
    rgb_only / audio_only: the cross-modal classes sharing an rgb / an audio pattern.
    Classes outside the kind keep their own id.
    """
    own = np.arange(len(world.kind))
    cross = world.kind == KINDS.index("cross_modal")
    n = len(own)
    return {
        "order_blind": ("temporal", world.group.copy()),
        "rgb_only": ("cross_modal", np.where(cross, n + world.rgb_a, own)),
        "audio_only": ("cross_modal", np.where(cross, 2 * n + world.audio, own)),
    }


def average_within(scores: np.ndarray, partition: np.ndarray) -> np.ndarray:
    """Each class's score replaced by the mean over its partition (the blind observer's best).

    Within a partition classes share their prior (labels are resampled uniformly in a group),
    so given evidence that cannot tell them apart, each member's posterior is the mean.
    """
    _, inverse, counts = np.unique(partition, return_inverse=True, return_counts=True)
    sums = np.zeros((scores.shape[0], len(counts)))
    np.add.at(sums.T, inverse, scores.T)
    return (sums / counts)[:, inverse].astype(scores.dtype)


@dataclasses.dataclass
class Video:
    id: str
    labels: np.ndarray
    clean: np.ndarray
    rgb: np.ndarray  # uint8 [T, 1024]
    audio: np.ndarray  # uint8 [T, 128]
    segments: dict | None
    text_tokens: np.ndarray | None


def _span(rng: np.random.Generator, spec: Spec, lo: int, hi: int) -> tuple[int, int]:
    """A random contiguous span inside [lo, hi) covering min_span..max_span of it."""
    n = hi - lo
    length = max(1, int(round(rng.uniform(spec.min_span, spec.max_span) * n)))
    start = lo + int(rng.integers(0, n - length + 1))
    return start, start + length


def _segments(rng: np.random.Generator, events: list, num_frames: int) -> dict | None:
    """Up to 5 rated 5-frame segments: positive where they overlap their event's span."""
    if num_frames < SEGMENT_FRAMES or not events:
        return None
    starts = np.arange(0, num_frames - SEGMENT_FRAMES + 1, SEGMENT_FRAMES)
    rows = []
    for _ in range(min(5, 2 * len(events))):
        cls, (s, e) = events[int(rng.integers(len(events)))]
        st = int(rng.choice(starts))
        overlap = min(e, st + SEGMENT_FRAMES) - max(s, st)
        rows.append((st, cls, 1.0 if overlap >= 3 else 0.0))
    rows = sorted(set(rows))
    st, cls, score = (np.array(x) for x in zip(*rows, strict=True))
    return {
        "start_times": st,
        "end_times": st + SEGMENT_FRAMES,
        "labels": cls,
        "scores": score.astype(np.float32),
    }


def make_video(
    rng: np.random.Generator, world: World, spec: Spec, video_id: str, clean: np.ndarray
) -> Video:
    """Renders one video's frames, tokens, segments and noisy labels from its clean labels."""
    u = rng.random()
    if u < spec.zero_frame_rate:
        t = 0
    elif u < spec.zero_frame_rate + spec.long_rate:
        t = int(rng.integers(301, 361))
    else:
        t = int(rng.integers(spec.min_frames, spec.max_frames + 1))
    rgb = rng.normal(0, spec.noise_std, (t, yt8m.RGB_DIM)).astype(np.float32)
    audio = rng.normal(0, spec.noise_std, (t, yt8m.AUDIO_DIM)).astype(np.float32)
    tokens = []
    events = []
    for cls in clean:
        k = KINDS[world.kind[cls]]
        if k == "text":
            tokens.append(world.token[cls])
            continue
        if t == 0 or (k == "temporal" and t < 2):
            continue
        if k == "temporal":
            mid = int(rng.integers(1, t))
            first, second = _span(rng, spec, 0, mid), _span(rng, spec, mid, t)
            rgb[slice(*first)] += world.rgb_patterns[world.rgb_a[cls]]
            rgb[slice(*second)] += world.rgb_patterns[world.rgb_b[cls]]
            events.append((cls, (first[0], second[1])))
            continue
        span = _span(rng, spec, 0, t)
        if world.rgb_a[cls] >= 0:
            rgb[slice(*span)] += world.rgb_patterns[world.rgb_a[cls]]
        if world.audio[cls] >= 0:
            audio[slice(*span)] += world.audio_patterns[world.audio[cls]]
        events.append((cls, span))

    has_text = bool(tokens) or rng.random() < spec.text_rate
    text_tokens = None
    if has_text:
        first_free = int(world.token.max()) + 1
        distractors = rng.integers(first_free, spec.text_vocab_size, int(rng.integers(2, 9)))
        text_tokens = rng.permutation(np.concatenate([np.array(tokens, np.int64), distractors]))

    keep = rng.random(len(clean)) >= spec.label_drop_rate
    labels = clean[keep]
    if rng.random() < spec.spurious_label_rate:
        labels = np.append(labels, rng.choice(spec.num_classes, p=world.prior))
    labels = np.unique(labels)
    return Video(
        video_id,
        labels,
        clean,
        yt8m.quantize(rgb),
        yt8m.quantize(audio),
        _segments(rng, events, t),
        text_tokens,
    )


def _shard_path(out: str, level: str, split: str, shard: int, num_shards: int) -> str:
    return os.path.join(out, level, f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")


def _name_list(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def make_caption(rng: np.random.Generator, names: Sequence[str]) -> str:
    """A caption for a video whose clean classes are called `names` (see the module doc)."""
    names = list(dict.fromkeys(n.lower() for n in names if n))
    names = [names[i] for i in rng.permutation(len(names))]
    noun = CAPTION_NOUNS[int(rng.integers(len(CAPTION_NOUNS)))]
    if rng.random() < 0.5:
        noun = f"{CAPTION_FILLERS[int(rng.integers(len(CAPTION_FILLERS)))]} {noun}"
    if names:
        k = int(rng.integers(1, min(2, len(names)) + 1))
        opening = CAPTION_OPENINGS[int(rng.integers(len(CAPTION_OPENINGS)))]
        text = opening.format(noun=noun, main=_name_list(names[:k]))
        if names[k:]:
            rest = CAPTION_RESTS[int(rng.integers(len(CAPTION_RESTS)))]
            text += rest.format(rest=_name_list(names[k:]))
    else:
        text = f"a {noun}"
    count = int(rng.integers(1, 4))
    extra = " ".join(
        CAPTION_DISTRACTORS[int(i)]
        for i in rng.choice(len(CAPTION_DISTRACTORS), count, replace=False)
    )
    return f"{extra}, {text}" if rng.random() < 0.5 else f"{text}, {extra}"


def _shard_videos(spec: Spec, split: str, shard: int) -> Iterator[tuple[Video, str]]:
    """The videos of one shard of a split, in order, each with its caption."""
    label_sets = label_sets_for(spec.num_classes)
    world = make_world(spec, label_sets)
    names = load_class_names()
    total = spec.num_train if split == "train" else spec.num_validate
    num_shards = spec.num_train_shards if split == "train" else spec.num_validate_shards
    first, last = shard * total // num_shards, (shard + 1) * total // num_shards
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), shard])
    caption_rng = np.random.default_rng([spec.seed, _CAPTION_STREAM, SPLITS.index(split), shard])
    for i in range(first, last):
        real = label_sets[int(rng.integers(len(label_sets)))]
        clean = resample_within_groups(rng, world, real)
        v = make_video(rng, world, spec, f"{split[:2]}{i:07d}", clean)
        caption = make_caption(caption_rng, [names[c] for c in v.clean if c < len(names)])
        yield v, caption


def replay_shard(spec: Spec, split: str, shard: int) -> dict[str, tuple[list, list, str]]:
    """Regenerates one shard without writing it: id -> (clean labels, labels, caption)."""
    return {
        v.id: (v.clean.tolist(), v.labels.tolist(), c) for v, c in _shard_videos(spec, split, shard)
    }


def shard_jobs(spec: Spec, splits: Sequence[str] = SPLITS) -> list[tuple[str, int]]:
    """(split, shard) of every shard of `splits`, in order."""
    return [
        (s, i)
        for s in splits
        for i in range(spec.num_train_shards if s == "train" else spec.num_validate_shards)
    ]


def caption_path(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, CAPTIONS_DIR, f"{split}.csv")


def write_captions(path: str, captions: dict[str, str]) -> None:
    """Writes `id,caption` rows in id order, atomically (a temp file renamed at the end)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["id", "caption"])
            w.writerows((i, captions[i]) for i in sorted(captions))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_shard(out: str, spec: Spec, split: str, shard: int) -> dict:
    """Generates one shard of a split at both levels; returns (clean, labels, caption) by id."""
    num_shards = spec.num_train_shards if split == "train" else spec.num_validate_shards
    clean_by_id = {}
    paths = {lv: _shard_path(out, lv, split, shard, num_shards) for lv in LEVELS}
    with (
        tfrecord.TFRecordWriter(paths["frame"]) as frames,
        tfrecord.TFRecordWriter(paths["video"]) as videos,
    ):
        for v, caption in _shard_videos(spec, split, shard):
            frames.write(
                yt8m.encode_frame_example(
                    v.id, v.labels, v.rgb, v.audio, segments=v.segments, text_tokens=v.text_tokens
                )
            )
            if len(v.rgb):
                mean_rgb = yt8m.dequantize(v.rgb).mean(0)
                mean_audio = yt8m.dequantize(v.audio).mean(0)
            else:
                mean_rgb = np.zeros(yt8m.RGB_DIM, np.float32)
                mean_audio = np.zeros(yt8m.AUDIO_DIM, np.float32)
            videos.write(
                yt8m.encode_video_example(
                    v.id, v.labels, mean_rgb, mean_audio, text_tokens=v.text_tokens
                )
            )
            clean_by_id[v.id] = (v.clean.tolist(), v.labels.tolist(), caption)
    return clean_by_id


def _write_oracle(out: str, spec: Spec, world: World, validate: dict) -> dict:
    """Scores the validate split with the oracle and writes oracle.json and its top-20 file."""
    ids = sorted(validate)
    scores = np.stack([oracle_scores(world, spec, np.array(validate[i][0], np.int64)) for i in ids])
    labels = np.zeros_like(scores, dtype=np.float32)
    for row, i in enumerate(ids):
        labels[row, validate[i][1]] = 1
    result = {
        "split": "validate",
        "num_videos": len(ids),
        "gap": metrics.gap(scores, labels),
        "map": metrics.mean_ap(scores, labels),
        "hit_at_1": metrics.hit_at_one(scores, labels),
        "perr": metrics.perr(scores, labels),
    }
    kinds = world.kind
    for k, name in enumerate(KINDS):
        cols = kinds == k
        result[f"gap_{name}"] = metrics.gap(scores[:, cols], labels[:, cols])
    for name, (kind, partners) in blind_partitions(world).items():
        cols = kinds == KINDS.index(kind)
        blind = average_within(scores, partners)
        result[f"gap_{kind}_{name}"] = metrics.gap(blind[:, cols], labels[:, cols])
    with open(os.path.join(out, "oracle.json"), "w") as f:
        json.dump(result, f, indent=2)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    with open(os.path.join(out, "oracle_validate.jsonl"), "w") as f:
        for row, i in enumerate(ids):
            f.write(
                json.dumps(
                    {
                        "id": i,
                        "classes": top[row].tolist(),
                        "scores": [round(float(s), 6) for s in scores[row, top[row]]],
                    }
                )
                + "\n"
            )
    return result


def _write_classes(out: str, world: World) -> None:
    names = load_class_names()
    with open(os.path.join(out, "classes.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Index", "Name", "Kind", "RgbPattern", "RgbPattern2", "AudioPattern", "Token"])
        for c in range(len(world.kind)):
            w.writerow(
                [
                    c,
                    names[c] if c < len(names) else "",
                    KINDS[world.kind[c]],
                    world.rgb_a[c],
                    world.rgb_b[c],
                    world.audio[c],
                    world.token[c],
                ]
            )


def generate(out: str, spec: Spec = Spec(), *, workers: int | None = None, log=print) -> dict:
    """Writes the dataset under `out` (atomically: a temp dir renamed at the end)."""
    if os.path.exists(os.path.join(out, "manifest.json")):
        raise FileExistsError(f"{out} already holds a generated dataset")
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for lv in LEVELS:
        os.makedirs(os.path.join(tmp, lv))
    start = time.time()
    jobs = shard_jobs(spec)
    if not workers:  # a small dataset is written sooner than worker processes start
        small = spec.num_train + spec.num_validate < _SMALL_DATASET
        workers = 1 if small else min(len(jobs), os.cpu_count() or 1)
    log(
        f"Generating the embedded YT8M-format dataset ({spec.num_train} train, "
        f"{spec.num_validate} validate videos) in {out} with {workers} workers..."
    )
    clean = {s: {} for s in SPLITS}
    try:
        if workers > 1:
            ctx = multiprocessing.get_context("spawn")  # fork after JAX starts threads is unsafe
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {pool.submit(_write_shard, tmp, spec, s, i): s for s, i in jobs}
                for fut in concurrent.futures.as_completed(futures):
                    clean[futures[fut]].update(fut.result())
        else:
            for s, i in jobs:
                clean[s].update(_write_shard(tmp, spec, s, i))
        world = make_world(spec, label_sets_for(spec.num_classes))
        oracle = _write_oracle(tmp, spec, world, clean["validate"])
        _write_classes(tmp, world)
        for s in SPLITS:
            write_captions(caption_path(tmp, s), {i: row[2] for i, row in clean[s].items()})
        manifest = {
            "spec": dataclasses.asdict(spec),
            "oracle": oracle,
            "seconds": round(time.time() - start, 1),
        }
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
        try:
            os.replace(tmp, out)
        except OSError as e:
            done = os.path.exists(os.path.join(out, "manifest.json"))
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY) and done:
                raise FileExistsError(f"{out} was written by another process meanwhile") from e
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"Wrote {out} in {manifest['seconds']} s; oracle validate GAP {oracle['gap']:.4f}")
    return manifest


def ensure(cache_dir: str, spec: Spec = Spec(), log=print) -> str:
    """Returns the dataset directory for `spec` under `cache_dir`, generating it once."""
    out = os.path.join(os.path.expanduser(cache_dir), spec.key())
    if os.path.exists(os.path.join(out, "manifest.json")):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    try:
        generate(out, spec, log=log)
    except FileExistsError:  # another process finished it first
        pass
    return out


def patterns(data_dir: str, level: str) -> tuple[str, str]:
    """The (train, validate) globs of a generated dataset at `level`."""
    return (
        os.path.join(data_dir, level, "train-*.tfrecord"),
        os.path.join(data_dir, level, "validate-*.tfrecord"),
    )


def class_kinds(data_dir: str) -> dict[str, np.ndarray]:
    """Kind name -> class indices of a generated dataset (from its classes.csv)."""
    with open(os.path.join(data_dir, "classes.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        kind: np.array([int(r["Index"]) for r in rows if r["Kind"] == kind], np.int64)
        for kind in KINDS
    }


def class_names(data_dir: str | None, num_classes: int) -> list[str]:
    """Names by class index, '' where unknown: a generated dataset's classes.csv, else the
    2018 vocabulary when there are its 3862 classes (the 2017 data's 4716 are another list)."""
    names = []
    if data_dir:
        with open(os.path.join(data_dir, "classes.csv"), newline="") as f:
            names = [""] * num_classes
            for row in csv.DictReader(f):
                if int(row["Index"]) < num_classes:
                    names[int(row["Index"])] = row["Name"]
    elif num_classes == 3862:
        names = load_class_names()
    return (names + [""] * num_classes)[:num_classes]


def read_oracle(data_dir: str) -> dict:
    with open(os.path.join(data_dir, "oracle.json")) as f:
        return json.load(f)


def main(argv: Sequence[str]) -> None:
    del argv
    from absl import app, flags

    f = flags.FLAGS
    fields = {k: getattr(f, k) for k in _SPEC_FLAGS}
    low = {k: v for k, v in fields.items() if k != "seed" and v < (0 if k == "min_frames" else 1)}
    if low:
        raise app.UsageError(
            ", ".join(f"--{k}={v}" for k, v in low.items()) + ": expected >= 1 (min_frames >= 0)"
        )
    if fields["min_frames"] > fields["max_frames"]:
        raise app.UsageError(
            f"--min_frames={fields['min_frames']} > --max_frames={fields['max_frames']}"
        )
    if os.path.exists(f.out):
        raise app.UsageError(f"--out {f.out} exists; name a new directory")
    generate(f.out, Spec(**fields))


_SPEC_FLAGS = (
    "seed",
    "num_train",
    "num_validate",
    "num_train_shards",
    "num_validate_shards",
    "min_frames",
    "max_frames",
)


if __name__ == "__main__":
    from absl import flags

    flags.DEFINE_string("out", None, "Directory to create; must not exist yet.", required=True)
    for name in _SPEC_FLAGS:
        flags.DEFINE_integer(
            name, getattr(Spec(), name), f"Spec.{name} (see vmjax.data.synthetic.Spec)."
        )
    from vmjax import cli

    cli.run(main)
