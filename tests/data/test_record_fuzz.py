"""Generated corruptions of small valid TFRecord files, read as the pipeline reads them.

The files come from an independent writer: protos from test_yt8m's hand-written wire codec,
framed by test_tfrecord.frame_record (a pure-Python CRC32C), never vmjax's own encoder or
writer. Every corrupted file must give a RecordError naming the file, the record, its byte
offset and the field, or (on_error='skip') a counted skip with every other record intact; no
MemoryError, OverflowError or other bare exception, and no silently wrong values. Valid
variants (uint8 and float features mixed in one record, extra keys) decode exactly.
"""

import dataclasses
import functools
import struct

import numpy as np
import pytest

from tests.data.test_tfrecord import frame_record as tfrecord_bytes
from tests.data.test_tfrecord import reference_masked_crc
from tests.data.test_yt8m import (
    bytes_feature,
    example,
    float_feature,
    int64_feature,
    sequence_example,
)
from vmjax.data import indexed, pipeline, tfrecord, yt8m
from vmjax.data.tfrecord import RecordError

C = 10  # classes
VOCAB = 100  # text tokens
BATCH = 8  # more rows than any file has records: one batch holds a whole file
SPECS = {
    level: pipeline.BatchSpec(level, C, max_frames=4, max_text_tokens=4, text_vocab_size=VOCAB)
    for level in ("frame", "video")
}
_DIMS = {"rgb": 1024, "audio": 128}
_VIDEO_KEYS = {"rgb": "mean_rgb", "audio": "mean_audio"}


@functools.cache
def _framed(payload: bytes) -> bytes:
    return tfrecord_bytes(payload)  # pure-Python CRC: slow, so each payload is framed once


def _dequantize(q: np.ndarray) -> np.ndarray:
    """The spec's formula in float32, a multiply then an add (two roundings)."""
    return q.astype(np.float32) * np.float32(4 / 255) + np.float32(4 / 512 - 2)


def _floats(rng, shape) -> np.ndarray:
    # Multiples of 1/64 in [-2, 2]: exact in float32, and far from any dequantized level.
    return (rng.integers(-128, 129, shape) / 64).astype(np.float32)


# --- Records: the fields a proto is built from, and what decoding must give back. ---


@dataclasses.dataclass
class Record:
    level: str
    context: dict  # key -> encoded Feature (the Example's features at video level)
    lists: dict  # key -> list of encoded Features (frame level)
    want: dict | None  # id, labels, rgb, audio as the batch holds them; None: not known

    def payload(self) -> bytes:
        if self.level == "video":
            return example(self.context)
        return sequence_example(self.context, self.lists)

    def copy(self) -> "Record":
        return Record(self.level, dict(self.context), dict(self.lists), self.want)


def _frame_features(frames: np.ndarray) -> list[bytes]:
    if frames.dtype == np.uint8:
        return [bytes_feature([f.tobytes()]) for f in frames]
    return [float_feature(f.tolist()) for f in frames]


def frame_level(vid: str, labels, rgb: np.ndarray, audio: np.ndarray) -> Record:
    """A SequenceExample; each of rgb and audio is uint8 (bytes frames) or float32 (floats)."""
    context = {"id": bytes_feature([vid.encode()]), "labels": int64_feature(labels)}
    lists = {"rgb": _frame_features(rgb), "audio": _frame_features(audio)}
    # An empty feature list has no kind: no frames decode as uint8.
    rgb, audio = (x if len(x) else x.astype(np.uint8) for x in (rgb, audio))
    want = {"id": vid, "labels": list(labels), "rgb": rgb, "audio": audio}
    return Record("frame", context, lists, want)


def video_level(vid: str, labels, mean_rgb: np.ndarray, mean_audio: np.ndarray) -> Record:
    context = {
        "id": bytes_feature([vid.encode()]),
        "labels": int64_feature(labels),
        "mean_rgb": float_feature(mean_rgb.tolist()),
        "mean_audio": float_feature(mean_audio.tolist()),
    }
    want = {"id": vid, "labels": list(labels), "rgb": mean_rgb, "audio": mean_audio}
    return Record("video", context, {}, want)


def _random_frames(rng, key: str, n: int, kind: str) -> np.ndarray:
    if kind == "uint8":
        return rng.integers(0, 256, (n, _DIMS[key]), dtype=np.uint8)
    return _floats(rng, (n, _DIMS[key]))


