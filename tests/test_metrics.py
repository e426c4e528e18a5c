"""`pipeline run --metrics ADDR` (runner/commands/metrics.py): the address, the Prometheus
metrics a run keeps (added once a round), and the server answering /metrics, /healthz and
/ready, which stops with the run."""

import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter

import prometheus_client
import pytest
from click.testing import CliRunner
from conftest import MINIMAL, REPO, samples
from fakes import FaultyBackend, wait_until

from runner import spec
from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.commands import run as run_command
from runner.commands.health import Health
from runner.commands.metrics import Metrics, MetricsServer, parse_address
from runner.commands.provision import apply
from runner.loop.engine import RunOptions
from runner.loop.lines import WARNING
from runner.loop.rounds import Counts

# MINIMAL with two source shards, a filter and unmatched records dropped.
SHOP = (
    MINIMAL.replace("{name: in, shards: 1}", "{name: in, shards: 2}")
    .replace(
        "  stream: source\n", "  stream: source\ntransform:\n  - filter: country != 'Nowhere'\n"
    )
    .replace(
        "    - to: other\n", "    - when: country != null\n      to: other\n  unmatched: drop\n"
    )
)


@pytest.mark.parametrize(
    "text, address",
    [
        ("9108", ("127.0.0.1", 9108)),
        (":9108", ("127.0.0.1", 9108)),
        ("0", ("127.0.0.1", 0)),
        ("0.0.0.0:9108", ("0.0.0.0", 9108)),
        ("localhost:9108", ("localhost", 9108)),
        ("[::1]:9108", ("::1", 9108)),
    ],
)
def test_an_address_without_a_host_is_the_loopback(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize(
    "text, problem",
    [
        ("x", "'x' is not a port (0 to 65535)"),
        ("70000", "'70000' is not a port (0 to 65535)"),
        ("localhost:", "'' is not a port (0 to 65535)"),
        ("::1:9108", "write an IPv6 address in brackets, e.g. [::1]:9108"),
        ("[nope]:9108", "'nope' is not an IPv6 address"),
        ("[::1]", "no port: write [::1]:PORT, e.g. [::1]:9108"),
        ("http://127.0.0.1:9108", "give HOST:PORT, not a URL, e.g. 127.0.0.1:9108"),
        ("http://[::1]:9108/metrics", "give HOST:PORT, not a URL, e.g. [::1]:9108"),
        ("http://", "give HOST:PORT, not a URL"),
    ],
)
def test_a_bad_address_says_what_is_wrong(text, problem):
    with pytest.raises(ValueError) as caught:
        parse_address(text)
    assert str(caught.value) == problem


def shop_applied(tmp_path, text=SHOP):
    path = tmp_path / "shop.yaml"
    path.write_text(text)
    loaded = spec.load(path)
    backend = LocalBackend(tmp_path / "state")
    apply(loaded, backend, lambda line: None)
    return path, loaded, backend


def invoke_run(tmp_path, path, *options):
    return CliRunner().invoke(
        cli, ["run", str(path), "--state-dir", str(tmp_path / "state"), *options]
    )


def test_a_bad_address_is_a_usage_error(tmp_path):
    path, _, _ = shop_applied(tmp_path)

    result = invoke_run(tmp_path, path, "--metrics", "localhost:http")

    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "Error: Invalid value for '--metrics': 'localhost:http': 'http' is not a port (0 to 65535)"
    )


def test_a_port_in_use_is_one_line_and_exit_1_before_anything_is_read(tmp_path):
    path, _, backend = shop_applied(tmp_path)
    backend.put_records("in", [(b'{"session_id": "a"}', "a")])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = invoke_run(tmp_path, path, "--metrics", f"127.0.0.1:{port}", "--until-idle", "0")

    assert (result.exit_code, result.stderr) == (
        1,
        f"error: cannot serve metrics on 127.0.0.1:{port}: Address already in use\n",
    )
    assert backend.get_checkpoints("shop", "in") == {}


