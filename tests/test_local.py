import contextlib
import datetime
import errno
import multiprocessing
import os
import shlex
import shutil
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import MINIMAL, removed_state
from fakes import PIPELINE, Clock, FailingDisk, with_own_mounts

from runner.backends.base import (
    SHARD_END,
    BackendError,
    EarlierStream,
    FirehoseDescription,
    IteratorExpired,
    RecordBatch,
    StreamNotFound,
)
from runner.backends.local import LocalBackend, partition_hash
from runner.cli import cli

START = 1_800_000_000.0


@pytest.fixture
def clock():
    return Clock(START)


@pytest.fixture
def backend(tmp_path, clock):
    backend = LocalBackend(tmp_path / "state", clock=clock)
    yield backend
    backend.close()


def read_all(backend, stream, shard_id, iterator_type="TRIM_HORIZON", **position):
    """Every record from the position to the end, following next_iterator."""
    iterator = backend.get_shard_iterator(stream, shard_id, iterator_type, **position)
    records = []
    while iterator:
        batch = backend.get_records(iterator, limit=100)
        records.extend(batch.records)
        if not batch.records:
            break
        iterator = batch.next_iterator
    return records


def put(backend, stream, *payloads, key="k"):
    return backend.put_records(stream, [(p.encode(), key) for p in payloads])


# Streams and shards


def test_new_stream_splits_the_hash_space_evenly_like_kinesis(backend):
    backend.create_stream("events", 4)

    shards = backend.list_shards("events")

    assert [s.shard_id for s in shards] == [f"shardId-00000000000{i}" for i in range(4)]
    assert shards[0].starting_hash_key == 0
    assert shards[-1].ending_hash_key == 2**128 - 1
    for left, right in zip(shards, shards[1:], strict=False):
        assert right.starting_hash_key == left.ending_hash_key + 1
    widths = {s.ending_hash_key - s.starting_hash_key for s in shards}
    assert max(widths) - min(widths) <= 1
    assert all(s.is_open and s.parent_shard_id is None for s in shards)
    description = backend.describe_stream("events")
    assert (description.status, description.open_shard_count) == ("ACTIVE", 4)
    assert description.retention_hours == 24


def test_create_describe_and_delete_stream(backend):
    backend.create_stream("events", 1)
    with pytest.raises(BackendError, match="^stream 'events' already exists$"):
        backend.create_stream("events", 1)

    put(backend, "events", "a")
    backend.set_checkpoint("shop", "events", "shardId-000000000000", "1")
    backend.delete_stream("events")

    assert backend.describe_stream("events") is None
    assert backend.get_checkpoints("shop", "events") == {}
    with pytest.raises(StreamNotFound, match="^stream 'events' does not exist$"):
        backend.list_shards("events")
    backend.create_stream("events", 1)
    assert read_all(backend, "events", "shardId-000000000000") == []


def test_a_key_goes_to_the_shard_owning_its_hash_every_time(backend):
    backend.create_stream("events", 3)
    shards = {s.shard_id: s for s in backend.list_shards("events")}
    keys = [f"user-{i}" for i in range(60)]

    first = backend.put_records("events", [(b"x", key) for key in keys])
    second = backend.put_records("events", [(b"y", key) for key in keys])

    for key, a, b in zip(keys, first, second, strict=True):
        shard = shards[a.shard_id]
        assert shard.starting_hash_key <= partition_hash(key) <= shard.ending_hash_key
        assert a.shard_id == b.shard_id
    assert len({r.shard_id for r in first}) == 3


def test_sequence_numbers_rise_within_each_shard(backend):
    backend.create_stream("events", 2)
    results = []
    for batch in range(5):
        results += backend.put_records("events", [(b"x", f"k{batch}-{i}") for i in range(40)])

    for shard in backend.list_shards("events"):
        sequences = [int(r.sequence) for r in results if r.shard_id == shard.shard_id]
        assert sequences == sorted(set(sequences))
        read = [int(r.sequence) for r in read_all(backend, "events", shard.shard_id)]
        assert read == sequences


# Iterators


@pytest.fixture
def three_records(backend, clock):
    """One shard holding a, b, c, put one second apart."""
    backend.create_stream("events", 1)
    results = []
    for payload in "abc":
        results += put(backend, "events", payload)
        clock.now += 1
    return [r.sequence for r in results]


