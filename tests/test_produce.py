import json
import random
import shutil
import signal
import statistics
import string
import subprocess
import sys
from itertools import islice

import pytest
from click.testing import CliRunner
from conftest import PIPELINES, removed_state
from fakes import FaultyBackend, wait_until

from runner.backends.base import BackendError
from runner.backends.limits import MAX_RECORD_BYTES
from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.commands.produce import (
    ABROAD,
    USA_CITIES,
    ProduceOptions,
    Stops,
    json_lines,
    main,
    produce,
    synthetic_sessions,
)
from runner.records.expressions import compile as compile_expression

STREAM = "events"
SAMPLE = (PIPELINES / "samples" / "session.json").read_text().strip()


@pytest.fixture
def backend(state):
    backend = LocalBackend(state)
    backend.create_stream(STREAM, 2)
    yield backend
    backend.close()


def pipeline(*args, input=None):
    return CliRunner().invoke(cli, ["produce", *map(str, args)], input=input, prog_name="pipeline")


def stream_records(backend, stream=STREAM):
    """(partition key, parsed data) of every record in the stream, in sequence order."""
    records = []
    for shard in backend.list_shards(stream):
        iterator = backend.get_shard_iterator(stream, shard.shard_id, "TRIM_HORIZON")
        records += backend.get_records(iterator).records
    records.sort(key=lambda record: int(record.sequence))
    return [(record.partition_key, json.loads(record.data)) for record in records]


# The command


def test_json_puts_one_record_keyed_by_session_id(backend):
    result = pipeline("--stream", STREAM, "--json", SAMPLE)

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == f"put 1 record into {STREAM}\n"
    assert stream_records(backend) == [("a1", json.loads(SAMPLE))]


def test_a_bad_line_is_reported_and_every_good_line_after_it_is_still_sent(backend, tmp_path):
    lines = tmp_path / "sessions.jsonl"
    lines.write_bytes(
        b'{"session_id": "s1"}\n'
        b'{"session_id": "s2"\n'
        b"\n"
        b'{"session_id": "s3"}\n'
        b"[1, 2]\n"
        b'{"session_id": "s4"}\n'
        b'{"session_id": "\xff"}\n' + b"[" * 100_000 + b"\n"
        b'{"session_id": "s5"}\n'
    )

    result = pipeline("--stream", STREAM, "--file", lines)

    assert result.exit_code == 1
    assert result.stderr == (
        "line 2: not JSON: Expecting ',' delimiter at column 20\n"
        "line 5: not a JSON object: got an array\n"
        "line 7: not UTF-8: invalid start byte at byte 16\n"
        "line 8: not JSON this runner reads: nested deeper than 512 levels\n"
        f"put 4 records into {STREAM}; 4 lines not sent\n"
    )
    assert [key for key, _ in stream_records(backend)] == ["s1", "s3", "s4", "s5"]


def test_a_line_holding_text_utf8_cannot_is_reported_and_the_rest_are_sent(backend):
    text = '{"session_id": "s1", "note": "\\ud800"}\n{"session_id": "s2"}\n'

    result = pipeline("--stream", STREAM, "--file", "-", input=text)

    assert result.exit_code == 1
    assert result.stderr == (
        "line 1: cannot be written as JSON: it holds a lone surrogate (\\ud800), which is not "
        f"text UTF-8 can encode\nput 1 record into {STREAM}; 1 line not sent\n"
    )
    assert [key for key, _ in stream_records(backend)] == ["s2"]


def test_one_bad_line_is_counted_in_the_singular(backend):
    result = pipeline("--stream", STREAM, "--file", "-", input='{"session_id": "s1"}\n[]\n')

    assert result.exit_code == 1
    assert result.stderr == (
        f"line 2: not a JSON object: got an array\nput 1 record into {STREAM}; 1 line not sent\n"
    )


def test_a_line_too_large_for_a_record_is_reported_and_the_rest_are_sent(backend):
    huge = json.dumps({"session_id": "big", "blob": "x" * MAX_RECORD_BYTES})
    text = f'{{"session_id": "s1"}}\n{huge}\n{{"session_id": "s2"}}\n'

    result = pipeline("--stream", STREAM, "--file", "-", input=text)

    assert result.exit_code == 1
    size = len(huge.replace(" ", "")) + len("big")
    assert result.stderr == (
        f"line 2: record is {size} bytes with its partition key, "
        f"at most {MAX_RECORD_BYTES} allowed\n"
        f"put 2 records into {STREAM}; 1 line not sent\n"
    )
    assert [key for key, _ in stream_records(backend)] == ["s1", "s2"]


