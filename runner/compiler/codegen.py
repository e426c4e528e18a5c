"""The Python source generator: writes one function evaluating an expression's
syntax tree with JMESPath's semantics."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext

from runner.compiler.checks import children_of
from runner.compiler.conditions import Conditions
from runner.compiler.functions import BUILTIN_FUNCTIONS, Function
from runner.compiler.values import IS_ARRAY, IS_OBJECT, TYPE_TESTS

# Nodes whose code is a few lines without blocks.
_STRAIGHT = {"field", "index", "slice", "identity", "current", "subexpression", "index_expression"}


def _is_straight(node: dict) -> bool:
    return node["type"] in _STRAIGHT and all(_is_straight(c) for c in children_of(node))


class Generator(Conditions):
    """Writes the Python source of an expression, node by node.

    Each `_<node type>` method writes the statements that evaluate a node on
    the value held in a local variable and returns the name of the variable
    that then holds the result.
    """

    def __init__(self, functions: Mapping[str, Function]) -> None:
        super().__init__()
        self.functions = functions

    def _literal(self, node: dict, value: str) -> str:
        # Arrays and objects are rebuilt on each search, so that a caller who
        # changes one result does not change the next.
        constant = node["value"]
        if isinstance(constant, (list, dict)):
            return self.assign(f"deep_copy({self.constant(constant)})")
        return self.assign(self.constant(constant))

    def _identity(self, node: dict, value: str) -> str:
        return value

    _current = _identity

    def _field(self, node: dict, value: str) -> str:
        key = repr(node["value"])
        return self.assign(f"{value}.get({key}) if {IS_OBJECT.format(value)} else None")

    def _subexpression(self, node: dict, value: str) -> str:
        for child in node["children"]:
            value = self.emit(child, value)
        return value

    _index_expression = _pipe = _subexpression

    def _index(self, node: dict, value: str) -> str:
        index = node["value"]
        within = f"len({value}) > {index}" if index >= 0 else f"len({value}) >= {-index}"
        return self.assign(f"{value}[{index}] if {IS_ARRAY.format(value)} and {within} else None")

    def _slice(self, node: dict, value: str) -> str:
        bounds = ":".join("" if part is None else str(part) for part in node["children"])
        return self.assign(f"{value}[{bounds}] if {IS_ARRAY.format(value)} else None")

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
        test = (IS_OBJECT if values else IS_ARRAY).format(base)
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
        with self.block(f"if {IS_ARRAY.format(base)}:"):
            self.line(f"{result} = []")
            with self.block(f"for {item} in {base}:"):
                self.line(f"if isinstance({item}, list): {result}.extend({item})")
                self.line(f"else: {result}.append({item})")
        with self.block("else:"):
            self.line(f"{result} = None")
        return result

    def _multi_select_list(self, node: dict, value: str) -> str:
        return self.select(node, value, "[{}]", lambda child: self.emit(child, value))

    def _multi_select_dict(self, node: dict, value: str) -> str:
        def entry(pair: dict) -> str:
            return f"{pair['value']!r}: {self.emit(pair['children'][0], value)}"

        return self.select(node, value, "{{{}}}", entry)

    def select(self, node: dict, value: str, brackets: str, item: Callable[[dict], str]) -> str:
        """Write a multi-select: null if `value` is null, else the `item`s of the children
        of `node`, joined by commas into `brackets`."""
        result = self.temp()
        with self.block(f"if {value} is None:"):
            self.line(f"{result} = None")
        with self.block("else:"):
            items = [item(child) for child in node["children"]]
            self.line(f"{result} = {brackets.format(', '.join(items))}")
        return result

    def expref(self, node: dict) -> str:
        """Write a function of its own for an `&expression` argument; return the source of
        a one-argument function evaluating it, in the search's context where it needs one."""
        name = self.define(node)
        if not self.uses_context(node):
            return name
        return f"(lambda value: {name}(value, context))"

    def uses_context(self, node: dict) -> bool:
        """Whether `node` calls a contextual function."""
        if node["type"] == "function_expression" and self.functions[node["value"]].contextual:
            return True
        return any(self.uses_context(child) for child in children_of(node))

    def _function_expression(self, node: dict, value: str) -> str:
        function = self.functions[node["value"]]
        args = [
            self.expref(arg["children"][0]) if arg["type"] == "expref" else self.emit(arg, value)
            for arg in node["children"]
        ]
        described = self.constant(function)
        for index, (arg, name) in enumerate(zip(node["children"], args, strict=True)):
            param = function.param(index)
            fail = f"type_error({described}, {index}, {name})"
            if arg["type"] == "expref":
                continue
            if param.startswith("array[") and "|" not in param:
                # The common sum(), avg(), join(): check the items inline.
                item = self.temp()
                with self.block(f"if {IS_ARRAY.format(name)}:"):
                    with self.block(f"for {item} in {name}:"):
                        self.line(f"if not {TYPE_TESTS[param[6:-1]].format(item)}: {fail}")
                with self.block("else:"):
                    self.line(fail)
                continue
            test = _type_test(param, name)
            if test is not None:
                self.line(f"if not {test}: {fail}")
        passed = ["context", *args] if function.contextual else args
        call = f"{self.constant(function.call)}({', '.join(passed)})"
        if function is BUILTIN_FUNCTIONS.get(node["value"]):
            return self.assign(call)
        result = self.temp()
        with self.block("try:"):
            self.line(f"{result} = {call}")
        with self.block("except SearchError:"):
            self.line("raise")
        with self.block("except Exception as error:"):
            self.line(f"raise failed({described}, error) from error")
        return result


def _type_test(param: str, name: str) -> str | None:
    """Return a Python test of whether `name` holds a value of the type `param`."""
    tests = []
    for alternative in param.split("|"):
        if alternative in ("any", "expression"):
            return None
        if alternative.startswith("array["):
            tests.append(f"is_array_of({name}, {alternative[6:-1]!r})")
        else:
            tests.append(TYPE_TESTS[alternative].format(name))
    return f"({' or '.join(tests)})"
