"""The `pipeline` command: click decorators only; each command calls one function."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from runner import spec as spec_module
from runner.backends import TARGETS
from runner.backends.base import BackendError
from runner.commands import consume as consume_module
from runner.commands import produce as produce_module
from runner.commands import provision, spec_tests
from runner.commands import redrive as redrive_module
from runner.commands import reset as reset_module
from runner.commands import run as run_command
from runner.commands import status as status_module
from runner.commands import validate as validate_command
from runner.commands.log import FORMATS, HUMAN, JSON, RunLog
from runner.commands.preview import preview as preview_records
from runner.commands.target import Target
from runner.loop import engine
from runner.plural import count
from runner.records.expressions import ExpressionError
from runner.records.expressions import compile as compile_expression
from runner.spec import SpecError, parse_position

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


def reports_errors(command: Callable[..., int | None]) -> Callable[..., None]:
    """Map what a user can cause to one line on stderr and an exit code, never a traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        log = kwargs.get("log_format")  # a run's lines, errors too, in the format asked for
        error_line = log.error if isinstance(log, RunLog) else say
        warning_line = log.warning if isinstance(log, RunLog) else say
        try:
            code = command(*args, **kwargs)
        except SpecError as error:
            for line in error.problems:
                (warning_line if line in error.warnings else error_line)(line)
            sys.exit(EXIT_INVALID)
        except BackendError as error:
            error_line(f"error: {error}")
            sys.exit(EXIT_FAILURE)
        except BrokenPipeError:
            sys.stderr.close()  # `pipeline consume ... | head` is fine
            sys.exit(EXIT_OK)
        except OSError as error:  # one the command did not name, e.g. its output's disk full
            error_line(f"error: {_os_error(error)}")
            sys.exit(EXIT_FAILURE)
        except KeyboardInterrupt:
            error_line("interrupted")
            sys.exit(130)
        finally:
            target = kwargs.get("target")
            if isinstance(target, Target):
                target.close()
        sys.exit(code or EXIT_OK)

    return run


