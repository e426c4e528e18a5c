"""The AWS backend: Kinesis, Firehose, S3, IAM, CloudWatch Logs and DynamoDB through boto3.

Credentials come from boto3's standard chain. Data-plane Kinesis calls are made once, without
botocore's retries, so that throttling reaches the engine, which backs off per shard; control-plane
calls keep the standard retries. Every botocore failure becomes a one-line BackendError naming
the resource, and AWS's error code and message.

Checkpoints live in one DynamoDB table per pipeline, sequence numbers zero-padded to 64 digits so
that a conditional write can keep them from moving backwards by comparing text.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from runner.backends.base import (
    ITERATOR_TYPES,
    MAX_GET_RECORDS,
    SHARD_END,
    Backend,
    BackendError,
    FirehoseDescription,
    IteratorExpired,
    PutResult,
    Record,
    RecordBatch,
    RoleDescription,
    Shard,
    StreamDescription,
    StreamNotFound,
    Throttled,
    check_batch,
    check_shard_count,
)

# Each GetRecords, PutRecords or GetShardIterator is tried once: the caller backs off itself.
# (botocore's `max_attempts` counts retries after the first call, `total_max_attempts` all calls.)
_DATA_PLANE = Config(retries={"total_max_attempts": 1})
_CONTROL_PLANE = Config(retries={"mode": "standard"})

SHARDS_PER_PAGE = 1000
WAIT_TIMEOUT_S = 900
ROLE_PROPAGATION_S = 60
SEQUENCE_DIGITS = 64

_NOT_FOUND = {"ResourceNotFoundException", "NoSuchEntity", "NoSuchBucket", "NoSuchKey", "404"}
# Answers that mean "slow down and try again": limits, and the service's own passing faults,
# which the loop waits out like throttling instead of failing a run that may last for days.
_THROTTLING = {
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ThrottlingException",
    "KMSThrottlingException",
    "RequestLimitExceeded",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
}
_NO_CREDENTIALS = (
    "pass --profile NAME, set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) "
    "in the environment, or run `aws configure`"
)


class _Missing(BackendError):
    """The resource a call named does not exist."""


class LeaseLost(BackendError):
    """Another run holds the pipeline's run lock."""


