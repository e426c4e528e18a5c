"""`pipeline test`: a spec's tests run in process, reported like a test runner's."""

import os
import shutil
import xml.etree.ElementTree as ElementTree

import pytest
from click.testing import CliRunner
from conftest import MINIMAL, PIPELINES, REPO

from runner.cli import cli
from runner.commands.spec_tests import run_tests
from runner.spec import SpecError

SHOP = """\
pipeline: shop
resources:
  streams:
    source: {name: in, shards: 1}
    usa: {name: usa-out, shards: 2}
    other: {name: other-out, shards: 1}
    audit: {name: audit-out, shards: 1}
source:
  stream: source
transform:
  - filter: "!skip"
  - set: {at: now(), seconds: epoch(), millis: epoch_ms(), id: uuid()}
route:
  partition_key: session_id
  unmatched: drop
  cases:
    - {when: big, to: audit, continue: true}
    - {when: "country == 'USA'", to: usa}
    - {when: "country == 'France'", to: other}
"""

AS_EXPECTED = """\
tests:
  - name: every fate, as expected
    now: "2026-11-26T12:00:00.25Z"
    records:
      - input: {session_id: a1, country: USA}
        to: [usa]
        partition_key: a1
        record:
          session_id: a1
          country: USA
          at: "2026-11-26T12:00:00.250+00:00"
          seconds: 1795694400
          millis: 1795694400250
          id: e3e70682-c209-4cac-a29f-6fbed82c07cd
      - input: {session_id: b2, country: USA, big: true, nested: {a: 1, b: [1, 2]}}
        to: [usa, audit]
        contains: {nested: {a: 1}, id: f728b4fa-4248-4e3a-8a5d-2f346baa9455}
        assert: ["big", "millis == `1795694400250`"]
      - input: {session_id: c3, country: Peru}
        dropped: true
      - input: {skip: true}
        filtered: true
        to: []
      - raw: "not json"
        dead_letter: not JSON
"""

WRONG = """\
  - name: every fate, wrong
    records:
      - input: {session_id: a1, country: USA}
        to: [other]
      - input: {session_id: a1, country: USA, big: true}
        to: [usa]
        partition_key: b1
        record: {session_id: a1, country: USA, big: false}
        contains: {big: false, nested: {a: 1}}
        assert: [big == `false`, "length(big)"]
      - input: {session_id: c3, country: Peru}
        filtered: true
      - input: {skip: true}
        dropped: true
      - raw: "not json"
        dead_letter: not UTF-8
      - input: {session_id: a1, country: USA}
        dead_letter: not JSON
      - raw: "[1]"
        record: {}
"""

RECORD = (
    '{"session_id": "a1", "country": "USA", "big": true, "at": "2026-01-01T00:00:00.000+00:00", '
    '"seconds": 1767225600, "millis": 1767225600000, "id": "f728b4fa-4248-4e3a-8a5d-2f346baa9455"}'
)


def pipeline_test(*args):
    return CliRunner().invoke(cli, ["test", *args])


@pytest.fixture
def shop(tmp_path):
    """shop.yaml in a folder of its own, and what writes its test file beside it."""
    (tmp_path / "shop.yaml").write_text(SHOP)

    def beside(text):
        (tmp_path / "shop.test.yaml").write_text(text)
        return tmp_path

    return beside


def test_the_shipped_specs_tests_pass():
    done = pipeline_test(str(PIPELINES))

    scenario = [
        "the sample session gets its four attributes and goes to the USA stream",
        "a USA session goes to the USA stream, any other to the International one",
        "a record that is not JSON is dead-lettered, and the next one still flows",
        "a session whose browse_history is text is dead-lettered with the attribute that failed",
    ]
    assert (done.exit_code, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        f"{PIPELINES}/cli-router.yaml: no tests: it has no route, so no record goes anywhere "
        "to test",
        *(f"PASS {PIPELINES}/ecommerce-lambda.yaml: {name}" for name in scenario),
        *(f"PASS {PIPELINES}/ecommerce.yaml: {name}" for name in scenario),
        "8 passed, 0 failed",
    ]