def test_each_round_adds_to_the_counters_what_it_counted(tmp_path):
    _, loaded, _ = shop_applied(tmp_path)
    metrics = Metrics("shop", wall=lambda: 1_800_000_000.5)
    counts = Counts(records_in=3, received=Counter(s0=2, s1=1), out=Counter(usa=2))
    counts.dead_lettered, counts.dead_causes = 1, Counter(not_json=1)
    metrics.round_ended(counts, loaded, {"s0": 120, "s1": 0})
    counts.records_in, counts.received["s0"], counts.out["other"] = 7, 6, 3
    counts.filtered = 1
    metrics.round_ended(counts, loaded, {"s0": 0, "s1": 40})
    metrics.put_records("usa-out", {"ok": 2, "throttled": 1, "failed": 0})
    metrics.put_records("usa-out", {"ok": 1, "throttled": 0, "failed": 0})
    metrics.put_retried("usa-out")
    metrics.get_records_throttled("s1")
    metrics.checkpoint_written(0.002)
    metrics.spec_reload("invalid")

    found = samples(metrics.exposition()[0])

    shop = (("pipeline", "shop"),)
    expected = {
        ("pipeline_records_received_total", (*shop, ("shard", "s0"))): 6,
        ("pipeline_records_received_total", (*shop, ("shard", "s1"))): 1,
        (
            "pipeline_records_routed_total",
            (*shop, ("route", "usa"), ("stream", "usa-out")),
        ): 2,
        (
            "pipeline_records_routed_total",
            (*shop, ("route", "other"), ("stream", "other-out")),
        ): 3,
        ("pipeline_records_dead_lettered_total", (*shop, ("reason", "not_json"))): 1,
        ("pipeline_records_dead_lettered_total", (*shop, ("reason", "transform"))): 0,
        ("pipeline_records_filtered_total", shop): 1,
        ("pipeline_records_dropped_total", shop): 0,
        ("pipeline_millis_behind_latest", (*shop, ("shard", "s0"))): 0,
        ("pipeline_millis_behind_latest", (*shop, ("shard", "s1"))): 40,
        (
            "pipeline_put_records_entries_total",
            (*shop, ("result", "ok"), ("stream", "usa-out")),
        ): 3,
        (
            "pipeline_put_records_entries_total",
            (*shop, ("result", "throttled"), ("stream", "usa-out")),
        ): 1,
        ("pipeline_put_records_retries_total", (*shop, ("stream", "usa-out"))): 1,
        ("pipeline_get_records_throttles_total", (*shop, ("shard", "s1"))): 1,
        ("pipeline_checkpoint_write_seconds_count", shop): 1,
        ("pipeline_checkpoint_write_seconds_bucket", (("le", "0.001"), *shop)): 0,
        ("pipeline_checkpoint_write_seconds_bucket", (("le", "0.0025"), *shop)): 1,
        ("pipeline_last_checkpoint_timestamp_seconds", shop): 1_800_000_000.5,
        ("pipeline_spec_reloads_total", (*shop, ("result", "invalid"))): 1,
    }
    assert {key: found.get(key) for key in expected} == expected
    # Nothing for a result that had no entries, nor a reason's text as a label.
    assert (
        "pipeline_put_records_entries_total",
        (*shop, ("result", "failed"), ("stream", "usa-out")),
    ) not in found
    assert {dict(labels).get("reason") for name, labels in found if "dead_lettered" in name} == {
        "not_utf8",
        "not_json",
        "not_object",
        "transform",
        "route",
        "unmatched",
        "not_encodable",
        "too_large",
        "kpl_aggregate",
        "bad_event",
    }


def test_each_run_keeps_its_metrics_in_a_registry_of_its_own():
    first, second = Metrics("shop"), Metrics("shop")  # one registry would refuse the second
    first.spec_reload("reloaded")

    reloaded = ("pipeline_spec_reloads_total", (("pipeline", "shop"), ("result", "reloaded")))
    assert samples(first.exposition()[0])[reloaded] == 1
    assert reloaded not in samples(second.exposition()[0])
    assert b"pipeline_" not in prometheus_client.generate_latest()  # the library's global one


