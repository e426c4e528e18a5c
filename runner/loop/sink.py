"""Writing records to a stream: PutRecords batches within Kinesis' limits, retrying only the
entries that failed, with exponential backoff and jitter. Throttling is waited out, never dropped.

Per partition key, records land in the order they were given. PutRecords does not keep order
inside a call (an entry that fails is retried after later ones have landed), so a batch is sent
in waves holding at most one entry per key, each wave accepted whole before the next is sent.

On a target whose calls wait on the network, a round's entries are put in lanes at once, one
lane per shard of the stream (by the hash of the partition key, as Kinesis routes them), each
lane in order as above: all the entries of a key are in one lane, so a key's entries are never
in two calls at once, and a shard's write limit slows its own lane only.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from runner.backends.base import Backend, BackendError, PutResult, Throttled
from runner.backends.limits import MAX_BATCH_BYTES, MAX_BATCH_RECORDS, entry_size
from runner.loop.observer import FAILED, NO_OBSERVER, OK, THROTTLED, Observer
from runner.loop.patience import Patience, backoff_cap
from runner.loop.workers import Call, Stopped, Workers

Entry = tuple[bytes, str]  # (data, partition key)

# PutRecords entry errors that a later attempt can fix; any other fails the run.
THROTTLING = "ProvisionedThroughputExceededException"
RETRYABLE = frozenset({THROTTLING, "InternalFailure"})
SHARDS_KEPT_S = 30.0  # the lanes follow a reshard of the stream this soon


def put_all(puts: Iterable[tuple[Sink, Sequence[Entry]]], workers: Workers) -> None:
    """Put each sink's entries: one sink after the other where `workers` has one worker, else
    the lanes of every sink at once."""
    if workers.count <= 1:
        for sink, entries in puts:
            sink.put(entries)
        return
    workers.all([lane for sink, entries in puts for lane in sink.lanes(entries)])


def batch_positions(entries: Sequence[Entry]) -> Iterator[list[int]]:
    """Split entries into PutRecords calls of at most 500 records and 5 MiB, as positions in
    `entries`."""
    batch: list[int] = []
    size = 0
    for position, (data, key) in enumerate(entries):
        entry_bytes = entry_size(data, key)
        if batch and (len(batch) == MAX_BATCH_RECORDS or size + entry_bytes > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(position)
        size += entry_bytes
    if batch:
        yield batch


def wave_positions(batch: Sequence[Entry]) -> list[list[int]]:
    """Split one batch into calls holding at most one entry per partition key, as positions in
    `batch`: wave n holds the n-th entry of each key, in batch order. Distinct keys (the usual
    case) are one wave."""
    if len({key for _, key in batch}) == len(batch):
        return [list(range(len(batch)))]
    found: list[list[int]] = []
    seen: dict[str, int] = {}  # partition key -> its entries so far
    for position, (_, key) in enumerate(batch):
        wave = seen.get(key, 0)
        seen[key] = wave + 1
        if wave == len(found):
            found.append([])
        found[wave].append(position)
    return found


class Sink:
    """Puts records into one stream until every one of them is accepted."""

    def __init__(
        self,
        backend: Backend,
        stream: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        patience: Patience | None = None,
        observer: Observer = NO_OBSERVER,  # told each call's results
    ) -> None:
        self.backend = backend
        self.stream = stream
        self.sleep = sleep
        self.jitter = jitter
        # How long calls that fail whole are retried; by default, for as long as they fail.
        self.patience = patience or Patience(sleep=sleep)
        self.observer = observer
        self.written: dict[str, int] = {}  # shard id -> highest sequence number put there
        self._written_lock = threading.Lock()  # lanes put at once
        self._shard_starts: list[int] = []  # the open shards' starting hash keys, sorted
        self._shards_until = 0.0  # by the patience's clock
        # shard id -> (sequence number, data) of each entry put there, in order, while a
        # delivery of the stream takes them (keep_written), so that it need not read them back
        self._kept: dict[str, list[tuple[int, bytes]]] | None = None

    def keep_written(self) -> None:
        """From now on, keep each entry put for take_written."""
        if self._kept is None:
            self._kept = {}

    def take_written(self) -> dict[str, list[tuple[int, bytes]]]:
        """Shard id -> (sequence number, data) of each entry put there since the last call,
        in the order the stream took them (rising numbers: one lane puts a shard's entries)."""
        with self._written_lock:
            kept, self._kept = self._kept or {}, {} if self._kept is not None else None
        return kept

    def put(
        self,
        entries: Sequence[Entry],
        accepted: list[bool] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Return once every entry is in the stream; raises BackendError for what retrying
        cannot fix (a missing stream, a refused request). With `accepted` (one flag per entry),
        each entry's flag is set as the stream takes it, so that a caller whose put was cut
        short (an error, a stop, Lambda's deadline) knows which are in. Once `stop` is set,
        raises Stopped before its next call."""
        flags = accepted if accepted is not None else [False] * len(entries)
        for group in batch_positions(entries):
            batch = [entries[i] for i in group]
            for wave in wave_positions(batch):
                self._put_wave([group[i] for i in wave], entries, flags, stop)

    def lanes(self, entries: Sequence[Entry]) -> list[Call]:
        """The put of `entries` as calls that may be made at once: one for each shard their
        partition keys hash to, putting that shard's entries in order."""
        starts = self._starts()
        if len(starts) <= 1:
            return [functools.partial(self._lane, entries)] if entries else []
        by_shard: list[list[Entry]] = [[] for _ in starts]
        for entry in entries:
            by_shard[bisect.bisect_right(starts, _hash_key(entry[1])) - 1].append(entry)
        return [functools.partial(self._lane, lane) for lane in by_shard if lane]

    def _lane(self, entries: Sequence[Entry], stop: threading.Event) -> None:
        self.put(entries, stop=stop)

    def _starts(self) -> list[int]:
        """The starting hash keys of the stream's open shards, listed again every
        SHARDS_KEPT_S: a stale list only makes two lanes write to one shard."""
        now = self.patience.clock()
        if now >= self._shards_until:
            shards = self.patience.retry(lambda: self.backend.list_shards(self.stream))
            self._shard_starts = sorted(s.starting_hash_key for s in shards if s.is_open)
            self._shards_until = now + SHARDS_KEPT_S
        return self._shard_starts

    def _put_wave(
        self,
        pending: list[int],
        entries: Sequence[Entry],
        accepted: list[bool],
        stop: threading.Event | None = None,
    ) -> None:
        """Put the entries at these positions, of distinct partition keys, retrying the failed
        ones until all are in."""
        attempt = 0
        since: float | None = None  # when the calls began to fail with nothing accepted
        while pending:
            if stop is not None and stop.is_set():
                raise Stopped(f"stream {self.stream}: stopped with entries left to put")
            if attempt:
                self.observer.put_retried(self.stream)
            started = self.patience.clock()
            failed, failure = self._try_put(pending, entries, accepted)
            if not failed:
                return
            wait = self._backoff(attempt)
            attempt += 1
            if len(failed) < len(pending):  # some went in: a busy stream, not a failing one
                since = None
                self.patience.check_stop(failure)
                self.sleep(wait)
            else:
                since = started if since is None else since
                self.patience.wait(failure, since, wait)
            pending = failed

    def _try_put(
        self, pending: list[int], entries: Sequence[Entry], accepted: list[bool]
    ) -> tuple[list[int], Throttled | None]:
        """One PutRecords call: the positions of the entries that failed, and why (None when
        none did)."""
        try:
            results = self.backend.put_records(self.stream, [entries[p] for p in pending])
        except Throttled as error:
            self.observer.put_records(self.stream, {THROTTLED: len(pending)})
            return pending, error
        self.observer.put_records(self.stream, _by_result(results))
        with self._written_lock:
            kept = self._kept
            for position, result in zip(pending, results, strict=True):
                if result.ok:
                    accepted[position] = True
                    sequence = int(result.sequence)
                    if sequence > self.written.get(result.shard_id, -1):
                        self.written[result.shard_id] = sequence
                    if kept is not None:
                        found = (sequence, entries[position][0])
                        kept.setdefault(result.shard_id, []).append(found)
        failed = [p for p, result in zip(pending, results, strict=True) if not result.ok]
        refused = [r for r in results if not r.ok and r.error_code not in RETRYABLE]
        if refused:
            # Retrying cannot fix these (e.g. KMS access denied): fail the run
            # before any checkpoint moves, so nothing is lost.
            raise BackendError(
                f"stream {self.stream} refused {len(refused)} records: "
                f"{refused[0].error_code}: {refused[0].error_message}"
            )
        if not failed:
            return [], None
        first = next(r for r in results if not r.ok)
        return failed, Throttled(
            f"stream '{self.stream}': PutRecords entries failed "
            f"({first.error_code}: {first.error_message})"
        )

    def _backoff(self, attempt: int) -> float:
        # Jitter: a random wait between half and all of an exponentially growing cap.
        return backoff_cap(attempt) * (0.5 + self.jitter() / 2)


def _hash_key(partition_key: str) -> int:
    """The 128-bit hash Kinesis routes a partition key by: the MD5 of its UTF-8 bytes."""
    digest = hashlib.md5(partition_key.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest, "big")


def _by_result(results: Sequence[PutResult]) -> dict[str, int]:
    """A PutRecords call's entries by result: put, throttled, failed otherwise."""
    failed = [result.error_code for result in results if not result.ok]
    throttled = failed.count(THROTTLING)
    return {OK: len(results) - len(failed), THROTTLED: throttled, FAILED: len(failed) - throttled}
