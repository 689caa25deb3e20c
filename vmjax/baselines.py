"""Classic scikit-learn baselines on video-level features, scored with vmjax.metrics.

    python -m vmjax.baselines --config configs/yt8m.py:smoke
    python -m vmjax.baselines --config configs/yt8m.py --max_train 2000 \\
        --models linear_svm,logistic_regression --out baselines.jsonl

Each video is one 1152-d vector: mean rgb (1024) then mean audio (128), dequantized (frame-level
records are averaged over all their frames). Every class is its own binary problem: the linear
models fit one classifier per class on standardized features; the trees fit one multi-output
tree (or forest) over all classes. Classes with no positive in the training videos are not fitted
and score 0. Metrics are those of training (GAP@20, mAP, Hit@1, PERR, and GAP per class kind on
the embedded data), so the rows line up with `vmjax.main` runs in one comparison table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import joblib
import ml_collections
import numpy as np
from absl import app, flags
from scipy.special import expit
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from vmjax import metrics
from vmjax.data import synthetic, tfrecord, yt8m

MODELS = ("linear_svm", "decision_tree", "random_forest", "logistic_regression")
FEATURE_DIM = yt8m.RGB_DIM + yt8m.AUDIO_DIM
# Fixed settings, recorded in every result row. LinearSVC's default C=1 is a near hard margin
# on standardized 1152-d features (separable with fewer videos than dimensions): liblinear hit
# its iteration limit and took 20x longer, and C=0.001 won a held-out split of the smoke
# training videos (GAP 0.584 vs 0.578 at 0.01, 0.536 at 0.0001). The trees keep leaves of a
# few videos: leaf class frequencies are the scores, and single-video leaves would make every
# score 0 or 1, a ranking of almost nothing but ties.
HYPERPARAMS: dict[str, dict[str, Any]] = {
    "linear_svm": {"C": 0.001, "max_iter": 1000},
    "decision_tree": {"min_samples_leaf": 5},
    "random_forest": {"n_estimators": 100, "max_features": "sqrt", "min_samples_leaf": 2},
    "logistic_regression": {"C": 1.0, "max_iter": 1000},
}


def _mean_frames(frames: np.ndarray, dim: int) -> np.ndarray:
    """Mean over frames of dequantized features; zeros for a video without frames.

    The same float32 arithmetic as the embedded data's video-level records, so both levels of
    a video give the same vector.
    """
    if not len(frames):
        return np.zeros(dim, np.float32)
    values = yt8m.dequantize(frames) if frames.dtype == np.uint8 else frames
    return values.mean(0, dtype=np.float32)


def load_features(
    files: Sequence[str], level: str, num_classes: int, max_videos: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Video vectors, labels and ids of YT8M records, read in file order.

    Args:
      level: 'video' (mean_rgb/mean_audio Examples) or 'frame' (SequenceExamples, averaged over
        all their frames).
      max_videos: stop after this many videos (the first ones of the first files).

    Returns:
      x: float32 [n, 1152], mean rgb then mean audio; y: uint8 [n, num_classes]; ids: str [n].
    """
    if level not in synthetic.LEVELS:
        raise ValueError(f"level must be one of {synthetic.LEVELS}, got {level!r}")
    if max_videos is not None and max_videos < 1:
        raise ValueError(f"max_videos must be at least 1, got {max_videos}")
    rows, labels, ids = [], [], []
    for path in files:
        if max_videos is not None and len(rows) >= max_videos:
            break
        for index, offset, payload in tfrecord.read_records(path):
            where = {"path": path, "index": index, "offset": offset, "num_classes": num_classes}
            if level == "video":
                ex = yt8m.decode_video_example(payload, **where)
                rgb, audio = ex["mean_rgb"], ex["mean_audio"]
            else:
                ex = yt8m.decode_frame_example(payload, **where, segments=False)
                rgb = _mean_frames(ex["rgb"], yt8m.RGB_DIM)
                audio = _mean_frames(ex["audio"], yt8m.AUDIO_DIM)
            rows.append(np.concatenate([rgb, audio]))
            labels.append(ex["labels"])
            ids.append(ex["id"])
            if max_videos is not None and len(rows) >= max_videos:
                break
    if not rows:
        raise ValueError(f"no videos in {len(files)} file(s): {list(files)[:3]}")
    y = np.zeros((len(rows), num_classes), np.uint8)
    for row, classes in enumerate(labels):
        y[row, classes] = 1
    return np.stack(rows).astype(np.float32, copy=False), y, np.array(ids)