def test_each_expectation_holds_with_the_clock_and_uuids_of_the_test(shop, monkeypatch):
    folder = shop(AS_EXPECTED)
    monkeypatch.chdir(folder)

    first, again = pipeline_test(), pipeline_test("shop.yaml")

    assert (
        first.stdout
        == again.stdout
        == "PASS shop.yaml: every fate, as expected\n1 passed, 0 failed\n"
    )
    assert (first.exit_code, again.exit_code) == (0, 0)
    assert sorted(os.listdir(folder)) == ["shop.test.yaml", "shop.yaml"]  # no state folder


def test_a_timestamp_written_without_quotes_is_expected_as_written(shop):
    folder = shop(
        "tests:\n"
        "  - name: unquoted times\n"
        "    now: 2026-11-26T12:00:00Z\n"
        "    records:\n"
        "      - input: {session_id: a1, country: USA, seen: 2026-11-26 08:30:00}\n"
        "        contains: {seen: 2026-11-26 08:30:00, at: 2026-11-26T12:00:00.000+00:00}\n"
    )

    done = pipeline_test(str(folder / "shop.yaml"))

    assert (done.exit_code, done.stdout.splitlines()[-1]) == (0, "1 passed, 0 failed")


def test_each_expectation_that_fails_says_where_it_is_and_what_came_instead(shop):
    folder = shop(AS_EXPECTED + WRONG)
    test_file = folder / "shop.test.yaml"

    done = pipeline_test(str(folder / "shop.yaml"))

    assert done.exit_code == 1
    assert done.stdout.splitlines() == [
        f"PASS {folder}/shop.yaml: every fate, as expected",
        f"FAIL {folder}/shop.yaml: every fate, wrong",
        f"  {test_file}:29:9: tests[1].records[0].to: expected [other], got [usa]",
        f"  {test_file}:31:9: tests[1].records[1].to: expected [usa], got [audit, usa]",
        f"  {test_file}:32:9: tests[1].records[1].partition_key: expected 'b1', got 'a1'",
        f"  {test_file}:33:9: tests[1].records[1].record: the record written differs "
        "(-expected +got):",
        "    --- expected",
        "    +++ got",
        "    @@ -1,5 +1,9 @@",
        "     {",
        '    -  "big": false,',
        '    +  "at": "2026-01-01T00:00:00.000+00:00",',
        '    +  "big": true,',
        '       "country": "USA",',
        '    +  "id": "f728b4fa-4248-4e3a-8a5d-2f346baa9455",',
        '    +  "millis": 1767225600000,',
        '    +  "seconds": 1767225600,',
        '       "session_id": "a1"',
        "     }",
        f"  {test_file}:34:9: tests[1].records[1].contains: the record written does not hold it "
        "(-expected +got):",
        "    --- expected",
        "    +++ got",
        "    @@ -1,6 +1,3 @@",
        "     {",
        '    -  "big": false,',
        '    -  "nested": {',
        '    -    "a": 1',
        "    -  }",
        '    +  "big": true',
        "     }",
        f"  {test_file}:35:18: tests[1].records[1].assert[0]: 'big == `false`' is false, not "
        "true, on the record written:",
        f"    {RECORD}",
        f"  {test_file}:35:34: tests[1].records[1].assert[1]: 'length(big)' fails on the record "
        "written: length() expects string, array or object, got boolean",
        f"  {test_file}:37:9: tests[1].records[2].filtered: expected the record filtered, got "
        "dropped: no route case took the record",
        f"  {test_file}:39:9: tests[1].records[3].dropped: expected the record dropped, got "
        "filtered",
        f"  {test_file}:41:9: tests[1].records[4].dead_letter: expected a reason containing "
        "'not UTF-8', got 'not JSON: Expecting value at column 1'",
        f"  {test_file}:43:9: tests[1].records[5].dead_letter: expected the record "
        "dead-lettered, got written to [usa] with partition key 'a1'",
        f"  {test_file}:45:9: tests[1].records[6].record: expected the record written, got "
        "dead-lettered: not a JSON object: got an array",
        "1 passed, 1 failed",
    ]


