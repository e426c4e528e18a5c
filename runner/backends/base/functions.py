"""What only a target that runs Lambda functions itself needs (AWS): the function a spec with
`lambda:` runs as, its execution role, and the event source mapping through which Lambda
reads the source stream and calls it. Other targets have none: the local target drives the
same handler itself.

A mapping is named, wherever a (kind, name) pair names a resource (ownership.py), by its
function and stream: `FUNCTION <- STREAM` (mapping_name); split_mapping_name takes it apart.
Neither a function's nor a stream's name may hold a space, so the two never blur.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from runner.backends.base.access import RoleDescription
from runner.backends.base.errors import BackendError

# The Python runtime functions run on, and the entry point Lambda calls in the package.
RUNTIME = "python3.13"
HANDLER = "runner.function.handler.handle"

_MAPPING_ARROW = " <- "


def code_sha256(code: bytes) -> str:
    """The package's digest as Lambda gives it (CodeSha256): base64 of its sha256."""
    return base64.b64encode(hashlib.sha256(code).digest()).decode()


def mapping_name(function: str, stream: str) -> str:
    """The name of the mapping from the stream to the function: `FUNCTION <- STREAM`."""
    return f"{function}{_MAPPING_ARROW}{stream}"


def split_mapping_name(name: str) -> tuple[str, str]:
    """(function, stream) of a mapping_name."""
    function, arrow, stream = name.partition(_MAPPING_ARROW)
    if not arrow or not function or not stream:
        raise ValueError(f"not a mapping name (FUNCTION <- STREAM): {name!r}")
    return function, stream


@dataclass(frozen=True)
class FunctionDescription:
    """A function as provisioning compares it."""

    name: str
    runtime: str  # e.g. RUNTIME
    handler: str  # e.g. HANDLER
    memory_mb: int
    timeout_s: int
    role: str  # the execution role's name
    code_sha256: str  # of the package: code_sha256(code)
    environment: dict[str, str] = field(default_factory=dict)
    owner: str | None = field(default=None, compare=False)  # the pipeline its tag names


# The settings of a mapping that an update can change (the rest are fixed at its creation).
MAPPING_SETTINGS = (
    "batch_size",
    "batching_window_s",
    "parallelization",
    "max_retries",
    "max_record_age_s",
    "bisect_on_error",
    "report_batch_item_failures",
)


@dataclass(frozen=True)
class MappingDescription:
    """A Kinesis event source mapping as provisioning compares it: from the stream (by name)
    to the function, with its batching, retry and starting settings. What only describing
    it says (its id, state and last result) is not compared."""

    function: str
    stream: str
    batch_size: int
    batching_window_s: int
    parallelization: int  # concurrent batches per shard
    max_retries: int  # -1: until the record expires
    max_record_age_s: int  # -1: no limit
    bisect_on_error: bool
    # Where the mapping began reading: it cannot change once created (as `start` does not
    # move a run's checkpoints), so it is not compared.
    starting_position: str = field(compare=False)  # TRIM_HORIZON, LATEST or AT_TIMESTAMP
    starting_timestamp: datetime.datetime | None = field(default=None, compare=False)
    report_batch_item_failures: bool = True  # FunctionResponseTypes: ReportBatchItemFailures
    uuid: str = field(default="", compare=False)
    state: str = field(default="", compare=False)  # Creating, Enabled, Updating, ...
    last_result: str | None = field(default=None, compare=False)  # e.g. "OK"
    owner: str | None = field(default=None, compare=False)  # the pipeline its tag names

    @property
    def name(self) -> str:
        """`FUNCTION <- STREAM`, as in (kind, name) pairs."""
        return mapping_name(self.function, self.stream)


class Functions:
    """Lambda functions, their execution roles and event source mappings; by default, a
    target without them."""

    name: str  # the target's, for messages (Backend.name)

    def _no_functions(self) -> BackendError:
        return BackendError(f"the {self.name} target has no Lambda functions")

    def describe_function(self, name: str) -> FunctionDescription | None:
        """The function, or None when it does not exist."""
        raise self._no_functions()

    def create_function(
        self, function: FunctionDescription, code: bytes, owner: str | None = None
    ) -> None:
        """Create the function from the zip `code`, as the `owner` pipeline's own
        (ownership.py); return once it can be called and updated."""
        raise self._no_functions()

    def update_function_code(self, name: str, code: bytes) -> None:
        """Replace the function's package with the zip `code`; return once done."""
        raise self._no_functions()

    def update_function_configuration(self, function: FunctionDescription) -> None:
        """Set the function's runtime, handler, memory, timeout, role and environment to
        these (not its code); return once done."""
        raise self._no_functions()

    def delete_function(self, name: str) -> None:
        raise self._no_functions()

    def function_role(
        self,
        role: str,
        function: str,
        source: str,
        sinks: Sequence[str],
        dead_letter_stream: str | None = None,
        dead_letter_bucket: str | None = None,
        dead_letter_prefix: str = "",
        pipeline: str | None = None,
    ) -> RoleDescription:
        """The execution role `role` of the function, by resource names: allowed to read the
        `source` stream as its event source mapping does, to put records to the `sinks`
        streams and the dead-letter stream, objects to the dead-letter bucket under its
        prefix, notes (only) in the `pipeline`'s checkpoint store of where it wrote dead-letter
        entries, and logs to the function's own log group; nothing else. Put it with
        Access.put_role."""
        raise self._no_functions()

    def describe_mapping(self, function: str, stream: str) -> MappingDescription | None:
        """The mapping from the stream (by name) to the function, or None when there is none."""
        raise self._no_functions()

    def create_mapping(self, mapping: MappingDescription, owner: str | None = None) -> None:
        """Create the mapping, as the `owner` pipeline's own; return once it is enabled."""
        raise self._no_functions()

    def update_mapping(self, mapping: MappingDescription) -> None:
        """Set the mapping's batching and retry settings to these; a mapping's starting
        position is where it began reading and cannot change. Return once it is enabled."""
        raise self._no_functions()

    def delete_mapping(self, function: str, stream: str) -> None:
        """Delete the mapping; return once it is gone."""
        raise self._no_functions()

    def feeding(self, stream: str) -> list[MappingDescription]:
        """The mappings through which Lambda reads the stream (by name), whatever function
        they feed; the default, a target without Lambda, has none."""
        return []
