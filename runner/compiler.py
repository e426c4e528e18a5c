"""Compile JMESPath expressions into Python functions.

An expression is compiled once, when a spec loads, and then searched on every
record of a stream. `compile` parses it with the jmespath package's parser,
checks function names, arities and `&expression` arguments, folds the parts
that do not depend on the record, and writes the source of one Python function
that evaluates the rest with JMESPath's semantics. Searching is then a single
call of that function, about as fast as the same logic written by hand.
"""

from __future__ import annotations

import builtins
import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

from jmespath import exceptions as jmespath_errors
from jmespath.lexer import Lexer
from jmespath.parser import Parser

__all__ = [
    "BUILTIN_FUNCTIONS",
    "CompileError",
    "Compiled",
    "Function",
    "SearchError",
    "compile",
]


class CompileError(ValueError):
    """An expression that cannot be compiled: bad syntax, unknown function, wrong arity."""

    def __init__(self, reason: str, column: int) -> None:
        super().__init__(f"{reason} at column {column}")
        self.reason = reason
        self.column = column


class SearchError(ValueError):
    """A search that hit a value of the wrong type, e.g. `sum()` of strings."""


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
_TYPES = {*_TYPE_TESTS, *(f"array[{kind}]" for kind in _TYPE_TESTS), "any", "expression"}


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


def _words(items: list[str], conjunction: str) -> str:
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


@dataclass(frozen=True)
class Function:
    """A function that expressions can call, checked exactly like the built-ins.

    `params` holds one JMESPath type per parameter: `any`, `null`, `boolean`,
    `number`, `string`, `array`, `object`, `array[<type>]` or `expression`
    (an `&expr` argument, passed to `call` as a one-argument Python function),
    or several of them joined with `|`. The parameters after the first
    `min_args` (default: all) may be left out, and with `variadic` the last one
    may repeat. `call` receives the arguments once they have passed the checks.
    """

    name: str
    call: Callable[..., Any]
    params: tuple[str, ...] = ()
    min_args: int | None = None
    variadic: bool = False

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

    def _param(self, index: int) -> str:
        return self.params[min(index, len(self.params) - 1)]

    def _label(self, index: int) -> str:
        if self.max_args == 1:
            return f"{self.name}()"
        return f"{self.name}() argument {index + 1}"

    def _arity(self) -> str:
        low, high = self.min_args, self.max_args
        if high is None:
            count = f"at least {low}"
        elif low == high:
            count = str(low)
        else:
            count = f"{low} to {high}"
        noun = "argument" if count in ("1", "at least 1") else "arguments"
        return f"{self.name}() takes {count} {noun}"


def _type_error(function: Function, index: int, value: Any) -> NoReturn:
    alternatives = function._param(index).split("|")
    got = _kind(value)
    if got == "array" and value and any(a.startswith("array[") for a in alternatives):
        got = f"array containing {_words(list(dict.fromkeys(map(_kind, value))), 'and')}"
    raise SearchError(f"{function._label(index)} expects {_words(alternatives, 'or')}, got {got}")


def _failed(function: Function, error: Exception) -> SearchError:
    return SearchError(f"{function.name}() failed: {error}")


def _unexpected(error: Exception) -> SearchError:
    return SearchError(f"{type(error).__name__}: {error}")


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


def _avg(numbers: list) -> Any:
    return sum(numbers) / len(numbers) if numbers else None


def _contains(subject: Any, search: Any) -> bool:
    if type(subject) is str:
        return type(search) is str and search in subject
    return any(_equal(item, search) for item in subject)


def _map(expression: Callable[[Any], Any], items: list) -> list:
    return [expression(item) for item in items]


def _max(items: list) -> Any:
    return max(items, default=None)


def _min(items: list) -> Any:
    return min(items, default=None)


