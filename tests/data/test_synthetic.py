"""The embedded dataset: real format, real label sets, each kind's evidence where it should be."""

import collections
import csv
import glob
import hashlib
import json
import os
import re

import numpy as np
import pytest

from vmjax.data import synthetic, tfrecord, yt8m

SPEC = synthetic.Spec(
    seed=3,
    num_train=120,
    num_validate=60,
    num_train_shards=2,
    num_validate_shards=1,
    zero_frame_rate=0.05,
    long_rate=0.05,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("syn") / "data")
    synthetic.generate(out, SPEC, workers=1, log=lambda *_: None)
    return out


def _read(data_dir, level, split):
    decode = yt8m.decode_frame_example if level == "frame" else yt8m.decode_video_example
    out = []
    for path in sorted(glob.glob(os.path.join(data_dir, level, f"{split}-*.tfrecord"))):
        out += [decode(p) for _, _, p in tfrecord.read_records(path)]
    return out


def test_layout_counts_and_manifest(data_dir):
    assert len(glob.glob(os.path.join(data_dir, "frame", "train-*-of-00002.tfrecord"))) == 2
    assert len(_read(data_dir, "frame", "train")) == 120
    assert len(_read(data_dir, "video", "validate")) == 60
    manifest = json.load(open(os.path.join(data_dir, "manifest.json")))
    assert manifest["spec"]["seed"] == 3
    assert not glob.glob(data_dir + ".tmp-*")  # written atomically


def test_deterministic_by_seed(tmp_path):
    spec = synthetic.Spec(
        seed=5, num_train=10, num_validate=4, num_train_shards=1, num_validate_shards=1
    )
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    synthetic.generate(a, spec, workers=1, log=lambda *_: None)
    synthetic.generate(b, spec, workers=1, log=lambda *_: None)
    for level in synthetic.LEVELS:
        for name in os.listdir(os.path.join(a, level)):
            assert (
                open(os.path.join(a, level, name), "rb").read()
                == open(os.path.join(b, level, name), "rb").read()
            )
    with pytest.raises(FileExistsError):
        synthetic.generate(a, spec, workers=1, log=lambda *_: None)


def test_frame_lengths_include_zero_and_over_300(data_dir):
    lengths = [len(v["rgb"]) for v in _read(data_dir, "frame", "train")]
    assert 0 in lengths
    assert max(lengths) > 300
    assert all(len(v["audio"]) == len(v["rgb"]) for v in _read(data_dir, "frame", "train"))


def test_video_level_is_mean_of_dequantized_frames(data_dir):
    frames = {v["id"]: v for v in _read(data_dir, "frame", "validate")}
    for v in _read(data_dir, "video", "validate"):
        f = frames[v["id"]]
        np.testing.assert_array_equal(v["labels"], f["labels"])
        if len(f["rgb"]):
            np.testing.assert_allclose(v["mean_rgb"], yt8m.dequantize(f["rgb"]).mean(0), atol=1e-6)
            np.testing.assert_allclose(
                v["mean_audio"], yt8m.dequantize(f["audio"]).mean(0), atol=1e-6
            )


def _world_and_table(data_dir):
    world = synthetic.make_world(SPEC, synthetic.load_label_sets())
    rows = list(csv.DictReader(open(os.path.join(data_dir, "classes.csv"))))
    return world, rows


def test_kinds_and_shared_patterns(data_dir):
    world, rows = _world_and_table(data_dir)
    kinds = np.array([synthetic.KINDS.index(r["Kind"]) for r in rows])
    np.testing.assert_array_equal(kinds, world.kind)
    assert rows[0]["Name"] == "Game"
    counts = np.bincount(world.kind, minlength=5) / len(world.kind)
    np.testing.assert_allclose(counts, [0.4, 0.2, 0.2, 0.1, 0.1], atol=0.01)
    cross = np.flatnonzero(world.kind == 2)
    # Each cross-modal class's rgb pattern and audio pattern also belong to other classes.
    for c in cross[:40]:
        assert (world.rgb_a[cross] == world.rgb_a[c]).sum() >= 2
        assert (world.audio[cross] == world.audio[c]).sum() >= 2
        same = (world.rgb_a[cross] == world.rgb_a[c]) & (world.audio[cross] == world.audio[c])
        assert same.sum() == 1  # but the conjunction is unique
    temporal = np.flatnonzero(world.kind == 3)
    a, b = temporal[0], temporal[1]
    assert (world.rgb_a[a], world.rgb_b[a]) == (world.rgb_b[b], world.rgb_a[b])


