"""`pipeline status`: shards, checkpoints, lag, who runs the pipeline, the dead letter and the
spec version, end to end through the CLI on both targets."""

import datetime
import hashlib
import json
import os
import re
import socket

import pytest
from conftest import SHOP, SHOP_WITH_BUCKET, TO_BUCKET, CliTarget, sessions, shop_applied
from moto import mock_aws

from runner.backends.local import LocalBackend

TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\+00:00| UTC)")


def status(target: CliTarget, path, *options):
    done = target.invoke("status", str(path), *options)
    assert done.exit_code == 0, done.output
    return done.stdout


def timeless(found):
    """The status with its times of day (and on AWS its lag in ms) as <time> (and <ms>)."""
    if isinstance(found, dict):
        return {key: "<ms>" if key == "millis" else timeless(value) for key, value in found.items()}
    if isinstance(found, list):
        return [timeless(value) for value in found]
    if isinstance(found, str):
        return TIME.sub("<time>", found)
    return found


def version(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_status_after_a_run_shows_each_shard_the_dead_letter_and_the_spec_version(
    cli_target, tmp_path
):
    path = shop_applied(cli_target, tmp_path)
    backend = cli_target.backend()
    put = backend.put_records("shop-in", [*sessions("a", "b", "c", "d"), (b"not json", "x")])
    ran = cli_target.invoke("run", str(path), "--until-idle", "0")
    assert ran.exit_code == 0, ran.output
    later = backend.put_records("shop-in", sessions("e", "f", "g"))
    shards = [shard.shard_id for shard in backend.list_shards("shop-in")]
    last = {result.shard_id: result.sequence for result in put}
    assert sorted(last) == shards  # both shards were read
    ran_version = version(path)

    found = json.loads(status(cli_target, path, "--json"))

    def behind(shard):
        if cli_target.name == "local":
            return {"records": sum(result.shard_id == shard for result in later)}
        return {"millis": "<ms>"}

    assert timeless(found) == {
        "pipeline": "shop",
        "target": backend.location,
        "stream": "shop-in",
        "shards": [
            {
                "shard": shard,
                "open": True,
                "checkpoint": last[shard],
                "starts_at": None,
                "behind": behind(shard),
                "checkpointed_at": "<time>",
            }
            for shard in shards
        ],
        "checkpoints_error": None,
        "running": None,
        "dead_letter": [{"where": "stream shop-rejects", "entries": 1}],
        "spec": {
            "path": str(path),
            "version": ran_version,
            "last_run": {"version": ran_version, "recorded_at": "<time>"},
            "differs": False,
        },
        "lambda": None,  # `pipeline run` runs it, not Lambda
    }

    path.write_text(SHOP + "# edited after the run\n")
    edited = json.loads(status(cli_target, path, "--json"))["spec"]
    assert timeless(edited) == {
        "path": str(path),
        "version": version(path),
        "last_run": {"version": ran_version, "recorded_at": "<time>"},
        "differs": True,
    }
    assert version(path) != ran_version

    lag = [
        f"{sum(result.shard_id == shard for result in later)} records"
        if cli_target.name == "local"
        else f"{found['shards'][number]['behind']['millis']} ms"
        for number, shard in enumerate(shards)
    ]
    width = max(len("behind"), *map(len, lag))
    assert timeless(status(cli_target, path)).splitlines() == [
        f"pipeline shop on {backend.location}",
        "source: stream shop-in, 2 shards",
        f"  shard                 state  checkpoint  {'behind'.ljust(width)}  checkpointed",
        f"  {shards[0]}  open   {last[shards[0]]:<10}  {lag[0].ljust(width)}  <time>",
        f"  {shards[1]}  open   {last[shards[1]]:<10}  {lag[1].ljust(width)}  <time>",
        "run: not running",
        "dead letter: stream shop-rejects: 1 entry",
        f"spec: {path} differs from what the last run used: version {version(path)} on disk, "
        f"{ran_version} used since <time>",
    ]


def test_status_before_any_run_says_where_each_shard_will_start(cli_target, tmp_path):
    latest = SHOP.replace("{stream: source}", "{stream: source, start: latest}")
    path = shop_applied(cli_target, tmp_path, latest)

    found = json.loads(status(cli_target, path, "--json"))

    assert [(s["checkpoint"], s["starts_at"], s["checkpointed_at"]) for s in found["shards"]] == [
        (None, "latest", None),
        (None, "latest", None),
    ]
    assert found["spec"] == {
        "path": str(path),
        "version": version(path),
        "last_run": None,
        "differs": None,
    }
    behind = ("behind   ", "0 records") if cli_target.name == "local" else ("behind", "0 ms  ")
    assert status(cli_target, path).splitlines()[2:] == [
        f"  shard                 state  checkpoint                  {behind[0]}  checkpointed",
        f"  shardId-000000000000  open   none: will start at latest  {behind[1]}  -",
        f"  shardId-000000000001  open   none: will start at latest  {behind[1]}  -",
        "run: not running",
        "dead letter: stream shop-rejects: 0 entries",
        f"spec: {path} version {version(path)}; no run recorded one yet",
    ]


# Times far from this machine's clock, so that a lease dated then is live, or long expired.
LATER = datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc)
EARLIER = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)


