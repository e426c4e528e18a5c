import copy
import datetime
import hashlib

import pytest
import yaml
from conftest import MINIMAL, PIPELINES

from runner import spec
from runner.backends.base import LOCAL_ACCOUNT_ID
from runner.backends.local import LocalBackend
from runner.records import expressions
from runner.spec import Function, SpecError, check_prefix, document


def problems(path, **kwargs):
    with pytest.raises(SpecError) as caught:
        spec.load(path, **kwargs)
    return caught.value.problems


def test_the_scenario_spec_declares_every_name_and_setting_of_the_scenario():
    loaded = spec.load(PIPELINES / "ecommerce.yaml", account_id=lambda region: "123456789012")

    assert loaded.pipeline == "de-c2w2lab1-etl"
    assert loaded.region == "us-east-1"
    assert {key: (s.name, s.shards) for key, s in loaded.streams.items()} == {
        "source": ("de-c2w2lab1-kinesis-data-stream", 1),
        "usa": ("de-c2w2lab1-usa-data-stream", 2),
        "international": ("de-c2w2lab1-international-data-stream", 2),
    }
    assert {key: b.name for key, b in loaded.buckets.items()} == {
        "usa": "de-c2w2lab1-123456789012-usa",
        "international": "de-c2w2lab1-123456789012-int",
        "dead_letter": "de-c2w2lab1-123456789012-dead-letter",
    }
    assert loaded.dead_letter == spec.DeadLetterDestination(
        bucket="dead_letter", prefix="dead-letter/"
    )
    usa = loaded.firehoses["usa"]
    assert (usa.name, usa.stream, usa.bucket) == ("de-c2w2lab1-firehose-usa", "usa", "usa")
    assert (usa.prefix, usa.error_prefix) == ("firehose/", "errors/")
    assert (usa.buffer_size_mb, usa.buffer_interval_s, usa.compression) == (1, 60, "UNCOMPRESSED")
    assert (usa.log_group, usa.log_stream) == (
        "de-c2w2lab1-firehose-usa-log-group",
        "de-c2w2lab1-usa-firehose-log-stream",
    )
    international = loaded.firehoses["international"]
    assert international.name == "de-c2w2lab1-firehose-international"
    assert (international.log_group, international.log_stream) == (
        "de-c2w2lab1-firehose-international-log-group",
        "de-c2w2lab1-international-firehose-log-stream",
    )
    assert {f.role for f in loaded.firehoses.values()} == {"de-c2w2lab1-firehose-role"}
    assert loaded.source == spec.Source("source", spec.Position("TRIM_HORIZON"))
    assert [case.to for case in loaded.route.cases] == ["usa", "international"]
    assert loaded.route.partition_key.text == "session_id"


def test_the_plain_producer_consumer_spec_declares_one_stream_and_no_route():
    loaded = spec.load(PIPELINES / "cli-router.yaml")
    assert [s.name for s in loaded.streams.values()] == ["de-c2w2lab1-kinesis-data-stream-cli"]
    assert loaded.route is None


def test_a_spec_knows_its_version_the_start_of_the_sha256_of_its_bytes(write_spec):
    path = write_spec(MINIMAL)
    digest = hashlib.sha256(MINIMAL.encode()).hexdigest()[:12]

    assert spec.load(path).version == spec.version(path) == spec.version(MINIMAL.encode())
    assert spec.version(path) == digest
    assert spec.load(write_spec(MINIMAL + "# a comment\n")).version != digest


def test_a_mistyped_key_is_named_where_it_stands_with_a_suggestion(write_spec):
    path = write_spec(MINIMAL.replace("    - when: country", "    - wehn: country"))
    assert problems(path) == [
        f"{path}:12:7: route.cases[0].wehn: unknown key 'wehn' "
        "(did you mean 'when'? expected one of: continue, to, when)"
    ]


def test_every_semantic_problem_is_listed_at_its_node(write_spec):
    path = write_spec(
        MINIMAL.replace("to: usa", "to: usaa")
        .replace("    - to: other", "    - to: source")
        .replace("country == 'USA'", "country == ")
    )
    assert problems(path) == [
        f"{path}:12:13: route.cases[0].when: 'country ==': unexpected end of expression "
        "at column 11",
        f"{path}:13:11: route.cases[0].to: unknown stream 'usaa' (streams: source, usa, other)",
        f"{path}:14:11: route.cases[1].to: a route cannot be the source stream 'source': "
        "records would loop back into it",
    ]


