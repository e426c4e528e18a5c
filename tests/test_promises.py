"""The run loop's promises at their edges: each test states one promise a user relies on
(records that cannot be written, drains that must end, throttled shards, object sizes, long
throttling, the AWS run lease)."""

import base64
import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time

import pytest
from botocore.exceptions import ReadTimeoutError
from click.testing import CliRunner
from conftest import (
    MINIMAL,
    kpl_aggregates,
    read_stream,
    removed_state,
    session_ids,
    timeless,
)
from fakes import (
    Clock,
    FaultyBackend,
    HungRenewals,
    VirtualClock,
    full_disk,
    lease_on,
    wait_until,
)
from moto import mock_aws

from runner import spec
from runner.backends.base import (
    SHARD_END,
    BackendError,
    Lease,
    LeaseLapsed,
    PutResult,
    Throttled,
)
from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.commands import run as run_command
from runner.commands import target
from runner.commands.provision import apply
from runner.loop import engine
from runner.loop.sink import Sink
from runner.records.processor import parse_json

HEADER = """\
pipeline: review
resources:
  streams:
    source: {name: in, shards: 1}
    out: {name: out, shards: 1}
  buckets:
    out: {name: review-out}
    raw: {name: review-raw}
  firehoses:
    out: {name: review-out-firehose, from: out, to: out, buffer: {size_mb: 1, interval_s: 60}}
"""
ROUTE = """\
source: {stream: source}
transform:
  - set:
      total: sum(items || `[]`)
route:
  partition_key: session_id
  cases:
    - to: out
"""
RAW_ARCHIVE = (
    "    raw: {name: review-raw-firehose, from: source, to: raw, "
    "buffer: {size_mb: 1, interval_s: 60}}\n"
)


def before_each_get(backend, before):
    """The local backend, calling `before(n)` before its nth GetRecords call."""

    def get_records(get, iterator, limit):
        before(wrapped.called["get_records"])
        return get(iterator, limit)

    wrapped = FaultyBackend(backend, get_records=get_records)
    return wrapped


def setup(tmp_path, *, firehoses=""):
    path = tmp_path / "review.yaml"
    path.write_text(HEADER + firehoses + ROUTE)
    loaded = spec.load(path)
    state = tmp_path / "state"
    backend = LocalBackend(state)
    apply(loaded, backend, lambda line: None)
    return loaded, backend, state


def make_engine(loaded, backend, state, clock=None, report=lambda line: None, **options):
    clock = clock or Clock()
    options.setdefault("until_idle", 1.0)
    return engine.Engine(
        loaded,
        backend,
        state,
        engine.RunOptions(**options),
        report,
        clock=clock,
        sleep=clock.sleep,
    )


def sessions(*ids, **extra):
    return [(json.dumps({"session_id": i, **extra}).encode(), i) for i in ids]


def routed_ids(backend):
    return sorted(record["session_id"] for record in read_stream(backend, "out"))


def delivered(backend, bucket):
    return [backend.get_object(bucket, key) for key in backend.list_objects(bucket)]


# Bad input: a record the sinks cannot take goes to the dead letter, and the loop goes on.


def test_a_record_that_cannot_be_encoded_is_dead_lettered_and_the_loop_goes_on(tmp_path):
    loaded, backend, state = setup(tmp_path)
    # A JavaScript producer truncating "😀" between its two halves sends exactly this.
    backend.put_records(
        "in",
        [
            *sessions("a"),
            (b'{"session_id": "b", "city": "Washington \\ud83d"}', "b"),
            (b'{"session_id": "\\udc00"}', "c"),
            # A sum() of two 4,300-digit numbers has more digits than str() will write.
            *sessions("e", items=[int("9" * 4300), int("9" * 4300)]),
            *sessions("d"),
        ],
    )

    counts = make_engine(loaded, backend, state).run()

    assert counts.records_in == 5
    assert sum(counts.out.values()) + counts.dead_lettered == 5
    assert {"a", "d"} <= set(routed_ids(backend))


# KPL aggregates: each user record is processed on its own; checkpoints stay at whole records.


