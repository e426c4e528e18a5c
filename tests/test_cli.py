import errno
import gc
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import MINIMAL, PIPELINES
from moto import mock_aws

from runner import cli as cli_module
from runner.cli import cli

SAMPLE = (
    '{"session_id": "a1", "customer_number": 100, "city": "Washington", "country": "USA", '
    '"credit_limit": 1000, "browse_history": [{"product_code": "Product1", "quantity": 2, '
    '"in_shopping_cart": true}, {"product_code": "Product2", "quantity": 1, '
    '"in_shopping_cart": false}]}'
)


def invoke(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input)


def test_validate_the_shipped_specs():
    result = invoke(
        "validate", str(PIPELINES / "cli-router.yaml"), str(PIPELINES / "ecommerce.yaml")
    )
    assert result.exit_code == 0
    assert result.output == (
        f"{PIPELINES / 'cli-router.yaml'}: ok: pipeline de-c2w2lab1-cli, 1 stream, 0 buckets, "
        "0 firehoses, 0 transform steps, no route\n"
        f"{PIPELINES / 'ecommerce.yaml'}: ok: pipeline de-c2w2lab1-etl, 3 streams, 3 buckets, "
        "2 firehoses, 1 transform step, 2 route cases\n"
    )


def test_validate_lists_the_problems_of_every_spec_and_exits_2(write_spec):
    good = write_spec(MINIMAL, "good.yaml")
    bad = write_spec(MINIMAL.replace("to: usa", "to: nowhere"), "bad.yaml")
    missing = good.parent / "missing.yaml"
    result = invoke("validate", str(bad), str(good), str(missing))
    assert result.exit_code == 2
    assert result.stdout.startswith(f"{good}: ok: pipeline shop")
    assert result.stderr == (
        f"{bad}:13:11: route.cases[0].to: unknown stream 'nowhere' "
        "(streams: source, usa, other)\n"
        f"{missing}: no such file\n"
    )


def quoted_usa(write_spec):
    """MINIMAL with `country == "USA"`, and the warning it gets."""
    path = write_spec(MINIMAL.replace("country == 'USA'", 'country == "USA"'))
    return path, (
        f'{path}:12:13: route.cases[0].when: warning: \'country == "USA"\': "USA" at column 12 '
        "is a field, not text; write 'USA' for the text\n"
    )


def test_validate_prints_warnings_and_exits_0_or_with_strict_refuses_the_spec(write_spec):
    path, warning = quoted_usa(write_spec)
    result = invoke("validate", str(path))
    assert (result.exit_code, result.stderr) == (0, warning)
    assert result.stdout == (
        f"{path}: ok: pipeline shop, 3 streams, 0 buckets, 0 firehoses, 0 transform steps, "
        "2 route cases\n"
    )
    result = invoke("validate", "--strict", str(path))
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", warning)


RUN_REFUSES_ON_AWS = (
    "on the aws target the dead letter must be a stream or a bucket, since the checkpoints "
    "outlive this machine and its state folder: add dead_letter: {bucket: KEY} with a key "
    "of resources.buckets (it holds entries of any size), or dead_letter: {stream: KEY}"
)


def test_validate_on_the_aws_target_warns_of_a_dead_letter_run_would_refuse(
    write_spec, state, aws_env
):
    path = write_spec(MINIMAL)  # no dead_letter: the state folder's file
    why = RUN_REFUSES_ON_AWS
    result = invoke("validate", str(path), "--target", "aws")
    assert (result.exit_code, result.stderr) == (
        0,
        f"{path}: warning: `pipeline run` refuses this spec: {why}\n",
    )
    assert result.stdout.startswith(f"{path}: ok: pipeline shop")
    result = invoke("validate", "--strict", str(path), "--target", "aws")
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"{path}: {why}\n")
    assert invoke("validate", "--strict", str(path)).exit_code == 0  # the local target
    assert not state.exists()