def test_status_names_the_run_holding_the_lock_or_lease(cli_target, tmp_path):
    path = shop_applied(cli_target, tmp_path)
    host, pid = socket.gethostname(), os.getpid()
    holder = cli_target.backend(wall=LATER.timestamp)

    with holder.running("shop") as lease:
        found = json.loads(status(cli_target, path, "--json"))["running"]
        line = status(cli_target, path).splitlines()[-3]
    after = status(cli_target, path).splitlines()[-3]

    if cli_target.name == "local":
        assert found == {
            "by": "lock",
            "owner": f"{host} pid {pid}",
            "host": host,
            "pid": pid,
            "since": "2100-01-01T00:00:00+00:00",
            "expires": None,
            "left_over": False,
        }
        assert line == f"run: running (lock held by {host} pid {pid} since 2100-01-01 00:00:00 UTC)"
    else:
        assert re.fullmatch(rf"{re.escape(host)} pid {pid} run \w{{8}}", lease.owner)
        assert found == {
            "by": "lease",
            "owner": lease.owner,
            "host": host,
            "pid": pid,
            "since": "2100-01-01T00:00:00+00:00",
            "expires": "2100-01-01T00:01:00+00:00",
            "left_over": False,
        }
        assert line == (
            f"run: running (lease held by {lease.owner} since 2100-01-01 00:00:00 UTC, "
            "expires 2100-01-01 00:01:00 UTC unless renewed)"
        )
    assert after == "run: not running"


def test_status_tells_a_lease_left_by_a_run_from_a_live_one(aws_env, tmp_path):
    """On AWS only: the OS lets go of a local lock with its process, so none is left over."""
    target = CliTarget("aws", tmp_path / "state")
    with mock_aws():
        path = shop_applied(target, tmp_path)
        holder = target.backend(wall=EARLIER.timestamp)
        with holder.running("shop") as lease:
            found = json.loads(status(target, path, "--json"))["running"]
            line = status(target, path).splitlines()[-3]

    assert (found["expires"], found["left_over"]) == ("2000-01-01T00:01:00+00:00", True)
    assert line == (
        f"run: not running (lease held by {lease.owner} since 2000-01-01 00:00:00 UTC, "
        "expired 2000-01-01 00:01:00 UTC: the next run takes it over once it sees it "
        "unrenewed for a whole lease)"
    )


@pytest.mark.parametrize(
    "dead_letter, where",
    [
        ("", "file {state}/dead-letter/shop.jsonl"),
        ("dead_letter: {bucket: rejects, prefix: bad/}\n", "bucket shop-rejects-bucket under bad/"),
    ],
    ids=["file", "bucket"],
)
def test_status_counts_the_entries_of_a_file_or_bucket_dead_letter(tmp_path, dead_letter, where):
    target = CliTarget("local", tmp_path / "state")
    text = SHOP.replace("dead_letter: {stream: rejects}\n", dead_letter).replace(
        "resources:\n", "resources:\n  buckets:\n    rejects: {name: shop-rejects-bucket}\n"
    )
    path = shop_applied(target, tmp_path, text)
    backend = LocalBackend(target.state)
    backend.put_records("shop-in", [(b"not json", "x"), (b"[]", "y")])
    assert target.invoke("run", str(path), "--until-idle", "0").exit_code == 0
    backend.put_records("shop-in", [(b"still not json", "z")])
    assert target.invoke("run", str(path), "--until-idle", "0").exit_code == 0

    found = json.loads(status(target, path, "--json"))["dead_letter"]

    where = where.format(state=target.state)
    if dead_letter:
        assert found == [{"where": where, "entries": 3, "objects": 2}]
        assert (
            status(target, path).splitlines()[-2] == f"dead letter: {where}: 3 entries in 2 objects"
        )
    else:
        assert found == [{"where": where, "entries": 3}]
        assert status(target, path).splitlines()[-2] == f"dead letter: {where}: 3 entries"


