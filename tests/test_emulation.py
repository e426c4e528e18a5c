"""`pipeline run` of a spec with `lambda:` on the local target: the run hands each shard's
records to the Lambda handler as Lambda's Kinesis event source mapping does (batches of one
shard, a batching window, checkpoints after each invocation, retries from the first failed
record, bisect, discards), on a clock its waits move on."""

import base64
import datetime
import json
from itertools import islice

import pytest
from click.testing import CliRunner
from conftest import MINIMAL, PIPELINES, read_stream, samples, session_ids, timeless
from fakes import Clock, FaultyBackend

from runner import spec
from runner.backends.base import SHARD_END, Throttled
from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.commands import run as run_command
from runner.commands.metrics import Metrics
from runner.commands.produce import synthetic_sessions
from runner.commands.provision import apply
from runner.function.emulation import Emulation
from runner.function.handler import FunctionCore
from runner.loop.engine import Engine, RunOptions
from runner.loop.observer import NO_OBSERVER

SHARD = "shardId-000000000000"


def shop(shards=1, **settings):
    """A spec of `shards` source shards with a `lambda:` section of these settings."""
    settings = {
        "function": "shop-etl",
        "batch_size": 10,
        "batching_window_s": 0,
        "timeout_s": 10,
        **settings,
    }
    section = ", ".join(f"{key}: {value}" for key, value in settings.items())
    # One shard per sink stream, so that each holds its records in the order written.
    streams = MINIMAL.replace("{name: in, shards: 1}", f"{{name: in, shards: {shards}}}").replace(
        "    usa: {name: usa-out, shards: 2}\n    other: {name: other-out, shards: 1}\n",
        "    usa: {name: usa-out, shards: 1}\n    other: {name: other-out, shards: 1}\n"
        "    rejects: {name: shop-rejects, shards: 1}\n",
    )
    return streams + f"dead_letter: {{stream: rejects}}\nlambda: {{{section}}}\n"


class Timeline(Clock):
    """A Clock that does each `at(seconds, action)` once a sleep has moved it past `seconds`."""

    def __init__(self):
        super().__init__()
        self.timers = []

    def at(self, seconds, action):
        self.timers.append((seconds, action))

    def sleep(self, seconds):
        super().sleep(seconds)
        for timer in [t for t in self.timers if t[0] <= self.now]:
            self.timers.remove(timer)
            timer[1]()
        assert self.now < 600, "the run never ended"


class Shop:
    """A `lambda:` spec applied on a local backend in tmp_path, and runs of it."""

    def __init__(self, tmp_path, text):
        path = tmp_path / "shop.yaml"
        path.write_text(text)
        self.spec = spec.load(path)
        self.state = tmp_path / "state"
        self.backend = LocalBackend(self.state)
        apply(self.spec, self.backend, lambda line: None)
        self.clock = Timeline()
        self.lines = []

    def put(self, *sessions):
        """Put (id, country) sessions, or raw bytes keyed by their text, into the source."""
        self.backend.put_records(
            "in",
            [
                (item, item.decode())
                if isinstance(item, bytes)
                else (json.dumps({"session_id": item[0], "country": item[1]}).encode(), item[0])
                for item in sessions
            ],
        )

    def engine(
        self,
        backend=None,
        invoke=FunctionCore.handle,
        now=None,
        reloads=None,
        observer=NO_OBSERVER,
        **options,
    ):
        options.setdefault("until_idle", 1.0)
        options.setdefault("status_every", 3600)
        emulation = {"invoke": invoke, **({"now": now} if now else {})}
        self.run = Engine(
            self.spec,
            backend or self.backend,
            self.state,
            RunOptions(**options),
            self.lines.append,
            clock=self.clock,
            sleep=self.clock.sleep,
            reloads=reloads,
            handover=lambda engine: Emulation(engine, **emulation),
            observer=observer,
        )
        return self.run

    def checkpoints(self):
        return self.backend.get_checkpoints("shop", "in")

    def by_shard(self):
        """Shard id -> the sequence numbers of the source's records there."""
        found = {}
        for shard in self.backend.list_shards("in"):
            iterator = self.backend.get_shard_iterator("in", shard.shard_id, "TRIM_HORIZON")
            found[shard.shard_id] = [r.sequence for r in self.backend.get_records(iterator).records]
        return found

    def sequences(self):
        """The source's sequence numbers, shard by shard."""
        return [sequence for found in self.by_shard().values() for sequence in found]


