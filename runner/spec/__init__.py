"""Specs: the YAML document with the position of every value (`document`), and the checks that
turn it into the frozen model (`checks`). `load(path)` is the one way in."""

from runner.spec.checks import (
    LOCAL_ACCOUNT_ID,
    Bucket,
    DeadLetterDestination,
    Firehose,
    Source,
    Spec,
    Stream,
    check_prefix,
    dead_letter_off_machine,
    load,
    needs_dead_letter_off_machine,
    parse_timestamp,
)
from runner.spec.document import SpecError, schema

__all__ = [
    "LOCAL_ACCOUNT_ID",
    "Bucket",
    "DeadLetterDestination",
    "Firehose",
    "Source",
    "Spec",
    "SpecError",
    "Stream",
    "check_prefix",
    "dead_letter_off_machine",
    "load",
    "needs_dead_letter_off_machine",
    "parse_timestamp",
    "schema",
]
