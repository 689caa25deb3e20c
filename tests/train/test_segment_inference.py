"""--segments eval and predict on a checkpoint of a tiny frame-level run.

The reference scores each rated segment on its own (a one-row batch built here from the raw
record fields) and computes per-class AP with a plain sort-and-count loop.
"""

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.train.test_loop import _small
from vmjax.data import segments, tfrecord, yt8m
from vmjax.train import inference, inputs, loop, segment_inference

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segments")
    # The 2018 vocabulary (3,862 classes), whose segment task is the 2019 vocabulary's 1,000.
    overrides = {"model.name": "frame_logistic", "data.num_classes": 3862}
    config = _small(tmp, "frame,smoke", **overrides)
    workdir = str(tmp / "w")
    loop.train_and_evaluate(config, workdir)
    return config, workdir


@pytest.fixture(scope="module")
def reference(run):
    """Per listed segment of the eval data: (id, start, {class: rating}, scores [classes])."""
    config, workdir = run
    par, state, _ = inference.restore(config, workdir)
    _, files, _ = inputs.resolve_data(config)
    max_frames, out = config.data.max_frames, []
    for path in files:
        for _, _, payload in tfrecord.read_records(path):
            ex = yt8m.decode_frame_example(payload)
            if "segment_start_times" not in ex:
                continue
            ratings: dict[int, dict[int, float]] = {}
            for start, cls, score in zip(
                ex["segment_start_times"], ex["segment_labels"], ex["segment_scores"], strict=True
            ):
                ratings.setdefault(int(start), {})[int(cls)] = float(score)
            for start, rated in sorted(ratings.items()):
                batch = {
                    "rgb": np.zeros((1, max_frames, 1024), np.uint8),
                    "audio": np.zeros((1, max_frames, 128), np.uint8),
                    "mask": np.zeros((1, max_frames), bool),
                    "labels": np.zeros((1, config.data.num_classes), np.uint8),
                    "weights": np.ones(1, np.float32),
                    "text_tokens": np.zeros((1, config.data.max_text_tokens), np.int32),
                    "text_mask": np.zeros((1, config.data.max_text_tokens), bool),
                }
                batch["rgb"][0, :5] = ex["rgb"][start : start + 5]
                batch["audio"][0, :5] = ex["audio"][start : start + 5]
                batch["mask"][0, :5] = True
                tokens = ex["text_tokens"][: config.data.max_text_tokens]
                batch["text_tokens"][0, : len(tokens)] = tokens
                batch["text_mask"][0, : len(tokens)] = True
                scores = np.asarray(par.eval_step(state, par.put_batch(batch))["scores"])[0]
                out.append((ex["id"], start, rated, scores))
    return out


def _plain_ap(pairs):
    """AP of (score, rating) pairs: sort by score, sum precision at each positive."""
    ranked = sorted(pairs, key=lambda p: -p[0])
    hits, total = 0, 0.0
    for rank, (_, y) in enumerate(ranked, start=1):
        if y:
            hits += 1
            total += hits / rank
    return total / hits


def test_segment_eval_equals_per_segment_reference(run, reference):
    config, workdir = run
    result = segment_inference.evaluate_segments(config, workdir)
    pairs: dict[int, list] = {}
    bce = []
    for _, _, rated, scores in reference:
        for c, y in rated.items():
            pairs.setdefault(c, []).append((scores[c], y))
            p = np.clip(scores[c], 1e-7, 1 - 1e-7)
            bce.append(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    aps = [_plain_ap(v) for v in pairs.values() if any(y for _, y in v)]
    assert len(aps) > 3 and result["num_classes_rated_positive"] == len(aps)
    assert result["segment_map"] == pytest.approx(np.mean(aps), abs=1e-6)
    assert result["num_segments"] == len(reference)
    assert result["num_rated_pairs"] == sum(len(r) for _, _, r, _ in reference)
    assert result["loss"] == pytest.approx(np.mean(bce), rel=1e-4)
    written = json.load(open(os.path.join(workdir, "eval", f"segments_step_{result['step']}.json")))
    assert written["segment_map"] == result["segment_map"]


def test_segment_predict_writes_class_segments_csv_ranked_by_score(run, reference, tmp_path):
    config, workdir = run
    out = segment_inference.predict_segments(config, workdir, out=str(tmp_path / "seg.csv"))
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Class", "Segments"]
    # The embedded data uses the 2018 vocabulary: the 2019 segment classes by default.
    classes = [int(r[0]) for r in rows[1:]]
    assert classes == list(segments.segment_classes(3862))
    names = [f"{vid}:{start}" for vid, start, _, _ in reference]
    for row in (1, 500, 1000):
        c, entries = classes[row - 1], rows[row][1].split()
        assert sorted(entries) == sorted(names)  # every listed segment once
        score_of = {n: s[c] for n, (_, _, _, s) in zip(names, reference, strict=True)}
        ranked = [score_of[e] for e in entries]
        np.testing.assert_allclose(ranked, sorted(ranked, reverse=True), atol=1e-6)


def test_segment_classes_default_to_the_shipped_2019_vocabulary(tmp_path):
    classes = segments.segment_classes(3862)
    shared = ROOT.parent / "shared" / "data" / "yt8m_segment_vocabulary.csv"
    assert len(classes) == 1000 and classes[0] == 3 and list(classes) == sorted(classes)
    if shared.exists():  # the copy in vmjax/data/assets is the real file
        with open(shared, newline="") as f:
            assert sorted(int(r["Index"]) for r in csv.DictReader(f)) == list(classes)
    assert list(segments.segment_classes(50)) == list(range(50))
    own = tmp_path / "mine.csv"
    own.write_text("Index,Name\n7,a\n2,b\n")
    assert list(segments.segment_classes(10, str(own))) == [2, 7]
    own.write_text("Index,Name\n12,a\n")
    with pytest.raises(ValueError, match=r"mine.csv: segment classes must be in \[0, 10\)"):
        segments.segment_classes(10, str(own))
    own.write_text("Class\n1\n")
    with pytest.raises(ValueError, match="no 'Index' column"):
        segments.segment_classes(10, str(own))


def test_segments_need_frame_level_data(tmp_path):
    config = _small(tmp_path, "smoke")
    with pytest.raises(ValueError, match=r"needs frame-level data \(config.data.level='frame'\)"):
        next(segment_inference.segment_batches(config, [], 4))


def test_segment_eval_from_the_command_line(run):
    config, workdir = run
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmjax.main",
            "--config",
            "configs/yt8m.py:frame,smoke",
            "--workdir",
            workdir,
            "--mode",
            "eval",
            "--segments",
            f"--config.data.cache_dir={config.data.cache_dir}",
            "--config.data.synthetic.num_train=96",
            "--config.data.synthetic.num_validate=40",
            "--config.model.name=frame_logistic",
            "--config.eval_batch_size=16",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Segment evaluation: step 6, segment_map 0." in proc.stdout
