"""`pipeline run --watch`: a running engine follows saved edits of its spec between rounds.

The engine runs in this process on virtual time: its sleeps move the clock on, and edits and
records are made when it reports a line, so no test waits for real seconds."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from click.testing import CliRunner
from conftest import MINIMAL, REPO, read_stream, session_ids

from runner import spec
from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.commands import run as run_command
from runner.commands.provision import apply
from runner.loop.engine import Engine, RunOptions
from runner.loop.observer import Observer
from runner.loop.run_info import record_spec_version

# Version 2 of MINIMAL (conftest): Canadian sessions to a stream of their own.
CANADA = MINIMAL.replace(
    "    other: {name: other-out, shards: 1}\n",
    "    other: {name: other-out, shards: 1}\n    canada: {name: canada-out, shards: 1}\n",
).replace("    - to: other", "    - when: country == 'Canada'\n      to: canada\n    - to: other")
# Version 2: no default case, so what is neither American nor Canadian is dead-lettered.
STRICT = CANADA.replace("    - to: other\n", "")
STATUS = "[shop] in "  # the periodic status line, left out of what is asserted


def session(session_id, country="Canada"):
    return (json.dumps({"session_id": session_id, "country": country}).encode(), session_id)


class Run:
    """An engine on tmp_path/spec.yaml, applied on the local target, on virtual time.

    `on(text, action)` does `action` once a reported line contains `text`; `at(seconds,
    action)` once the clock has passed `seconds`."""

    def __init__(self, tmp_path, text, *, watch=True, backend=None, tick=0.0, observer=None):
        self.path = tmp_path / "spec.yaml"
        self.path.write_text(text)
        self.state = tmp_path / "state"
        self.backend = backend or LocalBackend(self.state)
        apply(spec.load(self.path), self.backend, lambda line: None)
        self.watch = watch
        self.lines = []
        self.now = 0.0
        self.tick = tick  # how far the clock moves each time it is read
        self.hooks = []  # (text, action)
        self.timers = []  # (seconds, action)
        self.observer = observer or Observer()

    def on(self, text, action):
        self.hooks.append((text, action))

    def at(self, seconds, action):
        self.timers.append((seconds, action))

    def edit(self, text):
        return lambda: self.path.write_text(text)

    def put(self, *ids, country="Canada"):
        return lambda: self.backend.put_records("in", [session(i, country) for i in ids])

    def stop(self):
        self.engine.stop()

    def report(self, line):
        self.lines.append(line)
        for hook in [h for h in self.hooks if h[0] in line]:
            self.hooks.remove(hook)
            hook[1]()

    def clock(self):
        self.now += self.tick
        return self.now

    def sleep(self, seconds):
        self.now += max(seconds, 0.01)
        for timer in [t for t in self.timers if t[0] <= self.now]:
            self.timers.remove(timer)
            timer[1]()
        assert self.now < 60, "the run never got there:\n" + "\n".join(self.said())

    def run(self):
        reload = (lambda: spec.load(self.path)) if self.watch else None
        self.engine = Engine(
            spec.load(self.path),
            self.backend,
            self.state,
            RunOptions(status_every=3600),
            self.report,
            clock=self.clock,
            sleep=self.sleep,
            reloads=run_command.reloads(self.backend, reload) if reload else None,
            observer=self.observer,
        )
        return self.engine.run()

    def said(self):
        return [line for line in self.lines if not line.startswith(STATUS)]


def test_a_reload_names_what_the_spec_no_longer_declares(tmp_path):
    other = "    other: {name: other-out, shards: 1}\n"
    spare = other + "    spare: {name: spare-out, shards: 1}\n"
    lake = "resources:\n  buckets:\n    lake: {name: shop-lake}\n"
    run = Run(tmp_path, MINIMAL.replace("resources:\n", lake).replace(other, spare))
    run.at(1, run.edit(MINIMAL))
    run.at(10, run.stop)

    run.run()

    assert run.said() == [
        "[shop] spec reloaded (version 2): route unchanged; no longer in the spec: stream "
        "spare-out, bucket shop-lake (apply --prune deletes them); transform unchanged"
    ]


def test_a_valid_edit_is_swapped_in_between_rounds_saying_what_changed(tmp_path):
    run = Run(tmp_path, MINIMAL)
    run.backend.create_stream("canada-out", 1)
    run.put("before")()
    run.at(1, run.edit(CANADA))
    run.on("spec reloaded", run.put("after"))
    run.at(10, run.stop)

    counts = run.run()

    assert run.said() == ["[shop] spec reloaded (version 2): route + canada; transform unchanged"]
    assert session_ids(run.backend, "other-out") == ["before"]  # version 1 had no canada
    assert session_ids(run.backend, "canada-out") == ["after"]
    assert counts.out == {"other": 1, "canada": 1}


class Paged:
    """The local backend giving at most five records per GetRecords call, so that a backlog
    takes several rounds; `during_put` is called at each PutRecords of the sinks."""

    def __init__(self, backend, during_put):
        self._backend = backend
        self.during_put = during_put

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def get_records(self, iterator, limit=10_000):
        return self._backend.get_records(iterator, 5)

    def put_records(self, stream, entries):
        if stream != "in":
            self.during_put()
        return self._backend.put_records(stream, entries)


def test_each_round_is_handled_whole_by_one_version_and_checkpointed(tmp_path):
    edits = []

    def edit_once():  # during the first round's writes, then the clock moves on as rounds do
        if not edits:
            edits.append(run.path.write_text(CANADA))

    backend = LocalBackend(tmp_path / "state")
    # The clock moves on within rounds too, as a real one does.
    run = Run(tmp_path, MINIMAL, backend=Paged(backend, edit_once), tick=0.2)
    backend.create_stream("canada-out", 1)
    ids = [f"s{n}" for n in range(40)]
    run.put(*ids)()
    run.at(30, run.stop)

    counts = run.run()

    other, canada = session_ids(backend, "other-out"), session_ids(backend, "canada-out")
    assert other + canada == ids, "every record in exactly one place, in order"
    assert len(other) % 5 == 0 and 5 <= len(other) < len(ids), "the swap fell between rounds"
    assert counts.out == {"other": len(other), "canada": len(canada)}
    (shard,) = backend.list_shards("in")
    iterator = backend.get_shard_iterator("in", shard.shard_id, "TRIM_HORIZON")
    last = backend.get_records(iterator).records[-1].sequence
    assert backend.get_checkpoints("shop", "in") == {shard.shard_id: last}


def test_an_invalid_edit_keeps_the_running_version_until_a_later_valid_save(tmp_path):
    run = Run(tmp_path, MINIMAL)
    run.backend.create_stream("canada-out", 1)
    run.at(1, run.edit(CANADA.replace("to: canada", "to: canadaa")))
    run.on("spec not reloaded", run.put("while-invalid"))
    run.at(5, run.edit(CANADA))
    run.on("spec reloaded", run.put("after"))
    run.at(10, run.stop)

    run.run()

    assert run.said() == [
        f"{run.path}:16:11: route.cases[1].to: unknown stream 'canadaa' "
        "(streams: source, usa, other, canada)",
        "[shop] spec not reloaded: it has 1 error; this run keeps version 1",
        "[shop] spec reloaded (version 2): route + canada; transform unchanged",
    ]
    assert session_ids(run.backend, "other-out") == ["while-invalid"]
    assert session_ids(run.backend, "canada-out") == ["after"]


def test_an_edit_needing_a_new_stream_waits_for_apply_then_is_swapped_in(tmp_path):
    run = Run(tmp_path, MINIMAL)
    run.at(1, run.edit(CANADA))
    run.on("waiting for pipeline apply", run.put("waiting"))
    run.at(8, lambda: apply(spec.load(run.path), run.backend, lambda line: None))
    run.on("spec reloaded", run.put("applied"))
    run.at(20, run.stop)

    run.run()

    assert run.said() == [  # said once, though checked again every few seconds
        "[shop] waiting for pipeline apply: stream canada-out does not exist",
        "[shop] spec reloaded (version 2): route + canada; transform unchanged",
    ]
    assert session_ids(run.backend, "other-out") == ["waiting"]
    assert session_ids(run.backend, "canada-out") == ["applied"]


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (
            lambda text: text.replace("  stream: source", "  stream: source\n  start: latest"),
            "a change of source.start (trim_horizon -> latest) needs a restart",
        ),
        (
            lambda text: text.replace("pipeline: shop", "pipeline: shop2"),
            "a change of pipeline (shop -> shop2) needs a restart",
        ),
        (
            lambda text: text.replace("{name: in,", "{name: in2,"),
            "a change of source.stream (in -> in2) needs a restart",
        ),
        (
            lambda text: text.replace("pipeline: shop", "pipeline: shop2").replace(
                "region: us-east-1", "region: eu-west-1"
            ),
            "a change of pipeline (shop -> shop2) and region (us-east-1 -> eu-west-1) "
            "need a restart",
        ),
    ],
)
def test_an_edit_of_what_needs_a_restart_is_refused(tmp_path, edit, why):
    run = Run(tmp_path, "region: us-east-1\n" + MINIMAL)
    run.at(1, run.edit(edit(run.path.read_text())))
    run.on("spec not reloaded", run.put("after"))
    run.at(10, run.stop)

    run.run()

    assert run.said() == [f"[shop] spec not reloaded: {why}; this run keeps version 1"]
    assert session_ids(run.backend, "other-out") == ["after"]


class Reloads(Observer):
    def __init__(self):
        self.results = []

    def spec_reload(self, result):
        self.results.append(result)


def test_the_result_of_each_new_version_is_told_to_the_observer(tmp_path):
    reloads = Reloads()
    run = Run(tmp_path, MINIMAL, observer=reloads)
    run.at(1, run.edit(CANADA.replace("to: canada", "to: canadaa")))
    run.at(3, run.edit(CANADA))
    run.at(6, lambda: apply(spec.load(run.path), run.backend, lambda line: None))
    run.at(12, run.edit(CANADA.replace("pipeline: shop", "pipeline: shop2")))
    run.at(16, run.stop)

    run.run()

    assert reloads.results == ["invalid", "waiting", "reloaded", "refused"]
    assert [line.split(":")[0] for line in run.said()[1:]] == [
        "[shop] spec not reloaded",
        "[shop] waiting for pipeline apply",
        "[shop] spec reloaded (version 2)",
        "[shop] spec not reloaded",
    ]


@pytest.mark.parametrize("adding", [True, False])
def test_adding_or_removing_the_lambda_section_needs_a_restart(tmp_path, adding):
    plain = (
        MINIMAL.replace(
            "    other: {name: other-out, shards: 1}\n",
            "    other: {name: other-out, shards: 1}\n    rejects: {name: rejects, shards: 1}\n",
        )
        + "dead_letter: {stream: rejects}\n"
    )
    with_lambda = plain + "lambda: {function: shop-etl}\n"
    run = Run(tmp_path, plain if adding else with_lambda)
    run.at(1, run.edit(with_lambda if adding else plain))
    run.at(5, run.stop)

    run.run()

    change = "none -> function shop-etl" if adding else "function shop-etl -> none"
    assert run.said() == [
        f"[shop] spec not reloaded: a change of lambda ({change}) needs a restart; "
        "this run keeps version 1"
    ]


def test_a_change_of_the_firehoses_the_run_delivers_is_refused(tmp_path):
    with_firehose = MINIMAL.replace(
        "source:\n  stream",
        "  buckets:\n    archive: {name: shop-archive}\n"
        "  firehoses:\n    archive: {name: shop-archive, from: other, to: archive}\n"
        "source:\n  stream",
    )
    run = Run(tmp_path, with_firehose)
    run.at(1, run.edit(with_firehose.replace("to: archive}", "to: archive, prefix: new/}")))
    run.at(5, run.stop)

    run.run()

    assert run.said() == [
        "[shop] spec not reloaded: a change of resources.firehoses (this run delivers them) "
        "needs a restart; this run keeps version 1"
    ]


def test_dead_letter_entries_carry_the_version_that_judged_them(tmp_path):
    first = MINIMAL.replace("    - to: other\n", "")  # no default case either
    run = Run(tmp_path, first)
    run.backend.create_stream("canada-out", 1)
    run.put("first", country="France")()
    run.at(1, run.edit(STRICT))
    run.on("spec reloaded", run.put("second", country="France"))
    run.at(10, run.stop)

    run.run()

    assert run.said() == [
        "[shop] spec reloaded (version 2): route + canada; transform unchanged",
    ]
    entries = [
        json.loads(line)
        for line in (run.state / "dead-letter" / "shop.jsonl").read_text().splitlines()
    ]
    assert [(e["partition_key"], e["spec_version"]) for e in entries] == [
        ("first", spec.version(first.encode())),
        ("second", spec.version(STRICT.encode())),
    ]


def test_a_swapped_version_is_recorded_as_the_one_in_use_for_status(tmp_path):
    run = Run(tmp_path, MINIMAL)
    run.backend.create_stream("canada-out", 1)
    record_spec_version(run.backend, spec.load(run.path))  # as `run` does once it holds the lock
    run.at(1, run.edit(CANADA))
    run.on("spec reloaded", run.stop)

    run.run()

    assert run.said() == ["[shop] spec reloaded (version 2): route + canada; transform unchanged"]
    assert run.backend.get_run_info("shop").spec_version == spec.version(CANADA.encode())


def test_a_moved_dead_letter_takes_the_records_of_the_new_version(tmp_path):
    rejects = STRICT.replace("    canada:", "    rejects: {name: rejects, shards: 1}\n    canada:")
    run = Run(tmp_path, STRICT)
    run.backend.create_stream("rejects", 1)
    run.put("first", country="France")()
    run.at(1, run.edit(rejects + "dead_letter: {stream: rejects}\n"))
    run.on("spec reloaded", run.put("second", country="France"))
    run.at(10, run.stop)

    run.run()

    assert run.said() == [
        "[shop] spec reloaded (version 2): route unchanged; "
        "dead letter the state folder's file -> stream rejects; transform unchanged",
    ]
    in_file = (run.state / "dead-letter" / "shop.jsonl").read_text().splitlines()
    assert [json.loads(line)["partition_key"] for line in in_file] == ["first"]
    assert [entry["partition_key"] for entry in read_stream(run.backend, "rejects")] == ["second"]
    assert [d.summary() for d in run.engine.dead_letters] == [
        f"1 record in {run.state / 'dead-letter' / 'shop.jsonl'}",
        "1 record in stream rejects",
    ]


def test_without_watch_a_change_is_said_once_and_the_run_keeps_its_version(tmp_path):
    run = Run(tmp_path, MINIMAL, watch=False)
    run.backend.create_stream("canada-out", 1)
    run.at(1, run.edit(CANADA))
    run.at(4, run.edit(CANADA + "# again\n"))
    run.at(7, run.put("after"))
    run.at(10, run.stop)

    run.run()

    assert run.said() == [
        "[shop] spec changed on disk; this run keeps the version it started with "
        "(restart, or use --watch)"
    ]
    assert session_ids(run.backend, "other-out") == ["after"]


# End to end: a producer, a watching run, a user editing the spec and applying it.

EDITED = (
    MINIMAL.replace("{name: in, shards: 1}", "{name: in, shards: 2}")
    .replace(
        "    other: {name: other-out, shards: 1}\n",
        "    europe: {name: europe-out, shards: 1}\n    rejects: {name: rejects, shards: 1}\n",
    )
    .replace(
        "    - to: other\n",
        "    - when: contains(['France', 'Germany', 'Spain'], country)\n      to: europe\n"
        "dead_letter: {stream: rejects}\n",
    )
)
WITH_ASIA = EDITED.replace(
    "    rejects:", "    asia: {name: asia-out, shards: 1}\n    rejects:"
).replace("dead_letter:", "    - when: country == 'Japan'\n      to: asia\ndead_letter:")


def wait_for_line(path, text, timeout=15.0):
    """Wait until the file holds a line containing `text`; returns that line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line with {text!r} in:\n{path.read_text()}")


