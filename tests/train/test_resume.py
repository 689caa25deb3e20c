"""Preemption and exact resumption, through the command line in subprocesses.

An uninterrupted run of N steps is the reference. A second run is SIGKILLed midway and a third
gets SIGTERM midway; each is then resumed to N. Resumed runs must end with bitwise the same
parameters and optimizer state, and see the same batch at every step after the resume.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.train.test_loop import NUM_CLASSES
from vmjax.train.checkpoint import MANIFEST

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 40


def _command(workdir, cache):
    return [
        sys.executable,
        "-m",
        "vmjax.main",
        "--config",
        "configs/yt8m.py:frame,smoke",
        "--workdir",
        str(workdir),
        f"--config.data.cache_dir={cache}",
        "--config.data.synthetic.num_train=256",
        "--config.data.synthetic.num_validate=32",
        f"--config.data.num_classes={NUM_CLASSES}",  # the head's size is not what is tested
        "--config.batch_size=16",
        "--config.eval_batch_size=32",
        f"--config.num_train_steps={STEPS}",
        f"--config.eval_every={STEPS}",
        "--config.checkpoint_every=5",
        "--config.keep_checkpoints=2",
        "--config.log_batches=True",
        "--config.model.vivit.dropout=0.1",
        "--config.model.name=vivit",  # dropout: the per-step RNG must resume too
        "--config.model.vivit.hidden_size=32",
        "--config.model.vivit.num_layers=1",
        "--config.model.vivit.mlp_dim=64",
    ]


def _env(cache):
    """JAX's persistent compilation cache, shared by this module's runs (under `cache`).

    The reference run compiles; the interrupted and resumed runs load the same executables
    instead of compiling identical programs again (most of a run's time otherwise).
    """
    return dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(cache / "jax_compilation_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


def _start(workdir, cache):
    return subprocess.Popen(
        _command(workdir, cache),
        cwd=ROOT,
        env=_env(cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(workdir, cache):
    return subprocess.run(
        _command(workdir, cache),
        cwd=ROOT,
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _wait_for_checkpoint(proc, workdir, step, timeout=300):
    """Returns once checkpoint `step` is complete and verified (has its manifest)."""
    path = workdir / "checkpoints" / str(step) / MANIFEST
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def _final_state(workdir):
    path = workdir / "checkpoints" / str(STEPS) / "state"
    return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(path))


def _batches(workdir):
    """step -> batch hash; a resumed run's repeated steps appear twice and the last one wins."""
    lines = (workdir / "batches" / "process_0.jsonl").read_text().splitlines()
    return {d["step"]: d["sha1"] for d in map(json.loads, lines) if "sha1" in d}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    cache, workdir = root / "cache", root / "uninterrupted"
    proc = _start(workdir, cache)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return cache, _final_state(workdir), _batches(workdir)


def _assert_same_run(workdir, reference, first_resumed_step):
    _, want_state, want_batches = reference
    got_state = _final_state(workdir)
    same = jax.tree.map(np.array_equal, got_state, want_state)
    assert all(jax.tree.leaves(same)), "resumed parameters differ from the uninterrupted run"
    got = _batches(workdir)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert first_resumed_step < STEPS
    for step in range(first_resumed_step, STEPS + 1):
        assert got[step] == want_batches[step], f"batch of step {step} differs after resume"


def test_sigkill_midway_then_resume_matches_the_uninterrupted_run(reference, tmp_path):
    cache = reference[0]
    workdir = tmp_path / "killed"
    proc = _start(workdir, cache)
    _wait_for_checkpoint(proc, workdir, 10)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = [int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
    # A checkpoint is good once its manifest is written after orbax's save; a kill between the
    # two leaves the newest without one, and the run resumes from the one before.
    verified = [s for s in done if (workdir / "checkpoints" / str(s) / MANIFEST).exists()]
    resumed_from = max(verified)
    assert 10 <= resumed_from < STEPS  # killed midway

    again = _run(workdir, cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from checkpoint {workdir / 'checkpoints' / str(resumed_from)}" in again.stderr
    for unverified in set(done) - set(verified):
        assert f"Skipping checkpoint {workdir / 'checkpoints' / str(unverified)}" in again.stderr
    _assert_same_run(workdir, reference, resumed_from + 1)


def test_sigterm_saves_exits_cleanly_and_resumes_exactly(reference, tmp_path):
    cache = reference[0]
    workdir = tmp_path / "preempted"
    proc = _start(workdir, cache)
    _wait_for_checkpoint(proc, workdir, 10)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    text = out + err
    assert "Preempted (SIGTERM) at step" in text
    stopped = int(text.split("Preempted (SIGTERM) at step ")[1].split(":")[0])
    assert 10 <= stopped < STEPS
    assert (workdir / "checkpoints" / str(stopped) / "state").is_dir()

    again = _run(workdir, cache)
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_same_run(workdir, reference, stopped + 1)