@pytest.mark.parametrize(
    "command, options",
    [
        ("preview", []),
        ("plan", []),
        ("apply", []),
        ("destroy", ["--yes"]),
        ("status", []),
        ("reset", ["--to", "latest", "--yes"]),
    ],
)
def test_every_command_but_run_warns_on_aws_of_a_dead_letter_run_would_refuse(
    write_spec, state, aws_env, command, options
):
    path = write_spec(MINIMAL)  # no dead_letter: the state folder's file
    with mock_aws():
        result = invoke(command, str(path), "--target", "aws", *options, input="")
        strict = invoke(command, "--strict", str(path), "--target", "aws", *options, input="")

    assert result.stderr.splitlines()[0] == (
        f"{path}: warning: `pipeline run` refuses this spec: {RUN_REFUSES_ON_AWS}"
    )
    assert (strict.exit_code, strict.stdout, strict.stderr) == (
        2,
        "",
        f"{path}: {RUN_REFUSES_ON_AWS}\n",
    )


@pytest.mark.parametrize("command", ["preview", "plan", "apply", "destroy", "run"])
def test_every_command_that_loads_a_spec_warns_and_with_strict_refuses_it(
    write_spec, state, command
):
    path, warning = quoted_usa(write_spec)
    result = invoke(command, "--strict", str(path), input="")
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", warning)
    assert not state.exists()


def test_a_command_prints_the_warnings_once_and_goes_on(write_spec, state):
    path, warning = quoted_usa(write_spec)
    result = invoke("plan", str(path))
    assert (result.exit_code, result.stderr) == (0, warning)
    assert result.stdout == (
        "+ create stream in (1 shard)\n"
        "+ create stream usa-out (2 shards)\n"
        "+ create stream other-out (1 shard)\n"
        "Plan: 3 to create, 0 to change, 0 unchanged.\n"
    )


def test_a_run_leaves_the_cycle_collector_as_it_found_it(write_spec, state):
    path = write_spec(MINIMAL)
    invoke("apply", str(path))
    invoke("produce", "--stream", "in", "--json", '{"session_id": "a", "country": "USA"}')
    before = (gc.get_threshold(), gc.get_freeze_count())

    result = invoke("run", str(path), "--until-idle", "0")

    assert result.exit_code == 0, result.stderr
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_run_says_whether_it_resumes_from_checkpoints_or_starts_at_source_start(write_spec, state):
    path = write_spec(MINIMAL)
    invoke("apply", str(path))
    invoke("produce", "--stream", "in", "--json", '{"session_id": "a", "country": "USA"}')

    def start_line(spec_path):
        result = invoke("run", str(spec_path), "--until-idle", "0")
        assert result.exit_code == 0, result.stderr
        return result.stderr.splitlines()[1]

    assert start_line(path) == "[shop] no checkpoints for pipeline shop: starting at trim_horizon"
    assert start_line(path) == "[shop] resuming from checkpoints of 1 shard"
    renamed = write_spec(
        MINIMAL.replace("pipeline: shop", "pipeline: shop-2").replace(
            "  stream: source", "  stream: source\n  start: latest"
        ),
        "renamed.yaml",
    )
    assert start_line(renamed) == "[shop-2] no checkpoints for pipeline shop-2: starting at latest"


def test_preview_sends_other_countries_international_and_bad_lines_to_the_dead_letter():
    french = SAMPLE.replace('"USA"', '"France"').replace('"a1"', '"b7"')
    lines = "\n".join([french, '{"country": 5}', "not json", "[1, 2]", ""]) + "\n"
    result = invoke("preview", "--jsonl", str(PIPELINES / "ecommerce.yaml"), input=lines)
    assert result.exit_code == 0, result.output
    outputs = [json.loads(line) for line in result.output.splitlines()]
    assert outputs[0]["line"] == 1
    assert outputs[0]["routes"] == [
        {
            "to": "international",
            "stream": "de-c2w2lab1-international-data-stream",
            "partition_key": "b7",
        }
    ]
    assert outputs[0]["record"]["overall_product_quantity"] == 3
    assert outputs[1]["dead_letter"].startswith("transform[0].set.overall_product_quantity: ")
    assert outputs[2:] == [
        {"line": 3, "dead_letter": "not JSON: Expecting value at column 1"},
        {"line": 4, "dead_letter": "not a JSON object: got an array"},
    ]


