"""Writing records to a stream: PutRecords batches within Kinesis' limits, retrying only the
entries that failed, with exponential backoff and jitter. Throttling is waited out, never dropped.

Per partition key, records land in the order they were given. PutRecords does not keep order
inside a call (an entry that fails is retried after later ones have landed), so a batch is sent
in waves holding at most one entry per key, each wave accepted whole before the next is sent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence

from runner.backends.base import Backend, BackendError, Throttled
from runner.backends.limits import MAX_BATCH_BYTES, MAX_BATCH_RECORDS, entry_size
from runner.loop.patience import Patience, backoff_cap

Entry = tuple[bytes, str]  # (data, partition key)

# PutRecords entry errors that a later attempt can fix; any other fails the run.
RETRYABLE = frozenset({"ProvisionedThroughputExceededException", "InternalFailure"})


def batches(entries: Sequence[Entry]) -> Iterator[list[Entry]]:
    """Split entries into PutRecords calls of at most 500 records and 5 MiB."""
    for group in _batch_positions(entries):
        yield [entries[i] for i in group]


def _batch_positions(entries: Sequence[Entry]) -> Iterator[list[int]]:
    """batches(), as positions in `entries`."""
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


def waves(batch: list[Entry]) -> list[list[Entry]]:
    """Split one batch into calls holding at most one entry per partition key: wave n holds
    the n-th entry of each key, in batch order. Distinct keys (the usual case) are one wave."""
    return [[batch[i] for i in wave] for wave in _wave_positions(batch)]


def _wave_positions(batch: Sequence[Entry]) -> list[list[int]]:
    """waves(), as positions in `batch`."""
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
    ) -> None:
        self.backend = backend
        self.stream = stream
        self.sleep = sleep
        self.jitter = jitter
        # How long calls that fail whole are retried; by default, for as long as they fail.
        self.patience = patience or Patience(sleep=sleep)
        self.written: dict[str, int] = {}  # shard id -> highest sequence number put there
        # shard id -> (sequence number, data) of each entry put there, in order, while a
        # delivery of the stream takes them (keep_written), so that it need not read them back
        self._kept: dict[str, list[tuple[int, bytes]]] | None = None

    def keep_written(self) -> None:
        """From now on, keep each entry put for take_written."""
        if self._kept is None:
            self._kept = {}

    def take_written(self) -> dict[str, list[tuple[int, bytes]]]:
        """Shard id -> (sequence number, data) of each entry put there since the last call,
        in the order the stream took them (rising numbers)."""
        kept, self._kept = self._kept or {}, {} if self._kept is not None else None
        return kept

    def put(self, entries: Sequence[Entry], accepted: list[bool] | None = None) -> None:
        """Return once every entry is in the stream; raises BackendError for what retrying
        cannot fix (a missing stream, a refused request). With `accepted` (one flag per entry),
        each entry's flag is set as the stream takes it, so that a caller whose put was cut
        short (an error, a stop, Lambda's deadline) knows which are in."""
        flags = accepted if accepted is not None else [False] * len(entries)
        for group in _batch_positions(entries):
            batch = [entries[i] for i in group]
            for wave in _wave_positions(batch):
                self._put_wave([group[i] for i in wave], entries, flags)

    def _put_wave(self, pending: list[int], entries: Sequence[Entry], accepted: list[bool]) -> None:
        """Put the entries at these positions, of distinct partition keys, retrying the failed
        ones until all are in."""
        attempt = 0
        since: float | None = None  # when the calls began to fail with nothing accepted
        while pending:
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
            return pending, error
        kept = self._kept
        for position, result in zip(pending, results, strict=True):
            if result.ok:
                accepted[position] = True
                sequence = int(result.sequence)
                if sequence > self.written.get(result.shard_id, -1):
                    self.written[result.shard_id] = sequence
                if kept is not None:
                    kept.setdefault(result.shard_id, []).append((sequence, entries[position][0]))
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