def at(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(START + seconds, datetime.timezone.utc)


@pytest.mark.parametrize(
    "iterator_type, position, expected",
    [
        ("TRIM_HORIZON", {}, "abc"),
        ("AT_SEQUENCE_NUMBER", {"sequence": "b"}, "bc"),
        ("AFTER_SEQUENCE_NUMBER", {"sequence": "b"}, "c"),
        ("AT_TIMESTAMP", {"timestamp": at(1)}, "bc"),
        ("AT_TIMESTAMP", {"timestamp": at(1.5)}, "c"),
        ("AT_TIMESTAMP", {"timestamp": at(9)}, ""),
    ],
)
def test_iterator_types_start_at_the_right_record(
    backend, three_records, iterator_type, position, expected
):
    if "sequence" in position:  # the sequence number of that record
        position = {"sequence": three_records["abc".index(position["sequence"])]}

    records = read_all(backend, "events", "shardId-000000000000", iterator_type, **position)

    assert b"".join(r.data for r in records) == expected.encode()


def test_latest_returns_only_records_put_after_it(backend, three_records):
    iterator = backend.get_shard_iterator("events", "shardId-000000000000", "LATEST")
    assert backend.get_records(iterator).records == []

    put(backend, "events", "d")

    assert [r.data for r in backend.get_records(iterator).records] == [b"d"]


def test_records_keep_key_and_utc_arrival(backend, three_records):
    records = read_all(backend, "events", "shardId-000000000000")

    assert (records[0].sequence, records[0].partition_key) == (three_records[0], "k")
    assert records[0].arrival == datetime.datetime.fromtimestamp(START, datetime.timezone.utc)
    assert [r.arrival for r in records] == [at(0), at(1), at(2)]  # each put's own time


def test_get_records_pages_by_limit_and_reports_lag(backend, clock):
    backend.create_stream("events", 1)
    for payload in "abcde":
        put(backend, "events", payload)
        clock.now += 2
    iterator = backend.get_shard_iterator("events", "shardId-000000000000", "TRIM_HORIZON")

    first = backend.get_records(iterator, limit=2)
    rest = backend.get_records(first.next_iterator, limit=10)
    empty = backend.get_records(rest.next_iterator)

    assert [r.data for r in first.records] == [b"a", b"b"]
    assert first.millis_behind == 6000
    assert [r.data for r in rest.records] == [b"c", b"d", b"e"]
    assert rest.millis_behind == 0
    assert (empty.records, empty.millis_behind) == ([], 0)
    assert empty.next_iterator is not None


def test_get_records_returns_at_most_ten_mib(backend):
    backend.create_stream("events", 1)
    mib_record = (b"x" * (1024 * 1024 - 1), "k")  # 1 MiB with its partition key
    for count in (4, 4, 3):
        backend.put_records("events", [mib_record] * count)
    iterator = backend.get_shard_iterator("events", "shardId-000000000000", "TRIM_HORIZON")

    first = backend.get_records(iterator)
    second = backend.get_records(first.next_iterator)

    assert (len(first.records), len(second.records)) == (10, 1)


def test_get_records_counts_a_partition_key_in_utf8_bytes(backend):
    backend.create_stream("events", 1)
    # "é" is 2 bytes: ten of these are 10 MiB exactly, and one more byte is over.
    for count in (4, 4, 2):
        backend.put_records("events", [(b"x" * (1024 * 1024 - 2), "é")] * count)
    backend.put_records("events", [(b"x", "é")])
    iterator = backend.get_shard_iterator("events", "shardId-000000000000", "TRIM_HORIZON")

    first = backend.get_records(iterator)

    assert len(first.records) == 10


def test_iterators_expire_after_five_minutes(backend, clock, three_records):
    iterator = backend.get_shard_iterator("events", "shardId-000000000000", "TRIM_HORIZON")
    clock.now += 299
    next_iterator = backend.get_records(iterator, limit=1).next_iterator

    clock.now += 2
    with pytest.raises(IteratorExpired, match="shardId-000000000000 is over 300 s old"):
        backend.get_records(iterator)
    assert [r.data for r in backend.get_records(next_iterator).records] == [b"b", b"c"]


def test_a_garbage_iterator_is_refused(backend):
    for garbage in ("", "hello", "bm90IGpzb24=", "WzEsIDJd"):
        with pytest.raises(BackendError, match="^invalid shard iterator: it was not issued"):
            backend.get_records(garbage)


def test_iterator_arguments_are_checked(backend, three_records):
    shard = "shardId-000000000000"
    with pytest.raises(BackendError, match="^unknown iterator type 'OLDEST'"):
        backend.get_shard_iterator("events", shard, "OLDEST")
    with pytest.raises(BackendError, match="'None' is not a sequence number$"):
        backend.get_shard_iterator("events", shard, "AT_SEQUENCE_NUMBER")
    with pytest.raises(BackendError, match="^shard 'shardId-000000000009' does not exist in"):
        backend.get_shard_iterator("events", "shardId-000000000009", "LATEST")
    with pytest.raises(StreamNotFound):
        backend.get_shard_iterator("nope", shard, "LATEST")


def test_a_new_state_file_has_pages_of_16_kib_and_an_older_one_keeps_its_own(tmp_path):
    older = tmp_path / "older"
    older.mkdir()
    with contextlib.closing(sqlite3.connect(older / "pipeline.db")) as db:
        db.executescript("PRAGMA page_size=4096; CREATE TABLE earlier (x)")
    for folder, page_size in ((tmp_path / "new", 16384), (older, 4096)):
        backend = LocalBackend(folder)
        backend.create_stream("events", 1)
        put(backend, "events", "a")
        assert [r.data for r in read_all(backend, "events", "shardId-000000000000")] == [b"a"]
        backend.close()
        with contextlib.closing(sqlite3.connect(folder / "pipeline.db")) as db:
            assert db.execute("PRAGMA page_size").fetchone() == (page_size,)


def test_records_survive_closing_and_reopening(tmp_path):
    backend = LocalBackend(tmp_path)
    backend.create_stream("events", 2)
    results = put(backend, "events", "a", "b", key="same")
    backend.set_checkpoint("shop", "events", results[0].shard_id, results[0].sequence)
    backend.close()

    reopened = LocalBackend(tmp_path)
    records = read_all(reopened, "events", results[0].shard_id)
    checkpoints = reopened.get_checkpoints("shop", "events")
    reopened.close()

    assert [r.data for r in records] == [b"a", b"b"]
    assert checkpoints == {results[0].shard_id: results[0].sequence}
    assert (tmp_path / "pipeline.db").is_file()


def test_records_past_retention_are_gone(backend, clock):
    backend.create_stream("events", 1)
    put(backend, "events", "old")
    clock.now += 25 * 3600

    assert read_all(backend, "events", "shardId-000000000000") == []
    put(backend, "events", "new")
    assert [r.data for r in read_all(backend, "events", "shardId-000000000000")] == [b"new"]


def test_one_put_across_shards_reads_back_in_each_shard_in_order_a_page_at_a_time(backend):
    backend.create_stream("events", 2)
    keys = [str(n) for n in range(12)]
    results = backend.put_records("events", [(f"r{n}".encode(), k) for n, k in enumerate(keys)])
    shards = [r.shard_id for r in results]
    assert len(set(shards)) == 2 and shards != sorted(shards)  # interleaved

    for shard_id in set(shards):
        expected = [
            (result.sequence, key, f"r{n}".encode())
            for n, (result, key) in enumerate(zip(results, keys))
            if result.shard_id == shard_id
        ]
        iterator = backend.get_shard_iterator("events", shard_id, "TRIM_HORIZON")
        read = []
        while (batch := backend.get_records(iterator, limit=2)).records:
            read.append([(r.sequence, r.partition_key, r.data) for r in batch.records])
            iterator = batch.next_iterator
        assert [one for page in read for one in page] == expected
        assert all(len(page) == 2 for page in read[:-1])
        third = expected[2][0]
        behind = backend.behind("events", shard_id, "AFTER_SEQUENCE_NUMBER", sequence=third)
        assert behind.records == len(expected) - 3


def test_behind_counts_the_records_after_a_position_that_are_still_retained(backend, clock):
    backend.create_stream("events", 2)
    half = partition_hash("k") >= 2**127
    other_key = next(k for k in map(str, range(99)) if (partition_hash(k) >= 2**127) != half)
    old, _ = put(backend, "events", "old", "old")
    (other,) = put(backend, "events", "old, in the other shard", key=other_key)
    assert other.shard_id != old.shard_id
    clock.now += 24 * 3600 - 10
    first, *_ = put(backend, "events", "a", "b", "c")
    put(backend, "events", "new, in the other shard", key=other_key)

    def behind(iterator_type, **position):
        return backend.behind("events", old.shard_id, iterator_type, **position).records

    assert behind("TRIM_HORIZON") == 5
    assert behind("AFTER_SEQUENCE_NUMBER", sequence=first.sequence) == 2
    clock.now += 20  # the three old records are past the 24 hours, not yet removed
    assert behind("TRIM_HORIZON") == 3
    assert behind("AFTER_SEQUENCE_NUMBER", sequence=old.sequence) == 3
    assert behind("AFTER_SEQUENCE_NUMBER", sequence=first.sequence) == 2


# PutRecords refusals


@pytest.mark.parametrize(
    "entries, message",
    [
        ([(b"x", "k")] * 501, "501 entries, at most 500 allowed"),
        ([], "0 entries, at most 500 allowed"),
        (
            [(b"x" * (1024 * 1024), "k")],
            "entry 0 is 1048577 bytes with its partition key, at most 1048576 allowed",
        ),
        ([(b"x", "")], "entry 0: partition key must be 1 to 256 characters"),
        ([(b"x", "k" * 257)], "entry 0: partition key must be 1 to 256 characters"),
        ([(b"x" * 1_000_000, "k")] * 6, "6000006 bytes in one call, at most 5242880 allowed"),
        ([("text", "k")], "entry 0: data must be bytes"),
    ],
)
def test_put_records_refuses_what_kinesis_refuses_whole(backend, entries, message):
    backend.create_stream("events", 1)

    with pytest.raises(BackendError) as refused:
        backend.put_records("events", entries)

    assert str(refused.value) == f"put_records to stream 'events': {message}"
    assert read_all(backend, "events", "shardId-000000000000") == []


def test_put_records_to_a_missing_stream(backend):
    with pytest.raises(StreamNotFound, match="^stream 'nope' does not exist$"):
        put(backend, "nope", "a")


# Resharding


def test_resharding_closes_parents_and_links_children(backend):
    backend.create_stream("events", 2)
    keys = [f"user-{i}" for i in range(40)]
    before = backend.put_records("events", [(b"x", key) for key in keys])

    backend.update_shard_count("events", 3)

    shards = backend.list_shards("events")
    old, new = shards[:2], shards[2:]
    assert [s.shard_id for s in shards] == [f"shardId-00000000000{i}" for i in range(5)]
    for parent in old:
        last = max(int(r.sequence) for r in before if r.shard_id == parent.shard_id)
        assert not parent.is_open and parent.ending_sequence == str(last)
    assert [(s.parent_shard_id, s.adjacent_parent_shard_id) for s in new] == [
        ("shardId-000000000000", None),
        ("shardId-000000000000", "shardId-000000000001"),
        ("shardId-000000000001", None),
    ]
    assert backend.describe_stream("events").open_shard_count == 3
    after = backend.put_records("events", [(b"y", key) for key in keys])
    assert {r.shard_id for r in after} <= {s.shard_id for s in new}
    assert min(int(r.sequence) for r in after) >= int(new[0].starting_sequence)


def test_a_closed_shards_reader_ends_after_its_last_record(backend):
    backend.create_stream("events", 1)
    put(backend, "events", "a", "b")
    iterator = backend.get_shard_iterator("events", "shardId-000000000000", "TRIM_HORIZON")
    first = backend.get_records(iterator, limit=1)

    backend.update_shard_count("events", 2)
    put(backend, "events", "c")
    last = backend.get_records(first.next_iterator)

    assert [r.data for r in first.records + last.records] == [b"a", b"b"]
    assert last.next_iterator is None


def test_an_empty_closed_shard_ends_at_once_and_says_it_is_empty(backend):
    backend.create_stream("events", 1)
    backend.update_shard_count("events", 2)

    parent = backend.list_shards("events")[0]
    iterator = backend.get_shard_iterator("events", parent.shard_id, "TRIM_HORIZON")

    assert int(parent.ending_sequence) < int(parent.starting_sequence)
    assert backend.get_records(iterator) == RecordBatch([], None, 0)


def test_merging_keeps_every_parent_in_the_lineage(backend):
    backend.create_stream("events", 5)
    old = backend.list_shards("events")
    backend.update_shard_count("events", 3)

    shards = {s.shard_id: s for s in backend.list_shards("events")}

    def ancestors(shard):
        found = set()
        for parent in (shard.parent_shard_id, shard.adjacent_parent_shard_id):
            if parent:
                found |= {parent} | ancestors(shards[parent])
        return found

    children = [s for s in shards.values() if s.is_open]
    assert len(children) == 3
    for child in children:
        overlapped = {
            s.shard_id
            for s in old
            if s.starting_hash_key <= child.ending_hash_key
            and s.ending_hash_key >= child.starting_hash_key
        }
        assert ancestors(child) & {s.shard_id for s in old} == overlapped
    # The middle child overlaps three parents, so it hangs below a closed, empty merge shard.
    assert len(ancestors(children[1]) & {s.shard_id for s in old}) == 3


# Checkpoints


def test_checkpoints_never_move_backwards(backend):
    shard = "shardId-000000000000"
    backend.set_checkpoint("shop", "events", shard, "100")
    backend.set_checkpoint("shop", "events", shard, "99")
    backend.set_checkpoint("shop", "events", "shardId-000000000001", "7")
    assert backend.get_checkpoints("shop", "events") == {
        shard: "100",
        "shardId-000000000001": "7",
    }

    backend.set_checkpoint("shop", "events", shard, "1000")
    assert backend.get_checkpoints("shop", "events")[shard] == "1000"

    backend.set_checkpoint("shop", "events", shard, SHARD_END)
    backend.set_checkpoint("shop", "events", shard, "99999")
    assert backend.get_checkpoints("shop", "events")[shard] == SHARD_END
    assert backend.get_checkpoints("other", "events") == {}


def test_a_note_is_kept_beside_the_checkpoints_across_processes(backend, tmp_path):
    backend.set_note("shop", "redrive:rejects", '{"log": "x"}')
    backend.set_note("other", "redrive:rejects", "another pipeline's")

    again = LocalBackend(tmp_path / "state")
    assert again.get_note("shop", "redrive:rejects") == '{"log": "x"}'
    again.set_note("shop", "redrive:rejects", None)
    assert backend.get_note("shop", "redrive:rejects") is None
    assert backend.get_note("other", "redrive:rejects") == "another pipeline's"
    again.close()


def test_a_checkpoint_must_be_a_sequence_number(backend):
    with pytest.raises(BackendError, match="'latest' is not a sequence number$"):
        backend.set_checkpoint("shop", "events", "shardId-000000000000", "latest")


def test_a_start_mark_is_written_only_where_no_checkpoint_is(backend):
    shard = "shardId-000000000000"
    backend.set_checkpoint("shop", "events", shard, "#trim_horizon")
    backend.set_checkpoint("shop", "events", shard, "#at_timestamp:2027-01-15T08:00:00+00:00")
    assert backend.get_checkpoints("shop", "events") == {shard: "#trim_horizon"}

    backend.set_checkpoint("shop", "events", shard, "0")
    backend.set_checkpoint("shop", "events", shard, "#trim_horizon")
    assert backend.get_checkpoints("shop", "events") == {shard: "0"}


def test_a_latest_iterator_comes_with_the_sequence_number_just_before_it(backend):
    backend.create_stream("events", 2)
    *_, last = put(backend, "events", "a", "b")
    iterator, checkpoint = backend.latest_iterator("events", "shardId-000000000001")
    put(backend, "events", "c", key="other")

    assert checkpoint == last.sequence
    assert backend.get_records(iterator).records == []  # "c" went to the other shard


# Checkpoints belong to one life of their stream


def test_checkpoints_written_for_an_earlier_stream_of_the_same_name_are_refused(tmp_path, clock):
    shard = "shardId-000000000000"
    run = LocalBackend(tmp_path, clock=clock)
    run.create_stream("events", 1)
    assert run.get_checkpoints("shop", "events") == {}  # the stream the run reads
    clock.now += 60
    other = LocalBackend(tmp_path, clock=clock)  # `destroy` and `apply` while the run goes on
    other.delete_stream("events")
    other.create_stream("events", 1)
    run.set_checkpoint("shop", "events", shard, SHARD_END)  # the run's last write

    with pytest.raises(EarlierStream) as error:
        other.get_checkpoints("shop", "events")
    other.forget_earlier_checkpoints("shop", "events")

    assert str(error.value) == (
        "checkpoints are for an earlier stream named events (created 2027-01-15 08:00:00 UTC)"
    )
    assert other.get_checkpoints("shop", "events") == {}
    other.set_checkpoint("shop", "events", shard, "7")
    assert LocalBackend(tmp_path).get_checkpoints("shop", "events") == {shard: "7"}


PREVIOUS_SCHEMA = """
CREATE TABLE streams (
    name TEXT PRIMARY KEY, status TEXT NOT NULL, retention_hours INTEGER NOT NULL);
CREATE TABLE shards (
    stream TEXT NOT NULL, shard_id TEXT NOT NULL, number INTEGER NOT NULL,
    starting_hash TEXT NOT NULL, ending_hash TEXT NOT NULL,
    starting_sequence INTEGER NOT NULL, ending_sequence INTEGER,
    parent_shard_id TEXT, adjacent_parent_shard_id TEXT, closed_ms INTEGER,
    PRIMARY KEY (stream, shard_id));
CREATE TABLE records (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, shard_id TEXT NOT NULL,
    partition_key TEXT NOT NULL, data BLOB NOT NULL, arrival_ms INTEGER NOT NULL);
CREATE INDEX records_by_shard ON records (stream, shard_id, sequence);
CREATE INDEX records_by_arrival ON records (stream, arrival_ms);
CREATE TABLE checkpoints (
    pipeline TEXT NOT NULL, stream TEXT NOT NULL, shard_id TEXT NOT NULL,
    sequence TEXT NOT NULL, PRIMARY KEY (pipeline, stream, shard_id));
CREATE TABLE firehoses (name TEXT PRIMARY KEY, settings TEXT NOT NULL);
INSERT INTO streams VALUES ('events', 'ACTIVE', 24);
INSERT INTO shards VALUES ('events', 'shardId-000000000000', 0, '0',
    '340282366920938463463374607431768211455', 1, NULL, NULL, NULL, NULL);
INSERT INTO records (stream, shard_id, partition_key, data, arrival_ms)
    VALUES ('events', 'shardId-000000000000', 'k', 'a', 1800000000000);
INSERT INTO checkpoints VALUES ('shop', 'events', 'shardId-000000000000', '1');
"""


def test_a_state_file_of_the_previous_version_opens_with_its_checkpoints(tmp_path, clock):
    with contextlib.closing(sqlite3.connect(tmp_path / "pipeline.db")) as db:
        db.executescript(PREVIOUS_SCHEMA)
    shard = "shardId-000000000000"

    run = LocalBackend(tmp_path, clock=clock)
    assert run.get_checkpoints("shop", "events") == {shard: "1"}
    put(run, "events", "b")
    assert [
        r.data for r in read_all(run, "events", shard, "AFTER_SEQUENCE_NUMBER", sequence="1")
    ] == [b"b"]
    other = LocalBackend(tmp_path, clock=clock)
    other.delete_stream("events")
    other.create_stream("events", 1)
    run.set_checkpoint("shop", "events", shard, SHARD_END)

    with pytest.raises(EarlierStream) as error:
        other.get_checkpoints("shop", "events")
    assert str(error.value) == "checkpoints are for an earlier stream named events"


def previous_version_with_records(folder):
    """A state file of the version before `puts`: records 1 (a), 2 (b) and 4 (d) left of 1 to 5
    in shard 0 of `events`, 3 and 5 trimmed."""
    with contextlib.closing(sqlite3.connect(folder / "pipeline.db")) as db:
        db.executescript(PREVIOUS_SCHEMA)
        for data in "bcde":
            db.execute(
                "INSERT INTO records (stream, shard_id, partition_key, data, arrival_ms) "
                "VALUES ('events', 'shardId-000000000000', ?, ?, 1800000001000)",
                (f"key {data}", data.encode()),
            )
        db.execute("DELETE FROM records WHERE sequence IN (3, 5)")
        db.commit()


# What a version before `puts` does first when it opens a state.
PREVIOUS_OPENING = """
CREATE TABLE IF NOT EXISTS records (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, shard_id TEXT NOT NULL,
    partition_key TEXT NOT NULL, data BLOB NOT NULL, arrival_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS records_by_shard ON records (stream, shard_id, sequence);
"""


def test_the_records_of_a_previous_version_keep_their_numbers_and_new_ones_follow(tmp_path, clock):
    previous_version_with_records(tmp_path)
    shard = "shardId-000000000000"

    backend = LocalBackend(tmp_path, clock=clock)
    put(backend, "events", "f")

    assert [(r.sequence, r.partition_key, r.data) for r in read_all(backend, "events", shard)] == [
        ("1", "k", b"a"),
        ("2", "key b", b"b"),
        ("4", "key d", b"d"),
        ("6", "k", b"f"),
    ]
    assert backend.behind("events", shard, "AFTER_SEQUENCE_NUMBER", sequence="2").records == 2
    at = datetime.datetime.fromtimestamp(1_800_000_001, datetime.timezone.utc)
    assert [r.data for r in read_all(backend, "events", shard, "AT_TIMESTAMP", timestamp=at)] == [
        b"b",
        b"d",
        b"f",
    ]
    backend.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "pipeline.db")) as db:
        kind = db.execute("SELECT type FROM sqlite_master WHERE name = 'records'").fetchone()
    assert kind == ("view",)  # the table is gone


