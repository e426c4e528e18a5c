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
    assert checked.stdout.endswith("Contracts: 3 kept, 0 broken.\n")


def lint_imports_with(tmp_path, module: str, imported: str):
    """lint-imports on a copy of the tree whose `module` (a path under runner/) imports
    `imported` in its last line; returns its answer and that line's number."""
    shutil.copytree(
        REPO / "runner", tmp_path / "runner", ignore=shutil.ignore_patterns("__pycache__")
    )
    path = tmp_path / "runner" / module
    path.write_text(path.read_text() + f"\nimport {imported}  # noqa: E402\n")
    return lint_imports(tmp_path), len(path.read_text().splitlines())


def one_broken(contract: str, problem: str) -> str:
    """What lint-imports ends with when `contract` alone is broken, for `problem`."""
    return (
        "Contracts: 2 kept, 1 broken.\n"
        "\n\n"
        "----------------\n"
        "Broken contracts\n"
        "----------------\n"
        "\n"
        f"{contract}\n"
        f"{'-' * len(contract)}\n"
        "\n"
        f"{problem}\n"
        "\n\n"
    )


def test_records_importing_the_loop_breaks_the_layers(tmp_path):
    checked, line = lint_imports_with(tmp_path, "records/transform.py", "runner.loop")

    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert checked.stdout[checked.stdout.index("Contracts: ") :] == one_broken(
        "Layers: cli, commands, function, loop, spec, records, compiler, backends",
        "runner.records is not allowed to import runner.loop:\n\n"
        f"- runner.records.transform -> runner.loop (l.{line})",
    )


def test_the_loop_importing_prometheus_client_breaks_the_metrics_contract(tmp_path):
    checked, line = lint_imports_with(tmp_path, "loop/sink.py", "prometheus_client")

    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert checked.stdout[checked.stdout.index("Contracts: ") :] == one_broken(
        "Only runner.commands.metrics imports prometheus_client",
        "runner is not allowed to import prometheus_client:\n\n"
        f"-   runner.loop.sink -> prometheus_client (l.{line})",
    )
