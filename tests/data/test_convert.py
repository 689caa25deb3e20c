"""TFRecord -> ArrayRecord conversion: records and fields unchanged, TFDS layout, atomic output."""

import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.data.test_yt8m import (
    bytes_feature,
    example,
    float_feature,
    int64_feature,
    sequence_example,
)
from vmjax.data import convert, indexed, tfrecord, yt8m
from vmjax.data import tfds_yt8m as ds
from vmjax.data.tfrecord import RecordError

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _frames(rng, t):
    return (
        rng.integers(0, 256, (t, yt8m.RGB_DIM), dtype=np.uint8),
        rng.integers(0, 256, (t, yt8m.AUDIO_DIM), dtype=np.uint8),
    )


def frame_records(rng, prefix: str) -> list[tuple[bytes, dict]]:
    """(payload, expected decoded fields) for frame-level records covering the format's cases."""
    out = []
    for i, (t, labels) in enumerate([(0, [3]), (1, []), (7, [0, 3861]), (305, [12, 5])]):
        rgb, audio = _frames(rng, t)
        want = {"id": f"{prefix}{i}", "labels": labels, "rgb": rgb, "audio": audio}
        kw = {}
        if i % 2 == 0:
            want["text_tokens"] = kw["text_tokens"] = rng.integers(0, 8192, i + 1)
        if i >= 2:
            want["segments"] = kw["segments"] = {
                "start_times": [0, 5, 100],
                "end_times": [5, 10, 105],
                "labels": [3, 3861, 0],
                "scores": [1.0, 0.0, 1.0],
            }
        out.append((yt8m.encode_frame_example(want["id"], labels, rgb, audio, **kw), want))
    # The 2017 data's context key `video_id`, which our encoder does not write.
    rgb, audio = _frames(rng, 2)
    payload = sequence_example(
        {"video_id": bytes_feature([f"{prefix}2017".encode()]), "labels": int64_feature([9])},
        {
            "rgb": [bytes_feature([f.tobytes()]) for f in rgb],
            "audio": [bytes_feature([f.tobytes()]) for f in audio],
        },
    )
    out.append((payload, {"id": f"{prefix}2017", "labels": [9], "rgb": rgb, "audio": audio}))
    return out


def video_records(rng, prefix: str, n: int = 4) -> list[tuple[bytes, dict]]:
    out = []
    for i in range(n):
        want = {
            "id": f"{prefix}{i}",
            "labels": list(rng.choice(3862, i % 4, replace=False)),
            "mean_rgb": rng.standard_normal(yt8m.RGB_DIM).astype(np.float32),
            "mean_audio": rng.standard_normal(yt8m.AUDIO_DIM).astype(np.float32),
        }
        kw = {}
        if i % 2:
            want["text_tokens"] = kw["text_tokens"] = rng.integers(0, 8192, 3)
        payload = yt8m.encode_video_example(
            want["id"], want["labels"], want["mean_rgb"], want["mean_audio"], **kw
        )
        out.append((payload, want))
    return out


def write_split(directory, split: str, files: list[list[tuple[bytes, dict]]]) -> list:
    """Writes each list of records to <split>NN.tfrecord; returns all records in file order."""
    os.makedirs(directory, exist_ok=True)
    for k, records in enumerate(files):
        tfrecord.write_records(
            os.path.join(directory, f"{split}{k:02d}.tfrecord"), [p for p, _ in records]
        )
    return [r for records in files for r in records]