def test_evidence_is_where_the_labels_say(data_dir):
    """Project frames on each class's pattern: present for labels, absent otherwise, in order."""
    world, _ = _world_and_table(data_dir)
    rng = np.random.default_rng(0)
    visual = np.flatnonzero(world.kind == 0)
    hits, controls, seen_temporal = [], [], 0

    def present(rgb, pattern_index):
        p = world.rgb_patterns[pattern_index]
        return rgb @ p / (p @ p) > 0.5  # ~1 on the pattern's frames, ~0 elsewhere

    for v in _read(data_dir, "frame", "train"):
        rgb = yt8m.dequantize(v["rgb"])
        if len(rgb) < 2:
            continue
        for c in v["labels"]:
            kind = synthetic.KINDS[world.kind[c]]
            if kind == "visual":
                hits.append(present(rgb, world.rgb_a[c]).any())
            elif kind == "temporal":
                a, b = present(rgb, world.rgb_a[c]), present(rgb, world.rgb_b[c])
                if a.any() and b.any():
                    assert np.flatnonzero(a)[0] < np.flatnonzero(b)[-1]
                    seen_temporal += 1
        other = rng.choice(np.setdiff1d(visual, v["labels"]))
        controls.append(present(rgb, world.rgb_a[other]).any())
    # Labels can be spurious (no evidence) at spurious_label_rate; controls almost never show.
    assert np.mean(hits) > 0.9
    assert np.mean(controls) < 0.02
    assert seen_temporal > 0


def test_clean_labels_are_real_label_sets_up_to_group_swaps(data_dir):
    world, _ = _world_and_table(data_dir)

    def as_groups(labels):
        return tuple(sorted(set(world.group[np.asarray(labels, np.int64)].tolist())))

    real = {as_groups(s) for s in synthetic.load_label_sets()}
    videos = _read(data_dir, "frame", "train") + _read(data_dir, "frame", "validate")
    exact = sum(as_groups(v["labels"]) in real for v in videos)
    assert exact / len(videos) > 0.8  # the rest differ by a dropped or spurious label


def test_a_smaller_vocabulary_draws_the_real_label_sets_among_its_classes(tmp_path):
    """num_classes below 3,862: each real set keeps its labels < num_classes (was an IndexError)."""
    spec = synthetic.Spec(
        seed=1, num_classes=60, num_train=40, num_validate=10, num_train_shards=1,
        num_validate_shards=1, spurious_label_rate=0.0,
    )  # fmt: skip
    out = str(tmp_path / "data")
    synthetic.generate(out, spec, workers=1, log=lambda *_: None)
    # The reference: the shipped CSV's sets, cut to the first 60 classes by hand.
    with open(synthetic._asset("yt8m_validate_label_sets.csv"), newline="") as f:
        cut = [[int(x) for x in r["labels"].split() if int(x) < 60] for r in csv.DictReader(f)]
    world = synthetic.make_world(spec, synthetic.load_label_sets())
    real = {tuple(sorted(set(world.group[s].tolist()))) for s in cut if s}
    videos = _read(out, "video", "train") + _read(out, "video", "validate")
    assert len(videos) == 50
    labels = [np.asarray(v["labels"], np.int64) for v in videos]
    assert all(len(x) and x.max() < 60 for x in labels)
    exact = sum(tuple(sorted(set(world.group[x].tolist()))) in real for x in labels)
    assert exact / len(videos) > 0.8  # the rest lost a label (label_drop_rate)
    full = synthetic.label_sets_for(3862)
    assert full is synthetic.load_label_sets()  # the 2018 vocabulary: every set, unchanged


def test_group_partners_are_exchangeable():
    """A temporal pair / cross-modal four share frequency: only their evidence differs."""
    world = synthetic.make_world(SPEC, synthetic.load_label_sets())
    temporal = np.flatnonzero(world.kind == 3)
    a, b = temporal[0], temporal[1]
    assert world.group[a] == world.group[b] and world.prior[a] == world.prior[b]
    cross = np.flatnonzero(world.kind == 2)[:4]
    assert len(set(world.group[cross])) == 1
    assert world.group[np.flatnonzero(world.kind == 0)[0]] == np.flatnonzero(world.kind == 0)[0]
    rng = np.random.default_rng(0)
    draws = np.concatenate(
        [synthetic.resample_within_groups(rng, world, np.array([a])) for _ in range(4000)]
    )
    assert set(draws) == {a, b}
    assert abs((draws == a).mean() - 0.5) < 0.03
    np.testing.assert_allclose(world.prior.sum(), 1.0)


