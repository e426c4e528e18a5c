"""A producer, a runner and a consumer in three processes on one state folder, as in the
scenario's three terminals."""

import json
import os
import sys
import time
from collections import Counter
from itertools import islice

from click.testing import CliRunner
from conftest import PIPELINES, REPO, session_ids

from runner.backends.local import LocalBackend
from runner.cli import cli
from runner.commands.produce import synthetic_sessions

SOURCE = "de-c2w2lab1-kinesis-data-stream"
USA = "de-c2w2lab1-usa-data-stream"
INTERNATIONAL = "de-c2w2lab1-international-data-stream"
COUNT, SEED = 3000, 11


def wait_for(condition, timeout):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_producer_runner_and_consumer_share_one_state_folder(tmp_path, monkeypatch, processes):
    state = tmp_path / "state"
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(state))
    applied = CliRunner().invoke(cli, ["apply", str(PIPELINES / "ecommerce.yaml")])
    assert applied.exit_code == 0, applied.output
    env = {**os.environ, "PIPELINE_STATE_DIR": str(state)}
    python = [sys.executable, "-m", "runner"]
    logs = {name: tmp_path / f"{name}.out" for name in ("producer", "runner", "consumer")}
    errors = {name: tmp_path / f"{name}.err" for name in logs}
    commands = {
        "producer": [
            *python,
            "produce",
            "--stream",
            SOURCE,
            "--synthetic",
            "--count",
            str(COUNT),
            "--mean-gap",
            "0",
            "--seed",
            str(SEED),
        ],
        "runner": [*python, "run", "pipelines/ecommerce.yaml", "--until-idle", "3"],
        "consumer": [*python, "consume", "--stream", USA, "--jsonl"],
    }
    started = {}
    for name, command in commands.items():
        with logs[name].open("w") as out, errors[name].open("w") as err:
            started[name] = processes.start(command, cwd=REPO, env=env, stdout=out, stderr=err)

    assert started["producer"].wait(timeout=60) == 0, errors["producer"].read_text()
    assert started["runner"].wait(timeout=60) == 0, errors["runner"].read_text()

    sessions = list(islice(synthetic_sessions(SEED), COUNT))
    usa = {s["session_id"] for s in sessions if s["country"] == "USA"}
    international = {s["session_id"] for s in sessions} - usa

    def consumed():
        return [json.loads(line) for line in logs["consumer"].read_text().splitlines()]

    wait_for(lambda: len(consumed()) >= len(usa), timeout=20)
    started["consumer"].terminate()
    started["consumer"].wait(timeout=10)

    for name in commands:
        stderr = errors[name].read_text()
        assert "Traceback" not in stderr, f"{name}: {stderr}"
        assert not [line for line in stderr.splitlines() if line.lower().startswith("error")], (
            f"{name}: {stderr}"
        )
    backend = LocalBackend(state)
    routed = Counter(session_ids(backend, USA, INTERNATIONAL))
    assert set(routed) == usa | international
    assert set(routed.values()) == {1}, "every session is in exactly one destination stream"
    assert set(session_ids(backend, USA)) == usa
    printed = consumed()
    assert {record["data"]["country"] for record in printed} == {"USA"}
    assert Counter(record["data"]["session_id"] for record in printed) == Counter(usa)
    backend.close()
