"""JMESPath's view of JSON values: their types, truth and equality.

Each rule is written twice, as a Python function for the compiler and the
built-in functions, and as Python source that the generated code inlines;
the two must agree.
"""

from __future__ import annotations

from typing import Any

# JMESPath type names of JSON values; other types come from json's hooks or
# from custom functions and are classified by `_kind`.
_KINDS: dict[type, str] = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}

# Python source testing a variable (`{0}`) for each JMESPath type; these agree
# with `_kind`. The exact type is tried first as it is the quickest test.
_TYPE_TESTS = {
    "null": "{0} is None",
    "boolean": "({0} is True or {0} is False)",
    "number": "(type({0}) is int or type({0}) is float)",
    "string": "type({0}) is str",
    "array": "(type({0}) is list or isinstance({0}, list))",
    "object": "(type({0}) is dict or isinstance({0}, dict))",
}
_IS_ARRAY, _IS_OBJECT = _TYPE_TESTS["array"], _TYPE_TESTS["object"]


def _kind(value: Any) -> str:
    """Return the JMESPath type of a value: null, boolean, number, string, array or object."""
    kind = _KINDS.get(type(value))
    if kind is None:
        if isinstance(value, dict):
            return "object"
        return "array" if isinstance(value, list) else "unknown"
    return kind


def _is_array_of(value: Any, kind: str) -> bool:
    if not isinstance(value, list):
        return False
    for item in value:
        if (_KINDS.get(type(item)) or _kind(item)) != kind:
            return False
    return True


def _truthy(value: Any) -> bool:
    # Only null, false and empty strings, arrays and objects are false: 0 is true.
    return bool(value) or type(value) is int or type(value) is float


def _truthy_test(name: str) -> str:
    return f"({name} or type({name}) is int or type({name}) is float)"


def _equal(left: Any, right: Any) -> bool:
    """JMESPath equality: deep, and a boolean never equals a number."""
    if isinstance(left, list):
        return isinstance(right, list) and len(left) == len(right) and all(map(_equal, left, right))
    if isinstance(left, dict):
        return (
            isinstance(right, dict)
            and left.keys() == right.keys()
            and all(_equal(item, right[key]) for key, item in left.items())
        )
    if type(left) is bool or type(right) is bool:
        return left is right
    return left == right


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(item) for item in value]
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    return value
