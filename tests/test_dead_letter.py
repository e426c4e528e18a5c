import base64
import datetime
import json
import re
import shutil

import pytest
from click.testing import CliRunner
from conftest import MINIMAL, read_stream, timeless
from fakes import PIPELINE, FailingDisk, FaultyBackend, full_disk, with_own_mounts
from moto import mock_aws

from runner import spec
from runner.backends.aws import AwsBackend
from runner.backends.base import BackendError, Record, Throttled
from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.commands import run as run_command
from runner.commands.provision import apply
from runner.loop.dead_letter import DeadLetter, entry, read_entry
from runner.loop.engine import RunOptions
from runner.loop.patience import Patience

ARRIVAL = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.timezone.utc)
WITH_STREAM = (
    MINIMAL.replace("    other:", "    rejects: {name: rejects, shards: 1}\n    other:")
    + "dead_letter: {stream: rejects}\n"
)


def test_entries_go_to_the_declared_stream_and_locally_what_is_too_big_to_the_file(
    write_spec, tmp_path
):
    loaded = spec.load(write_spec(WITH_STREAM))
    backend = LocalBackend(tmp_path / "state")
    backend.create_stream("rejects", 1)
    dead_letter = DeadLetter(loaded, backend, tmp_path / "state")
    small = Record("7", "k1", b"{not json", ARRIVAL)
    huge = Record("8", "k2", b"x" * 900_000, ARRIVAL)  # its base64 copy alone is over 1 MiB
    large = Record("9", "k3", b"x" * 700_000, ARRIVAL)  # fits without its text copy

    dead_letter.add("not JSON: Expecting property name at column 2", "in", "shardId-0", small)
    dead_letter.add("not JSON: Expecting value at column 1", "in", "shardId-0", huge)
    dead_letter.add("not JSON: Expecting value at column 1", "in", "shardId-0", large)
    dead_letter.write()

    entry, compacted = read_stream(backend, "rejects")
    assert (compacted["sequence"], compacted["data"]) == ("9", None)
    assert base64.b64decode(compacted["data_base64"]) == large.data
    assert {k: v for k, v in entry.items() if k != "dead_lettered_at"} == {
        "reason": "not JSON: Expecting property name at column 2",
        "pipeline": "shop",
        "spec_version": spec.version(WITH_STREAM.encode()),  # the one that judged the record
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
        f"3 records: 2 in stream rejects, 1 in {path} (too large for a stream record)"
    )


def test_the_entry_of_a_user_record_of_a_kpl_aggregate_says_its_sub_sequence_number():
    user = Record("7", "k1", b"{not json", ARRIVAL, sub_sequence=3)

    found = entry("not JSON", "shop", "in", "shardId-0", user, "v1")

    assert {k: v for k, v in found.items() if k != "dead_lettered_at"} == {
        "reason": "not JSON",
        "pipeline": "shop",
        "spec_version": "v1",
        "stream": "in",
        "shard": "shardId-0",
        "sequence": "7",
        "sub_sequence": 3,
        "partition_key": "k1",
        "arrival": "2026-11-26T12:00:00+00:00",
        "data": "{not json",
        "data_base64": base64.b64encode(b"{not json").decode(),
    }
    assert list(found)[5:8] == ["sequence", "sub_sequence", "partition_key"]
    plain = entry("not JSON", "shop", "in", "shardId-0", Record("7", "k1", b"{", ARRIVAL))
    assert "sub_sequence" not in plain