def test_an_unknown_function_and_a_wrong_arity_are_refused_at_load(write_spec):
    path = write_spec(
        MINIMAL + "transform:\n  - set:\n      a: summ(items)\n      b: length(items, items)\n"
    )
    assert problems(path) == [
        f"{path}:17:10: transform[0].set.a: 'summ(items)': unknown function 'summ()' "
        "at column 1; did you mean sum()?",
        f"{path}:18:10: transform[0].set.b: 'length(items, items)': "
        "length() takes 1 argument, got 2 at column 1",
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "1:1: the spec is empty; expected a mapping with pipeline, resources and source"),
        ("pipeline: [", "1:12: invalid YAML: expected the node content, but found '<stream end>'"),
        ("- a\n- b\n", "1:1: expected a mapping, got a list"),
        ("just text", "1:1: expected a mapping, got text 'just text'"),
    ],
)
def test_a_file_that_is_no_spec_at_all_gets_one_clear_line(write_spec, text, message):
    path = write_spec(text)
    assert problems(path) == [f"{path}:{message}"]


def test_missing_files_directories_and_binary_junk_are_named(tmp_path):
    assert problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: no such file"]
    assert problems(tmp_path) == [f"{tmp_path}: is a directory, not a spec file"]
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"pipeline: x\n\xff\xfe\x00")
    assert problems(junk) == [f"{junk}: not a text file (not UTF-8 at byte 12)"]


BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{','.join([f'*{before}'] * 9)}]\n"
    for before, name in zip("abcdefgh", "bcdefghi")
)


def test_aliases_repeating_too_many_values_are_refused_before_expanding(write_spec):
    path = write_spec(BILLION_LAUGHS)  # 10**8 values from nine lines
    assert problems(path) == [
        f"{path}:6:8: alias *e: aliases would repeat more than 100000 values in all; "
        "a spec needs far fewer (a YAML bomb?)"
    ]


def test_aliases_within_the_bound_are_expanded(write_spec):
    path = write_spec(
        MINIMAL.replace("{name: in, shards: 1}", "{name: in, shards: &one 1}").replace(
            "{name: other-out, shards: 1}", "{name: other-out, shards: *one}"
        )
    )
    assert spec.load(path).streams["other"].shards == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &a [1, *a]\n", "1:11: alias *a refers to itself: it stands inside &a (line 1)"),
        ("a: " + "[" * 1000, "1:67: the spec nests deeper than 64 levels"),
    ],
)
def test_endless_and_too_deep_specs_are_refused(write_spec, text, message):
    path = write_spec(text)
    assert problems(path) == [f"{path}:{message}"]


