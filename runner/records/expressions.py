"""JMESPath expressions as a spec uses them: compiled once when the spec loads, with the
functions `pipeline` adds to JMESPath's own.

| function | gives |
| --- | --- |
| `now()` | the time of processing in UTC to the millisecond: `2026-11-26T13:33:50.123+00:00` |
| `epoch()` | the time of processing, whole seconds since 1970-01-01 UTC |
| `epoch_ms()` | the same in milliseconds |
| `uuid()` | a random UUID (version 4) as text (from the clock's source: `seeded_uuids` in tests) |
| `upper(text)` / `lower(text)` | the text in upper / lower case |
"""

from __future__ import annotations

import datetime
import difflib
import json
import random
import re
import time
import uuid as uuid_module
from collections.abc import Callable, Sequence
from typing import Any

from runner import compiler
from runner.compiler import Compiled as Expression
from runner.compiler import Function, SearchError

__all__ = [
    "SYSTEM_CLOCK",
    "Clock",
    "Expression",
    "ExpressionError",
    "SearchError",
    "compile",
    "compile_object",
    "is_true",
    "json_type",
    "likely_mistakes",
    "random_uuid",
    "seeded_uuids",
]


class ExpressionError(ValueError):
    """An expression that cannot compile: bad syntax, an unknown function, a wrong arity."""


def random_uuid() -> str:
    """A random UUID (version 4) as text: what uuid() gives."""
    return str(uuid_module.uuid4())


def seeded_uuids(seed: int | str = 0) -> Callable[[], str]:
    """A source of version 4 UUIDs drawn from `seed`: the same ones, in the same order, each
    time it is made (for `pipeline test`, where uuid() must give what a test expects)."""
    draw = random.Random(seed).getrandbits
    return lambda: str(uuid_module.UUID(int=draw(128), version=4))


class Clock:
    """The time now(), epoch() and epoch_ms() give: `read()`, seconds since 1970, at each call;
    and the ids uuid() gives: `uuid()`, random unless another source is given.

    A search is given one (a record's journey has its own), else it uses SYSTEM_CLOCK."""

    def __init__(
        self, read: Callable[[], float] = time.time, uuid: Callable[[], str] = random_uuid
    ) -> None:
        self.read = read
        self.uuid = uuid
        self._last_millis = -1
        self._last_now = ""

    def now(self) -> str:
        """The time in UTC to the millisecond, ISO-8601: 2026-11-26T13:33:50.123+00:00."""
        # Records handled within the same millisecond share one timestamp, formatted once.
        millis = int(self.read() * 1000)
        if millis != self._last_millis:
            moment = datetime.datetime.fromtimestamp(millis / 1000, datetime.timezone.utc)
            self._last_millis, self._last_now = millis, moment.isoformat(timespec="milliseconds")
        return self._last_now

    def epoch(self) -> int:
        """Whole seconds since 1970-01-01 UTC."""
        return int(self.read())

    def epoch_ms(self) -> int:
        """Milliseconds since 1970-01-01 UTC."""
        return int(self.read() * 1000)


SYSTEM_CLOCK = Clock()

ADDED = {
    function.name: function
    for function in (
        Function("now", Clock.now, contextual=True),
        Function("epoch", Clock.epoch, contextual=True),
        Function("epoch_ms", Clock.epoch_ms, contextual=True),
        Function("uuid", lambda clock: clock.uuid(), contextual=True),
        Function("upper", str.upper, ("string",)),
        Function("lower", str.lower, ("string",)),
    )
}
FUNCTIONS = {**compiler.BUILTIN_FUNCTIONS, **ADDED}


def compile(text: str) -> Expression:  # noqa: A001 - the name JMESPath users expect
    """Compile `text` once; raises ExpressionError for syntax, unknown functions and arity.
    `search(record, clock)` gives the time functions that Clock, else SYSTEM_CLOCK."""
    try:
        return compiler.compile(text, ADDED, SYSTEM_CLOCK)
    except compiler.CompileError as error:
        raise ExpressionError(f"{error}{_suggestion(error.reason)}") from None


def compile_object(fields: Sequence[tuple[str, str]]) -> Expression:
    """Compile several valid expressions (`compile` took each) into one search giving the
    object of their values by name; raises ExpressionError if, together, they cannot be."""
    try:
        return compiler.compile_object(fields, ADDED, SYSTEM_CLOCK)
    except compiler.CompileError as error:
        raise ExpressionError(str(error)) from None


def likely_mistakes(expression: Expression) -> list[str]:
    """What in a valid expression is most likely not what its author meant: a quoted
    identifier ("USA", a field) compared with == or != where text ('USA') was meant."""
    return [
        f"{json.dumps(name)} at column {column} is a field, not text; "
        f"write {_raw_string(name)} for the text"
        for name, column in compiler.quoted_operands(expression.text)
    ]


def _raw_string(text: str) -> str:
    escaped = text.replace("'", "\\'")
    return f"'{escaped}'"


_BARE_NUMBER = re.compile(r"unexpected '-?[0-9][0-9.eE+-]*'")


def _suggestion(reason: str) -> str:
    if _BARE_NUMBER.fullmatch(reason):
        number = reason.split("'")[1]
        return f"; JMESPath writes numbers in backticks: `{number}`"
    if not reason.startswith("unknown function '"):
        return ""
    name = reason.removeprefix("unknown function '").removesuffix("()'")
    close = difflib.get_close_matches(name, FUNCTIONS, n=1)
    if close:
        return f"; did you mean {close[0]}()?"
    return f" (functions: {', '.join(sorted(FUNCTIONS))})"


def is_true(value: Any) -> bool:
    """JMESPath truthiness: false, null, "", [] and {} are false; everything else is true."""
    return not (value is None or value is False or value == "" or value == [] or value == {})


def json_type(value: Any) -> str:
    """A value's JSON type in words, for reasons: null, a boolean, a number, text, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "an array"
    return "an object"