def test_preview_and_produce_name_a_bad_line_by_the_same_line_number(state, tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text(SAMPLE + "\n\n" + "not json\n")
    spec = str(PIPELINES / "ecommerce.yaml")
    previewed = invoke("preview", spec, str(records))
    assert previewed.exit_code == 0, previewed.output
    assert "line 3: dead letter: not JSON: Expecting value at column 1\n" in previewed.output
    assert previewed.output.endswith("2 records: 1 dead-lettered, 1 to usa\n")

    assert invoke("apply", spec).exit_code == 0
    produced = invoke(
        "produce", "--stream", "de-c2w2lab1-kinesis-data-stream", "--file", str(records)
    )
    assert produced.exit_code == 1
    assert produced.stderr.startswith("line 3: not JSON: Expecting value at column 1\n")


def test_preview_of_a_spec_without_a_route_is_refused():
    result = invoke("preview", str(PIPELINES / "cli-router.yaml"), input="{}\n")
    assert result.exit_code == 2
    assert "has no route, so there is nothing to preview" in result.output


def test_schema_prints_the_json_schema():
    result = invoke("schema")
    assert result.exit_code == 0
    assert json.loads(result.output)["title"] == "a pipeline spec"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a full disk")
@pytest.mark.parametrize("command", ["schema", "validate", "plan", "apply", "status"])
def test_output_to_a_full_disk_is_one_line_naming_standard_output(state, command):
    spec = str(PIPELINES / "ecommerce.yaml")
    if command == "status":
        assert invoke("apply", spec).exit_code == 0
    args = [] if command == "schema" else [spec]

    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "runner", command, *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )

    assert (done.returncode, done.stderr) == (
        1,
        "error: cannot write standard output: No space left on device\n",
    )


@pytest.mark.parametrize("command", ["consume", "status", "plan", "preview", "validate"])
def test_commands_that_only_read_make_no_state_folder(tmp_path, command):
    missing = tmp_path / "nonexistent"
    spec = PIPELINES / "ecommerce.yaml"
    args = ["--stream", "in", "--no-follow"] if command == "consume" else [str(spec)]

    result = invoke(command, *args, "--state-dir", str(missing), input="")

    assert (result.exit_code, result.stderr) == {
        "consume": (
            1,
            f"error: stream 'in' not found on the local target in {missing} (--stream takes "
            "the stream's own name, not its key in a spec; `pipeline apply SPEC` creates it)\n",
        ),
        "status": (
            1,
            "error: stream de-c2w2lab1-kinesis-data-stream not found on the local target in "
            f"{missing}: run `pipeline apply {spec}` first\n",
        ),
    }.get(command, (0, ""))
    if command == "plan":  # an empty state: everything is to create
        assert result.stdout.endswith("Plan: 8 to create, 0 to change, 0 unchanged.\n")
    assert not missing.exists()


def test_the_help_of_commands_that_take_no_spec_does_not_mention_one():
    for command in ("produce", "consume"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "spec" not in result.output.lower(), result.output
        assert "AWS region (default: your AWS configuration's, else us-east-1)." in " ".join(
            result.output.split()
        )


def test_a_disk_error_no_command_named_is_still_one_line_and_exit_1(monkeypatch):
    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/records.jsonl")

    monkeypatch.setattr(cli_module, "preview_records", unreadable)

    result = invoke("preview", str(PIPELINES / "ecommerce.yaml"), "-", input="")

    assert (result.exit_code, result.stderr.splitlines()[-1]) == (
        1,
        "error: /srv/records.jsonl: Permission denied",
    )


def test_run_of_a_lambda_spec_on_aws_is_refused_pointing_at_status(write_spec, aws_env):
    path = write_spec(
        MINIMAL.replace(
            "  streams:\n", "  buckets:\n    rejects: {name: shop-rejects}\n  streams:\n"
        )
        + "dead_letter: {bucket: rejects}\nlambda: {function: shop-etl}\n"
    )
    with mock_aws():
        result = invoke("run", str(path), "--target", "aws")
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        f"{path}: this pipeline runs in Lambda function shop-etl; pipeline status shows it\n",
    )
