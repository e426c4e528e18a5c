"""The embedded local backend: Kinesis semantics in one SQLite file, buckets as folders.

Streams, shards, records, checkpoints and Firehose metadata live in `<state_dir>/pipeline.db`
(WAL mode), so a producer, a runner and a consumer in separate processes can share it. A state
folder this process may not write is opened read-only: reads work, writes are refused in one
line. A failure of the disk (full, read-only) is one line naming the path and the cause.

Its `owned` table says which pipeline's apply created which stream, bucket and firehose.

Records are kept a row for the records one PutRecords call put into one shard (`puts`): one
row written instead of hundreds, and read back at once. Sequence numbers are global: each call
takes the next ones in entry order, and its row of a shard is keyed by its last record's number.
SQLite lets one writer commit at a time and AUTOINCREMENT never goes back, so numbers rise
within every shard and become visible in order: a reader polling "after sequence N" never skips
a record. A closed shard's ending_sequence is its last record's number, or starting_sequence - 1
if it never held one.
"""

from __future__ import annotations

import array
import base64
import bisect
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from runner.backends.base import (
    DEFAULT_REGION,
    LOCAL_ACCOUNT_ID,
    SHARD_END,
    TWO_RUNS,
    AlreadyExists,
    Backend,
    BackendError,
    Behind,
    EarlierStream,
    FirehoseDescription,
    IteratorExpired,
    Lease,
    PutResult,
    Record,
    RecordBatch,
    RunHolder,
    RunInfo,
    Shard,
    StateLost,
    StreamDescription,
    StreamNotFound,
    check_iterator,
    disk_errors,
    is_start_mark,
)
from runner.backends.limits import (
    MAX_BATCH_RECORDS,
    MAX_GET_BYTES,
    MAX_GET_RECORDS,
    check_batch,
    check_get_records_limit,
    check_shard_count,
)

HASH_SPACE = 2**128
ITERATOR_TTL_S = 300
TRIM_INTERVAL_S = 60
DEFAULT_RETENTION_HOURS = 24

_STREAM_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SEQUENCE = re.compile(r"[0-9]{1,18}")  # local rowids; longer ones would overflow SQLite

# Versions before `puts` kept a row per record in a table `records`: a view of that name in its
# place makes one of them that opens this state fail at once (it cannot index a view), instead
# of numbering records from 1 again where no reader here would find them.
_RECORDS_GUARD = (
    "CREATE VIEW IF NOT EXISTS records AS SELECT 'kept in puts by a newer version' AS moved"
)

# Hash keys are decimal TEXT: 128-bit values overflow SQLite integers. A stream's uid tells
# its lives apart (deleted and created again under one name); checkpoints keep the uid and the
# creation time of the life they belong to, and when they were written. `runs` holds what each
# pipeline's last run recorded for `pipeline status`.
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS streams (
    name TEXT PRIMARY KEY, status TEXT NOT NULL, retention_hours INTEGER NOT NULL,
    uid TEXT, created_ms INTEGER);
CREATE TABLE IF NOT EXISTS shards (
    stream TEXT NOT NULL, shard_id TEXT NOT NULL, number INTEGER NOT NULL,
    starting_hash TEXT NOT NULL, ending_hash TEXT NOT NULL,
    starting_sequence INTEGER NOT NULL, ending_sequence INTEGER,
    parent_shard_id TEXT, adjacent_parent_shard_id TEXT, closed_ms INTEGER,
    PRIMARY KEY (stream, shard_id));
