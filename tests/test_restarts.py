"""A restart continues where the last run stopped, whatever `source.start` says, and never takes
checkpoints of a stream deleted and created again for the new one's: on both targets."""

import json
import re

import pytest
from click.testing import CliRunner
from conftest import read_stream, timeless
from moto import mock_aws

from runner import spec
from runner.backends.aws import AwsBackend
from runner.backends.base import SHARD_END, BackendError
from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.commands import run as run_command
from runner.commands.provision import apply
from runner.loop.engine import RunOptions

SPEC = """\
pipeline: shop
resources:
  streams:
    source: {name: in, shards: 1}
    out: {name: out, shards: 1}
    rejects: {name: rejects, shards: 1}
source:
  stream: source
  start: START
route:
  partition_key: session_id
  cases:
    - to: out
dead_letter: {stream: rejects}  # the aws target needs one off this machine
"""


@pytest.fixture(params=["local", "aws"])
def target(request, tmp_path):
    """A function making a backend of the target (one per process using it), and the state
    folder; on AWS as moto fakes it in-process."""
    if request.param == "local":
        yield lambda: LocalBackend(tmp_path / "state"), tmp_path / "state"
        return
    request.getfixturevalue("aws_env")
    with mock_aws():
        yield lambda: AwsBackend("us-east-1", poll_s=0), tmp_path / "state"


def load(tmp_path, start):
    path = tmp_path / f"{start}.yaml"
    path.write_text(SPEC.replace("START", start))
    return spec.load(path)


def run(loaded, backend, state, **options):
    """What `pipeline run --until-idle 0` says, without the time it took."""
    lines = []
    options = RunOptions(until_idle=0, **options)
    assert run_command.run(loaded, backend, state, options, lines.append) == 0
    return [timeless(line) for line in lines]


def sessions(*ids):
    return [(json.dumps({"session_id": i}).encode(), i) for i in ids]


@pytest.mark.parametrize("first_start", ["latest", "trim_horizon"])
def test_records_put_between_two_runs_are_read_by_the_second(target, tmp_path, first_start):
    make_backend, state = target
    backend = make_backend()
    first = load(tmp_path, first_start)
    apply(first, backend, lambda line: None)

    before = run(first, backend, state)
    backend.put_records("in", sessions("a", "b", "c"))
    after = run(load(tmp_path, "latest"), backend, state)

    assert (before[1], before[-1]) == (
        f"[shop] no checkpoints for pipeline shop: starting at {first_start}",
        "[shop] done: in 0 | out none | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
    )
    assert (after[1], after[-1]) == (
        "[shop] resuming from checkpoints of 1 shard",
        "[shop] done: in 3 | out out 3 | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
    )
    assert [r["session_id"] for r in read_stream(backend, "out")] == ["a", "b", "c"]


def recreate(make_backend, backend):
    """`pipeline destroy` and `apply` while a run still goes on, which then writes its last
    checkpoint: shard 0 of the stream it read is at its end."""
    late = make_backend()
    late.get_checkpoints("shop", "in")  # read when the run started
    backend.delete_stream("in")
    backend.create_stream("in", 1)
    late.set_checkpoint("shop", "in", "shardId-000000000000", SHARD_END)


def test_a_stream_created_again_is_refused_with_what_to_do_never_skipped(target, tmp_path):
    make_backend, state = target
    backend = make_backend()
    loaded = load(tmp_path, "trim_horizon")
    apply(loaded, backend, lambda line: None)
    run(loaded, backend, state)
    recreate(make_backend, backend)
    backend.put_records("in", sessions("a", "b", "c"))

    with pytest.raises(BackendError) as refused:
        run(loaded, backend, state)
    forgotten = run(loaded, backend, state, forget_old_checkpoints=True)

    assert re.fullmatch(
        r"checkpoints of pipeline shop are for an earlier stream named in \(created "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\), not the one there now: run with "
        r"--forget-old-checkpoints to delete them and start at trim_horizon",
        str(refused.value),
    )
    assert forgotten[:3] == [
        "[shop] forgot the checkpoints of 1 shard of an earlier stream in",  # said, once
        "[shop] reading in on the " + backend.name + " target (Ctrl-C stops cleanly)",
        "[shop] no checkpoints for pipeline shop: starting at trim_horizon",
    ]
    assert forgotten[-1] == (
        "[shop] done: in 3 | out out 3 | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms"
    )


FIREHOSE = """\
  buckets:
    out: {name: shop-out}
  firehoses:
    out: {name: shop-out-firehose, from: out, to: out}
"""


def test_a_delivery_from_a_stream_created_again_is_refused_in_one_line(tmp_path, state):
    path = tmp_path / "spec.yaml"
    path.write_text(
        SPEC.replace("START", "trim_horizon").replace("source:\n", FIREHOSE + "source:\n", 1)
    )
    assert CliRunner().invoke(cli, ["apply", str(path)]).exit_code == 0
    late = LocalBackend(state)  # a run still delivering, as `destroy` and `apply` go
    late.get_checkpoints("firehose:shop-out-firehose", "out")
    backend = LocalBackend(state)
    backend.delete_stream("out")
    backend.create_stream("out", 1)
    late.set_checkpoint("firehose:shop-out-firehose", "out", "shardId-000000000000", "1")

    result = CliRunner().invoke(cli, ["run", str(path), "--until-idle", "0"])

    assert result.exit_code == 1
    assert re.fullmatch(
        r"error: checkpoints of firehose shop-out-firehose are for an earlier stream named out "
        r"\(created [0-9: -]+ UTC\), not the one there now: run with --forget-old-checkpoints "
        r"to delete them and start at trim_horizon\n",
        result.stderr,
    )
