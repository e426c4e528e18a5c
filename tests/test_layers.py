"""The layers' import contract (setup.cfg, `make lint`): the tree keeps it, and a layer that
imports one above it breaks it."""

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(where: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts, on the `runner` package found in `where`."""
    return subprocess.run(
        [LINT_IMPORTS, REPO / "setup.cfg", "--no-cache", "--no-logo"],
        cwd=where,
        env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(where)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_the_layers():
    checked = lint_imports(REPO)

    assert (checked.returncode, checked.stderr) == (0, ""), checked.stdout + checked.stderr
    assert checked.stdout.endswith("Contracts: 2 kept, 0 broken.\n")


def test_records_importing_the_loop_breaks_the_layers(tmp_path):
    shutil.copytree(
        REPO / "runner", tmp_path / "runner", ignore=shutil.ignore_patterns("__pycache__")
    )
    transform = tmp_path / "runner" / "records" / "transform.py"
    transform.write_text(transform.read_text() + "\nimport runner.loop  # noqa: E402\n")
    line = len(transform.read_text().splitlines())

    checked = lint_imports(tmp_path)

    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert checked.stdout[checked.stdout.index("Contracts: ") :] == (
        "Contracts: 1 kept, 1 broken.\n"
        "\n\n"
        "----------------\n"
        "Broken contracts\n"
        "----------------\n"
        "\n"
        "Layers: cli, commands, function, loop, spec, records, compiler, backends\n"
        "------------------------------------------------------------------------\n"
        "\n"
        "runner.records is not allowed to import runner.loop:\n"
        "\n"
        f"- runner.records.transform -> runner.loop (l.{line})\n"
        "\n\n"
    )
