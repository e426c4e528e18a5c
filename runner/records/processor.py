"""A record's journey: bytes in, decoded, transformed, routed and encoded for its sinks.

The engine and `preview` both use `Journey.process`, so what preview shows is what a run does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from json.encoder import c_make_encoder, encode_basestring

from runner.backends.limits import MAX_RECORD_BYTES
from runner.records.expressions import Clock, json_type
from runner.records.routing import Route, RouteError
from runner.records.transform import Filtered, Step, TransformError

ROUTED, FILTERED, DEAD_LETTER, DROPPED = "routed", "filtered", "dead_letter", "dropped"

# Why a record is dead-lettered, as a class of few values (a metric's label), beside the reason's
# text: the record is not UTF-8, not JSON, not an object; a transform step or the route failed on
# it; no case took it; it cannot be written as JSON, or is too large for the sink.
NOT_UTF8, NOT_JSON, NOT_OBJECT = "not_utf8", "not_json", "not_object"
TRANSFORM, ROUTE, UNMATCHED = "transform", "route", "unmatched"
NOT_ENCODABLE, TOO_LARGE = "not_encodable", "too_large"


class Outcome:
    """What happens to one record. A plain class: one is made per record, and a frozen
    dataclass costs several times as much to make."""

    __slots__ = ("kind", "sinks", "partition_key", "payload", "reason", "cause")

    def __init__(
        self,
        kind: str,  # ROUTED, FILTERED, DEAD_LETTER or DROPPED
        sinks: list[str] | tuple[str, ...] = (),  # stream keys, when routed
        partition_key: str = "",
        payload: bytes = b"",  # what is written to each sink
        reason: str = "",  # why, when dead-lettered or dropped
        cause: str = "",  # the class of the reason, e.g. NOT_JSON
    ) -> None:
        self.kind = kind
        self.sinks = sinks
        self.partition_key = partition_key
        self.payload = payload
        self.reason = reason
        self.cause = cause


class Journey:
    """Everything a record needs from the spec, its transform steps and its route, prepared
    once."""

    def __init__(
        self, steps: Sequence[Step], route: Route, clock: Callable[[], float] | Clock = time.time
    ) -> None:
        # What now(), epoch() and epoch_ms() give (seconds since 1970), or a whole Clock, e.g.
        # one whose uuid() is seeded (`pipeline test`).
        self.clock = clock if isinstance(clock, Clock) else Clock(clock)
        self.steps = tuple(steps)
        self.route = route
        self.ending = "\n" if route.newline else ""
        self.drop_unmatched = route.unmatched == "drop"

    def process(self, data: bytes) -> Outcome:
        """Decide what happens to one record; never raises for anything in `data`."""
        try:
            record = parse_json(data)
            if type(record) is not dict:  # the usual object passes without another call
                record = _as_record(record)
        except BadRecord as error:
            return Outcome(DEAD_LETTER, reason=str(error), cause=error.cause)
        clock = self.clock
        try:
            for step in self.steps:
                step.apply(record, clock)
            sinks, key = self.route.decide(record, clock)
        except Filtered:
            return Outcome(FILTERED)
        except TransformError as error:
            return Outcome(DEAD_LETTER, reason=str(error), cause=TRANSFORM)
        except RouteError as error:
            return Outcome(DEAD_LETTER, reason=str(error), cause=ROUTE)
        if not sinks:
            kind = DROPPED if self.drop_unmatched else DEAD_LETTER
            return Outcome(kind, reason="no route case took the record", cause=UNMATCHED)
        try:
            payload = encode(record, self.ending)
            size = len(payload) + len(key.encode())  # entry_size, inline
        except ValueError as error:  # e.g. a lone surrogate, an infinite number
            reason = f"cannot be written as JSON: {error}"
            return Outcome(DEAD_LETTER, reason=reason, cause=NOT_ENCODABLE)
        if size > MAX_RECORD_BYTES:
            return Outcome(
                DEAD_LETTER,
                reason=f"too large for the sink: {size} bytes with its partition key, "
                f"over Kinesis' {MAX_RECORD_BYTES}",
                cause=TOO_LARGE,
            )
        return Outcome(ROUTED, sinks, key, payload)


class BadRecord(ValueError):
    """Bytes that are not a JSON object; the text is the reason, `cause` its class."""

    def __init__(self, reason: str, cause: str = NOT_JSON) -> None:
        super().__init__(reason)
        self.cause = cause


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON value")


# Made once: json.loads and json.dumps with options build a new coder on every call.
_DECODER = json.JSONDecoder(parse_constant=_not_json)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_SCAN = _DECODER.scan_once


def parse_json(data: bytes) -> object:
    """Strict JSON from UTF-8 bytes: NaN and Infinity, which Python would accept, are refused."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRecord(f"not UTF-8: {error.reason} at byte {error.start}", NOT_UTF8) from None
    # The decoder's own limit depends on how deep the caller's stack is, so preview and run
    # could disagree near it; a fixed limit, checked only where it could be reached, cannot.
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise BadRecord(f"not JSON this runner reads: nested deeper than {MAX_DEPTH} levels")
    # What decode() does for text with no whitespace around the value, without its two regex
    # matches; anything else (whitespace, an error) takes decode() to be read or explained.
    try:
        value, end = _SCAN(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError, RecursionError):
        pass
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise BadRecord(f"not JSON: {error.msg} at column {error.colno}") from None
    except ValueError as error:
        raise BadRecord(f"not JSON: {error}") from None
    except RecursionError:
        raise BadRecord("not JSON this runner can read: nested too deeply") from None


MAX_DEPTH = 512


def _depth(text: str) -> int:
    """How deep arrays and objects nest in JSON text, brackets inside strings not counted."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_record(data: bytes) -> dict:
    """A record: a JSON object, or BadRecord saying why not."""
    return _as_record(parse_json(data))


def _as_record(value: object) -> dict:
    if not isinstance(value, dict):
        raise BadRecord(f"not a JSON object: got {json_type(value)}", NOT_OBJECT)
    return value


# One C encoder for every record (json.dumps and JSONEncoder.encode make one per call), and
# without check_circular's record of the objects it is in, it holds no state: threads may
# share it. A record holding itself then ends in RecursionError, and JSONEncoder says why.
_ONCE = (
    c_make_encoder(
        None,  # no markers: no check for cycles
        _ENCODER.default,
        encode_basestring,  # ensure_ascii=False
        None,  # no indent
        _ENCODER.key_separator,
        _ENCODER.item_separator,
        False,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )
    if c_make_encoder is not None
    else None
)


def encode(record: dict, ending: str = "") -> bytes:
    """A record as sinks receive it: compact JSON in UTF-8, then `ending`. Raises ValueError
    for what JSON cannot hold (an infinite number) or UTF-8 cannot encode (a lone
    surrogate)."""
    try:
        chunks = _ONCE(record, 0) if _ONCE is not None else None
    except RecursionError:  # a cycle: JSONEncoder says so
        chunks = None
    if chunks is None:
        text = _ENCODER.encode(record) + ending
    else:
        chunks.append(ending)  # a list of its own: the text is joined once, ending included
        text = "".join(chunks)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:  # where in the rebuilt text tells the user nothing
        code = ord(error.object[error.start])
        raise ValueError(
            f"it holds a lone surrogate (\\u{code:04x}), which is not text UTF-8 can encode"
        ) from None
