"""A spec's tests, for `pipeline test`: records in, at a fixed time, and what must come out of
each. They are read from the spec's `tests:` (by `load`) or from NAME.test.yaml beside it (by
`load_tests`), and checked and compiled like the rest of the spec. Imports no YAML or JSON
Schema library."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runner.records.expressions import Expression
from runner.spec.position import parse_timestamp
from runner.spec.problems import SpecPath, format_path

SPEC_SUFFIXES = (".yaml", ".yml")
# What a record may expect: of the record as it is written, or that it is written nowhere.
ROUTED = ("to", "partition_key", "record", "contains", "assert")
NOT_ROUTED = ("dead_letter", "filtered", "dropped")


@dataclass(frozen=True)
class RecordTest:
    """One record of a test: its bytes, and what must come out of them (None: not said)."""

    index: int
    data: bytes
    # Where each expectation is written (by its key: to, record, ...), as problems name it:
    # FILE:LINE:COL: tests[0].records[1].to
    places: Mapping[str, str] = field(compare=False)
    to: tuple[str, ...] | None = None
    partition_key: str | None = None
    record: dict | None = None
    contains: dict | None = None
    asserts: tuple[tuple[str, Expression], ...] = ()  # each with where it is written
    dead_letter: str | None = None  # text the reason must contain
    filtered: bool = False
    dropped: bool = False


@dataclass(frozen=True)
class SpecTest:
    """A test: records handled one after another with the clock stopped at `now`."""

    name: str
    now: float  # seconds since 1970
    records: tuple[RecordTest, ...]
    path: Path  # the file it is written in: the spec, or its test file
    line: int


def kept_beside(spec: Path) -> Path:
    """Where the tests of the spec NAME.yaml may be kept beside it: NAME.test.yaml."""
    return spec.with_name(f"{spec.stem}.test{spec.suffix}")


def is_test_file(path: Path) -> bool:
    """Whether `path` names a file of tests (NAME.test.yaml), not a spec."""
    return path.suffix in SPEC_SUFFIXES and path.stem.endswith(".test")


def spec_beside(tests: Path) -> Path:
    """The spec whose tests the file NAME.test.yaml holds: NAME.yaml."""
    return tests.with_name(tests.stem.removesuffix(".test") + tests.suffix)


class _Reader(Protocol):
    path: Path

    def problem(self, path: SpecPath, message: str, *, at_key: bool = False) -> None: ...

    def locate(self, path: SpecPath, *, at_key: bool = False) -> tuple[int, int]: ...


def build_tests(
    reader: _Reader,
    raw: Any,
    routes: tuple[str, ...] | None,
    wrong: set[SpecPath],
    expression: Callable[[SpecPath, str], Expression | None],
    taken: dict[str, str],
) -> tuple[SpecTest, ...]:
    """The tests of `raw` (the value of `tests:`), each problem told to `reader`: those of a
    part the schema found `wrong` are not looked for. `routes` are the keys a record may go
    to (None: unknown, the route being wrong), `expression(path, text)` compiles an `assert`,
    and `taken` holds the names of the tests already read, with where each is (FILE:LINE)."""
    if not isinstance(raw, list):
        return ()
    tests = []
    for index, test in enumerate(raw):
        path = ("tests", index)
        if _is_wrong(path, wrong, below=False):
            continue
        line = reader.locate(path)[0]
        name, now = test.get("name", ""), 0.0
        if not _is_wrong(path + ("name",), wrong):
            if name in taken:
                reader.problem(
                    path + ("name",),
                    f"another test is named '{name}' ({taken[name]}); give each its own name",
                )
            taken.setdefault(name, f"{reader.path}:{line}")
        if not _is_wrong(path + ("now",), wrong):
            try:
                now = parse_timestamp(test["now"]).timestamp()
            except ValueError as error:
                reader.problem(path + ("now",), str(error))
        records = []
        if not _is_wrong(path + ("records",), wrong, below=False):
            for number, record in enumerate(test["records"]):
                where = path + ("records", number)
                if not _is_wrong(where, wrong):
                    records.append(_record(reader, record, where, routes, expression))
        tests.append(SpecTest(name, now, tuple(records), reader.path, line))
    return tuple(tests)


def _is_wrong(path: SpecPath, wrong: set[SpecPath], *, below: bool = True) -> bool:
    """Whether the schema found a problem at `path`, in a part holding it, or (`below`) in a
    part of it."""
    return any(
        path[: len(found)] == found or (below and found[: len(path)] == path) for found in wrong
    )


def _record(
    reader: _Reader,
    raw: dict,
    path: SpecPath,
    routes: tuple[str, ...] | None,
    expression: Callable[[SpecPath, str], Expression | None],
) -> RecordTest:
    expected = [key for key in ROUTED + NOT_ROUTED if key in raw]
    if not expected:
        reader.problem(
            path,
            "nothing is expected of this record, so it cannot fail: add "
            + _listed([*ROUTED, *NOT_ROUTED], "or"),
        )
    written = [key for key in ROUTED if key in raw and raw[key] != []]
    fates = [key for key in NOT_ROUTED if key in raw]
    if len(fates) > 1 or (written and (fates or raw.get("to") == [])):
        clashing = written + (["to: []"] if raw.get("to") == [] else []) + fates
        reader.problem(
            path,
            f"expects {_listed(clashing, 'and')} at once, but a record is either written to its "
            "routes, dead-lettered, filtered or dropped",
        )
    to = raw.get("to")
    for index, key in enumerate(to or ()):
        if routes is not None and key not in routes:
            known = ", ".join(routes)
            reader.problem(path + ("to", index), f"unknown route '{key}' (routes: {known})")
    texts = raw.get("assert", [])
    if isinstance(texts, str):
        texts = {path + ("assert",): texts}
    else:
        texts = {path + ("assert", index): text for index, text in enumerate(texts)}
    asserts = []
    for where, text in texts.items():
        compiled = expression(where, text)
        if compiled is not None:
            asserts.append((_place(reader, where), compiled))
    data = raw["raw"] if "raw" in raw else json.dumps(raw["input"], ensure_ascii=False)
    return RecordTest(
        index=path[-1],
        # A lone surrogate (\ud800 in YAML) gives bytes that are not UTF-8, as a producer might.
        data=data.encode("utf-8", "surrogatepass"),
        places={key: _place(reader, path + (key,), at_key=True) for key in expected},
        to=None if to is None else tuple(to),
        partition_key=raw.get("partition_key"),
        record=raw.get("record"),
        contains=raw.get("contains"),
        asserts=tuple(asserts),
        dead_letter=raw.get("dead_letter"),
        filtered=raw.get("filtered", False),
        dropped=raw.get("dropped", False),
    )


def _place(reader: _Reader, path: SpecPath, *, at_key: bool = False) -> str:
    """Where the node of `path` (or its key) is written: FILE:LINE:COL: PATH."""
    line, col = reader.locate(path, at_key=at_key)
    return f"{reader.path}:{line}:{col}: {format_path(path)}"


def _listed(words: list[str], last: str) -> str:
    """['a', 'b', 'c'] -> 'a, b or c'."""
    return ", ".join(words[:-1]) + f" {last} {words[-1]}" if len(words) > 1 else words[0]