class Spy:
    """The handler, noting each event it is invoked with (and the clock then)."""

    def __init__(self, clock=None, raise_on=None):
        self.events = []
        self.clock = clock
        self.raise_on = raise_on  # raises ValueError for a batch holding data with this text

    def __call__(self, core, event, remaining_ms):
        self.events.append((self.clock() if self.clock else None, event, remaining_ms))
        datas = [base64.b64decode(r["kinesis"]["data"]) for r in event["Records"]]
        if self.raise_on and any(self.raise_on in data for data in datas):
            raise ValueError(self.raise_on.decode())
        return core.handle(event, remaining_ms)

    def batches(self):
        """Each event's records as (shard id, [sequence numbers])."""
        found = []
        for _, event, _ in self.events:
            ids = [record["eventID"].split(":") for record in event["Records"]]
            assert len({shard for shard, _ in ids}) == 1, ids
            found.append((ids[0][0], [sequence for _, sequence in ids]))
        return found

    def timed(self):
        """Each event's records' sequence numbers, with the second it was invoked at."""
        return [
            (round(at), sequences)
            for (at, _, _), (_, sequences) in zip(self.events, self.batches(), strict=True)
        ]


def without_status(lines):
    return [line for line in lines if not line.startswith("[shop] in ")]


# The shipped scenario


def test_the_scenario_with_a_lambda_section_routes_as_it_does_without(tmp_path):
    sessions = list(islice(synthetic_sessions(11), 1000))
    plain = (PIPELINES / "ecommerce.yaml").read_text()
    # Three full batches at once, and 100 records the window holds until the run ends: the
    # run delivers what the handler wrote then too.
    with_lambda = plain + "lambda: {function: shop-etl, batch_size: 300, batching_window_s: 5}\n"
    found = {}
    for name, text in (("plain", plain), ("lambda", with_lambda)):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "ecommerce.yaml"
        path.write_text(text)
        loaded = spec.load(path)
        backend = LocalBackend(tmp_path / name / "state")
        apply(loaded, backend, lambda line: None)
        for start in range(0, len(sessions), 500):
            chunk = sessions[start : start + 500]
            entries = [(json.dumps(s).encode(), s["session_id"]) for s in chunk]
            backend.put_records("de-c2w2lab1-kinesis-data-stream", entries)
        lines = []
        options = RunOptions(until_idle=0)
        assert (
            run_command.run(loaded, backend, tmp_path / name / "state", options, lines.append) == 0
        )
        routed = {
            stream: [without_time(r) for r in read_stream(backend, stream)]
            for stream in ("de-c2w2lab1-usa-data-stream", "de-c2w2lab1-international-data-stream")
        }
        delivered = {  # objects of one second come in no set order
            bucket: sorted(
                (
                    without_time(json.loads(line))
                    for key in backend.list_objects(bucket)
                    for line in backend.get_object(bucket, key).splitlines()
                ),
                key=lambda record: record["session_id"],
            )
            for bucket in ("de-c2w2lab1-000000000000-usa", "de-c2w2lab1-000000000000-int")
        }
        summary = [timeless(line) for line in lines if "done:" in line]
        found[name] = (routed, delivered, summary)

    assert found["lambda"] == found["plain"]
    routed, delivered, summary = found["plain"]
    usa = sum(s["country"] == "USA" for s in sessions)
    assert summary == [
        f"[de-c2w2lab1-etl] done: in 1000 | out international {1000 - usa}, usa {usa} | "
        "dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms"
    ]
    assert [len(records) for records in delivered.values()] == [usa, 1000 - usa]


def without_time(record):
    return {key: value for key, value in record.items() if key != "processing_timestamp"}


# Batches and the window


