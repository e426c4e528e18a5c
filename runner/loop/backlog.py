"""What waits in the dead letter: its entries after the redrive position, in its three forms.

Each form is read back as logs that only grow, each with a position saying how far redrive
has handled it:

- the file `<state-dir>/dead-letter/<pipeline>.jsonl`: one log, its position a byte offset. The
  file stays as it is. Its log is named by a digest of its first line, so that a file deleted
  and begun again is read from its start, not from an offset into the old one.
- a stream: a log per shard, its position the sequence number of the last record handled.
  They belong to one life of the stream, as checkpoints do: those of a stream deleted and
  created again are forgotten.
- a bucket: a log per object, its position a byte offset, SHARD_END once it is all handled.

Positions are checkpoints, kept beside the run's (SQLite locally, the pipeline's DynamoDB
table on AWS) under the pipeline's name: a stream's under the stream's name, the file's and a
bucket's under names starting with '#', which no stream has. They only move forward.

Counting what waits also fixes what a redrive handles: the lines and records there then, not
the entries it writes itself (the file's size, each shard's last record, the objects listed).

Locally the file is read whatever the spec declares: a stream dead letter puts there what is
too large for a record, and a spec may have had no dead letter before. On AWS, only the
declared stream or bucket. The streams and buckets entries were written to before the spec
named another place (remembered by the dead letter) are `earlier` ones: their entries are
counted from the same positions, so what waits there is what a redrive would send once the
spec names that place again.
"""

from __future__ import annotations

import abc
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from runner.backends.base import SHARD_END, Backend, EarlierStream, Record
from runner.loop.dead_letter import PLACE_NOTE, Entry, read_entry
from runner.loop.reader import ShardBatch, StreamReader
from runner.spec import Spec

MAX_SLEEP_S = 0.5


def reached(position: str | None, to: str) -> bool:
    """Whether a log's position is at or past `to`."""
    if position is None:
        return False
    if position == SHARD_END or to == SHARD_END:
        return position == SHARD_END
    return int(position) >= int(to)


@dataclass(frozen=True)
class Waiting:
    """One line or record of the dead letter after its log's position."""

    log: str  # the file, shard or object it is in
    place: str  # where, for messages: 'line 3', 'shardId-000000000000 17', 'KEY line 2'
    position: str  # its log's position once it is handled
    entry: Entry | None  # None: not a dead-letter entry


@dataclass(frozen=True)
class Batch:
    """Waiting lines of one log, in order."""

    log: str
    items: list[Waiting]

    @property
    def end(self) -> str:
        return self.items[-1].position


class Backlog(abc.ABC):
    """One form of the dead letter, read from the redrive positions."""

    where: str  # for messages: 'file PATH', 'stream NAME', 'bucket NAME under PREFIX'
    group: str  # the name its positions are kept under

    def __init__(self, backend: Backend, pipeline: str) -> None:
        self.backend = backend
        self.pipeline = pipeline
        self.positions: dict[str, str] = {}  # log -> position, once counted

    @abc.abstractmethod
    def count(self) -> int:
        """How many entries wait; from then on, only those are handed out."""

    def batches(self, size: int, first: tuple[str, str] | None = None) -> Iterator[Batch]:
        """What waits, in batches of at most `size` lines of one log. `first`, a log and a
        position in it (a batch a redrive was cut short in), comes first, in one batch that
        reaches that position. Each batch is read after the one before is moved past."""
        if first is not None and first[0] in self._logs():
            yield from _batched(self._items(first[0]), size, first[1])
        for log in self._logs():
            yield from _batched(self._items(log), size, None)  # from where the log is now

    def move(self, batch: Batch, *, store: bool = True) -> None:
        """Move the batch's log past it; with `store` false, only for this reader."""
        if store:
            self.backend.set_checkpoint(self.pipeline, self.group, batch.log, batch.end)
        self.positions[batch.log] = batch.end

    @abc.abstractmethod
    def _logs(self) -> list[str]:
        """The logs that hold waiting lines."""

    @abc.abstractmethod
    def _items(self, log: str) -> Iterator[Waiting]:
        """The waiting lines of a log, from its position on."""


def _batched(items: Iterable[Waiting], size: int, to: str | None) -> Iterator[Batch]:
    """One log's lines in batches of `size`; with `to`, the first reaches that position."""
    batch: list[Waiting] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size and (to is None or reached(item.position, to)):
            yield Batch(item.log, batch)
            batch, to = [], None
    if batch:
        yield Batch(batch[0].log, batch)


