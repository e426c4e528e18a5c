"""The Makefile's targets for the common flows drive the shipped commands on any spec."""

import os
import re
import subprocess
import sys

import pytest
from conftest import MINIMAL, REPO


def make(*args, env, stderr=subprocess.PIPE):
    # The tests run in the venv the Makefile made: use it, and do not reinstall.
    command = ["make", "-s", "--no-print-directory", "-o", "install", f"VENV={sys.prefix}"]
    done = subprocess.run(
        command + list(args),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=120,
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


def test_make_test_runs_the_shipped_specs_tests_after_the_suite(env):
    dry = subprocess.run(
        ["make", "-n", "-o", "install", "test", "VENV=venv"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert dry.stdout.splitlines() == ["venv/bin/pytest -q", "venv/bin/pipeline test pipelines/"]


def test_produce_and_consume_need_a_stream(env):
    for target in ("produce", "consume"):
        done = subprocess.run(
            ["make", "-o", "install", target], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert done.returncode != 0
        assert f"STREAM is required, e.g. make {target} STREAM=" in done.stderr


def readme_block(after):
    """The lines of the README's first code block after the paragraph ending with `after`."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(after) :].split("```\n", 2)[1]
    return block.splitlines()


VARYING = [  # what differs from run to run: how long it took, rates, the time, object ids
    (r"took [0-9.]+ s", "took T s"),
    # Rates come over a second or more: a status line coming sooner, on a slow machine later.
    (r" \| [0-9.]+ in/s, [0-9.]+ out/s over the last [0-9.e+-]+ s", ""),
    (r"\d{4}/\d\d/\d\d/\d\d/", "YYYY/MM/DD/HH/"),
    (r"\d{4}(-\d\d){5}-[0-9a-f-]+", "TIME-ID"),
]


def steady(text):
    for varying, fixed in VARYING:
        text = re.sub(varying, fixed, text)
    return text


def as_pattern(lines):
    """A regex of sample output lines: a line `…` stands for any lines, a `…` in a line for
    any text."""
    return "".join(
        "(?:.*\n)*?" if line == "…" else re.escape(steady(line)).replace("…", ".*") + "\n"
        for line in lines
    )


def test_make_demo_prints_what_the_readme_shows(tmp_path, env):
    sample = readme_block("runs until\nidle and lists the files delivered to the two buckets:\n")
    state = tmp_path / "demo"

    done = make("demo", f"DEMO_STATE={state}", env=env, stderr=subprocess.STDOUT)

    printed = done.stdout.replace(str(state), ".pipeline/demo")
    printed = printed.replace(f"{sys.prefix}/bin/", ".venv/bin/")
    assert re.fullmatch(as_pattern(sample), steady(printed)), printed
