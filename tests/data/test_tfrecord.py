"""TFRecord framing against a pure-Python CRC32C and hand-built record bytes."""

import os
import pickle
import struct
import tracemalloc

import numpy as np
import pytest

from vmjax.data import tfrecord
from vmjax.data.tfrecord import (
    RecordError,
    TFRecordWriter,
    masked_crc32c,
    read_records,
    write_records,
)


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            # 0x82F63B78 is the Castagnoli polynomial 0x1EDC6F41, bit-reversed.
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def reference_crc32c(data: bytes) -> int:
    """Bytewise table CRC32C, independent of the `crc32c` package."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def reference_masked_crc(data: bytes) -> int:
    crc = reference_crc32c(data)
    rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    return (rotated + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(payload: bytes) -> bytes:
    """One TFRecord, framed by hand with the reference CRC."""
    length = struct.pack("<Q", len(payload))
    return (
        length
        + struct.pack("<I", reference_masked_crc(length))
        + payload
        + struct.pack("<I", reference_masked_crc(payload))
    )


def _payloads() -> list[bytes]:
    rng = np.random.default_rng(0)
    small = [rng.bytes(int(n)) for n in rng.integers(0, 300, 500)]
    # 3 MB spans several 1 MB read buffers.
    return [b""] + small + [rng.bytes(3 << 20), b"", b"tail"]


def test_reference_crc32c_check_value():
    # The standard CRC-32C check value.
    assert reference_crc32c(b"123456789") == 0xE3069283


def test_masked_crc32c_known_value():
    # crc = 0xE3069283
    # crc >> 15                 = 0x0001C60D   (top 17 bits)
    # (crc << 17) mod 2**32     = 0x25060000   (low 15 bits 0x1283 moved up)
    # rotated = OR              = 0x2507C60D
    # + 0xA282EAD8 mod 2**32    = 0xC78AB0E5
    assert masked_crc32c(b"123456789") == 0xC78AB0E5
    assert reference_masked_crc(b"123456789") == 0xC78AB0E5
    # Empty input: crc 0 -> rotated 0 -> the mask delta itself.
    assert masked_crc32c(b"") == 0xA282EAD8


def test_masked_crc32c_matches_reference_on_random_data():
    rng = np.random.default_rng(1)
    for n in [1, 7, 8, 100, 4097]:
        data = rng.bytes(n)
        assert masked_crc32c(data) == reference_masked_crc(data)


def test_round_trip_indices_offsets_and_bytes(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    payloads = _payloads()
    assert write_records(path, payloads) == len(payloads)
    records = list(read_records(path))
    assert [p for _, _, p in records] == payloads
    assert [i for i, _, _ in records] == list(range(len(payloads)))
    expected_offsets = np.cumsum([0] + [16 + len(p) for p in payloads[:-1]]).tolist()
    assert [o for _, o, _ in records] == expected_offsets
    # Bit-for-bit equal to independently framed bytes.
    with open(path, "rb") as f:
        assert f.read() == b"".join(frame_record(p) for p in payloads)


def test_reads_independently_framed_file(tmp_path):
    path = tmp_path / "hand.tfrecord"
    payloads = [b"", b"x", bytes(range(256)) * 40]
    path.write_bytes(b"".join(frame_record(p) for p in payloads))
    assert [p for _, _, p in read_records(str(path))] == payloads


def test_reads_bytes_in_memory_like_a_file():
    payloads = [b"", b"x", bytes(range(256)) * 40]
    data = b"".join(frame_record(p) for p in payloads)
    assert [p for _, _, p in read_records("<body>", data=data)] == payloads
    # Errors name the given source, with the record's index and offset.
    cut = data[: len(frame_record(b"")) + len(frame_record(b"x")) + 20]
    with pytest.raises(RecordError) as info:
        list(read_records("<body>", data=cut))
    _assert_error(info.value, "<body>", 2, 16 + 17, "data")


def test_resume_from_offset(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    payloads = [b"a" * 10, b"b" * 20, b"c" * 30]
    write_records(path, payloads)
    offset = 2 * 16 + 10 + 20
    assert list(read_records(path, start_offset=offset, start_index=2)) == [(2, offset, b"c" * 30)]


def test_empty_file_yields_nothing(tmp_path):
    path = tmp_path / "empty.tfrecord"
    path.write_bytes(b"")
    assert list(read_records(str(path))) == []


def _corrupt(tmp_path, position_of, name="bad.tfrecord"):
    """Writes 4 records and flips one byte at position_of(offsets); returns path, offsets."""
    path = tmp_path / name
    payloads = [b"first", b"second!", b"third record", b"fourth"]
    offsets = np.cumsum([0] + [16 + len(p) for p in payloads[:-1]]).tolist()
    data = bytearray(b"".join(frame_record(p) for p in payloads))
    data[position_of(offsets)] ^= 0x01
    path.write_bytes(bytes(data))
    return str(path), offsets


def _assert_error(error: RecordError, path: str, index: int, offset: int, field: str):
    assert (error.path, error.index, error.offset, error.field) == (path, index, offset, field)
    text = str(error)
    assert path in text and f"record {index}" in text
    assert f"byte offset {offset}" in text and f"'{field}'" in text


def test_corrupt_data_crc(tmp_path):
    path, offsets = _corrupt(tmp_path, lambda offsets: offsets[2] + 12 + 3)
    records = read_records(path)
    assert next(records)[2] == b"first" and next(records)[2] == b"second!"
    with pytest.raises(RecordError) as info:
        next(records)
    _assert_error(info.value, path, 2, offsets[2], "data_crc")
    # Without CRC checks the damaged payload comes through.
    damaged = [p for _, _, p in read_records(path, verify_crc=False)][2]
    assert damaged == b"thi" + bytes([ord("r") ^ 1]) + b"d record"


def test_corrupt_length_crc(tmp_path):
    # Flipping a bit of the stored length makes its CRC mismatch.
    path, offsets = _corrupt(tmp_path, lambda offsets: offsets[1])
    with pytest.raises(RecordError) as info:
        list(read_records(path, verify_crc=False))
    _assert_error(info.value, path, 1, offsets[1], "length_crc")


@pytest.mark.parametrize(
    "cut, field",
    [(5, "length"), (12 + 3, "data"), (12 + 7 + 1, "data_crc")],
    ids=["header", "payload", "trailing_crc"],
)
def test_truncated_file(tmp_path, cut, field):
    path = tmp_path / "train0.tfrecord"
    data = frame_record(b"whole") + frame_record(b"cut off")
    offset = len(frame_record(b"whole"))
    path.write_bytes(data[: offset + cut])
    with pytest.raises(RecordError) as info:
        list(read_records(str(path)))
    _assert_error(info.value, str(path), 1, offset, field)


def _valid_length_header(length: int) -> bytes:
    packed = struct.pack("<Q", length)
    return packed + struct.pack("<I", reference_masked_crc(packed))


@pytest.mark.parametrize(
    "length", [2**64 - 1, 2**63, 2**40, tfrecord.MAX_RECORD_BYTES + 1], ids=str
)
def test_huge_length_with_valid_crc(tmp_path, length):
    # A 32-bit length CRC lets 1 in 4 billion garbage headers through; their lengths raised
    # OverflowError (>= 2**63) or MemoryError instead of naming the record.
    path = tmp_path / "train0.tfrecord"
    path.write_bytes(frame_record(b"ok") + _valid_length_header(length) + b"garbage")
    for source in ({"path": str(path)}, {"path": "<body>", "data": path.read_bytes()}):
        with pytest.raises(RecordError, match="MAX_RECORD_BYTES") as info:
            list(read_records(**source))
        _assert_error(info.value, source["path"], 1, 18, "length")
    # With a skip handler, the record before it is kept and the rest of the file is lost.
    errors = []
    assert [p for _, _, p in read_records(str(path), on_error=errors.append)] == [b"ok"]
    assert [e.field for e in errors] == ["length"]


def test_length_past_the_end_is_not_read(tmp_path):
    # A plausible length longer than the file is a truncation, found without allocating it.
    path = tmp_path / "train0.tfrecord"
    path.write_bytes(_valid_length_header(tfrecord.MAX_RECORD_BYTES) + b"short")
    tracemalloc.start()
    try:
        with pytest.raises(RecordError, match="truncated payload: 5 of 268435456 bytes") as info:
            list(read_records(str(path)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _assert_error(info.value, str(path), 0, 0, "data")
    assert peak < 16 << 20


def test_record_error_message_and_pickle():
    message = "frame 3 has 1000 bytes, expected 1024"
    error = RecordError("train0.tfrecord", 17, 123456, "rgb", message)
    assert str(error) == (
        "train0.tfrecord: record 17 (byte offset 123456), field 'rgb': "
        "frame 3 has 1000 bytes, expected 1024"
    )
    assert isinstance(error, ValueError)
    # Worker processes send exceptions back pickled.
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.field == "rgb" and copy.index == 17


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "out.tfrecord"
    with TFRecordWriter(str(path)) as writer:
        writer.write(b"abc")
        assert not path.exists()  # Only the temp file exists until close.
    assert path.read_bytes() == frame_record(b"abc")
    assert os.listdir(tmp_path) == ["out.tfrecord"]


def test_writer_leaves_nothing_on_exception(tmp_path):
    path = tmp_path / "out.tfrecord"
    with pytest.raises(RuntimeError, match="boom"):
        with TFRecordWriter(str(path)) as writer:
            writer.write(b"abc")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_writer_keeps_old_file_on_exception(tmp_path):
    path = tmp_path / "out.tfrecord"
    write_records(str(path), [b"old"])

    def failing():
        yield b"new"
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError):
        write_records(str(path), failing())
    assert [p for _, _, p in read_records(str(path))] == [b"old"]
    assert os.listdir(tmp_path) == ["out.tfrecord"]