CREATE TABLE IF NOT EXISTS puts (
    last INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, shard_id TEXT NOT NULL,
    arrival_ms INTEGER NOT NULL, first INTEGER NOT NULL, count INTEGER NOT NULL,
    sequences BLOB, keys TEXT NOT NULL, key_ends BLOB NOT NULL,
    data BLOB NOT NULL, data_ends BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS puts_by_shard ON puts (stream, shard_id, last);
CREATE INDEX IF NOT EXISTS puts_by_arrival ON puts (stream, arrival_ms);
CREATE TABLE IF NOT EXISTS checkpoints (
    pipeline TEXT NOT NULL, stream TEXT NOT NULL, shard_id TEXT NOT NULL,
    sequence TEXT NOT NULL, stream_uid TEXT, stream_created_ms INTEGER, checkpointed_ms INTEGER,
    PRIMARY KEY (pipeline, stream, shard_id));
CREATE TABLE IF NOT EXISTS firehoses (name TEXT PRIMARY KEY, settings TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owned (
    kind TEXT NOT NULL, name TEXT NOT NULL, pipeline TEXT NOT NULL, PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS runs (
    pipeline TEXT PRIMARY KEY, spec_version TEXT NOT NULL, recorded_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS notes (
    pipeline TEXT NOT NULL, name TEXT NOT NULL, text TEXT NOT NULL,
    PRIMARY KEY (pipeline, name));
"""
    + _RECORDS_GUARD
    + ";"
)


def partition_hash(partition_key: str) -> int:
    """The 128-bit hash Kinesis routes a partition key by."""
    digest = hashlib.md5(partition_key.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest, "big")


class LocalBackend(Backend):
    """Kinesis, S3 and Firehose metadata on the local disk, shareable between processes."""

    name = "local"
    delivers_firehoses = False
    runs_functions = False

    def __init__(
        self,
        state_dir: Path,
        region: str = DEFAULT_REGION,
        clock: Callable[[], float] = time.time,
        *,
        create: bool = True,
    ) -> None:
        """The state in `state_dir`, made there if missing; unless not `create` (a command that
        only reads): then a folder holding no state reads as an empty one, and none is made."""
        self.state_dir = Path(state_dir)
        self.region = region
        self._clock = clock
        self._db_path = self.state_dir / "pipeline.db"
        # One connection may serve several engine threads; sqlite3 needs them serialised.
        self._lock = threading.Lock()
        self._last_trim: dict[str, float] = {}
        # The life (uid, creation ms) of each stream whose checkpoints this backend read: the
        # one its checkpoints are written for, even if the stream is created again meanwhile.
        self._lives: dict[str, tuple[str | None, int | None]] = {}
        self._immutable = False
        if not create and not self._db_path.exists():
            self.read_only = True
            self._db = _empty_state()
            self._db_file: tuple[int, int] | None = None  # no file to lose
            return
        with disk_errors(self.state_dir, "create"):
            self.state_dir.mkdir(parents=True, exist_ok=True)
        # A state folder this process may not write is opened read-only: commands that only
        # read (consume, plan) work, and the first write says why it cannot be done.
        self.read_only = not _writable(self.state_dir, self._db_path)
        try:
            self._db = self._open_read_only() if self.read_only else self._open()
            # SQLite goes on writing to a file removed under it: remember which file it is.
            self._db_file = _identity(os.stat(self._db_path))
        except (OSError, sqlite3.Error) as e:
            if self.read_only and not self._db_path.exists():
                raise BackendError(
                    f"the state folder {self.state_dir} is read-only and holds no state "
                    f"({self._db_path} does not exist)"
                ) from e
            raise BackendError(f"cannot open local state in {self.state_dir}: {e}") from e

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self._db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        try:
            # Records are a few hundred bytes: bigger pages make writing them cheaper. Only a
            # new file takes it; one made with other pages keeps them.
            db.execute("PRAGMA page_size=16384")
            db.execute("PRAGMA journal_mode=WAL")
            # Survives a crashed process; only a power loss can drop the last commits.
            db.execute("PRAGMA synchronous=NORMAL")
            # The WAL is copied back into the database (with two fsyncs) once it holds this many
            # pages: 64 MiB, not SQLite's 16 MiB of these pages, so that happens less often.
            db.execute("PRAGMA wal_autocheckpoint=4000")
            db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA}")
            _migrate(db)
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def _open_read_only(self) -> sqlite3.Connection:
        uri = self._db_path.absolute().as_uri() + "?mode=ro"
        # In WAL mode even a reader needs the -wal and -shm files, which it cannot create in a
        # read-only folder. Without them no one is writing (the last writer removes them when
        # it closes), so the file is read as it is, unlocked; see _check_file.
        wal, shm = (Path(f"{self._db_path}{suffix}") for suffix in ("-wal", "-shm"))
        if not os.access(self.state_dir, os.W_OK) and not (wal.exists() and shm.exists()):
            uri += "&immutable=1"
            self._immutable = True
        db = sqlite3.connect(
            uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False
        )
        if _is_table(db, "records"):  # a state of a version before `puts`, not moved yet
            _read_records_as_puts(db)
        return db

    @property
    def location(self) -> str:
        return f"the local target in {self.state_dir}"

    @property
    def account_id(self) -> str:
        return LOCAL_ACCOUNT_ID

    def close(self) -> None:
        """Close the SQLite connection."""
        self._db.close()

    # Streams

    def describe_stream(self, name: str) -> StreamDescription | None:
        """The stream's status and open shard count, or None if it does not exist."""
        with self._tx() as db:
            row = db.execute(
                "SELECT status, retention_hours, (SELECT COUNT(*) FROM shards "
                "WHERE stream = streams.name AND ending_sequence IS NULL) "
                "FROM streams WHERE name = ?",
                (name,),
            ).fetchone()
        return StreamDescription(name, row[0], row[2], row[1]) if row else None

    def create_stream(self, name: str, shards: int, owner: str | None = None) -> None:
        """Create an ACTIVE stream whose shards split the hash space evenly."""
        if not _STREAM_NAME.fullmatch(name):
            raise BackendError(f"invalid stream name '{name}': use 1 to 128 of a-z A-Z 0-9 _ . -")
        check_shard_count(name, shards)
        with self._tx(write=True) as db:
            if db.execute("SELECT 1 FROM streams WHERE name = ?", (name,)).fetchone():
                raise AlreadyExists(f"stream '{name}' already exists")
            db.execute(
                "INSERT INTO streams (name, status, retention_hours, uid, created_ms) "
                "VALUES (?, 'ACTIVE', ?, ?, ?)",
                (name, DEFAULT_RETENTION_HOURS, uuid.uuid4().hex, self._now_ms()),
            )
            self._open_shards(db, name, shards, parents=[])
            _own(db, "stream", name, owner)

    def update_shard_count(self, name: str, shards: int) -> None:
        """Close every open shard and open `shards` new ones; a no-op if the count is unchanged."""
        check_shard_count(name, shards)
        with self._tx(write=True) as db:
            self._stream(db, name, active=True)
            old = [s for s in self._shards(db, name) if s.is_open]
            if len(old) == shards:
                return
            for shard in old:
                (last,) = db.execute(
                    "SELECT MAX(last) FROM puts WHERE stream = ? AND shard_id = ?",
                    (name, shard.shard_id),
                ).fetchone()
                ending = int(shard.starting_sequence) - 1 if last is None else last
                db.execute(
                    "UPDATE shards SET ending_sequence = ?, closed_ms = ? "
                    "WHERE stream = ? AND shard_id = ?",
                    (ending, self._now_ms(), name, shard.shard_id),
                )
            self._open_shards(db, name, shards, parents=old)

    def delete_stream(self, name: str) -> None:
        """Delete the stream with its shards, records and every pipeline's checkpoints."""
        with self._tx(write=True) as db:
            self._stream(db, name)
            for table in ("puts", "shards", "checkpoints"):
                db.execute(f"DELETE FROM {table} WHERE stream = ?", (name,))
            db.execute("DELETE FROM streams WHERE name = ?", (name,))
            _own(db, "stream", name, None)

    def list_shards(self, stream: str) -> list[Shard]:
        """Every retained shard, in creation order, so parents come before children."""
        with self._tx() as db:
            self._stream(db, stream)
            return self._shards(db, stream)

    # Records

    def get_shard_iterator(
        self,
        stream: str,
        shard_id: str,
        iterator_type: str,
        sequence: str | None = None,
        timestamp: datetime.datetime | None = None,
    ) -> str:
        """An opaque iterator, valid for 300 s, positioned as `iterator_type` says."""
        check_iterator(iterator_type, timestamp)
        with self._tx() as db:
            self._shard(db, stream, shard_id)
            if iterator_type == "TRIM_HORIZON":
                after = 0  # records past retention are skipped when read
            elif iterator_type == "LATEST":
                after = self._latest(db)
            elif iterator_type == "AT_TIMESTAMP":
                row = db.execute(  # the records of one put share their time
                    "SELECT first FROM puts WHERE stream = ? AND shard_id = ? "
                    "AND arrival_ms >= ? ORDER BY last LIMIT 1",
                    (stream, shard_id, int(timestamp.timestamp() * 1000)),
                ).fetchone()
                after = row[0] - 1 if row else self._next_sequence(db) - 1
            else:
                number = _parse_sequence(sequence, f"{iterator_type} on {stream}/{shard_id}")
                after = number - 1 if iterator_type == "AT_SEQUENCE_NUMBER" else number
        return self._iterator(stream, shard_id, after)

    def latest_iterator(self, stream: str, shard_id: str) -> tuple[str, str]:
        """A LATEST iterator, and the sequence number just before it as its checkpoint."""
        with self._tx() as db:
            self._shard(db, stream, shard_id)
            after = self._latest(db)
        return self._iterator(stream, shard_id, after), str(after)

    def behind(
        self,
        stream: str,
        shard_id: str,
        iterator_type: str,
        sequence: str | None = None,
        timestamp: datetime.datetime | None = None,
    ) -> Behind:
        """How many retained records of the shard come after this position."""
        iterator = self.get_shard_iterator(stream, shard_id, iterator_type, sequence, timestamp)
        _, _, after, _ = _decode_iterator(iterator)
        with self._tx() as db:
            cutoff = self._now_ms() - self._stream(db, stream) * 3_600_000
            retained = "stream = ? AND shard_id = ? AND last > ? AND arrival_ms >= ?"
            where = (stream, shard_id, after, cutoff)
            (count,) = db.execute(
                f"SELECT COALESCE(SUM(count), 0) FROM puts WHERE {retained}", where
            ).fetchone()
            # Less those of the put it is in the middle of that are not after it.
            row = db.execute(
                f"SELECT first, count, sequences FROM puts WHERE {retained} ORDER BY last LIMIT 1",
                where,
            ).fetchone()
        if row is not None and row[0] <= after:
            count -= bisect.bisect_right(_numbers(*row), after)
        return Behind(records=count)

    def get_records(self, iterator: str, limit: int = MAX_GET_RECORDS) -> RecordBatch:
        """Up to `limit` records (and about 10 MiB) after the iterator's position."""
        check_get_records_limit(limit)
        stream, shard_id, after, issued = _decode_iterator(iterator)
        if self._clock() - issued > ITERATOR_TTL_S:
            raise IteratorExpired(
                f"shard iterator for {stream}/{shard_id} is over {ITERATOR_TTL_S} s old"
            )
        with self._tx() as db:
            shard = self._shard(db, stream, shard_id)
            cutoff = self._now_ms() - self._stream(db, stream) * 3_600_000
            retained = "stream = ? AND shard_id = ? AND last > ? AND arrival_ms >= ?"
            rows = db.execute(
                f"SELECT {_PUT_READ} FROM puts WHERE {retained} ORDER BY last",
                (stream, shard_id, after, cutoff),
            )
            records: list[Record] = []
            size = last_arrival_ms = 0
            arrival = _utc(0)
            for number, key, data, arrival_ms in _stored(rows, after):
                size += len(data) + len(key.encode())  # entry_size, inline
                if len(records) == limit or (records and size > MAX_GET_BYTES):
                    break
                if arrival_ms != last_arrival_ms:  # the records of one put share their time
                    arrival = _utc(arrival_ms)
                records.append(Record(str(number), key, data, arrival))
                after, last_arrival_ms = number, arrival_ms
            newest = db.execute(
                f"SELECT arrival_ms FROM puts WHERE {retained} ORDER BY last DESC LIMIT 1",
                (stream, shard_id, after, cutoff),
            ).fetchone()
        if newest is None:
            # Caught up; a closed shard is then finished for good.
            next_iterator = self._iterator(stream, shard_id, after) if shard.is_open else None
            return RecordBatch(records, next_iterator, 0)
        behind = max(0, newest[0] - last_arrival_ms) if records else 0
        return RecordBatch(records, self._iterator(stream, shard_id, after), behind)

    def put_records(self, stream: str, entries: Sequence[tuple[bytes, str]]) -> list[PutResult]:
        """Route each (data, partition_key) entry to the open shard owning its key's hash.

        One transaction for the whole call. Raises StreamNotFound, or BackendError for a
        request Kinesis would refuse whole.
        """
        entries = list(entries)
        check_batch(stream, entries)
        arrival_ms = self._now_ms()
        with self._tx(write=True) as db:
            retention_hours = self._stream(db, stream, active=True)
            # The open shards come from one _open_shards call, so they are in hash order.
            shards = [s for s in self._shards(db, stream) if s.is_open]
            starts = [s.starting_hash_key for s in shards]
            owners = [bisect.bisect_right(starts, partition_hash(key)) - 1 for _, key in entries]
            # This transaction holds the write lock, so the entries take the next numbers in
            # turn; each shard's take one row.
            first = self._next_sequence(db)
            by_shard: dict[int, list[int]] = {}
            for position, owner in enumerate(owners):
                by_shard.setdefault(owner, []).append(position)
            db.executemany(
                f"INSERT INTO puts ({_PUT_WRITE}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    _put_row(
                        stream,
                        shards[owner].shard_id,
                        arrival_ms,
                        [entries[p] for p in positions],
                        [first + p for p in positions],
                    )
                    for owner, positions in by_shard.items()
                ],
            )
            ids = [s.shard_id for s in shards]
            results = [
                PutResult(shard_id=ids[owner], sequence=str(number))
                for number, owner in enumerate(owners, first)
            ]
            # Trimming on every write would cost a scan per batch; once a minute is plenty.
            if self._clock() - self._last_trim.get(stream, 0.0) >= TRIM_INTERVAL_S:
                self._last_trim[stream] = self._clock()
                cutoff = arrival_ms - retention_hours * 3_600_000
                # Like Kinesis, also forget shards closed for longer than the retention period.
                for table, column in (("puts", "arrival_ms"), ("shards", "closed_ms")):
                    sql = f"DELETE FROM {table} WHERE stream = ? AND {column} < ?"
                    db.execute(sql, (stream, cutoff))
        return results

    # Checkpoints

    def get_checkpoints(self, pipeline: str, stream: str) -> dict[str, str]:
        """shard id -> sequence number (or SHARD_END, or a start mark) for every checkpointed
        shard; raises EarlierStream when they belong to an earlier stream of that name."""
        with self._tx() as db:
            life = self._life(db, stream)
            rows = db.execute(
                "SELECT shard_id, sequence, stream_uid, stream_created_ms FROM checkpoints "
                "WHERE pipeline = ? AND stream = ?",
                (pipeline, stream),
            ).fetchall()
        if life[0] is not None:
            self._lives[stream] = life
            for _, _, uid, created_ms in rows:
                if uid != life[0]:
                    raise EarlierStream(stream, None if created_ms is None else _utc(created_ms))
        return {shard_id: sequence for shard_id, sequence, _, _ in rows}

    def set_checkpoint(self, pipeline: str, stream: str, shard_id: str, sequence: str) -> None:
        """Move the checkpoint forward; an older sequence, or any after SHARD_END, is ignored,
        and a start mark is written only where there is no checkpoint."""
        if sequence != SHARD_END and not is_start_mark(sequence):
            _parse_sequence(sequence, f"checkpoint of {stream}/{shard_id}")
        key = (pipeline, stream, shard_id)
        with self._tx(write=True) as db:
            row = db.execute(
                "SELECT sequence FROM checkpoints "
                "WHERE pipeline = ? AND stream = ? AND shard_id = ?",
                key,
            ).fetchone()
            if row is None or _is_later(sequence, row[0]):
                life = self._lives.get(stream) or self._life(db, stream)
                self._write_checkpoint(db, key, sequence, life)

    def forget_earlier_checkpoints(self, pipeline: str, stream: str) -> int:
        """Delete the pipeline's checkpoints kept for an earlier stream of that name; returns
        how many shards' they were."""
        with self._tx(write=True) as db:
            return db.execute(
                "DELETE FROM checkpoints WHERE pipeline = ? AND stream = ? "
                "AND stream_uid IS NOT (SELECT uid FROM streams WHERE name = ?)",
                (pipeline, stream, stream),
            ).rowcount

    def checkpoint_times(self, pipeline: str, stream: str) -> dict[str, datetime.datetime | None]:
        """shard id -> when its checkpoint was last written (None if before times were kept)."""
        with self._tx() as db:
            if "checkpointed_ms" not in _columns(db, "checkpoints"):
                return {}  # an earlier version's state, opened read-only: never migrated
            rows = db.execute(
                "SELECT shard_id, checkpointed_ms FROM checkpoints "
                "WHERE pipeline = ? AND stream = ?",
                (pipeline, stream),
            ).fetchall()
        return {shard_id: None if ms is None else _utc(ms) for shard_id, ms in rows}

    def reset_checkpoints(self, pipeline: str, stream: str, checkpoints: Mapping[str, str]) -> None:
        """Replace these shards' checkpoints, whatever they were, in one transaction."""
        for shard_id, sequence in checkpoints.items():
            if sequence != SHARD_END and not is_start_mark(sequence):
                _parse_sequence(sequence, f"checkpoint of {stream}/{shard_id}")
        with self._tx(write=True) as db:
            life = self._life(db, stream)  # the stream there now, whatever was read before
            for shard_id, sequence in checkpoints.items():
                self._write_checkpoint(db, (pipeline, stream, shard_id), sequence, life)

    def _write_checkpoint(
        self,
        db: sqlite3.Connection,
        key: tuple[str, str, str],
        sequence: str,
        life: tuple[str | None, int | None],
    ) -> None:
        db.execute(
            "INSERT OR REPLACE INTO checkpoints (pipeline, stream, shard_id, sequence, "
            "stream_uid, stream_created_ms, checkpointed_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*key, sequence, *life, self._now_ms()),
        )

    def set_run_info(self, pipeline: str, info: RunInfo) -> None:
        with self._tx(write=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO runs (pipeline, spec_version, recorded_ms) "
                "VALUES (?, ?, ?)",
                (pipeline, info.spec_version, int(info.recorded_at.timestamp() * 1000)),
            )

    def get_run_info(self, pipeline: str) -> RunInfo | None:
        with self._tx() as db:
            if not _columns(db, "runs"):
                return None  # an earlier version's state, opened read-only: never migrated
            row = db.execute(
                "SELECT spec_version, recorded_ms FROM runs WHERE pipeline = ?", (pipeline,)
            ).fetchone()
        return RunInfo(row[0], _utc(row[1])) if row else None

    def get_note(self, pipeline: str, name: str) -> str | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT text FROM notes WHERE pipeline = ? AND name = ?", (pipeline, name)
            ).fetchone()
        return row[0] if row else None

    def notes(self, pipeline: str, prefix: str) -> dict[str, str]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT name, text FROM notes WHERE pipeline = ? AND substr(name, 1, ?) = ?",
                (pipeline, len(prefix), prefix),
            ).fetchall()
        return dict(rows)

    def set_note(self, pipeline: str, name: str, text: str | None) -> None:
        with self._tx(write=True) as db:
            db.execute("DELETE FROM notes WHERE pipeline = ? AND name = ?", (pipeline, name))
            if text is not None:
                db.execute(
                    "INSERT INTO notes (pipeline, name, text) VALUES (?, ?, ?)",
                    (pipeline, name, text),
                )

    # Buckets

    def bucket_exists(self, name: str) -> bool:
        return self._bucket_dir(name).is_dir()

    def create_bucket(self, name: str, owner: str | None = None) -> None:
        path = self._bucket_dir(name)
        self.check_writable()
        with disk_errors(path, "create"):
            try:
                path.mkdir(parents=True)
            except FileExistsError:
                raise AlreadyExists(f"bucket '{name}' already exists") from None
        with self._tx(write=True) as db:
            _own(db, "bucket", name, owner)

    def delete_bucket(self, name: str) -> None:
        """Delete the bucket and every object in it."""
        path = self._bucket_dir(name, existing=True)
        self.check_writable()
        with disk_errors(path, "delete"):
            shutil.rmtree(path)
        with self._tx(write=True) as db:
            _own(db, "bucket", name, None)

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        """Write the object atomically: readers see the old file or the whole new one."""
        path = self._object_path(bucket, key)
        staging = self.state_dir / "buckets" / ".staging"  # not a valid bucket name
        self.check_writable()
        with disk_errors(path):
            staging.mkdir(exist_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=staging)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys under `prefix`, sorted."""
        root = self._bucket_dir(bucket, existing=True)
        keys = []
        for folder, _, files in os.walk(root):
            relative = Path(folder).relative_to(root)
            keys.extend(k for f in files if (k := (relative / f).as_posix()).startswith(prefix))
        return sorted(keys)

    def get_object(self, bucket: str, key: str) -> bytes:
        try:
            return self._object_path(bucket, key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BackendError(f"object '{key}' not found in bucket '{bucket}'") from None

    # Firehose delivery streams: stored metadata only, since `pipeline run` delivers them.

    def describe_firehose(self, name: str) -> FirehoseDescription | None:
        with self._tx() as db:
            row = db.execute("SELECT settings FROM firehoses WHERE name = ?", (name,)).fetchone()
        return FirehoseDescription(**json.loads(row[0])) if row else None

    def create_firehose(self, firehose: FirehoseDescription, owner: str | None = None) -> None:
        with self._tx(write=True) as db:
            if db.execute("SELECT 1 FROM firehoses WHERE name = ?", (firehose.name,)).fetchone():
                raise AlreadyExists(f"firehose '{firehose.name}' already exists")
            settings = json.dumps(dataclasses.asdict(firehose))
            db.execute(
                "INSERT INTO firehoses (name, settings) VALUES (?, ?)", (firehose.name, settings)
            )
            _own(db, "firehose", firehose.name, owner)

    def update_firehose(self, firehose: FirehoseDescription) -> None:
        with self._tx(write=True) as db:
            settings = json.dumps(dataclasses.asdict(firehose))
            sql = "UPDATE firehoses SET settings = ? WHERE name = ?"
            if db.execute(sql, (settings, firehose.name)).rowcount == 0:
                raise BackendError(f"firehose '{firehose.name}' does not exist")

    def delete_firehose(self, name: str) -> None:
        with self._tx(write=True) as db:
            if db.execute("DELETE FROM firehoses WHERE name = ?", (name,)).rowcount == 0:
                raise BackendError(f"firehose '{name}' does not exist")
            _own(db, "firehose", name, None)

    # Ownership: a row per resource created for a pipeline, gone with the resource.

    def owned(self, pipeline: str) -> list[tuple[str, str]]:
        """(kind, name) of every existing stream, bucket and firehose created for the pipeline."""
        with self._tx() as db:
            # A state of an earlier version, opened read-only, has no such table yet.
            if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'owned'").fetchone():
                return []
            rows = db.execute(
                "SELECT kind, name FROM owned WHERE pipeline = ? ORDER BY kind, name", (pipeline,)
            ).fetchall()
        # A bucket's folder may have been removed by hand, leaving its row behind.
        return [(kind, name) for kind, name in rows if kind != "bucket" or self.bucket_exists(name)]

    # Run locks: a file per pipeline, locked while a run holds it; the OS frees it if it dies.
    # While locked, it names its holder: {"host": ..., "pid": ..., "since": ISO}.

    @contextlib.contextmanager
    def running(
        self,
        pipeline: str,
        report: Callable[[str], None] = lambda line: None,
        *,
        why: str = TWO_RUNS,
    ) -> Iterator[Lease]:
        path = self._lock_path(pipeline)
        self.check_writable()
        with disk_errors(path.parent, "create"):
            path.parent.mkdir(parents=True, exist_ok=True)
        with disk_errors(path):
            lock = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(os.pread(lock, _LOCK_TEXT_MAX, 0))
                raise BackendError(
                    f"pipeline {pipeline} is already running on {self.state_dir} "
                    f"({holder.owner}); {why}"
                ) from None
            since = _utc(self._now_ms()).isoformat()
            holder_text = {"host": socket.gethostname(), "pid": os.getpid(), "since": since}
            with disk_errors(path):
                os.ftruncate(lock, 0)
                os.pwrite(lock, json.dumps(holder_text).encode(), 0)
            try:
                yield Lease()  # held while the file is locked, and the OS unlocks it at exit
            finally:
                with contextlib.suppress(OSError):  # the lock itself goes with the descriptor
                    os.ftruncate(lock, 0)
        finally:
            os.close(lock)

    def run_holder(self, pipeline: str) -> RunHolder | None:
        """The run holding the pipeline's lock file, or None. It asks the OS for a shared lock
        for a moment: granted only when no run holds the file, and let go at once."""
        path = self._lock_path(pipeline)
        with disk_errors(path, "read"):
            try:
                lock = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return None  # never run here
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _lock_holder(os.pread(lock, _LOCK_TEXT_MAX, 0))
            fcntl.flock(lock, fcntl.LOCK_UN)
            return None
        finally:
            os.close(lock)

    def _lock_path(self, pipeline: str) -> Path:
        return self.state_dir / "locks" / f"{pipeline}.lock"

    # Internals

    @contextlib.contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, where the busy timeout waits for it;
        # a deferred transaction upgrading later could fail with "database is locked".
        if write:
            self.check_writable()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise BackendError(f"local state {self._db_path}: {e}") from e
            # After COMMIT, so a removal at any moment before it is seen; checked on reads too,
            # so that a run or a consumer stops instead of reading a file no one else sees.
            self._check_file()

    def check_writable(self) -> None:
        """Refuse, in one line, to write to a state folder opened read-only."""
        if self.read_only:
            raise BackendError(
                f"the state folder {self.state_dir} is read-only: this command writes to it "
                "(commands that only read, such as consume and plan, can use it)"
            )

    def _check_file(self) -> None:
        """Raise if the database file was removed or replaced since it was opened."""
        if self._db_file is None:
            return  # an empty state read where there is none: nothing to lose
        try:
            current = _identity(os.stat(self._db_path))
        except OSError:  # removed, or the folder replaced by something else
            current = None
        if self._immutable and os.path.exists(f"{self._db_path}-wal"):
            # Someone allowed to write began to while this process reads the file unlocked.
            raise BackendError(
                f"local state {self._db_path} is being written by another process while this "
                "command reads it from a read-only folder: start the command again"
            )
        if current != self._db_file:
            raise StateLost(
                f"local state {self._db_path} was removed or replaced while this command ran; "
                "what it wrote since is lost: start the command again "
                "(after `pipeline apply SPEC` if the state is new)"
            )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _iterator(self, stream: str, shard_id: str, after: int) -> str:
        fields = {"stream": stream, "shard": shard_id, "after": after, "issued": self._clock()}
        return base64.urlsafe_b64encode(json.dumps(fields).encode()).decode()

    def _stream(self, db: sqlite3.Connection, name: str, active: bool = False) -> int:
        """The stream's retention in hours; raises StreamNotFound."""
        row = db.execute(
            "SELECT status, retention_hours FROM streams WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise StreamNotFound(f"stream '{name}' does not exist")
        if active and row[0] != "ACTIVE":
            raise BackendError(f"stream '{name}' is {row[0]}, not ACTIVE")
        return row[1]

    def _shards(self, db: sqlite3.Connection, stream: str) -> list[Shard]:
        rows = db.execute(
            "SELECT shard_id, starting_hash, ending_hash, starting_sequence, ending_sequence, "
            "parent_shard_id, adjacent_parent_shard_id FROM shards "
            "WHERE stream = ? ORDER BY number",
            (stream,),
        )
        return [
            Shard(id_, int(lo), int(hi), str(first), None if last is None else str(last), p, a)
            for id_, lo, hi, first, last, p, a in rows
        ]

    def _shard(self, db: sqlite3.Connection, stream: str, shard_id: str) -> Shard:
        self._stream(db, stream)
        for shard in self._shards(db, stream):
            if shard.shard_id == shard_id:
                return shard
        raise BackendError(f"shard '{shard_id}' does not exist in stream '{stream}'")

    def _life(self, db: sqlite3.Connection, stream: str) -> tuple[str | None, int | None]:
        """The stream's uid and creation time, or (None, None) when it does not exist."""
        row = db.execute("SELECT uid, created_ms FROM streams WHERE name = ?", (stream,))
        return row.fetchone() or (None, None)

    def _latest(self, db: sqlite3.Connection) -> int:
        """The sequence number just before LATEST: the last one given to any record."""
        return self._next_sequence(db) - 1

    def _next_sequence(self, db: sqlite3.Connection) -> int:
        # An earlier version's state read as it is keeps its counter under `records`.
        (seq,) = db.execute(
            "SELECT MAX(seq) FROM sqlite_sequence WHERE name IN ('puts', 'records')"
        ).fetchone()
        return (seq or 0) + 1

    def _open_shards(
        self, db: sqlite3.Connection, stream: str, count: int, parents: list[Shard]
    ) -> None:
        (number,) = db.execute(
            "SELECT COALESCE(MAX(number) + 1, 0) FROM shards WHERE stream = ?", (stream,)
        ).fetchone()
        first = self._next_sequence(db)

        def add(lo: int, hi: int, parent: str | None, adjacent: str | None, closed: bool) -> str:
            nonlocal number
            shard_id = f"shardId-{number:012d}"
            ending, closed_ms = (first - 1, self._now_ms()) if closed else (None, None)
            row = (stream, shard_id, number, str(lo), str(hi), first, ending, parent, adjacent)
            db.execute(
                "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, closed_ms)
            )
            number += 1
            return shard_id

        for i in range(count):
            lo, hi = i * HASH_SPACE // count, (i + 1) * HASH_SPACE // count - 1
            overlapped = [
                s.shard_id for s in parents if s.starting_hash_key <= hi and s.ending_hash_key >= lo
            ]
            parent = overlapped[0] if overlapped else None
            # Kinesis merges two shards at a time; a child over three or more parents gets a
            # chain of closed, empty shards so every parent stays in its lineage.
            for adjacent in overlapped[1:-1]:
                parent = add(lo, hi, parent, adjacent, closed=True)
            add(lo, hi, parent, overlapped[-1] if len(overlapped) > 1 else None, closed=False)

    def _bucket_dir(self, name: str, existing: bool = False) -> Path:
        if not _BUCKET_NAME.fullmatch(name) or ".." in name:
            raise BackendError(
                f"invalid bucket name '{name}': use 3 to 63 lowercase letters, digits, '.' and '-'"
            )
        path = self.state_dir / "buckets" / name
        if existing and not path.is_dir():
            raise BackendError(f"bucket '{name}' does not exist")
        return path

    def _object_path(self, bucket: str, key: str) -> Path:
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts) or "\0" in key:
            raise BackendError(
                f"object key '{key}' cannot be stored locally: it must be relative, "
                "without empty, '.' or '..' segments"
            )
        return self._bucket_dir(bucket, existing=True).joinpath(*parts)


