import pytest
from conftest import MINIMAL

from runner.commands.target import Target
from runner.commands.validate import validate
from runner.spec import SpecError


def test_validate_says_what_each_valid_spec_declares_and_raises_the_problems_of_all_others(
    write_spec,
):
    good = write_spec(MINIMAL, "good.yaml")
    bad = write_spec(MINIMAL.replace("to: usa", "to: nowhere"), "bad.yaml")
    quoted = write_spec(MINIMAL.replace("country == 'USA'", 'country == "USA"'), "quoted.yaml")
    out, warnings = [], []

    with pytest.raises(SpecError) as caught:
        validate(
            [str(bad), str(good), str(quoted)],
            Target(),
            strict=False,
            out=out.append,
            warn=warnings.append,
        )

    assert caught.value.problems == [
        f"{bad}:13:11: route.cases[0].to: unknown stream 'nowhere' (streams: source, usa, other)"
    ]
    summary = (
        "ok: pipeline shop, 3 streams, 0 buckets, 0 firehoses, 0 transform steps, 2 route cases"
    )
    assert out == [f"{good}: {summary}", f"{quoted}: {summary}"]
    assert warnings == [
        f'{quoted}:12:13: route.cases[0].when: warning: \'country == "USA"\': "USA" at column 12 '
        "is a field, not text; write 'USA' for the text"
    ]


def test_validate_checks_a_test_file_against_the_spec_beside_it(write_spec):
    spec = write_spec(MINIMAL, "shop.yaml")
    tests = write_spec(
        "tests:\n  - name: t\n    records: [{input: {country: USA}, to: [usa]}]\n", "shop.test.yaml"
    )
    write_spec(MINIMAL, "wrong.yaml")  # the spec of wrong.test.yaml
    typo = write_spec(
        "tests:\n  - name: t\n    records: [{input: {}, too: [usa]}]\n", "wrong.test.yaml"
    )
    out = []

    with pytest.raises(SpecError) as caught:
        validate([str(tests), str(typo)], Target(), strict=False, out=out.append, warn=print)

    assert out == [f"{tests}: ok: 1 test of {spec}"]
    assert caught.value.problems == [
        f"{typo}:3:27: tests[0].records[0].too: unknown key 'too' (did you mean 'to'? expected one "
        "of: assert, contains, dead_letter, dropped, filtered, input, partition_key, raw, record, "
        "to)"
    ]
