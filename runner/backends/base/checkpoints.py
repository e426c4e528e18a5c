"""Checkpoints, where they are kept, and the run lease that fences a pipeline's writes.

A checkpoint is the last sequence number of a shard that is durably handled. Each belongs to
one life of its stream: the one there when they were read, else when written.
"""

from __future__ import annotations

import abc
import contextlib
import datetime
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from runner.backends.base.errors import LeaseLost

# What a run refused because another holds the pipeline's run lock or lease is told.
TWO_RUNS = "two runs at once would write every record twice"

# A checkpoint value meaning "this closed shard was read to its end".
SHARD_END = "SHARD_END"

# A checkpoint may also mark where a run began reading a shard, before any of its records was
# handled: "#trim_horizon", "#at_timestamp:ISO". "#" sorts before digits and SHARD_END, so any
# sequence number replaces a mark, and a mark is written only where no checkpoint is.
START_MARK = "#"


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


def checkpoint_table(pipeline: str) -> str:
    """The table a target that keeps checkpoints off the machine (DynamoDB on AWS) keeps the
    pipeline's checkpoints and run lease in."""
    return f"{pipeline}-checkpoints"


@dataclass(frozen=True)
class RunHolder:
    """Who holds a pipeline's run lock (local) or lease (AWS), as the target tells it."""

    kind: str  # "lock" or "lease"
    owner: str  # as runs name it: "HOST pid PID" (a lock), "HOST pid PID run ID" (a lease)
    host: str | None = None
    pid: int | None = None
    since: datetime.datetime | None = None  # when it was taken
    expires: datetime.datetime | None = None  # a lease's end unless renewed; None for a lock
    gone: bool = False  # its process is known to have ended: the next run takes it over

    def left_over(self, now: datetime.datetime) -> bool:
        """Whether no run holds it any more, only its item is left (a lease its run no longer
        renews), as far as this machine's clock tells."""
        return self.gone or (self.expires is not None and self.expires <= now)


@dataclass(frozen=True)
class RunInfo:
    """What the last run of a pipeline recorded for `pipeline status`."""

    spec_version: str  # the spec file's version it runs (spec_version)
    recorded_at: datetime.datetime  # when it took that version up


class Lease:
    """A run's hold on its pipeline, which the loop checks before every write and checkpoint.

    This one, the local lock's, holds for as long as its run goes: the OS keeps a file lock
    until its process ends. A lease that must be renewed (AWS) says when it may be lapsing."""

    def held(self) -> bool:
        """Whether the run may write now: a cheap local check, no call to the target."""
        return True

    def check(self) -> None:
        """Return if the run may write now; raise LeaseLost, saying why, once another run
        holds the lease, or LeaseLapsed (a Throttled: wait) while it is not renewed."""
        if not self.held():
            raise LeaseLost("lost the run lease: stopped without writing or checkpointing further")


class Checkpoints(abc.ABC):
    """The pipelines' checkpoints, the store that keeps them, and each pipeline's run lock."""

    @abc.abstractmethod
    def get_checkpoints(self, pipeline: str, stream: str) -> dict[str, str]:
        """shard id -> sequence number (or SHARD_END, or a start mark) for every checkpointed
        shard. Raises EarlierStream when they belong to an earlier stream of that name."""

    @abc.abstractmethod
    def set_checkpoint(self, pipeline: str, stream: str, shard_id: str, sequence: str) -> None:
        """Record progress; a checkpoint never moves backwards (an older one is ignored), and a
        start mark is written only where there is no checkpoint."""

    @abc.abstractmethod
    def forget_earlier_checkpoints(self, pipeline: str, stream: str) -> int:
        """Delete the pipeline's checkpoints kept for an earlier stream of that name; returns
        how many shards' they were."""

    @abc.abstractmethod
    def checkpoint_times(self, pipeline: str, stream: str) -> dict[str, datetime.datetime | None]:
        """shard id -> when its checkpoint was last written (None if before times were kept)."""

    @abc.abstractmethod
    def reset_checkpoints(self, pipeline: str, stream: str, checkpoints: Mapping[str, str]) -> None:
        """Replace these shards' checkpoints (shard id -> sequence number, SHARD_END or a start
        mark) whatever they were, even later ones, for the stream there now: `pipeline reset`,
        holding the run lock."""

    @abc.abstractmethod
    def set_run_info(self, pipeline: str, info: RunInfo) -> None:
        """Record what the pipeline's run uses now (its spec version), for `pipeline status`."""

    @abc.abstractmethod
    def get_run_info(self, pipeline: str) -> RunInfo | None:
        """What the pipeline's last run recorded, or None if no run did."""

    @abc.abstractmethod
    def get_note(self, pipeline: str, name: str) -> str | None:
        """The text kept under `name` beside the pipeline's checkpoints, or None."""

    @abc.abstractmethod
    def set_note(self, pipeline: str, name: str, text: str | None) -> None:
        """Keep a small text (under 300 KB) beside the pipeline's checkpoints, where they live
        (such as what a redrive is about to write); None deletes it. While this process holds
        the pipeline's run lease, written only if the lease still names it, as checkpoints."""

    @abc.abstractmethod
    def notes(self, pipeline: str, prefix: str) -> dict[str, str]:
        """The pipeline's notes whose names start with `prefix`: name -> text."""

    # Only a target whose checkpoints live off the machine needs a store made for them: a
    # DynamoDB table on AWS.
    def checkpoint_store_exists(self, pipeline: str) -> bool:
        """Whether the pipeline's checkpoints have somewhere to go (the local file always)."""
        return True

    def create_checkpoint_store(self, pipeline: str) -> None:
        """Make room for the pipeline's checkpoints (a DynamoDB table on AWS), as its own."""

    def delete_checkpoint_store(self, pipeline: str) -> None:
        """Remove the pipeline's checkpoints and their store."""

    @contextlib.contextmanager
    def running(
        self,
        pipeline: str,
        report: Callable[[str], None] = lambda line: None,
        *,
        why: str = TWO_RUNS,
    ) -> Iterator[Lease]:
        """Hold the pipeline's run lock while the block runs: a second run of it at once would
        write everything twice. Yields the Lease the run checks before each write; raises
        BackendError when another run holds it, ending in `why` (what the one refused should
        know); `report` gets a line while it waits for one. The default locks nothing."""
        yield Lease()

    def run_holder(self, pipeline: str) -> RunHolder | None:
        """Who holds the pipeline's run lock or lease now, or None; takes nothing. The default
        locks nothing, so no one holds it."""
        return None