@pytest.mark.parametrize("made_by", ["this version", "the previous version"])
def test_a_version_before_puts_cannot_open_a_state_this_one_wrote(tmp_path, clock, made_by):
    if made_by == "the previous version":
        previous_version_with_records(tmp_path)
    backend = LocalBackend(tmp_path, clock=clock)
    backend.create_stream("other", 1)
    put(backend, "other", "x")
    backend.close()

    with contextlib.closing(sqlite3.connect(tmp_path / "pipeline.db")) as db:
        with pytest.raises(sqlite3.OperationalError, match="^views may not be indexed$"):
            db.executescript(PREVIOUS_OPENING)


def test_a_read_only_state_of_the_version_before_puts_is_read_as_it_is(tmp_path, monkeypatch):
    previous_version_with_records(tmp_path)
    before = (tmp_path / "pipeline.db").read_bytes()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK and access(path, mode))
    shard = "shardId-000000000000"

    reader = LocalBackend(tmp_path)

    assert reader.read_only
    assert [(r.sequence, r.partition_key, r.data) for r in read_all(reader, "events", shard)] == [
        ("1", "k", b"a"),
        ("2", "key b", b"b"),
        ("4", "key d", b"d"),
    ]
    assert reader.behind("events", shard, "AFTER_SEQUENCE_NUMBER", sequence="1").records == 2
    assert reader.latest_iterator("events", shard)[1] == "5"  # after the last number given
    reader.close()
    assert (tmp_path / "pipeline.db").read_bytes() == before


