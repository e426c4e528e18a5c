"""`pipeline redrive`, end to end on both targets and the dead letter's three forms: records
a broken spec dead-lettered reach their sinks once the spec is fixed, those that fail again
wait with their new reason, and a redrive run twice, or killed at any point and run again,
writes nothing twice and loses nothing."""

import base64
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from click.testing import CliRunner
from conftest import (
    FIXED_NOW,
    MINIMAL,
    REPO,
    SHOP_WITH_BUCKET,
    TO_BUCKET,
    read_stream,
    shop_applied,
)
from fakes import VirtualClock, lease_on, started_since
from moto import mock_aws

from runner import spec
from runner.backends.aws import AwsBackend
from runner.backends.base import BackendError, Record
from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.commands import run as run_command
from runner.commands.holder import held_by
from runner.commands.provision import apply
from runner.commands.redrive import redrive
from runner.loop import engine
from runner.loop.backlog import backlogs, entries_waiting
from runner.loop.dead_letter import DeadLetter
from runner.records.processor import Journey

SPEC = """\
pipeline: shop
resources:
  streams:
    source: {name: in, shards: 1}
    usa: {name: usa-out, shards: 2}
    other: {name: other-out, shards: 1}
    rejects: {name: rejects, shards: 2}
  buckets:
    rejects: {name: shop-rejects}
source:
  stream: source
transform:
  - set:
      total: TOTAL
      at: now()
route:
  partition_key: session_id
  cases:
    - when: country == 'USA'
      to: usa
      continue: true  # and to other: a record with two sinks
    - to: other
"""
BROKEN, FIXED = "sum(items[].qty)", "sum(items[].to_number(qty))"
DEAD_LETTERS = {
    "file": "",
    "stream": "dead_letter: {stream: rejects}\n",
    "bucket": "dead_letter: {bucket: rejects}\n",
}
RECORDS = [
    '{"session_id": "a", "country": "USA", "items": [{"qty": "2"}]}',
    '{"session_id": "b", "country": "FR", "items": [{"qty": "1"}]}',
    '{"session_id": {"id": 3}, "country": "USA", "items": [{"qty": "1"}]}',
    '{"session_id": "d", "country": "USA", "items": [{"qty": 3}]}',
    "{not json",
]
SUM_OF_TEXT = "transform[0].set.total: sum() expects array[number], got array containing string"
NOT_JSON = "not JSON: Expecting property name enclosed in double quotes at column 2"
OBJECT_KEY = "route.partition_key gave an object, expected text or a number"
# What the broken spec dead-letters: all but d, which has a number.
BROKEN_ENTRIES = Counter(
    {(SUM_OF_TEXT, RECORDS[0]): 1, (SUM_OF_TEXT, RECORDS[1]): 1, (SUM_OF_TEXT, RECORDS[2]): 1}
    | {(NOT_JSON, RECORDS[4]): 1}
)
# What the fixed one dead-letters again, with its reasons.
AGAIN = Counter({(OBJECT_KEY, RECORDS[2]): 1, (NOT_JSON, RECORDS[4]): 1})
SUMMARY = "redriven 4 | out other 2, usa 1 | dead-lettered 2 | filtered 0 | dropped 0"
SUMMARY_AGAIN = "redriven 2 | out none | dead-lettered 2 | filtered 0 | dropped 0"
SINKS = {"usa-out": ["a", "d"], "other-out": ["a", "b", "d"]}


