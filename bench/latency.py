"""`make bench`, the AWS latency part: the scenario's `pipeline run` against a target each of
whose calls takes DELAY_S longer, as a call to AWS does over the network. Prints records/s into
sinks of 1, 4 and 20 shards; asserts nothing.

The target is the local backend behind `Late`, which waits before each call of the backend
interface and otherwise stands for the AWS target as a run sees it: Firehose delivers by itself
(the run does not), the run reads and writes with the AWS target's threads, and a GetRecords
call answers at most what a shard's read limit (2 MB/s, 5 calls/s) allows of these records.
The source has 20 shards, enough to take 20,000 records/s; each run is its own process, over
the same produced records; its rate is its own clock's (from the first record read to the last
handled, the idle wait at the end left out).

`python bench/latency.py` prints the figures alone; BENCH_RECORDS sets how many records
(default 200,000).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from runner import spec as spec_module
from runner.backends.aws import AwsBackend
from runner.backends.base import Backend, RecordBatch
from runner.backends.limits import MAX_GET_RECORDS
from runner.backends.local import LocalBackend
from runner.commands.produce import synthetic_sessions
from runner.commands.provision import apply
from runner.commands.run import run
from runner.loop.engine import RunOptions
from runner.loop.sink import Sink
from runner.plural import count

BENCH = Path(__file__).resolve().parent
SCENARIO = BENCH / "scenario.yaml"
DELAY_S = 0.020
SOURCE_SHARDS = 20
SINK_SHARDS = (1, 4, 20)
# What one GetRecords call gives from a backlog at a shard's read limit: 2 MB/s over 5 calls/s
# is 400 KB a call, about 1,100 of the scenario's records (355 bytes on average).
RECORDS_PER_READ = 1000
SEED = 42


class Late:
    """A backend that waits `delay` seconds before each call of the backend interface, and runs
    as the AWS target does: its threads, no delivery of its own, reads cut to `per_read`."""

    delivers_firehoses = True
    read_workers = AwsBackend.read_workers
    write_workers = AwsBackend.write_workers

    def __init__(
        self,
        backend: Backend,
        delay: float = DELAY_S,
        per_read: int = RECORDS_PER_READ,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._backend = backend
        self._delay = delay
        self._per_read = per_read
        self._sleep = sleep

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._backend, name)
        if not callable(found):
            return found

        def late(*args: Any, **kwargs: Any) -> Any:
            self._sleep(self._delay)
            return found(*args, **kwargs)

        return late

    def get_records(self, iterator: str, limit: int = MAX_GET_RECORDS) -> RecordBatch:
        self._sleep(self._delay)
        return self._backend.get_records(iterator, min(limit, self._per_read))


def spec_with(folder: Path, sink_shards: int) -> Path:
    """The scenario's spec with a source of SOURCE_SHARDS shards and sinks of `sink_shards`."""
    document = yaml.safe_load(SCENARIO.read_text())
    streams = document["resources"]["streams"]
    streams["source"]["shards"] = SOURCE_SHARDS
    streams["usa"]["shards"] = streams["international"]["shards"] = sink_shards
    path = folder / f"sinks-{sink_shards}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def produce(state: Path, spec: Path, records: int) -> None:
    """A fresh local state with `spec` applied and `records` sessions in its source."""
    loaded = spec_module.load(spec)
    backend = LocalBackend(state)
    apply(loaded, backend, lambda line: None)
    sessions = itertools.islice(synthetic_sessions(SEED), records)
    entries = [(json.dumps(s).encode(), s["session_id"]) for s in sessions]
    Sink(backend, loaded.streams[loaded.source.stream].name).put(entries)
    backend.close()


def run_late(spec: Path, state: Path) -> str:
    """`pipeline run --until-idle 1` of `spec` over the state, behind `Late`, in this process;
    returns its summary line."""
    lines: list[str] = []
    backend = Late(LocalBackend(state))
    code = run(spec_module.load(spec), backend, state, RunOptions(until_idle=1), lines.append)
    if code != 0:
        raise SystemExit("\n".join(lines))
    return next(line for line in lines if "] done:" in line)


def rate(spec: Path, state: Path, records: int) -> float:
    """Records/s of the run of `spec` over `state`, in its own process."""
    answer = subprocess.run(
        [sys.executable, __file__, "run", str(spec), str(state)],
        capture_output=True,
        text=True,
    )
    if answer.returncode != 0:
        raise SystemExit(f"the run failed:\n{answer.stdout}{answer.stderr}")
    done = answer.stdout.strip()
    if not done.startswith(f"[de-c2w2lab1-etl] done: in {records} |"):
        raise SystemExit(f"the run did not handle {records} records: {done}")
    return records / float(re.search(r"took ([0-9.]+) s", done).group(1))


def figures(records: int) -> list[tuple[str, str, str]]:
    """Rows for `make bench`: records/s of the run at each sink shard count."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        specs = {shards: spec_with(Path(folder), shards) for shards in SINK_SHARDS}
        for shards, spec in specs.items():
            state = Path(folder) / f"state-{shards}"
            produce(state, spec, records)
            records_per_s = rate(spec, state, records)
            shutil.rmtree(state)
            goal = "goal >= 20,000" if shards == 20 else ""
            rows.append(
                (
                    f"run, {DELAY_S * 1000:.0f} ms a call, sinks of {count(shards, 'shard')}",
                    f"{records_per_s:,.0f} records/s",
                    goal,
                )
            )
    return rows


def main() -> None:
    records = int(os.environ.get("BENCH_RECORDS", "200000"))
    print(
        f"pipeline bench, AWS latency: {records:,} records from {SOURCE_SHARDS} shards, "
        f"{DELAY_S * 1000:.0f} ms before every call, at most {RECORDS_PER_READ:,} records a read"
    )
    rows = figures(records)
    width = max(len(row[0]) for row in rows)
    for name, figure, note in rows:
        print(f"  {name:<{width}}  {figure:>18}  {note}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        print(run_late(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        main()
