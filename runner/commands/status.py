"""`pipeline status`: where a pipeline stands, on one screen or as JSON for scripts.

Per source shard: open or closed, its checkpoint, how far behind it is and when it was last
checkpointed; who holds the run lock or lease; where the dead letter is and how many entries
wait there; and whether the spec file differs from the version the last run used.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.backends import CHECKPOINTS_OFF_MACHINE
from runner.backends.base import (
    MAPPING_SETTINGS,
    SHARD_END,
    Backend,
    BackendError,
    Behind,
    EarlierStream,
    FunctionDescription,
    MappingDescription,
    RunHolder,
    RunInfo,
    Shard,
    is_start_mark,
    parse_start_mark,
)
from runner.commands.holder import held_by, when
from runner.commands.provision import lambda_changes
from runner.loop.backlog import BucketBacklog, FileBacklog, backlogs, earlier_places, earlier_remedy
from runner.loop.dead_letter import DeadLetter
from runner.loop.reader import FORGET_OPTION
from runner.plural import count
from runner.spec import Position, Spec


@dataclass(frozen=True)
class ShardStatus:
    shard: Shard
    checkpoint: str | None  # a sequence number, SHARD_END, a start mark, or None
    starts_at: Position | None  # where the next run reads it from, if none of it was handled
    behind: Behind
    checkpointed_at: datetime.datetime | None


@dataclass(frozen=True)
class DeadLetterPlace:
    where: str  # e.g. "stream shop-rejects"
    entries: int
    objects: int | None = None  # in a bucket: how many objects hold them
    current: bool = True  # False: an earlier place, which the spec no longer names


_MAPPING_FIELDS = ("uuid", "state", "last_result", *MAPPING_SETTINGS, "starting_position")


@dataclass(frozen=True)
class FunctionStatus:
    """A pipeline Lambda runs: its function and event source mapping as the target has them
    (None: not there), and what differs from the spec (what `pipeline apply` would change)."""

    name: str
    function: FunctionDescription | None
    mapping: MappingDescription | None
    differences: list[str]  # plan lines, e.g. "~ change function f (memory_mb 256 -> 512)"
    start: str  # where the spec says the source is read from, e.g. TRIM_HORIZON

    def as_json(self) -> dict[str, Any]:
        mapping = self.mapping
        return {
            "function": self.name,
            "deployed": self.function is not None,
            "as_the_spec_says": not self.differences,
            "differences": self.differences,
            "mapping": None
            if mapping is None
            else {name: getattr(mapping, name) for name in _MAPPING_FIELDS},
        }

    def lines(self, path: Path) -> list[str]:
        function, mapping = self.function, self.mapping
        if function is None:
            return [f"lambda: function {self.name} not found: `pipeline apply {path}` creates it"]
        lines = [
            f"lambda: function {self.name} ({function.runtime}, {function.memory_mb} MB, "
            f"{function.timeout_s} s) "
            + (
                f"differs from the spec; `pipeline apply {path}` would:"
                if self.differences
                else "runs this spec, as it says"
            )
        ]
        lines += [f"    {difference}" for difference in self.differences]
        if mapping is None:
            return lines
        retries = "until they expire" if mapping.max_retries == -1 else mapping.max_retries
        age = "no limit" if mapping.max_record_age_s == -1 else f"{mapping.max_record_age_s} s"
        started = f"started at {mapping.starting_position}"
        if mapping.starting_position != self.start:
            started += (
                f" (the spec's start is {self.start}, which a mapping cannot change: it reads "
                "on from where it is)"
            )
        lines += [
            f"  mapping {mapping.uuid}: {mapping.state or '?'}, last result "
            f"{mapping.last_result or 'none yet'}",
            f"  batches of {mapping.batch_size}, window {mapping.batching_window_s} s, "
            f"{mapping.parallelization} per shard at once, retries {retries}, "
            f"max record age {age}, bisect on error {'on' if mapping.bisect_on_error else 'off'}, "
            f"{started}",
            "  Lambda keeps the checkpoints: how far behind it is, is the function's "
            "IteratorAge metric in CloudWatch",
        ]
        return lines


@dataclass(frozen=True)
class Status:
    spec: Spec
    location: str  # where the target looks, e.g. "the local target in .pipeline"
    stream: str
    shards: list[ShardStatus]
    earlier: str | None  # why the checkpoints are not shown: they are an earlier stream's
    holder: RunHolder | None
    dead_letter: list[DeadLetterPlace]
    last_run: RunInfo | None
    now: datetime.datetime
    function: FunctionStatus | None = None  # when Lambda runs the pipeline on this target

    @property
    def differs(self) -> bool | None:
        """Whether the spec file differs from the version the last run used (None: no run)."""
        return None if self.last_run is None else self.last_run.spec_version != self.spec.version

    def as_json(self) -> dict[str, Any]:
        holder = self.holder
        return {
            "pipeline": self.spec.pipeline,
            "target": self.location,
            "stream": self.stream,
            "shards": [
                {
                    "shard": s.shard.shard_id,
                    "open": s.shard.is_open,
                    "checkpoint": s.checkpoint,
                    "starts_at": None if s.starts_at is None else str(s.starts_at),
                    "behind": _given(vars(s.behind)),
                    "checkpointed_at": _iso(s.checkpointed_at),
                }
                for s in self.shards
            ],
            "checkpoints_error": self.earlier,
            "running": None
            if holder is None
            else {
                "by": holder.kind,
                "owner": holder.owner,
                "host": holder.host,
                "pid": holder.pid,
                "since": _iso(holder.since),
                "expires": _iso(holder.expires),
                "left_over": holder.left_over(self.now),
            },
            "dead_letter": [_place_json(place) for place in self.dead_letter],
            "spec": {
                "path": str(self.spec.path),
                "version": self.spec.version,
                "last_run": None
                if self.last_run is None
                else {
                    "version": self.last_run.spec_version,
                    "recorded_at": _iso(self.last_run.recorded_at),
                },
                "differs": self.differs,
            },
            "lambda": None if self.function is None else self.function.as_json(),
        }

    def lines(self) -> list[str]:
        lines = [
            f"pipeline {self.spec.pipeline} on {self.location}",
            f"source: stream {self.stream}, {count(len(self.shards), 'shard')}",
        ]
        if self.earlier:
            lines.append(f"  {self.earlier}")
        if self.function is not None:
            lines += [
                f"  {s.shard.shard_id}  {'open' if s.shard.is_open else 'closed'}"
                for s in self.shards
            ]
            lines += self.function.lines(self.spec.path)
            if self.holder is not None and not self.holder.left_over(self.now):
                lines.append(
                    f"run: a pipeline run reads the stream too ({held_by(self.holder)}): "
                    "it and Lambda both handle every record; stop it"
                )
            lines += [f"dead letter: {line}" for line in self._dead_letter_lines()]
            lines.append(f"spec: {self.spec.path} version {self.spec.version}")
            return [line.rstrip() for line in lines]
        rows = [("shard", "state", "checkpoint", "behind", "checkpointed")]
        rows += [
            (
                s.shard.shard_id,
                "open" if s.shard.is_open else "closed",
                _checkpoint_text(s),
                _behind_text(s.behind),
                when(s.checkpointed_at) if s.checkpointed_at else "-",
            )
            for s in self.shards
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += ["  " + "  ".join(map(str.ljust, row, widths)) for row in rows]
        lines.append(f"run: {self._run_text()}")
        lines += [f"dead letter: {line}" for line in self._dead_letter_lines()]
        lines.append(f"spec: {self._spec_text()}")
        return [line.rstrip() for line in lines]

    def _run_text(self) -> str:
        holder = self.holder
        if holder is None:
            return "not running"
        held = held_by(holder)
        if holder.gone:
            return f"not running ({held}, whose process is gone: the next run takes it over)"
        if holder.left_over(self.now):
            return (
                f"not running ({held}, expired {when(holder.expires)}: the next run takes it "
                "over once it sees it unrenewed for a whole lease)"
            )
        expires = f", expires {when(holder.expires)} unless renewed" if holder.expires else ""
        return f"running ({held}{expires})"

    def _dead_letter_lines(self) -> list[str]:
        if not self.dead_letter:
            return ["none declared (`pipeline run` refuses this spec on this target)"]
        lines = []
        for place in self.dead_letter:
            entries = count(place.entries, "entry", "entries")
            objects = f" in {count(place.objects, 'object')}" if place.objects is not None else ""
            if place.current:
                lines.append(f"{place.where}: {entries}{objects}")
            else:
                lines.append(
                    f"{place.where}: {entries}{objects}, written before the spec named another "
                    f"dead letter; {earlier_remedy()}"
                )
        return lines

    def _spec_text(self) -> str:
        version, last = self.spec.version, self.last_run
        if last is None:
            return f"{self.spec.path} version {version}; no run recorded one yet"
        since = when(last.recorded_at)
        if self.differs:
            return (
                f"{self.spec.path} differs from what the last run used: version {version} "
                f"on disk, {last.spec_version} used since {since}"
            )
        return f"{self.spec.path} version {version}, as the last run used since {since}"


def status(
    spec: Spec,
    backend: Backend,
    state_dir: Path,
    *,
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
    sleep: Callable[[float], None] = time.sleep,
) -> Status:
    """Gather where the pipeline stands on the target; writes nothing."""
    stream = source_stream(spec, backend)
    shards = backend.list_shards(stream)
    if spec.function is not None and backend.runs_functions:
        return Status(
            spec=spec,
            location=backend.location,
            stream=stream,
            shards=[ShardStatus(shard, None, None, Behind(), None) for shard in shards],
            earlier=None,
            holder=backend.run_holder(spec.pipeline)
            if backend.checkpoint_store_exists(spec.pipeline)
            else None,
            dead_letter=dead_letter_places(spec, backend, state_dir, sleep),
            last_run=None,
            now=now(),
            function=function_status(spec, backend),
        )
    # None on AWS for a spec without a route: it never runs, so apply makes no table for it.
    kept = backend.checkpoint_store_exists(spec.pipeline)
    earlier = None
    try:
        checkpoints = backend.get_checkpoints(spec.pipeline, stream) if kept else {}
        times = backend.checkpoint_times(spec.pipeline, stream) if kept else {}
    except EarlierStream as error:
        earlier = (
            f"the checkpoints are for {error.earlier}, not the one there now: "
            f"`pipeline run {FORGET_OPTION}` deletes them and starts at {spec.source.start}"
        )
        checkpoints, times = {}, {}
    finished = {shard for shard, value in checkpoints.items() if value == SHARD_END}
    return Status(
        spec=spec,
        location=backend.location,
        stream=stream,
        shards=[
            _shard_status(backend, stream, shard, checkpoints, times, spec.source.start, finished)
            for shard in shards
        ],
        earlier=earlier,
        holder=backend.run_holder(spec.pipeline) if kept else None,
        dead_letter=dead_letter_places(spec, backend, state_dir, sleep),
        last_run=backend.get_run_info(spec.pipeline) if kept else None,
        now=now(),
    )


def function_status(spec: Spec, backend: Backend) -> FunctionStatus:
    """The function and mapping of a spec Lambda runs, as the target has them."""
    name = spec.function.name
    function = backend.describe_function(name)
    mapping = backend.describe_mapping(name, spec.streams[spec.source.stream].name)
    differences = [change.line() for change in lambda_changes(spec, backend, function, mapping)]
    return FunctionStatus(name, function, mapping, differences, spec.source.start.iterator_type)


def source_stream(spec: Spec, backend: Backend) -> str:
    """The name of the spec's source stream; raises, saying what to do, if it does not exist."""
    stream = spec.streams[spec.source.stream].name
    if backend.describe_stream(stream) is None:
        raise BackendError(
            f"stream {stream} not found on {backend.location}: run `pipeline apply {spec.path}` "
            "first"
        )
    return stream


