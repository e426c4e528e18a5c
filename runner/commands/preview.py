"""`pipeline preview`: what a spec does to JSON records, with no stream at all."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import IO

from runner.plural import count
from runner.records.processor import DEAD_LETTER, DROPPED, FILTERED, Journey, Outcome
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
        counted, fate, text = describe(spec, f"line {number}", journey.process(data))
        counts.update(counted)
        if jsonl:
            out.write(json.dumps({"line": number, **fate}, ensure_ascii=False) + "\n")
        else:
            out.write(text + "\n")
    if not jsonl:
        out.write(tally(count(records, "record"), counts) + "\n")
    return 0


def describe(spec: Spec, name: str, outcome: Outcome) -> tuple[list[str], dict, str]:
    """A record's fate, for a person and for scripts: what it counts as, a JSON object, and
    lines of text beginning with `name` (e.g. 'line 3')."""
    if outcome.kind == DEAD_LETTER:
        return (
            ["dead-lettered"],
            {"dead_letter": outcome.reason},
            f"{name}: dead letter: {outcome.reason}",
        )
    if outcome.kind == DROPPED:
        return ["dropped"], {"dropped": outcome.reason}, f"{name}: dropped: {outcome.reason}"
    if outcome.kind == FILTERED:
        return ["filtered"], {"filtered": True}, f"{name}: filtered"
    record = outcome.payload.decode("utf-8").rstrip("\n")
    routes = [
        {"to": sink, "stream": spec.streams[sink].name, "partition_key": outcome.partition_key}
        for sink in outcome.sinks
    ]
    text = "\n".join(
        f"{name}: to {r['to']} ({r['stream']}), partition key {r['partition_key']!r}"
        for r in routes
    )
    counted = [f"to {sink}" for sink in outcome.sinks]
    return counted, {"routes": routes, "record": json.loads(record)}, f"{text}\n  {record}"


def tally(total: str, counts: Counter[str]) -> str:
    """E.g. '3 records' + ': 1 dead-lettered, 2 to usa'."""
    fates = ", ".join(f"{count} {fate}" for fate, count in sorted(counts.items()))
    return total + (f": {fates}" if fates else "")