@pytest.mark.parametrize(
    ("expression", "key"),
    [
        ("customer_number", "100"),
        ("join('-', [country, city])", "USA-Washington"),
        ("browse_history[0].product_code", "Product1"),
    ],
)
def test_partition_key_is_a_jmespath_expression(backend, expression, key):
    result = pipeline("--stream", STREAM, "--json", SAMPLE, "--partition-key", expression)

    assert result.exit_code == 0, result.output
    assert stream_records(backend) == [(key, json.loads(SAMPLE))]


def test_a_record_the_partition_key_finds_nothing_in_is_not_sent(backend):
    result = pipeline("--stream", STREAM, "--json", '{"id": 1}')

    assert result.exit_code == 1
    assert result.stderr == (
        "--json: --partition-key session_id gave null, expected text or a number\n"
        f"put 0 records into {STREAM}; 1 line not sent\n"
    )
    assert stream_records(backend) == []


def test_a_bad_partition_key_expression_exits_2_naming_it(backend):
    result = pipeline("--stream", STREAM, "--json", SAMPLE, "--partition-key", "session_id[")

    assert result.exit_code == 2
    assert result.stderr.endswith(
        "Error: Invalid value for '--partition-key': 'session_id[': "
        "unexpected end of expression at column 12\n"
    )
    assert stream_records(backend) == []


def test_a_missing_stream_exits_1(state):
    result = pipeline("--stream", "nowhere", "--json", SAMPLE)

    assert result.exit_code == 1
    assert result.stderr == (
        f"error: stream 'nowhere' not found on the local target in {state} (--stream takes the "
        "stream's own name, not its key in a spec; `pipeline apply SPEC` creates it)\n"
    )


def put_lines(backend, lines, warn):
    """What `pipeline produce --stream events --file F` does with these lines."""
    options = ProduceOptions(compile_expression("session_id"), file=lines)
    return main(backend, STREAM, options, warn=warn)


def test_a_state_folder_removed_while_producing_fails_and_reports_nothing_as_put(backend, state):
    def lines():
        for number in range(1000):
            if number == 500:  # the first batch is in: now `rm -rf .pipeline`
                shutil.rmtree(state)
            yield json.dumps({"session_id": f"s{number}"}).encode()

    warnings = []
    with pytest.raises(BackendError) as caught:
        put_lines(backend, lines(), warnings.append)

    assert str(caught.value) == removed_state(state)
    assert warnings == []


FULL = BackendError("local state .pipeline/pipeline.db: database or disk is full")


def failing_after(backend, calls, error=FULL):
    """A backend whose PutRecords fails after `calls` calls, as on a disk that fills up (or
    is interrupted, as by Ctrl-C, with `error=KeyboardInterrupt()`)."""

    def put_records(put, stream, entries):
        if filling.called["put_records"] > calls:
            raise error
        return put(stream, entries)

    filling = FaultyBackend(backend, put_records=put_records)
    return filling


def test_an_error_says_how_many_records_were_put_before_it(backend):
    lines = [json.dumps({"session_id": f"s{number}"}).encode() for number in range(1, 2001)]
    warnings = []

    code = put_lines(failing_after(backend, calls=3), [b"{oops", *lines], warnings.append)

    assert code == 1
    assert warnings == [
        "line 1: not JSON: Expecting property name enclosed in double quotes at column 2",
        "stopped by an error after putting 1500 records into events (through line 1501): "
        "local state .pipeline/pipeline.db: database or disk is full",
    ]
    assert [key for key, _ in stream_records(backend)] == [f"s{n}" for n in range(1, 1501)]


def test_ctrl_c_says_how_many_records_were_put_and_through_which_line(backend):
    lines = [json.dumps({"session_id": f"s{number}"}).encode() for number in range(1, 2001)]
    warnings = []

    code = put_lines(failing_after(backend, 3, KeyboardInterrupt()), lines, warnings.append)

    assert code == 130
    assert warnings == ["stopped: put 1500 records into events (through line 1500)"]
    assert len(stream_records(backend)) == 1500


def test_ctrl_c_of_synthetic_sessions_says_through_which_session(backend):
    options = ProduceOptions(
        compile_expression("session_id"), synthetic=True, count=2000, mean_gap=0, seed=1
    )
    warnings = []

    interrupted = failing_after(backend, 2, KeyboardInterrupt())
    code = main(interrupted, STREAM, options, warn=warnings.append)

    assert code == 130
    assert warnings == ["stopped: put 1000 records into events (through session 1000)"]


