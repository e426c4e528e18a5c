"""Lambda functions, their execution roles and event source mappings: none on the local
target, and on AWS as moto fakes it (it keeps functions and mappings, and invokes nothing)."""

import dataclasses
import datetime
import io
import zipfile

import boto3
import pytest
from botocore.exceptions import ClientError
from fakes import Clock
from moto import mock_aws

from runner.backends.aws import AwsBackend
from runner.backends.base import (
    HANDLER,
    KINDS,
    RUNTIME,
    AlreadyExists,
    BackendError,
    FunctionDescription,
    MappingDescription,
    Throttled,
    code_sha256,
    mapping_name,
    split_mapping_name,
)
from runner.backends.local import LocalBackend

ACCOUNT = "123456789012"  # moto's account


def package(text: str) -> bytes:
    """A zip holding one module whose source is `text`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", text)
    return buffer.getvalue()


CODE = package("def handle(event, context):\n    return {}\n")

ETL = FunctionDescription(
    name="shop-etl",
    runtime=RUNTIME,
    handler=HANDLER,
    memory_mb=256,
    timeout_s=60,
    role="shop-etl-role",
    code_sha256=code_sha256(CODE),
    environment={"PIPELINE_LOG_FORMAT": "json"},
)

MAPPING = MappingDescription(
    function="shop-etl",
    stream="shop-in",
    batch_size=500,
    batching_window_s=5,
    parallelization=3,
    max_retries=10,
    max_record_age_s=7200,
    bisect_on_error=True,
    starting_position="TRIM_HORIZON",
)


def test_a_mapping_is_named_by_its_function_and_stream():
    assert MAPPING.name == mapping_name("shop-etl", "shop-in") == "shop-etl <- shop-in"
    assert split_mapping_name("shop-etl <- shop-in") == ("shop-etl", "shop-in")
    with pytest.raises(ValueError) as error:
        split_mapping_name("shop-etl")
    assert str(error.value) == "not a mapping name (FUNCTION <- STREAM): 'shop-etl'"


def test_code_sha256_is_lambdas_base64_of_the_sha256():
    assert code_sha256(b"") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


# None on the local target


@pytest.mark.parametrize(
    "method, args",
    [
        ("describe_function", ("shop-etl",)),
        ("create_function", (ETL, CODE, "shop")),
        ("update_function_code", ("shop-etl", CODE)),
        ("update_function_configuration", (ETL,)),
        ("delete_function", ("shop-etl",)),
        ("function_role", ("shop-etl-role", "shop-etl", "shop-in", ["shop-out"])),
        ("describe_mapping", ("shop-etl", "shop-in")),
        ("create_mapping", (MAPPING, "shop")),
        ("update_mapping", (MAPPING,)),
        ("delete_mapping", ("shop-etl", "shop-in")),
    ],
)
def test_the_local_target_has_no_lambda_functions(tmp_path, method, args):
    backend = LocalBackend(tmp_path)
    assert backend.runs_functions is False

    with pytest.raises(BackendError) as error:
        getattr(backend, method)(*args)

    assert str(error.value) == "the local target has no Lambda functions"


# On AWS


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def aws(aws_env, clock):
    """An AWS backend (moto) whose waits keep time by `clock`, with the function's role and
    streams in place."""
    with mock_aws():
        backend = AwsBackend("us-east-1", poll_s=2, clock=clock, sleep=clock.sleep)
        backend.create_stream("shop-in", 1)
        backend.create_stream("shop-out", 1)
        backend.put_role(backend.function_role(ETL.role, ETL.name, "shop-in", ["shop-out"]))
        yield backend
        backend.close()


def requests(client, operation):
    """A list that grows by the parameters of every `operation` request the client makes."""
    made = []
    client.meta.events.register(
        f"before-parameter-build.lambda.{operation}", lambda params, **_: made.append(dict(params))
    )
    return made


def refuse(error_code, message, operation):
    return ClientError({"Error": {"Code": error_code, "Message": message}}, operation)


def test_a_function_is_created_as_described_and_tagged_as_the_pipelines(aws):
    assert aws.runs_functions is True
    assert aws.describe_function(ETL.name) is None
    made = requests(aws._client("lambda"), "CreateFunction")

    aws.create_function(ETL, CODE, "shop")

    assert aws.describe_function(ETL.name) == ETL
    (request,) = made
    assert request == {
        "FunctionName": "shop-etl",
        "PackageType": "Zip",
        "Code": {"ZipFile": CODE},
        "Runtime": "python3.13",
        "Handler": "runner.function.handler.handle",
        "MemorySize": 256,
        "Timeout": 60,
        "Role": f"arn:aws:iam::{ACCOUNT}:role/shop-etl-role",
        "Environment": {"Variables": {"PIPELINE_LOG_FORMAT": "json"}},
        "Tags": {"pipeline": "shop"},
    }


def test_a_function_created_twice_already_exists(aws):
    aws.create_function(ETL, CODE)

    with pytest.raises(AlreadyExists) as error:
        aws.create_function(ETL, CODE)

    assert str(error.value) == (
        "function 'shop-etl' already exists "
        "(ResourceConflictException: Function already exist: shop-etl)"
    )


def test_new_code_changes_the_code_sha256(aws):
    aws.create_function(ETL, CODE)
    changed = package("def handle(event, context):\n    return {'batchItemFailures': []}\n")

    aws.update_function_code(ETL.name, changed)

    assert aws.describe_function(ETL.name) == dataclasses.replace(
        ETL, code_sha256=code_sha256(changed)
    )
    assert code_sha256(changed) != ETL.code_sha256


def test_the_configuration_changes_and_the_code_stays(aws):
    aws.create_function(ETL, CODE)
    aws.put_role(aws.function_role("shop-etl-role-2", ETL.name, "shop-in", ["shop-out"]))
    changed = dataclasses.replace(
        ETL, memory_mb=1024, timeout_s=300, role="shop-etl-role-2", environment={}
    )

    aws.update_function_configuration(changed)

    assert aws.describe_function(ETL.name) == changed


def test_a_function_is_deleted(aws):
    aws.create_function(ETL, CODE)

    aws.delete_function(ETL.name)

    assert aws.describe_function(ETL.name) is None


def test_creation_is_tried_again_while_lambda_cannot_assume_a_new_role(aws, clock):
    aws.delete_role(ETL.role)
    slept = []

    def sleep(seconds):  # the role reaches Lambda while the second wait goes on
        slept.append(seconds)
        if len(slept) == 2:
            aws.put_role(aws.function_role(ETL.role, ETL.name, "shop-in", ["shop-out"]))
        clock.sleep(seconds)

    aws._sleep = sleep

    aws.create_function(ETL, CODE)

    assert slept == [2, 2]
    assert aws.describe_function(ETL.name) == ETL


def test_a_role_lambda_never_accepts_fails_after_a_minute(aws, clock):
    aws.delete_role(ETL.role)
    made = requests(aws._client("lambda"), "CreateFunction")

    with pytest.raises(BackendError) as error:
        aws.create_function(ETL, CODE)

    assert str(error.value) == (
        "function 'shop-etl': CreateFunction failed (InvalidParameterValueException: "
        "The role defined for the function cannot be assumed by Lambda.)"
    )
    assert (len(made), clock.now) == (32, 62)  # tried at 0, 2, ... 62 s


def test_other_invalid_parameters_are_not_tried_again(aws, monkeypatch):
    tried = []

    def invalid(**params):
        tried.append(params)
        raise refuse(
            "InvalidParameterValueException",
            "Unzipped size must be smaller than 262144000 bytes",
            "CreateFunction",
        )

    monkeypatch.setattr(aws._client("lambda"), "create_function", invalid)

    with pytest.raises(BackendError) as error:
        aws.create_function(ETL, CODE)

    assert str(error.value) == (
        "function 'shop-etl': CreateFunction failed (InvalidParameterValueException: "
        "Unzipped size must be smaller than 262144000 bytes)"
    )
    assert len(tried) == 1


def answered(client, operation, *changes):
    """Let the first answers to `operation` be changed, one by one, by `changes`."""
    left = list(changes)

    def change(parsed, **_):
        if left:
            left.pop(0)(parsed)

    client.meta.events.register(f"after-call.lambda.{operation}", change)


def test_creation_returns_once_the_function_is_active(aws, clock):
    answered(
        aws._client("lambda"),
        "GetFunctionConfiguration",
        lambda answer: answer.update(State="Pending"),
        lambda answer: answer.update(State="Pending"),
    )

    aws.create_function(ETL, CODE)

    assert clock.now == 4  # two waits of poll_s


def test_a_function_that_fails_to_become_active_says_why(aws):
    answered(
        aws._client("lambda"),
        "GetFunctionConfiguration",
        lambda answer: answer.update(
            State="Failed",
            StateReasonCode="SubnetOutOfIPAddresses",
            StateReason="All subnets\nare full.",
        ),
    )

    with pytest.raises(BackendError) as error:
        aws.create_function(ETL, CODE)

    assert str(error.value) == (
        "function 'shop-etl': the creation failed (SubnetOutOfIPAddresses: All subnets are full.)"
    )


def test_an_update_that_fails_says_why(aws):
    aws.create_function(ETL, CODE)
    answered(
        aws._client("lambda"),
        "GetFunctionConfiguration",
        lambda answer: answer.update(LastUpdateStatus="InProgress"),
        lambda answer: answer.update(
            LastUpdateStatus="Failed",
            LastUpdateStatusReasonCode="InvalidZipFileException",
            LastUpdateStatusReason="Could not unzip uploaded file.",
        ),
    )

    with pytest.raises(BackendError) as error:
        aws.update_function_code(ETL.name, b"not a zip")

    assert str(error.value) == (
        "function 'shop-etl': the update failed "
        "(InvalidZipFileException: Could not unzip uploaded file.)"
    )


def test_lambda_throttling_is_throttled(aws, monkeypatch):
    def busy(**params):
        raise refuse("TooManyRequestsException", "Rate exceeded", "GetFunctionConfiguration")

    monkeypatch.setattr(aws._client("lambda"), "get_function_configuration", busy)

    with pytest.raises(Throttled) as error:
        aws.describe_function(ETL.name)

    assert str(error.value) == (
        "function 'shop-etl': GetFunctionConfiguration throttled "
        "(TooManyRequestsException: Rate exceeded)"
    )


# Event source mappings


@pytest.fixture
def etl(aws):
    aws.create_function(ETL, CODE, "shop")
    return aws


def test_a_mapping_round_trips_with_every_setting(etl):
    client = etl._client("lambda")
    created, updated = (
        requests(client, "CreateEventSourceMapping"),
        requests(client, "UpdateEventSourceMapping"),
    )
    assert etl.describe_mapping(ETL.name, "shop-in") is None

    etl.create_mapping(MAPPING, "shop")

    found = etl.describe_mapping(ETL.name, "shop-in")
    assert found == MAPPING
    assert (found.state, found.uuid != "") == ("Enabled", True)
    settings = {
        "BatchSize": 500,
        "MaximumBatchingWindowInSeconds": 5,
        "ParallelizationFactor": 3,
        "MaximumRetryAttempts": 10,
        "MaximumRecordAgeInSeconds": 7200,
        "BisectBatchOnFunctionError": True,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
    }
    assert created == [
        {
            "FunctionName": "shop-etl",
            "EventSourceArn": f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/shop-in",
            "Enabled": True,
            "StartingPosition": "TRIM_HORIZON",
            **settings,
            "Tags": {"pipeline": "shop"},
        }
    ]

    changed = dataclasses.replace(
        MAPPING,
        batch_size=10000,
        batching_window_s=0,
        parallelization=10,
        max_retries=-1,
        max_record_age_s=-1,
        bisect_on_error=False,
        report_batch_item_failures=False,
    )
    etl.update_mapping(changed)

    assert etl.describe_mapping(ETL.name, "shop-in") == changed
    assert updated == [
        {
            "UUID": found.uuid,
            "BatchSize": 10000,
            "MaximumBatchingWindowInSeconds": 0,
            "ParallelizationFactor": 10,
            "MaximumRetryAttempts": -1,
            "MaximumRecordAgeInSeconds": -1,
            "BisectBatchOnFunctionError": False,
            "FunctionResponseTypes": [],
        }
    ]

    etl.delete_mapping(ETL.name, "shop-in")
    assert etl.describe_mapping(ETL.name, "shop-in") is None


def test_a_mapping_starting_at_a_timestamp(etl):
    client = etl._client("lambda")
    created = requests(client, "CreateEventSourceMapping")
    since = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.timezone.utc)
    at = dataclasses.replace(MAPPING, starting_position="AT_TIMESTAMP", starting_timestamp=since)
    # Lambda answers with the timestamp (which botocore may read in any time zone); moto
    # keeps it without saying it.
    said = since.astimezone(datetime.timezone(datetime.timedelta(hours=-5)))
    client.meta.events.register(
        "after-call.lambda.ListEventSourceMappings",
        lambda parsed, **_: [
            m.update(StartingPositionTimestamp=said) for m in parsed["EventSourceMappings"]
        ],
    )

    etl.create_mapping(at)

    assert (created[0]["StartingPosition"], created[0]["StartingPositionTimestamp"]) == (
        "AT_TIMESTAMP",
        since,
    )
    assert etl.describe_mapping(ETL.name, "shop-in") == at


def test_creating_a_mapping_returns_once_it_is_enabled(etl, clock):
    creating = lambda answer: answer["EventSourceMappings"][0].update(State="Creating")  # noqa: E731
    answered(etl._client("lambda"), "ListEventSourceMappings", creating, creating)

    etl.create_mapping(MAPPING)

    assert clock.now == 4  # two waits of poll_s


def test_a_mapping_the_role_cannot_read_with_yet_is_created_once_it_can(etl, monkeypatch):
    client = etl._client("lambda")
    create = client.create_event_source_mapping
    tried = []

    def not_yet(**params):
        tried.append(params)
        if len(tried) < 3:
            raise refuse(
                "InvalidParameterValueException",
                f"Cannot access stream arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/shop-in. "
                "Please ensure the role can perform the GetRecords, GetShardIterator, "
                "DescribeStream, and ListShards Actions on your stream in IAM.",
                "CreateEventSourceMapping",
            )
        return create(**params)

    monkeypatch.setattr(client, "create_event_source_mapping", not_yet)

    etl.create_mapping(MAPPING)

    assert len(tried) == 3
    assert etl.describe_mapping(ETL.name, "shop-in") == MAPPING


def test_a_missing_mapping_cannot_be_updated_or_deleted(etl):
    with pytest.raises(BackendError) as updating:
        etl.update_mapping(MAPPING)
    with pytest.raises(BackendError) as deleting:
        etl.delete_mapping(ETL.name, "shop-in")

    said = "event source mapping 'shop-etl <- shop-in' does not exist"
    assert (str(updating.value), str(deleting.value)) == (said, said)


def test_a_mapping_of_a_missing_function_is_none(aws):
    assert aws.describe_mapping("nowhere", "shop-in") is None


def test_functions_and_mappings_created_for_a_pipeline_are_its_own(etl):
    etl.create_mapping(MAPPING, "shop")
    other = dataclasses.replace(ETL, name="by-hand")
    etl.create_function(other, CODE)
    etl.create_mapping(dataclasses.replace(MAPPING, function="by-hand"))
    etl.create_mapping(dataclasses.replace(MAPPING, function="by-hand", stream="shop-out"), "shop")

    owned = etl.owned("shop")

    assert sorted(owned) == [
        ("event source mapping", "by-hand <- shop-out"),
        ("event source mapping", "shop-etl <- shop-in"),
        ("function", "shop-etl"),
    ]
    tags = boto3.client("lambda", region_name="us-east-1").list_tags(
        Resource=f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:shop-etl"
    )["Tags"]
    assert tags == {"pipeline": "shop"}
    etl.delete_mapping(ETL.name, "shop-in")
    etl.delete_function(ETL.name)
    assert sorted(etl.owned("shop")) == [("event source mapping", "by-hand <- shop-out")]


def test_a_mapping_is_deleted_before_its_function_and_a_function_before_its_role_and_streams():
    order = KINDS.index
    assert order("event source mapping") < order("function") < order("role") < order("stream")
    assert KINDS[:2] == ("event source mapping", "function")  # first, before firehoses too
