"""Baselines: features as the readers decode them, scores equal to sklearn's own, metrics as
vmjax.metrics computes them on those scores."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from vmjax import baselines, metrics
from vmjax.data import synthetic, tfrecord, yt8m

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 8
LATENTS = 6  # classes 0..5 each follow one latent factor
ABSENT = 6  # positive in some eval videos, never in train
NEVER = 7  # positive nowhere


def _videos(rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Features that repeat LATENTS factors (plus noise) over all 1152 dims; class c is
    positive where factor c > 0.5, a threshold every baseline can find."""
    z = rng.normal(size=(n, LATENTS))
    x = z[:, np.arange(baselines.FEATURE_DIM) % LATENTS] + 0.3 * rng.normal(
        size=(n, baselines.FEATURE_DIM)
    )
    y = np.zeros((n, NUM_CLASSES), np.uint8)
    y[:, :LATENTS] = z > 0.5
    if split == "eval":
        y[:, ABSENT] = z[:, 0] > 1.0
    return x.astype(np.float32), y


def _write_videos(path, x: np.ndarray, y: np.ndarray, prefix: str) -> None:
    tfrecord.write_records(
        str(path),
        (
            yt8m.encode_video_example(
                f"{prefix}{i}", np.flatnonzero(y[i]), x[i, : yt8m.RGB_DIM], x[i, yt8m.RGB_DIM :]
            )
            for i in range(len(x))
        ),
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Train videos in two files (80 + 80), eval videos in one (80)."""
    tmp = tmp_path_factory.mktemp("baselines")
    rng = np.random.default_rng(0)
    x_train, y_train = _videos(rng, 160, "train")
    x_eval, y_eval = _videos(rng, 80, "eval")
    train_files = [str(tmp / f"train-{i}.tfrecord") for i in range(2)]
    for i, path in enumerate(train_files):
        rows = slice(80 * i, 80 * (i + 1))
        _write_videos(path, x_train[rows], y_train[rows], f"tr{i}-")
    eval_files = [str(tmp / "eval-0.tfrecord")]
    _write_videos(eval_files[0], x_eval, y_eval, "ev")
    return {
        "dir": tmp,
        "train_files": train_files,
        "eval_files": eval_files,
        "train": (x_train, y_train),
        "eval": (x_eval, y_eval),
    }


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A tiny dataset from the embedded generator (all 3862 classes, class kinds)."""
    out = str(tmp_path_factory.mktemp("embedded") / "data")
    spec = synthetic.Spec(num_train=30, num_validate=12, num_train_shards=2, num_validate_shards=1)
    synthetic.generate(out, spec, workers=1, log=lambda _: None)
    return out


def _reference_scores(name: str, x_train, y_train, x_eval) -> np.ndarray:
    """Scores from sklearn's own predict_proba / decision_function; 0 where train has no
    positive."""
    hp = baselines.HYPERPARAMS[name]
    cols = np.flatnonzero(y_train.any(0))
    scores = np.zeros((len(x_eval), y_train.shape[1]))
    if name in ("linear_svm", "logistic_regression"):
        scaler = StandardScaler().fit(x_train)
        xt, xe = scaler.transform(x_train), scaler.transform(x_eval)
        for c in cols:
            if name == "logistic_regression":
                model = LogisticRegression(**hp).fit(xt, y_train[:, c])
                scores[:, c] = model.predict_proba(xe)[:, list(model.classes_).index(1)]
            else:
                model = LinearSVC(**hp, random_state=0).fit(xt, y_train[:, c])
                scores[:, c] = 1 / (1 + np.exp(-model.decision_function(xe)))
        return scores
    trees = DecisionTreeClassifier if name == "decision_tree" else RandomForestClassifier
    model = trees(**hp, random_state=0).fit(x_train, y_train[:, cols])
    for j, (proba, classes) in enumerate(
        zip(model.predict_proba(x_eval), model.classes_, strict=True)
    ):
        scores[:, cols[j]] = proba[:, list(classes).index(1)]
    return scores


def test_video_level_features_are_the_stored_values(data):
    x_train, y_train = data["train"]
    x, y, ids = baselines.load_features(data["train_files"], "video", NUM_CLASSES)
    assert x.dtype == np.float32 and x.shape == (160, 1152)
    assert y.dtype == np.uint8 and y.shape == (160, NUM_CLASSES)
    np.testing.assert_array_equal(x, x_train)
    np.testing.assert_array_equal(y, y_train)
    assert list(ids[:2]) == ["tr0-0", "tr0-1"] and ids[80] == "tr1-0"
    # max_videos goes on into the next file and stops inside it.
    x_some, y_some, ids_some = baselines.load_features(
        data["train_files"], "video", NUM_CLASSES, max_videos=100
    )
    np.testing.assert_array_equal(x_some, x_train[:100])
    assert len(y_some) == len(ids_some) == 100 and ids_some[-1] == "tr1-19"


def test_frame_level_features_are_dequantized_frame_means(tmp_path):
    rng = np.random.default_rng(1)
    frames = {
        "long": rng.integers(0, 256, (301, 1152), dtype=np.uint8),
        "short": rng.integers(0, 256, (5, 1152), dtype=np.uint8),
        "ends": np.repeat(np.array([[0], [255]], np.uint8), 576, axis=1).reshape(1, 1152),
        "empty": np.zeros((0, 1152), np.uint8),
    }
    floats = rng.normal(size=(3, 1152)).astype(np.float32)
    records = [
        yt8m.encode_frame_example(vid, [i], f[:, :1024], f[:, 1024:])
        for i, (vid, f) in enumerate(frames.items())
    ]
    records.append(
        yt8m.encode_frame_example(
            "floats", [4], floats[:, :1024], floats[:, 1024:], float_features=True
        )
    )
    path = str(tmp_path / "frames.tfrecord")
    tfrecord.write_records(path, records)

    x, y, ids = baselines.load_features([path], "frame", 5)
    assert list(ids) == [*frames, "floats"]
    np.testing.assert_array_equal(y, np.eye(5, dtype=np.uint8))
    for row, f in enumerate(frames.values()):
        # The spec's formula in float64: q * 4/255 + 4/512 - 2, averaged over frames.
        want = (f * (4 / 255) + (4 / 512 - 2)).mean(0) if len(f) else np.zeros(1152)
        np.testing.assert_allclose(x[row], want, rtol=0, atol=2e-6)
    assert x[2, 0] == np.float32(-1.9921875) and x[2, 1151] == np.float32(2.0078125)
    np.testing.assert_allclose(x[4], floats.astype(np.float64).mean(0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="level must be one of"):
        baselines.load_features([path], "segment", 5)
    with pytest.raises(ValueError, match="max_videos must be at least 1"):
        baselines.load_features([path], "frame", 5, max_videos=0)


def _embedded_files(data_dir: str, level: str) -> tuple[list[str], list[str]]:
    return tuple(sorted(glob.glob(p)) for p in synthetic.patterns(data_dir, level))


def test_frame_means_equal_the_embedded_video_level_records(embedded):
    x_video, y_video, ids_video = baselines.load_features(
        _embedded_files(embedded, "video")[0], "video", 3862
    )
    x_frame, y_frame, ids_frame = baselines.load_features(
        _embedded_files(embedded, "frame")[0], "frame", 3862
    )
    assert len(x_video) == 30
    np.testing.assert_array_equal(x_frame, x_video)
    np.testing.assert_array_equal(y_frame, y_video)
    np.testing.assert_array_equal(ids_frame, ids_video)


@pytest.mark.parametrize("name", baselines.MODELS)
def test_scores_and_metrics_equal_sklearn_reference_and_beat_chance(data, name):
    (x_train, y_train), (x_eval, y_eval) = data["train"], data["eval"]
    want = _reference_scores(name, x_train, y_train, x_eval)
    model = baselines.make_model(name, n_jobs=1).fit(x_train, y_train)
    got = model.scores(x_eval)
    assert got.shape == (80, NUM_CLASSES)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # Classes without a training positive are never fitted and score exactly 0.
    assert not got[:, [ABSENT, NEVER]].any() and y_eval[:, ABSENT].any()

    result = baselines.run_baseline(
        name, data["train_files"], data["eval_files"], "video", NUM_CLASSES, n_jobs=1
    )
    assert result["model"] == name and result["classes_fitted"] == LATENTS
    assert result["num_train"] == 160 and result["num_eval"] == 80
    for key, metric in (
        ("gap", metrics.gap),
        ("map", metrics.mean_ap),
        ("hit_at_1", metrics.hit_at_one),
        ("perr", metrics.perr),
    ):
        assert result[key] == pytest.approx(metric(want, y_eval), abs=1e-6), key
    # The labels follow the features, so every baseline must clearly beat random scores.
    chance = metrics.gap(np.random.default_rng(2).random(y_eval.shape), y_eval)
    assert chance < 0.45 and result["gap"] > chance + 0.3, (chance, result["gap"])
    assert result["fit_seconds"] > 0 and result["predict_examples_per_s"] > 0
    if result["params_kind"] == "weights":
        assert result["params"] == LATENTS * (1152 + 1)
    else:
        assert result["params_kind"] == "tree_nodes"
        trees = model.model.estimators_ if name == "random_forest" else [model.model]
        assert len(trees) == baselines.HYPERPARAMS[name].get("n_estimators", 1)
        assert result["params"] == sum(t.tree_.node_count for t in trees) > len(trees)


def test_gap_per_class_kind_on_embedded_data(embedded):
    train_files, eval_files = _embedded_files(embedded, "video")
    result = baselines.run_baseline(
        "decision_tree", train_files, eval_files, "video", 3862, data_dir=embedded
    )
    x_train, y_train, _ = baselines.load_features(train_files, "video", 3862)
    x_eval, y_eval, _ = baselines.load_features(eval_files, "video", 3862)
    want = _reference_scores("decision_tree", x_train, y_train, x_eval)
    for kind, cols in synthetic.class_kinds(embedded).items():
        assert result[f"gap_{kind}"] == pytest.approx(
            metrics.gap(want[:, cols], y_eval[:, cols]), abs=1e-6
        )
    assert result["gap"] == pytest.approx(metrics.gap(want, y_eval), abs=1e-6)
    assert sum(result[f"gap_{kind}"] > 0 for kind in synthetic.KINDS) >= 2, result


def test_classes_constant_in_train(data):
    (x_train, y_train), (x_eval, _) = data["train"], data["eval"]
    y = y_train.copy()
    y[:, NEVER] = 1  # positive in every training video: not fitted, scores 1
    for name in ("decision_tree", "logistic_regression"):
        model = baselines.make_model(name).fit(x_train, y)
        scores = model.scores(x_eval)
        assert len(model.classes.fitted) == LATENTS
        assert (scores[:, NEVER] == 1).all() and (scores[:, ABSENT] == 0).all()
    with pytest.raises(ValueError, match="no class has both a positive and a negative"):
        baselines.make_model("decision_tree").fit(x_train, np.zeros_like(y))


def _config(train: str, eval_: str):
    spec = importlib.util.spec_from_file_location(
        "yt8m_config", os.path.join(ROOT, "configs/yt8m.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.data.train_pattern, config.data.eval_pattern = train, eval_
    config.data.num_classes = NUM_CLASSES
    return config


def test_run_study_appends_one_row_per_model(data):
    tmp = data["dir"]
    config = _config(str(tmp / "train-*.tfrecord"), str(tmp / "eval-*.tfrecord"))
    out = tmp / "rows.jsonl"
    out.write_text('{"model": "earlier run"}\n')
    lines = []
    rows = baselines.run_study(
        config,
        ["decision_tree", "logistic_regression"],
        max_train=100,
        out=str(out),
        n_jobs=1,
        log=lines.append,
    )
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written[0] == {"model": "earlier run"} and written[1:] == rows
    assert [r["model"] for r in rows] == ["decision_tree", "logistic_regression"]
    for row in rows:
        assert row["num_train"] == 100 and row["num_eval"] == 80 and row["level"] == "video"
        assert row["train_data"] == config.data.train_pattern
        assert row["eval_data"] == config.data.eval_pattern
        assert {"gap", "map", "hit_at_1", "perr", "params", "fit_seconds"} <= set(row)
    assert lines[0].startswith("100 train, 80 eval videos")
    assert lines[1].startswith("decision_tree") and "GAP" in lines[1]


def test_unknown_models_are_errors_before_reading_data(tmp_path):
    with pytest.raises(ValueError, match="unknown baseline model 'svm'; choose from linear_svm"):
        baselines.make_model("svm")
    config = _config(str(tmp_path / "missing-*"), str(tmp_path / "missing-*"))
    with pytest.raises(ValueError, match=r"unknown baseline model\(s\) \['svm'\]"):
        baselines.run_study(config, ["logistic_regression", "svm"])
    with pytest.raises(ValueError, match="unknown baseline model"):
        baselines.run_baseline("svm", [], [], "video", NUM_CLASSES)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vmjax.baselines", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_cli_help_and_unknown_model():
    done = _cli("--help")
    assert done.returncode in (0, 1) and not done.stderr, done.stderr  # absl's --help exits 1
    for flag in ("--config", "--models", "--max_train", "--out", "--n_jobs"):
        assert flag in done.stdout
    done = _cli("--config", "configs/yt8m.py:smoke", "--models", "linear_svm,svm")
    assert done.returncode != 0
    assert "unknown ['svm']" in done.stderr and "logistic_regression" in done.stderr