class Setup:
    """A pipeline on one target whose broken spec has dead-lettered four of five records into
    one form of the dead letter, and its fixed spec, ready to redrive."""

    def __init__(self, tmp_path, target, form):
        self.tmp_path = tmp_path
        self.target = target
        self.form = form
        self.state = tmp_path / "state"
        self._backend = None
        text = SPEC + DEAD_LETTERS[form]
        self.broken = tmp_path / "broken.yaml"
        self.broken.write_text(text.replace("TOTAL", BROKEN))
        self.fixed = tmp_path / "fixed.yaml"
        self.fixed.write_text(text.replace("TOTAL", FIXED))
        self.where = {
            "file": f"file {self.state / 'dead-letter' / 'shop.jsonl'}",
            "stream": "stream rejects",
            "bucket": "bucket shop-rejects under dead-letter/",
        }[form]

    def cli(self, *args):
        return CliRunner().invoke(cli, [*map(str, args), "--target", self.target])

    def backend(self):
        if self._backend is None:
            local = self.target == "local"
            self._backend = LocalBackend(self.state) if local else AwsBackend("us-east-1", poll_s=0)
        return self._backend

    def dead_letter_broken(self):
        """Apply, put the records and run the broken spec (as the CLI does, faster)."""
        backend = self.backend()
        broken = spec.load(self.broken)
        apply(broken, backend, lambda line: None)
        backend.put_records("in", [(r.encode(), f"line {n}") for n, r in enumerate(RECORDS, 1)])
        options = engine.RunOptions(until_idle=0)
        assert run_command.run(broken, backend, self.state, options, lambda line: None) == 0
        assert self.entries() == BROKEN_ENTRIES

    def lease_holder(self):
        table = self.backend()._client("dynamodb")
        key = {"stream": {"S": "#run-lock"}, "shard_id": {"S": "#run-lock"}}
        return table.get_item(TableName="shop-checkpoints", Key=key)["Item"]["owner"]["S"]

    def sinks(self):
        backend = self.backend()
        return {
            name: sorted(record["session_id"] for record in read_stream(backend, name))
            for name in SINKS
        }

    def lines(self):
        """Every line of the dead letter, in this form."""
        backend = self.backend()
        if self.form == "file":
            path = self.state / "dead-letter" / "shop.jsonl"
            return path.read_bytes().splitlines()
        if self.form == "stream":
            return [json.dumps(entry).encode() for entry in read_stream(backend, "rejects")]
        return [
            line
            for key in backend.list_objects("shop-rejects")
            for line in backend.get_object("shop-rejects", key).splitlines()
        ]

    def entries(self):
        """(reason, original bytes) of every entry in the dead letter."""
        entries = [json.loads(line) for line in self.lines()]
        return Counter((e["reason"], base64.b64decode(e["data_base64"]).decode()) for e in entries)

    def waiting(self):
        loaded = spec.load(self.fixed)
        file = self.state / "dead-letter" / "shop.jsonl" if self.target == "local" else None
        clock = VirtualClock()
        return entries_waiting(loaded, self.backend(), file, clock=clock, sleep=clock.sleep)


FORMS = [("local", "file"), ("local", "stream"), ("local", "bucket")]
FORMS += [("aws", "stream"), ("aws", "bucket")]


@pytest.fixture(params=FORMS, ids=[f"{target}-{form}" for target, form in FORMS])
def setup(request, tmp_path, monkeypatch):
    """A Setup of each target and form."""
    target, form = request.param
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    if target == "local":
        yield Setup(tmp_path, target, form)
        return
    request.getfixturevalue("aws_env")
    with mock_aws():
        yield Setup(tmp_path, target, form)


def waiting_in(setup, count):
    if setup.target == "local" and setup.form != "file":
        return {f"file {setup.state / 'dead-letter' / 'shop.jsonl'}": 0, setup.where: count}
    return {setup.where: count}


def test_a_fixed_spec_sends_what_failed_to_its_sinks_and_the_rest_waits_with_its_new_reason(
    setup,
):
    setup.dead_letter_broken()
    assert setup.waiting() == waiting_in(setup, 4)

    result = setup.cli("redrive", setup.fixed)

    assert result.exit_code == 0, result.output
    summary = {
        "file": f"2 records in {setup.state / 'dead-letter' / 'shop.jsonl'}",
        "stream": "2 records in stream rejects",
        "bucket": "2 records in 1 object in bucket shop-rejects under dead-letter/",
    }[setup.form]
    assert result.output.splitlines() == [
        f"[shop] redriving the dead letter: 4 entries wait in {setup.where}",
        f"[shop] done: {SUMMARY}",
        f"[shop] dead letter: {summary}",
    ]
    assert setup.sinks() == SINKS
    assert setup.entries() == BROKEN_ENTRIES + AGAIN
    assert setup.waiting() == waiting_in(setup, 2)

    again = setup.cli("redrive", setup.fixed)  # writes nothing to the sinks

    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[:2] == [
        f"[shop] redriving the dead letter: 2 entries wait in {setup.where}",
        f"[shop] done: {SUMMARY_AGAIN}",
    ]
    assert setup.sinks() == SINKS
    # What fails again is written again, as a new entry, and waits once.
    assert setup.entries() == BROKEN_ENTRIES + AGAIN + AGAIN
    assert setup.waiting() == waiting_in(setup, 2)


