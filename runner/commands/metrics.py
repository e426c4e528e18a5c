"""`pipeline run --metrics ADDR`: the run's Prometheus metrics, and an HTTP server for them and
for its health (`/metrics`, `/healthz`, `/ready`).

The only module that imports prometheus_client. `Metrics` is the loop's Observer: the loop adds
records up in its round's Counts and hands them over once a round, so a counter is increased
once a round per label set (by what the round added), never once a record. Each run has a
registry of its own, not the library's global one. Every metric has the `pipeline` label; the
other labels take few values: shard ids, route keys, stream names and small fixed sets (a dead
letter's class of reason, a PutRecords entry's result, a reload's result), never a reason's text.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as CounterMetric
from prometheus_client.exposition import choose_encoder

from runner.backends.base import BackendError
from runner.commands.health import Health
from runner.function.handler import BAD_EVENT
from runner.loop.observer import Observer
from runner.loop.rounds import KPL_AGGREGATE, Counts
from runner.records import processor
from runner.spec import Spec

LOOPBACK = "127.0.0.1"
TEXT = "text/plain; charset=utf-8"
# Every class of a dead letter's reason, so that each one's counter is there from the start.
DEAD_LETTER_CAUSES = (
    processor.NOT_UTF8,
    processor.NOT_JSON,
    processor.NOT_OBJECT,
    processor.TRANSFORM,
    processor.ROUTE,
    processor.UNMATCHED,
    processor.NOT_ENCODABLE,
    processor.TOO_LARGE,
    KPL_AGGREGATE,
    BAD_EVENT,
)
# Checkpoint writes take about a millisecond locally, tens of them on DynamoDB.
CHECKPOINT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) of `--metrics`: PORT, HOST:PORT or [IPv6]:PORT; without a host, the
    loopback. Raises ValueError saying what is wrong."""
    if "://" in text:
        given = urllib.parse.urlsplit(text).netloc
        raise ValueError(f"give HOST:PORT, not a URL{f', e.g. {given}' if given else ''}")
    if text.startswith("[") and text.endswith("]"):
        raise ValueError(f"no port: write {text}:PORT, e.g. {text}:9108")
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"'{host}' is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError("write an IPv6 address in brackets, e.g. [::1]:9108")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"'{port}' is not a port (0 to 65535)")
    return host or LOOPBACK, int(port)


