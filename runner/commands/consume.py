"""`pipeline consume`: print a stream's records, every shard, from a chosen position.

A KPL aggregate is printed as its user records, each with its sub-sequence number; one that
cannot be read is printed whole, and said so on stderr.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import IO

from runner.backends.base import Backend, Record
from runner.loop.reader import StreamReader
from runner.plural import count
from runner.records.kpl import BadAggregate, user_records
from runner.records.processor import BadRecord, parse_json
from runner.spec.position import Position


def readable(shard_id: str, record: Record) -> str:
    text = record.data.decode("utf-8", errors="replace").rstrip("\n")
    sub = "" if record.sub_sequence is None else f"/{record.sub_sequence}"
    return f"{shard_id} {record.sequence}{sub} key={record.partition_key}: {text}"


def as_json(shard_id: str, record: Record) -> str:
    """The record as one JSON object; its data parsed where it is JSON, else as text, and
    where that text is not UTF-8 (a KPL aggregate cut short, a binary record), its bytes in
    base64 too, as the dead letter keeps them."""
    binary = None
    try:
        data = parse_json(record.data)
    except BadRecord:
        data = record.data.decode("utf-8", errors="replace")
        if data.encode("utf-8") != record.data:
            binary = base64.b64encode(record.data).decode("ascii")
    entry = {"shard": shard_id, "sequence": record.sequence}
    if record.sub_sequence is not None:
        entry["sub_sequence"] = record.sub_sequence
    entry |= {
        "partition_key": record.partition_key,
        "arrival": record.arrival.isoformat(),
        "data": data,
    }
    if binary is not None:
        entry["data_base64"] = binary
    text = json.dumps(entry, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, as truncated JavaScript strings carry
        text = json.dumps(entry)
    return text


def consume(
    backend: Backend,
    stream: str,
    start: Position,
    out: IO[str],
    *,
    shard: str | None = None,
    follow: bool = True,
    jsonl: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = lambda line: None,
) -> int:
    """Print every record from `start` on; without `follow`, stop once every shard is read.
    Following, say once (through `say`) that it waits, the first time it has read all there
    is. Returns how many records were printed."""
    backend.require_stream(stream)
    reader = StreamReader(backend, stream, start=start, only_shard=shard)
    show = as_json if jsonl else readable
    printed = 0
    waiting = False
    try:
        while True:
            batches = reader.poll()
            for batch in batches:
                for record in batch.records:
                    for one in _user_records(batch.shard_id, record, say):
                        out.write(show(batch.shard_id, one) + "\n")
                        printed += 1
            out.flush()
            if not follow and (reader.caught_up or reader.done):
                return printed
            if not any(batch.records for batch in batches):
                if not waiting and reader.caught_up:
                    waiting = True  # so a user watching an empty stream knows it is alive
                    shards = count(reader.shard_count, "shard")
                    say(f"waiting for records on {shards} (Ctrl-C stops)")
                sleep(reader.wait_time())
    except KeyboardInterrupt:
        return printed  # Ctrl-C is how a following consumer is meant to stop


def _user_records(shard_id: str, record: Record, say: Callable[[str], None]) -> list[Record]:
    """The user records of a KPL aggregate, or the record itself (said so if a corrupt one)."""
    try:
        return user_records(record)
    except BadAggregate as error:
        say(f"{shard_id} {record.sequence}: {error}: printed whole")
        return [record]