def test_a_spec_over_1_mib_is_refused_with_its_size(write_spec):
    comment = "#" * 99 + "\n"
    path = write_spec(MINIMAL + comment * ((1024 * 1024 - len(MINIMAL)) // 100))
    assert spec.load(path).pipeline == "shop"  # 1 MiB at most is read

    path = write_spec(MINIMAL + comment * 20_000)
    assert problems(path) == [
        f"{path}:1:1: the spec is {len(MINIMAL) + 2_000_000} bytes; "
        "a spec may be at most 1 MiB (1048576 bytes)"
    ]


def test_wrong_types_and_missing_keys_are_each_reported(write_spec):
    path = write_spec(
        "pipeline: 5\n"
        "resources:\n"
        "  streams:\n"
        "    source: {name: in, shards: two}\n"
        "    out: [in]\n"
        "source: {stream: source}\n"
        "route: {cases: [{to: out}]}\n"
    )
    assert problems(path) == [
        f"{path}:1:11: pipeline: expected text, got 5",
        f"{path}:4:32: resources.streams.source.shards: expected a number of shards from 1 to "
        "10000, or a ${var} holding one, got text 'two'",
        f"{path}:5:10: resources.streams.out: expected a mapping, got a list",
        f"{path}:7:8: route: missing required key 'partition_key'",
    ]


def test_duplicate_keys_are_refused_with_both_lines(write_spec):
    path = write_spec(MINIMAL + "pipeline: again\n")
    assert problems(path) == [f"{path}:15:1: pipeline: duplicate key 'pipeline' (first at line 1)"]


def test_vars_env_region_and_account_id_are_interpolated(write_spec):
    path = write_spec(
        MINIMAL.replace("pipeline: shop", "pipeline: shop\nvars: {p: '${env:TEAM}-x', n: 3}")
        .replace("name: in,", "name: '${p}-${region}-${account_id}',")
        .replace("shards: 2", "shards: '${n}'")
    )
    loaded = spec.load(path, environ={"TEAM": "blue"}, account_id=lambda region: "111122223333")
    assert loaded.streams["source"].name == "blue-x-us-east-1-111122223333"
    assert loaded.streams["usa"].shards == 3


def test_account_id_is_only_looked_up_when_the_spec_uses_it(write_spec):
    def account_id(region):
        raise AssertionError("account id looked up")

    assert spec.load(write_spec(MINIMAL), account_id=account_id).pipeline == "shop"


def test_without_a_target_account_id_is_the_local_targets(write_spec, tmp_path):
    path = write_spec(MINIMAL.replace("name: in,", "name: 'in-${account_id}',"))
    backend = LocalBackend(tmp_path / "state")
    assert spec.load(path).streams["source"].name == f"in-{backend.account_id}"
    assert backend.account_id == LOCAL_ACCOUNT_ID
    backend.close()


def test_account_id_is_asked_in_the_region_the_spec_resolves_to(write_spec):
    asked = []
    spec_text = MINIMAL.replace("name: in,", "name: 'in-${account_id}',")
    spec.load(
        write_spec(spec_text.replace("pipeline: shop", "pipeline: shop\nregion: eu-west-1")),
        account_id=lambda region: asked.append(region) or "1",
    )
    spec.load(
        write_spec(spec_text), region="ap-south-1", account_id=lambda r: asked.append(r) or "1"
    )
    assert asked == ["eu-west-1", "ap-south-1"]


def test_unresolved_references_are_spec_errors(write_spec):
    path = write_spec(MINIMAL.replace("name: in,", "name: '${nope}-${env:PIPELINE_NOT_SET}',"))
    assert problems(path, environ={}) == [
        f"{path}:4:20: resources.streams.source.name: "
        "${env:PIPELINE_NOT_SET}: environment variable PIPELINE_NOT_SET is not set",
        f"{path}:4:20: resources.streams.source.name: unresolved ${{nope}} "
        "(vars: none; also ${env:NAME}, ${account_id}, ${region})",
    ]


def test_a_default_case_must_be_last(write_spec):
    path = write_spec(
        MINIMAL.replace("    - when: country == 'USA'\n      to: usa\n", "")
        + "    - when: country == 'USA'\n      to: usa\n"
    )
    assert problems(path) == [
        f"{path}:12:7: route.cases[0]: a case without 'when' takes every record, "
        "so it must be the last case"
    ]


def test_names_must_be_unique_and_valid(write_spec):
    path = write_spec(
        MINIMAL.replace("usa-out", "other-out").replace("name: in,", "name: 'bad name',")
        + "dead_letter: {stream: source}\n"
    )
    assert problems(path) == [
        f"{path}:4:20: resources.streams.source.name: expected a Kinesis stream name: "
        "1-128 characters of a-z, A-Z, 0-9, _ . -, got text 'bad name'",
        f"{path}:6:19: resources.streams.other.name: name 'other-out' is already used by "
        "resources.streams.usa",
        f"{path}:15:23: dead_letter.stream: the dead letter cannot be the source stream "
        "'source': records would loop back into it",
    ]


def test_bucket_names_follow_s3_rules_and_firehose_buffers_are_in_range(write_spec):
    path = write_spec(
        MINIMAL.replace(
            "source:\n  stream",
            "  buckets:\n"
            "    a: {name: my..bucket}\n"
            "    b: {name: My_Bucket}\n"
            "  firehoses:\n"
            "    f: {name: f, from: usa, to: a, buffer: {size_mb: 129, interval_s: 901}}\n"
            "source:\n  stream",
        )
    )
    assert problems(path) == [
        f"{path}:8:15: resources.buckets.a.name: 'my..bucket' is not a valid S3 bucket name: "
        "no two dots in a row",
        f"{path}:9:15: resources.buckets.b.name: expected an S3 bucket name: 3-63 characters "
        "of a-z, 0-9, . and -, starting and ending with a letter or digit, got text 'My_Bucket'",
        f"{path}:11:54: resources.firehoses.f.buffer.size_mb: expected at most 128, got 129",
        f"{path}:11:71: resources.firehoses.f.buffer.interval_s: expected at most 900, got 901",
    ]
    path = write_spec(
        MINIMAL.replace(
            "source:\n  stream",
            "  buckets:\n    a: {name: my..bucket}\n"
            "  firehoses:\n    f: {name: f, from: usa, to: b}\n"
            "source:\n  stream",
        )
    )
    assert problems(path) == [
        f"{path}:8:15: resources.buckets.a.name: 'my..bucket' is not a valid S3 bucket name: "
        "no two dots in a row",
        f"{path}:10:33: resources.firehoses.f.to: unknown bucket 'b' (buckets: a)",
    ]


@pytest.mark.parametrize(
    "prefix, why",
    [
        ("/firehose/", "it starts with '/'"),
        ("firehose//usa/", "it has an empty segment ('//')"),
        ("../firehose/", "it has a '..' segment"),
        ("firehose/./", "it has a '.' segment"),
        ("data/!{timestamp:yyyy}//", "it has an empty segment ('//')"),
    ],
)
def test_a_prefix_that_cannot_begin_an_object_key_is_named(prefix, why):
    assert check_prefix(prefix) == f"'{prefix}' cannot begin an object key: {why}"


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "firehose/",
        "firehose",
        "a/b/..",
        "data/!{timestamp:yyyy/MM/dd}/",
        "!{firehose:random-string}/",
    ],
)
def test_prefixes_that_begin_object_keys_pass(prefix):
    assert check_prefix(prefix) is None