def scenario_copy(tmp_path, edit):
    """The scenario's spec and its tests (edited) in tmp_path/pipelines, beside schemas/ (as
    their modelines expect); returns the test file."""
    (tmp_path / "schemas").symlink_to(REPO / "schemas")
    (tmp_path / "pipelines").mkdir()
    shutil.copy(PIPELINES / "ecommerce.yaml", tmp_path / "pipelines")
    tests = tmp_path / "pipelines" / "ecommerce.test.yaml"
    tests.write_text(edit((PIPELINES / "ecommerce.test.yaml").read_text()))
    return tests


def test_a_test_expecting_the_wrong_route_fails_naming_its_file_and_line(tmp_path):
    tests = scenario_copy(
        tmp_path, lambda text: text.replace("to: [usa]", "to: [international]", 1)
    )

    done = pipeline_test(str(tmp_path / "pipelines"))

    assert (done.exit_code, done.stderr) == (1, "")
    assert done.stdout.splitlines()[:3] == [
        f"FAIL {tests.parent}/ecommerce.yaml: the sample session gets its four attributes and "
        "goes to the USA stream",
        f"  {tests}:13:9: tests[0].records[0].to: expected [international], got [usa]",
        f"PASS {tests.parent}/ecommerce.yaml: a USA session goes to the USA stream, any other to "
        "the International one",
    ]
    assert done.stdout.splitlines()[-1] == "3 passed, 1 failed"


def test_a_test_file_with_a_typo_is_refused_with_file_line_and_column(tmp_path):
    tests = scenario_copy(
        tmp_path, lambda text: text.replace("partition_key: a1", "partiton_key: a1")
    )

    done = pipeline_test(str(tests.parent / "ecommerce.yaml"))

    assert (done.exit_code, done.stdout) == (2, "")
    assert done.stderr == (
        f"{tests}:14:9: tests[0].records[0].partiton_key: unknown key 'partiton_key' (did you "
        "mean 'partition_key'? expected one of: assert, contains, dead_letter, dropped, "
        "filtered, input, partition_key, raw, record, to)\n"
    )


def test_invalid_specs_and_test_files_are_all_told_before_any_test_runs(tmp_path, shop):
    shop(AS_EXPECTED.replace("to: [usa]", "to: [usaa]"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("to: usa", "to: nowhere"))

    done = pipeline_test(str(tmp_path))

    assert (done.exit_code, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f"{bad}:13:11: route.cases[0].to: unknown stream 'nowhere' (streams: source, usa, other)",
        f"{tmp_path}/shop.test.yaml:6:14: tests[0].records[0].to[0]: unknown route 'usaa' "
        "(routes: audit, usa, other)",
    ]


def test_a_folder_holds_specs_with_tests_in_them_beside_them_or_none(tmp_path, shop, monkeypatch):
    shop(AS_EXPECTED.replace("every fate", "beside"))
    (tmp_path / "inside.yml").write_text(SHOP + AS_EXPECTED.replace("every fate", "inside"))
    (tmp_path / "untested.yaml").write_text(MINIMAL)
    (tmp_path / "notes.txt").write_text("not a spec")
    monkeypatch.chdir(tmp_path)

    done = pipeline_test(".", "shop.test.yaml")

    assert done.exit_code == 0
    assert done.stdout.splitlines() == [
        "PASS inside.yml: inside, as expected",
        "PASS shop.yaml: beside, as expected",
        "untested.yaml: no tests (write them under tests: in it, or in untested.test.yaml)",
        "2 passed, 0 failed",
    ]


def test_a_spec_with_tests_in_it_and_beside_it_runs_both(shop):
    folder = shop(AS_EXPECTED.replace("every fate", "beside"))
    (folder / "shop.yaml").write_text(SHOP + AS_EXPECTED.replace("every fate", "inside"))

    done = pipeline_test(str(folder / "shop.yaml"))

    assert done.stdout.splitlines() == [
        f"PASS {folder}/shop.yaml: inside, as expected",
        f"PASS {folder}/shop.yaml: beside, as expected",
        "2 passed, 0 failed",
    ]


def test_other_yaml_files_of_a_folder_are_skipped_once_each_saying_so(shop):
    folder = shop(AS_EXPECTED)
    (folder / "other.yaml").write_text("foo: bar\n")
    (folder / "docker-compose.yml").write_text("services:\n  web: {image: nginx}\n")
    (folder / "list.yaml").write_text("- pipeline\n")
    (folder / "later.yaml").write_text("kind: A\n---\npipeline: second-document\n")

    done = pipeline_test(str(folder), str(folder))

    assert (done.exit_code, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        f"{folder}/docker-compose.yml: skipped: not a pipeline spec",
        f"{folder}/later.yaml: skipped: not a pipeline spec",
        f"{folder}/list.yaml: skipped: not a pipeline spec",
        f"{folder}/other.yaml: skipped: not a pipeline spec",
        f"PASS {folder}/shop.yaml: every fate, as expected",
        "1 passed, 0 failed",
    ]


def test_a_yaml_file_of_a_folder_that_is_a_spec_but_invalid_is_refused(shop):
    folder = shop(AS_EXPECTED)
    (folder / "broken.yaml").write_text("pipeline: [shop\n")
    (folder / "typo.yaml").write_text(MINIMAL.replace("to: usa", "to: usaa"))

    done = pipeline_test(str(folder))

    assert (done.exit_code, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f"{folder}/broken.yaml:2:1: invalid YAML: expected ',' or ']', but got '<stream end>'",
        f"{folder}/typo.yaml:13:11: route.cases[0].to: unknown stream 'usaa' "
        "(streams: source, usa, other)",
    ]


def test_a_folder_without_specs_or_with_a_test_file_alone_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "lone").mkdir()
    (tmp_path / "lone" / "gone.test.yaml").write_text(AS_EXPECTED)

    with pytest.raises(SpecError) as caught:
        run_tests([str(tmp_path / "empty"), str(tmp_path / "lone")], out=print, warn=print)

    assert caught.value.problems == [
        f"{tmp_path}/empty: no specs in it (*.yaml, *.yml)",
        f"{tmp_path}/lone/gone.test.yaml: no spec gone.yaml beside it to test",
        f"{tmp_path}/lone: no specs in it (*.yaml, *.yml)",
    ]


