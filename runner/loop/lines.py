"""The lines a run reports, with what a machine reading them wants beside their text.

A run's report callbacks take text; a `Line` is text that also carries its level and fields,
which `pipeline run --log-format json` writes as JSON (runner.commands.log) and the human
format leaves out. Plain text is a line at level info without fields.
"""

from __future__ import annotations

from collections.abc import Callable

INFO, WARNING, ERROR = "info", "warning", "error"


class Line(str):
    """Text with a level and fields, e.g. Line("in 3 | ...", INFO, event="status", ...)."""

    level: str
    fields: dict[str, object]

    def __new__(cls, text: str, level: str = INFO, **fields: object) -> Line:
        line = super().__new__(cls, text)
        line.level = level
        line.fields = fields
        return line


def after(prefix: str, line: str) -> str:
    """`prefix` + `line`, keeping the line's level and fields."""
    if isinstance(line, Line):
        return Line(prefix + line, line.level, **line.fields)
    return prefix + line


def of_pipeline(pipeline: str, report: Callable[[str], None]) -> Callable[[str], None]:
    """`report`, saying each line as one of `pipeline`: after "[pipeline] "."""
    return lambda line: report(after(f"[{pipeline}] ", line))
