"""End to end: the shipped specs, applied, fed and run on the local backend."""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from itertools import islice

from click.testing import CliRunner
from conftest import PIPELINES, REPO, kpl_aggregates, read_stream, removed_state

from runner import spec
from runner.backends.base import is_start_mark
from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.commands import run as run_command
from runner.commands.produce import synthetic_sessions
from runner.loop.engine import RunOptions
from runner.records.processor import encode

ECOMMERCE = str(PIPELINES / "ecommerce.yaml")
SOURCE = "de-c2w2lab1-kinesis-data-stream"
USA = "de-c2w2lab1-usa-data-stream"
INTERNATIONAL = "de-c2w2lab1-international-data-stream"
OBJECT_KEY = re.compile(
    r"firehose/\d{4}/\d\d/\d\d/\d\d/de-c2w2lab1-firehose-(usa|international)-1-"
    r"\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d-[0-9a-f-]{36}"
)


def pipeline(*args, input=None):
    result = CliRunner().invoke(cli, list(args), input=input)
    assert result.exit_code == 0, result.output + result.stderr
    return result


def produce_sessions(count, seed=None):
    """Put `count` synthetic sessions (from `seed`) into the scenario's source stream."""
    seeded = ["--seed", str(seed)] if seed is not None else []
    pipeline(
        "produce",
        "--stream",
        SOURCE,
        "--synthetic",
        "--count",
        str(count),
        "--mean-gap",
        "0",
        *seeded,
    )


def expected(session):
    history = session["browse_history"]
    return {
        **session,
        "overall_product_quantity": sum(item["quantity"] for item in history),
        "overall_in_shopping_cart": sum(i["quantity"] for i in history if i["in_shopping_cart"]),
        "total_different_products": len(history),
    }


def without_time(record):
    return {key: value for key, value in record.items() if key != "processing_timestamp"}


def routed_by_country(backend, sessions):
    """The records in the USA and International streams, each by session_id, once checked
    that they are `sessions`, each with its attributes, in the stream its country says."""
    usa = {r["session_id"]: r for r in read_stream(backend, USA)}
    international = {r["session_id"]: r for r in read_stream(backend, INTERNATIONAL)}
    assert len(usa) + len(international) == len(sessions)
    for session in sessions:
        sink = usa if session["country"] == "USA" else international
        assert without_time(sink[session["session_id"]]) == expected(session)
    return usa, international


def run_until_idle(state, **options):
    loaded = spec.load(ECOMMERCE)
    backend = LocalBackend(state)
    lines = []
    options = RunOptions(until_idle=options.pop("until_idle", 0), **options)
    assert run_command.run(loaded, backend, state, options, lines.append) == 0
    return lines


def test_every_session_reaches_the_right_stream_and_bucket_with_its_attributes(state):
    pipeline("apply", ECOMMERCE)
    produce_sessions(600, seed=3)
    sessions = list(islice(synthetic_sessions(3), 600))

    lines = run_until_idle(state)

    backend = LocalBackend(state)
    usa, international = routed_by_country(backend, sessions)
    for record in [*usa.values(), *international.values()]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*\+00:00", record["processing_timestamp"])
    for bucket, routed in (
        ("de-c2w2lab1-000000000000-usa", usa),
        ("de-c2w2lab1-000000000000-int", international),
    ):
        delivered = []
        for key in backend.list_objects(bucket):
            assert OBJECT_KEY.fullmatch(key), key
            body = backend.get_object(bucket, key).decode()
            assert body.endswith("\n")
            delivered += [json.loads(line) for line in body.splitlines()]
        assert {r["session_id"]: r for r in delivered} == routed
        assert len(delivered) == len(routed)
    assert lines[-3].startswith(
        f"[de-c2w2lab1-etl] done: in 600 | out international {len(international)}, "
        f"usa {len(usa)} | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms"
    )


def test_bad_records_go_to_the_dead_letter_while_good_ones_flow_on(state):
    pipeline("apply", ECOMMERCE)
    good = next(synthetic_sessions(1))
    backend = LocalBackend(state)
    backend.put_records(
        SOURCE,
        [
            (json.dumps(good).encode(), "a"),
            (b"\xff\xfe not utf-8", "b"),
            (b"{not json", "c"),
            (b"[1, 2]", "d"),
            (b'{"country": 5, "session_id": "x"}', "e"),
            (b'{"session_id": "n", "x": NaN}', "g"),
            (json.dumps({**good, "session_id": "last"}).encode(), "f"),
        ],
    )

    lines = run_until_idle(state)

    routed = read_stream(backend, USA) + read_stream(backend, INTERNATIONAL)
    assert sorted(r["session_id"] for r in routed) == sorted([good["session_id"], "last"])
    bucket = "de-c2w2lab1-000000000000-dead-letter"
    (key,) = backend.list_objects(bucket)
    entries = [json.loads(line) for line in backend.get_object(bucket, key).splitlines()]
    assert [(e["reason"].split(":")[0], e["partition_key"], e["stream"]) for e in entries] == [
        ("not UTF-8", "b", SOURCE),
        ("not JSON", "c", SOURCE),
        ("not a JSON object", "d", SOURCE),
        ("transform[0].set.overall_product_quantity", "e", SOURCE),
        ("not JSON", "g", SOURCE),
    ]
    assert entries[4]["reason"] == "not JSON: NaN is not a JSON value"
    assert entries[0]["data"] is None and entries[0]["data_base64"] == "//4gbm90IHV0Zi04"
    assert entries[1]["data"] == "{not json"
    assert all(e["shard"] == "shardId-000000000000" and e["sequence"].isdigit() for e in entries)
    assert key.startswith("dead-letter/")
    assert lines[-1] == (
        f"[de-c2w2lab1-etl] dead letter: 5 records in 1 object in bucket {bucket} under "
        "dead-letter/"
    )


