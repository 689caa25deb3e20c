"""Captions of the embedded dataset: content against the oracle's clean labels, files, batches."""

import collections
import csv
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest

from vmjax.data import captions, pipeline, synthetic, text, tfrecord, yt8m

SPEC = synthetic.Spec(
    seed=3, num_train=40, num_validate=40, num_train_shards=2, num_validate_shards=1
)
# sha256 (see _digest) of the files of SPEC's dataset other than captions, written by the
# generator before captions existed (git 3f66a50): captions must leave every other byte alone.
DIGEST_BEFORE_CAPTIONS = "45b6dd94b1a6510ee873daf4316d2dd6fee4a1be57fe757475a214925233d240"
# Every word a caption may hold besides its classes' names, copied from the recipe in
# vmjax/data/synthetic.py's docstring rather than imported, so a change to the lists shows.
TEMPLATE_WORDS = {"a", "of", "showing", "in", "and", "with", "the", "background", "also"}
TEMPLATE_WORDS |= {"featuring", "video", "clip", "footage", "recording"}
FILLERS = {"short", "amateur", "homemade", "long", "quick", "shaky", "grainy", "nice"}
DISTRACTORS = set(
    "yesterday today morning evening afternoon sunny rainy cloudy outdoors indoors slowly "
    "together someone weekend uploaded filmed watching here there really again finally".split()
)


def _words(s):
    return re.findall(r"\w+", s.lower())


def _digest(data_dir):
    """sha256 over every file but captions/ (the manifest without its `seconds`)."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(data_dir)):
        dirs.sort()
        if os.path.relpath(root, data_dir).split(os.sep)[0] == "captions":
            continue
        for name in sorted(files):
            path = os.path.join(root, name)
            data = open(path, "rb").read()
            if name == "manifest.json":
                manifest = json.loads(data)
                manifest.pop("seconds")
                data = json.dumps(manifest, sort_keys=True).encode()
            h.update(os.path.relpath(path, data_dir).encode() + b"\0" + data)
    return h.hexdigest()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cap") / "data")
    synthetic.generate(out, SPEC, workers=1, log=lambda *_: None)
    return out


def _raw(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _names(data_dir):
    with open(os.path.join(data_dir, "classes.csv"), newline="") as f:
        return {int(r["Index"]): r["Name"] for r in csv.DictReader(f)}


def _records(data_dir, split):
    out = {}
    for path in sorted(glob.glob(os.path.join(data_dir, "video", f"{split}-*.tfrecord"))):
        for _, _, payload in tfrecord.read_records(path):
            ex = yt8m.decode_video_example(payload)
            out[ex["id"]] = ex["labels"].tolist()
    return out


def _oracle_clean(data_dir):
    """Clean labels of the validate videos, read off the oracle: P(observed) ~ 0.95 vs < 0.01."""
    out = {}
    for line in open(os.path.join(data_dir, "oracle_validate.jsonl")):
        row = json.loads(line)
        out[row["id"]] = [c for c, s in zip(row["classes"], row["scores"], strict=True) if s > 0.5]
    return out


def test_every_video_has_one_caption_in_id_order(data_dir):
    for split in synthetic.SPLITS:
        rows = _raw(captions.caption_path(data_dir, split))
        assert rows[0] == ["id", "caption"]
        ids = [r[0] for r in rows[1:]]
        assert ids == sorted(_records(data_dir, split)) and len(set(ids)) == len(ids)
        assert all(len(r) == 2 and r[1].strip() for r in rows[1:])
    raw = open(captions.caption_path(data_dir, "train"), "rb").read()
    assert b"\r" not in raw and raw.endswith(b"\n")


def test_captions_name_the_clean_classes_and_nothing_else(data_dir):
    names, clean = _names(data_dir), _oracle_clean(data_dir)
    written = captions.read_captions(captions.caption_path(data_dir, "validate"))
    assert set(written) == set(clean)
    counts = collections.Counter()
    for video_id, caption in written.items():
        words = collections.Counter(_words(caption))
        name_words = set()
        for c in clean[video_id]:
            own = _words(names[c])
            name_words.update(own)
            assert not collections.Counter(own) - words, (names[c], caption)
        assert set(words) <= name_words | TEMPLATE_WORDS | FILLERS | DISTRACTORS, caption
        assert 1 <= sum(words[w] for w in DISTRACTORS) <= 3, caption
        counts["distractor first"] += caption.split(",")[0].split()[0] in DISTRACTORS
        counts["long"] += len(clean[video_id]) >= 3
    # Both distractor placements, and enough multi-class videos to exercise the rest clause.
    assert 5 < counts["distractor first"] < 35 and counts["long"] >= 5


def test_captions_are_not_the_observed_labels_and_vary(data_dir):
    """Noisy labels differ from the caption's classes sometimes; the text is never a label list."""
    names = _names(data_dir)
    written = captions.read_captions(captions.caption_path(data_dir, "train"))
    labels = _records(data_dir, "train")
    named = [(v, c) for v in written for c in labels[v] if names[c]]
    in_caption = [set(_words(names[c])) <= set(_words(written[v])) for v, c in named]
    assert 0.85 < np.mean(in_caption) <= 1.0
    openings = {" ".join(c.split()[:2]) for c in written.values()}
    assert len(openings) > 10 and len(set(written.values())) == len(written)


