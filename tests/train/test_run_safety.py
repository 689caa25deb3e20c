"""No run is ever lost: config changes refused before writing, damaged checkpoints skipped,
empty data and SIGTERM end the run, divergence stops it, metrics hold each step once."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.train.test_loop import _metrics, _small
from vmjax import run as run_lib
from vmjax.errors import RunDirectoryError
from vmjax.train import checkpoint, inference, loop


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-step run with checkpoints at 3 and 6, and its final metrics."""
    tmp = tmp_path_factory.mktemp("trained")
    workdir = str(tmp / "w")
    loop.train_and_evaluate(_small(tmp), workdir)
    return tmp, workdir


def _copy(workdir: str, to) -> str:
    import shutil

    shutil.copytree(workdir, to)
    return str(to)


def test_a_model_change_is_refused_and_the_run_still_evaluates(trained, tmp_path):
    tmp, source = trained
    workdir = _copy(source, tmp_path / "w")
    stored = open(os.path.join(workdir, "config.json"), "rb").read()
    changed = _small(tmp, batch_size=32, **{"model.num_mixtures": 4})
    with pytest.raises(RunDirectoryError) as e:
        loop.train_and_evaluate(changed, workdir)
    assert "batch_size: 16 -> 32" in str(e.value) and "model.num_mixtures" in str(e.value)
    assert open(os.path.join(workdir, "config.json"), "rb").read() == stored
    result = inference.evaluate_checkpoint(run_lib.Run.open(workdir).config, workdir)
    assert result["step"] == 6 and result["num_videos"] == 40


def test_a_bit_flipped_latest_checkpoint_is_skipped_and_metrics_hold_each_step_once(
    trained, tmp_path, caplog
):
    tmp, source = trained
    before = _metrics(source)
    workdir = _copy(source, tmp_path / "w")
    arrays = [
        os.path.join(r, n)
        for r, _, ns in os.walk(os.path.join(workdir, "checkpoints", "6", "state"))
        for n in ns
    ]
    path = max(arrays, key=os.path.getsize)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 3] ^= 1
    open(path, "wb").write(bytes(data))
    caplog.set_level(logging.INFO)
    result = loop.train_and_evaluate(_small(tmp), workdir)
    assert "fails its checksum" in caplog.text and "Resuming from checkpoint" in caplog.text
    assert f"{workdir}/checkpoints/3" in caplog.text
    after = _metrics(workdir)
    assert [m["step"] for m in after] == [3, 6]  # step 6 retrained and logged once
    assert after == before  # the same numbers: resumption is exact
    assert result["gap"] == before[-1]["gap"]


def test_keep_checkpoints_zero_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(RunDirectoryError, match="keep_checkpoints=0"):
        loop.train_and_evaluate(_small(tmp_path, keep_checkpoints=0), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_a_diverging_loss_stops_the_run_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    c = _small(
        tmp_path,
        num_train_steps=12,
        log_every=3,
        **{"optimizer.learning_rate": 1e6, "optimizer.warmup_steps": 0},
    )
    workdir = str(tmp_path / "w")
    with pytest.raises(
        FloatingPointError, match=r"(diverged|NaN/Inf) at step \d+.*last good checkpoint"
    ):
        loop.train_and_evaluate(c, workdir)
    history = [json.loads(x) for x in open(os.path.join(workdir, "history.jsonl"))]
    assert [h["event"] for h in history][:2] == ["create", "first_train_loss"]
    for step in checkpoint.complete_steps(os.path.join(workdir, "checkpoints")):
        assert checkpoint.verify(os.path.join(workdir, "checkpoints", str(step))) is None


def test_divergence_guard_uses_the_first_steps_loss_as_reference(tmp_path):
    from vmjax.train import guards

    class FakeCkpt:
        directory = "/x"

        def wait(self):
            pass

        def latest_step(self):
            return 4

    run = run_lib.Run.for_training(_small(tmp_path), str(tmp_path / "w"))
    guard = guards.DivergenceGuard("stop", 10.0, run, FakeCkpt())
    guard.first_step(2.0)
    guard.check(5, 19.9)  # under 10 x 2.0: fine
    with pytest.raises(FloatingPointError, match="diverged at step 6: 20.1 > .* step 4 in /x"):
        guard.check(6, 20.1)
    # A resumed run compares against the same recorded first loss.
    assert guards.DivergenceGuard("stop", 10.0, run, FakeCkpt()).reference == 2.0
    guards.DivergenceGuard("off", 10.0, run, FakeCkpt()).check(7, 1e30)
    run.close()


_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from tests.train.test_loop import _small
from vmjax.train import loop
c = _small(__import__("pathlib").Path({tmp!r}), **{overrides!r})
{setup}
loop.train_and_evaluate(c, {workdir!r})
"""


def _run_script(tmp_path, overrides: dict, setup: str = "", **popen) -> subprocess.Popen:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = _SCRIPT.format(
        root=root,
        tmp=str(tmp_path),
        overrides=overrides,
        setup=textwrap.dedent(setup),
        workdir=str(tmp_path / "w"),
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@pytest.mark.parametrize("skip", [False, True])
def test_train_files_without_a_readable_record_end_the_run_naming_them(tmp_path, skip):
    empty = tmp_path / "empty.tfrecord"
    if skip:  # every record fails its CRC: skip mode skips them all
        from vmjax.data import tfrecord

        tfrecord.write_records(str(empty), [b"x" * 50] * 3)
        data = bytearray(empty.read_bytes())
        for i in range(3):
            data[12 + i * 66 + 5] ^= 0xFF  # inside each payload: its data CRC fails
        empty.write_bytes(bytes(data))
    else:
        empty.write_bytes(b"")
    overrides = {
        "data.train_pattern": str(empty),
        "data.eval_pattern": str(empty),
        "batch_size": 2,
        "eval_batch_size": 2,
        "data.on_error": "skip" if skip else "raise",
    }
    start = time.monotonic()
    proc = _run_script(tmp_path, overrides)
    _, err = proc.communicate(timeout=120)
    assert time.monotonic() - start < 60
    assert proc.returncode != 0
    assert "hold no readable record" in err and str(empty) in err
    if skip:
        assert "skipped 3 bad record(s)" in err


def test_sigterm_stops_a_run_whose_input_pipeline_waits_forever(tmp_path):
    ready = tmp_path / "ready"
    setup = f"""
    import pathlib, threading
    from vmjax.train import loop as loop_module

    def stalled(*args, **kwargs):
        class Stalled:
            def __next__(self):
                pathlib.Path({str(ready)!r}).touch()
                threading.Event().wait()  # a pipeline that never delivers
            def get_state(self):
                return {{}}
        return Stalled()

    loop_module.train_stream = stalled
    """
    proc = _run_script(tmp_path, {}, setup)
    deadline = time.monotonic() + 240
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    err = out + err
    assert proc.returncode == 0
    assert "Stopped (SIGTERM) while waiting for data after step 0" in err
    assert "none saved yet" in err
