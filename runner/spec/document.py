"""A spec file as a document: YAML read with the position of every value, `${...}` replaced,
and the shape checked against the JSON Schema. Every problem names FILE:LINE:COL and the path.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import yaml

from runner.plural import count
from runner.spec.problems import SpecError, SpecPath, format_path

SCHEMA_FILE = "pipeline.schema.json"
TEST_SCHEMA_FILE = "pipeline-test.schema.json"  # NAME.test.yaml, made of the spec schema's parts
MAX_SPEC_BYTES = 1024 * 1024
# Bounds that no real spec nears and that refuse a "YAML bomb" before it is expanded: aliases
# repeat what their anchor holds, so ten lines can stand for billions of values.
MAX_ALIASED_VALUES = 100_000
MAX_DEPTH = 64


def schema() -> dict:
    """The JSON Schema of a spec, as shipped inside the package."""
    return _shipped(SCHEMA_FILE)


def schema_of_tests() -> dict:
    """The JSON Schema of a test file (NAME.test.yaml), made of the spec schema's parts."""
    return _shipped(TEST_SCHEMA_FILE)


def _shipped(name: str) -> dict:
    return json.loads(resources.files("runner").joinpath(name).read_text("utf-8"))


def _in_order(located: list[tuple[int, int, str]]) -> list[str]:
    return list(dict.fromkeys(text for _, _, text in sorted(located)))


