"""The functions expressions can call: `Function`, which describes one and the types
of its parameters, and JMESPath's built-in functions."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn

from runner.compiler.errors import SearchError, words
from runner.compiler.values import TYPE_TESTS, equal, kind_of

# The types a parameter may name.
_TYPES = {*TYPE_TESTS, *(f"array[{kind}]" for kind in TYPE_TESTS), "any", "expression"}


@dataclass(frozen=True)
class Function:
    """A function that expressions can call, checked exactly like the built-ins.

    `params` holds one JMESPath type per parameter: `any`, `null`, `boolean`,
    `number`, `string`, `array`, `object`, `array[<type>]` or `expression`
    (an `&expr` argument, passed to `call` as a one-argument Python function),
    or several of them joined with `|`. The parameters after the first
    `min_args` (default: all) may be left out, and with `variadic` the last one
    may repeat. `call` receives the arguments once they have passed the checks,
    and with `contextual` the search's context before them (see `Compiled`).
    """

    name: str
    call: Callable[..., Any]
    params: tuple[str, ...] = ()
    min_args: int | None = None
    variadic: bool = False
    contextual: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        for param in self.params:
            for alternative in param.split("|"):
                if alternative not in _TYPES:
                    raise ValueError(f"{self.name}(): unknown type {alternative!r}")
        if self.min_args is None:
            object.__setattr__(self, "min_args", len(self.params))
        if not 0 <= self.min_args <= len(self.params):
            raise ValueError(f"{self.name}(): min_args must be between 0 and {len(self.params)}")
        if self.variadic and not self.params:
            raise ValueError(f"{self.name}(): a variadic function needs a parameter to repeat")

    @property
    def max_args(self) -> int | None:
        """The most arguments the function takes, or None if it is variadic."""
        return None if self.variadic else len(self.params)

    def param(self, index: int) -> str:
        """The type of argument `index` (the last parameter's past the end: variadic)."""
        return self.params[min(index, len(self.params) - 1)]

    def label(self, index: int) -> str:
        """How messages name argument `index`: 'sum()' or 'join() argument 2'."""
        if self.max_args == 1:
            return f"{self.name}()"
        return f"{self.name}() argument {index + 1}"

    def arity(self) -> str:
        """How many arguments the function takes, in words."""
        low, high = self.min_args, self.max_args
        if high is None:
            count = f"at least {low}"
        elif low == high:
            count = str(low)
        else:
            count = f"{low} to {high}"
        noun = "argument" if count in ("1", "at least 1") else "arguments"
        return f"{self.name}() takes {count} {noun}"


def type_error(function: Function, index: int, value: Any) -> NoReturn:
    """Raise the SearchError of argument `index` having the wrong type."""
    alternatives = function.param(index).split("|")
    got = kind_of(value)
    if got == "array" and value and any(a.startswith("array[") for a in alternatives):
        got = f"array containing {words(list(dict.fromkeys(map(kind_of, value))), 'and')}"
    raise SearchError(f"{function.label(index)} expects {words(alternatives, 'or')}, got {got}")


def failed(function: Function, error: Exception) -> SearchError:
    """The SearchError of a custom function that raised `error`."""
    return SearchError(f"{function.name}() failed: {error}")


def _avg(numbers: list) -> Any:
    return sum(numbers) / len(numbers) if numbers else None


def _contains(subject: Any, search: Any) -> bool:
    if type(subject) is str:
        return type(search) is str and search in subject
    return any(equal(item, search) for item in subject)


def _map(expression: Callable[[Any], Any], items: list) -> list:
    return [expression(item) for item in items]


def _max(items: list) -> Any:
    return max(items, default=None)


def _min(items: list) -> Any:
    return min(items, default=None)


def _keys_of(name: str, items: list, expression: Callable[[Any], Any]) -> list:
    keys = [expression(item) for item in items]
    kinds = list(dict.fromkeys(map(kind_of, keys)))
    if kinds and kinds != ["number"] and kinds != ["string"]:
        raise SearchError(
            f"{name}() expects the expression to return only numbers or only strings,"
            f" got {words(kinds, 'and')}"
        )
    return keys


def _max_by(items: list, expression: Callable[[Any], Any]) -> Any:
    if not items:
        return None
    keys = _keys_of("max_by", items, expression)
    return items[max(range(len(items)), key=keys.__getitem__)]


def _min_by(items: list, expression: Callable[[Any], Any]) -> Any:
    if not items:
        return None
    keys = _keys_of("min_by", items, expression)
    return items[min(range(len(items)), key=keys.__getitem__)]


def _sort_by(items: list, expression: Callable[[Any], Any]) -> list:
    keys = _keys_of("sort_by", items, expression)
    return [items[index] for index in sorted(range(len(items)), key=keys.__getitem__)]


def _merge(*objects: dict) -> dict:
    merged: dict = {}
    for item in objects:
        merged.update(item)
    return merged


def _not_null(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _reverse(value: Any) -> Any:
    return value[::-1]


def _to_array(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _to_string(value: Any) -> str:
    if type(value) is str:
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _to_number(value: Any) -> Any:
    kind = kind_of(value)
    if kind == "number":
        return value
    if kind == "string":
        match = _JSON_NUMBER.fullmatch(value)
        if match:
            return float(value) if match.group(1) or match.group(2) else int(value)
    return None


def _values(item: dict) -> list:
    return list(item.values())


BUILTIN_FUNCTIONS: Mapping[str, Function] = MappingProxyType(
    {
        function.name: function
        for function in (
            Function("abs", abs, ("number",)),
            Function("avg", _avg, ("array[number]",)),
            Function("ceil", math.ceil, ("number",)),
            Function("contains", _contains, ("array|string", "any")),
            Function("ends_with", str.endswith, ("string", "string")),
            Function("floor", math.floor, ("number",)),
            Function("join", str.join, ("string", "array[string]")),
            Function("keys", list, ("object",)),
            Function("length", len, ("string|array|object",)),
            Function("map", _map, ("expression", "array")),
            Function("max", _max, ("array[number]|array[string]",)),
            Function("max_by", _max_by, ("array", "expression")),
            Function("merge", _merge, ("object",), variadic=True),
            Function("min", _min, ("array[number]|array[string]",)),
            Function("min_by", _min_by, ("array", "expression")),
            Function("not_null", _not_null, ("any",), variadic=True),
            Function("reverse", _reverse, ("array|string",)),
            Function("sort", sorted, ("array[number]|array[string]",)),
            Function("sort_by", _sort_by, ("array", "expression")),
            Function("starts_with", str.startswith, ("string", "string")),
            Function("sum", sum, ("array[number]",)),
            Function("to_array", _to_array, ("any",)),
            Function("to_number", _to_number, ("any",)),
            Function("to_string", _to_string, ("any",)),
            Function("type", kind_of, ("any",)),
            Function("values", _values, ("object",)),
        )
    }
)
