"""The dead letter: where a record that cannot be delivered goes, with why and where it was.

Each entry holds the reason, the source stream, shard and sequence number, the partition key,
the arrival time and the original bytes (base64, plus the text when it is UTF-8). It is a
declared stream or a declared bucket when the spec names one, otherwise
`<state-dir>/dead-letter/<pipeline>.jsonl`. In a bucket, each write is one JSON Lines object
keyed like Firehose's: prefix + YYYY/MM/DD/HH/ + <pipeline>-1-YYYY-MM-DD-HH-MM-SS-<uuid>.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
from collections.abc import Callable
from pathlib import Path

from runner.backends.base import MAX_RECORD_BYTES, Backend, Record
from runner.delivery import object_key
from runner.patience import Patience
from runner.sink import Sink
from runner.spec import Spec


def entry(reason: str, pipeline: str, stream: str, shard_id: str, record: Record) -> dict:
    """A dead-letter entry for one record."""
    try:
        text = record.data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "reason": reason,
        "pipeline": pipeline,
        "stream": stream,
        "shard": shard_id,
        "sequence": record.sequence,
        "partition_key": record.partition_key,
        "arrival": record.arrival.isoformat(),
        "dead_lettered_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "data": text,
        "data_base64": base64.b64encode(record.data).decode("ascii"),
    }


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
        patience: Patience | None = None,
    ) -> None:
        self.pipeline = spec.pipeline
        self.backend = backend
        self.now = now
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
        self._pending: list[tuple[bytes, str]] = []
        self.count = 0
        self.in_file = 0  # entries written to the file, stream or not
        self.objects: list[str] = []  # keys of the objects written to the bucket

    def where(self) -> str:
        """Where entries go, e.g. 'bucket rejects under dead-letter/'."""
        if self.bucket is not None:
            return f"bucket {self.bucket}" + (f" under {self.prefix}" if self.prefix else "")
        if self.sink is not None:
            return f"stream {self.sink.stream}"
        return f"file {self.path}"

    def summary(self) -> str:
        """Where the dead-lettered records are, e.g. '3 records in stream rejects'."""
        records = f"{self.count} record{'' if self.count == 1 else 's'}"
        if self.bucket is not None:
            objects = len(self.objects)
            return f"{records} in {objects} object{'' if objects == 1 else 's'} in {self.where()}"
        in_stream = self.count - self.in_file
        places = [(in_stream, f"stream {self.sink.stream}")] if in_stream else []
        if self.in_file:
            too_big = " (too large for a stream record)" if self.sink else ""
            places.append((self.in_file, f"{self.path}{too_big}"))
        if len(places) == 1:
            return f"{records} in {places[0][1]}"
        return f"{records}: " + ", ".join(f"{count} in {where}" for count, where in places)

    def add(self, reason: str, stream: str, shard_id: str, record: Record) -> None:
        data = json.dumps(entry(reason, self.pipeline, stream, shard_id, record)).encode() + b"\n"
        self._pending.append((data, record.partition_key))

    def write(self) -> None:
        """Make every added entry durable before the caller checkpoints past it."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if self.bucket is not None:
            # One object per write; an object, unlike a stream record, has no 1 MiB limit.
            key = object_key(self.prefix, self.pipeline, self.now())
            body = b"".join(data for data, _ in pending)
            self.patience.retry(lambda: self.backend.put_object(self.bucket, key, body))
            self.objects.append(key)
            self.count += len(pending)
            return
        to_file = pending
        if self.sink is not None:
            # An entry too big for a stream record (base64 grows a 1 MiB record) goes to the file.
            fits = [e for e in pending if len(e[0]) + len(e[1].encode()) <= MAX_RECORD_BYTES]
            to_file = [e for e in pending if len(e[0]) + len(e[1].encode()) > MAX_RECORD_BYTES]
            self.sink.put(fits)
        if to_file:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as file:
                file.writelines(data for data, _ in to_file)
                file.flush()
                os.fsync(file.fileno())
            self.in_file += len(to_file)
        self.count += len(pending)