def dead_letter_entries(state, pipeline="review"):
    path = state / "dead-letter" / f"{pipeline}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_user_record_of_an_aggregate_is_processed_on_its_own(tmp_path):
    loaded, backend, state = setup(tmp_path)
    (aggregate,) = kpl_aggregates([*sessions("a"), (b"{not json", "b"), *sessions("c")])
    (first, last) = backend.put_records("in", [(aggregate, "a"), *sessions("d")])

    counts = make_engine(loaded, backend, state).run()

    assert (counts.records_in, counts.out["out"], counts.dead_lettered) == (4, 3, 1)
    assert [(r["session_id"], r["total"]) for r in read_stream(backend, "out")] == [
        ("a", 0),
        ("c", 0),
        ("d", 0),
    ]
    (entry,) = dead_letter_entries(state)
    assert {key: entry[key] for key in ("reason", "sequence", "sub_sequence", "partition_key")} == {
        "reason": "not JSON: Expecting property name enclosed in double quotes at column 2",
        "sequence": first.sequence,
        "sub_sequence": 1,
        "partition_key": "b",
    }
    assert (entry["data"], list(entry)[5:8]) == (
        "{not json",
        ["sequence", "sub_sequence", "partition_key"],
    )
    assert backend.get_checkpoints("review", "in") == {last.shard_id: last.sequence}


def test_a_corrupt_aggregate_goes_whole_to_the_dead_letter(tmp_path):
    loaded, backend, state = setup(tmp_path)
    (aggregate,) = kpl_aggregates(sessions("a", "b"))
    corrupt = aggregate[:-1] + bytes([aggregate[-1] ^ 1])
    backend.put_records("in", [*sessions("x"), (corrupt, "a"), *sessions("y")])

    counts = make_engine(loaded, backend, state).run()

    assert (counts.records_in, counts.out["out"], counts.dead_lettered) == (3, 2, 1)
    assert routed_ids(backend) == ["x", "y"]
    (entry,) = dead_letter_entries(state)
    assert entry["reason"] == (
        f"KPL aggregate: bad MD5 checksum of its {len(aggregate) - 20} protobuf bytes "
        "(corrupt or cut short)"
    )
    assert base64.b64decode(entry["data_base64"]) == corrupt
    assert (entry["partition_key"], entry["data"], "sub_sequence" in entry) == ("a", None, False)


def test_max_records_takes_an_aggregate_whole_and_the_next_run_goes_on_after_it(tmp_path):
    loaded, backend, state = setup(tmp_path)
    (aggregate,) = kpl_aggregates(sessions("a", "b", "c"))
    (put, _) = backend.put_records("in", [(aggregate, "a"), *sessions("d")])

    first = make_engine(loaded, backend, state, max_records=2).run()

    assert (first.records_in, routed_ids(backend)) == (3, ["a", "b", "c"])
    assert backend.get_checkpoints("review", "in") == {put.shard_id: put.sequence}
    second = make_engine(loaded, backend, state).run()
    assert (second.records_in, routed_ids(backend)) == (1, ["a", "b", "c", "d"])


def test_what_reaches_a_sink_is_always_json(tmp_path):
    loaded, backend, state = setup(tmp_path)
    backend.put_records(
        "in",
        [
            *sessions("plain", amount=1),
            (b'{"session_id": "huge", "amount": 1e400}', "huge"),
            *sessions("overflow", items=[1e308, 1e308]),
        ],
    )

    counts = make_engine(loaded, backend, state).run()

    assert counts.records_in == 3
    for record in read_stream(backend, "out"):
        parse_json(json.dumps(record, allow_nan=True).encode())  # strict: refuses Infinity
    for body in delivered(backend, "review-out"):
        for line in body.splitlines():
            parse_json(line)


# Stopping: --max-records, --until-idle and a stop signal end the run.


def busy_producer(backend, stop_at=None, engine_box=None, give_up=150):
    """Puts one more source record before every GetRecords call, like a producer that never
    pauses; asks the engine to stop (as SIGTERM does) at call `stop_at`."""

    def before(call):
        backend.put_records("in", sessions(f"p{call}"))
        if stop_at is not None and call == stop_at:
            engine_box[0].stop()
        if call >= give_up:
            raise RuntimeError(f"still reading after {call} GetRecords calls")

    return before_each_get(backend, before)


