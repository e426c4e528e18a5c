"""The `pipeline` command: click decorators only; each command calls one function."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from runner import spec as spec_module
from runner.preview import preview as preview_records
from runner.spec import SpecError

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


def reports_errors(command: Callable[..., int | None]) -> Callable[..., None]:
    """Map what a user can cause to one line on stderr and an exit code, never a traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            code = command(*args, **kwargs)
        except SpecError as error:
            click.echo(str(error), err=True)
            sys.exit(EXIT_INVALID)
        except BrokenPipeError:
            sys.stderr.close()  # `pipeline ... | head` is fine
            sys.exit(EXIT_OK)
        sys.exit(code or EXIT_OK)

    return run


spec_path = click.argument("spec", type=click.Path(dir_okay=True, path_type=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pipeline", prog_name="pipeline")
def cli() -> None:
    """A declarative runner for streaming ETL on Amazon Kinesis."""


@cli.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(path_type=str))
@reports_errors
def validate(specs: tuple[str, ...]) -> int:
    """Check specs (schema, references, expressions); touches nothing."""
    problems: list[str] = []
    for path in specs:
        try:
            click.echo(spec_module.load(path).summary())
        except SpecError as error:
            problems.extend(error.problems)
    if problems:
        raise SpecError(problems)
    return EXIT_OK


@cli.command()
@spec_path
@click.argument("records", type=click.File("rb"), default="-")
@click.option("--jsonl", is_flag=True, help="One JSON object per record, for scripts.")
@reports_errors
def preview(spec: str, records: Any, jsonl: bool) -> int:
    """Show each record's route and transformed record (RECORDS: a JSONL file, - for stdin)."""
    return preview_records(spec_module.load(spec), records, sys.stdout, jsonl=jsonl)


@cli.command()
def schema() -> None:
    """Print the spec's JSON Schema."""
    click.echo(json.dumps(spec_module.schema(), indent=2))


def main() -> None:
    cli(prog_name="pipeline")