def test_numbers_go_on_from_the_higher_counter_of_records_and_puts(tmp_path, clock):
    previous_version_with_records(tmp_path)  # records' counter: 5
    with contextlib.closing(LocalBackend(tmp_path, clock=clock)) as backend:
        put(backend, "events", "f", "g", "h", "i")  # numbered 6 to 9 in puts
    with contextlib.closing(sqlite3.connect(tmp_path / "pipeline.db")) as db:
        # A records table again, with a counter behind puts' (no guard stopped its maker).
        db.executescript("DROP VIEW records;" + PREVIOUS_OPENING)
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('records', 7)")
        db.commit()

    backend = LocalBackend(tmp_path, clock=clock)
    (new,) = put(backend, "events", "k")

    assert new.sequence == "10"
    backend.close()


# The state of the version before checkpoints were dated and runs recorded.
UNDATED_SCHEMA = (
    PREVIOUS_SCHEMA.replace(
        "retention_hours INTEGER NOT NULL);",
        "retention_hours INTEGER NOT NULL, uid TEXT, created_ms INTEGER);",
    )
    .replace(
        "sequence TEXT NOT NULL, PRIMARY KEY",
        "sequence TEXT NOT NULL, stream_uid TEXT, stream_created_ms INTEGER, PRIMARY KEY",
    )
    .replace(
        "VALUES ('events', 'ACTIVE', 24);", "VALUES ('events', 'ACTIVE', 24, 'u1', 1700000000000);"
    )
    .replace(
        "VALUES ('shop', 'events', 'shardId-000000000000', '1');",
        "VALUES ('shop', 'events', 'shardId-000000000000', '1', 'u1', 1700000000000);",
    )
)


