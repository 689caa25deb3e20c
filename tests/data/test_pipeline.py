"""grain pipelines: batch contents, epochs, resumable state, eval padding, bad input."""

import collections
import glob
import os

import numpy as np
import pytest

from vmjax.data import pipeline, synthetic, tfrecord, yt8m

C = 3862


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pipe") / "data")
    spec = synthetic.Spec(
        seed=1,
        num_train=60,
        num_validate=21,
        num_train_shards=3,
        num_validate_shards=2,
        zero_frame_rate=0.05,
        long_rate=0.05,
    )
    synthetic.generate(out, spec, workers=1, log=lambda *_: None)
    return out


def _files(data_dir, level, split):
    return sorted(glob.glob(os.path.join(data_dir, level, f"{split}-*.tfrecord")))


def _records(path, level):
    decode = yt8m.decode_frame_example if level == "frame" else yt8m.decode_video_example
    return [decode(p) for _, _, p in tfrecord.read_records(path)]


def _spec(level, max_frames=40, num_classes=C, max_text_tokens=32):
    return pipeline.BatchSpec(level, num_classes, max_frames, max_text_tokens, 8192)


def _train(files, level, max_frames=40, **kw):
    args = dict(batch_size=4, seed=0, shuffle_buffer=1, cycle_length=1, prefetch=0)
    args.update(kw)
    return pipeline.train_dataset(files, _spec(level, max_frames), **args)


def test_frame_batches_match_records_in_order(data_dir):
    path = _files(data_dir, "frame", "train")[0]
    records = _records(path, "frame")
    it = iter(_train([path], "frame"))
    rows = [r for _ in range(len(records) // 4) for r in _unbatch(next(it))]
    for row, rec in zip(rows, records, strict=False):
        t = min(len(rec["rgb"]), 40)
        assert row["num_frames"] == t
        np.testing.assert_array_equal(row["mask"], np.arange(40) < t)
        assert row["rgb"].dtype == np.uint8 and row["rgb"].shape == (40, 1024)
        np.testing.assert_array_equal(row["rgb"][:t], rec["rgb"][:t])
        np.testing.assert_array_equal(row["rgb"][t:], 0)
        np.testing.assert_array_equal(row["audio"][:t], rec["audio"][:t])
        np.testing.assert_array_equal(np.flatnonzero(row["labels"]), np.sort(rec["labels"]))


def _unbatch(batch):
    n = len(batch["labels"])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def test_video_batches_and_each_epoch_sees_every_video_once(data_dir):
    files = _files(data_dir, "video", "train")
    expected = collections.Counter(
        r["mean_rgb"].tobytes() for f in files for r in _records(f, "video")
    )
    it = iter(_train(files, "video", batch_size=5, cycle_length=3))
    seen = collections.Counter()
    for _ in range(60 // 5):
        b = next(it)
        assert b["rgb"].shape == (5, 1024) and b["rgb"].dtype == np.float32
        assert b["audio"].shape == (5, 128)
        seen.update(row.tobytes() for row in b["rgb"])
    assert seen == expected


def test_epochs_are_reshuffled(data_dir):
    files = _files(data_dir, "video", "train")
    it = iter(_train(files, "video", batch_size=60, cycle_length=1, seed=2))
    first, second = next(it)["rgb"], next(it)["rgb"]
    assert sorted(map(bytes, first)) == sorted(map(bytes, second))  # one epoch each
    assert not np.array_equal(first, second)  # in another file order


@pytest.mark.parametrize("level", ["frame", "video"])
def test_resume_from_iterator_state_gives_the_same_batches(data_dir, level):
    files = _files(data_dir, level, "train")
    kw = dict(batch_size=3, cycle_length=2, shuffle_buffer=8, prefetch=2)
    it = iter(_train(files, level, **kw))
    for _ in range(7):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(25)]  # crosses an epoch boundary
    fresh = iter(_train(files, level, **kw))
    fresh.set_state(state)
    for w in want:
        got = next(fresh)
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])