class Reader:
    """Parses YAML into plain values, remembering where each value and key stands. Messages
    call the file a `noun` (spec, test file) holding a mapping of `keys`."""

    def __init__(
        self, path: Path, noun: str = "spec", keys: str = "pipeline, resources and source"
    ) -> None:
        self.path = path
        self.noun = noun
        self.keys = keys
        self.marks: dict[SpecPath, tuple[int, int]] = {}
        self.key_marks: dict[SpecPath, tuple[int, int]] = {}
        self.problems: list[tuple[int, int, str]] = []
        self.warnings: list[tuple[int, int, str]] = []
        self.raw = b""  # the bytes read

    def problem(
        self,
        path: SpecPath,
        message: str,
        *,
        at_key: bool = False,
        mark: tuple[int, int] | None = None,
    ) -> None:
        """Note a problem at the node of `path` (or its key, or `mark`)."""
        self.problems.append(self._located(path, message, at_key, mark))

    def warning(self, path: SpecPath, message: str, *, mark: tuple[int, int] | None = None) -> None:
        """Note a likely mistake that does not stop the spec from working."""
        self.warnings.append(self._located(path, f"warning: {message}", False, mark))

    def _located(
        self, path: SpecPath, message: str, at_key: bool, mark: tuple[int, int] | None
    ) -> tuple[int, int, str]:
        line, col = mark or self.locate(path, at_key=at_key)
        where = format_path(path)
        return (line, col, f"{self.path}:{line}:{col}: {where + ': ' if where else ''}{message}")

    def locate(self, path: SpecPath, *, at_key: bool = False) -> tuple[int, int]:
        """The line and column of the node of `path` (or of its key), else of the nearest
        node holding it."""
        return (self.key_marks if at_key else self.marks).get(path) or self._nearest(path)

    def _nearest(self, path: SpecPath) -> tuple[int, int]:
        while path and path not in self.marks:
            path = path[:-1]
        return self.marks.get(path, (1, 1))

    def raise_if_any(self, *, strict: bool = False) -> None:
        """Raise every problem, with the warnings among them, in the order of the file;
        `strict` counts warnings as problems."""
        if self.problems or (strict and self.warnings):
            warnings = frozenset(text for _, _, text in self.warnings)
            raise SpecError(_in_order(self.problems + self.warnings), warnings)

    def warning_lines(self) -> tuple[str, ...]:
        return tuple(_in_order(self.warnings))

    def fail(self, line: int, col: int, message: str) -> SpecError:
        return SpecError([f"{self.path}:{line}:{col}: {message}"])

    def read(self) -> Any:
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_SPEC_BYTES + 1)  # a spec may be a pipe or /dev/zero
                size = os.fstat(file.fileno()).st_size
        except FileNotFoundError:
            raise SpecError([f"{self.path}: no such file"]) from None
        except IsADirectoryError:
            raise SpecError([f"{self.path}: is a directory, not a {self.noun} file"]) from None
        except OSError as error:
            raise SpecError([f"{self.path}: cannot read: {error.strerror}"]) from None
        self.raw = raw
        if len(raw) > MAX_SPEC_BYTES:
            told = f"{size} bytes" if size > MAX_SPEC_BYTES else "over 1 MiB"
            raise self.fail(
                1,
                1,
                f"the {self.noun} is {told}; a {self.noun} may be at most 1 MiB "
                f"({MAX_SPEC_BYTES} bytes)",
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SpecError(
                [f"{self.path}: not a text file (not UTF-8 at byte {error.start})"]
            ) from None
        self._check_modeline(text)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise self.fail(
                    1, 1, f"the {self.noun} is empty; expected a mapping with {self.keys}"
                )
            return self._value(loader, node, ())
        except _Refused as error:
            raise self.fail(error.mark.line + 1, error.mark.column + 1, error.message) from None
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            problem = error.problem or error.context or "invalid YAML"
            raise self.fail(line, col, f"invalid YAML: {problem}") from None
        except yaml.YAMLError as error:
            raise SpecError([f"{self.path}: invalid YAML: {error}"]) from None
        finally:
            loader.dispose()

    def _check_modeline(self, text: str) -> None:
        """Warn of a `# yaml-language-server: $schema=PATH` whose file is not there: editors
        would then check nothing, silently. URLs are left to the editor."""
        for number, line in enumerate(text.splitlines(), 1):
            found = _MODELINE.match(line)
            if found is None or _URL.match(found["schema"]):
                continue
            if not (self.path.parent / found["schema"]).is_file():
                self.warning(
                    (),
                    f"the yaml-language-server modeline's $schema '{found['schema']}' does not "
                    f"exist (the path is relative to the {self.noun}'s folder), so editors cannot "
                    f"check the {self.noun}",
                    mark=(number, found.start("schema") + 1),
                )

    def _value(self, loader: yaml.SafeLoader, node: yaml.Node, path: SpecPath) -> Any:
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if not isinstance(key, str):
                    key = str(key)
                child = path + (key,)
                if key in result:
                    first_line = self.key_marks[child][0]
                    self.problem(
                        child, f"duplicate key '{key}' (first at line {first_line})", mark=mark
                    )
                    continue
                self.key_marks[child] = mark
                result[key] = self._value(loader, value_node, child)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [
                self._value(loader, item, path + (index,)) for index, item in enumerate(node.value)
            ]
        if node.tag == "tag:yaml.org,2002:timestamp":
            return node.value  # a YAML timestamp: the user meant the text, as written
        value = loader.construct_object(node, deep=True)
        if isinstance(value, bytes):
            self.problem(path, "binary values are not supported")
            return None
        return value


def is_spec(path: Path) -> bool:
    """Whether the YAML file at `path` is meant as a spec: its (first) document a mapping
    with a top-level `pipeline` key. A file that cannot be read as YAML may be a spec with a
    mistake, so it counts as one (loading it says what is wrong)."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            return True
        loader = _Loader(raw.decode("utf-8"))
        try:
            node = loader.get_node() if loader.check_node() else None  # the first document
        finally:
            loader.dispose()
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return True
    return isinstance(node, yaml.MappingNode) and any(
        isinstance(key, yaml.ScalarNode) and key.value == "pipeline" for key, _ in node.value
    )


class _Refused(yaml.YAMLError):
    def __init__(self, mark: yaml.Mark, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


class _Loader(yaml.SafeLoader):
    """A SafeLoader that refuses, while composing and before anything is expanded, aliases
    repeating more than MAX_ALIASED_VALUES values in all, an alias inside its own anchor,
    and nesting deeper than MAX_DEPTH."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.sizes: dict[int, int] = {}  # id of a composed node -> values it stands for
        self.aliased = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            size = self.sizes.get(id(node))
            if size is None:  # its anchor is still being composed
                raise _Refused(
                    event.start_mark,
                    f"alias *{event.anchor} refers to itself: it stands inside "
                    f"&{event.anchor} (line {node.start_mark.line + 1})",
                )
            self.aliased += size
            if self.aliased > MAX_ALIASED_VALUES:
                raise _Refused(
                    event.start_mark,
                    f"alias *{event.anchor}: aliases would repeat more than "
                    f"{MAX_ALIASED_VALUES} values in all; a spec needs far fewer (a YAML bomb?)",
                )
            return node
        nested = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if nested and self.depth >= MAX_DEPTH:
            raise _Refused(event.start_mark, f"the spec nests deeper than {MAX_DEPTH} levels")
        self.depth += nested
        node = super().compose_node(parent, index)
        self.depth -= nested
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        self.sizes[id(node)] = 1 + sum(self.sizes[id(child)] for child in children)
        return node


_MODELINE = re.compile(r"\s*#\s*yaml-language-server\s*:.*\$schema=(?P<schema>\S+)")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")

_REFERENCE = re.compile(r"\$\$|\$\{([^}]*)\}")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Interpolator:
    """Replaces ${var}, ${env:NAME}, ${account_id} and ${region} in every text value."""

    def __init__(self, reader, document, region, account_id, environ, configured_region) -> None:
        self.reader = reader
        self.document = document
        self.environ = environ
        self._account_id = account_id
        self._account_value: str | None = None
        self.vars: dict[str, Any] = {}
        raw_region = document.get("region") if isinstance(document, dict) else None
        self._region = region or (raw_region if isinstance(raw_region, str) else None)
        self._configured_region = configured_region

    @property
    def region(self) -> str:
        """`--region`, else the spec's, else the target's configuration's (asked only then)."""
        if self._region is None:
            self._region = self._configured_region()
        return self._region

    def run(self) -> Any:
        document = self.document
        if not isinstance(document, dict):
            return document
        declared = document.get("vars")
        if isinstance(declared, dict):
            for name, value in declared.items():
                path = ("vars", name)
                if not _VAR_NAME.match(name):
                    self.reader.problem(
                        path,
                        "a var name is letters, digits and _, not starting with a digit",
                        at_key=True,
                    )
                self.vars[name] = self.value(value, path)
        # Tests are taken as written: their records are data, like those of a stream.
        return {
            key: value if key in ("vars", "tests") else self.value(value, (key,))
            for key, value in document.items()
        }

    def value(self, value: Any, path: SpecPath) -> Any:
        if isinstance(value, dict):
            return {key: self.value(item, path + (key,)) for key, item in value.items()}
        if isinstance(value, list):
            return [self.value(item, path + (index,)) for index, item in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return self.text(value, path)
        return value

    def text(self, text: str, path: SpecPath) -> Any:
        whole = _REFERENCE.fullmatch(text)
        if whole and whole.group(1) is not None:
            # "${count}" alone keeps the var's type, so `shards: ${count}` stays a number.
            return self.resolve(whole.group(1), path)
        return _REFERENCE.sub(
            lambda match: (
                "$" if match.group(1) is None else str(self.resolve(match.group(1), path))
            ),
            text,
        )

    def resolve(self, name: str, path: SpecPath) -> Any:
        if name.startswith("env:"):
            variable = name[4:]
            if variable in self.environ:
                return self.environ[variable]
            self.reader.problem(path, f"${{{name}}}: environment variable {variable} is not set")
            return ""
        if name == "region":
            return self.region
        if name == "account_id":
            if self._account_value is None:
                self._account_value = self._account_id(self.region)
            return self._account_value
        if name in self.vars:
            return self.vars[name]
        known = ", ".join(sorted(self.vars)) or "none"
        self.reader.problem(
            path,
            f"unresolved ${{{name}}} (vars: {known}; "
            "also ${env:NAME}, ${account_id}, ${region})",
        )
        return ""


_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "nothing",
}


def _type_word(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"text {value!r}"
    return repr(value)


def validate_shape(reader: Reader, document: Any, shape: dict | None = None) -> set[SpecPath]:
    """Report every schema error, against the spec's schema or `shape` (which may refer to the
    spec's by its file's name, as schema_of_tests() does); returns the paths of the nodes found
    wrong (for a missing key, the path it would have)."""
    spec_schema = schema()
    registry = referencing.Registry().with_resource(
        SCHEMA_FILE, referencing.Resource.from_contents(spec_schema)
    )
    validator = jsonschema.Draft202012Validator(shape or spec_schema, registry=registry)
    wrong: set[SpecPath] = set()
    for error in validator.iter_errors(document):
        path = tuple(error.absolute_path)
        described = list(_describe(error, path))
        for message, problem_path, at_key in described:
            reader.problem(problem_path, message, at_key=at_key)
        if error.validator == "required":  # the missing keys are wrong, not their whole mapping
            missing = [key for key in error.validator_value if key not in error.instance]
            wrong.update(path + (key,) for key in missing)
        else:
            wrong.update(problem_path for _, problem_path, _ in described)
    return wrong


def fill_defaults(document: Any) -> None:
    """Put the schema's `default` of every key missing from a mapping of the document, so that
    the checks read defaults from the schema, their one source. Parts of the wrong type are
    left as they are (validate_shape reported them)."""
    shape = schema()

    def fill(node: dict, value: Any) -> None:
        if "$ref" in node:  # "#/$defs/NAME", the only references the schema holds
            node = shape["$defs"][node["$ref"].removeprefix("#/$defs/")]
        if isinstance(value, dict):
            properties = node.get("properties", {})
            for key, property_ in properties.items():
                if key not in value and "default" in property_:
                    value[key] = copy.deepcopy(property_["default"])
            for key, item in value.items():
                below = properties.get(key, node.get("additionalProperties"))
                if isinstance(below, dict):
                    fill(below, item)
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for item in value:
                fill(node["items"], item)

    fill(shape, document)


def _describe(
    error: jsonschema.ValidationError, path: SpecPath
) -> Iterator[tuple[str, SpecPath, bool]]:
    kind, subschema, instance = error.validator, error.schema, error.instance
    title = subschema.get("title")
    if kind == "additionalProperties":
        allowed = sorted(subschema.get("properties", {}))
        for key in sorted(set(instance) - set(allowed)):
            hint = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f"did you mean '{hint[0]}'? " if hint else ""
            yield (
                f"unknown key '{key}' ({suggestion}expected one of: {', '.join(allowed)})",
                path + (key,),
                True,
            )
    elif kind == "required":
        missing = error.validator_value
        for key in missing:
            if key not in instance:
                yield f"missing required key '{key}'", path, False
    elif kind == "type":
        expected = error.validator_value
        expected = [expected] if isinstance(expected, str) else expected
        words = " or ".join(_TYPE_WORDS[name] for name in expected)
        yield f"expected {words}, got {_type_word(instance)}", path, False
    elif kind == "enum":
        options = ", ".join(str(option) for option in error.validator_value)
        yield f"expected one of: {options}; got {_type_word(instance)}", path, False
    elif kind in ("minimum", "maximum"):
        bound = "at least" if kind == "minimum" else "at most"
        yield f"expected {bound} {error.validator_value}, got {instance}", path, False
    elif kind in ("minItems", "minProperties", "minLength") and not title:
        yield "must not be empty", path, False
    elif kind == "maxProperties" and title:
        keys = ", ".join(map(str, instance))
        yield f"expected {title}, got {len(instance)} keys: {keys}", path, False
    elif kind == "oneOf" and title:
        # Of a mapping with unknown keys, or no mapping at all, the error naming the unknown
        # key or the type at the same node says what is wrong.
        if isinstance(instance, dict) and set(instance) <= set(subschema.get("properties", {})):
            keys = f"{count(len(instance), 'key')}: " + ", ".join(instance)
            yield f"expected {title}, got {keys if instance else 'an empty mapping'}", path, False
        # A number of the right type outside every range (e.g. lambda.max_record_age_s).
        elif type(instance) is int and subschema.get("type") == "integer":
            yield f"expected {title}, got {instance}", path, False
    elif title:
        yield f"expected {title}, got {_type_word(instance)}", path, False
    else:
        yield error.message, path, False