def kpl_sessions(count, per_aggregate, seed):
    """`count` synthetic sessions packed `per_aggregate` to a record by the official KPL
    aggregation library, keyed by session_id; returns (sessions, aggregates)."""
    sessions = list(islice(synthetic_sessions(seed), count))
    entries = [(encode(session), session["session_id"]) for session in sessions]
    aggregates = [
        aggregate
        for start in range(0, count, per_aggregate)
        for aggregate in kpl_aggregates(entries[start : start + per_aggregate])
    ]
    return sessions, aggregates


def test_kpl_aggregates_are_routed_record_by_record_and_a_corrupt_one_dead_lettered_whole(state):
    pipeline("apply", ECOMMERCE)
    sessions, aggregates = kpl_sessions(600, 12, seed=5)
    corrupt = aggregates[0][:40] + bytes([aggregates[0][40] ^ 0x20]) + aggregates[0][41:]
    assert len(aggregates) == 50
    backend = LocalBackend(state)
    put = backend.put_records(SOURCE, [(data, "agg") for data in [*aggregates, corrupt]])

    lines = run_until_idle(state)

    usa, international = routed_by_country(backend, sessions)
    (done,) = [line for line in lines if " done: " in line]
    assert done.startswith(
        f"[de-c2w2lab1-etl] done: in 601 | out international {len(international)}, "
        f"usa {len(usa)} | dead-lettered 1 | filtered 0 | dropped 0 | lag 0 ms"
    )
    bucket = "de-c2w2lab1-000000000000-dead-letter"
    (key,) = backend.list_objects(bucket)
    (entry,) = [json.loads(line) for line in backend.get_object(bucket, key).splitlines()]
    assert entry["reason"] == (
        f"KPL aggregate: bad MD5 checksum of its {len(corrupt) - 20} protobuf bytes "
        "(corrupt or cut short)"
    )
    assert (entry["sequence"], entry["partition_key"]) == (put[-1].sequence, "agg")
    assert base64.b64decode(entry["data_base64"]) == corrupt


def test_a_run_continues_after_its_checkpoint(state):
    pipeline("apply", ECOMMERCE)
    produce_sessions(50)
    first = run_until_idle(state, max_records=20)
    backend = LocalBackend(state)
    assert len(read_stream(backend, USA) + read_stream(backend, INTERNATIONAL)) == 20
    second = run_until_idle(state)
    assert len(read_stream(backend, USA) + read_stream(backend, INTERNATIONAL)) == 50
    assert first[:2] == [
        f"[de-c2w2lab1-etl] reading {SOURCE} on the local target (Ctrl-C stops cleanly)",
        "[de-c2w2lab1-etl] no checkpoints for pipeline de-c2w2lab1-etl: starting at trim_horizon",
    ]
    assert second[1] == "[de-c2w2lab1-etl] resuming from checkpoints of 1 shard"


def test_consume_prints_what_the_run_wrote(state):
    pipeline("apply", ECOMMERCE)
    sample = (PIPELINES / "samples" / "session.json").read_text().strip()
    pipeline("produce", "--stream", SOURCE, "--json", sample)
    run_until_idle(state)

    result = pipeline("consume", "--stream", USA, "--no-follow", "--jsonl")

    (line,) = result.stdout.splitlines()
    printed = json.loads(line)
    assert set(printed) == {"shard", "sequence", "partition_key", "arrival", "data"}
    assert printed["partition_key"] == "a1"
    assert without_time(printed["data"]) == expected(json.loads(sample))