def test_records_are_byte_identical_to_the_generator_before_captions(data_dir):
    assert _digest(data_dir) == DIGEST_BEFORE_CAPTIONS


def test_captions_deterministic_by_seed(data_dir, tmp_path):
    again = str(tmp_path / "again")
    synthetic.generate(again, SPEC, workers=1, log=lambda *_: None)
    for split in synthetic.SPLITS:
        a = open(captions.caption_path(data_dir, split), "rb").read()
        assert a == open(captions.caption_path(again, split), "rb").read()
    other = synthetic.replay_shard(dataclasses.replace(SPEC, seed=4), "validate", 0)
    mine = captions.read_captions(captions.caption_path(data_dir, "validate"))
    assert sum(mine[i] != row[2] for i, row in other.items()) > 35


def test_ensure_captions_upgrades_an_old_dataset_in_place(data_dir, tmp_path):
    old = str(tmp_path / "old")
    shutil.copytree(data_dir, old)
    shutil.rmtree(os.path.join(old, "captions"))  # as generated before captions existed
    logs = []
    paths = captions.ensure_captions(old, workers=1, log=logs.append)
    assert len(logs) == 1
    for split in synthetic.SPLITS:
        assert paths[split] == captions.caption_path(old, split)
        new = open(paths[split], "rb").read()
        assert new == open(captions.caption_path(data_dir, split), "rb").read()
    assert sorted(os.listdir(os.path.join(old, "captions"))) == ["train.csv", "validate.csv"]
    assert captions.ensure_captions(old, log=logs.append) == paths and len(logs) == 1
    assert _digest(old) == DIGEST_BEFORE_CAPTIONS


def test_ensure_captions_refuses_records_the_spec_does_not_give(data_dir, tmp_path):
    old = str(tmp_path / "old")
    shutil.copytree(data_dir, old)
    os.remove(captions.caption_path(old, "validate"))
    manifest = json.load(open(f"{old}/manifest.json"))
    manifest["spec"]["seed"] = 4
    json.dump(manifest, open(f"{old}/manifest.json", "w"))
    with pytest.raises(ValueError, match=r"video/validate-00000-of-00001.tfrecord record 0"):
        captions.ensure_captions(old, workers=1, log=lambda *_: None)
    assert not os.path.exists(captions.caption_path(old, "validate"))
    assert os.listdir(os.path.join(old, "captions")) == ["train.csv"]  # no temp file left