def test_a_stop_during_the_final_delivery_drain_ends_the_run(tmp_path):
    loaded, backend, state = setup(tmp_path, firehoses=RAW_ARCHIVE)
    box = [None]
    busy = busy_producer(backend, stop_at=10, engine_box=box)
    box[0] = make_engine(loaded, busy, state, max_records=1)

    counts = box[0].run()  # --max-records 1 ends the loop, then SIGTERM during the drain

    assert counts.records_in == 1


def test_a_stopped_run_delivers_every_record_it_routed(tmp_path):
    loaded, backend, state = setup(tmp_path)
    # More than one delivery read (2,500 records): the stop lands before it has read them all.
    for start in range(0, 3000, 500):
        backend.put_records("in", sessions(*[f"s{n}" for n in range(start, start + 500)]))
    box = [None]
    busy = busy_producer(backend, stop_at=1, engine_box=box)
    box[0] = make_engine(loaded, busy, state, until_idle=None)

    counts = box[0].run()  # SIGTERM during the first source read

    lines = [
        json.loads(line) for body in delivered(backend, "review-out") for line in body.splitlines()
    ]
    assert counts.out == {"out": 3001}
    assert sorted(record["session_id"] for record in lines) == routed_ids(backend)


def test_a_second_stop_signal_during_the_final_delivery_stops_at_once(tmp_path):
    loaded, backend, state = setup(tmp_path)
    for start in range(0, 3000, 500):
        backend.put_records("in", sessions(*[f"s{n}" for n in range(start, start + 500)]))

    def ctrl_c(call):
        if call in (1, 3):  # the first source read, then the delivery's second read
            os.kill(os.getpid(), signal.SIGINT)

    run = make_engine(loaded, before_each_get(backend, ctrl_c), state, until_idle=None)

    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert run.counts.out == {"out": 3000}
    assert delivered(backend, "review-out") == []


def test_a_max_records_run_ends_while_a_producer_keeps_writing(tmp_path):
    loaded, backend, state = setup(tmp_path, firehoses=RAW_ARCHIVE)
    busy = busy_producer(backend)
    run = make_engine(loaded, busy, state, max_records=1)

    counts = run.run()

    assert counts.records_in == 1


def test_until_idle_does_not_stop_while_a_shard_is_throttled(tmp_path):
    loaded, backend, state = setup(tmp_path)

    def before(call):
        if call == 2:
            backend.put_records("in", sessions("a", "b", "c"))
        if 2 <= call <= 4:
            raise Throttled("Rate exceeded for shard shardId-000000000000")

    throttled = before_each_get(backend, before)

    counts = make_engine(loaded, throttled, state, until_idle=1.0).run()

    assert counts.records_in == 3


# The local state folder removed under a run.


def test_a_run_whose_state_folder_is_removed_stops_with_the_error(tmp_path):
    loaded, backend, state = setup(tmp_path)
    backend.put_records("in", sessions("a", "b"))

    def rm_rf(call):
        if call == 3:  # after the first round: the source and the delivery read once
            shutil.rmtree(state)

    with pytest.raises(BackendError) as caught:
        make_engine(loaded, before_each_get(backend, rm_rf), state).run()

    assert str(caught.value) == removed_state(state)


def test_a_run_stopped_by_an_error_counts_only_what_it_wrote(tmp_path):
    loaded, backend, state = setup(tmp_path)
    backend.put_records("in", sessions("a"))

    def get_records(get, iterator, limit):
        if filling.called["get_records"] == 3:  # after the first round: source and delivery read
            backend.put_records("in", sessions("b", "c"))
        return get(iterator, limit)

    def put_records(put, stream, entries):
        if filling.called["put_records"] > 1:  # the disk is full once the first call is in
            raise BackendError("local state .pipeline/pipeline.db: database or disk is full")
        return put(stream, entries)

    filling = FaultyBackend(backend, get_records=get_records, put_records=put_records)
    run = make_engine(loaded, filling, state)
    with pytest.raises(BackendError):
        run.run()

    assert routed_ids(backend) == ["a"]
    assert (run.counts.records_in, dict(run.counts.out)) == (1, {"out": 1})


