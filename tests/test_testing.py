"""A spec's tests, read from its `tests:` or from NAME.test.yaml beside it, checked like it."""

import configparser
import datetime
import json

import jsonschema
import pytest
import referencing
import yaml
from conftest import MINIMAL, REPO

from runner import spec
from runner.spec import SpecError, document

TESTS = """\
tests:
  - name: a USA session
    now: "2026-11-26T12:00:00Z"
    records:
      - input: {session_id: a1, country: USA, note: "${prefix} $$5"}
        to: [usa]
        partition_key: a1
      - raw: '{"session_id": "a1"'
        dead_letter: not JSON
"""


def problems(load, *args, **kwargs):
    with pytest.raises(SpecError) as caught:
        load(*args, **kwargs)
    return caught.value.problems


def test_a_specs_tests_hold_each_records_bytes_and_where_each_expectation_is(write_spec):
    path = write_spec(MINIMAL + TESTS)

    (test,) = spec.load(path).tests

    assert (test.name, test.path, test.line) == ("a USA session", path, 16)
    assert test.now == datetime.datetime(2026, 11, 26, 12, tzinfo=datetime.timezone.utc).timestamp()
    first, second = test.records
    # Taken as written: a test's records are data, with no ${...} replaced.
    assert first.data == b'{"session_id": "a1", "country": "USA", "note": "${prefix} $$5"}'
    assert (first.to, first.partition_key, first.dead_letter) == (("usa",), "a1", None)
    assert first.places == {
        "to": f"{path}:20:9: tests[0].records[0].to",
        "partition_key": f"{path}:21:9: tests[0].records[0].partition_key",
    }
    assert (second.index, second.data) == (1, b'{"session_id": "a1"')
    assert second.dead_letter == "not JSON"


def test_a_records_timestamps_and_dates_without_quotes_stay_the_text_written(write_spec):
    path = write_spec(
        MINIMAL
        + "tests:\n  - name: t\n    records:\n"
        + "      - input: {at: 2026-11-26 08:30:00Z, day: 2026-11-26, n: 2026}\n"
        + "        to: [usa]\n"
    )

    (test,) = spec.load(path).tests

    assert test.records[0].data == b'{"at": "2026-11-26 08:30:00Z", "day": "2026-11-26", "n": 2026}'


def test_a_test_file_beside_the_spec_is_read_against_it(write_spec):
    loaded = spec.load(write_spec(MINIMAL))
    beside = write_spec(TESTS.replace('    now: "2026-11-26T12:00:00Z"\n', ""), "spec.test.yaml")

    (test,) = spec.load_tests(beside, loaded)

    assert (test.name, test.path, test.line) == ("a USA session", beside, 2)
    # The schema's default time, when a test gives none.
    assert test.now == datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    assert spec.kept_beside(loaded.path) == beside and spec.spec_beside(beside) == loaded.path
    assert spec.is_test_file(beside) and not spec.is_test_file(loaded.path)


def test_every_mistake_of_a_test_file_is_told_with_its_file_line_and_column(write_spec):
    loaded = spec.load(write_spec(MINIMAL + TESTS))
    beside = write_spec(
        """\
tests:
  - name: a USA session
    now: soon
    records:
      - input: {country: USA}
        to: [usaa, usa]
        recods: 1
      - input: {country: USA}
        to: [usaa]
        assert: [summ(x), "country == \\"USA\\""]
      - input: {}
      - {input: {}, raw: "x", to: []}
      - input: {}
        to: []
        record: {}
        dead_letter: x
      - input: {}
        filtered: false
""",
        "spec.test.yaml",
    )

    assert problems(spec.load_tests, beside, loaded) == [
        f"{beside}:2:11: tests[0].name: another test is named 'a USA session' "
        f"({loaded.path}:16); give each its own name",
        f"{beside}:3:10: tests[0].now: 'soon' is not an ISO-8601 timestamp such as "
        "2026-01-31T12:00:00Z",
        f"{beside}:7:9: tests[0].records[0].recods: unknown key 'recods' (did you mean 'record'? "
        "expected one of: assert, contains, dead_letter, dropped, filtered, input, "
        "partition_key, raw, record, to)",
        f"{beside}:9:14: tests[0].records[1].to[0]: unknown route 'usaa' (routes: usa, other)",
        f"{beside}:10:18: tests[0].records[1].assert[0]: 'summ(x)': unknown function 'summ()' "
        "at column 1; did you mean sum()?",
        f'{beside}:10:27: tests[0].records[1].assert[1]: warning: \'country == "USA"\': "USA" '
        "at column 12 is a field, not text; write 'USA' for the text",
        f"{beside}:11:9: tests[0].records[2]: nothing is expected of this record, so it cannot "
        "fail: add to, partition_key, record, contains, assert, dead_letter, filtered or dropped",
        f"{beside}:12:9: tests[0].records[3]: expected exactly one of input (a JSON value) or "
        "raw (text), got 3 keys: input, raw, to",
        f"{beside}:13:9: tests[0].records[4]: expects record, to: [] and dead_letter at once, "
        "but a record is either written to its routes, dead-lettered, filtered or dropped",
        f"{beside}:18:19: tests[0].records[5].filtered: expected true (leave it out otherwise), "
        "got false",
    ]


