import datetime

import pytest
from fakes import Clock, FaultyBackend

from runner.backends.base import SHARD_END, Throttled
from runner.backends.local import LocalBackend
from runner.loop.observer import Observer
from runner.loop.reader import StreamReader
from runner.spec.position import Position

START = 1_800_000_000.0  # 2027-01-15T08:00:00Z
UTC = datetime.timezone.utc
KEYS = [f"user-{i}" for i in range(40)]


class Watched(FaultyBackend):
    """LocalBackend as the reader sees it: notes when each GetRecords asked which shard, and
    answers Throttled to the first `throttle` calls on the shards in `throttled`."""

    def __init__(self, backend, clock, throttled=(), throttle=1):
        super().__init__(
            backend,
            get_shard_iterator=self._get_shard_iterator,
            latest_iterator=self._latest_iterator,
            get_records=self._get_records,
        )
        self.clock = clock
        self.throttled = {shard: throttle for shard in throttled}
        self.calls = []  # (reader time, shard id)
        self.iterators = []  # (shard id, iterator type, sequence)
        self._shard_of = {}

    def _get_shard_iterator(self, get, stream, shard_id, iterator_type, **position):
        iterator = get(stream, shard_id, iterator_type, **position)
        self.iterators.append((shard_id, iterator_type, position.get("sequence")))
        self._shard_of[iterator] = shard_id
        return iterator

    def _latest_iterator(self, latest, stream, shard_id):
        iterator, checkpoint = latest(stream, shard_id)
        self.iterators.append((shard_id, "LATEST", None))
        self._shard_of[iterator] = shard_id
        return iterator, checkpoint

    def _get_records(self, get, iterator, limit):
        shard = self._shard_of[iterator]
        self.calls.append((self.clock(), shard))
        if self.throttled.get(shard, 0) > 0:
            self.throttled[shard] -= 1
            raise Throttled(f"Rate exceeded for shard {shard}")
        answer = get(iterator, limit)
        if answer.next_iterator is not None:
            self._shard_of[answer.next_iterator] = shard
        return answer

    def times(self, shard):
        return [when for when, asked in self.calls if asked == shard]


@pytest.fixture
def time_now():
    """The backend's clock: arrival times and iterator age."""
    return Clock(START)


@pytest.fixture
def clock():
    """The reader's clock: when a shard may be asked again."""
    return Clock()


@pytest.fixture
def backend(tmp_path, time_now):
    backend = LocalBackend(tmp_path / "state", clock=time_now)
    yield backend
    backend.close()


def put(backend, stream, *payloads, keys=KEYS):
    """Put each payload with the next key in turn; returns {payload: (shard id, sequence)}."""
    results = backend.put_records(
        stream, [(p.encode(), keys[i % len(keys)]) for i, p in enumerate(payloads)]
    )
    return {p: (r.shard_id, r.sequence) for p, r in zip(payloads, results, strict=True)}


def drain(reader, clock, polls=200):
    """Poll, moving the clock to when a shard may be asked, until the reader is caught up or
    done; returns (shard id, data) for every record handed out, in order."""
    read = []
    for _ in range(polls):
        for batch in reader.poll():
            read += [(batch.shard_id, r.data.decode()) for r in batch.records]
        if reader.caught_up or reader.done:
            return read
        clock.now += reader.wait_time()
    raise AssertionError(f"not caught up after {polls} polls; read {read}")


def drain_some(reader, clock, polls):
    """Like drain, for a given number of polls, caught up or not."""
    read = []
    for _ in range(polls):
        for batch in reader.poll():
            read += [(batch.shard_id, r.data.decode()) for r in batch.records]
        clock.now += reader.wait_time()
    return read


def data(read):
    return [payload for _, payload in read]


def records(batches):
    return [record.data.decode() for batch in batches for record in batch.records]


def gaps(times):
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


@pytest.mark.parametrize("workers", [1, 4], ids=["one shard at a time", "shards in parallel"])
def test_every_record_of_every_shard_is_read_once_in_shard_order(backend, clock, workers):
    backend.create_stream("events", 3)
    payloads = [f"r{i}" for i in range(60)]
    written = put(backend, "events", *payloads)
    watched = Watched(backend, clock)
    watched.read_workers = workers

    read = drain(StreamReader(watched, "events", limit=7, clock=clock), clock)

    assert sorted(read) == sorted((written[p][0], p) for p in payloads)
    assert {shard for shard, _ in read} == {
        "shardId-000000000000",
        "shardId-000000000001",
        "shardId-000000000002",
    }
    for shard in {shard for shard, _ in read}:
        sequences = [int(written[p][1]) for s, p in read if s == shard]
        assert sequences == sorted(sequences)


