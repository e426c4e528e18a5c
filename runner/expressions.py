"""JMESPath expressions as a spec uses them: compiled once when the spec loads, with the
functions `pipeline` adds to JMESPath's own.

| function | gives |
| --- | --- |
| `now()` | the time of processing, ISO-8601 text in UTC, e.g. `2026-11-26T13:33:50.123456+00:00` |
| `epoch()` | the time of processing, whole seconds since 1970-01-01 UTC |
| `epoch_ms()` | the same in milliseconds |
| `uuid()` | a random UUID (version 4) as text |
| `upper(text)` / `lower(text)` | the text in upper / lower case |
"""

from __future__ import annotations

import datetime
import difflib
import uuid as uuid_module
from typing import Any

from runner import compiler
from runner.compiler import Compiled as Expression
from runner.compiler import Function, SearchError

__all__ = ["Expression", "ExpressionError", "SearchError", "compile", "is_true", "json_type"]


class ExpressionError(ValueError):
    """An expression that cannot compile: bad syntax, an unknown function, a wrong arity."""


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# now(), epoch() and epoch_ms() read this at each call; tests replace it to fix the time.
clock = _utc_now

ADDED = {
    function.name: function
    for function in (
        Function("now", lambda: clock().isoformat()),
        Function("epoch", lambda: int(clock().timestamp())),
        Function("epoch_ms", lambda: int(clock().timestamp() * 1000)),
        Function("uuid", lambda: str(uuid_module.uuid4())),
        Function("upper", str.upper, ("string",)),
        Function("lower", str.lower, ("string",)),
    )
}
FUNCTIONS = {**compiler.BUILTIN_FUNCTIONS, **ADDED}


def compile(text: str) -> Expression:  # noqa: A001 - the name JMESPath users expect
    """Compile `text` once; raises ExpressionError for syntax, unknown functions and arity."""
    try:
        return compiler.compile(text, ADDED)
    except compiler.CompileError as error:
        raise ExpressionError(f"{error}{_suggestion(error.reason)}") from None


def _suggestion(reason: str) -> str:
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
