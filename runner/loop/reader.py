"""Reading every shard of a stream the way Kinesis wants it read.

Parents are read to their end before their children; each shard is asked at most five times a
second, less often while it is empty; an expired iterator is renewed after the last record
handed out; throttling slows the shard down. The caller decides what a checkpoint is: it passes
the checkpoints to start from and records progress itself; the reader only tells it, through
`on_start`, where it began reading a shard that had none, before handing out any of its records.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from runner.backends.base import (
    SHARD_END,
    Backend,
    BackendError,
    EarlierStream,
    IteratorExpired,
    Record,
    Shard,
    Throttled,
    is_start_mark,
    parse_start_mark,
    start_mark,
)
from runner.backends.limits import MAX_GET_RECORDS
from runner.loop.observer import NO_OBSERVER, Observer
from runner.plural import count
from runner.spec.position import Position

MIN_CALL_INTERVAL_S = 0.2  # GetRecords: at most 5 calls per second per shard
EMPTY_INTERVAL_S = 1.0  # an empty shard is asked again after this long
MAX_THROTTLE_WAIT_S = 10.0
SHARD_REFRESH_S = 30.0  # look for new shards (a reshard) this often
FORGET_OPTION = "--forget-old-checkpoints"  # of `pipeline run`


def stored_checkpoints(
    backend: Backend,
    owner: str,
    stream: str,
    *,
    who: str,
    start: str,
    forget: bool,
    report: Callable[[str], None] = lambda line: None,
) -> dict[str, str]:
    """The checkpoints `owner` keeps for `stream`. Those kept for an earlier stream of that
    name (deleted and created again since) are refused with what to do, or deleted when
    `forget` says so, and `report`ed: they would skip or misplace the new stream's records."""
    try:
        return backend.get_checkpoints(owner, stream)
    except EarlierStream as error:
        if not forget:
            raise BackendError(
                f"checkpoints of {who} are for {error.earlier}, not the one there now: "
                f"run with {FORGET_OPTION} to delete them and start at {start}"
            ) from None
    forgotten = backend.forget_earlier_checkpoints(owner, stream)
    report(f"forgot the checkpoints of {count(forgotten, 'shard')} of an earlier stream {stream}")
    return backend.get_checkpoints(owner, stream)


@dataclass
class ShardBatch:
    """What one GetRecords call gave for one shard."""

    shard_id: str
    records: list[Record]
    finished: bool  # the shard is closed and was read to its end with this batch
    millis_behind: int


@dataclass
class _ShardState:
    shard: Shard
    iterator: str | None = None
    opened: bool = False  # it had an iterator once
    last_sequence: str | None = None  # of the last record handed out
    next_call: float = 0.0
    throttle_wait: float = 0.0
    start: str | None = None  # the checkpoint the shard was started from, or its start mark
    finished: bool = False
    at_end: bool = False  # the last answer was empty and nothing is behind
    millis_behind: int = 0
    failure: Throttled | None = None  # of the calls failing since failing_since, the last
    failing_since: float = 0.0


