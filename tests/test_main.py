"""The command lines: --help, config presets and overrides, resolved config in the workdir."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.train.test_loop import NUM_CLASSES

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The embedded dataset of both training runs below: one spec, so the second run finds it
# generated in the module's cache (`data_cache`) instead of generating it again.
TINY_DATA = (
    "--config.data.synthetic.num_train=64",
    "--config.data.synthetic.num_validate=24",
    "--config.data.synthetic.max_frames=8",
    f"--config.data.num_classes={NUM_CLASSES}",  # not 3,862: far cheaper, and enough here
)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _run(*args, timeout=600, env=None):
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_main_help_explains_every_flag():
    out = _run("-m", "vmjax.main", "--help")
    assert out.returncode in (0, 1), out.stderr  # absl's --help exits 1 by convention
    text = out.stdout + out.stderr
    for flag in ("--config", "--workdir", "--mode"):
        assert flag in text
    assert "--config.FIELD=VALUE" in text and "resumes" in text


def test_main_requires_config_and_workdir():
    out = _run("-m", "vmjax.main", "--config", "configs/yt8m.py")
    assert out.returncode != 0
    assert "workdir" in out.stderr


def test_synthetic_help():
    out = _run("-m", "vmjax.data.synthetic", "--help")
    assert out.returncode in (0, 1), out.stderr
    assert "--out" in out.stdout + out.stderr and "--num_train" in out.stdout + out.stderr


def test_smoke_preset_with_overrides_end_to_end(tmp_path, data_cache):
    workdir = tmp_path / "w"
    out = _run(
        "-m",
        "vmjax.main",
        "--config",
        "configs/yt8m.py:smoke",
        "--workdir",
        str(workdir),
        f"--config.data.cache_dir={data_cache}",
        "--config.num_train_steps=4",
        "--config.eval_every=4",
        "--config.checkpoint_every=4",
        "--config.model.name=logistic",
        *TINY_DATA,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.load(open(workdir / "config.json"))["config"]
    assert config["num_train_steps"] == 4 and config["model"]["name"] == "logistic"
    assert "Final evaluation: step 4, gap" in out.stdout
    assert os.path.isdir(workdir / "checkpoints" / "4")
    # orbax's per-save INFO chatter stays off the console.
    assert "orbax" not in out.stderr


def test_unknown_preset_is_a_clear_error(tmp_path):
    out = _run("-m", "vmjax.main", "--config", "configs/yt8m.py:tiny", "--workdir", str(tmp_path))
    assert out.returncode != 0
    assert "unknown preset" in out.stderr


def test_distributed_flags_go_together(tmp_path):
    out = _run(
        "-m",
        "vmjax.main",
        "--config",
        "configs/yt8m.py:smoke",
        "--workdir",
        str(tmp_path),
        "--num_processes=2",
    )
    assert out.returncode != 0
    assert "go together" in out.stderr


def test_cluster_environment_detection(monkeypatch):
    from vmjax import distributed

    for key in ("SLURM_NTASKS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.cluster_environment() is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: a plain single-process job
    assert distributed.cluster_environment() is None
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.cluster_environment() == "SLURM"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
    assert distributed.cluster_environment() == "Cloud TPU slice"


def test_retrieval_config_trains_then_retrieve_prints_ranked_videos_with_classes(
    tmp_path, data_cache
):
    workdir = tmp_path / "r"
    tiny = [
        f"--config.data.cache_dir={data_cache}",
        *TINY_DATA,
        "--config.data.max_frames=8",
        "--config.data.shuffle_buffer=16",
        "--config.data.workers=0",  # a 2-step run: reading in the process starts sooner
        "--config.batch_size=16",
        "--config.eval_batch_size=8",
        "--config.num_train_steps=2",
        "--config.eval_every=2",
        "--config.checkpoint_every=2",
        "--config.model.embed_dim=8",
        "--config.model.hidden_size=8",
        "--config.model.text_embed_dim=8",
        "--config.model.vivit.hidden_size=8",
        "--config.model.vivit.mlp_dim=8",
    ]
    common = ["-m", "vmjax.main", "--config", "configs/retrieval.py:smoke"]
    # --mode retrieve embeds the videos and the query with the steps training compiled: JAX's
    # persistent compilation cache hands it those executables instead of compiling them again.
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_compilation_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    out = _run(*common, "--workdir", str(workdir), *tiny, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Final retrieval evaluation (step 2, 24 validate videos)" in out.stdout
    assert "R@10" in out.stdout and "chance 0.417" in out.stdout  # 10 / 24
    query = "a video of music qwzx"
    out = _run(
        *common,
        "--workdir",
        str(workdir),
        *tiny,
        "--mode",
        "retrieve",
        "--query",
        query,
        "--top_k",
        "5",
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "not in the text tower's vocabulary (read as [UNK]): qwzx" in out.stdout
    lines = out.stdout.splitlines()
    header = lines.index(f"Top 5 of 24 validate videos for {query!r} (step 2, cosine):")
    hits = lines[header + 1 :]
    assert len(hits) == 5
    with open(workdir / "index.json") as f:
        assert json.load(f) == {"step": 2, "split": "validate"}
    from vmjax.search import Index

    index = Index.load(workdir / "index.npz")
    classes = dict(zip(index.ids.tolist(), index.classes.tolist(), strict=True))
    scores = []
    for rank, line in enumerate(hits, 1):
        number, video_id, score, names = line.split(maxsplit=3) + [""] * (4 - len(line.split()))
        assert number == f"{rank}." and video_id in classes
        assert names == classes[video_id]  # the video's class names, from its labels
        scores.append(float(score))
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    out = _run(
        "-m",
        "vmjax.main",
        "--config",
        "configs/yt8m.py:smoke",
        "--workdir",
        str(workdir),
        "--mode",
        "retrieve",
        "--query",
        "x",
    )
    assert out.returncode != 0 and "needs a retrieval config" in out.stderr
