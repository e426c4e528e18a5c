"""Compile JMESPath expressions into Python functions.

An expression is compiled once, when a spec loads, and then searched on every
record of a stream. `compile` parses it with the jmespath package's parser,
checks function names, arities and `&expression` arguments, folds the parts
that do not depend on the record, and writes the source of one Python function
that evaluates the rest with JMESPath's semantics. Searching is then a single
call of that function, about as fast as the same logic written by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.compiler.checks import parse, quoted_operands
from runner.compiler.codegen import Generator
from runner.compiler.errors import CompileError, SearchError
from runner.compiler.folding import fold
from runner.compiler.functions import BUILTIN_FUNCTIONS, Function

__all__ = [
    "BUILTIN_FUNCTIONS",
    "CompileError",
    "Compiled",
    "Function",
    "SearchError",
    "compile",
    "compile_object",
    "quoted_operands",
]


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled expression: `search(value)` evaluates it on a JSON value.

    `search(value, context)` passes `context` to the contextual functions it
    calls (such as a clock to functions giving the time); without it, they
    receive the context given to `compile`. On a JSON value, `search` raises
    no error but SearchError, as when a function meets an argument of the
    wrong type. `source` is the generated Python, for debugging.
    """

    text: str
    search: Callable[..., Any] = field(repr=False, compare=False)
    source: str = field(repr=False, compare=False)


def compile(
    text: str, functions: Mapping[str, Function] | None = None, context: Any = None
) -> Compiled:
    """Compile a JMESPath expression, or raise CompileError saying what is wrong and where.

    `functions` adds to the built-in functions, by name, or replaces them; `context` is
    what searches pass to contextual functions unless given another.
    """
    table = {**BUILTIN_FUNCTIONS, **(functions or {})}
    try:
        tree = parse(text, table)
        search, source = Generator(table).build(fold(tree, table), context)
    except RecursionError:
        raise CompileError("expression is nested too deeply", 1) from None
    return Compiled(text, search, source)


def compile_object(
    fields: Sequence[tuple[str, str]],
    functions: Mapping[str, Function] | None = None,
    context: Any = None,
) -> Compiled:
    """Compile several expressions into one function giving the object of their values by
    name, as the multi-select hash `{name: expression, ...}` gives it on an object (null on
    null). One search in place of one per expression: a set step's values in one call.

    Each expression is checked as `compile` checks it; `text` is the multi-select hash."""
    table = {**BUILTIN_FUNCTIONS, **(functions or {})}
    pairs = [
        {"type": "key_val_pair", "value": name, "children": [parse(text, table)]}
        for name, text in fields
    ]
    tree = {"type": "multi_select_dict", "children": pairs}
    text = "{" + ", ".join(f"{json.dumps(name)}: {text}" for name, text in fields) + "}"
    try:
        search, source = Generator(table).build(fold(tree, table), context)
    except RecursionError:
        raise CompileError("expression is nested too deeply", 1) from None
    return Compiled(text, search, source)
