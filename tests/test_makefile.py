"""The Makefile's targets for the common flows drive the shipped commands on any spec."""

import os
import subprocess
import sys

import pytest
from conftest import MINIMAL, REPO


def make(*args, env):
    # The tests run in the venv the Makefile made: use it, and do not reinstall.
    command = ["make", "-s", "--no-print-directory", "-o", "install", f"VENV={sys.prefix}"]
    done = subprocess.run(
        command + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture
def env(tmp_path):
    variables = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "MAKE"))}
    return {**variables, "PIPELINE_STATE_DIR": str(tmp_path / "state")}


def test_plan_apply_produce_run_consume_and_destroy_through_make(tmp_path, env):
    spec = tmp_path / "shop.yaml"
    spec.write_text(MINIMAL)
    assert make("plan", f"SPEC={spec}", env=env).stdout.splitlines()[-1] == (
        "Plan: 3 to create, 0 to change, 0 unchanged."
    )
    assert make("apply", f"SPEC={spec}", env=env).stdout.splitlines()[-1] == (
        "Applied: 3 created, 0 changed, 0 unchanged."
    )
    produced = make("produce", "STREAM=in", "COUNT=7", env=env)
    assert produced.stderr.splitlines()[-1] == "put 7 records into in"
    ran = make("run", f"SPEC={spec}", "ARGS=--until-idle 0", env=env)
    assert "] done: in 7 | out " in ran.stderr
    usa = make("consume", "STREAM=usa-out", "ARGS=--no-follow --jsonl", env=env).stdout
    other = make("consume", "STREAM=other-out", "ARGS=--no-follow --jsonl", env=env).stdout
    assert len(usa.splitlines()) + len(other.splitlines()) == 7
    assert make("destroy", f"SPEC={spec}", "ARGS=--yes", env=env).stdout.splitlines()[-1] == (
        "Destroyed 3 resources."
    )


def test_make_takes_the_target_from_pipeline_target(tmp_path, env):
    dry = subprocess.run(
        ["make", "-n", "plan", "SPEC=x.yaml"],
        cwd=REPO,
        env={**env, "PIPELINE_TARGET": "aws"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert dry.stdout.split()[-3:] == ["x.yaml", "--target", "aws"]


def test_produce_and_consume_need_a_stream(env):
    for target in ("produce", "consume"):
        done = subprocess.run(
            ["make", "-o", "install", target], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert done.returncode != 0
        assert f"STREAM is required, e.g. make {target} STREAM=" in done.stderr
