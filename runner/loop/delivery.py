"""Firehose delivery where the target does not deliver itself (the local backend).

Each delivery reads its stream like Firehose does, buffers the records' bytes and writes an
object to its bucket when the buffer reaches its size or its interval, and at stop. Object
keys are Firehose's: prefix + YYYY/MM/DD/HH/ + name-1-YYYY-MM-DD-HH-MM-SS-uuid. Its shards'
checkpoints move only once the object holding their records is written.
"""

from __future__ import annotations

import datetime
import gzip
import time
import uuid
from collections.abc import Callable

from runner.backends.base import SHARD_END, Backend, BackendError
from runner.loop.reader import StreamReader, stored_checkpoints
from runner.loop.sink import Sink
from runner.spec import Firehose, Spec

# Records per GetRecords call: about a 1 MB buffer of the scenario's records, so that a
# delivery catching up holds little more than its buffer (12,500 records/s per shard at 5 calls/s).
READ_LIMIT = 2500
# Records the run wrote to a shard that a delivery holds while its reader is behind them.
MAX_WRITTEN = 4 * READ_LIMIT
COMPRESSIONS = {"UNCOMPRESSED": ("", lambda body: body), "GZIP": (".gz", gzip.compress)}


def object_key(prefix: str, name: str, moment: datetime.datetime) -> str:
    """A new object's key as Firehose makes it: prefix + YYYY/MM/DD/HH/ +
    name-1-YYYY-MM-DD-HH-MM-SS-uuid, in UTC."""
    moment = moment.astimezone(datetime.timezone.utc)
    return f"{prefix}{moment:%Y/%m/%d/%H}/{name}-1-{moment:%Y-%m-%d-%H-%M-%S}-{uuid.uuid4()}"


class Delivery:
    """One Firehose delivery stream, delivered by the run."""

    def __init__(
        self,
        spec: Spec,
        firehose: Firehose,
        backend: Backend,
        *,
        clock: Callable[[], float] = time.monotonic,
        forget: bool = False,  # checkpoints kept for an earlier stream of the same name
        sink: Sink | None = None,  # the run's own writer to the stream, if it has one
    ) -> None:
        if firehose.compression not in COMPRESSIONS:
            raise BackendError(
                f"resources.firehoses.{firehose.key}.compression: the {backend.name} target "
                f"delivers only {' or '.join(COMPRESSIONS)}, not {firehose.compression}"
            )
        self.firehose = firehose
        self.backend = backend
        self.bucket = spec.buckets[firehose.bucket].name
        self.stream = spec.streams[firehose.stream].name
        self.checkpoint_name = f"firehose:{firehose.name}"
        self.clock = clock
        self.reader = StreamReader(
            backend,
            self.stream,
            checkpoints=stored_checkpoints(
                backend,
                self.checkpoint_name,
                self.stream,
                who=f"firehose {firehose.name}",
                start="trim_horizon",
                forget=forget,
            ),
            limit=READ_LIMIT,
            clock=clock,
        )
        self.max_bytes = firehose.buffer_size_mb * 1024 * 1024
        self._buffer: list[bytes] = []
        self._size = 0
        self._first_at = 0.0  # when the oldest buffered record was read
        self._first_arrival: datetime.datetime | None = None
        self._pending: dict[str, str] = {}  # shard -> sequence to checkpoint after the write
        self.records = 0
        self.objects: list[str] = []
        self.sink = sink if sink is not None and sink.stream == self.stream else None
        # shard id -> (sequence number, data) of what the run wrote there and the reader has
        # neither read nor taken yet, in order
        self._written: dict[str, list[tuple[int, bytes]]] = {}

    def step(self) -> int:
        """Take what the run wrote to the stream, read what else it has, deliver if a limit
        is reached; returns records taken."""
        # What the run wrote follows what was read so far unless someone else wrote there
        # too, or the reader is behind: then it reads what comes first, and takes the rest
        # after. Its first poll is read: it tells where the reader stands.
        taken = self._take_written()
        for batch in self.reader.poll():
            for record in batch.records:
                if not self._buffer:
                    self._first_at = self.clock()
                    self._first_arrival = record.arrival
                self._buffer.append(record.data)
                self._size += len(record.data)
                self._pending[batch.shard_id] = record.sequence
                taken += 1
                if self._size >= self.max_bytes:  # an object holds about the buffer size
                    self.flush()
            if batch.finished:
                self._pending[batch.shard_id] = SHARD_END
        taken += self._take_written()
        if self.sink is not None:
            self.sink.keep_written()
        if self._buffer and self.clock() - self._first_at >= self.firehose.buffer_interval_s:
            self.flush()
        elif not self._buffer:
            self._checkpoint()  # e.g. a shard finished with nothing left to write
        return taken

    def _take_written(self) -> int:
        """Buffer what the run wrote to each shard where it is all that follows the records
        read so far; returns records taken."""
        written = self._written
        for shard_id, entries in (self.sink.take_written() if self.sink else {}).items():
            written[shard_id] = written[shard_id] + entries if shard_id in written else entries
        taken = 0
        for shard_id, entries in list(written.items()):
            after = self.reader.handed_out(shard_id)
            if after is not None:
                entries = [entry for entry in entries if entry[0] > after]  # the rest were read
            if after is not None and entries:
                if self.reader.take_known(shard_id, len(entries), entries[-1][0]):
                    self._buffer_written(shard_id, entries)
                    taken += len(entries)
                    entries = []
            if entries and len(entries) <= MAX_WRITTEN:
                written[shard_id] = entries
            else:  # taken, read, or more than is worth holding: the reader reads them
                del written[shard_id]
        return taken

    def _buffer_written(self, shard_id: str, entries: list[tuple[int, bytes]]) -> None:
        arrival = datetime.datetime.now(datetime.timezone.utc)  # put just now, by this run
        for sequence, data in entries:
            if not self._buffer:
                self._first_at = self.clock()
                self._first_arrival = arrival
            self._buffer.append(data)
            self._size += len(data)
            if self._size >= self.max_bytes:
                self._pending[shard_id] = str(sequence)
                self.flush()
        self._pending[shard_id] = str(entries[-1][0])

    def flush(self) -> None:
        """Write the buffer as one object, then checkpoint what it holds."""
        if self._buffer:
            extension, compress = COMPRESSIONS[self.firehose.compression]
            arrival = self._first_arrival or datetime.datetime.now(datetime.timezone.utc)
            key = object_key(self.firehose.prefix, self.firehose.name, arrival) + extension
            self.backend.put_object(self.bucket, key, compress(b"".join(self._buffer)))
            self.objects.append(key)
            self.records += len(self._buffer)
            self._buffer, self._size = [], 0
        self._checkpoint()

    def _checkpoint(self) -> None:
        for shard_id, sequence in self._pending.items():
            self.backend.set_checkpoint(self.checkpoint_name, self.stream, shard_id, sequence)
        self._pending.clear()