def test_firehose_prefixes_are_checked_at_validate_time(write_spec):
    path = write_spec(
        MINIMAL.replace(
            "source:\n  stream",
            "  buckets:\n"
            "    usa: {name: usa-bucket}\n"
            "  firehoses:\n"
            "    usa: {name: f, from: usa, to: usa, prefix: ../x/, error_prefix: /errors/}\n"
            "source:\n  stream",
        )
    )
    assert problems(path) == [
        f"{path}:10:48: resources.firehoses.usa.prefix: '../x/' cannot begin an object key: "
        "it has a '..' segment",
        f"{path}:10:69: resources.firehoses.usa.error_prefix: '/errors/' cannot begin an object "
        "key: it starts with '/'",
    ]


def test_a_start_is_read_as_a_position(write_spec):
    path = write_spec(
        MINIMAL.replace(
            "  stream: source", "  stream: source\n  start: at_timestamp:2026-11-26T14:30:00+02:00"
        )
    )
    assert spec.load(path).source.start == spec.Position(
        "AT_TIMESTAMP",
        timestamp=datetime.datetime(2026, 11, 26, 12, 30, tzinfo=datetime.timezone.utc),
    )


def test_a_start_timestamp_must_parse(write_spec):
    path = write_spec(
        MINIMAL.replace("  stream: source", "  stream: source\n  start: at_timestamp:soon")
    )
    assert problems(path) == [
        f"{path}:9:10: source.start: 'soon' is not an ISO-8601 timestamp such as "
        "2026-01-31T12:00:00Z"
    ]


def test_the_schema_ships_with_the_package_and_describes_every_property():
    schema = spec.schema()

    def walk(node, path):
        for name, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}.{name} has no description"
            walk(sub, f"{path}.{name}")
        for sub in node.get("$defs", {}).values():
            walk(sub, path)

    walk(schema, "$")
    assert schema["additionalProperties"] is False


def test_every_mistake_is_reported_in_one_pass_even_with_schema_errors(write_spec):
    scenario = (PIPELINES / "ecommerce.yaml").read_text()
    path = write_spec(
        scenario.replace("    - when: country", "    - wehn: country")
        .replace("sum(browse_history[].quantity)", "summ(browse_history[].quantity)")
        .replace("      to: usa\n    - to", "      to: usaa\n    - to")
        .replace("    - to: international", "    - to: source")
    )
    assert problems(path) == [
        f"{path}:1:33: warning: the yaml-language-server modeline's $schema "
        "'../schemas/pipeline.schema.json' does not exist (the path is relative to the spec's "
        "folder), so editors cannot check the spec",
        f"{path}:52:33: transform[0].set.overall_product_quantity: "
        "'summ(browse_history[].quantity)': unknown function 'summ()' at column 1; "
        "did you mean sum()?",
        f"{path}:59:7: route.cases[0].wehn: unknown key 'wehn' "
        "(did you mean 'when'? expected one of: continue, to, when)",
        f"{path}:60:11: route.cases[0].to: unknown stream 'usaa' "
        "(streams: source, usa, international)",
        f"{path}:61:11: route.cases[1].to: a route cannot be the source stream 'source': "
        "records would loop back into it",
    ]


def test_the_schema_accepts_references_where_values_go_as_editors_see_them():
    import jsonschema
    import yaml

    raw = yaml.safe_load((PIPELINES / "ecommerce.yaml").read_text())
    raw["resources"]["streams"]["usa"]["shards"] = "${usa_shards}"
    assert list(jsonschema.Draft202012Validator(spec.schema()).iter_errors(raw)) == []


def test_names_too_long_once_resolved_are_refused(write_spec):
    path = write_spec(
        MINIMAL.replace("name: in,", "name: '${long}',").replace(
            "pipeline: shop", "pipeline: shop\nvars: {long: " + "a" * 129 + "}"
        )
    )
    assert problems(path) == [
        f"{path}:5:20: resources.streams.source.name: '{'a' * 129}' is 129 characters, at most 128"
    ]


def test_a_step_with_two_keys_says_which(write_spec):
    path = write_spec(MINIMAL + "transform:\n  - {remove: [a], rename: {b: c}}\n")
    assert problems(path) == [
        f"{path}:16:5: transform[0]: expected a step: a mapping with exactly one of set, "
        "remove, rename, filter, got 2 keys: remove, rename"
    ]


