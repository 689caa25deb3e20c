"""launch/local.sh 2: two CPU processes joined by jax.distributed train together.

The data is written here so that each train file holds its own classes: file 0 only classes
0-4, file 1 only classes 5-9. Each process reads one file, so the classes in its batch log show
which half of the data it saw.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vmjax.data import tfrecord, yt8m

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_CLASSES = 10


def _write(path, classes, n, seed):
    rng = np.random.default_rng(seed)
    payloads = []
    for i in range(n):
        labels = rng.choice(classes, size=rng.integers(1, 3), replace=False)
        rgb = rng.normal(0, 1, yt8m.RGB_DIM).astype(np.float32)
        audio = rng.normal(0, 1, yt8m.AUDIO_DIM).astype(np.float32)
        payloads.append(yt8m.encode_video_example(f"{path.stem}{i}", labels, rgb, audio))
    tfrecord.write_records(str(path), payloads)


def _data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "train-0.tfrecord", np.arange(0, 5), 64, 0)
    _write(data / "train-1.tfrecord", np.arange(5, 10), 64, 1)
    _write(data / "eval-0.tfrecord", np.arange(0, 10), 20, 2)
    _write(data / "eval-1.tfrecord", np.arange(0, 10), 12, 3)  # uneven eval shards
    return data


def _command(data, workdir, *overrides):
    return [
        "bash",
        "launch/local.sh",
        "2",
        "--",
        "--config",
        "configs/yt8m.py:smoke",
        "--workdir",
        str(workdir),
        f"--config.data.train_pattern={data / 'train-*.tfrecord'}",
        f"--config.data.eval_pattern={data / 'eval-*.tfrecord'}",
        f"--config.data.num_classes={NUM_CLASSES}",
        "--config.model.name=logistic",
        "--config.batch_size=8",
        "--config.eval_batch_size=8",
        *overrides,
    ]


def _env(tmp_path):
    return dict(os.environ, PYTHON=sys.executable, LOG_DIR=str(tmp_path))


@pytest.mark.parametrize("parallelism", ["mesh", "pmap"])
def test_two_processes_agree_on_parameters_and_read_disjoint_halves(tmp_path, parallelism):
    workdir = tmp_path / "w"
    proc = subprocess.run(
        _command(
            _data(tmp_path),
            workdir,
            f"--config.parallelism={parallelism}",
            "--config.num_train_steps=6",
            "--config.eval_every=6",
            "--config.checkpoint_every=3",
            "--config.log_batches=True",
        ),
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = {i: (tmp_path / f"process_{i}.log").read_text() for i in range(2)}
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[1][-3000:]

    seen, params = {}, {}
    for i in range(2):
        lines = [json.loads(x) for x in (workdir / "batches" / f"process_{i}.jsonl").open()]
        steps = [d["step"] for d in lines if "sha1" in d]
        assert steps == [1, 2, 3, 4, 5, 6]
        seen[i] = set().union(*(d["classes"] for d in lines if "sha1" in d))
        params[i] = [d["params_sha1"] for d in lines if "params_sha1" in d]
    assert seen[0] <= set(range(5)) and seen[1] <= set(range(5, 10))  # disjoint halves
    assert seen[0] and seen[1]
    assert params[0] == params[1] and len(params[0]) == 1  # the replicas agree

    # Process 0 alone logs and evaluates all 32 eval videos (20 + 12, gathered).
    assert "Final evaluation: step 6" in logs[0] and "Final evaluation" not in logs[1]
    metrics = [json.loads(x) for x in (workdir / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics] == [6]
    assert "32 videos" in logs[0]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    data_files = sorted(os.listdir(workdir / "checkpoints" / "6" / "data"))
    data_files = [f for f in data_files if f.endswith(".json")]
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]


def test_sigterm_to_every_process_saves_one_checkpoint_at_a_common_step(tmp_path):
    """JAX's preemption service picks a step all processes reach; each saves there and exits 0."""
    workdir = tmp_path / "w"
    proc = subprocess.Popen(
        _command(
            _data(tmp_path),
            workdir,
            "--config.num_train_steps=100000",
            "--config.eval_every=100000",
            "--config.checkpoint_every=20",
        ),
        cwd=ROOT,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (workdir / "checkpoints" / "20").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    pids = subprocess.run(
        ["pgrep", "-f", f"vmjax.main .*{workdir}"], capture_output=True, text=True
    ).stdout.split()
    assert len(pids) == 2
    for pid in pids:  # as SLURM or a TPU maintenance event signals every task
        os.kill(int(pid), signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    log0 = (tmp_path / "process_0.log").read_text()
    assert "Preempted (SIGTERM) at step" in log0
    step = int(log0.split("Preempted (SIGTERM) at step ")[1].split(":")[0])
    assert step >= 20 and step < 100000
    data_files = os.listdir(workdir / "checkpoints" / str(step) / "data")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data_files)
