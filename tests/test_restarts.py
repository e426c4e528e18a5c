"""A restart continues where the last run stopped, whatever `source.start` says: on both
targets."""

import json
import re

import pytest
from conftest import read_stream
from moto import mock_aws

from runner import engine, spec
from runner.backends.aws import AwsBackend
from runner.backends.local import LocalBackend
from runner.provision import apply

SPEC = """\
pipeline: shop
resources:
  streams:
    source: {name: in, shards: 1}
    out: {name: out, shards: 1}
source:
  stream: source
  start: START
route:
  partition_key: session_id
  cases:
    - to: out
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
    options = engine.RunOptions(until_idle=0, **options)
    assert engine.run(loaded, backend, state, options, lines.append) == 0
    return [re.sub(r" \| took [0-9.]+ s$", "", line) for line in lines]


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
