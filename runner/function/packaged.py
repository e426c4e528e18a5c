"""The spec a Lambda package carries, `pipeline-spec.json`: the spec as `load` resolved it,
written by `package.build` and read by the function once per cold start. Imports no YAML,
JSON Schema or command-line library: the function has none."""

from __future__ import annotations

import json
import os
from pathlib import Path

from runner.spec import Spec, resolved, version

SPEC_FILE = "pipeline-spec.json"
# The package's root, where the runner package and the spec lie side by side (/var/task).
ROOT = Path(__file__).resolve().parents[2]


# Of a spec's document, what the handler does not use: what Lambda applies itself, and the tests
# `pipeline test` runs.
_NOT_HELD = ("lambda", "tests")


def held_document(document: dict) -> dict:
    """Of a spec's resolved document, what the handler uses: not the `lambda:` section (Lambda
    applies it), the tests, the firehoses (AWS delivers them), nor where the mapping starts
    reading (fixed once it is created): the source stream's start reads as the default."""
    held = {key: value for key, value in document.items() if key not in _NOT_HELD}
    resources = held.get("resources")
    if isinstance(resources, dict) and "firehoses" in resources:
        held["resources"] = {key: value for key, value in resources.items() if key != "firehoses"}
    source = held.get("source")
    if isinstance(source, dict) and "start" in source:
        held["source"] = {**source, "start": "trim_horizon"}
    return held


def packed(spec: Spec) -> bytes:
    """`spec` as a package holds it: what the handler uses of its resolved document
    (held_document), its file's name, the version of what is held, and its region, as compact
    JSON with the keys in the document's order: the file's, and the schema's for defaults. Not
    sorted: the order means something (a set step sets its attributes in it, errors list the
    streams in it), and the file fixes it, so the same spec gives the same bytes.

    So an edit of what the handler does not use (the `lambda:` section, the tests, a firehose,
    a comment) leaves the package as it is, and apply updates the function's code only when
    what it does may change. The version of the spec file, which dead-letter entries carry,
    is the function's configuration (its environment), not its code."""
    document = held_document(spec.document)
    text = json.dumps(document, separators=(",", ":"))
    held = {
        "document": document,
        "path": spec.path.name,
        "region": spec.region,
        "version": version(text.encode("utf-8")),
    }
    return json.dumps(held, separators=(",", ":")).encode("utf-8")


def load_packaged(path: str | os.PathLike | None = None) -> Spec:
    """The Spec that `packed` wrote to `path` (by default pipeline-spec.json at the package's
    root), built again without reading YAML or checking the schema. Raises SpecError if the
    document is not one `load` made for this code."""
    held = json.loads(Path(ROOT / SPEC_FILE if path is None else path).read_bytes())
    return resolved(held["document"], held["path"], held["version"], held["region"])