def test_an_event_holds_at_most_batch_size_records_of_one_shard_shaped_as_lambdas(tmp_path):
    shop_ = Shop(tmp_path, shop(shards=2, batch_size=4))
    shop_.put(*[(f"s{n}", "USA" if n % 3 else "Peru") for n in range(15)])
    spy = Spy()

    counts = shop_.engine(invoke=spy).run()

    by_shard = shop_.by_shard()
    assert sorted(len(s) for s in by_shard.values()) != [0, 15]  # both shards hold some
    expected = [
        (shard, sequences[start : start + 4])
        for shard, sequences in by_shard.items()
        for start in range(0, len(sequences), 4)
    ]
    assert spy.batches() == expected
    _, event, remaining_ms = spy.events[0]
    first = event["Records"][0]
    assert remaining_ms == 10_000
    assert first == {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": first["kinesis"]["partitionKey"],
            "sequenceNumber": expected[0][1][0],
            "data": first["kinesis"]["data"],
            "approximateArrivalTimestamp": first["kinesis"]["approximateArrivalTimestamp"],
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{expected[0][0]}:{expected[0][1][0]}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::000000000000:role/shop-etl-role",
        "awsRegion": "us-east-1",
        "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/in",
    }
    key = first["kinesis"]["partitionKey"]
    assert json.loads(base64.b64decode(first["kinesis"]["data"]))["session_id"] == key
    assert isinstance(first["kinesis"]["approximateArrivalTimestamp"], float)
    assert counts.records_in == 15
    assert counts.out == {"usa": 10, "other": 5}
    assert sorted(session_ids(shop_.backend, "usa-out", "other-out")) == sorted(
        f"s{n}" for n in range(15)
    )


def test_the_window_holds_a_shards_records_back_until_it_ends_or_a_batch_is_full(tmp_path):
    shop_ = Shop(tmp_path, shop(batching_window_s=5))
    clock = shop_.clock
    shop_.put(("a", "USA"), ("b", "USA"), ("c", "Peru"))
    checkpoints = {}
    clock.at(2, lambda: shop_.put(("d", "Peru")))
    clock.at(4, lambda: checkpoints.setdefault(4, shop_.checkpoints()))
    clock.at(7, lambda: shop_.put(*[(f"x{n}", "Peru") for n in range(12)]))
    spy = Spy(clock)

    shop_.engine(invoke=spy, until_idle=10).run()

    sequences = shop_.sequences()
    # Held from 0 s, handed over once the window ended at 5 s; a full batch at once; the
    # rest, held from 7 s, when the window ends at 12 s.
    assert spy.timed() == [(5, sequences[:4]), (7, sequences[4:14]), (12, sequences[14:])]
    assert checkpoints[4] == {SHARD: "#trim_horizon"}  # nothing checkpointed while held
    assert shop_.checkpoints() == {SHARD: sequences[-1]}
    assert session_ids(shop_.backend, "other-out") == ["c", "d", *(f"x{n}" for n in range(12))]


def test_what_the_window_holds_is_handed_over_when_the_run_stops(tmp_path):
    shop_ = Shop(tmp_path, shop(batching_window_s=300))
    shop_.put(("a", "USA"), ("b", "Peru"))
    shop_.clock.at(3, lambda: shop_.run.stop())
    spy = Spy(shop_.clock)

    counts = shop_.engine(invoke=spy, until_idle=None).run()

    assert spy.timed() == [(3, shop_.sequences())]
    assert (counts.records_in, session_ids(shop_.backend, "usa-out", "other-out")) == (
        2,
        ["a", "b"],
    )
    assert shop_.checkpoints() == {SHARD: shop_.sequences()[-1]}


def test_max_records_counts_what_the_window_holds(tmp_path):
    shop_ = Shop(tmp_path, shop(batching_window_s=60))
    shop_.put(*[(f"s{n}", "Peru") for n in range(3)])
    shop_.clock.at(1, lambda: shop_.put(*[(f"t{n}", "Peru") for n in range(9)]))
    spy = Spy(shop_.clock)

    counts = shop_.engine(invoke=spy, max_records=5).run()

    assert spy.timed() == [(1, shop_.sequences()[:5])]  # held, then handed over at the bound
    assert counts.records_in == 5
    assert shop_.checkpoints() == {SHARD: shop_.sequences()[4]}