WITH_BUCKETS = MINIMAL.replace(
    "source:\n  stream",
    "  buckets:\n    rejects: {name: shop-rejects}\n    raw: {name: shop-raw}\nsource:\n  stream",
)


def test_a_dead_letter_is_a_declared_stream_or_a_declared_bucket_with_a_prefix(write_spec):
    loaded = spec.load(write_spec(WITH_BUCKETS + "dead_letter: {bucket: rejects}\n"))
    assert loaded.dead_letter == spec.DeadLetterDestination(bucket="rejects", prefix="dead-letter/")
    loaded = spec.load(write_spec(WITH_BUCKETS + "dead_letter: {bucket: raw, prefix: bad/x-}\n"))
    assert loaded.dead_letter == spec.DeadLetterDestination(bucket="raw", prefix="bad/x-")
    loaded = spec.load(write_spec(WITH_BUCKETS + "dead_letter: {stream: other}\n"))
    assert loaded.dead_letter == spec.DeadLetterDestination(stream="other")
    assert spec.load(write_spec(WITH_BUCKETS)).dead_letter is None


@pytest.mark.parametrize(
    "dead_letter, message",
    [
        (
            "{bucket: rejcts}",
            "18:23: dead_letter.bucket: unknown bucket 'rejcts' (buckets: rejects, raw)",
        ),
        (
            "{stream: other, bucket: rejects}",
            "18:14: dead_letter: expected a dead letter: {stream: KEY}, or {bucket: KEY} with "
            "an optional prefix, got 2 keys: stream, bucket",
        ),
        (
            "{stream: other, prefix: bad/}",
            "18:14: dead_letter: expected a dead letter: {stream: KEY}, or {bucket: KEY} with "
            "an optional prefix, got 2 keys: stream, prefix",
        ),
        (
            "{}",
            "18:14: dead_letter: expected a dead letter: {stream: KEY}, or {bucket: KEY} with "
            "an optional prefix, got an empty mapping",
        ),
        (
            "{buckets: rejects}",
            "18:15: dead_letter.buckets: unknown key 'buckets' (did you mean 'bucket'? "
            "expected one of: bucket, prefix, stream)",
        ),
        ("rejects", "18:14: dead_letter: expected a mapping, got text 'rejects'"),
        (
            "{bucket: rejects, prefix: /dead/}",
            "18:40: dead_letter.prefix: '/dead/' cannot begin an object key: it starts with '/'",
        ),
        (
            "{bucket: rejects, prefix: dead/../letter/}",
            "18:40: dead_letter.prefix: 'dead/../letter/' cannot begin an object key: "
            "it has a '..' segment",
        ),
        (
            "{bucket: rejects, prefix: dead//letter/}",
            "18:40: dead_letter.prefix: 'dead//letter/' cannot begin an object key: "
            "it has an empty segment ('//')",
        ),
    ],
)
def test_a_dead_letter_names_one_declared_place_and_a_prefix_keys_can_start_with(
    write_spec, dead_letter, message
):
    path = write_spec(WITH_BUCKETS + f"dead_letter: {dead_letter}\n")
    assert problems(path) == [f"{path}:{message}"]


ALL_DEFAULTED = (
    WITH_BUCKETS.replace(
        "source:\n  stream",
        "  firehoses:\n    usa: {name: shop-usa, from: usa, to: raw}\nsource:\n  stream",
    )
    + "dead_letter: {bucket: rejects}\n"
)


def defaulted(loaded):
    """What a spec that leaves every setting out gets."""
    usa = loaded.firehoses["usa"]
    return {
        "firehose": (
            usa.prefix,
            usa.error_prefix,
            usa.buffer_size_mb,
            usa.buffer_interval_s,
            usa.compression,
        ),
        "start": str(loaded.source.start),
        "dead_letter prefix": loaded.dead_letter.prefix,
        "route": (loaded.route.unmatched, loaded.route.newline),
        "continue": [case.continue_ for case in loaded.route.cases],
    }


def test_a_setting_left_out_takes_the_schemas_default(write_spec):
    assert defaulted(spec.load(write_spec(ALL_DEFAULTED))) == {
        "firehose": ("", "errors/", 5, 300, "UNCOMPRESSED"),
        "start": "trim_horizon",
        "dead_letter prefix": "dead-letter/",
        "route": ("dead_letter", True),
        "continue": [False, False],
    }