def test_eval_reads_every_video_once_and_pads_the_last_batch(data_dir):
    files = _files(data_dir, "frame", "validate")
    batches = list(pipeline.eval_batches(files, _spec("frame", 300), batch_size=8))
    assert len(batches) == 3  # 21 videos
    weights = np.concatenate([b["weights"] for b in batches])
    np.testing.assert_array_equal(weights, [1] * 21 + [0] * 3)
    records = [r for f in files for r in _records(f, "frame")]
    frames = np.concatenate([b["num_frames"] for b in batches])[:21]
    np.testing.assert_array_equal(frames, [min(len(r["rgb"]), 300) for r in records])
    assert batches[-1]["labels"][-3:].sum() == 0


def test_float_frame_records_make_a_float_batch(tmp_path):
    path = str(tmp_path / "f.tfrecord")
    rgb = np.full((3, 1024), 0.5, np.float32)
    audio = np.full((3, 128), -0.25, np.float32)
    tfrecord.write_records(
        path, [yt8m.encode_frame_example("a", [1], rgb, audio, float_features=True)] * 2
    )
    b = next(iter(_train([path], "frame", batch_size=2, max_frames=5)))
    assert b["rgb"].dtype == np.float32
    np.testing.assert_array_equal(b["rgb"][0, :3], 0.5)
    np.testing.assert_array_equal(b["rgb"][0, 3:], 0)


def test_resolve_and_shard_files(tmp_path):
    with pytest.raises(ValueError, match="data.train_pattern is empty"):
        pipeline.resolve_files("", "data.train_pattern")
    with pytest.raises(FileNotFoundError, match="matched no files"):
        pipeline.resolve_files(str(tmp_path / "nothing*.tfrecord"), "data.eval_pattern")
    for name in ("b.tfrecord", "a.tfrecord", "c.tfrecord"):
        (tmp_path / name).write_bytes(b"")
    files = pipeline.resolve_files(f"{tmp_path}/a*,{tmp_path}/[bc]*", "data.train_pattern")
    assert [os.path.basename(f) for f in files] == ["a.tfrecord", "b.tfrecord", "c.tfrecord"]
    assert pipeline.shard_files(files, 1, 2) == [files[1]]
    with pytest.raises(ValueError, match="cannot be sharded over 4 processes"):
        pipeline.shard_files(files, 0, 4)


def test_corrupt_record_names_the_file_in_the_pipeline(tmp_path, data_dir):
    src = _files(data_dir, "video", "train")[0]
    data = bytearray(open(src, "rb").read())
    data[40] ^= 0xFF  # inside the first record's payload
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(data))
    with pytest.raises(tfrecord.RecordError, match="bad.tfrecord"):
        next(iter(_train([str(bad)], "video")))


def test_label_outside_num_classes_is_an_error(tmp_path):
    path = str(tmp_path / "v.tfrecord")
    tfrecord.write_records(
        path,
        [
            yt8m.encode_video_example(
                "x", [5000], np.zeros(1024, np.float32), np.zeros(128, np.float32)
            )
        ],
    )
    with pytest.raises(tfrecord.RecordError, match="labels"):
        next(iter(_train([path], "video", batch_size=1)))


def test_text_tokens_are_padded_with_a_mask(data_dir):
    path = _files(data_dir, "video", "train")[0]
    records = _records(path, "video")
    batch = next(iter(_train([path], "video", batch_size=len(records))))
    assert batch["text_tokens"].shape == (len(records), 32)
    for row, rec in enumerate(records):
        n = len(rec["text_tokens"])
        np.testing.assert_array_equal(batch["text_mask"][row], np.arange(32) < n)
        np.testing.assert_array_equal(batch["text_tokens"][row, :n], rec["text_tokens"])
        np.testing.assert_array_equal(batch["text_tokens"][row, n:], 0)
    assert batch["text_mask"].any() and not batch["text_mask"].all()


def test_token_outside_the_vocabulary_is_an_error(tmp_path):
    path = str(tmp_path / "t.tfrecord")
    z = np.zeros
    tfrecord.write_records(
        path,
        [
            yt8m.encode_video_example(
                "x", [1], z(1024, np.float32), z(128, np.float32), text_tokens=[3, 9000]
            )
        ],
    )
    with pytest.raises(tfrecord.RecordError, match="text_tokens.*9000.*text_vocab_size"):
        next(iter(_train([path], "video", batch_size=1)))