class Metrics(Observer):
    """The Prometheus metrics of one run of `pipeline`."""

    def __init__(self, pipeline: str, *, wall: Callable[[], float] = time.time) -> None:
        self.pipeline = pipeline
        self.wall = wall  # for the time of the last checkpoint
        self.registry = CollectorRegistry()

        def counter(name: str, text: str, *labels: str) -> CounterMetric:
            return CounterMetric(name, text, ("pipeline", *labels), registry=self.registry)

        def gauge(name: str, text: str, *labels: str) -> Gauge:
            return Gauge(name, text, ("pipeline", *labels), registry=self.registry)

        self.received = counter(
            "pipeline_records_received", "Records read from the source, per shard.", "shard"
        )
        self.routed = counter(
            "pipeline_records_routed",
            "Records written to a sink, per route (stream key) and stream.",
            "route",
            "stream",
        )
        self.dead_lettered = counter(
            "pipeline_records_dead_lettered",
            "Records sent to the dead letter, per class of reason.",
            "reason",
        )
        self.filtered = counter("pipeline_records_filtered", "Records a filter step took out.")
        self.dropped = counter("pipeline_records_dropped", "Records no route case took, dropped.")
        self.discarded = counter(
            "pipeline_records_discarded",
            "Records gone past unhandled, as Lambda does once retries are spent (lambda: specs).",
        )
        self.behind = gauge(
            "pipeline_millis_behind_latest",
            "How far the last read of a source shard was behind its newest record.",
            "shard",
        )
        self.entries = counter(
            "pipeline_put_records_entries",
            "PutRecords entries, per sink stream and result (ok, throttled, failed).",
            "stream",
            "result",
        )
        self.retries = counter(
            "pipeline_put_records_retries",
            "PutRecords calls sending again entries that a call before did not put.",
            "stream",
        )
        self.throttles = counter(
            "pipeline_get_records_throttles",
            "GetRecords calls on a source shard that were throttled.",
            "shard",
        )
        self.checkpoints = Histogram(
            "pipeline_checkpoint_write_seconds",
            "How long checkpoint writes took, retries included (_count: how many).",
            ("pipeline",),
            buckets=CHECKPOINT_BUCKETS,
            registry=self.registry,
        )
        self.last_checkpoint = gauge(
            "pipeline_last_checkpoint_timestamp_seconds",
            "When the last checkpoint was written (Unix time).",
        )
        self.reloads = counter(
            "pipeline_spec_reloads",
            "New versions of the spec acted on (--watch), per result.",
            "result",
        )
        for metric in (self.filtered, self.dropped, self.discarded, self.checkpoints):
            metric.labels(pipeline)  # there, at 0, from the start
        for cause in DEAD_LETTER_CAUSES:
            self.dead_lettered.labels(pipeline, cause)
        self._seen = Counts()  # what the counters hold
        self._streams: dict[str, str] = {}  # route key -> stream name, over every version

    def round_ended(self, counts: Counts, spec: Spec, lag_ms: Mapping[str, int]) -> None:
        seen, pipeline = self._seen, self.pipeline
        for shard_id, more in _added(counts.received, seen.received):
            self.received.labels(pipeline, shard_id).inc(more)
        for route, more in _added(counts.out, seen.out):
            if route in spec.streams:
                self._streams[route] = spec.streams[route].name
            self.routed.labels(pipeline, route, self._streams.get(route, "")).inc(more)
        for cause, more in _added(counts.dead_causes, seen.dead_causes):
            self.dead_lettered.labels(pipeline, cause).inc(more)
        for metric, now, before in (
            (self.filtered, counts.filtered, seen.filtered),
            (self.dropped, counts.dropped, seen.dropped),
            (self.discarded, counts.discarded, seen.discarded),
        ):
            if now > before:
                metric.labels(pipeline).inc(now - before)
        self._seen = counts.copy()
        for shard_id, millis in lag_ms.items():
            self.behind.labels(pipeline, shard_id).set(millis)

    def put_records(self, stream: str, results: Mapping[str, int]) -> None:
        for result, entries in results.items():
            if entries:
                self.entries.labels(self.pipeline, stream, result).inc(entries)

    def put_retried(self, stream: str) -> None:
        self.retries.labels(self.pipeline, stream).inc()

    def get_records_throttled(self, shard_id: str) -> None:
        self.throttles.labels(self.pipeline, shard_id).inc()

    def checkpoint_written(self, seconds: float) -> None:
        self.checkpoints.labels(self.pipeline).observe(seconds)
        self.last_checkpoint.labels(self.pipeline).set(self.wall())

    def spec_reload(self, result: str) -> None:
        self.reloads.labels(self.pipeline, result).inc()

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics and their content type: Prometheus' text format, or OpenMetrics when
        the scraper's Accept header asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _added(now: Counter, before: Counter) -> list[tuple[str, int]]:
    """The keys whose count grew since `before`, and by how much."""
    return [(key, count - before[key]) for key, count in now.items() if count > before[key]]


class MetricsServer:
    """An HTTP server, in a thread of its own, answering GET and HEAD of /metrics, /healthz and
    /ready. A client going away mid-request is not news; a failure of ours answering is
    `say`d, one line for each kind of failure."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        health: Health,
        say: Callable[[str], None] = lambda line: None,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.server = _Server((host, port), _handler(metrics, health), family, say)
        except OSError as error:  # a port in use, a host that is not this machine's
            where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            raise BackendError(
                f"cannot serve metrics on {where}: {error.strerror or error}"
            ) from None
        bound_host, bound_port = self.server.server_address[:2]
        self.address = (
            f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        )
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop answering and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        family: socket.AddressFamily,
        say: Callable[[str], None],
    ) -> None:
        self.address_family = family  # read by the constructor, to make the socket
        self.say = say
        self.said: set[str] = set()
        super().__init__(address, handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Instead of socketserver's traceback on stderr: nothing for a client that went away
        (a probe's timeout, a reset connection), else one line, once for each kind."""
        error = sys.exc_info()[1]
        if error is None or isinstance(error, (ConnectionError, TimeoutError)):
            return
        kind = f"{type(error).__name__}: {error}".splitlines()[0]
        if kind not in self.said:
            self.said.add(kind)
            self.say(f"metrics: answering a request failed: {kind}")


def _handler(metrics: Metrics, health: Health) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(*self._page())

        def do_HEAD(self) -> None:  # some probes ask only for the status
            self._answer(*self._page(), body=False)

        def _page(self) -> tuple[int, bytes, str]:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                return (200, *metrics.exposition(self.headers.get("Accept")))
            if path in ("/healthz", "/ready"):
                good, why = health.alive() if path == "/healthz" else health.ready()
                return 200 if good else 503, f"{why}\n".encode(), TEXT
            return 404, b"not found: try /metrics, /healthz or /ready\n", TEXT

        def _answer(self, status: int, page: bytes, kind: str, *, body: bool = True) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            if body:
                self.wfile.write(page)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not news for the run's output

    return Handler
