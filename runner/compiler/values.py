"""JMESPath's view of JSON values: their types, truth and equality.

Each rule is written twice, as a Python function for the compiler and the
built-in functions, and as Python source that the generated code inlines;
the two must agree.
"""

from __future__ import annotations

from typing import Any

# JMESPath type names of JSON values; other types come from json's hooks or
# from custom functions and are classified by `kind_of`.
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
# with `kind_of`. The exact type is tried first as it is the quickest test.
TYPE_TESTS = {
    "null": "{0} is None",
    "boolean": "({0} is True or {0} is False)",
    "number": "(type({0}) is int or type({0}) is float)",
    "string": "type({0}) is str",
    "array": "(type({0}) is list or isinstance({0}, list))",
    "object": "(type({0}) is dict or isinstance({0}, dict))",
}
IS_ARRAY, IS_OBJECT = TYPE_TESTS["array"], TYPE_TESTS["object"]


def kind_of(value: Any) -> str:
    """Return the JMESPath type of a value: null, boolean, number, string, array or object."""
    kind = _KINDS.get(type(value))
    if kind is None:
        if isinstance(value, dict):
            return "object"
        return "array" if isinstance(value, list) else "unknown"
    return kind


def is_array_of(value: Any, kind: str) -> bool:
    """Whether `value` is an array whose items are all of the JMESPath type `kind`."""
    if not isinstance(value, list):
        return False
    for item in value:
        if (_KINDS.get(type(item)) or kind_of(item)) != kind:
            return False
    return True


def truthy(value: Any) -> bool:
    """JMESPath truth."""
    # Only null, false and empty strings, arrays and objects are false: 0 is true.
    return bool(value) or type(value) is int or type(value) is float


def truthy_test(name: str) -> str:
    """Python source testing the JMESPath truth of the variable `name`, as `truthy`."""
    return f"({name} or type({name}) is int or type({name}) is float)"


def equal(left: Any, right: Any) -> bool:
    """JMESPath equality: deep, and a boolean never equals a number."""
    if isinstance(left, list):
        return isinstance(right, list) and len(left) == len(right) and all(map(equal, left, right))
    if isinstance(left, dict):
        return (
            isinstance(right, dict)
            and left.keys() == right.keys()
            and all(equal(item, right[key]) for key, item in left.items())
        )
    if type(left) is bool or type(right) is bool:
        return left is right
    return left == right


def deep_copy(value: Any) -> Any:
    """A copy of a JSON value whose arrays and objects are new, all the way down."""
    if isinstance(value, list):
        return [deep_copy(item) for item in value]
    if isinstance(value, dict):
        return {key: deep_copy(item) for key, item in value.items()}
    return value
