import base64
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import REPO, kpl_aggregates

from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.commands.consume import consume
from runner.spec.position import Position

STREAM = "events"


@pytest.fixture
def backend(state):
    backend = LocalBackend(state)
    backend.create_stream(STREAM, 2)
    yield backend
    backend.close()


def put(backend, *entries):
    """Put (data, key) entries; returns (shard id, sequence) of each."""
    results = backend.put_records(STREAM, [(data, key) for data, key in entries])
    return [(r.shard_id, r.sequence) for r in results]


def pipeline(*args):
    return CliRunner().invoke(cli, ["consume", *args], prog_name="pipeline")


def arrivals(backend):
    """sequence -> arrival time, as the backend recorded it."""
    times = {}
    for shard in backend.list_shards(STREAM):
        iterator = backend.get_shard_iterator(STREAM, shard.shard_id, "TRIM_HORIZON")
        times.update({r.sequence: r.arrival for r in backend.get_records(iterator).records})
    return times


# --from (parse_position's forms are in test_position.py)


EXPECTED_FORMS = (
    "expected trim_horizon, latest, at_timestamp:ISO, at_sequence_number:SEQ or "
    "after_sequence_number:SEQ"
)


def test_a_bad_from_exits_2_on_the_command_line(backend):
    result = pipeline("--stream", STREAM, "--from", "yesterday", "--no-follow")

    assert result.exit_code == 2
    assert result.stderr == (
        "Usage: pipeline consume [OPTIONS]\n"
        "Try 'pipeline consume --help' for help.\n"
        "\n"
        f"Error: Invalid value for '--from': 'yesterday': {EXPECTED_FORMS}\n"
    )


def test_a_sequence_number_without_a_shard_exits_2(backend):
    result = pipeline("--stream", STREAM, "--from", "at_sequence_number:1", "--no-follow")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.endswith(
        "\nError: --from with a sequence number needs --shard: they are per shard\n"
    )


# Printing


def test_no_follow_prints_every_shards_records_and_stops(backend):
    written = put(
        backend,
        (b'{"session_id":"a"}\n', "a"),
        (b'{"session_id":"b"}\n', "b"),
        (b'{"session_id":"c"}\n', "c"),
        (b"plain words", "d"),
    )
    assert {shard for shard, _ in written} == {"shardId-000000000000", "shardId-000000000001"}

    result = pipeline("--stream", STREAM, "--no-follow")

    assert result.exit_code == 0, result.output
    lines = {
        "a": '{"session_id":"a"}',
        "b": '{"session_id":"b"}',
        "c": '{"session_id":"c"}',
        "d": "plain words",
    }
    expected = sorted(
        (shard, int(sequence), f"{shard} {sequence} key={key}: {lines[key]}")
        for (shard, sequence), key in zip(written, "abcd", strict=True)
    )
    assert result.stdout == "".join(line + "\n" for _, _, line in expected)
    assert result.stderr == ""


def test_jsonl_prints_one_object_per_record(backend):
    written = put(backend, (b'{"session_id":"a","n":1}\n', "a"), (b"not json {", "b"))
    arrived = arrivals(backend)

    result = pipeline("--stream", STREAM, "--no-follow", "--jsonl")

    assert result.exit_code == 0, result.output
    printed = sorted(
        (json.loads(line) for line in result.stdout.splitlines()),
        key=lambda record: int(record["sequence"]),
    )
    assert printed == [
        {
            "shard": written[0][0],
            "sequence": written[0][1],
            "partition_key": "a",
            "arrival": arrived[written[0][1]].isoformat(),
            "data": {"session_id": "a", "n": 1},
        },
        {
            "shard": written[1][0],
            "sequence": written[1][1],
            "partition_key": "b",
            "arrival": arrived[written[1][1]].isoformat(),
            "data": "not json {",
        },
    ]
    assert list(printed[0]) == ["shard", "sequence", "partition_key", "arrival", "data"]


# KPL aggregates: printed as their user records


def test_an_aggregate_is_printed_as_its_user_records_with_their_sub_sequence(backend):
    (aggregate,) = kpl_aggregates([(b'{"session_id":"a"}', "a"), (b'{"session_id":"b"}', "b")])
    ((shard, sequence),) = put(backend, (aggregate, "a"))

    result = pipeline("--stream", STREAM, "--no-follow")

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f'{shard} {sequence}/0 key=a: {{"session_id":"a"}}\n'
        f'{shard} {sequence}/1 key=b: {{"session_id":"b"}}\n'
    )


def test_jsonl_shows_each_user_record_of_an_aggregate_with_its_sub_sequence(backend):
    (aggregate,) = kpl_aggregates([(b'{"n": 1}', "a"), (b"not json", "b")])
    ((shard, sequence), (_, plain)) = put(backend, (aggregate, "a"), (b'{"n": 3}', "a"))
    arrived = arrivals(backend)[sequence].isoformat()

    result = pipeline("--stream", STREAM, "--no-follow", "--jsonl")

    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert printed == [
        {
            "shard": shard,
            "sequence": sequence,
            "sub_sequence": 0,
            "partition_key": "a",
            "arrival": arrived,
            "data": {"n": 1},
        },
        {
            "shard": shard,
            "sequence": sequence,
            "sub_sequence": 1,
            "partition_key": "b",
            "arrival": arrived,
            "data": "not json",
        },
        {
            "shard": shard,
            "sequence": plain,
            "partition_key": "a",
            "arrival": arrivals(backend)[plain].isoformat(),
            "data": {"n": 3},
        },
    ]
    assert list(printed[0])[:4] == ["shard", "sequence", "sub_sequence", "partition_key"]


