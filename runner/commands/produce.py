"""Record sources for `pipeline produce`: one JSON text, JSON Lines, or synthetic sessions.

Records go out in PutRecords batches through a Sink. With a mean gap between records (the
scenario's producer sends one session every 10 s on average, a Poisson process), each record
is sent on its own when its time comes.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import signal
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from runner.backends.base import Backend, BackendError, StateLost
from runner.backends.limits import MAX_RECORD_BYTES, entry_size
from runner.loop.patience import Abandoned, Patience
from runner.loop.sink import Sink
from runner.plural import count
from runner.records.expressions import Expression
from runner.records.processor import BadRecord, encode, parse_record
from runner.records.routing import RouteError, partition_key

BATCH = 500
SCENARIO_MEAN_GAP_S = 10.0

USA_CITIES = ["Washington", "New York", "Chicago", "Houston", "Seattle", "Boston", "Denver"]
ABROAD = [
    ("Paris", "France"),
    ("Lyon", "France"),
    ("Berlin", "Germany"),
    ("Madrid", "Spain"),
    ("Tokyo", "Japan"),
    ("Toronto", "Canada"),
    ("Lima", "Peru"),
    ("Sydney", "Australia"),
]
CREDIT_LIMITS = [500, 1000, 1500, 2000, 5000, 10000]


class BadLine(ValueError):
    """A line of input that is not a record; the text names the line."""


def synthetic_sessions(seed: int | None) -> Iterator[dict]:
    """Endless scenario-shaped browsing sessions, the same for the same seed."""
    rng = random.Random(seed)
    # What randint, choice, choices and sample draw, without their checks on each call: the
    # same numbers from the same generator, at a fraction of the cost.
    below, uniform = rng._randbelow, rng.random
    alphabet = string.ascii_lowercase + string.digits
    letters = float(len(alphabet))
    while True:
        if uniform() < 0.5:
            city, country = USA_CITIES[below(len(USA_CITIES))], "USA"
        else:
            city, country = ABROAD[below(len(ABROAD))]
        count, chosen, drawn = 1 + below(5), [], set()
        while len(chosen) < count:  # sample(range(1, 31), count): 30 is a large population
            number = below(30)
            if number not in drawn:
                drawn.add(number)
                chosen.append(number + 1)
        yield {
            "session_id": "".join([alphabet[int(uniform() * letters)] for _ in range(12)]),
            "customer_number": 100 + below(999_900),
            "city": city,
            "country": country,
            "credit_limit": CREDIT_LIMITS[below(len(CREDIT_LIMITS))],
            "browse_history": [
                {
                    "product_code": f"Product{number}",
                    "quantity": 1 + below(5),
                    "in_shopping_cart": uniform() < 0.5,
                }
                for number in chosen
            ],
        }


def json_lines(
    lines: Iterable[bytes], label: Callable[[int], str] = lambda number: f"line {number}"
) -> Iterator[tuple[str, dict | BadLine]]:
    """(label, record) for every non-blank line, or a BadLine in the record's place."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield label(number), parse_record(line.rstrip(b"\r\n"))
        except BadRecord as error:
            yield label(number), BadLine(f"{label(number)}: {error}")


@dataclass
class Produced:
    sent: int = 0
    bad_lines: int = 0
    interrupted: bool = False  # stopped by Ctrl-C
    last: str | None = None  # the label of the last record put, e.g. 'line 5500'
    error: str | None = None  # what stopped it early, if anything but Ctrl-C


