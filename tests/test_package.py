"""The Lambda package (runner/function/package.py): the same bytes for the same code and spec,
only what runs in the function, and the unpacked zip working as the Lambda runtime runs it,
without PyYAML, jsonschema or click."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
from conftest import FIXED_NOW, MINIMAL, PIPELINES

from runner import spec
from runner.function import package
from runner.function.packaged import packed
from runner.records.processor import Journey

SCENARIO = PIPELINES / "ecommerce.yaml"
SESSION = (PIPELINES / "samples" / "session.json").read_bytes()
RECORDS = [
    SESSION,
    SESSION.replace(b'"USA"', b'"Peru"'),
    SESSION.replace(b'"quantity": 2', b'"quantity": "two"'),
    b"{not json",
    b"\xff",
]


def entries(built):
    return zipfile.ZipFile(io.BytesIO(built.code)).infolist()


def outcomes(loaded):
    """What the spec does to RECORDS at FIXED_NOW, as JSON text."""
    journey = Journey(loaded.transform, loaded.route, clock=lambda: FIXED_NOW.timestamp())
    done = [journey.process(record) for record in RECORDS]
    return json.dumps(
        [[o.kind, list(o.sinks), o.partition_key, o.payload.decode(), o.reason] for o in done]
    )


def test_two_builds_of_a_spec_are_the_same_bytes_of_fixed_dates_and_modes():
    first, second = (package.build(spec.load(SCENARIO)) for _ in range(2))

    assert first.code == second.code
    assert (first.size, first.sha256) == (second.size, second.sha256)
    infos = entries(first)
    assert [info.filename for info in infos] == sorted(info.filename for info in infos)
    assert {
        (info.date_time, oct(info.external_attr >> 16), info.create_system, info.compress_type)
        for info in infos
    } == {((1980, 1, 1, 0, 0, 0), "0o100644", 3, zipfile.ZIP_DEFLATED)}


def test_a_build_in_another_interpreter_is_the_same_bytes():
    """Other hash seeds (another order of sets), another time: the same zip."""
    build = (
        "from runner import spec; from runner.function import package; "
        f"print(package.build(spec.load({str(SCENARIO)!r})).sha256)"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", build],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }

    assert seen == {package.build(spec.load(SCENARIO)).sha256}


def test_the_sha256_is_lambdas_code_sha256_the_base64_of_the_digest():
    empty = package.Package(b"")  # sha256 e3b0c442...b855, as Lambda writes it

    assert (empty.sha256, empty.size) == ("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", 0)


def test_an_edit_of_the_spec_changes_the_package(write_spec):
    before = package.build(spec.load(write_spec(MINIMAL)))
    after = package.build(spec.load(write_spec(MINIMAL.replace("shards: 2", "shards: 3"))))

    assert before.sha256 != after.sha256


def test_an_edit_of_the_code_changes_the_package(tmp_path):
    loaded = spec.load(SCENARIO)
    copied = tmp_path / "runner"
    shutil.copytree(package.RUNNER, copied)
    assert package.build(loaded, runner=copied).code == package.build(loaded).code

    routing = copied / "records" / "routing.py"
    routing.write_text(routing.read_text() + "\n# an edit\n")

    assert package.build(loaded, runner=copied).code != package.build(loaded).code


def test_the_package_holds_the_run_time_modules_jmespath_and_the_spec_only():
    built = package.build(spec.load(SCENARIO))
    names = [info.filename for info in entries(built)]
    print(f"package of {SCENARIO.name}: {built.size:,} bytes, {len(names)} files")

    assert built.size < 5 * 1024 * 1024
    assert sorted({name.split("/")[0] for name in names}) == [
        "jmespath",
        "pipeline-spec.json",
        "runner",
    ]
    assert sorted({name.rsplit("/", 1)[0] for name in names if name.startswith("runner/")}) == [
        "runner",
        "runner/backends",
        "runner/backends/aws",
        "runner/backends/base",
        "runner/compiler",
        "runner/function",
        "runner/loop",
        "runner/records",
        "runner/spec",
    ]
    assert [name for name in names if name.count("/") == 1 and name.startswith("runner/")] == [
        "runner/__init__.py",
        "runner/plural.py",
    ]
    assert [name for name in names if not name.endswith(".py")] == [
        "jmespath/LICENSE",
        "pipeline-spec.json",
    ]


@pytest.fixture
def in_lambda(tmp_path):
    """Runs Python code as the Lambda runtime runs the unpacked scenario package: a fresh
    interpreter without site-packages, with the package and the runtime's modules on sys.path;
    returns what it prints."""
    task = tmp_path / "task"
    built = package.build(spec.load(SCENARIO))
    zipfile.ZipFile(io.BytesIO(built.code)).extractall(task)
    runtime = package.runtime_like_lambda(tmp_path / "runtime")

    def run(code: str) -> str:
        prelude = f"import sys\nsys.path[:0] = [{str(task)!r}, {str(runtime)!r}]\n"
        done = subprocess.run(
            [sys.executable, "-S", "-I", "-c", prelude + textwrap.dedent(code)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        return done.stdout

    return run


def test_every_module_of_the_package_imports_without_yaml_jsonschema_or_click(in_lambda):
    printed = in_lambda(
        """
        import importlib.util, pathlib
        import jmespath, runner
        for name in ("yaml", "jsonschema", "click"):
            print(name, "absent" if importlib.util.find_spec(name) is None else "present")
        print("jmespath from the package:", pathlib.Path(jmespath.__file__).parts[-3] == "task")
        root = pathlib.Path(runner.__file__).parent.parent
        for path in sorted(root.glob("runner/**/*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            if name != "runner.spec.document":  # the YAML reader, which `load` imports
                importlib.import_module(name.removesuffix(".__init__"))
        print("imported", sorted(name for name in sys.modules if name.startswith("runner.spec")))
        """
    )

    assert printed == (
        "yaml absent\njsonschema absent\nclick absent\njmespath from the package: True\n"
        "imported ['runner.spec', 'runner.spec.checks', 'runner.spec.model', "
        "'runner.spec.position', 'runner.spec.problems', 'runner.spec.testing']\n"
    )


def test_the_unpacked_package_processes_records_as_the_runner_does(in_lambda):
    printed = in_lambda(
        f"""
        import datetime, json
        from runner.function.packaged import load_packaged
        from runner.records.processor import Journey
        loaded = load_packaged()
        print(loaded.pipeline, loaded.path, loaded.version, sorted(loaded.streams))
        now = datetime.datetime.fromisoformat({FIXED_NOW.isoformat()!r}).timestamp()
        journey = Journey(loaded.transform, loaded.route, clock=lambda: now)
        done = [journey.process(record) for record in {RECORDS!r}]
        print(json.dumps(
            [[o.kind, list(o.sinks), o.partition_key, o.payload.decode(), o.reason] for o in done]
        ))
        """
    )

    loaded = spec.load(SCENARIO)
    held = json.loads(packed(loaded))["version"]  # of what the package holds, not the file's
    assert printed == (
        f"de-c2w2lab1-etl ecommerce.yaml {held} "
        "['international', 'source', 'usa']\n" + outcomes(loaded) + "\n"
    )
