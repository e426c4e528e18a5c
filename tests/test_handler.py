"""The Lambda handler: one shard's batch through the same processing, sinks and dead letter as
`pipeline run`; bad records dead-lettered, writes that cannot be made reported as the first
record Lambda must retry from."""

import base64
import json

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from conftest import MINIMAL, session_ids
from fakes import Clock, FaultyBackend

from runner import spec
from runner.backends.base import BackendError, PutResult, Throttled
from runner.backends.local import LocalBackend
from runner.commands.provision import apply
from runner.function.handler import FunctionCore

SPEC = (
    MINIMAL.replace("shards: 2", "shards: 1").replace(  # one shard per stream: one order to check
        "    other: {name: other-out, shards: 1}\n",
        "    other: {name: other-out, shards: 1}\n    rejects: {name: shop-rejects, shards: 1}\n",
    )
    + "dead_letter: {stream: rejects}\nlambda: {function: shop-etl, timeout_s: 60}\n"
)

SHARD = "shardId-000000000000"


def kinesis_event(records, shard=SHARD):
    """A Kinesis event as AWS documents it, of (sequence, partition key, data) records."""
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": key,
                    "sequenceNumber": sequence,
                    "data": base64.b64encode(data).decode(),
                    "approximateArrivalTimestamp": 1764504000.5,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard}:{sequence}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::000000000000:role/shop-etl-role",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/in",
            }
            for sequence, key, data in records
        ]
    }


def session(session_id, country):
    return json.dumps({"session_id": session_id, "country": country}).encode()


def records(*sessions):
    """Event records of (id, country) sessions, or of raw bytes, numbered from 100."""
    found = []
    for number, item in enumerate(sessions, start=100):
        data = item if isinstance(item, bytes) else session(*item)
        found.append((str(number), f"key-{number}", data))
    return found


@pytest.fixture
def shop(tmp_path, write_spec):
    loaded = spec.load(write_spec(SPEC))
    backend = LocalBackend(tmp_path / "state")
    apply(loaded, backend, lambda line: None)
    return loaded, backend


def dead_letters(backend):
    found = []
    for shard in backend.list_shards("shop-rejects"):
        iterator = backend.get_shard_iterator("shop-rejects", shard.shard_id, "TRIM_HORIZON")
        found += [json.loads(r.data) for r in backend.get_records(iterator).records]
    return [(entry["sequence"], entry["reason"]) for entry in found]


def test_a_batch_is_routed_and_its_bad_records_dead_lettered_without_failing_it(shop):
    loaded, backend = shop
    lines = []
    core = FunctionCore(loaded, backend, report=lines.append)
    event = kinesis_event(
        records(("u1", "USA"), b"not json", ("i1", "France"), ("u2", "USA"), b"[1]")
    )

    answer = core.handle(event, remaining_ms=60_000)

    assert answer == {"batchItemFailures": []}
    assert session_ids(backend, "usa-out") == ["u1", "u2"]
    assert session_ids(backend, "other-out") == ["i1"]
    assert dead_letters(backend) == [
        ("101", "not JSON: Expecting value at column 1"),
        ("104", "not a JSON object: got an array"),
    ]
    assert lines == [
        "[shop] in 5 | out other 1, usa 2 | dead-lettered 2 | filtered 0 | dropped 0 | lag 0 ms"
    ]


def test_a_record_the_event_cannot_give_is_dead_lettered_and_no_event_makes_it_raise(shop):
    loaded, backend = shop
    core = FunctionCore(loaded, backend, report=lambda line: None)
    event = kinesis_event(records(("u1", "USA"), ("u2", "USA")))
    event["Records"][0]["kinesis"]["data"] = "%%% not base64"
    del event["Records"][1]["kinesis"]["data"]

    assert core.handle(event, remaining_ms=60_000) == {"batchItemFailures": []}
    assert [reason for _, reason in dead_letters(backend)] == [
        "the event's data is not base64: Only base64 data is allowed",
        "the event's record has no data",
    ]
    for odd in ({}, {"Records": None}, {"Records": [None, 5, "x"]}, None, []):
        assert core.handle(odd, remaining_ms=60_000) == {"batchItemFailures": []}


def failing_stream(name, until=None):
    """A put_records fault: calls to stream `name` are throttled whole (until the clock says
    `until`, or always)."""

    def put_records(call, stream, entries):
        if stream == name and (until is None or until()):
            raise Throttled(f"Rate exceeded for stream {name}")
        return call(stream, entries)

    return put_records


