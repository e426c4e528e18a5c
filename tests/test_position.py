import datetime

import pytest

from runner.spec.position import Position, parse_position

UTC = datetime.timezone.utc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trim_horizon", Position("TRIM_HORIZON")),
        ("latest", Position("LATEST")),
        ("TRIM_HORIZON", Position("TRIM_HORIZON")),
        ("at_sequence_number:4953", Position("AT_SEQUENCE_NUMBER", sequence="4953")),
        ("after_sequence_number:17", Position("AFTER_SEQUENCE_NUMBER", sequence="17")),
        (
            "at_timestamp:2026-11-26T12:00:00Z",
            Position("AT_TIMESTAMP", timestamp=datetime.datetime(2026, 11, 26, 12, tzinfo=UTC)),
        ),
        (
            "at_timestamp:2026-11-26T14:30:00+02:00",
            Position("AT_TIMESTAMP", timestamp=datetime.datetime(2026, 11, 26, 12, 30, tzinfo=UTC)),
        ),
        (
            "at_timestamp:2026-11-26T12:00:00",
            Position("AT_TIMESTAMP", timestamp=datetime.datetime(2026, 11, 26, 12, tzinfo=UTC)),
        ),
    ],
)
def test_every_from_form_is_understood(text, expected):
    assert parse_position(text, sequences=True) == expected


EXPECTED_FORMS = (
    "expected trim_horizon, latest, at_timestamp:ISO, at_sequence_number:SEQ or "
    "after_sequence_number:SEQ"
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", f"'': {EXPECTED_FORMS}"),
        ("yesterday", f"'yesterday': {EXPECTED_FORMS}"),
        ("TRIM_HORIZON:x", f"'TRIM_HORIZON:x': {EXPECTED_FORMS}"),
        ("latest:5", f"'latest:5': {EXPECTED_FORMS}"),
        ("trim_horizon:0", f"'trim_horizon:0': {EXPECTED_FORMS}"),
        ("at_timestamp:", f"'at_timestamp:': {EXPECTED_FORMS}"),
        (
            "at_timestamp:soon",
            "'soon' is not an ISO-8601 timestamp such as 2026-01-31T12:00:00Z",
        ),
        (
            "at_sequence_number",
            "at_sequence_number needs a sequence number, e.g. at_sequence_number:4953",
        ),
        (
            "at_sequence_number:12a",
            "at_sequence_number needs a sequence number, e.g. at_sequence_number:4953",
        ),
        (
            "after_sequence_number:-1",
            "after_sequence_number needs a sequence number, e.g. after_sequence_number:4953",
        ),
        (
            "after_sequence_number:²",
            "after_sequence_number needs a sequence number, e.g. after_sequence_number:4953",
        ),
    ],
)
def test_a_bad_from_is_refused_with_what_was_expected(text, message):
    with pytest.raises(ValueError) as raised:
        parse_position(text, sequences=True)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    "text", ["at_sequence_number:4953", "after_sequence_number:17", "earliest", "latest:5"]
)
def test_a_spec_start_is_one_of_three_forms_without_sequence_numbers(text):
    with pytest.raises(ValueError) as raised:
        parse_position(text)
    assert str(raised.value) == f"{text!r}: expected trim_horizon, latest or at_timestamp:ISO"


@pytest.mark.parametrize(
    "text",
    [
        "trim_horizon",
        "latest",
        "at_timestamp:2026-11-26T12:00:00Z",
        "at_timestamp:2026-11-26T12:00:00.250000Z",
        "at_sequence_number:4953",
        "after_sequence_number:17",
    ],
)
def test_a_position_is_written_as_a_spec_or_from_writes_it(text):
    assert str(parse_position(text, sequences=True)) == text


def test_a_timestamp_is_written_in_utc():
    assert str(parse_position("at_timestamp:2026-11-26T14:30:00+02:00")) == (
        "at_timestamp:2026-11-26T12:30:00Z"
    )
    assert str(parse_position("at_timestamp:2026-11-26T12:00:00")) == (
        "at_timestamp:2026-11-26T12:00:00Z"
    )