@pytest.mark.parametrize("setup", [("aws", "stream")], indirect=True, ids=["aws-stream"])
def test_a_dry_run_returns_once_every_thread_it_started_has_ended(setup):
    setup.dead_letter_broken()  # in a dead-letter stream of two shards, read at once
    before = set(threading.enumerate())

    result = setup.cli("redrive", setup.fixed, "--dry-run")

    assert result.exit_code == 0, result.output
    assert started_since(before) == []


# The forms where what is tested differs by target: on AWS, a stream (read by time marks).
BY_FORM = FORMS[:3] + [("aws", "stream")]


@pytest.mark.parametrize("setup", BY_FORM, indirect=True, ids=[f"{t}-{f}" for t, f in BY_FORM])
def test_a_dry_run_shows_each_entry_s_fate_and_writes_nothing(setup):
    setup.dead_letter_broken()
    before = setup.lines()

    result = setup.cli("redrive", setup.fixed, "--dry-run")

    assert result.exit_code == 0, result.output
    places = waiting_places(setup)
    at = '"at":"NOW"'  # now() when the dry run transformed it
    fates = {
        RECORDS[0]: [
            "PLACE: to usa (usa-out), partition key 'a'",
            "PLACE: to other (other-out), partition key 'a'",
            f'  {{"session_id":"a","country":"USA","items":[{{"qty":"2"}}],"total":2,{at}}}',
        ],
        RECORDS[1]: [
            "PLACE: to other (other-out), partition key 'b'",
            f'  {{"session_id":"b","country":"FR","items":[{{"qty":"1"}}],"total":1,{at}}}',
        ],
        RECORDS[2]: [f"PLACE: dead letter: {OBJECT_KEY}"],
        RECORDS[4]: [f"PLACE: dead letter: {NOT_JSON}"],
    }
    shown = re.sub(r'"at":"[0-9T:.+-]+"', '"at":"NOW"', result.output)
    assert shown.splitlines() == [
        f"[shop] dry run, nothing is written: 4 entries wait in {setup.where}",
        *(line.replace("PLACE", place) for place, record in places for line in fates[record]),
        "4 entries: 2 dead-lettered, 2 to other, 1 to usa",
    ]
    assert setup.lines() == before
    assert setup.sinks() == {"usa-out": ["d"], "other-out": ["d"]}
    assert setup.waiting() == waiting_in(setup, 4)


def waiting_places(setup):
    """(place, original record) of each waiting entry, as redrive names and reads them."""
    if setup.form == "file":
        return [(f"line {n}", data) for n, (_, data) in enumerate(ordered(setup), start=1)]
    if setup.form == "bucket":
        (key,) = setup.backend().list_objects("shop-rejects")
        return [(f"{key} line {n}", data) for n, (_, data) in enumerate(ordered(setup), 1)]
    backend = setup.backend()
    places = []
    for shard in backend.list_shards("rejects"):
        iterator = backend.get_shard_iterator("rejects", shard.shard_id, "TRIM_HORIZON")
        for record in backend.get_records(iterator).records:
            data = base64.b64decode(json.loads(record.data)["data_base64"]).decode()
            places.append((f"{shard.shard_id} {record.sequence}", data))
    return places


def ordered(setup):
    entries = [json.loads(line) for line in setup.lines()]
    return [(e["reason"], base64.b64decode(e["data_base64"]).decode()) for e in entries]


@pytest.mark.parametrize(
    "setup", [("local", "stream"), ("aws", "bucket")], indirect=True, ids=["local", "aws"]
)
def test_nothing_waiting_is_said_in_one_line(setup):
    assert setup.cli("apply", setup.fixed).exit_code == 0

    result = setup.cli("redrive", setup.fixed)

    assert result.exit_code == 0, result.output
    places = " or ".join(waiting_in(setup, 0))
    assert result.output.splitlines() == [f"[shop] nothing to redrive: no entries wait in {places}"]


