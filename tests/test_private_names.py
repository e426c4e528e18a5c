"""Names starting with `_` stay inside their module: no module of the package imports one from
another, or reaches one through another object (its own, `self._x`, is its class's business)."""

import ast
from pathlib import Path

import pytest

import runner

PACKAGE = Path(runner.__file__).parent


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes, variables, attributes, params."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {name for name in names if private(name)}


def crossings(sources: dict[str, str]) -> list[str]:
    """Where a module (path -> source) uses a private name of another: `from m import _x`
    from a module of the package, or `thing._x` with `_x` defined in another module only."""
    trees = {path: ast.parse(source, path) for path, source in sources.items()}
    own = {path: defined(tree) for path, tree in trees.items()}
    anywhere = set().union(*own.values())
    found = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").split(".")[0] == "runner"
            ):
                found += [
                    f"{path}:{node.lineno}: imports {alias.name} from {node.module}"
                    for alias in node.names
                    if private(alias.name)
                ]
            elif (
                isinstance(node, ast.Attribute)
                and private(node.attr)
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and node.attr not in own[path]
                and node.attr in anywhere
            ):
                found.append(f"{path}:{node.lineno}: uses {node.attr} of another module")
    return found


def test_no_module_uses_a_private_name_of_another():
    sources = {
        path.relative_to(PACKAGE.parent).as_posix(): path.read_text()
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    assert crossings(sources) == []


@pytest.mark.parametrize(
    "importer, message",
    [
        ("from runner.a import _helper\n", "b.py:1: imports _helper from runner.a"),
        ("from .a import _helper\n", "b.py:1: imports _helper from a"),
        ("from runner import a\na._helper()\n", "b.py:2: uses _helper of another module"),
        ("def f(thing):\n    thing._helper()\n", "b.py:2: uses _helper of another module"),
    ],
)
def test_the_check_finds_imports_and_uses_of_another_modules_private_names(importer, message):
    sources = {"a.py": "def _helper(): pass\n", "b.py": importer}
    assert crossings(sources) == [message]


def test_the_check_allows_what_a_module_defines_and_its_own_attributes():
    sources = {
        "a.py": "def _helper(): pass\nclass A:\n    _lock = None\n",
        "b.py": "class B:\n    def _helper(self): pass\n    def f(self, other):\n"
        "        self._lock, other._helper()\nfrom runner.a import __version__\n",
    }
    assert crossings(sources) == []