def test_a_scraper_asking_for_openmetrics_gets_it():
    body, kind = Metrics("shop").exposition("application/openmetrics-text; version=1.0.0")

    assert kind.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")


def get(url):
    """(status, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def refused(url):
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.URLError as error:
        return isinstance(error.reason, ConnectionRefusedError)
    return False


def test_ready_goes_from_503_to_200_once_every_shard_has_an_iterator(tmp_path):
    path, loaded, backend = shop_applied(tmp_path)
    opened = threading.Event()

    def gated(get_shard_iterator, *args, **kwargs):
        assert opened.wait(timeout=10)
        return get_shard_iterator(*args, **kwargs)

    lines, ended = [], []
    options = RunOptions(max_records=2)
    running = threading.Thread(
        target=lambda: ended.append(
            run_command.run(
                loaded,
                FaultyBackend(backend, get_shard_iterator=gated),
                tmp_path / "state",
                options,
                lines.append,
                metrics=("127.0.0.1", 0),
            )
        )
    )
    running.start()
    try:
        wait_until(lambda: lines)
        url = lines[0].split(" metrics at ")[1].split("/metrics")[0]
        not_yet = (
            503,
            "not ready: 2 shards without an iterator yet "
            "(shardId-000000000000, shardId-000000000001)\n",
        )
        wait_until(lambda: get(f"{url}/ready") == not_yet)
        assert get(f"{url}/healthz") == (200, "alive\n")
    finally:
        opened.set()
    wait_until(lambda: get(f"{url}/ready") == (200, "ready\n"))
    assert get(f"{url}/nothing")[0] == 404

    backend.put_records("in", [(b'{"session_id": "a"}', "a"), (b'{"session_id": "b"}', "b")])
    running.join(timeout=30)

    assert ended == [0]
    assert refused(f"{url}/healthz")


def reset(url):
    """Connect to the server at `url` and close the connection with a reset, sending nothing."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as connection:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def answering():
    """Whether the server still has a thread answering a request."""
    return any("process_request_thread" in thread.name for thread in threading.enumerate())


