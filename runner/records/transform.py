"""Transform steps: a record (a JSON object) in, the record out, or a reason it cannot be.

Each step is built once from the spec; `apply` runs on every record and mutates it in place,
since each record is freshly decoded and owned by its journey.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.records.expressions import (
    SYSTEM_CLOCK,
    Clock,
    Expression,
    ExpressionError,
    SearchError,
    compile_object,
    is_true,
)


class TransformError(ValueError):
    """A step failed on one record; the text is the dead-letter reason."""


class Filtered(Exception):
    """A filter step dropped the record."""


@dataclass(frozen=True)
class SetStep:
    """Set attributes to expression values, all computed on the record as it enters."""

    path: str  # e.g. transform[0].set, for reasons
    assignments: tuple[tuple[str, Expression], ...]

    def __post_init__(self) -> None:
        # One search giving every value by name: this runs for every record.
        try:
            values = compile_object(tuple((name, e.text) for name, e in self.assignments))
            object.__setattr__(self, "_values", values.search)
        except ExpressionError:  # nested too deeply together: one search per expression
            object.__setattr__(self, "_values", self._each_value)

    def apply(self, record: dict, clock: Clock = SYSTEM_CLOCK) -> None:
        try:
            values = self._values(record, clock)
        except SearchError:
            raise TransformError(self._failure(record, clock)) from None
        record.update(values)

    def _each_value(self, record: dict, clock: Clock) -> dict:
        return {name: expression.search(record, clock) for name, expression in self.assignments}

    def _failure(self, record: dict, clock: Clock) -> str:
        """Which assignment failed, and why."""
        for name, expression in self.assignments:
            try:
                expression.search(record, clock)
            except SearchError as error:
                return f"{self.path}.{name}: {error}"
        return f"{self.path}: an expression failed"


@dataclass(frozen=True)
class RemoveStep:
    path: str
    names: tuple[str, ...]

    def apply(self, record: dict, clock: Clock = SYSTEM_CLOCK) -> None:
        for name in self.names:
            record.pop(name, None)


@dataclass(frozen=True)
class RenameStep:
    path: str
    names: tuple[tuple[str, str], ...]  # (old, new)

    def apply(self, record: dict, clock: Clock = SYSTEM_CLOCK) -> None:
        for old, new in self.names:
            if old in record:
                record[new] = record.pop(old)


@dataclass(frozen=True)
class FilterStep:
    path: str
    condition: Expression

    def apply(self, record: dict, clock: Clock = SYSTEM_CLOCK) -> None:
        try:
            keep = is_true(self.condition.search(record, clock))
        except SearchError as error:
            raise TransformError(f"{self.path}: {error}") from None
        if not keep:
            raise Filtered()


Step = SetStep | RemoveStep | RenameStep | FilterStep
