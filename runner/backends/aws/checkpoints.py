"""Checkpoints and the run lease on AWS, in one DynamoDB table per pipeline.

Checkpoints are keyed by stream and shard, their sequence numbers zero-padded to 64 digits so
that a conditional write can keep them from moving backwards by comparing text. Each keeps the
ARN and creation time of the stream it was written for: a stream deleted and created again
keeps its ARN, and its old checkpoints must not be taken for the new one's; and when it was
written. Beside them, items no stream is named like: the run lease (`#run-lock`) and what the
last run recorded for `pipeline status` (`#run-info`).
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from botocore.exceptions import ClientError

from runner.backends.aws.errors import Missing, backend_errors, error_code
from runner.backends.aws.lease import (
    LEASE_CALLS,
    LEASE_KEY,
    LeaseTiming,
    RunLease,
    lease_holder,
    new_owner,
    take,
)
from runner.backends.aws.session import AwsSession, owner_tags
from runner.backends.base import (
    SHARD_END,
    TWO_RUNS,
    BackendError,
    EarlierStream,
    RunHolder,
    RunInfo,
    StreamNotFound,
    Throttled,
    checkpoint_table,
    is_start_mark,
)

SEQUENCE_DIGITS = 64

# The partition key of the notes kept beside the checkpoints: no stream is named so, so no
# checkpoint can collide with a note.
NOTE_PARTITION = "#note"

RUN_INFO_KEY = {"stream": {"S": "#run-info"}, "shard_id": {"S": "#run-info"}}

# Why DynamoDB may cancel a transaction that a later try can get through.
_PASSING = {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}


class CheckpointsMixin(AwsSession):
    """The pipeline's checkpoint table: its checkpoints, and the run lease kept beside them."""

    def __init__(self, *args: Any, lease: LeaseTiming | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lease_timing = lease or LeaseTiming()
        self._leases: dict[str, RunLease] = {}  # pipeline -> the lease this backend holds
        self._lease_dynamodb: Any = None

    def checkpoint_store_exists(self, pipeline: str) -> bool:
        """Whether the pipeline's checkpoint table exists."""
        return self._table_status(checkpoint_table(pipeline)) is not None

    def create_checkpoint_store(self, pipeline: str) -> None:
        """Create the pipeline's on-demand checkpoint table, tagged pipeline=PIPELINE;
        return once it is ACTIVE."""
        table = checkpoint_table(pipeline)
        with backend_errors(f"checkpoint table '{table}'"):
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
                **owner_tags(pipeline),
            )
        self._wait(f"checkpoint table '{table}'", lambda: self._table_status(table), "ACTIVE")

    def owned(self, pipeline: str) -> list[tuple[str, str]]:
        """The pipeline's checkpoint table if tagged as its own, with what the other services
        own."""
        dynamodb = self._client("dynamodb")

        def tags(table: str) -> dict[str, str]:
            arn = dynamodb.describe_table(TableName=table)["Table"]["TableArn"]
            pages = dynamodb.get_paginator("list_tags_of_resource").paginate(ResourceArn=arn)
            return {tag["Key"]: tag["Value"] for page in pages for tag in page.get("Tags", [])}

        tables = self._owned_by(pipeline, "checkpoint table", [checkpoint_table(pipeline)], tags)
        return [*super().owned(pipeline), *(("checkpoint table", name) for name in tables)]

    def delete_checkpoint_store(self, pipeline: str) -> None:
        """Delete the pipeline's checkpoint table, if it exists; return once it is gone."""
        table = checkpoint_table(pipeline)
        try:
            with backend_errors(f"checkpoint table '{table}'"):
                self._client("dynamodb").delete_table(TableName=table)
        except Missing:
            return
        self._wait(f"checkpoint table '{table}'", lambda: self._table_status(table), None)

    def get_checkpoints(self, pipeline: str, stream: str) -> dict[str, str]:
        """shard id -> sequence number (or SHARD_END, or a start mark) for every checkpointed
        shard; raises EarlierStream when they belong to an earlier stream of that name."""
        items = self._checkpoint_items(pipeline, stream)
        life = self._stream_life(stream)
        if life is not None:
            self._lives()[stream] = life
            for item in items:
                kept = _life_of(item)
                if kept is not None and kept != life:
                    raise EarlierStream(stream, datetime.datetime.fromisoformat(kept[1]))
            for item in items:
                if _life_of(item) is None:
                    self._adopt(pipeline, item, life)
        checkpoints: dict[str, str] = {}
        for item in items:
            stored = item["sequence"]["S"]
            if stored != SHARD_END and not is_start_mark(stored):
                stored = stored.lstrip("0") or "0"
            checkpoints[item["shard_id"]["S"]] = stored
        return checkpoints

    def set_checkpoint(self, pipeline: str, stream: str, shard_id: str, sequence: str) -> None:
        """Move the checkpoint forward; an older sequence, or any after SHARD_END, is ignored,
        and a start mark is written only where there is no checkpoint."""
        condition = "attribute_not_exists(#s) OR #s < :new"
        if is_start_mark(sequence):
            condition = "attribute_not_exists(#s)"
        life = self._lives().get(stream) or self._stream_life(stream)
        update = _checkpoint_update(stream, shard_id, sequence, life)
        with self._checkpoint_table(pipeline, during_run=True) as table:
            try:
                self._write_fenced(
                    pipeline,
                    "Update",
                    self._client("dynamodb", data_plane=True),  # a run's: short, one try
                    TableName=table,
                    ConditionExpression=condition,
                    **update,
                )
            except ClientError as error:
                # An equal or later checkpoint is already there; keep it.
                if error_code(error) != "ConditionalCheckFailedException":
                    raise

    def reset_checkpoints(self, pipeline: str, stream: str, checkpoints: Mapping[str, str]) -> None:
        """Replace these shards' checkpoints, whatever they were, for the stream there now;
        while this backend holds the run lease, each only if the lease still names it."""
        life = self._stream_life(stream)  # the stream there now, whatever was read before
        updates = [_checkpoint_update(stream, s, seq, life) for s, seq in checkpoints.items()]
        with self._checkpoint_table(pipeline) as table:
            for update in updates:
                self._write_fenced(
                    pipeline, "Update", self._client("dynamodb"), TableName=table, **update
                )

    def checkpoint_times(self, pipeline: str, stream: str) -> dict[str, datetime.datetime | None]:
        """shard id -> when its checkpoint was last written (None if before times were kept)."""
        return {
            item["shard_id"]["S"]: (
                datetime.datetime.fromisoformat(item["checkpointed_at"]["S"])
                if "checkpointed_at" in item
                else None
            )
            for item in self._checkpoint_items(pipeline, stream)
        }

    def set_run_info(self, pipeline: str, info: RunInfo) -> None:
        """Write the `#run-info` item beside the checkpoints."""
        item = {
            **RUN_INFO_KEY,
            "spec_version": {"S": info.spec_version},
            "recorded_at": {"S": info.recorded_at.isoformat()},
        }
        with self._checkpoint_table(pipeline) as table:
            self._client("dynamodb").put_item(TableName=table, Item=item)

    def get_run_info(self, pipeline: str) -> RunInfo | None:
        item = self._table_item(pipeline, RUN_INFO_KEY)
        if item is None:
            return None
        recorded = datetime.datetime.fromisoformat(item["recorded_at"]["S"])
        return RunInfo(item["spec_version"]["S"], recorded)

    def forget_earlier_checkpoints(self, pipeline: str, stream: str) -> int:
        """Delete the pipeline's checkpoints kept for an earlier stream of that name; returns
        how many shards' they were."""
        life = self._stream_life(stream)
        items = self._checkpoint_items(pipeline, stream)
        earlier = [item for item in items if _life_of(item) not in (None, life)]
        with self._checkpoint_table(pipeline) as table:
            for item in earlier:
                self._client("dynamodb").delete_item(
                    TableName=table, Key={k: item[k] for k in ("stream", "shard_id")}
                )
        return len(earlier)

    def _checkpoint_items(self, pipeline: str, stream: str) -> list[dict[str, Any]]:
        return self._items(pipeline, "#stream = :stream", {":stream": {"S": stream}})

    def _items(self, pipeline: str, condition: str, values: dict[str, Any]) -> list[dict[str, Any]]:
        """The items of the checkpoint table a key condition on `#stream` finds, as last
        written (a restarted run must see the checkpoint the previous one wrote last)."""
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": {"#stream": "stream"},
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
        }
        with self._checkpoint_table(pipeline) as table:
            while True:
                page = self._client("dynamodb").query(TableName=table, **params)
                items += page["Items"]
                if "LastEvaluatedKey" not in page:
                    return items
                params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _adopt(self, pipeline: str, item: dict[str, Any], life: tuple[str, str]) -> None:
        """Give a checkpoint written before streams' lives were kept the stream's life now."""
        with self._checkpoint_table(pipeline) as table:
            try:
                self._client("dynamodb").update_item(
                    TableName=table,
                    Key={k: item[k] for k in ("stream", "shard_id")},
                    UpdateExpression="SET #arn = :arn, #created = :created",
                    ConditionExpression="attribute_not_exists(#arn)",
                    ExpressionAttributeNames=_LIFE_NAMES,
                    ExpressionAttributeValues={":arn": {"S": life[0]}, ":created": {"S": life[1]}},
                )
            except ClientError as error:
                if error_code(error) != "ConditionalCheckFailedException":
                    raise

    def _stream_life(self, stream: str) -> tuple[str, str] | None:
        """The stream's ARN and creation time (ISO), or None if it does not exist."""
        if stream.startswith("#"):
            return None  # items kept beside the checkpoints, such as redrive positions
        try:
            with backend_errors(f"stream '{stream}'", missing=StreamNotFound):
                answer = self._client("kinesis").describe_stream_summary(StreamName=stream)
        except StreamNotFound:
            return None
        summary = answer["StreamDescriptionSummary"]
        created = summary["StreamCreationTimestamp"].astimezone(datetime.timezone.utc)
        return summary["StreamARN"], created.isoformat()

    def _lives(self) -> dict[str, tuple[str, str]]:
        """The life of each stream whose checkpoints this backend read: the one its
        checkpoints are written for, even if the stream is created again meanwhile."""
        return self.__dict__.setdefault("_stream_lives", {})

    # Run lock: a lease item in the checkpoint table, renewed while the run goes on, so that a
    # run on another machine sees it (lease.py); checkpoints are written only while it names
    # this run.

    @contextlib.contextmanager
    def running(
        self,
        pipeline: str,
        report: Callable[[str], None] = lambda line: None,
        *,
        why: str = TWO_RUNS,
    ) -> Iterator[RunLease]:
        with self._checkpoint_table(pipeline) as table:
            dynamodb = self._client("dynamodb")
            item, taken = take(
                dynamodb, table, pipeline, new_owner(), self.lease_timing, report, why
            )
        lease = RunLease(self._lease_client(), table, item, taken, self.lease_timing)
        self._leases[pipeline] = lease
        lease.start()
        try:
            yield lease
        finally:
            del self._leases[pipeline]
            lease.release()

    def run_holder(self, pipeline: str) -> RunHolder | None:
        """Who the lease item names, or None when there is none; takes nothing."""
        item = self._table_item(pipeline, LEASE_KEY)
        return None if item is None else lease_holder(item)

    def _table_item(self, pipeline: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """An item of the pipeline's checkpoint table, as last written, or None."""
        with self._checkpoint_table(pipeline) as table:
            dynamodb = self._client("dynamodb")
            return dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")

    def close(self) -> None:
        with self._lock:
            if self._lease_dynamodb is not None:
                self._lease_dynamodb.close()
                self._lease_dynamodb = None
        super().close()

    def _lease_client(self) -> Any:
        """DynamoDB for the lease's renewals, with short timeouts and no retries of its own."""
        with self._lock:
            if self._lease_dynamodb is None:
                self._lease_dynamodb = self._new_client("dynamodb", LEASE_CALLS)
            return self._lease_dynamodb

    def get_note(self, pipeline: str, name: str) -> str | None:
        with self._checkpoint_table(pipeline) as table:
            found = self._client("dynamodb").get_item(
                TableName=table, Key=_note_key(name), ConsistentRead=True
            )
        item = found.get("Item")
        return item["text"]["S"] if item else None

    def notes(self, pipeline: str, prefix: str) -> dict[str, str]:
        values = {":note": {"S": NOTE_PARTITION}, ":prefix": {"S": prefix}}
        items = self._items(pipeline, "#stream = :note AND begins_with(shard_id, :prefix)", values)
        return {item["shard_id"]["S"]: item["text"]["S"] for item in items}

    def set_note(self, pipeline: str, name: str, text: str | None) -> None:
        with self._checkpoint_table(pipeline, during_run=True) as table:
            if text is None:
                self._write_fenced(
                    pipeline,
                    "Delete",
                    self._client("dynamodb"),
                    TableName=table,
                    Key=_note_key(name),
                )
            else:
                item = {**_note_key(name), "text": {"S": text}}
                self._write_fenced(
                    pipeline, "Put", self._client("dynamodb"), TableName=table, Item=item
                )

    def _write_fenced(self, pipeline: str, kind: str, dynamodb: Any, **write: Any) -> None:
        """An Update, Put or Delete of an item of the checkpoint table, by `dynamodb`; while this
        backend holds the pipeline's run lease, in one transaction with a check that the lease
        still names this run: LeaseLost if it does not, and nothing if only the write's own
        condition fails (a later checkpoint is there)."""
        lease = self._leases.get(pipeline)
        if lease is None:
            call = {"Update": "update_item", "Put": "put_item", "Delete": "delete_item"}[kind]
            getattr(dynamodb, call)(**write)
            return
        mine = {"TableName": write["TableName"], "Key": LEASE_KEY, **lease.mine()}
        try:
            dynamodb.transact_write_items(TransactItems=[{"ConditionCheck": mine}, {kind: write}])
        except ClientError as error:
            if error_code(error) != "TransactionCanceledException":
                raise
            codes = [reason.get("Code") for reason in error.response.get("CancellationReasons", [])]
            if codes[:1] == ["ConditionalCheckFailed"]:
                lease.taken()
                lease.check()  # raises LeaseLost, naming the run that holds the lease now
            if codes[1:] == ["ConditionalCheckFailed"]:
                return
            if _PASSING.intersection(codes):
                raise Throttled(
                    f"checkpoint table '{write['TableName']}': TransactWriteItems cancelled "
                    f"({', '.join(map(str, codes))})"
                ) from error
            raise

    def _table_status(self, table: str) -> str | None:
        try:
            with backend_errors(f"checkpoint table '{table}'"):
                return self._client("dynamodb").describe_table(TableName=table)["Table"][
                    "TableStatus"
                ]
        except Missing:
            return None

    @contextlib.contextmanager
    def _checkpoint_table(self, pipeline: str, during_run: bool = False) -> Iterator[str]:
        table = checkpoint_table(pipeline)
        try:
            with backend_errors(f"checkpoint table '{table}'", during_run=during_run):
                yield table
        except Missing as error:
            raise BackendError(
                f"checkpoint table '{table}' does not exist in {self.region}: "
                f"run `pipeline apply` to create it"
            ) from error


_LIFE_NAMES = {"#arn": "stream_arn", "#created": "stream_created"}


def _checkpoint_update(
    stream: str, shard_id: str, sequence: str, life: tuple[str, str] | None
) -> dict[str, Any]:
    """The UpdateItem parameters (but a condition) writing this checkpoint, the life of the
    stream it is for, and now as when it was written."""
    if sequence == SHARD_END or is_start_mark(sequence):
        stored = sequence
    elif sequence.isascii() and sequence.isdigit() and len(sequence) <= SEQUENCE_DIGITS:
        stored = sequence.zfill(SEQUENCE_DIGITS)
    else:
        raise BackendError(
            f"checkpoint of {stream}/{shard_id}: '{sequence}' is not a sequence number"
        )
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    update = "SET #s = :new, #at = :at"
    names = {"#s": "sequence", "#at": "checkpointed_at"}
    values = {":new": {"S": stored}, ":at": {"S": now}}
    if life is not None:
        update += ", #arn = :arn, #created = :created"
        names.update(_LIFE_NAMES)
        values.update({":arn": {"S": life[0]}, ":created": {"S": life[1]}})
    return {
        "Key": {"stream": {"S": stream}, "shard_id": {"S": shard_id}},
        "UpdateExpression": update,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def _note_key(name: str) -> dict[str, Any]:
    return {"stream": {"S": NOTE_PARTITION}, "shard_id": {"S": name}}


def _life_of(item: dict[str, Any]) -> tuple[str, str] | None:
    """The stream life a checkpoint item was written for; None for one written before."""
    if "stream_arn" not in item:
        return None
    return item["stream_arn"]["S"], item["stream_created"]["S"]
