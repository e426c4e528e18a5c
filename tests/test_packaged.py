"""The spec a Lambda package carries (runner/function/packaged.py): `load`'s resolved document,
built again by `spec.resolved` without YAML or the schema, is the same spec."""

import json
from pathlib import Path

import pytest
from conftest import FIXED_NOW, MINIMAL, PIPELINES, SHOP

from runner import spec
from runner.function.packaged import SPEC_FILE, held_document, load_packaged, packed
from runner.records.processor import Journey

# Every part a spec can have, and every kind of reference.
EVERY_PART = """\
pipeline: ${prefix}
region: eu-west-1
vars: {prefix: shop, shards: 2}
resources:
  streams:
    source: {name: "${prefix}-in", shards: 1}
    usa: {name: "${prefix}-usa-${region}", shards: "${shards}"}
    other: {name: "${env:SHOP_OTHER}", shards: 1}
  buckets:
    usa: {name: "${prefix}-${account_id}-usa"}
    rejects: {name: "${prefix}-${account_id}-rejects"}
  firehoses:
    usa:
      name: shop-usa
      from: usa
      to: usa
      prefix: firehose/
      buffer: {size_mb: 1, interval_s: 60}
      compression: GZIP
      logging: {group: g, stream: s}
source: {stream: source, start: "at_timestamp:2026-01-31T12:00:00Z"}
transform:
  - set:
      at: now()
      quantity: sum(browse_history[].quantity)
      country: upper(country)
  - remove: [credit_limit]
  - rename: {city: town}
  - filter: quantity > `0`
route:
  partition_key: session_id
  cases:
    - {when: "country == 'USA'", to: usa, continue: true}
    - {when: "town == 'Paris'", to: other}
  unmatched: drop
  newline: false
dead_letter: {bucket: rejects, prefix: bad/}
"""

SESSION = (PIPELINES / "samples" / "session.json").read_bytes()
RECORDS = [
    SESSION,
    SESSION.replace(b'"USA"', b'"France"').replace(b'"Washington"', b'"Paris"'),
    SESSION.replace(b'"USA"', b'"Peru"'),
    SESSION.replace(b'"quantity": 2', b'"quantity": "two"'),
    SESSION.replace(b'"quantity": 2', b'"quantity": -9'),
    b'{"session_id": 7}',
    b"{not json",
    b"[1]",
    b"\xff",
]
SPECS = {
    **{
        path.stem: path.read_text()
        for path in sorted(PIPELINES.glob("*.yaml"))
        if not spec.is_test_file(path)
    },
    "minimal": MINIMAL,
    "shop": SHOP,
    "every part": EVERY_PART,
}


def behaviour(loaded):
    """What a spec declares and does to records, at a fixed time."""
    route = loaded.route
    outcomes = []
    if route:
        journey = Journey(loaded.transform, route, clock=FIXED_NOW.timestamp)
        outcomes = [
            (o.kind, list(o.sinks), o.partition_key, o.payload, o.reason)
            for o in map(journey.process, RECORDS)
        ]
    return {
        "spec": (loaded.path.name, loaded.pipeline, loaded.region),
        # What the handler uses: not the firehoses (AWS delivers them) nor where the source
        # starts (the mapping's, fixed once it is created).
        "resources": (dict(loaded.streams), dict(loaded.buckets)),
        "source": loaded.source.stream,
        "dead letter": loaded.dead_letter,
        "steps": [(type(step).__name__, step.path) for step in loaded.transform],
        "route": route
        and (
            route.partition_key.text,
            [(case.to, case.when and case.when.text, case.continue_) for case in route.cases],
            route.unmatched,
            route.newline,
        ),
        "outcomes": outcomes,
    }


@pytest.mark.parametrize("name", SPECS)
def test_a_spec_built_from_its_packaged_document_behaves_as_loaded(write_spec, tmp_path, name):
    path = write_spec(SPECS[name], f"{name}.yaml")
    loaded = spec.load(path, account_id=lambda region: "123456789012", environ={"SHOP_OTHER": "o"})
    (tmp_path / SPEC_FILE).write_bytes(packed(loaded))

    again = load_packaged(tmp_path / SPEC_FILE)

    assert behaviour(again) == behaviour(loaded)
    assert (again.path, again.document) == (Path(path.name), held_document(loaded.document))
    assert again.firehoses == {} and str(again.source.start) == "trim_horizon"
    if loaded.route:  # the records were taken every way a record can go
        kinds = {outcome[0] for outcome in behaviour(loaded)["outcomes"]}
        assert kinds >= {"routed", "dead_letter"}, kinds


