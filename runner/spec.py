"""The one way in for a spec: read, interpolate, validate, check, compile, freeze.

`load(path)` returns a frozen `Spec` or raises `SpecError` listing every problem found, each as
`FILE:LINE:COL: PATH: message`, pointing at the offending node itself.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from runner import expressions
from runner.document import (
    Interpolator,
    Reader,
    SpecError,
    SpecPath,
    format_path,
    schema,
    validate_shape,
)
from runner.routing import Case, Route
from runner.transform import FilterStep, RemoveStep, RenameStep, SetStep, Step

__all__ = ["Spec", "SpecError", "load", "schema"]

LOCAL_ACCOUNT_ID = "000000000000"


@dataclass(frozen=True)
class Stream:
    key: str
    name: str
    shards: int


@dataclass(frozen=True)
class Bucket:
    key: str
    name: str


@dataclass(frozen=True)
class Firehose:
    key: str
    name: str
    stream: str  # a key of streams
    bucket: str  # a key of buckets
    prefix: str
    error_prefix: str
    buffer_size_mb: int
    buffer_interval_s: int
    compression: str
    role: str
    log_group: str | None
    log_stream: str | None


@dataclass(frozen=True)
class Source:
    stream: str  # a key of streams
    start: str  # trim_horizon, latest or at_timestamp:ISO


@dataclass(frozen=True)
class Spec:
    path: Path
    pipeline: str
    region: str
    streams: Mapping[str, Stream]
    buckets: Mapping[str, Bucket]
    firehoses: Mapping[str, Firehose]
    source: Source
    transform: tuple[Step, ...]
    route: Route | None  # None: the spec only declares resources
    dead_letter: str | None  # a key of streams, or None for the state folder's file

    def summary(self) -> str:
        """One line saying the spec is valid and what it declares."""

        def count(number: int, what: str) -> str:
            return f"{number} {what}{'' if number == 1 else 's'}"

        return (
            f"{self.path}: ok: pipeline {self.pipeline}, "
            f"{count(len(self.streams), 'stream')}, {count(len(self.buckets), 'bucket')}, "
            f"{count(len(self.firehoses), 'firehose')}, "
            f"{count(len(self.transform), 'transform step')}, "
            + (f"{count(len(self.route.cases), 'route case')}" if self.route else "no route")
        )


def load(
    path: str | os.PathLike,
    *,
    region: str | None = None,
    account_id: Callable[[], str] = lambda: LOCAL_ACCOUNT_ID,
    environ: Mapping[str, str] = os.environ,
) -> Spec:
    """Read the spec at `path` for a target; `account_id` is asked only when the spec uses it."""
    path = Path(path)
    reader = Reader(path)
    document = reader.read()
    document = Interpolator(reader, document, region, account_id, environ).run()
    validate_shape(reader, document)
    reader.raise_if_any()
    spec = _Builder(reader, document, region).build()
    reader.raise_if_any()
    return spec


_BUCKET_FORBIDDEN = (
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


class _Builder:
    """Semantic checks and expression compilation over a document of the right shape."""

    def __init__(self, reader: Reader, document: dict, region: str | None) -> None:
        self.reader = reader
        self.document = document
        self.region = region or document.get("region", "us-east-1")

    def build(self) -> Spec:
        doc = self.document
        resources_ = doc["resources"]
        streams = {
            key: Stream(key, value["name"], value["shards"])
            for key, value in resources_["streams"].items()
        }
        buckets = {
            key: Bucket(key, value["name"]) for key, value in resources_.get("buckets", {}).items()
        }
        self.unique_names("streams", streams)
        self.unique_names("buckets", buckets)
        for key, bucket in buckets.items():
            for broken, rule in _BUCKET_FORBIDDEN:
                if broken(bucket.name):
                    self.reader.problem(
                        ("resources", "buckets", key, "name"),
                        f"'{bucket.name}' is not a valid S3 bucket name: {rule}",
                    )
        firehoses = {
            key: self.firehose(key, value, streams, buckets)
            for key, value in resources_.get("firehoses", {}).items()
        }
        self.unique_names("firehoses", firehoses)

        source = Source(doc["source"]["stream"], doc["source"].get("start", "trim_horizon"))
        self.reference(("source", "stream"), source.stream, streams, "stream")
        if source.start.startswith("at_timestamp:"):
            try:
                parse_timestamp(source.start.partition(":")[2])
            except ValueError as error:
                self.reader.problem(("source", "start"), str(error))

        dead_letter = doc.get("dead_letter", {}).get("stream")
        if dead_letter is not None:
            self.reference(("dead_letter", "stream"), dead_letter, streams, "stream")
            self.not_source(
                ("dead_letter", "stream"), dead_letter, source, streams, "the dead letter"
            )

        steps = tuple(self.step(index, step) for index, step in enumerate(doc.get("transform", [])))
        route = self.route(doc["route"], streams, source) if "route" in doc else None
        return Spec(
            path=self.reader.path,
            pipeline=doc["pipeline"],
            region=self.region,
            streams=MappingProxyType(streams),
            buckets=MappingProxyType(buckets),
            firehoses=MappingProxyType(firehoses),
            source=source,
            transform=tuple(step for step in steps if step is not None),
            route=route,
            dead_letter=dead_letter,
        )

    def unique_names(self, kind: str, declared: Mapping[str, Any]) -> None:
        seen: dict[str, str] = {}
        for key, resource in declared.items():
            if resource.name in seen:
                self.reader.problem(
                    ("resources", kind, key, "name"),
                    f"name '{resource.name}' is already used by "
                    f"resources.{kind}.{seen[resource.name]}",
                )
            seen.setdefault(resource.name, key)

    def reference(self, path: SpecPath, key: str, declared: Mapping[str, Any], kind: str) -> bool:
        if key in declared:
            return True
        known = ", ".join(declared) or "none declared"
        self.reader.problem(path, f"unknown {kind} '{key}' ({kind}s: {known})")
        return False

    def not_source(self, path: SpecPath, key: str, source: Source, streams, what: str) -> None:
        if key in streams and source.stream in streams:
            if streams[key].name == streams[source.stream].name:
                self.reader.problem(
                    path,
                    f"{what} cannot be the source stream '{source.stream}': "
                    "records would loop back into it",
                )

    def firehose(self, key, value, streams, buckets) -> Firehose:
        path = ("resources", "firehoses", key)
        self.reference(path + ("from",), value["from"], streams, "stream")
        self.reference(path + ("to",), value["to"], buckets, "bucket")
        buffer = value.get("buffer", {})
        logging = value.get("logging") or {}
        return Firehose(
            key=key,
            name=value["name"],
            stream=value["from"],
            bucket=value["to"],
            prefix=value.get("prefix", ""),
            error_prefix=value.get("error_prefix", "errors/"),
            buffer_size_mb=buffer.get("size_mb", 5),
            buffer_interval_s=buffer.get("interval_s", 300),
            compression=value.get("compression", "UNCOMPRESSED"),
            role=value.get("role", f"{self.document['pipeline']}-firehose-role"),
            log_group=logging.get("group"),
            log_stream=logging.get("stream"),
        )

    def expression(self, path: SpecPath, text: str) -> expressions.Expression | None:
        try:
            return expressions.compile(text)
        except expressions.ExpressionError as error:
            self.reader.problem(path, f"'{text}': {error}")
            return None

    def step(self, index: int, raw: dict) -> Step | None:
        ((kind, body),) = raw.items()
        path = ("transform", index, kind)
        where = format_path(path)
        if kind == "set":
            compiled = [
                (name, self.expression(path + (name,), text)) for name, text in body.items()
            ]
            if any(expression is None for _, expression in compiled):
                return None
            return SetStep(where, tuple(compiled))
        if kind == "remove":
            return RemoveStep(where, tuple(body))
        if kind == "rename":
            return RenameStep(where, tuple(body.items()))
        condition = self.expression(path, body)
        return FilterStep(where, condition) if condition else None

    def route(self, raw: dict, streams, source: Source) -> Route:
        cases = []
        for index, case in enumerate(raw["cases"]):
            path = ("route", "cases", index)
            if self.reference(path + ("to",), case["to"], streams, "stream"):
                self.not_source(path + ("to",), case["to"], source, streams, "a route")
            when = None
            if "when" in case:
                when = self.expression(path + ("when",), case["when"])
            elif index != len(raw["cases"]) - 1:
                self.reader.problem(
                    path,
                    "a case without 'when' takes every record, so it must be the last case",
                )
            cases.append(Case(case["to"], when, case.get("continue", False)))
        partition_key = self.expression(("route", "partition_key"), raw["partition_key"])
        return Route(
            partition_key=partition_key,
            cases=tuple(cases),
            unmatched=raw.get("unmatched", "dead_letter"),
            newline=raw.get("newline", True),
        )


def parse_timestamp(text: str) -> datetime.datetime:
    """ISO-8601 to an aware UTC datetime; a time without a zone is taken as UTC."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"'{text}' is not an ISO-8601 timestamp such as 2026-01-31T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)
