"""Protobuf wire format, the little of it vmjax reads and writes by hand for speed.

Used where going through protobuf objects costs more than the work itself: frame bytes straight
from a SequenceExample (vmjax.data.yt8m) and the one-field Example TFDS stores records in
(vmjax.data.tfds_yt8m). Anything else goes through protobuf.
"""

from __future__ import annotations


def varint(n: int) -> bytes:
    """The base-128 varint encoding of a non-negative int."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`; raises IndexError past the end."""
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def len_fields(data: bytes, start: int, end: int):
    """(field number, value start, value end) of each length-delimited field in data[start:end].

    Raises ValueError at anything else (another wire type, a length past the end), so callers
    can fall back to the protobuf parser, which names the problem.
    """
    pos = start
    while pos < end:
        tag, pos = read_varint(data, pos)
        if tag & 7 != 2:
            raise ValueError("not a length-delimited field")
        length, pos = read_varint(data, pos)
        if pos + length > end:
            raise ValueError("length past the end")
        yield tag >> 3, pos, pos + length
        pos += length
