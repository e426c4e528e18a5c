"""Injected faults lose nothing: the loop's promises under partial failures, throttling,
expired iterators and a reshard in the middle of a run."""

import contextlib
import itertools
import json
from collections import Counter

import pytest
from botocore.exceptions import (
    ConnectTimeoutError,
    EndpointConnectionError,
    ResponseStreamingError,
    SSLError,
)
from conftest import PIPELINES, read_stream, session_ids
from fakes import Clock, FaultyBackend
from moto import mock_aws as mock_aws_factory

from runner import spec
from runner.backends.aws import AwsBackend
from runner.backends.base import IteratorExpired, PutResult, StreamNotFound, Throttled
from runner.backends.local import LocalBackend
from runner.commands.produce import synthetic_sessions
from runner.commands.provision import apply
from runner.loop import engine

SOURCE = "de-c2w2lab1-kinesis-data-stream"
mock_aws = mock_aws_factory()
SINKS = ("de-c2w2lab1-usa-data-stream", "de-c2w2lab1-international-data-stream")
ENTRY_ERRORS = ("ProvisionedThroughputExceededException", "InternalFailure")


class Faulty(FaultyBackend):
    """A backend that misbehaves as told, then behaves like the one it wraps."""

    def __init__(self, backend, **faults):
        super().__init__(
            backend,
            put_records=self._put_records,
            set_checkpoint=self._set_checkpoint,
            list_shards=self._list_shards,
            get_records=self._get_records,
        )
        self.faults = faults
        self.calls = {"put_records": 0, "get_records": 0, "set_checkpoint": 0, "list_shards": 0}
        self.seen = set()
        self.resharded = False

    def _put_records(self, put, stream, entries):
        self.calls["put_records"] += 1
        if self.faults.get("throttle_puts") and self.calls["put_records"] % 3 == 1:
            raise Throttled("Rate exceeded for stream")
        return (
            put(stream, entries)
            if not self.faults.get("fail_entries")
            else self._partial(put, stream, entries)
        )

    def _partial(self, put, stream, entries):
        # Every other entry fails the first time it is seen, throttled or by an internal
        # failure of Kinesis in turn; the rest go through.
        results, passing = [], []
        for entry in entries:
            first_time = entry not in self.seen
            self.seen.add(entry)
            if first_time and len(self.seen) % 2 == 0:
                code = ENTRY_ERRORS[len(self.seen) // 2 % 2]
                results.append(PutResult(error_code=code, error_message="slow down"))
            else:
                results.append(None)
                passing.append(entry)
        accepted = iter(put(stream, passing) if passing else [])
        return [result or next(accepted) for result in results]

    def _set_checkpoint(self, set_checkpoint, pipeline, stream, shard_id, sequence):
        # Only the run's own checkpoints: local Firehose delivery writes SQLite, which does
        # not throttle, and on AWS Firehose delivers by itself.
        throttled = bool(self.faults.get("throttle_checkpoints")) and not pipeline.startswith(
            "firehose:"
        )
        self.calls["set_checkpoint"] += throttled
        if throttled and self.calls["set_checkpoint"] % 2 == 1:
            raise Throttled("checkpoint table: PutItem throttled")
        set_checkpoint(pipeline, stream, shard_id, sequence)

    def _list_shards(self, list_shards, stream):
        # The first listings after a reshard are throttled: among them, the one made as soon
        # as the parent shard is read to its end.
        if self.resharded and self.calls["list_shards"] < self.faults.get("throttle_listings", 0):
            self.calls["list_shards"] += 1
            raise Throttled(f"stream '{stream}': ListShards throttled (LimitExceededException)")
        return list_shards(stream)

    def _get_records(self, get, iterator, limit):
        self.calls["get_records"] += 1
        count = self.calls["get_records"]
        if self.faults.get("expire_iterators") and count % 4 == 2:
            raise IteratorExpired("Iterator expired")
        if self.faults.get("throttle_reads") and count % 3 == 2:
            raise Throttled("Rate exceeded for shard")
        if count == self.faults.get("reshard_at"):
            self.backend.update_shard_count(SOURCE, 3)
            self.resharded = True
        return get(iterator, min(limit, self.faults.get("read_limit", limit)))


@pytest.fixture(params=["local", "aws"])
def scenario(request, tmp_path):
    """The scenario applied on the local backend, or on AWS as moto fakes it in-process."""
    if request.param == "local":
        backend = LocalBackend(tmp_path)
        loaded = spec.load(PIPELINES / "ecommerce.yaml")
    else:
        request.getfixturevalue("aws_env")
        request.addfinalizer(mock_aws.stop)
        mock_aws.start()
        backend = AwsBackend("us-east-1", poll_s=0)
        loaded = spec.load(
            PIPELINES / "ecommerce.yaml", account_id=lambda region: backend.account_id
        )
    apply(loaded, backend, lambda line: None)
    return loaded, backend, tmp_path


def put_sessions(backend, count, seed):
    sessions = list(itertools.islice(synthetic_sessions(seed), count))
    put_in_source(backend, sessions)
    return {s["session_id"] for s in sessions}


def put_in_source(backend, sessions):
    for start in range(0, len(sessions), 500):
        chunk = sessions[start : start + 500]
        backend.put_records(SOURCE, [(json.dumps(s).encode(), s["session_id"]) for s in chunk])


def run(loaded, backend, state):
    """A run until idle, on a clock its waits move on: it takes no real time to wait."""
    clock = Clock()
    options = engine.RunOptions(until_idle=0.3)
    runner = engine.Engine(
        loaded, backend, state, options, lambda line: None, clock=clock, sleep=clock.sleep
    )
    return runner.run()


@pytest.mark.parametrize(
    "faults",
    [
        {"fail_entries": True},
        {"throttle_puts": True},
        {"expire_iterators": True, "read_limit": 50},
        {"throttle_reads": True, "read_limit": 50},
        {"throttle_checkpoints": True, "read_limit": 50},
    ],
    ids=[
        "failed-entries",
        "throttled-puts",
        "expired-iterators",
        "throttled-reads",
        "throttled-checkpoints",
    ],
)
def test_faults_lose_nothing_and_write_each_record_once(scenario, faults):
    loaded, backend, state = scenario
    expected = put_sessions(backend, 400, seed=11)
    faulty = Faulty(backend, **faults)

    counts = run(loaded, faulty, state)

    ids = session_ids(backend, *SINKS)
    assert sorted(ids) == sorted(expected)  # every record, and none twice
    assert counts.records_in == 400


@pytest.mark.parametrize(
    "faults",
    [
        {"fail_entries": True},
        {"throttle_puts": True},
        {"fail_entries": True, "throttle_puts": True},
    ],
    ids=["failed-entries", "throttled-puts", "both"],
)
def test_each_keys_records_reach_its_sink_once_and_in_source_order(scenario, faults):
    # 900 sessions under 9 partition keys: each sink gets some 50 records of every key at once.
    loaded, backend, state = scenario
    sessions = list(itertools.islice(synthetic_sessions(14), 900))
    for number, session in enumerate(sessions):
        session.update(session_id=f"key-{number % 9}", number=number)
    put_in_source(backend, sessions)

    run(loaded, Faulty(backend, **faults), state)

    expected = {sink: {} for sink in SINKS}
    for session in sessions:
        sink = SINKS[0] if session["country"] == "USA" else SINKS[1]
        expected[sink].setdefault(session["session_id"], []).append(session["number"])
    landed = {sink: {} for sink in SINKS}
    for sink in SINKS:
        for record in read_stream(backend, sink):
            landed[sink].setdefault(record["session_id"], []).append(record["number"])
    assert landed == expected


@pytest.mark.parametrize("throttle_listings", [0, 1], ids=["listed", "throttled-listing"])
def test_a_reshard_mid_run_loses_nothing_and_finishes_the_parent_shard(scenario, throttle_listings):
    loaded, backend, state = scenario
    if backend.name == "aws" and throttle_listings:
        pytest.skip("moto never ends a closed shard, so its parent never finishes")
    before = put_sessions(backend, 300, seed=12)
    faulty = Faulty(backend, read_limit=100, reshard_at=2, throttle_listings=throttle_listings)

    def get_then_add_more(get, iterator, limit):
        batch = get(iterator, limit)
        if faulty.calls["get_records"] == 3:
            after.update(put_sessions(backend, 200, seed=13))  # lands in the new shards
        return batch

    after: set = set()

    run(loaded, FaultyBackend(faulty, get_records=get_then_add_more), state)

    ids = session_ids(backend, *SINKS)
    assert sorted(ids) == sorted(before | after)
    shards = backend.list_shards(SOURCE)
    assert len([s for s in shards if s.is_open]) == 3
    if backend.name == "local":
        # moto never ends a closed shard (it always answers a NextShardIterator), so only the
        # local backend can show the parent's checkpoint reaching SHARD_END.
        checkpoints = backend.get_checkpoints("de-c2w2lab1-etl", SOURCE)
        assert checkpoints["shardId-000000000000"] == "SHARD_END"


def test_the_source_stream_deleted_mid_run_ends_it_with_one_line(scenario):
    loaded, backend, state = scenario
    put_sessions(backend, 10, seed=17)
    faulty = Faulty(backend)
    original_get = faulty.get_records

    def deleted_after_the_first_read(iterator, limit=10_000):
        if faulty.calls["get_records"] == 1:
            backend.delete_stream(SOURCE)
        return original_get(iterator, limit)

    faulty.get_records = deleted_after_the_first_read

    with pytest.raises(StreamNotFound) as error:
        run(loaded, faulty, state)
    assert str(error.value) == f"stream {SOURCE} was deleted while the run read it"


# Transport failures on the aws target: botocore fails the first of every three calls of each
# kind the run makes (reading, writing, checkpointing) as a bad network would, before moto sees
# the request.
KINESIS = "https://kinesis.us-east-1.amazonaws.com/"
TRANSPORT_FAILURES = {
    "connect-timeout": lambda: ConnectTimeoutError(endpoint_url=KINESIS),
    "tls": lambda: SSLError(endpoint_url=KINESIS, error="EOF occurred in violation of protocol"),
    "dns": lambda: EndpointConnectionError(endpoint_url=KINESIS),
    "response-stream": lambda: ResponseStreamingError(error="IncompleteRead(0 bytes read)"),
}
RUN_CALLS = {
    "kinesis": ("ListShards", "GetShardIterator", "GetRecords", "PutRecords"),
    "dynamodb": ("UpdateItem",),
}


@contextlib.contextmanager
def on_every_third_call(backend, event, change):
    """While the block runs, call change(**the event's arguments) on the first of every three
    calls of each operation a run makes; gives the list of the operations changed."""
    calls = Counter()
    changed = []

    def hook(event_name, **kwargs):
        operation = event_name.rsplit(".", 1)[1]
        calls[operation] += 1
        if calls[operation] % 3 == 1:
            changed.append(operation)
            return change(**kwargs)
        return None

    names = [
        (client, f"{event}.{service}.{operation}")
        for service, operations in RUN_CALLS.items()
        for client in (backend._client(service), backend._client(service, data_plane=True))
        for operation in operations
    ]
    for client, name in names:
        client.meta.events.register_first(name, hook)
    try:
        yield changed
    finally:
        for client, name in names:
            client.meta.events.unregister(name, hook)


@pytest.mark.parametrize("scenario", ["aws"], indirect=True)
@pytest.mark.parametrize("failure", TRANSPORT_FAILURES.values(), ids=list(TRANSPORT_FAILURES))
def test_transport_failures_mid_run_are_waited_out_and_lose_nothing(scenario, failure):
    loaded, backend, state = scenario
    expected = put_sessions(backend, 100, seed=15)

    def fail(**_):
        raise failure()

    with on_every_third_call(backend, "before-send", fail) as failed:
        counts = run(loaded, backend, state)

    assert set(failed) == {*RUN_CALLS["kinesis"], *RUN_CALLS["dynamodb"]}
    assert sorted(session_ids(backend, *SINKS)) == sorted(expected)  # all, and none twice
    assert counts.records_in == 100
    checkpoints = backend.get_checkpoints("de-c2w2lab1-etl", SOURCE)
    assert list(checkpoints) == ["shardId-000000000000"]


@pytest.mark.parametrize("scenario", ["aws"], indirect=True)
def test_answers_cut_short_mid_run_are_waited_out_and_lose_nothing(scenario):
    # The request reached Kinesis, but half of its 200 answer did not come back: the records of
    # a PutRecords cut short are in, and are put again (at least once).
    loaded, backend, state = scenario
    expected = put_sessions(backend, 100, seed=16)

    def cut_short(response_dict, **_):
        response_dict["body"] = response_dict["body"][: len(response_dict["body"]) // 2]

    with on_every_third_call(backend, "before-parse", cut_short) as cut:
        counts = run(loaded, backend, state)

    assert set(cut) == {*RUN_CALLS["kinesis"], *RUN_CALLS["dynamodb"]}
    assert set(session_ids(backend, *SINKS)) == expected
    assert counts.records_in == 100