def _fit_linear(estimator: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coef [d, k], intercept [k]) of one binary classifier per column of y [n, k]."""
    coef = np.zeros((x.shape[1], y.shape[1]))
    intercept = np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        fitted = clone(estimator).fit(x, y[:, j])
        coef[:, j], intercept[j] = fitted.coef_[0], fitted.intercept_[0]
    return coef, intercept


class _Classes:
    """Which classes a model fits: those with both a positive and a negative in training."""

    def __init__(self, y: np.ndarray):
        positives = y.sum(0, dtype=np.int64)
        self.fitted = np.flatnonzero((positives > 0) & (positives < len(y)))
        # A class positive in every training video (only in tiny subsets) scores 1 everywhere.
        self.constant = (positives == len(y)).astype(np.float32)
        if not len(self.fitted):
            raise ValueError("no class has both a positive and a negative training video")

    def scores(self, fitted_scores: np.ndarray) -> np.ndarray:
        out = np.tile(self.constant, (len(fitted_scores), 1))
        out[:, self.fitted] = fitted_scores
        return out


class LinearOneVsRest:
    """One binary linear classifier per class on standardized features; scores in (0, 1).

    The sigmoid of the decision value: logistic regression's own probability, and for the SVM a
    monotone squash that keeps each class's ranking.
    """

    params_kind = "weights"  # coefficients + intercepts of the fitted classes

    def __init__(self, estimator: Any, n_jobs: int | None = None):
        self.estimator = estimator
        self.n_jobs = n_jobs

    def fit(self, x: np.ndarray, y: np.ndarray) -> LinearOneVsRest:
        self.classes = _Classes(y)
        self.scaler = StandardScaler().fit(x)
        xs = self.scaler.transform(x)
        cols = self.classes.fitted
        workers = joblib.effective_n_jobs(self.n_jobs)
        # A few chunks per worker balance classes that converge slowly; each chunk ships the
        # features once (joblib memory-maps them for worker processes).
        chunks = [c for c in np.array_split(cols, min(len(cols), 4 * workers)) if len(c)]
        parts = joblib.Parallel(n_jobs=self.n_jobs)(
            joblib.delayed(_fit_linear)(self.estimator, xs, y[:, c]) for c in chunks
        )
        self.coef = np.zeros((x.shape[1], len(cols)))
        self.intercept = np.zeros(len(cols))
        done = 0
        for coef, intercept in parts:
            self.coef[:, done : done + len(intercept)] = coef
            self.intercept[done : done + len(intercept)] = intercept
            done += len(intercept)
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        """float32 [n, num_classes] scores."""
        logits = self.scaler.transform(x) @ self.coef + self.intercept
        return self.classes.scores(expit(logits))

    @property
    def num_params(self) -> int:
        return int(self.coef.size + self.intercept.size)


class MultiOutputTrees:
    """A multi-output sklearn tree or forest over the classes; scores are P(class | leaf)."""

    params_kind = "tree_nodes"  # nodes of all trees (internal and leaves)

    def __init__(self, estimator: Any):
        self.estimator = estimator

    def fit(self, x: np.ndarray, y: np.ndarray) -> MultiOutputTrees:
        self.classes = _Classes(y)
        # Only fitted classes are outputs: a tree stores a value per node and output, and
        # all-zero columns would only cost memory and time.
        self.model = clone(self.estimator).fit(x, y[:, self.classes.fitted])
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        """float32 [n, num_classes] scores."""
        proba = self.model.predict_proba(x)
        if len(self.classes.fitted) == 1:
            proba = [proba]
        # Every fitted output saw both labels, so each output's classes_ is [0, 1].
        return self.classes.scores(np.stack([p[:, 1] for p in proba], axis=1))

    @property
    def num_params(self) -> int:
        trees = getattr(self.model, "estimators_", [self.model])
        return int(sum(t.tree_.node_count for t in trees))


def make_model(
    name: str, *, seed: int = 0, n_jobs: int | None = None
) -> LinearOneVsRest | MultiOutputTrees:
    """An unfitted baseline by name (one of MODELS), with HYPERPARAMS[name]."""
    if name not in MODELS:
        raise ValueError(f"unknown baseline model {name!r}; choose from {', '.join(MODELS)}")
    hp = HYPERPARAMS[name]
    if name == "linear_svm":
        return LinearOneVsRest(LinearSVC(**hp, random_state=seed), n_jobs)
    if name == "logistic_regression":
        return LinearOneVsRest(LogisticRegression(**hp), n_jobs)
    if name == "decision_tree":
        return MultiOutputTrees(DecisionTreeClassifier(**hp, random_state=seed))
    return MultiOutputTrees(RandomForestClassifier(**hp, random_state=seed, n_jobs=n_jobs))


def score(
    scores: np.ndarray, labels: np.ndarray, class_groups: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """GAP@20, mAP, Hit@1, PERR, and `gap_<name>` over each group's class columns.

    The same evaluation as vmjax.train.loop.evaluate with class_groups.
    """
    evaluator = metrics.Evaluator(scores.shape[1])
    evaluator.update(scores, labels)
    result = evaluator.result()
    out = {key: float(result[key]) for key in ("gap", "map", "hit_at_1", "perr")}
    for name, cols in (class_groups or {}).items():
        if len(cols):
            group = metrics.Evaluator(len(cols))
            group.update(scores[:, cols], labels[:, cols])
            out[f"gap_{name}"] = float(group.result()["gap"])
    return out


def evaluate_baseline(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    *,
    class_groups: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    n_jobs: int | None = None,
) -> dict[str, Any]:
    """Fits baseline `name` on in-memory features and scores the eval videos (see run_baseline)."""
    model = make_model(name, seed=seed, n_jobs=n_jobs)
    start = time.perf_counter()
    model.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = model.scores(x_eval)
    predict_seconds = time.perf_counter() - start
    return {
        "model": name,
        **score(scores, y_eval, class_groups),
        "params": model.num_params,
        "params_kind": model.params_kind,
        "classes_fitted": len(model.classes.fitted),
        "num_train": len(x_train),
        "num_eval": len(x_eval),
        "fit_seconds": fit_seconds,
        "predict_examples_per_s": len(x_eval) / max(predict_seconds, 1e-9),
        "seed": seed,
        "hyperparams": dict(HYPERPARAMS[name]),
    }


def run_baseline(
    name: str,
    train_files: Sequence[str],
    eval_files: Sequence[str],
    level: str,
    num_classes: int,
    *,
    max_train: int | None = None,
    seed: int = 0,
    n_jobs: int | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Fits baseline `name` on the train records and scores the eval records.

    Args:
      name: one of MODELS.
      max_train: fit on the first this many training videos (in file order).
      n_jobs: parallel workers (joblib's convention: None is 1, -1 all cores).
      data_dir: an embedded dataset's directory; adds `gap_<kind>` per class kind.

    Returns:
      gap, map, hit_at_1, perr (and gap_<kind>); params: fitted weights + biases of the linear
      models, or tree nodes of the trees (params_kind says which); fit_seconds;
      predict_examples_per_s; model, classes_fitted, num_train, num_eval, seed, hyperparams.
    """
    make_model(name)  # an unknown name fails before any data is read
    x_train, y_train, _ = load_features(train_files, level, num_classes, max_train)
    x_eval, y_eval, _ = load_features(eval_files, level, num_classes)
    groups = synthetic.class_kinds(data_dir) if data_dir else None
    return evaluate_baseline(
        name, x_train, y_train, x_eval, y_eval, class_groups=groups, seed=seed, n_jobs=n_jobs
    )


