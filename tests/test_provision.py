import datetime
import os
import socket

import pytest
from click.testing import CliRunner
from conftest import (
    MINIMAL,
    PIPELINES,
    SHOP_WITH_BUCKET,
    TO_BUCKET,
    CliTarget,
    shop_applied,
    without_usa,
)
from fakes import FaultyBackend

from runner import spec
from runner.backends.aws import AwsBackend
from runner.backends.base import RunInfo
from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.commands import provision

ECOMMERCE = PIPELINES / "ecommerce.yaml"
SOURCE = "de-c2w2lab1-kinesis-data-stream"
USA = "de-c2w2lab1-usa-data-stream"
INTERNATIONAL = "de-c2w2lab1-international-data-stream"
USA_BUCKET = "de-c2w2lab1-000000000000-usa"
INT_BUCKET = "de-c2w2lab1-000000000000-int"
DEAD_LETTER_BUCKET = "de-c2w2lab1-000000000000-dead-letter"
USA_FIREHOSE = "de-c2w2lab1-firehose-usa"
INT_FIREHOSE = "de-c2w2lab1-firehose-international"

CREATIONS = f"""\
+ create stream {SOURCE} (1 shard)
+ create stream {USA} (2 shards)
+ create stream {INTERNATIONAL} (2 shards)
+ create bucket {USA_BUCKET} (new)
+ create bucket {INT_BUCKET} (new)
+ create bucket {DEAD_LETTER_BUCKET} (new)
+ create firehose {USA_FIREHOSE} ({USA} -> {USA_BUCKET})
+ create firehose {INT_FIREHOSE} ({INTERNATIONAL} -> {INT_BUCKET})
"""

UNCHANGED = {
    SOURCE: f"  unchanged stream {SOURCE} (1 shard)\n",
    USA: f"  unchanged stream {USA} (2 shards)\n",
    INTERNATIONAL: f"  unchanged stream {INTERNATIONAL} (2 shards)\n",
    USA_BUCKET: f"  unchanged bucket {USA_BUCKET} (exists)\n",
    INT_BUCKET: f"  unchanged bucket {INT_BUCKET} (exists)\n",
    DEAD_LETTER_BUCKET: f"  unchanged bucket {DEAD_LETTER_BUCKET} (exists)\n",
    USA_FIREHOSE: f"  unchanged firehose {USA_FIREHOSE} ({USA} -> {USA_BUCKET})\n",
    INT_FIREHOSE: f"  unchanged firehose {INT_FIREHOSE} ({INTERNATIONAL} -> {INT_BUCKET})\n",
}

LISTED = (
    f"- destroy firehose {USA_FIREHOSE}\n"
    f"- destroy firehose {INT_FIREHOSE}\n"
    f"- destroy stream {SOURCE}\n"
    f"- destroy stream {USA}\n"
    f"- destroy stream {INTERNATIONAL}\n"
    f"- destroy bucket {USA_BUCKET} (and every object in it)\n"
    f"- destroy bucket {INT_BUCKET} (and every object in it)\n"
    f"- destroy bucket {DEAD_LETTER_BUCKET} (and every object in it)\n"
)
PROMPT = (
    "Destroy these resources of de-c2w2lab1-etl on the local target, "
    "with the records and objects in them? [y/N]: "
)


@pytest.fixture
def backend(state):
    backend = LocalBackend(state)
    yield backend
    backend.close()


def pipeline(*args, input=None, exit_code=0):
    result = CliRunner().invoke(cli, [str(arg) for arg in args], input=input)
    assert result.exit_code == exit_code, result.output
    return result


def edited(write_spec, old, new):
    """The shipped ecommerce spec with its first `old` replaced by `new`, in tmp_path."""
    text = ECOMMERCE.read_text()
    assert old in text
    return write_spec(text.replace(old, new, 1), "ecommerce.yaml")


