import hashlib
import threading
from collections import Counter

import pytest

from runner.backends.base import BackendError, PutResult, StreamNotFound, Throttled
from runner.backends.limits import MAX_BATCH_BYTES
from runner.backends.local import LocalBackend
from runner.loop.observer import Observer
from runner.loop.patience import Abandoned, Patience
from runner.loop.sink import Sink, batch_positions, put_all, wave_positions
from runner.loop.workers import Workers

MIB = 1024 * 1024
THROTTLED = "ProvisionedThroughputExceededException"


class Kinesis:
    """A stream's PutRecords as the sink sees it: each call is noted, and `answers` says, call by
    call, which entries fail (a set of data values) or that the whole call raises."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []
        self.accepted = []

    def put_records(self, stream, entries):
        self.calls.append([data for data, _ in entries])
        answer = self.answers.pop(0) if self.answers else set()
        if isinstance(answer, Exception):
            raise answer
        results = []
        for data, _ in entries:
            if data in answer:
                results.append(PutResult(error_code=THROTTLED, error_message="Rate exceeded"))
            else:
                self.accepted.append(data)
                results.append(PutResult("shardId-000000000000", str(len(self.accepted))))
        return results


def entries(*names):
    return [(name.encode(), f"key-{name}") for name in names]


def sink_on(kinesis, jitter=lambda: 1.0):
    waits = []
    return Sink(kinesis, "events", sleep=waits.append, jitter=jitter), waits


def batches(entries):
    """The entries of each PutRecords call the sink makes of `entries`."""
    return ([entries[i] for i in group] for group in batch_positions(entries))


def waves(batch):
    """The entries of each call the sink makes of one batch."""
    return [[batch[i] for i in wave] for wave in wave_positions(batch)]


# batches


def test_batches_hold_at_most_500_records():
    many = [(b"x", "k")] * 1001
    assert [len(batch) for batch in batches(many)] == [500, 500, 1]


def test_batches_hold_at_most_5_mib_of_data_and_partition_keys():
    # Five entries of exactly 1 MiB with their key fill a batch; the sixth starts a new one.
    full = [(b"x" * (MIB - 1), "k")] * 6
    assert [len(batch) for batch in batches(full)] == [5, 1]
    assert sum(len(d) + len(k) for d, k in next(batches(full))) == MAX_BATCH_BYTES


def test_partition_keys_count_in_utf8_bytes():
    # "é" is one character but two bytes: these five entries are one byte over 5 MiB.
    over = [(b"x" * (MIB - 1), "k")] * 4 + [(b"x" * (MIB - 1), "é")]
    assert [len(batch) for batch in batches(over)] == [4, 1]


def test_batches_keep_every_entry_in_order():
    sent = [(str(i).encode(), str(i)) for i in range(1234)]
    assert [entry for batch in batches(sent) for entry in batch] == sent
    assert list(batches([])) == []


# waves


def test_a_wave_holds_one_entry_per_key_and_each_keys_entries_in_order():
    batch = [(b"a1", "a"), (b"b1", "b"), (b"a2", "a"), (b"c1", "c"), (b"a3", "a"), (b"b2", "b")]
    assert waves(batch) == [
        [(b"a1", "a"), (b"b1", "b"), (b"c1", "c")],
        [(b"a2", "a"), (b"b2", "b")],
        [(b"a3", "a")],
    ]


def test_distinct_keys_are_one_wave_the_batch_itself():
    batch = entries(*[str(i) for i in range(500)])
    assert waves(batch) == [batch]


# Sink.put


def test_only_the_failed_entries_are_sent_again_in_order():
    kinesis = Kinesis({b"b", b"d", b"e"}, {b"e"})
    sink, waits = sink_on(kinesis)

    sink.put(entries("a", "b", "c", "d", "e"))

    assert kinesis.calls == [[b"a", b"b", b"c", b"d", b"e"], [b"b", b"d", b"e"], [b"e"]]
    assert sorted(kinesis.accepted) == [b"a", b"b", b"c", b"d", b"e"]
    assert len(waits) == 2


def test_retried_entries_keep_their_partition_keys():
    seen = []

    class Keys(Kinesis):
        def put_records(self, stream, entries):
            seen.append(list(entries))
            return super().put_records(stream, entries)

    sink, _ = sink_on(Keys({b"b"}))
    sink.put(entries("a", "b", "c"))

    assert seen[1] == [(b"b", "key-b")]


def test_a_throttled_call_is_retried_whole_and_nothing_is_dropped():
    kinesis = Kinesis(Throttled("Rate exceeded for stream events"), Throttled("again"), {b"c"})
    sink, waits = sink_on(kinesis)

    sink.put(entries("a", "b", "c"))

    assert kinesis.calls == [[b"a", b"b", b"c"]] * 3 + [[b"c"]]
    assert sorted(kinesis.accepted) == [b"a", b"b", b"c"]
    assert len(waits) == 3


def test_each_batch_is_put_and_retried_on_its_own():
    names = [str(i) for i in range(501)]
    kinesis = Kinesis({b"7"}, set(), {b"500"})
    sink, _ = sink_on(kinesis)

    sink.put(entries(*names))

    assert kinesis.calls == [
        [name.encode() for name in names[:500]],
        [b"7"],
        [b"500"],
        [b"500"],
    ]
    assert sorted(kinesis.accepted) == sorted(name.encode() for name in names)


def test_backoff_doubles_from_50_ms_up_to_5_s():
    kinesis = Kinesis(*[Throttled("Rate exceeded")] * 10)
    sink, waits = sink_on(kinesis, jitter=lambda: 1.0)

    sink.put(entries("a"))

    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert len(kinesis.calls) == 11


def test_jitter_waits_between_half_and_all_of_the_backoff():
    draws = iter([0.0, 0.5, 1.0, 0.25])
    kinesis = Kinesis(*[{b"a"}] * 4)
    sink, waits = sink_on(kinesis, jitter=lambda: next(draws))

    sink.put(entries("a"))

    assert waits == pytest.approx([0.025, 0.075, 0.2, 0.25])


def test_the_backoff_starts_again_for_the_next_batch():
    kinesis = Kinesis(*[{b"0"}] * 3, set(), {b"500"})
    sink, waits = sink_on(kinesis)

    sink.put(entries(*[str(i) for i in range(501)]))

    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.05])


def test_nothing_is_slept_when_every_entry_is_accepted():
    kinesis = Kinesis()
    sink, waits = sink_on(kinesis)

    sink.put(entries("a", "b"))

    assert waits == [] and kinesis.calls == [[b"a", b"b"]]


@pytest.mark.parametrize(
    "error",
    [
        StreamNotFound("stream 'events' does not exist"),
        BackendError("put_records to stream 'events': 501 entries, at most 500 allowed"),
    ],
)
def test_an_error_retrying_cannot_fix_propagates_at_once(error):
    kinesis = Kinesis(error)
    sink, waits = sink_on(kinesis)

    with pytest.raises(type(error)) as raised:
        sink.put(entries("a"))

    assert raised.value is error
    assert len(kinesis.calls) == 1 and waits == []


def test_an_entry_error_retrying_cannot_fix_fails_the_put_instead_of_looping():
    class Refusing(Kinesis):
        def put_records(self, stream, entries):
            self.calls.append([data for data, _ in entries])
            return [
                PutResult(error_code="KMSAccessDeniedException", error_message="no key access")
            ] + [PutResult("shardId-000000000000", "1")] * (len(entries) - 1)

    kinesis = Refusing()
    sink, waits = sink_on(kinesis)
    with pytest.raises(BackendError) as caught:
        sink.put(entries("a", "b"))
    assert str(caught.value) == (
        "stream events refused 1 records: KMSAccessDeniedException: no key access"
    )
    assert kinesis.calls == [[b"a", b"b"]] and waits == []


# Sink.put: per partition key, records land in the order they were given


def test_a_later_entry_of_a_key_waits_until_the_earlier_one_is_accepted():
    kinesis = Kinesis({b"a1"})
    sink, waits = sink_on(kinesis)

    sink.put([(b"a1", "a"), (b"b1", "b"), (b"a2", "a"), (b"a3", "a"), (b"b2", "b")])

    assert kinesis.calls == [[b"a1", b"b1"], [b"a1"], [b"a2", b"b2"], [b"a3"]]
    assert kinesis.accepted == [b"b1", b"a1", b"a2", b"b2", b"a3"]
    assert len(waits) == 1


class Flaky:
    """PutRecords on a two-shard stream where every third call is throttled whole and, of the
    rest, every other entry fails the first time it is sent (throttled, or an internal failure)."""

    def __init__(self):
        self.calls = 0
        self.sent = set()
        self.landed = []  # (shard id, sequence number, partition key, data)

    def put_records(self, stream, entries):
        self.calls += 1
        if self.calls % 3 == 0:
            raise Throttled("Rate exceeded for stream events")
        results = []
        for data, key in entries:
            first_time = data not in self.sent
            self.sent.add(data)
            if first_time and len(self.sent) % 2 == 0:
                code = ("ProvisionedThroughputExceededException", "InternalFailure")[self.calls % 2]
                results.append(PutResult(error_code=code, error_message="try again"))
            else:
                shard, sequence = f"shardId-00000000000{ord(key) % 2}", len(self.landed) + 1
                self.landed.append((shard, sequence, key, data))
                results.append(PutResult(shard, str(sequence)))
        return results


def test_each_keys_records_land_once_and_in_order_whatever_fails():
    # Many records per key, over three batches of at most 500.
    sent = [(f"{key}{i}".encode(), key) for i in range(200) for key in "abcdefg"]
    sent += [(f"{key}{i}".encode(), key) for i in range(200, 300) for key in "ab"]
    kinesis = Flaky()
    sink, _ = sink_on(kinesis)

    sink.put(sent)

    def by_key(pairs):
        keys = {}
        for key, data in pairs:
            keys.setdefault(key, []).append(data)
        return keys

    landed = by_key((key, data) for _, _, key, data in kinesis.landed)
    assert landed == by_key((key, data) for data, key in sent)
    highest = {}
    for shard, sequence, _, _ in kinesis.landed:
        highest[shard] = sequence
    assert sink.written == highest


def test_a_put_cut_short_says_which_entries_the_stream_took():
    class Stop:
        def is_set(self):
            return True  # e.g. Lambda's deadline: the first wait ends the put

    kinesis = Kinesis({b"b"})
    sink = Sink(kinesis, "events", sleep=lambda s: None, patience=Patience(stopping=Stop()))
    accepted = [False] * 3

    with pytest.raises(Abandoned):
        sink.put(entries("a", "b", "c"), accepted)

    assert accepted == [True, False, True]
    assert kinesis.calls == [[b"a", b"b", b"c"]]


# What the sink tells its observer (`pipeline run --metrics`)


class Noted(Observer):
    def __init__(self):
        self.calls = []

    def put_records(self, stream, results):
        self.calls.append((stream, dict(results)))

    def put_retried(self, stream):
        self.calls.append((stream, "retry"))


def test_each_call_tells_its_entries_by_result_and_each_retry_is_told():
    class Failing(Kinesis):
        def put_records(self, stream, entries):
            results = super().put_records(stream, entries)
            if len(self.calls) == 2:  # of the retry of b and c, c fails otherwise
                results[1] = PutResult(error_code="InternalFailure", error_message="oops")
            return results

    kinesis = Failing({b"b", b"c"}, set(), Throttled("Rate exceeded"))
    noted = Noted()
    sink = Sink(kinesis, "events", sleep=lambda seconds: None, observer=noted)

    sink.put(entries("a", "b", "c"))

    assert noted.calls == [
        ("events", {"ok": 1, "throttled": 2, "failed": 0}),
        ("events", "retry"),
        ("events", {"ok": 1, "throttled": 0, "failed": 1}),
        ("events", "retry"),
        ("events", {"throttled": 1}),
        ("events", "retry"),
        ("events", {"ok": 1, "throttled": 0, "failed": 0}),
    ]
    assert kinesis.calls == [[b"a", b"b", b"c"], [b"b", b"c"], [b"c"], [b"c"]]


# Lanes: a round's entries put at once, one lane per shard of the stream


class InFlight:
    """PutRecords on local streams, through calls that may be in flight at once: the first
    `together` calls wait for each other, so that they are; a partition key of a stream in two
    calls in flight at once is noted in `shared`. Every third entry of a key fails the first
    time it is sent (throttled, or an internal failure of Kinesis), whichever thread sends it."""

    def __init__(self, backend, together):
        self.backend = backend
        self.together = threading.Barrier(together, timeout=10)
        self.calls = 0
        self.flying = Counter()  # (stream, partition key) -> calls in flight holding it
        self.shared = set()
        self.sent = set()
        self.lock = threading.Lock()

    def list_shards(self, stream):
        return self.backend.list_shards(stream)

    def put_records(self, stream, entries):
        keys = {(stream, key) for _, key in entries}
        with self.lock:
            self.calls += 1
            first = self.calls <= self.together.parties
            self.shared |= {key for key in keys if self.flying[key]}
            self.flying.update(keys)
        try:
            if first:
                self.together.wait()
            return self._put(stream, entries)
        finally:
            with self.lock:
                self.flying.subtract(keys)

    def _put(self, stream, entries):
        failing = {}
        with self.lock:
            for data, _ in entries:
                if data not in self.sent and int(data.split(b"-")[1]) % 3 == 2:
                    failing[data] = ENTRY_ERRORS[len(self.sent) % 2]
                self.sent.add(data)
        passing = [entry for entry in entries if entry[0] not in failing]
        accepted = iter(self.backend.put_records(stream, passing) if passing else [])
        return [
            PutResult(error_code=failing[data], error_message="try again")
            if data in failing
            else next(accepted)
            for data, _ in entries
        ]


ENTRY_ERRORS = ("ProvisionedThroughputExceededException", "InternalFailure")


def by_key(entries):
    keys = {}
    for data, key in entries:
        keys.setdefault(key, []).append(data)
    return keys


def shard_records(backend, stream):
    """Each shard's records, (data, partition key), shard by shard."""
    found = []
    for shard in backend.list_shards(stream):
        iterator = backend.get_shard_iterator(stream, shard.shard_id, "TRIM_HORIZON")
        records = []
        while batch := backend.get_records(iterator).records:
            records += [(record.data, record.partition_key) for record in batch]
            iterator = backend.get_shard_iterator(
                stream, shard.shard_id, "AFTER_SEQUENCE_NUMBER", sequence=batch[-1].sequence
            )
        found.append(records)
    return found