def _empty_state() -> sqlite3.Connection:
    """A state with nothing in it, in memory: what a command that only reads finds where no
    command wrote yet."""
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    db.executescript(_SCHEMA)
    return db


def _writable(folder: Path, db: Path) -> bool:
    """Whether this process may write the state: the folder (SQLite makes its -wal and -shm
    files there) and the database file."""
    return os.access(folder, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))


# A `puts` row: the records one call put into one shard, numbered `first` to `last`, where
# `sequences` is NULL, else as it lists them (int64s); their partition keys joined in `keys` and
# their data in `data`, where each ends in `key_ends` and `data_ends` (uint32s, this machine's
# byte order).
_PUT_WRITE = (
    "last, stream, shard_id, arrival_ms, first, count, sequences, keys, key_ends, data, data_ends"
)
_PUT_READ = "first, count, sequences, keys, key_ends, data, data_ends, arrival_ms"


def _put_row(
    stream: str,
    shard_id: str,
    arrival_ms: int,
    entries: Sequence[tuple[bytes, str]],
    numbers: Sequence[int],  # the entries' sequence numbers, rising
) -> tuple:
    """The `puts` row (_PUT_WRITE) of one shard's entries."""
    data = [entry[0] for entry in entries]
    keys = [entry[1] for entry in entries]
    contiguous = numbers[-1] - numbers[0] == len(numbers) - 1
    sequences = None if contiguous else array.array("q", numbers).tobytes()
    return (
        numbers[-1],
        stream,
        shard_id,
        arrival_ms,
        numbers[0],
        len(numbers),
        sequences,
        "".join(keys),
        _ends(keys),
        b"".join(data),
        _ends(data),
    )