def test_sigterm_stops_produce_as_ctrl_c_does_saying_what_was_put(backend):
    command = [sys.executable, "-m", "runner", "produce", "--stream", STREAM, "--file", "-"]
    producing = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    # A first batch of 500 is put; the next 100 wait for more input, as from a slow pipe.
    producing.stdin.write(b"".join(b'{"session_id": "s%d"}\n' % number for number in range(1, 601)))
    producing.stdin.flush()
    wait_until(lambda: len(stream_records(backend)) == 500)

    producing.send_signal(signal.SIGTERM)

    assert producing.wait(timeout=30) == 130
    producing.stdin.close()
    assert producing.stderr.read() == b"stopped: put 500 records into events (through line 500)\n"


@pytest.mark.parametrize(
    "choice",
    [
        [],
        ["--json", SAMPLE, "--synthetic"],
        ["--json", SAMPLE, "--file", "-"],
        ["--file", "-", "--synthetic"],
    ],
)
def test_exactly_one_record_source_must_be_given(backend, choice):
    result = pipeline("--stream", STREAM, *choice, input="")

    assert result.exit_code == 2
    assert result.stderr == (
        "Usage: pipeline produce [OPTIONS]\n"
        "Try 'pipeline produce --help' for help.\n"
        "\n"
        "Error: give exactly one of --json, --file or --synthetic\n"
    )
    assert stream_records(backend) == []


def test_synthetic_count_puts_that_many_sessions_of_the_seed(backend):
    result = pipeline(
        "--stream", STREAM, "--synthetic", "--count", 25, "--mean-gap", 0, "--seed", 9
    )

    assert result.exit_code == 0, result.output
    assert result.stderr.endswith(f"put 25 records into {STREAM}\n")
    sessions = list(islice(synthetic_sessions(9), 25))
    assert stream_records(backend) == [(s["session_id"], s) for s in sessions]


# Synthetic sessions


def test_synthetic_sessions_are_the_same_for_the_same_seed():
    assert list(islice(synthetic_sessions(7), 50)) == list(islice(synthetic_sessions(7), 50))
    assert list(islice(synthetic_sessions(7), 50)) != list(islice(synthetic_sessions(8), 50))


def drawn_one_call_at_a_time(seed):
    """The sessions as random's randint, choice and choices draw them, call by call."""
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + string.digits
    while True:
        if rng.random() < 0.5:
            city, country = rng.choice(USA_CITIES), "USA"
        else:
            city, country = rng.choice(ABROAD)
        products = rng.sample(range(1, 31), rng.randint(1, 5))
        yield {
            "session_id": "".join(rng.choices(alphabet, k=12)),
            "customer_number": rng.randint(100, 999_999),
            "city": city,
            "country": country,
            "credit_limit": rng.choice([500, 1000, 1500, 2000, 5000, 10000]),
            "browse_history": [
                {
                    "product_code": f"Product{number}",
                    "quantity": rng.randint(1, 5),
                    "in_shopping_cart": rng.random() < 0.5,
                }
                for number in products
            ],
        }


@pytest.mark.parametrize("seed", [7, 42])
def test_synthetic_sessions_are_those_randint_choice_and_choices_draw(seed):
    expected = list(islice(drawn_one_call_at_a_time(seed), 2000))
    assert list(islice(synthetic_sessions(seed), 2000)) == expected


def test_synthetic_sessions_are_shaped_like_the_scenarios():
    sessions = list(islice(synthetic_sessions(1), 1000))

    for session in sessions:
        assert list(session) == [
            "session_id",
            "customer_number",
            "city",
            "country",
            "credit_limit",
            "browse_history",
        ]
        assert len(session["session_id"]) == 12 and session["session_id"].isalnum()
        assert isinstance(session["customer_number"], int)
        assert isinstance(session["credit_limit"], int)
        if session["country"] == "USA":
            assert session["city"] in USA_CITIES
        else:
            assert (session["city"], session["country"]) in ABROAD
        history = session["browse_history"]
        assert 1 <= len(history) <= 5
        assert len({item["product_code"] for item in history}) == len(history)
        for item in history:
            assert set(item) == {"product_code", "quantity", "in_shopping_cart"}
            assert item["product_code"].startswith("Product")
            assert isinstance(item["quantity"], int) and item["quantity"] >= 1
            assert isinstance(item["in_shopping_cart"], bool)
    assert len({s["session_id"] for s in sessions}) == 1000
    usa = sum(s["country"] == "USA" for s in sessions)
    assert 400 < usa < 600, "both routes of the scenario get sessions"


# produce()


class Recorder:
    """A sink and a sleep that note, in one list, what was put and how long was slept."""

    def __init__(self):
        self.events = []

    def put(self, entries, accepted=None):
        self.events.append(("put", [key for _, key in entries]))

    def sleep(self, seconds):
        self.events.append(("sleep", seconds))


def run_produce(records, **options):
    recorder = Recorder()
    warnings = []
    result = produce(
        recorder,
        enumerate(records, 1),
        compile_expression("session_id"),
        warn=warnings.append,
        sleep=recorder.sleep,
        **options,
    )
    return result, recorder.events, warnings