def test_a_test_file_typo_at_its_top_and_an_empty_one_are_told_as_a_test_files(write_spec):
    loaded = spec.load(write_spec(MINIMAL))
    typo = write_spec("test:\n  - name: x\n", "spec.test.yaml")
    empty = write_spec("", "other.test.yaml")

    assert problems(spec.load_tests, typo, loaded) == [
        f"{typo}:1:1: missing required key 'tests'",
        f"{typo}:1:1: test: unknown key 'test' (did you mean 'tests'? expected one of: tests)",
    ]
    assert problems(spec.load_tests, empty, loaded) == [
        f"{empty}:1:1: the test file is empty; expected a mapping with tests"
    ]


def test_the_spec_checks_its_own_tests_too(write_spec):
    path = write_spec(MINIMAL + TESTS.replace("to: [usa]", "to: [usaa]"))

    assert problems(spec.load, path) == [
        f"{path}:20:14: tests[0].records[0].to[0]: unknown route 'usaa' (routes: usa, other)"
    ]


def test_a_spec_without_a_route_has_nothing_to_test(write_spec):
    no_route = MINIMAL[: MINIMAL.index("route:")]
    path = write_spec(no_route + TESTS)
    loaded = spec.load(write_spec(no_route, "plain.yaml"))
    beside = write_spec(TESTS, "plain.test.yaml")

    assert problems(spec.load, path) == [
        f"{path}:10:3: tests: the spec has no route, so its tests have nothing to run: add route: "
        "with its cases"
    ]
    assert problems(spec.load_tests, beside, loaded) == [
        f"{beside}:2:3: tests: the spec has no route, so its tests have nothing to run: add "
        f"route: with its cases (spec {loaded.path})"
    ]


def test_a_test_file_with_a_modeline_that_leads_nowhere_is_warned_of(write_spec):
    loaded = spec.load(write_spec(MINIMAL))
    beside = write_spec(
        "# yaml-language-server: $schema=../schemas/pipeline-test.schema.json\n" + TESTS,
        "spec.test.yaml",
    )
    warnings = []

    assert len(spec.load_tests(beside, loaded, warn=warnings.append)) == 1
    assert warnings == [
        f"{beside}:1:33: warning: the yaml-language-server modeline's $schema "
        "'../schemas/pipeline-test.schema.json' does not exist (the path is relative to the "
        "test file's folder), so editors cannot check the test file"
    ]
    assert problems(spec.load_tests, beside, loaded, strict=True) == warnings


def schemas_as_editors_read_them():
    """The shipped schemas, found by their names in schemas/ as an editor finds the file a
    relative $ref names."""
    registry = referencing.Registry().with_resources(
        (path.name, referencing.Resource.from_contents(json.loads(path.read_text())))
        for path in (REPO / "schemas").glob("*.json")
    )
    return registry


def test_the_test_file_schema_takes_its_shape_from_the_spec_schema_as_editors_read_it():
    registry = schemas_as_editors_read_them()
    test_schema = registry["pipeline-test.schema.json"].contents
    validator = jsonschema.Draft202012Validator(test_schema, registry=registry)
    tests = yaml.safe_load(TESTS)
    with_typo = {"tests": [{**tests["tests"][0], "recods": []}]}

    assert test_schema["properties"]["tests"]["$ref"] == "pipeline.schema.json#/properties/tests"
    assert list(validator.iter_errors(tests)) == []
    assert [error.message for error in validator.iter_errors(with_typo)] == [
        "Additional properties are not allowed ('recods' was unexpected)"
    ]


def test_the_test_file_schema_ships_with_the_package_and_describes_its_properties():
    shipped = document.schema_of_tests()

    assert shipped == json.loads((REPO / "schemas" / "pipeline-test.schema.json").read_text())
    assert all("description" in value for value in shipped["properties"].values())
    assert (REPO / "runner" / "pipeline-test.schema.json").resolve() == (
        REPO / "schemas" / "pipeline-test.schema.json"
    )
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    packaged = setup["options.package_data"]["runner"].split(", ")
    assert packaged == ["pipeline.schema.json", "pipeline-test.schema.json"]