class AwsBackend(Backend):
    """Streams, buckets, delivery streams, roles, log groups and checkpoints on AWS."""

    name = "aws"
    delivers_firehoses = True
    read_workers = 16  # each GetRecords waits on the network: ask shards in parallel

    def __init__(
        self,
        region: str,
        profile: str | None = None,
        endpoint_url: str | None = None,
        poll_s: float = 2.0,
    ) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self.poll_s = poll_s
        with _errors("the AWS session"):
            self._session = boto3.Session(profile_name=profile, region_name=region)
            self._partition = self._session.get_partition_for_region(region)
        self._clients: dict[tuple[str, bool], Any] = {}
        # boto3 clients are thread-safe once made, but making them from one session is not.
        self._lock = threading.Lock()
        self._account_id: str | None = None

    @property
    def account_id(self) -> str:
        """The account of the caller's credentials, asked of STS once."""
        if self._account_id is None:
            with _errors("the AWS account"):
                self._account_id = self._client("sts").get_caller_identity()["Account"]
        return self._account_id

    def close(self) -> None:
        """Close every client's connections."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    # Streams

    def describe_stream(self, name: str) -> StreamDescription | None:
        """The stream's status, open shard count and retention, or None if it does not exist."""
        try:
            with _errors(f"stream '{name}'", missing=StreamNotFound):
                answer = self._client("kinesis").describe_stream_summary(StreamName=name)
        except StreamNotFound:
            return None
        summary = answer["StreamDescriptionSummary"]
        return StreamDescription(
            name=name,
            status=summary["StreamStatus"],
            open_shard_count=summary["OpenShardCount"],
            retention_hours=summary["RetentionPeriodHours"],
        )

    def create_stream(self, name: str, shards: int) -> None:
        """Create a provisioned stream and return once it is ACTIVE."""
        check_shard_count(name, shards)
        with _errors(f"stream '{name}'"):
            self._client("kinesis").create_stream(StreamName=name, ShardCount=shards)
        self._active_stream(name)

    def update_shard_count(self, name: str, shards: int) -> None:
        """Reshard with uniform scaling, at most doubling or halving per call as Kinesis allows."""
        check_shard_count(name, shards)
        current = self._active_stream(name).open_shard_count
        while current != shards:
            if shards > current:
                step = min(shards, current * 2)
            else:
                step = max(shards, (current + 1) // 2)
            with _errors(f"stream '{name}'", missing=StreamNotFound):
                self._client("kinesis").update_shard_count(
                    StreamName=name, TargetShardCount=step, ScalingType="UNIFORM_SCALING"
                )
            current = self._active_stream(name).open_shard_count

    def delete_stream(self, name: str) -> None:
        """Delete the stream and its consumers; return once it is gone."""
        with _errors(f"stream '{name}'", missing=StreamNotFound):
            self._client("kinesis").delete_stream(StreamName=name, EnforceConsumerDeletion=True)
        self._wait(f"stream '{name}'", lambda: self._stream_status(name), None)

    def list_shards(self, stream: str) -> list[Shard]:
        """Every retained shard, in the order Kinesis lists them: parents before children."""
        shards: list[Shard] = []
        params: dict[str, Any] = {"StreamName": stream}
        with _errors(f"stream '{stream}'", missing=StreamNotFound):
            while True:
                page = self._client("kinesis").list_shards(MaxResults=SHARDS_PER_PAGE, **params)
                shards.extend(_shard(s) for s in page["Shards"])
                if not page.get("NextToken"):
                    return shards
                # Kinesis refuses StreamName alongside NextToken.
                params = {"NextToken": page["NextToken"]}

    # Records

    def get_shard_iterator(
        self,
        stream: str,
        shard_id: str,
        iterator_type: str,
        sequence: str | None = None,
        timestamp: datetime.datetime | None = None,
    ) -> str:
        """An iterator positioned as `iterator_type` says; AWS keeps it valid for 5 minutes."""
        params: dict[str, Any] = {
            "StreamName": stream,
            "ShardId": shard_id,
            "ShardIteratorType": iterator_type,
        }
        if iterator_type not in ITERATOR_TYPES:
            expected = ", ".join(ITERATOR_TYPES)
            raise BackendError(f"unknown iterator type '{iterator_type}' (expected {expected})")
        if iterator_type in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
            if not sequence:
                raise BackendError(
                    f"{iterator_type} on {stream}/{shard_id} needs a sequence number"
                )
            params["StartingSequenceNumber"] = sequence
        elif iterator_type == "AT_TIMESTAMP":
            if timestamp is None or timestamp.tzinfo is None:
                raise BackendError("AT_TIMESTAMP needs a timezone-aware timestamp")
            params["Timestamp"] = timestamp
        with _errors(f"shard '{shard_id}' of stream '{stream}'", missing=StreamNotFound):
            return self._client("kinesis", data_plane=True).get_shard_iterator(**params)[
                "ShardIterator"
            ]

    def get_records(self, iterator: str, limit: int = MAX_GET_RECORDS) -> RecordBatch:
        """Up to `limit` records; raises IteratorExpired, Throttled or StreamNotFound."""
        if not 1 <= limit <= MAX_GET_RECORDS:
            raise BackendError(f"get_records limit must be 1 to {MAX_GET_RECORDS}, got {limit}")
        with _errors("shard iterator", missing=StreamNotFound):
            answer = self._client("kinesis", data_plane=True).get_records(
                ShardIterator=iterator, Limit=limit
            )
        records = [
            Record(
                sequence=r["SequenceNumber"],
                partition_key=r["PartitionKey"],
                data=r["Data"],
                arrival=r["ApproximateArrivalTimestamp"].astimezone(datetime.timezone.utc),
            )
            for r in answer["Records"]
        ]
        return RecordBatch(
            records, answer.get("NextShardIterator"), answer.get("MillisBehindLatest", 0)
        )

    def put_records(self, stream: str, entries: Sequence[tuple[bytes, str]]) -> list[PutResult]:
        """Put (data, partition_key) entries in one PutRecords call; one result per entry.

        Raises BackendError for a request Kinesis would refuse whole, Throttled when the whole
        call is throttled and StreamNotFound.
        """
        entries = list(entries)
        check_batch(stream, entries)
        with _errors(f"stream '{stream}'", missing=StreamNotFound):
            answer = self._client("kinesis", data_plane=True).put_records(
                StreamName=stream,
                Records=[{"Data": bytes(data), "PartitionKey": key} for data, key in entries],
            )
        return [
            PutResult(
                shard_id=r.get("ShardId"),
                sequence=r.get("SequenceNumber"),
                error_code=r.get("ErrorCode"),
                error_message=r.get("ErrorMessage"),
            )
            for r in answer["Records"]
        ]

    # Checkpoints: one DynamoDB table per pipeline, keyed by stream and shard.

    def checkpoint_store_exists(self, pipeline: str) -> bool:
        """Whether the pipeline's checkpoint table exists."""
        return self._table_status(_table(pipeline)) is not None

    def create_checkpoint_store(self, pipeline: str) -> None:
        """Create the pipeline's on-demand checkpoint table; return once it is ACTIVE."""
        table = _table(pipeline)
        with _errors(f"checkpoint table '{table}'"):
            self._client("dynamodb").create_table(
                TableName=table,
                AttributeDefinitions=[
                    {"AttributeName": "stream", "AttributeType": "S"},
                    {"AttributeName": "shard_id", "AttributeType": "S"},
                ],
                KeySchema=[
                    {"AttributeName": "stream", "KeyType": "HASH"},
                    {"AttributeName": "shard_id", "KeyType": "RANGE"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
        self._wait(f"checkpoint table '{table}'", lambda: self._table_status(table), "ACTIVE")

    def delete_checkpoint_store(self, pipeline: str) -> None:
        """Delete the pipeline's checkpoint table, if it exists; return once it is gone."""
        table = _table(pipeline)
        try:
            with _errors(f"checkpoint table '{table}'"):
                self._client("dynamodb").delete_table(TableName=table)
        except _Missing:
            return
        self._wait(f"checkpoint table '{table}'", lambda: self._table_status(table), None)

    def get_checkpoints(self, pipeline: str, stream: str) -> dict[str, str]:
        """shard id -> sequence number (or SHARD_END) for every checkpointed shard."""
        checkpoints: dict[str, str] = {}
        params: dict[str, Any] = {
            "KeyConditionExpression": "#stream = :stream",
            "ExpressionAttributeNames": {"#stream": "stream"},
            "ExpressionAttributeValues": {":stream": {"S": stream}},
            # A restarted run must see the checkpoint the previous one wrote last.
            "ConsistentRead": True,
        }
        with self._checkpoint_table(pipeline) as table:
            while True:
                page = self._client("dynamodb").query(TableName=table, **params)
                for item in page["Items"]:
                    stored = item["sequence"]["S"]
                    sequence = stored if stored == SHARD_END else stored.lstrip("0") or "0"
                    checkpoints[item["shard_id"]["S"]] = sequence
                if "LastEvaluatedKey" not in page:
                    return checkpoints
                params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def set_checkpoint(self, pipeline: str, stream: str, shard_id: str, sequence: str) -> None:
        """Move the checkpoint forward; an older sequence, or any after SHARD_END, is ignored."""
        if sequence == SHARD_END:
            stored = sequence
        elif sequence.isascii() and sequence.isdigit() and len(sequence) <= SEQUENCE_DIGITS:
            stored = sequence.zfill(SEQUENCE_DIGITS)
        else:
            raise BackendError(
                f"checkpoint of {stream}/{shard_id}: '{sequence}' is not a sequence number"
            )
        with self._checkpoint_table(pipeline) as table:
            try:
                self._client("dynamodb").update_item(
                    TableName=table,
                    Key={"stream": {"S": stream}, "shard_id": {"S": shard_id}},
                    UpdateExpression="SET #s = :new",
                    ConditionExpression="attribute_not_exists(#s) OR #s < :new",
                    ExpressionAttributeNames={"#s": "sequence"},
                    ExpressionAttributeValues={":new": {"S": stored}},
                )
            except ClientError as error:
                # An equal or later checkpoint is already there; keep it.
                if _code(error) != "ConditionalCheckFailedException":
                    raise

    # Run lock: a lease item in the checkpoint table, renewed while the run goes on, so that a
    # run on another machine sees it; a run that dies lets it lapse after LEASE_S.

    @contextlib.contextmanager
    def running(self, pipeline: str, on_lost: Callable[[], None] = lambda: None) -> Iterator[None]:
        # Unique per run, even for two runs in one process.
        owner = f"{socket.gethostname()} pid {os.getpid()} run {uuid.uuid4().hex[:8]}"
        self._take_lease(pipeline, owner)
        done = threading.Event()

        def renew() -> None:
            while not done.wait(LEASE_S / 3):
                try:
                    self._take_lease(pipeline, owner)
                except LeaseLost:
                    on_lost()  # another run took it: stop before writing twice
                    return
                except Exception:  # noqa: BLE001 - a blip; the lease outlives two more tries
                    continue

        renewer = threading.Thread(target=renew, name="run-lease", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()
            with self._checkpoint_table(pipeline) as table, contextlib.suppress(ClientError):
                self._client("dynamodb").delete_item(
                    TableName=table,
                    Key=_LEASE_KEY,
                    ConditionExpression="#owner = :owner",
                    ExpressionAttributeNames={"#owner": "owner"},
                    ExpressionAttributeValues={":owner": {"S": owner}},
                )

    def _take_lease(self, pipeline: str, owner: str) -> None:
        now = int(time.time())
        with self._checkpoint_table(pipeline) as table:
            try:
                self._client("dynamodb").put_item(
                    TableName=table,
                    Item={
                        **_LEASE_KEY,
                        "owner": {"S": owner},
                        "expires": {"N": str(now + LEASE_S)},
                    },
                    ConditionExpression="attribute_not_exists(#owner) OR #owner = :owner "
                    "OR #expires < :now",
                    ExpressionAttributeNames={"#owner": "owner", "#expires": "expires"},
                    ExpressionAttributeValues={":owner": {"S": owner}, ":now": {"N": str(now)}},
                )
            except ClientError as error:
                if _code(error) != "ConditionalCheckFailedException":
                    raise
                held = (
                    self._client("dynamodb")
                    .get_item(TableName=table, Key=_LEASE_KEY, ConsistentRead=True)
                    .get("Item", {})
                )
                holder = held.get("owner", {}).get("S", "another process")
                raise LeaseLost(
                    f"pipeline {pipeline} is already running ({holder}); "
                    "two runs at once would write every record twice"
                ) from None

    # Buckets

    def bucket_exists(self, name: str) -> bool:
        """Whether the bucket exists in this account; a name taken elsewhere is an error."""
        try:
            with _errors(f"bucket '{name}'"):
                try:
                    self._client("s3").head_bucket(Bucket=name)
                except ClientError as error:
                    if _code(error) == "403":
                        raise BackendError(
                            f"bucket '{name}' exists but this account may not use it "
                            "(HeadBucket: 403 Forbidden): the name is probably taken by "
                            "another AWS account, and bucket names are global; choose another"
                        ) from error
                    raise
        except _Missing:
            return False
        return True

    def create_bucket(self, name: str) -> None:
        """Create a private bucket in the region, encrypted with S3-managed keys (SSE-S3)."""
        params: dict[str, Any] = {"Bucket": name}
        # us-east-1 is S3's default location and refuses to be named as a constraint.
        if self.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        s3 = self._client("s3")
        with _errors(f"bucket '{name}'"):
            s3.create_bucket(**params)
            s3.put_public_access_block(
                Bucket=name,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )
            s3.put_bucket_encryption(
                Bucket=name,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            )

    def delete_bucket(self, name: str) -> None:
        """Delete every object (every version, every delete marker), then the bucket."""
        s3 = self._client("s3")
        with _errors(f"bucket '{name}'"):
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
                doomed = [
                    {"Key": v["Key"], "VersionId": v["VersionId"]}
                    for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
                ]
                if not doomed:
                    continue
                answer = s3.delete_objects(Bucket=name, Delete={"Objects": doomed, "Quiet": True})
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise BackendError(
                        f"bucket '{name}': cannot delete object '{first['Key']}' "
                        f"({first['Code']}: {first['Message']}) and "
                        f"{len(answer['Errors']) - 1} more"
                    )
            s3.delete_bucket(Bucket=name)

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        """Write the object; S3 makes it visible whole or not at all."""
        with _errors(f"bucket '{bucket}'"):
            self._client("s3").put_object(Bucket=bucket, Key=key, Body=body)

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys under `prefix`, sorted."""
        keys: list[str] = []
        with _errors(f"bucket '{bucket}'"):
            pages = self._client("s3").get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(keys)

    def get_object(self, bucket: str, key: str) -> bytes:
        """The object's bytes."""
        with _errors(f"object '{key}' in bucket '{bucket}'"):
            return self._client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()

    # Firehose delivery streams, reading a Kinesis stream and writing to S3.

    def describe_firehose(self, name: str) -> FirehoseDescription | None:
        """The delivery stream as the spec would describe it, or None if it does not exist."""
        found = self._delivery_stream(name)
        if found is None:
            return None
        source = found.get("Source", {}).get("KinesisStreamSourceDescription", {})
        destination = found["Destinations"][0]
        s3 = destination.get("ExtendedS3DestinationDescription") or destination.get(
            "S3DestinationDescription"
        )
        if s3 is None:
            raise BackendError(
                f"firehose '{name}' exists but does not deliver to S3: "
                "delete it or pick another name"
            )
        logging = s3.get("CloudWatchLoggingOptions", {})
        logged = logging.get("Enabled", False)
        return FirehoseDescription(
            name=name,
            stream=_arn_name(source.get("KinesisStreamARN", "")),
            bucket=s3["BucketARN"].rsplit(":", 1)[-1],
            prefix=s3.get("Prefix", ""),
            error_prefix=s3.get("ErrorOutputPrefix", ""),
            buffer_size_mb=s3["BufferingHints"]["SizeInMBs"],
            buffer_interval_s=s3["BufferingHints"]["IntervalInSeconds"],
            compression=s3.get("CompressionFormat", "UNCOMPRESSED"),
            role=_arn_name(s3.get("RoleARN", "")),
            log_group=logging.get("LogGroupName") if logged else None,
            log_stream=logging.get("LogStreamName") if logged else None,
        )

    def create_firehose(self, firehose: FirehoseDescription) -> None:
        """Create a delivery stream from the Kinesis stream to S3; return once it is ACTIVE."""
        destination = self._destination(firehose)
        source = {
            "KinesisStreamARN": self._arn("kinesis", f"stream/{firehose.stream}"),
            "RoleARN": destination["RoleARN"],
        }
        self._while_role_propagates(
            f"firehose '{firehose.name}'",
            lambda: self._client("firehose").create_delivery_stream(
                DeliveryStreamName=firehose.name,
                DeliveryStreamType="KinesisStreamAsSource",
                KinesisStreamSourceConfiguration=source,
                ExtendedS3DestinationConfiguration=destination,
            ),
        )
        self._wait_for_firehose(firehose.name, "ACTIVE")

    def update_firehose(self, firehose: FirehoseDescription) -> None:
        """Change the S3 destination's settings; the source stream cannot change in place."""
        found = self._delivery_stream(firehose.name)
        if found is None:
            raise BackendError(f"firehose '{firehose.name}' does not exist")
        source = found.get("Source", {}).get("KinesisStreamSourceDescription", {})
        current_stream = _arn_name(source.get("KinesisStreamARN", ""))
        if current_stream != firehose.stream:
            raise BackendError(
                f"firehose '{firehose.name}' reads stream '{current_stream}', not "
                f"'{firehose.stream}': a delivery stream's source cannot change; "
                "destroy it and apply again"
            )
        destination = self._destination(firehose)
        self._while_role_propagates(
            f"firehose '{firehose.name}'",
            lambda: self._client("firehose").update_destination(
                DeliveryStreamName=firehose.name,
                CurrentDeliveryStreamVersionId=found["VersionId"],
                DestinationId=found["Destinations"][0]["DestinationId"],
                ExtendedS3DestinationUpdate=destination,
            ),
        )
        self._wait_for_firehose(firehose.name, "ACTIVE")

    def delete_firehose(self, name: str) -> None:
        """Delete the delivery stream; return once it is gone."""
        with _errors(f"firehose '{name}'"):
            self._client("firehose").delete_delivery_stream(DeliveryStreamName=name)
        self._wait_for_firehose(name, None)

    # IAM roles

    def describe_role(self, name: str) -> RoleDescription | None:
        """The role's trust policy and inline policies, or None if it does not exist."""
        iam = self._client("iam")
        try:
            with _errors(f"role '{name}'"):
                role = iam.get_role(RoleName=name)["Role"]
                policies = {
                    policy: _policy(
                        iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
                    )
                    for policy in self._inline_policies(name)
                }
        except _Missing:
            return None
        return RoleDescription(name, _policy(role["AssumeRolePolicyDocument"]), policies)

    def put_role(self, role: RoleDescription) -> None:
        """Create the role, or set its trust policy; then make its inline policies exactly these."""
        iam = self._client("iam")
        trust = json.dumps(role.trust_policy)
        with _errors(f"role '{role.name}'"):
            try:
                iam.create_role(RoleName=role.name, AssumeRolePolicyDocument=trust)
            except ClientError as error:
                if _code(error) != "EntityAlreadyExists":
                    raise
                iam.update_assume_role_policy(RoleName=role.name, PolicyDocument=trust)
            for policy, document in role.policies.items():
                iam.put_role_policy(
                    RoleName=role.name, PolicyName=policy, PolicyDocument=json.dumps(document)
                )
            for stale in set(self._inline_policies(role.name)) - set(role.policies):
                iam.delete_role_policy(RoleName=role.name, PolicyName=stale)

    def delete_role(self, name: str) -> None:
        """Delete the role's inline policies, then the role."""
        iam = self._client("iam")
        with _errors(f"role '{name}'"):
            for policy in self._inline_policies(name):
                iam.delete_role_policy(RoleName=name, PolicyName=policy)
            iam.delete_role(RoleName=name)

    # CloudWatch Logs, where Firehose writes delivery errors

    def describe_log_group(self, group: str) -> list[str] | None:
        """The log group's stream names, or None when the group does not exist."""
        logs = self._client("logs")
        with _errors(f"log group '{group}'"):
            pages = logs.get_paginator("describe_log_groups").paginate(logGroupNamePrefix=group)
            if not any(g["logGroupName"] == group for p in pages for g in p["logGroups"]):
                return None
            pages = logs.get_paginator("describe_log_streams").paginate(logGroupName=group)
            return [s["logStreamName"] for p in pages for s in p["logStreams"]]

    def create_log_stream(self, group: str, stream: str) -> None:
        """Create the stream, and its group when missing; either may exist already."""
        logs = self._client("logs")
        with _errors(f"log group '{group}'"):
            for create in (
                lambda: logs.create_log_group(logGroupName=group),
                lambda: logs.create_log_stream(logGroupName=group, logStreamName=stream),
            ):
                try:
                    create()
                except ClientError as error:
                    if _code(error) != "ResourceAlreadyExistsException":
                        raise

    def delete_log_group(self, group: str) -> None:
        """Delete the log group and its streams."""
        with _errors(f"log group '{group}'"):
            self._client("logs").delete_log_group(logGroupName=group)

    # Internals

    def _client(self, service: str, data_plane: bool = False) -> Any:
        with self._lock:
            client = self._clients.get((service, data_plane))
            if client is None:
                config = _DATA_PLANE if data_plane else _CONTROL_PLANE
                if service == "s3" and self.endpoint_url:
                    # LocalStack and moto servers answer on one host, not bucket subdomains.
                    config = config.merge(Config(s3={"addressing_style": "path"}))
                client = self._session.client(
                    service, config=config, endpoint_url=self.endpoint_url
                )
                self._clients[(service, data_plane)] = client
            return client

    def _arn(self, service: str, resource: str) -> str:
        return f"arn:{self._partition}:{service}:{self.region}:{self.account_id}:{resource}"

    def _wait(self, what: str, status: Callable[[], str | None], until: str | None) -> None:
        """Poll `status` every poll_s until it is `until` (None: until the resource is gone)."""
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while (current := status()) != until:
            if current is None:
                raise BackendError(f"{what} vanished while waiting for it to be {until}")
            if time.monotonic() > deadline:
                wanted = until or "gone"
                raise BackendError(
                    f"{what} is still {current} after {WAIT_TIMEOUT_S} s, "
                    f"waiting for it to be {wanted}"
                )
            time.sleep(self.poll_s)

    def _active_stream(self, name: str) -> StreamDescription:
        """Poll until the stream is ACTIVE and return it; raises StreamNotFound."""
        found: StreamDescription | None = None

        def status() -> str:
            nonlocal found
            found = self.describe_stream(name)
            if found is None:
                raise StreamNotFound(f"stream '{name}' does not exist")
            return found.status

        self._wait(f"stream '{name}'", status, "ACTIVE")
        return found

    def _stream_status(self, name: str) -> str | None:
        found = self.describe_stream(name)
        return None if found is None else found.status

    def _delivery_stream(self, name: str) -> dict | None:
        try:
            with _errors(f"firehose '{name}'"):
                answer = self._client("firehose").describe_delivery_stream(DeliveryStreamName=name)
        except _Missing:
            return None
        return answer["DeliveryStreamDescription"]

    def _wait_for_firehose(self, name: str, until: str | None) -> None:
        def status() -> str | None:
            found = self._delivery_stream(name)
            if found is None:
                return None
            state = found["DeliveryStreamStatus"]
            if state.endswith("_FAILED"):
                failure = found.get("FailureDescription", {})
                raise BackendError(
                    f"firehose '{name}' is {state}: {failure.get('Type', 'UNKNOWN')}: "
                    f"{_one_line(failure.get('Details', ''))}"
                )
            return state

        self._wait(f"firehose '{name}'", status, until)

    def _destination(self, firehose: FirehoseDescription) -> dict[str, Any]:
        """The ExtendedS3 destination settings, for CreateDeliveryStream and UpdateDestination."""
        if not firehose.role:
            raise BackendError(f"firehose '{firehose.name}' needs an IAM role to assume on AWS")
        logging: dict[str, Any] = {"Enabled": firehose.log_group is not None}
        if firehose.log_group is not None:
            logging["LogGroupName"] = firehose.log_group
            if firehose.log_stream is not None:
                logging["LogStreamName"] = firehose.log_stream
        return {
            "RoleARN": f"arn:{self._partition}:iam::{self.account_id}:role/{firehose.role}",
            "BucketARN": f"arn:{self._partition}:s3:::{firehose.bucket}",
            "Prefix": firehose.prefix,
            "ErrorOutputPrefix": firehose.error_prefix,
            "BufferingHints": {
                "SizeInMBs": firehose.buffer_size_mb,
                "IntervalInSeconds": firehose.buffer_interval_s,
            },
            "CompressionFormat": firehose.compression,
            "CloudWatchLoggingOptions": logging,
        }

    def _while_role_propagates(self, resource: str, call: Callable[[], object]) -> None:
        """Make the call, again every poll_s while Firehose cannot assume a new role yet."""
        # IAM is eventually consistent: a role made seconds ago may not be assumable yet.
        deadline = time.monotonic() + ROLE_PROPAGATION_S
        with _errors(resource):
            while True:
                try:
                    call()
                    return
                except ClientError as error:
                    message = error.response.get("Error", {}).get("Message", "")
                    role_not_ready = (
                        _code(error) == "InvalidArgumentException" and "role" in message.lower()
                    )
                    if not role_not_ready or time.monotonic() > deadline:
                        raise
                time.sleep(self.poll_s)

    def _inline_policies(self, role: str) -> list[str]:
        pages = self._client("iam").get_paginator("list_role_policies").paginate(RoleName=role)
        return [name for page in pages for name in page["PolicyNames"]]

    def _table_status(self, table: str) -> str | None:
        try:
            with _errors(f"checkpoint table '{table}'"):
                return self._client("dynamodb").describe_table(TableName=table)["Table"][
                    "TableStatus"
                ]
        except _Missing:
            return None

    @contextlib.contextmanager
    def _checkpoint_table(self, pipeline: str) -> Iterator[str]:
        table = _table(pipeline)
        try:
            with _errors(f"checkpoint table '{table}'"):
                yield table
        except _Missing as error:
            raise BackendError(
                f"checkpoint table '{table}' does not exist in {self.region}: "
                f"run `pipeline apply` to create it"
            ) from error


@contextlib.contextmanager
def _errors(resource: str, missing: type[BackendError] = _Missing) -> Iterator[None]:
    """Turn what botocore raises into a one-line BackendError naming `resource`."""
    try:
        yield
    except ClientError as error:
        raise _client_error(resource, error, missing) from error
    except NoCredentialsError as error:
        raise BackendError(f"no AWS credentials found: {_NO_CREDENTIALS}") from error
    except PartialCredentialsError as error:
        raise BackendError(
            f"incomplete AWS credentials from {error.kwargs.get('provider', 'the environment')} "
            f"(missing {error.kwargs.get('cred_var', 'a value')}): {_NO_CREDENTIALS}"
        ) from error
    except ProfileNotFound as error:
        raise BackendError(
            f"AWS profile '{error.kwargs.get('profile')}' not found in the AWS config files: "
            f"check --profile or AWS_PROFILE, or run `aws configure --profile NAME`"
        ) from error
    except (ConnectionClosedError, ReadTimeoutError) as error:
        raise Throttled(f"{resource}: the connection failed, trying again ({error})") from error
    except EndpointConnectionError as error:
        raise BackendError(
            f"{resource}: cannot connect to the endpoint {error.kwargs.get('endpoint_url')}: "
            "check the network, the region and --endpoint-url"
        ) from error
    except BotoCoreError as error:
        raise BackendError(f"{resource}: {_one_line(str(error))}") from error


def _client_error(resource: str, error: ClientError, missing: type[BackendError]) -> BackendError:
    code = _code(error)
    message = _one_line(error.response.get("Error", {}).get("Message") or "")
    detail = f"{code}: {message}" if message else code
    if code in _NOT_FOUND:
        return missing(f"{resource} does not exist ({detail})")
    if code in _THROTTLING:
        return Throttled(f"{resource}: {error.operation_name} throttled ({detail})")
    if code == "ExpiredIteratorException":
        return IteratorExpired(f"{resource}: {error.operation_name} failed ({detail})")
    return BackendError(f"{resource}: {error.operation_name} failed ({detail})")


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shard(listed: dict) -> Shard:
    hashes, sequences = listed["HashKeyRange"], listed["SequenceNumberRange"]
    return Shard(
        shard_id=listed["ShardId"],
        starting_hash_key=int(hashes["StartingHashKey"]),
        ending_hash_key=int(hashes["EndingHashKey"]),
        starting_sequence=sequences["StartingSequenceNumber"],
        ending_sequence=sequences.get("EndingSequenceNumber"),
        parent_shard_id=listed.get("ParentShardId"),
        adjacent_parent_shard_id=listed.get("AdjacentParentShardId"),
    )


# The run lock's item; no stream is named like this, so no checkpoint can collide with it.
_LEASE_KEY = {"stream": {"S": "#run-lock"}, "shard_id": {"S": "#run-lock"}}
LEASE_S = 60


def _table(pipeline: str) -> str:
    return f"{pipeline}-checkpoints"


def _arn_name(arn: str) -> str:
    """The last part of a stream or role ARN: `arn:aws:iam::1:role/path/name` -> `name`."""
    return arn.rsplit("/", 1)[-1] if "/" in arn else ""


def _policy(document: str | dict) -> dict:
    """A policy document as a dict; IAM answers with URL-encoded JSON unless boto3 decoded it."""
    if isinstance(document, dict):
        return document
    return json.loads(urllib.parse.unquote(document))