def test_text_tokens_carry_text_class_keywords(data_dir):
    """Keywords come from clean labels; observed labels drop some and add spurious ones."""
    world, _ = _world_and_table(data_dir)
    text_classes = set(np.flatnonzero(world.kind == 4).tolist())
    keyword_of = {int(world.token[c]): c for c in text_classes}
    labelled_with_keyword, keywords_labelled = [], []
    for v in _read(data_dir, "video", "train") + _read(data_dir, "video", "validate"):
        labels = set(v["labels"].tolist())
        for c in labels & text_classes:
            labelled_with_keyword.append(world.token[c] in v["text_tokens"])
        for token in v["text_tokens"]:
            if int(token) in keyword_of:
                keywords_labelled.append(keyword_of[int(token)] in labels)
    assert len(labelled_with_keyword) > 5 and np.mean(labelled_with_keyword) > 0.85
    assert len(keywords_labelled) > 5 and np.mean(keywords_labelled) > 0.85


def test_segments_are_five_frames_inside_the_video(data_dir):
    n = 0
    for v in _read(data_dir, "frame", "train"):
        if "segment_start_times" not in v:
            continue
        n += 1
        st, en = v["segment_start_times"], v["segment_end_times"]
        np.testing.assert_array_equal(en - st, 5)
        assert (st % 5 == 0).all() and (en <= len(v["rgb"])).all()
        assert set(np.unique(v["segment_scores"])) <= {0.0, 1.0}
    assert n > 0


def test_oracle_beats_chance_and_is_below_one(data_dir):
    oracle = synthetic.read_oracle(data_dir)
    assert 0.8 < oracle["gap"] < 1.0
    lines = open(os.path.join(data_dir, "oracle_validate.jsonl")).read().splitlines()
    assert len(lines) == 60
    first = json.loads(lines[0])
    assert len(first["classes"]) == 20 and first["scores"] == sorted(first["scores"], reverse=True)


def test_blind_oracles_average_the_classes_they_cannot_tell_apart(data_dir):
    scores = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.4, 0.6, 0.8]], np.float32)
    got = synthetic.average_within(scores, np.array([7, 7, 2, 9]))
    np.testing.assert_allclose(got, [[0.5, 0.5, 0.5, 0.3], [0.3, 0.3, 0.6, 0.8]])

    world = synthetic.make_world(SPEC, synthetic.load_label_sets())
    parts = synthetic.blind_partitions(world)
    temporal = np.flatnonzero(world.kind == synthetic.KINDS.index("temporal"))
    order = parts["order_blind"][1]
    for a, b in zip(temporal[0::2], temporal[1::2], strict=False):
        assert order[a] == order[b] and world.rgb_a[a] == world.rgb_b[b]  # A->B with B->A
    cross = np.flatnonzero(world.kind == synthetic.KINDS.index("cross_modal"))[:4]
    rgb, audio = parts["rgb_only"][1][cross], parts["audio_only"][1][cross]
    assert rgb[0] == rgb[1] != rgb[2] == rgb[3]  # (rgb_i, audio_j): i shared in pairs
    assert audio[0] == audio[2] != audio[1] == audio[3]

    oracle = synthetic.read_oracle(data_dir)
    for key, kind in [
        ("gap_temporal_order_blind", "temporal"),
        ("gap_cross_modal_rgb_only", "cross_modal"),
        ("gap_cross_modal_audio_only", "cross_modal"),
    ]:
        assert 0 < oracle[key] < oracle[f"gap_{kind}"] - 0.1  # blindness costs


def test_ensure_reuses_the_cache(tmp_path):
    spec = synthetic.Spec(num_train=8, num_validate=4, num_train_shards=1, num_validate_shards=1)
    calls = []
    d1 = synthetic.ensure(str(tmp_path), spec, log=calls.append)
    d2 = synthetic.ensure(str(tmp_path), spec, log=calls.append)
    assert d1 == d2 and len(calls) == 2  # one generation: a start and an end message


