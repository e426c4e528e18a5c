"""The two errors of the compiler, and the wording their messages share."""

from __future__ import annotations


class CompileError(ValueError):
    """An expression that cannot be compiled: bad syntax, unknown function, wrong arity."""

    def __init__(self, reason: str, column: int) -> None:
        super().__init__(f"{reason} at column {column}")
        self.reason = reason
        self.column = column


class SearchError(ValueError):
    """A search that hit a value of the wrong type, e.g. `sum()` of strings."""


def words(items: list[str], conjunction: str) -> str:
    """'a', 'a or b', 'a, b or c': items joined for a message."""
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def unexpected(error: Exception) -> SearchError:
    """A SearchError for an error the generated code did not foresee."""
    return SearchError(f"{type(error).__name__}: {error}")