class Killed(BaseException):
    """The end of the process, in the middle of what it did (SIGKILL, a machine lost)."""


class KilledAt:
    """The backend of a process that ends just before, or just after, its n-th write."""

    WRITES = {"put_records", "put_object", "set_checkpoint", "set_note"}

    def __init__(self, backend, n, *, after):
        self._backend = backend
        self.n = n
        self.after = after
        self.writes = 0

    def __getattr__(self, name):
        found = getattr(self._backend, name)
        if name not in self.WRITES:
            return found

        def write(*args):
            self.writes += 1
            if self.writes == self.n and not self.after:
                raise Killed
            done = found(*args)
            if self.writes == self.n:
                raise Killed
            return done

        return write


def redrive_with(setup, backend, **options):
    """`pipeline redrive` of the fixed spec, in this process, on a clock of its own."""
    clock = VirtualClock()
    lines = []
    loaded = spec.load(setup.fixed)
    code = redrive(
        loaded, backend, setup.state, lines.append, None, clock=clock, sleep=clock.sleep, **options
    )
    assert code == 0
    return lines


def put_dead_letters(setup, cycle):
    """The broken spec's entries for the records of this cycle, as its run writes them."""
    broken = spec.load(setup.broken)
    dead_letter = DeadLetter(broken, setup.backend(), setup.state)
    journey = Journey(broken.transform, broken.route)
    for n, line in enumerate(RECORDS, start=1):
        data = line.replace('"a"', f'"a{cycle}"').replace('"b"', f'"b{cycle}"').encode()
        outcome = journey.process(data)
        if outcome.kind == "dead_letter":
            record = Record(str(cycle * 10 + n), f"line {n}", data, FIXED_NOW)
            dead_letter.add(outcome.reason, "in", "shardId-000000000000", record)
    dead_letter.write()


def drain(setup):
    """Move every redrive position past what waits, writing nothing else."""
    clock = VirtualClock()
    loaded = spec.load(setup.fixed)
    file = setup.state / "dead-letter" / "shop.jsonl" if setup.target == "local" else None
    for backlog in backlogs(loaded, setup.backend(), file, clock=clock, sleep=clock.sleep):
        if backlog.count():
            for batch in backlog.batches(100):
                backlog.move(batch)


@pytest.mark.parametrize("setup", BY_FORM, indirect=True, ids=[f"{t}-{f}" for t, f in BY_FORM])
def test_a_redrive_killed_at_any_write_and_run_again_loses_and_duplicates_nothing(
    setup, monkeypatch
):
    # Locally, batches of two (two batches), and kills before each write too: the dead-letter
    # file is written between them. On AWS every write is one of these: after each is enough.
    size, kills = (2, (False, True)) if setup.target == "local" else (4, (True,))
    killed_and_run_again(setup, monkeypatch, size, kills, recoveries=(None,))


def test_a_redrive_killed_again_while_it_finishes_a_cut_short_batch_writes_nothing_twice(
    tmp_path, monkeypatch
):
    setup = Setup(tmp_path, "local", "file")
    # Batches of three: the first has records to route and one to dead-letter again, so that
    # a redrive killed in between leaves some of the batch done and some not.
    killed_and_run_again(setup, monkeypatch, 3, (True,), recoveries=(1, 2, 3))


