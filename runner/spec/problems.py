"""What a spec's problems are made of, without PyYAML or jsonschema: the path to a node, as a
message writes it, and the one error listing them. The spec layer builds a `Spec` from a
resolved document with only these (`checks.resolved`), where those libraries are absent."""

from __future__ import annotations

SpecPath = tuple  # a path in the spec: keys and list indexes


class SpecError(Exception):
    """A spec that cannot be used; `problems` holds one line per problem, with the spec's
    warnings among them (`warnings`: which they are)."""

    def __init__(self, problems: list[str], warnings: frozenset[str] = frozenset()) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = warnings


def format_path(path: SpecPath) -> str:
    """('route', 'cases', 0, 'to') -> 'route.cases[0].to'."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text