def test_records_are_handed_out_in_batches_of_at_most_limit(backend, clock):
    backend.create_stream("events", 1)
    put(backend, "events", *[f"r{i}" for i in range(5)])
    reader = StreamReader(backend, "events", limit=2, clock=clock)

    sizes = []
    for _ in range(10):
        sizes += [len(b.records) for b in reader.poll() if b.records]
        clock.now += reader.wait_time()

    assert sizes == [2, 2, 1]


def test_a_checkpoint_continues_after_its_sequence(backend, clock):
    backend.create_stream("events", 2)
    written = put(backend, "events", *[f"r{i}" for i in range(20)])
    shard0 = [p for p, (shard, _) in written.items() if shard == "shardId-000000000000"]
    checkpoint = {"shardId-000000000000": written[shard0[2]][1]}

    read = drain(StreamReader(backend, "events", checkpoints=checkpoint, clock=clock), clock)

    shard1 = [p for p, (shard, _) in written.items() if shard == "shardId-000000000001"]
    assert [p for s, p in read if s == "shardId-000000000000"] == shard0[3:]
    assert [p for s, p in read if s == "shardId-000000000001"] == shard1


def test_a_shard_end_checkpoint_is_not_read_again(backend, clock):
    backend.create_stream("events", 1)
    put(backend, "events", "old")
    backend.update_shard_count("events", 2)
    written = put(backend, "events", "new-a", "new-b", keys=["a", "b"])

    reader = StreamReader(
        backend, "events", checkpoints={"shardId-000000000000": SHARD_END}, clock=clock
    )

    assert sorted(drain(reader, clock)) == sorted((s, p) for p, (s, _) in written.items())


def test_latest_reads_only_what_arrives_after_the_first_poll(backend, clock):
    backend.create_stream("events", 2)
    put(backend, "events", "before-1", "before-2")
    reader = StreamReader(backend, "events", start=Position("LATEST"), clock=clock)
    assert reader.poll() and reader.caught_up

    put(backend, "events", "after-1", "after-2", "after-3")
    clock.now += 1.0

    assert sorted(data(drain(reader, clock))) == ["after-1", "after-2", "after-3"]


def test_at_timestamp_starts_at_the_first_record_that_arrived_then(backend, clock, time_now):
    backend.create_stream("events", 2)
    put(backend, "events", "early-1", "early-2")
    time_now.now += 10
    put(backend, "events", "late-1", "late-2", "late-3")
    moment = datetime.datetime.fromtimestamp(START + 10, tz=datetime.timezone.utc)

    reader = StreamReader(
        backend, "events", start=Position("AT_TIMESTAMP", timestamp=moment), clock=clock
    )

    assert sorted(data(drain(reader, clock))) == ["late-1", "late-2", "late-3"]


# Resharding


@pytest.mark.parametrize("started", ["before the reshard", "after the reshard"])
def test_a_split_parent_is_read_to_its_end_before_its_children(backend, clock, started):
    backend.create_stream("events", 1)
    parent = [f"p{i}" for i in range(7)]
    put(backend, "events", *parent)
    first = []
    if started == "before the reshard":
        reader = StreamReader(backend, "events", limit=3, clock=clock)
        first = drain_some(reader, clock, polls=1)

    backend.update_shard_count("events", 2)
    children = [f"c{i}" for i in range(10)]
    written = put(backend, "events", *children)
    if started == "after the reshard":
        reader = StreamReader(backend, "events", limit=3, clock=clock)
    read = first + drain(reader, clock)

    assert data(read)[: len(parent)] == parent
    assert sorted(data(read)[len(parent) :]) == sorted(children)
    for child in ("shardId-000000000001", "shardId-000000000002"):
        assert [p for s, p in read if s == child] == [c for c in children if written[c][0] == child]