def _expected_vocabulary(texts, vocab_size):
    """[PAD], [UNK], then words by count (ties in code-point order), counted by regex."""
    counts = collections.Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower()))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    return ["[PAD]", "[UNK]"] + words[: vocab_size - 2]


def test_tokenizer_is_built_from_train_captions_saved_and_reloaded(data_dir, tmp_path):
    d = str(tmp_path / "d")
    shutil.copytree(data_dir, d)
    train = captions.read_captions(captions.caption_path(d, "train")).values()
    tokenizer = captions.caption_tokenizer(d, 40)
    vocab = tokenizer.tokens(range(tokenizer.vocab_size))
    assert vocab == _expected_vocabulary(train, 40)
    path = os.path.join(d, "captions", "vocabulary.json")
    saved = open(path).read()
    assert text.Tokenizer.load(path).tokens(range(40)) == vocab
    again = captions.caption_tokenizer(d, 40)
    assert again.tokens(range(again.vocab_size)) == vocab and open(path).read() == saved
    caption = next(iter(train))
    np.testing.assert_array_equal(again.encode(caption, None), tokenizer.encode(caption, None))
    with pytest.raises(ValueError, match="vocabulary.json is not the vocabulary"):
        captions.caption_tokenizer(d, 30)
    # Every word of the train captions fits in a large vocabulary: no [UNK] at all.
    os.remove(path)
    full = captions.caption_tokenizer(d, 100_000)
    assert full.vocab_size == len(_expected_vocabulary(train, 100_000))
    assert all(text.UNK_ID not in full.encode(t, None) for t in train)


BATCH = pipeline.BatchSpec(
    level="frame", num_classes=3862, max_frames=16, max_text_tokens=4, text_vocab_size=8192
)


@pytest.fixture(scope="module")
def tokenizer(data_dir, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tok") / "d")
    shutil.copytree(data_dir, d)
    return captions.caption_tokenizer(d, 200)


def test_eval_batches_carry_each_rows_caption(data_dir, tokenizer):
    path = captions.caption_path(data_dir, "validate")
    written = captions.read_captions(path)
    table = captions.CaptionTable.build(path, tokenizer, max_caption_tokens=12)
    files = sorted(glob.glob(os.path.join(data_dir, "frame", "validate-*.tfrecord")))
    plain = list(pipeline.eval_batches(files, BATCH, batch_size=7))
    batches = list(captions.eval_batches(files, BATCH, batch_size=7, table=table))
    assert len(batches) == len(plain) == 6  # 40 videos: the last batch has 2 padding rows
    seen = []
    for got, ref in zip(batches, plain, strict=True):
        for key, value in ref.items():
            np.testing.assert_array_equal(got[key], value)
        tokens, mask = got["caption_tokens"], got["caption_mask"]
        assert tokens.dtype == np.int32 and tokens.shape == (7, 12) and mask.dtype == bool
        for row, video_id in enumerate(got["ids"].tolist()):
            if not video_id:
                assert not tokens[row].any() and not mask[row].any()
                continue
            seen.append(video_id)
            expected = tokenizer.encode(written[video_id], 12)
            np.testing.assert_array_equal(tokens[row, mask[row]], expected)
            assert not tokens[row, ~mask[row]].any() and mask[row, : len(expected)].all()
            # Back to words: the caption's own words, by an independent split.
            words = re.findall(r"\w+|[^\w\s]", written[video_id].lower())[:12]
            assert tokenizer.tokens(expected) == [
                w if w in tokenizer.tokens(range(200)) else "[UNK]" for w in words
            ]
    assert sorted(seen) == sorted(written)


def test_missing_caption_raises_or_is_skipped(data_dir, tokenizer, tmp_path):
    rows = _raw(captions.caption_path(data_dir, "validate"))
    missing = rows[3][0]
    path = str(tmp_path / "some.csv")
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows[:3] + rows[4:])
    table = captions.CaptionTable.build(path, tokenizer, max_caption_tokens=6)
    files = sorted(glob.glob(os.path.join(data_dir, "frame", "validate-*.tfrecord")))
    with pytest.raises(ValueError, match=rf"video '{missing}' has no caption in .*some.csv"):
        list(captions.eval_batches(files, BATCH, batch_size=8, table=table))
    batch = next(captions.eval_batches(files, BATCH, batch_size=8, table=table, skip_missing=True))
    row = batch["ids"].tolist().index(missing)
    assert batch["weights"][row] == 0 and not batch["caption_mask"][row].any()
    assert batch["weights"].sum() == 7 and batch["caption_mask"].any(axis=1).sum() == 7
    # The caller's batch is not touched.
    plain = next(pipeline.eval_batches(files, BATCH, batch_size=8))
    out = captions.add_captions(plain, table, skip_missing=True)
    assert plain["weights"].all() and "caption_tokens" not in plain and not out["weights"][row]


