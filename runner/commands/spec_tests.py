"""`pipeline test`: the tests of specs, kept in them (`tests:`) or beside them (NAME.test.yaml).

Each record goes through `Journey.process`, as in `pipeline run`, with the clock stopped at the
test's `now` and uuid() seeded, so what a test checks is what a run does; no stream, state
folder or backend is touched."""

from __future__ import annotations

import difflib
import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import spec as spec_module
from runner.compiler.values import equal
from runner.records.expressions import Clock, SearchError, is_true, seeded_uuids
from runner.records.processor import DEAD_LETTER, DROPPED, FILTERED, ROUTED, Journey, Outcome
from runner.spec import (
    RecordTest,
    Spec,
    SpecError,
    SpecTest,
    is_test_file,
    kept_beside,
    spec_beside,
)
from runner.spec.testing import SPEC_SUFFIXES

# Expected of a record written to its routes; each other expectation names a fate of its own.
WRITTEN = ("partition_key", "record", "contains", "assert")
FATES = {"dead_letter": DEAD_LETTER, "filtered": FILTERED, "dropped": DROPPED}


@dataclass(frozen=True)
class Result:
    """A test run: each failure is lines, the first saying where it is written and what."""

    spec: Spec
    test: SpecTest
    failures: tuple[tuple[str, ...], ...]


def run_tests(
    paths: Iterable[str],
    *,
    out: Callable[[str], None],
    warn: Callable[[str], None],
    strict: bool = False,
    junit: Path | None = None,
) -> int:
    """Run the tests of the specs at `paths` (a folder: every spec in it), `out` a line per
    test (and the lines of its failures), one per spec without tests, and the tally; `warn`
    each likely mistake of a spec or test file, which `strict` refuses; write JUnit XML to
    `junit`. Returns 0 if every test passed, 1 if one failed. A spec or test file that is not
    valid raises SpecError with the problems of all, before any test runs."""
    results: list[tuple[Spec, list[Result]]] = []
    for spec, tests, beside in _loaded(specs_at(paths), strict, warn):
        if not tests and spec.route is None:
            out(f"{spec.path}: no tests: it has no route, so no record goes anywhere to test")
        elif not tests:
            out(f"{spec.path}: no tests (write them under tests: in it, or in {beside})")
        ran = [Result(spec, test, run_test(spec, test)) for test in tests]
        for result in ran:
            out(f"{'FAIL' if result.failures else 'PASS'} {spec.path}: {result.test.name}")
            for failure in result.failures:
                out(f"  {failure[0]}")
                for line in failure[1:]:
                    out(f"    {line}")
        results.append((spec, ran))
    failed = sum(1 for _, ran in results for result in ran if result.failures)
    passed = sum(len(ran) for _, ran in results) - failed
    out(f"{passed} passed, {failed} failed")
    if junit is not None:
        junit_xml(results).write(junit, encoding="utf-8", xml_declaration=True)
    return 1 if failed else 0


def specs_at(paths: Iterable[str]) -> list[Path]:
    """The specs `paths` name, each once: a spec, its test file, or a folder (the specs in it,
    by name). A folder with no spec, or with a test file whose spec is not beside it, raises
    SpecError."""
    specs: list[Path] = []
    problems = []
    for path in map(Path, paths):
        if not path.is_dir():
            specs.append(spec_beside(path) if is_test_file(path) else path)
            continue
        files = sorted(item for item in path.iterdir() if item.suffix in SPEC_SUFFIXES)
        found = [item for item in files if not is_test_file(item) and item.is_file()]
        for item in files:
            if is_test_file(item) and not spec_beside(item).is_file():
                problems.append(f"{item}: no spec {spec_beside(item).name} beside it to test")
        if not found:
            problems.append(f"{path}: no specs in it (*.yaml, *.yml)")
        specs.extend(found)
    if problems:
        raise SpecError(problems)
    return list(dict.fromkeys(specs))


def _loaded(
    paths: list[Path], strict: bool, warn: Callable[[str], None]
) -> list[tuple[Spec, tuple[SpecTest, ...], Path]]:
    """Each spec with its tests and the test file they may be kept in; every problem of every
    spec and test file in one SpecError."""
    loaded, problems = [], []
    for path in paths:
        try:
            spec = spec_module.load(path, strict=strict)
            for line in spec.warnings:
                warn(line)
            beside, tests = kept_beside(path), spec.tests
            if beside.is_file():
                tests += spec_module.load_tests(beside, spec, strict=strict, warn=warn)
            loaded.append((spec, tests, beside))
        except SpecError as error:
            problems.extend(error.problems)
    if problems:
        raise SpecError(problems)
    return loaded


def run_test(spec: Spec, test: SpecTest) -> tuple[tuple[str, ...], ...]:
    """The failures of `test` on `spec`, its records handled in order by one journey."""
    clock = Clock(lambda: test.now, uuid=seeded_uuids())
    journey = Journey(spec.transform, spec.route, clock)
    return tuple(
        failure
        for record in test.records
        for failure in _failures(record, journey.process(record.data), clock)
    )


