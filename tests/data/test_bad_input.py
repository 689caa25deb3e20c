"""Every kind of bad input, in both modes: a RecordError naming file, record and field by
default; with data.on_error='skip', the bad records are left out, logged once and counted."""

import logging

import numpy as np
import pytest

from vmjax.data import pipeline, tfrecord, yt8m

C = 10
SPEC = pipeline.BatchSpec("frame", C, max_frames=4, max_text_tokens=4, text_vocab_size=100)


def _good(i):
    rgb = np.full((3, 1024), i, np.uint8)
    return yt8m.encode_frame_example(f"v{i}", [i % C], rgb, np.full((3, 128), i, np.uint8))


def _bad_payload(kind):
    if kind == "feature_size":
        pb = yt8m.tf_example_pb2.SequenceExample.FromString(_good(0))
        pb.feature_lists.feature_list["rgb"].feature[1].bytes_list.value[0] = bytes(1000)
        return pb.SerializeToString(), "rgb"
    if kind == "label_range":
        return yt8m.encode_frame_example(
            "v", [C + 5], np.zeros((3, 1024), np.uint8), np.zeros((3, 128), np.uint8)
        ), "labels"
    if kind == "missing_key":
        pb = yt8m.tf_example_pb2.SequenceExample.FromString(_good(0))
        del pb.context.feature["id"]
        return pb.SerializeToString(), "id"
    raise ValueError(kind)


def _file(tmp_path, payloads):
    path = str(tmp_path / "bad.tfrecord")
    tfrecord.write_records(path, payloads)
    return path


def _corrupt(path, kind, record=2):
    """Breaks the file's framing: a payload CRC of `record`, or truncation inside it."""
    data = bytearray(open(path, "rb").read())
    offsets = [off for _, off, _ in tfrecord.read_records(path)]
    if kind == "crc":
        data[offsets[record] + 12 + 5] ^= 0xFF  # a payload byte
    elif kind == "truncated":
        data = data[: offsets[record] + 40]
    open(path, "wb").write(bytes(data))
    return offsets[record]


def _rows(batches):
    """The first rgb value of every real (weight 1) row, in order: the video number."""
    return [int(b["rgb"][r, 0, 0]) for b in batches for r in np.flatnonzero(b["weights"])]


def _read(path, bad_records=None):
    return list(pipeline.eval_batches([path], SPEC, batch_size=4, bad_records=bad_records))


@pytest.mark.parametrize("kind", ["feature_size", "label_range", "missing_key"])
def test_bad_fields_raise_or_are_skipped(tmp_path, kind, caplog):
    payload, field = _bad_payload(kind)
    path = _file(tmp_path, [_good(1), _good(2), payload, _good(4), _good(5)])
    with pytest.raises(tfrecord.RecordError) as info:
        _read(path)
    assert info.value.path == path and info.value.index == 2 and info.value.field == field

    bad = pipeline.BadRecords()
    caplog.set_level(logging.WARNING)
    assert _rows(_read(path, bad)) == [1, 2, 4, 5]
    _read(path, bad)  # a second epoch: counted and logged once
    assert bad.count == 1
    assert caplog.text.count("Skipping bad record") == 1 and f"'{field}'" in caplog.text


def test_crc_mismatch_skips_only_that_record(tmp_path):
    path = _file(tmp_path, [_good(i) for i in range(1, 7)])
    offset = _corrupt(path, "crc", record=2)
    with pytest.raises(tfrecord.RecordError, match=f"record 2 \\(byte offset {offset}\\)"):
        _read(path)
    bad = pipeline.BadRecords()
    assert _rows(_read(path, bad)) == [1, 2, 4, 5, 6]  # reading goes on after it
    assert bad.count == 1


def test_truncated_file_keeps_the_records_before_the_cut(tmp_path):
    path = _file(tmp_path, [_good(i) for i in range(1, 7)])
    _corrupt(path, "truncated", record=3)
    with pytest.raises(tfrecord.RecordError, match="truncated payload") as info:
        _read(path)
    assert info.value.index == 3 and info.value.field == "data"
    bad = pipeline.BadRecords()
    assert _rows(_read(path, bad)) == [1, 2, 3]
    assert bad.count == 1


def test_training_stream_skips_and_fills_batches_with_padding(tmp_path):
    payload, _ = _bad_payload("label_range")
    path = _file(tmp_path, [payload] * 3 + [_good(7)])
    bad = pipeline.BadRecords()
    ds = pipeline.train_dataset(
        [path], SPEC, batch_size=4, seed=0, shuffle_buffer=1, cycle_length=1, bad_records=bad
    )
    batch = next(iter(ds))
    assert batch["weights"].tolist() == [1, 0, 0, 0] and _rows([batch]) == [7]
    assert bad.count == 3
    all_bad = _file(tmp_path, [payload] * 4)
    batch = next(
        iter(
            pipeline.train_dataset(
                [all_bad],
                SPEC,
                batch_size=4,
                seed=0,
                shuffle_buffer=1,
                cycle_length=1,
                bad_records=bad,
            )
        )
    )
    assert batch["weights"].sum() == 0 and batch["rgb"].shape == (4, 4, 1024)
