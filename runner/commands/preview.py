"""`pipeline preview`: what a spec does to JSON records, with no stream at all."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import IO

from runner.plural import count
from runner.records.processor import DEAD_LETTER, DROPPED, FILTERED, Journey
from runner.spec import Spec, SpecError


def preview(
    spec: Spec,
    lines: Iterable[bytes],
    out: IO[str],
    *,
    jsonl: bool = False,
    clock: Callable[[], float] = time.time,
) -> int:
    """Run every non-blank line through the spec and describe its fate, naming each by its
    line number as `pipeline produce` does; `clock` (seconds since 1970) gives now(). Returns 0."""
    if spec.route is None:
        raise SpecError([f"{spec.path}: has no route, so there is nothing to preview"])
    journey = Journey(spec.transform, spec.route, clock)
    counts: Counter[str] = Counter()
    records = 0
    for number, line in enumerate(lines, start=1):
        data = line.rstrip(b"\r\n")
        if not data.strip():
            continue
        records += 1
        outcome = journey.process(data)
        if outcome.kind == DEAD_LETTER:
            counts["dead-lettered"] += 1
            fate = {"dead_letter": outcome.reason}
            text = f"line {number}: dead letter: {outcome.reason}"
        elif outcome.kind == DROPPED:
            counts["dropped"] += 1
            fate = {"dropped": outcome.reason}
            text = f"line {number}: dropped: {outcome.reason}"
        elif outcome.kind == FILTERED:
            counts["filtered"] += 1
            fate = {"filtered": True}
            text = f"line {number}: filtered"
        else:
            counts.update(f"to {sink}" for sink in outcome.sinks)
            record = outcome.payload.decode("utf-8").rstrip("\n")
            routes = [
                {
                    "to": sink,
                    "stream": spec.streams[sink].name,
                    "partition_key": outcome.partition_key,
                }
                for sink in outcome.sinks
            ]
            fate = {"routes": routes, "record": json.loads(record)}
            text = (
                "\n".join(
                    f"line {number}: to {r['to']} ({r['stream']}), "
                    f"partition key {r['partition_key']!r}"
                    for r in routes
                )
                + f"\n  {record}"
            )
        if jsonl:
            out.write(json.dumps({"line": number, **fate}, ensure_ascii=False) + "\n")
        else:
            out.write(text + "\n")
    if not jsonl:
        tally = ", ".join(f"{number} {what}" for what, number in sorted(counts.items()))
        out.write(count(records, "record") + (f": {tally}" if tally else "") + "\n")
    return 0
