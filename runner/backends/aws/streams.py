"""Kinesis streams on AWS: their shards, iterators and records."""

from __future__ import annotations

import datetime
import email.utils
import time
from collections.abc import Sequence
from typing import Any

from runner.backends.aws.errors import backend_errors
from runner.backends.aws.session import OWNER_TAG, AwsSession, exclusive_pages, tag_pages
from runner.backends.base import (
    BackendError,
    PutResult,
    Record,
    RecordBatch,
    Shard,
    StreamDescription,
    StreamNotFound,
    check_iterator,
    start_mark,
)
from runner.backends.limits import (
    MAX_GET_RECORDS,
    check_batch,
    check_get_records_limit,
    check_shard_count,
)

SHARDS_PER_PAGE = 1000
# How far apart the arrival times that Kinesis' hosts stamp may be: a restart from a LATEST
# position goes back this much further, reading a few records twice rather than skip one.
LATEST_MARGIN_S = 1.0


class StreamsMixin(AwsSession):
    """Kinesis streams: creating, resharding and deleting them, reading and writing records."""

    def describe_stream(self, name: str) -> StreamDescription | None:
        """The stream's status, open shard count and retention, or None if it does not exist."""
        try:
            with backend_errors(f"stream '{name}'", missing=StreamNotFound):
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

    def create_stream(self, name: str, shards: int, owner: str | None = None) -> None:
        """Create a provisioned stream, tagged pipeline=OWNER, and return once it is ACTIVE."""
        check_shard_count(name, shards)
        tags = {} if owner is None else {"Tags": {OWNER_TAG: owner}}
        kinesis = self._client("kinesis")
        with backend_errors(f"stream '{name}'"):
            kinesis.create_stream(StreamName=name, ShardCount=shards, **tags)
        self._active_stream(name)
        if tags:  # again, for the endpoints that ignore CreateStream's tags (moto)
            with backend_errors(f"stream '{name}'"):
                kinesis.add_tags_to_stream(StreamName=name, **tags)

    def update_shard_count(self, name: str, shards: int) -> None:
        """Reshard with uniform scaling, at most doubling or halving per call as Kinesis allows."""
        check_shard_count(name, shards)
        current = self._active_stream(name).open_shard_count
        while current != shards:
            if shards > current:
                step = min(shards, current * 2)
            else:
                step = max(shards, (current + 1) // 2)
            with backend_errors(f"stream '{name}'", missing=StreamNotFound):
                self._client("kinesis").update_shard_count(
                    StreamName=name, TargetShardCount=step, ScalingType="UNIFORM_SCALING"
                )
            current = self._active_stream(name).open_shard_count

    def delete_stream(self, name: str) -> None:
        """Delete the stream and its consumers; return once it is gone."""
        with backend_errors(f"stream '{name}'", missing=StreamNotFound):
            self._client("kinesis").delete_stream(StreamName=name, EnforceConsumerDeletion=True)
        self._wait(f"stream '{name}'", lambda: self._stream_status(name), None)

    def owned(self, pipeline: str) -> list[tuple[str, str]]:
        """The streams tagged pipeline=PIPELINE, with what the other services own."""
        kinesis = self._client("kinesis")
        with backend_errors("the list of streams"):
            names = exclusive_pages(
                kinesis.list_streams, "StreamNames", "HasMoreStreams", "ExclusiveStartStreamName"
            )
        streams = self._owned_by(
            pipeline,
            "stream",
            names,
            lambda name: tag_pages(kinesis.list_tags_for_stream, StreamName=name),
        )
        return [*super().owned(pipeline), *(("stream", name) for name in streams)]

    def list_shards(self, stream: str) -> list[Shard]:
        """Every retained shard, in the order Kinesis lists them: parents before children."""
        shards: list[Shard] = []
        params: dict[str, Any] = {"StreamName": stream}
        with backend_errors(f"stream '{stream}'", missing=StreamNotFound, during_run=True):
            while True:
                # A run lists the shards again every few seconds: one short try each time.
                kinesis = self._client("kinesis", data_plane=True)
                page = kinesis.list_shards(MaxResults=SHARDS_PER_PAGE, **params)
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
        check_iterator(iterator_type, timestamp)
        params: dict[str, Any] = {
            "StreamName": stream,
            "ShardId": shard_id,
            "ShardIteratorType": iterator_type,
        }
        if iterator_type in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
            if not sequence:
                raise BackendError(
                    f"{iterator_type} on {stream}/{shard_id} needs a sequence number"
                )
            params["StartingSequenceNumber"] = sequence
        elif iterator_type == "AT_TIMESTAMP":
            params["Timestamp"] = timestamp
        return self._iterator_answer(params)["ShardIterator"]

    def latest_iterator(self, stream: str, shard_id: str) -> tuple[str, str]:
        """A LATEST iterator, and a start mark AT_TIMESTAMP of a moment before its position.

        The moment is on Kinesis' clock, which stamps the arrival times AT_TIMESTAMP compares
        with, not this machine's: the answer's Date (whole seconds, rounded down, so no later
        than the answer) less how long the call took, which the position is no earlier than."""
        before = datetime.datetime.now(datetime.timezone.utc)
        asked = time.monotonic()
        answer = self._iterator_answer(
            {"StreamName": stream, "ShardId": shard_id, "ShardIteratorType": "LATEST"}
        )
        took = datetime.timedelta(seconds=time.monotonic() - asked)
        date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            moment = email.utils.parsedate_to_datetime(date) - took
        except (TypeError, ValueError):  # no Date: this machine's clock, before the call
            moment = before
        moment -= datetime.timedelta(seconds=LATEST_MARGIN_S)
        return answer["ShardIterator"], start_mark("AT_TIMESTAMP", timestamp=moment)

    def get_records(self, iterator: str, limit: int = MAX_GET_RECORDS) -> RecordBatch:
        """Up to `limit` records; raises IteratorExpired, Throttled or StreamNotFound."""
        check_get_records_limit(limit)
        with backend_errors("shard iterator", missing=StreamNotFound, during_run=True):
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
        with backend_errors(f"stream '{stream}'", missing=StreamNotFound, during_run=True):
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

    def _iterator_answer(self, params: dict[str, Any]) -> dict[str, Any]:
        where = f"shard '{params['ShardId']}' of stream '{params['StreamName']}'"
        with backend_errors(where, missing=StreamNotFound, during_run=True):
            return self._client("kinesis", data_plane=True).get_shard_iterator(**params)

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