def consumed(stream, whole=False):
    """The records of a stream, read as a user would: `consume --no-follow --jsonl`; with
    `whole`, each with its shard and sequence number."""
    done = CliRunner().invoke(cli, ["consume", "--stream", stream, "--no-follow", "--jsonl"])
    assert done.exit_code == 0, done.output
    read = [json.loads(line) for line in done.stdout.splitlines()]
    return read if whole else [entry["data"] for entry in read]


def test_a_watching_run_follows_an_applied_edit_and_puts_every_record_in_one_place(tmp_path, state):
    path = tmp_path / "shop.yaml"
    path.write_text(EDITED)
    assert CliRunner().invoke(cli, ["apply", str(path)]).exit_code == 0
    env = {**os.environ, "PIPELINE_STATE_DIR": str(state)}
    python = [sys.executable, "-m", "runner"]
    err = tmp_path / "run.err"
    with err.open("w") as out:
        run = subprocess.Popen(
            [*python, "run", str(path), "--watch"], cwd=REPO, env=env, stderr=out
        )
    producer = subprocess.Popen(
        [*python, "produce", "--stream", "in", "--synthetic", "--mean-gap", "0.02"],
        cwd=REPO,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_line(err, "reading in")
        path.write_text(WITH_ASIA.replace("to: asia", "to: asia\n  - broken"))
        wait_for_line(err, "spec not reloaded")  # a broken save in between changes nothing
        path.write_text(WITH_ASIA)
        applied = CliRunner().invoke(cli, ["apply", str(path)])
        assert applied.output.startswith("+ create stream asia-out (1 shard)\n"), applied.output
        wait_for_line(err, "spec reloaded")
        deadline = time.monotonic() + 10
        while not consumed("asia-out") and time.monotonic() < deadline:
            time.sleep(0.05)  # until version 2 routed some
    finally:
        producer.send_signal(signal.SIGINT)
        producer.wait(timeout=10)
    whole = consumed("in", whole=True)
    produced = [record["data"] for record in whole]
    places = ("usa-out", "europe-out", "asia-out", "rejects")

    def handled():
        return sum(len(consumed(stream)) for stream in places)

    deadline = time.monotonic() + 15
    while handled() < len(produced) and time.monotonic() < deadline:
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=15) == 0, err.read_text()

    said = [line for line in err.read_text().splitlines() if not line.startswith(STATUS)]
    # Whether the run saw the file before or after the apply is a race: if before, it waited.
    waited = "[shop] waiting for pipeline apply: stream asia-out does not exist"
    assert [line for line in said[3:-2] if line != waited] == [
        f"{path}:20:3: invalid YAML: expected <block end>, but found '-'",
        "[shop] spec not reloaded: it has 1 error; this run keeps version 1",
        "[shop] spec reloaded (version 2): route + asia; transform unchanged",
    ]
    assert said[-2].startswith("[shop] done: in ")
    assert said[-1].startswith("[shop] dead letter: ")
    # Every produced record in exactly one place: a sink of its route then, or the dead letter.
    rejected = consumed("rejects")
    where = {stream: [record["session_id"] for record in consumed(stream)] for stream in places[:3]}
    where["rejects"] = [entry["partition_key"] for entry in rejected]
    ids = [record["session_id"] for record in produced]
    assert Counter(i for found in where.values() for i in found) == Counter(ids)
    country = {record["session_id"]: record["country"] for record in produced}
    assert {country[i] for i in where["usa-out"]} == {"USA"}
    assert {country[i] for i in where["europe-out"]} == {"France", "Germany", "Spain"}
    assert {country[i] for i in where["asia-out"]} == {"Japan"}
    # Japan was dead-lettered by version 1 until the reload, then routed by version 2.
    # Each dead-letter entry names the version that judged it, which had no route for it.
    before, after = spec.version(EDITED.encode()), spec.version(WITH_ASIA.encode())
    routed_by = {before: {"USA", "France", "Germany", "Spain"}}
    routed_by[after] = routed_by[before] | {"Japan"}
    assert all(country[e["partition_key"]] not in routed_by[e["spec_version"]] for e in rejected)
    japan = [e for e in rejected if country[e["partition_key"]] == "Japan"]
    assert japan and {e["spec_version"] for e in japan} == {before}
    # In each source shard, what version 1 dead-lettered came before what version 2 routed.
    source = {r["data"]["session_id"]: (r["shard"], int(r["sequence"])) for r in whole}
    for shard in {shard for shard, _ in source.values()}:
        rejected_then = [source[e["partition_key"]][1] for e in japan if e["shard"] == shard]
        routed_now = [source[i][1] for i in where["asia-out"] if source[i][0] == shard]
        assert max(rejected_then, default=0) < min(routed_now, default=math.inf)