def test_ensure_tolerates_a_concurrent_writer(tmp_path, monkeypatch):
    """Two processes generating the same dataset at once: the loser keeps the winner's copy."""
    spec = synthetic.Spec(num_train=8, num_validate=4, num_train_shards=1, num_validate_shards=1)
    out = synthetic.ensure(str(tmp_path), spec, log=lambda *_: None)
    first = open(os.path.join(out, "manifest.json")).read()
    real_exists, manifest = os.path.exists, os.path.join(out, "manifest.json")
    asked = []

    def exists(path):  # the first look finds nothing, as if the other writer were not done
        if path == manifest and not asked:
            asked.append(path)
            return False
        return real_exists(path)

    # This process saw no dataset when it started, so it generates one and finds `out` taken.
    monkeypatch.setattr(synthetic.os.path, "exists", exists)
    seen = synthetic.ensure(str(tmp_path), spec, log=lambda *_: None)
    monkeypatch.undo()
    assert seen == out and open(os.path.join(out, "manifest.json")).read() == first
    assert os.listdir(tmp_path) == [os.path.basename(out)]  # no temporary directory left


# sha256 (as in tests/data/test_captions.py) of SPEC's dataset without captions/, written by
# the generator before captions existed (git 3f66a50).
DIGEST_BEFORE_CAPTIONS = "bf8ee8a08c3466388b2c3f40883fc4a937ea7bd1489fb10b978dc6d84d25b125"


def test_captions_leave_every_other_file_byte_identical(data_dir):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(data_dir)):
        dirs.sort()
        if os.path.relpath(root, data_dir).split(os.sep)[0] == "captions":
            continue
        for name in sorted(files):
            path = os.path.join(root, name)
            data = open(path, "rb").read()
            if name == "manifest.json":  # its generation time differs from run to run
                manifest = json.loads(data)
                manifest.pop("seconds")
                data = json.dumps(manifest, sort_keys=True).encode()
            h.update(os.path.relpath(path, data_dir).encode() + b"\0" + data)
    assert h.hexdigest() == DIGEST_BEFORE_CAPTIONS
    assert sorted(os.listdir(os.path.join(data_dir, "captions"))) == ["train.csv", "validate.csv"]
    for split, n in [("train", 120), ("validate", 60)]:
        rows = list(csv.reader(open(os.path.join(data_dir, "captions", f"{split}.csv"))))
        assert rows[0] == ["id", "caption"] and len(rows) == n + 1


def _words(s):
    return re.findall(r"\w+", s.lower())


def test_caption_words_other_than_names_are_no_class_name_words():
    name_words = {w for n in synthetic.load_class_names() for w in _words(n)}
    lists = synthetic.CAPTION_FILLERS + synthetic.CAPTION_DISTRACTORS + synthetic.CAPTION_NOUNS
    templates = synthetic.CAPTION_OPENINGS + synthetic.CAPTION_RESTS
    own = {w for t in lists + templates for w in _words(t.format(noun="", main="", rest=""))}
    # Only function words, and "video" of the brief's "a video of X", are shared with names.
    assert own & name_words == {"a", "and", "in", "of", "the", "with", "video"}
    assert not set(synthetic.CAPTION_DISTRACTORS) & name_words


def test_make_caption_names_every_class_once_among_paraphrase_words():
    names = ["Pokémon (video game series)", "Dog", "", "Nike, Inc.", "Dog", "Call of Duty: Ghosts"]
    wanted = collections.Counter(
        _words("pokémon video game series dog nike inc call of duty ghosts")
    )
    extra = set(synthetic.CAPTION_FILLERS + synthetic.CAPTION_NOUNS)
    extra |= {"a", "of", "showing", "in", "and", "with", "the", "background", "also", "featuring"}
    captions, firsts = set(), set()
    for seed in range(200):
        caption = synthetic.make_caption(np.random.default_rng(seed), names)
        assert caption == synthetic.make_caption(np.random.default_rng(seed), names)
        words = collections.Counter(_words(caption))
        assert not wanted - words, caption  # each name whole, the repeated "Dog" once
        assert words["dog"] == 1 and "(video game series)" in caption and "nike, inc." in caption
        distractors = [w for w in words.elements() if w in synthetic.CAPTION_DISTRACTORS]
        assert 1 <= len(distractors) <= 3 and len(set(distractors)) == len(distractors)
        assert set(words) <= set(wanted) | extra | set(distractors), caption
        captions.add(caption)
        firsts.add(_words(caption)[0])
    assert len(captions) == 200 and len(firsts) > 10  # word order varies
    for seed in range(20):
        caption = synthetic.make_caption(np.random.default_rng(seed), ["", ""])
        text = next(
            p.strip()
            for p in caption.split(",")
            if p.split()[0] not in synthetic.CAPTION_DISTRACTORS
        )
        assert text.startswith("a ") and text.split()[-1] in synthetic.CAPTION_NOUNS
