import base64
import datetime
import json
import re

import pytest
from click.testing import CliRunner
from conftest import MINIMAL, read_stream
from moto import mock_aws

from runner import engine, spec
from runner.backends.aws import AwsBackend
from runner.backends.base import BackendError, Record, Throttled
from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.dead_letter import DeadLetter
from runner.patience import Patience
from runner.provision import apply

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


WITH_BUCKET = MINIMAL.replace(
    "source:\n  stream", "  buckets:\n    rejects: {name: shop-rejects}\nsource:\n  stream"
)
KEY = re.compile(
    r"dead-letter/(\d{4}/\d\d/\d\d/\d\d)/shop-1-(\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d)-[0-9a-f-]{36}"
)
BAD = [(b"{not json", "k1"), (b"[1, 2]", "k2")]
GOOD = [(b'{"session_id": "a", "country": "USA"}', "k3")]
BAD_ENTRIES = [
    {
        "reason": "not JSON: Expecting property name enclosed in double quotes at column 2",
        "data": "{not json",
        "data_base64": "e25vdCBqc29u",
    },
    {"reason": "not a JSON object: got an array", "data": "[1, 2]", "data_base64": "WzEsIDJd"},
]


def objects(backend, bucket):
    """{key: [entry, ...]} for every object in the bucket, each line parsed."""
    return {
        key: [json.loads(line) for line in backend.get_object(bucket, key).splitlines()]
        for key in backend.list_objects(bucket)
    }


def what_and_why(entries):
    return [{k: e[k] for k in ("reason", "data", "data_base64")} for e in entries]


def test_with_a_bucket_each_write_is_one_json_lines_object_keyed_like_firehose(
    write_spec, tmp_path
):
    loaded = spec.load(write_spec(WITH_BUCKET + "dead_letter: {bucket: rejects}\n"))
    backend = LocalBackend(tmp_path / "state")
    backend.create_bucket("shop-rejects")
    moments = iter([ARRIVAL, ARRIVAL + datetime.timedelta(hours=1, seconds=5)])
    dead_letter = DeadLetter(loaded, backend, tmp_path / "state", now=lambda: next(moments))
    small = Record("7", "k1", b"{not json", ARRIVAL)
    huge = Record("8", "k2", b"x" * 900_000, ARRIVAL)  # too large for a stream record

    dead_letter.add("not JSON: Expecting property name at column 2", "in", "shardId-0", small)
    dead_letter.add("not JSON: Expecting value at column 1", "in", "shardId-0", huge)
    dead_letter.write()
    dead_letter.add("not JSON: Expecting value at column 1", "in", "shardId-0", small)
    dead_letter.write()
    dead_letter.write()  # nothing added since: no object

    written = objects(backend, "shop-rejects")
    first, second = written
    assert [KEY.fullmatch(key).groups() for key in written] == [
        ("2026/11/26/12", "2026-11-26-12-00-00"),
        ("2026/11/26/13", "2026-11-26-13-00-05"),
    ]
    assert [(e["sequence"], e["data_base64"]) for e in written[first]] == [
        ("7", base64.b64encode(b"{not json").decode()),
        ("8", base64.b64encode(b"x" * 900_000).decode()),
    ]
    assert [e["sequence"] for e in written[second]] == ["7"]
    assert not (tmp_path / "state" / "dead-letter").exists()
    assert dead_letter.summary() == (
        "3 records in 2 objects in bucket shop-rejects under dead-letter/"
    )


def test_a_bucket_that_cannot_be_reached_for_a_while_is_waited_for(write_spec, tmp_path):
    loaded = spec.load(write_spec(WITH_BUCKET + "dead_letter: {bucket: rejects}\n"))
    backend = LocalBackend(tmp_path / "state")
    backend.create_bucket("shop-rejects")
    put_object = backend.put_object
    tries = []

    def unreachable_twice(bucket, key, body):
        tries.append(key)
        if len(tries) <= 2:
            raise Throttled(f"bucket '{bucket}': Could not connect to the endpoint URL")
        put_object(bucket, key, body)

    backend.put_object = unreachable_twice
    waits = []
    dead_letter = DeadLetter(
        loaded, backend, tmp_path / "state", patience=Patience(sleep=waits.append)
    )

    dead_letter.add("not JSON", "in", "shardId-0", Record("7", "k1", b"{not json", ARRIVAL))
    dead_letter.write()

    (entries,) = objects(backend, "shop-rejects").values()
    assert [e["sequence"] for e in entries] == ["7"]
    assert len(set(tries)) == 1 and waits == [0.05, 0.1]  # the same object, tried again


