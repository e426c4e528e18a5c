"""KPL de-aggregation: the user records a Kinesis Producer Library aggregate packs into one record.

The aggregated format: the 4-byte magic F3 89 9A C2, a protobuf `AggregatedRecord`, then the
16-byte MD5 of the protobuf bytes:

    message AggregatedRecord {
      repeated string partition_key_table = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records = 3;
    }
    message Record {
      required uint64 partition_key_index = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes data = 3;
      repeated Tag tags = 4;          // Tag {required string key = 1; optional string value = 2;}
    }

A small decoder of that format rather than the official library (`aws-kinesis-agg`), whose
protobuf dependency would weigh on the Lambda package; the tests hold it to that library. Where
the issue is silent the library decides: a record too short to hold the magic, a digest and a
protobuf byte is plain; unknown fields, fields of an unexpected wire type and the fields of a
tag are skipped; a missing index or data is 0 or empty; the last of a repeated scalar wins.
Unlike the library, which passes a corrupt aggregate on as if it were plain (or stops halfway,
for an index out of its table), a bad checksum, bad protobuf, an index out of range or a
partition key that is not UTF-8 raises BadAggregate, so that the aggregate goes whole to the
dead letter.
"""

from __future__ import annotations

import hashlib

from runner.backends.base import Record

MAGIC = b"\xf3\x89\x9a\xc2"
_DIGEST = 16  # bytes of MD5
_SMALLEST = len(MAGIC) + _DIGEST + 1  # shorter, the library takes a record as plain
_UINT64 = (1 << 64) - 1
_MAX_FIELD = (1 << 29) - 1
_FIXED = {1: 8, 5: 4}  # wire type -> bytes: fixed64, fixed32


