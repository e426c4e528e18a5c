from runner.plural import count


def test_a_count_names_its_noun_in_the_plural_unless_it_is_one():
    assert [count(n, "record") for n in (0, 1, 2)] == ["0 records", "1 record", "2 records"]
    assert count(3, "route case") == "3 route cases"


def test_a_count_takes_a_plural_of_its_own():
    assert [count(n, "entry", "entries") for n in (0, 1, 2)] == [
        "0 entries",
        "1 entry",
        "2 entries",
    ]
