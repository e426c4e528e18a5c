import dataclasses
import datetime
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ResponseStreamingError,
    SSLError,
)
from botocore.stub import Stubber
from click.testing import CliRunner
from conftest import PIPELINES, CliTarget, sessions, shop_applied
from fakes import HungRenewals, VirtualClock, lease_on, started_since, wait_until
from moto import mock_aws

from runner import spec
from runner.backends.aws import AwsBackend, LeaseTiming
from runner.backends.base import (
    SHARD_END,
    BackendError,
    EarlierStream,
    FirehoseDescription,
    IteratorExpired,
    LeaseLapsed,
    LeaseLost,
    RoleDescription,
    RunHolder,
    StreamDescription,
    StreamNotFound,
    Throttled,
    parse_start_mark,
)
from runner.cli import cli
from runner.commands import provision

ACCOUNT = "123456789012"  # moto's account
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@pytest.fixture
def backend(aws_env):
    with mock_aws():
        backend = AwsBackend("us-east-1", poll_s=0)
        yield backend
        backend.close()


def owner(backend, stream, key):
    """The shard whose hash range holds the partition key, as Kinesis routes it."""
    digest = int.from_bytes(hashlib.md5(key.encode()).digest(), "big")
    shards = [s for s in backend.list_shards(stream) if s.is_open]
    (shard,) = [s for s in shards if s.starting_hash_key <= digest <= s.ending_hash_key]
    return shard.shard_id


def read_all(backend, stream, shard_id, iterator_type="TRIM_HORIZON", **position):
    iterator = backend.get_shard_iterator(stream, shard_id, iterator_type, **position)
    return backend.get_records(iterator).records


def count_calls(client, operation):
    """A list that grows by the request parameters of every `operation` the client makes."""
    calls = []
    client.meta.events.register(
        f"before-parameter-build.{client.meta.service_model.endpoint_prefix}.{operation}",
        lambda params, **_: calls.append(dict(params)),
    )
    return calls


def throttle_first(client, operation, times):
    """Answer the first `times` sends of `operation` with a throttling error, before moto."""
    sent = []

    def answer(request, **_):
        sent.append(request)
        if len(sent) > times:
            return None
        body = b'{"__type": "ProvisionedThroughputExceededException", "message": "Rate exceeded"}'
        return AWSResponse(request.url, 400, {}, _Raw(body))

    client.meta.events.register_first(
        f"before-send.{client.meta.service_model.endpoint_prefix}.{operation}", answer
    )
    return sent


class _Raw:
    def __init__(self, body):
        self.body = body

    def stream(self, **_):
        yield self.body


# Streams


def test_messages_say_which_region_and_endpoint_a_command_looked_in(aws_env):
    own = AwsBackend("eu-west-1")
    moto = AwsBackend("eu-west-1", endpoint_url="http://127.0.0.1:5000")
    assert own.location == "the aws target in eu-west-1"
    assert moto.location == "the aws target in eu-west-1 at http://127.0.0.1:5000"


def test_streams_round_trip(backend):
    assert backend.name == "aws" and backend.delivers_firehoses
    assert backend.account_id == ACCOUNT
    assert backend.describe_stream("orders") is None

    backend.create_stream("orders", 2)

    assert backend.describe_stream("orders") == StreamDescription("orders", "ACTIVE", 2, 24)
    shards = backend.list_shards("orders")
    assert [s.shard_id for s in shards] == ["shardId-000000000000", "shardId-000000000001"]
    assert shards[0].starting_hash_key == 0 and shards[-1].ending_hash_key == 2**128 - 1
    assert shards[0].ending_hash_key + 1 == shards[1].starting_hash_key
    assert all(s.is_open and s.parent_shard_id is None for s in shards)

    entries = [(json.dumps({"n": n}).encode(), f"session-{n}") for n in range(20)]
    results = backend.put_records("orders", entries)

    assert all(r.ok and r.sequence for r in results)
    assert [r.shard_id for r in results] == [owner(backend, "orders", k) for _, k in entries]
    assert len({r.shard_id for r in results}) == 2
    for shard in shards:
        records = read_all(backend, "orders", shard.shard_id)
        sent = [
            (d, k)
            for (d, k), r in zip(entries, results, strict=True)
            if r.shard_id == shard.shard_id
        ]
        assert [(r.data, r.partition_key) for r in records] == sent
        assert [r.sequence for r in records] == [
            r.sequence for r in results if r.shard_id == shard.shard_id
        ]
        assert all(r.arrival.utcoffset() == datetime.timedelta(0) for r in records)


def test_every_iterator_type(backend):
    backend.create_stream("orders", 1)
    (shard,) = backend.list_shards("orders")
    first = backend.put_records("orders", [(b"a", "k"), (b"b", "k")])
    time.sleep(0.05)
    between = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(0.05)
    backend.put_records("orders", [(b"c", "k")])
    latest = backend.get_shard_iterator("orders", shard.shard_id, "LATEST")
    backend.put_records("orders", [(b"d", "k")])

    def data(records):
        return [r.data for r in records]

    assert data(read_all(backend, "orders", shard.shard_id)) == [b"a", b"b", b"c", b"d"]
    assert data(backend.get_records(latest).records) == [b"d"]
    at, after = "AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"
    second = first[1].sequence
    assert data(read_all(backend, "orders", shard.shard_id, at, sequence=second)) == [
        b"b",
        b"c",
        b"d",
    ]
    assert data(read_all(backend, "orders", shard.shard_id, after, sequence=second)) == [
        b"c",
        b"d",
    ]
    assert data(read_all(backend, "orders", shard.shard_id, "AT_TIMESTAMP", timestamp=between)) == [
        b"c",
        b"d",
    ]


def test_get_records_limit_and_lag(backend):
    backend.create_stream("orders", 1)
    (shard,) = backend.list_shards("orders")
    backend.put_records("orders", [(b"a", "k"), (b"b", "k"), (b"c", "k")])
    iterator = backend.get_shard_iterator("orders", shard.shard_id, "TRIM_HORIZON")

    batch = backend.get_records(iterator, limit=2)
    rest = backend.get_records(batch.next_iterator)

    assert [r.data for r in batch.records] == [b"a", b"b"]
    assert [r.data for r in rest.records] == [b"c"]
    assert rest.millis_behind == 0


def test_a_finished_closed_shard_has_no_next_iterator(backend):
    # moto always answers with a NextShardIterator, even at the end of a closed shard, so the
    # answer Kinesis gives there is stubbed.
    client = backend._client("kinesis", data_plane=True)
    with Stubber(client) as stub:
        stub.add_response("get_records", {"Records": [], "MillisBehindLatest": 0})
        batch = backend.get_records("iterator")
    assert batch.records == [] and batch.next_iterator is None and batch.millis_behind == 0


def test_invalid_reads_are_refused_before_calling_aws(backend):
    with pytest.raises(BackendError) as error:
        backend.get_shard_iterator("orders", "shardId-000000000000", "FROM_START")
    assert str(error.value) == (
        "unknown iterator type 'FROM_START' (expected TRIM_HORIZON, LATEST, "
        "AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER, AT_TIMESTAMP)"
    )
    with pytest.raises(BackendError, match="AT_TIMESTAMP needs a timezone-aware timestamp"):
        backend.get_shard_iterator(
            "orders", "shardId-000000000000", "AT_TIMESTAMP", timestamp=datetime.datetime.now()
        )
    with pytest.raises(BackendError, match="AFTER_SEQUENCE_NUMBER on orders/shardId-000000000000"):
        backend.get_shard_iterator("orders", "shardId-000000000000", "AFTER_SEQUENCE_NUMBER")
    with pytest.raises(BackendError, match="get_records limit must be 1 to 10000, got 0"):
        backend.get_records("iterator", limit=0)