def test_the_resolved_document_has_references_replaced_defaults_filled_and_no_vars(write_spec):
    loaded = spec.load(
        write_spec(EVERY_PART),
        account_id=lambda region: "123456789012",
        environ={"SHOP_OTHER": "shop-other"},
    )

    assert loaded.document == {
        "pipeline": "shop",
        "region": "eu-west-1",
        "resources": {
            "streams": {
                "source": {"name": "shop-in", "shards": 1},
                "usa": {"name": "shop-usa-eu-west-1", "shards": 2},
                "other": {"name": "shop-other", "shards": 1},
            },
            "buckets": {
                "usa": {"name": "shop-123456789012-usa"},
                "rejects": {"name": "shop-123456789012-rejects"},
            },
            "firehoses": {
                "usa": {
                    "name": "shop-usa",
                    "from": "usa",
                    "to": "usa",
                    "prefix": "firehose/",
                    "error_prefix": "errors/",
                    "buffer": {"size_mb": 1, "interval_s": 60},
                    "compression": "GZIP",
                    "logging": {"group": "g", "stream": "s"},
                }
            },
        },
        "source": {"stream": "source", "start": "at_timestamp:2026-01-31T12:00:00Z"},
        "transform": [
            {
                "set": {
                    "at": "now()",
                    "quantity": "sum(browse_history[].quantity)",
                    "country": "upper(country)",
                }
            },
            {"remove": ["credit_limit"]},
            {"rename": {"city": "town"}},
            {"filter": "quantity > `0`"},
        ],
        "route": {
            "partition_key": "session_id",
            "cases": [
                {"when": "country == 'USA'", "to": "usa", "continue": True},
                {"when": "town == 'Paris'", "to": "other", "continue": False},
            ],
            "unmatched": "drop",
            "newline": False,
        },
        "dead_letter": {"bucket": "rejects", "prefix": "bad/"},
    }


def test_the_packaged_spec_is_the_document_in_its_order_its_name_version_and_region(
    write_spec,
):
    loaded = spec.load(write_spec(MINIMAL, "minimal.yaml"))

    document = (
        '{"pipeline":"shop","resources":{"streams":{'
        '"source":{"name":"in","shards":1},"usa":{"name":"usa-out","shards":2},'
        '"other":{"name":"other-out","shards":1}}},'
        '"source":{"stream":"source","start":"trim_horizon"},'
        '"route":{"partition_key":"session_id","cases":['
        '{"when":"country == \'USA\'","to":"usa","continue":false},'
        '{"to":"other","continue":false}],"unmatched":"dead_letter","newline":true}}'
    )
    assert packed(loaded).decode() == (
        f'{{"document":{document},'
        f'"path":"minimal.yaml","region":"us-east-1","version":"{spec.version(document.encode())}"}}'
    )


def test_what_lambda_applies_itself_or_a_comment_leaves_the_packaged_spec_as_it_is(write_spec):
    base = spec.load(write_spec(SHOP, "shop.yaml"))
    with_lambda = SHOP.replace("pipeline: shop", "# a comment\npipeline: shop") + (
        "lambda: {memory_mb: 512, batch_size: 10}\n"
    )
    edited = spec.load(write_spec(with_lambda, "shop.yaml"))
    behaviour_edit = spec.load(
        write_spec(SHOP.replace("partition_key: session_id", "partition_key: id"), "shop.yaml")
    )

    assert edited.version != base.version  # the file's
    assert packed(edited) == packed(base)
    assert packed(behaviour_edit) != packed(base)


def test_a_specs_tests_leave_the_packaged_spec_as_it_is(write_spec):
    base = spec.load(write_spec(SHOP, "shop.yaml"))
    tested = spec.load(
        write_spec(
            SHOP + "tests:\n  - name: t\n    records: [{input: {}, dead_letter: route}]\n",
            "shop.yaml",
        )
    )

    assert len(tested.tests) == 1 and "tests" in tested.document
    assert packed(tested) == packed(base)


def test_a_document_load_did_not_make_is_refused_at_once(tmp_path):
    document = json.loads(packed(spec.load(PIPELINES / "ecommerce.yaml")))
    document["document"]["route"]["cases"][0]["to"] = "usaa"
    (tmp_path / SPEC_FILE).write_text(json.dumps(document))

    with pytest.raises(spec.SpecError) as refused:
        load_packaged(tmp_path / SPEC_FILE)

    assert refused.value.problems == [
        "ecommerce.yaml: resolved spec: route.cases[0].to: unknown stream 'usaa' "
        "(streams: source, usa, international)"
    ]