def test_plan_on_a_fresh_state_lists_every_creation_and_touches_nothing(state):
    result = pipeline("plan", ECOMMERCE)

    assert result.stdout == CREATIONS + "Plan: 8 to create, 0 to change, 0 unchanged.\n"
    assert result.stderr == ""
    assert pipeline("plan", ECOMMERCE).stdout == result.stdout


def test_apply_creates_everything_once_then_changes_nothing(state, backend):
    first = pipeline("apply", ECOMMERCE)
    second = pipeline("apply", ECOMMERCE)

    assert first.stdout == CREATIONS + "Applied: 8 created, 0 changed, 0 unchanged.\n"
    assert second.stdout == "No changes: 8 resources up to date.\n"
    assert [backend.describe_stream(s).open_shard_count for s in (SOURCE, USA, INTERNATIONAL)] == [
        1,
        2,
        2,
    ]
    assert backend.bucket_exists(USA_BUCKET) and backend.bucket_exists(INT_BUCKET)
    assert backend.describe_firehose(USA_FIREHOSE).stream == USA
    assert pipeline("plan", ECOMMERCE).stdout == (
        "".join(UNCHANGED.values()) + "No changes: 8 resources up to date.\n"
    )


def test_a_changed_shard_count_is_planned_and_applied_as_a_reshard(state, backend, write_spec):
    pipeline("apply", ECOMMERCE)
    line = f"~ change stream {USA} (shards 2 -> 4)\n"
    spec = edited(
        write_spec,
        'usa:           {name: "${prefix}-usa-data-stream", shards: 2}',
        'usa:           {name: "${prefix}-usa-data-stream", shards: 4}',
    )

    plan = pipeline("plan", spec)
    applied = pipeline("apply", spec)

    expected = "".join(line if name == USA else text for name, text in UNCHANGED.items())
    assert plan.stdout == expected + "Plan: 0 to create, 1 to change, 7 unchanged.\n"
    assert applied.stdout == line + "Applied: 0 created, 1 changed, 7 unchanged.\n"
    assert backend.describe_stream(USA).open_shard_count == 4
    assert [s.is_open for s in backend.list_shards(USA)] == [False, False, True, True, True, True]
    assert pipeline("apply", spec).stdout == "No changes: 8 resources up to date.\n"


def test_a_changed_firehose_buffer_names_the_fields_that_change(state, backend, write_spec):
    pipeline("apply", ECOMMERCE)
    spec = edited(
        write_spec, "buffer: {size_mb: 1, interval_s: 60}", "buffer: {size_mb: 5, interval_s: 300}"
    )
    line = (
        f"~ change firehose {USA_FIREHOSE} (buffer_size_mb 1 -> 5, buffer_interval_s 60 -> 300)\n"
    )

    plan = pipeline("plan", spec)
    applied = pipeline("apply", spec)

    expected = "".join(line if name == USA_FIREHOSE else text for name, text in UNCHANGED.items())
    assert plan.stdout == expected + "Plan: 0 to create, 1 to change, 7 unchanged.\n"
    assert applied.stdout == line + "Applied: 0 created, 1 changed, 7 unchanged.\n"
    firehose = backend.describe_firehose(USA_FIREHOSE)
    assert (firehose.buffer_size_mb, firehose.buffer_interval_s) == (5, 300)
    assert backend.describe_firehose(INT_FIREHOSE).buffer_size_mb == 1


def test_destroy_answered_no_keeps_everything_and_exits_1(state, backend):
    pipeline("apply", ECOMMERCE)
    backend.put_records(SOURCE, [(b'{"session_id": "a1"}', "a1")])
    backend.put_object(USA_BUCKET, "firehose/kept.json", b"{}\n")

    result = pipeline("destroy", ECOMMERCE, input="n\n", exit_code=1)

    assert result.stdout == LISTED + PROMPT + "n\n"
    assert result.stderr == "Nothing changed.\n"
    assert pipeline("apply", ECOMMERCE).stdout == "No changes: 8 resources up to date.\n"
    assert backend.list_objects(USA_BUCKET) == ["firehose/kept.json"]
    iterator = backend.get_shard_iterator(SOURCE, "shardId-000000000000", "TRIM_HORIZON")
    assert [r.partition_key for r in backend.get_records(iterator).records] == ["a1"]


