"""The writer of a generated function's source: its lines and indentation, its
temporary names and shared constants, and the building of the function itself."""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from runner.compiler.errors import CompileError, SearchError, unexpected
from runner.compiler.functions import failed, type_error
from runner.compiler.values import deep_copy, equal, is_array_of

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


class Writer:
    """Writes the source of a function, line by line, and builds it.

    `emit` writes the code of a node by calling the method `_<node type>`,
    which subclasses define.
    """

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {
            "SearchError": SearchError,
            "deep_copy": deep_copy,
            "equal": equal,
            "failed": failed,
            "is_array_of": is_array_of,
            "type_error": type_error,
            "unexpected": unexpected,
        }
        self.names: dict[int, str] = {}
        self.definitions: list[str] = []
        self.lines: list[str] = []
        self.level = 0
        self.count = 0

    def build(self, node: dict, context: Any = None) -> tuple[Callable[..., Any], str]:
        """Return a function `search(value, context=context)` evaluating the tree `node`, and
        its source."""
        self.lines, self.level = [], 2
        self.finish(self.emit(node, "value"))
        self.definitions.append(
            f"def search(value, context={self.constant(context)}):\n    try:\n"
            + "\n".join(self.lines)
            + "\n    except SearchError:\n        raise\n"
            + "    except Exception as error:\n        raise unexpected(error) from error"
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
        self.definitions.append(f"def {name}(value, context=None):\n" + "\n".join(self.lines))
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
            return self.assign(f"{self.define(node)}({value}, context)")
        return getattr(self, f"_{node['type']}")(node, value)
