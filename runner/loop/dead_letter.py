"""The dead letter: where a record that cannot be delivered goes, with why and where it was.

Each entry holds the reason, the version of the spec that judged the record (`spec.version`),
the source stream, shard and sequence number (and, for a user record of a KPL aggregate, its
sub-sequence number), the partition key, the arrival time and the original bytes (base64, plus
the text when it is UTF-8). It is a declared stream or a declared bucket when the spec names
one, otherwise `<state-dir>/dead-letter/<pipeline>.jsonl`. In a bucket, each write is one JSON
Lines object keyed like Firehose's: prefix + YYYY/MM/DD/HH/ + <pipeline>-1-YYYY-MM-DD-HH-MM-SS-
<uuid>.

Each declared stream or bucket a pipeline writes entries to is remembered beside its checkpoints
(a note named PLACE_NOTE + where it is, holding how to find it), once per DeadLetter, before
its first write there: after a reload points the dead letter elsewhere, `pipeline status` and
`pipeline redrive` still tell of the entries waiting in the earlier place.

Where the checkpoints live off this machine (the aws target), nothing they move past may live
only in its state folder: a run there needs a stream or a bucket, and an entry too large for a
stream record stops the run instead of going to the file.

The file only ever holds whole lines: each write appends whole entries at once, and a write
that fails (a full disk) is cut back to where it started. A last line without its newline
(a crash in mid-write) is mended before the next append: kept, with its newline, if it is a
whole entry; otherwise moved to `<file>.partial`. Its records were not checkpointed, so the
next run dead-letters them again, whole.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.backends import CHECKPOINTS_OFF_MACHINE
from runner.backends.base import Backend, BackendError, Record, disk_errors
from runner.backends.limits import MAX_RECORD_BYTES, entry_size
from runner.loop.delivery import object_key
from runner.loop.patience import Patience
from runner.loop.sink import Sink
from runner.plural import count
from runner.spec import Spec, dead_letter_off_machine, needs_dead_letter_off_machine

# The names of the notes remembering the places entries were written to: this + 'stream S'.
PLACE_NOTE = "dead-letter:"


def entry(
    reason: str, pipeline: str, stream: str, shard_id: str, record: Record, spec_version: str = ""
) -> dict:
    """A dead-letter entry for one record, judged by the spec of `spec_version`."""
    try:
        text = record.data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    place = {"sequence": record.sequence}
    if record.sub_sequence is not None:
        place["sub_sequence"] = record.sub_sequence
    return {
        "reason": reason,
        "pipeline": pipeline,
        "spec_version": spec_version,
        "stream": stream,
        "shard": shard_id,
        **place,
        "partition_key": record.partition_key,
        "arrival": record.arrival.isoformat(),
        "dead_lettered_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "data": text,
        "data_base64": base64.b64encode(record.data).decode("ascii"),
    }


@dataclass(frozen=True)
class Entry:
    """What an entry read back holds: the original record and where it was read."""

    record: Record
    stream: str
    shard: str

    @property
    def identity(self) -> str:
        """The original record's place, the same in every entry made for it."""
        sub = self.record.sub_sequence
        place = f"{self.stream} {self.shard} {self.record.sequence}"
        return place if sub is None else f"{place}/{sub}"


def read_entry(line: bytes) -> Entry | None:
    """The entry a line of the dead letter holds, or None if it holds none."""
    try:
        found = json.loads(line)
        record = Record(
            sequence=str(found["sequence"]),
            partition_key=str(found["partition_key"]),
            data=base64.b64decode(found["data_base64"], validate=True),
            arrival=datetime.datetime.fromisoformat(found["arrival"]),
            sub_sequence=_sub_sequence(found.get("sub_sequence")),
        )
        return Entry(record, str(found["stream"]), str(found["shard"]))
    except (ValueError, KeyError, TypeError):  # binascii.Error is a ValueError
        return None