def test_destroy_answered_yes_removes_everything(state, backend):
    pipeline("apply", ECOMMERCE)

    result = pipeline("destroy", ECOMMERCE, input="y\n")

    assert result.stdout == LISTED + PROMPT + "y\nDestroyed 8 resources.\n"
    assert backend.describe_stream(SOURCE) is None


def test_destroy_yes_removes_everything_and_a_second_destroy_has_nothing_to_do(state, backend):
    pipeline("apply", ECOMMERCE)
    backend.put_object(USA_BUCKET, "firehose/gone.json", b"{}\n")

    first = pipeline("destroy", ECOMMERCE, "--yes")
    second = pipeline("destroy", ECOMMERCE, "--yes")

    assert first.stdout == LISTED + "Destroyed 8 resources.\n"
    assert second.stdout == "Nothing to destroy.\n"
    assert all(backend.describe_stream(s) is None for s in (SOURCE, USA, INTERNATIONAL))
    assert not backend.bucket_exists(USA_BUCKET) and not backend.bucket_exists(INT_BUCKET)
    assert backend.describe_firehose(USA_FIREHOSE) is None
    assert pipeline("plan", ECOMMERCE).stdout == (
        CREATIONS + "Plan: 8 to create, 0 to change, 0 unchanged.\n"
    )


def test_apply_after_a_partial_destroy_recreates_only_what_is_missing(state, backend):
    pipeline("apply", ECOMMERCE)
    backend.delete_firehose(USA_FIREHOSE)
    backend.delete_stream(USA)

    result = pipeline("apply", ECOMMERCE)

    assert result.stdout == (
        f"+ create stream {USA} (2 shards)\n"
        f"+ create firehose {USA_FIREHOSE} ({USA} -> {USA_BUCKET})\n"
        "Applied: 2 created, 0 changed, 6 unchanged.\n"
    )


# Two applies at once


def creating_meanwhile(backend, other):
    """A backend on which `other` runs to its end just before the first create: as when two
    applies start together and the other one is quicker."""

    def create_stream(create, name, shards, *owner):
        if racing.called["create_stream"] == 1:
            other()
        create(name, shards, *owner)

    racing = FaultyBackend(backend, create_stream=create_stream)
    return racing


@pytest.mark.parametrize(
    ("others_shards", "reported"),
    [("2", []), ("4", [f"~ change stream {USA} (shards 4 -> 2)"])],
    ids=["same-spec", "other-shard-count"],
)
def test_two_applies_at_once_both_succeed(state, backend, write_spec, others_shards, reported):
    others = spec.load(
        edited(
            write_spec, 'usa-data-stream", shards: 2', f'usa-data-stream", shards: {others_shards}'
        )
    )
    others_lines, lines = [], []
    racing = creating_meanwhile(
        backend, lambda: provision.apply(others, LocalBackend(state), others_lines.append)
    )

    changes = provision.apply(spec.load(ECOMMERCE), racing, lines.append)

    assert "\n".join(others_lines) + "\n" == CREATIONS.replace(
        "(2 shards)", f"({others_shards} shards)", 1
    )
    assert lines == reported
    assert provision.summary(changes, done=True) == (
        "Applied: 0 created, 1 changed, 7 unchanged."
        if reported
        else "No changes: 8 resources up to date."
    )
    assert pipeline("plan", ECOMMERCE).stdout == (
        "".join(UNCHANGED.values()) + "No changes: 8 resources up to date.\n"
    )