def test_a_closed_shard_is_handed_over_to_its_end_before_its_children(tmp_path):
    shop_ = Shop(tmp_path, shop())
    shop_.put(*[(f"p{n}", "Peru") for n in range(3)])
    shop_.backend.update_shard_count("in", 2)
    shop_.put(*[(f"c{n}", "Peru") for n in range(6)])
    spy = Spy()

    shop_.engine(invoke=spy).run()

    parent, *children = shop_.by_shard().items()
    assert spy.batches()[0] == parent
    assert sorted(spy.batches()[1:]) == sorted(child for child in children if child[1])
    assert shop_.checkpoints() == {
        parent[0]: SHARD_END,
        **{shard: sequences[-1] for shard, sequences in children},
    }
    assert sorted(session_ids(shop_.backend, "other-out")) == sorted(
        [f"p{n}" for n in range(3)] + [f"c{n}" for n in range(6)]
    )


def test_a_reloaded_spec_hands_the_next_records_over_with_its_settings(tmp_path):
    shop_ = Shop(tmp_path, shop())
    path = shop_.spec.path
    shop_.put(*[(f"a{n}", "Peru") for n in range(3)])
    shop_.clock.at(1, lambda: path.write_text(shop(batch_size=2)))
    shop_.clock.at(3, lambda: shop_.put(*[(f"b{n}", "Peru") for n in range(3)]))
    spy = Spy()
    reloads = run_command.reloads(shop_.backend, lambda: spec.load(path))

    shop_.engine(invoke=spy, until_idle=5, reloads=reloads).run()

    seq = shop_.sequences()
    assert spy.batches() == [(SHARD, seq[:3]), (SHARD, seq[3:5]), (SHARD, seq[5:])]
    assert without_status(shop_.lines) == [
        "[shop] spec reloaded (version 2): route unchanged; lambda batch_size 10 -> 2; "
        "transform unchanged"
    ]
    assert session_ids(shop_.backend, "other-out") == ["a0", "a1", "a2", "b0", "b1", "b2"]


# Failures, retries, bisect and discards


def usa_failing(backend, until):
    """The backend with PutRecords to usa-out throttled whole while until() is true. The
    handler writes usa-out first (its route's first case), so nothing after a failed record
    is written."""

    def put_records(call, stream, entries):
        if stream == "usa-out" and until():
            raise Throttled("Rate exceeded for stream usa-out")
        return call(stream, entries)

    return FaultyBackend(backend, put_records=put_records)


MIXED = [("i0", "Peru"), ("u1", "USA"), ("i1", "Peru"), ("u2", "USA"), ("i2", "Chile")]


def test_a_sink_failing_longer_than_an_invocation_is_retried_from_the_failed_record(tmp_path):
    shop_ = Shop(tmp_path, shop())
    clock = shop_.clock
    shop_.put(*MIXED)
    checkpoints = []
    clock.at(12, lambda: checkpoints.append(shop_.checkpoints()))
    spy = Spy(clock)
    failing = usa_failing(shop_.backend, lambda: clock() < 18)

    counts = shop_.engine(failing, invoke=spy).run()

    seq = shop_.sequences()
    # Each invocation fails at u1 when its 10 s are nearly up (2 s before), and is retried
    # from u1 until the stream takes records again, at 18 s.
    assert [batch for _, batch in spy.batches()] == [seq, seq[1:], seq[1:]]
    started = [at for at, _, _ in spy.events]
    assert started[0] == 0 and 8 < started[1] < 9 and 16 < started[2] < 18
    assert checkpoints == [{SHARD: seq[0]}]  # i0, written before u1 failed
    assert session_ids(shop_.backend, "usa-out") == ["u1", "u2"]  # each once, in order
    assert session_ids(shop_.backend, "other-out") == ["i0", "i1", "i2"]
    assert counts.line() == (
        "in 5 | out other 3, usa 2 | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms"
        f" | took {counts.busy_s:.2f} s from the first record to the last"
    )
    still_failing = (
        "[shop] stream usa-out: still failing when the invocation's time was nearly up: "
        "Rate exceeded for stream usa-out"
    )
    said = [line for line in shop_.lines if "waiting for the local target" not in line]
    assert [timeless(line) for line in said] == [
        still_failing,
        f"[shop] in 5 | written: the 1 record before record {seq[1]}, which Lambda retries from",
        f"[shop] {SHARD}: the handler reported record {seq[1]} failed; retry 1 of 5 from "
        f"record {seq[1]} in 0.05 s",
        still_failing,
        f"[shop] in 4 | written: the 0 records before record {seq[1]}, which Lambda retries from",
        f"[shop] {SHARD}: the handler reported record {seq[1]} failed; retry 2 of 5 from "
        f"record {seq[1]} in 0.1 s",
        "[shop] in 5 | out other 3, usa 2 | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
    ]
    assert shop_.checkpoints() == {SHARD: seq[-1]}