def test_a_corrupt_aggregate_is_printed_whole_and_said_so(backend):
    (aggregate,) = kpl_aggregates([(b"{}", "a")])
    corrupt = aggregate[:-1] + bytes([aggregate[-1] ^ 1])
    ((shard, sequence),) = put(backend, (corrupt, "a"))
    said = []

    out = io.StringIO()
    printed = consume(backend, STREAM, Position(), out, follow=False, jsonl=True, say=said.append)

    assert printed == 1
    assert json.loads(out.getvalue())["data"] == corrupt.decode("utf-8", errors="replace")
    assert said == [
        f"{shard} {sequence}: KPL aggregate: bad MD5 checksum of its 11 protobuf bytes "
        "(corrupt or cut short): printed whole"
    ]


def test_jsonl_keeps_text_that_is_not_utf8_readable(backend):
    put(backend, (b"caf\xe9 \xff", "a"))

    result = pipeline("--stream", STREAM, "--no-follow", "--jsonl")

    printed = json.loads(result.stdout)
    assert printed["data"] == "caf\ufffd \ufffd"
    assert base64.b64decode(printed["data_base64"]) == b"caf\xe9 \xff"  # the bytes, whole


def test_from_latest_without_follow_prints_nothing(backend):
    put(backend, (b"old", "a"), (b"older", "b"))

    result = pipeline("--stream", STREAM, "--from", "latest", "--no-follow")

    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


def test_one_shard_from_a_sequence_number(backend):
    written = put(backend, *[(f"r{i}".encode(), "same-key") for i in range(4)])
    shard = written[0][0]

    result = pipeline(
        "--stream",
        STREAM,
        "--no-follow",
        "--shard",
        shard,
        "--from",
        f"at_sequence_number:{written[2][1]}",
    )

    assert result.stdout == (
        f"{shard} {written[2][1]} key=same-key: r2\n{shard} {written[3][1]} key=same-key: r3\n"
    )


def test_a_missing_stream_or_shard_exits_1(backend):
    missing = pipeline("--stream", "nowhere", "--no-follow")
    no_shard = pipeline("--stream", STREAM, "--shard", "shardId-000000000009", "--no-follow")

    assert (missing.exit_code, missing.stderr) == (
        1,
        f"error: stream 'nowhere' not found on the local target in {backend.state_dir} "
        "(--stream takes the stream's own name, not its key in a spec; `pipeline apply SPEC` "
        "creates it)\n",
    )
    assert (no_shard.exit_code, no_shard.stderr) == (
        1,
        f"error: stream '{STREAM}' has no shard 'shardId-000000000009' "
        "(shards: shardId-000000000000, shardId-000000000001)\n",
    )


class Stop(Exception):
    pass


def test_following_prints_records_as_they_arrive(backend):
    put(backend, (b"first", "a"))
    out = io.StringIO()
    naps = []

    def sleep(seconds):
        naps.append(seconds)
        if len(naps) == 1:
            put(backend, (b"second", "a"))
        if "second" in out.getvalue():
            raise Stop
        time.sleep(seconds)

    with pytest.raises(Stop):
        consume(backend, STREAM, Position(), out, sleep=sleep)

    assert [line.rsplit(": ", 1)[1] for line in out.getvalue().splitlines()] == [
        "first",
        "second",
    ]


def test_following_an_empty_stream_says_once_that_it_waits(backend):
    said, naps = [], []

    def sleep(seconds):
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt  # Ctrl-C

    printed = consume(backend, STREAM, Position(), io.StringIO(), sleep=sleep, say=said.append)
    assert printed == 0
    assert said == ["waiting for records on 2 shards (Ctrl-C stops)"]


def test_consume_on_the_command_line_says_it_waits_on_stderr(backend, state, processes):
    command = [sys.executable, "-m", "runner", "consume", "--stream", STREAM]
    command += ["--shard", "shardId-000000000001"]
    consumer = processes.start(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    said = consumer.stderr.readline()
    consumer.send_signal(signal.SIGINT)
    out, rest = consumer.communicate(timeout=30)

    assert said == "waiting for records on 1 shard (Ctrl-C stops)\n"
    assert (consumer.returncode, out, rest) == (0, "", "")


def test_jsonl_prints_data_too_deep_or_not_json_as_text(backend):
    deep = b"[" * 5000 + b"]" * 5000
    backend.put_records(STREAM, [(deep, "k1"), (b'{"x": NaN}', "k2")])

    result = CliRunner().invoke(cli, ["consume", "--stream", STREAM, "--no-follow", "--jsonl"])

    assert result.exit_code == 0, result.output
    printed = sorted(json.loads(line)["data"] for line in result.stdout.splitlines())
    assert printed == sorted([deep.decode(), '{"x": NaN}'])


def test_jsonl_prints_a_lone_surrogate_escaped_instead_of_failing(backend):
    backend.put_records(STREAM, [(b'{"name": "\\ud83d"}', "k1")])

    result = CliRunner().invoke(cli, ["consume", "--stream", STREAM, "--no-follow", "--jsonl"])

    assert result.exit_code == 0, result.output
    assert '"data": {"name": "\\ud83d"}' in result.stdout


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a full disk")
def test_output_to_a_full_disk_is_one_line(backend):
    put(backend, (b'{"n": 1}', "a"))
    command = [sys.executable, "-m", "runner", "consume", "--stream", STREAM, "--no-follow"]

    with open("/dev/full", "w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True)

    assert (done.returncode, done.stderr) == (
        1,
        "error: cannot write standard output: No space left on device\n",
    )
