"""A round's counts (runner/loop/rounds.py): what the status and summary lines say, the rates,
the records in per shard and the dead-lettered per class of reason."""

import json
from collections import Counter

from conftest import kpl_aggregates
from fakes import Clock

from runner import spec
from runner.backends.local import LocalBackend
from runner.commands.provision import apply
from runner.loop import engine
from runner.loop.rounds import Counts, Rates

SPEC = """\
pipeline: shop
resources:
  streams:
    source: {name: in, shards: 2}
    usa: {name: usa-out, shards: 1}
    other: {name: other-out, shards: 1}
source: {stream: source}
transform:
  - set:
      total: sum(items || `[]`)
route:
  partition_key: session_id
  cases:
    - when: country == 'USA'
      to: usa
    - when: country != null
      to: other
"""


def counts(**given):
    found = Counts(records_in=7, out=Counter(usa=3, other=2), dead_lettered=1, **given)
    found.filtered, found.dropped, found.lag_ms = 1, 0, 250
    return found


def test_the_status_line_says_the_counts_the_rates_and_what_took_means():
    before = Counts(records_in=2, out=Counter(usa=1))
    now = counts(busy_s=3.25)

    rates = Rates.between(before, now, 2.0)

    assert now.line(rates) == (
        "in 7 | out other 2, usa 3 | dead-lettered 1 | filtered 1 | dropped 0 | lag 250 ms | "
        "2.5 in/s, 2.0 out/s over the last 2 s | took 3.25 s from the first record to the last"
    )
    assert now.fields(rates) == {
        "in": 7,
        "out": {"other": 2, "usa": 3},
        "dead_lettered": 1,
        "filtered": 1,
        "dropped": 0,
        "discarded": 0,
        "lag_ms": 250,
        "took_s": 3.25,
        "in_per_s": 2.5,
        "out_per_s": 2.0,
        "rate_interval_s": 2.0,
    }


def test_a_summary_keeps_its_fields_and_says_no_rates_nor_time_when_none_passed():
    assert Rates.between(Counts(), counts(), 0.0) is None
    assert counts().line() == (
        "in 7 | out other 2, usa 3 | dead-lettered 1 | filtered 1 | dropped 0 | lag 250 ms"
    )


def test_a_status_line_gives_rates_only_over_a_second_or_more():
    """The first status line comes after the first round, a few milliseconds into the run."""
    assert Rates.between(Counts(), counts(), 0.00113) is None
    assert Rates.between(Counts(), counts(), 0.999) is None
    assert Rates.between(Counts(), counts(), 1.0) == Rates(7.0, 5.0, 1.0)


def test_a_run_counts_records_in_per_shard_and_dead_letters_per_class_of_reason(tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(SPEC)
    loaded = spec.load(path)
    backend = LocalBackend(tmp_path / "state")
    apply(loaded, backend, lambda line: None)
    good = [(json.dumps({"session_id": k, "country": "USA"}).encode(), k) for k in "ab"]
    (aggregate,) = kpl_aggregates(good)
    corrupt = aggregate[:-1] + bytes([aggregate[-1] ^ 1])
    bad = [
        (b"\xff", "x"),
        (b"{not json", "y"),
        (b"[1]", "z"),
        (b'{"session_id": "t", "items": "text"}', "t"),
        (b'{"session_id": "u"}', "u"),
        (corrupt, "k"),
    ]
    put = backend.put_records("in", [*good, *bad, (aggregate, "a")])
    clock = Clock()
    run = engine.Engine(
        loaded,
        backend,
        tmp_path / "state",
        engine.RunOptions(until_idle=1.0),
        lambda line: None,
        clock=clock,
        sleep=clock.sleep,
    )

    found = run.run()

    shards = Counter(result.shard_id for result in put)
    shards[put[-1].shard_id] += 1  # the aggregate's two user records count as two
    assert found.received == shards
    assert found.records_in == sum(shards.values()) == 10
    assert found.dead_causes == Counter(
        not_utf8=1, not_json=1, not_object=1, transform=1, unmatched=1, kpl_aggregate=1
    )
    assert (found.dead_lettered, found.out) == (6, Counter(usa=4))