def check_fields(decoded: dict, want: dict) -> None:
    assert decoded["id"] == want["id"]
    np.testing.assert_array_equal(decoded["labels"], np.asarray(want["labels"], np.int32))
    np.testing.assert_array_equal(decoded["text_tokens"], want.get("text_tokens", np.zeros(0)))
    for key in ("rgb", "audio", "mean_rgb", "mean_audio"):
        if key in want:
            assert decoded[key].dtype == want[key].dtype
            np.testing.assert_array_equal(decoded[key], want[key])
    segments = want.get("segments")
    for name, (key, _) in yt8m._SEGMENTS.items():
        if segments is None:
            assert key not in decoded
        else:
            np.testing.assert_array_equal(
                decoded[key], np.asarray(segments[name], decoded[key].dtype)
            )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("yt8m")
    rng = np.random.default_rng(0)
    frame = {
        "train": write_split(
            root / "frame", "train", [frame_records(rng, f"t{k}-") for k in range(3)]
        ),
        "validate": write_split(root / "frame", "validate", [frame_records(rng, "v-")]),
    }
    video = {
        "train": write_split(
            root / "video", "train", [video_records(rng, f"t{k}-") for k in range(2)]
        )
    }
    video_2017 = example(
        {
            "video_id": bytes_feature([b"old"]),
            "labels": int64_feature([4715]),
            "mean_rgb": float_feature([0.0] * yt8m.RGB_DIM),
            "mean_audio": float_feature([1.0] * yt8m.AUDIO_DIM),
        }
    )
    tfrecord.write_records(str(root / "video" / "train02.tfrecord"), [video_2017])
    video["train"].append(
        (
            video_2017,
            {
                "id": "old",
                "labels": [4715],
                "mean_rgb": np.zeros(1024, np.float32),
                "mean_audio": np.ones(128, np.float32),
            },
        )
    )
    return root, frame, video


def _convert(src, dst, **kw):
    src = [str(s) for s in src] if isinstance(src, list) else str(src)
    return convert.convert(src, str(dst), progress=False, **kw)


def test_frame_records_round_trip_bit_for_bit(inputs, tmp_path):
    root, frame, _ = inputs
    dst = tmp_path / "frame_ds"
    info = _convert(root / "frame" / "train*.tfrecord", dst, num_shards=2)
    _convert(root / "frame" / "validate*.tfrecord", dst)
    assert info.name == "train" and info.shard_lengths == [5, 10]  # files [0], [1, 2]
    assert sorted(os.listdir(dst)) == [
        "dataset_info.json",
        "features.json",
        "yt8m-train.array_record-00000-of-00002",
        "yt8m-train.array_record-00001-of-00002",
        "yt8m-validate.array_record-00000-of-00001",
    ]
    for split, records in frame.items():
        source = indexed.open_source(str(dst), split, level="frame")
        assert len(source) == len(records)
        for i, (payload, want) in enumerate(records):
            assert source[i] == payload  # input order kept, bytes unchanged
            check_fields(yt8m.decode_frame_example(source[i]), want)
    # TFDS's own reader (no TensorFlow) sees the same bytes in the `record` feature.
    tfds_source = tfds.builder_from_directory(str(dst)).as_data_source("train")
    assert [tfds_source[i]["record"] for i in range(len(tfds_source))] == [
        p for p, _ in frame["train"]
    ]
    source = indexed.open_source(str(dst), "train")
    assert source.locate(4) == (str(dst / "yt8m-train.array_record-00000-of-00002"), 4)
    assert source.locate(5) == (str(dst / "yt8m-train.array_record-00001-of-00002"), 0)


def test_video_records_round_trip_with_2017_key(inputs, tmp_path):
    root, _, video = inputs
    dst = tmp_path / "video_ds"
    _convert(root / "video" / "train*.tfrecord", dst)  # level and split from the data
    source = indexed.open_source(str(dst), "train", level="video")
    assert [source[i] for i in range(len(source))] == [p for p, _ in video["train"]]
    for i, (_, want) in enumerate(video["train"]):
        check_fields(yt8m.decode_video_example(source[i]), want)
    info = json.loads((dst / "dataset_info.json").read_text())
    assert (info["name"], info["configName"], info["fileFormat"]) == (
        "yt8m",
        "video",
        "array_record",
    )


def test_tensorflow_written_files_convert_unchanged(tmp_path):
    files = [str(FIXTURES / "frame.tfrecord"), str(FIXTURES / "frame_2017.tfrecord")]
    _convert(files, tmp_path / "ds", split="fixtures")
    source = indexed.open_source(str(tmp_path / "ds"), "fixtures")
    want = [p for f in files for _, _, p in tfrecord.read_records(f)]
    assert [source[i] for i in range(len(source))] == want