def test_list_shards_follows_next_token(backend):
    # moto pages ListShards only when every page repeats StreamName, which Kinesis refuses
    # alongside NextToken ("You cannot specify this parameter if you specify the NextToken
    # parameter"), so Kinesis' answers are stubbed here.
    def listed(n):
        return {
            "ShardId": f"shardId-00000000000{n}",
            "HashKeyRange": {"StartingHashKey": str(n), "EndingHashKey": str(n)},
            "SequenceNumberRange": {"StartingSequenceNumber": "1"},
        }

    with Stubber(backend._client("kinesis", data_plane=True)) as stub:
        first = {"StreamName": "orders", "MaxResults": 1000}
        stub.add_response("list_shards", {"Shards": [listed(0)], "NextToken": "t1"}, first)
        second = {"NextToken": "t1", "MaxResults": 1000}
        stub.add_response("list_shards", {"Shards": [listed(1)], "NextToken": "t2"}, second)
        last = {"NextToken": "t2", "MaxResults": 1000}
        stub.add_response("list_shards", {"Shards": [listed(2)]}, last)

        shards = backend.list_shards("orders")

    assert [s.shard_id for s in shards] == [f"shardId-00000000000{n}" for n in range(3)]
    assert [s.starting_hash_key for s in shards] == [0, 1, 2]


def test_update_shard_count_closes_the_parents(backend):
    backend.create_stream("orders", 2)
    parents = backend.list_shards("orders")

    backend.update_shard_count("orders", 4)

    assert backend.describe_stream("orders").open_shard_count == 4
    shards = backend.list_shards("orders")
    by_id = {s.shard_id: s for s in shards}
    assert all(not by_id[p.shard_id].is_open for p in parents)
    assert by_id[parents[0].shard_id].ending_sequence is not None
    children = [s for s in shards if s.is_open]
    assert len(children) == 4
    assert {c.parent_shard_id for c in children} == {p.shard_id for p in parents}
    listed = [s.shard_id for s in shards]
    assert all(listed.index(c.parent_shard_id) < listed.index(c.shard_id) for c in children)


def test_update_shard_count_at_most_doubles_or_halves_per_call(backend):
    backend.create_stream("orders", 1)
    calls = count_calls(backend._client("kinesis"), "UpdateShardCount")

    backend.update_shard_count("orders", 5)
    backend.update_shard_count("orders", 1)
    backend.update_shard_count("orders", 1)

    assert [c["TargetShardCount"] for c in calls] == [2, 4, 5, 3, 2, 1]
    assert {c["ScalingType"] for c in calls} == {"UNIFORM_SCALING"}
    assert backend.describe_stream("orders").open_shard_count == 1


def test_delete_stream(backend):
    backend.create_stream("orders", 1)
    calls = count_calls(backend._client("kinesis"), "DeleteStream")

    backend.delete_stream("orders")

    assert backend.describe_stream("orders") is None
    assert calls == [{"StreamName": "orders", "EnforceConsumerDeletion": True}]


def test_put_records_refuses_what_kinesis_refuses_whole(backend):
    where = "put_records to stream 'orders'"
    refused = {
        f"{where}: 0 entries, at most 500 allowed": [],
        f"{where}: 501 entries, at most 500 allowed": [(b"x", "k")] * 501,
        f"{where}: entry 0: partition key must be 1 to 256 characters": [(b"x", "")],
        f"{where}: entry 1: partition key must be 1 to 256 characters": [
            (b"x", "k"),
            (b"x", "k" * 257),
        ],
        f"{where}: entry 0: data must be bytes": [("text", "k")],
        f"{where}: entry 0 is 1048577 bytes with its partition key, at most 1048576 allowed": [
            (b"x" * (1024 * 1024), "k")
        ],
        f"{where}: 5243005 bytes in one call, at most 5242880 allowed": [(b"x" * 1048575, "k")] * 5
        + [(b"x" * 124, "k")],
    }
    for message, entries in refused.items():
        with pytest.raises(BackendError) as error:
            backend.put_records("orders", entries)
        assert str(error.value) == message


# Buckets


def test_bucket_in_us_east_1_is_private_and_encrypted(backend):
    assert backend.bucket_exists("shop-usa") is False

    backend.create_bucket("shop-usa")

    assert backend.bucket_exists("shop-usa") is True
    s3 = boto3.client("s3", region_name="us-east-1")
    assert s3.get_bucket_location(Bucket="shop-usa")["LocationConstraint"] is None
    assert_private_and_encrypted(s3, "shop-usa")


def test_bucket_in_eu_west_1(aws_env):
    with mock_aws():
        backend = AwsBackend("eu-west-1", poll_s=0)
        backend.create_bucket("shop-eu")

        s3 = boto3.client("s3", region_name="eu-west-1")
        assert s3.get_bucket_location(Bucket="shop-eu")["LocationConstraint"] == "eu-west-1"
        assert_private_and_encrypted(s3, "shop-eu")
        assert backend.bucket_exists("shop-eu") is True


def assert_private_and_encrypted(s3, bucket):
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}


def test_objects_round_trip(backend):
    backend.create_bucket("shop-usa")
    for key in ("firehose/2026/b", "errors/x", "firehose/2026/a"):
        backend.put_object("shop-usa", key, key.encode())

    assert backend.list_objects("shop-usa") == ["errors/x", "firehose/2026/a", "firehose/2026/b"]
    assert backend.list_objects("shop-usa", "firehose/") == ["firehose/2026/a", "firehose/2026/b"]
    assert backend.get_object("shop-usa", "errors/x") == b"errors/x"
    with pytest.raises(BackendError) as error:
        backend.get_object("shop-usa", "nope")
    assert str(error.value) == (
        "object 'nope' in bucket 'shop-usa' does not exist "
        "(NoSuchKey: The specified key does not exist.)"
    )


def test_delete_bucket_removes_objects_versions_and_delete_markers(backend):
    backend.create_bucket("shop-usa")
    backend.create_bucket("shop-int")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.put_bucket_versioning(Bucket="shop-int", VersioningConfiguration={"Status": "Enabled"})
    for bucket in ("shop-usa", "shop-int"):
        for n in range(3):
            backend.put_object(bucket, f"firehose/{n}", b"old")
            backend.put_object(bucket, f"firehose/{n}", b"new")
    s3.delete_object(Bucket="shop-int", Key="firehose/0")

    backend.delete_bucket("shop-usa")
    backend.delete_bucket("shop-int")

    assert backend.bucket_exists("shop-usa") is False
    assert backend.bucket_exists("shop-int") is False


def test_a_bucket_name_taken_by_another_account(backend):
    client = backend._client("s3")
    with Stubber(client) as stub:
        stub.add_client_error(
            "head_bucket",
            service_error_code="403",
            service_message="Forbidden",
            http_status_code=403,
        )
        with pytest.raises(BackendError) as error:
            backend.bucket_exists("data")
    assert str(error.value) == (
        "bucket 'data' exists but this account may not use it (HeadBucket: 403 Forbidden): "
        "the name is probably taken by another AWS account, and bucket names are global; "
        "choose another"
    )


# Firehose, roles and log groups

TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "firehose.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def policy(*actions):
    statement = {"Effect": "Allow", "Action": list(actions), "Resource": "*"}
    return {"Version": "2012-10-17", "Statement": [statement]}


USA = FirehoseDescription(
    name="shop-firehose-usa",
    stream="shop-usa",
    bucket="shop-usa-bucket",
    prefix="firehose/",
    error_prefix="errors/",
    buffer_size_mb=1,
    buffer_interval_s=60,
    compression="UNCOMPRESSED",
    role="shop-firehose-role",
    log_group="shop-firehose-usa-log-group",
    log_stream="shop-usa-firehose-log-stream",
)


@pytest.fixture
def delivery(backend):
    """What a firehose needs: its stream, bucket, role and log stream."""
    backend.create_stream(USA.stream, 2)
    backend.create_bucket(USA.bucket)
    backend.put_role(RoleDescription(USA.role, TRUST, {"delivery": policy("s3:PutObject")}))
    backend.create_log_stream(USA.log_group, USA.log_stream)
    return backend


