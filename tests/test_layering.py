"""The layering of docs/architecture.md: tools/ import only strkit.cli, and the import-linter contracts of
.importlinter hold (also run by .ci/run)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_tools_import_only_the_cli() -> None:
    for path in sorted((REPO / "tools").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                assert not name.startswith("strkit") or name.startswith("strkit.cli"), \
                    f"{path.name} imports {name}: tools/ import only strkit.cli"


def test_import_contracts_are_kept() -> None:
    pytest.importorskip("importlinter", reason="import-linter (the test extra) is not installed")
    # the module, not the console script: a script may be missing from PATH (e.g. before a pyenv rehash)
    command = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    run = subprocess.run([sys.executable, "-c", command, "--no-cache"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