# What the spec no longer declares: plan shows it, apply --prune and destroy delete it, if the
# pipeline created it

WITHOUT_USA = MINIMAL.replace("    usa: {name: usa-out, shards: 2}\n", "").replace(
    "    - when: country == 'USA'\n      to: usa\n", ""
)
KEPT = "  unchanged stream in (1 shard)\n  unchanged stream other-out (1 shard)\n"
GONE = "- delete stream usa-out (no longer in the spec)\n"
WITH_LAKE = MINIMAL.replace("source:\n", "  buckets:\n    lake: {name: shop-lake}\nsource:\n", 1)


def test_a_stream_removed_from_the_spec_is_planned_left_by_apply_and_pruned(
    state, backend, write_spec
):
    spec = write_spec(MINIMAL)
    pipeline("apply", spec)
    others = write_spec(
        MINIMAL.replace("shop", "audit").replace("name: in", "name: audit-in"), "a.yaml"
    )
    pipeline("apply", others)  # another pipeline's streams are not shop's to delete
    write_spec(WITHOUT_USA)

    planned = pipeline("plan", spec)
    applied = pipeline("apply", spec)
    still_there = backend.describe_stream("usa-out") is not None
    pruned = pipeline("apply", spec, "--prune", "--yes")

    assert (
        planned.stdout
        == KEPT + GONE + "Plan: 0 to create, 0 to change, 1 to delete, 2 unchanged.\n"
    )
    assert applied.stdout == (
        "No changes: 2 resources up to date.\n"
        "1 resource is no longer in the spec: pipeline apply --prune deletes it\n"
    )
    assert still_there
    assert pruned.stdout == GONE + "Applied: 0 created, 0 changed, 1 deleted, 2 unchanged.\n"
    assert backend.describe_stream("usa-out") is None
    assert pipeline("plan", spec).stdout == KEPT + "No changes: 2 resources up to date.\n"
    assert backend.describe_stream("audit-in") is not None


def test_apply_prune_asks_before_touching_anything(state, backend, write_spec):
    spec = write_spec(MINIMAL)
    pipeline("apply", spec)
    write_spec(
        WITHOUT_USA.replace("    other:", "    extra: {name: extra-out, shards: 1}\n    other:")
    )
    prompt = (
        "Delete these resources of shop on the local target, "
        "with the records and objects in them? [y/N]: "
    )

    declined = pipeline("apply", spec, "--prune", input="n\n", exit_code=1)
    untouched = [backend.describe_stream(s) is not None for s in ("usa-out", "extra-out")]
    accepted = pipeline("apply", spec, "--prune", input="y\n")

    assert declined.stdout == GONE + prompt + "n\n"
    assert declined.stderr == "Nothing changed.\n"
    assert untouched == [True, False]
    assert accepted.stdout == (
        GONE
        + prompt
        + "y\n+ create stream extra-out (1 shard)\n"
        + "Applied: 1 created, 0 changed, 1 deleted, 2 unchanged.\n"
    )
    assert [backend.describe_stream(s) is not None for s in ("usa-out", "extra-out")] == [
        False,
        True,
    ]


def opened_read_only(monkeypatch):
    """The state folders opened from now on as this process may not write them."""
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK and access(path, mode))


def test_on_a_read_only_state_destroy_and_prune_refuse_before_listing_anything(
    state, write_spec, monkeypatch
):
    spec = write_spec(MINIMAL)
    pipeline("apply", spec)
    write_spec(WITHOUT_USA)
    opened_read_only(monkeypatch)
    refused = (
        f"error: the state folder {state} is read-only: this command writes to it "
        "(commands that only read, such as consume and plan, can use it)\n"
    )

    destroyed = pipeline("destroy", spec, "--yes", exit_code=1)
    pruned = pipeline("apply", spec, "--prune", "--yes", exit_code=1)

    assert (destroyed.stdout, destroyed.stderr) == ("", refused)
    assert (pruned.stdout, pruned.stderr) == ("", refused)
    assert pipeline("plan", spec).stdout.startswith(KEPT + GONE)  # nothing was deleted


