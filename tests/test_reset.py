"""`pipeline reset`: checkpoints moved back (or on) to trim_horizon, latest or a moment, on
every shard or one, never while a run holds the pipeline; end to end on both targets."""

import datetime
import json
import os
import re
import socket
import time

import pytest
from conftest import SHOP, CliTarget, sessions, shop_applied, timeless

from runner import spec
from runner.backends.base import SHARD_END, BackendError
from runner.commands.reset import reset
from runner.spec import parse_position

SHARDS = ["shardId-000000000000", "shardId-000000000001"]


def run(target: CliTarget, path):
    """The run's lines that say where it starts and what it read, but the time it took."""
    done = target.invoke("run", str(path), "--until-idle", "0")
    assert done.exit_code == 0, done.output
    lines = done.stderr.splitlines()
    return [lines[1], timeless(lines[-1])]


def read_and_checkpointed(target: CliTarget, path, backend, ids):
    """Put these sessions and run until idle; returns each shard's checkpoint, past them, and
    how many each holds."""
    put = backend.put_records("shop-in", sessions(*ids))
    run(target, path)
    last = {result.shard_id: result.sequence for result in put}
    assert sorted(last) == SHARDS  # both shards hold some
    assert backend.get_checkpoints("shop", "shop-in") == last
    return last, {shard: sum(r.shard_id == shard for r in put) for shard in SHARDS}


def test_reset_to_trim_horizon_makes_the_next_run_read_everything_again(cli_target, tmp_path):
    path = shop_applied(cli_target, tmp_path)
    backend = cli_target.backend()
    last, _ = read_and_checkpointed(cli_target, path, backend, "abcde")

    declined = cli_target.invoke("reset", str(path), "--to", "trim_horizon", input="n\n")
    moved = cli_target.invoke("reset", str(path), "--to", "trim_horizon", "--yes")

    shown = [
        "Checkpoints of pipeline shop on stream shop-in, to move to trim_horizon:",
        f"  {SHARDS[0]}: {last[SHARDS[0]]} -> trim_horizon",
        f"  {SHARDS[1]}: {last[SHARDS[1]]} -> trim_horizon",
    ]
    assert declined.exit_code == 1
    assert declined.stdout.splitlines() == [
        *shown,
        f"Move 2 checkpoints of pipeline shop on {backend.location}? [y/N]: n",
    ]
    assert declined.stderr == "Nothing changed.\n"
    assert moved.exit_code == 0, moved.output
    assert moved.stdout.splitlines() == [
        *shown,
        "Moved 2 checkpoints to trim_horizon: the next run of shop reads from there.",
    ]
    assert backend.get_checkpoints("shop", "shop-in") == dict.fromkeys(SHARDS, "#trim_horizon")
    status = json.loads(cli_target.invoke("status", str(path), "--json").stdout)
    assert [s["starts_at"] for s in status["shards"]] == ["trim_horizon", "trim_horizon"]
    assert run(cli_target, path) == [
        "[shop] resuming from checkpoints of 2 shards",
        "[shop] done: in 5 | out out 5 | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
    ]
    assert backend.get_checkpoints("shop", "shop-in") == last


def test_reset_is_refused_while_a_run_holds_the_lock_or_lease(cli_target, tmp_path):
    path = shop_applied(cli_target, tmp_path)
    backend = cli_target.backend()
    last, _ = read_and_checkpointed(cli_target, path, backend, "abcde")
    later = datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc)  # live on any clock

    with cli_target.backend(wall=later.timestamp).running("shop") as lease:
        refused = cli_target.invoke("reset", str(path), "--to", "trim_horizon", "--yes")

    owner = lease.owner if cli_target.name == "aws" else f"{socket.gethostname()} pid {os.getpid()}"
    kind = "lease" if cli_target.name == "aws" else "lock"
    assert refused.exit_code == 1
    assert refused.stdout == ""
    assert refused.stderr == (
        f"error: pipeline shop is running ({kind} held by {owner} since 2100-01-01 00:00:00 UTC): "
        "stop it before resetting its checkpoints\n"
    )
    assert backend.get_checkpoints("shop", "shop-in") == last


def test_reset_holds_the_lock_so_that_no_run_starts_meanwhile(tmp_path):
    target = CliTarget("local", tmp_path / "state")
    path = shop_applied(target, tmp_path)
    loaded = spec.load(path)
    backend, other = target.backend(), target.backend()
    refusals = []

    def confirm(question):
        with pytest.raises(BackendError) as refused:
            with other.running("shop"):
                pass
        refusals.append(str(refused.value).split(" (")[0])

    reset(loaded, backend, parse_position("trim_horizon"), confirm=confirm, report=print)

    assert refusals == [f"pipeline shop is already running on {target.state}"]
    with other.running("shop"):  # free once the reset is done
        pass


def test_reset_of_one_shard_moves_only_its_checkpoint(cli_target, tmp_path):
    path = shop_applied(cli_target, tmp_path)
    backend = cli_target.backend()
    last, held = read_and_checkpointed(cli_target, path, backend, "abcde")

    moved = cli_target.invoke(
        "reset", str(path), "--to", "trim_horizon", "--shard", SHARDS[1], "--yes"
    )
    unknown = cli_target.invoke(
        "reset", str(path), "--to", "trim_horizon", "--shard", "shardId-000000000009", "--yes"
    )

    assert moved.stdout.splitlines() == [
        "Checkpoints of pipeline shop on stream shop-in, to move to trim_horizon:",
        f"  {SHARDS[1]}: {last[SHARDS[1]]} -> trim_horizon",
        "Moved 1 checkpoint to trim_horizon: the next run of shop reads from there.",
    ]
    assert backend.get_checkpoints("shop", "shop-in") == {
        SHARDS[0]: last[SHARDS[0]],
        SHARDS[1]: "#trim_horizon",
    }
    assert unknown.exit_code == 1
    assert unknown.stderr == (
        "error: stream 'shop-in' has no shard 'shardId-000000000009' "
        f"(shards: {', '.join(SHARDS)})\n"
    )
    again = held[SHARDS[1]]  # read again; the other shard's records are not
    assert run(cli_target, path) == [
        "[shop] resuming from checkpoints of 2 shards",
        f"[shop] done: in {again} | out out {again} | dead-lettered 0 | filtered 0 | "
        "dropped 0 | lag 0 ms",
    ]


