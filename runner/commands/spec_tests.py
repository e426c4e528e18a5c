"""`pipeline test`: the tests of specs, kept in them (`tests:`) or beside them (NAME.test.yaml).

Each record goes through `Journey.process`, as in `pipeline run`, with the clock stopped at the
test's `now` and uuid() seeded, so what a test checks is what a run does; no stream, state
folder or backend is touched."""

from __future__ import annotations

import difflib
import json
import re
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
    specs, skipped = specs_at(paths)
    for path in skipped:
        out(f"{path}: skipped: not a pipeline spec")
    try:
        loaded = _loaded(specs, strict, warn)
    except SpecError as error:
        if junit is not None:  # for CI, which shows what is in the file
            _write(junit_problems(error.problems), junit, warn)
        raise
    results: list[tuple[Spec, list[Result]]] = []
    for spec, tests, beside in loaded:
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
    written = junit is None or _write(junit_xml(results), junit, warn)
    out(f"{passed} passed, {failed} failed")  # the last line, whatever happened before
    return 1 if failed or not written else 0


def _write(tree: ElementTree.ElementTree, path: Path, warn: Callable[[str], None]) -> bool:
    """Write JUnit XML to `path`; whether it could (if not, `warn` says why)."""
    try:
        tree.write(path, encoding="utf-8", xml_declaration=True)
    except OSError as error:
        warn(f"error: cannot write the JUnit XML to {path}: {error.strerror or error}")
        return False
    return True


def specs_at(paths: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """The specs `paths` name, each once: a spec, its test file, or a folder (the specs in it,
    by name); and the other YAML files of those folders (not specs: no `pipeline:`), skipped.
    A folder with no spec, or with a test file whose spec is not beside it, raises
    SpecError."""
    specs: list[Path] = []
    skipped: list[Path] = []
    problems = []
    for path in map(Path, paths):
        if not path.is_dir():
            specs.append(spec_beside(path) if is_test_file(path) else path)
            continue
        files = sorted(item for item in path.iterdir() if item.suffix in SPEC_SUFFIXES)
        found = [item for item in files if not is_test_file(item) and item.is_file()]
        skipped.extend(item for item in found if not spec_module.is_spec(item))
        found = [item for item in found if item not in skipped]
        for item in files:
            if is_test_file(item) and not spec_beside(item).is_file():
                problems.append(f"{item}: no spec {spec_beside(item).name} beside it to test")
        if not found:
            problems.append(f"{path}: no specs in it (*.yaml, *.yml)")
        specs.extend(found)
    if problems:
        raise SpecError(problems)
    return list(dict.fromkeys(specs)), list(dict.fromkeys(skipped))


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
    root = _element(None, "testsuites", name="pipeline test")
    for spec, ran in results:
        failed = sum(1 for result in ran if result.failures)
        suite = _element(
            root,
            "testsuite",
            name=str(spec.path),
            tests=str(len(ran)),
            failures=str(failed),
            errors="0",
            skipped="0",
        )
        for result in ran:
            case = _element(
                suite,
                "testcase",
                classname=str(spec.path),
                name=result.test.name,
                file=str(result.test.path),
                line=str(result.test.line),
            )
            if result.failures:
                lines = [line for failure in result.failures for line in failure]
                _element(case, "failure", "\n".join(lines) + "\n", message=result.failures[0][0])
    root.set("tests", str(sum(len(ran) for _, ran in results)))
    root.set("failures", str(sum(1 for _, ran in results for result in ran if result.failures)))
    return _indented(root)


def junit_problems(problems: list[str]) -> ElementTree.ElementTree:
    """JUnit XML for specs or test files that are not valid (no test ran): a testcase with an
    error for each problem, named by where it is (FILE:LINE:COL)."""
    counts = {"tests": str(len(problems)), "failures": "0", "errors": str(len(problems))}
    root = _element(None, "testsuites", name="pipeline test", **counts)
    suite = _element(root, "testsuite", name="invalid specs and test files", **counts, skipped="0")
    for problem in problems:
        where = problem.split(": ", 1)[0]
        case = _element(suite, "testcase", classname=_FILE_OF.sub("", where), name=where)
        _element(case, "error", problem + "\n", message=problem)
    return _indented(root)


_FILE_OF = re.compile(r"(:\d+){1,2}$")  # FILE:LINE:COL -> FILE
# What XML 1.0 cannot hold, even escaped: most control characters, lone surrogates, U+FFFE/F.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    """`text` as XML can hold it: each character it cannot written as its escape, e.g. \\x01."""
    return _NOT_XML.sub(lambda found: repr(found[0])[1:-1], text)


def _element(
    parent: ElementTree.Element | None, tag: str, text: str | None = None, **attributes: str
) -> ElementTree.Element:
    """An element (under `parent`, if any), its text and attributes as XML can hold them."""
    held = {key: _xml(value) for key, value in attributes.items()}
    if parent is None:
        element = ElementTree.Element(tag, held)
    else:
        element = ElementTree.SubElement(parent, tag, held)
    if text is not None:
        element.text = _xml(text)
    return element


def _indented(root: ElementTree.Element) -> ElementTree.ElementTree:
    tree = ElementTree.ElementTree(root)
    ElementTree.indent(tree)
    return tree
