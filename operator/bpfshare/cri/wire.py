"""The protocol buffers wire format, the part the CRI messages bpfshare uses need (proto3).

Hand-written rather than generated: four request and response types of k8s.io/cri-api's
``api.proto`` are read and written here (``messages.py``), and a generated module would bring the
``protobuf`` runtime and a thousand lines of descriptors for them. Encoding follows
https://protobuf.dev/programming-guides/encoding/: a field is a varint key ``(number << 3) | wire
type`` and a payload; unknown fields are skipped (a newer runtime adds fields), as protobuf does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

VARINT, I64, LEN, I32 = 0, 1, 2, 5
MAX_MESSAGE = 16 << 20  # gRPC's default receive limit is 4 MiB; a runtime's answer never comes near


class WireError(ValueError):
    """Bytes that are not a protobuf message (truncated, or a wire type that cannot be)."""


def varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int32/int64 negatives are ten-byte two's complement varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def field_varint(number: int, value: int) -> bytes:
    """A varint field; proto3 leaves a zero out."""
    return key(number, VARINT) + varint(value) if value else b""


def field_bytes(number: int, value: bytes) -> bytes:
    return key(number, LEN) + varint(len(value)) + value


def field_string(number: int, value: str) -> bytes:
    return field_bytes(number, value.encode()) if value else b""


def field_map(number: int, entries: dict[str, str]) -> bytes:
    """``map<string, string>``: one length-delimited entry {1: key, 2: value} per item, sorted (stable)."""
    return b"".join(
        field_bytes(number, field_bytes(1, k.encode()) + field_bytes(2, v.encode())) for k, v in sorted(entries.items())
    )


@dataclass(frozen=True)
class Field:
    number: int
    wire_type: int
    value: int | bytes  # an int for VARINT, I64 and I32; the bytes for LEN


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than ten bytes")


def fields(data: bytes) -> Iterator[Field]:
    """The fields of one message, in order (a repeated field yields each element)."""
    if len(data) > MAX_MESSAGE:
        raise WireError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == VARINT:
            value, pos = _read_varint(data, pos)
            yield Field(number, wire_type, value)
        elif wire_type in (I64, I32):
            size = 8 if wire_type == I64 else 4
            if pos + size > len(data):
                raise WireError("truncated fixed-size field")
            yield Field(number, wire_type, int.from_bytes(data[pos : pos + size], "little"))
            pos += size
        elif wire_type == LEN:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise WireError(f"field {number}: {size} bytes announced, {len(data) - pos} left")
            yield Field(number, wire_type, data[pos : pos + size])
            pos += size
        else:
            raise WireError(f"field {number}: wire type {wire_type} (groups are not proto3)")


def as_bytes(field: Field) -> bytes:
    if not isinstance(field.value, bytes):
        raise WireError(f"field {field.number}: expected a length-delimited value, got wire type {field.wire_type}")
    return field.value


def as_int(field: Field) -> int:
    if isinstance(field.value, bytes):
        raise WireError(f"field {field.number}: expected a number, got a length-delimited value")
    return field.value


def map_entry(data: bytes) -> tuple[str, str]:
    """One entry of a ``map<string, string>``."""
    k = v = ""
    for f in fields(data):
        if f.number == 1:
            k = as_bytes(f).decode()
        elif f.number == 2:
            v = as_bytes(f).decode()
    return k, v
