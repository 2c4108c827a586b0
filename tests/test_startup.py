"""Start-up cost (issue 14): each ``cairn-migrate`` process imports only what its command runs.

At 100k rows a profile put 35-66 % of each export/import/verify process's CPU in importing the CLI and
the operation registry.  These tests run the real console entry point in a fresh interpreter (a
subprocess: ``sys.modules`` of the test process is shared by every test) and read which modules it
loaded, so an eager import added anywhere on the path fails here by name instead of silently costing
every process again:

- ``--help`` (and the CLI module itself) loads no database, HTTP, YAML, validation or terminal library;
- a SQLite clone (``inspect``, ``export``, ``import``, ``verify``, neutral and ``--native``) loads neither
  PostgreSQL's nor MySQL's driver or SQLAlchemy dialect, no HTTP client and no terminal library.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Run the CLI's entry point as the console script does, then print the modules the process loaded.
_RUN = """
import json, sys
sys.argv = ["cairn-migrate", *sys.argv[1:]]
from cairn_migrate.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
sys.stdout.write("\\n@@MODULES@@" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

#: Nothing but the CLI's own (click) for the help: every verb imports its work when it runs.
NOT_FOR_HELP = ("sqlalchemy", "marshmallow", "requests", "urllib3", "rich", "yaml", "psycopg", "pymysql", "MySQLdb",
                "flask", "boto3", "botocore", "fsspec", "cryptography", "orjson", "apscheduler", "alembic")
#: Never in a process that only works on SQLite and local files.
NOT_FOR_SQLITE = ("psycopg", "pymysql", "MySQLdb", "sqlalchemy.dialects.postgresql", "sqlalchemy.dialects.mysql",
                  "requests", "urllib3", "rich", "flask", "boto3", "botocore", "apscheduler")


def _loaded(*args: str, env: dict[str, str] | None = None) -> tuple[int, set[str]]:
    result = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})}, cwd=ROOT)
    assert "@@MODULES@@" in result.stdout, result.stderr
    answer = json.loads(result.stdout.rsplit("@@MODULES@@", 1)[1])
    return answer["code"], set(answer["modules"])


def _present(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name in modules]


def test_help_imports_no_library_of_any_command() -> None:
    code, modules = _loaded("--help")
    assert code == 0
    assert _present(modules, NOT_FOR_HELP) == []
    assert not [m for m in modules if m.startswith("cairn_migrate.operations.") and m != "cairn_migrate.operations.limits"]


def test_ops_list_reads_the_schemas_it_lists() -> None:
    """The registry builds its schemas when asked for them (here: to list every parameter)."""
    code, modules = _loaded("ops", "list", "--json")
    assert code == 0
    assert "marshmallow" in modules and "cairn_migrate.operations.params" in modules
    assert _present(modules, ("requests", "psycopg", "pymysql", "rich")) == []


@pytest.mark.parametrize("native", [False, True], ids=["neutral", "native"])
def test_a_sqlite_clone_loads_no_other_vendor_and_no_http(native: bool, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT / "examples" / "sample-instance", source)
    target = tmp_path / "target"
    target.mkdir()
    (target / ".env").write_text((source / ".env").read_text())  # its own data.db and uploads/ beside it
    env = {"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"}
    bundle = str(tmp_path / "bundle")
    steps = [("inspect", "--env", str(source / ".env"), "inspect"),
             ("export", "--env", str(source / ".env"), "export", "--full", "-o", bundle, *(["--native"] if native else [])),
             ("import", "--env", str(target / ".env"), "import", bundle),
             ("verify", "--env", str(target / ".env"), "verify", bundle, "--json")]
    for verb, *args in steps:
        code, modules = _loaded(*args, env=env)
        assert code == 0, verb
        assert _present(modules, NOT_FOR_SQLITE) == [], verb
        assert "sqlalchemy.dialects.sqlite" in modules, verb  # it did open the database
        if verb != "export":  # export writes the YAML schema snapshot; the others read no YAML
            assert "yaml" not in modules, verb


def test_the_import_marker_keeps_its_column_types_with_the_mysql_dialect_loaded_late() -> None:
    """The marker's ``tables`` column: LONGTEXT on MySQL/MariaDB (TEXT stops at 64 KiB), TEXT elsewhere, as before
    the MySQL dialect was imported only for MySQL."""
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql, postgresql, sqlite

    from cairn_migrate.bundle import import_marker

    def ddl(dialect: sa.Dialect) -> str:
        text = str(sa.schema.CreateTable(import_marker._marker).compile(dialect=dialect))
        return next(line.strip() for line in text.splitlines() if line.strip().startswith("tables "))

    assert ddl(mysql.dialect()) == "tables LONGTEXT NOT NULL,"
    assert ddl(postgresql.dialect()) == "tables TEXT NOT NULL,"
    assert ddl(sqlite.dialect()) == "tables TEXT NOT NULL,"