def _failures(expected: RecordTest, outcome: Outcome, clock: Clock) -> Iterator[tuple[str, ...]]:
    where = expected.places
    fate = _fate(outcome)
    routed = outcome.kind == ROUTED
    if expected.to is not None:
        sinks = sorted(outcome.sinks) if routed else []
        if sinks != sorted(expected.to):
            instead = "" if routed else f" ({fate})"
            yield (f"{where['to']}: expected {_keys(expected.to)}, got {_keys(sinks)}{instead}",)
    if routed:
        yield from _written(expected, outcome, clock)
    elif not expected.to:  # a `to` of route keys already said what came instead
        written = [key for key in WRITTEN if key in where]
        if written:
            yield (f"{where[written[0]]}: expected the record written, got {fate}",)
    for key, kind in FATES.items():
        if key in where and outcome.kind != kind:
            wanted = key.replace("_", "-") + ("ed" if key == "dead_letter" else "")
            yield (f"{where[key]}: expected the record {wanted}, got {fate}",)
    if expected.dead_letter is not None and outcome.kind == DEAD_LETTER:
        if expected.dead_letter not in outcome.reason:
            yield (
                f"{where['dead_letter']}: expected a reason containing "
                f"{expected.dead_letter!r}, got {outcome.reason!r}",
            )


def _written(expected: RecordTest, outcome: Outcome, clock: Clock) -> Iterator[tuple[str, ...]]:
    """What differs between the record as written and as expected."""
    where = expected.places
    record = json.loads(outcome.payload)
    if expected.partition_key is not None and outcome.partition_key != expected.partition_key:
        yield (
            f"{where['partition_key']}: expected {expected.partition_key!r}, "
            f"got {outcome.partition_key!r}",
        )
    if expected.record is not None and not equal(expected.record, record):
        yield (
            f"{where['record']}: the record written differs (-expected +got):",
            *_diff(expected.record, record),
        )
    if expected.contains is not None and not _contains(expected.contains, record):
        yield (
            f"{where['contains']}: the record written does not hold it (-expected +got):",
            *_diff(expected.contains, _within(expected.contains, record)),
        )
    for place, expression in expected.asserts:
        try:
            value = expression.search(record, clock)
        except SearchError as error:
            yield (f"{place}: {expression.text!r} fails on the record written: {error}",)
            continue
        if not is_true(value):
            yield (
                f"{place}: {expression.text!r} is {_json(value)}, not true, on the record written:",
                _json(record),
            )


def _fate(outcome: Outcome) -> str:
    if outcome.kind == ROUTED:
        return f"written to {_keys(outcome.sinks)} with partition key {outcome.partition_key!r}"
    if outcome.kind == FILTERED:
        return "filtered"
    return f"{'dead-lettered' if outcome.kind == DEAD_LETTER else 'dropped'}: {outcome.reason}"


def _keys(keys: Iterable[str]) -> str:
    return f"[{', '.join(keys)}]"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _contains(expected: Any, got: Any) -> bool:
    """Whether `got` holds `expected`: a mapping's keys with values it holds, all the way
    down; any other value equal."""
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(
            key in got and _contains(value, got[key]) for key, value in expected.items()
        )
    return equal(expected, got)


def _within(expected: Any, got: Any) -> Any:
    """`got` cut down to the keys `expected` names, all the way down, for a diff of only
    those."""
    if isinstance(expected, dict) and isinstance(got, dict):
        return {key: _within(value, got[key]) for key, value in expected.items() if key in got}
    return got


def _diff(expected: Any, got: Any) -> list[str]:
    """A unified diff of two JSON values, pretty-printed with their keys sorted."""

    def lines(value: Any) -> list[str]:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()

    return list(difflib.unified_diff(lines(expected), lines(got), "expected", "got", lineterm=""))


def junit_xml(results: list[tuple[Spec, list[Result]]]) -> ElementTree.ElementTree:
    """JUnit XML for CI: a testsuite per spec, a testcase per test, a failure with its lines."""
    root = ElementTree.Element("testsuites", name="pipeline test")
    for spec, ran in results:
        failed = sum(1 for result in ran if result.failures)
        suite = ElementTree.SubElement(
            root,
            "testsuite",
            name=str(spec.path),
            tests=str(len(ran)),
            failures=str(failed),
            errors="0",
            skipped="0",
        )
        for result in ran:
            case = ElementTree.SubElement(
                suite,
                "testcase",
                classname=str(spec.path),
                name=result.test.name,
                file=str(result.test.path),
                line=str(result.test.line),
            )
            if result.failures:
                lines = [line for failure in result.failures for line in failure]
                failure = ElementTree.SubElement(case, "failure", message=result.failures[0][0])
                failure.text = "\n".join(lines) + "\n"
    root.set("tests", str(sum(len(ran) for _, ran in results)))
    root.set("failures", str(sum(1 for _, ran in results for result in ran if result.failures)))
    tree = ElementTree.ElementTree(root)
    ElementTree.indent(tree)
    return tree
