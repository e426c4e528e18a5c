"""The loop: read batches from every source shard, transform, route, write, checkpoint.

At-least-once: a shard's checkpoint moves only after every record before it is in a sink or in
the dead letter, so a crash re-reads at most the batches in flight. SIGINT/SIGTERM stop reading;
what was read is written and checkpointed, every record routed is delivered, and the run exits 0.
A new version of the spec (`--watch`, see `reload`) is swapped in between rounds.

On a target whose calls wait on the network (AWS), a round hides their latency: the next round
is read while this one is written, the sinks' PutRecords calls go out at once (see `sink`), and
so do the shards' checkpoints. Between rounds the loop's threads are idle.

A `Handover` may take the records read in place of the engine's own rounds: the local run of a
spec with `lambda:` hands them to the Lambda handler as Lambda's event source mapping does.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runner.backends.base import (
    SHARD_END,
    Backend,
    BackendError,
    Lease,
    LeaseLapsed,
    PutResult,
    Record,
    StreamNotFound,
)
from runner.loop.dead_letter import DeadLetter
from runner.loop.delivery import Delivery
from runner.loop.lines import WARNING, Line, of_pipeline
from runner.loop.observer import NO_OBSERVER, Observer
from runner.loop.patience import GIVE_UP_AFTER_S, Abandoned, Patience
from runner.loop.reader import ShardBatch, StreamReader, stored_checkpoints
from runner.loop.reload import Reloads, SpecWatch, dead_letter_place, routed
from runner.loop.rounds import Counts, Rates, Round
from runner.loop.run_info import record_spec_version
from runner.loop.sink import Sink, put_all
from runner.loop.workers import Workers
from runner.records.processor import Journey
from runner.spec import Spec

STATUS_EVERY_S = 5.0
MAX_SLEEP_S = 0.5
LAPSED = "the run lease is not renewed meanwhile: nothing is written"


@dataclass(frozen=True)
class RunOptions:
    until_idle: float | None = None  # stop once nothing arrived for this many seconds
    # Stop after this many records in: a KPL aggregate counts as its user records, and is
    # taken whole, as checkpoints are at whole records.
    max_records: int | None = None
    status_every: float = STATUS_EVERY_S
    forget_old_checkpoints: bool = False  # those kept for an earlier stream of the same name
    # A call failing for this long (a lost network, a failing service) ends the run.
    give_up_after: float | None = GIVE_UP_AFTER_S


class Handover(Protocol):
    """Who takes the records a run reads in place of its own rounds (`pipeline run` plugs in
    runner.function.emulation for a spec with `lambda:`). It writes through the engine's
    backend, checkpoints with `Engine.checkpoint` only past records it handled, and adds to
    the run's counts what it handled."""

    @property
    def held(self) -> int:
        """Records read and not handed over yet (not checkpointed)."""

    def take(self, batches: list[ShardBatch], counts: Counts, *, flush: bool = False) -> int:
        """Take a round's batches and hand over what is due (all it holds when `flush`);
        returns how many records it handed over. Raises Abandoned when a stop ends a wait."""

    def due_in(self) -> float | None:
        """Seconds until records held are due, or None when none are."""

    def written(self, stream: str) -> dict[str, int]:
        """Shard id -> highest sequence number it put into `stream`."""

    def swap(self, spec: Spec) -> None:
        """Hand the next records over under a new version of the spec."""