class FileBacklog(Backlog):
    """The state folder's dead-letter file."""

    group = "#redrive:file"

    def __init__(self, backend: Backend, pipeline: str, path: Path) -> None:
        super().__init__(backend, pipeline)
        self.path = path
        self.where = f"file {path}"
        self.log = ""
        self.end = 0  # the file's size when counted

    def count(self) -> int:
        try:
            with self.path.open("rb") as file:
                first = file.readline()
                self.end = file.seek(0, 2)
        except FileNotFoundError:
            return 0
        if not first.endswith(b"\n"):
            return 0
        digest = hashlib.blake2b(first, digest_size=8).hexdigest()
        self.log = f"{self.path.name}@{digest}"
        stored = self.backend.get_checkpoints(self.pipeline, self.group)
        self.positions = {self.log: stored[self.log]} if self.log in stored else {}
        return sum(item.entry is not None for item in self._items(self.log))

    def _logs(self) -> list[str]:
        return [self.log] if self.log else []

    def _items(self, log: str) -> Iterator[Waiting]:
        offset = int(self.positions.get(log, "0"))
        with self.path.open("rb") as file:
            number = _lines_before(file, offset)
            file.seek(offset)
            while offset < self.end:
                line = file.readline()
                offset += len(line)
                if not line.endswith(b"\n") or offset > self.end:
                    return  # a line still being written when counted, or cut short
                number += 1
                yield Waiting(log, f"line {number}", str(offset), read_entry(line))


def _lines_before(file, offset: int) -> int:
    """How many lines the file holds before `offset`."""
    file.seek(0)
    lines = 0
    while offset > 0:
        chunk = file.read(min(offset, 1 << 20))
        if not chunk:
            break
        lines += chunk.count(b"\n")
        offset -= len(chunk)
    return lines


