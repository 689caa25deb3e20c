"""TFRecord framing: read and write length-prefixed, CRC32C-checked records without TensorFlow.

Each record is: uint64 length (little endian), uint32 masked CRC32C of those 8 bytes, the
payload, uint32 masked CRC32C of the payload.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import BinaryIO

import crc32c

from vmjax.errors import DataError

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked CRC of the length
_CRC = struct.Struct("<I")
# Buffered reads of this size keep syscalls rare without holding whole shards in memory.
_READ_BUFFER = 1 << 20
# The largest record we read; a longer length field is corrupt. The length CRC is only 32 bits
# (1 in 4 billion garbage headers pass it), and believing a garbage length of up to 2**64 - 1
# bytes means an OverflowError or a MemoryError (or 16 GB allocated) instead of a RecordError.
# Real YT8M records are far smaller: a frame-level record is ~1.2 KB per second of video
# (~350 KB at 300 frames), and even float frames of a 16-hour video stay under this.
MAX_RECORD_BYTES = 256 << 20


class RecordError(DataError, ValueError):
    """Bad input; the message names file, record index, byte offset and field."""

    def __init__(self, path: str, index: int, offset: int, field: str, message: str):
        self.path, self.index, self.offset, self.field = path, index, offset, field
        self.message = message
        super().__init__(
            f"{path}: record {index} (byte offset {offset}), field '{field}': {message}"
        )

    def __reduce__(self):
        # Default exception pickling calls cls(*args) with the formatted string; grain workers
        # pickle exceptions across processes, so rebuild from the original parts instead.
        return type(self), (self.path, self.index, self.offset, self.field, self.message)


def masked_crc32c(data: bytes) -> int:
    """CRC32C of `data`, masked as TFRecord does (so CRCs of CRCs stay well distributed)."""
    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def read_records(
    path: str,
    *,
    start_offset: int = 0,
    start_index: int = 0,
    verify_crc: bool = True,
    on_error: Callable[[RecordError], None] | None = None,
    data: bytes | None = None,
) -> Iterator[tuple[int, int, bytes]]:
    """Yields (record_index, byte_offset, payload) for each record of a TFRecord file.

    Args:
      data: read these bytes (e.g. a request body) instead of the file; `path` then only
        names them in errors.
      start_offset: byte offset of a record start to resume from.
      start_index: index reported for the record at `start_offset`.
      verify_crc: check payload CRCs. The 8-byte length CRC is always checked, and the length
        must fit in the rest of the file and in MAX_RECORD_BYTES, as a corrupt length would
        otherwise make us read (and allocate) garbage.
      on_error: None raises RecordError at bad framing. A callable is handed the error and
        reading goes on where it can: past a record whose payload CRC is wrong (its length
        was intact), and not at all past a bad length or a truncation (the file ends there).
    """
    if on_error is None:
        yield from _read_records(path, start_offset, start_index, verify_crc, data)
        return
    records = _read_records(path, start_offset, start_index, verify_crc, data)
    while True:
        try:
            yield next(records)
        except StopIteration:
            return
        except _PayloadCRCError as e:  # framing intact: skip just this record
            on_error(e)
            records = _read_records(path, e.offset + e.size, e.index + 1, verify_crc, data)
        except RecordError as e:  # the rest of the file cannot be framed
            on_error(e)
            return


class _PayloadCRCError(RecordError):
    """A payload CRC mismatch; `size` is the whole record's length in the file."""

    def __init__(self, path, index, offset, field, message, size):
        super().__init__(path, index, offset, field, message)
        self.size = size

    def __reduce__(self):
        args = (self.path, self.index, self.offset, self.field, self.message, self.size)
        return type(self), args