def test_lanes_split_a_put_by_the_shard_each_partition_key_hashes_to(tmp_path):
    backend = LocalBackend(tmp_path)
    backend.create_stream("events", 4)
    sent = [(f"{key}-{n}".encode(), f"key{key}") for n in range(3) for key in range(40)]
    sink = Sink(backend, "events")

    lanes = sink.lanes(sent)
    for lane in lanes:
        lane(threading.Event())

    # One lane per shard, in the order of their hash keys, each key's entries in order.
    assert [lane.args[0] for lane in lanes] == shard_records(backend, "events")
    assert len(lanes) == 4


def test_a_one_shard_stream_is_one_lane_and_no_entries_none(tmp_path):
    backend = LocalBackend(tmp_path)
    backend.create_stream("events", 1)
    sink = Sink(backend, "events")

    assert [lane.args[0] for lane in sink.lanes(entries("a", "b"))] == [entries("a", "b")]
    assert sink.lanes([]) == []


def test_lanes_at_once_keep_each_keys_order_whatever_fails(tmp_path):
    # Two sinks of 3 shards, their six lanes in flight at once; many records per key, over
    # several batches of 500 per lane, a third of them failing once.
    backend = LocalBackend(tmp_path)
    puts = {
        stream: [(f"{stream}{key}-{n}".encode(), str(key)) for n in range(30) for key in range(100)]
        for stream in ("usa", "international")
    }
    for stream in puts:
        backend.create_stream(stream, 3)
    kinesis = InFlight(backend, together=6)
    sinks = {stream: Sink(kinesis, stream, sleep=lambda seconds: None) for stream in puts}
    workers = Workers(6, "sink-writer")

    put_all([(sinks[stream], sent) for stream, sent in puts.items()], workers)
    workers.close()

    assert kinesis.shared == set()  # no key was ever in two calls at once
    for stream, sent in puts.items():
        shards = shard_records(backend, stream)
        assert by_key(entry for shard in shards for entry in shard) == by_key(sent)
        last = [read_last(backend, stream, shard) for shard in backend.list_shards(stream)]
        assert sinks[stream].written == dict(last)


