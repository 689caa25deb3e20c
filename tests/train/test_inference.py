"""--mode eval and --mode predict on a checkpoint of a tiny run."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.train.test_loop import _metrics, _small
from vmjax.data import tfrecord, yt8m
from vmjax.errors import RunDirectoryError
from vmjax.train import inference, inputs, loop

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inference")
    config = _small(tmp, **{"model.name": "moe"})
    workdir = str(tmp / "w")
    loop.train_and_evaluate(config, workdir)
    return config, workdir


def _eval_ids(config):
    _, files, _ = inputs.resolve_data(config)
    return [
        yt8m.decode_video_example(p)["id"] for f in files for _, _, p in tfrecord.read_records(f)
    ]


def test_eval_mode_reproduces_the_logged_metrics_and_writes_per_class_ap(run):
    config, workdir = run
    logged = _metrics(workdir)
    result = inference.evaluate_checkpoint(config, workdir)
    assert result["step"] == 6
    for key in ("gap", "map", "hit_at_1", "perr", "gap_visual"):
        assert result[key] == pytest.approx(logged[-1][key], abs=1e-6)
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert json.load(open(os.path.join(workdir, "eval", "step_6.json")))["gap"] == result["gap"]
    rows = list(csv.DictReader(open(os.path.join(workdir, "eval", "per_class_ap_step_6.csv"))))
    assert np.mean([float(r["AP"]) for r in rows]) == pytest.approx(result["map"], abs=1e-5)
    assert all(int(r["Positives"]) > 0 for r in rows) and rows[0]["Name"]
    earlier = inference.evaluate_checkpoint(config, workdir, step=3)
    assert earlier["step"] == 3 and earlier["gap"] == pytest.approx(logged[0]["gap"], abs=1e-6)
    with pytest.raises(RunDirectoryError, match=r"no checkpoint for step 4; it has steps \[3, 6\]"):
        inference.evaluate_checkpoint(config, workdir, step=4)


def test_predict_writes_the_kaggle_csv_in_eval_order(run, tmp_path):
    config, workdir = run
    out = str(tmp_path / "sub.csv")
    path = inference.predict(config, workdir, out=out, top_k_jsonl=True)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["VideoId", "LabelConfidencePairs"]
    assert [r[0] for r in rows[1:]] == _eval_ids(config)
    for _, pairs in rows[1:]:
        values = pairs.split()
        labels, scores = [int(x) for x in values[0::2]], [float(x) for x in values[1::2]]
        assert len(labels) == 20 == len(set(labels))
        assert scores == sorted(scores, reverse=True) and 0 <= min(scores) <= max(scores) <= 1
    lines = [json.loads(x) for x in open(str(tmp_path / "sub.jsonl"))]
    assert [x["id"] for x in lines] == [r[0] for r in rows[1:]]
    first = rows[1][1].split()
    assert [c["index"] for c in lines[0]["top"]] == [int(x) for x in first[0::2]]
    assert all(c["name"] for c in lines[0]["top"])


def test_predict_from_the_command_line(run, tmp_path):
    _, workdir = run
    config = json.load(open(os.path.join(workdir, "config.json")))["config"]
    out = tmp_path / "p.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmjax.main",
            "--config",
            "configs/yt8m.py:smoke",
            "--workdir",
            workdir,
            "--mode",
            "predict",
            f"--output={out}",
            f"--config.data.cache_dir={config['data']['cache_dir']}",
            "--config.data.synthetic.num_train=96",
            "--config.data.synthetic.num_validate=40",
            f"--config.data.num_classes={config['data']['num_classes']}",
            "--config.model.name=moe",
            "--config.batch_size=16",
            "--config.eval_batch_size=16",
            "--config.num_train_steps=6",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Predictions: {out}" in proc.stdout
    assert len(out.read_text().splitlines()) == 41