def test_an_entry_read_back_keeps_its_sub_sequence_number_in_its_identity():
    lines = [
        json.dumps(entry("not JSON", "shop", "in", "shardId-0", record)).encode()
        for record in (
            Record("7", "k1", b"{", ARRIVAL),
            Record("7", "k1", b"{", ARRIVAL, sub_sequence=0),
            Record("7", "k2", b"[", ARRIVAL, sub_sequence=1),
        )
    ]

    read = [read_entry(line) for line in lines]

    assert [e.record.sub_sequence for e in read] == [None, 0, 1]
    assert [e.identity for e in read] == ["in shardId-0 7", "in shardId-0 7/0", "in shardId-0 7/1"]
    assert read_entry(lines[1].replace(b'"sub_sequence": 0', b'"sub_sequence": "0"')) is None


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
        run_command.run(loaded, backend, state, RunOptions(until_idle=0), lines.append)
        assert lines[:3:2] == [  # the line between says where it starts (test_cli.py)
            "[shop] reading in on the local target (Ctrl-C stops cleanly)",
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

        run_command.run(loaded, backend, tmp_path, RunOptions(until_idle=0), lines.append)

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
    missing = f"bucket shop-rejects not found on the {{}}: run `pipeline apply {loaded.path}` first"
    local = LocalBackend(tmp_path / "state")
    apply(loaded, local, lambda line: None)
    local.delete_bucket("shop-rejects")
    with pytest.raises(BackendError) as caught:
        run_command.check_resources(loaded, local)
    assert str(caught.value) == missing.format(f"local target in {tmp_path / 'state'}")
    with mock_aws():
        backend = AwsBackend("us-east-1", poll_s=0)
        apply(loaded, backend, lambda line: None)
        backend.delete_bucket("shop-rejects")
        with pytest.raises(BackendError) as caught:
            run_command.check_resources(loaded, backend)
        backend.close()
    assert str(caught.value) == missing.format("aws target in us-east-1")


def test_no_checkpoint_moves_past_bad_records_before_their_object_is_written(write_spec, tmp_path):
    loaded = spec.load(write_spec(WITH_BUCKET + "dead_letter: {bucket: rejects}\n"))
    state = tmp_path / "state"
    backend = LocalBackend(state)
    apply(loaded, backend, lambda line: None)
    backend.put_records("in", BAD + GOOD)

    options = RunOptions(until_idle=0)
    full = FaultyBackend(backend, put_object=full_disk)
    with pytest.raises(BackendError, match="disk full"):
        run_command.run(loaded, full, state, options, lambda line: None)
    assert backend.get_checkpoints("shop", "in") == {"shardId-000000000000": "#trim_horizon"}

    run_command.run(loaded, backend, state, options, lambda line: None)

    ((key, entries),) = objects(backend, "shop-rejects").items()
    assert what_and_why(entries) == BAD_ENTRIES
    assert backend.get_checkpoints("shop", "in") == {"shardId-000000000000": "3"}


NO_DEAD_LETTER_ON_AWS = (
    "on the aws target the dead letter must be a stream or a bucket, since the checkpoints "
    "outlive this machine and its state folder: add dead_letter: {bucket: KEY} with a key of "
    "resources.buckets (it holds entries of any size), or dead_letter: {stream: KEY}"
)


def test_an_aws_run_without_a_dead_letter_is_refused_before_it_reads_anything(
    write_spec, tmp_path, aws_env
):
    path = write_spec(MINIMAL)
    loaded = spec.load(path)
    with mock_aws():
        backend = AwsBackend("us-east-1", poll_s=0)
        apply(loaded, backend, lambda line: None)
        backend.put_records("in", BAD + GOOD)
        spy = FaultyBackend(backend)  # no faults: it counts the calls
        with pytest.raises(spec.SpecError) as caught:
            run_command.run(loaded, spy, tmp_path, RunOptions(until_idle=0), print)

        result = CliRunner().invoke(cli, ["run", str(path), "--target", "aws"])

        checkpoints = backend.get_checkpoints("shop", "in")
        backend.close()
    assert str(caught.value) == f"{path}: {NO_DEAD_LETTER_ON_AWS}"
    assert spy.called == {}
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        f"{path}: {NO_DEAD_LETTER_ON_AWS}\n",
    )
    assert checkpoints == {}
    assert not (tmp_path / "dead-letter").exists()