def test_pruning_a_route_deletes_its_firehose_before_its_stream_and_bucket(
    state, backend, write_spec
):
    pipeline("apply", ECOMMERCE)
    backend.put_object(USA_BUCKET, "firehose/old.json", b"{}\n")
    spec = write_spec(without_usa(ECOMMERCE.read_text()), "ecommerce.yaml")
    deletions = (
        f"- delete firehose {USA_FIREHOSE} (no longer in the spec)\n"
        f"- delete stream {USA} (no longer in the spec)\n"
        f"- delete bucket {USA_BUCKET} (no longer in the spec)\n"
    )
    kept = [
        UNCHANGED[name]
        for name in (SOURCE, INTERNATIONAL, INT_BUCKET, DEAD_LETTER_BUCKET, INT_FIREHOSE)
    ]

    planned = pipeline("plan", spec)
    pruned = pipeline("apply", spec, "--prune", "--yes")

    assert planned.stdout == (
        "".join(kept) + deletions + "Plan: 0 to create, 0 to change, 3 to delete, 5 unchanged.\n"
    )
    assert pruned.stdout == deletions + "Applied: 0 created, 0 changed, 3 deleted, 5 unchanged.\n"
    assert backend.describe_firehose(USA_FIREHOSE) is None
    assert backend.describe_stream(USA) is None
    assert not backend.bucket_exists(USA_BUCKET)
    assert backend.describe_firehose(INT_FIREHOSE).stream == INTERNATIONAL


# Under a run: what the run may still use is neither pruned nor destroyed

LATER = datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc)  # live on any clock


def holder_text(target, lease):
    """How a refusal names the run lock (local) or lease (aws) the test holds."""
    if target.name == "aws":
        return f"lease held by {lease.owner} since 2100-01-01 00:00:00 UTC"
    return f"lock held by {socket.gethostname()} pid {os.getpid()} since 2100-01-01 00:00:00 UTC"


def usa_resources(target):
    """The resources of the ecommerce spec's USA route on the target, in the order of
    deletion, as (kind, name)."""
    account = "123456789012" if target.name == "aws" else "000000000000"
    groups = [("log group", "de-c2w2lab1-firehose-usa-log-group")] if target.name == "aws" else []
    return [
        ("firehose", USA_FIREHOSE),
        *groups,
        ("stream", USA),
        ("bucket", f"de-c2w2lab1-{account}-usa"),
    ]


def copy_without_usa(tmp_path):
    """A copy of the ecommerce spec in tmp_path without its USA route, stream, bucket and
    firehose (and its editor modeline, whose schema path is relative to pipelines/)."""
    copy = tmp_path / "ecommerce.yaml"
    copy.write_text(without_usa(ECOMMERCE.read_text()).split("\n", 1)[1])
    return copy


