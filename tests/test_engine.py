"""The loop on a target whose calls wait on the network: it puts its lanes and checkpoints at
once, and the local target keeps making every call in the run's own thread."""

import json
import threading

from conftest import MINIMAL, session_ids
from fakes import Clock, FaultyBackend

from runner import spec
from runner.backends.base import is_start_mark
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
    """The local backend as a run sees a network target: it writes lanes and checkpoints at
    once. Each GetRecords call takes the time a shard waits between two (so the
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
