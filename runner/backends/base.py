"""The interface the engine, provisioning and produce/consume use, whatever the target.

A backend speaks Kinesis' vocabulary (streams, shards, iterators, sequence numbers) so that the
engine is written once. `local.py` keeps these semantics in one SQLite file; `aws/` maps them
onto boto3.
"""

from __future__ import annotations

import abc
import contextlib
import datetime
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

# The Kinesis limits the engine and producers batch against.
MAX_RECORD_BYTES = 1024 * 1024  # data plus partition key
MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 5 * 1024 * 1024
MAX_PARTITION_KEY_CHARS = 256
MAX_GET_RECORDS = 10_000

# Where a target acts when neither the command line, the spec nor the AWS configuration says.
DEFAULT_REGION = "us-east-1"
# The account of the local target (the one LocalStack and moto report too).
LOCAL_ACCOUNT_ID = "000000000000"

# A checkpoint value meaning "this closed shard was read to its end".
SHARD_END = "SHARD_END"

# A checkpoint may also mark where a run began reading a shard, before any of its records was
# handled: "#trim_horizon", "#at_timestamp:ISO". "#" sorts before digits and SHARD_END, so any
# sequence number replaces a mark, and a mark is written only where no checkpoint is.
START_MARK = "#"

ITERATOR_TYPES = (
    "TRIM_HORIZON",
    "LATEST",
    "AT_SEQUENCE_NUMBER",
    "AFTER_SEQUENCE_NUMBER",
    "AT_TIMESTAMP",
)


class BackendError(Exception):
    """A failure of the target the user can act on; its text is one line, no credentials."""


class StreamNotFound(BackendError):
    pass


class IteratorExpired(BackendError):
    """The shard iterator is too old; get a new one from the checkpoint."""


class EarlierStream(BackendError):
    """Checkpoints kept for an earlier stream of the same name: the stream was deleted and
    created again since they were written."""

    def __init__(self, stream: str, created: datetime.datetime | None) -> None:
        when = f" (created {created:%Y-%m-%d %H:%M:%S} UTC)" if created else ""
        self.earlier = f"an earlier stream named {stream}{when}"
        super().__init__(f"checkpoints are for {self.earlier}")


class Throttled(BackendError):
    """The shard or account is over its limits, or the service had a passing fault: slow
    down and try again."""


class AlreadyExists(BackendError):
    """A create found the resource there already (e.g. made meanwhile by another apply)."""


class StateLost(BackendError):
    """The store was removed or replaced under the command: what it wrote there is gone."""


@contextlib.contextmanager
def disk_errors(path: object, doing: str = "write") -> Iterator[None]:
    """Turn an OSError of the disk into one line naming the path and the cause, e.g.
    'cannot write .pipeline/locks/x.lock: No space left on device'."""
    try:
        yield
    except OSError as error:
        raise BackendError(f"cannot {doing} {path}: {error.strerror or error}") from error


def start_mark(
    iterator_type: str, sequence: str | None = None, timestamp: datetime.datetime | None = None
) -> str:
    """The checkpoint marking a start at this position (see START_MARK)."""
    if iterator_type == "AFTER_SEQUENCE_NUMBER" and sequence is not None:
        return sequence  # a plain checkpoint says just that
    mark = START_MARK + iterator_type.lower()
    if timestamp is not None:
        return f"{mark}:{timestamp.astimezone(datetime.timezone.utc).isoformat()}"
    return f"{mark}:{sequence}" if sequence else mark


def parse_start_mark(mark: str) -> tuple[str, str | None, datetime.datetime | None]:
    """A start mark's iterator type, sequence number and timestamp."""
    kind, _, argument = mark.removeprefix(START_MARK).partition(":")
    iterator_type = kind.upper()
    if iterator_type == "AT_TIMESTAMP":
        return iterator_type, None, datetime.datetime.fromisoformat(argument)
    return iterator_type, argument or None, None


def is_start_mark(checkpoint: str) -> bool:
    return checkpoint.startswith(START_MARK)


def check_shard_count(stream: str, shards: int) -> None:
    if shards < 1:
        raise BackendError(f"stream '{stream}' needs at least 1 shard, got {shards}")