def test_children_start_at_their_beginning_whatever_the_start_position(backend, clock):
    # The parent is read on from its checkpoint; LATEST must not make its children skip the
    # records that arrived since the reshard.
    backend.create_stream("events", 1)
    written = put(backend, "events", "p0", "p1")
    backend.update_shard_count("events", 2)
    put(backend, "events", "c0", "c1", "c2", "c3")
    checkpoint = {"shardId-000000000000": written["p0"][1]}

    reader = StreamReader(
        backend, "events", start=Position("LATEST"), checkpoints=checkpoint, clock=clock
    )
    read = drain(reader, clock)

    assert data(read)[:1] == ["p1"]
    assert sorted(data(read)[1:]) == ["c0", "c1", "c2", "c3"]


def test_every_child_waits_for_all_of_its_parents(backend, clock):
    backend.create_stream("events", 2)
    written = put(backend, "events", *[f"p{i}" for i in range(30)])
    backend.update_shard_count("events", 3)
    written.update(put(backend, "events", *[f"c{i}" for i in range(30)]))
    shards = {s.shard_id: s for s in backend.list_shards("events")}

    read = drain(StreamReader(backend, "events", limit=2, clock=clock), clock, polls=500)

    assert sorted(data(read)) == sorted(written)
    position = {payload: i for i, payload in enumerate(data(read))}
    for shard in shards.values():
        parents = {shard.parent_shard_id, shard.adjacent_parent_shard_id} - {None}
        mine = [position[p] for p, (s, _) in written.items() if s == shard.shard_id]
        theirs = [position[p] for p, (s, _) in written.items() if s in parents]
        if mine and theirs:
            assert max(theirs) < min(mine), shard.shard_id


def test_latest_skips_closed_parents_and_reads_the_children(backend, clock):
    backend.create_stream("events", 1)
    put(backend, "events", "old")
    backend.update_shard_count("events", 2)
    reader = StreamReader(backend, "events", start=Position("LATEST"), clock=clock)
    reader.poll()

    put(backend, "events", "new-a", "new-b", "new-c")
    clock.now += 1.0

    assert sorted(data(drain(reader, clock))) == ["new-a", "new-b", "new-c"]


def test_a_merge_child_starts_at_its_beginning_when_its_adjacent_parent_finished(backend, clock):
    # At latest, the parent closed before any run is skipped; the adjacent parent was read to
    # its end by an earlier run: the child holds only records put since, all to be read.
    backend.create_stream("events", 2)
    put(backend, "events", "old-0", "old-1")
    backend.update_shard_count("events", 1)
    (child,) = [s for s in backend.list_shards("events") if s.is_open]
    assert (child.parent_shard_id, child.adjacent_parent_shard_id) == (
        "shardId-000000000000",
        "shardId-000000000001",
    )
    put(backend, "events", "c0", "c1", "c2")
    checkpoints = {"shardId-000000000001": SHARD_END}

    reader = StreamReader(
        backend, "events", start=Position("LATEST"), checkpoints=checkpoints, clock=clock
    )

    assert drain(reader, clock) == [(child.shard_id, p) for p in ("c0", "c1", "c2")]


# Where a shard without checkpoint starts, told before any of its records is handed out


@pytest.mark.parametrize(
    ("start", "mark"),
    [
        (Position(), "#trim_horizon"),
        (
            Position("AT_TIMESTAMP", timestamp=datetime.datetime.fromtimestamp(START + 10, UTC)),
            "#at_timestamp:2027-01-15T08:00:10+00:00",
        ),
        (Position("LATEST"), None),  # the sequence number just before the first poll
    ],
    ids=["trim_horizon", "at_timestamp", "latest"],
)
def test_where_a_shard_starts_is_told_before_its_records_and_a_restart_goes_on_there(
    backend, clock, time_now, start, mark
):
    backend.create_stream("events", 1)
    before = put(backend, "events", "early")
    time_now.now += 10
    watched = Watched(backend, clock)
    told = []

    def on_start(shard_id, checkpoint):
        told.append((shard_id, checkpoint, len(watched.calls)))  # GetRecords calls so far

    first = StreamReader(watched, "events", start=start, clock=clock, on_start=on_start)
    read = drain(first, clock)
    put(backend, "events", "while-stopped-1", "while-stopped-2")
    checkpoints = {shard_id: checkpoint for shard_id, checkpoint, _ in told}
    again = StreamReader(backend, "events", start=start, checkpoints=checkpoints, clock=clock)

    assert told == [("shardId-000000000000", mark or before["early"][1], 0)]
    assert data(read) == (["early"] if start.iterator_type == "TRIM_HORIZON" else [])
    assert data(drain(again, clock)) == [*data(read), "while-stopped-1", "while-stopped-2"]


