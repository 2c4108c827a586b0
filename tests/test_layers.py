"""The shells stay thin: no database, storage or cloud library below the CLI, the views or the admin module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"sqlalchemy", "fsspec", "boto3", "s3fs", "gcsfs", "adlfs", "psycopg", "pymysql"}
SHELLS = [*sorted((ROOT / "extension" / "cli").glob("*.py")), *sorted((ROOT / "endpoints").glob("*.py"))]


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_shells_do_not_import_storage_or_database_libraries() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & FORBIDDEN) for p in SHELLS}
    assert {k: v for k, v in offenders.items() if v} == {}
