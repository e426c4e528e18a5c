"""Lambda's Kinesis event source mapping, on the local target: `pipeline run` of a spec with
`lambda:` reads, leases, checkpoints, delivers and reports as any run does, but hands each
shard's records to the Lambda handler (`FunctionCore`, writing through the run's fenced
backend) in events shaped as Lambda's, so that the code Lambda runs is the code a local run
and the tests exercise.

What the mapping does, as Lambda's developer guide documents it ("Using Lambda with Kinesis",
"Configuring partial batch response", "Retain discarded batch records"):

- An event holds at most `batch_size` records, of one shard. A shard's records wait until there
  are that many, or until `batching_window_s` has passed since the first of them arrived; none
  of them is checkpointed meanwhile. When the run ends, what waits is handed over first.
- After an invocation, the shard's checkpoint moves past the records handled: all of them, or
  those before the first record the handler names in `batchItemFailures`
  (ReportBatchItemFailures), which the retry starts at.
- A function error (the handler raises) fails the whole batch; with `bisect_on_error` the batch
  is split in two halves tried one after the other, and a split is no retry ("splitting
  batches doesn't consume the retry quota").
- Retries wait with backoff (the run's Patience: Ctrl-C ends the wait at once, and nothing from
  the failed record on is checkpointed; `--give-up-after` bounds one batch's failing). After
  `max_retries` retries, or for records older than `max_record_age_s`, Lambda discards the
  failed records and goes on past them: so does the run, saying so and counting them.

Shards are handed over one after another, so one shard's retries hold up the others here
(Lambda runs shards at once). `parallelization` is emulated as 1: Lambda then runs that many
batches of a shard at once, keeping each partition key's records in order, which handling them
one after another keeps too.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from runner.backends.base import SHARD_END, Backend, BackendError, Record
from runner.function.handler import FunctionCore
from runner.loop.dead_letter import DeadLetter
from runner.loop.engine import Engine
from runner.loop.lines import INFO, WARNING, Line
from runner.loop.patience import backoff_cap
from runner.loop.reader import ShardBatch
from runner.loop.rounds import Counts
from runner.plural import count
from runner.spec import Function, Spec

# How an event reaches the handler: FunctionCore.handle, or a test's spy around it.
Invoke = Callable[[FunctionCore, dict, int], dict]


def running_line(function: Function) -> str:
    """What a run of a `lambda:` spec says it does, e.g. "running Lambda function shop-etl's
    handler locally: batches of 100, window 1 s, up to 5 retries, bisect on error"."""
    retries = (
        "retries until the records expire"
        if function.max_retries == -1
        else f"up to {count(function.max_retries, 'retry', 'retries')}"
    )
    bisect = ", bisect on error" if function.bisect_on_error else ""
    return (
        f"running Lambda function {function.name}'s handler locally: batches of "
        f"{function.batch_size}, window {function.batching_window_s} s, {retries}{bisect}"
    )


def kinesis_event(
    records: list[Record], shard_id: str, *, region: str, stream_arn: str, role_arn: str
) -> dict:
    """The event Lambda invokes a function with for these records of one shard, as AWS
    documents the Kinesis event."""
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": record.partition_key,
                    "sequenceNumber": record.sequence,
                    "data": base64.b64encode(record.data).decode("ascii"),
                    "approximateArrivalTimestamp": round(record.arrival.timestamp(), 3),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard_id}:{record.sequence}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": role_arn,
                "awsRegion": region,
                "eventSourceARN": stream_arn,
            }
            for record in records
        ]
    }


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass
class _Held:
    """A shard's records read and not handed over yet, with when each arrived (by the run's
    clock)."""

    records: list[Record] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    finished: bool = False  # the shard is closed and was read to its end with these


@dataclass(frozen=True)
class _Outcome:
    """What became of an invocation: how many of its records, from the first, were handled,
    and why the others failed."""

    handled: int
    failure: str = ""
    raised: bool = False  # a function error, which bisect_on_error splits