def test_firehose_round_trip(delivery):
    backend = delivery
    assert backend.describe_firehose(USA.name) is None
    calls = count_calls(backend._client("firehose"), "CreateDeliveryStream")

    backend.create_firehose(USA)

    assert backend.describe_firehose(USA.name) == USA
    (call,) = calls
    assert call["DeliveryStreamType"] == "KinesisStreamAsSource"
    assert call["KinesisStreamSourceConfiguration"] == {
        "KinesisStreamARN": f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/shop-usa",
        "RoleARN": f"arn:aws:iam::{ACCOUNT}:role/shop-firehose-role",
    }
    assert call["ExtendedS3DestinationConfiguration"] == {
        "RoleARN": f"arn:aws:iam::{ACCOUNT}:role/shop-firehose-role",
        "BucketARN": "arn:aws:s3:::shop-usa-bucket",
        "Prefix": "firehose/",
        "ErrorOutputPrefix": "errors/",
        "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 60},
        "CompressionFormat": "UNCOMPRESSED",
        "CloudWatchLoggingOptions": {
            "Enabled": True,
            "LogGroupName": "shop-firehose-usa-log-group",
            "LogStreamName": "shop-usa-firehose-log-stream",
        },
    }

    faster = dataclasses.replace(USA, buffer_size_mb=5, buffer_interval_s=300)
    backend.update_firehose(faster)
    assert backend.describe_firehose(USA.name) == faster

    backend.delete_firehose(USA.name)
    assert backend.describe_firehose(USA.name) is None


def test_firehose_without_logging(delivery):
    quiet = dataclasses.replace(USA, log_group=None, log_stream=None, prefix="", compression="GZIP")

    calls = count_calls(delivery._client("firehose"), "CreateDeliveryStream")

    delivery.create_firehose(quiet)

    assert delivery.describe_firehose(USA.name) == quiet
    destination = calls[0]["ExtendedS3DestinationConfiguration"]
    assert destination["CloudWatchLoggingOptions"] == {"Enabled": False}


def test_firehose_source_cannot_change(delivery):
    delivery.create_firehose(USA)
    with pytest.raises(BackendError) as error:
        delivery.update_firehose(dataclasses.replace(USA, stream="shop-int"))
    assert str(error.value) == (
        "firehose 'shop-firehose-usa' reads stream 'shop-usa', not 'shop-int': a delivery "
        "stream's source cannot change; destroy it and apply again"
    )


def test_firehose_creation_waits_for_a_new_role(delivery, monkeypatch):
    client = delivery._client("firehose")
    create = client.create_delivery_stream
    attempts = []

    def not_yet(**params):
        attempts.append(params)
        if len(attempts) < 3:
            role = f"arn:aws:iam::{ACCOUNT}:role/shop-firehose-role"
            message = f"Firehose is unable to assume role {role}. Please check the role provided."
            error = {"Error": {"Code": "InvalidArgumentException", "Message": message}}
            raise ClientError(error, "CreateDeliveryStream")
        return create(**params)

    monkeypatch.setattr(client, "create_delivery_stream", not_yet)

    delivery.create_firehose(USA)

    assert len(attempts) == 3
    assert delivery.describe_firehose(USA.name) == USA


def test_firehose_other_invalid_arguments_are_not_retried(delivery, monkeypatch):
    client = delivery._client("firehose")
    attempts = []

    def invalid(**params):
        attempts.append(params)
        error = {"Error": {"Code": "InvalidArgumentException", "Message": "Bad prefix"}}
        raise ClientError(error, "CreateDeliveryStream")

    monkeypatch.setattr(client, "create_delivery_stream", invalid)

    with pytest.raises(BackendError) as error:
        delivery.create_firehose(USA)
    assert str(error.value) == (
        "firehose 'shop-firehose-usa': CreateDeliveryStream failed "
        "(InvalidArgumentException: Bad prefix)"
    )
    assert len(attempts) == 1


def test_roles_round_trip(backend):
    assert backend.describe_role("shop-role") is None
    first = RoleDescription(
        "shop-role", TRUST, {"read": policy("kinesis:GetRecords"), "old": policy("s3:GetObject")}
    )

    backend.put_role(first)
    assert backend.describe_role("shop-role") == first

    trust = json.loads(json.dumps(TRUST))
    trust["Statement"][0]["Condition"] = {"StringEquals": {"sts:ExternalId": ACCOUNT}}
    second = RoleDescription("shop-role", trust, {"read": policy("kinesis:*")})
    backend.put_role(second)
    assert backend.describe_role("shop-role") == second

    backend.delete_role("shop-role")
    assert backend.describe_role("shop-role") is None


def test_role_policies_given_as_url_encoded_text(backend, monkeypatch):
    backend.put_role(RoleDescription("shop-role", TRUST, {"read": policy("kinesis:*")}))
    iam = backend._client("iam")
    get_role, get_role_policy = iam.get_role, iam.get_role_policy

    def encoded(answer, key, field):
        answer[key][field] = urllib.parse.quote(json.dumps(answer[key][field]))
        return answer

    monkeypatch.setattr(
        iam, "get_role", lambda **p: encoded(get_role(**p), "Role", "AssumeRolePolicyDocument")
    )
    monkeypatch.setattr(
        iam,
        "get_role_policy",
        lambda **p: {
            "PolicyDocument": urllib.parse.quote(json.dumps(get_role_policy(**p)["PolicyDocument"]))
        },
    )

    assert backend.describe_role("shop-role") == RoleDescription(
        "shop-role", TRUST, {"read": policy("kinesis:*")}
    )


def test_log_groups(backend):
    assert backend.describe_log_group("shop") is None
    backend.create_log_stream("shop-other", "s")

    backend.create_log_stream("shop", "usa")
    backend.create_log_stream("shop", "usa")
    backend.create_log_stream("shop", "international")

    assert backend.describe_log_group("shop") == ["international", "usa"]
    backend.delete_log_group("shop")
    assert backend.describe_log_group("shop") is None
    assert backend.describe_log_group("shop-other") == ["s"]


# Two applies at once


class Together:
    """Applies, one per thread, that have all planned before any creates anything; then their
    creates go one at a time, so that each one's but the first finds the resource there."""

    def __init__(self, applies):
        self.planned = threading.Barrier(applies, timeout=30)
        self.one = threading.Lock()
        self.creating = set()  # the threads that created something

    def watch(self, backend):
        """Before any of its clients is made: every client inherits the session's hooks."""
        backend._session.events.register("before-call", self._before)
        backend._session.events.register("after-call", self._after)

    def _before(self, model, **_):
        if model.name.startswith("Create"):
            if threading.get_ident() not in self.creating:
                self.creating.add(threading.get_ident())
                self.planned.wait()
            self.one.acquire()

    def _after(self, model, **_):
        if model.name.startswith("Create"):
            self.one.release()


def test_three_applies_at_once_all_succeed(backend):
    together = Together(3)
    backends = [AwsBackend("us-east-1", poll_s=0) for _ in range(3)]
    for each in backends:
        together.watch(each)
    loaded = spec.load(PIPELINES / "ecommerce.yaml", account_id=lambda region: ACCOUNT)
    failures = []

    def apply_with(each):
        try:
            provision.apply(loaded, each, lambda line: None)
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=apply_with, args=(each,)) for each in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert failures == []
    assert len(together.creating) == 3  # each tried to create what it planned
    again = provision.plan(loaded, backend)
    assert provision.summary(again, done=False) == "No changes: 12 resources up to date."


# Which pipeline created what: a tag pipeline=NAME


def test_what_is_created_for_a_pipeline_is_tagged_as_its_own(backend):
    found = RoleDescription("found-role", TRUST, {"read": policy("kinesis:GetRecords")})
    backend.put_role(found)  # there before apply, which then puts it again: adopted
    backend.create_log_stream("found-group", "s")
    for i in range(11):  # more than one page of ListStreams
        backend.create_stream(f"filler-{i}", 1, "shop" if i == 10 else None)
    backend.create_stream(USA.stream, 2, "shop")
    backend.create_stream("audit-in", 1, "audit")
    backend.create_bucket(USA.bucket, "shop")
    backend.create_bucket("shop-by-hand")
    backend.put_role(RoleDescription(USA.role, TRUST, {"delivery": policy("s3:PutObject")}), "shop")
    backend.put_role(found, "shop")
    backend.create_log_stream(USA.log_group, USA.log_stream, "shop")
    backend.create_log_stream("found-group", "t", "shop")
    backend.create_firehose(USA, "shop")
    backend.create_checkpoint_store("shop")
    backend.create_checkpoint_store("audit")

    owned = backend.owned("shop")

    assert sorted(owned) == [
        ("bucket", USA.bucket),
        ("checkpoint table", "shop-checkpoints"),
        ("firehose", USA.name),
        ("log group", USA.log_group),
        ("role", USA.role),
        ("stream", "filler-10"),
        ("stream", USA.stream),
    ]
    assert sorted(backend.owned("audit")) == [
        ("checkpoint table", "audit-checkpoints"),
        ("stream", "audit-in"),
    ]
    kinesis = boto3.client("kinesis", region_name="us-east-1")
    assert kinesis.list_tags_for_stream(StreamName=USA.stream)["Tags"] == [
        {"Key": "pipeline", "Value": "shop"}
    ]
    backend.delete_firehose(USA.name)
    backend.delete_stream(USA.stream)
    assert ("stream", USA.stream) not in backend.owned("shop")