def aws_run_with_a_stream_dead_letter(write_spec, tmp_path, records):
    """Run a spec with a stream dead letter on moto over `records`; (error or None, the
    dead-letter stream's entries, the checkpoints, the run's last line)."""
    loaded = spec.load(write_spec(WITH_STREAM))
    lines = []
    with mock_aws():
        backend = AwsBackend("us-east-1", poll_s=0)
        apply(loaded, backend, lambda line: None)
        backend.put_records("in", records)
        try:
            run_command.run(loaded, backend, tmp_path, RunOptions(until_idle=0), lines.append)
            error = None
        except BackendError as stopped:
            error = str(stopped)
        entries = read_stream(backend, "rejects")
        checkpoints = backend.get_checkpoints("shop", "in")
        backend.close()
    return error, entries, checkpoints, timeless(lines[-1])


def test_on_aws_an_entry_too_large_for_a_stream_record_goes_there_without_its_text_copy(
    write_spec, tmp_path, aws_env
):
    large = b"x" * 700_000  # with its text and base64 copies, over 1 MiB; base64 alone fits

    error, entries, checkpoints, _ = aws_run_with_a_stream_dead_letter(
        write_spec, tmp_path, [*BAD, (large, "k4"), *GOOD]
    )

    assert error is None
    assert [(e["sequence"], e["data"]) for e in entries] == [
        ("1", "{not json"),
        ("2", "[1, 2]"),
        ("3", None),
    ]
    assert base64.b64decode(entries[2]["data_base64"]) == large
    assert entries[2]["reason"] == "not JSON: Expecting value at column 1"
    assert checkpoints == {"shardId-000000000000": "4"}
    assert not (tmp_path / "dead-letter").exists()


def test_on_aws_an_entry_too_large_even_without_its_text_copy_stops_the_run_unmoved(
    write_spec, tmp_path, aws_env
):
    huge = b"x" * 900_000  # its base64 copy alone is over 1 MiB

    error, entries, checkpoints, summary = aws_run_with_a_stream_dead_letter(
        write_spec, tmp_path, [*BAD, (huge, "k4"), *GOOD]
    )

    size = re.search(r" is (\d+) bytes ", error)[1]  # with times of varying length
    assert int(size) > 1024 * 1024
    assert error == (
        f"the dead-letter entry of record 3 (shardId-000000000000 of stream in) is {size} "
        "bytes even without its text copy, too large for a record of stream rejects: declare "
        "a bucket dead letter (dead_letter: {bucket: KEY}), which holds entries of any size, "
        "and run again; no checkpoint moved past this record"
    )
    assert entries == []
    assert summary == (  # counts only what was written
        "[shop] stopped by an error: in 0 | out none | dead-lettered 0 | filtered 0 | "
        "dropped 0 | lag 0 ms"
    )
    assert checkpoints == {"shardId-000000000000": "#trim_horizon"}  # where it started
    assert not (tmp_path / "dead-letter").exists()


# The file on a failing disk


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_a_full_disk_stops_the_run_with_its_summary_and_leaves_no_partial_line(
    write_spec, state, monkeypatch
):
    path = write_spec(MINIMAL)
    file = state / "dead-letter" / "shop.jsonl"
    assert invoke("apply", path).exit_code == 0
    invoke("produce", "--stream", "in", "--raw", "--json", "{first")
    assert invoke("run", path, "--until-idle", "0").exit_code == 0
    before = file.read_bytes()
    invoke("produce", "--stream", "in", "--raw", "--json", "{second")
    disk = FailingDisk(monkeypatch, file.parent, keep=100)  # fills up mid-write

    result = invoke("run", path, "--until-idle", "0")

    assert result.exit_code == 1
    assert result.stderr.splitlines()[-2:] == [
        "[shop] stopped by an error: in 0 | out none | dead-lettered 0 | filtered 0 | "
        "dropped 0 | lag 0 ms",
        f"error: cannot write {file}: No space left on device",
    ]
    assert file.read_bytes() == before

    disk.heal()
    assert invoke("run", path, "--until-idle", "0").exit_code == 0
    entries = [json.loads(line) for line in file.read_bytes().split(b"\n")[:-1]]
    assert [entry["data"] for entry in entries] == ["{first", "{second"]


