"""The loop on a target whose calls wait on the network: it reads the next round while it
writes this one, and puts its lanes and checkpoints at once, keeping its promises: nothing is
checkpointed past a record not written, a stop writes what was read, and the local target
keeps making every call in the run's own thread."""

import json
import threading
import time

import pytest
from conftest import MINIMAL, session_ids
from fakes import Clock, FaultyBackend, started_since

from runner import spec
from runner.backends.base import BackendError, Throttled, is_start_mark
from runner.backends.local import LocalBackend
from runner.commands.provision import apply
from runner.loop import engine
from runner.loop.reader import MIN_CALL_INTERVAL_S

PER_READ = 10


def setup(tmp_path, source_shards=1):
    path = tmp_path / "shop.yaml"
    path.write_text(
        MINIMAL.replace("{name: in, shards: 1}", f"{{name: in, shards: {source_shards}}}")
    )
    loaded = spec.load(path)
    state = tmp_path / "state"
    backend = LocalBackend(state)
    apply(loaded, backend, lambda line: None)
    return loaded, backend, state


def put_sessions(backend, count):
    """Sessions s00, s01, ... in the source, every other one from the USA; their ids."""
    ids = [f"s{n:02}" for n in range(count)]
    countries = ["USA", "France"]
    written = backend.put_records(
        "in",
        [
            (json.dumps({"session_id": i, "country": countries[n % 2]}).encode(), i)
            for n, i in enumerate(ids)
        ],
    )
    return ids, written


def on_the_network(backend, clock, before_get=lambda: None, **faults):
    """The local backend as a run sees a network target: it reads ahead, and writes lanes and
    checkpoints at once. Each GetRecords call takes the time a shard waits between two (so the
    next read is due once the round is read) and answers at most PER_READ records; the name of
    the thread making it is noted in `reads`."""

    def get_records(get, iterator, limit):
        clock.advance(MIN_CALL_INTERVAL_S)
        wrapped.reads.append(threading.current_thread().name)
        before_get()
        return get(iterator, min(limit, PER_READ))

    wrapped = FaultyBackend(backend, get_records=get_records, **faults)
    wrapped.read_workers = wrapped.write_workers = 4
    wrapped.reads = []
    return wrapped


def run_on(loaded, backend, state, clock):
    return engine.Engine(
        loaded,
        backend,
        state,
        engine.RunOptions(until_idle=1.0),
        lambda line: None,
        clock=clock,
        sleep=clock.sleep,
    )


def moved(checkpoints):
    """The checkpoints past records, without start marks (where a shard began reading)."""
    return {shard: at for shard, at in checkpoints.items() if not is_start_mark(at)}


def test_a_write_failing_while_the_next_round_is_read_checkpoints_nothing_past_what_was_written(
    tmp_path,
):
    loaded, backend, state = setup(tmp_path)
    ids, written = put_sessions(backend, 30)
    clock = Clock()

    def put_records(put, stream, entries):
        # Round 2 (s10 to s19) cannot be written to the USA stream.
        if stream == "usa-out" and any(b'"s1' in data for data, _ in entries):
            raise BackendError(f"stream '{stream}' refused 1 records: KMSAccessDeniedException")
        return put(stream, entries)

    network = on_the_network(backend, clock, put_records=put_records)

    with pytest.raises(BackendError, match="refused 1 records"):
        run_on(loaded, network, state, clock).run()

    # Round 2 was read ahead while round 1 was written, round 3 while round 2 failed.
    assert network.reads == ["MainThread", "read-ahead_0", "read-ahead_0"]
    shard = written[0].shard_id
    assert moved(backend.get_checkpoints("shop", "in")) == {shard: written[9].sequence}

    # The next run reads again from s10: every session reaches its sink.
    run_on(loaded, backend, state, Clock()).run()
    assert sorted(set(session_ids(backend, "usa-out", "other-out"))) == ids
    assert moved(backend.get_checkpoints("shop", "in")) == {shard: written[29].sequence}


def test_a_read_ahead_failing_ends_the_run_once_the_round_written_meanwhile_is_checkpointed(
    tmp_path,
):
    loaded, backend, state = setup(tmp_path)
    ids, written = put_sessions(backend, 30)
    clock = Clock()

    def fail_reading_ahead():
        if threading.current_thread().name.startswith("read-ahead"):
            raise BackendError("stream 'in': AccessDeniedException: not allowed to read")

    network = on_the_network(backend, clock, before_get=fail_reading_ahead)

    with pytest.raises(BackendError, match="not allowed to read"):
        run_on(loaded, network, state, clock).run()

    assert network.reads == ["MainThread", "read-ahead_0"]
    assert sorted(session_ids(backend, "usa-out", "other-out")) == ids[:10]
    shard = written[0].shard_id
    assert moved(backend.get_checkpoints("shop", "in")) == {shard: written[9].sequence}


