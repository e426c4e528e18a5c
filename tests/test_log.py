"""`pipeline run --log-format` (runner/commands/log.py): the human lines as they are, or each
line, errors too, as one JSON object."""

import datetime
import json

from click.testing import CliRunner
from conftest import MINIMAL, timeless

from runner.cli import cli
from runner.commands.log import RunLog
from runner.loop.lines import WARNING, Line

NOW = datetime.datetime(2026, 11, 26, 12, 0, 5, 120000, tzinfo=datetime.timezone.utc)


def logged(log_format):
    written = []
    return RunLog(log_format, written.append, now=lambda: NOW), written


def test_the_human_format_writes_each_line_as_it_is():
    log, written = logged("human")

    log(Line("[shop] in 3 | out usa 3", event="status", **{"in": 3}))
    log.error("error: stream in not found")

    assert written == ["[shop] in 3 | out usa 3", "error: stream in not found"]


def test_the_json_format_writes_time_level_pipeline_message_and_fields():
    log, written = logged("json")

    log(Line("[shop] in 3 | out usa 3", event="status", **{"in": 3, "out": {"usa": 3}}))
    log(Line("[shop] waiting for the local target: busy (retrying for 5 s)", WARNING))
    log("shop.yaml:3:1: warning: something")
    log.pipeline = "shop"
    log.error("error: stream in not found")

    assert [json.loads(line) for line in written] == [
        {
            "time": "2026-11-26T12:00:05.120Z",
            "level": "info",
            "pipeline": "shop",
            "message": "in 3 | out usa 3",
            "event": "status",
            "in": 3,
            "out": {"usa": 3},
        },
        {
            "time": "2026-11-26T12:00:05.120Z",
            "level": "warning",
            "pipeline": "shop",
            "message": "waiting for the local target: busy (retrying for 5 s)",
        },
        {
            "time": "2026-11-26T12:00:05.120Z",
            "level": "info",
            "pipeline": None,
            "message": "shop.yaml:3:1: warning: something",
        },
        {
            "time": "2026-11-26T12:00:05.120Z",
            "level": "error",
            "pipeline": "shop",
            "message": "stream in not found",
        },
    ]


def run(tmp_path, *args):
    return CliRunner().invoke(
        cli, ["run", *args, "--log-format", "json", "--state-dir", str(tmp_path / "state")]
    )


def parsed(stderr):
    """Each line as JSON, without its time; a line that is not JSON fails the test."""
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert all(line.pop("time").endswith("Z") for line in lines)
    return lines


