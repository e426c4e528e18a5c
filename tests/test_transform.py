import pytest

from runner.records import expressions, transform
from runner.records.transform import (
    Filtered,
    FilterStep,
    RemoveStep,
    RenameStep,
    SetStep,
    TransformError,
)


def set_step(**texts):
    return SetStep(
        "transform[0].set",
        tuple((name, expressions.compile(text)) for name, text in texts.items()),
    )


def applied(steps, record):
    """The record after every step, in order, as a record's journey applies them."""
    for step in steps:
        step.apply(record)
    return record


def test_set_computes_every_value_on_the_record_as_it_enters():
    step = set_step(total="sum(items[].n)", doubled="total", count="length(items)")
    record = applied([step], {"items": [{"n": 2}, {"n": 3}], "total": "old"})
    assert record == {"items": [{"n": 2}, {"n": 3}], "total": 5, "doubled": "old", "count": 2}


def test_remove_and_rename_ignore_missing_attributes():
    steps = [
        RemoveStep("transform[0].remove", ("secret", "absent")),
        RenameStep("transform[1].rename", (("city", "town"), ("absent", "x"))),
    ]
    assert applied(steps, {"secret": 1, "city": "Lyon", "n": 1}) == {"n": 1, "town": "Lyon"}


def test_filter_drops_records_whose_condition_is_not_true():
    step = FilterStep("transform[0].filter", expressions.compile("credit_limit > `500`"))
    assert applied([step], {"credit_limit": 1000}) == {"credit_limit": 1000}
    with pytest.raises(Filtered):
        applied([step], {"credit_limit": 100})
    with pytest.raises(Filtered):
        applied([step], {})


def test_a_failing_expression_names_the_step_and_attribute():
    step = set_step(quantity="sum(browse_history[].quantity)")
    with pytest.raises(TransformError) as caught:
        applied([step], {"browse_history": [{"quantity": "two"}]})
    assert str(caught.value).startswith("transform[0].set.quantity: ")


def test_a_set_step_that_cannot_compile_whole_searches_each_expression(monkeypatch):
    def nested_too_deeply(fields):
        raise expressions.ExpressionError("expression is nested too deeply")

    monkeypatch.setattr(transform, "compile_object", nested_too_deeply)
    step = set_step(total="sum(items[].n)", doubled="total", count="length(items)")

    record = applied([step], {"items": [{"n": 2}, {"n": 3}], "total": "old"})

    assert record == {"items": [{"n": 2}, {"n": 3}], "total": 5, "doubled": "old", "count": 2}
    with pytest.raises(TransformError) as caught:
        applied([step], {"items": [{"n": "two"}]})
    assert str(caught.value).startswith("transform[0].set.total: ")