# The local Firehose delivery.


def test_a_delivered_object_holds_about_the_buffer_size(tmp_path):
    loaded, backend, state = setup(tmp_path)
    big = "x" * 300_000
    for start in range(0, 20, 10):
        backend.put_records("in", sessions(*[f"s{n}" for n in range(start, start + 10)], pad=big))

    make_engine(loaded, backend, state).run()

    bodies = delivered(backend, "review-out")
    assert sum(len(body.splitlines()) for body in bodies) == 20
    record_size = max(len(line) for body in bodies for line in body.splitlines(keepends=True))
    assert max(len(body) for body in bodies) <= 1024 * 1024 + record_size


def test_an_unsupported_compression_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    path = tmp_path / "review.yaml"
    firehose = "buffer: {size_mb: 1, interval_s: 60}"
    path.write_text((HEADER + ROUTE).replace(firehose, firehose + ", compression: ZIP"))
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    assert CliRunner().invoke(cli, ["apply", str(path)]).exit_code == 0

    result = CliRunner().invoke(cli, ["run", str(path), "--until-idle", "0"])

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_objects_are_written_before_delivery_checkpoints_move(tmp_path):
    """A delivery whose object write fails moves no checkpoint: the next run delivers all."""
    loaded, backend, state = setup(tmp_path)
    backend.put_records("in", sessions("a", "b", "c"))

    with pytest.raises(BackendError, match="disk full"):
        make_engine(loaded, FaultyBackend(backend, put_object=full_disk), state).run()
    assert backend.get_checkpoints("firehose:review-out-firehose", "out") == {}
    assert routed_ids(backend) == ["a", "b", "c"]  # the source side was checkpointed

    make_engine(loaded, backend, state).run()

    (body,) = delivered(backend, "review-out")
    assert sorted(json.loads(line)["session_id"] for line in body.splitlines()) == ["a", "b", "c"]


def test_max_records_ending_inside_a_closed_shard_finishes_it_on_the_next_run(tmp_path):
    """A batch cut by --max-records on a closed shard checkpoints where it stopped, not
    SHARD_END; the next run reads the parent's rest before its children."""
    loaded, backend, state = setup(tmp_path)
    backend.put_records("in", sessions("p1", "p2", "p3", "p4", "p5"))
    backend.update_shard_count("in", 2)
    backend.put_records("in", sessions("c1", "c2", "c3"))

    make_engine(loaded, backend, state, max_records=3).run()
    checkpoints = backend.get_checkpoints("review", "in")
    assert checkpoints["shardId-000000000000"] not in (SHARD_END, None)
    assert routed_ids(backend) == ["p1", "p2", "p3"]

    make_engine(loaded, backend, state).run()

    assert routed_ids(backend) == sorted(["p1", "p2", "p3", "p4", "p5", "c1", "c2", "c3"])
    assert [r["session_id"] for r in read_stream(backend, "out")][:5] == [
        "p1",
        "p2",
        "p3",
        "p4",
        "p5",
    ]
    assert backend.get_checkpoints("review", "in")["shardId-000000000000"] == SHARD_END


# Writing: throttling slows the run down, never fails it.


def test_a_long_throttled_put_keeps_waiting_instead_of_failing():
    class Throttling:
        calls = 0

        def put_records(self, stream, entries):
            self.calls += 1
            if self.calls <= 1100:
                raise Throttled(f"Rate exceeded for stream {stream}")
            return [PutResult("shardId-000000000000", str(n)) for n, _ in enumerate(entries)]

    waits = []
    sink = Sink(Throttling(), "out", sleep=waits.append, jitter=lambda: 1.0)

    sink.put([(b"{}", "k")])

    assert max(waits) == 5.0


# A failing service: waited out within a deadline, and a stop ends the wait.

LOST = 'Could not connect to the endpoint URL: "https://kinesis.us-east-1.amazonaws.com/"'


def unreachable(backend, method, clock, until=10_000.0):
    """The local backend, with one of its calls failing as a lost network makes it fail until
    the clock reaches `until` (only the run's own checkpoints, not its deliveries')."""

    def fail(call, *args):
        delivery = method == "set_checkpoint" and args[0].startswith("firehose:")
        if clock() < until and not delivery:
            raise Throttled(f"{method}: {LOST}")
        return call(*args)

    return FaultyBackend(backend, **{method: fail})


