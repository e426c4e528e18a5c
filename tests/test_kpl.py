"""The KPL decoder, held to the official aggregation library (aws-kinesis-agg)."""

import base64
import contextlib
import datetime
import hashlib
import io
import json

import pytest
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from conftest import kpl_aggregates
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.backends.base import Record
from runner.records.kpl import MAGIC, BadAggregate, user_records

ARRIVAL = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.timezone.utc)
SEQUENCE = "49600000000000000000000000000000000000000000000000000007"


def record(data: bytes) -> Record:
    return Record(SEQUENCE, "outer", data, ARRIVAL)


def ours(data: bytes) -> list[tuple]:
    """(partition key, data, sub-sequence) of each record user_records gives for `data`."""
    return [(r.partition_key, r.data, r.sub_sequence) for r in user_records(record(data))]


def official(data: bytes) -> list[tuple] | None:
    """The same from the official library, or None where it finds the aggregate corrupt: it
    raises, stops halfway saying so on stderr, gives a key that is not text (bytes), or passes
    a record on whole although it starts as an aggregate and is long enough to be one."""
    got = {"SequenceNumber": "7", "PartitionKey": "outer", "Data": data}  # as boto3 gives it
    got["ApproximateArrivalTimestamp"] = ARRIVAL
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            found = [r["kinesis"] for r in iter_deaggregate_records(got, "Boto3")]
    except Exception:
        return None
    if said.getvalue():
        return None
    if len(found) == 1 and "subSequenceNumber" not in found[0]:  # taken as plain
        if data.startswith(MAGIC) and len(data) > len(MAGIC) + 16:
            return None
        return [(found[0]["partitionKey"], found[0]["data"], None)]
    users = [
        (u["partitionKey"], base64.b64decode(u["data"]), u["subSequenceNumber"]) for u in found
    ]
    if any(not isinstance(key, str) for key, _, _ in users):
        return None
    return users


def agrees(data: bytes) -> None:
    """user_records gives what the library gives, or BadAggregate where it finds corruption."""
    expected = official(data)
    if expected is None:
        with pytest.raises(BadAggregate):
            ours(data)
    else:
        assert ours(data) == expected