def test_a_stop_while_the_next_round_is_read_writes_and_checkpoints_it_and_reads_no_more(tmp_path):
    loaded, backend, state = setup(tmp_path)
    ids, written = put_sessions(backend, 30)
    clock = Clock()

    def stop_while_reading_ahead():
        if threading.current_thread().name.startswith("read-ahead"):
            runner.stop()  # as Ctrl-C does

    network = on_the_network(backend, clock, before_get=stop_while_reading_ahead)
    runner = run_on(loaded, network, state, clock)

    counts = runner.run()

    assert network.reads == ["MainThread", "read-ahead_0"]
    assert counts.records_in == 20
    assert sorted(session_ids(backend, "usa-out", "other-out")) == ids[:20]
    shard = written[0].shard_id
    assert moved(backend.get_checkpoints("shop", "in")) == {shard: written[19].sequence}


def test_the_shards_checkpoints_of_a_round_are_written_at_once(tmp_path):
    loaded, backend, state = setup(tmp_path, source_shards=3)
    _, written = put_sessions(backend, 30)
    together = threading.Barrier(3, timeout=10)  # broken unless the three wait at once
    checkpointed = []

    def set_checkpoint(write, pipeline, stream, shard_id, sequence):
        if not is_start_mark(sequence) and len(checkpointed) < 3:
            checkpointed.append(threading.current_thread().name)
            together.wait()
        write(pipeline, stream, shard_id, sequence)

    clock = Clock()
    network = on_the_network(backend, clock, set_checkpoint=set_checkpoint)

    run_on(loaded, network, state, clock).run()

    assert all(name.startswith("sink-writer") for name in checkpointed)
    last = {result.shard_id: result.sequence for result in written}
    assert len(last) == 3
    assert moved(backend.get_checkpoints("shop", "in")) == last


def test_on_the_local_target_a_run_makes_every_call_in_its_own_thread(tmp_path):
    loaded, backend, state = setup(tmp_path, source_shards=3)
    ids, _ = put_sessions(backend, 30)
    threads = set()

    def noted(call, *arguments):
        threads.add(threading.current_thread().name)
        return call(*arguments)

    local = FaultyBackend(
        backend, get_records=noted, put_records=noted, set_checkpoint=noted, list_shards=noted
    )

    run_on(loaded, local, state, Clock()).run()

    assert threads == {"MainThread"}
    assert sorted(session_ids(backend, "usa-out", "other-out")) == ids


def test_a_run_on_the_network_returns_once_the_threads_it_started_have_ended(tmp_path):
    loaded, backend, state = setup(tmp_path, source_shards=3)
    ids, _ = put_sessions(backend, 30)
    clock = Clock()
    network = on_the_network(backend, clock)
    before = set(threading.enumerate())

    run_on(loaded, network, state, clock).run()

    assert any(name.startswith("shard-reader") for name in network.reads)  # shards at once
    assert started_since(before) == []
    assert sorted(session_ids(backend, "usa-out", "other-out")) == ids


def test_a_read_failing_ends_at_once_the_wait_of_another_shard_read_at_the_same_time(tmp_path):
    # Shard 1's start cannot be recorded (throttled, for 10 s of real time at most) while
    # shard 0 cannot be read: the run fails, and shard 1's wait ends with it, recording
    # nothing, not once --give-up-after has passed.
    loaded, backend, state = setup(tmp_path, source_shards=2)
    shards = [shard.shard_id for shard in backend.list_shards("in")]
    clock = Clock()
    throttled_until = time.monotonic() + 10
    waiting = threading.Event()  # shard 1's read waits for the checkpoint table

    def get_shard_iterator(get, stream, shard_id, *args, **kwargs):
        if shard_id == shards[0]:
            waiting.wait(timeout=10)
            raise BackendError("stream 'in': AccessDeniedException: not allowed to read")
        return get(stream, shard_id, *args, **kwargs)

    def set_checkpoint(write, pipeline, stream, shard_id, sequence):
        if shard_id == shards[1] and time.monotonic() < throttled_until:
            waiting.set()
            raise Throttled("checkpoint table: ProvisionedThroughputExceededException")
        write(pipeline, stream, shard_id, sequence)

    def sleep(seconds):  # the run's clock stands still while shard 1 waits
        if threading.current_thread() is threading.main_thread():
            clock.sleep(seconds)
        else:
            time.sleep(0.001)

    network = on_the_network(
        backend, clock, get_shard_iterator=get_shard_iterator, set_checkpoint=set_checkpoint
    )
    before = set(threading.enumerate())
    run = engine.Engine(
        loaded, network, state, engine.RunOptions(), lambda line: None, clock=clock, sleep=sleep
    )

    with pytest.raises(BackendError, match="not allowed to read"):
        run.run()

    assert started_since(before) == []
    assert backend.get_checkpoints("shop", "in") == {}
