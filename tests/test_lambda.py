"""A spec with `lambda:` on the aws target: apply packages the runner with the spec into a
function, gives it a least-privilege role and maps the source stream to it; a second apply
changes nothing; edits update the configuration or the code; destroy removes them all.
Against a moto server on 127.0.0.1 (moto creates functions and mappings, never invokes them)."""

import base64
import io
import json
import subprocess
import sys
import zipfile
from itertools import islice

import pytest
from conftest import PIPELINES
from test_aws_pipeline import read_stream

from runner import spec
from runner.backends import aws as aws_backends
from runner.backends.aws import AwsBackend
from runner.commands.produce import synthetic_sessions
from runner.function import package
from runner.spec import version

ACCOUNT = "123456789012"  # moto's account
LAMBDA_SPEC = PIPELINES / "ecommerce-lambda.yaml"
SOURCE = "de-c2w2lab1-kinesis-data-stream"
FUNCTION = "de-c2w2lab1-etl"
ROLE = "de-c2w2lab1-etl-role"
USA = "de-c2w2lab1-usa-data-stream"
INTERNATIONAL = "de-c2w2lab1-international-data-stream"


@pytest.fixture
def aws(moto_cli):
    """conftest's moto_cli; the Lambda spec's resources are destroyed after the test."""
    yield moto_cli
    _, pipeline = moto_cli
    pipeline("destroy", str(LAMBDA_SPEC), "--yes", exit_code=None)


def aws_endpoint(client):
    return client("kinesis").meta.endpoint_url


def mapping_of(client):
    (mapping,) = client("lambda").list_event_source_mappings(FunctionName=FUNCTION)[
        "EventSourceMappings"
    ]
    return mapping


def test_apply_creates_the_function_its_role_and_its_mapping_with_the_specs_settings(aws):
    client, pipeline = aws

    applied = pipeline("apply", str(LAMBDA_SPEC)).stdout.splitlines()

    function_line = next(line for line in applied if line.startswith("+ create function "))
    assert function_line.startswith(
        f"+ create function {FUNCTION} (python3.13, 256 MB, 60 s, package "
    )
    assert f"+ create role {ROLE} (assumed by Lambda)" in applied
    assert (
        f"+ create event source mapping {FUNCTION} <- {SOURCE} (batches of 100, from TRIM_HORIZON)"
        in applied
    )
    # Lambda keeps the source's checkpoints; the table keeps redrive's positions.
    assert "+ create checkpoint table de-c2w2lab1-etl-checkpoints (DynamoDB, on demand)" in applied
    assert applied[-1] == "Applied: 15 created, 0 changed, 0 unchanged."

    configuration = client("lambda").get_function(FunctionName=FUNCTION)["Configuration"]
    assert (
        configuration["Runtime"],
        configuration["Handler"],
        configuration["MemorySize"],
        configuration["Timeout"],
        configuration["Role"],
    ) == (
        "python3.13",
        "runner.function.handler.handle",
        256,
        60,
        f"arn:aws:iam::{ACCOUNT}:role/{ROLE}",
    )
    mapping = mapping_of(client)
    assert mapping["EventSourceArn"] == f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/{SOURCE}"
    assert (
        mapping["BatchSize"],
        mapping["MaximumBatchingWindowInSeconds"],
        mapping["ParallelizationFactor"],
        mapping["MaximumRetryAttempts"],
        mapping["MaximumRecordAgeInSeconds"],
        mapping["BisectBatchOnFunctionError"],
        mapping["FunctionResponseTypes"],
        mapping["StartingPosition"],
    ) == (100, 1, 1, 5, 3600, True, ["ReportBatchItemFailures"], "TRIM_HORIZON")

    iam = client("iam")
    trust = iam.get_role(RoleName=ROLE)["Role"]["AssumeRolePolicyDocument"]["Statement"]
    assert [statement["Principal"] for statement in trust] == [{"Service": "lambda.amazonaws.com"}]
    (name,) = iam.list_role_policies(RoleName=ROLE)["PolicyNames"]
    policy = iam.get_role_policy(RoleName=ROLE, PolicyName=name)["PolicyDocument"]
    allowed = {
        (action, resource)
        for statement in policy["Statement"]
        for action in statement["Action"]
        for resource in statement["Resource"]
    }
    stream = f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/"
    assert {r for a, r in allowed if a == "kinesis:PutRecords"} == {
        f"{stream}de-c2w2lab1-usa-data-stream",
        f"{stream}de-c2w2lab1-international-data-stream",
    }
    assert {r for a, r in allowed if a == "kinesis:GetRecords"} == {f"{stream}{SOURCE}"}
    assert {r for a, r in allowed if a == "s3:PutObject"} == {
        f"arn:aws:s3:::de-c2w2lab1-{ACCOUNT}-dead-letter/dead-letter/*"
    }
    assert {r for a, r in allowed if a.startswith("dynamodb:")} == {
        f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/{FUNCTION}-checkpoints"
    }

    again = pipeline("apply", str(LAMBDA_SPEC))
    assert again.stdout == "No changes: 15 resources up to date.\n"


