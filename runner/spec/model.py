"""The frozen model of a spec: what `load` returns, checked and compiled, for the layers above
to use without looking at the YAML again."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runner.plural import count
from runner.records.routing import Route
from runner.records.transform import Step
from runner.spec.position import Position
from runner.spec.testing import SpecTest


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
class DeadLetterDestination:
    """Where bad records go: a declared stream or a declared bucket (exactly one)."""

    stream: str | None = None  # a key of streams
    bucket: str | None = None  # a key of buckets
    prefix: str = ""  # with a bucket: the start of its objects' keys


def dead_letter_off_machine(dead_letter: DeadLetterDestination | None) -> bool:
    """Whether bad records go where they outlive the machine running the pipeline: a declared
    stream or bucket, not the state folder's file. Where the checkpoints live off that machine
    (the aws target, Lambda), the dead letter must too, or losing the machine loses the records
    the checkpoints moved past."""
    return dead_letter is not None


def needs_dead_letter_off_machine(
    where: str, why: str = "since the checkpoints outlive this machine and its state folder"
) -> str:
    """Why a spec run `where` (e.g. 'on the aws target') needs a stream or bucket dead letter,
    and what to add."""
    return (
        f"{where} the dead letter must be a stream or a bucket, {why}: add dead_letter: "
        "{bucket: KEY} with a key of resources.buckets (it holds entries of any size), or "
        "dead_letter: {stream: KEY}"
    )


def version(spec: bytes | str | os.PathLike) -> str:
    """A spec's version: the start of the sha256 of its file's bytes (given, or read from the
    path), so that two runs, a dead-letter entry and the file on disk can be compared."""
    data = spec if isinstance(spec, bytes) else Path(spec).read_bytes()
    return hashlib.sha256(data).hexdigest()[:12]


@dataclass(frozen=True)
class Function:
    """The `lambda:` section: on the aws target, AWS Lambda runs the pipeline as this function,
    fed by an event source mapping of the source stream with these settings."""

    name: str
    role: str  # the IAM role it runs as
    memory_mb: int = 256
    timeout_s: int = 60
    batch_size: int = 100  # Kinesis records per invocation
    batching_window_s: int = 1
    parallelization: int = 1  # batches of one shard at once
    max_retries: int = 5  # -1: until the records expire
    max_record_age_s: int = 3600  # -1: no limit
    bisect_on_error: bool = True


@dataclass(frozen=True)
class Source:
    stream: str  # a key of streams
    start: Position  # where a shard without a checkpoint starts


@dataclass(frozen=True)
class Spec:
    path: Path
    pipeline: str
    region: str
    streams: Mapping[str, Stream]
    buckets: Mapping[str, Bucket]
    firehoses: Mapping[str, Firehose]
    source: Source | None  # None only while a spec is being built
    transform: tuple[Step, ...]
    route: Route | None  # None: the spec only declares resources
    dead_letter: DeadLetterDestination | None  # None: a file in the state folder
    function: Function | None = None  # the `lambda:` section: AWS Lambda runs it on aws
    # Its `tests:`, which `pipeline test` runs; they change nothing a run does.
    tests: tuple[SpecTest, ...] = field(default=(), compare=False)
    warnings: tuple[str, ...] = ()  # likely mistakes, each FILE:LINE:COL: PATH: warning: ...
    version: str = ""  # version() of the bytes it was loaded from
    # What it was built from: the document with vars, ${account_id} and defaults filled in,
    # as plain JSON values; `resolved` builds the same Spec from it (a Lambda package holds it).
    document: dict = field(default_factory=dict, compare=False, repr=False)

    def summary(self) -> str:
        """One line saying the spec is valid and what it declares."""
        return (
            f"{self.path}: ok: pipeline {self.pipeline}, "
            f"{count(len(self.streams), 'stream')}, {count(len(self.buckets), 'bucket')}, "
            f"{count(len(self.firehoses), 'firehose')}, "
            f"{count(len(self.transform), 'transform step')}, "
            + (f"{count(len(self.route.cases), 'route case')}" if self.route else "no route")
            + (f", run by Lambda function {self.function.name}" if self.function else "")
        )