def _sub_sequence(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise TypeError("not a sub-sequence number")
    return value


def run_refusal(spec: Spec, target: str) -> str | None:
    """Why `pipeline run` refuses the spec on `target` for its dead letter, or None: where the
    checkpoints live off this machine, bad records may not go to its state folder's file."""
    if spec.route is None or target not in CHECKPOINTS_OFF_MACHINE:
        return None
    if dead_letter_off_machine(spec.dead_letter):
        return None
    return needs_dead_letter_off_machine(f"on the {target} target")


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class DeadLetter:
    def __init__(
        self,
        spec: Spec,
        backend: Backend,
        state_dir: Path,
        *,
        now: Callable[[], datetime.datetime] = _utc_now,
        report: Callable[[str], None] = lambda line: None,
        patience: Patience | None = None,
    ) -> None:
        self.pipeline = spec.pipeline
        self.spec_version = spec.version  # of the spec judging the records added
        self.backend = backend
        self.now = now
        self.report = report
        self.path = state_dir / "dead-letter" / f"{spec.pipeline}.jsonl"
        declared = spec.dead_letter
        stream = declared.stream if declared else None
        bucket = declared.bucket if declared else None
        self.patience = patience or Patience()
        self.sink = (
            Sink(backend, spec.streams[stream].name, patience=self.patience) if stream else None
        )
        self.bucket = spec.buckets[bucket].name if bucket else None
        self.prefix = declared.prefix if bucket else ""
        # Only where the state folder lasts as long as the checkpoints (the local target).
        self.file_allowed = backend.name not in CHECKPOINTS_OFF_MACHINE
        self._pending: list[tuple[bytes, str]] = []
        self._next_key: str | None = None
        self.count = 0
        self.in_file = 0  # entries written to the file, stream or not
        self.objects: list[str] = []  # keys of the objects written to the bucket
        self._remembered = False  # whether this place is noted as one entries were written to

    def where(self) -> str:
        """Where entries go, e.g. 'bucket rejects under dead-letter/'."""
        if self.bucket is not None:
            return f"bucket {self.bucket}" + (f" under {self.prefix}" if self.prefix else "")
        if self.sink is not None:
            return f"stream {self.sink.stream}"
        return f"file {self.path}"

    def summary(self) -> str:
        """Where the dead-lettered records are, e.g. '3 records in stream rejects'."""
        records = count(self.count, "record")
        if self.bucket is not None:
            return f"{records} in {count(len(self.objects), 'object')} in {self.where()}"
        in_stream = self.count - self.in_file
        places = [(in_stream, f"stream {self.sink.stream}")] if in_stream else []
        if self.in_file:
            too_big = " (too large for a stream record)" if self.sink else ""
            places.append((self.in_file, f"{self.path}{too_big}"))
        if len(places) == 1:
            return f"{records} in {places[0][1]}"
        return f"{records}: " + ", ".join(f"{number} in {where}" for number, where in places)

    def add(self, reason: str, stream: str, shard_id: str, record: Record) -> None:
        found = entry(reason, self.pipeline, stream, shard_id, record, self.spec_version)
        data = _line(found)
        if self.sink is not None and not _fits(data, record.partition_key):
            data = self._compacted(found, record)
        self._pending.append((data, record.partition_key))

    def _compacted(self, found: dict, record: Record) -> bytes:
        """The entry without its text copy, which `data_base64` holds too, so that it fits a
        stream record; if even that does not fit, the file takes it where allowed, else the
        run stops here, before any checkpoint moves past the record."""
        data = _line({**found, "data": None})
        if _fits(data, record.partition_key) or self.file_allowed:
            return data
        raise BackendError(
            f"the dead-letter entry of record {record.sequence} ({found['shard']} of stream "
            f"{found['stream']}) is {len(data)} bytes even without its text copy, too large for "
            f"a record of stream {self.sink.stream}: declare a bucket dead letter "
            "(dead_letter: {bucket: KEY}), which holds entries of any size, and run again; "
            "no checkpoint moved past this record"
        )

    def keep_first(self, count: int) -> None:
        """Forget the entries added after the first `count` not yet written (the Lambda
        handler's records after one it could not write: they come again on retry)."""
        del self._pending[count:]

    def next_object(self) -> str | None:
        """In a bucket, the key of the object the next write puts its entries in, chosen now,
        so that a caller may note where they will be (redrive); None for other forms."""
        if self.bucket is not None and self._next_key is None:
            self._next_key = object_key(self.prefix, self.pipeline, self.now())
        return self._next_key

    def write(self) -> None:
        """Make every added entry durable before the caller checkpoints past it."""
        if not self._pending:
            return
        self._remember()
        pending, self._pending = self._pending, []
        if self.bucket is not None:
            # One object per write; an object, unlike a stream record, has no 1 MiB limit.
            key = self.next_object()
            body = b"".join(data for data, _ in pending)
            self.patience.retry(lambda: self.backend.put_object(self.bucket, key, body))
            self._next_key = None
            self.objects.append(key)
            self.count += len(pending)
            return
        to_file = pending
        if self.sink is not None:
            # An entry too big for a stream record even without its text copy (base64 grows a
            # 1 MiB record) goes to the file; add() let it through only where that is allowed.
            fits = [e for e in pending if _fits(*e)]
            to_file = [e for e in pending if not _fits(*e)]
            self.sink.put(fits)
        if to_file:
            self._append(b"".join(data for data, _ in to_file))
            self.in_file += len(to_file)
        self.count += len(pending)

    def _remember(self) -> None:
        """Note the declared stream or bucket as a place entries are written to, once (the
        file is always read back where it may be)."""
        if self._remembered or (self.bucket is None and self.sink is None):
            return
        if self.bucket is not None:
            place = {"bucket": self.bucket, "prefix": self.prefix}
        else:
            place = {"stream": self.sink.stream}
        name, text = PLACE_NOTE + self.where(), json.dumps(place)
        self.patience.retry(lambda: self.backend.set_note(self.pipeline, name, text))
        self._remembered = True

    def _append(self, lines: bytes) -> None:
        """Append whole lines to the file, durably, or raise leaving it as it was."""
        with disk_errors(self.path.parent, "create"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with disk_errors(self.path):
            file = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            moved = _mend_last_line(file, self.path)
            if moved:
                self.report(moved)
            _append_whole(file, lines, self.path)
        finally:
            os.close(file)


# The file's whole lines

_TAIL_CHUNK = 64 * 1024


def _append_whole(file: int, data: bytes, path: Path) -> None:
    """Append `data` in one write and fsync it; on failure cut the file back to its size
    before, so that no partial line stays, and raise naming the path."""
    size = os.fstat(file).st_size
    with disk_errors(path):
        try:
            written = os.write(file, data)
            while written < len(data):  # a short write: the rest, or the error that stopped it
                written += os.write(file, data[written:])
            os.fsync(file)
        except OSError:
            with contextlib.suppress(OSError):  # if this fails too, the next append mends it
                os.ftruncate(file, size)
            raise


def _mend_last_line(file: int, path: Path) -> str | None:
    """Make the file end with a whole line; returns what was done, if anything was set aside."""
    size = os.fstat(file).st_size
    if size == 0 or os.pread(file, 1, size - 1) == b"\n":
        return None
    start = _last_line_start(file, size)
    tail = os.pread(file, size - start, start)
    if _is_entry(tail):
        _append_whole(file, b"\n", path)  # a whole entry without its newline: kept
        return None
    aside = path.with_name(path.name + ".partial")
    with disk_errors(aside):
        partial = os.open(aside, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _append_whole(partial, tail + b"\n", aside)
    finally:
        os.close(partial)
    with disk_errors(path):
        os.ftruncate(file, start)
        os.fsync(file)
    return (
        f"the last line of {path} was cut short ({len(tail)} bytes, by a write that failed); "
        f"moved it to {aside}: its records are dead-lettered again, whole"
    )


def _last_line_start(file: int, size: int) -> int:
    """Where the file's last line starts: after its last newline, else at 0."""
    end = size
    while end > 0:
        begin = max(0, end - _TAIL_CHUNK)
        found = os.pread(file, end - begin, begin).rfind(b"\n")
        if found >= 0:
            return begin + found + 1
        end = begin
    return 0


def _is_entry(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _line(found: dict) -> bytes:
    return json.dumps(found).encode() + b"\n"


def _fits(data: bytes, partition_key: str) -> bool:
    """Whether an entry fits one stream record with its partition key."""
    return entry_size(data, partition_key) <= MAX_RECORD_BYTES