@pytest.mark.parametrize("method", ["put_records", "set_checkpoint", "get_records", "list_shards"])
def test_a_call_failing_longer_than_the_deadline_ends_the_run_without_checkpointing(
    tmp_path, method
):
    loaded, backend, state = setup(tmp_path)
    backend.put_records("in", sessions("a", "b"))
    clock = Clock()
    run = make_engine(loaded, unreachable(backend, method, clock), state, clock, give_up_after=60)

    with pytest.raises(BackendError) as error:
        run.run()
    assert str(error.value) == (
        f"gave up waiting for the local target after 60 s (--give-up-after): {method}: {LOST}; "
        "the next run reads again what this one did not checkpoint"
    )
    assert clock.now < 61
    assert moved(backend.get_checkpoints("review", "in")) == {}
    assert run.counts.records_in == 0  # what was read but not checkpointed is not counted


def test_a_run_says_what_it_waits_for_every_few_seconds(tmp_path):
    loaded, backend, state = setup(tmp_path)
    backend.put_records("in", sessions("a"))
    clock = Clock()
    lines = []
    failing = unreachable(backend, "put_records", clock)
    run = make_engine(
        loaded, failing, state, clock, lines.append, give_up_after=60, status_every=20
    )
    run.sinks["out"].jitter = lambda: 1.0  # the longest backoff each time

    with pytest.raises(BackendError):
        run.run()
    assert lines == [
        f"[review] waiting for the local target: put_records: {LOST} "
        "(retrying for 21 s; gives up in 39 s)",
        f"[review] waiting for the local target: put_records: {LOST} "
        "(retrying for 41 s; gives up in 19 s)",
    ]


class Interrupting(Clock):
    """A clock whose sleep, once `at` seconds have passed, sends this process SIGINT, as
    Ctrl-C does."""

    def __init__(self, at):
        super().__init__()
        self.at = at
        self.sent = False

    def sleep(self, seconds):
        super().sleep(seconds)
        if self.now >= self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("method", ["put_records", "set_checkpoint"])
def test_ctrl_c_during_a_long_wait_ends_the_run_at_once_without_checkpointing(tmp_path, method):
    loaded, backend, state = setup(tmp_path)
    backend.put_records("in", sessions("a", "b"))
    clock = Interrupting(at=30)
    lines = []
    run = make_engine(loaded, unreachable(backend, method, clock), state, clock, lines.append)

    counts = run.run()

    assert clock.now < 30.5  # not at the end of the failure, nor of a backoff
    assert moved(backend.get_checkpoints("review", "in")) == {}
    assert counts.records_in == 0
    assert lines[-1] == (
        f"[review] stopped while waiting for the local target: {method}: {LOST}: "
        "what was read since the last checkpoint is read again by the next run"
    )


def test_a_stop_from_another_thread_ends_a_wait_promptly(tmp_path):
    loaded, backend, state = setup(tmp_path)
    backend.put_records("in", sessions("a", "b"))
    failing = unreachable(backend, "put_records", time.monotonic, until=time.monotonic() + 5)
    run = engine.Engine(
        loaded, failing, state, engine.RunOptions(until_idle=1.0), lambda line: None
    )
    threading.Timer(0.2, run.stop).start()

    counts = run.run()

    assert moved(backend.get_checkpoints("review", "in")) == {}
    assert counts.records_in == 0


class Lapsing(Lease):
    """A run lease not renewed from `since` to `until` on the clock: meanwhile the run may not
    write, and no other run took it over."""

    def __init__(self, clock, since, until):
        self.clock, self.since, self.until = clock, since, until

    def held(self):
        return not self.since <= self.clock() < self.until

    def check(self):
        if not self.held():
            raise LeaseLapsed(
                "the run lease was not renewed for 45 s: nothing is written until it is"
            )


def written_at(backend, clock, times):
    """The local backend, noting in `times` the clock at each PutRecords and checkpoint."""

    def noted(call, *args):
        times.append(clock())
        return call(*args)

    return FaultyBackend(backend, put_records=noted, set_checkpoint=noted)