def test_the_plain_producer_and_consumer_part(state):
    pipeline("apply", str(PIPELINES / "cli-router.yaml"))
    stream = "de-c2w2lab1-kinesis-data-stream-cli"
    pipeline("produce", "--stream", stream, "--json", '{"session_id": "s1", "n": 1}')
    pipeline("produce", "--stream", stream, "--json", '{"session_id": "s2", "n": 2}')

    result = pipeline("consume", "--stream", stream, "--no-follow")

    first, second = result.stdout.splitlines()
    match = re.fullmatch(
        r"shardId-000000000000 (\d+) key=s1: \{\"session_id\":\"s1\",\"n\":1\}", first
    )
    assert match, first
    assert re.fullmatch(r"shardId-000000000000 (\d+) key=s2: .*", second)
    after = pipeline(
        "consume",
        "--stream",
        stream,
        "--no-follow",
        "--shard",
        "shardId-000000000000",
        "--from",
        f"after_sequence_number:{match.group(1)}",
    )
    assert after.stdout.splitlines() == [second]


def start_run(processes, state, *args):
    """`pipeline run` of the scenario in a process of its own, ended when the test ends."""
    env = {**os.environ, "PIPELINE_STATE_DIR": str(state)}
    return processes.start(
        [sys.executable, "-m", "runner", "run", ECOMMERCE, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def checkpointed(backend):
    """Whether the run checkpointed a record (not only where it started reading)."""
    checkpoints = backend.get_checkpoints("de-c2w2lab1-etl", SOURCE).values()
    return any(not is_start_mark(checkpoint) for checkpoint in checkpoints)


def test_a_run_killed_mid_stream_loses_nothing_when_started_again(state, processes):
    pipeline("apply", ECOMMERCE)
    total = 40_000  # four GetRecords batches: the kill lands after the first
    produce_sessions(total, seed=5)
    backend = LocalBackend(state)
    run = start_run(processes, state)
    wait_for(lambda: checkpointed(backend))
    run.send_signal(signal.SIGKILL)
    run.wait()
    written = len(read_stream(backend, USA) + read_stream(backend, INTERNATIONAL))
    assert 0 < written < total, "the kill should land mid-stream"

    run_until_idle(state)  # started again

    routed = {
        r["session_id"] for r in read_stream(backend, USA) + read_stream(backend, INTERNATIONAL)
    }
    assert routed == {s["session_id"] for s in islice(synthetic_sessions(5), total)}


def bucket_records(backend, name):
    """How many records the objects of the scenario's bucket `name` (usa, int) hold."""
    bucket = f"de-c2w2lab1-000000000000-{name}"
    return sum(
        len(backend.get_object(bucket, key).splitlines()) for key in backend.list_objects(bucket)
    )


def test_sigterm_stops_cleanly_with_a_summary(state, processes):
    pipeline("apply", ECOMMERCE)
    produce_sessions(10)
    run = start_run(processes, state)
    backend = LocalBackend(state)
    wait_for(lambda: checkpointed(backend))
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 0
    stderr = run.stderr.read()
    assert "[de-c2w2lab1-etl] done: in 10 |" in stderr
    assert "Traceback" not in stderr
    assert bucket_records(backend, "usa") + bucket_records(backend, "int") == 10


def test_ctrl_c_mid_burst_delivers_every_record_the_run_routed(state, processes):
    pipeline("apply", ECOMMERCE)
    produce_sessions(30_000, seed=9)  # three source reads: Ctrl-C lands while they flow
    run = start_run(processes, state)
    backend = LocalBackend(state)
    wait_for(lambda: checkpointed(backend))
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 0
    summary = re.search(r"done: in \d+ \| out international (\d+), usa (\d+) \|", run.stderr.read())

    routed = {"int": int(summary.group(1)), "usa": int(summary.group(2))}
    assert {name: bucket_records(backend, name) for name in routed} == routed
    assert 0 < sum(routed.values()) < 30_000, "the Ctrl-C should land mid-burst"


def test_a_run_stops_with_one_line_when_its_state_folder_is_removed(state, processes):
    pipeline("apply", ECOMMERCE)
    produce_sessions(10)
    run = start_run(processes, state)
    wait_for(lambda: LocalBackend(state).get_checkpoints("de-c2w2lab1-etl", SOURCE))
    shutil.rmtree(state)  # `rm -rf .pipeline` while it runs

    assert run.wait(timeout=30) == 1
    assert run.stderr.read().splitlines()[-1] == f"error: {removed_state(state)}"


def test_a_second_run_of_the_same_pipeline_is_refused_while_one_runs(state, processes):
    pipeline("apply", ECOMMERCE)
    produce_sessions(10)
    first = start_run(processes, state)
    backend = LocalBackend(state)
    wait_for(lambda: backend.get_checkpoints("de-c2w2lab1-etl", SOURCE))

    second = CliRunner().invoke(cli, ["run", ECOMMERCE, "--until-idle", "1"])

    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    assert second.exit_code == 1
    assert second.stderr == (
        f"error: pipeline de-c2w2lab1-etl is already running on {state} "
        f"({socket.gethostname()} pid {first.pid}); "
        "two runs at once would write every record twice\n"
    )