@pytest.mark.parametrize("level", ["frame", "video"])
def test_example_batch_matches_real_batches(data_dir, level):
    real = next(iter(_train(_files(data_dir, level, "train"), level, batch_size=2)))
    fake = pipeline.example_batch(_spec(level), batch_size=2)
    assert fake.keys() == real.keys()
    for k in real:
        if k == "ids":  # str arrays, as wide as the longest id
            assert fake[k].shape == real[k].shape and fake[k].dtype.kind == real[k].dtype.kind
            continue
        assert (fake[k].shape, fake[k].dtype) == (real[k].shape, real[k].dtype), k
    assert all(real["ids"]) and real["ids"].dtype.kind == "U"


def test_explicit_workers_need_as_many_files(data_dir):
    # Worker processes, shared memory and exact resume: tests/data/test_workers.py.
    files = _files(data_dir, "frame", "train")
    kw = dict(batch_size=3, cycle_length=2, shuffle_buffer=4, prefetch=1, workers=2)
    with pytest.raises(ValueError, match="at least as many files"):
        _train(files[:1], "frame", **kw)


def test_frame_sampling_modes():
    assert pipeline.sample_frames(10, 4, "first") == slice(0, 4)
    np.testing.assert_array_equal(pipeline.sample_frames(10, 4, "uniform"), [0, 2, 5, 7])
    np.testing.assert_array_equal(pipeline.sample_frames(300, 3, "uniform"), [0, 100, 200])
    windows = {pipeline.sample_frames(10, 4, "window", (0, v, 3)).start for v in range(40)}
    assert windows == set(range(7))  # every start 0..6 occurs over visits
    assert pipeline.sample_frames(10, 4, "window", (1, 2, 3)) == pipeline.sample_frames(
        10, 4, "window", (1, 2, 3)
    )
    for how in pipeline.FRAME_SAMPLINGS:  # short videos keep every frame
        assert pipeline.sample_frames(3, 4, how, (0,)) == slice(0, 4)
    with pytest.raises(ValueError, match="frame_sampling"):
        pipeline.BatchSpec("frame", C, 4, 4, 100, frame_sampling="random")


def test_random_windows_in_training_and_full_length_in_evaluation(data_dir):
    files = _files(data_dir, "frame", "train")
    records = [r for f in files for r in _records(f, "frame")]
    long = {r["rgb"][:, 0].tobytes(): r for r in records if len(r["rgb"]) > 8}
    spec = pipeline.BatchSpec("frame", C, 8, 32, 8192, frame_sampling="window", seed=1)
    ds = pipeline.train_dataset(
        files, spec, batch_size=20, seed=0, shuffle_buffer=1, cycle_length=1, prefetch=0
    )
    starts = []
    for batch in [next(iter(ds)) for _ in range(1)]:
        for row in range(20):
            window = batch["rgb"][row, :, 0]
            for rec in long.values():  # find the window inside its video
                col = rec["rgb"][:, 0]
                hits = [s for s in range(len(col) - 7) if (col[s : s + 8] == window).all()]
                if hits and batch["num_frames"][row] == 8:
                    starts.append(hits[0])
                    np.testing.assert_array_equal(
                        batch["rgb"][row], rec["rgb"][hits[0] : hits[0] + 8]
                    )
                    break
    assert len(starts) >= 10 and max(starts) > 0  # windows, not just the first frames
    eval_batch = next(pipeline.eval_batches(files[:1], spec, batch_size=40))
    first = _records(files[0], "frame")
    for row, rec in enumerate(first[:40]):
        t = min(len(rec["rgb"]), 8)
        np.testing.assert_array_equal(eval_batch["rgb"][row, :t], rec["rgb"][:t])


