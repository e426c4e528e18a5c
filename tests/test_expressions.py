import uuid

import pytest
from conftest import FIXED_NOW

from runner.records import expressions
from runner.records.expressions import Clock, ExpressionError, SearchError


def test_added_functions_give_time_ids_and_case():
    record = {"city": "Washington"}
    clock = Clock(FIXED_NOW.timestamp)
    assert expressions.compile("now()").search(record, clock) == "2026-11-26T12:00:00.000+00:00"
    assert expressions.compile("epoch()").search(record, clock) == 1795694400
    assert expressions.compile("epoch_ms()").search(record, clock) == 1795694400000
    assert expressions.compile("upper(city)").search(record) == "WASHINGTON"
    assert expressions.compile("lower(city)").search(record) == "washington"
    first, second = (expressions.compile("uuid()").search(record) for _ in range(2))
    assert uuid.UUID(first).version == 4 and first != second


def test_each_search_reads_the_clock_it_is_given():
    seconds = [1795694400.0004, 1795694400.0009, 1795694400.0011]
    ticking = Clock(lambda: seconds.pop(0))
    stopped = Clock(FIXED_NOW.timestamp)
    now = expressions.compile("now()")

    first, same_millisecond, next_millisecond = (now.search({}, ticking) for _ in range(3))

    assert first == "2026-11-26T12:00:00.000+00:00" and same_millisecond is first  # formatted once
    assert next_millisecond == "2026-11-26T12:00:00.001+00:00"
    assert now.search({}, stopped) == "2026-11-26T12:00:00.000+00:00"
    assert expressions.compile("{a: epoch_ms(), b: [now()]}").search({}, Clock(lambda: 1.5)) == {
        "a": 1500,
        "b": ["1970-01-01T00:00:01.500+00:00"],
    }


def test_uuid_gives_the_ids_of_the_clocks_source_the_same_for_the_same_seed():
    ids = expressions.compile("[uuid(), uuid()]")
    first = ids.search({}, Clock(uuid=expressions.seeded_uuids(0)))
    again = ids.search({}, Clock(uuid=expressions.seeded_uuids(0)))
    other = ids.search({}, Clock(uuid=expressions.seeded_uuids(1)))

    assert (
        first
        == again
        == [
            "e3e70682-c209-4cac-a29f-6fbed82c07cd",
            "f728b4fa-4248-4e3a-8a5d-2f346baa9455",
        ]
    )
    assert other != first
    assert [uuid.UUID(text).version for text in first] == [4, 4]
    assert ids.search({})[0] not in first  # the system clock's are random


@pytest.mark.parametrize(
    "text, message",
    [
        ("country ==", "unexpected end of expression at column 11"),
        (
            "credit_limit > 500",
            "unexpected '500' at column 16; JMESPath writes numbers in backticks: `500`",
        ),
        ("`foo`", "literal is not valid JSON at column 1"),
        (
            "nope(a)",
            "unknown function 'nope()' at column 1 (functions: abs, avg, ceil, contains, "
            "ends_with, epoch, epoch_ms, floor, join, keys, length, lower, map, max, max_by, "
            "merge, min, min_by, not_null, now, reverse, sort, sort_by, starts_with, sum, "
            "to_array, to_number, to_string, type, upper, uuid, values)",
        ),
        ("uper(city)", "unknown function 'uper()' at column 1; did you mean upper()?"),
        ("length(a, b)", "length() takes 1 argument, got 2 at column 1"),
        ("now(a)", "now() takes 0 arguments, got 1 at column 1"),
        ("merge()", "merge() takes at least 1 argument, got 0 at column 1"),
        ("[a, sum(b, c)]", "sum() takes 1 argument, got 2 at column 5"),
    ],
)
def test_compile_refuses_syntax_unknown_functions_and_arity(text, message):
    with pytest.raises(ExpressionError) as caught:
        expressions.compile(text)
    assert str(caught.value) == message


def test_a_type_error_is_raised_when_searching_a_record():
    with pytest.raises(SearchError) as caught:
        expressions.compile("sum(browse_history[].quantity)").search({"browse_history": "x"})
    assert str(caught.value) == "sum() expects array[number], got null"


@pytest.mark.parametrize(
    "value, truth",
    [
        (None, False),
        (False, False),
        ("", False),
        ([], False),
        ({}, False),
        (0, True),
        ("a", True),
        ([0], True),
        ({"a": None}, True),
        (True, True),
    ],
)
def test_truthiness_is_jmespaths(value, truth):
    assert expressions.is_true(value) is truth
