import pytest

from runner.records import expressions
from runner.records.processor import (
    DEAD_LETTER,
    DROPPED,
    ROUTED,
    BadRecord,
    Journey,
    parse_json,
    parse_record,
)
from runner.records.routing import Case, Route
from runner.records.transform import SetStep


@pytest.mark.parametrize(
    "data, reason, cause",
    [
        (b"\xff", "not UTF-8: invalid start byte at byte 0", "not_utf8"),
        (
            b"{not json",
            "not JSON: Expecting property name enclosed in double quotes at column 2",
            "not_json",
        ),
        (b'{"x": NaN}', "not JSON: NaN is not a JSON value", "not_json"),
        (b'{"x": -Infinity}', "not JSON: -Infinity is not a JSON value", "not_json"),
        (
            b"[" * 513 + b"]" * 513,
            "not JSON this runner reads: nested deeper than 512 levels",
            "not_json",
        ),
        (b"[1, 2]", "not a JSON object: got an array", "not_object"),
    ],
)
def test_what_is_not_a_record_says_why_and_of_which_class_the_reason_is(data, reason, cause):
    with pytest.raises(BadRecord) as caught:
        parse_record(data)
    assert (str(caught.value), caught.value.cause) == (reason, cause)


def test_each_dead_lettered_outcome_names_the_class_of_its_reason():
    total = SetStep("transform[0].set", (("n", expressions.compile("sum(items)")),))
    route = Route(expressions.compile("id"), (Case("out", expressions.compile("n > `1`")),))
    journey = Journey([total], route)
    records = {
        b"\xff": "not_utf8",
        b"{not json": "not_json",
        b"[1]": "not_object",
        b'{"id": "a", "items": "text"}': "transform",
        b'{"id": {"an": "object"}, "items": [2]}': "route",
        b'{"id": "a", "items": [1]}': "unmatched",
        b'{"id": "a", "items": [2], "text": "\\udc00"}': "not_encodable",
        b'{"id": "a", "items": [2], "text": "' + b"x" * 1_048_576 + b'"}': "too_large",
    }

    outcomes = {data: journey.process(data) for data in records}

    assert {data: (o.kind, o.cause) for data, o in outcomes.items()} == {
        data: (DEAD_LETTER, cause) for data, cause in records.items()
    }
    assert journey.process(b'{"id": "a", "items": [2]}').cause == ""


def test_the_depth_limit_is_the_same_wherever_it_is_checked_and_ignores_text():
    assert parse_json(b"[" * 512 + b"]" * 512) is not None
    brackets_in_text = b'{"x": "' + b"[{" * 600 + b'", "y": "\\"]"}'
    assert parse_record(brackets_in_text)["y"] == '"]'


def test_a_journey_takes_the_transform_steps_and_the_route_alone():
    count = SetStep("transform[0].set", (("n", expressions.compile("length(items)")),))
    route = Route(expressions.compile("id"), (Case("out", expressions.compile("n > `1`")),))
    journey = Journey([count], route)

    routed = journey.process(b'{"id": "a", "items": [1, 2]}')
    assert (routed.kind, routed.sinks, routed.partition_key, routed.payload) == (
        ROUTED,
        ["out"],
        "a",
        b'{"id":"a","items":[1,2],"n":2}\n',
    )
    assert journey.process(b'{"id": "b", "items": [1]}').kind == DEAD_LETTER
    dropping = Journey([count], Route(route.partition_key, route.cases, "drop", newline=False))
    assert dropping.process(b'{"id": "b", "items": [1]}').kind == DROPPED
    assert dropping.process(b'{"id": "a", "items": [1, 2]}').payload.endswith(b"}")


def test_a_journey_takes_a_whole_clock_with_its_uuid_source():
    stamp = SetStep(
        "transform[0].set",
        (("at", expressions.compile("now()")), ("id", expressions.compile("uuid()"))),
    )
    route = Route(expressions.compile("at"), (Case("out"),))
    clock = expressions.Clock(lambda: 1.5, uuid=lambda: "an-id")

    routed = Journey([stamp], route, clock).process(b"{}")

    assert routed.payload == b'{"at":"1970-01-01T00:00:01.500+00:00","id":"an-id"}\n'