def test_a_run_whose_lease_lapses_writes_nothing_meanwhile_and_goes_on_once_it_is_renewed(
    tmp_path,
):
    # A network lost for 40 s: the reads fail from 0 s to 20 s, and the lease is not renewed
    # from 1 s to 40 s. The run waits, saying so, writes nothing until then, and goes on.
    loaded, backend, state = setup(tmp_path)
    backend.put_records("in", sessions("a", "b"))
    clock = Clock()
    times = []
    written = written_at(backend, clock, times)
    lines = []
    run = engine.Engine(
        loaded,
        unreachable(written, "get_records", clock, until=20),
        state,
        engine.RunOptions(until_idle=1.0, status_every=10),
        lines.append,
        clock=clock,
        sleep=clock.sleep,
        lease=Lapsing(clock, since=1, until=40),
    )
    run.sinks["out"].jitter = lambda: 1.0  # the longest backoff each time

    counts = run.run()

    assert counts.records_in == 2
    assert routed_ids(backend) == ["a", "b"]
    assert [t for t in times if 1 <= t < 40] == []  # nothing while it lapsed
    idle = "[review] in 0 | out none | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms"
    reads = f"[review] waiting for the local target: get_records: {LOST} (retrying for"
    lapsed = "(the run lease is not renewed meanwhile: nothing is written)"
    assert [timeless(line) for line in lines] == [
        idle,
        f"{reads} 10 s; gives up in 290 s) {lapsed}",
        idle,
        f"{reads} 21 s; gives up in 279 s) {lapsed}",
        idle,
        "[review] waiting for the local target: the run lease was not renewed for 45 s: nothing "
        "is written until it is (retrying for 11 s; gives up in 289 s)",
        "[review] in 2 | out out 2 | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
    ]


# The run lock on AWS.


# The aws target needs a dead letter off the machine.
MINIMAL_WITH_DEAD_LETTER = (
    MINIMAL.replace("    other:", "    rejects: {name: shop-rejects, shards: 1}\n    other:")
    + "dead_letter: {stream: rejects}\n"
)


@pytest.fixture
def on_aws(aws_env, tmp_path):
    """conftest's MINIMAL spec applied on moto, and a clock for the runs' leases; at the end the
    clock runs out, so that renewal threads still waiting on it wake, see their run ended and
    stop."""
    path = tmp_path / "shop.yaml"
    path.write_text(MINIMAL_WITH_DEAD_LETTER)
    clock = VirtualClock()
    with mock_aws():
        apply(spec.load(path), lease_on(clock), lambda line: None)
        yield path, clock
    clock.advance(math.inf)


def test_the_aws_run_lease_is_renewed_after_a_failed_renewal(on_aws):
    _, clock = on_aws
    backend = lease_on(clock)
    tries = []

    def flaky(**_):
        tries.append(clock.now)
        if len(tries) == 1:
            raise ReadTimeoutError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com/")

    backend._lease_client().meta.events.register("before-call.dynamodb.UpdateItem", flaky)
    with backend.running("shop") as lease:
        clock.advance(20)  # its turn
        wait_until(lambda: len(tries) == 1 and clock.waiting == 1)  # failed, and waits again
        clock.advance(2)  # soon after a failure, not a whole turn later
        wait_until(lambda: lease.held() and lease_renewals(backend) == 1)
        clock.advance(19)
        assert lease.held()
    assert tries == [20, 22]


def lease_renewals(backend):
    key = {"stream": {"S": "#run-lock"}, "shard_id": {"S": "#run-lock"}}
    item = backend._client("dynamodb").get_item(TableName="shop-checkpoints", Key=key)["Item"]
    return int(item["renewals"]["N"])


