"""A record's journey: bytes in, decoded, transformed, routed and encoded for its sinks.

The engine and `preview` both use `Journey.process`, so what preview shows is what a run does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from runner.backends.base import MAX_RECORD_BYTES
from runner.expressions import json_type
from runner.routing import RouteError
from runner.spec import Spec
from runner.transform import Filtered, TransformError

ROUTED, FILTERED, DEAD_LETTER, DROPPED = "routed", "filtered", "dead_letter", "dropped"


@dataclass(frozen=True)
class Outcome:
    kind: str  # ROUTED, FILTERED, DEAD_LETTER or DROPPED
    sinks: tuple[str, ...] = ()  # stream keys, when routed
    partition_key: str = ""
    payload: bytes = b""  # what is written to each sink
    reason: str = ""  # why, when dead-lettered or dropped


class Journey:
    """Everything a record needs from the spec, prepared once."""

    def __init__(self, spec: Spec) -> None:
        self.steps = spec.transform
        self.route = spec.route
        self.ending = b"\n" if spec.route.newline else b""
        self.drop_unmatched = spec.route.unmatched == "drop"

    def process(self, data: bytes) -> Outcome:
        """Decide what happens to one record; never raises for anything in `data`."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            return Outcome(DEAD_LETTER, reason=f"not UTF-8: {error.reason} at byte {error.start}")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            return Outcome(DEAD_LETTER, reason=f"not JSON: {error.msg} at column {error.colno}")
        except RecursionError:
            return Outcome(DEAD_LETTER, reason="not JSON this runner can read: nested too deeply")
        if not isinstance(record, dict):
            return Outcome(DEAD_LETTER, reason=f"not a JSON object: got {json_type(record)}")
        try:
            for step in self.steps:
                step.apply(record)
            sinks, key = self.route.decide(record)
        except Filtered:
            return Outcome(FILTERED)
        except (TransformError, RouteError) as error:
            return Outcome(DEAD_LETTER, reason=str(error))
        if not sinks:
            reason = "no route case took the record"
            return Outcome(DROPPED if self.drop_unmatched else DEAD_LETTER, reason=reason)
        payload = encode(record) + self.ending
        size = len(payload) + len(key.encode("utf-8"))
        if size > MAX_RECORD_BYTES:
            return Outcome(
                DEAD_LETTER,
                reason=f"too large for the sink: {size} bytes with its partition key, "
                f"over Kinesis' {MAX_RECORD_BYTES}",
            )
        return Outcome(ROUTED, tuple(sinks), key, payload)


def encode(record: dict) -> bytes:
    """A record as sinks receive it: compact JSON in UTF-8."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