def _keys_of(name: str, items: list, expression: Callable[[Any], Any]) -> list:
    keys = [expression(item) for item in items]
    kinds = list(dict.fromkeys(map(_kind, keys)))
    if kinds and kinds != ["number"] and kinds != ["string"]:
        raise SearchError(
            f"{name}() expects the expression to return only numbers or only strings,"
            f" got {_words(kinds, 'and')}"
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
    kind = _kind(value)
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
            Function("type", _kind, ("any",)),
            Function("values", _values, ("object",)),
        )
    }
)


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled expression: `search(value)` evaluates it on a JSON value.

    On a JSON value, `search` raises no error but SearchError, as when a
    function meets an argument of the wrong type. `source` is the generated
    Python, for debugging.
    """

    text: str
    search: Callable[[Any], Any] = field(repr=False, compare=False)
    source: str = field(repr=False, compare=False)


def compile(text: str, functions: Mapping[str, Function] | None = None) -> Compiled:
    """Compile a JMESPath expression, or raise CompileError saying what is wrong and where.

    `functions` adds to the built-in functions, by name, or replaces them.
    """
    table = {**BUILTIN_FUNCTIONS, **(functions or {})}
    try:
        with warnings.catch_warnings():
            # The lexer warns of `foo`-style literals; _check_literals refuses them instead.
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            tree = _parse(text)
            tokens = list(Lexer().tokenize(text))
            _check_literals(text, tokens)
        _check(tree, tokens, table)
        search, source = _Generator(table).build(_fold(tree, table))
    except RecursionError:
        raise CompileError("expression is nested too deeply", 1) from None
    return Compiled(text, search, source)


# How the lexer's unclosed delimiters read in messages.
_DELIMITED = {"'": "raw string", "`": "literal", '"': "quoted identifier"}


def _parse(text: str) -> dict:
    try:
        return Parser().parse(text).parsed
    except jmespath_errors.EmptyExpressionError:
        raise CompileError("empty expression", 1) from None
    except jmespath_errors.IncompleteExpressionError:
        raise CompileError("unexpected end of expression", len(text) + 1) from None
    except jmespath_errors.LexerError as error:
        position = error.lexer_position
        char = text[position]
        if error.message.startswith("Unclosed"):
            reason = f"unterminated {_DELIMITED[char]}"
        elif char in _DELIMITED:
            reason = f"invalid {_DELIMITED[char]}"
        else:
            reason = f"unexpected character {char!r}"
        raise CompileError(reason, position + 1) from None
    except jmespath_errors.ParseError as error:
        raise _syntax_error(error, text) from None


def _syntax_error(error: jmespath_errors.ParseError, text: str) -> CompileError:
    if error.token_type == "EOF":
        return CompileError("unexpected end of expression", len(text) + 1)
    if error.msg.startswith("Quoted identifier"):
        # The parser reports this one at column 1, so find the name itself.
        tokens = list(Lexer().tokenize(text))
        column = _column(
            tokens,
            1,
            lambda i: (
                tokens[i]["type"] == "quoted_identifier" and tokens[i + 1]["type"] == "lparen"
            ),
        )
        return CompileError("a function name cannot be quoted", column)
    if error.msg.startswith("Invalid function name"):
        return CompileError("only a name can be called as a function", error.lex_position + 1)
    if error.token_type == "LITERAL":
        token = "literal"
    elif error.token_type == "QUOTED_IDENTIFIER":
        token = json.dumps(error.token_value)
    else:
        token = repr(str(error.token_value))
    return CompileError(f"unexpected {token}", error.lex_position + 1)


def _column(tokens: list[dict], occurrence: int, matches: Callable[[int], bool]) -> int:
    """Return the column of the `occurrence`-th token for which `matches(index)` holds."""
    starts = [token["start"] for index, token in enumerate(tokens) if matches(index)]
    # A call of a parenthesised name, `(abs)(x)`, has no name token before its `(`.
    return starts[occurrence - 1] + 1 if occurrence <= len(starts) else 1


def _check_literals(text: str, tokens: list[dict]) -> None:
    # The jmespath lexer still reads an invalid JSON literal as a string (a
    # deprecated form); here it is an error, so that a typo cannot pass silently.
    for index, token in enumerate(tokens):
        start = token["start"]
        if token["type"] == "literal" and text[start] == "`":
            raw = text[start + 1 : tokens[index + 1]["start"]].rstrip(" \t\n\r")[:-1]
            try:
                json.loads(raw.replace("\\`", "`"))
            except ValueError:
                raise CompileError("literal is not valid JSON", start + 1) from None


def _children(node: dict) -> list[dict]:
    """Return the child nodes of a node in the order they appear in the text."""
    children = [child for child in node["children"] if isinstance(child, dict)]
    if node["type"] == "filter_projection":
        left, right, condition = children
        return [left, condition, right]
    return children


def _walk(node: dict, parent: dict | None = None) -> Iterator[tuple[dict, dict | None]]:
    yield node, parent
    for child in _children(node):
        yield from _walk(child, node)


def _check(tree: dict, tokens: list[dict], functions: Mapping[str, Function]) -> None:
    """Raise CompileError for an unknown function, a wrong arity, a misplaced `&`
    or a zero slice step."""
    calls: Counter[str] = Counter()
    exprefs = slices = 0
    for node, parent in _walk(tree):
        kind = node["type"]
        if kind == "function_expression":
            name = node["value"]
            calls[name] += 1
            column = _column(
                tokens,
                calls[name],
                lambda i, name=name: (
                    tokens[i]["type"] == "unquoted_identifier"
                    and tokens[i]["value"] == name
                    and tokens[i + 1]["type"] == "lparen"
                ),
            )
            _check_call(functions.get(name), name, node["children"], column)
        elif kind == "expref":
            exprefs += 1
            if parent is None or parent["type"] != "function_expression":
                column = _column(tokens, exprefs, lambda i: tokens[i]["type"] == "expref")
                raise CompileError("'&' expressions can only be function arguments", column)
        elif kind == "slice":
            slices += 1
            if node["children"][2] == 0:
                column = _column(tokens, slices, lambda i: _is_slice(tokens, i))
                raise CompileError("slice step cannot be 0", column)


def _check_call(function: Function | None, name: str, args: list[dict], column: int) -> None:
    if function is None:
        raise CompileError(f"unknown function '{name}()'", column)
    if len(args) < function.min_args or (
        function.variadic is False and len(args) > function.max_args
    ):
        raise CompileError(f"{function._arity()}, got {len(args)}", column)
    for index, arg in enumerate(args):
        wanted = function._param(index)
        if arg["type"] == "expref" and "expression" not in wanted.split("|"):
            got = _words(wanted.split("|"), "or")
            raise CompileError(f"{function._label(index)} expects {got}, got expression", column)
        if arg["type"] != "expref" and wanted == "expression":
            raise CompileError(f"{function._label(index)} expects expression (&...)", column)


def _is_slice(tokens: list[dict], index: int) -> bool:
    if tokens[index]["type"] != "lbracket":
        return False
    inside = []
    for token in tokens[index + 1 :]:
        if token["type"] == "rbracket":
            return "colon" in inside
        if token["type"] not in ("number", "colon"):
            return False
        inside.append(token["type"])
    return False


# Nodes evaluated on the result of their first child.
_CHAINS = {
    "subexpression",
    "index_expression",
    "pipe",
    "projection",
    "value_projection",
    "filter_projection",
    "flatten",
}


def _is_builtin(node: dict, functions: Mapping[str, Function]) -> bool:
    name = node["value"]
    return functions[name] is BUILTIN_FUNCTIONS.get(name)


def _is_pure(node: dict, functions: Mapping[str, Function]) -> bool:
    # Custom functions may be impure, like now() or uuid().
    if node["type"] == "function_expression" and not _is_builtin(node, functions):
        return False
    return all(_is_pure(child, functions) for child in _children(node))


def _is_constant(node: dict, functions: Mapping[str, Function]) -> bool:
    """Whether a node evaluates to the same value whatever the searched value."""
    kind = node["type"]
    children = _children(node)
    if kind == "literal":
        return True
    if kind in _CHAINS:
        first, *rest = children
        return _is_constant(first, functions) and all(_is_pure(c, functions) for c in rest)
    if kind == "function_expression":
        return _is_builtin(node, functions) and all(
            _is_pure(arg["children"][0], functions)
            if arg["type"] == "expref"
            else _is_constant(arg, functions)
            for arg in children
        )
    if kind in ("comparator", "and_expression", "or_expression", "not_expression"):
        return all(_is_constant(child, functions) for child in children)
    return False


def _fold(node: dict, functions: Mapping[str, Function]) -> dict:
    """Return the tree with constant subexpressions replaced by their values."""
    if node["type"] != "literal" and _is_constant(node, functions):
        try:
            value = _Generator(functions).build(node)[0](None)
        except SearchError:
            pass  # left in place, to fail only if a search reaches it
        else:
            return {"type": "literal", "value": value, "children": []}
    children = [
        _fold(child, functions) if isinstance(child, dict) else child for child in node["children"]
    ]
    node = {**node, "children": children}
    if node["type"] in ("or_expression", "and_expression") and children[0]["type"] == "literal":
        left_wins = (node["type"] == "or_expression") == _truthy(children[0]["value"])
        return children[0] if left_wins else children[1]
    return node


# Nodes whose code is a few lines without blocks.
_STRAIGHT = {"field", "index", "slice", "identity", "current", "subexpression", "index_expression"}


def _is_straight(node: dict) -> bool:
    return node["type"] in _STRAIGHT and all(_is_straight(c) for c in _children(node))


# Indentation depth at which a subexpression moves into a function of its own,
# well below Python's limit of 20 statically nested blocks.
_MAX_NESTING = 8
# Nodes whose code opens blocks.
_BLOCKS = {
    "projection",
    "value_projection",
    "filter_projection",
    "flatten",
    "multi_select_list",
    "multi_select_dict",
    "or_expression",
    "and_expression",
    "function_expression",
}
_ORDERINGS = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


class _Generator:
    """Writes the Python source of an expression, node by node.

    Each `_<node type>` method writes the statements that evaluate a node on
    the value held in a local variable and returns the name of the variable
    that then holds the result.
    """

    def __init__(self, functions: Mapping[str, Function]) -> None:
        self.functions = functions
        self.namespace: dict[str, Any] = {
            "SearchError": SearchError,
            "_copy": _copy,
            "_equal": _equal,
            "_failed": _failed,
            "_is_array_of": _is_array_of,
            "_type_error": _type_error,
            "_unexpected": _unexpected,
        }
        self.names: dict[int, str] = {}
        self.definitions: list[str] = []
        self.lines: list[str] = []
        self.level = 0
        self.count = 0

    def build(self, node: dict) -> tuple[Callable[[Any], Any], str]:
        """Return a function evaluating the tree `node`, and its source."""
        self.lines, self.level = [], 2
        self.finish(self.emit(node, "value"))
        self.definitions.append(
            "def search(value):\n    try:\n"
            + "\n".join(self.lines)
            + "\n    except SearchError:\n        raise\n"
            + "    except Exception as error:\n        raise _unexpected(error) from error"
        )
        source = "\n\n".join(self.definitions)
        try:
            code = builtins.compile(source, "<jmespath>", "exec")
        except SyntaxError:
            raise CompileError("expression is nested too deeply", 1) from None
        exec(code, self.namespace)
        return self.namespace["search"], source

    def define(self, node: dict) -> str:
        """Write a function of its own evaluating `node`, and return its name."""
        saved = self.lines, self.level
        self.lines, self.level = [], 1
        name = self.temp()
        self.finish(self.emit(node, "value"))
        self.definitions.append(f"def {name}(value):\n" + "\n".join(self.lines))
        self.lines, self.level = saved
        return name

    def temp(self) -> str:
        self.count += 1
        return f"_{self.count}"

    def line(self, text: str) -> None:
        self.lines.append("    " * self.level + text)

    @contextmanager
    def block(self, header: str) -> Iterator[None]:
        self.line(header)
        self.level += 1
        yield
        self.level -= 1

    def finish(self, result: str) -> None:
        """Write the return of `result`, into the line that assigned it if it is the last."""
        indent = "    " * self.level
        if self.lines and self.lines[-1].startswith(f"{indent}{result} = "):
            self.lines[-1] = f"{indent}return {self.lines[-1][len(indent) + len(result) + 3 :]}"
        else:
            self.line(f"return {result}")

    def assign(self, expression: str) -> str:
        name = self.temp()
        self.line(f"{name} = {expression}")
        return name

    def constant(self, value: Any) -> str:
        """Return Python source for a shared constant."""
        if value is None or type(value) in (bool, int, str):
            return repr(value)
        if type(value) is float and math.isfinite(value):
            return repr(value)
        if id(value) not in self.names:
            self.names[id(value)] = name = self.temp()
            self.namespace[name] = value
        return self.names[id(value)]

    def emit(self, node: dict, value: str) -> str:
        """Write code evaluating `node` on the variable `value`; return the result's variable."""
        if self.level >= _MAX_NESTING and node["type"] in _BLOCKS:
            return self.assign(f"{self.define(node)}({value})")
        return getattr(self, f"_{node['type']}")(node, value)

    def condition(self, node: dict, value: str) -> str:
        """Write code evaluating `node`; return a Python test of whether the result is true."""
        if node["type"] == "not_expression":
            return f"(not {self.condition(node['children'][0], value)})"
        if node["type"] == "comparator":
            return self.comparison(node, value)
        return _truthy_test(self.emit(node, value))

    def comparison(self, node: dict, value: str) -> str:
        """Write code evaluating a comparator's operands; return a test of its result."""
        if node["value"] in ("eq", "ne"):
            return self.equality(node, value)
        compare, guards = self.ordering(node, value)
        if guards is None:
            return "False"
        return f"({' and '.join([*guards, compare])})"

    def equality(self, node: dict, value: str) -> str:
        nodes = node["children"]
        names = [self.operand(child, value) for child in nodes]
        test = f"({names[0]} == {names[1]} and _equal({names[0]}, {names[1]}))"
        for child, other in zip(nodes, reversed(names), strict=True):
            if child["type"] == "literal":
                test = _equal_constant_test(other, child["value"], self.constant(child["value"]))
                break
        return test if node["value"] == "eq" else f"(not {test})"

    def ordering(self, node: dict, value: str) -> tuple[str, list[str] | None]:
        """Write code evaluating an ordering's operands; return the comparison and the
        tests that both operands are numbers (None if one is a constant that is not)."""
        nodes = node["children"]
        names = [self.operand(child, value) for child in nodes]
        guards: list[str] | None = []
        for child, name in zip(nodes, names, strict=True):
            if child["type"] != "literal":
                guards.append(_TYPE_TESTS["number"].format(name))
            elif _kind(child["value"]) != "number":
                guards = None
                break
        return f"{names[0]} {_ORDERINGS[node['value']]} {names[1]}", guards

    def operand(self, node: dict, value: str) -> str:
        # A literal operand is only compared, so it can be shared, not copied.
        if node["type"] == "literal":
            return self.constant(node["value"])
        return self.emit(node, value)

    def _literal(self, node: dict, value: str) -> str:
        # Arrays and objects are rebuilt on each search, so that a caller who
        # changes one result does not change the next.
        constant = node["value"]
        if isinstance(constant, (list, dict)):
            return self.assign(f"_copy({self.constant(constant)})")
        return self.assign(self.constant(constant))

    def _identity(self, node: dict, value: str) -> str:
        return value

    _current = _identity

    def _field(self, node: dict, value: str) -> str:
        key = repr(node["value"])
        return self.assign(f"{value}.get({key}) if {_IS_OBJECT.format(value)} else None")

    def _subexpression(self, node: dict, value: str) -> str:
        for child in node["children"]:
            value = self.emit(child, value)
        return value

    _index_expression = _pipe = _subexpression

    def _index(self, node: dict, value: str) -> str:
        index = node["value"]
        within = f"len({value}) > {index}" if index >= 0 else f"len({value}) >= {-index}"
        return self.assign(f"{value}[{index}] if {_IS_ARRAY.format(value)} and {within} else None")

    def _slice(self, node: dict, value: str) -> str:
        bounds = ":".join("" if part is None else str(part) for part in node["children"])
        return self.assign(f"{value}[{bounds}] if {_IS_ARRAY.format(value)} else None")

    def _projection(self, node: dict, value: str) -> str:
        left, right = node["children"]
        if left["type"] == "flatten" and _is_straight(right):
            # Flattening within the projection's loop saves building the flat
            # list, at the price of writing `right` twice, so only when it is short.
            return self.project(self.emit(left["children"][0], value), right, flatten=True)
        return self.project(self.emit(left, value), right)

    def _value_projection(self, node: dict, value: str) -> str:
        left, right = node["children"]
        return self.project(self.emit(left, value), right, values=True)

    def _filter_projection(self, node: dict, value: str) -> str:
        left, right, condition = node["children"]
        return self.project(self.emit(left, value), right, condition=condition)

    def project(
        self,
        base: str,
        right: dict,
        *,
        values: bool = False,
        condition: dict | None = None,
        flatten: bool = False,
    ) -> str:
        """Write a loop collecting the non-null results of `right` on the items of the
        array `base` (or the values of the object `base`) that pass `condition`."""
        result, item = self.temp(), self.temp()
        test = (_IS_OBJECT if values else _IS_ARRAY).format(base)
        items = f"{base}.values()" if values else base
        with self.block(f"if {test}:"):
            if right["type"] == "identity" and condition is None and not flatten:
                self.line(f"{result} = [{item} for {item} in {items} if {item} is not None]")
            else:
                self.line(f"{result} = []")
                with self.block(f"for {item} in {items}:"):
                    if flatten:
                        inner = self.temp()
                        # Items are seldom arrays, so test the slow way only.
                        with self.block(f"if isinstance({item}, list):"):
                            with self.block(f"for {inner} in {item}:"):
                                self.collect(result, right, inner)
                        with self.block("else:"):
                            self.collect(result, right, item)
                    else:
                        passed = self.condition(condition, item) if condition else None
                        with self.block(f"if {passed}:") if passed else nullcontext():
                            self.collect(result, right, item)
        with self.block("else:"):
            self.line(f"{result} = None")
        return result

    def collect(self, result: str, right: dict, item: str) -> None:
        element = self.emit(right, item)
        self.line(f"if {element} is not None: {result}.append({element})")

    def _flatten(self, node: dict, value: str) -> str:
        base = self.emit(node["children"][0], value)
        result, item = self.temp(), self.temp()
        with self.block(f"if {_IS_ARRAY.format(base)}:"):
            self.line(f"{result} = []")
            with self.block(f"for {item} in {base}:"):
                self.line(f"if isinstance({item}, list): {result}.extend({item})")
                self.line(f"else: {result}.append({item})")
        with self.block("else:"):
            self.line(f"{result} = None")
        return result

    def _multi_select_list(self, node: dict, value: str) -> str:
        result = self.temp()
        with self.block(f"if {value} is None:"):
            self.line(f"{result} = None")
        with self.block("else:"):
            items = [self.emit(child, value) for child in node["children"]]
            self.line(f"{result} = [{', '.join(items)}]")
        return result

    def _multi_select_dict(self, node: dict, value: str) -> str:
        result = self.temp()
        with self.block(f"if {value} is None:"):
            self.line(f"{result} = None")
        with self.block("else:"):
            items = [
                f"{pair['value']!r}: {self.emit(pair['children'][0], value)}"
                for pair in node["children"]
            ]
            self.line(f"{result} = {{{', '.join(items)}}}")
        return result

    def _or_expression(self, node: dict, value: str) -> str:
        left, right = node["children"]
        result = self.assign(self.emit(left, value))
        with self.block(f"if not {_truthy_test(result)}:"):
            self.line(f"{result} = {self.emit(right, value)}")
        return result

    def _and_expression(self, node: dict, value: str) -> str:
        left, right = node["children"]
        result = self.assign(self.emit(left, value))
        with self.block(f"if {_truthy_test(result)}:"):
            self.line(f"{result} = {self.emit(right, value)}")
        return result

    def _not_expression(self, node: dict, value: str) -> str:
        return self.assign(f"not {self.condition(node['children'][0], value)}")

    def _comparator(self, node: dict, value: str) -> str:
        if node["value"] in ("eq", "ne"):
            return self.assign(self.equality(node, value))
        # An ordering of anything but two numbers is null, not false.
        compare, guards = self.ordering(node, value)
        if guards is None:
            return self.assign("None")
        if not guards:
            return self.assign(compare)
        return self.assign(f"({compare}) if {' and '.join(guards)} else None")

    def _function_expression(self, node: dict, value: str) -> str:
        function = self.functions[node["value"]]
        args = [
            self.define(arg["children"][0]) if arg["type"] == "expref" else self.emit(arg, value)
            for arg in node["children"]
        ]
        described = self.constant(function)
        for index, (arg, name) in enumerate(zip(node["children"], args, strict=True)):
            param = function._param(index)
            fail = f"_type_error({described}, {index}, {name})"
            if arg["type"] == "expref":
                continue
            if param.startswith("array[") and "|" not in param:
                # The common sum(), avg(), join(): check the items inline.
                item = self.temp()
                with self.block(f"if {_IS_ARRAY.format(name)}:"):
                    with self.block(f"for {item} in {name}:"):
                        self.line(f"if not {_TYPE_TESTS[param[6:-1]].format(item)}: {fail}")
                with self.block("else:"):
                    self.line(fail)
                continue
            test = _type_test(param, name)
            if test is not None:
                self.line(f"if not {test}: {fail}")
        call = f"{self.constant(function.call)}({', '.join(args)})"
        if function is BUILTIN_FUNCTIONS.get(node["value"]):
            return self.assign(call)
        result = self.temp()
        with self.block("try:"):
            self.line(f"{result} = {call}")
        with self.block("except SearchError:"):
            self.line("raise")
        with self.block("except Exception as error:"):
            self.line(f"raise _failed({described}, error) from error")
        return result


def _equal_constant_test(name: str, constant: Any, source: str) -> str:
    """Return a Python test of JMESPath equality between `name` and a constant."""
    kind = _kind(constant)
    if kind in ("null", "boolean"):
        return f"({name} is {source})"
    if kind == "string":
        return f"({name} == {source})"
    if kind == "number":
        return f"({name} == {source} and type({name}) is not bool)"
    return f"_equal({name}, {source})"


def _type_test(param: str, name: str) -> str | None:
    """Return a Python test of whether `name` holds a value of the type `param`."""
    tests = []
    for alternative in param.split("|"):
        if alternative in ("any", "expression"):
            return None
        if alternative.startswith("array["):
            tests.append(f"_is_array_of({name}, {alternative[6:-1]!r})")
        else:
            tests.append(_TYPE_TESTS[alternative].format(name))
    return f"({' or '.join(tests)})"
