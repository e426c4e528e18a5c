"""The Lambda function: each invocation is one batch of one shard's records, which the event
source mapping hands over, and which this takes through the same `Round`, sinks and dead
letter as `pipeline run`.

A bad record never fails the batch: it goes to the dead letter and the batch goes on. A write
that still fails when the invocation's time is nearly up is reported as a batch item failure
naming the first Kinesis record not wholly written (`ReportBatchItemFailures`): Lambda keeps its
checkpoint before that record and retries from it (bisecting there when asked), so nothing is
lost. What comes after that record is not written, so that a retry duplicates as little as
possible.

Lambda's entry point is `handle`; the packaged spec and the AWS backend are loaded once per
cold start. `FunctionCore` is the same handler over any backend: the local target's emulation
of the event source mapping drives it (runner.function.emulation), and so do the tests.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import dataclasses
import datetime
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.backends.base import Backend, BackendError, Record
from runner.loop.dead_letter import DeadLetter
from runner.loop.lines import WARNING, Line, after
from runner.loop.observer import NO_OBSERVER, Observer
from runner.loop.patience import Abandoned, Patience
from runner.loop.rounds import Counts, Round
from runner.loop.sink import Sink
from runner.plural import count
from runner.records.processor import Journey
from runner.spec import Spec

# The function's environment variable holding the version of the spec file it runs.
SPEC_VERSION = "PIPELINE_SPEC_VERSION"

# The class of a dead letter's reason for a record of an event that cannot be read as one.
BAD_EVENT = "bad_event"

# Writes are retried until this close to the invocation's deadline (at most this share of its
# time), so that the batch can still be answered with what failed.
MARGIN_S = 5.0
MARGIN_SHARE = 0.2


class Deadline:
    """A stop request that is set once the clock passes `at` (the invocation's), or once
    `stopping` is (a local run's Ctrl-C): Patience then ends its waits."""

    def __init__(self, clock: Callable[[], float], stopping: threading.Event | None = None) -> None:
        self.at = 0.0
        self.clock = clock
        self.stopping = stopping

    def stopped(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    def is_set(self) -> bool:
        return self.clock() >= self.at or self.stopped()


class FunctionCore:
    """The handler of one pipeline over a backend."""

    def __init__(
        self,
        spec: Spec,
        backend: Backend,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        report: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
        state_dir: Path | None = None,  # for a file dead letter, which only the local target has
        stopping: threading.Event | None = None,  # a local run's stop: ends a write's waits
        log_counts: bool = True,  # each invocation's counts (a local run's status says them)
        observer: Observer = NO_OBSERVER,  # told its sinks' PutRecords results (a local run's)
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.clock = clock
        self.sleep = sleep
        self.report = report
        self.log_counts = log_counts
        self.state_dir = state_dir or Path(tempfile.gettempdir())
        self.journey = Journey(spec.transform, spec.route)
        self.source = spec.streams[spec.source.stream].name
        self.routes = list(dict.fromkeys(case.to for case in spec.route.cases))
        # Waits end at each invocation's deadline, which handle() sets.
        self.deadline = Deadline(clock, stopping)
        patience = Patience(
            service=f"the {backend.name} target",
            report=self._say,
            stopping=self.deadline,  # type: ignore[arg-type]  # is_set() is all it asks
            clock=clock,
            sleep=sleep,
        )
        # Kept over invocations: what they wrote adds up (the sinks' `written`, the dead
        # letter's count), as a local run's deliveries and summary need.
        self.sinks = {
            key: Sink(
                backend, spec.streams[key].name, sleep=sleep, patience=patience, observer=observer
            )
            for key in self.routes
        }
        self.dead_letter = DeadLetter(
            spec, backend, self.state_dir, report=self._say, patience=patience
        )
        self.last = Counts()  # of the last invocation: the records it handled, not retried
        self.counts = Counts()  # the same over every invocation of this core

    def handle(self, event: dict, remaining_ms: int) -> dict:
        """Take one event's records; returns Lambda's partial batch response."""
        seconds = remaining_ms / 1000
        self.deadline.at = self.clock() + seconds - min(MARGIN_S, seconds * MARGIN_SHARE)
        self.dead_letter.keep_first(0)  # anything an invocation that raised left unwritten
        counts = Counts()
        taken = Round(self.journey, self.sinks, self.dead_letter, self.source, counts, origins=True)
        records = event.get("Records") if isinstance(event, dict) else None
        sequences: list[str] = []
        before: list[Counts] = []  # the counts before each record, to tell what a retry redoes
        for origin, item in enumerate(records if isinstance(records, list) else []):
            shard_id, record, problem = _event_record(item)
            sequences.append(record.sequence)
            before.append(_totals(counts))
            if problem:
                taken.reject(shard_id, record, problem, BAD_EVENT, origin)
            else:
                taken.take(shard_id, record, origin)
        failed = self._write(taken)
        self.last = counts if failed is None else _before(before[failed], taken, failed)
        self.counts.add(self.last)
        if failed is None:
            if self.log_counts:
                self._say(counts.line())
            return {"batchItemFailures": []}
        self._say(
            f"in {len(sequences)} | written: the {count(failed, 'record')} before record "
            f"{sequences[failed]}, which Lambda retries from",
            WARNING,
        )
        return {"batchItemFailures": [{"itemIdentifier": sequences[failed]}]}

    def _write(self, taken: Round) -> int | None:
        """Write the round, each sink then the dead letter, stopping at the first record not
        wholly written; returns its origin, or None when all went in."""
        sinks, dead_letter = self.sinks, self.dead_letter
        failed: int | None = None
        for key, entries in taken.outgoing.items():
            origins = taken.origins[key]
            if failed is not None:  # what comes after a failed record is written on retry
                entries = entries[: bisect.bisect_left(origins, failed)]
            if not entries:
                continue
            accepted = [False] * len(entries)
            try:
                sinks[key].put(entries, accepted)
            except (BackendError, Abandoned) as error:
                first = origins[accepted.index(False)]
                failed = first if failed is None else min(failed, first)
                self._say(f"stream {sinks[key].stream}: {self._why(error)}", WARNING)
        dead = taken.dead_origins
        if failed is not None:
            dead_letter.keep_first(bisect.bisect_left(dead, failed))
            dead = dead[: bisect.bisect_left(dead, failed)]
        try:
            dead_letter.write()
        except (BackendError, Abandoned) as error:
            failed = dead[0] if failed is None else min(failed, dead[0])
            self._say(f"dead letter {dead_letter.where()}: {self._why(error)}", WARNING)
        return failed

    def _say(self, line: str, level: str | None = None) -> None:
        """Say a line (of a level, when given), as one of the pipeline."""
        self.report(after(f"[{self.spec.pipeline}] ", Line(line, level) if level else line))

    def _why(self, error: Exception) -> str:
        if isinstance(error, Abandoned) and self.deadline.stopped():
            return f"still failing when the run was stopped: {error}"
        if isinstance(error, Abandoned):
            return f"still failing when the invocation's time was nearly up: {error}"
        return str(error)


def _totals(counts: Counts) -> Counts:
    """The counts but those per route and per class of dead letter reason (which the round's
    origins tell)."""
    return Counts(
        records_in=counts.records_in,
        dead_lettered=counts.dead_lettered,
        filtered=counts.filtered,
        dropped=counts.dropped,
    )


def _before(totals: Counts, taken: Round, failed: int) -> Counts:
    """The counts of the records before origin `failed`, whose counts but per route were
    `totals` when it came: those written, which a retry from `failed` does not redo."""
    for key, origins in taken.origins.items():
        if written := bisect.bisect_left(origins, failed):
            totals.out[key] = written
    totals.dead_causes.update(taken.dead_causes[: bisect.bisect_left(taken.dead_origins, failed)])
    return totals


def _event_record(item: Any) -> tuple[str, Record, str | None]:
    """(shard id, record, problem) of one record of a Kinesis event: the problem, when the
    event's record cannot be read as one, is what the dead letter says of it."""
    item = item if isinstance(item, dict) else {}
    kinesis = item.get("kinesis") if isinstance(item.get("kinesis"), dict) else {}
    shard_id = str(item.get("eventID", "")).partition(":")[0]
    arrival = kinesis.get("approximateArrivalTimestamp")
    try:
        when = datetime.datetime.fromtimestamp(float(arrival), datetime.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        when = datetime.datetime.now(datetime.timezone.utc)
    data = kinesis.get("data")
    problem = None
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
    except (binascii.Error, ValueError) as error:
        raw = None
        problem = f"the event's data is not base64: {error}"
    if raw is None:
        problem = problem or "the event's record has no data"
        raw = str(data).encode("utf-8", "replace")
    sequence = str(kinesis.get("sequenceNumber", ""))
    record = Record(
        sequence=sequence,
        # Kinesis gives every record one; a dead-letter stream needs one to take it.
        partition_key=str(kinesis.get("partitionKey") or sequence or "-"),
        data=raw,
        arrival=when,
    )
    return shard_id, record, problem


_CORE: FunctionCore | None = None


def handle(event: dict, context: Any) -> dict:
    """AWS Lambda's entry point (`runner.function.handler.handle`)."""
    global _CORE
    if _CORE is None:
        _CORE = _cold_start()
    return _CORE.handle(event, context.get_remaining_time_in_millis())


def _cold_start() -> FunctionCore:
    """The packaged spec, loaded once, over the AWS backend of its region. Its version, which
    dead-letter entries carry, is the spec file's, given by the function's configuration."""
    from runner.backends.aws import AwsBackend
    from runner.function.packaged import load_packaged

    spec = load_packaged()
    if os.environ.get(SPEC_VERSION):
        spec = dataclasses.replace(spec, version=os.environ[SPEC_VERSION])
    return FunctionCore(spec, AwsBackend(spec.region))