def test_prune_is_refused_while_a_run_uses_another_version_and_done_once_it_reloaded(
    cli_target, tmp_path
):
    applied = cli_target.invoke("apply", str(ECOMMERCE))
    assert applied.exit_code == 0, applied.output
    copy = copy_without_usa(tmp_path)
    old, new = spec.load(ECOMMERCE).version, spec.load(copy).version
    backend = cli_target.backend()
    gone = usa_resources(cli_target)
    used = ", ".join(f"{kind} {name}" for kind, name in gone)

    with cli_target.backend(wall=LATER.timestamp).running("de-c2w2lab1-etl") as lease:
        backend.set_run_info("de-c2w2lab1-etl", RunInfo(old, LATER))
        refused = cli_target.invoke("apply", str(copy), "--prune", "--yes")
        still_there = backend.describe_stream(USA) is not None
        left = cli_target.invoke("apply", str(copy))  # plain apply is no matter
        backend.set_run_info("de-c2w2lab1-etl", RunInfo(new, LATER))  # the run reloaded it
        pruned = cli_target.invoke("apply", str(copy), "--prune", "--yes")

    assert refused.exit_code == 1
    assert refused.stdout == ""
    then = (
        "it delivers firehose de-c2w2lab1-firehose-usa itself, so it cannot reload a spec "
        "without it: stop it, then prune"
        if cli_target.name == "local"
        else "let it reload this version (run --watch) or stop it, then prune"
    )
    assert refused.stderr == (
        f"error: pipeline de-c2w2lab1-etl is running ({holder_text(cli_target, lease)}) with "
        f"another version of the spec ({old}; this file is {new}), which may still use "
        f"{used}: {then}\n"
    )
    assert still_there
    assert left.exit_code == 0, left.output
    assert left.stdout.splitlines()[-1] == (
        f"{len(gone)} resources are no longer in the spec: pipeline apply --prune deletes them"
    )
    assert pruned.exit_code == 0, pruned.output
    assert pruned.stdout.splitlines()[: len(gone)] == [
        f"- delete {kind} {name} (no longer in the spec)" for kind, name in gone
    ]
    assert backend.describe_stream(USA) is None
    assert backend.describe_firehose(USA_FIREHOSE) is None


def test_prune_is_refused_while_a_run_holds_the_pipeline_before_recording_its_version(
    cli_target, tmp_path
):
    applied = cli_target.invoke("apply", str(ECOMMERCE))
    assert applied.exit_code == 0, applied.output
    copy = copy_without_usa(tmp_path)

    with cli_target.backend(wall=LATER.timestamp).running("de-c2w2lab1-etl") as lease:
        refused = cli_target.invoke("apply", str(copy), "--prune", "--yes")

    assert refused.exit_code == 1
    assert refused.stderr.startswith(
        f"error: pipeline de-c2w2lab1-etl is running ({holder_text(cli_target, lease)}) with "
        f"another version of the spec (none recorded yet; this file is {spec.load(copy).version})"
    )
    assert cli_target.backend().describe_stream(USA) is not None


def test_destroy_is_refused_while_a_run_holds_the_pipeline(cli_target):
    applied = cli_target.invoke("apply", str(ECOMMERCE))
    assert applied.exit_code == 0, applied.output
    backend = cli_target.backend()

    with cli_target.backend(wall=LATER.timestamp).running("de-c2w2lab1-etl") as lease:
        backend.set_run_info("de-c2w2lab1-etl", RunInfo(spec.load(ECOMMERCE).version, LATER))
        refused = cli_target.invoke("destroy", str(ECOMMERCE), "--yes")
    destroyed = cli_target.invoke("destroy", str(ECOMMERCE), "--yes")  # once it stopped

    assert refused.exit_code == 1
    assert refused.stdout == ""
    assert refused.stderr == (
        f"error: pipeline de-c2w2lab1-etl is running ({holder_text(cli_target, lease)}), "
        "reading and writing what destroy deletes: stop it, then destroy\n"
    )
    assert destroyed.exit_code == 0, destroyed.output
    assert destroyed.stdout.splitlines()[-1].startswith("Destroyed ")
    assert backend.describe_stream(SOURCE) is None


def test_destroy_also_removes_what_the_pipeline_owns_and_the_spec_no_longer_declares(
    state, backend, write_spec
):
    spec = write_spec(MINIMAL)
    pipeline("apply", spec)
    write_spec(WITHOUT_USA)

    destroyed = pipeline("destroy", spec, "--yes")

    assert destroyed.stdout == (
        "- destroy stream in\n"
        "- destroy stream other-out\n"
        "- destroy stream usa-out (no longer in the spec)\n"
        "Destroyed 3 resources.\n"
    )
    assert all(backend.describe_stream(s) is None for s in ("in", "usa-out", "other-out"))