def test_status_counts_only_the_entries_that_wait_after_a_redrive(cli_target, tmp_path):
    """A redrive moves past what it handled: what it routed no longer waits, and what failed
    again waits once, as the new entry it wrote."""
    path = shop_applied(cli_target, tmp_path)
    backend = cli_target.backend()
    keyless = [(json.dumps({"id": i}).encode(), i) for i in ("a", "b")]
    backend.put_records("shop-in", [*keyless, (b"not json", "x")])
    assert cli_target.invoke("run", str(path), "--until-idle", "0").exit_code == 0
    assert (
        status(cli_target, path).splitlines()[-2] == "dead letter: stream shop-rejects: 3 entries"
    )
    path.write_text(SHOP.replace("partition_key: session_id", "partition_key: id"))
    redriven = cli_target.invoke("redrive", str(path))
    assert redriven.exit_code == 0, redriven.output

    found = json.loads(status(cli_target, path, "--json"))["dead_letter"]

    assert found == [{"where": "stream shop-rejects", "entries": 1}]
    assert status(cli_target, path).splitlines()[-2] == "dead letter: stream shop-rejects: 1 entry"


def test_status_of_a_spec_without_a_route_shows_its_shards_unread(cli_target, tmp_path):
    """It never runs: on AWS apply makes it no checkpoint table, which status does not need."""
    resources_only = SHOP.split("route:")[0]
    path = shop_applied(cli_target, tmp_path, resources_only)

    found = json.loads(status(cli_target, path, "--json"))

    assert [(s["checkpoint"], s["starts_at"]) for s in found["shards"]] == [
        (None, "trim_horizon"),
        (None, "trim_horizon"),
    ]
    assert (found["running"], found["spec"]["last_run"]) == (None, None)


def test_status_lists_an_earlier_dead_letter_while_entries_wait_there(cli_target, tmp_path):
    """Entries written to a stream wait there after a reload points the dead letter to a
    bucket: status still counts them, marked as not the spec's dead letter now, until a
    redrive empties the stream or it is deleted."""
    path = shop_applied(cli_target, tmp_path, SHOP_WITH_BUCKET)
    backend = cli_target.backend()
    backend.put_records("shop-in", [(b"not json", "x"), (b"[]", "y")])
    assert cli_target.invoke("run", str(path), "--until-idle", "0").exit_code == 0
    path.write_text(TO_BUCKET)

    found = json.loads(status(cli_target, path, "--json"))["dead_letter"]
    lines = status(cli_target, path).splitlines()[-3:-1]

    assert found == [
        {"where": "bucket shop-rejects-bucket under bad/", "entries": 0, "objects": 0},
        {"where": "stream shop-rejects", "entries": 2, "current": False},
    ]
    assert lines == [
        "dead letter: bucket shop-rejects-bucket under bad/: 0 entries in 0 objects",
        "dead letter: stream shop-rejects: 2 entries, written before the spec named another "
        "dead letter; to redrive them, point the spec's dead_letter: back to it and run "
        "`pipeline redrive`",
    ]


def test_an_earlier_dead_letter_drops_out_once_redriven_or_deleted(cli_target, tmp_path):
    path = shop_applied(cli_target, tmp_path, SHOP_WITH_BUCKET)
    backend = cli_target.backend()
    backend.put_records("shop-in", [(json.dumps({"id": "a"}).encode(), "a")])  # no session_id
    assert cli_target.invoke("run", str(path), "--until-idle", "0").exit_code == 0
    path.write_text(TO_BUCKET.replace("partition_key: session_id", "partition_key: id"))
    assert cli_target.invoke("run", str(path), "--until-idle", "0").exit_code == 0
    backend.put_records("shop-in", [(b"not json", "x")])  # to the bucket now
    assert cli_target.invoke("run", str(path), "--until-idle", "0").exit_code == 0
    assert [
        place["where"] for place in json.loads(status(cli_target, path, "--json"))["dead_letter"]
    ] == [
        "bucket shop-rejects-bucket under bad/",
        "stream shop-rejects",
    ]
    # Back to the stream, whose entry the fixed spec routes: the bucket is the earlier one now.
    path.write_text(SHOP_WITH_BUCKET.replace("partition_key: session_id", "partition_key: id"))
    redriven = cli_target.invoke("redrive", str(path))
    assert redriven.exit_code == 0, redriven.output

    found = json.loads(status(cli_target, path, "--json"))["dead_letter"]

    assert found == [
        {"where": "stream shop-rejects", "entries": 0},
        {
            "where": "bucket shop-rejects-bucket under bad/",
            "entries": 1,
            "objects": 1,
            "current": False,
        },
    ]
    backend.delete_bucket("shop-rejects-bucket")  # with its entry
    found = json.loads(status(cli_target, path, "--json"))["dead_letter"]
    assert found == [{"where": "stream shop-rejects", "entries": 0}]