def _ends(parts: Sequence[str] | Sequence[bytes]) -> bytes:
    return array.array("I", itertools.accumulate(map(len, parts))).tobytes()


def _numbers(first: int, count: int, sequences: bytes | None) -> Sequence[int]:
    """The sequence numbers of a `puts` row's records, rising."""
    return range(first, first + count) if sequences is None else array.array("q", sequences)


def _stored(rows: Iterable[tuple], after: int) -> Iterator[tuple[int, str, bytes, int]]:
    """(number, partition key, data, arrival ms) of each record after `after` in `puts` rows
    (_PUT_READ) of one shard, in order."""
    for first, count, sequences, keys, key_ends, data, data_ends, arrival_ms in rows:
        key_start = data_start = 0
        for number, key_end, data_end in zip(
            _numbers(first, count, sequences),
            array.array("I", key_ends),
            array.array("I", data_ends),
        ):
            if number > after:
                yield number, keys[key_start:key_end], data[data_start:data_end], arrival_ms
            key_start, data_start = key_end, data_end


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a state file of an earlier version up to this schema, inside the open transaction:
    its records move into `puts`, its streams get a uid, and its checkpoints the life of the
    stream they were kept for and a column for when they are written (unknown for those
    written before)."""
    if _is_table(db, "records"):
        _move_records(db)
    if "checkpointed_ms" not in _columns(db, "checkpoints"):
        db.execute("ALTER TABLE checkpoints ADD COLUMN checkpointed_ms INTEGER")
    if "uid" in _columns(db, "streams"):
        return
    db.execute("ALTER TABLE streams ADD COLUMN uid TEXT")
    db.execute("ALTER TABLE streams ADD COLUMN created_ms INTEGER")  # unknown: left empty
    db.execute("UPDATE streams SET uid = lower(hex(randomblob(16)))")
    db.execute("ALTER TABLE checkpoints ADD COLUMN stream_uid TEXT")
    db.execute("ALTER TABLE checkpoints ADD COLUMN stream_created_ms INTEGER")
    db.execute(
        "UPDATE checkpoints SET stream_uid = "
        "(SELECT uid FROM streams WHERE name = checkpoints.stream)"
    )


def _move_records(db: sqlite3.Connection) -> None:
    """The records of the version before `puts` (a row each) into it, with the numbers they
    had: a shard's records that arrived at the same time (those of one put) as one row. Numbers
    go on from where that version left them."""
    rows = db.execute(
        "SELECT stream, shard_id, arrival_ms, sequence, partition_key, CAST(data AS BLOB) "
        "FROM records ORDER BY stream, shard_id, sequence"
    )
    insert = f"INSERT INTO puts ({_PUT_WRITE}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    for (stream, shard_id, arrival_ms), put in itertools.groupby(rows, lambda row: row[:3]):
        while chunk := list(itertools.islice(put, MAX_BATCH_RECORDS)):
            entries = [(data, key) for *_, key, data in chunk]
            numbers = [row[3] for row in chunk]
            db.execute(insert, _put_row(stream, shard_id, arrival_ms, entries, numbers))
    # Numbers never go back: the higher of the two counters goes on.
    (seq,) = db.execute(
        "SELECT MAX(seq) FROM sqlite_sequence WHERE name IN ('puts', 'records')"
    ).fetchone()
    db.execute("DROP TABLE records")
    db.execute("DELETE FROM sqlite_sequence WHERE name = 'puts'")
    if seq is not None:
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('puts', ?)", (seq,))
    db.execute(_RECORDS_GUARD)


def _read_records_as_puts(db: sqlite3.Connection) -> None:
    """Read the records of a version before `puts` that this process may not move (it may
    not write the state) through a view of `puts`' shape, each as a put of its own."""
    db.create_function("one_end", 1, lambda part: _ends([part]), deterministic=True)
    db.execute(
        "CREATE TEMP VIEW puts AS SELECT sequence AS last, stream, shard_id, arrival_ms, "
        "sequence AS first, 1 AS count, NULL AS sequences, partition_key AS keys, "
        "one_end(partition_key) AS key_ends, CAST(data AS BLOB) AS data, "
        "one_end(CAST(data AS BLOB)) AS data_ends FROM records"
    )