class Stops:
    """Ctrl-C and SIGTERM while producing: at once while waiting for input, but a batch being
    put is put first (or its wait for a throttled stream ends), so that what is said to be
    put is what was put; a second one stops at once."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.putting = False

    def handle(self, signum: int, frame: object) -> None:
        if self.putting and not self.asked.is_set():
            self.asked.set()
            return
        raise KeyboardInterrupt


def produce(
    sink: Sink,
    records: Iterable[tuple[str, dict | bytes | BadLine]],  # (label for messages, record)
    key: Expression,
    *,
    mean_gap: float = 0.0,
    seed: int | None = None,
    warn: Callable[[str], None],
    progress: Callable[[int], None] = lambda sent: None,
    sleep: Callable[[float], None] = time.sleep,
    stops: Stops | None = None,
) -> Produced:
    """Put every record, keyed by `key`; report bad lines through `warn` and go on.
    Ctrl-C, SIGTERM or an error stops it: what was put before is counted (whole batches, in
    order), the result says why it stopped."""
    stops = stops or Stops()
    result = Produced()
    gaps = random.Random(None if seed is None else seed + 1)
    batch: list[tuple[bytes, str]] = []
    last = None

    def flush() -> None:
        accepted = [False] * len(batch)
        stops.putting = True
        try:
            sink.put(batch, accepted)
        except Abandoned:  # stopped while the stream was throttled: count what went in
            result.sent += sum(accepted)
            raise KeyboardInterrupt from None
        finally:
            stops.putting = False
        result.sent += len(batch)
        result.last = last
        progress(len(batch))
        batch.clear()
        if stops.asked.is_set():  # a stop asked while the batch was being put
            raise KeyboardInterrupt

    try:
        for label, record in records:
            entry = _entry(label, record, key)
            if isinstance(entry, str):
                result.bad_lines += 1
                warn(entry)
                continue
            batch.append(entry)
            last = label
            if mean_gap > 0:
                if result.sent:  # gaps between records; none after the last one
                    sleep(gaps.expovariate(1 / mean_gap))
                flush()
            elif len(batch) >= BATCH:
                flush()
        if batch:
            flush()
    except KeyboardInterrupt:
        result.interrupted = True
    except StateLost:
        raise  # what it put is gone with the state: no count to report
    except BackendError as error:
        result.error = str(error)
    except OSError as error:  # reading the input
        result.error = f"cannot read the input: {error.strerror or error}"
    return result


@contextlib.contextmanager
def _stopped_by_signals(stops: Stops) -> Iterator[None]:
    """Ctrl-C, and SIGTERM (`kill`, a container stopping) as Ctrl-C, stop producing as
    `stops` says, so that it says how many records were put instead of dying silently."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = {number: signal.signal(number, stops.handle) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def raw_lines(lines: Iterable[bytes], label: Callable[[int], str]) -> Iterator[tuple[str, bytes]]:
    """(label, bytes) for every non-blank line, unparsed: whatever it holds is put as is."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield label(number), line.rstrip(b"\r\n")


def _entry(label: str, record: dict | bytes | BadLine, key: Expression) -> tuple[bytes, str] | str:
    """The (data, partition key) to put for a line, or why it cannot be put. Raw bytes are
    keyed by their label ('line 3'), since there may be no JSON to take a key from."""
    if isinstance(record, BadLine):
        return str(record)
    if isinstance(record, bytes):
        entry = (record, label)
    else:
        try:
            data = encode(record)
        except ValueError as error:  # a lone surrogate (\ud800), which UTF-8 cannot hold
            return f"{label}: cannot be written as JSON: {error}"
        try:
            entry = (data, partition_key(key, record, f"--partition-key {key.text}"))
        except RouteError as error:
            return f"{label}: {error}"
    size = entry_size(*entry)
    if size > MAX_RECORD_BYTES:
        # Kinesis would refuse the whole batch for it; skip this line, send the others.
        return (
            f"{label}: record is {size} bytes with its partition key, "
            f"at most {MAX_RECORD_BYTES} allowed"
        )
    return entry


@dataclass(frozen=True)
class ProduceOptions:
    """What `pipeline produce` puts: one of `json_text`, `file` or `synthetic`, and how."""

    key: Expression  # each record's partition key
    json_text: str | None = None  # this one JSON record
    file: IO[bytes] | None = None  # every line of this JSON Lines file
    synthetic: bool = False  # scenario-shaped browsing sessions
    count: int | None = None  # how many synthetic sessions; None: endless
    mean_gap: float | None = None  # None: the scenario's with `synthetic`, else none at all
    seed: int | None = None  # of the synthetic sessions and the gaps
    raw: bool = False  # each line of `json_text` or `file` as it is, keyed by its line

    @property
    def gap(self) -> float:
        """The mean gap between records, in seconds; 0: as fast as possible."""
        if self.mean_gap is not None:
            return self.mean_gap
        return SCENARIO_MEAN_GAP_S if self.synthetic else 0.0


def main(
    backend: Backend,
    stream: str,
    options: ProduceOptions,
    *,
    warn: Callable[[str], None],
    progress: Callable[[int], None] = lambda sent: None,
) -> int:
    """`pipeline produce`: put the chosen records; 1 when a line could not be sent."""
    lines_of = raw_lines if options.raw else json_lines
    if options.json_text is not None:
        records: Iterable[tuple[str, dict | bytes | BadLine]] = lines_of(
            [options.json_text.encode("utf-8")], label=lambda number: "--json"
        )
    elif options.file is not None:
        records = lines_of(options.file, label=lambda number: f"line {number}")
    else:
        sessions = synthetic_sessions(options.seed)
        chosen = sessions if options.count is None else itertools.islice(sessions, options.count)
        records = ((f"session {number}", session) for number, session in enumerate(chosen, 1))
    gap = options.gap
    backend.require_stream(stream)
    if options.count is None and gap > 0:
        # An endless trickle shows each record as it goes, as the scenario's producer does.
        numbers = itertools.count(1)
        progress = lambda sent: warn(f"put record {next(numbers)} into {stream}")  # noqa: E731
    stops = Stops()
    with _stopped_by_signals(stops):
        result = produce(
            Sink(backend, stream, patience=Patience(stopping=stops.asked)),
            records,
            options.key,
            mean_gap=gap,
            seed=options.seed,
            warn=warn,
            progress=progress,
            stops=stops,
        )
    # Said when stopped early, so that the user resends only what is not in yet.
    through = f" (through {result.last})" if result.last else ""
    if result.error is not None:
        warn(
            f"stopped by an error after putting {count(result.sent, 'record')} into "
            f"{stream}{through}: {result.error}"
        )
        return 1
    warn(
        ("stopped: " if result.interrupted else "")
        + f"put {count(result.sent, 'record')} into {stream}"
        + (through if result.interrupted else "")
        + (f"; {count(result.bad_lines, 'line')} not sent" if result.bad_lines else "")
    )
    if result.interrupted:
        # Ctrl-C is how an endless producer is meant to stop; anything else was cut short.
        return 0 if options.synthetic and options.count is None else 130
    return 1 if result.bad_lines else 0
