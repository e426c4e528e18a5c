import pytest

from runner.records import expressions, processor
from runner.records.processor import (
    DEAD_LETTER,
    DROPPED,
    ROUTED,
    BadRecord,
    Journey,
    encode,
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


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "not JSON: Expecting value at column 1"),
        (b" ", "not JSON: Expecting value at column 2"),
        (b'{"a": 1} x', "not JSON: Extra data at column 10"),
        (b'{"a": 1}{"b": 2}', "not JSON: Extra data at column 9"),
        (b'{"a": tru}', "not JSON: Expecting value at column 7"),
    ],
)
def test_json_is_read_whole_or_refused_saying_where(data, reason):
    with pytest.raises(BadRecord) as caught:
        parse_record(data)
    assert str(caught.value) == reason


def test_whitespace_around_a_record_is_json_too():
    for data in (b'{"a": 1}\n', b' \t{"a": 1}', b'\r\n{"a": [1, 2]}  \n'):
        assert parse_record(data)["a"] in (1, [1, 2])


def test_a_record_that_failed_to_encode_leaves_nothing_behind():
    record = {"a": {"b": [1]}}
    record["a"]["me"] = record
    with pytest.raises(ValueError, match="^Circular reference detected$"):
        encode(record)

    del record["a"]["me"]  # the same objects, no longer a cycle
    assert encode(record) == b'{"a":{"b":[1]}}'


@pytest.mark.parametrize("c_encoder", [True, False])
def test_records_are_written_as_compact_json_with_or_without_the_c_encoder(c_encoder, monkeypatch):
    if not c_encoder:
        monkeypatch.setattr(processor, "_ONCE", None)
    assert encode({"a": [1, 2.5, None, True], "é": {"b": "x\n"}}, "\n") == (
        '{"a":[1,2.5,null,true],"é":{"b":"x\\n"}}\n'.encode()
    )
    with pytest.raises(ValueError, match="^Out of range float values are not JSON compliant"):
        encode({"a": float("inf")})
    itself = {"a": []}
    itself["a"].append(itself)
    with pytest.raises(ValueError, match="^Circular reference detected$"):
        encode(itself)


def test_a_record_holding_itself_is_dead_lettered():
    journey = Journey(
        [SetStep("transform[0].set", (("me", expressions.compile("@")),))],
        Route(expressions.compile("id"), (Case("out"),)),
    )

    outcome = journey.process(b'{"id": "a"}')

    assert (outcome.kind, outcome.reason) == (
        DEAD_LETTER,
        "cannot be written as JSON: Circular reference detected",
    )


def test_a_record_holding_a_lone_surrogate_is_dead_lettered_saying_which():
    journey = Journey([], Route(expressions.compile("id"), (Case("out"),)))

    outcome = journey.process(b'{"id": "a", "note": "x\\udc80"}')

    assert (outcome.kind, outcome.reason) == (
        DEAD_LETTER,
        "cannot be written as JSON: it holds a lone surrogate (\\udc80), which is not text "
        "UTF-8 can encode",
    )


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