def killed_and_run_again(setup, monkeypatch, size, kills, recoveries):
    """For each write of a redrive, with new entries each time: a redrive killed before or
    after that write (`kills`), then one killed after its n-th write for n in `recoveries`
    (None: not killed), then one that ends; each record is in its sinks once, and what
    fails again waits once."""
    ticks = iter(range(10**9))  # now() moves on: each try transforms into other bytes

    def now():
        return FIXED_NOW.timestamp() + next(ticks)

    apply(spec.load(setup.fixed), setup.backend(), lambda line: None)
    put_dead_letters(setup, 0)
    counting = KilledAt(setup.backend(), 0, after=False)
    redrive_with(setup, counting, batch_size=size, now=now)  # how many writes a whole redrive makes
    drain(setup)
    expected = {"usa-out": ["a0"], "other-out": ["a0", "b0"]}
    cycle = 0
    for after, n, again in itertools.product(kills, range(1, counting.writes + 1), recoveries):
        cycle += 1
        put_dead_letters(setup, cycle)
        with pytest.raises(Killed):
            redrive_with(setup, KilledAt(setup.backend(), n, after=after), batch_size=size, now=now)
        if again is not None:
            with contextlib.suppress(Killed):  # unless it ends before its n-th write
                redrive_with(
                    setup, KilledAt(setup.backend(), again, after=True), batch_size=size, now=now
                )

        redrive_with(setup, setup.backend(), batch_size=size, now=now)

        expected["usa-out"].append(f"a{cycle}")
        expected["other-out"] += [f"a{cycle}", f"b{cycle}"]
        assert setup.sinks() == {k: sorted(v) for k, v in expected.items()}, (after, n, again)
        # What fails again waits once (entries the killed redrive wrote again may have been
        # redriven by the next, and written again: a new entry each time).
        assert setup.waiting() == waiting_in(setup, 2), (after, n, again)
        drain(setup)


class Meanwhile:
    """The backend, calling `during()` before its first put to a sink stream."""

    def __init__(self, backend, during):
        self._backend = backend
        self.during = during

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def put_records(self, stream, entries):
        if stream in SINKS and self.during:
            self.during, during = None, self.during
            during()
        return self._backend.put_records(stream, entries)


def test_a_redrive_is_refused_while_a_run_goes_and_a_run_while_it_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    setup = Setup(tmp_path, "local", "file")
    setup.dead_letter_broken()
    holding = "error: pipeline shop is already running on {} ({} pid {}); {}\n"
    holder = (setup.state, socket.gethostname(), os.getpid())

    with setup.backend().running("shop"):
        refused = setup.cli("redrive", setup.fixed)
        held = held_by(setup.backend().run_holder("shop"))

    assert refused.exit_code == 1
    assert refused.output == (
        f"error: pipeline shop is running ({held}): stop it before redriving its dead letter\n"
    )
    assert setup.sinks() == {"usa-out": ["d"], "other-out": ["d"]}
    runs = []
    meanwhile = Meanwhile(setup.backend(), lambda: runs.append(setup.cli("run", setup.fixed)))
    redrive_with(setup, meanwhile)
    assert [(run.exit_code, run.output) for run in runs] == [
        (1, holding.format(*holder, "two runs at once would write every record twice"))
    ]
    assert setup.sinks() == SINKS


LEASE_ITEM = {"stream": {"S": "#run-lock"}, "shard_id": {"S": "#run-lock"}}
HOLDER = "elsewhere.example pid 7 run 0badf00d"


def held_elsewhere(setup, expires):
    """The shop pipeline's run lease, as a run on another machine holds it, lasting until
    `expires` (ISO, or None: an item of a version that did not say); returns DynamoDB."""
    table = setup.backend()._client("dynamodb")
    item = {"owner": {"S": HOLDER}, "epoch": {"S": "e1"}, "renewals": {"N": "0"}}
    if expires:
        item["expires"] = {"S": expires}
    table.put_item(TableName="shop-checkpoints", Item={**LEASE_ITEM, **item})
    return table


@pytest.mark.parametrize("expires", [None, "2100-01-01T00:00:00Z"])
def test_on_aws_a_redrive_is_refused_at_once_while_a_live_run_holds_the_lease(
    tmp_path, aws_env, expires
):
    with mock_aws():
        setup = Setup(tmp_path, "aws", "bucket")
        setup.dead_letter_broken()
        held_elsewhere(setup, expires)

        lines = []
        with pytest.raises(BackendError) as refused:
            redrive(spec.load(setup.fixed), lease_on(VirtualClock()), setup.state, lines.append,
                    None)  # fmt: skip

        assert str(refused.value) == (
            f"pipeline shop is running (lease held by {HOLDER}): stop it before redriving its "
            "dead letter"
        )
        assert lines == []
        assert setup.sinks() == {"usa-out": ["d"], "other-out": ["d"]}


