"""The data level is checked on the first record of each split, before any work."""

import pathlib

import pytest

from tests.train.test_loop import _small
from vmjax.data import tfrecord, yt8m
from vmjax.errors import DataError
from vmjax.train import inputs

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "data" / "fixtures"


@pytest.mark.parametrize("name, level", [("video.tfrecord", "video"), ("frame.tfrecord", "frame")])
def test_the_level_of_records_written_by_tensorflow_is_recognised(name, level):
    _, _, payload = next(tfrecord.read_records(str(FIXTURES / name)))
    assert yt8m.record_level(payload) == level
    assert yt8m.record_level(b"\xff\xff not a proto") is None


@pytest.mark.parametrize(
    "preset, name, says",
    [
        ("smoke", "frame.tfrecord", "config.data.level='video', but .*frame.tfrecord"),
        ("frame,smoke", "video.tfrecord", "config.data.level='frame', but .*video.tfrecord"),
    ],
)
def test_a_model_given_files_of_the_other_level_is_told_the_level_and_the_fix(
    tmp_path, preset, name, says
):
    pattern = str(FIXTURES / name)
    config = _small(
        tmp_path, preset, **{"data.train_pattern": pattern, "data.eval_pattern": pattern}
    )
    with pytest.raises(DataError, match=says) as e:
        inputs.resolve_data(config)
    assert "data.train_pattern" in str(e.value) and "--config yt8m" in str(e.value)


def test_files_of_the_right_level_pass(tmp_path):
    pattern = str(FIXTURES / "frame.tfrecord")
    config = _small(
        tmp_path, "frame,smoke", **{"data.train_pattern": pattern, "data.eval_pattern": pattern}
    )
    train, evals, data_dir = inputs.resolve_data(config)
    assert train == evals == [pattern] and data_dir is None