def test_with_a_mean_gap_each_record_goes_alone_with_poisson_gaps_between():
    sessions = list(islice(synthetic_sessions(4), 2000))

    result, events, _ = run_produce(sessions, mean_gap=10.0, seed=4)

    puts = [keys for kind, keys in events if kind == "put"]
    gaps = [seconds for kind, seconds in events if kind == "sleep"]
    assert puts == [[s["session_id"]] for s in sessions]
    assert [kind for kind, _ in events] == ["put"] + ["sleep", "put"] * 1999
    assert result.sent == 2000
    # Exponential gaps: the mean is the mean gap, and so is the standard deviation.
    assert statistics.mean(gaps) == pytest.approx(10.0, rel=0.1)
    assert statistics.stdev(gaps) == pytest.approx(10.0, rel=0.15)
    assert min(gaps) > 0


def test_the_gaps_are_the_same_for_the_same_seed():
    sessions = list(islice(synthetic_sessions(4), 20))

    assert run_produce(sessions, mean_gap=1.0, seed=4) == run_produce(
        sessions, mean_gap=1.0, seed=4
    )


def test_without_a_gap_records_go_in_batches_of_500_and_nothing_sleeps():
    sessions = list(islice(synthetic_sessions(2), 1201))

    result, events, _ = run_produce(sessions)

    assert [(kind, len(keys)) for kind, keys in events] == [
        ("put", 500),
        ("put", 500),
        ("put", 201),
    ]
    assert result.sent == 1201 and result.bad_lines == 0


def test_bad_lines_are_warned_about_and_skipped():
    lines = [b'{"session_id": "a"}\n', b"{oops\n", b'{"session_id": "b"}\n', b'"text"\n']

    recorder = Recorder()
    warnings = []
    result = produce(
        recorder, json_lines(lines), compile_expression("session_id"), warn=warnings.append
    )

    assert recorder.events == [("put", ["a", "b"])]
    assert warnings == [
        "line 2: not JSON: Expecting property name enclosed in double quotes at column 2",
        "line 4: not a JSON object: got text",
    ]
    assert (result.sent, result.bad_lines) == (2, 2)


def test_raw_puts_lines_unparsed_keyed_by_line_so_bad_records_can_be_tried(backend):
    lines = b'{not json\n\n{"session_id": "s1"}\n'
    result = pipeline("--stream", STREAM, "--file", "-", "--raw", input=lines)

    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"put 2 records into {STREAM}\n"
    shard = backend.list_shards(STREAM)
    put = []
    for each in shard:
        iterator = backend.get_shard_iterator(STREAM, each.shard_id, "TRIM_HORIZON")
        put += [(r.partition_key, r.data) for r in backend.get_records(iterator).records]
    assert sorted(put) == [("line 1", b"{not json"), ("line 3", b'{"session_id": "s1"}')]


def test_raw_does_not_go_with_synthetic(backend):
    result = pipeline("--stream", STREAM, "--synthetic", "--raw", "--count", "1")
    assert result.exit_code == 2
    assert "--raw goes with --json or --file" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("--raw", "--json", '{"a": 1}', "--partition-key", "a"), "no --partition-key"),
        (("--json", '{"session_id": "q"}', "--seed", "4"), "--seed goes with --synthetic or"),
    ],
)
def test_an_option_that_would_be_ignored_is_refused(backend, args, message):
    result = pipeline("--stream", STREAM, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert backend.describe_stream(STREAM) is not None
    assert stream_records(backend) == []


def test_the_mean_gap_is_the_scenarios_for_synthetic_sessions_unless_given():
    key = compile_expression("session_id")
    assert ProduceOptions(key, synthetic=True).gap == 10.0
    assert ProduceOptions(key, synthetic=True, mean_gap=0.5).gap == 0.5
    assert ProduceOptions(key, file=[]).gap == 0.0


def test_a_stop_asked_while_a_batch_is_put_counts_the_batch_it_put():
    """The signal comes while PutRecords is in flight (here: from inside it): the batch is
    put and counted, and producing stops before the next one."""
    stops = Stops()
    recorder = Recorder()
    puts = []

    class Stopped(Recorder):
        def put(self, entries, accepted=None):
            puts.append(len(entries))
            stops.handle(signal.SIGTERM, None)  # as the handler would, mid-call

    records = ((f"line {n}", {"session_id": f"s{n}"}) for n in range(1, 1001))
    key = compile_expression("session_id")
    result = produce(Stopped(), records, key, warn=recorder.events.append, stops=stops)

    assert (result.sent, result.last, result.interrupted) == (500, "line 500", True)
    assert puts == [500]