def test_edits_update_the_configuration_the_mapping_or_the_code(aws, tmp_path):
    client, pipeline = aws
    pipeline("apply", str(LAMBDA_SPEC))
    code = client("lambda").get_function(FunctionName=FUNCTION)["Configuration"]["CodeSha256"]
    edited = tmp_path / "ecommerce-lambda.yaml"
    text = LAMBDA_SPEC.read_text()

    edited.write_text(
        text.replace("memory_mb: 256", "memory_mb: 512").replace(
            "batch_size: 100", "batch_size: 500"
        )
    )
    planned = pipeline("plan", str(edited)).stdout.splitlines()
    assert [line for line in planned if line.startswith("~")] == [
        f"~ change function {FUNCTION} (memory_mb 256 -> 512, spec version "
        f"{spec.load(LAMBDA_SPEC).version} -> {spec.load(edited).version})",
        f"~ change event source mapping {FUNCTION} <- {SOURCE} (batch_size 100 -> 500)",
    ]
    pipeline("apply", str(edited))
    assert (
        client("lambda").get_function(FunctionName=FUNCTION)["Configuration"]["MemorySize"] == 512
    )
    assert mapping_of(client)["BatchSize"] == 500

    # A changed route is a changed spec in the package: the code is updated, and the spec
    # version the function's dead-letter entries carry.
    before = spec.load(edited).version
    edited.write_text(edited.read_text().replace("country == 'USA'", "country == 'US'"))
    planned = pipeline("plan", str(edited)).stdout.splitlines()
    changes = [line for line in planned if line.startswith("~")]
    assert changes[0] == (
        f"~ change function {FUNCTION} (spec version {before} -> {spec.load(edited).version})"
    )
    assert changes[1].startswith(f"~ update function code {FUNCTION} (package ")
    assert changes[1].endswith(" MB: the runner or the spec changed)")
    assert len(changes) == 2
    assert planned[-1] == "Plan: 0 to create, 1 to change, 14 unchanged."  # 15 resources
    assert pipeline("apply", str(edited)).stdout.splitlines()[-1] == (
        "Applied: 0 created, 1 changed, 14 unchanged."
    )
    updated = client("lambda").get_function(FunctionName=FUNCTION)["Configuration"]
    assert updated["CodeSha256"] != code
    assert updated["Environment"]["Variables"] == {
        "PIPELINE_SPEC_VERSION": spec.load(edited).version
    }
    assert pipeline("apply", str(edited)).stdout.startswith("No changes:")

    # What the handler does not use (a firehose's buffer, where the source starts, a comment)
    # changes the spec's version, not the code.
    edited.write_text(
        "# a comment\n"
        + edited.read_text()
        .replace("interval_s: 60", "interval_s: 120")
        .replace("start: trim_horizon", "start: latest")
    )
    changes = [line for line in pipeline("plan", str(edited)).stdout.splitlines() if "~" in line]
    applied = updated["Environment"]["Variables"]["PIPELINE_SPEC_VERSION"]
    assert [line for line in changes if "function" in line] == [
        f"~ change function {FUNCTION} (spec version {applied} -> {spec.load(edited).version})"
    ]