class Killed(BaseException):
    """The process ends here, as by SIGKILL: nothing after it runs."""


def test_a_run_killed_during_retries_has_checkpointed_nothing_from_the_failed_record_on(
    tmp_path,
):
    shop_ = Shop(tmp_path, shop())
    shop_.put(*MIXED)

    def kill():
        raise Killed

    shop_.clock.at(12, kill)  # in the second invocation's writes
    with pytest.raises(Killed):
        shop_.engine(usa_failing(shop_.backend, lambda: True)).run()

    seq = shop_.sequences()
    assert shop_.checkpoints() == {SHARD: seq[0]}
    assert session_ids(shop_.backend, "usa-out", "other-out") == ["i0"]

    shop_.engine().run()  # started again, on a healthy stream

    assert session_ids(shop_.backend, "usa-out") == ["u1", "u2"]
    assert session_ids(shop_.backend, "other-out") == ["i0", "i1", "i2"]


def test_a_poison_record_is_bisected_down_to_and_discarded_after_its_retries(tmp_path):
    shop_ = Shop(tmp_path, shop(max_retries=2))
    shop_.put(*[(f"s{n}", "USA" if n % 2 else "Peru") for n in range(8)])
    shop_.put(*[(f"t{n}", "Peru") for n in range(2)])  # a second batch, after the poison's
    spy = Spy(raise_on=b'"s5"')

    counts = shop_.engine(invoke=spy).run()

    seq = shop_.sequences()
    assert (
        spy.batches()
        == [
            (SHARD, seq[0:10]),
            (SHARD, seq[0:5]),  # the first half: handled
            (SHARD, seq[5:10]),
            (SHARD, seq[5:8]),
            (SHARD, seq[5:7]),
            (SHARD, seq[5:6]),  # the poison alone: retried twice, then discarded
            (SHARD, seq[5:6]),
            (SHARD, seq[5:6]),
            (SHARD, seq[6:7]),
            (SHARD, seq[7:8]),
            (SHARD, seq[8:10]),
        ]
    )
    raised = 'the handler raised ValueError: "s5"'
    assert without_status(shop_.lines) == [
        f"[shop] {SHARD}: {raised} on 10 records ({seq[0]} to {seq[9]}): split in two "
        "(bisect_on_error)",
        f"[shop] {SHARD}: {raised} on 5 records ({seq[5]} to {seq[9]}): split in two "
        "(bisect_on_error)",
        f"[shop] {SHARD}: {raised} on 3 records ({seq[5]} to {seq[7]}): split in two "
        "(bisect_on_error)",
        f"[shop] {SHARD}: {raised} on 2 records ({seq[5]} to {seq[6]}): split in two "
        "(bisect_on_error)",
        f"[shop] {SHARD}: {raised}; retry 1 of 2 from record {seq[5]} in 0.05 s",
        f"[shop] {SHARD}: {raised}; retry 2 of 2 from record {seq[5]} in 0.1 s",
        f"[shop] {SHARD}: Lambda would discard record {seq[5]} after 2 retries (max_retries): "
        f"{raised}; the run goes on past it",
    ]
    routed = session_ids(shop_.backend, "usa-out", "other-out")
    assert sorted(routed) == sorted(
        [f"s{n}" for n in range(8) if n != 5] + ["t0", "t1"]
    )  # each once
    assert session_ids(shop_.backend, "usa-out") == ["s1", "s3", "s7"]
    assert counts.line().split(" | lag")[0] == (
        "in 10 | out other 6, usa 3 | dead-lettered 0 | filtered 0 | dropped 0 | discarded 1"
    )
    assert shop_.checkpoints() == {SHARD: seq[-1]}


