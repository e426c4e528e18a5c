"""`pipeline validate`: check specs and say what each declares; touches nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from runner.commands.target import Target
from runner.spec import SpecError


def validate(
    paths: Iterable[str],
    target: Target,
    *,
    strict: bool,
    out: Callable[[str], None],
    warn: Callable[[str], None],
) -> int:
    """Check every spec, `out` a summary line for each valid one and `warn` its warnings;
    raises one SpecError with the problems of all the others. Returns 0."""
    problems: list[str] = []
    for path in paths:
        try:
            loaded = target.load(path, strict=strict, warn=warn)
            out(loaded.summary())
        except SpecError as error:
            problems.extend(error.problems)
    if problems:
        raise SpecError(problems)
    return 0