def test_destroy_removes_the_mapping_the_function_and_its_role(aws):
    client, pipeline = aws
    pipeline("apply", str(LAMBDA_SPEC))

    destroyed = pipeline("destroy", str(LAMBDA_SPEC), "--yes").stdout.splitlines()

    assert destroyed[:3] == [
        f"- destroy event source mapping {FUNCTION} <- {SOURCE}",
        f"- destroy function {FUNCTION}",
        "- destroy firehose de-c2w2lab1-firehose-usa",
    ]
    assert client("lambda").list_functions()["Functions"] == []
    assert client("lambda").list_event_source_mappings()["EventSourceMappings"] == []
    roles = {role["RoleName"] for role in client("iam").list_roles()["Roles"]}
    assert ROLE not in roles


def test_the_lambda_spec_is_the_scenario_spec_with_a_lambda_section():
    plain = (PIPELINES / "ecommerce.yaml").read_text()
    with_lambda = LAMBDA_SPEC.read_text()
    body = plain[plain.index("pipeline:") :]
    rest = with_lambda[with_lambda.index("pipeline:") :]
    assert rest.startswith(body)
    assert rest[len(body) :].startswith("\nlambda:\n")


def test_the_unpacked_package_in_a_fresh_interpreter_handles_an_event_of_moto_records(
    aws, endpoint, tmp_path
):
    client, pipeline = aws
    pipeline("apply", str(LAMBDA_SPEC))
    kinesis = client("kinesis")
    sessions = list(islice(synthetic_sessions(7), 20))
    entries = [{"Data": json.dumps(s).encode(), "PartitionKey": s["session_id"]} for s in sessions]
    kinesis.put_records(StreamName=SOURCE, Records=[*entries, {"Data": b"{", "PartitionKey": "x"}])
    (shard,) = kinesis.list_shards(StreamName=SOURCE)["Shards"]
    iterator = kinesis.get_shard_iterator(
        StreamName=SOURCE, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    event = {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": record["PartitionKey"],
                    "sequenceNumber": record["SequenceNumber"],
                    "data": base64.b64encode(record["Data"]).decode(),
                    "approximateArrivalTimestamp": record[
                        "ApproximateArrivalTimestamp"
                    ].timestamp(),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard['ShardId']}:{record['SequenceNumber']}",
                "eventName": "aws:kinesis:record",
                "awsRegion": "us-east-1",
                "eventSourceARN": f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/{SOURCE}",
            }
            for record in kinesis.get_records(ShardIterator=iterator)["Records"]
        ]
    }
    loaded = spec.load(LAMBDA_SPEC, account_id=lambda region: ACCOUNT)
    task = tmp_path / "task"
    zipfile.ZipFile(io.BytesIO(package.build(loaded).code)).extractall(task)
    runtime = package.runtime_like_lambda(tmp_path / "runtime")
    (tmp_path / "event.json").write_text(json.dumps(event))
    code = f"""
import json, sys
sys.path[:0] = [{str(task)!r}, {str(runtime)!r}]
from runner.function.handler import handle
class Context:
    def get_remaining_time_in_millis(self):
        return 60_000
print(json.dumps(handle(json.load(open("event.json")), Context())))
"""
    environment = {
        "AWS_ACCESS_KEY_ID": "testing",  # what Lambda gives a function: its role's keys,
        "AWS_SECRET_ACCESS_KEY": "testing",  # its region; no config files
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "PIPELINE_SPEC_VERSION": loaded.version,  # as apply configures the function
    }
    done = subprocess.run(
        [sys.executable, "-S", "-I", "-c", code],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert (done.returncode, done.stdout) == (0, '{"batchItemFailures": []}\n'), done.stderr
    assert done.stderr.splitlines()[-1].startswith("[de-c2w2lab1-etl] in 21 | out ")
    routed = {
        name: sorted(record["session_id"] for record in read_stream(kinesis, name))
        for name in (USA, INTERNATIONAL)
    }
    assert routed == {
        USA: sorted(s["session_id"] for s in sessions if s["country"] == "USA"),
        INTERNATIONAL: sorted(s["session_id"] for s in sessions if s["country"] != "USA"),
    }
    s3 = client("s3")
    bucket = f"de-c2w2lab1-{ACCOUNT}-dead-letter"
    (key,) = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    (entry,) = [
        json.loads(line)
        for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()
    ]
    assert (entry["reason"], entry["data"]) == (
        "not JSON: Expecting property name enclosed in double quotes at column 2",
        "{",
    )
    assert entry["spec_version"] == loaded.version == version(LAMBDA_SPEC)
    # Where it wrote the entry is noted beside the checkpoints, for `status` after a reload.
    note = {
        "stream": {"S": "#note"},
        "shard_id": {"S": f"dead-letter:bucket {bucket} under dead-letter/"},
    }
    item = client("dynamodb").get_item(TableName=f"{FUNCTION}-checkpoints", Key=note)["Item"]
    assert json.loads(item["text"]["S"]) == {"bucket": bucket, "prefix": "dead-letter/"}


def test_status_shows_the_function_and_its_mapping(aws, tmp_path):
    client, pipeline = aws
    pipeline("apply", str(LAMBDA_SPEC))

    shown = pipeline("status", str(LAMBDA_SPEC)).stdout.splitlines()

    (mapping,) = client("lambda").list_event_source_mappings()["EventSourceMappings"]
    assert shown[:2] == [
        "pipeline de-c2w2lab1-etl on the aws target in us-east-1 at " + shown[0].split(" at ")[1],
        f"source: stream {SOURCE}, 1 shard",
    ]
    assert shown[2:8] == [
        "  shardId-000000000000  open",
        f"lambda: function {FUNCTION} (python3.13, 256 MB, 60 s) runs this spec, as it says",
        f"  mapping {mapping['UUID']}: {mapping['State']}, last result "
        f"{mapping.get('LastProcessingResult') or 'none yet'}",
        "  batches of 100, window 1 s, 1 per shard at once, retries 5, max record age 3600 s, "
        "bisect on error on, started at TRIM_HORIZON",
        "  Lambda keeps the checkpoints: how far behind it is, is the function's IteratorAge "
        "metric in CloudWatch",
        f"dead letter: bucket de-c2w2lab1-{ACCOUNT}-dead-letter under dead-letter/: 0 entries "
        "in 0 objects",
    ]

    edited = tmp_path / "ecommerce-lambda.yaml"
    edited.write_text(
        LAMBDA_SPEC.read_text()
        .replace("memory_mb: 256", "memory_mb: 1024")
        .replace("batch_size: 100", "batch_size: 300")
        .replace("start: trim_horizon", "start: latest")
    )
    shown = pipeline("status", str(edited)).stdout.splitlines()
    assert shown[3:7] == [
        f"lambda: function {FUNCTION} (python3.13, 256 MB, 60 s) differs from the spec; "
        f"`pipeline apply {edited}` would:",
        f"    ~ change function {FUNCTION} (memory_mb 256 -> 1024, spec version "
        f"{spec.load(LAMBDA_SPEC).version} -> {spec.load(edited).version})",
        f"    ~ change event source mapping {FUNCTION} <- {SOURCE} (batch_size 100 -> 300)",
        f"  mapping {mapping['UUID']}: {mapping['State']}, last result "
        f"{mapping.get('LastProcessingResult') or 'none yet'}",
    ]
    assert shown[7].endswith(
        "started at TRIM_HORIZON (the spec's start is LATEST, which a mapping cannot change: "
        "it reads on from where it is)"
    )
    found = json.loads(pipeline("status", str(edited), "--json").stdout)["lambda"]
    assert (found["as_the_spec_says"], len(found["differences"])) == (False, 2)
    assert found["mapping"]["batch_size"] == 100


@pytest.fixture
def lambda_calls(monkeypatch):
    """The Lambda operations the aws backends the CLI makes call, in order."""
    calls = []

    class Watched(AwsBackend):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Before any client is made: every client inherits the session's hooks.
            self._session.events.register(
                "before-call.lambda", lambda model, **_: calls.append(model.name)
            )

    monkeypatch.setattr(aws_backends, "AwsBackend", Watched)
    return calls


def test_status_describes_the_function_and_its_mapping_once(aws, lambda_calls):
    client, pipeline = aws
    pipeline("apply", str(LAMBDA_SPEC))
    lambda_calls.clear()

    pipeline("status", str(LAMBDA_SPEC))

    # Each description reads the pipeline tag of what it describes too.
    assert lambda_calls == [
        "GetFunctionConfiguration",
        "ListTags",
        "ListEventSourceMappings",
        "ListTags",
    ]


def test_a_lambda_section_removed_from_the_spec_is_pruned(aws, tmp_path):
    client, pipeline = aws
    pipeline("apply", str(LAMBDA_SPEC))
    plain = tmp_path / "ecommerce.yaml"
    text = LAMBDA_SPEC.read_text()
    plain.write_text(text[: text.index("\nlambda:\n")] + "\n")

    left = pipeline("apply", str(plain)).stdout.splitlines()
    assert left[-1] == "3 resources are no longer in the spec: pipeline apply --prune deletes them"
    assert client("lambda").list_functions()["Functions"] != []

    pruned = pipeline("apply", str(plain), "--prune", "--yes").stdout.splitlines()

    assert pruned[:3] == [
        f"- delete event source mapping {FUNCTION} <- {SOURCE} (no longer in the spec)",
        f"- delete function {FUNCTION} (no longer in the spec)",
        f"- delete role {ROLE} (no longer in the spec)",
    ]
    assert client("lambda").list_functions()["Functions"] == []
    assert client("lambda").list_event_source_mappings()["EventSourceMappings"] == []
    assert ROLE not in {role["RoleName"] for role in client("iam").list_roles()["Roles"]}


def test_a_function_of_that_name_not_made_by_the_pipeline_is_never_taken_over(aws):
    client, pipeline = aws
    pipeline("apply", str(LAMBDA_SPEC))
    client("lambda").untag_resource(
        Resource=client("lambda").get_function(FunctionName=FUNCTION)["Configuration"][
            "FunctionArn"
        ],
        TagKeys=["pipeline"],
    )
    code = client("lambda").get_function(FunctionName=FUNCTION)["Configuration"]["CodeSha256"]

    try:
        refused = pipeline("apply", str(LAMBDA_SPEC), exit_code=1)
        kept = client("lambda").get_function(FunctionName=FUNCTION)["Configuration"]
    finally:
        client("lambda").delete_function(FunctionName=FUNCTION)  # destroy keeps it

    assert refused.stderr == (
        f"error: function {FUNCTION} exists and was not created by pipeline de-c2w2lab1-etl "
        "(its pipeline tag: none): apply would replace its code; name another function in "
        "lambda.function, or delete that one\n"
    )
    assert kept["CodeSha256"] == code


def test_lambda_and_a_pipeline_run_never_both_read_the_source(aws, tmp_path):
    client, pipeline = aws
    plain = PIPELINES / "ecommerce.yaml"
    pipeline("apply", str(plain))
    backend = AwsBackend("us-east-1", endpoint_url=aws_endpoint(client))
    with backend.running("de-c2w2lab1-etl", lambda line: None):
        refused = pipeline("apply", str(LAMBDA_SPEC), exit_code=1)
    backend.close()
    assert refused.stderr.startswith(
        f"error: a pipeline run of de-c2w2lab1-etl reads stream {SOURCE} (lease held by "
    )
    assert refused.stderr.endswith(
        "): stop it before Lambda runs the pipeline, or both handle every record\n"
    )
    assert client("lambda").list_functions()["Functions"] == []  # nothing touched

    pipeline("apply", str(LAMBDA_SPEC))
    run = pipeline("run", str(plain), "--until-idle", "0", exit_code=1)
    assert run.stderr == (
        f"error: Lambda function {FUNCTION} runs pipeline de-c2w2lab1-etl already (its event "
        f"source mapping reads stream {SOURCE}): a run here too would handle every record "
        f"twice; `pipeline apply {plain} --prune` deletes the mapping, since this spec has no "
        "`lambda:` section\n"
    )