def test_a_state_file_of_the_version_before_dated_checkpoints_opens_and_dates_new_ones(
    tmp_path, clock
):
    with contextlib.closing(sqlite3.connect(tmp_path / "pipeline.db")) as db:
        db.executescript(UNDATED_SCHEMA)
    shard = "shardId-000000000000"

    backend = LocalBackend(tmp_path, clock=clock)

    assert backend.get_checkpoints("shop", "events") == {shard: "1"}
    assert backend.checkpoint_times("shop", "events") == {shard: None}
    assert backend.get_run_info("shop") is None
    backend.set_checkpoint("shop", "events", shard, "2")
    assert backend.checkpoint_times("shop", "events") == {
        shard: datetime.datetime.fromtimestamp(START, datetime.timezone.utc)
    }


# Buckets


def test_buckets_round_trip_and_list(backend, tmp_path):
    backend.create_bucket("lake")
    backend.put_object("lake", "usa/2026/11/26/part-1", b"one")
    backend.put_object("lake", "usa/2026/11/26/part-0", b"zero")
    backend.put_object("lake", "errors/x", b"bad")
    backend.put_object("lake", "errors/x", b"worse")

    assert backend.bucket_exists("lake")
    assert backend.list_objects("lake") == [
        "errors/x",
        "usa/2026/11/26/part-0",
        "usa/2026/11/26/part-1",
    ]
    assert backend.list_objects("lake", "usa/") == [
        "usa/2026/11/26/part-0",
        "usa/2026/11/26/part-1",
    ]
    assert backend.get_object("lake", "errors/x") == b"worse"
    assert (tmp_path / "state/buckets/lake/usa/2026/11/26/part-1").read_bytes() == b"one"
    with pytest.raises(BackendError, match="^bucket 'lake' already exists$"):
        backend.create_bucket("lake")

    backend.delete_bucket("lake")
    assert not backend.bucket_exists("lake")
    with pytest.raises(BackendError, match="^bucket 'lake' does not exist$"):
        backend.list_objects("lake")


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", "a//b", "a/"])
def test_object_keys_cannot_leave_the_bucket(backend, key):
    backend.create_bucket("lake")

    with pytest.raises(BackendError, match=f"^object key '{key}' cannot be stored locally"):
        backend.put_object("lake", key, b"x")


