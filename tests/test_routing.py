import pytest

from runner.records import expressions
from runner.records.routing import Case, Route, RouteError


def route(*cases, key="session_id"):
    return Route(expressions.compile(key), tuple(cases))


def when(text):
    return expressions.compile(text)


def test_the_first_case_that_holds_takes_the_record():
    r = route(Case("usa", when("country == 'USA'")), Case("international"))
    assert r.decide({"country": "USA", "session_id": "a1"}) == (["usa"], "a1")
    assert r.decide({"country": "France", "session_id": "b2"}) == (["international"], "b2")


def test_continue_also_tries_the_next_cases():
    r = route(
        Case("audit", when("credit_limit > `900`"), continue_=True),
        Case("usa", when("country == 'USA'")),
        Case("international"),
    )
    assert r.decide({"credit_limit": 1000, "country": "USA", "session_id": "a"}) == (
        ["audit", "usa"],
        "a",
    )
    assert r.decide({"credit_limit": 10, "country": "USA", "session_id": "a"}) == (["usa"], "a")


def test_no_case_taking_the_record_gives_no_sinks():
    assert route(Case("usa", when("country == 'USA'"))).decide({"country": "UK"}) == ([], "")


@pytest.mark.parametrize("value, key", [("a1", "a1"), (100, "100"), (1.5, "1.5")])
def test_partition_keys_are_text_or_numbers(value, key):
    assert route(Case("x")).decide({"session_id": value}) == (["x"], key)


@pytest.mark.parametrize(
    "record, reason",
    [
        ({}, "route.partition_key gave null, expected text or a number"),
        ({"session_id": True}, "route.partition_key gave a boolean, expected text or a number"),
        ({"session_id": [1]}, "route.partition_key gave an array, expected text or a number"),
        ({"session_id": ""}, "route.partition_key gave empty text"),
        ({"session_id": "k" * 257}, "route.partition_key gave 257 characters, at most 256 allowed"),
    ],
)
def test_a_bad_partition_key_is_a_reason(record, reason):
    with pytest.raises(RouteError) as caught:
        route(Case("x")).decide(record)
    assert str(caught.value) == reason


def test_a_failing_condition_names_the_case():
    r = route(Case("x", when("starts_with(country, 'U')")), Case("y"))
    with pytest.raises(RouteError) as caught:
        r.decide({"country": 5})
    assert str(caught.value).startswith("route.cases[0].when: ")
