"""SIGKILL a trainer in a subprocess while it saves a checkpoint, then run it again to the end.

Shared by the trainers' tests (not a test module): the killed-and-resumed run must end with the
same parameters and metrics as the uninterrupted one, bit for bit.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SCRIPT = """
import json, sys
import ml_collections
from absl import logging
from vmjax.train import {trainer}
logging.set_verbosity(logging.INFO)
config = ml_collections.ConfigDict(json.load(open(sys.argv[1])))
{trainer}.train_and_evaluate(config, sys.argv[2])
"""


def _start(trainer: str, config_path: str, workdir: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _SCRIPT.format(trainer=trainer), config_path, workdir],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_mid_save_then_resume(trainer: str, config, workdir: str, step: int) -> str:
    """Runs `trainer` on `config` in `workdir`, SIGKILLs it once checkpoint `step`'s save has
    begun (orbax's temporary directory or the renamed one, before or after its manifest), then
    runs it again to the end; returns the second run's stderr."""
    config_path = workdir + ".json"
    with open(config_path, "w") as f:
        f.write(config.to_json())
    proc = _start(trainer, config_path, workdir)
    saving = os.path.join(workdir, "checkpoints", f"{step}*")
    deadline = time.monotonic() + 300
    while not glob.glob(saving):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "checkpoint never started"
        time.sleep(0.005)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    again = _start(trainer, config_path, workdir)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    return err


def assert_same_end(workdir: str, reference: str, steps: int) -> None:
    """Final parameters (bitwise) and final metrics line equal the uninterrupted run's."""

    def params(w):
        path = os.path.join(w, "checkpoints", str(steps), "state")
        return ocp.StandardCheckpointer().restore(path)["params"]

    import jax

    got, want = params(workdir), params(reference)
    same = jax.tree.map(np.array_equal, got, want)
    assert all(jax.tree.leaves(same)), "resumed parameters differ from the uninterrupted run"

    def last(w):
        lines = [json.loads(x) for x in open(os.path.join(w, "metrics.jsonl"))]
        steps_logged = [m["step"] for m in lines]
        assert len(steps_logged) == len(set(steps_logged)), steps_logged  # each step once
        return lines[-1]

    assert last(workdir) == last(reference)