def test_a_lambda_spec_run_locally_reports_its_metrics(tmp_path):
    shop_ = Shop(tmp_path, shop(shards=2, batch_size=1, max_retries=0))
    shop_.put(*[(f"s{n}", "USA" if n % 2 else "Peru") for n in range(8)], b"{not json")
    metrics = Metrics("shop")

    counts = shop_.engine(invoke=Spy(raise_on=b'"s5"'), observer=metrics).run()

    found = samples(metrics.exposition()[0])
    of_shop = ("pipeline", "shop")
    assert {
        dict(labels)["shard"]: value
        for (name, labels), value in found.items()
        if name == "pipeline_records_received_total"
    } == counts.received
    assert (counts.records_in, sum(counts.received.values())) == (9, 9)
    assert (
        {
            route: found[
                (
                    "pipeline_records_routed_total",
                    (of_shop, ("route", route), ("stream", f"{route}-out")),
                )
            ]
            for route in ("usa", "other")
        }
        == counts.out
        == {"usa": 3, "other": 4}
    )
    assert found[("pipeline_records_dead_lettered_total", (of_shop, ("reason", "not_json")))] == 1
    assert found[("pipeline_records_discarded_total", (of_shop,))] == counts.discarded == 1
    assert (
        found[
            (
                "pipeline_put_records_entries_total",
                (of_shop, ("result", "ok"), ("stream", "usa-out")),
            )
        ]
        == 3
    )
    assert found[("pipeline_checkpoint_write_seconds_count", (of_shop,))] >= 9


def test_without_bisect_a_failed_batch_is_retried_whole_then_discarded(tmp_path):
    shop_ = Shop(tmp_path, shop(max_retries=1, bisect_on_error="false"))
    shop_.put(("a", "USA"), ("b", "Peru"), ("c", "Peru"))
    spy = Spy(raise_on=b'"b"')

    counts = shop_.engine(invoke=spy).run()

    seq = shop_.sequences()
    assert spy.batches() == [(SHARD, seq), (SHARD, seq)]
    assert without_status(shop_.lines)[-1] == (
        f"[shop] {SHARD}: Lambda would discard 3 records ({seq[0]} to {seq[2]}) after 1 retry "
        '(max_retries): the handler raised ValueError: "b"; the run goes on past them'
    )
    assert session_ids(shop_.backend, "usa-out", "other-out") == []
    assert (counts.records_in, counts.discarded) == (3, 3)
    assert shop_.checkpoints() == {SHARD: seq[-1]}


def test_failed_records_older_than_max_record_age_are_discarded(tmp_path):
    shop_ = Shop(tmp_path, shop(max_record_age_s=60))
    shop_.put(*MIXED)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=2)

    counts = shop_.engine(usa_failing(shop_.backend, lambda: True), now=lambda: later).run()

    seq = shop_.sequences()
    assert without_status(shop_.lines)[-1] == (
        f"[shop] {SHARD}: Lambda would discard 4 records ({seq[1]} to {seq[4]}) older than 60 s "
        f"(max_record_age_s): the handler reported record {seq[1]} failed; the run goes on "
        "past them"
    )
    assert session_ids(shop_.backend, "other-out") == ["i0"]
    assert (counts.records_in, counts.discarded) == (5, 4)
    assert shop_.checkpoints() == {SHARD: seq[-1]}


