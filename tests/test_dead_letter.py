import base64
import datetime
import json

from conftest import MINIMAL, read_stream

from runner import spec
from runner.backends.base import Record
from runner.backends.local import LocalBackend
from runner.dead_letter import DeadLetter

ARRIVAL = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.timezone.utc)


def test_entries_go_to_the_declared_stream_and_what_is_too_big_to_the_file(write_spec, tmp_path):
    loaded = spec.load(
        write_spec(
            MINIMAL.replace("    other:", "    rejects: {name: rejects, shards: 1}\n    other:")
            + "dead_letter: {stream: rejects}\n"
        )
    )
    backend = LocalBackend(tmp_path / "state")
    backend.create_stream("rejects", 1)
    dead_letter = DeadLetter(loaded, backend, tmp_path / "state")
    small = Record("7", "k1", b"{not json", ARRIVAL)
    huge = Record("8", "k2", b"x" * 900_000, ARRIVAL)

    dead_letter.add("not JSON: Expecting property name at column 2", "in", "shardId-0", small)
    dead_letter.add("not JSON: Expecting value at column 1", "in", "shardId-0", huge)
    dead_letter.write()

    (entry,) = read_stream(backend, "rejects")
    assert {k: v for k, v in entry.items() if k != "dead_lettered_at"} == {
        "reason": "not JSON: Expecting property name at column 2",
        "pipeline": "shop",
        "stream": "in",
        "shard": "shardId-0",
        "sequence": "7",
        "partition_key": "k1",
        "arrival": "2026-11-26T12:00:00+00:00",
        "data": "{not json",
        "data_base64": base64.b64encode(b"{not json").decode(),
    }
    path = tmp_path / "state" / "dead-letter" / "shop.jsonl"
    (line,) = path.read_text().splitlines()
    assert json.loads(line)["sequence"] == "8"
    assert dead_letter.summary() == (
        f"2 records: 1 in stream rejects, 1 in {path} (too large for a stream record)"
    )