@dataclass
class StreamReader:
    backend: Backend
    stream: str
    start: Position = field(default_factory=Position)
    checkpoints: dict[str, str] = field(default_factory=dict)
    only_shard: str | None = None
    limit: int = MAX_GET_RECORDS
    clock: Callable[[], float] = time.monotonic
    # Called with (shard id, checkpoint) when a shard without checkpoint is first read, before
    # any of its records is handed out: the caller stores it, so a restart goes on from there.
    on_start: Callable[[str, str], None] | None = None
    observer: Observer = NO_OBSERVER  # told of throttled calls

    def __post_init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None  # for targets that read shards in parallel
        self._shards: dict[str, _ShardState] = {}
        # Shards read to their end, by this reader or before (a SHARD_END checkpoint).
        self._followed = {shard for shard, seq in self.checkpoints.items() if seq == SHARD_END}
        self._skipped: set[str] = set()  # closed before reading began: never read (LATEST)
        self._next_refresh = 0.0
        self._refresh_failure: tuple[Throttled, float] | None = None  # and since when
        self._try_refresh(self.clock())

    # Reading
    def poll(self) -> list[ShardBatch]:
        """One GetRecords call on every shard that may be asked now; [] when none may."""
        now = self.clock()
        if now >= self._next_refresh:
            self._try_refresh(now)
        ready = [s for s in self._shards.values() if not s.finished and s.next_call <= now]
        if len(ready) > 1 and self.backend.read_workers > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.backend.read_workers, "shard-reader")
            answers = list(self._pool.map(lambda state: self._read(state, now), ready))
        else:
            answers = [self._read(state, now) for state in ready]
        batches = [batch for batch in answers if batch is not None]
        if any(batch.finished for batch in batches):
            self._try_refresh(now)  # children of a finished parent may start now
        return batches

    def close(self, *, wait: bool = True) -> None:
        """Let the threads reading shards at once go, once their reads under way have ended
        (without `wait`, at once: those reads end on their own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None

    @property
    def failing(self) -> tuple[Throttled, float] | None:
        """The last error of the calls that have been failing the longest (a shard's reads or
        the shard listing), and since when; None when no call is failing."""
        failures = [(s.failure, s.failing_since) for s in self._shards.values() if s.failure]
        if self._refresh_failure is not None:
            failures.append(self._refresh_failure)
        return min(failures, key=lambda failure: failure[1], default=None)

    def wait_time(self) -> float:
        """Seconds until some shard may be asked again."""
        waiting = [s.next_call for s in self._shards.values() if not s.finished]
        if not waiting:
            return EMPTY_INTERVAL_S
        return max(0.0, min(waiting) - self.clock())

    @property
    def lag_ms(self) -> int:
        return max((s.millis_behind for s in self._shards.values()), default=0)

    def lag_by_shard(self) -> dict[str, int]:
        """How far behind the newest record each shard read now was at its last read (ms)."""
        return {shard_id: s.millis_behind for shard_id, s in self._shards.items() if not s.finished}

    def not_open(self) -> str | None:
        """Why not every shard to read has had an iterator yet (e.g. "shard X has no iterator
        yet"), or None when each has."""
        shards = list(self._shards.items())  # at once: a health check asks from its thread
        if not shards and not self._followed:
            return f"the shards of stream {self.stream} are not listed yet"
        waiting = [shard_id for shard_id, s in shards if not s.opened]
        if waiting:
            return f"{count(len(waiting), 'shard')} without an iterator yet ({', '.join(waiting)})"
        return None

    @property
    def caught_up(self) -> bool:
        """True when every shard's last answer was empty with nothing behind, or it finished,
        and the shards were listed (a shard may be waiting to start)."""
        return self._refresh_failure is None and all(
            s.finished or s.at_end for s in self._shards.values()
        )

    def has_read(self, written: dict[str, int]) -> bool:
        """Whether every record up to these sequence numbers (shard id -> sequence) was
        handed out, or its shard read to its end."""
        for shard_id, sequence in written.items():
            state = self._shards.get(shard_id)
            if state is None:
                if shard_id in self._followed:
                    continue
                return False
            if not state.finished and int(state.last_sequence or -1) < sequence:
                return False
        return True

    def handed_out(self, shard_id: str) -> int | None:
        """The sequence number of the last record of a shard handed out (or of the checkpoint
        it started from); None when there is none, or this reader does not read the shard."""
        state = self._shards.get(shard_id)
        if state is None or state.finished:
            return None
        last = state.last_sequence or state.start
        return None if last is None or is_start_mark(last) else int(last)

    def take_known(self, shard_id: str, count: int, last: int) -> bool:
        """Count as handed out the next `count` records of a shard, up to sequence number
        `last`, which the caller holds already (it wrote them), when they are all that the
        shard holds after the last record handed out; returns whether they were taken. Left
        alone, they are read as any others, e.g. when someone else wrote there meanwhile."""
        after = self.handed_out(shard_id)
        if after is None:
            return False
        try:
            behind = self.backend.behind(
                self.stream, shard_id, "AFTER_SEQUENCE_NUMBER", sequence=str(after)
            )
        except Throttled:
            return False
        if behind.records != count:  # unknown (a target that cannot count), or others' too
            return False
        state = self._shards[shard_id]
        state.last_sequence = str(last)
        state.iterator = None  # the next call starts after them
        return True

    @property
    def shard_count(self) -> int:
        """How many shards this reader reads now (finished ones left out)."""
        return sum(not state.finished for state in self._shards.values())

    @property
    def done(self) -> bool:
        """True when every shard this reader reads is closed and read to its end."""
        return bool(self._shards) and all(s.finished for s in self._shards.values())

    def _read(self, state: _ShardState, now: float) -> ShardBatch | None:
        try:
            if state.iterator is None:
                state.iterator = self._iterator_for(state)
                state.opened = True
            answer = self.backend.get_records(state.iterator, self.limit)
        except IteratorExpired:
            state.iterator = None  # renewed from the last record handed out, next call
            state.at_end = False  # not known to be caught up until it is asked again
            return None
        except Throttled as error:
            if state.iterator is not None:  # GetRecords, not GetShardIterator
                self.observer.get_records_throttled(state.shard.shard_id)
            state.failing_since = state.failing_since if state.failure else now
            state.failure = error
            state.at_end = False
            state.throttle_wait = min(
                MAX_THROTTLE_WAIT_S, max(MIN_CALL_INTERVAL_S, state.throttle_wait * 2)
            )
            state.next_call = now + state.throttle_wait
            return None
        state.throttle_wait = 0.0
        state.failure = None
        state.iterator = answer.next_iterator
        state.millis_behind = answer.millis_behind
        if answer.records:
            state.last_sequence = answer.records[-1].sequence
        state.at_end = not answer.records and answer.millis_behind == 0
        if answer.next_iterator is None:
            state.finished = True
            self._followed.add(state.shard.shard_id)
        busy = len(answer.records) >= self.limit or answer.millis_behind > 0
        state.next_call = now + (
            MIN_CALL_INTERVAL_S if busy or answer.records else EMPTY_INTERVAL_S
        )
        return ShardBatch(
            state.shard.shard_id, answer.records, state.finished, answer.millis_behind
        )

    def _iterator_for(self, state: _ShardState) -> str:
        shard_id = state.shard.shard_id
        if state.last_sequence is not None:
            return self.backend.get_shard_iterator(
                self.stream, shard_id, "AFTER_SEQUENCE_NUMBER", sequence=state.last_sequence
            )
        if state.start is None:
            iterator, start = self._first_iterator(state.shard)
            if self.on_start is not None:
                self.on_start(shard_id, start)
            state.start = start  # once stored: a failed store takes a new iterator next time
            return iterator
        if is_start_mark(state.start):
            iterator_type, sequence, timestamp = parse_start_mark(state.start)
            return self.backend.get_shard_iterator(
                self.stream, shard_id, iterator_type, sequence=sequence, timestamp=timestamp
            )
        return self.backend.get_shard_iterator(
            self.stream, shard_id, "AFTER_SEQUENCE_NUMBER", sequence=state.start
        )

    def _first_iterator(self, shard: Shard) -> tuple[str, str]:
        """An iterator where a shard without checkpoint starts, and its checkpoint."""
        start = self.start
        # A child of a shard read to its end starts at its beginning, whatever `start` is.
        if {shard.parent_shard_id, shard.adjacent_parent_shard_id} & self._followed:
            start = Position()
        if start.iterator_type == "LATEST":
            return self.backend.latest_iterator(self.stream, shard.shard_id)
        iterator = self.backend.get_shard_iterator(
            self.stream,
            shard.shard_id,
            start.iterator_type,
            sequence=start.sequence,
            timestamp=start.timestamp,
        )
        return iterator, start_mark(start.iterator_type, start.sequence, start.timestamp)

    # Shards
    def _try_refresh(self, now: float) -> None:
        try:
            self._refresh()
        except Throttled as error:
            # The shards we know go on; the listing is asked again soon.
            self._next_refresh = now + EMPTY_INTERVAL_S
            since = self._refresh_failure[1] if self._refresh_failure else now
            self._refresh_failure = (error, since)
        else:
            self._refresh_failure = None

    def _refresh(self) -> None:
        """Start every shard whose parents are read to their end."""
        self._next_refresh = self.clock() + SHARD_REFRESH_S
        shards = self.backend.list_shards(self.stream)
        if self.only_shard is not None:
            shards = [s for s in shards if s.shard_id == self.only_shard]
            if not shards:
                known = ", ".join(s.shard_id for s in self.backend.list_shards(self.stream))
                raise BackendError(
                    f"stream '{self.stream}' has no shard '{self.only_shard}' (shards: {known})"
                )
        by_id = {s.shard_id: s for s in shards}
        self._skipped = set()
        for shard in shards:  # parents before children
            if shard.shard_id in self._shards or shard.shard_id in self._followed:
                continue
            parents = [
                p for p in (shard.parent_shard_id, shard.adjacent_parent_shard_id) if p in by_id
            ]
            if self._skips(shard, parents):
                self._skipped.add(shard.shard_id)
            elif all(p in self._followed or p in self._skipped for p in parents):
                start = self.checkpoints.get(shard.shard_id)
                self._shards[shard.shard_id] = _ShardState(shard, start=start)

    def _skips(self, shard: Shard, parents: list[str]) -> bool:
        # With LATEST, nothing new will ever arrive in a shard closed before this pipeline
        # began reading it or any of its parents.
        return (
            self.start.iterator_type == "LATEST"
            and not shard.is_open
            and shard.shard_id not in self.checkpoints
            and all(p in self._skipped for p in parents)
        )
