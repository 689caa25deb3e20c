"""Progress output fit for log files, and metric names TensorBoard accepts."""

import io

import ml_collections

from vmjax.train import logs


def test_progress_into_a_log_file_is_one_plain_line_per_log_interval(monkeypatch):
    stderr = io.StringIO()  # not a terminal
    monkeypatch.setattr("sys.stderr", stderr)
    config = ml_collections.ConfigDict({"num_train_steps": 100})
    progress = logs.progress_bar(config, 40, "train")
    assert isinstance(progress, logs.LineProgress)
    for _ in range(10):
        progress.update(1)
    progress.set_postfix(loss="0.500", ex_per_s="1,000")
    progress.update(10)
    progress.set_postfix(loss="0.400", ex_per_s="1,100")
    progress.close()
    lines = stderr.getvalue().splitlines()
    assert "\r" not in stderr.getvalue()
    assert len(lines) == 2
    assert lines[0].startswith("train step 50/100 (50%)  loss=0.500  ex_per_s=1,000")
    assert lines[1].startswith("train step 60/100 (60%)  loss=0.400")


def test_progress_is_silent_on_other_processes():
    config = ml_collections.ConfigDict({"num_train_steps": 10})
    progress = logs.progress_bar(config, 0, "train", disable=True)
    progress.update(1)
    progress.set_postfix(loss=1.0)  # no output, no error


def test_metric_names_are_ones_tensorboard_accepts():
    assert logs.tensorboard_name("eval/text_to_video/r@1") == "eval/text_to_video/r_at_1"
    assert logs.tensorboard_name("eval/gap cross modal!") == "eval/gap_cross_modal_"
    assert logs.tensorboard_name("train/grad_norm") == "train/grad_norm"
