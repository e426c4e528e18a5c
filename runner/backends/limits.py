"""The Kinesis limits the engine and producers batch against, and the checks every backend
makes of a request the way Kinesis makes them."""

from __future__ import annotations

from collections.abc import Sequence

from runner.backends.base.errors import BackendError

MAX_RECORD_BYTES = 1024 * 1024  # data plus partition key
MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 5 * 1024 * 1024
MAX_PARTITION_KEY_CHARS = 256
MAX_GET_RECORDS = 10_000
MAX_GET_BYTES = 10 * 1024 * 1024  # in one GetRecords answer


def entry_size(data: bytes, key: str) -> int:
    """What a record counts against the limits above: its data and its partition key."""
    return len(data) + len(key.encode())


def check_shard_count(stream: str, shards: int) -> None:
    if shards < 1:
        raise BackendError(f"stream '{stream}' needs at least 1 shard, got {shards}")


def check_get_records_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_GET_RECORDS:
        raise BackendError(f"get_records limit must be 1 to {MAX_GET_RECORDS}, got {limit}")


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
        size = entry_size(data, key)
        if size > MAX_RECORD_BYTES:
            raise BackendError(
                f"{where}: entry {i} is {size} bytes with its partition key, "
                f"at most {MAX_RECORD_BYTES} allowed"
            )
        total += size
    if total > MAX_BATCH_BYTES:
        raise BackendError(f"{where}: {total} bytes in one call, at most {MAX_BATCH_BYTES} allowed")