def test_every_line_of_a_run_is_one_json_object(tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(MINIMAL)
    applied = CliRunner().invoke(cli, ["apply", str(path), "--state-dir", str(tmp_path / "state")])
    assert applied.exit_code == 0, applied.output
    produced = CliRunner().invoke(
        cli,
        ["produce", "--stream", "in", "--json", '{"session_id": "a", "country": "USA"}']
        + ["--state-dir", str(tmp_path / "state")],
    )
    assert produced.exit_code == 0, produced.output

    result = run(tmp_path, str(path), "--until-idle", "0")

    assert result.exit_code == 0, result.output
    lines = parsed(result.stderr)
    for line in lines:
        line.pop("took_s", None)
        line["message"] = timeless(line["message"])
        for rate in ("in_per_s", "out_per_s", "rate_interval_s"):
            line.pop(rate, None)
    counts = {
        "in": 1,
        "out": {"usa": 1},
        "dead_lettered": 0,
        "filtered": 0,
        "dropped": 0,
        "discarded": 0,
        "lag_ms": 0,
    }
    assert lines == [
        {
            "level": "info",
            "pipeline": "shop",
            "message": "reading in on the local target (Ctrl-C stops cleanly)",
            "event": "start",
            "source": "in",
            "target": "local",
        },
        {
            "level": "info",
            "pipeline": "shop",
            "message": "no checkpoints for pipeline shop: starting at trim_horizon",
        },
        {
            "level": "info",
            "pipeline": "shop",
            "message": f"dead letter: file {tmp_path / 'state' / 'dead-letter' / 'shop.jsonl'}",
        },
        {
            "level": "info",
            "pipeline": "shop",
            "message": "in 1 | out usa 1 | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
            "event": "status",
            **counts,
        },
        {
            "level": "info",
            "pipeline": "shop",
            "message": "done: in 1 | out usa 1 | dead-lettered 0 | filtered 0 | dropped 0 | "
            "lag 0 ms",
            "event": "summary",
            **counts,
        },
    ]


def test_the_error_a_run_ends_with_is_json_too(tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(MINIMAL)  # not applied

    result = run(tmp_path, str(path))

    assert result.exit_code == 1
    assert parsed(result.stderr) == [
        {
            "level": "error",
            "pipeline": "shop",
            "message": "stream in, stream usa-out, stream other-out not found on the local "
            f"target in {tmp_path / 'state'}: run `pipeline apply {path}` first",
        }
    ]


def test_the_problems_of_an_invalid_spec_are_json_too(tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(MINIMAL.replace("to: usa", "to: nowhere"))

    result = run(tmp_path, str(path))

    assert result.exit_code == 2
    assert parsed(result.stderr) == [
        {
            "level": "error",
            "pipeline": None,
            "message": f"{path}:13:11: route.cases[0].to: unknown stream 'nowhere' "
            "(streams: source, usa, other)",
        }
    ]


def test_a_usage_error_is_one_json_line_with_log_format_json_and_click_text_without(tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(MINIMAL)
    bad_metrics = "Invalid value for '--metrics': 'abc': 'abc' is not a port (0 to 65535)"
    bad_idle = "Invalid value for '--until-idle': -1.0 is not in the range x>=0."

    results = [
        run(tmp_path, str(path), "--metrics", "abc"),
        CliRunner().invoke(cli, ["run", str(path), "--log-format=json", "--until-idle", "-1"]),
        CliRunner().invoke(cli, ["run", str(path), "--until-idle", "-1"]),
    ]

    assert [result.exit_code for result in results] == [2, 2, 2]
    assert parsed(results[0].stderr) == [
        {"level": "error", "pipeline": None, "message": bad_metrics}
    ]
    assert parsed(results[1].stderr) == [{"level": "error", "pipeline": None, "message": bad_idle}]
    assert results[2].stderr == (
        f"Usage: cli run [OPTIONS] SPEC\nTry 'cli run --help' for help.\n\nError: {bad_idle}\n"
    )


def test_a_spec_warning_is_a_warning_refused_or_not_with_the_pipeline_once_known(tmp_path):
    path = tmp_path / "shop.yaml"
    modeline = "# yaml-language-server: $schema=nowhere.json\n"
    warning = (
        f"{path}:1:33: warning: the yaml-language-server modeline's $schema 'nowhere.json' "
        "does not exist (the path is relative to the spec's folder), so editors cannot check "
        "the spec"
    )
    path.write_text(modeline + MINIMAL.replace("to: usa", "to: nowhere"))
    refused = run(tmp_path, str(path))
    path.write_text(modeline + MINIMAL)  # not applied
    strict = run(tmp_path, str(path), "--strict")
    accepted = run(tmp_path, str(path))

    assert (refused.exit_code, parsed(refused.stderr)) == (
        2,
        [
            {"level": "warning", "pipeline": None, "message": warning},
            {
                "level": "error",
                "pipeline": None,
                "message": f"{path}:14:11: route.cases[0].to: unknown stream 'nowhere' "
                "(streams: source, usa, other)",
            },
        ],
    )
    assert (strict.exit_code, parsed(strict.stderr)) == (
        2,
        [{"level": "warning", "pipeline": None, "message": warning}],
    )
    assert (accepted.exit_code, parsed(accepted.stderr)[0]) == (
        1,
        {"level": "warning", "pipeline": "shop", "message": warning},
    )