def _summary(row: dict[str, Any]) -> str:
    params = f"{row['params']} {'nodes' if row['params_kind'] == 'tree_nodes' else 'params'}"
    return (
        f"{row['model']:<20} GAP {row['gap']:.4f}  mAP {row['map']:.4f}  "
        f"Hit@1 {row['hit_at_1']:.4f}  PERR {row['perr']:.4f}  {params}  "
        f"fit {row['fit_seconds']:.1f} s  predict {row['predict_examples_per_s']:.0f} videos/s"
    )


def run_study(
    config: ml_collections.ConfigDict,
    models: Sequence[str] = MODELS,
    *,
    max_train: int | None = None,
    out: str | None = None,
    n_jobs: int | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Runs each baseline on the config's data; one result row per model, appended to `out`.

    The data is what training would read (config.data: patterns, level, num_classes; the
    embedded dataset when no patterns are set), loaded once for all models.
    """
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown baseline model(s) {unknown}; choose from {', '.join(MODELS)}")
    if config.data.format != "tfrecord":
        raise ValueError(f"data.format={config.data.format!r}: baselines read TFRecords only")
    # Imported here: the training loop pulls in JAX, which only resolving the data needs.
    from vmjax.train import inputs

    train_files, eval_files, data_dir = inputs.resolve_data(config)
    d = config.data
    x_train, y_train, _ = load_features(train_files, d.level, d.num_classes, max_train)
    x_eval, y_eval, _ = load_features(eval_files, d.level, d.num_classes)
    groups = synthetic.class_kinds(data_dir) if data_dir else None
    patterns = (
        synthetic.patterns(data_dir, d.level) if data_dir else (d.train_pattern, d.eval_pattern)
    )
    log(f"{len(x_train)} train, {len(x_eval)} eval videos ({d.level} level, {patterns[0]})")
    rows = []
    for name in models:
        row = evaluate_baseline(
            name,
            x_train,
            y_train,
            x_eval,
            y_eval,
            class_groups=groups,
            seed=config.seed,
            n_jobs=n_jobs,
        )
        row.update(level=d.level, train_data=patterns[0], eval_data=patterns[1])
        log(_summary(row))
        if out:
            # Appended row by row, so the models finished so far survive a later failure.
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    models = [m for m in f.models if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        problem = f"unknown {unknown}" if unknown else "none given"
        raise app.UsageError(f"--models: {problem}; choose from {', '.join(MODELS)}")
    run_study(f.config, models, max_train=f.max_train, out=f.out, n_jobs=f.n_jobs)


if __name__ == "__main__":
    from vmjax import cli

    # Flags are defined only when run as a program: vmjax.main defines --config too.
    cli.define_config_flag()
    flags.DEFINE_list("models", list(MODELS), f"Comma-separated baselines, from {MODELS}.")
    flags.DEFINE_integer("max_train", None, "Fit on the first N training videos (default: all).")
    flags.DEFINE_string("out", None, "Append one JSON row per model to this JSON-lines file.")
    flags.DEFINE_integer(
        "n_jobs", -1, "Parallel workers for the per-class fits and forests (-1: all cores)."
    )
    flags.mark_flags_as_required(["config"])
    cli.run(main)