def test_missing_objects_and_bad_bucket_names(backend):
    backend.create_bucket("lake")
    with pytest.raises(BackendError, match="^object 'nope' not found in bucket 'lake'$"):
        backend.get_object("lake", "nope")
    with pytest.raises(BackendError, match="^invalid bucket name 'Lake/..'"):
        backend.create_bucket("Lake/..")


# Firehose metadata


def test_firehose_metadata_round_trips(backend):
    firehose = FirehoseDescription("usa-lake", "usa", "lake", "usa/", "errors/", 5, 60, "GZIP")
    assert backend.describe_firehose("usa-lake") is None

    backend.create_firehose(firehose)
    with pytest.raises(BackendError, match="^firehose 'usa-lake' already exists$"):
        backend.create_firehose(firehose)
    changed = FirehoseDescription("usa-lake", "usa", "lake", "us/", "err/", 64, 900, "UNCOMPRESSED")
    backend.update_firehose(changed)

    assert backend.describe_firehose("usa-lake") == changed
    backend.delete_firehose("usa-lake")
    assert backend.describe_firehose("usa-lake") is None
    with pytest.raises(BackendError, match="^firehose 'usa-lake' does not exist$"):
        backend.delete_firehose("usa-lake")


# Which pipeline created what


def test_what_apply_created_for_a_pipeline_is_its_own_until_deleted(backend, tmp_path):
    lake = FirehoseDescription("usa-lake", "usa", "lake", "usa/", "errors/", 5, 60, "GZIP")
    backend.create_stream("events", 1, "shop")
    backend.create_stream("audit", 1, "other")
    backend.create_stream("by-hand", 1)
    backend.create_bucket("lake", "shop")
    backend.create_bucket("swept", "shop")
    backend.create_firehose(lake, "shop")
    shutil.rmtree(tmp_path / "state" / "buckets" / "swept")  # removed by hand

    owned = backend.owned("shop")
    backend.delete_stream("events")
    backend.delete_bucket("lake")
    backend.delete_firehose("usa-lake")
    backend.create_stream("events", 1)  # made again, by hand this time

    assert owned == [("bucket", "lake"), ("firehose", "usa-lake"), ("stream", "events")]
    assert backend.owned("shop") == []
    assert backend.owned("other") == [("stream", "audit")]