def test_junit_xml_has_a_suite_per_spec_and_a_case_per_test_with_its_failure(shop, tmp_path):
    folder = shop(AS_EXPECTED + WRONG)
    (folder / "untested.yaml").write_text(MINIMAL)
    report = tmp_path / "junit.xml"
    out = []

    code = run_tests([str(folder)], out=out.append, warn=out.append, junit=report)

    root = ElementTree.parse(report).getroot()
    assert code == 1
    assert (root.tag, root.attrib) == (
        "testsuites",
        {"name": "pipeline test", "tests": "2", "failures": "1"},
    )
    shop_suite, untested = root
    assert untested.attrib == {
        "name": f"{folder}/untested.yaml",
        "tests": "0",
        "failures": "0",
        "errors": "0",
        "skipped": "0",
    }
    assert shop_suite.get("name") == f"{folder}/shop.yaml"
    passed, failed = shop_suite
    assert passed.attrib == {
        "classname": f"{folder}/shop.yaml",
        "name": "every fate, as expected",
        "file": f"{folder}/shop.test.yaml",
        "line": "2",
    }
    assert list(passed) == []
    (failure,) = failed
    assert (failed.get("name"), failed.get("line")) == ("every fate, wrong", "26")
    assert failure.get("message") == (
        f"{folder}/shop.test.yaml:29:9: tests[1].records[0].to: expected [other], got [usa]"
    )
    # The lines the command printed for it, unindented.
    printed = out[out.index(f"FAIL {folder}/shop.yaml: every fate, wrong") + 1 : -2]
    assert failure.text.splitlines() == [
        line[4:] if line.startswith("    ") else line[2:] for line in printed
    ]


def test_junit_through_the_command_line(shop, tmp_path):
    folder = shop(AS_EXPECTED)
    report = tmp_path / "reports" / "junit.xml"
    report.parent.mkdir()

    done = pipeline_test(str(folder), "--junit", str(report))

    assert done.exit_code == 0
    suites = ElementTree.parse(report).getroot()
    assert [case.get("name") for suite in suites for case in suite] == ["every fate, as expected"]


