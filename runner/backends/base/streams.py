"""Streams, their shards, iterators and records, as every target offers them."""

from __future__ import annotations

import abc
import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from runner.backends.base.errors import BackendError, StreamNotFound
from runner.backends.limits import MAX_GET_RECORDS

ITERATOR_TYPES = (
    "TRIM_HORIZON",
    "LATEST",
    "AT_SEQUENCE_NUMBER",
    "AFTER_SEQUENCE_NUMBER",
    "AT_TIMESTAMP",
)


def check_iterator(iterator_type: str, timestamp: datetime.datetime | None) -> None:
    """Refuse an iterator type Kinesis does not know, and AT_TIMESTAMP without a
    timezone-aware timestamp, before asking the target."""
    if iterator_type not in ITERATOR_TYPES:
        expected = ", ".join(ITERATOR_TYPES)
        raise BackendError(f"unknown iterator type '{iterator_type}' (expected {expected})")
    if iterator_type == "AT_TIMESTAMP" and (timestamp is None or timestamp.tzinfo is None):
        raise BackendError("AT_TIMESTAMP needs a timezone-aware timestamp")


@dataclass(frozen=True)
class Shard:
    shard_id: str
    starting_hash_key: int
    ending_hash_key: int
    starting_sequence: str
    ending_sequence: str | None = None  # set once the shard is closed
    parent_shard_id: str | None = None
    adjacent_parent_shard_id: str | None = None

    @property
    def is_open(self) -> bool:
        return self.ending_sequence is None


@dataclass(frozen=True)
class StreamDescription:
    name: str
    status: str  # CREATING, ACTIVE, UPDATING, DELETING
    open_shard_count: int
    retention_hours: int


class Record(NamedTuple):
    """A record as a stream holds it. A named tuple: one is made per record read, and a frozen
    dataclass costs three times as much to make."""

    sequence: str
    partition_key: str
    data: bytes
    arrival: datetime.datetime  # timezone-aware, UTC
    # Of a user record in a KPL aggregate (records/kpl.py): its place there, from 0; the
    # sequence number is the aggregate's. None for a plain record.
    sub_sequence: int | None = None


@dataclass(frozen=True)
class RecordBatch:
    records: list[Record]
    next_iterator: str | None  # None once a closed shard has been read to its end
    millis_behind: int


@dataclass(frozen=True)
class Behind:
    """How far a reader at some position is behind a shard's newest record: in records where
    the target can count them (local), else in milliseconds (Kinesis' MillisBehindLatest)."""

    records: int | None = None
    millis: int | None = None


class PutResult(NamedTuple):
    """One entry of a PutRecords answer: a sequence number, or an error for that entry only.
    A named tuple, as Record is: one is made per record written."""

    shard_id: str | None = None
    sequence: str | None = None
    error_code: str | None = None  # e.g. ProvisionedThroughputExceededException
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


class Streams(abc.ABC):
    """Kinesis streams: creating, resharding and deleting them, reading and writing records."""

    location: str  # where the target looks, for messages (Backend.location)

    @abc.abstractmethod
    def describe_stream(self, name: str) -> StreamDescription | None: ...

    @abc.abstractmethod
    def create_stream(self, name: str, shards: int, owner: str | None = None) -> None:
        """Create the stream, as the `owner` pipeline's own (ownership.py), and return once
        it is ACTIVE."""

    @abc.abstractmethod
    def update_shard_count(self, name: str, shards: int) -> None:
        """Reshard to `shards` open shards; the old ones close and become parents."""

    @abc.abstractmethod
    def delete_stream(self, name: str) -> None: ...

    @abc.abstractmethod
    def list_shards(self, stream: str) -> list[Shard]:
        """Every shard the stream still retains, open and closed, parents before children."""

    @abc.abstractmethod
    def get_shard_iterator(
        self,
        stream: str,
        shard_id: str,
        iterator_type: str,
        sequence: str | None = None,
        timestamp: datetime.datetime | None = None,
    ) -> str: ...

    @abc.abstractmethod
    def latest_iterator(self, stream: str, shard_id: str) -> tuple[str, str]:
        """A LATEST iterator, and a checkpoint at or before its position (a sequence number or
        a start mark), from which a restart reads every record put after it."""

    def behind(
        self,
        stream: str,
        shard_id: str,
        iterator_type: str,
        sequence: str | None = None,
        timestamp: datetime.datetime | None = None,
    ) -> Behind:
        """How far a reader at this position is behind the shard's newest record. The default
        reads one record there and takes the answer's MillisBehindLatest."""
        iterator = self.get_shard_iterator(stream, shard_id, iterator_type, sequence, timestamp)
        return Behind(millis=self.get_records(iterator, limit=1).millis_behind)

    @abc.abstractmethod
    def get_records(self, iterator: str, limit: int = MAX_GET_RECORDS) -> RecordBatch:
        """Raises IteratorExpired, Throttled or StreamNotFound."""

    @abc.abstractmethod
    def put_records(self, stream: str, entries: Sequence[tuple[bytes, str]]) -> list[PutResult]:
        """Put (data, partition_key) entries; one result per entry, in order.

        Raises BackendError for a request Kinesis would refuse whole (too many entries, too
        many bytes, a record over 1 MiB) and Throttled when the whole call is throttled.
        """

    def require_stream(self, name: str) -> None:
        """Raise StreamNotFound, saying what to do, unless the stream exists."""
        if self.describe_stream(name) is None:
            raise StreamNotFound(
                f"stream '{name}' not found on {self.location} (--stream takes the "
                "stream's own name, not its key in a spec; `pipeline apply SPEC` creates it)"
            )
