"""The one way in for a spec: read, interpolate, validate, check, compile, freeze.

`load(path)` returns a frozen `Spec` or raises `SpecError` listing every problem found, each as
`FILE:LINE:COL: PATH: message`, pointing at the offending node itself. `resolved(...)` builds
the same `Spec` again from the document `load` resolved (`Spec.document`), without PyYAML or
jsonschema, which only `load` and `load_tests` (a spec's NAME.test.yaml) import.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn

from runner.backends.base import DEFAULT_REGION, LOCAL_ACCOUNT_ID
from runner.records import expressions
from runner.records.routing import Case, Route
from runner.records.transform import FilterStep, RemoveStep, RenameStep, SetStep, Step
from runner.spec.model import (
    Bucket,
    DeadLetterDestination,
    Firehose,
    Function,
    Source,
    Spec,
    Stream,
    needs_dead_letter_off_machine,
    version,
)
from runner.spec.position import Position, parse_position
from runner.spec.problems import SpecError, SpecPath, format_path
from runner.spec.testing import SpecTest, build_tests

if TYPE_CHECKING:
    from runner.spec.document import Reader

__all__ = ["check_prefix", "load", "load_tests", "resolved"]


def load(
    path: str | os.PathLike,
    *,
    region: str | None = None,
    account_id: Callable[[str], str] = lambda region: LOCAL_ACCOUNT_ID,
    configured_region: Callable[[], str] = lambda: DEFAULT_REGION,
    environ: Mapping[str, str] = os.environ,
    strict: bool = False,
) -> Spec:
    """Read the spec at `path` for a target. Its region is `region`, else its own, else
    `configured_region()` (the target's configuration), asked only then; `account_id(region)`
    is asked only when the spec uses ${account_id}.
    Likely mistakes are the Spec's `warnings`, or with `strict` problems of the SpecError."""
    # Here only: the rest of the spec layer works where PyYAML and jsonschema are not (Lambda).
    from runner.spec.document import Interpolator, Reader, fill_defaults, validate_shape

    path = Path(path)
    reader = Reader(path)
    document = reader.read()
    interpolator = Interpolator(reader, document, region, account_id, environ, configured_region)
    document = interpolator.run()
    wrong = validate_shape(reader, document)
    fill_defaults(document)
    declared = document.get("region") if isinstance(document, dict) else None
    in_region = region or (declared if isinstance(declared, str) else None) or interpolator.region
    return _Builder(reader, document, in_region, wrong, version(reader.raw)).build(strict)


def load_tests(
    path: str | os.PathLike,
    spec: Spec,
    *,
    strict: bool = False,
    warn: Callable[[str], None] = lambda line: None,
) -> tuple[SpecTest, ...]:
    """The tests in the test file at `path` (NAME.test.yaml beside the spec NAME.yaml) of
    `spec`, loaded: checked against the schema of test files, the spec's route and the names of
    its own tests, as `load` checks the spec's. `warn` is told each likely mistake, which
    `strict` makes a problem of the SpecError."""
    from runner.spec.document import Reader, fill_defaults, schema_of_tests, validate_shape

    reader = Reader(Path(path), noun="test file", keys="tests")
    document = reader.read()
    wrong = validate_shape(reader, document, schema_of_tests())
    fill_defaults(document)  # {"tests": [...]} is shaped as in a spec, so are its defaults
    raw = document.get("tests") if isinstance(document, dict) else None
    routes = _routes(spec.route)
    if raw and routes is None:
        reader.problem(("tests",), f"{_NO_ROUTE} (spec {spec.path})")
    taken = {test.name: f"{test.path}:{test.line}" for test in spec.tests}
    expression = functools.partial(_expression, reader)
    tests = build_tests(reader, raw, routes, wrong, expression, taken)
    reader.raise_if_any(strict=strict)
    for line in reader.warning_lines():
        warn(line)
    return tests


_NO_ROUTE = "the spec has no route, so its tests have nothing to run: add route: with its cases"


def _routes(route: Route | None) -> tuple[str, ...] | None:
    """The keys records may be routed to, in the order of the cases."""
    return None if route is None else tuple(dict.fromkeys(case.to for case in route.cases))


def _expression(
    reader: Reader | _Resolved, path: SpecPath, text: Any
) -> expressions.Expression | None:
    """`text` compiled, or None when it is not text (the schema said so) or does not compile
    (told to `reader`, as its likely mistakes are)."""
    if not isinstance(text, str):
        return None
    try:
        compiled = expressions.compile(text)
    except expressions.ExpressionError as error:
        reader.problem(path, f"'{text}': {error}")
        return None
    for mistake in expressions.likely_mistakes(compiled):
        reader.warning(path, f"'{text}': {mistake}")
    return compiled


def resolved(document: dict, path: str | os.PathLike, version: str, region: str) -> Spec:
    """The Spec that `load` made of the spec at `path` (its file's `version`) for `region`,
    built again from its resolved document (`Spec.document`) without reading YAML or checking
    the schema: what a Lambda function does with its packaged spec. Any problem found raises
    SpecError: `load` found none, so the document is not one it made for this code."""
    path = Path(path)
    return _Builder(_Resolved(path), document, region, set(), version).build(strict=False)


class _Resolved:
    """The reader of a document `load` resolved and checked: stands in for the YAML reader."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def problem(self, path: SpecPath, message: str, **_: Any) -> NoReturn:
        where = format_path(path)
        raise SpecError([f"{self.path}: resolved spec: {where + ': ' if where else ''}{message}"])

    def warning(self, path: SpecPath, message: str, **_: Any) -> None:
        """Told when `load` read the spec."""

    def raise_if_any(self, *, strict: bool = False) -> None:
        """Problems were raised as they were found."""

    def locate(self, path: SpecPath, *, at_key: bool = False) -> tuple[int, int]:
        """Positions are not kept: the first line stands for every node."""
        return (1, 1)

    def warning_lines(self) -> tuple[str, ...]:
        return ()


_BUCKET_FORBIDDEN = (
    (lambda name: not 3 <= len(name) <= 63, "3 to 63 characters"),
    (
        lambda name: not (name[:1].isalnum() and name[-1:].isalnum()),
        "starting and ending with a letter or digit",
    ),
    (lambda name: ".." in name, "no two dots in a row"),
    (lambda name: re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name), "not shaped like an IP address"),
    (
        lambda name: name.startswith(("xn--", "sthree-", "amzn-s3-demo-")),
        "not starting with xn--, sthree- or amzn-s3-demo-",
    ),
    (
        lambda name: name.endswith(("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")),
        "not ending with -s3alias, --ol-s3, .mrap, --x-s3 or --table-s3",
    ),
)


# Firehose expands these in prefixes on AWS; what they hold (even a '/') is not a key segment.
_FIREHOSE_EXPRESSION = re.compile(r"!\{[^}]*\}")


def check_prefix(text: str) -> str | None:
    """Why `text` cannot begin the keys of objects written to a bucket, or None if it can.

    Keys are the prefix and then YYYY/MM/DD/HH/... (or other text): what follows the prefix's
    last '/' joins that text, so only the segments before it must be non-empty, not '.' and
    not '..', which neither a bucket folder nor most S3 tools can hold."""
    *segments, _ = _FIREHOSE_EXPRESSION.sub("x", text).split("/")
    if segments[:1] == [""]:
        why = "it starts with '/'"
    elif "" in segments:
        why = "it has an empty segment ('//')"
    elif dots := [segment for segment in segments if segment in (".", "..")]:
        why = f"it has a '{dots[0]}' segment"
    else:
        return None
    return f"'{text}' cannot begin an object key: {why}"


class _Builder:
    """Semantic checks and expression compilation.

    Also run over a document with schema errors, so that one pass reports every problem:
    a part whose shape is wrong is skipped (its schema error says why), the rest is checked.
    """

    def __init__(
        self, reader: Reader | _Resolved, document: Any, region: str, wrong: set, version: str
    ) -> None:
        self.reader = reader
        self.document = document if isinstance(document, dict) else {}
        self.region = region
        self.wrong = wrong
        self.version = version
        resources_ = self.document.get("resources")
        self.resources = resources_ if isinstance(resources_, dict) else {}

    @contextlib.contextmanager
    def tolerant(self, path: SpecPath) -> Iterator[None]:
        """Skip the part at `path` if the schema found it wrong, or a part of it, or a part
        holding it (its schema error says why); elsewhere such an error is a bug, so it raises."""
        try:
            yield
        except (KeyError, TypeError, AttributeError, ValueError):
            if not (self.is_wrong(path) or self.is_within_wrong(path)):
                raise

    def is_wrong(self, path: SpecPath) -> bool:
        """Whether the schema found a problem at or below `path`."""
        return any(wrong[: len(path)] == path for wrong in self.wrong)

    def is_within_wrong(self, path: SpecPath) -> bool:
        """Whether the schema found a problem in a part holding `path`."""
        return any(path[: len(wrong)] == wrong for wrong in self.wrong)

    def declared(self, kind: str) -> dict:
        value = self.resources.get(kind, {})
        return value if isinstance(value, dict) else {}

    def each(self, kind: str, make: Callable[[str, dict], Any]) -> dict:
        """make(key, raw) for every resource of a kind that can be made."""
        made = {}
        for key, raw in self.declared(kind).items():
            with self.tolerant(("resources", kind, key)):
                made[key] = make(key, raw)
        return made

    def build(self, strict: bool) -> Spec:
        doc = self.document
        streams = self.each("streams", lambda key, raw: Stream(key, raw["name"], raw["shards"]))
        buckets = self.each("buckets", lambda key, raw: Bucket(key, raw["name"]))
        firehoses = self.each("firehoses", self.firehose)
        for kind, made in (("streams", streams), ("buckets", buckets), ("firehoses", firehoses)):
            self.unique_names(kind, made)
        for key, stream in streams.items():
            self.name_length(("resources", "streams", key, "name"), stream.name, 128)
        for key, firehose in firehoses.items():
            path = ("resources", "firehoses", key)
            self.name_length(path + ("name",), firehose.name, 64)
            self.name_length(path + ("role",), firehose.role, 64)
        for key, bucket in buckets.items():
            self.bucket_name(("resources", "buckets", key, "name"), bucket.name)
        if isinstance(doc.get("pipeline"), str):
            self.name_length(("pipeline",), doc["pipeline"], 64)

        source = None
        with self.tolerant(("source",)):
            raw = doc["source"]
            source = Source(raw["stream"], self.position(("source", "start"), raw["start"]))
            self.reference(("source", "stream"), source.stream, "streams")

        dead_letter = None
        if "dead_letter" in doc:
            with self.tolerant(("dead_letter",)):
                dead_letter = self.dead_letter(doc["dead_letter"], streams, source)

        steps = []
        with self.tolerant(("transform",)):
            for index, raw in enumerate(doc.get("transform", [])):
                with self.tolerant(("transform", index)):
                    step = self.step(index, raw)
                    if step is not None:
                        steps.append(step)
        route = None
        if "route" in doc:
            with self.tolerant(("route",)):
                route = self.route(doc["route"], streams, source)
        if dead_letter and dead_letter.stream and not self.is_wrong(("dead_letter",)):
            self.dead_letter_shared(dead_letter.stream, route, firehoses)
        function = None
        if "lambda" in doc:
            with self.tolerant(("lambda",)):
                function = self.function(doc["lambda"], route, "dead_letter" in doc)
        tests = self.tests(doc.get("tests"), route)
        self.reader.raise_if_any(strict=strict)
        return Spec(
            path=self.reader.path,
            pipeline=doc["pipeline"],
            region=self.region,
            streams=MappingProxyType(streams),
            buckets=MappingProxyType(buckets),
            firehoses=MappingProxyType(firehoses),
            source=source,
            transform=tuple(steps),
            route=route,
            dead_letter=dead_letter,
            function=function,
            tests=tests,
            warnings=self.reader.warning_lines(),
            version=self.version,
            # `vars` are applied: what a Spec is built from again (`resolved`) holds none.
            document={key: value for key, value in doc.items() if key != "vars"},
        )

    def tests(self, raw: Any, route: Route | None) -> tuple[SpecTest, ...]:
        """The spec's own tests; their route keys are checked once the route is known good."""
        if raw and route is None and "route" not in self.document:
            self.reader.problem(("tests",), _NO_ROUTE)
        routes = None if self.is_wrong(("route",)) else _routes(route)
        return build_tests(self.reader, raw, routes, self.wrong, self.expression, {})

    def position(self, path: SpecPath, text: str) -> Position:
        """Where `text` says to start. If it says nothing valid, the spec is refused (the
        schema or this says why) and the default stands in until then."""
        if not self.is_wrong(path):
            try:
                return parse_position(text)
            except ValueError as error:
                self.reader.problem(path, str(error))
        return Position()

    def dead_letter_shared(self, key: str, route: Route | None, firehoses: Mapping) -> None:
        """Warn of a dead-letter stream that routed records or a delivery also use."""
        users = [
            f"route.cases[{index}]"
            for index, case in enumerate(route.cases if route else ())
            if case.to == key
        ]
        users += [f"firehose {f.key}" for f in firehoses.values() if f.stream == key]
        if users:
            self.reader.warning(
                ("dead_letter", "stream"),
                f"stream '{key}' is also used by {', '.join(users)}: dead-letter entries would "
                "mix with the records there; give the dead letter a stream of its own",
            )

    def unique_names(self, kind: str, declared: Mapping[str, Any]) -> None:
        seen: dict[str, str] = {}
        for key, resource in declared.items():
            path = ("resources", kind, key, "name")
            with self.tolerant(path):
                if resource.name in seen:
                    self.reader.problem(
                        path,
                        f"name '{resource.name}' is already used by "
                        f"resources.{kind}.{seen[resource.name]}",
                    )
                seen.setdefault(resource.name, key)

    def name_length(self, path: SpecPath, name: str, limit: int) -> None:
        with self.tolerant(path):
            if len(name) > limit:
                self.reader.problem(path, f"'{name}' is {len(name)} characters, at most {limit}")

    def bucket_name(self, path: SpecPath, name: str) -> None:
        with self.tolerant(path):
            for broken, rule in _BUCKET_FORBIDDEN:
                if broken(name):
                    self.reader.problem(path, f"'{name}' is not a valid S3 bucket name: {rule}")

    def reference(self, path: SpecPath, key: Any, kind: str) -> bool:
        """Whether `key` names a declared resource of `kind`; if not, say what exists."""
        declared = self.declared(kind)
        if not isinstance(key, str) or key in declared:
            return isinstance(key, str)
        what = kind.removesuffix("s")
        named = [
            k for k, raw in declared.items() if isinstance(raw, dict) and raw.get("name") == key
        ]
        if named:  # the resource's own name where the spec wants its key
            self.reader.problem(
                path, f"'{key}' is the name of {what} '{named[0]}'; write {path[-1]}: {named[0]}"
            )
            return False
        known = ", ".join(declared) or "none declared"
        self.reader.problem(path, f"unknown {what} '{key}' ({kind}: {known})")
        return False

    def not_source(self, path: SpecPath, key: str, source, streams, what: str) -> None:
        known = source is not None and not self.is_wrong(("source", "stream"))
        if not known or key not in streams or source.stream not in streams:
            return
        if streams[key].name == streams[source.stream].name:
            self.reader.problem(
                path,
                f"{what} cannot be the source stream '{source.stream}': "
                "records would loop back into it",
            )

    def dead_letter(self, raw: dict, streams: dict, source: Source | None) -> DeadLetterDestination:
        if "stream" in raw:
            path = ("dead_letter", "stream")
            if self.reference(path, raw["stream"], "streams"):
                self.not_source(path, raw["stream"], source, streams, "the dead letter")
            return DeadLetterDestination(stream=raw["stream"])
        self.reference(("dead_letter", "bucket"), raw["bucket"], "buckets")
        prefix = raw["prefix"]
        problem = check_prefix(prefix) if isinstance(prefix, str) else None
        if problem:
            self.reader.problem(("dead_letter", "prefix"), problem)
        return DeadLetterDestination(bucket=raw["bucket"], prefix=prefix)

    def function(self, raw: dict, route: Route | None, has_dead_letter: bool) -> Function:
        """The `lambda:` section; Lambda keeps the checkpoints, so bad records must go where
        they outlive the function: a stream or a bucket."""
        if not has_dead_letter:
            why = "since Lambda keeps the checkpoints and a function has no state folder"
            where = "for a pipeline run by Lambda,"
            self.reader.problem(("lambda",), needs_dead_letter_off_machine(where, why))
        if route is None and not self.is_wrong(("route",)):
            self.reader.problem(
                ("lambda",), "a pipeline run by Lambda needs a route: add route: with its cases"
            )
        name = raw.get("function", f"{self.document.get('pipeline')}-etl")
        role = raw.get("role", f"{name}-role")
        self.name_length(("lambda", "function"), name, 64)
        if "role" in raw:
            self.name_length(("lambda", "role"), role, 64)
        elif isinstance(name, str) and len(name) <= 64 < len(role):
            self.reader.problem(
                ("lambda", "function"),
                f"the role named after it, '{role}', is {len(role)} characters, at most 64: "
                "set lambda.role",
            )
        settings = {key: value for key, value in raw.items() if key not in ("function", "role")}
        return Function(name=name, role=role, **settings)

    def firehose(self, key: str, value: dict) -> Firehose:
        path = ("resources", "firehoses", key)
        self.reference(path + ("from",), value.get("from"), "streams")
        self.reference(path + ("to",), value.get("to"), "buckets")
        for field in ("prefix", "error_prefix"):
            text = value.get(field)
            if isinstance(text, str) and (problem := check_prefix(text)):
                self.reader.problem(path + (field,), problem)
        logging = value.get("logging") or {}
        return Firehose(
            key=key,
            name=value["name"],
            stream=value["from"],
            bucket=value["to"],
            prefix=value["prefix"],
            error_prefix=value["error_prefix"],
            buffer_size_mb=value["buffer"]["size_mb"],
            buffer_interval_s=value["buffer"]["interval_s"],
            compression=value["compression"],
            # Not a schema default: it is made of the pipeline's name.
            role=value.get("role", f"{self.document.get('pipeline')}-firehose-role"),
            log_group=logging.get("group"),
            log_stream=logging.get("stream"),
        )

    def expression(self, path: SpecPath, text: Any) -> expressions.Expression | None:
        return _expression(self.reader, path, text)

    def step(self, index: int, raw: dict) -> Step | None:
        """The step, or None when an expression of it did not compile (already reported)."""
        ((kind, body),) = raw.items()
        path = ("transform", index, kind)
        where = format_path(path)
        if kind == "remove":
            return RemoveStep(where, tuple(body))
        if kind == "rename":
            return RenameStep(where, tuple(body.items()))
        if kind == "filter":
            condition = self.expression(path, body)
            return FilterStep(where, condition) if condition else None
        assignments = [(name, self.expression(path + (name,), text)) for name, text in body.items()]
        if any(expression is None for _, expression in assignments):
            return None
        return SetStep(where, tuple(assignments))

    def route(self, raw: dict, streams: dict, source: Source | None) -> Route:
        cases = []
        for index, case in enumerate(raw["cases"]):
            path = ("route", "cases", index)
            with self.tolerant(path):
                if self.reference(path + ("to",), case.get("to"), "streams"):
                    self.not_source(path + ("to",), case["to"], source, streams, "a route")
                if "when" not in case and index != len(raw["cases"]) - 1:
                    if not self.is_wrong(path):  # e.g. a mistyped `when`
                        self.reader.problem(
                            path,
                            "a case without 'when' takes every record, so it must be the last case",
                        )
                when = self.expression(path + ("when",), case.get("when"))
                cases.append(Case(case["to"], when, case["continue"]))
        return Route(
            partition_key=self.expression(("route", "partition_key"), raw.get("partition_key")),
            cases=tuple(cases),
            unmatched=raw["unmatched"],
            newline=raw["newline"],
        )