def test_junit_xml_holds_test_names_with_characters_xml_cannot(shop, tmp_path):
    folder = shop(
        AS_EXPECTED.replace("every fate, as expected", r'"bell \x01, lone \ud800 and \uffff"')
    )
    report = tmp_path / "junit.xml"

    code = run_tests([str(folder)], out=lambda line: None, warn=print, junit=report)

    (suite,) = ElementTree.parse(report).getroot()
    assert code == 0
    assert [case.get("name") for case in suite] == [r"bell \x01, lone \ud800 and \uffff"]


def test_junit_xml_of_invalid_specs_has_an_error_per_problem(tmp_path, shop):
    shop(AS_EXPECTED.replace("to: [usa]", "to: [usaa]"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("to: usa", "to: nowhere"))
    report = tmp_path / "junit.xml"

    done = pipeline_test(str(tmp_path), "--junit", str(report))

    root = ElementTree.parse(report).getroot()
    assert (done.exit_code, done.stdout) == (2, "")
    problems = done.stderr.splitlines()
    assert len(problems) == 2
    counts = {"tests": "2", "failures": "0", "errors": "2"}
    assert root.attrib == {"name": "pipeline test", **counts}
    (suite,) = root
    assert suite.attrib == {"name": "invalid specs and test files", **counts, "skipped": "0"}
    assert [
        (case.get("classname"), case.get("name"), error.get("message"), error.text)
        for case in suite
        for error in case
    ] == [
        (str(bad), f"{bad}:13:11", problems[0], problems[0] + "\n"),
        (
            f"{tmp_path}/shop.test.yaml",
            f"{tmp_path}/shop.test.yaml:6:14",
            problems[1],
            problems[1] + "\n",
        ),
    ]


def test_a_junit_file_that_cannot_be_written_is_a_usage_error_before_any_test_runs(shop, tmp_path):
    folder = shop(AS_EXPECTED)

    done = pipeline_test(str(folder), "--junit", str(tmp_path / "gone" / "junit.xml"))

    assert (done.exit_code, done.stdout) == (2, "")
    assert done.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--junit': '{tmp_path}/gone/junit.xml': there is no folder "
        f"{tmp_path}/gone to write it in"
    )


def test_a_junit_file_that_fails_to_be_written_still_ends_with_the_tally(shop, tmp_path):
    folder = shop(AS_EXPECTED)
    out, warned = [], []

    code = run_tests(
        [str(folder)], out=out.append, warn=warned.append, junit=tmp_path / "gone" / "junit.xml"
    )

    assert code == 1
    assert warned == [
        f"error: cannot write the JUnit XML to {tmp_path}/gone/junit.xml: No such file or directory"
    ]
    assert out[-1] == "1 passed, 0 failed"


def test_strict_refuses_a_test_file_with_a_warning(shop):
    folder = shop(AS_EXPECTED.replace('"big"', "'big || country == \"USA\"'"))

    warned = pipeline_test(str(folder))
    refused = pipeline_test(str(folder), "--strict")

    warning = (
        f"{folder}/shop.test.yaml:18:18: tests[0].records[1].assert[0]: warning: 'big || "
        'country == "USA"\': "USA" at column 19 is a field, not text; write \'USA\' for the text\n'
    )
    assert (warned.exit_code, warned.stderr) == (0, warning)
    assert (refused.exit_code, refused.stderr) == (2, warning)


def readme_block(start):
    """The README's text from `start` to the end of its code block."""
    text = (REPO / "README.md").read_text()
    at = text.index(start)
    return text[at : text.index("```", at)]


def test_the_tour_of_the_readme_shows_a_test_that_passes_on_the_scenario(tmp_path):
    shown = readme_block("# yaml-language-server: $schema=../schemas/pipeline-test.schema.json\n")
    scenario_copy(tmp_path, lambda text: shown)

    done = pipeline_test(str(tmp_path / "pipelines"))

    assert (done.exit_code, done.stderr, done.stdout.splitlines()[-1]) == (
        0,
        "",
        "2 passed, 0 failed",
    )


def test_the_readme_shows_what_pipeline_test_prints(monkeypatch):
    monkeypatch.chdir(REPO)
    shown = readme_block("$ pipeline test pipelines/\n").splitlines()[1:]

    printed = pipeline_test("pipelines/").stdout.splitlines()

    assert [line for line in printed if line in shown] == [line for line in shown if line != "…"]
    assert (printed[0], printed[-1]) == (shown[0], shown[-1])