# A tiny protobuf writer, for aggregates the library would never make.


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def field(number: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def entry(key_index: int, data: bytes, hash_key_index: int | None = None) -> bytes:
    hash_key = b"" if hash_key_index is None else field(2, hash_key_index)
    return field(3, field(1, key_index) + hash_key + field(3, data))


def sealed(body: bytes) -> bytes:
    """An aggregate of this protobuf body, with its right MD5."""
    return MAGIC + body + hashlib.md5(body).digest()


# Plain records


@pytest.mark.parametrize(
    "data",
    [b'{"session_id": "a1"}', b"", b"\xf3\x89\x9a", MAGIC, MAGIC + bytes(16), b"x" + MAGIC * 9],
)
def test_a_record_that_is_not_an_aggregate_is_given_back_as_it_is(data):
    plain = record(data)

    assert user_records(plain) == [plain]
    assert user_records(plain)[0] is plain
    assert ours(data) == official(data)


# Aggregates the official library makes


def test_an_aggregate_gives_its_user_records_in_order_with_their_own_keys():
    sessions = [(json.dumps({"session_id": key}).encode(), key) for key in ("a1", "b2", "a1")]
    (aggregate,) = kpl_aggregates(sessions)

    users = user_records(record(aggregate))

    assert users == [
        Record(SEQUENCE, "a1", b'{"session_id": "a1"}', ARRIVAL, 0),
        Record(SEQUENCE, "b2", b'{"session_id": "b2"}', ARRIVAL, 1),
        Record(SEQUENCE, "a1", b'{"session_id": "a1"}', ARRIVAL, 2),
    ]
    assert ours(aggregate) == official(aggregate)


def test_an_aggregate_of_no_records_gives_none_as_the_library_does():
    aggregate = sealed(field(1, b"unused"))

    assert ours(aggregate) == official(aggregate) == []


USER_RECORDS = st.lists(
    st.tuples(
        st.binary(max_size=40),
        st.one_of(st.sampled_from(["a1", "b2", "ü"]), st.text(max_size=12)),
        st.one_of(st.none(), st.text(min_size=1, max_size=6)),  # explicit hash key
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(USER_RECORDS, st.sampled_from([None, 400]))
def test_user_records_are_what_the_official_library_gives(entries, max_size):
    aggregates = kpl_aggregates(entries, max_size)

    for aggregate in aggregates:
        assert ours(aggregate) == official(aggregate)
    users = [user for aggregate in aggregates for user in ours(aggregate)]
    assert [(key, data) for key, data, _ in users] == [(key, data) for data, key, _ in entries]


def test_many_records_and_keys_in_one_aggregate():
    entries = [(f"payload {n}".encode() * (n % 7), f"key-{n % 300}") for n in range(5000)]
    (aggregate,) = kpl_aggregates(entries)

    users = ours(aggregate)

    assert users == official(aggregate)
    assert users == [(key, data, n) for n, (data, key) in enumerate(entries)]


# Corrupt aggregates


def test_a_flipped_bit_in_the_md5_is_a_bad_aggregate_which_the_library_passes_on_whole():
    (aggregate,) = kpl_aggregates([(b"{}", "a"), (b"{}", "b")])
    flipped = aggregate[:-1] + bytes([aggregate[-1] ^ 0x01])

    with pytest.raises(BadAggregate) as raised:
        user_records(record(flipped))

    protobuf = len(aggregate) - 20
    assert str(raised.value) == (
        f"KPL aggregate: bad MD5 checksum of its {protobuf} protobuf bytes (corrupt or cut short)"
    )
    assert official(flipped) is None  # it would pass it on as a plain record
    assert isinstance(raised.value, ValueError)


def test_a_flipped_bit_in_the_protobuf_breaks_the_md5():
    (aggregate,) = kpl_aggregates([(b"{}", "a")])
    flipped = aggregate[:6] + bytes([aggregate[6] ^ 0x10]) + aggregate[7:]

    with pytest.raises(BadAggregate, match=r"^KPL aggregate: bad MD5 checksum of its 11 "):
        user_records(record(flipped))


def test_a_truncated_aggregate_breaks_the_md5():
    (aggregate,) = kpl_aggregates([(b"{}", "a"), (b"{}", "b")])

    with pytest.raises(BadAggregate) as raised:
        user_records(record(aggregate[:-3]))

    assert str(raised.value) == (
        "KPL aggregate: bad MD5 checksum of its 19 protobuf bytes (corrupt or cut short)"
    )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            field(1, b"a") + entry(0, b"{}")[:-3],
            "length 6 at byte 8 runs past the end of its message (3 bytes left)",
        ),
        (field(1, b"a") + b"\x1a\x02\x08\x80", "truncated varint at byte 10"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes at byte 5"),
        (
            field(1, b"a") + field(1, b"b") + field(1, b"c") + entry(0, b"{}") + entry(7, b"{}"),
            "record 1 (byte 21): partition key index 7 out of range (table of 3)",
        ),
        (
            field(1, b"a") + field(2, b"12") + entry(0, b"{}", hash_key_index=1),
            "record 0 (byte 11): explicit hash key index 1 out of range (table of 1)",
        ),
        (field(1, b"\xff") + entry(0, b"{}"), "partition key 0 (byte 6) is not UTF-8"),
        (b"\x0e" + field(1, b"a"), "invalid wire type 6 at byte 4"),
        (b"\x00\x01" + field(1, b"a"), "invalid field number 0 at byte 4"),
        (b"\x0c" + field(1, b"a"), "end of a group that was not started at byte 4"),
        (b"\x2b" + field(1, b"a"), "group at byte 4 is not closed"),
        (b"\x2d\x00\x00", "truncated field at byte 4"),
    ],
)
def test_a_corrupt_protobuf_says_what_is_wrong_and_where(body, problem):
    aggregate = sealed(body)

    with pytest.raises(BadAggregate) as raised:
        user_records(record(aggregate))

    assert str(raised.value) == f"KPL aggregate: {problem}"
    assert official(aggregate) is None


@pytest.mark.parametrize(
    "body",
    [
        b"\x20\x05" + field(1, b"a") + entry(0, b"x"),  # an unknown varint field
        b"\x2b\x08\x01\x2c" + field(1, b"a") + entry(0, b"x"),  # an unknown group
        b"\x08\x01" + field(1, b"a") + entry(0, b"x"),  # a known field of another wire type
        field(1, b"a") + field(3, field(1, 0)),  # no data: empty
        field(1, b"a") + field(3, field(3, b"x")),  # no partition key index: 0
        field(1, b"a") + field(3, field(1, 0) + field(3, b"x") + field(4, b"\x12\x00")),  # a tag
        field(1, b"a") + field(1, b"b") + field(3, field(1, 0) + field(1, 1) + field(3, b"x")),
        field(1, b"a") + entry(0, b"x", hash_key_index=3),  # no table of hash keys: unused
        field(1, b"a") + field(3, b"\x08" + b"\x80" * 9 + b"\x02" + field(3, b"x")),  # 2**64: 0
    ],
)
def test_what_the_library_reads_in_an_unusual_aggregate_is_read_the_same(body):
    aggregate = sealed(body)

    assert ours(aggregate) == official(aggregate) != []


@settings(max_examples=500, deadline=None)
@given(
    USER_RECORDS,
    st.sampled_from(["flip", "cut", "insert"]),
    st.integers(min_value=0),
    st.binary(min_size=1, max_size=4),
)
def test_a_damaged_protobuf_is_read_as_the_library_reads_it_or_is_a_bad_aggregate(
    entries, damage, where, inserted
):
    aggregate = kpl_aggregates(entries)[0]
    body = aggregate[len(MAGIC) : -16]
    at = where % len(body)
    if damage == "flip":
        body = body[:at] + bytes([body[at] ^ (1 << (where % 8))]) + body[at + 1 :]
    elif damage == "cut":
        body = body[:at]
    else:
        body = body[:at] + inserted + body[at:]

    agrees(sealed(body))