def random_record(rng, level: str, vid: str) -> Record:
    labels = sorted(set(rng.integers(0, C, rng.integers(0, 4)).tolist()))
    if level == "video":
        return video_level(vid, labels, _floats(rng, 1024), _floats(rng, 128))
    n = int(rng.integers(0, 4))
    # Each key its own kind: a record may well hold uint8 rgb and float audio.
    rgb, audio = (
        _random_frames(rng, key, n, rng.choice(["uint8", "float"])) for key in ("rgb", "audio")
    )
    return frame_level(vid, labels, rgb, audio)


def base_records(rng, level: str, prefix: str, n: int = 4) -> list[Record]:
    return [random_record(rng, level, f"{prefix}{i}") for i in range(n)]


# --- Cases: a file's bytes and what reading it must give. ---


@dataclasses.dataclass
class Case:
    name: str
    level: str
    data: bytes
    offsets: list[int]  # byte offset of each record as written
    want: list[dict | None]  # each record's decoded fields (None: content not known)
    bad: int | None = None  # the bad record's index; None: the file is valid
    field: str | None = None  # the field its error must name; None: any field
    stops: bool = False  # the framing is broken: with skip, nothing after `bad` is read
    maybe_ok: bool = False  # a change no reader can detect may also decode


def _file(records: list[Record]) -> tuple[bytes, list[int]]:
    framed = [_framed(r.payload()) for r in records]
    return b"".join(framed), np.cumsum([0] + [len(f) for f in framed[:-1]]).tolist()


def _case(name, records, **kw) -> Case:
    data, offsets = _file(records)
    return Case(name, records[0].level, data, offsets, [r.want for r in records], **kw)


def _header(length: int) -> bytes:
    """A record header whose length CRC is right, whatever the length."""
    packed = struct.pack("<Q", length)
    return packed + struct.pack("<I", reference_masked_crc(packed))


# --- Reading a case as the pipeline does, and checking the outcome. ---


def _read(path: str, spec, bad_records):
    """(the batch, or None for an empty file) through the verified reader and the batcher."""
    items = [(path, *r) for r in tfrecord.read_records(path, on_error=bad_records)]
    if not items:
        return None
    return pipeline.make_batcher(spec, BATCH, bad_records)(items)


def _read_pipeline(path: str, spec, bad_records):
    """The same through the grain pipeline (file interleaving, prefetch, batching)."""
    batches = list(pipeline.eval_batches([path], spec, batch_size=BATCH, bad_records=bad_records))
    assert len(batches) <= 1
    return batches[0] if batches else None


def _check_rows(batch, want: list[dict | None], level: str, where: str) -> None:
    """The batch's real rows are the `want` records, exactly (None rows are not compared)."""
    rows = [] if batch is None else np.flatnonzero(batch["weights"]).tolist()
    assert rows == list(range(len(want))), f"{where}: rows {rows}, expected {len(want)}"
    if not want:
        return
    for key in ("rgb", "audio"):
        known = [w[key] for w in want if w is not None]
        is_float = any(x.dtype != np.uint8 for x in known)
        if len(known) == len(want):
            # uint8 stays uint8 (4x less to ship); float only where a record has floats.
            expected = np.float32 if is_float else np.uint8
            assert batch[key].dtype == expected, f"{where}: {key} is {batch[key].dtype}"
        for row, w in enumerate(want):
            if w is None:
                continue
            x = w[key]
            if batch[key].dtype != np.uint8 and x.dtype == np.uint8:
                x = _dequantize(x)
            got = batch[key][row]
            if level == "frame":
                assert batch["num_frames"][row] == len(x), where
                got, pad = got[: len(x)], got[len(x) :]
                assert not pad.any(), f"{where}: {key} row {row} padding is not zero"
            np.testing.assert_array_equal(got, x, err_msg=f"{where}: {key} row {row}")
    for row, w in enumerate(want):
        if w is not None:
            assert batch["ids"][row] == w["id"], where
            assert np.flatnonzero(batch["labels"][row]).tolist() == w["labels"], where


def _check_error(error: RecordError, case: Case, path: str) -> None:
    where = f"case {case.name}: {error}"
    assert error.path == path and error.index == case.bad, where
    assert error.offset == case.offsets[case.bad], where
    if case.field is not None:
        assert error.field == case.field, where
    text = str(error)
    assert text.startswith(f"{path}: record {case.bad} (byte offset {error.offset}), field "), where