def _is_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT type FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    return row is not None and row[0] == "table"


def _own(db: sqlite3.Connection, kind: str, name: str, owner: str | None) -> None:
    """Record that the resource just created is `owner`'s, or, without one (created by hand,
    or deleted), that it is no pipeline's."""
    db.execute("DELETE FROM owned WHERE kind = ? AND name = ?", (kind, name))
    if owner is not None:
        db.execute("INSERT INTO owned (kind, name, pipeline) VALUES (?, ?, ?)", (kind, name, owner))


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    """The columns of a table; none if it does not exist."""
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


_LOCK_TEXT_MAX = 1000  # bytes of a lock file read: far more than its holder's JSON


def _lock_holder(text: bytes) -> RunHolder:
    """Who holds a lock, from what its file says (empty while its holder is writing it)."""
    try:
        fields = json.loads(text)
        host, pid = str(fields["host"]), int(fields["pid"])
        since = datetime.datetime.fromisoformat(fields["since"])
    except (ValueError, KeyError, TypeError):
        # An earlier version wrote "pid N"; a holder that just took the lock, nothing yet.
        return RunHolder("lock", text.decode(errors="replace").strip() or "another process")
    return RunHolder("lock", f"{host} pid {pid}", host=host, pid=pid, since=since)


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _is_later(sequence: str, than: str) -> bool:
    if than == SHARD_END or is_start_mark(sequence):
        return False
    return sequence == SHARD_END or is_start_mark(than) or int(sequence) > int(than)


def _parse_sequence(sequence: str | None, where: str) -> int:
    if not isinstance(sequence, str) or not _SEQUENCE.fullmatch(sequence):
        raise BackendError(f"{where}: '{sequence}' is not a sequence number")
    return int(sequence)


def _decode_iterator(iterator: str) -> tuple[str, str, int, float]:
    try:
        fields = json.loads(base64.urlsafe_b64decode(iterator.encode()))
        stream, shard_id, after = fields["stream"], fields["shard"], fields["after"]
        if not (isinstance(stream, str) and isinstance(shard_id, str) and isinstance(after, int)):
            raise TypeError
        return stream, shard_id, after, float(fields["issued"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BackendError(
            "invalid shard iterator: it was not issued by the local backend"
        ) from None


def _utc(millis: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(millis / 1000, tz=datetime.timezone.utc)
