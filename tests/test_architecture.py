"""docs/architecture.md says what the code does: its claims checked, not only its module names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from test_layers import imported_roots

from cairn_migrate import operations
from cairn_migrate.service.app import get_state
from cairn_migrate.operations import Outcome

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
#: The shells: the CLI verbs and the HTTP views.
SHELLS = [*sorted((ROOT / "extension" / "cli").glob("*.py")), *sorted((ROOT / "endpoints").glob("*.py"))]
#: The core modules that do an operation's work; a shell reaches them only through the registry.
CORE = {"operations.export", "operations.restore", "operations.verify", "operations.inspection",
        "operations.file_rows", "operations.storage_move", "ledger.scripts", "operations.install", "bundle.bundle",
        "instance.database", "instance.storage", "bundle.native", "bundle.table_loader"}


def _table_rows(heading_cell: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with ``heading_cell``."""
    lines = TEXT.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {heading_cell} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_operation_table_is_the_registry() -> None:
    rows = _table_rows("operation")
    documented = {row[0].strip("`"): row for row in rows}
    registered = {op.name: op for op in operations.all_operations()}
    assert sorted(documented) == sorted(registered)
    for name, op in registered.items():
        _, verb, alias, dry_run = documented[name]
        assert verb == f"`{op.cli}`", name
        if op.route:
            assert re.fullmatch(rf"`(GET|POST) {re.escape(op.route)}`", alias), (name, alias)
        elif op.http:
            assert alias == "— (`POST /migrate/ops` only)", (name, alias)
        else:
            assert alias == "— (CLI only: `POST /migrate/ops` refuses it)", (name, alias)
        assert (op.plan is not None) == dry_run.startswith("`dry_run`"), name


def test_the_outcome_table_is_the_mapping() -> None:
    rows = _table_rows("outcome")
    documented = {re.match(r"`(\w+)`", row[0]).group(1): row for row in rows}  # type: ignore[union-attr]
    assert set(documented) == {o.value for o in Outcome}
    for outcome in Outcome:
        _, code, state, status = documented[outcome.value]
        assert int(code) == outcome.exit_code and state.startswith(outcome.job_state)
        assert int(status) == outcome.http_status


def test_every_job_kind_is_an_operation(app: Any) -> None:
    """"The job runner runs any operation": the app registers exactly the registry's operations."""
    assert get_state(app).runner.kinds == sorted(op.name for op in operations.all_operations())


def test_the_shells_reach_the_core_only_through_the_registry() -> None:
    """The views and the CLI verbs import no core module (nor, per test_layers, a database or storage library)."""
    offenders = {}
    for path in SHELLS:
        tree_imports = _package_imports(path)
        if tree_imports & CORE:
            offenders[str(path.relative_to(ROOT))] = sorted(tree_imports & CORE)
    assert offenders == {}
    assert not set().union(*(imported_roots(p) for p in SHELLS)) & {"sqlalchemy", "fsspec", "boto3"}


def _package_imports(path: Path) -> set[str]:
    """The package modules a file imports, named under ``cairn_migrate`` (``from ..operations.file_rows import x``
    in ``extension/cli/files.py`` → ``operations.file_rows``; ``from ..bundle import native`` → ``bundle.native``)."""
    import ast

    folder = path.parent.relative_to(ROOT).parts
    package = ["extension", *folder[1:]] if folder[0] == "extension" else ["extension", *folder]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1][1:] + (node.module.split(".") if node.module else [])
            found.add(".".join(base))
            found.update(".".join([*base, alias.name]) for alias in node.names)
    return found


def test_the_module_tables_name_real_files() -> None:
    """Every module the tables name is at that path (relative to ``extension/``, or to the repository for
    ``endpoints/``, ``hooks/``, ``admin_module/`` …), and the layout table lists every package folder."""
    lines = [line for line in TEXT.splitlines() if line.startswith("| `")]
    named = {p for line in lines for p in re.findall(r"`([\w/]+\.py)`", line.split("|")[1])}
    assert len(named) > 40
    missing = sorted(p for p in named if not (ROOT / "extension" / p).is_file() and not (ROOT / p).is_file())
    assert missing == []
    layout = {row[0].strip("`/") for row in _table_rows("folder") if row[0].startswith("`")}
    folders = {p.parent.name for p in (ROOT / "extension").glob("*/__init__.py")}
    assert layout == folders