def test_at_latest_a_restart_reads_the_shards_closed_since_and_their_children(backend, clock):
    backend.create_stream("events", 1)
    told = {}
    first = StreamReader(
        backend, "events", start=Position("LATEST"), clock=clock, on_start=told.__setitem__
    )
    assert drain(first, clock) == []
    put(backend, "events", "p0")
    backend.update_shard_count("events", 2)  # split: shard 0 closes
    put(backend, "events", "c0", "c1", keys=["a", "b"])
    backend.update_shard_count("events", 1)  # merge: both children close
    put(backend, "events", "g0")

    again = StreamReader(backend, "events", start=Position("LATEST"), checkpoints=told, clock=clock)

    read = data(drain(again, clock, polls=500))
    assert read[0] == "p0" and sorted(read[1:3]) == ["c0", "c1"] and read[3:] == ["g0"]


# Iterators and limits


def test_an_expired_iterator_is_renewed_after_the_last_record_handed_out(backend, clock, time_now):
    backend.create_stream("events", 1)
    payloads = [f"r{i}" for i in range(7)]
    written = put(backend, "events", *payloads)
    watched = Watched(backend, clock)
    reader = StreamReader(watched, "events", limit=3, clock=clock)
    first = drain_some(reader, clock, polls=1)

    time_now.now += 301
    put(backend, "events", "r7")
    read = first + drain(reader, clock)

    assert data(first) == ["r0", "r1", "r2"]
    assert data(read) == [*payloads, "r7"]
    assert watched.iterators == [
        ("shardId-000000000000", "TRIM_HORIZON", None),
        ("shardId-000000000000", "AFTER_SEQUENCE_NUMBER", written["r2"][1]),
    ]


def test_an_expired_iterator_before_any_record_is_renewed_from_the_checkpoint(
    backend, clock, time_now
):
    backend.create_stream("events", 1)
    written = put(backend, "events", "r0", "r1")
    checkpoint = {"shardId-000000000000": written["r1"][1]}
    watched = Watched(backend, clock)
    reader = StreamReader(watched, "events", checkpoints=checkpoint, clock=clock)
    assert reader.poll()[0].records == []

    time_now.now += 301
    put(backend, "events", "r2", "r3")
    clock.now += 1.0

    assert data(drain(reader, clock)) == ["r2", "r3"]
    assert watched.iterators == [
        ("shardId-000000000000", "AFTER_SEQUENCE_NUMBER", written["r1"][1]),
        ("shardId-000000000000", "AFTER_SEQUENCE_NUMBER", written["r1"][1]),
    ]


def test_an_expired_latest_iterator_loses_nothing_that_arrived_since(backend, clock, time_now):
    backend.create_stream("events", 1)
    put(backend, "events", "before")
    time_now.now += 1
    reader = StreamReader(backend, "events", start=Position("LATEST"), clock=clock)
    assert records(reader.poll()) == []

    put(backend, "events", "while-held")
    time_now.now += 301
    clock.now += 1.0

    assert data(drain(reader, clock)) == ["while-held"]


def test_a_throttled_shard_is_asked_again_later_and_loses_nothing(backend, clock):
    backend.create_stream("events", 2)
    written = put(backend, "events", *[f"r{i}" for i in range(20)])
    watched = Watched(backend, clock, throttled=["shardId-000000000000"])
    reader = StreamReader(watched, "events", clock=clock)

    first = reader.poll()
    read = [(b.shard_id, r.data.decode()) for b in first for r in b.records]
    read += drain(reader, clock)

    assert [b.shard_id for b in first] == ["shardId-000000000001"]
    assert sorted(read) == sorted((s, p) for p, (s, _) in written.items())
    assert watched.times("shardId-000000000000")[:2] == [0.0, pytest.approx(0.2)]


def test_repeated_throttling_waits_longer_each_time_up_to_10_s(backend, clock):
    backend.create_stream("events", 1)
    put(backend, "events", "r0")
    watched = Watched(backend, clock, throttled=["shardId-000000000000"], throttle=8)
    reader = StreamReader(watched, "events", clock=clock)

    read = drain(reader, clock)

    times = watched.times("shardId-000000000000")
    assert gaps(times)[:8] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0])
    assert data(read) == ["r0"]