def test_a_read_only_state_of_the_previous_version_owns_nothing(tmp_path, monkeypatch):
    with contextlib.closing(sqlite3.connect(tmp_path / "pipeline.db")) as db:
        db.executescript(PREVIOUS_SCHEMA)
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK and access(path, mode))

    reader = LocalBackend(tmp_path)

    assert reader.read_only
    assert reader.owned("shop") == []
    reader.close()


# Several processes at once


def write_records(state_dir: str, writer: int) -> None:
    backend = LocalBackend(Path(state_dir))
    for start in range(0, 2000, 100):
        entries = [(f"{writer}:{i}".encode(), f"key-{i}") for i in range(start, start + 100)]
        assert all(result.ok for result in backend.put_records("events", entries))
    backend.close()


def poll_records(state_dir: str, stop, seen) -> None:
    backend = LocalBackend(Path(state_dir))
    shards = [s.shard_id for s in backend.list_shards("events")]
    iterators = {s: backend.get_shard_iterator("events", s, "TRIM_HORIZON") for s in shards}
    count = 0
    while True:
        # Read once more after the writers stop, so the last batches are counted too.
        stopping = stop.is_set()
        for shard, iterator in iterators.items():
            batch = backend.get_records(iterator)
            count += len(batch.records)
            iterators[shard] = batch.next_iterator
        if stopping:
            break
        time.sleep(0.01)
    seen.put(count)
    backend.close()


def test_two_writers_and_a_reader_share_the_state_folder(tmp_path):
    backend = LocalBackend(tmp_path)
    backend.create_stream("events", 4)
    spawn = multiprocessing.get_context("spawn")
    stop, seen = spawn.Event(), spawn.Queue()
    reader = spawn.Process(target=poll_records, args=(str(tmp_path), stop, seen))
    writers = [spawn.Process(target=write_records, args=(str(tmp_path), w)) for w in (1, 2)]

    reader.start()
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    stop.set()
    reader.join(60)

    assert [w.exitcode for w in writers] + [reader.exitcode] == [0, 0, 0]
    assert seen.get(timeout=5) == 4000
    data = [
        r.data
        for s in backend.list_shards("events")
        for r in read_all(backend, "events", s.shard_id)
    ]
    assert sorted(data) == sorted(f"{w}:{i}".encode() for w in (1, 2) for i in range(2000))
    backend.close()


def test_a_pipeline_runs_once_at_a_time_on_a_state_folder(tmp_path):
    first, second = LocalBackend(tmp_path), LocalBackend(tmp_path)
    with first.running("shop"):
        with pytest.raises(BackendError) as caught:
            with second.running("shop"):
                pass
        with second.running("other"):  # another pipeline is free to run
            pass
    assert str(caught.value) == (
        f"pipeline shop is already running on {tmp_path} ({socket.gethostname()} pid "
        f"{os.getpid()}); "
        "two runs at once would write every record twice"
    )
    with second.running("shop"):  # free again once the first run ends
        pass


# The state folder removed under a running command


@pytest.mark.parametrize("replaced", [False, True], ids=["removed", "replaced"])
def test_a_put_into_a_removed_or_replaced_state_fails_and_stores_nothing(tmp_path, replaced):
    state = tmp_path / "state"
    backend = LocalBackend(state)
    backend.create_stream("events", 1)
    shutil.rmtree(state)  # `rm -rf .pipeline` while the command runs
    if replaced:
        other = LocalBackend(state)  # and another command starts over
        other.create_stream("events", 1)

    with pytest.raises(BackendError) as caught:
        put(backend, "events", "a")

    assert str(caught.value) == removed_state(state)
    if replaced:
        assert read_all(other, "events", "shardId-000000000000") == []
    with pytest.raises(BackendError):  # reads stop too: no one else sees that file
        backend.get_checkpoints("shop", "events")


