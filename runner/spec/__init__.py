"""Specs: the YAML document with the position of every value (`document`), and the checks
(`checks`) that turn it into the frozen model (`model`). `load(path)` is the one way in;
`resolved(...)` builds the same Spec again from the document `load` resolved. `load_tests`
reads a spec's tests kept beside it (NAME.test.yaml), as `load` reads those in it (`testing`).

Only `load`, `load_tests`, `schema` and `is_spec` import PyYAML and jsonschema, when called:
the rest of this package works without them (in a Lambda function)."""

from pathlib import Path

from runner.spec.checks import check_prefix, load, load_tests, resolved
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
from runner.spec.problems import SpecError
from runner.spec.testing import RecordTest, SpecTest, is_test_file, kept_beside, spec_beside

__all__ = [
    "Bucket",
    "DeadLetterDestination",
    "Firehose",
    "Function",
    "Position",
    "RecordTest",
    "Source",
    "Spec",
    "SpecError",
    "SpecTest",
    "Stream",
    "check_prefix",
    "dead_letter_off_machine",
    "is_spec",
    "is_test_file",
    "kept_beside",
    "load",
    "load_tests",
    "needs_dead_letter_off_machine",
    "parse_position",
    "parse_timestamp",
    "resolved",
    "schema",
    "spec_beside",
    "version",
]


def schema() -> dict:
    """The JSON Schema of a spec, as shipped inside the package."""
    from runner.spec.document import schema as shipped

    return shipped()


def is_spec(path: Path) -> bool:
    """Whether the YAML file at `path` is meant as a spec (a mapping with `pipeline:`), not
    another YAML file of its folder; one that is not YAML at all counts as a spec."""
    from runner.spec.document import is_spec as meant

    return meant(path)
