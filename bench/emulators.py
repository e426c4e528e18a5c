"""`make bench-emulators`: the scenario on the local target against what a user would run
instead for local work: kinesalite (from npm) for Kinesis and a moto server for the rest (S3,
Firehose, IAM, CloudWatch Logs, DynamoDB, STS), through the aws target. Prints figures;
asserts nothing.

On each: `pipeline apply` of the scenario's spec, then the same N synthetic sessions (seed 42)
produced into its source stream, and `pipeline run --until-idle` over them. Produce is timed
around the producing alone (in a process of its own, once its modules are imported); run by
its own clock, from its first record read to its last handled. It prints records/s of each
and how many times faster the local target is (goal >= 5).

kinesalite is installed with npm into build/emulators (ignored by git) the first time. Where
node or npm is missing, it says so and exits 0. BENCH_EMULATOR_RECORDS sets N (40,000).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "bench" / "scenario.yaml"
SOURCE = "de-c2w2lab1-kinesis-data-stream"
SEED = 42
EMULATORS = REPO / "build" / "emulators"
KINESALITE = "kinesalite@3.3.3"
# kinesalite on 127.0.0.1 (its command listens everywhere), streams ACTIVE at once; prints
# the port it got.
START_KINESALITE = """
const server = require('kinesalite')({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
"""
PRODUCE = """
import os, sys, time
from pathlib import Path
from runner.commands.produce import ProduceOptions, main
from runner.commands.target import Target
from runner.records.expressions import compile
name, stream, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
backend = Target(name, Path(os.environ["PIPELINE_STATE_DIR"])).backend()
options = ProduceOptions(compile("session_id"), synthetic=True, count=count, mean_gap=0, seed=seed)
started = time.perf_counter()
assert main(backend, stream, options, warn=lambda line: None) == 0
print(time.perf_counter() - started)
"""


def main() -> int:
    count = int(os.environ.get("BENCH_EMULATOR_RECORDS", "40000"))
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        print(f"bench-emulators: {' and '.join(missing)} not found: kinesalite needs them; skipped")
        return 0
    install_kinesalite()
    print(f"pipeline bench: the scenario's spec, {count:,} records, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as folder:
        local = measure({"PIPELINE_TARGET": "local"}, Path(folder) / "local", count)
        with emulators() as endpoints:
            emulated = measure(endpoints, Path(folder) / "aws", count)
    rows = []
    for index, what in enumerate(("produce", "run")):
        rows.append((f"{what}, local target", f"{local[index]:,.0f} records/s", ""))
        rows.append((f"{what}, kinesalite + moto server", f"{emulated[index]:,.0f} records/s", ""))
    for index, what in enumerate(("produce", "run")):
        rows.append(
            (f"{what}: local / emulators", f"{local[index] / emulated[index]:.1f}x", "goal >= 5")
        )
    width = max(len(row[0]) for row in rows)
    for name, figure, note in rows:
        print(f"  {name:<{width}}  {figure:>18}  {note}")
    return 0


def install_kinesalite() -> None:
    if (EMULATORS / "node_modules" / "kinesalite").is_dir():
        return
    EMULATORS.mkdir(parents=True, exist_ok=True)
    print(f"installing {KINESALITE} into {EMULATORS.relative_to(REPO)} ...", flush=True)
    subprocess.run(
        ["npm", "install", "--prefix", str(EMULATORS), "--no-audit", "--no-fund", KINESALITE],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def measure(variables: dict[str, str], state: Path, count: int) -> tuple[float, float]:
    """Apply the spec, produce `count` sessions, run over them: (produce, run) records/s."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PIPELINE_"))},
        "PIPELINE_STATE_DIR": str(state),
        **variables,
    }
    pipeline = [sys.executable, "-m", "runner"]
    subprocess.run([*pipeline, "apply", str(SPEC)], env=env, check=True, capture_output=True)
    produced = subprocess.run(
        [sys.executable, "-c", PRODUCE, env["PIPELINE_TARGET"], SOURCE, str(count), str(SEED)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    ran = subprocess.run(  # JSON lines: the summary's took_s is to the millisecond
        [*pipeline, "run", str(SPEC), "--until-idle", "1", "--log-format", "json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    lines = [json.loads(line) for line in ran.stderr.splitlines() if line.startswith("{")]
    done = next(line for line in lines if line.get("event") == "summary")
    assert done["in"] == count, done["message"]
    return count / float(produced.stdout), count / done["took_s"]


@contextlib.contextmanager
def emulators() -> Iterator[dict[str, str]]:
    """kinesalite and a moto server on 127.0.0.1, and the variables that point the aws
    target at them; both are stopped after."""
    kinesalite = subprocess.Popen(
        ["node", "-e", START_KINESALITE], cwd=EMULATORS, stdout=subprocess.PIPE, text=True
    )
    moto_port = _free_port()
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        kinesis_port = int(kinesalite.stdout.readline())
        moto_url = f"http://127.0.0.1:{moto_port}"
        _wait_for(moto_url)
        yield {
            "PIPELINE_TARGET": "aws",
            "AWS_ENDPOINT_URL": moto_url,
            "AWS_ENDPOINT_URL_KINESIS": f"http://127.0.0.1:{kinesis_port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }
    finally:
        for server in (kinesalite, moto):
            server.terminate()
            server.wait(10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