def test_the_defaults_are_read_from_the_schema_alone(write_spec, monkeypatch):
    shape = spec.schema()
    properties = shape["properties"]
    firehose = shape["$defs"]["firehose"]["properties"]
    firehose["prefix"]["default"] = "delivered/"
    firehose["error_prefix"]["default"] = "failed/"
    firehose["buffer"]["properties"]["size_mb"]["default"] = 7
    firehose["buffer"]["properties"]["interval_s"]["default"] = 70
    firehose["compression"]["default"] = "GZIP"
    properties["source"]["properties"]["start"]["default"] = "latest"
    properties["dead_letter"]["properties"]["prefix"]["default"] = "rejected/"
    properties["route"]["properties"]["unmatched"]["default"] = "drop"
    properties["route"]["properties"]["newline"]["default"] = False
    shape["$defs"]["case"]["properties"]["continue"]["default"] = True
    monkeypatch.setattr(document, "schema", lambda: shape)

    assert defaulted(spec.load(write_spec(ALL_DEFAULTED))) == {
        "firehose": ("delivered/", "failed/", 7, 70, "GZIP"),
        "start": "latest",
        "dead_letter prefix": "rejected/",
        "route": ("drop", False),
        "continue": [True, True],
    }


@pytest.mark.parametrize("prefix", ["", "dead-letter/", "a/b-", "a..b/", "x/.hidden-"])
def test_check_prefix_accepts_what_s3_and_a_bucket_folder_can_both_hold(prefix):
    assert spec.check_prefix(prefix) is None


def test_the_shipped_specs_have_no_warnings():
    for name in ("ecommerce.yaml", "cli-router.yaml"):
        assert spec.load(PIPELINES / name).warnings == ()


def usa_warning(path):
    """The warning of MINIMAL's case written `country == "USA"`."""
    return (
        f'{path}:12:13: route.cases[0].when: warning: \'country == "USA"\': "USA" at column 12 '
        "is a field, not text; write 'USA' for the text"
    )


def test_a_double_quoted_identifier_compared_as_text_is_warned_of_with_the_fix(write_spec):
    path = write_spec(
        MINIMAL.replace("country == 'USA'", 'country == "USA"')
        + "transform:\n"
        + '  - filter: \'"United States" != country && kind == "book"\'\n'
        + "  - set:\n"
        + '      n: length(items[?kind == "it\'s"])\n'
    )
    assert spec.load(path).warnings == (
        usa_warning(path),
        f"{path}:16:13: transform[0].filter: warning: "
        '\'"United States" != country && kind == "book"\': "United States" at column 1 is a '
        "field, not text; write 'United States' for the text",
        f"{path}:16:13: transform[0].filter: warning: "
        '\'"United States" != country && kind == "book"\': "book" at column 39 is a '
        "field, not text; write 'book' for the text",
        f"{path}:18:10: transform[1].set.n: warning: 'length(items[?kind == \"it's\"])': "
        "\"it's\" at column 23 is a field, not text; write 'it\\'s' for the text",
    )


@pytest.mark.parametrize(
    "when",
    [
        "\"first-name\" == 'Ann'",  # a field that needs quotes, against text
        '"first-name" == "last-name"',  # two such fields
        '"foo-bar".x == country',  # a quoted part of a path
        'country == "foo-bar".x',
        '"a" < country',  # not == or !=
        '!"a" == country',  # the operand is !"a"
        "country == 'USA'",
    ],
)
def test_quoted_identifiers_that_are_fields_are_not_warned_of(write_spec, when):
    path = write_spec(
        MINIMAL.replace("country == 'USA'", when.replace("'", "''"))
        .replace("- when: ", "- when: '")
        .replace("\n      to: usa", "'\n      to: usa")
    )
    assert spec.load(path).warnings == ()


def test_strict_refuses_a_spec_for_its_warnings_in_file_order(write_spec):
    path = write_spec(
        MINIMAL.replace("country == 'USA'", 'country == "USA"').replace(
            "  partition_key: session_id", "  partition_key: '\"a\" == b'"
        )
    )
    assert problems(path, strict=True) == [
        f'{path}:10:18: route.partition_key: warning: \'"a" == b\': "a" at column 1 is a field, '
        "not text; write 'a' for the text",
        usa_warning(path),
    ]


def test_warnings_come_with_the_problems_of_a_spec_refused_anyway(write_spec):
    path = write_spec(
        MINIMAL.replace("country == 'USA'", 'country == "USA"').replace("to: other", "to: nope")
    )
    assert problems(path) == [
        usa_warning(path),
        f"{path}:14:11: route.cases[1].to: unknown stream 'nope' (streams: source, usa, other)",
    ]


def test_a_streams_own_name_where_its_key_goes_says_which_key_to_write(write_spec):
    path = write_spec(
        MINIMAL.replace("to: usa", "to: usa-out")
        .replace("stream: source", "stream: in")
        .replace(
            "    other: {name: other-out, shards: 1}",
            "    other: {name: other-out, shards: 1}\n    rejects: {name: bad, shards: 1}",
        )
        + "dead_letter: {stream: bad}\n"
    )
    assert problems(path) == [
        f"{path}:9:11: source.stream: 'in' is the name of stream 'source'; write stream: source",
        f"{path}:14:11: route.cases[0].to: 'usa-out' is the name of stream 'usa'; write to: usa",
        f"{path}:16:23: dead_letter.stream: 'bad' is the name of stream 'rejects'; "
        "write stream: rejects",
    ]