# Checkpoints


def test_checkpoints_never_move_backwards(backend):
    assert backend.checkpoint_store_exists("shop") is False
    backend.create_checkpoint_store("shop")
    assert backend.checkpoint_store_exists("shop") is True
    shard = "shardId-000000000000"

    backend.set_checkpoint("shop", "orders", shard, "5")
    backend.set_checkpoint("shop", "orders", shard, "3")
    assert backend.get_checkpoints("shop", "orders") == {shard: "5"}

    backend.set_checkpoint("shop", "orders", shard, "10")  # later, though "10" < "5" as text
    assert backend.get_checkpoints("shop", "orders") == {shard: "10"}

    backend.set_checkpoint("shop", "orders", shard, SHARD_END)
    backend.set_checkpoint("shop", "orders", shard, "9" * 64)
    assert backend.get_checkpoints("shop", "orders") == {shard: SHARD_END}

    backend.delete_checkpoint_store("shop")
    assert backend.checkpoint_store_exists("shop") is False


def test_checkpoints_are_stored_zero_padded_per_stream(backend):
    backend.create_checkpoint_store("shop")
    sequence = "49590338271490256608559692538361571095921575989136588898"
    backend.set_checkpoint("shop", "orders", "shardId-000000000001", sequence)
    backend.set_checkpoint("shop", "orders", "shardId-000000000002", "0")
    backend.set_checkpoint("shop", "returns", "shardId-000000000001", "7")

    table = boto3.client("dynamodb", region_name="us-east-1")
    item = table.get_item(
        TableName="shop-checkpoints",
        Key={"stream": {"S": "orders"}, "shard_id": {"S": "shardId-000000000001"}},
    )["Item"]
    assert item["sequence"] == {"S": "0" * 8 + sequence}
    assert backend.get_checkpoints("shop", "orders") == {
        "shardId-000000000001": sequence,
        "shardId-000000000002": "0",
    }
    assert backend.get_checkpoints("shop", "returns") == {"shardId-000000000001": "7"}
    assert backend.get_checkpoints("shop", "other") == {}


def test_checkpoints_page_through_the_query(backend, monkeypatch):
    backend.create_checkpoint_store("shop")
    for n in range(5):
        backend.set_checkpoint("shop", "orders", f"shardId-{n:012d}", str(n + 1))
    client = backend._client("dynamodb")
    query = client.query
    calls = []

    def small_pages(**params):
        calls.append(params)
        return query(Limit=2, **params)

    monkeypatch.setattr(client, "query", small_pages)

    checkpoints = backend.get_checkpoints("shop", "orders")

    assert checkpoints == {f"shardId-{n:012d}": str(n + 1) for n in range(5)}
    assert len(calls) == 3 and "ExclusiveStartKey" in calls[-1]
    assert all(call["ConsistentRead"] for call in calls)


def test_checkpoints_without_their_table(backend):
    message = (
        "checkpoint table 'shop-checkpoints' does not exist in us-east-1: "
        "run `pipeline apply` to create it"
    )
    with pytest.raises(BackendError) as error:
        backend.get_checkpoints("shop", "orders")
    assert str(error.value) == message
    with pytest.raises(BackendError) as error:
        backend.set_checkpoint("shop", "orders", "shardId-000000000000", "1")
    assert str(error.value) == message
    with pytest.raises(BackendError, match="'12a' is not a sequence number"):
        backend.set_checkpoint("shop", "orders", "shardId-000000000000", "12a")


def test_a_start_mark_is_stored_only_where_no_checkpoint_is(backend):
    backend.create_checkpoint_store("shop")
    shard = "shardId-000000000000"
    backend.set_checkpoint("shop", "orders", shard, "#at_timestamp:2027-01-15T08:00:00+00:00")
    backend.set_checkpoint("shop", "orders", shard, "#trim_horizon")
    assert backend.get_checkpoints("shop", "orders") == {
        shard: "#at_timestamp:2027-01-15T08:00:00+00:00"
    }

    backend.set_checkpoint("shop", "orders", shard, "0")
    backend.set_checkpoint("shop", "orders", shard, "#trim_horizon")
    assert backend.get_checkpoints("shop", "orders") == {shard: "0"}


def test_a_restart_from_a_latest_iterators_mark_reads_what_was_put_after_it(backend):
    backend.create_stream("orders", 1)
    shard = "shardId-000000000000"
    iterator, mark = backend.latest_iterator("orders", shard)
    backend.put_records("orders", [(b"a", "k"), (b"b", "k")])

    assert mark.startswith("#at_timestamp:")
    assert [r.data for r in backend.get_records(iterator).records] == [b"a", b"b"]
    _, _, timestamp = parse_start_mark(mark)
    assert [
        r.data for r in read_all(backend, "orders", shard, "AT_TIMESTAMP", timestamp=timestamp)
    ] == [b"a", b"b"]


def test_checkpoints_of_an_earlier_stream_of_the_same_name_are_refused(backend):
    backend.create_checkpoint_store("shop")
    backend.create_stream("orders", 1)
    shard = "shardId-000000000000"
    backend.set_checkpoint("shop", "orders", shard, SHARD_END)
    summary = backend._client("kinesis").describe_stream_summary(StreamName="orders")
    created = summary["StreamDescriptionSummary"]["StreamCreationTimestamp"]
    backend.delete_stream("orders")
    backend.create_stream("orders", 1)

    with pytest.raises(EarlierStream) as error:
        backend.get_checkpoints("shop", "orders")
    backend.forget_earlier_checkpoints("shop", "orders")

    when = created.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    assert str(error.value) == (
        f"checkpoints are for an earlier stream named orders (created {when} UTC)"
    )
    assert backend.get_checkpoints("shop", "orders") == {}


def test_checkpoints_kept_before_stream_lives_belong_to_the_stream_there_when_read(backend):
    backend.create_checkpoint_store("shop")
    backend.create_stream("orders", 1)
    table = boto3.client("dynamodb", region_name="us-east-1")
    key = {"stream": {"S": "orders"}, "shard_id": {"S": "shardId-000000000000"}}
    table.put_item(TableName="shop-checkpoints", Item={**key, "sequence": {"S": SHARD_END}})

    assert backend.get_checkpoints("shop", "orders") == {"shardId-000000000000": SHARD_END}
    backend.delete_stream("orders")
    backend.create_stream("orders", 1)

    with pytest.raises(EarlierStream):
        backend.get_checkpoints("shop", "orders")


# Errors


def test_a_missing_stream(backend):
    with pytest.raises(StreamNotFound) as error:
        backend.list_shards("nope")
    assert str(error.value) == (
        "stream 'nope' does not exist "
        f"(ResourceNotFoundException: Stream nope under account {ACCOUNT} not found.)"
    )
    with pytest.raises(StreamNotFound, match="stream 'nope' does not exist"):
        backend.put_records("nope", [(b"x", "k")])
    with pytest.raises(StreamNotFound, match="stream 'nope' does not exist"):
        backend.update_shard_count("nope", 2)
    with pytest.raises(StreamNotFound, match="stream 'nope' does not exist"):
        backend.delete_stream("nope")