def test_a_client_going_away_is_not_news_and_a_failure_of_ours_is_one_line(
    tmp_path, monkeypatch, capsys
):
    path, loaded, backend = shop_applied(tmp_path)

    def broken(self, accept=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(Metrics, "exposition", broken)
    lines, ended = [], []
    running = threading.Thread(
        target=lambda: ended.append(
            run_command.run(
                loaded,
                backend,
                tmp_path / "state",
                RunOptions(max_records=1),
                lines.append,
                metrics=("127.0.0.1", 0),
            )
        )
    )
    running.start()
    wait_until(lambda: lines)
    url = lines[0].split(" metrics at ")[1].split("/metrics")[0]

    reset(url)
    for _ in range(2):  # answered in order of connection: after the reset one
        with pytest.raises(http.client.RemoteDisconnected):
            urllib.request.urlopen(f"{url}/metrics", timeout=5)
    assert get(f"{url}/healthz") == (200, "alive\n")
    backend.put_records("in", sessions(("a", "USA")))
    running.join(timeout=30)
    wait_until(lambda: not answering())

    assert ended == [0]
    failures = [line for line in lines if "metrics:" in line]
    assert failures == ["[shop] metrics: answering a request failed: RuntimeError: boom"]
    assert failures[0].level == WARNING
    assert capsys.readouterr().err == ""


def test_head_answers_the_status_and_headers_of_get_without_the_body():
    metrics = Metrics("shop")
    server = MetricsServer("127.0.0.1", 0, metrics, Health())
    try:
        host, port = server.address.rsplit(":", 1)
        answers = {}
        for path in ("/healthz", "/ready", "/metrics", "/nothing"):
            connection = http.client.HTTPConnection(host, int(port), timeout=5)
            connection.request("HEAD", path)
            answer = connection.getresponse()
            answers[path] = (answer.status, answer.getheader("Content-Length"), answer.read())
            connection.close()
        metrics_length = str(len(metrics.exposition()[0]))
    finally:
        server.close()

    assert answers == {
        "/healthz": (200, str(len("alive: starting\n")), b""),
        "/ready": (503, str(len("not ready: the run is starting\n")), b""),
        "/metrics": (200, metrics_length, b""),
        "/nothing": (404, str(len("not found: try /metrics, /healthz or /ready\n")), b""),
    }


def start_run(processes, tmp_path, path, *options):
    """`pipeline run` in a process of its own, its stderr a pipe."""
    env = {**os.environ, "PIPELINE_STATE_DIR": str(tmp_path / "state")}
    command = [sys.executable, "-m", "runner", "run", str(path), *options]
    return processes.start(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def sessions(*items):
    return [
        (json.dumps({"session_id": key, "country": country}).encode(), key)
        for key, country in items
    ]


def test_a_run_serves_counters_that_match_its_summary_and_stops_serving_with_it(
    tmp_path, processes
):
    path, _, backend = shop_applied(tmp_path)
    run = start_run(processes, tmp_path, path, "--metrics", "127.0.0.1:0")
    first = run.stderr.readline()
    assert first.startswith("[shop] metrics at http://127.0.0.1:")
    url = first.split(" metrics at ")[1].split("/metrics")[0]
    wait_until(lambda: get(f"{url}/ready")[0] == 200, timeout=30)

    batches = [
        sessions(("a", "USA"), ("b", "Peru"), ("c", "Nowhere")),
        [(b"{not json", "x"), *sessions(("d", None), ("e", "USA"))],
        sessions(*[(f"s{n}", "USA" if n % 3 else "Chile") for n in range(30)]),
    ]
    for batch in batches:  # while the run reads
        backend.put_records("in", batch)

    def scraped():
        found = samples(get(f"{url}/metrics")[1])
        return found, sum(v for (name, _), v in found.items() if name.endswith("received_total"))

    wait_until(lambda: scraped()[1] == 36, timeout=30)
    found, _ = scraped()
    run.send_signal(signal.SIGINT)
    _, rest = run.communicate(timeout=30)

    assert run.returncode == 0, rest
    summary = next(line for line in rest.splitlines() if "] done: " in line)
    shop = ("pipeline", "shop")
    counted = {
        "in": sum(v for (name, _), v in found.items() if name.endswith("received_total")),
        "usa": found[
            ("pipeline_records_routed_total", (shop, ("route", "usa"), ("stream", "usa-out")))
        ],
        "other": found[
            ("pipeline_records_routed_total", (shop, ("route", "other"), ("stream", "other-out")))
        ],
        "dead": sum(v for (name, _), v in found.items() if "dead_lettered_total" in name),
        "filtered": found[("pipeline_records_filtered_total", (shop,))],
        "dropped": found[("pipeline_records_dropped_total", (shop,))],
    }
    assert summary.startswith(
        f"[shop] done: in {counted['in']:.0f} | out other {counted['other']:.0f}, "
        f"usa {counted['usa']:.0f} | dead-lettered {counted['dead']:.0f} | "
        f"filtered {counted['filtered']:.0f} | dropped {counted['dropped']:.0f} | lag 0 ms"
    )
    assert counted == {"in": 36, "usa": 22, "other": 11, "dead": 1, "filtered": 1, "dropped": 1}
    assert (
        found[
            ("pipeline_put_records_entries_total", (shop, ("result", "ok"), ("stream", "usa-out")))
        ]
        == 22
    )
    assert found[("pipeline_checkpoint_write_seconds_count", (shop,))] >= 2
    assert refused(f"{url}/metrics")
