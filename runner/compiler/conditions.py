"""The code of conditions: comparisons, and the logical operators `||`, `&&` and `!`."""

from __future__ import annotations

from typing import Any

from runner.compiler.values import TYPE_TESTS, kind_of, truthy_test
from runner.compiler.writer import Writer

_ORDERINGS = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


class Conditions(Writer):
    """Writes the code of comparisons and of the logical operators."""

    def condition(self, node: dict, value: str) -> str:
        """Write code evaluating `node`; return a Python test of whether the result is true."""
        if node["type"] == "not_expression":
            return f"(not {self.condition(node['children'][0], value)})"
        if node["type"] == "comparator":
            return self.comparison(node, value)
        return truthy_test(self.emit(node, value))

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
        test = f"({names[0]} == {names[1]} and equal({names[0]}, {names[1]}))"
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
                guards.append(TYPE_TESTS["number"].format(name))
            elif kind_of(child["value"]) != "number":
                guards = None
                break
        return f"{names[0]} {_ORDERINGS[node['value']]} {names[1]}", guards

    def operand(self, node: dict, value: str) -> str:
        # A literal operand is only compared, so it can be shared, not copied.
        if node["type"] == "literal":
            return self.constant(node["value"])
        return self.emit(node, value)

    def _or_expression(self, node: dict, value: str) -> str:
        # `||` keeps a true left operand and `&&` a false one; only otherwise is
        # the right operand evaluated.
        left, right = node["children"]
        result = self.assign(self.emit(left, value))
        negation = "not " if node["type"] == "or_expression" else ""
        with self.block(f"if {negation}{truthy_test(result)}:"):
            self.line(f"{result} = {self.emit(right, value)}")
        return result

    _and_expression = _or_expression

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


def _equal_constant_test(name: str, constant: Any, source: str) -> str:
    """Return a Python test of JMESPath equality between `name` and a constant."""
    kind = kind_of(constant)
    if kind in ("null", "boolean"):
        return f"({name} is {source})"
    if kind == "string":
        return f"({name} == {source})"
    if kind == "number":
        return f"({name} == {source} and type({name}) is not bool)"
    return f"equal({name}, {source})"