def _shard_status(
    backend: Backend,
    stream: str,
    shard: Shard,
    checkpoints: dict[str, str],
    times: dict[str, datetime.datetime | None],
    start: Position,
    finished: set[str],
) -> ShardStatus:
    checkpoint = checkpoints.get(shard.shard_id)
    starts_at = None
    if checkpoint is None:
        # As the reader does: a child of a shard read to its end starts at its beginning.
        parents = {shard.parent_shard_id, shard.adjacent_parent_shard_id}
        starts_at = Position() if parents & finished else start
    elif is_start_mark(checkpoint):
        starts_at = Position(*parse_start_mark(checkpoint))
    if starts_at is not None:
        position = (starts_at.iterator_type, starts_at.sequence, starts_at.timestamp)
    elif checkpoint == SHARD_END:
        position = ("AFTER_SEQUENCE_NUMBER", shard.ending_sequence, None)
    else:
        position = ("AFTER_SEQUENCE_NUMBER", checkpoint, None)
    behind = backend.behind(stream, shard.shard_id, *position)
    return ShardStatus(shard, checkpoint, starts_at, behind, times.get(shard.shard_id))


def dead_letter_places(
    spec: Spec, backend: Backend, state_dir: Path, sleep: Callable[[float], None] = time.sleep
) -> list[DeadLetterPlace]:
    """Where the pipeline's dead-letter entries wait, and how many, after the redrive
    positions: the declared bucket or stream, and the file in the state folder (on the local
    target, where entries too large for a dead-letter stream go too), shown when entries wait
    there or nothing else is declared. None where the target allows no file and none is
    declared. Then each earlier stream or bucket entries were written to where entries still
    wait (not `current`)."""
    dead_letter = DeadLetter(spec, backend, state_dir)
    file = None if backend.name in CHECKPOINTS_OFF_MACHINE else dead_letter.path
    places, in_file = [], []
    for backlog in backlogs(spec, backend, file, sleep=sleep):
        entries = backlog.count()
        if isinstance(backlog, BucketBacklog):
            places.append(DeadLetterPlace(backlog.where, entries, objects=len(backlog.keys)))
        elif not isinstance(backlog, FileBacklog):
            places.append(DeadLetterPlace(backlog.where, entries))
        elif entries or spec.dead_letter is None:
            in_file.append(DeadLetterPlace(backlog.where, entries))
    for backlog in earlier_places(spec, backend, sleep=sleep):
        entries = backlog.count()
        if entries:
            objects = len(backlog.keys) if isinstance(backlog, BucketBacklog) else None
            places.append(DeadLetterPlace(backlog.where, entries, objects, current=False))
    return places + in_file


def _place_json(place: DeadLetterPlace) -> dict[str, Any]:
    """A place of the dead letter; `current` only for an earlier one (false)."""
    fields = _given(vars(place))
    if place.current:
        del fields["current"]
    return fields


def _given(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields that have a value: `behind` has records or millis, as the target counts."""
    return {key: value for key, value in fields.items() if value is not None}


def _checkpoint_text(shard: ShardStatus) -> str:
    if shard.starts_at is None:
        return str(shard.checkpoint)  # a sequence number or SHARD_END
    if shard.checkpoint is None:
        return f"none: will start at {shard.starts_at}"
    return f"not started: will start at {shard.starts_at}"


def _behind_text(behind: Behind) -> str:
    if behind.records is not None:
        return count(behind.records, "record")
    return f"{behind.millis} ms"


def _iso(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")