def test_no_shard_is_asked_twice_within_200_ms(backend, clock):
    backend.create_stream("events", 2)
    watched = Watched(backend, clock)
    reader = StreamReader(watched, "events", limit=5, clock=clock)
    payloads, read = [], []
    for tick in range(500):  # 5 s in steps of 10 ms, a record arriving every 50 ms
        clock.now = tick / 100
        if tick % 5 == 0:
            payloads.append(f"r{tick}")
            put(backend, "events", payloads[-1], keys=[f"k{tick}"])
        read += records(reader.poll())
    read += data(drain(reader, clock))

    assert sorted(read) == sorted(payloads)
    for shard in ("shardId-000000000000", "shardId-000000000001"):
        times = watched.times(shard)
        assert min(gaps(times)) >= 0.2 - 1e-9
        assert len(times) >= 10, "a shard with records is asked every 0.2 s to 1 s"


def test_an_empty_shard_is_asked_once_a_second(backend, clock):
    backend.create_stream("events", 1)
    watched = Watched(backend, clock)
    reader = StreamReader(watched, "events", clock=clock)
    for tick in range(301):
        clock.now = tick / 100
        reader.poll()

    assert watched.times("shardId-000000000000") == [0.0, 1.0, 2.0, 3.0]


def test_poll_returns_nothing_while_no_shard_may_be_asked(backend, clock):
    backend.create_stream("events", 1)
    put(backend, "events", "r0")
    reader = StreamReader(backend, "events", clock=clock)
    assert [len(b.records) for b in reader.poll()] == [1]

    clock.now = 0.1
    assert reader.poll() == []
    assert reader.wait_time() == pytest.approx(0.1)


# caught_up and done


def test_caught_up_once_every_shard_answered_empty(backend, clock):
    backend.create_stream("events", 2)
    put(backend, "events", "r0", "r1", keys=["a", "b"])
    reader = StreamReader(backend, "events", clock=clock)
    assert not reader.caught_up

    reader.poll()
    assert not reader.caught_up  # records came: there may be more

    clock.now += reader.wait_time()
    reader.poll()
    assert reader.caught_up

    put(backend, "events", "r2")
    clock.now += 1.0
    assert records(reader.poll()) == ["r2"]
    assert not reader.caught_up  # records came again: there may be more


def test_an_open_stream_is_never_done(backend, clock):
    backend.create_stream("events", 1)
    reader = StreamReader(backend, "events", clock=clock)
    drain(reader, clock)

    assert reader.caught_up and not reader.done


def test_done_once_every_shard_read_is_closed_and_read_to_its_end(backend, clock):
    backend.create_stream("events", 1)
    put(backend, "events", "p0", "p1")
    backend.update_shard_count("events", 2)
    put(backend, "events", "c0")
    reader = StreamReader(
        backend, "events", only_shard="shardId-000000000000", limit=1, clock=clock
    )

    read = drain_some(reader, clock, polls=1)
    assert not reader.done
    read += drain(reader, clock)

    assert reader.done
    assert data(read) == ["p0", "p1"]
    assert reader.poll() == []


class Throttles(Observer):
    def __init__(self):
        self.shards = []

    def get_records_throttled(self, shard_id):
        self.shards.append(shard_id)


def test_each_throttled_get_records_call_is_told_with_its_shard(backend, clock):
    backend.create_stream("events", 2)
    put(backend, "events", *[f"r{i}" for i in range(4)])
    watched = Watched(backend, clock, throttled=["shardId-000000000001"], throttle=3)
    throttles = Throttles()
    reader = StreamReader(watched, "events", clock=clock, observer=throttles)

    drain(reader, clock)

    assert throttles.shards == ["shardId-000000000001"] * 3


def test_not_open_says_which_shards_have_had_no_iterator_yet(backend, clock):
    backend.create_stream("events", 2)
    put(backend, "events", *[f"r{i}" for i in range(4)])
    reader = StreamReader(backend, "events", clock=clock)
    assert reader.not_open() == (
        "2 shards without an iterator yet (shardId-000000000000, shardId-000000000001)"
    )

    drain(reader, clock)

    assert reader.not_open() is None


def test_not_open_while_the_shards_are_not_listed(backend, clock):
    backend.create_stream("events", 1)

    def throttled(list_shards, stream):
        raise Throttled("Rate exceeded")

    reader = StreamReader(FaultyBackend(backend, list_shards=throttled), "events", clock=clock)

    assert reader.not_open() == "the shards of stream events are not listed yet"