def test_on_a_really_full_disk_the_file_keeps_whole_lines(write_spec, state, tmp_path):
    path = write_spec(MINIMAL)
    folder = state / "dead-letter"
    assert invoke("apply", path).exit_code == 0
    invoke("produce", "--stream", "in", "--raw", "--json", "{first")
    assert invoke("run", path, "--until-idle", "0").exit_code == 0
    saved = tmp_path / "saved.jsonl"
    shutil.copy(folder / "shop.jsonl", saved)
    big = "{" + "x" * 200_000  # its entry, over 400 KB, does not fit on a 64 KiB disk
    invoke("produce", "--stream", "in", "--raw", "--json", big)

    done = with_own_mounts(
        f"""
        mount -t tmpfs -o size=64k tmpfs {folder} && cp {saved} {folder}/shop.jsonl || exit 9
        {PIPELINE} run {path} --until-idle 0 2> {tmp_path}/full.err
        echo $? > {tmp_path}/full.rc
        cp {folder}/shop.jsonl {tmp_path}/full.jsonl
        mount -o remount,size=8m {folder}
        {PIPELINE} run {path} --until-idle 0 2> {tmp_path}/freed.err
        echo $? > {tmp_path}/freed.rc
        cp {folder}/shop.jsonl {tmp_path}/freed.jsonl
        """
    )

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "full.rc").read_text() == "1\n"
    assert (tmp_path / "full.err").read_text().splitlines()[-2:] == [
        "[shop] stopped by an error: in 0 | out none | dead-lettered 0 | filtered 0 | "
        "dropped 0 | lag 0 ms",
        f"error: cannot write {folder / 'shop.jsonl'}: No space left on device",
    ]
    assert (tmp_path / "full.jsonl").read_bytes() == saved.read_bytes()
    assert (tmp_path / "freed.rc").read_text() == "0\n", (tmp_path / "freed.err").read_text()
    lines = (tmp_path / "freed.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line)["data"] for line in lines[:-1]] == ["{first", big]


def record(sequence, data):
    return Record(sequence, f"k{sequence}", data, ARRIVAL)


def test_a_last_line_cut_short_is_moved_aside_before_whole_entries_are_appended(
    write_spec, tmp_path
):
    state = tmp_path / "state"
    file = state / "dead-letter" / "shop.jsonl"
    file.parent.mkdir(parents=True)
    whole = json.dumps({"reason": "not JSON", "sequence": "1"}).encode() + b"\n"
    file.write_bytes(whole + b'{"reason": "not JS')  # a crash in mid-write
    lines = []
    dead_letter = DeadLetter(
        spec.load(write_spec(MINIMAL)), LocalBackend(state), state, report=lines.append
    )

    dead_letter.add("not JSON", "in", "shardId-0", record("2", b"{two"))
    dead_letter.write()

    first, second = file.read_bytes().splitlines()
    assert first + b"\n" == whole
    assert json.loads(second)["data"] == "{two"
    assert (state / "dead-letter" / "shop.jsonl.partial").read_bytes() == b'{"reason": "not JS\n'
    assert lines == [
        f"the last line of {file} was cut short (18 bytes, by a write that failed); "
        f"moved it to {file}.partial: its records are dead-lettered again, whole"
    ]


def test_a_whole_last_entry_without_its_newline_is_kept(write_spec, tmp_path):
    state = tmp_path / "state"
    file = state / "dead-letter" / "shop.jsonl"
    file.parent.mkdir(parents=True)
    file.write_bytes(b'{"reason": "not JSON", "sequence": "1"}')  # e.g. edited by hand
    dead_letter = DeadLetter(spec.load(write_spec(MINIMAL)), LocalBackend(state), state)

    dead_letter.add("not JSON", "in", "shardId-0", record("2", b"{two"))
    dead_letter.write()

    entries = [json.loads(line) for line in file.read_bytes().split(b"\n")[:-1]]
    assert [entry["sequence"] for entry in entries] == ["1", "2"]
    assert not (state / "dead-letter" / "shop.jsonl.partial").exists()