def test_train_dataset_carries_captions(data_dir, tokenizer):
    path = captions.caption_path(data_dir, "train")
    written = captions.read_captions(path)
    table = captions.CaptionTable.build(path, tokenizer, max_caption_tokens=10)
    files = sorted(glob.glob(os.path.join(data_dir, "frame", "train-*.tfrecord")))
    ds = captions.train_dataset(
        files, BATCH, table=table, batch_size=8, seed=1, shuffle_buffer=16, cycle_length=2
    )
    it = iter(ds)
    for _ in range(6):  # past one epoch of 40 videos
        batch = next(it)
        assert batch["weights"].all()
        for row, video_id in enumerate(batch["ids"].tolist()):
            expected = tokenizer.encode(written[video_id], 10)
            np.testing.assert_array_equal(batch["caption_tokens"][row, : len(expected)], expected)
            assert batch["caption_mask"][row].sum() == len(expected)


@pytest.mark.parametrize(
    "body, match",
    [
        ("video,caption\nx,a dog\n", r"line 1: expected the header"),
        ("", r"line 1: expected the header"),
        ("id,caption\nx,a dog\ny,a cat,extra\n", r"line 3: expected 2 fields"),
        ("id,caption\nx,a dog\n\n,a cat\n", r"line 4: empty id"),
        ("id,caption\nx,a dog\ny,  \n", r"line 3: empty caption for id 'y'"),
        ("id,caption\nx,a dog\ny,a cat\nx,a bird\n", r"line 4: id 'x' repeats line 2"),
        ('id,caption\nx,"a dog\n', r"line 2: malformed CSV"),
    ],
)
def test_bad_captions_files_name_file_and_line(tmp_path, body, match):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(ValueError, match=rf"bad.csv {match}"):
        captions.read_captions(str(path))


def test_read_captions_accepts_quotes_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_bytes(b'id,caption\r\nx,"a dog, and a cat"\r\n\r\ny, a bird \r\n')
    assert captions.read_captions(str(path)) == {"x": "a dog, and a cat", "y": "a bird"}
    path.write_bytes(b"id,caption\nx,caf\xe9\n")
    with pytest.raises(ValueError, match="ok.csv: not UTF-8"):
        captions.read_captions(str(path))


def test_class_queries(data_dir):
    names = _names(data_dir)
    classes, texts = captions.class_queries(data_dir)
    named = sorted(c for c, n in names.items() if n)
    assert classes.tolist() == named and len(named) == 3862 - 56
    assert (
        texts[0] == "a video of game"
        and texts[classes.tolist().index(1)] == "a video of video game"
    )
    present = set().union(*map(set, _records(data_dir, "validate").values()))
    classes, texts = captions.class_queries(data_dir, "validate", template="{name} footage")
    assert classes.tolist() == sorted(c for c in present if names[c])
    assert texts == [f"{names[c].lower()} footage" for c in classes]