def test_on_aws_a_redrive_waits_for_a_lease_past_its_time_and_is_refused_once_it_is_renewed(
    tmp_path, aws_env
):
    with mock_aws():
        setup = Setup(tmp_path, "aws", "bucket")
        setup.dead_letter_broken()
        table = held_elsewhere(setup, "2000-01-01T00:00:00Z")  # its run may have died

        def renews():  # what the holder's renewal does, while the redrive waits
            table.update_item(
                TableName="shop-checkpoints",
                Key=LEASE_ITEM,
                UpdateExpression="SET renewals = renewals + :one",
                ExpressionAttributeValues={":one": {"N": "1"}},
            )

        lines = []
        with pytest.raises(BackendError) as refused:
            redrive(spec.load(setup.fixed), lease_on(VirtualClock(), renews), setup.state,
                    lines.append, None)  # fmt: skip

        assert str(refused.value) == (
            f"pipeline shop is already running ({HOLDER} renewed its lease while this one "
            "waited); stop it before redriving its dead letter"
        )
        assert lines == [f"[shop] waiting for the run lease held by {HOLDER} (free in 60 s "
                         "unless renewed)"]  # fmt: skip
        assert setup.sinks() == {"usa-out": ["d"], "other-out": ["d"]}


# A redrive in a process of its own, killed with SIGKILL once its first sink write is done,
# before the position moves past its batch: argv is the spec, the state folder and, on AWS,
# the endpoint.
KILLED = """\
import os, signal, sys
from pathlib import Path
from runner import spec
from runner.backends.aws import AwsBackend
from runner.backends.local import LocalBackend
from runner.commands import run as run_command
from runner.commands.redrive import redrive

class KilledAfterTheFirstSinkWrite:
    def __init__(self, backend):
        self._backend = backend
    def __getattr__(self, name):
        return getattr(self._backend, name)
    def put_records(self, stream, entries):
        done = self._backend.put_records(stream, entries)
        if stream == "usa-out":
            os.kill(os.getpid(), signal.SIGKILL)
        return done

path, state, endpoint = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
backend = AwsBackend("us-east-1", endpoint_url=endpoint[0]) if endpoint else LocalBackend(state)
redrive(spec.load(path), KilledAfterTheFirstSinkWrite(backend), state, print, sys.stdout)
"""