def test_a_resource_apply_found_there_is_never_pruned_nor_destroyed(state, backend, write_spec):
    backend.create_stream("usa-out", 2)  # made before apply, by hand or another tool
    backend.create_bucket("shop-lake")
    spec = write_spec(WITH_LAKE)
    applied = pipeline("apply", spec)
    write_spec(WITHOUT_USA)

    planned = pipeline("plan", spec)
    pruned = pipeline("apply", spec, "--prune", "--yes")
    write_spec(WITH_LAKE)
    destroyed = pipeline("destroy", spec, "--yes")

    assert applied.stdout == (
        "+ create stream in (1 shard)\n"
        "+ create stream other-out (1 shard)\n"
        "Applied: 2 created, 0 changed, 2 unchanged.\n"
    )
    assert planned.stdout == KEPT + "No changes: 2 resources up to date.\n"
    assert pruned.stdout == "No changes: 2 resources up to date.\n"
    assert destroyed.stdout == (
        "  keep stream usa-out (not created by this pipeline)\n"
        "  keep bucket shop-lake (not created by this pipeline)\n"
        "- destroy stream in\n"
        "- destroy stream other-out\n"
        "Destroyed 2 resources.\n"
    )
    assert backend.describe_stream("usa-out").open_shard_count == 2
    assert backend.bucket_exists("shop-lake")
    assert backend.describe_stream("in") is None


# TO_BUCKET without the stream the dead letter was before, which apply --prune then deletes.
WITHOUT_STREAM = TO_BUCKET.replace("    rejects: {name: shop-rejects, shards: 1}\n", "")
HOLDS = "holds 2 dead-letter entries of pipeline shop not redriven"


def test_prune_and_destroy_say_which_stream_holds_dead_letter_entries_not_redriven(tmp_path):
    target = CliTarget("local", tmp_path / "state")
    path = shop_applied(target, tmp_path, SHOP_WITH_BUCKET)
    target.backend().put_records("shop-in", [(b"not json", "x"), (b"[]", "y")])
    assert target.invoke("run", str(path), "--until-idle", "0").exit_code == 0
    path.write_text(WITHOUT_STREAM)

    pruned = target.invoke("apply", str(path), "--prune", input="n\n")
    destroyed = target.invoke("destroy", str(path), input="n\n")

    assert pruned.stdout.splitlines()[0] == (
        f"- delete stream shop-rejects (no longer in the spec; {HOLDS})"
    )
    assert destroyed.stdout.splitlines()[:4] == [
        "- destroy stream shop-in",
        "- destroy stream shop-out",
        f"- destroy stream shop-rejects (no longer in the spec; {HOLDS})",
        "- destroy bucket shop-rejects-bucket (and every object in it)",
    ]


def test_on_aws_destroy_says_which_stream_and_bucket_hold_dead_letter_entries(
    moto_cli, endpoint, tmp_path
):
    """Entries in a stream, then in a bucket once the spec names it instead: both say so."""
    _, pipeline = moto_cli
    path = tmp_path / "shop.yaml"
    path.write_text(SHOP_WITH_BUCKET)
    pipeline("apply", str(path))
    backend = AwsBackend("us-east-1", endpoint_url=endpoint)
    backend.put_records("shop-in", [(b"not json", "x"), (b"[]", "y")])
    pipeline("run", str(path), "--until-idle", "0")
    path.write_text(TO_BUCKET)
    backend.put_records("shop-in", [(b"still not json", "z")])
    pipeline("run", str(path), "--until-idle", "0")

    destroyed = pipeline("destroy", str(path), exit_code=None)

    assert [line for line in destroyed.stdout.splitlines() if "dead-letter" in line] == [
        f"- destroy stream shop-rejects ({HOLDS})",
        "- destroy bucket shop-rejects-bucket (and every object in it; holds 1 dead-letter "
        "entry of pipeline shop not redriven)",
    ]
