"""Constant folding: the parts of an expression that do not depend on the searched
value are evaluated once, when it compiles."""

from __future__ import annotations

from collections.abc import Mapping

from runner.compiler.checks import children_of
from runner.compiler.codegen import Generator
from runner.compiler.errors import SearchError
from runner.compiler.functions import BUILTIN_FUNCTIONS, Function
from runner.compiler.values import truthy

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
    return all(_is_pure(child, functions) for child in children_of(node))


def _is_constant(node: dict, functions: Mapping[str, Function]) -> bool:
    """Whether a node evaluates to the same value whatever the searched value."""
    kind = node["type"]
    children = children_of(node)
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


def fold(node: dict, functions: Mapping[str, Function]) -> dict:
    """Return the tree with constant subexpressions replaced by their values."""
    if node["type"] != "literal" and _is_constant(node, functions):
        try:
            value = Generator(functions).build(node)[0](None)
        except SearchError:
            pass  # left in place, to fail only if a search reaches it
        else:
            return {"type": "literal", "value": value, "children": []}
    children = [
        fold(child, functions) if isinstance(child, dict) else child for child in node["children"]
    ]
    node = {**node, "children": children}
    if node["type"] in ("or_expression", "and_expression") and children[0]["type"] == "literal":
        left_wins = (node["type"] == "or_expression") == truthy(children[0]["value"])
        return children[0] if left_wins else children[1]
    return node
