import pytest

from runner.records.processor import BadRecord, parse_json, parse_record


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\xff", "not UTF-8: invalid start byte at byte 0"),
        (b"{not json", "not JSON: Expecting property name enclosed in double quotes at column 2"),
        (b'{"x": NaN}', "not JSON: NaN is not a JSON value"),
        (b'{"x": -Infinity}', "not JSON: -Infinity is not a JSON value"),
        (b"[" * 513 + b"]" * 513, "not JSON this runner reads: nested deeper than 512 levels"),
        (b"[1, 2]", "not a JSON object: got an array"),
    ],
)
def test_what_is_not_a_record_says_why(data, reason):
    with pytest.raises(BadRecord) as caught:
        parse_record(data)
    assert str(caught.value) == reason


def test_the_depth_limit_is_the_same_wherever_it_is_checked_and_ignores_text():
    assert parse_json(b"[" * 512 + b"]" * 512) is not None
    brackets_in_text = b'{"x": "' + b"[{" * 600 + b'", "y": "\\"]"}'
    assert parse_record(brackets_in_text)["y"] == '"]'