def test_builder_writes_the_same_layout_without_tensorflow(inputs, tmp_path):
    root, frame, _ = inputs
    builder = ds.Yt8m(config="frame", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    built = tmp_path / "tfds" / "yt8m" / "frame" / "1.0.0"
    _convert(root / "frame" / "train*.tfrecord", tmp_path / "conv")
    _convert(root / "frame" / "validate*.tfrecord", tmp_path / "conv")
    a = json.loads((built / "dataset_info.json").read_text())
    b = json.loads((tmp_path / "conv" / "dataset_info.json").read_text())
    for info in (a, b):
        for split in info["splits"]:
            split.pop("shardLengths")  # TFDS picks its own shard count
    assert a == b
    assert (built / "features.json").read_text() == (
        tmp_path / "conv" / "features.json"
    ).read_text()
    for split, records in frame.items():
        source = indexed.open_source(str(built), split)
        # TFDS orders records by a hash of their keys; the same records are there.
        assert sorted(source[i] for i in range(len(source))) == sorted(p for p, _ in records)
    # Registered builder and converted directory agree: tfds.data_source finds the latter.
    os.makedirs(tmp_path / "root" / "yt8m" / "frame")
    os.rename(tmp_path / "conv", tmp_path / "root" / "yt8m" / "frame" / "1.0.0")
    loaded = tfds.data_source("yt8m/frame", split="validate", data_dir=str(tmp_path / "root"))
    assert [loaded[i]["record"] for i in range(len(loaded))] == [p for p, _ in frame["validate"]]


def test_wrap_is_what_tfds_serializes():
    features = ds.features()
    rng = np.random.default_rng(1)
    for n in (0, 1, 127, 128, 16383, 16384, 351_067):
        payload = rng.bytes(n)
        wrapped = ds.wrap(payload)
        assert wrapped == features.serialize_example({"record": payload})
        assert ds.unwrap(wrapped) == payload
    # Any other layout is left to TFDS's parser.
    assert ds.unwrap(ds.wrap(b"abc")[:-1]) is None
    other = tfds.features.FeaturesDict(
        {
            "record": tfds.features.Scalar(dtype=np.object_),
            "x": tfds.features.Scalar(dtype=np.int64),
        }
    )
    assert ds.unwrap(other.serialize_example({"record": b"abc", "x": 1})) is None


def test_splits_are_added_refused_and_overwritten(inputs, tmp_path):
    root, frame, video = inputs
    dst = tmp_path / "ds"
    _convert(root / "frame" / "train*.tfrecord", dst)
    with pytest.raises(FileExistsError, match="already has split 'train'"):
        _convert(root / "frame" / "train*.tfrecord", dst)
    with pytest.raises(ValueError, match="holds yt8m/frame data, not yt8m/video"):
        _convert(root / "video" / "train*.tfrecord", dst, split="video_train")
    _convert(root / "frame" / "train0[12].tfrecord", dst, num_shards=1, overwrite=True)
    _convert(root / "frame" / "validate*.tfrecord", dst, split="heldout")
    assert sorted(os.listdir(dst)) == [
        "dataset_info.json",
        "features.json",
        "yt8m-heldout.array_record-00000-of-00001",
        "yt8m-train.array_record-00000-of-00001",  # the three old train shards are gone
    ]
    source = indexed.open_source(str(dst), "train")
    assert [source[i] for i in range(len(source))] == [p for p, _ in frame["train"][5:]]
    assert len(indexed.open_source(str(dst), "heldout")) == len(frame["validate"])
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary directories left


def test_workers_write_the_same_files(inputs, tmp_path):
    root, _, _ = inputs
    src = root / "frame" / "train*.tfrecord"
    _convert(src, tmp_path / "one")
    _convert(src, tmp_path / "two", workers=2)
    for name in os.listdir(tmp_path / "one"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def _corrupt_copy(root, tmp_path, break_record) -> pathlib.Path:
    """Copies the frame train files to tmp_path/in, with record 2 of train01 broken."""
    (tmp_path / "in").mkdir()
    for k in range(3):
        payloads = [
            p for _, _, p in tfrecord.read_records(str(root / "frame" / f"train{k:02d}.tfrecord"))
        ]
        path = tmp_path / "in" / f"train{k:02d}.tfrecord"
        tfrecord.write_records(str(path), payloads)
        if k == 1:
            break_record(path, payloads)
    return tmp_path / "in" / "train01.tfrecord"


def _flip_payload_byte(path, payloads):
    offset = sum(len(p) + 16 for p in payloads[:2]) + 12 + 40
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _short_rgb_frame(path, payloads):
    rgb, audio = _frames(np.random.default_rng(0), 3)
    bad = sequence_example(
        {"id": bytes_feature([b"bad"]), "labels": int64_feature([1])},
        {
            "rgb": [bytes_feature([f.tobytes()]) for f in rgb[:2]]
            + [bytes_feature([b"\0" * 1000])],
            "audio": [bytes_feature([f.tobytes()]) for f in audio],
        },
    )
    tfrecord.write_records(str(path), payloads[:2] + [bad] + payloads[3:])


@pytest.mark.parametrize(
    "break_record, field, match",
    [
        (_flip_payload_byte, "data_crc", "stored 0x"),
        (_short_rgb_frame, "rgb", "frame 2 has 1000 bytes"),
    ],
)
def test_bad_record_fails_naming_it_and_leaves_nothing(
    inputs, tmp_path, break_record, field, match
):
    root, _, _ = inputs
    bad_file = _corrupt_copy(root, tmp_path, break_record)
    dst = tmp_path / "out" / "ds"
    with pytest.raises(RecordError, match=match) as e:
        _convert(tmp_path / "in" / "train*.tfrecord", dst)
    assert (e.value.path, e.value.index, e.value.field) == (str(bad_file), 2, field)
    assert os.listdir(tmp_path / "out") == []  # neither the dataset nor its temporary directory

    # Adding a bad split to a good dataset leaves the dataset as it was.
    _convert(root / "frame" / "validate*.tfrecord", dst)
    before = {p.name: p.read_bytes() for p in dst.iterdir()}
    with pytest.raises(RecordError):
        _convert(tmp_path / "in" / "train*.tfrecord", dst, workers=1)
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    assert os.listdir(tmp_path / "out") == ["ds"]


def test_command_line(inputs, tmp_path, capsys):
    root, frame, _ = inputs
    with pytest.raises(SystemExit) as e:
        convert.main(["--help"])
    assert e.value.code == 0
    assert "--num_shards" in capsys.readouterr().out
    dst = tmp_path / "ds"
    convert.main(
        ["--src", str(root / "frame" / "validate*.tfrecord"), "--dst", str(dst), "--level", "frame"]
    )
    assert len(indexed.open_source(str(dst), "validate")) == len(frame["validate"])
    assert "5 records in 1 shards" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        convert.main(["--src", str(tmp_path / "none*.tfrecord"), "--dst", str(dst)])
    assert e.value.code == 2  # a user error, as argparse
    assert "matched no files" in capsys.readouterr().err


def test_split_and_level_inference_errors(inputs, tmp_path):
    root, _, _ = inputs
    both = [str(root / "frame" / "train00.tfrecord"), str(root / "frame" / "validate00.tfrecord")]
    with pytest.raises(ValueError, match="pass --split"):
        _convert(both, tmp_path / "ds")
    with pytest.raises(ValueError, match="use letters, digits"):
        _convert(both, tmp_path / "ds", split="a-b")
    with pytest.raises(ValueError, match="give 1 to 2"):
        _convert(both, tmp_path / "ds", split="x", num_shards=3)
    odd = tmp_path / "odd.tfrecord"
    tfrecord.write_records(str(odd), [example({"id": bytes_feature([b"x"])})])
    with pytest.raises(RecordError, match="pass --level"):
        _convert(odd, tmp_path / "ds", split="x")
    with pytest.raises(RecordError, match="'mean_rgb': missing"):
        _convert(odd, tmp_path / "ds", split="x", level="video")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.tfrecord"]


def test_compression_options_and_permissions(inputs, tmp_path):
    root, frame, _ = inputs
    src = root / "frame" / "validate*.tfrecord"
    want = [p for p, _ in frame["validate"]]
    for compression in ("zstd:3", "snappy"):
        dst = tmp_path / compression.replace(":", "")
        _convert(src, dst, compression=compression)
        source = indexed.open_source(str(dst), "validate")
        assert [source[i] for i in range(len(source))] == want
    with pytest.raises(ValueError, match="--compression 'gzip'"):
        _convert(src, tmp_path / "x", compression="gzip")
    # The dataset directory gets the umask's permissions, not a temporary directory's 0700.
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "snappy").st_mode & 0o777 == 0o777 & ~umask