def test_an_answer_naming_no_record_of_the_batch_fails_the_whole_batch(tmp_path):
    shop_ = Shop(tmp_path, shop())
    shop_.put(("a", "USA"), ("b", "Peru"))
    answers = iter([{"batchItemFailures": [{"itemIdentifier": "nope"}]}])
    events = []

    def invoke(core, event, remaining_ms):
        events.append(len(event["Records"]))
        return next(answers, None) or core.handle(event, remaining_ms)

    counts = shop_.engine(invoke=invoke).run()

    assert events == [2, 2]  # retried whole, not split: the function returned
    assert without_status(shop_.lines) == [
        f"[shop] {SHARD}: the handler's batchItemFailures name 'nope', not a record of the "
        f"batch: the whole batch failed; retry 1 of 5 from record {shop_.sequences()[0]} in "
        "0.05 s"
    ]
    assert (counts.records_in, session_ids(shop_.backend, "usa-out", "other-out")) == (
        2,
        ["a", "b"],
    )


# Stopping


def test_a_stop_during_a_retry_wait_ends_it_at_once(tmp_path):
    shop_ = Shop(tmp_path, shop(max_retries=-1, bisect_on_error="false"))
    shop_.put(("a", "USA"), ("b", "Peru"))
    shop_.clock.at(20, lambda: shop_.run.stop())

    counts = shop_.engine(invoke=Spy(raise_on=b'"a"'), until_idle=None).run()

    assert shop_.clock.now < 20.6  # within one nap of the stop, not at the end of the backoff
    assert shop_.checkpoints() == {SHARD: "#trim_horizon"}
    assert counts.records_in == 0
    assert shop_.lines[-1] == (
        f"[shop] stopped while waiting for the local target: {SHARD}: the handler raised "
        'ValueError: "a": what was read since the last checkpoint is read again by the next run'
    )


def test_a_stop_during_the_handlers_writes_ends_them_at_once(tmp_path):
    shop_ = Shop(tmp_path, shop(timeout_s=900))
    shop_.put(*MIXED)
    shop_.clock.at(3, lambda: shop_.run.stop())

    counts = shop_.engine(usa_failing(shop_.backend, lambda: True), until_idle=None).run()

    seq = shop_.sequences()
    assert shop_.clock.now < 3.6  # not at the end of the invocation's 15 minutes
    assert shop_.checkpoints() == {SHARD: seq[0]}  # i0, written before u1 failed
    assert counts.records_in == 1
    assert shop_.lines == [
        "[shop] stream usa-out: still failing when the run was stopped: "
        "Rate exceeded for stream usa-out",
        f"[shop] in 5 | written: the 1 record before record {seq[1]}, which Lambda retries from",
        f"[shop] stopped while waiting for the local target: {SHARD}: the handler reported "
        f"record {seq[1]} failed: what was read since the last checkpoint is read again by "
        "the next run",
    ]


# The command


def test_pipeline_run_of_a_lambda_spec_says_it_runs_the_handler_locally(tmp_path, state):
    path = tmp_path / "shop.yaml"
    path.write_text(shop(batch_size=100, batching_window_s=1))
    runner = CliRunner()
    assert runner.invoke(cli, ["apply", str(path)]).exit_code == 0
    runner.invoke(
        cli, ["produce", "--stream", "in", "--json", '{"session_id": "a", "country": "USA"}']
    )
    runner.invoke(cli, ["produce", "--stream", "in", "--raw", "--json", "not json"])

    result = runner.invoke(cli, ["run", str(path), "--until-idle", "0"])

    assert result.exit_code == 0, result.output
    lines = [timeless(line) for line in result.stderr.splitlines()]
    assert lines == [
        "[shop] reading in on the local target (Ctrl-C stops cleanly)",
        "[shop] running Lambda function shop-etl's handler locally: batches of 100, "
        "window 1 s, up to 5 retries, bisect on error",
        "[shop] no checkpoints for pipeline shop: starting at trim_horizon",
        "[shop] dead letter: stream shop-rejects",
        "[shop] in 0 | out none | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
        "[shop] done: in 2 | out usa 1 | dead-lettered 1 | filtered 0 | dropped 0 | lag 0 ms",
        "[shop] dead letter: 1 record in stream shop-rejects",
    ]