class BadAggregate(ValueError):
    """A record in the aggregated format that cannot be read; the text says why, in one line."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"KPL aggregate: {problem}")


def user_records(record: Record) -> list[Record]:
    """The user records of a KPL aggregate, in order, each with its own partition key, the
    aggregate's sequence number and arrival, and sub_sequence 0, 1, ...; [record] itself when
    it is not an aggregate. Raises BadAggregate for a corrupt one."""
    data = record.data
    if not data.startswith(MAGIC) or len(data) < _SMALLEST:
        return [record]
    end = len(data) - _DIGEST
    if hashlib.md5(memoryview(data)[len(MAGIC) : end]).digest() != data[end:]:
        raise BadAggregate(
            f"bad MD5 checksum of its {end - len(MAGIC)} protobuf bytes (corrupt or cut short)"
        )
    keys, hash_keys, entries = _aggregated_record(data, len(MAGIC), end)
    texts: list[str | None] = [None] * len(keys)
    users = []
    sequence, arrival = record.sequence, record.arrival
    for number, (key, hash_key, payload, at) in enumerate(entries):
        if key >= len(keys):
            raise BadAggregate(
                f"record {number} (byte {at}): partition key index {key} out of range "
                f"(table of {len(keys)})"
            )
        if hash_keys and hash_key >= hash_keys:  # the library reads it only from a table
            raise BadAggregate(
                f"record {number} (byte {at}): explicit hash key index {hash_key} out of "
                f"range (table of {hash_keys})"
            )
        text = texts[key]
        if text is None:  # like the library, only a key in use must be text
            text = texts[key] = _text(data, *keys[key], key)
        users.append(Record(sequence, text, payload, arrival, number))
    return users


def _aggregated_record(data: bytes, pos: int, end: int) -> tuple[list, int, list[tuple]]:
    """Where each partition key of the table is, how many explicit hash keys there are (a user
    record does not carry its own), and each entry: (key index, hash key index, data, byte)."""
    keys: list[tuple[int, int]] = []
    hash_keys = 0
    entries: list[tuple[int, int, bytes, int]] = []
    while pos < end:
        at = pos
        tag = data[pos]  # the tags read here take one byte; any other goes to _skip
        if tag == 0x1A:  # 3: records
            start, pos = _length(data, pos + 1, end)
            entries.append((*_record(data, start, pos), at))
        elif tag == 0x0A:  # 1: partition_key_table
            keys.append(_length(data, pos + 1, end))
            pos = keys[-1][1]
        elif tag == 0x12:  # 2: explicit_hash_key_table
            pos = _length(data, pos + 1, end)[1]
            hash_keys += 1
        else:
            tag, pos = _varint(data, pos, end)
            pos = _skip(data, at, tag, pos, end)
    return keys, hash_keys, entries


def _record(data: bytes, pos: int, end: int) -> tuple[int, int, bytes]:
    """(partition key index, explicit hash key index, data) of one Record message."""
    key = hash_key = 0
    payload = b""
    while pos < end:
        at = pos
        tag = data[pos]
        pos += 1
        if tag == 0x08 or tag == 0x10:  # 1: partition_key_index, 2: explicit_hash_key_index
            if pos < end and data[pos] < 0x80:
                value = data[pos]
                pos += 1
            else:
                value, pos = _varint(data, pos, end)
            if tag == 0x08:
                key = value
            else:
                hash_key = value
        elif tag == 0x1A:  # 3: data
            start, pos = _length(data, pos, end)
            payload = data[start:pos]
        elif tag == 0x22:  # 4: tags, read only to be sure they are well-formed
            start, pos = _length(data, pos, end)
            _message(data, start, pos)
        else:
            tag, pos = _varint(data, at, end)
            pos = _skip(data, at, tag, pos, end)
    return key, hash_key, payload


def _message(data: bytes, pos: int, end: int) -> None:
    """Walk a message whose fields are not needed, checking its wire format."""
    while pos < end:
        at = pos
        tag, pos = _varint(data, pos, end)
        pos = _skip(data, at, tag, pos, end)


def _skip(data: bytes, at: int, tag: int, pos: int, end: int) -> int:
    """Past the value of a field not read (its tag was at `at`, its value starts at `pos`)."""
    field, wire = tag >> 3, tag & 7
    if not 0 < field <= _MAX_FIELD:
        raise BadAggregate(f"invalid field number {field} at byte {at}")
    if wire == 0:
        return _varint(data, pos, end)[1]
    if wire == 2:
        return _length(data, pos, end)[1]
    if wire in _FIXED:
        if pos + _FIXED[wire] > end:
            raise BadAggregate(f"truncated field at byte {at}")
        return pos + _FIXED[wire]
    if wire == 3:  # a group: its fields, up to the end of the group of the same number
        while True:
            if pos >= end:
                raise BadAggregate(f"group at byte {at} is not closed")
            inner_at = pos
            inner, pos = _varint(data, pos, end)
            if inner == (field << 3) | 4:
                return pos
            pos = _skip(data, inner_at, inner, pos, end)
    if wire == 4:
        raise BadAggregate(f"end of a group that was not started at byte {at}")
    raise BadAggregate(f"invalid wire type {wire} at byte {at}")


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`, kept to 64 bits as protobuf does."""
    if pos < end and data[pos] < 0x80:
        return data[pos], pos + 1
    start, value, shift = pos, 0, 0
    while pos < end:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & _UINT64, pos
        shift += 7
        if shift == 70:
            raise BadAggregate(f"varint longer than 10 bytes at byte {start}")
    raise BadAggregate(f"truncated varint at byte {start}")


def _length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(start, end) of the length-delimited value whose length is at `pos`."""
    if pos < end and data[pos] < 0x80:
        size, start = data[pos], pos + 1
    else:
        size, start = _varint(data, pos, end)
    if size > end - start:
        raise BadAggregate(
            f"length {size} at byte {pos} runs past the end of its message "
            f"({end - start} bytes left)"
        )
    return start, start + size


def _text(data: bytes, start: int, end: int, number: int) -> str:
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise BadAggregate(f"partition key {number} (byte {start}) is not UTF-8") from None
