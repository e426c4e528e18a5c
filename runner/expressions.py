"""JMESPath expressions, compiled once when a spec loads, and the functions `pipeline` adds.

Added functions (besides JMESPath's own):

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

import jmespath
import jmespath.exceptions
import jmespath.functions
from jmespath.functions import signature


class ExpressionError(ValueError):
    """An expression that cannot compile: bad syntax, an unknown function, a wrong arity."""


class SearchError(ValueError):
    """An expression that fails on one record, e.g. sum() over text."""


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# now(), epoch() and epoch_ms() read this at each call; tests replace it to fix the time.
clock = _utc_now


class _Functions(jmespath.functions.Functions):
    @signature()
    def _func_now(self) -> str:
        return clock().isoformat()

    @signature()
    def _func_epoch(self) -> int:
        return int(clock().timestamp())

    @signature()
    def _func_epoch_ms(self) -> int:
        return int(clock().timestamp() * 1000)

    @signature()
    def _func_uuid(self) -> str:
        return str(uuid_module.uuid4())

    @signature({"types": ["string"]})
    def _func_upper(self, text: str) -> str:
        return text.upper()

    @signature({"types": ["string"]})
    def _func_lower(self, text: str) -> str:
        return text.lower()


_FUNCTIONS = _Functions()
_OPTIONS = jmespath.Options(custom_functions=_FUNCTIONS)


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# now(), epoch() and epoch_ms() read this at each call; tests replace it to fix the time.
clock = _utc_now


class _Functions(jmespath.functions.Functions):
    @signature()
    def _func_now(self) -> str:
        return clock().isoformat()

    @signature()
    def _func_epoch(self) -> int:
        return int(clock().timestamp())

    @signature()
    def _func_epoch_ms(self) -> int:
        return int(clock().timestamp() * 1000)

    @signature()
    def _func_uuid(self) -> str:
        return str(uuid_module.uuid4())

    @signature({"types": ["string"]})
    def _func_upper(self, text: str) -> str:
        return text.upper()

    @signature({"types": ["string"]})
    def _func_lower(self, text: str) -> str:
        return text.lower()


_FUNCTIONS = _Functions()
_OPTIONS = jmespath.Options(custom_functions=_FUNCTIONS)


def set_clock(clock: Any) -> None:
    """Make now(), epoch() and epoch_ms() read `clock()` (a timezone-aware datetime)."""
    _Functions.clock = staticmethod(clock)


class Expression:
    """A compiled expression: `search(record)` evaluates it on one parsed JSON value."""

    __slots__ = ("text", "_parsed")

    def __init__(self, text: str, parsed: Any) -> None:
        self.text = text
        self._parsed = parsed

    def search(self, value: Any) -> Any:
        try:
            return self._parsed.search(value, options=_OPTIONS)
        except jmespath.exceptions.JMESPathError as error:
            raise SearchError(_one_line(error)) from None

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


def compile(text: str) -> Expression:  # noqa: A001 - the name JMESPath users expect
    """Compile `text` once; raises ExpressionError for syntax, unknown functions and arity."""
    try:
        parsed = jmespath.compile(text)
    except jmespath.exceptions.ParseError as error:
        raise ExpressionError(
            f"invalid expression: {error.msg} at column {error.lex_position + 1}"
        ) from None
    except jmespath.exceptions.JMESPathError as error:
        raise ExpressionError(f"invalid expression: {_one_line(error)}") from None
    _check_functions(parsed.parsed)
    return Expression(text, parsed)


def _check_functions(node: dict) -> None:
    if node.get("type") == "function_expression":
        name = node["value"]
        entry = _FUNCTIONS.FUNCTION_TABLE.get(name)
        if entry is None:
            raise ExpressionError(f"unknown function {name}(){_suggest(name)}")
        params = entry["signature"]
        given = len(node["children"])
        variadic = bool(params) and params[-1].get("variadic")
        if (given < len(params)) if variadic else (given != len(params)):
            expected = f"at least {len(params)}" if variadic else str(len(params))
            plural = "" if len(params) == 1 else "s"
            raise ExpressionError(f"{name}() takes {expected} argument{plural}, {given} given")
    for child in node.get("children", ()):
        if isinstance(child, dict):
            _check_functions(child)


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, _FUNCTIONS.FUNCTION_TABLE, n=1)
    if close:
        return f"; did you mean {close[0]}()?"
    return f" (functions: {', '.join(sorted(_FUNCTIONS.FUNCTION_TABLE))})"


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


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