def check_batch(stream: str, entries: Sequence[tuple[bytes, str]]) -> None:
    """Refuse a PutRecords request the way Kinesis refuses it: whole, before sending it."""
    where = f"put_records to stream '{stream}'"
    if not 1 <= len(entries) <= MAX_BATCH_RECORDS:
        raise BackendError(f"{where}: {len(entries)} entries, at most {MAX_BATCH_RECORDS} allowed")
    total = 0
    for i, (data, key) in enumerate(entries):
        if not isinstance(data, (bytes, bytearray)):
            raise BackendError(f"{where}: entry {i}: data must be bytes")
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_PARTITION_KEY_CHARS:
            limit = MAX_PARTITION_KEY_CHARS
            raise BackendError(f"{where}: entry {i}: partition key must be 1 to {limit} characters")
        size = len(data) + len(key.encode())
        if size > MAX_RECORD_BYTES:
            raise BackendError(
                f"{where}: entry {i} is {size} bytes with its partition key, "
                f"at most {MAX_RECORD_BYTES} allowed"
            )
        total += size
    if total > MAX_BATCH_BYTES:
        raise BackendError(f"{where}: {total} bytes in one call, at most {MAX_BATCH_BYTES} allowed")


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


@dataclass(frozen=True)
class Record:
    sequence: str
    partition_key: str
    data: bytes
    arrival: datetime.datetime  # timezone-aware, UTC


@dataclass(frozen=True)
class RecordBatch:
    records: list[Record]
    next_iterator: str | None  # None once a closed shard has been read to its end
    millis_behind: int


@dataclass(frozen=True)
class PutResult:
    """One entry of a PutRecords answer: a sequence number, or an error for that entry only."""

    shard_id: str | None = None
    sequence: str | None = None
    error_code: str | None = None  # e.g. ProvisionedThroughputExceededException
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


@dataclass(frozen=True)
class FirehoseDescription:
    name: str
    stream: str  # source stream name
    bucket: str
    prefix: str
    error_prefix: str
    buffer_size_mb: int
    buffer_interval_s: int
    compression: str
    role: str = ""  # the IAM role Firehose assumes (AWS)
    log_group: str | None = None  # CloudWatch Logs for delivery errors (AWS)
    log_stream: str | None = None


@dataclass(frozen=True)
class RoleDescription:
    """An IAM role as provisioning compares it: who may assume it and its inline policies."""

    name: str
    trust_policy: dict
    policies: dict  # inline policy name -> policy document


