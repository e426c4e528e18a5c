"""One round of source records on their way: each through the journey (decode, transform,
route, encode), into the entries for each sink, in source order, or into the dead letter.

`pipeline run`'s engine and the Lambda handler both take records through a `Round`, so that a
record meets the same code wherever it runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from runner.backends.base import Record
from runner.loop.dead_letter import DeadLetter
from runner.records.kpl import BadAggregate, user_records
from runner.records.processor import DEAD_LETTER, DROPPED, FILTERED, Journey

Entry = tuple[bytes, str]  # (data, partition key), as a sink takes it


@dataclass
class Counts:
    records_in: int = 0
    out: Counter = field(default_factory=Counter)  # per route (stream key)
    dead_lettered: int = 0
    filtered: int = 0
    dropped: int = 0
    # Gone past unhandled, as Lambda's event source mapping does once its retries are spent
    # (the local run of a `lambda:` spec); said only when some were.
    discarded: int = 0
    lag_ms: int = 0
    busy_s: float = 0.0  # from the first record read to the last handled

    def add(self, more: Counts) -> None:
        """Add the records `more` counts (not its lag or time)."""
        self.records_in += more.records_in
        self.out.update(more.out)
        self.dead_lettered += more.dead_lettered
        self.filtered += more.filtered
        self.dropped += more.dropped
        self.discarded += more.discarded

    def line(self) -> str:
        routes = ", ".join(f"{key} {count}" for key, count in sorted(self.out.items())) or "none"
        discarded = f" | discarded {self.discarded}" if self.discarded else ""
        rate = f" | took {self.busy_s:.2f} s" if self.busy_s else ""
        return (
            f"in {self.records_in} | out {routes} | dead-lettered {self.dead_lettered} | "
            f"filtered {self.filtered} | dropped {self.dropped}{discarded} | "
            f"lag {self.lag_ms} ms{rate}"
        )


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

    def take(self, shard_id: str, record: Record, origin: int = 0) -> None:
        """Decide where one source record goes, or each user record of a KPL aggregate on its
        own (a corrupt aggregate goes whole to the dead letter); never raises for anything in
        it."""
        try:
            records = user_records(record)
        except BadAggregate as error:
            self.reject(shard_id, record, str(error), origin)
            return
        for one in records:
            self._place(shard_id, one, origin)

    def _place(self, shard_id: str, record: Record, origin: int) -> None:
        counts = self.counts
        counts.records_in += 1
        outcome = self.journey.process(record.data)
        if outcome.kind == DEAD_LETTER:
            self.reject(shard_id, record, outcome.reason, origin, counted=True)
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
        self, shard_id: str, record: Record, reason: str, origin: int = 0, *, counted: bool = False
    ) -> None:
        """Send a record to the dead letter for `reason` without processing it."""
        if not counted:
            self.counts.records_in += 1
        self.counts.dead_lettered += 1
        self.dead_letter.add(reason, self.source, shard_id, record)
        self.dead_origins.append(origin)