def check_case(case: Case, tmp_path, *, via_pipeline: bool = False) -> None:
    path = str(tmp_path / f"{case.name}.tfrecord")
    with open(path, "wb") as f:
        f.write(case.data)
    read = _read_pipeline if via_pipeline else _read
    spec = SPECS[case.level]
    try:
        # Raise mode: the first bad record stops reading with its RecordError.
        try:
            batch = read(path, spec, None)
        except RecordError as e:
            assert case.bad is not None, f"case {case.name}: valid file raised {e}"
            _check_error(e, case, path)
        else:
            assert case.bad is None or case.maybe_ok, f"case {case.name}: no error raised"
            if case.bad is None:
                _check_rows(batch, case.want, case.level, f"case {case.name}")
        # Skip mode: the bad record is counted and left out, and so is the rest of a file
        # whose framing broke; every other record comes out exactly.
        bad = pipeline.BadRecords()
        batch = read(path, spec, bad)
        if case.bad is None:
            assert bad.count == 0, f"case {case.name}: skipped {bad.seen}"
            want = case.want
        elif bad.count == 0:  # an undetectable change that decoded (maybe_ok)
            assert case.maybe_ok, f"case {case.name}: nothing skipped"
            want = [w if i != case.bad else None for i, w in enumerate(case.want)]
        else:
            assert bad.seen == {(path, case.bad)}, f"case {case.name}: skipped {bad.seen}"
            n = len(case.want)
            want = [
                case.want[i] for i in range(n) if i < case.bad or (i > case.bad and not case.stops)
            ]
        _check_rows(batch, want, case.level, f"case {case.name} (skip)")
    except (RecordError, AssertionError):
        raise
    except Exception as e:  # a bare exception: the bug this file exists to catch
        raise AssertionError(f"case {case.name}: {type(e).__name__}: {e}") from e


# --- Generators. ---

LEVELS = ("frame", "video")


def truncations(rng, level: str, n: int) -> list[Case]:
    records = base_records(rng, level, f"t{level}")
    data, offsets = _file(records)
    ends = offsets[1:] + [len(data)]
    # Every part of a record (header, payload, data CRC, the byte either side of a boundary)
    # and random cuts.
    cuts = {c for o in offsets for c in (o, o + 1, o + 5, o + 11, o + 12, o + 13)}
    cuts |= {e - d for e in ends for d in (1, 3, 4, 5)}
    cuts |= set(rng.integers(1, len(data), n).tolist())
    cases = []
    for cut in sorted(c for c in cuts if 0 < c < len(data)):
        k = int(np.searchsorted(offsets, cut, side="right")) - 1
        inside = cut - offsets[k]
        name = f"truncate_{level}_{cut}"
        if inside == 0:  # at a record boundary: a valid, shorter file
            cases.append(Case(name, level, data[:cut], offsets, [r.want for r in records[:k]]))
            continue
        size = ends[k] - offsets[k]
        field = "length" if inside < 12 else "data" if inside < size - 4 else "data_crc"
        want = [r.want for r in records]
        cases.append(Case(name, level, data[:cut], offsets, want, k, field, stops=True))
    return cases