class Backend(abc.ABC):
    """What every target offers. Names are resource names, never spec keys."""

    name: str  # "local" or "aws"
    region: str
    partition: str = "aws"  # the region's ARN partition: aws, aws-cn, aws-us-gov, ...
    # True when the target delivers Firehose streams itself (AWS); otherwise `run` does it.
    delivers_firehoses: bool
    # How many shards a reader may ask at once: network targets gain from asking in parallel.
    read_workers: int = 1

    @property
    @abc.abstractmethod
    def account_id(self) -> str: ...

    # Streams
    @abc.abstractmethod
    def describe_stream(self, name: str) -> StreamDescription | None: ...

    @abc.abstractmethod
    def create_stream(self, name: str, shards: int) -> None:
        """Create the stream and return once it is ACTIVE."""

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

    @abc.abstractmethod
    def get_records(self, iterator: str, limit: int = MAX_GET_RECORDS) -> RecordBatch:
        """Raises IteratorExpired, Throttled or StreamNotFound."""

    @abc.abstractmethod
    def put_records(self, stream: str, entries: Sequence[tuple[bytes, str]]) -> list[PutResult]:
        """Put (data, partition_key) entries; one result per entry, in order.

        Raises BackendError for a request Kinesis would refuse whole (too many entries, too
        many bytes, a record over 1 MiB) and Throttled when the whole call is throttled.
        """

    @property
    def location(self) -> str:
        """Where this target looks, for messages: `the local target in .pipeline`."""
        return f"the {self.name} target"

    def require_stream(self, name: str) -> None:
        """Raise StreamNotFound, saying what to do, unless the stream exists."""
        if self.describe_stream(name) is None:
            raise StreamNotFound(
                f"stream '{name}' not found on {self.location} (--stream takes the "
                "stream's own name, not its key in a spec; `pipeline apply SPEC` creates it)"
            )

    # Checkpoints: the last sequence number of a shard that is durably handled. Each belongs
    # to one life of its stream: the one there when they were read, else when written.
    @abc.abstractmethod
    def get_checkpoints(self, pipeline: str, stream: str) -> dict[str, str]:
        """shard id -> sequence number (or SHARD_END, or a start mark) for every checkpointed
        shard. Raises EarlierStream when they belong to an earlier stream of that name."""

    @abc.abstractmethod
    def set_checkpoint(self, pipeline: str, stream: str, shard_id: str, sequence: str) -> None:
        """Record progress; a checkpoint never moves backwards (an older one is ignored), and a
        start mark is written only where there is no checkpoint."""

    @abc.abstractmethod
    def forget_earlier_checkpoints(self, pipeline: str, stream: str) -> None:
        """Delete the pipeline's checkpoints kept for an earlier stream of that name."""

    # Buckets
    @abc.abstractmethod
    def bucket_exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def create_bucket(self, name: str) -> None: ...

    @abc.abstractmethod
    def delete_bucket(self, name: str) -> None:
        """Delete the bucket and every object in it."""

    @abc.abstractmethod
    def put_object(self, bucket: str, key: str, body: bytes) -> None: ...

    @abc.abstractmethod
    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys under `prefix`, sorted."""

    @abc.abstractmethod
    def get_object(self, bucket: str, key: str) -> bytes: ...

    # Firehose delivery streams
    @abc.abstractmethod
    def describe_firehose(self, name: str) -> FirehoseDescription | None: ...

    @abc.abstractmethod
    def create_firehose(self, firehose: FirehoseDescription) -> None: ...

    @abc.abstractmethod
    def update_firehose(self, firehose: FirehoseDescription) -> None: ...

    @abc.abstractmethod
    def delete_firehose(self, name: str) -> None: ...

    # What only a target that delivers Firehose itself needs (AWS): the role Firehose
    # assumes, the log groups it writes errors to, and a table for the run's checkpoints.
    def describe_role(self, name: str) -> RoleDescription | None:
        raise BackendError(f"the {self.name} target has no IAM roles")

    def put_role(self, role: RoleDescription) -> None:
        """Create the role, or set its trust policy and inline policies to these."""
        raise BackendError(f"the {self.name} target has no IAM roles")

    def delete_role(self, name: str) -> None:
        raise BackendError(f"the {self.name} target has no IAM roles")

    def describe_log_group(self, group: str) -> list[str] | None:
        """The log group's stream names, or None when the group does not exist."""
        raise BackendError(f"the {self.name} target has no log groups")

    def create_log_stream(self, group: str, stream: str) -> None:
        """Create the stream, and its group when missing."""
        raise BackendError(f"the {self.name} target has no log groups")

    def delete_log_group(self, group: str) -> None:
        raise BackendError(f"the {self.name} target has no log groups")

    def checkpoint_store_exists(self, pipeline: str) -> bool:
        """Whether the pipeline's checkpoints have somewhere to go (the local file always)."""
        return True

    def create_checkpoint_store(self, pipeline: str) -> None:
        """Make room for the pipeline's checkpoints (a DynamoDB table on AWS)."""

    def delete_checkpoint_store(self, pipeline: str) -> None:
        """Remove the pipeline's checkpoints and their store."""

    @contextlib.contextmanager
    def running(
        self, pipeline: str, report: Callable[[str], None] = lambda line: None
    ) -> Iterator[Lease]:
        """Hold the pipeline's run lock while the block runs: a second run of it at once would
        write everything twice. Yields the Lease the run checks before each write; raises
        BackendError when another run holds it; `report` gets a line while it waits for one.
        The default locks nothing."""
        yield Lease()

    def close(self) -> None:
        """Release connections; the default has nothing to release."""


# The run lock's lease, as `Backend.running` yields it.


class LeaseLost(BackendError):
    """The run no longer holds its pipeline's run lease: it must write nothing more."""


class Lease:
    """A run's hold on its pipeline, which the loop checks before every write and checkpoint.

    This one, the local lock's, holds for as long as its run goes: the OS keeps a file lock
    until its process ends. A lease that must be renewed (AWS) says when it may be lapsing."""

    def held(self) -> bool:
        """Whether the run may still write: a cheap local check, no call to the target."""
        return True

    def check(self) -> None:
        """Raise LeaseLost, saying why, unless the run may still write."""
        if not self.held():
            raise LeaseLost("lost the run lease: stopped without writing or checkpointing further")
