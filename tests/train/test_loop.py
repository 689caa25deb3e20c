"""Smoke training runs on CPU: outputs, automatic resume, and files written by TensorFlow."""

import importlib.util
import json
import logging
import os
import pathlib

import numpy as np
import pytest

from vmjax.train import evaluate, inputs, loop

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "data" / "fixtures"


def get_config(arg="smoke"):
    spec = importlib.util.spec_from_file_location("yt8m_config", ROOT / "configs" / "yt8m.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# The embedded dataset of `_small` runs has 100 classes, not the 2018 vocabulary's 3,862: what
# these tests check does not depend on the vocabulary, and a 3,862-class MoE head (22M
# parameters) took most of each run's time.
NUM_CLASSES = 100


def _data_cache(tmp_path) -> str:
    """The embedded dataset's cache shared by the tests of one pytest process (a worker).

    Every `_small` run reads the same generated data, so it is generated once per process
    instead of once per test; `tmp_path`'s parent is the process's session directory.
    """
    return str(tmp_path.parent / "shared-embedded-data")


def _small(tmp_path, arg="smoke", **overrides):
    c = get_config(arg)
    c.data.cache_dir = _data_cache(tmp_path)
    c.data.synthetic.num_train = 96
    c.data.synthetic.num_validate = 40
    c.data.num_classes = NUM_CLASSES
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_train_steps = 6
    c.eval_every = 3
    c.checkpoint_every = 3
    c.log_every = 2
    c.model.name = "logistic" if c.data.level == "video" else c.model.name
    return override(c, overrides)


def override(config, overrides: dict):
    """Sets dotted config fields ('data.max_frames': 8) in place; returns the config."""
    for k, v in overrides.items():
        target = config
        *parents, leaf = k.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = v
    return config


def _metrics(workdir):
    return [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.parametrize("arg", ["smoke", "frame,smoke"])
def test_smoke_run_writes_metrics_checkpoints_config_and_events(tmp_path, arg):
    workdir = str(tmp_path / "w")
    result = loop.train_and_evaluate(
        _small(tmp_path, arg, **{"model.name": "moe"} if arg == "smoke" else {}), workdir
    )
    lines = _metrics(workdir)
    assert [m["step"] for m in lines] == [3, 6]
    kinds = {f"gap_{k}" for k in ("visual", "audio", "cross_modal", "temporal", "text")}
    assert set(lines[0]) == {"step", "gap", "map", "hit_at_1", "perr", "loss"} | kinds
    assert all(0 <= m["gap"] <= 1 and m["loss"] > 0 for m in lines)
    assert result["step"] == 6 and result["num_videos"] == 40
    assert 0.5 < result["oracle_gap"] < 1
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["config"]["num_train_steps"] == 6
    assert config["resolved"]["embedded_data_dir"].startswith(_data_cache(tmp_path))
    events = os.listdir(os.path.join(workdir, "tensorboard"))
    assert any(e.startswith("events.out.tfevents") for e in events)


def test_running_again_resumes_instead_of_starting_over(tmp_path, caplog):
    workdir = str(tmp_path / "w")
    loop.train_and_evaluate(_small(tmp_path), workdir)
    before = _metrics(workdir)
    caplog.set_level(logging.INFO)
    again = loop.train_and_evaluate(_small(tmp_path), workdir)
    assert "Resuming from checkpoint" in caplog.text
    assert _metrics(workdir) == before  # nothing retrained
    assert again == before[-1]
    longer = loop.train_and_evaluate(_small(tmp_path, num_train_steps=9), workdir)
    assert [m["step"] for m in _metrics(workdir)] == [3, 6, 9]
    assert longer["step"] == 9


@pytest.mark.parametrize(
    "level,name,num_classes",
    [
        ("video", "video.tfrecord", 3862),
        ("frame", "frame.tfrecord", 3862),
        ("frame", "frame_2017.tfrecord", 4716),  # the 2017 vocabulary
    ],
)
def test_trains_on_files_written_by_tensorflow(tmp_path, level, name, num_classes):
    """Fixtures written with tf.io.TFRecordWriter (see tests/data/fixtures/make_tf_fixtures.py)."""
    pattern = str(FIXTURES / name)
    c = _small(
        tmp_path,
        "smoke" if level == "video" else "frame,smoke",
        **{
            "data.train_pattern": pattern,
            "data.eval_pattern": pattern,
            "data.num_classes": num_classes,
            # The files are what is tested: the level's logistic model, not its 22M-param MoE.
            "model.name": "logistic" if level == "video" else "frame_logistic",
            "batch_size": 2,
            "eval_batch_size": 2,
            "num_train_steps": 2,
            "eval_every": 2,
            "checkpoint_every": 2,
        },
    )
    result = loop.train_and_evaluate(c, str(tmp_path / "w"))
    expected = json.load(open(FIXTURES / "expected.json"))["files"][name]
    assert result["num_videos"] == len(expected)
    assert "oracle_gap" not in result
    assert result["loss"] > 0


def test_bad_data_config_fails_fast(tmp_path):
    with pytest.raises(ValueError, match="set both"):
        loop.train_and_evaluate(
            _small(tmp_path, **{"data.train_pattern": "x*"}), str(tmp_path / "w")
        )
    with pytest.raises(FileNotFoundError, match="matched no files"):
        loop.train_and_evaluate(
            _small(
                tmp_path,
                **{
                    "data.train_pattern": str(tmp_path / "none*"),
                    "data.eval_pattern": str(tmp_path / "none*"),
                },
            ),
            str(tmp_path / "w"),
        )


def test_evaluate_per_class_group_gap_matches_metrics_on_the_columns(tmp_path):
    from vmjax import metrics
    from vmjax.data import synthetic

    c = _small(tmp_path)
    _, eval_files, data_dir = inputs.resolve_data(c)
    groups = synthetic.class_kinds(data_dir)
    rng = np.random.default_rng(0)
    seen = []

    def eval_fn(state, batch):  # a stand-in model: noisy labels as scores
        scores = batch["labels"] * 0.5 + rng.random(batch["labels"].shape) * 0.6
        seen.append((scores[batch["weights"] > 0], batch["labels"][batch["weights"] > 0]))
        return {
            "scores": scores,
            "labels": batch["labels"],
            "weights": batch["weights"],
            "loss_sum": 0.0,
            "count": batch["weights"].sum(),
        }

    result = evaluate.evaluate(eval_fn, None, eval_files, c, groups)
    scores = np.concatenate([s for s, _ in seen])
    labels = np.concatenate([y for _, y in seen])
    assert len(scores) == 40
    assert result["gap"] == pytest.approx(metrics.gap(scores, labels))
    for kind, cols in groups.items():
        want = metrics.gap(scores[:, cols], labels[:, cols])
        assert result[f"gap_{kind}"] == pytest.approx(want)


def test_nonfinite_loss_stops_with_the_step_and_last_good_checkpoint(tmp_path):
    # A learning rate of 1e38 makes the logits overflow to +-inf (and NaN) after one step.
    c = _small(tmp_path, **{"optimizer.learning_rate": 1e38, "optimizer.warmup_steps": 0})
    with pytest.raises(
        FloatingPointError, match=r"(NaN/Inf|diverged) at step \d+; last good checkpoint"
    ):
        loop.train_and_evaluate(c, str(tmp_path / "w"))


def test_bad_records_stop_the_run_or_are_skipped_on_request(tmp_path, caplog):
    from vmjax.data import tfrecord, yt8m

    rng = np.random.default_rng(0)
    good = [
        yt8m.encode_video_example(f"v{i}", [i], rng.normal(size=1024), rng.normal(size=128))
        for i in range(8)
    ]
    bad = yt8m.encode_video_example("bad", [9999], np.zeros(1024), np.zeros(128))
    path = str(tmp_path / "data.tfrecord")
    tfrecord.write_records(path, good[:3] + [bad] + good[3:])
    overrides = {
        "data.train_pattern": path,
        "data.eval_pattern": path,
        "batch_size": 4,
        "eval_batch_size": 4,
        "num_train_steps": 2,
        "eval_every": 2,
        "checkpoint_every": 2,
    }
    with pytest.raises(tfrecord.RecordError, match=r"data.tfrecord: record 3 .*'labels'"):
        loop.train_and_evaluate(_small(tmp_path, **overrides), str(tmp_path / "w1"))
    caplog.set_level(logging.WARNING)
    c = _small(tmp_path, **overrides, **{"data.on_error": "skip"})
    result = loop.train_and_evaluate(c, str(tmp_path / "w2"))
    assert result["num_videos"] == 8  # the bad one left out of evaluation too
    assert "skipped 1 bad record(s) in all" in caplog.text
    with pytest.raises(ValueError, match="on_error"):
        loop.train_and_evaluate(
            _small(tmp_path, **overrides, **{"data.on_error": "ignore"}), str(tmp_path / "w3")
        )


def test_trains_on_an_array_record_dataset_converted_from_tfrecords(tmp_path):
    from vmjax.data import convert, synthetic

    c = _small(tmp_path, "frame,smoke")
    _, _, data_dir = inputs.resolve_data(c)
    train, validate = synthetic.patterns(data_dir, "frame")
    dst = str(tmp_path / "ar")
    convert.convert(train, dst, split="train", progress=False)
    convert.convert(validate, dst, split="validate", progress=False)
    overrides = {
        "data.format": "array_record",
        "data.train_pattern": f"{dst}:train",
        "data.eval_pattern": f"{dst}:validate",
    }
    workdir = str(tmp_path / "w")
    result = loop.train_and_evaluate(_small(tmp_path, "frame,smoke", **overrides), workdir)
    assert result["step"] == 6 and result["num_videos"] == 40 and result["loss"] > 0
    longer = _small(tmp_path, "frame,smoke", num_train_steps=9, **overrides)
    assert loop.train_and_evaluate(longer, workdir)["step"] == 9  # resumes the indexed iterator
    with pytest.raises(ValueError, match="DIR:SPLIT"):
        loop.train_and_evaluate(
            _small(tmp_path, **{**overrides, "data.train_pattern": dst}), str(tmp_path / "x")
        )