def test_a_run_that_lost_its_lease_writes_and_checkpoints_nothing_more_and_exits_1(
    on_aws, tmp_path, monkeypatch
):
    path, clock = on_aws
    first = lease_on(clock)
    hung = HungRenewals(first)
    second = lease_on(clock, lambda: clock.now != 20 or hung.hanging.wait(timeout=10))
    put = first.put_records("in", sessions("a", "b"))
    second_run = contextlib.ExitStack()
    taken = []

    writes = []

    def take_over(**_):
        # a and b are checkpointed (after where the shard starts); c and d arrive; the first
        # run's renewals hang, and the second run takes its lease over once it has seen it
        # unchanged for 60 s.
        writes.append(True)
        if len(writes) < 2:
            return  # where the shard starts, recorded before its records are read
        dynamodb.meta.events.unregister("after-call.dynamodb.TransactWriteItems", take_over)
        second.put_records("in", sessions("c", "d"))
        taken.append(second_run.enter_context(second.running("shop")))

    dynamodb = first._client("dynamodb", data_plane=True)
    dynamodb.meta.events.register("after-call.dynamodb.TransactWriteItems", take_over)
    monkeypatch.setattr(target, "open_backend", lambda *args, **kwargs: first)
    state = tmp_path / "state"
    result = CliRunner().invoke(cli, ["run", str(path), "--target", "aws", "--state-dir", state])
    assert hung.hanging.is_set()  # its renewal was due at 20 s, and hung
    hung.resume()

    assert result.exit_code == 1
    assert timeless(result.stderr) == (
        "[shop] reading in on the aws target (Ctrl-C stops cleanly)\n"
        "[shop] no checkpoints for pipeline shop: starting at trim_horizon\n"
        "[shop] dead letter: stream shop-rejects\n"
        "[shop] in 2 | out other 2 | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms\n"
        "[shop] stopped by an error: in 2 | out other 2 | dead-lettered 0 | filtered 0 | "
        "dropped 0 | lag 0 ms\n"
        f"error: lost the run lease to {taken[0].owner}: "
        "stopped without writing or checkpointing further\n"
    )
    assert session_ids(second, "other-out") == ["a", "b"]
    assert second.get_checkpoints("shop", "in") == {put[-1].shard_id: put[-1].sequence}
    second_run.close()


def test_ctrl_c_while_waiting_for_the_run_lease_stops_the_run_having_read_nothing(
    on_aws, tmp_path, monkeypatch
):
    path, clock = on_aws

    def ctrl_c():
        raise KeyboardInterrupt

    waiting = lease_on(clock, while_waiting=ctrl_c)
    monkeypatch.setattr(target, "open_backend", lambda *args, **kwargs: waiting)
    state = tmp_path / "state"
    with lease_on(clock).running("shop") as held:
        result = CliRunner().invoke(
            cli, ["run", str(path), "--target", "aws", "--state-dir", state]
        )

    assert (result.exit_code, result.stderr) == (
        130,
        f"[shop] waiting for the run lease held by {held.owner} (free in 60 s unless renewed)\n"
        "[shop] stopped while waiting for the run lease: nothing was read\n",
    )


def test_a_run_started_while_another_finishes_reads_the_checkpoints_it_leaves(on_aws, tmp_path):
    path, clock = on_aws
    first = lease_on(clock)
    put = first.put_records("in", sessions("a", "b"))
    finishing = contextlib.ExitStack()
    owner = finishing.enter_context(first.running("shop")).owner

    def first_finishes():  # having routed a and b, it checkpoints them and ends
        if not finished:
            first.put_records("other-out", sessions("a", "b"))
            first.set_checkpoint("shop", "in", put[-1].shard_id, put[-1].sequence)
            finishing.close()
            finished.append(True)

    finished = []

    second, lines = lease_on(clock, first_finishes), []
    options = engine.RunOptions(until_idle=0)
    assert run_command.run(spec.load(path), second, tmp_path / "state", options, lines.append) == 0

    assert [timeless(line) for line in lines] == [
        f"[shop] waiting for the run lease held by {owner} (free in 60 s unless renewed)",
        "[shop] reading in on the aws target (Ctrl-C stops cleanly)",
        "[shop] resuming from checkpoints of 1 shard",
        "[shop] dead letter: stream shop-rejects",
        "[shop] in 0 | out none | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
        "[shop] done: in 0 | out none | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
    ]
    assert session_ids(second, "other-out") == ["a", "b"]


def moved(checkpoints):
    """The checkpoints past records, without start marks (where a shard began reading)."""
    return {shard: at for shard, at in checkpoints.items() if not at.startswith("#")}
