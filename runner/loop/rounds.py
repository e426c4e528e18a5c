"""One round of source records on their way: each through the journey (decode, transform,
route, encode), into the entries for each sink, in source order, or into the dead letter.

`pipeline run`'s engine and the Lambda handler both take records through a `Round`, so that a
record meets the same code wherever it runs.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from runner.backends.base import Record
from runner.loop.dead_letter import DeadLetter
from runner.records.kpl import BadAggregate, user_records
from runner.records.processor import DEAD_LETTER, DROPPED, FILTERED, Journey

Entry = tuple[bytes, str]  # (data, partition key), as a sink takes it

# The class of a dead letter's reason (see runner.records.processor) for a corrupt KPL aggregate.
KPL_AGGREGATE = "kpl_aggregate"
# The shortest time a status line's rates are given over.
RATES_OVER_S = 1.0


@dataclass
class Counts:
    records_in: int = 0
    received: Counter = field(default_factory=Counter)  # records in per source shard
    out: Counter = field(default_factory=Counter)  # per route (stream key)
    dead_lettered: int = 0
    dead_causes: Counter = field(default_factory=Counter)  # per class of reason, e.g. not_json
    filtered: int = 0
    dropped: int = 0
    # Gone past unhandled, as Lambda's event source mapping does once its retries are spent
    # (the local run of a `lambda:` spec); said only when some were.
    discarded: int = 0
    lag_ms: int = 0
    busy_s: float = 0.0  # from the first record read to the last handled

    def add(self, more: Counts, shard_id: str | None = None) -> None:
        """Add the records `more` counts (not its lag or time), those in as read from
        `shard_id` when given."""
        self.records_in += more.records_in
        self.received.update(more.received)
        if shard_id is not None:
            self.received[shard_id] += more.records_in
        self.out.update(more.out)
        self.dead_lettered += more.dead_lettered
        self.dead_causes.update(more.dead_causes)
        self.filtered += more.filtered
        self.dropped += more.dropped
        self.discarded += more.discarded

    def copy(self) -> Counts:
        """A copy that later counting does not change."""
        copied = dataclasses.replace(self)
        for name in ("received", "out", "dead_causes"):
            setattr(copied, name, getattr(self, name).copy())
        return copied

    def line(self, rates: Rates | None = None) -> str:
        """e.g. 'in 3 | out usa 2 | dead-lettered 1 | filtered 0 | dropped 0 | lag 0 ms',
        with the rates when given, and how long handling the records took once some were."""
        routes = ", ".join(f"{key} {count}" for key, count in sorted(self.out.items())) or "none"
        discarded = f" | discarded {self.discarded}" if self.discarded else ""
        rated = f" | {rates}" if rates else ""
        took = ""
        if self.busy_s:
            took = f" | took {self.busy_s:.2f} s from the first record to the last"
        return (
            f"in {self.records_in} | out {routes} | dead-lettered {self.dead_lettered} | "
            f"filtered {self.filtered} | dropped {self.dropped}{discarded} | "
            f"lag {self.lag_ms} ms{rated}{took}"
        )

    def fields(self, rates: Rates | None = None) -> dict[str, object]:
        """What line() says, as JSON fields."""
        found: dict[str, object] = {
            "in": self.records_in,
            "out": dict(sorted(self.out.items())),
            "dead_lettered": self.dead_lettered,
            "filtered": self.filtered,
            "dropped": self.dropped,
            "discarded": self.discarded,
            "lag_ms": self.lag_ms,
            "took_s": round(self.busy_s, 3),  # what line() says "took"
        }
        if rates:
            found.update(rates.fields())
        return found

    @property
    def routed(self) -> int:
        """Records written to sinks, one for each sink a record went to."""
        return sum(self.out.values())


@dataclass(frozen=True)
class Rates:
    """Records per second in and out over the last `seconds`."""

    records_in: float
    out: float
    seconds: float

    @classmethod
    def between(cls, before: Counts, after: Counts, seconds: float) -> Rates | None:
        """The rates from the counts `before` to those `after`, `seconds` later; None over
        less than RATES_OVER_S (the first status line of a run comes after its first round),
        where a few records would make a rate of thousands a second."""
        if seconds < RATES_OVER_S:
            return None
        return cls(
            (after.records_in - before.records_in) / seconds,
            (after.routed - before.routed) / seconds,
            seconds,
        )

    def __str__(self) -> str:
        rates = f"{self.records_in:.1f} in/s, {self.out:.1f} out/s"
        return f"{rates} over the last {self.seconds:.3g} s"

    def fields(self) -> dict[str, float]:
        return {
            "in_per_s": round(self.records_in, 1),
            "out_per_s": round(self.out, 1),
            "rate_interval_s": round(self.seconds, 3),
        }


class Round:
    """The records of one round and where they go. With `origins`, each sink entry and each
    dead-lettered record also keeps the `origin` it was taken with (the index of its Kinesis
    record in a Lambda batch), so that a write cut short says from which record on it failed."""

    def __init__(
        self,
        journey: Journey,
        sinks: Mapping[str, object],  # the route's stream keys
        dead_letter: DeadLetter,
        source: str,  # the source stream's name
        counts: Counts,
        *,
        origins: bool = False,
    ) -> None:
        self.journey = journey
        self.dead_letter = dead_letter
        self.source = source
        self.counts = counts
        self.outgoing: dict[str, list[Entry]] = {key: [] for key in sinks}
        self.origins: dict[str, list[int]] | None = {key: [] for key in sinks} if origins else None
        self.dead_origins: list[int] = []  # of the records dead-lettered, in order
        self.dead_causes: list[str] = []  # the class of each one's reason, in the same order

    def take(self, shard_id: str, record: Record, origin: int = 0) -> None:
        """Decide where one source record goes, or each user record of a KPL aggregate on its
        own (a corrupt aggregate goes whole to the dead letter); never raises for anything in
        it."""
        try:
            records = user_records(record)
        except BadAggregate as error:
            self.reject(shard_id, record, str(error), KPL_AGGREGATE, origin)
            return
        for one in records:
            self._place(shard_id, one, origin)

    def _place(self, shard_id: str, record: Record, origin: int) -> None:
        counts = self.counts
        counts.records_in += 1
        outcome = self.journey.process(record.data)
        if outcome.kind == DEAD_LETTER:
            self.reject(shard_id, record, outcome.reason, outcome.cause, origin, counted=True)
        elif outcome.kind == FILTERED:
            counts.filtered += 1
        elif outcome.kind == DROPPED:
            counts.dropped += 1
        else:
            entry = (outcome.payload, outcome.partition_key)
            outgoing, origins = self.outgoing, self.origins
            for sink in outcome.sinks:
                outgoing[sink].append(entry)
                counts.out[sink] += 1
                if origins is not None:
                    origins[sink].append(origin)

    def reject(
        self,
        shard_id: str,
        record: Record,
        reason: str,
        cause: str,  # the reason's class, e.g. not_json
        origin: int = 0,
        *,
        counted: bool = False,
    ) -> None:
        """Send a record to the dead letter for `reason` without processing it."""
        counts = self.counts
        if not counted:
            counts.records_in += 1
        counts.dead_lettered += 1
        counts.dead_causes[cause] += 1
        self.dead_letter.add(reason, self.source, shard_id, record)
        self.dead_origins.append(origin)
        self.dead_causes.append(cause)