class StreamBacklog(Backlog):
    """A declared dead-letter stream: a log per shard."""

    def __init__(
        self,
        backend: Backend,
        pipeline: str,
        stream: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(backend, pipeline)
        self.group = stream
        self.where = f"stream {stream}"
        self.clock = clock
        self.sleep = sleep
        self.bounds: dict[str, str] = {}  # shard id -> its last record when counted
        self._earlier = False  # positions kept are of an earlier stream of that name

    def count(self) -> int:
        try:
            self.positions = self.backend.get_checkpoints(self.pipeline, self.group)
        except EarlierStream:
            # Positions in an earlier stream of that name say nothing of this one: they are
            # forgotten before the first is written (a dry run writes none).
            self.positions, self._earlier = {}, True
        waiting = 0
        for batch in read_through(self._reader(), self.sleep):
            if batch.records:
                self.bounds[batch.shard_id] = batch.records[-1].sequence
            waiting += sum(read_entry(record.data) is not None for record in batch.records)
        return waiting

    def batches(self, size: int, first: tuple[str, str] | None = None) -> Iterator[Batch]:
        if first is not None and first[0] in self.bounds:
            yield from _batched(self._items(first[0]), size, first[1])
        reader = self._reader(limit=size)
        for batch in read_through(reader, self.sleep, until=self._all_read):
            bound = self.bounds.get(batch.shard_id)
            records = [r for r in batch.records if bound and reached(bound, r.sequence)]
            if records:
                yield Batch(batch.shard_id, [self._waiting(batch.shard_id, r) for r in records])

    def move(self, batch: Batch, *, store: bool = True) -> None:
        if store and self._earlier:
            self.backend.forget_earlier_checkpoints(self.pipeline, self.group)
            self._earlier = False
        super().move(batch, store=store)

    def _all_read(self) -> bool:
        return all(reached(self.positions.get(s), bound) for s, bound in self.bounds.items())

    def _logs(self) -> list[str]:
        return list(self.bounds)

    def _items(self, log: str) -> Iterator[Waiting]:
        """The shard's records up to its bound."""
        bound = self.bounds[log]
        reader = self._reader(only_shard=log)
        for batch in read_through(reader, self.sleep):
            for record in batch.records:
                if not reached(bound, record.sequence):
                    return
                yield self._waiting(log, record)

    def _waiting(self, shard_id: str, record: Record) -> Waiting:
        return Waiting(
            shard_id, f"{shard_id} {record.sequence}", record.sequence, read_entry(record.data)
        )

    def _reader(self, **options) -> StreamReader:
        return StreamReader(
            self.backend, self.group, checkpoints=dict(self.positions), clock=self.clock, **options
        )


def read_through(
    reader: StreamReader,
    sleep: Callable[[float], None],
    until: Callable[[], bool] = lambda: False,
) -> Iterator[ShardBatch]:
    """What the reader hands out until it has caught up with every shard, or `until()`; its
    threads end with it (when the caller drops it early too)."""
    try:
        while not until():
            batches = reader.poll()
            yield from batches
            if reader.caught_up or reader.done:
                return
            if not any(batch.records for batch in batches):
                sleep(min(reader.wait_time(), MAX_SLEEP_S))
    finally:
        reader.close()


class BucketBacklog(Backlog):
    """A declared dead-letter bucket: a log per object."""

    def __init__(self, backend: Backend, pipeline: str, bucket: str, prefix: str) -> None:
        super().__init__(backend, pipeline)
        self.bucket = bucket
        self.prefix = prefix
        self.group = f"#redrive:bucket:{bucket}"
        self.where = f"bucket {bucket}" + (f" under {prefix}" if prefix else "")
        self.keys: list[str] = []  # the objects listed when counted, not all handled

    def count(self) -> int:
        self.positions = self.backend.get_checkpoints(self.pipeline, self.group)
        listed = self.backend.list_objects(self.bucket, self.prefix)
        self.keys = [key for key in listed if self.positions.get(key) != SHARD_END]
        return sum(item.entry is not None for key in self.keys for item in self._items(key))

    def _logs(self) -> list[str]:
        return self.keys

    def _items(self, log: str) -> Iterator[Waiting]:
        body = self.backend.get_object(self.bucket, log)
        position = self.positions.get(log, "0")
        if position == SHARD_END:
            return
        offset = int(position)
        number = body.count(b"\n", 0, offset)
        for line in body[offset:].splitlines(keepends=True):
            offset += len(line)
            number += 1
            end = SHARD_END if offset >= len(body) else str(offset)
            yield Waiting(log, f"{log} line {number}", end, read_entry(line))


def backlogs(
    spec: Spec,
    backend: Backend,
    file: Path | None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Backlog]:
    """The forms of the spec's dead letter to read back: the file, where one may be (`file`),
    and the declared stream or bucket."""
    found: list[Backlog] = []
    if file is not None:
        found.append(FileBacklog(backend, spec.pipeline, file))
    declared = spec.dead_letter
    if declared is not None and declared.stream is not None:
        stream = spec.streams[declared.stream].name
        found.append(StreamBacklog(backend, spec.pipeline, stream, clock=clock, sleep=sleep))
    elif declared is not None and declared.bucket is not None:
        bucket = spec.buckets[declared.bucket].name
        found.append(BucketBacklog(backend, spec.pipeline, bucket, declared.prefix))
    return found


def earlier_remedy(places: int = 1) -> str:
    """What to do about the entries waiting in earlier places."""
    to = "it" if places == 1 else "each in turn"
    return f"to redrive them, point the spec's dead_letter: back to {to} and run `pipeline redrive`"


def earlier_places(
    spec: Spec,
    backend: Backend,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Backlog]:
    """The streams and buckets the pipeline wrote dead-letter entries to that the spec no
    longer names as its dead letter, and that are still there."""
    current = {backlog.where for backlog in backlogs(spec, backend, None)}
    found = remembered(spec, backend, clock=clock, sleep=sleep)
    return [backlog for backlog in found if backlog.where not in current]


def remembered(
    spec: Spec,
    backend: Backend,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Backlog]:
    """The streams and buckets the pipeline wrote dead-letter entries to, that are still
    there, the spec's dead letter now or not."""
    if not backend.checkpoint_store_exists(spec.pipeline):
        return []
    found: list[Backlog] = []
    for _, text in sorted(backend.notes(spec.pipeline, PLACE_NOTE).items()):
        place = json.loads(text)
        if "bucket" in place and backend.bucket_exists(place["bucket"]):
            found.append(BucketBacklog(backend, spec.pipeline, place["bucket"], place["prefix"]))
        elif "stream" in place and backend.describe_stream(place["stream"]) is not None:
            stream = place["stream"]
            found.append(StreamBacklog(backend, spec.pipeline, stream, clock=clock, sleep=sleep))
    return found


def resource(backlog: Backlog) -> tuple[str, str]:
    """The kind and name of the stream or bucket a backlog is in."""
    if isinstance(backlog, BucketBacklog):
        return "bucket", backlog.bucket
    return "stream", backlog.group


def entries_waiting(
    spec: Spec,
    backend: Backend,
    file: Path | None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """How many entries wait in each form of the dead letter, by where they are (e.g.
    'stream rejects'), after the redrive positions; `file`: the dead-letter file, where one
    may be (DeadLetter.path on the local target), else None."""
    found = backlogs(spec, backend, file, clock=clock, sleep=sleep)
    return {backlog.where: backlog.count() for backlog in found}