def test_a_modeline_schema_that_is_not_there_is_warned_of_at_its_line(write_spec, tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "pipeline.schema.json").write_text("{}")
    found = write_spec("# yaml-language-server: $schema=schemas/pipeline.schema.json\n" + MINIMAL)
    assert spec.load(found).warnings == ()
    url = write_spec("# yaml-language-server: $schema=https://example.com/s.json\n" + MINIMAL)
    assert spec.load(url).warnings == ()
    path = write_spec(
        "# A spec\n#  yaml-language-server: $schema=../schemas/pipeline.schema.json\n" + MINIMAL
    )
    assert spec.load(path).warnings == (
        f"{path}:2:34: warning: the yaml-language-server modeline's $schema "
        "'../schemas/pipeline.schema.json' does not exist (the path is relative to the spec's "
        "folder), so editors cannot check the spec",
    )


def test_a_dead_letter_stream_that_a_route_also_writes_is_warned_of(write_spec):
    path = write_spec(MINIMAL + "dead_letter: {stream: usa}\n")
    assert spec.load(path).warnings == (
        f"{path}:15:23: dead_letter.stream: warning: stream 'usa' is also used by "
        "route.cases[0]: dead-letter entries would mix with the records there; give the dead "
        "letter a stream of its own",
    )
    own = MINIMAL.replace("    other:", "    rejects: {name: bad, shards: 1}\n    other:")
    assert spec.load(write_spec(own + "dead_letter: {stream: rejects}\n", "ok.yaml")).warnings == ()


EVERY_PART = """\
pipeline: shop
region: us-east-1
vars: {n: 2}
resources:
  streams:
    source: {name: in, shards: 1}
    usa: {name: usa-out, shards: 2}
    rejects: {name: rejects, shards: 1}
  buckets:
    usa: {name: shop-usa}
  firehoses:
    usa:
      name: shop-usa
      from: usa
      to: usa
      prefix: firehose/
      error_prefix: errors/
      buffer: {size_mb: 1, interval_s: 60}
      compression: GZIP
      role: shop-role
      logging: {group: g, stream: s}
source: {stream: source, start: latest}
transform:
  - set: {n: length(items)}
  - remove: [a]
  - rename: {b: c}
  - filter: n > `0`
route:
  partition_key: session_id
  cases:
    - {when: country == 'USA', to: usa, continue: true}
    - to: rejects
  unmatched: drop
  newline: false
dead_letter: {stream: rejects}
"""


def every_part(value, path=()):
    """The path of every value in a document, the document itself first."""
    yield path
    if isinstance(value, (dict, list)):
        for key, child in value.items() if isinstance(value, dict) else enumerate(value):
            yield from every_part(child, path + (key,))


def changed(document, path, value):
    """A copy of `document` with `value` at `path`, or without that part if `value` is None."""
    document = copy.deepcopy(document)
    if not path:
        return value
    *above, last = path
    holder = document
    for key in above:
        holder = holder[key]
    if value is None:
        del holder[last]
    else:
        holder[last] = value
    return document


def test_a_part_of_any_wrong_type_or_missing_anywhere_is_reported_not_a_crash(
    write_spec, monkeypatch
):
    path = write_spec(EVERY_PART)
    assert spec.load(path).route.unmatched == "drop"
    parsed = yaml.safe_load(EVERY_PART)
    for part in every_part(parsed):
        for wrong in ("five", 5, [5], None):  # None: the part is missing
            # The documents are handed over as read, since reading YAML is most of the time.
            read = changed(parsed, part, wrong)
            monkeypatch.setattr(document.Reader, "read", lambda self, read=read: read)
            try:
                spec.load(path)
            except SpecError:
                pass


@pytest.mark.parametrize(
    "wrong",
    [
        MINIMAL.replace("{name: in, shards: 1}", "{name: in, shards: two}"),
        MINIMAL.replace("source:\n  stream: source\n", ""),
    ],
    ids=["a wrong value", "a missing part"],
)
def test_a_schema_error_does_not_hide_a_bug_in_the_parts_it_leaves_right(
    write_spec, monkeypatch, wrong
):
    def broken(text):
        raise TypeError("a bug")

    monkeypatch.setattr(expressions, "compile", broken)
    with pytest.raises(TypeError, match="a bug"):
        spec.load(write_spec(wrong))


