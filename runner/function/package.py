"""The zip a Lambda function runs: the runner's run-time modules, jmespath (pure Python) and
the spec as `load` resolved it (`pipeline-spec.json`). Neither PyYAML, jsonschema nor click:
the function reads no YAML; boto3 and what it needs come with the Lambda runtime.

The same inputs give the same bytes (sorted entries, fixed times and modes, a fixed
compression level), so that Lambda's CodeSha256 says whether the code or the spec changed."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runner.function.packaged import SPEC_FILE, packed
from runner.spec import Spec

# The runner package installed, whose modules a package holds.
RUNNER = Path(__file__).resolve().parents[1]
# What the Lambda Python runtime offers beside the standard library: boto3 and what it needs.
# jmespath is among them too, but the package holds its own, at the version the runner pins.
RUNTIME_MODULES = ("boto3", "botocore", "s3transfer", "dateutil", "urllib3", "six")

# Of the runner, only the command line needs these; the spec is checked before it is packed.
_LEFT_OUT = ("cli.py", "__main__.py", "commands")
_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip holds
_MODE = 0o100644  # a regular file, rw-r--r--
_LEVEL = 9


@dataclass(frozen=True)
class Package:
    """A function's code: the zip's bytes."""

    code: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        """As Lambda's CodeSha256 says it: the base64 of the zip's sha256 digest."""
        return base64.b64encode(hashlib.sha256(self.code).digest()).decode("ascii")

    @property
    def size(self) -> int:
        return len(self.code)


def build(spec: Spec, *, runner: Path = RUNNER) -> Package:
    """The package that runs `spec`, with the modules of the runner package at `runner`."""
    files = dict(_runner_modules(runner))
    files.update(_jmespath())
    files[SPEC_FILE] = packed(spec)
    return Package(_zipped(files))


def _runner_modules(runner: Path) -> Iterator[tuple[str, bytes]]:
    for path in runner.rglob("*.py"):
        inside = path.relative_to(runner)
        if inside.parts[0] not in _LEFT_OUT and "__pycache__" not in inside.parts:
            yield f"runner/{inside.as_posix()}", path.read_bytes()


def _jmespath() -> Iterator[tuple[str, bytes]]:
    """jmespath's modules, from the folder it is imported from, and its licence."""
    folder = Path(importlib.util.find_spec("jmespath").origin).parent
    for path in folder.rglob("*.py"):
        if "__pycache__" not in path.relative_to(folder).parts:
            yield f"jmespath/{path.relative_to(folder).as_posix()}", path.read_bytes()
    for file in importlib.metadata.distribution("jmespath").files or ():
        if file.name.startswith(("LICENSE", "COPYING")):
            yield f"jmespath/{file.name}", file.read_binary()


def _zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(files):
            entry = zipfile.ZipInfo(name, date_time=_DATE_TIME)
            entry.external_attr = _MODE << 16
            entry.create_system = 3  # Unix, wherever it is built, so the mode reads the same
            archive.writestr(entry, files[name], zipfile.ZIP_DEFLATED, _LEVEL)
    return buffer.getvalue()


def runtime_like_lambda(folder: Path) -> Path:
    """`folder`, holding links to the installed RUNTIME_MODULES and nothing else: with the
    unpacked package before it on sys.path of an interpreter without site-packages
    (`python -S -I`), the package runs as Lambda runs it (tests and `make bench` do so)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_MODULES:
        found = importlib.util.find_spec(name)
        origin = Path(found.origin)
        target = origin.parent if found.submodule_search_locations else origin
        (folder / target.name).symlink_to(target)
    return folder