class Emulation:
    """The event source mapping of a run's spec, as the run's engine's Handover."""

    def __init__(
        self,
        engine: Engine,
        *,
        invoke: Invoke = FunctionCore.handle,
        now: Callable[[], datetime.datetime] = _utc_now,  # for the records' age
    ) -> None:
        self.engine = engine
        self.invoke = invoke
        self.now = now
        backend = engine.backend
        self.stream_arn = _arn(backend, "kinesis", backend.region, f"stream/{engine.source}")
        self.cores: list[FunctionCore] = []  # one per version of the spec
        self.swap(engine.spec)
        self._held: dict[str, _Held] = {}  # by shard id

    def swap(self, spec: Spec) -> None:
        """Hand the next records to the handler of a new version of the spec."""
        engine = self.engine
        self.spec = spec
        self.function = spec.function
        self.role_arn = _arn(engine.backend, "iam", "", f"role/{spec.function.role}")
        self.core = FunctionCore(
            spec,
            engine.backend,
            clock=engine.clock,
            sleep=engine.sleep,
            report=engine.report,
            state_dir=engine.state_dir,
            stopping=engine.patience.stopping,
            log_counts=False,  # the run's status lines say them
            observer=engine.observer,
        )
        self.cores.append(self.core)

    @property
    def held(self) -> int:
        return sum(len(held.records) for held in self._held.values())

    @property
    def dead_letters(self) -> list[DeadLetter]:
        return [core.dead_letter for core in self.cores]

    def written(self, stream: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for core in self.cores:
            for sink in core.sinks.values():
                if sink.stream == stream:
                    for shard_id, sequence in sink.written.items():
                        found[shard_id] = max(sequence, found.get(shard_id, -1))
        return found

    def due_in(self) -> float | None:
        window, now = self.function.batching_window_s, self.engine.clock()
        waits = [held.arrived[0] + window - now for held in self._held.values() if held.records]
        return max(0.0, min(waits)) if waits else None

    def take(self, batches: list[ShardBatch], counts: Counts, *, flush: bool = False) -> int:
        now = self.engine.clock()
        for batch in batches:
            held = self._held.setdefault(batch.shard_id, _Held())
            held.records += batch.records
            held.arrived += [now] * len(batch.records)
            held.finished = batch.finished
        handed = 0
        for shard_id, held in list(self._held.items()):
            while held.records and (flush or self._due(held)):
                batch = held.records[: self.function.batch_size]
                self._deliver(shard_id, batch, counts)
                del held.records[: len(batch)], held.arrived[: len(batch)]
                handed += len(batch)
            if not held.records:
                if held.finished:
                    self.engine.checkpoint(shard_id, SHARD_END)
                del self._held[shard_id]
        return handed

    def _due(self, held: _Held) -> bool:
        function = self.function
        return (
            len(held.records) >= function.batch_size
            or self.engine.clock() - held.arrived[0] >= function.batching_window_s
        )

    def _deliver(self, shard_id: str, records: list[Record], counts: Counts) -> None:
        """Invoke the handler with `records` until each one is handled or discarded,
        checkpointing after each invocation past what it handled."""
        function, patience = self.function, self.engine.patience
        # The parts still to invoke with, in order, each with its retries so far.
        pending: list[tuple[list[Record], int]] = [(records, 0)]
        since: float | None = None  # when the part in hand began to fail
        while pending:
            part, retries = pending.pop(0)
            patience.retry(self.engine.lease.check)  # a run that lost its lease stops here
            started = self.engine.clock()
            outcome = self._invoke(shard_id, part)
            if outcome.handled:
                self.engine.checkpoint(shard_id, part[outcome.handled - 1].sequence)
                counts.add(self.core.last, shard_id)
            rest = part[outcome.handled :]
            if not rest:
                since = None
                continue
            patience.retry(self.engine.lease.check)
            failing = BackendError(f"{shard_id}: {outcome.failure}")
            patience.check_stop(failing)  # a stopped run retries, splits and discards nothing
            since = started if since is None else since
            expired = self._expired(rest)
            if expired:
                limit = f"older than {function.max_record_age_s} s (max_record_age_s)"
                self._discard(shard_id, rest[:expired], limit, outcome.failure, counts)
                rest = rest[expired:]
                if not rest:
                    continue
            if outcome.raised and function.bisect_on_error and len(rest) > 1:
                half = (len(rest) + 1) // 2
                pending[:0] = [(rest[:half], retries), (rest[half:], retries)]
                self._say(
                    f"{shard_id}: {outcome.failure} on {_records(rest)}: split in two "
                    "(bisect_on_error)"
                )
                continue
            if retries == function.max_retries:
                spent = f"after {count(retries, 'retry', 'retries')} (max_retries)"
                self._discard(shard_id, rest, spent, outcome.failure, counts)
                continue
            wait = backoff_cap(retries)
            of = f" of {function.max_retries}" if function.max_retries != -1 else ""
            self._say(
                f"{shard_id}: {outcome.failure}; retry {retries + 1}{of} from record "
                f"{rest[0].sequence} in {wait:g} s",
                WARNING,
            )
            patience.wait(failing, since, wait)
            pending.insert(0, (rest, retries + 1))

    def _invoke(self, shard_id: str, records: list[Record]) -> _Outcome:
        event = kinesis_event(
            records,
            shard_id,
            region=self.engine.backend.region,
            stream_arn=self.stream_arn,
            role_arn=self.role_arn,
        )
        try:
            answer = self.invoke(self.core, event, self.function.timeout_s * 1000)
        except Exception as error:  # whatever a function raises is a function error to Lambda
            return _Outcome(0, f"the handler raised {type(error).__name__}: {error}", raised=True)
        return _answered(answer, records)

    def _expired(self, records: list[Record]) -> int:
        """How many of `records`, from the first, are older than max_record_age_s."""
        limit = self.function.max_record_age_s
        if limit == -1:
            return 0
        oldest = self.now() - datetime.timedelta(seconds=limit)
        expired = 0
        while expired < len(records) and records[expired].arrival < oldest:
            expired += 1
        return expired

    def _discard(
        self, shard_id: str, records: list[Record], why: str, failure: str, counts: Counts
    ) -> None:
        """Go on past `records`, as Lambda does once their retries are spent, saying so."""
        self.engine.checkpoint(shard_id, records[-1].sequence)
        counts.add(Counts(records_in=len(records), discarded=len(records)), shard_id)
        self._say(
            f"{shard_id}: Lambda would discard {_records(records)} {why}: {failure}; "
            f"the run goes on past {'them' if len(records) > 1 else 'it'}",
            WARNING,
        )

    def _say(self, line: str, level: str = INFO) -> None:
        self.engine.report(Line(f"[{self.spec.pipeline}] {line}", level))


def _arn(backend: Backend, service: str, region: str, resource: str) -> str:
    return f"arn:{backend.partition}:{service}:{region}:{backend.account_id}:{resource}"


def _records(records: list[Record]) -> str:
    """'record 7', or '3 records (7 to 9)'."""
    if len(records) == 1:
        return f"record {records[0].sequence}"
    return f"{count(len(records), 'record')} ({records[0].sequence} to {records[-1].sequence})"


def _answered(answer: object, records: list[Record]) -> _Outcome:
    """The outcome of an invocation that returned `answer`: Lambda checkpoints before the
    lowest sequence number its batchItemFailures name, and takes a failure it cannot place in
    the batch for a failure of the whole batch."""
    failures = answer.get("batchItemFailures") if isinstance(answer, dict) else None
    if not failures:  # none, null or empty: a success
        return _Outcome(len(records))
    positions = {record.sequence: position for position, record in enumerate(records)}
    named = [
        item.get("itemIdentifier") if isinstance(item, dict) else None
        for item in (failures if isinstance(failures, list) else [failures])
    ]
    unknown = [name for name in named if name not in positions]
    if unknown:
        return _Outcome(
            0,
            f"the handler's batchItemFailures name {unknown[0]!r}, not a record "
            "of the batch: the whole batch failed",
        )
    first = min(positions[name] for name in named)
    return _Outcome(first, f"the handler reported record {records[first].sequence} failed")