class Engine:
    def __init__(
        self,
        spec: Spec,
        backend: Backend,
        state_dir: Path,
        options: RunOptions,
        report: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        lease: Lease | None = None,
        reloads: Reloads | None = None,  # None: the run keeps its spec, saying once if it changed
        handover: Callable[[Engine], Handover] | None = None,
        observer: Observer = NO_OBSERVER,  # told what the run does, e.g. for --metrics
    ) -> None:
        self.lease = lease or Lease()
        self.observer = observer
        # For a health check: when the last round began and ended (by the clock), and whether
        # the loop ended.
        self.round_began: float | None = None
        self.round_ended: float | None = None
        self.ended = False
        # The loop uses the backend through this, so that it writes (sinks, the dead letter,
        # deliveries, checkpoints) nothing once the run no longer holds its lease.
        backend = Fenced(backend, self.lease)
        self.spec = spec
        self.backend = backend
        self.options = options
        self.report = report
        self.clock = clock
        self.sleep = sleep
        self.journey = Journey(spec.transform, spec.route)
        self.source = spec.streams[spec.source.stream].name
        self._stopping = threading.Event()
        self.patience = Patience(
            give_up_after=options.give_up_after,
            service=f"the {backend.name} target",
            report=of_pipeline(spec.pipeline, report),
            stopping=self._stopping,
            status_every=options.status_every,
            clock=clock,
            sleep=sleep,
            note=self._lease_note,
        )
        # PutRecords calls and checkpoints at once, on a target whose calls wait on the network.
        self.writers = Workers(backend.write_workers, "sink-writer")
        self._made_sinks: dict[str, Sink] = {}  # by stream name, also those routed no more
        self.sinks = {key: self._sink(spec.streams[key].name) for key in routed(spec)}
        self.state_dir = state_dir
        self.dead_letter = self._dead_letter(spec)
        self.dead_letters = [self.dead_letter]  # the current one last
        self.watch = SpecWatch(
            spec,
            reloads,
            report,
            clock,
            delivers=not backend.delivers_firehoses,
            observer=observer,
        )
        self.deliveries = (
            []
            if backend.delivers_firehoses
            else [
                Delivery(
                    spec,
                    f,
                    backend,
                    clock=clock,
                    forget=options.forget_old_checkpoints,
                    sink=self._sink(spec.streams[f.stream].name),
                )
                for f in spec.firehoses.values()
            ]
        )
        self.reader = StreamReader(
            backend,
            self.source,
            start=spec.source.start,
            checkpoints=stored_checkpoints(
                backend,
                spec.pipeline,
                self.source,
                who=f"pipeline {spec.pipeline}",
                start=str(spec.source.start),
                forget=options.forget_old_checkpoints,
                report=of_pipeline(spec.pipeline, report),
            ),
            clock=clock,
            on_start=self.checkpoint,  # where a shard was first read, so a restart goes on
            observer=observer,
        )
        self.counts = Counts()
        self.handover = handover(self) if handover else None
        # The next round's read, made while this round is written where reads wait on the
        # network; what it read is taken by the next round, or read again by the next run.
        self._reads_ahead = backend.read_workers > 1 and self.handover is None
        self._ahead_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._ahead: concurrent.futures.Future[list[ShardBatch]] | None = None

    def stop(self) -> None:
        """Ask the loop to stop after the batches in flight (those read ahead too)."""
        self._stopping.set()

    def run(self) -> Counts:
        """Run until stopped, idle for --until-idle or --max-records handled. Returns once
        the threads it started have ended, but after a stop at once (a second Ctrl-C): then
        reads still waiting on the network are left to the process's end."""
        at_once = False
        try:
            return self._run()
        except KeyboardInterrupt:
            at_once = True
            raise
        finally:
            # A read still under way in another thread (a shard's, after another's failed)
            # ends its wait for a failing service at once.
            self._stopping.set()
            self._drop_ahead()
            if self._ahead_pool is not None:
                self._ahead_pool.shutdown()
            self.reader.close(wait=not at_once)
            self.writers.close()
            self.ended = True

    def _run(self) -> Counts:
        with _StopOnSignals(self.stop):
            first_read = None
            last_activity = next_status = self.clock()
            last_status = (next_status, self.counts.copy())  # for the rates
            abandoned = False
            # After a stop, what was read ahead is still written and checkpointed.
            while not self._stopping.is_set() or self._ahead is not None:
                try:
                    self.lease.check()  # also when idle: a run that lost its lease stops
                except LeaseLapsed:
                    pass  # it may be renewed yet: reading goes on, writing waits (_Fenced)
                polled = self.round_began = self.clock()
                handled = self._round()
                if handled is None:
                    abandoned = True
                    break
                self._round_ended()
                if new := self.watch.poll():  # between rounds: after this one's checkpoints
                    self._swap(new)
                if handled:
                    first_read = polled if first_read is None else first_read
                    self.counts.busy_s = self.clock() - first_read
                moved = handled + sum(delivery.step() for delivery in self.deliveries)
                now = self.clock()
                if moved:
                    last_activity = now
                if now >= next_status:
                    self.counts.lag_ms = self.reader.lag_ms
                    self.report(self._status(*last_status, now))
                    last_status = (now, self.counts.copy())
                    next_status = now + self.options.status_every
                if self._limit_reached():
                    break
                if self.options.until_idle is not None and not moved:
                    # Idle means caught up too: a throttled or lagging shard is not idle.
                    if now - last_activity >= self.options.until_idle and self.reader.caught_up:
                        break
                if not moved:
                    self.sleep(min(self.reader.wait_time(), MAX_SLEEP_S, self._due_in()))
            if self.handover is not None and not abandoned:
                self._round(flush=True)  # what it holds is read: handed over before the end
            self._finish_deliveries()
        self.counts.lag_ms = self.reader.lag_ms
        self._round_ended()
        return self.counts

    def _status(self, since: float, before: Counts, now: float) -> Line:
        """The status line: the counts, and the rates since the last one."""
        rates = Rates.between(before, self.counts, now - since)
        return Line(
            f"[{self.spec.pipeline}] {self.counts.line(rates)}",
            event="status",
            **self.counts.fields(rates),
        )

    def _round_ended(self) -> None:
        self.round_ended = self.clock()
        self.observer.round_ended(self.counts, self.spec, self.reader.lag_by_shard())

    def _sink(self, stream: str) -> Sink:
        if stream not in self._made_sinks:
            self._made_sinks[stream] = Sink(
                self.backend,
                stream,
                sleep=self.sleep,
                patience=self.patience,
                observer=self.observer,
            )
        return self._made_sinks[stream]

    def _dead_letter(self, spec: Spec) -> DeadLetter:
        return DeadLetter(
            spec,
            self.backend,
            self.state_dir,
            report=of_pipeline(spec.pipeline, self.report),
            patience=self.patience,
        )

    def _swap(self, new: Spec) -> None:
        """Handle the next rounds with a new version of the spec (one with the same source,
        start and deliveries: `watch` refuses others)."""
        self.journey = Journey(new.transform, new.route)
        self.sinks = {key: self._sink(new.streams[key].name) for key in routed(new)}
        if dead_letter_place(new) != dead_letter_place(self.spec):
            self.dead_letter = self._dead_letter(new)
            self.dead_letters.append(self.dead_letter)
        self.dead_letter.spec_version = new.version
        self.spec = new
        if self.handover is not None:
            self.handover.swap(new)
        record_spec_version(self.backend, new)  # `pipeline status` shows the version in use

    def _lease_note(self, error: BackendError) -> str | None:
        """What a status line about `error` adds: that the lease lapsed, unless it says so."""
        return None if self.lease.held() or isinstance(error, LeaseLapsed) else LAPSED

    def _limit_reached(self) -> bool:
        limit = self.options.max_records
        return limit is not None and self.counts.records_in + self._held() >= limit

    def _held(self) -> int:
        return self.handover.held if self.handover else 0

    def _due_in(self) -> float:
        due = self.handover.due_in() if self.handover else None
        return MAX_SLEEP_S if due is None else due

    def _round(self, *, flush: bool = False) -> int | None:
        """Read, write and checkpoint once (with `flush`, only hand over what the handover
        holds); returns records handled, or None when a stop ended a wait for a failing
        service (what was read is read again by the next run). A round that fails adds
        nothing to the counts, which say only what was written; a handover adds to them
        only what it checkpointed."""
        counted = self.counts.copy()
        try:
            if flush:
                return self.handover.take([], self.counts, flush=True)
            batches = self._next_batches()
            if failing := self.reader.failing:
                self.patience.failing(*failing)
            return self._handle(batches)
        except Abandoned as error:
            self._drop_ahead()
            if self.handover is None:
                self.counts = counted  # as if the round, not checkpointed, was never read
            self.report(
                Line(
                    f"[{self.spec.pipeline}] stopped while waiting for {self.patience.service}: "
                    f"{error}: what was read since the last checkpoint is read again by the "
                    "next run",
                    WARNING,
                )
            )
            return None
        except BaseException:
            self._drop_ahead()
            if self.handover is None:  # e.g. a full disk: its records are read again next run
                self.counts = counted
            raise

    def _next_batches(self) -> list[ShardBatch]:
        """The batches read ahead during the last round (raising what that read raised); the
        reader's next ones when none were, unless a stop was asked."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            batches = ahead.result()
            if batches or self._stopping.is_set():
                return batches
        return self._poll()

    def _read_ahead(self) -> None:
        """Begin reading the next round, unless a stop was asked."""
        if self._stopping.is_set():
            return
        if self._ahead_pool is None:
            self._ahead_pool = concurrent.futures.ThreadPoolExecutor(1, "read-ahead")
        self._ahead = self._ahead_pool.submit(self._poll)

    def _settle_ahead(self) -> None:
        """Wait for the read ahead to end: between rounds, the reader is the loop's alone."""
        if self._ahead is not None:
            concurrent.futures.wait([self._ahead])

    def _drop_ahead(self) -> None:
        """Forget the read ahead, once it has ended: nothing of it is checkpointed."""
        self._settle_ahead()
        self._ahead = None

    def _poll(self) -> list[ShardBatch]:
        """The reader's next batches (it may also record where a shard starts: a write)."""
        try:
            return self.reader.poll()
        except StreamNotFound as error:  # it existed when the run started
            raise StreamNotFound(
                f"stream {self.source} was deleted while the run read it"
            ) from error

    def _handle(self, batches: list[ShardBatch]) -> int:
        """Process, write and checkpoint one round of batches; returns records handled (with
        a handover: records taken in or handed over)."""
        if self.handover is not None:
            batches = self._within_limit(batches)
            read = sum(len(batch.records) for batch in batches)
            return read + self.handover.take(batches, self.counts)
        if not batches:
            return 0
        taken = Round(self.journey, self.sinks, self.dead_letter, self.source, self.counts)
        checkpoints: list[tuple[str, str]] = []
        handled = 0
        for batch in batches:
            records = self._take_batch(batch, taken)
            handled += len(records)
            if batch.finished and len(records) == len(batch.records):
                checkpoints.append((batch.shard_id, SHARD_END))
            elif records:
                checkpoints.append((batch.shard_id, records[-1].sequence))
        limit = self.options.max_records
        if self._reads_ahead and handled and (limit is None or self.counts.records_in < limit):
            self._read_ahead()
        sinks = self.sinks
        put_all(
            ((sinks[key], entries) for key, entries in taken.outgoing.items() if entries),
            self.writers,
        )
        # The dead letter may be a local file, which Fenced does not see.
        self.patience.retry(self.lease.check)
        self.dead_letter.write()
        self.writers.all(
            [functools.partial(self._checkpoint_call, shard, seq) for shard, seq in checkpoints]
        )
        self._settle_ahead()
        return handled

    def _checkpoint_call(self, shard_id: str, sequence: str, stop: threading.Event) -> None:
        self.checkpoint(shard_id, sequence)

    def checkpoint(self, shard_id: str, sequence: str) -> None:
        """Write a checkpoint, waiting out throttling or a passing fault of the store."""
        started = self.clock()
        self.patience.retry(
            lambda: self.backend.set_checkpoint(self.spec.pipeline, self.source, shard_id, sequence)
        )
        self.observer.checkpoint_written(self.clock() - started)

    def _take_batch(self, batch: ShardBatch, taken: Round) -> list[Record]:
        """Take a batch's records up to --max-records; returns those taken. A KPL aggregate
        counts as its user records, and is taken whole."""
        limit, counts = self.options.max_records, self.counts
        before = counts.records_in
        taken_records = batch.records
        for number, record in enumerate(batch.records):
            if limit is not None and counts.records_in >= limit:
                taken_records = batch.records[:number]
                break
            taken.take(batch.shard_id, record)
        counts.received[batch.shard_id] += counts.records_in - before  # once a batch
        return taken_records

    def _within_limit(self, batches: list[ShardBatch]) -> list[ShardBatch]:
        """The batches cut to --max-records (counting what the handover holds): a shard
        cut short is not finished."""
        limit = self.options.max_records
        if limit is None:
            return batches
        left = max(0, limit - self.counts.records_in - self._held())
        cut = []
        for batch in batches:
            records = batch.records[:left]
            left -= len(records)
            finished = batch.finished and len(records) == len(batch.records)
            cut.append(dataclasses.replace(batch, records=records, finished=finished))
        return cut

    def _finish_deliveries(self) -> None:
        """Flush every delivery once it has read what this run wrote to its stream (not what
        others keep writing there), so a run stopped by a signal has delivered all it routed.
        Only a second signal (KeyboardInterrupt) cuts this short."""
        for delivery in self.deliveries:
            written = self._written_to(delivery.stream)
            while not delivery.reader.has_read(written):
                if not delivery.step():
                    self.sleep(min(delivery.reader.wait_time(), MAX_SLEEP_S))
            delivery.flush()

    def _written_to(self, stream: str) -> dict[str, int]:
        """Shard id -> highest sequence number this run put into `stream`."""
        sink = self._made_sinks.get(stream)
        written = dict(sink.written) if sink else {}
        if self.handover is not None:
            for shard_id, sequence in self.handover.written(stream).items():
                written[shard_id] = max(sequence, written.get(shard_id, -1))
        return written


class Fenced:
    """The backend as the loop writes to it: each write first checks the run's lease, so that a
    run writes and checkpoints nothing while it cannot be sure of it (LeaseLapsed, which the
    callers wait out), and nothing more once it lost it."""

    def __init__(self, backend: Backend, lease: Lease) -> None:
        self._backend = backend
        self._lease = lease

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)  # reads go straight through

    def put_records(self, stream: str, entries: Sequence[tuple[bytes, str]]) -> list[PutResult]:
        self._lease.check()
        return self._backend.put_records(stream, entries)

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        self._lease.check()
        self._backend.put_object(bucket, key, body)

    def set_checkpoint(self, pipeline: str, stream: str, shard_id: str, sequence: str) -> None:
        self._lease.check()
        self._backend.set_checkpoint(pipeline, stream, shard_id, sequence)


class _StopOnSignals:
    """SIGINT/SIGTERM ask for a clean stop; a second one stops at once."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self.stop = stop
        self.previous: dict[int, object] = {}
        self.asked = False

    def __enter__(self) -> _StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        self.stop()

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