def read_last(backend, stream, shard):
    iterator = backend.get_shard_iterator(stream, shard.shard_id, "TRIM_HORIZON")
    return shard.shard_id, int(backend.get_records(iterator).records[-1].sequence)


def test_a_lane_refused_fails_the_put_and_stops_the_others_before_their_next_call(tmp_path):
    backend = LocalBackend(tmp_path)
    backend.create_stream("events", 2)
    half = 2**127  # where the second shard's hash keys begin
    low = [key for key in map(str, range(3000)) if hash_key(key) < half]
    refused = next(key for n in range(100) if hash_key(key := f"refused{n}") >= half)
    stops = []  # the event the lanes see, set once one fails

    class Refusing:
        calls = 0

        def list_shards(self, stream):
            return backend.list_shards(stream)

        def put_records(self, stream, entries):
            Refusing.calls += 1
            if entries[0][1] == refused:
                raise BackendError("stream 'events' refused 1 records: KMSAccessDeniedException")
            assert stops[0].wait(timeout=10)  # the other lane failed meanwhile
            return backend.put_records(stream, entries)

    def watched(lane):
        def call(stop):
            stops.append(stop)
            lane(stop)

        return call

    # The low lane has three batches to put, the other one entry.
    sent = [(f"{key}-0".encode(), key) for key in low[:1500]] + [(b"x-0", refused)]
    lanes = Sink(Refusing(), "events", sleep=lambda seconds: None).lanes(sent)
    workers = Workers(2, "sink-writer")

    with pytest.raises(BackendError, match="refused 1 records"):
        workers.all([watched(lane) for lane in lanes])
    workers.close()

    assert Refusing.calls == 2
    assert [len(shard) for shard in shard_records(backend, "events")] == [500, 0]


def hash_key(key):
    return int.from_bytes(hashlib.md5(key.encode()).digest(), "big")


def test_a_sink_keeps_what_the_stream_took_in_order_once_asked():
    kinesis = Kinesis(set(), {b"b"})  # b fails once, then goes in after c
    sink, _ = sink_on(kinesis)
    sink.put(entries("x"))
    assert sink.take_written() == {}  # nothing kept until asked

    sink.keep_written()
    sink.put(entries("a", "b", "c"))

    assert sink.take_written() == {"shardId-000000000000": [(2, b"a"), (3, b"c"), (4, b"b")]}
    assert sink.take_written() == {}
