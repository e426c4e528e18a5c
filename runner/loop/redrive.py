"""Redrive: what waits in the dead letter, sent through the current spec again.

Each form of the dead letter (the file, a stream, a bucket: backlog.py, which also keeps the
redrive positions and counts what waits) is handled in batches of one log (the file, a shard,
an object). Every entry of a batch is processed as `run` processes a record; then, in this
order: the records now routed are put to their sinks (with the run's Sink: PutRecords batches,
per-key order), those that fail again are written to the dead letter as new entries with their
new reason, as a run writes them, and the log's position moves past the batch. Nothing is
lost: a redrive killed at any point leaves the position before the batch, so the next one
handles the batch again. Each redrive handles only what waited when it began, so the entries
it writes again wait for the next one; it holds the run lock (lease) meanwhile, so no run
writes at the same time.

Nothing is written twice. Before the first write of a batch, its intent is kept beside the
checkpoints (a note per form; on AWS in the pipeline's DynamoDB table, fenced by the lease as
checkpoints are): the batch's log and last position; for each entry to be routed, each sink
stream and a digest of the record put there (its partition key and bytes); for each entry to
be dead-lettered again, its original record's stream, shard and sequence number; and marks of
where what it writes goes: for each of those streams, shard by shard, the last record there
before this batch; the file's size; the bucket's new object, whose key is chosen beforehand.
A redrive that finds an intent whose batch its log's position has not passed reads what was
written after the marks: a digest found there (as many times as found) is a record that
reached its sink, an original found among the new entries one that reached the dead letter.
It then handles that batch first, leaving those out (and, for a record with several sinks, the
sinks that have it), under a new intent that names them as done, so that a kill during this
recovery is recovered from the same way. An intent whose batch was passed is stale: the
position moves only after every write of the batch.

The marks of a stream are the sequence numbers this redrive's own puts returned or, for a
shard it has not written to yet, the last record there when it first wrote to that stream
(read from a LATEST position; on AWS a time on Kinesis' clock, a second early, so that record is
found by reading that second). After them come only this redrive's records, since no run
writes meanwhile: the digests compare what this redrive wrote, never the entries it redrives.
The digest is of what was put, not of the entry, because the transform may give another record
each time (`now()`, `uuid()`): the entries not written are processed anew. Only a producer
putting the very same bytes under the same key into a sink stream itself, meanwhile, could make
a record be taken as written.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runner.backends.base import SHARD_END, Backend, Lease, Record
from runner.loop.backlog import Backlog, Batch, Waiting, backlogs, reached, read_through
from runner.loop.dead_letter import DeadLetter, read_entry
from runner.loop.patience import GIVE_UP_AFTER_S, Patience
from runner.loop.reader import StreamReader
from runner.loop.sink import Sink
from runner.plural import count
from runner.records.kpl import BadAggregate, user_records
from runner.records.processor import DEAD_LETTER, DROPPED, FILTERED, Journey, Outcome
from runner.spec import Spec

BATCH_ENTRIES = 500  # entries per batch, as a PutRecords call holds 500 records


@dataclass
class RedriveCounts:
    redriven: int = 0  # entries processed
    out: Counter = field(default_factory=Counter)  # per route (stream key)
    dead_lettered: int = 0
    filtered: int = 0
    dropped: int = 0
    already: int = 0  # handled by a redrive cut short before
    not_entries: int = 0  # lines or records that hold no entry

    def line(self) -> str:
        routes = ", ".join(f"{key} {count}" for key, count in sorted(self.out.items())) or "none"
        line = (
            f"redriven {self.redriven} | out {routes} | dead-lettered {self.dead_lettered} | "
            f"filtered {self.filtered} | dropped {self.dropped}"
        )
        if self.already:
            line += f" | already redriven {self.already}"
        if self.not_entries:
            line += f" | not entries {self.not_entries}"
        return line


@dataclass
class _Pending:
    """A batch an earlier redrive was cut short in, as far as it got."""

    log: str
    to: str
    done: set[str]  # positions of the entries handled whole
    held: dict[str, set[str]]  # position -> sink streams already holding its record


def digest(partition_key: str, data: bytes) -> str:
    """What identifies a record put to a sink: its partition key and bytes."""
    key = partition_key.encode()
    return hashlib.blake2b(b"%d:%s%s" % (len(key), key, data), digest_size=8).hexdigest()


class Redrive:
    """Sends the waiting entries through the spec, batch by batch; with `show`, a dry run
    that writes nothing and calls `show(item, outcome)` for each line (outcome None: it is no
    entry, or it was redriven already)."""

    def __init__(
        self,
        spec: Spec,
        backend: Backend,
        state_dir: Path,
        report: Callable[[str], None],
        *,
        lease: Lease | None = None,
        patience: Patience | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        batch_size: int = BATCH_ENTRIES,
        show: Callable[[Waiting, Outcome | None], None] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.report = report
        self.lease = lease or Lease()
        self.patience = patience or Patience(
            give_up_after=GIVE_UP_AFTER_S,
            service=f"the {backend.name} target",
            report=report,
            clock=clock,
            sleep=sleep,
        )
        self.sleep = sleep
        self.clock = clock
        self.batch_size = batch_size
        self.show = show
        self.journey = Journey(spec.transform, spec.route, now)  # the records' clock
        routed = dict.fromkeys(case.to for case in spec.route.cases)
        self.sinks = {
            key: Sink(backend, spec.streams[key].name, sleep=sleep, patience=self.patience)
            for key in routed
        }
        self.dead_letter = DeadLetter(
            spec, backend, state_dir, report=report, patience=self.patience
        )
        file = self.dead_letter.path if self.dead_letter.file_allowed else None
        self.backlogs = backlogs(spec, backend, file, clock=clock, sleep=sleep)
        self.counts = RedriveCounts()
        self._starts: dict[str, dict[str, str]] = {}  # stream -> shard -> mark before writing

    def count(self) -> dict[str, int]:
        """How many entries wait in each form, by where; fixes what `run` handles."""
        return {backlog.where: backlog.count() for backlog in self.backlogs}

    def run(self) -> RedriveCounts:
        """Handle what `count` found waiting."""
        for backlog in self.backlogs:
            name = f"redrive:{backlog.group}"
            text = self.backend.get_note(self.spec.pipeline, name)
            pending = self._pending(backlog, text)
            noted = text is not None
            first = (pending.log, pending.to) if pending else None
            for batch in backlog.batches(self.batch_size, first):
                mine = pending if pending and batch.log == pending.log else None
                noted = self._handle(backlog, batch, mine) or noted
                pending = None if mine else pending  # once its batch is done, it is over
            if noted and self.show is None:  # the last batch is done too
                self._set_note(name, None)
        return self.counts

    def _set_note(self, name: str, text: str | None) -> None:
        self.patience.retry(lambda: self.backend.set_note(self.spec.pipeline, name, text))

    def _handle(self, backlog: Backlog, batch: Batch, pending: _Pending | None) -> bool:
        """Process, write and move past one batch; returns whether it noted an intent."""
        outgoing: dict[str, list[tuple[bytes, str]]] = {key: [] for key in self.sinks}
        plan: dict[str, list[list[str]]] = {}  # position -> [sink stream, digest] ...
        failing: dict[str, str] = {}  # position -> the original's identity
        held: dict[str, list[str]] = {}  # position -> sink streams holding it already
        done: list[str] = []
        for item in batch.items:
            if item.entry is None:
                self.counts.not_entries += 1
                if self.show:
                    self.show(item, None)
                continue
            if pending and item.position in pending.done:
                self.counts.already += 1
                done.append(item.position)
                if self.show:
                    self.show(item, None)
                continue
            already = pending.held.get(item.position, set()) if pending else set()
            outcome = self._process(item, outgoing, already)
            if outcome.kind == DEAD_LETTER:
                failing[item.position] = item.entry.identity
            elif outcome.sinks:
                outputs = [
                    [self.sinks[key].stream, digest(outcome.partition_key, outcome.payload)]
                    for key in outcome.sinks
                    if self.sinks[key].stream not in already
                ]
                if outputs:
                    plan[item.position] = outputs
            if already:
                held[item.position] = sorted(already)
        if self.show is not None:
            backlog.move(batch, store=False)
            return False
        if plan or failing:
            self._note(backlog, batch, {"done": done, "held": held, "plan": plan}, failing)
            for key, entries in outgoing.items():
                if entries:
                    self.sinks[key].put(entries)
            self.lease.check()  # the dead letter may be a local file, which Fenced does not see
            self.dead_letter.write()
        self.patience.retry(lambda: backlog.move(batch))
        return bool(plan or failing)

    def _process(self, item: Waiting, outgoing: dict, already: set[str]) -> Outcome:
        counts = self.counts
        counts.redriven += 1
        outcome = self._outcome(item.entry.record)
        if self.show:
            self.show(item, outcome)
        if outcome.kind == DEAD_LETTER:
            counts.dead_lettered += 1
            entry = item.entry
            self.dead_letter.add(outcome.reason, entry.stream, entry.shard, entry.record)
        elif outcome.kind == FILTERED:
            counts.filtered += 1
        elif outcome.kind == DROPPED:
            counts.dropped += 1
        else:
            for key in outcome.sinks:
                counts.out[key] += 1
                if self.sinks[key].stream not in already:
                    outgoing[key].append((outcome.payload, outcome.partition_key))
        return outcome

    def _outcome(self, record: Record) -> Outcome:
        """What happens to an entry's record: a corrupt KPL aggregate (dead-lettered whole by
        the run) is judged as the run judged it, not as bytes that are not UTF-8."""
        try:
            user_records(record)
        except BadAggregate as error:
            return Outcome(DEAD_LETTER, reason=str(error))
        return self.journey.process(record.data)

    # The intent of a batch, and what a redrive cut short had written

    def _note(self, backlog: Backlog, batch: Batch, intent: dict, failing: dict) -> None:
        """Keep the batch's intent, with where what it writes goes, before writing it."""
        streams = {stream for outputs in intent["plan"].values() for stream, _ in outputs}
        marks: dict = {}
        if failing:
            dead_letter = self.dead_letter
            if dead_letter.sink is not None:
                streams.add(dead_letter.sink.stream)
            if dead_letter.bucket is not None:
                marks["object"] = dead_letter.next_object()
            elif dead_letter.file_allowed:
                marks["file"] = _size(dead_letter.path)
        marks["streams"] = {stream: self._marks(stream) for stream in sorted(streams)}
        text = json.dumps(
            {"log": batch.log, "to": batch.end, **intent, "failing": failing, "marks": marks}
        )
        self._set_note(f"redrive:{backlog.group}", text)

    def _marks(self, stream: str) -> dict[str, str]:
        """Shard -> a position before every record this redrive puts into `stream` next."""
        if stream not in self._starts:
            starts = {
                shard.shard_id: (
                    self.backend.latest_iterator(stream, shard.shard_id)[1]
                    if shard.is_open
                    else SHARD_END
                )
                for shard in self.backend.list_shards(stream)
            }
            # On AWS that is a time a second early: the records put in that second (by a run
            # that just ended, or the very entries redriven) are read, to start after them.
            reader = StreamReader(self.backend, stream, checkpoints=starts, clock=self.clock)
            for batch in read_through(reader, self.sleep):
                if batch.records:
                    starts[batch.shard_id] = batch.records[-1].sequence
            self._starts[stream] = starts
        marks = dict(self._starts[stream])
        sinks = [*self.sinks.values(), self.dead_letter.sink]
        for sink in sinks:
            if sink is not None and sink.stream == stream:
                for shard_id, sequence in sink.written.items():
                    before = marks.get(shard_id, "")
                    if not before.isdigit() or int(before) < sequence:
                        marks[shard_id] = str(sequence)
        return marks

    def _pending(self, backlog: Backlog, text: str | None) -> _Pending | None:
        """The batch an earlier redrive was cut short in, with what it had written already;
        None if there is none, or its log moved past it."""
        if text is None:
            return None
        intent = json.loads(text)
        log, to = intent["log"], intent["to"]
        if reached(backlog.positions.get(log), to):
            return None
        marks = intent["marks"]
        streams = {stream for outputs in intent["plan"].values() for stream, _ in outputs}
        found = {
            stream: self._digests_since(stream, marks["streams"][stream]) for stream in streams
        }
        originals = self._dead_lettered_since(marks) if intent["failing"] else Counter()
        done = set(intent["done"])
        held = {position: set(streams) for position, streams in intent["held"].items()}
        records = entries = 0  # what the redrive cut short had written
        for position, outputs in intent["plan"].items():
            there = {stream for stream, record in outputs if _take(found[stream], record)}
            records += len(there)
            if len(there) == len(outputs):
                done.add(position)
                held.pop(position, None)
            elif there:
                held[position] = held.get(position, set()) | there
        for position, original in intent["failing"].items():
            if _take(originals, original):
                entries += 1
                done.add(position)
        self.report(
            f"the last redrive of {backlog.where} was cut short in a batch; of what it wrote "
            f"then, {count(records, 'record')} in sinks and {count(entries, 'entry', 'entries')}"
            " in the dead letter are not written again"
        )
        return _Pending(log, to, done, held)

    def _digests_since(self, stream: str, marks: dict[str, str]) -> Counter:
        reader = StreamReader(self.backend, stream, checkpoints=marks, clock=self.clock)
        return Counter(
            digest(record.partition_key, record.data)
            for batch in read_through(reader, self.sleep)
            for record in batch.records
        )

    def _dead_lettered_since(self, marks: dict) -> Counter:
        """The originals of the entries written to the dead letter since the marks."""
        lines: list[bytes] = []
        dead_letter = self.dead_letter
        if "file" in marks and dead_letter.path.exists():
            with dead_letter.path.open("rb") as file:
                file.seek(marks["file"])
                lines += file.read().splitlines()
        if "object" in marks and dead_letter.bucket is not None:
            key = marks["object"]
            if key in self.backend.list_objects(dead_letter.bucket, key):
                lines += self.backend.get_object(dead_letter.bucket, key).splitlines()
        if dead_letter.sink is not None:
            stream = dead_letter.sink.stream
            reader = StreamReader(
                self.backend, stream, checkpoints=marks["streams"][stream], clock=self.clock
            )
            lines += [r.data for batch in read_through(reader, self.sleep) for r in batch.records]
        return Counter(entry.identity for line in lines if (entry := read_entry(line)))


def _take(found: Counter, what: str) -> bool:
    """Take one `what` out of `found`, if there is one."""
    if found[what] > 0:
        found[what] -= 1
        return True
    return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