# A failing disk: one line naming the path and the cause


@pytest.mark.parametrize(
    ("code", "cause"),
    [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")],
)
def test_a_lock_file_that_cannot_be_written_is_one_line_naming_it(
    tmp_path, monkeypatch, code, cause
):
    backend = LocalBackend(tmp_path)
    (tmp_path / "locks").mkdir()
    FailingDisk(monkeypatch, tmp_path / "locks", code)

    with pytest.raises(BackendError) as caught:
        with backend.running("shop"):
            pass

    assert str(caught.value) == f"cannot write {tmp_path / 'locks' / 'shop.lock'}: {cause}"


@pytest.mark.parametrize(
    ("mount", "cause"),
    [
        (
            "mount -t tmpfs -o size=4k tmpfs {0} && head -c 4096 /dev/zero > {0}/filler",
            "No space left on device",
        ),
        ("mount --bind {0} {0} && mount -o remount,bind,ro {0}", "Read-only file system"),
    ],
    ids=["full", "read-only"],
)
def test_a_run_whose_lock_file_cannot_be_written_says_so_in_one_line(
    write_spec, state, mount, cause
):
    spec = write_spec(MINIMAL)
    assert CliRunner().invoke(cli, ["apply", str(spec)]).exit_code == 0
    locks = state / "locks"
    locks.mkdir()

    done = with_own_mounts(f"{mount.format(locks)} || exit 9\n{PIPELINE} run {spec}")

    assert (done.returncode, done.stderr) == (
        1,
        f"error: cannot write {locks / 'shop.lock'}: {cause}\n",
    )


def test_buckets_on_a_read_only_disk_fail_in_one_line_naming_the_path(tmp_path, monkeypatch):
    backend = LocalBackend(tmp_path)
    backend.create_bucket("kept")
    FailingDisk(monkeypatch, tmp_path / "buckets", errno.EROFS)
    errors = []

    for write in (
        lambda: backend.create_bucket("new"),
        lambda: backend.put_object("kept", "a/b", b"x"),
    ):
        with pytest.raises(BackendError) as caught:
            write()
        errors.append(str(caught.value))

    buckets = tmp_path / "buckets"
    assert errors == [
        f"cannot create {buckets / 'new'}: Read-only file system",
        f"cannot write {buckets / 'kept' / 'a' / 'b'}: Read-only file system",
    ]


def test_a_state_folder_that_cannot_be_made_is_one_line_naming_it(tmp_path, monkeypatch):
    FailingDisk(monkeypatch, tmp_path, errno.EROFS)

    with pytest.raises(BackendError) as caught:
        LocalBackend(tmp_path / "state")

    assert str(caught.value) == f"cannot create {tmp_path / 'state'}: Read-only file system"


def read_only(state):
    return (
        f"the state folder {state} is read-only: this command writes to it "
        "(commands that only read, such as consume and plan, can use it)"
    )


def test_a_state_folder_this_process_may_not_write_is_opened_read_only(tmp_path, monkeypatch):
    writer = LocalBackend(tmp_path / "state")
    writer.create_stream("events", 1)
    put(writer, "events", "a")
    writer.close()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK and access(path, mode))
    reader = LocalBackend(tmp_path / "state")
    refused = []

    for write in (
        lambda: put(reader, "events", "b"),
        lambda: reader.create_bucket("new-bucket"),
        lambda: reader.running("shop").__enter__(),
    ):
        with pytest.raises(BackendError) as caught:
            write()
        refused.append(str(caught.value))

    assert [r.data for r in read_all(reader, "events", "shardId-000000000000")] == [b"a"]
    assert refused == [read_only(tmp_path / "state")] * 3
    with pytest.raises(BackendError) as caught:
        LocalBackend(tmp_path / "new")
    assert str(caught.value) == (
        f"the state folder {tmp_path / 'new'} is read-only and holds no state "
        f"({tmp_path / 'new' / 'pipeline.db'} does not exist)"
    )


def test_on_a_really_read_only_state_folder_readers_work_and_writers_say_why_not(
    write_spec, state, tmp_path
):
    spec = write_spec(MINIMAL)
    for command in (
        ["apply", spec],
        ["produce", "--stream", "in", "--json", '{"session_id": "s1"}'],
    ):
        assert CliRunner().invoke(cli, list(map(str, command))).exit_code == 0
    commands = [
        "consume --stream in --no-follow",
        f"plan {spec}",
        f"apply {spec}",  # nothing to change: nothing to write
        "produce --stream in --json " + shlex.quote('{"session_id": "s2"}'),
        f"run {spec} --until-idle 0",
    ]

    done = with_own_mounts(
        f"mount --bind {state} {state} && mount -o remount,bind,ro {state} || exit 9\n"
        + "".join(f"{PIPELINE} {command} 2>&1; echo exit $?\n" for command in commands)
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        'shardId-000000000000 1 key=s1: {"session_id":"s1"}',
        "exit 0",
        "  unchanged stream in (1 shard)",
        "  unchanged stream usa-out (2 shards)",
        "  unchanged stream other-out (1 shard)",
        "No changes: 3 resources up to date.",
        "exit 0",
        "No changes: 3 resources up to date.",
        "exit 0",
        f"stopped by an error after putting 0 records into in: {read_only(state)}",
        "exit 1",
        f"error: {read_only(state)}",
        "exit 1",
    ]
