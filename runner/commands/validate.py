"""`pipeline validate`: check specs (and files of their tests) and say what each declares;
touches nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from runner.commands.target import Target
from runner.plural import count
from runner.spec import SpecError, is_test_file, load_tests, spec_beside


def validate(
    paths: Iterable[str],
    target: Target,
    *,
    strict: bool,
    out: Callable[[str], None],
    warn: Callable[[str], None],
) -> int:
    """Check every spec, and every test file (NAME.test.yaml) against its spec, `out` a summary
    line for each valid one and `warn` its warnings; raises one SpecError with the problems of
    all the others. Returns 0."""
    problems: list[str] = []
    for path in paths:
        try:
            if is_test_file(Path(path)):
                spec = target.load(str(spec_beside(Path(path))), strict=strict, warn=warn)
                tests = load_tests(path, spec, strict=strict, warn=warn)
                out(f"{path}: ok: {count(len(tests), 'test')} of {spec.path}")
                continue
            loaded = target.load(path, strict=strict, warn=warn)
            out(loaded.summary())
        except SpecError as error:
            problems.extend(error.problems)
    if problems:
        raise SpecError(problems)
    return 0
