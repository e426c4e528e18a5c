"""Routing: a transformed record's cases become sink decisions (stream key, partition key)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.backends.limits import MAX_PARTITION_KEY_CHARS
from runner.records.expressions import (
    SYSTEM_CLOCK,
    Clock,
    Expression,
    SearchError,
    is_true,
    json_type,
)


class RouteError(ValueError):
    """Routing failed on one record; the text is the dead-letter reason."""


@dataclass(frozen=True)
class Case:
    to: str  # a key of resources.streams
    when: Expression | None = None
    continue_: bool = False


@dataclass(frozen=True)
class Route:
    partition_key: Expression
    cases: tuple[Case, ...]
    unmatched: str = "dead_letter"  # or "drop"
    newline: bool = True

    def decide(self, record: Any, clock: Clock = SYSTEM_CLOCK) -> tuple[list[str], str]:
        """The sink stream keys the record goes to (empty: no case took it) and its key;
        `clock` gives the time functions of the expressions."""
        sinks = []
        for index, case in enumerate(self.cases):
            if case.when is not None:
                try:
                    taken = is_true(case.when.search(record, clock))
                except SearchError as error:
                    raise RouteError(f"route.cases[{index}].when: {error}") from None
                if not taken:
                    continue
            sinks.append(case.to)
            if not case.continue_:
                break
        if not sinks:
            return sinks, ""
        return sinks, partition_key(self.partition_key, record, clock=clock)


def partition_key(
    expression: Expression,
    record: Any,
    what: str = "route.partition_key",
    clock: Clock = SYSTEM_CLOCK,
) -> str:
    """A record's partition key: the expression's text or number, 1-256 characters."""
    try:
        value = expression.search(record, clock)
    except SearchError as error:
        raise RouteError(f"{what}: {error}") from None
    if isinstance(value, str):
        key = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        key = str(value)
    else:
        raise RouteError(f"{what} gave {json_type(value)}, expected text or a number")
    if not key:
        raise RouteError(f"{what} gave empty text")
    if len(key) > MAX_PARTITION_KEY_CHARS:
        raise RouteError(
            f"{what} gave {len(key)} characters, at most {MAX_PARTITION_KEY_CHARS} allowed"
        )
    return key