def test_collate_scatters_labels_tokens_and_frames_per_batch():
    spec = pipeline.BatchSpec("frame", 8, 3, 4, 100)
    rgb = np.arange(2 * 1024).reshape(2, 1024).astype(np.uint8)
    audio = np.full((2, 128), 7, np.uint8)
    examples = [
        {
            "rgb": rgb,
            "audio": audio,
            "labels": np.array([5, 1]),
            "text_tokens": np.array([9, 8, 7]),
        },
        {
            "rgb": rgb[:0],
            "audio": audio[:0],
            "labels": np.zeros(0, np.int32),
            "id": "b",
            "text_tokens": np.zeros(0, np.int64),
        },
        {
            "rgb": rgb[1:],
            "audio": audio[1:],
            "labels": np.array([7]),
            "text_tokens": np.array([3]),
            "id": "c",
        },
    ]
    batch = pipeline.make_collate(spec, 4)(examples)
    labels = np.zeros((4, 8), np.uint8)
    labels[0, [1, 5]] = labels[2, 7] = 1
    np.testing.assert_array_equal(batch["labels"], labels)
    np.testing.assert_array_equal(
        batch["text_tokens"], [[9, 8, 7, 0], [0, 0, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(batch["text_mask"].sum(1), [3, 0, 1, 0])
    np.testing.assert_array_equal(batch["num_frames"], [2, 0, 1, 0])
    np.testing.assert_array_equal(batch["weights"], [1, 1, 1, 0])
    np.testing.assert_array_equal(batch["ids"], ["", "b", "c", ""])
    want = np.zeros((4, 3, 1024), np.uint8)
    want[0, :2], want[2, :1] = rgb, rgb[1:]
    np.testing.assert_array_equal(batch["rgb"], want)
    assert batch["audio"][:, :, 0].tolist() == [[7, 7, 0], [0, 0, 0], [7, 0, 0], [0, 0, 0]]


def test_video_records_decode_floats_from_the_wire_as_protobuf_does():
    from google.protobuf import json_format

    rng = np.random.default_rng(0)
    rgb, audio = rng.normal(size=1024).astype(np.float32), rng.normal(size=128).astype(np.float32)
    data = yt8m.encode_video_example("v1", [4, 2], rgb, audio, text_tokens=[7, 8])
    fast = yt8m._fast_video(data)
    assert fast is not None  # our encoder (and TF) write packed floats
    got = yt8m.decode_video_example(data, num_classes=10)
    np.testing.assert_array_equal(got["mean_rgb"], rgb)  # bit for bit
    np.testing.assert_array_equal(got["mean_audio"], audio)
    assert got["mean_rgb"].flags.writeable and got["mean_rgb"].dtype == np.float32
    assert got["id"] == "v1" and got["labels"].tolist() == [4, 2]
    assert got["text_tokens"].tolist() == [7, 8]
    # Unpacked floats (valid protobuf, not the plain layout): the protobuf path, same values.
    example = yt8m.tf_example_pb2.Example.FromString(data)
    unpacked = b"".join(
        b"\x0a" + _varint(len(entry)) + entry
        for entry in (
            _map_entry(key, example.features.feature[key], unpack=True)
            for key in sorted(example.features.feature)
        )
    )
    unpacked = b"\x0a" + _varint(len(unpacked)) + unpacked
    assert json_format.MessageToDict(
        yt8m.tf_example_pb2.Example.FromString(unpacked)
    ) == json_format.MessageToDict(example)
    assert yt8m._fast_video(unpacked) is None
    slow = yt8m.decode_video_example(unpacked, num_classes=10)
    for key in ("mean_rgb", "mean_audio", "labels", "text_tokens"):
        np.testing.assert_array_equal(slow[key], got[key])
    # A NaN on the fast path: the error names the field and the index.
    nan = rgb.copy()
    nan[5] = np.nan
    with pytest.raises(
        tfrecord.RecordError, match=r"mean_rgb.*non-finite value nan at index \(5,\)"
    ):
        yt8m.decode_video_example(yt8m.encode_video_example("v", [1], nan, audio))


def _varint(n):
    from vmjax.data import wire

    return wire.varint(n)


def _map_entry(key, feature, unpack=False):
    """A Features map entry {1: key, 2: Feature}; unpack writes each float as its own field."""
    if unpack and feature.WhichOneof("kind") == "float_list":
        values = b"".join(b"\x0d" + np.float32(v).tobytes() for v in feature.float_list.value)
        body = b"\x12" + _varint(len(values)) + values  # Feature.float_list, unpacked values
    else:
        body = feature.SerializeToString()
    k = key.encode()
    return b"\x0a" + _varint(len(k)) + k + b"\x12" + _varint(len(body)) + body