def test_the_run_says_at_start_where_the_dead_letter_goes(write_spec, tmp_path):
    state = tmp_path / "state"
    places = {
        "": f"file {state / 'dead-letter' / 'shop.jsonl'}",
        "dead_letter: {stream: other}\n": "stream other-out",
        "dead_letter: {bucket: rejects}\n": "bucket shop-rejects under dead-letter/",
        "dead_letter: {bucket: rejects, prefix: ''}\n": "bucket shop-rejects",
    }
    backend = LocalBackend(state)
    for text, where in places.items():
        loaded = spec.load(write_spec(WITH_BUCKET + text))
        apply(loaded, backend, lambda line: None)
        lines = []
        engine.run(loaded, backend, state, engine.RunOptions(until_idle=0), lines.append)
        assert lines[:3] == [
            "[shop] reading in on the local target (Ctrl-C stops cleanly)",
            "[shop] no checkpoints for pipeline shop: starting at trim_horizon",
            f"[shop] dead letter: {where}",
        ]


def test_a_local_run_puts_bad_records_in_an_object_of_the_bucket_folder(write_spec, state):
    path = write_spec(WITH_BUCKET + "dead_letter: {bucket: rejects}\n")
    records = state.parent / "records.jsonl"
    records.write_bytes(b"".join(data + b"\n" for data, _ in BAD + GOOD))
    for command in (["apply", path], ["produce", "--stream", "in", "--raw", "--file", records]):
        assert CliRunner().invoke(cli, list(map(str, command))).exit_code == 0

    result = CliRunner().invoke(cli, ["run", str(path), "--until-idle", "0"])

    assert result.exit_code == 0, result.output
    folder = state / "buckets" / "shop-rejects"
    (written,) = [file for file in folder.rglob("*") if file.is_file()]
    assert KEY.fullmatch(written.relative_to(folder).as_posix())
    entries = [json.loads(line) for line in written.read_text().splitlines()]
    assert what_and_why(entries) == BAD_ENTRIES
    assert [e["partition_key"] for e in entries] == ["line 1", "line 2"]
    output = result.output.splitlines()
    assert output[2] == "[shop] dead letter: bucket shop-rejects under dead-letter/"
    assert output[-1] == (
        "[shop] dead letter: 2 records in 1 object in bucket shop-rejects under dead-letter/"
    )


def test_an_aws_run_puts_bad_records_in_an_object_of_the_bucket(write_spec, tmp_path, aws_env):
    loaded = spec.load(write_spec(WITH_BUCKET + "dead_letter: {bucket: rejects, prefix: dl/}\n"))
    with mock_aws():
        backend = AwsBackend("us-east-1", poll_s=0)
        apply(loaded, backend, lambda line: None)
        backend.put_records("in", BAD + GOOD)
        lines = []

        engine.run(loaded, backend, tmp_path, engine.RunOptions(until_idle=0), lines.append)

        written = objects(backend, "shop-rejects")
        backend.close()
    ((key, entries),) = written.items()
    assert re.fullmatch(KEY.pattern.replace("dead-letter/", "dl/"), key)
    assert what_and_why(entries) == BAD_ENTRIES
    assert lines[2] == "[shop] dead letter: bucket shop-rejects under dl/"
    assert lines[-1] == "[shop] dead letter: 2 records in 1 object in bucket shop-rejects under dl/"
    assert not (tmp_path / "dead-letter").exists()


def test_a_run_needs_the_dead_letter_bucket_on_either_target(write_spec, tmp_path, aws_env):
    loaded = spec.load(write_spec(WITH_BUCKET + "dead_letter: {bucket: rejects}\n"))
    missing = (
        "bucket shop-rejects not found on the {} target: "
        f"run `pipeline apply {loaded.path}` first"
    )
    local = LocalBackend(tmp_path / "state")
    apply(loaded, local, lambda line: None)
    local.delete_bucket("shop-rejects")
    with pytest.raises(BackendError) as caught:
        engine.check_resources(loaded, local)
    assert str(caught.value) == missing.format("local")
    with mock_aws():
        backend = AwsBackend("us-east-1", poll_s=0)
        apply(loaded, backend, lambda line: None)
        backend.delete_bucket("shop-rejects")
        with pytest.raises(BackendError) as caught:
            engine.check_resources(loaded, backend)
        backend.close()
    assert str(caught.value) == missing.format("aws")


def test_no_checkpoint_moves_past_bad_records_before_their_object_is_written(write_spec, tmp_path):
    loaded = spec.load(write_spec(WITH_BUCKET + "dead_letter: {bucket: rejects}\n"))
    state = tmp_path / "state"
    backend = LocalBackend(state)
    apply(loaded, backend, lambda line: None)
    backend.put_records("in", BAD + GOOD)

    class FailingWrites:
        def __getattr__(self, name):
            return getattr(backend, name)

        def put_object(self, bucket, key, body):
            raise BackendError(f"cannot write object '{key}' to bucket '{bucket}': disk full")

    options = engine.RunOptions(until_idle=0)
    with pytest.raises(BackendError, match="disk full"):
        engine.run(loaded, FailingWrites(), state, options, lambda line: None)
    assert backend.get_checkpoints("shop", "in") == {}

    engine.run(loaded, backend, state, options, lambda line: None)

    ((key, entries),) = objects(backend, "shop-rejects").items()
    assert what_and_why(entries) == BAD_ENTRIES
    assert backend.get_checkpoints("shop", "in") == {"shardId-000000000000": "3"}