def _os_error(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename is not None else ""
    return f"{where}{error.strerror or error}"


class StandardOutput:
    """sys.stdout for what the commands print: a failed write names it."""

    def write(self, text: str) -> int:
        with self._named():
            return sys.stdout.write(text)

    def flush(self) -> None:
        with self._named():
            sys.stdout.flush()

    @staticmethod
    @contextlib.contextmanager
    def _named() -> Iterator[None]:
        try:
            yield
        except BrokenPipeError:
            raise
        except OSError as error:  # e.g. redirected to a file on a full disk
            raise BackendError(f"cannot write standard output: {error.strerror}") from error


def echo(line: str) -> None:
    """Print a line of a command's output; a failed write (e.g. to a full disk) names stdout."""
    click.echo(line, file=StandardOutput())


def _endpoint(context: Any, parameter: Any, value: str | None) -> str | None:
    if value and not value.startswith(("http://", "https://")):
        raise click.BadParameter(
            f"'{value}' is not a URL; write it with its scheme, e.g. http://{value}"
        )
    return value


def _metrics_address(context: Any, parameter: Any, value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    # Here, not at the top: only a run serving metrics loads prometheus_client and http.server.
    from runner.commands.metrics import parse_address

    try:
        return parse_address(value)
    except ValueError as error:
        raise click.BadParameter(f"'{value}': {error}") from None


def _junit_file(context: Any, parameter: Any, value: Path | None) -> Path | None:
    """--junit's file, checked before any test runs: one that cannot be written is a usage
    error, not a failure found once every test ran."""
    if value is None:
        return None
    folder = value.parent
    if not folder.is_dir():
        raise click.BadParameter(f"'{value}': there is no folder {folder} to write it in")
    if not os.access(value if value.exists() else folder, os.W_OK):
        raise click.BadParameter(f"'{value}': cannot be written (permission denied)")
    return value


def _run_log(context: Any, parameter: Any, value: str) -> RunLog:
    return RunLog(value, say)


class LogsCommand(click.Command):
    """A command taking --log-format: with `--log-format json` on its command line, a usage
    error is one JSON line too (level error, click's message), as the lines of the run are."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        asks_json = _asks_json(args)
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as error:
            if not asks_json:
                raise
            RunLog(JSON, say).error(error.format_message())
            ctx.exit(error.exit_code)


def _asks_json(args: list[str]) -> bool:
    """Whether `args` (before any `--`) say --log-format json."""
    given = args[: args.index("--")] if "--" in args else args
    pairs = zip(given, [*given[1:], ""])
    return "--log-format=json" in given or ("--log-format", "json") in pairs


SPEC_REGION = "AWS region (default: the spec's region, else your AWS configuration's)."
STREAM_REGION = "AWS region (default: your AWS configuration's, else us-east-1)."


def target_options(
    command: Callable[..., Any], region_help: str = SPEC_REGION
) -> Callable[..., Any]:
    """--target and what it needs, gathered into one Target passed as `target`."""

    def gather(target, state_dir, region, profile, endpoint_url, **kwargs):
        where = Target(target, state_dir, region, profile, endpoint_url)
        return command(target=where, **kwargs)

    options = [
        click.option(
            "--target",
            type=click.Choice(TARGETS),
            default="local",
            show_default=True,
            envvar="PIPELINE_TARGET",
            help="Where to act (env PIPELINE_TARGET).",
        ),
        click.option(
            "--state-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=".pipeline",
            show_default=True,
            envvar="PIPELINE_STATE_DIR",
            help="The local target's state folder (env PIPELINE_STATE_DIR).",
        ),
        click.option("--region", help=region_help),
        click.option("--profile", help="AWS profile from your AWS config."),
        click.option(
            "--endpoint-url",
            callback=_endpoint,
            help="AWS endpoint of every service, e.g. LocalStack or a moto server (without it: "
            "AWS_ENDPOINT_URL_<SERVICE>, else AWS_ENDPOINT_URL, else AWS's own).",
        ),
    ]
    wrapped = functools.wraps(command)(gather)
    for option in reversed(options):
        wrapped = option(wrapped)
    return wrapped


def say(line: str) -> None:
    click.echo(line, err=True)


def stream_target_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """target_options for the commands that take a stream's name, not a spec."""
    return target_options(command, region_help=STREAM_REGION)


spec_argument = click.argument("spec", type=click.Path(path_type=str))
strict_option = click.option(
    "--strict", is_flag=True, help="Refuse a spec with warnings, as if they were errors (exit 2)."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pipeline", prog_name="pipeline")
def cli() -> None:
    """A declarative runner for streaming ETL on Amazon Kinesis."""


@cli.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(path_type=str))
@strict_option
@target_options
@reports_errors
def validate(specs: tuple[str, ...], strict: bool, target: Target) -> int:
    """Check specs (schema, references, expressions), warn of likely mistakes; touches nothing."""
    return validate_command.validate(specs, target, strict=strict, out=echo, warn=say)


@cli.command()
@spec_argument
@click.argument("records", type=click.File("rb"), default="-")
@click.option("--jsonl", is_flag=True, help="One JSON object per record, for scripts.")
@strict_option
@target_options
@reports_errors
def preview(spec: str, records: Any, jsonl: bool, strict: bool, target: Target) -> int:
    """Show each record's route and transformed record (RECORDS: a JSONL file, - for stdin)."""
    loaded = target.load(spec, strict=strict, warn=say)
    if records.isatty():
        say("reading JSON records, one per line, from the terminal; end with Ctrl-D")
    return preview_records(loaded, records, StandardOutput(), jsonl=jsonl)


@cli.command()
@spec_argument
@strict_option
@target_options
@reports_errors
def plan(spec: str, strict: bool, target: Target) -> int:
    """Show what apply would change, resource by resource."""
    loaded = target.load(spec, strict=strict, warn=say)
    changes = provision.plan(loaded, target.backend(loaded.region, writes=False))
    for change in changes:
        echo(change.line())
    echo(provision.summary(changes, done=False))
    return EXIT_OK


def _confirm_deleting(yes: bool, verb: str, pipeline: str, target: Target) -> Callable[[], bool]:
    """Yes with --yes, else the user's answer to whether to delete what was listed; a no
    changes nothing (exit 1)."""
    question = (
        f"{verb} these resources of {pipeline} on the {target.name} target, "
        "with the records and objects in them?"
    )
    return lambda: yes or _asked(question)


def _asked(question: str) -> bool:
    """The user's yes to `question`; a no ends the command there, having changed nothing
    (exit 1)."""
    if click.confirm(question):
        return True
    say("Nothing changed.")
    raise click.exceptions.Exit(EXIT_FAILURE)


@cli.command()
@spec_argument
@click.option(
    "--prune",
    is_flag=True,
    help="Also delete what this pipeline created that the spec no longer declares (asks first).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (with --prune).")
@strict_option
@target_options
@reports_errors
def apply(spec: str, prune: bool, yes: bool, strict: bool, target: Target) -> int:
    """Create what is missing and fix what differs; deletes only with --prune.

    On the aws target, a spec with a lambda: section also gets its function (the runner and
    the spec, packaged), its role and its event source mapping."""
    loaded = target.load(spec, strict=strict, warn=say)
    changes = provision.apply(
        loaded,
        target.backend(loaded.region),
        echo,
        prune=prune,
        confirm=_confirm_deleting(yes, "Delete", loaded.pipeline, target),
    )
    echo(provision.summary(changes, done=True, pruned=prune))
    return EXIT_OK


@cli.command()
@spec_argument
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@strict_option
@target_options
@reports_errors
def destroy(spec: str, yes: bool, strict: bool, target: Target) -> int:
    """Delete what the pipeline created, with the records and objects in them, after asking."""
    loaded = target.load(spec, strict=strict, warn=say)
    removed = provision.destroy(
        loaded,
        target.backend(loaded.region),
        echo,
        confirm=_confirm_deleting(yes, "Destroy", loaded.pipeline, target),
    )
    echo(f"Destroyed {count(removed, 'resource')}." if removed else "Nothing to destroy.")
    return EXIT_OK


@cli.command(cls=LogsCommand)
@spec_argument
@click.option(
    "--until-idle",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Stop once nothing new arrived for this long and all is flushed.",
)
@click.option(
    "--max-records",
    type=click.IntRange(min=1),
    metavar="N",
    help="Stop after N records (each user record of a KPL aggregate counts; an aggregate is "
    "taken whole).",
)
@click.option(
    "--forget-old-checkpoints",
    is_flag=True,
    help="Delete checkpoints kept for an earlier stream of the same name (deleted and "
    "created again), and read the new one from source.start.",
)
@click.option(
    "--give-up-after",
    type=click.FloatRange(min=0, min_open=True),
    default=engine.GIVE_UP_AFTER_S,
    show_default=True,
    metavar="SECONDS",
    help="Fail the run when a service it needs keeps failing (or cannot be reached) this long.",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Follow edits of SPEC: swap in each valid saved version between rounds (once "
    "`pipeline apply` made what it needs).",
)
@click.option(
    "--metrics",
    metavar="[HOST:]PORT",
    callback=_metrics_address,
    help="Serve Prometheus metrics at /metrics, and /healthz and /ready, on this address "
    "(without HOST: 127.0.0.1; port 0: a free one, said at the start).",
)
@click.option(
    "--log-format",
    type=click.Choice(FORMATS),
    default=HUMAN,
    show_default=True,
    callback=_run_log,
    help="How the run writes its lines: as text, or each as one JSON object (time, level, "
    "pipeline, message and fields).",
)
@strict_option
@target_options
@reports_errors
def run(
    spec: str,
    until_idle: float | None,
    max_records: int | None,
    forget_old_checkpoints: bool,
    give_up_after: float,
    watch: bool,
    metrics: tuple[str, int] | None,
    log_format: RunLog,
    strict: bool,
    target: Target,
) -> int:
    """Consume, transform, route and deliver until stopped (Ctrl-C stops cleanly).

    A spec with a lambda: section runs here, on the local target, through the Lambda
    handler, in batches shaped as Lambda's; on the aws target Lambda runs it, and run refuses.
    """
    # For run: what it refuses is said once, as its error, not as a warning first.
    load = functools.partial(target.load, spec, strict=strict, for_run=True)
    first_warnings: list[str] = []  # said once the pipeline they are about is known
    loaded = load(warn=first_warnings.append)
    log_format.pipeline = loaded.pipeline
    for line in first_warnings:
        log_format.warning(line)
    options = engine.RunOptions(
        until_idle=until_idle,
        max_records=max_records,
        forget_old_checkpoints=forget_old_checkpoints,
        give_up_after=give_up_after,
    )
    reload = functools.partial(load, warn=log_format.warning) if watch else None
    backend = target.backend(loaded.region)
    return run_command.run(
        loaded, backend, target.state_dir, options, log_format, reload=reload, metrics=metrics
    )


class PositionType(click.ParamType):
    name = "POSITION"

    def __init__(self, sequences: bool = True) -> None:
        self.sequences = sequences  # also at_sequence_number:SEQ and after_sequence_number:SEQ

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        try:
            return parse_position(value, sequences=self.sequences)
        except ValueError as error:
            self.fail(str(error), param, ctx)


class ExpressionType(click.ParamType):
    name = "EXPRESSION"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        try:
            return compile_expression(value)
        except ExpressionError as error:
            self.fail(f"'{value}': {error}", param, ctx)


@cli.command()
@click.option("--stream", required=True, help="The stream's name.")
@click.option("--json", "json_text", metavar="TEXT", help="Put this one JSON record.")
@click.option(
    "--file", "file", type=click.File("rb"), help="Put every line of this JSONL file (- for stdin)."
)
@click.option(
    "--raw",
    is_flag=True,
    help="Put each line of --json or --file as it is, unparsed (keyed by its line), "
    "e.g. to see where bad records go; blank lines are skipped.",
)
@click.option("--synthetic", is_flag=True, help="Put scenario-shaped browsing sessions.")
@click.option(
    "--count", type=click.IntRange(min=1), help="How many synthetic sessions (default: endless)."
)
@click.option(
    "--mean-gap",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Mean gap between records, Poisson-distributed [--synthetic: 10, else 0 = as fast as "
    "possible].",
)
@click.option(
    "--seed", type=int, help="Seed of the synthetic sessions and the gaps, for repeatable runs."
)
@click.option(
    "--partition-key",
    type=ExpressionType(),
    default="session_id",
    show_default=True,
    help="JMESPath expression giving each record's partition key.",
)
@stream_target_options
@reports_errors
def produce(
    stream: str,
    json_text: str | None,
    file: Any,
    raw: bool,
    synthetic: bool,
    count: int | None,
    mean_gap: float | None,
    seed: int | None,
    partition_key: Any,
    target: Target,
) -> int:
    """Put records into a stream: one --json, a --file of JSON Lines, or --synthetic sessions."""
    if sum((json_text is not None, file is not None, synthetic)) != 1:
        raise click.UsageError("give exactly one of --json, --file or --synthetic")
    if count is not None and not synthetic:
        raise click.UsageError("--count goes with --synthetic")
    if raw and synthetic:
        raise click.UsageError("--raw goes with --json or --file")
    given = click.get_current_context().get_parameter_source
    if raw and given("partition_key") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--raw puts lines unparsed, keyed by their line: no --partition-key")
    if seed is not None and not synthetic and mean_gap is None:
        raise click.UsageError("--seed goes with --synthetic or --mean-gap")
    # A bar only where someone watches: click prints its label alone to a pipe or a file.
    watched = count is not None and sys.stderr.isatty()
    with click.progressbar(
        length=count or 0, label="producing", file=sys.stderr, hidden=not watched
    ) as bar:
        options = produce_module.ProduceOptions(
            partition_key,
            json_text=json_text,
            file=file,
            synthetic=synthetic,
            count=count,
            mean_gap=mean_gap,
            seed=seed,
            raw=raw,
        )
        return produce_module.main(target.backend(), stream, options, warn=say, progress=bar.update)


@cli.command()
@click.option("--stream", required=True, help="The stream's name.")
@click.option(
    "--from",
    "start",
    type=PositionType(),
    default="trim_horizon",
    show_default=True,
    help="trim_horizon, latest, at_timestamp:ISO, at_sequence_number:SEQ or "
    "after_sequence_number:SEQ (with --shard).",
)
@click.option("--shard", help="Read only this shard (needed with a sequence number).")
@click.option(
    "--follow/--no-follow",
    default=True,
    show_default=True,
    help="Keep polling for new records, or stop at the end.",
)
@click.option(
    "--jsonl",
    is_flag=True,
    help="One JSON object per record: shard, sequence (and sub_sequence for a user record of "
    "a KPL aggregate), partition_key, arrival, data.",
)
@stream_target_options
@reports_errors
def consume(
    stream: str, start: Any, shard: str | None, follow: bool, jsonl: bool, target: Target
) -> int:
    """Print a stream's records with their shard and sequence number."""
    if start.sequence is not None and shard is None:
        raise click.UsageError("--from with a sequence number needs --shard: they are per shard")
    consume_module.consume(
        target.backend(writes=False),
        stream,
        start,
        StandardOutput(),
        shard=shard,
        follow=follow,
        jsonl=jsonl,
        say=say,
    )
    return EXIT_OK


@cli.command("test")
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_junit_file,
    help="Also write the results to this file as JUnit XML, for CI.",
)
@strict_option
@reports_errors
def run_tests(paths: tuple[str, ...], junit: Path | None, strict: bool) -> int:
    """Run the tests of specs (PATHS: specs, their NAME.test.yaml, or folders of specs; default
    .): records in, expected routes and records out; no stream, state or AWS at all."""
    return spec_tests.run_tests(paths or (".",), out=echo, warn=say, strict=strict, junit=junit)


@cli.command()
@reports_errors
def schema() -> int:
    """Print the spec's JSON Schema."""
    echo(json.dumps(spec_module.schema(), indent=2))
    return EXIT_OK


@cli.command()
@spec_argument
@click.option(
    "--dry-run", is_flag=True, help="Show what would become of each entry; write nothing."
)
@strict_option
@target_options
@reports_errors
def redrive(spec: str, dry_run: bool, strict: bool, target: Target) -> int:
    """Send what waits in the dead letter through the spec again, after a fix."""
    loaded = target.load(spec, strict=strict, warn=say, for_run=True)  # it refuses as run does
    backend = target.backend(loaded.region, writes=not dry_run)
    out = StandardOutput()
    return redrive_module.redrive(loaded, backend, target.state_dir, say, out, dry_run=dry_run)


def main() -> None:
    try:
        cli(prog_name="pipeline")
    except SystemExit as end:
        if end.code != 130:
            raise
        # Stopped at once (a second Ctrl-C): end now, not once the threads still waiting on
        # the network (a run's shard reads) are done, as the interpreter's exit would.
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(130)


@cli.command()
@spec_argument
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@strict_option
@target_options
@reports_errors
def status(spec: str, as_json: bool, strict: bool, target: Target) -> int:
    """Where a pipeline stands: shards, checkpoints, lag, who runs it, the dead letter."""
    loaded = target.load(spec, strict=strict, warn=say)
    backend = target.backend(loaded.region, writes=False)
    found = status_module.status(loaded, backend, target.state_dir)
    if as_json:
        echo(json.dumps(found.as_json(), indent=2))
    else:
        for line in found.lines():
            echo(line)
    return EXIT_OK


@cli.command()
@spec_argument
@click.option(
    "--to",
    "to",
    required=True,
    type=PositionType(sequences=False),
    help="trim_horizon, latest or at_timestamp:ISO (e.g. at_timestamp:2026-11-26T12:00:00Z).",
)
@click.option("--shard", help="Move only this shard's checkpoint.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@strict_option
@target_options
@reports_errors
def reset(spec: str, to: Any, shard: str | None, yes: bool, strict: bool, target: Target) -> int:
    """Move the checkpoints of the source's shards, so that the next run reads from there."""
    loaded = target.load(spec, strict=strict, warn=say)
    reset_module.reset(
        loaded,
        target.backend(loaded.region),
        to,
        shard=shard,
        confirm=lambda question: yes or _asked(question),
        report=echo,
        wait_report=lambda line: say(f"[{loaded.pipeline}] {line}"),
    )
    return EXIT_OK