def bit_flips(rng, level: str, n: int) -> list[Case]:
    records = base_records(rng, level, f"b{level}")
    data, offsets = _file(records)
    want = [r.want for r in records]
    cases = []
    ends = offsets[1:] + [len(data)]
    bits = set(rng.choice(len(data) * 8, n // 2, replace=False).tolist())  # mostly payload
    for k in rng.integers(len(records), size=n - n // 2):  # a header or a data CRC
        start, size = (offsets[k], 12) if rng.random() < 0.75 else (ends[k] - 4, 4)
        bits.add(start * 8 + int(rng.integers(size * 8)))
    for bit in sorted(bits):
        pos = bit // 8
        k = int(np.searchsorted(offsets, pos, side="right")) - 1
        corrupt = bytearray(data)
        corrupt[pos] ^= 1 << (bit % 8)
        # A flip in the length or its CRC breaks the framing; one in the payload or its CRC
        # costs just that record.
        in_header = pos - offsets[k] < 12
        field = "length_crc" if in_header else "data_crc"
        name = f"flip_{level}_{bit}"
        cases.append(Case(name, level, bytes(corrupt), offsets, want, k, field, in_header))
    return cases


def huge_lengths(rng, level: str, n: int) -> list[Case]:
    records = base_records(rng, level, f"h{level}")
    data, offsets = _file(records)
    cases = []
    for i in range(n):
        k = int(rng.integers(0, len(records)))
        left = len(data) - offsets[k] - 12  # payload bytes the file could still hold
        choice = i % 4
        if choice == 0:  # the very top of the range: OverflowError before the fix
            length = [2**64 - 1, 2**63, 2**63 - 1][int(rng.integers(3))]
        elif choice == 1:  # huge: MemoryError before the fix
            length = int(rng.integers(tfrecord.MAX_RECORD_BYTES + 1, 2**62))
        elif choice == 2:  # just over the limit
            length = tfrecord.MAX_RECORD_BYTES + int(rng.integers(1, 1000))
        else:  # under the limit but longer than the rest of the file
            length = int(rng.integers(left + 1, left + 10_000))
        field = "length" if length > tfrecord.MAX_RECORD_BYTES else "data"
        corrupt = data[: offsets[k]] + _header(length) + data[offsets[k] + 12 :]
        want = [r.want for r in records]
        cases.append(
            Case(f"length_{level}_{i}_{length}", level, corrupt, offsets, want, k, field, True)
        )
    return cases


def _frames_of(record: Record) -> int:
    return len(record.want["rgb"])


def _payload_corruption(rng, record: Record, kind: str) -> tuple[Record, str | None, bool]:
    """(the changed record, the field its error names or None if it stays valid, maybe_ok)."""
    r = record.copy()
    w = dict(r.want)
    frame = r.level == "frame"
    key = str(rng.choice(["rgb", "audio"]))
    proto_key = key if frame else _VIDEO_KEYS[key]
    if kind == "missing":
        drop = str(rng.choice(["id", "labels", proto_key]))
        if drop in r.lists:
            del r.lists[drop]
        else:
            del r.context[drop]
        if drop == "labels":  # unlabelled (test) data leaves them out
            w["labels"] = []
            r.want = w
            return r, None, False
        return r, drop, False
    if kind == "extra":  # unknown keys are ignored, as TensorFlow's parser does
        extras = [int64_feature([1, -2]), float_feature([0.5]), bytes_feature([b"x" * 2000])]
        r.context[f"extra_{rng.integers(100)}"] = extras[int(rng.integers(len(extras)))]
        if frame:
            r.lists["extra"] = [bytes_feature([b"abc"])] * int(rng.integers(0, 3))
        return r, None, False
    if kind == "labels":
        label = int(rng.choice([C, C + int(rng.integers(1, 10**6)), -1, 2**40, -(2**40)]))
        r.context["labels"] = int64_feature(w["labels"] + [label])
        return r, "labels", False
    if kind == "tokens":  # checked against config.data.text_vocab_size
        r.context["text_tokens"] = int64_feature([1, VOCAB + int(rng.integers(0, 100))])
        return r, "text_tokens", False
    if kind == "two_ids":
        r.context["id"] = bytes_feature([b"a", b"b"])
        return r, "id", False
    if kind == "size" and not frame:
        size = int(rng.choice([0, _DIMS[key] - 1, _DIMS[key] + 1, 2 * _DIMS[key]]))
        r.context[proto_key] = float_feature([0.5] * size)
        return r, proto_key, False
    if kind == "dtype" and not frame:  # video-level features are float lists only
        quantized = rng.integers(0, 256, _DIMS[key], dtype=np.uint8).tobytes()
        wrong = [bytes_feature([quantized]), int64_feature([1] * _DIMS[key])]
        r.context[proto_key] = wrong[int(rng.integers(2))]
        return r, proto_key, False
    if kind == "nan":
        bad = float(rng.choice([np.nan, np.inf, -np.inf]))
        if not frame:
            values = w[key].copy()
            values[int(rng.integers(len(values)))] = bad
            r.context[proto_key] = float_feature(values.tolist())
            return r, proto_key, False
        values = _floats(rng, (2, _DIMS[key]))
        values[1, int(rng.integers(_DIMS[key]))] = bad
        r.lists[key] = _frame_features(values)
        r.lists["rgb" if key == "audio" else "audio"] = _frame_features(
            _random_frames(rng, "rgb" if key == "audio" else "audio", 2, "uint8")
        )
        return r, key, False
    if kind == "size":  # a frame of the wrong size, e.g. rgb bytes not 1024
        n = max(_frames_of(r), 1)
        frames = list(_frame_features(_random_frames(rng, key, n, "uint8")))
        other = "rgb" if key == "audio" else "audio"
        r.lists[other] = _frame_features(_random_frames(rng, other, n, "uint8"))
        t = int(rng.integers(n))
        if rng.random() < 0.5:
            size = int(rng.choice([0, 1, _DIMS[key] - 1, _DIMS[key] + 1, 1000, 3 * _DIMS[key]]))
            frames[t] = bytes_feature([bytes(size)])
        else:
            size = int(rng.choice([0, _DIMS[key] - 1, _DIMS[key] + 1]))
            frames = [float_feature([0.25] * _DIMS[key])] * n
            frames[t] = float_feature([0.25] * size)
        r.lists[key] = frames
        return r, key, False
    if kind == "count":  # rgb and audio with different frame counts
        n = _frames_of(r)
        r.lists[key] = _frame_features(_random_frames(rng, key, n + 1, "uint8"))
        return r, "audio", False
    if kind == "dtype":  # bytes and floats mixed inside one feature list, or int64 frames
        n = int(rng.integers(2, 4))
        other = "rgb" if key == "audio" else "audio"
        r.lists[other] = _frame_features(_random_frames(rng, other, n, "uint8"))
        frames = _frame_features(_random_frames(rng, key, n, "uint8"))
        if rng.random() < 0.5:
            frames[int(rng.integers(n))] = float_feature([0.25] * _DIMS[key])
        else:
            frames = [int64_feature([1] * _DIMS[key])] * n
        r.lists[key] = frames
        return r, key, False
    if kind == "garbage":
        return _Raw(r, rng.bytes(int(rng.integers(0, 200)))), None, False
    if kind == "flip":  # a payload bit flip under a valid CRC: undetectable, may decode
        payload = bytearray(r.payload())
        bit = int(rng.integers(len(payload) * 8))
        payload[bit // 8] ^= 1 << (bit % 8)
        return _Raw(r, bytes(payload)), None, True
    if kind == "cut":  # a payload cut short under a valid CRC
        payload = r.payload()
        return _Raw(r, payload[: int(rng.integers(0, len(payload)))]), None, False
    raise ValueError(kind)


class _Raw(Record):
    """A record whose payload bytes are given."""

    def __init__(self, record: Record, payload: bytes):
        super().__init__(record.level, {}, {}, None)
        self._payload = payload

    def payload(self) -> bytes:
        return self._payload


PAYLOAD_KINDS = (
    "missing",
    "extra",
    "labels",
    "tokens",
    "two_ids",
    "size",
    "dtype",
    "nan",
    "count",
    "garbage",
    "flip",
    "cut",
)


def payload_corruptions(rng, level: str, n: int) -> list[Case]:
    cases = []
    for i in range(n):
        kind = PAYLOAD_KINDS[i % len(PAYLOAD_KINDS)]
        if kind == "count" and level == "video":
            kind = "size"
        records = base_records(rng, level, f"p{level}{i}-", n=3)
        k = int(rng.integers(len(records)))
        records[k], field, maybe_ok = _payload_corruption(rng, records[k], kind)
        valid = field is None and kind in ("missing", "extra")
        name = f"{kind}_{level}_{i}"
        if valid:
            cases.append(_case(name, records))
        else:
            cases.append(_case(name, records, bad=k, field=field, maybe_ok=maybe_ok))
    return cases


# --- Tests. ---


@pytest.mark.parametrize("level", LEVELS)
def test_truncation_at_many_offsets(tmp_path, level):
    rng = np.random.default_rng(1 if level == "frame" else 2)
    cases = truncations(rng, level, 30)
    assert len(cases) > 40
    for case in cases:
        check_case(case, tmp_path)


@pytest.mark.parametrize("level", LEVELS)
def test_bit_flips(tmp_path, level):
    rng = np.random.default_rng(3 if level == "frame" else 4)
    for case in bit_flips(rng, level, 40):
        check_case(case, tmp_path)


@pytest.mark.parametrize("level", LEVELS)
def test_huge_length_with_valid_crc_is_a_record_error(tmp_path, level):
    # Before MAX_RECORD_BYTES these raised OverflowError or MemoryError, or allocated 16 GB.
    rng = np.random.default_rng(5 if level == "frame" else 6)
    for case in huge_lengths(rng, level, 20):
        check_case(case, tmp_path)
        # The in-memory reader (model server bodies) says the same.
        with pytest.raises(RecordError) as info:
            list(tfrecord.read_records("<body>", data=case.data))
        assert (info.value.index, info.value.field) == (case.bad, case.field)


@pytest.mark.parametrize("level", LEVELS)
def test_bad_payloads_under_valid_crcs(tmp_path, level):
    rng = np.random.default_rng(7 if level == "frame" else 8)
    cases = payload_corruptions(rng, level, 96)
    for case in cases:
        check_case(case, tmp_path)


def test_sample_through_the_grain_pipeline(tmp_path):
    rng = np.random.default_rng(9)
    for level in LEVELS:
        cases = (
            truncations(rng, level, 2)[::7]
            + bit_flips(rng, level, 3)
            + huge_lengths(rng, level, 4)
            + payload_corruptions(rng, level, 12)[::2]
        )
        for case in cases:
            check_case(case, tmp_path, via_pipeline=True)


def test_mixed_dtypes_decode_exactly(tmp_path):
    # uint8 rgb with float audio was batched as one dtype: audio 0.25 became uint8 0,
    # dequantized on the device to -1.9921875.
    rgb = np.arange(2 * 1024).reshape(2, 1024).astype(np.uint8)
    audio = np.full((2, 128), 0.25, np.float32)
    only = frame_level("mixed", [3], rgb, audio)
    check_case(_case("mixed_alone", [only]), tmp_path)
    path = tmp_path / "mixed.tfrecord"
    path.write_bytes(_file([only])[0])
    [batch] = list(pipeline.eval_batches([str(path)], SPECS["frame"], batch_size=2))
    assert batch["audio"].dtype == np.float32 and (batch["audio"][0, :2] == 0.25).all()
    assert batch["rgb"].dtype == np.uint8 and (batch["rgb"][0, :2] == rgb).all()
    # With a float-rgb record beside it, rgb turns float (dequantized exactly) and audio
    # stays float; a uint8-only key of the batch stays uint8.
    other = frame_level(
        "other", [], np.full((1, 1024), -0.5, np.float32), np.zeros((1, 128), np.uint8)
    )
    check_case(_case("mixed_pair", [only, other]), tmp_path)
    uint8_audio = frame_level(
        "q", [1], np.full((1, 1024), 0.75, np.float32), np.full((1, 128), 255, np.uint8)
    )
    check_case(_case("uint8_audio", [uint8_audio]), tmp_path)
    # Random mixes, each key of each record its own kind.
    rng = np.random.default_rng(10)
    for level in LEVELS:
        for i in range(15):
            records = base_records(rng, level, f"m{level}{i}-", n=int(rng.integers(1, 6)))
            check_case(_case(f"mix_{level}_{i}", records), tmp_path)


def test_video_level_features_each_need_a_float_list(tmp_path):
    rng = np.random.default_rng(11)
    for key, proto_key in _VIDEO_KEYS.items():
        record = video_level("v", [1], _floats(rng, 1024), _floats(rng, 128))
        quantized = rng.integers(0, 256, _DIMS[key], dtype=np.uint8).tobytes()
        record.context[proto_key] = bytes_feature([quantized])
        check_case(_case(f"bytes_{proto_key}", [record], bad=0, field=proto_key), tmp_path)
        with pytest.raises(RecordError, match=f"'{proto_key}': is a bytes_list, expected a float"):
            yt8m.decode_video_example(record.payload())


def test_limit_is_a_module_constant(tmp_path, monkeypatch):
    records = base_records(np.random.default_rng(12), "frame", "lim", n=3)
    data, offsets = _file(records)
    path = tmp_path / "limit.tfrecord"
    path.write_bytes(data)
    biggest = max(len(r.payload()) for r in records)
    monkeypatch.setattr(tfrecord, "MAX_RECORD_BYTES", biggest - 1)
    big = max(range(3), key=lambda i: len(records[i].payload()))
    with pytest.raises(RecordError, match="MAX_RECORD_BYTES") as info:
        list(tfrecord.read_records(str(path)))
    assert (info.value.index, info.value.offset, info.value.field) == (big, offsets[big], "length")


def test_bad_indexed_entry_is_a_record_error():
    # An ArrayRecord entry that is not a wrapped record (a foreign or damaged dataset).
    class Info:
        config_name = "frame"
        features = None
        splits = {"train": type("S", (), {"file_instructions": []})()}

    from vmjax.data import tfds_yt8m

    source = indexed.Source("/data/ds", "train", [b"\xff\xff", b"\x0a\x00"], Info())
    source._features = tfds_yt8m.features()
    source._files, source._skips, source._starts = ["/data/ds/shard-0"], [5], [0, 2]
    for i in range(2):
        with pytest.raises(RecordError) as info:
            source.item(i)
        assert info.value.path == "/data/ds/shard-0" and info.value.index == 5 + i
        assert info.value.field == "record"