LAMBDA_SHOP = MINIMAL.replace(
    "    other: {name: other-out, shards: 1}\n",
    "    other: {name: other-out, shards: 1}\n  buckets:\n    rejects: {name: shop-rejects}\n",
) + ("dead_letter: {bucket: rejects}\n")


def test_a_lambda_section_takes_the_defaults_the_schema_documents(write_spec):
    loaded = spec.load(write_spec(LAMBDA_SHOP + "lambda: {}\n"))
    assert loaded.function == Function(
        name="shop-etl",
        role="shop-etl-role",
        memory_mb=256,
        timeout_s=60,
        batch_size=100,
        batching_window_s=1,
        parallelization=1,
        max_retries=5,
        max_record_age_s=3600,
        bisect_on_error=True,
    )
    assert loaded.summary().endswith("2 route cases, run by Lambda function shop-etl")
    assert spec.load(write_spec(LAMBDA_SHOP)).function is None


def test_every_lambda_setting_is_read_with_vars_resolved(write_spec):
    loaded = spec.load(
        write_spec(
            "vars: {prefix: lab}\n" + LAMBDA_SHOP + "lambda:\n"
            '  function: "${prefix}-etl"\n'
            "  role: etl-runner\n"
            "  memory_mb: 10240\n"
            "  timeout_s: 900\n"
            "  batch_size: 10000\n"
            "  batching_window_s: 0\n"
            "  parallelization: 10\n"
            "  max_retries: -1\n"
            "  max_record_age_s: -1\n"
            "  bisect_on_error: false\n"
        )
    )
    assert loaded.function == Function(
        "lab-etl", "etl-runner", 10240, 900, 10000, 0, 10, -1, -1, False
    )


def test_lambda_settings_out_of_lambdas_bounds_are_refused_at_their_line(write_spec):
    path = write_spec(
        LAMBDA_SHOP + "lambda:\n"
        "  function: shop etl\n"
        "  memory_mb: 64\n"
        "  timeout_s: 901\n"
        "  batch_size: 0\n"
        "  parallelization: 11\n"
        "  max_retries: -2\n"
        "  max_record_age_s: 30\n"
        "  bisect_on_eror: true\n"
    )
    assert problems(path) == [
        f"{path}:19:13: lambda.function: expected a Lambda function name: 1-64 characters of "
        "a-z, A-Z, 0-9, _ -, got text 'shop etl'",
        f"{path}:20:14: lambda.memory_mb: expected at least 128, got 64",
        f"{path}:21:14: lambda.timeout_s: expected at most 900, got 901",
        f"{path}:22:15: lambda.batch_size: expected at least 1, got 0",
        f"{path}:23:20: lambda.parallelization: expected at most 10, got 11",
        f"{path}:24:16: lambda.max_retries: expected at least -1, got -2",
        f"{path}:25:21: lambda.max_record_age_s: expected -1 (no limit), or a number of seconds "
        "from 60 to 604800, got 30",
        f"{path}:26:3: lambda.bisect_on_eror: unknown key 'bisect_on_eror' "
        "(did you mean 'bisect_on_error'? expected one of: batch_size, batching_window_s, "
        "bisect_on_error, function, max_record_age_s, max_retries, memory_mb, parallelization, "
        "role, timeout_s)",
    ]


def test_a_lambda_spec_needs_a_stream_or_bucket_dead_letter_and_a_route(write_spec):
    path = write_spec(MINIMAL + "lambda: {memory_mb: 512}\n")
    assert problems(path) == [
        f"{path}:15:9: lambda: for a pipeline run by Lambda, the dead letter must be a stream "
        "or a bucket, since Lambda keeps the checkpoints and a function has no state folder: add "
        "dead_letter: {bucket: KEY} with a key of resources.buckets (it holds entries of any "
        "size), or dead_letter: {stream: KEY}"
    ]
    no_route = LAMBDA_SHOP[: LAMBDA_SHOP.index("route:")] + "dead_letter: {bucket: rejects}\n"
    path = write_spec(no_route + "lambda: {}\n")
    assert problems(path) == [
        f"{path}:12:9: lambda: a pipeline run by Lambda needs a route: add route: with its cases"
    ]


def test_lambda_names_over_64_characters_are_refused(write_spec):
    name = "f" * 62
    path = write_spec(LAMBDA_SHOP + f"lambda: {{function: {name}}}\n")
    assert problems(path) == [
        f"{path}:18:20: lambda.function: the role named after it, '{name}-role', is 67 "
        "characters, at most 64: set lambda.role"
    ]
    path = write_spec(LAMBDA_SHOP + f"lambda: {{function: {name}xyz, role: {name}}}\n")
    assert problems(path) == [
        f"{path}:18:20: lambda.function: '{name}xyz' is 65 characters, at most 64"
    ]