def _read_records(
    path: str, start_offset: int, start_index: int, verify_crc: bool, data: bytes | None = None
) -> Iterator[tuple[int, int, bytes]]:
    index, offset = start_index, start_offset
    source = io.BytesIO(data) if data is not None else open(path, "rb", buffering=_READ_BUFFER)
    with source as f:
        size = _size(f, data)
        f.seek(start_offset)
        while True:
            header = f.read(_HEADER.size)
            if not header:
                return
            if len(header) < _HEADER.size:
                raise RecordError(
                    path,
                    index,
                    offset,
                    "length",
                    f"truncated header: {len(header)} of {_HEADER.size} bytes",
                )
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise RecordError(
                    path,
                    index,
                    offset,
                    "length_crc",
                    f"stored {length_crc:#010x}, computed {masked_crc32c(header[:8]):#010x}",
                )
            if length > MAX_RECORD_BYTES:
                raise RecordError(
                    path,
                    index,
                    offset,
                    "length",
                    f"length {length} is over the {MAX_RECORD_BYTES} bytes a record may have "
                    "(tfrecord.MAX_RECORD_BYTES): the length field is corrupt",
                )
            left = None if size is None else max(size - offset - _HEADER.size, 0)
            if left is not None and length > left:  # checked before reading: no allocation
                raise _truncated_payload(path, index, offset, left, length)
            payload = f.read(length)
            if len(payload) < length:
                raise _truncated_payload(path, index, offset, len(payload), length)
            trailer = f.read(_CRC.size)
            if len(trailer) < _CRC.size:
                raise RecordError(
                    path,
                    index,
                    offset,
                    "data_crc",
                    f"truncated data CRC: {len(trailer)} of {_CRC.size} bytes",
                )
            if verify_crc:
                (data_crc,) = _CRC.unpack(trailer)
                if masked_crc32c(payload) != data_crc:
                    raise _PayloadCRCError(
                        path,
                        index,
                        offset,
                        "data_crc",
                        f"stored {data_crc:#010x}, computed {masked_crc32c(payload):#010x}",
                        _HEADER.size + length + _CRC.size,
                    )
            yield index, offset, payload
            index += 1
            offset += _HEADER.size + length + _CRC.size


def _size(f: BinaryIO, data: bytes | None) -> int | None:
    """Bytes in the source, None where that is unknown (a pipe, a character device)."""
    if data is not None:
        return len(data)
    info = os.fstat(f.fileno())
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _truncated_payload(path: str, index: int, offset: int, left: int, length: int) -> RecordError:
    return RecordError(
        path,
        index,
        offset,
        "data",
        f"truncated payload: {left} of {length} bytes (the file ends inside the record, "
        "or its length field is corrupt)",
    )


class TFRecordWriter:
    """Writes records to `path` atomically: a temp file is renamed into place on clean close."""

    def __init__(self, path: str):
        self.path = path
        self._tmp_path = f"{path}.tmp-{os.getpid()}"
        self._file: BinaryIO | None = open(self._tmp_path, "wb", buffering=_READ_BUFFER)

    def write(self, payload: bytes) -> None:
        """Appends one record."""
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        header = struct.pack("<Q", len(payload))
        self._file.write(header + _CRC.pack(masked_crc32c(header)))
        self._file.write(payload)
        self._file.write(_CRC.pack(masked_crc32c(payload)))

    def close(self) -> None:
        """Flushes and moves the finished file under its final name."""
        if self._file is None:
            return
        f, self._file = self._file, None
        f.flush()
        # fsync before the rename so a crash cannot leave a renamed but empty file.
        os.fsync(f.fileno())
        f.close()
        os.replace(self._tmp_path, self.path)

    def abort(self) -> None:
        """Discards everything written; nothing appears under the final name."""
        if self._file is None:
            return
        f, self._file = self._file, None
        f.close()
        os.remove(self._tmp_path)

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_records(path: str, payloads: Iterable[bytes]) -> int:
    """Writes all payloads to `path` atomically; returns how many were written."""
    count = 0
    with TFRecordWriter(path) as writer:
        for payload in payloads:
            writer.write(payload)
            count += 1
    return count
