"""Specs: the YAML document with the position of every value (`document`), and the checks
(`checks`) that turn it into the frozen model (`model`). `load(path)` is the one way in."""

from runner.spec.checks import check_prefix, load
from runner.spec.document import SpecError, schema
from runner.spec.model import (
    Bucket,
    DeadLetterDestination,
    Firehose,
    Function,
    Source,
    Spec,
    Stream,
    dead_letter_off_machine,
    needs_dead_letter_off_machine,
    version,
)
from runner.spec.position import Position, parse_position, parse_timestamp

__all__ = [
    "Bucket",
    "DeadLetterDestination",
    "Firehose",
    "Function",
    "Position",
    "Source",
    "Spec",
    "SpecError",
    "Stream",
    "check_prefix",
    "dead_letter_off_machine",
    "load",
    "needs_dead_letter_off_machine",
    "parse_position",
    "parse_timestamp",
    "schema",
    "version",
]
