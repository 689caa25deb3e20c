"""The command lines: --help, config presets and overrides, resolved config in the workdir."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, timeout=600):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
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


def test_smoke_preset_with_overrides_end_to_end(tmp_path):
    workdir = tmp_path / "w"
    out = _run(
        "-m",
        "vmjax.main",
        "--config",
        "configs/yt8m.py:smoke",
        "--workdir",
        str(workdir),
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.num_train_steps=4",
        "--config.eval_every=4",
        "--config.checkpoint_every=4",
        "--config.model.name=logistic",
        "--config.data.synthetic.num_train=64",
        "--config.data.synthetic.num_validate=16",
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
