"""The run directory's owner: config checks before writing, history, lock, metrics once per step."""

import fcntl
import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from tests.train.test_loop import override
from vmjax import run as run_lib
from vmjax.errors import RunDirectoryError


def _config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(
        {
            "seed": 0,
            "batch_size": 32,
            "num_train_steps": 10,
            "eval_every": 5,
            "optimizer": {"learning_rate": 0.01},
            "model": {"name": "moe", "num_mixtures": 2},
            "data": {"level": "video", "num_classes": 7, "train_pattern": "/d/train*"},
        }
    )
    return override(c, overrides)


def _create(workdir) -> bytes:
    with run_lib.training(_config(), str(workdir), {"train_files": 3}):
        pass
    return (workdir / "config.json").read_bytes()


def test_changes_lists_each_differing_dotted_key_with_both_values():
    old = run_lib.config_json(_config())
    new = run_lib.config_json(_config(**{"model.num_mixtures": 4, "num_train_steps": 20}))
    assert run_lib.changes(old, new) == {"model.num_mixtures": (2, 4), "num_train_steps": (10, 20)}


@pytest.mark.parametrize(
    "overrides, named",
    [
        (
            {"batch_size": 512, "model.num_mixtures": 4},
            ["batch_size: 32 -> 512", "model.num_mixtures: 2 -> 4"],
        ),
        ({"data.level": "frame"}, ["data.level: 'video' -> 'frame'"]),
        ({"data.num_classes": 9}, ["data.num_classes: 7 -> 9"]),
    ],
)
def test_a_model_or_data_change_is_refused_before_anything_is_written(tmp_path, overrides, named):
    workdir = tmp_path / "w"
    stored = _create(workdir)
    listing = sorted(os.listdir(workdir))
    history = (workdir / "history.jsonl").read_bytes()
    with pytest.raises(RunDirectoryError) as e:
        run_lib.Run.for_training(_config(**overrides), str(workdir))
    message = str(e.value)
    assert len(message.splitlines()) <= 5
    for text in named:
        assert text in message
    assert "new --workdir" in message
    assert (workdir / "config.json").read_bytes() == stored
    assert (workdir / "history.jsonl").read_bytes() == history
    assert sorted(os.listdir(workdir)) == listing


def test_a_meaning_change_needs_the_explicit_flag_and_is_then_recorded(tmp_path):
    workdir = tmp_path / "w"
    stored = _create(workdir)
    changed = _config(**{"optimizer.learning_rate": 0.1})
    with pytest.raises(RunDirectoryError, match="--allow_config_change=optimizer.learning_rate"):
        run_lib.Run.for_training(changed, str(workdir))
    with run_lib.training(changed, str(workdir), allow=("optimizer.learning_rate",)):
        pass
    assert (workdir / "config.json").read_bytes() == stored
    last = json.loads((workdir / "history.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "resume"
    assert last["changes"] == {"optimizer.learning_rate": [0.01, 0.1]}
    # Opening the run read-only gives the stored config with its recorded changes.
    assert run_lib.Run.open(str(workdir)).config.optimizer.learning_rate == 0.1


def test_free_keys_change_without_a_flag_and_without_rewriting_config_json(tmp_path):
    workdir = tmp_path / "w"
    stored = _create(workdir)
    with run_lib.training(_config(num_train_steps=40, eval_every=10), str(workdir)):
        pass
    assert (workdir / "config.json").read_bytes() == stored
    opened = run_lib.Run.open(str(workdir))
    assert (opened.config.num_train_steps, opened.config.eval_every) == (40, 10)
    assert json.loads(stored)["config"]["num_train_steps"] == 10


def test_opening_something_that_is_not_a_run_names_it(tmp_path):
    with pytest.raises(RunDirectoryError, match="does not exist"):
        run_lib.Run.open(str(tmp_path / "nope"))
    (tmp_path / "x").mkdir()
    with pytest.raises(RunDirectoryError, match="has no config.json"):
        run_lib.Run.open(str(tmp_path / "x"))
    _create(tmp_path / "w")
    with pytest.raises(RunDirectoryError, match="is a 'classify' run; this needs a 'retrieval'"):
        run_lib.Run.open(str(tmp_path / "w"), task="retrieval")


def test_a_second_trainer_on_a_busy_workdir_is_refused_naming_the_holder(tmp_path):
    workdir = tmp_path / "w"
    with run_lib.training(_config(), str(workdir)):
        script = textwrap.dedent(
            f"""
            import ml_collections
            from vmjax import run
            c = ml_collections.ConfigDict(run.Run.open({str(workdir)!r}).config.to_dict())
            run.Run.for_training(c, {str(workdir)!r})
            """
        )
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert proc.returncode != 0
        assert f"pid {os.getpid()}" in proc.stderr
        assert "is in use" in proc.stderr


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    workdir = tmp_path / "w"
    _create(workdir)
    # A crashed trainer leaves its holder line, but the kernel dropped its flock.
    (workdir / "lock").write_text(json.dumps({"host": "gone", "pid": 999999, "time": "then"}))
    with run_lib.training(_config(), str(workdir)):
        holder = json.loads((workdir / "lock").read_text())
        assert holder["pid"] == os.getpid()
        with open(workdir / "lock") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert "Took over the lock" in caplog.text and "999999" in caplog.text
    assert (workdir / "lock").read_text() == ""  # released cleanly: no warning next time


def test_metrics_after_the_resumed_checkpoint_are_dropped_so_each_step_appears_once(tmp_path):
    workdir = tmp_path / "w"
    _create(workdir)
    run = run_lib.Run.open(str(workdir))
    for step in (5, 10, 15):
        run.log_metrics({"step": step, "gap": step / 100})
    run.forget_metrics_after(10)  # the run resumes from checkpoint 10 and redoes 11..15
    run.log_metrics({"step": 15, "gap": 0.2})
    assert [(m["step"], m["gap"]) for m in run.metrics()] == [(5, 0.05), (10, 0.1), (15, 0.2)]
    assert run.last_eval() == {"step": 15, "gap": 0.2}