def test_reset_at_a_timestamp_reads_what_arrived_from_that_moment(cli_target, tmp_path):
    path = shop_applied(cli_target, tmp_path)
    backend = cli_target.backend()
    read_and_checkpointed(cli_target, path, backend, "abcde")
    time.sleep(0.002)  # arrival times are kept to the millisecond
    moment = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(0.002)
    backend.put_records("shop-in", sessions("f", "g"))
    at = f"at_timestamp:{moment.isoformat().replace('+00:00', 'Z')}"

    moved = cli_target.invoke("reset", str(path), "--to", at, "--yes")

    assert moved.exit_code == 0, moved.output
    assert (
        moved.stdout.splitlines()[-1]
        == f"Moved 2 checkpoints to {at}: the next run of shop reads from there."
    )
    status = json.loads(cli_target.invoke("status", str(path), "--json").stdout)
    assert [s["starts_at"] for s in status["shards"]] == [at, at]
    assert run(cli_target, path) == [
        "[shop] resuming from checkpoints of 2 shards",
        "[shop] done: in 2 | out out 2 | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
    ]


def test_reset_to_latest_skips_what_the_stream_holds_and_finishes_closed_shards(tmp_path):
    """On the local target, whose latest position is exact; on AWS it is a moment about a
    second before the reset, on Kinesis' clock (see the README)."""
    target = CliTarget("local", tmp_path / "state")
    path = shop_applied(target, tmp_path)
    backend = target.backend()
    last, _ = read_and_checkpointed(target, path, backend, "abcde")
    backend.put_records("shop-in", sessions("f", "g"))
    backend.update_shard_count("shop-in", 1)  # both shards close; a child takes over

    moved = target.invoke("reset", str(path), "--to", "latest", "--yes")
    backend.put_records("shop-in", sessions("h"))

    child = "shardId-000000000002"
    assert moved.stdout.splitlines() == [
        "Checkpoints of pipeline shop on stream shop-in, to move to latest:",
        f"  {SHARDS[0]}: {last[SHARDS[0]]} -> latest",
        f"  {SHARDS[1]}: {last[SHARDS[1]]} -> latest",
        f"  {child}: no checkpoint -> latest",
        "Moved 3 checkpoints to latest: the next run of shop reads from there.",
    ]
    checkpoints = backend.get_checkpoints("shop", "shop-in")
    assert [checkpoints[shard] for shard in SHARDS] == [SHARD_END, SHARD_END]
    assert run(target, path) == [
        "[shop] resuming from checkpoints of 3 shards",
        "[shop] done: in 1 | out out 1 | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
    ]


def test_reset_of_every_shard_deletes_checkpoints_kept_for_an_earlier_stream(cli_target, tmp_path):
    path = shop_applied(cli_target, tmp_path)
    backend = cli_target.backend()
    read_and_checkpointed(cli_target, path, backend, "abcde")
    late = cli_target.backend()  # a run that read the checkpoints before the stream was made anew
    late.get_checkpoints("shop", "shop-in")
    backend.delete_stream("shop-in")
    backend.create_stream("shop-in", 2)
    late.set_checkpoint("shop", "shop-in", SHARDS[0], SHARD_END)
    backend.put_records("shop-in", sessions("f", "g", "h"))

    status = json.loads(cli_target.invoke("status", str(path), "--json").stdout)
    one = cli_target.invoke("reset", str(path), "--to", "trim_horizon", "--shard", SHARDS[0])
    every = cli_target.invoke("reset", str(path), "--to", "trim_horizon", "--yes")

    earlier = r"an earlier stream named shop-in \(created \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)"
    assert re.fullmatch(
        f"the checkpoints are for {earlier}, not the one there now: `pipeline run "
        "--forget-old-checkpoints` deletes them and starts at trim_horizon",
        status["checkpoints_error"],
    )
    assert [s["checkpoint"] for s in status["shards"]] == [None, None]
    assert one.exit_code == 1
    assert re.fullmatch(
        f"error: the checkpoints of pipeline shop are for {earlier}, not the one there now: "
        r"reset every shard \(without --shard\), or run with --forget-old-checkpoints\n",
        one.stderr,
    )
    assert every.exit_code == 0, every.output
    lines = every.stdout.splitlines()
    assert lines[1:3] == [f"  {shard}: no checkpoint -> trim_horizon" for shard in SHARDS]
    assert re.fullmatch(rf"  \(the checkpoints kept for {earlier} are deleted\)", lines[3])
    assert run(cli_target, path) == [
        "[shop] resuming from checkpoints of 2 shards",
        "[shop] done: in 3 | out out 3 | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
    ]


def test_reset_of_a_spec_without_a_route_is_refused(tmp_path):
    target = CliTarget("local", tmp_path / "state")
    path = shop_applied(target, tmp_path, SHOP.split("route:")[0])

    refused = target.invoke("reset", str(path), "--to", "latest", "--yes")

    assert refused.exit_code == 2
    assert refused.stderr == f"{path}: has no route, so no run reads it: nothing to reset\n"