def test_missing_credentials(aws_env, monkeypatch):
    for variable in (*CREDENTIALS, "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(variable)
    with mock_aws(config={"core": {"mock_credentials": False}}):
        backend = AwsBackend("us-east-1", poll_s=0)
        with pytest.raises(BackendError) as error:
            backend.describe_stream("orders")
    assert str(error.value) == (
        "no AWS credentials found: pass --profile NAME, set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment, or run `aws configure`"
    )


def test_partial_credentials_are_named_not_shown(aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYVALUE")
    for variable in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(variable)
    with mock_aws(config={"core": {"mock_credentials": False}}):
        backend = AwsBackend("us-east-1", poll_s=0)
        with pytest.raises(BackendError) as error:
            backend.account_id  # noqa: B018 - the property calls STS
    assert str(error.value).startswith(
        "incomplete AWS credentials from env (missing AWS_SECRET_ACCESS_KEY): pass --profile"
    )
    assert "AKIAEXAMPLEKEYVALUE" not in str(error.value)


def test_an_unknown_profile(aws_env):
    with pytest.raises(BackendError) as error:
        AwsBackend("us-east-1", profile="nobody")
    assert str(error.value) == (
        "AWS profile 'nobody' not found in the AWS config files: "
        "check --profile or AWS_PROFILE, or run `aws configure --profile NAME`"
    )


def test_an_unknown_region(aws_env):
    with pytest.raises(BackendError) as error:
        AwsBackend("moon-1")
    assert str(error.value) == (
        "the AWS session: Unknown region: 'moon-1'. No partition found for provided region_name."
    )


def test_an_unreachable_endpoint(backend, monkeypatch):
    def refused(**_):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:4566/")

    monkeypatch.setattr(backend._client("kinesis"), "describe_stream_summary", refused)
    with pytest.raises(BackendError) as error:
        backend.describe_stream("orders")
    assert str(error.value) == (
        "stream 'orders': cannot connect to the endpoint http://127.0.0.1:4566/: "
        "check the network, the region and --endpoint-url, AWS_ENDPOINT_URL_<SERVICE> and "
        "AWS_ENDPOINT_URL"
    )


@pytest.mark.parametrize(
    "endpoint_url, variables, url",
    [
        (None, {}, "https://shop-bucket.s3.amazonaws.com/"),
        ("http://localhost:4566", {}, "http://localhost:4566/shop-bucket"),
        (None, {"AWS_ENDPOINT_URL": "http://localhost:4566"}, "http://localhost:4566/shop-bucket"),
        (None, {"AWS_ENDPOINT_URL_S3": "http://s3.local:9000"}, "http://s3.local:9000/shop-bucket"),
        (
            None,
            {"AWS_ENDPOINT_URL_KINESIS": "http://localhost:4566"},
            "https://shop-bucket.s3.amazonaws.com/",
        ),
    ],
    ids=["aws", "--endpoint-url", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "another-service"],
)
def test_buckets_are_addressed_by_path_on_any_endpoint_but_aws_own(
    aws_env, monkeypatch, endpoint_url, variables, url
):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    backend = AwsBackend("us-east-1", endpoint_url=endpoint_url, poll_s=0)
    sent = []

    def answer(request, **_):
        sent.append(request.url)
        return AWSResponse(request.url, 200, {}, _Raw(b""))

    backend._client("s3").meta.events.register_first("before-send.s3.HeadBucket", answer)
    assert backend.bucket_exists("shop-bucket")
    assert sent == [url]


def test_endpoint_url_is_for_every_service_whatever_the_variables(aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", "http://localhost:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://localhost:2")
    backend = AwsBackend("us-east-1", endpoint_url="http://localhost:4566", poll_s=0)
    services = ("kinesis", "firehose", "s3", "dynamodb", "iam", "logs", "sts")
    endpoints = {service: backend._client(service).meta.endpoint_url for service in services}
    assert endpoints == dict.fromkeys(services, "http://localhost:4566")


def test_an_endpoint_variable_without_a_scheme(aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", "127.0.0.1:4566")
    with pytest.raises(BackendError) as error:
        AwsBackend("us-east-1", poll_s=0).describe_stream("orders")
    assert str(error.value) == (
        "the kinesis endpoint: Invalid endpoint: 127.0.0.1:4566; an endpoint is a URL with its "
        "scheme, e.g. http://127.0.0.1:5000: check --endpoint-url, AWS_ENDPOINT_URL_<SERVICE> "
        "and AWS_ENDPOINT_URL"
    )


def test_an_expired_iterator(backend):
    with Stubber(backend._client("kinesis", data_plane=True)) as stub:
        stub.add_client_error(
            "get_records",
            service_error_code="ExpiredIteratorException",
            service_message="Iterator expired. The iterator was created at time X.",
        )
        with pytest.raises(IteratorExpired) as error:
            backend.get_records("old")
    assert str(error.value) == (
        "shard iterator: GetRecords failed "
        "(ExpiredIteratorException: Iterator expired. The iterator was created at time X.)"
    )


def test_a_throttled_put(backend):
    with Stubber(backend._client("kinesis", data_plane=True)) as stub:
        stub.add_client_error(
            "put_records",
            service_error_code="ProvisionedThroughputExceededException",
            service_message="Rate exceeded for stream orders.",
        )
        with pytest.raises(Throttled) as error:
            backend.put_records("orders", [(b"x", "k")])
    assert str(error.value) == (
        "stream 'orders': PutRecords throttled "
        "(ProvisionedThroughputExceededException: Rate exceeded for stream orders.)"
    )


def test_failed_entries_of_a_put_are_reported_one_by_one(backend):
    answer = {
        "FailedRecordCount": 1,
        "Records": [
            {"SequenceNumber": "1", "ShardId": "shardId-000000000000"},
            {
                "ErrorCode": "ProvisionedThroughputExceededException",
                "ErrorMessage": "Rate exceeded for shard shardId-000000000001.",
            },
        ],
    }
    with Stubber(backend._client("kinesis", data_plane=True)) as stub:
        stub.add_response("put_records", answer)
        results = backend.put_records("orders", [(b"x", "a"), (b"y", "b")])
    assert [r.ok for r in results] == [True, False]
    assert results[0].shard_id == "shardId-000000000000" and results[0].sequence == "1"
    assert results[1].error_code == "ProvisionedThroughputExceededException"
    assert results[1].error_message == "Rate exceeded for shard shardId-000000000001."


def test_data_plane_throttling_is_not_retried_by_botocore(backend):
    backend.create_stream("orders", 1)
    (shard,) = backend.list_shards("orders")
    iterator = backend.get_shard_iterator("orders", shard.shard_id, "TRIM_HORIZON")
    sent = throttle_first(backend._client("kinesis", data_plane=True), "GetRecords", times=1)

    with pytest.raises(Throttled):
        backend.get_records(iterator)
    assert len(sent) == 1
    assert backend.get_records(iterator).records == []


def test_the_data_plane_keeps_a_connection_for_each_call_a_run_makes_at_once(backend):
    # A run reads ahead (read_workers at once) while it writes (write_workers at once); with
    # fewer connections kept, urllib3 opens more and warns on stderr as it discards them.
    at_once = backend.read_workers + backend.write_workers
    assert at_once > 10  # botocore's default pool
    for service in ("kinesis", "dynamodb"):
        config = backend._client(service, data_plane=True).meta.config
        assert config.max_pool_connections == at_once


def test_control_plane_throttling_is_retried_by_botocore(backend):
    backend.create_stream("orders", 1)
    sent = throttle_first(backend._client("kinesis"), "DescribeStreamSummary", times=1)

    assert backend.describe_stream("orders").status == "ACTIVE"
    assert len(sent) == 2


# The run lease


@pytest.fixture
def clock():
    """A clock the leases of a test keep time by; at the end it runs out, so that renewal
    threads still waiting on it wake, see their run ended and stop."""
    virtual = VirtualClock()
    yield virtual
    virtual.advance(math.inf)


LEASE_KEY = {"stream": {"S": "#run-lock"}, "shard_id": {"S": "#run-lock"}}
PID_NAMESPACE = os.readlink("/proc/self/ns/pid")  # where this test's pids are numbered


def hold_lease(backend, pipeline, host, pid, pid_namespace=PID_NAMESPACE):
    """A lease item as a run on `host` with `pid` left it."""
    backend._client("dynamodb").put_item(
        TableName=f"{pipeline}-checkpoints",
        Item={
            **LEASE_KEY,
            "owner": {"S": f"{host} pid {pid} run 0badf00d"},
            "epoch": {"S": "e1"},
            "renewals": {"N": "0"},
            "host": {"S": host},
            "pid_namespace": {"S": pid_namespace},
            "pid": {"N": str(pid)},
        },
    )


def lease_item(backend, pipeline):
    table = f"{pipeline}-checkpoints"
    return backend._client("dynamodb").get_item(TableName=table, Key=LEASE_KEY).get("Item", {})


def lease_holder(backend, pipeline):
    return lease_item(backend, pipeline).get("owner", {}).get("S")


def renew(backend, pipeline):
    """What the holder's renewal does to the lease item."""
    backend._client("dynamodb").update_item(
        TableName=f"{pipeline}-checkpoints",
        Key=LEASE_KEY,
        UpdateExpression="SET renewals = renewals + :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )


def gone_pid():
    """The pid of a process that has ended."""
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()
    return ended.pid


REFUSED = (
    "pipeline shop is already running ({} renewed its lease while this one waited); "
    "two runs at once would write every record twice"
)
WAITING = "waiting for the run lease held by {} (free in 60 s unless renewed)"
LOST = "lost the run lease to {}: stopped without writing or checkpointing further"


@pytest.mark.parametrize("ahead", [0, 61], ids=["same-wall-clocks", "this-wall-clock-61-s-ahead"])
def test_a_second_run_waits_and_is_refused_once_it_sees_the_holder_renew(
    backend, clock, monkeypatch, ahead
):
    backend.create_checkpoint_store("shop")
    holder = lease_on(clock)  # its renewals wait on the clock in their own thread

    def holder_renews():
        if clock.now >= 20:  # its first renewal is due: let it land
            wait_until(lambda: lease_item(backend, "shop")["renewals"] == {"N": "1"})

    other = lease_on(clock, holder_renews)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + ahead)
    lines = []
    with holder.running("shop") as lease:
        with pytest.raises(BackendError) as refused:
            with other.running("shop", lines.append):
                pass
        assert lease.held()
    assert lines == [WAITING.format(lease.owner)]
    assert str(refused.value) == REFUSED.format(lease.owner)
    assert clock.now == 20
    with other.running("shop"):  # free once the first run ends
        pass


def test_the_lease_item_says_since_when_it_is_held_and_when_it_expires_unless_renewed(
    backend, clock
):
    backend.create_checkpoint_store("shop")
    timing = LeaseTiming(
        clock=clock, sleep=clock.sleep, wait=clock.wait, wall=lambda: 1_800_000_000 + clock.now
    )
    holder = AwsBackend("us-east-1", poll_s=0, lease=timing)
    assert backend.run_holder("shop") is None

    with holder.running("shop") as lease:
        taken = lease_item(backend, "shop")
        clock.advance(20)  # its first renewal is due
        wait_until(lambda: lease_item(backend, "shop")["renewals"] == {"N": "1"})
        found = backend.run_holder("shop")

    assert (taken["since"], taken["expires"]) == (
        {"S": "2027-01-15T08:00:00+00:00"},
        {"S": "2027-01-15T08:01:00+00:00"},
    )
    assert found == RunHolder(
        "lease",
        lease.owner,
        host=socket.gethostname(),
        pid=os.getpid(),
        since=datetime.datetime(2027, 1, 15, 8, 0, tzinfo=datetime.timezone.utc),
        expires=datetime.datetime(2027, 1, 15, 8, 1, 20, tzinfo=datetime.timezone.utc),
    )
    assert backend.run_holder("shop") is None


def test_a_lease_unchanged_for_a_whole_lease_period_is_taken_over(backend, clock):
    backend.create_checkpoint_store("shop")
    hold_lease(backend, "shop", "elsewhere.example", 7)
    other = lease_on(clock)
    lines = []

    with other.running("shop", lines.append) as lease:
        assert clock.now == 60
        assert lease_holder(backend, "shop") == lease.owner
    assert lines == [
        WAITING.format("elsewhere.example pid 7 run 0badf00d"),
        "took over the run lease of elsewhere.example pid 7 run 0badf00d, not renewed for 60 s",
    ]
    assert lease_item(backend, "shop") == {}


def test_ctrl_c_while_waiting_for_the_lease_leaves_it_to_its_holder(backend, clock):
    backend.create_checkpoint_store("shop")
    hold_lease(backend, "shop", "elsewhere.example", 7)
    held = lease_item(backend, "shop")

    def ctrl_c():
        if clock.now >= 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with lease_on(clock, ctrl_c).running("shop"):
            pass
    assert lease_item(backend, "shop") == held


def test_a_run_whose_renewals_hang_stops_writing_before_another_can_take_its_lease(backend, clock):
    backend.create_checkpoint_store("shop")
    first = lease_on(clock)
    hung = HungRenewals(first)
    seen = []  # at each wait of the second run: the time, and whether the first may write

    def watch():
        if clock.now == 20:  # the first run's renewal is due: it hangs
            assert hung.hanging.wait(timeout=10)
        seen.append((clock.now, lease.held()))

    with first.running("shop") as lease:
        with lease_on(clock, watch).running("shop") as taken:
            with pytest.raises(LeaseLost) as lost:
                lease.check()
    hung.resume()

    assert seen == [(float(t), t < 45) for t in range(5, 65, 5)]
    assert str(lost.value) == LOST.format(taken.owner)


def test_a_run_lease_stops_renewing_as_its_run_ends_not_a_third_of_a_lease_later(backend):
    backend.create_checkpoint_store("shop")  # the lease's time is real here: 60 s
    before = set(threading.enumerate())

    with backend.running("shop"):
        renewing = started_since(before)

    assert (renewing, started_since(before)) == (["run-lease"], [])


def test_a_run_returns_once_every_thread_it_started_has_ended(aws_env, tmp_path):
    with mock_aws():
        target = CliTarget("aws", tmp_path / "state")
        path = shop_applied(target, tmp_path)
        target.backend().put_records("shop-in", sessions(*(f"s{n}" for n in range(20))))
        before = set(threading.enumerate())

        ran = target.invoke("run", str(path), "--until-idle", "0")

        assert ran.exit_code == 0, ran.stderr
        assert "[shop] done: in 20 | out out 20 |" in ran.stderr
        assert started_since(before) == []


def test_a_lapsed_lease_is_held_again_once_a_renewal_gets_through(backend, clock):
    # A renewal names this run and epoch in its condition: one that gets through proves that
    # no run took the lease over meanwhile, however long the network was lost.
    backend.create_checkpoint_store("shop")
    run = lease_on(clock)
    hung = HungRenewals(run)
    shard = "shardId-000000000000"

    with run.running("shop") as lease:
        clock.advance(20)  # its first renewal is due, and hangs
        assert hung.hanging.wait(timeout=10)
        clock.advance(80)  # 100 s since its last renewal: longer than a whole lease
        assert not lease.held()
        with pytest.raises(Throttled) as lapsed:  # waited out, within --give-up-after
            lease.check()  # as the run does before each write
        hung.resume()  # the hung renewal times out; the next one, 2 s later, gets through
        wait_until(lambda: clock.waiting == 1)
        clock.advance(2)
        wait_until(lease.held)
        lease.check()
        run.set_checkpoint("shop", "orders", shard, "5")
        assert lease_item(backend, "shop")["renewals"] == {"N": "1"}

    assert type(lapsed.value) is LeaseLapsed
    assert str(lapsed.value) == (
        "the run lease was not renewed for 45 s: nothing is written until it is"
    )
    assert backend.get_checkpoints("shop", "orders") == {shard: "5"}


def test_a_checkpoint_moves_only_while_the_lease_names_this_run(backend):
    backend.create_checkpoint_store("shop")
    shard = "shardId-000000000000"
    transactions = count_calls(backend._client("dynamodb", data_plane=True), "TransactWriteItems")

    with backend.running("shop") as lease:
        backend.set_checkpoint("shop", "orders", shard, "5")
        backend.set_checkpoint("shop", "orders", shard, "3")  # older: ignored, lease or not
        hold_lease(backend, "shop", "elsewhere.example", 7)  # as if another run took over
        with pytest.raises(LeaseLost) as lost:
            backend.set_checkpoint("shop", "orders", shard, "9")
        assert not lease.held()

    assert str(lost.value) == LOST.format("elsewhere.example pid 7 run 0badf00d")
    assert backend.get_checkpoints("shop", "orders") == {shard: "5"}
    assert len(transactions) == 3  # each checkpoint and its lease check in one call
    assert lease_holder(backend, "shop") == "elsewhere.example pid 7 run 0badf00d"


def test_a_note_is_kept_beside_the_checkpoints_and_written_only_while_the_lease_is_ours(
    backend,
):
    backend.create_checkpoint_store("shop")
    backend.set_note("shop", "redrive:rejects", '{"log": "x"}')  # no run lease held: as it is

    with backend.running("shop"):
        assert backend.get_note("shop", "redrive:rejects") == '{"log": "x"}'
        backend.set_note("shop", "redrive:rejects", None)
        assert backend.get_note("shop", "redrive:rejects") is None
        backend.set_note("shop", "redrive:rejects", "kept")
        hold_lease(backend, "shop", "elsewhere.example", 7)  # as if another run took over
        with pytest.raises(LeaseLost) as lost:
            backend.set_note("shop", "redrive:rejects", "not kept")

    assert str(lost.value) == LOST.format("elsewhere.example pid 7 run 0badf00d")
    assert backend.get_note("shop", "redrive:rejects") == "kept"


def test_checkpoints_under_a_name_no_stream_has_ask_kinesis_nothing(backend):
    backend.create_checkpoint_store("shop")
    described = count_calls(backend._client("kinesis"), "DescribeStreamSummary")

    backend.set_checkpoint("shop", "#redrive:file", "shop.jsonl@1f2e", "120")

    assert backend.get_checkpoints("shop", "#redrive:file") == {"shop.jsonl@1f2e": "120"}
    assert described == []  # AWS would refuse the name: streams have no '#'


def test_a_lease_left_by_a_dead_run_of_this_machine_is_taken_at_once(backend):
    backend.create_checkpoint_store("shop")
    pid = gone_pid()
    hold_lease(backend, "shop", socket.gethostname(), pid)
    lines = []

    with backend.running("shop", lines.append):
        here = f"{socket.gethostname()} pid {os.getpid()} run "
        assert lease_holder(backend, "shop").startswith(here)
    assert lease_holder(backend, "shop") is None
    assert lines == [
        f"took over the run lease of {socket.gethostname()} pid {pid} run 0badf00d, "
        "whose process is gone"
    ]


def test_a_dead_run_lease_taken_by_another_run_first_is_not_taken_again(backend):
    backend.create_checkpoint_store("shop")
    hold_lease(backend, "shop", socket.gethostname(), gone_pid())

    def faster(**_):  # another run takes the lease between our read of it and our takeover
        backend._client("dynamodb").meta.events.unregister("after-call.dynamodb.GetItem", faster)
        hold_lease(backend, "shop", "elsewhere.example", 7)

    backend._client("dynamodb").meta.events.register("after-call.dynamodb.GetItem", faster)
    with pytest.raises(BackendError) as refused:
        with backend.running("shop"):
            pass
    assert str(refused.value) == (
        "pipeline shop is already running (elsewhere.example pid 7 run 0badf00d took the lease "
        "while this one waited); two runs at once would write every record twice"
    )
    assert lease_holder(backend, "shop") == "elsewhere.example pid 7 run 0badf00d"


@pytest.mark.parametrize(
    "host, pid_namespace, alive",
    [("this", PID_NAMESPACE, True), ("another", PID_NAMESPACE, False), ("this", "pid:[1]", False)],
    ids=["live-pid", "another-host", "another-container-of-this-host"],
)
def test_a_lease_of_a_live_run_or_of_another_machine_is_not_taken_at_once(
    backend, clock, host, pid_namespace, alive
):
    backend.create_checkpoint_store("shop")
    host = socket.gethostname() if host == "this" else "elsewhere.example"
    pid = os.getpid() if alive else gone_pid()
    hold_lease(backend, "shop", host, pid, pid_namespace)

    with pytest.raises(BackendError) as refused:
        with lease_on(clock, lambda: renew(backend, "shop")).running("shop"):  # its holder renews
            pass
    assert str(refused.value) == REFUSED.format(f"{host} pid {pid} run 0badf00d")
    assert lease_holder(backend, "shop") == f"{host} pid {pid} run 0badf00d"


def test_a_passing_service_fault_is_waited_out_like_throttling(backend):
    with Stubber(backend._client("kinesis", data_plane=True)) as stub:
        stub.add_client_error(
            "get_records",
            service_error_code="InternalFailure",
            service_message="Internal service failure.",
            http_status_code=500,
        )
        with pytest.raises(Throttled) as error:
            backend.get_records("some-iterator")
    assert str(error.value) == (
        "shard iterator: GetRecords throttled (InternalFailure: Internal service failure.)"
    )


KINESIS_URL = "https://kinesis.us-east-1.amazonaws.com/"
TRANSPORT_FAILURES = {
    "connect-timeout": (
        ConnectTimeoutError(endpoint_url=KINESIS_URL),
        f'Connect timeout on endpoint URL: "{KINESIS_URL}"',
    ),
    "tls": (
        SSLError(endpoint_url=KINESIS_URL, error="[SSL: CERTIFICATE_VERIFY_FAILED] bad cert"),
        f"SSL validation failed for {KINESIS_URL} [SSL: CERTIFICATE_VERIFY_FAILED] bad cert",
    ),
    "dns": (
        EndpointConnectionError(endpoint_url=KINESIS_URL),
        f'Could not connect to the endpoint URL: "{KINESIS_URL}"',
    ),
    "body-cut-short": (
        ResponseStreamingError(error="IncompleteRead(40 bytes read, 57 more expected)"),
        "An error occurred while reading from response stream: "
        "IncompleteRead(40 bytes read, 57 more expected)",
    ),
}


@pytest.mark.parametrize("failure, said", TRANSPORT_FAILURES.values(), ids=list(TRANSPORT_FAILURES))
def test_a_transport_failure_during_a_run_is_waited_out_like_throttling(backend, failure, said):
    backend.create_stream("orders", 1)

    def fail(**_):
        raise failure

    client = backend._client("kinesis", data_plane=True)
    client.meta.events.register_first("before-send.kinesis.PutRecords", fail)
    with pytest.raises(Throttled) as error:
        backend.put_records("orders", [(b"x", "k")])
    assert str(error.value) == f"stream 'orders': {said}"


def cut_short(client, operation):
    """Cut every answer to `operation` in half on its way back, as a dropped connection does
    (botocore reads broken JSON as an answer with nothing in it); gives the list of the bodies
    as cut."""
    bodies = []

    def cut(response_dict, **_):
        response_dict["body"] = response_dict["body"][: len(response_dict["body"]) // 2]
        bodies.append(response_dict["body"])

    service = client.meta.service_model.endpoint_prefix
    client.meta.events.register(f"before-parse.{service}.{operation}", cut)
    return bodies


@pytest.mark.parametrize(
    "operation, call, resource",
    [
        ("DescribeStreamSummary", lambda b: b.describe_stream("orders"), "stream 'orders'"),
        ("DescribeTable", lambda b: b.checkpoint_store_exists("shop"), "checkpoint table"),
        ("Query", lambda b: b.get_checkpoints("shop", "orders"), "checkpoint table"),
        # the stream's life, which the checkpoints are read for
        ("DescribeStreamSummary", lambda b: b.get_checkpoints("shop", "orders"), "stream 'orders'"),
        ("GetItem", lambda b: b.run_holder("shop"), "checkpoint table"),  # was read as "no one"
    ],
    ids=["describe-stream", "checkpoint-table", "checkpoints", "stream-life", "run-holder"],
)
def test_an_answer_cut_short_before_a_run_is_one_line(backend, operation, call, resource):
    backend.create_stream("orders", 1)
    backend.create_checkpoint_store("shop")
    for service in ("kinesis", "dynamodb"):
        cut_short(backend._client(service), operation)

    with pytest.raises(BackendError) as error:
        call(backend)
    assert type(error.value) is BackendError  # not waited out: the run has not started
    resource = resource.replace("checkpoint table", "checkpoint table 'shop-checkpoints'")
    assert str(error.value) == f"{resource}: the answer to {operation} was cut short"


def test_an_answer_that_is_not_json_says_the_endpoint_is_not_aws(backend):
    backend.create_stream("orders", 1)

    def page(response_dict, **_):
        response_dict["body"] = b"<!doctype html><html><body>Welcome to nginx!</body></html>"

    backend._client("kinesis").meta.events.register("before-parse.kinesis", page)
    with pytest.raises(BackendError) as error:
        backend.describe_stream("orders")
    assert str(error.value) == (
        "stream 'orders': the endpoint did not answer like AWS: check --endpoint-url, "
        "AWS_ENDPOINT_URL_<SERVICE> and AWS_ENDPOINT_URL"
    )


def test_an_error_answer_cut_short_during_a_run_is_waited_out_like_throttling(backend):
    # A checkpoint whose first write went in but whose answer was lost is written again: the
    # transaction is cancelled (the checkpoint is there already), and that answer is cut too.
    backend.create_checkpoint_store("shop")
    shard = "shardId-000000000000"
    with backend.running("shop"):
        backend.set_checkpoint("shop", "orders", shard, "5")
        bodies = cut_short(backend._client("dynamodb", data_plane=True), "TransactWriteItems")
        with pytest.raises(Throttled) as error:
            backend.set_checkpoint("shop", "orders", shard, "5")

    (body,) = bodies
    assert body.startswith(b'{"__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceled')
    assert str(error.value) == (
        f"checkpoint table 'shop-checkpoints': TransactWriteItems failed (400: {body.decode()})"
    )
    assert backend.get_checkpoints("shop", "orders") == {shard: "5"}


def answer_with(client, operation, status, body):
    """Answer every `operation` with this status and body, before moto sees the request."""

    def answer(request, **_):
        return AWSResponse(request.url, status, {}, _Raw(body))

    service = client.meta.service_model.endpoint_prefix
    client.meta.events.register_first(f"before-send.{service}.{operation}", answer)


def test_a_5xx_answer_during_a_run_is_waited_out_like_throttling(backend):
    backend.create_stream("orders", 1)
    iterator = backend.get_shard_iterator("orders", "shardId-000000000000", "TRIM_HORIZON")
    page = b"<!doctype html><html><body><h1>Internal Server Error</h1></body></html>"
    answer_with(backend._client("kinesis", data_plane=True), "GetRecords", 500, page)

    with pytest.raises(Throttled) as error:
        backend.get_records(iterator)
    assert str(error.value) == f"shard iterator: GetRecords failed (500: {page.decode()})"


@pytest.mark.parametrize(
    "operation", ["ListShards", "GetShardIterator", "GetRecords", "PutRecords"]
)
def test_an_answer_cut_short_during_a_run_is_waited_out_like_throttling(backend, operation):
    backend.create_stream("orders", 1)
    backend.put_records("orders", [(b"x", "k")])
    (shard,) = backend.list_shards("orders")
    iterator = backend.get_shard_iterator("orders", shard.shard_id, "TRIM_HORIZON")
    call, resource = {
        "ListShards": (lambda: backend.list_shards("orders"), "stream 'orders'"),
        "GetShardIterator": (
            lambda: backend.get_shard_iterator("orders", shard.shard_id, "LATEST"),
            "shard 'shardId-000000000000' of stream 'orders'",
        ),
        "GetRecords": (lambda: backend.get_records(iterator), "shard iterator"),
        "PutRecords": (lambda: backend.put_records("orders", [(b"y", "k")]), "stream 'orders'"),
    }[operation]
    for client in (backend._client("kinesis"), backend._client("kinesis", data_plane=True)):
        cut_short(client, operation)

    with pytest.raises(Throttled) as error:
        call()
    assert str(error.value) == f"{resource}: the answer to {operation} was cut short"


def test_without_a_region_the_aws_configuration_chooses(aws_env, monkeypatch, tmp_path):
    def regions():
        """The backend's region, and the one its clients are made in."""
        backend = AwsBackend(None, poll_s=0)
        return backend.region, backend._client("kinesis").meta.region_name

    (tmp_path / "config").write_text("[default]\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert regions() == ("eu-west-2", "eu-west-2")
    monkeypatch.delenv("AWS_REGION")
    assert regions() == ("eu-west-1", "eu-west-1")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert regions() == ("ap-south-1", "ap-south-1")
    (tmp_path / "config").unlink()
    assert regions() == ("us-east-1", "us-east-1")
    assert AwsBackend("ca-central-1", poll_s=0)._client("s3").meta.region_name == "ca-central-1"


def test_a_lost_endpoint_fails_at_once_at_first_and_is_waited_out_during_a_run():
    from botocore.exceptions import EndpointConnectionError
    from botocore.parsers import ResponseParserError

    from runner.backends.aws.errors import backend_errors

    lost = EndpointConnectionError(endpoint_url="http://127.0.0.1:5999/")
    with pytest.raises(BackendError) as first:
        with backend_errors("stream 'orders'"):
            raise lost
    assert type(first.value) is BackendError
    assert str(first.value) == (
        "stream 'orders': cannot connect to the endpoint http://127.0.0.1:5999/: check the "
        "network, the region and --endpoint-url, AWS_ENDPOINT_URL_<SERVICE> and AWS_ENDPOINT_URL"
    )
    with pytest.raises(Throttled):
        with backend_errors("stream 'orders'", during_run=True):
            raise lost
    with pytest.raises(BackendError) as garbled:
        with backend_errors("stream 'orders'"):
            raise ResponseParserError("Unable to parse response (not XML)")
    assert str(garbled.value) == (
        "stream 'orders': the endpoint did not answer like AWS: check --endpoint-url, "
        "AWS_ENDPOINT_URL_<SERVICE> and AWS_ENDPOINT_URL"
    )


def test_apply_in_a_china_region_names_resources_in_the_aws_cn_partition(aws_env):
    spec = str(PIPELINES / "ecommerce.yaml")
    with mock_aws():
        applied = CliRunner().invoke(
            cli, ["apply", spec, "--target", "aws", "--region", "cn-north-1"]
        )
        assert applied.exit_code == 0, applied.output
        backend = AwsBackend("cn-north-1", poll_s=0)
        iam = backend._client("iam")
        policy = iam.get_role_policy(
            RoleName="de-c2w2lab1-firehose-role", PolicyName="pipeline-firehose-delivery"
        )["PolicyDocument"]
        delivery = backend._client("firehose").describe_delivery_stream(
            DeliveryStreamName="de-c2w2lab1-firehose-usa"
        )["DeliveryStreamDescription"]
    assert backend.partition == "aws-cn"
    assert [r for s in policy["Statement"] for r in s["Resource"]] == [
        f"arn:aws-cn:kinesis:cn-north-1:{ACCOUNT}:stream/de-c2w2lab1-international-data-stream",
        f"arn:aws-cn:kinesis:cn-north-1:{ACCOUNT}:stream/de-c2w2lab1-usa-data-stream",
        f"arn:aws-cn:s3:::de-c2w2lab1-{ACCOUNT}-int",
        f"arn:aws-cn:s3:::de-c2w2lab1-{ACCOUNT}-int/*",
        f"arn:aws-cn:s3:::de-c2w2lab1-{ACCOUNT}-usa",
        f"arn:aws-cn:s3:::de-c2w2lab1-{ACCOUNT}-usa/*",
        f"arn:aws-cn:logs:cn-north-1:{ACCOUNT}:log-group:"
        "de-c2w2lab1-firehose-international-log-group:log-stream:*",
        f"arn:aws-cn:logs:cn-north-1:{ACCOUNT}:log-group:"
        "de-c2w2lab1-firehose-usa-log-group:log-stream:*",
    ]
    source = delivery["Source"]["KinesisStreamSourceDescription"]
    destination = delivery["Destinations"][0]["ExtendedS3DestinationDescription"]
    assert (source["KinesisStreamARN"], destination["RoleARN"], destination["BucketARN"]) == (
        f"arn:aws-cn:kinesis:cn-north-1:{ACCOUNT}:stream/de-c2w2lab1-usa-data-stream",
        f"arn:aws-cn:iam::{ACCOUNT}:role/de-c2w2lab1-firehose-role",
        f"arn:aws-cn:s3:::de-c2w2lab1-{ACCOUNT}-usa",
    )
