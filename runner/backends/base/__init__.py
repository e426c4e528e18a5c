"""The interface the engine, provisioning and produce/consume use, whatever the target.

A backend speaks Kinesis' vocabulary (streams, shards, iterators, sequence numbers) so that the
engine is written once. `local.py` keeps these semantics in one SQLite file; `aws/` maps them
onto boto3. `Backend` is composed of one part per concern: streams and records (streams.py),
checkpoints and the run lease (checkpoints.py), buckets, firehoses, the roles and log groups
only AWS has (access.py), and the Lambda functions and event source mappings only AWS runs
(functions.py); errors.py holds what they raise. Callers import it all from
here. Which resources a pipeline owns, and how that is found, is in ownership.py.
"""

from __future__ import annotations

import abc

from runner.backends.base.access import Access, RoleDescription
from runner.backends.base.buckets import Buckets
from runner.backends.base.checkpoints import (
    SHARD_END,
    START_MARK,
    TWO_RUNS,
    Checkpoints,
    Lease,
    RunHolder,
    RunInfo,
    checkpoint_table,
    is_start_mark,
    parse_start_mark,
    start_mark,
)
from runner.backends.base.errors import (
    AlreadyExists,
    BackendError,
    EarlierStream,
    IteratorExpired,
    LeaseLapsed,
    LeaseLost,
    StateLost,
    StreamNotFound,
    Throttled,
    disk_errors,
)
from runner.backends.base.firehoses import FirehoseDescription, Firehoses
from runner.backends.base.functions import (
    HANDLER,
    MAPPING_SETTINGS,
    RUNTIME,
    FunctionDescription,
    Functions,
    MappingDescription,
    code_sha256,
    mapping_name,
    split_mapping_name,
)
from runner.backends.base.ownership import KINDS, Ownership
from runner.backends.base.streams import (
    ITERATOR_TYPES,
    Behind,
    PutResult,
    Record,
    RecordBatch,
    Shard,
    StreamDescription,
    Streams,
    check_iterator,
)

__all__ = [
    "DEFAULT_REGION",
    "HANDLER",
    "MAPPING_SETTINGS",
    "ITERATOR_TYPES",
    "KINDS",
    "LOCAL_ACCOUNT_ID",
    "RUNTIME",
    "SHARD_END",
    "START_MARK",
    "TWO_RUNS",
    "AlreadyExists",
    "Backend",
    "BackendError",
    "Behind",
    "EarlierStream",
    "FirehoseDescription",
    "FunctionDescription",
    "IteratorExpired",
    "Lease",
    "LeaseLapsed",
    "LeaseLost",
    "MappingDescription",
    "PutResult",
    "Record",
    "RecordBatch",
    "RoleDescription",
    "RunHolder",
    "RunInfo",
    "Shard",
    "StateLost",
    "StreamDescription",
    "StreamNotFound",
    "Throttled",
    "check_iterator",
    "checkpoint_table",
    "code_sha256",
    "disk_errors",
    "is_start_mark",
    "mapping_name",
    "parse_start_mark",
    "split_mapping_name",
    "start_mark",
]

# Where a target acts when neither the command line, the spec nor the AWS configuration says.
DEFAULT_REGION = "us-east-1"

# The account id the local target answers with, as the one ${account_id} names resolve to.
LOCAL_ACCOUNT_ID = "000000000000"


class Backend(Streams, Checkpoints, Buckets, Firehoses, Access, Functions, Ownership):
    """What every target offers. Names are resource names, never spec keys."""

    name: str  # "local" or "aws"
    region: str
    partition: str = "aws"  # the region's ARN partition: aws, aws-cn, aws-us-gov, ...
    # True when the target delivers Firehose streams itself (AWS); otherwise `run` does it.
    delivers_firehoses: bool
    # True when the target runs a spec's `lambda:` function itself (AWS); otherwise `run`
    # drives its handler.
    runs_functions: bool
    # How many shards a reader may ask at once: network targets gain from asking in parallel.
    read_workers: int = 1
    # How many PutRecords calls and checkpoints a run may make at once, likewise.
    write_workers: int = 1

    @property
    @abc.abstractmethod
    def account_id(self) -> str: ...

    @property
    def location(self) -> str:
        """Where this target looks, for messages: `the local target in .pipeline`."""
        return f"the {self.name} target"

    def check_writable(self) -> None:
        """Raise BackendError, in one line, if this command cannot write to the target (a
        read-only local state folder), before it lists what it would change; the default can."""

    def close(self) -> None:
        """Release connections; the default has nothing to release."""