def test_a_sink_failing_to_the_deadline_is_reported_from_its_first_record(shop):
    loaded, backend = shop
    clock = Clock()
    faulty = FaultyBackend(backend, put_records=failing_stream("usa-out"))
    lines = []
    core = FunctionCore(loaded, faulty, clock=clock, sleep=clock.sleep, report=lines.append)
    event = kinesis_event(
        records(("i1", "Peru"), b"bad", ("u1", "USA"), ("i2", "Chile"), ("u2", "USA"), b"x")
    )

    answer = core.handle(event, remaining_ms=60_000)

    # Lambda keeps its checkpoint before record 102 and retries from it: what came before is
    # in its sinks or dead letter, and nothing after it was written.
    assert answer == {"batchItemFailures": [{"itemIdentifier": "102"}]}
    assert session_ids(backend, "usa-out") == []
    assert session_ids(backend, "other-out") == ["i1"]
    assert dead_letters(backend) == [("101", "not JSON: Expecting value at column 1")]
    assert 55 <= clock.now < 60  # retried until the margin before Lambda's deadline
    assert lines[-2:] == [
        "[shop] stream usa-out: still failing when the invocation's time was nearly up: "
        "Rate exceeded for stream usa-out",
        "[shop] in 6 | written: the 2 records before record 102, which Lambda retries from",
    ]


def test_a_sink_recovering_before_the_deadline_fails_nothing(shop):
    loaded, backend = shop
    clock = Clock()
    faulty = FaultyBackend(backend, put_records=failing_stream("usa-out", lambda: clock() < 20))
    core = FunctionCore(loaded, faulty, clock=clock, sleep=clock.sleep, report=lambda line: None)

    answer = core.handle(kinesis_event(records(("u1", "USA"), ("i1", "Peru"))), 60_000)

    assert answer == {"batchItemFailures": []}
    assert session_ids(backend, "usa-out") == ["u1"]
    assert session_ids(backend, "other-out") == ["i1"]


def test_entries_failing_one_by_one_are_reported_from_the_first_not_written(shop):
    loaded, backend = shop
    clock = Clock()

    def put_records(call, stream, entries):
        # u2 is never accepted; the others are.
        ok = call(stream, [e for e in entries if b"u2" not in e[0]])
        answers = iter(ok)
        return [
            PutResult(error_code="ProvisionedThroughputExceededException", error_message="slow")
            if b"u2" in data
            else next(answers)
            for data, _ in entries
        ]

    faulty = FaultyBackend(backend, put_records=put_records)
    core = FunctionCore(loaded, faulty, clock=clock, sleep=clock.sleep, report=lambda line: None)
    event = kinesis_event(records(("u1", "USA"), ("u2", "USA"), ("u3", "USA"), ("i1", "Peru")))

    answer = core.handle(event, remaining_ms=30_000)

    assert answer == {"batchItemFailures": [{"itemIdentifier": "101"}]}
    # u3 went in with u2's call: a retry from 101 writes it again (at least once).
    assert session_ids(backend, "usa-out") == ["u1", "u3"]
    assert session_ids(backend, "other-out") == []


def test_a_refused_write_fails_the_batch_from_its_first_record_at_once(shop):
    loaded, backend = shop

    def put_records(call, stream, entries):
        if stream == "usa-out":
            raise BackendError("stream usa-out: AccessDeniedException: not allowed")
        return call(stream, entries)

    lines = []
    core = FunctionCore(
        loaded, FaultyBackend(backend, put_records=put_records), report=lines.append
    )

    answer = core.handle(kinesis_event(records(("i1", "Peru"), ("u1", "USA"))), 60_000)

    assert answer == {"batchItemFailures": [{"itemIdentifier": "101"}]}
    assert session_ids(backend, "other-out") == ["i1"]
    assert "[shop] stream usa-out: stream usa-out: AccessDeniedException: not allowed" in lines


def test_a_dead_letter_that_cannot_be_written_fails_the_batch_from_its_first_bad_record(shop):
    loaded, backend = shop
    clock = Clock()
    faulty = FaultyBackend(backend, put_records=failing_stream("shop-rejects"))
    core = FunctionCore(loaded, faulty, clock=clock, sleep=clock.sleep, report=lambda line: None)

    answer = core.handle(kinesis_event(records(("u1", "USA"), b"bad", ("u2", "USA"))), 60_000)

    assert answer == {"batchItemFailures": [{"itemIdentifier": "101"}]}
    assert session_ids(backend, "usa-out") == ["u1", "u2"]
    assert dead_letters(backend) == []


def test_kpl_aggregates_are_routed_record_by_record_and_a_corrupt_one_dead_lettered(shop):
    loaded, backend = shop
    aggregator = RecordAggregator()
    for session_id, country in (("u1", "USA"), ("i1", "Peru"), ("u2", "USA")):
        aggregator.add_user_record(session_id, session(session_id, country))
    key, _, aggregate = aggregator.clear_and_get().get_contents()
    corrupt = aggregate[:-1] + bytes([aggregate[-1] ^ 1])  # a flipped bit of its MD5
    core = FunctionCore(loaded, backend, report=lambda line: None)

    answer = core.handle(kinesis_event([("7", key, aggregate), ("8", key, corrupt)]), 60_000)

    assert answer == {"batchItemFailures": []}
    assert session_ids(backend, "usa-out") == ["u1", "u2"]
    assert session_ids(backend, "other-out") == ["i1"]
    ((sequence, reason),) = dead_letters(backend)
    assert (sequence, reason.split(":")[0]) == ("8", "KPL aggregate")
