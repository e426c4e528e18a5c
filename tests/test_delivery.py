"""The local Firehose delivery takes what the run writes to its stream as the run writes it,
and reads the rest: every record of the stream is delivered, in its shard's order."""

import base64
import json
from collections import Counter

from fakes import Clock, FaultyBackend

from runner import spec
from runner.backends.local import LocalBackend
from runner.commands.provision import apply
from runner.loop import engine

SPEC = """\
pipeline: shop
resources:
  streams:
    source: {name: in, shards: 1}
    out: {name: out, shards: 2}
  buckets:
    out: {name: shop-out}
  firehoses:
    out: {name: shop-out-firehose, from: out, to: out, buffer: {size_mb: 1, interval_s: 60}}
source: {stream: source}
route:
  partition_key: session_id
  cases:
    - to: out
"""
READ_LIMIT = 50  # records per GetRecords call, so that a run takes many rounds


def run(tmp_path, sessions, before_get=lambda call, backend: None, most=lambda call: READ_LIMIT):
    """Run the spec over `sessions` put into its source, calling `before_get(n, backend)`
    before the nth GetRecords call, which gives at most `most(n)` records; returns the
    engine and the records read from `out`."""
    path = tmp_path / "shop.yaml"
    path.write_text(SPEC)
    loaded = spec.load(path)
    backend = LocalBackend(tmp_path / "state")
    apply(loaded, backend, lambda line: None)
    for start in range(0, len(sessions), 100):
        batch = sessions[start : start + 100]
        backend.put_records("in", [(json.dumps(s).encode(), s["session_id"]) for s in batch])
    read_back = Counter()

    def get_records(get, iterator, limit):
        before_get(reading.called["get_records"], backend)
        answer = get(iterator, min(limit, most(reading.called["get_records"])))
        stream = json.loads(base64.urlsafe_b64decode(iterator))["stream"]
        read_back[stream] += len(answer.records)
        return answer

    reading = FaultyBackend(backend, get_records=get_records)
    clock = Clock()
    run = engine.Engine(
        loaded,
        reading,
        tmp_path / "state",
        engine.RunOptions(until_idle=1.0),
        lambda line: None,
        clock=clock,
        sleep=clock.sleep,
    )
    run.run()
    return run, backend, read_back["out"]


def delivered_by_shard(run, backend):
    """Each shard of `out`: the data of its records as delivered, in the order delivered, and
    as the stream holds them."""
    (delivery,) = run.deliveries
    lines = [
        line
        for key in delivery.objects
        for line in backend.get_object("shop-out", key).splitlines(keepends=True)
    ]
    shards = {}
    for shard in backend.list_shards("out"):
        iterator = backend.get_shard_iterator("out", shard.shard_id, "TRIM_HORIZON")
        held = backend.get_records(iterator).records
        mine = {record.data for record in held}
        shards[shard.shard_id] = ([line for line in lines if line in mine], [r.data for r in held])
    assert sum(len(delivered) for delivered, _ in shards.values()) == len(lines)
    return shards


def sessions(count, prefix="s"):
    return [{"session_id": f"{prefix}{n}", "n": n} for n in range(count)]


def test_a_delivery_takes_what_the_run_writes_without_reading_it_back(tmp_path):
    run_, backend, read_back = run(tmp_path, sessions(400))

    shards = delivered_by_shard(run_, backend)
    for delivered, held in shards.values():
        assert delivered == held
    assert sum(len(held) for _, held in shards.values()) == 400
    # Only its first read, which tells it where it stands, reads what the run wrote.
    assert read_back <= 2 * READ_LIMIT


def test_a_delivery_delivers_what_others_put_on_its_stream_in_order(tmp_path):
    def another_producer(call, backend):
        if call % 3 == 0 and call < 60:  # between the run's writes, into both shards
            others = sessions(20, prefix=f"other-{call}-")
            entries = [(json.dumps(s).encode() + b"\n", s["session_id"]) for s in others]
            backend.put_records("out", entries)

    run_, backend, _ = run(tmp_path, sessions(400), another_producer)

    shards = delivered_by_shard(run_, backend)
    for delivered, held in shards.values():
        assert delivered == held
    ids = [json.loads(data)["session_id"] for _, held in shards.values() for data in held]
    assert len(ids) > 400 and len([i for i in ids if i.startswith("other-")]) == len(ids) - 400


def test_what_a_delivery_takes_fills_objects_of_about_the_buffer_size(tmp_path):
    padded = [{**session, "pad": "x" * 20_000} for session in sessions(300)]

    # A first round of 10 records, then rounds of 3 MB, each more than an object.
    run_, backend, read_back = run(tmp_path, padded, most=lambda call: 10 if call == 1 else 500)

    (delivery,) = run_.deliveries
    bodies = [backend.get_object("shop-out", key) for key in delivery.objects]
    record_size = max(len(line) for body in bodies for line in body.splitlines(keepends=True))
    assert read_back < 300
    assert max(len(body) for body in bodies) <= 1024 * 1024 + record_size
    total = sum(len(body) for body in bodies)
    assert len(bodies) <= total // (1024 * 1024) + 1  # all but the last one full
    for delivered, held in delivered_by_shard(run_, backend).values():
        assert delivered == held
