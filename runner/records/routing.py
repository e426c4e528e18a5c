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

    def __post_init__(self) -> None:
        # Bound once: decide runs for every record.
        cases = tuple(
            (index, case.when.search if case.when else None, case.to, case.continue_)
            for index, case in enumerate(self.cases)
        )
        object.__setattr__(self, "_cases", cases)
        object.__setattr__(self, "_key", self.partition_key.search)

    def decide(self, record: Any, clock: Clock = SYSTEM_CLOCK) -> tuple[list[str], str]:
        """The sink stream keys the record goes to (empty: no case took it) and its key;
        `clock` gives the time functions of the expressions."""
        sinks = []
        for index, when, to, go_on in self._cases:
            if when is not None:
                try:
                    taken = when(record, clock)
                except SearchError as error:
                    raise RouteError(f"route.cases[{index}].when: {error}") from None
                # is_true, inline: only null, false and empty text, arrays and objects are false
                if not (taken or type(taken) is int or type(taken) is float):
                    continue
            sinks.append(to)
            if not go_on:
                break
        if not sinks:
            return sinks, ""
        try:
            key = self._key(record, clock)
        except SearchError as error:
            raise RouteError(f"route.partition_key: {error}") from None
        if type(key) is str and 0 < len(key) <= MAX_PARTITION_KEY_CHARS:
            return sinks, key  # the usual key, as key_text would give it
        return sinks, key_text(key, "route.partition_key")


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
    return key_text(value, what)


def key_text(value: Any, what: str) -> str:
    """A partition key from what its expression (`what`) gave: text or a number, 1-256
    characters."""
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