@pytest.mark.parametrize("target", ["local", "aws"])
def test_a_redrive_killed_with_sigkill_and_run_again_loses_and_duplicates_nothing(
    tmp_path, monkeypatch, request, target
):
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    setup = Setup(tmp_path, target, "stream" if target == "local" else "bucket")
    endpoint = []
    if target == "aws":
        request.getfixturevalue("aws_env")
        endpoint = [request.getfixturevalue("endpoint")]
        setup._backend = AwsBackend("us-east-1", poll_s=0, endpoint_url=endpoint[0])
    setup.dead_letter_broken()

    killed = subprocess.run(
        [sys.executable, "-c", KILLED, setup.fixed, setup.state, *endpoint],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert setup.sinks() == {"usa-out": ["a", "d"], "other-out": ["d"]}  # a, only half-way
    lease = setup.lease_holder() if target == "aws" else None

    again = setup.cli("redrive", setup.fixed, *(["--endpoint-url", *endpoint] if endpoint else []))

    assert again.exit_code == 0, again.output
    took_over = [f"[shop] took over the run lease of {lease}, whose process is gone"]
    assert again.output.splitlines() == [
        *(took_over if lease else []),
        f"[shop] redriving the dead letter: 4 entries wait in {setup.where}",
        f"[shop] the last redrive of {setup.where} was cut short in a batch; of what it "
        "wrote then, 1 record in sinks and 0 entries in the dead letter are not written again",
        f"[shop] done: {SUMMARY}",
        f"[shop] dead letter: 2 records in {'stream rejects' if target == 'local' else '1 object in bucket shop-rejects under dead-letter/'}",  # noqa: E501
    ]
    assert setup.sinks() == SINKS
    assert setup.waiting() == waiting_in(setup, 2)


def test_positions_in_a_dead_letter_stream_created_again_are_forgotten_not_applied(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    setup = Setup(tmp_path, "local", "stream")
    setup.dead_letter_broken()
    assert setup.cli("redrive", setup.fixed).exit_code == 0
    backend = setup.backend()
    backend.delete_stream("rejects")  # destroy and apply, say: a new stream, empty
    backend.create_stream("rejects", 2)
    put_dead_letters(setup, 1)

    result = setup.cli("redrive", setup.fixed)

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:2] == [
        "[shop] redriving the dead letter: 4 entries wait in stream rejects",
        f"[shop] done: {SUMMARY}",
    ]
    assert setup.sinks() == {"usa-out": ["a", "a1", "d"], "other-out": ["a", "a1", "b", "b1", "d"]}


def test_a_dry_run_after_a_redrive_was_cut_short_shows_what_is_not_written_again(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    setup = Setup(tmp_path, "local", "file")
    setup.dead_letter_broken()
    killed = KilledAt(setup.backend(), 4, after=False)  # the move past its one batch
    with pytest.raises(Killed):
        redrive_with(setup, killed, batch_size=5)  # once it wrote to the sinks and dead letter

    result = setup.cli("redrive", setup.fixed, "--dry-run")

    path = setup.state / "dead-letter" / "shop.jsonl"
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"[shop] dry run, nothing is written: 6 entries wait in file {path}",
        f"[shop] the last redrive of file {path} was cut short in a batch; of what it wrote "
        "then, 3 records in sinks and 2 entries in the dead letter are not written again",
        *(f"line {n}: already redriven" for n in (1, 2, 3, 4)),
        f"line 5: dead letter: {OBJECT_KEY}",  # what it wrote to the dead letter waits
        f"line 6: dead letter: {NOT_JSON}",
        "6 entries: 4 already redriven, 2 dead-lettered",
    ]
    assert setup.cli("redrive", setup.fixed).exit_code == 0
    assert setup.sinks() == SINKS
    assert setup.waiting() == {f"file {path}": 2}


def test_a_corrupt_kpl_aggregate_redriven_keeps_its_reason(tmp_path, write_spec):

    state = tmp_path / "state"
    path = write_spec(MINIMAL)
    backend = LocalBackend(state)
    apply(spec.load(path), backend, lambda line: None)
    aggregator = RecordAggregator()
    aggregator.add_user_record("a", b'{"session_id": "a", "country": "USA"}')
    key, _, aggregate = aggregator.clear_and_get().get_contents()
    backend.put_records("in", [(aggregate[:-1] + bytes([aggregate[-1] ^ 1]), key)])
    options = ["--state-dir", str(state)]
    assert CliRunner().invoke(cli, ["run", str(path), "--until-idle", "0", *options]).exit_code == 0

    shown = CliRunner().invoke(cli, ["redrive", str(path), "--dry-run", *options])

    assert shown.exit_code == 0, shown.output
    (line,) = [line for line in shown.output.splitlines() if line.startswith("line 1:")]
    assert line.startswith("line 1: dead letter: KPL aggregate: bad MD5 checksum of its ")


def test_a_redrive_says_what_waits_in_an_earlier_dead_letter_it_leaves(cli_target, tmp_path):
    path = shop_applied(cli_target, tmp_path, SHOP_WITH_BUCKET)
    backend = cli_target.backend()
    backend.put_records("shop-in", [(b"not json", "x"), (b"[]", "y")])
    assert cli_target.invoke("run", str(path), "--until-idle", "0").exit_code == 0
    path.write_text(TO_BUCKET)
    file = (
        f"file {cli_target.state}/dead-letter/shop.jsonl or " if cli_target.name == "local" else ""
    )
    earlier = (
        "2 entries wait in stream shop-rejects, an earlier dead letter the spec no longer names, "
        "which this redrive leaves: to redrive them, point the spec's dead_letter: back to it "
        "and run `pipeline redrive`"
    )

    redriven = cli_target.invoke("redrive", str(path))
    dry = cli_target.invoke("redrive", str(path), "--dry-run")

    assert (redriven.exit_code, redriven.stderr) == (
        0,
        f"[shop] nothing to redrive: no entries wait in {file}bucket shop-rejects-bucket under "
        f"bad/; {earlier}\n",
    )
    assert (dry.exit_code, dry.stdout, dry.stderr) == (
        0,
        "0 entries\n",
        f"[shop] dry run, nothing is written: no entries wait in {file}bucket "
        f"shop-rejects-bucket under bad/; {earlier}\n",
    )
