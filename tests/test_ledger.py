"""The migration ledger: names, versions, scripts, and the ``.js`` twin run by real knex."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from servers import CACHE, server_missing
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import make_instance
from test_file_rows import inst

from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.errors import ConfigError
from cairn_migrate.ledger.ledger import LedgerConflict, MigrationLedger, format_title, name_of, version_of
from cairn_migrate.ledger.scripts import (
    Revision,
    RevisionGraph,
    downgrade,
    generated_twin,
    list_migrations,
    record_generated,
    upgrade,
)

NODE_DIR = CACHE / "node"


@pytest.mark.parametrize(("filename", "version", "name"), [
    ("20300101A-add-audit-log.js", "20300101A", "Add Audit Log"),
    ("20260417A-add-role-key.ts", "20260417A", "Add Role Key"),
    ("20210519A-add-system-fk-triggers.js", "20210519A", "Add System Fk Triggers"),
    ("20261125A-move-files-local-to-s3.js", "20261125A", "Move Files Local to S3"),
    ("20220429C-drop-non-null-from-ip-of-activity.js", "20220429C", "Drop Non Null From IP of Activity"),
    ("20201028A-remove-collection-foreign-keys.js", "20201028A", "Remove Collection Foreign Keys"),
    ("2026-01-01-x.js", "2026", "01 01 X"),
])
def test_names_are_derived_like_cairncms(filename: str, version: str, name: str) -> None:
    assert version_of(filename) == version
    assert name_of(filename) == name


def test_format_title_special_words() -> None:
    assert format_title("public_role_sentinel") == "Public Role Sentinel"
    assert format_title("usePostgresqlUUID") == "Use PostgreSQL UUID"
    assert format_title("a_tale_of_the_api") == "A Tale of the API"


def test_revision_graph_orders_dependencies_then_versions() -> None:
    graph = RevisionGraph([Revision("20300102A", down_revision="20300103A"), Revision("20300103A"),
                           Revision("20300101A")])
    assert graph.ordered() == ["20300101A", "20300103A", "20300102A"]


def test_versions_are_unique_across_table_folder_and_scripts(sqlite_instance: Path) -> None:
    instance = inst(sqlite_instance)
    with Database.open(instance) as db:
        ledger = MigrationLedger(db, instance.extensions_path)
        day = dt.date(2030, 1, 1)
        assert ledger.allocate_version(day) == "20300101A"
        ledger.folder.mkdir(parents=True)
        (ledger.folder / "20300101A-someone-elses.js").write_text("export async function up() {}\n")
        with db.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO directus_migrations (version, name) VALUES ('20300101B', 'X')"))
        assert ledger.allocate_version(day, extra=["20300101C"]) == "20300101D"
        for taken in ("20300101A", "20300101B", "20210519A"):
            with pytest.raises(LedgerConflict, match="Migration keys collide"):
                ledger.ensure_free(taken)
        with pytest.raises(ConfigError):
            ledger.ensure_free("2030-01-01")


SCRIPT = '''
revision = "{revision}"
name = "add-audit-note"
javascript_up = "await knex('directus_settings').update({{ public_note: 'audited' }});"
javascript_down = "await knex('directus_settings').update({{ public_note: null }});"

def upgrade(ctx):
    ctx.execute("UPDATE directus_settings SET public_note = :n", n="audited")

def downgrade(ctx):
    ctx.execute("UPDATE directus_settings SET public_note = NULL")
'''


def note(env: Path) -> object:
    with Database.open(inst(env)) as db, db.engine.connect() as conn:
        return conn.execute(sa.text("SELECT public_note FROM directus_settings")).scalar()


@pytest.mark.parametrize("vendor", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                                    pytest.param("mariadb", marks=pytest.mark.mariadb)])
def test_script_up_list_down(vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = make_instance(vendor, tmp_path / vendor, request)
    scripts = tmp_path / "scripts"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "versions" / "20300101A_add_audit_note.py").write_text(SCRIPT.format(revision="20300101A"))
    assert [m["state"] for m in list_migrations(inst(env), scripts)["migrations"]] == ["pending"]
    assert upgrade(inst(env), versions_dir=scripts, dry_run=True)["applied"] == []
    done = upgrade(inst(env), versions_dir=scripts)
    assert [a["name"] for a in done["applied"]] == ["Add Audit Note"]
    assert note(env) == "audited"
    twin = inst(env).extensions_path / "migrations" / "20300101A-add-audit-note.js"
    assert "public_note: 'audited'" in twin.read_text()
    listed = list_migrations(inst(env), scripts)["migrations"]
    assert listed[0]["state"] == "applied" and listed[0]["name"] == "Add Audit Note"
    downgrade(inst(env), versions_dir=scripts)
    assert note(env) is None and not twin.exists()
    with Database.open(inst(env)) as db:
        assert "20300101A" not in {r["version"] for r in MigrationLedger(db, twin.parent).recorded()}


def test_down_with_nothing_applied_is_nothing_to_do(sqlite_instance: Path, tmp_path: Path) -> None:
    """Like ``up`` with nothing pending: exit 0 with a line; a named version that is not applied stays an error."""
    scripts = tmp_path / "scripts"
    (scripts / "versions").mkdir(parents=True)
    for extra in ([], ["--dry-run"]):
        result = CliRunner().invoke(cli, ["--env", str(sqlite_instance), "migrations", "down", "--scripts",
                                          str(scripts), *extra])
        assert result.exit_code == 0, result.output
        assert result.output == "nothing to revert: no cairn-migrate migration is applied\n"
    result = CliRunner().invoke(cli, ["--env", str(sqlite_instance), "migrations", "down", "20300101A",
                                      "--scripts", str(scripts)])
    assert result.exit_code == 3 and "migration 20300101A is not an applied cairn-migrate migration" in result.output


def test_script_colliding_with_a_builtin_version_is_refused(sqlite_instance: Path, tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "versions" / "20210519A_clash.py").write_text(SCRIPT.format(revision="20210519A"))
    result = CliRunner().invoke(cli, ["--env", str(sqlite_instance), "migrations", "up", "--scripts", str(scripts)])
    assert result.exit_code == 3 and "already used" in result.output
    (scripts / "versions" / "20210519A_clash.py").write_text("def upgrade(ctx): pass\n")
    result = CliRunner().invoke(cli, ["--env", str(sqlite_instance), "migrations", "list", "--scripts", str(scripts)])
    assert result.exit_code == 2 and "revision" in result.output


def test_generated_twin_is_valid_javascript(tmp_path: Path) -> None:
    if shutil.which("node") is None:
        server_missing("node", "not installed")
    data = {"from": "local", "to": "s3", "ids": ["a"], "renames": [["b", "old.txt", "b.txt"]]}
    path = tmp_path / "twin.mjs"
    path.write_text(generated_twin("20300101A", "Move Files Local to S3", data))
    subprocess.run(["node", "--check", str(path)], check=True)


RUNNER = textwrap.dedent("""
    import { createRequire } from 'node:module';
    const require = createRequire(process.env.NODE_BASE + '/');
    const knex = require('knex')(JSON.parse(process.argv[2]));
    try {
        const migration = await import(process.argv[3]);
        await migration[process.argv[4]](knex);
    } finally {
        await knex.destroy();
    }
""")


def _knex_config(env: Path) -> dict:
    database = inst(env).database
    if database.vendor == "sqlite":
        return {"client": "better-sqlite3", "connection": {"filename": database.url.database}, "useNullAsDefault": True}
    url = database.url
    client = "pg" if database.vendor == "postgres" else "mysql2"
    return {"client": client, "connection": {"host": url.host, "port": url.port, "user": url.username,
                                             "password": url.password, "database": url.database}}


@pytest.mark.parametrize("vendor", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                                    pytest.param("mariadb", marks=pytest.mark.mariadb)])
def test_knex_runs_the_twin_like_python(vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """CairnCMS's own migrate:down/up path: real knex runs the generated file and gets Python's rows."""
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "knex").is_dir():
        server_missing("knex", "not installed in the cache (CAIRN_CACHE/node); scripts/setup --test installs it")
    env = make_instance(vendor, tmp_path / vendor, request)

    def state() -> dict[str, tuple[str, str]]:
        with Database.open(inst(env)) as db:
            return {str(r["id"]): (r["storage"], r["filename_disk"])
                    for r in db.stream_rows("directus_files", columns=["id", "storage", "filename_disk"])}

    before = state()
    ids = sorted(before)
    data = {"from": "local", "to": "s3", "ids": ids[:2], "renames": [[ids[2], before[ids[2]][1], "renamed.bin"]]}
    with Database.open(inst(env)) as db:
        report = record_generated(inst(env), db, "move-files-local-to-s3", data, version="20300101A",
                                  versions_dir=tmp_path / "none")
    python_after = state()
    assert python_after[ids[2]] == ("s3", "renamed.bin") and python_after[ids[0]][0] == "s3"
    # run the twin as CairnCMS would (ES module: the Docker image's package.json says "type": "module")
    folder = tmp_path / "cms"
    folder.mkdir()
    (folder / "package.json").write_text('{"type": "module"}')
    twin = folder / Path(report["file"]).name
    shutil.copy(report["file"], twin)
    (folder / "run.mjs").write_text(RUNNER)
    environ = {**os.environ, "NODE_BASE": str(NODE_DIR)}
    config = json.dumps(_knex_config(env))
    subprocess.run(["node", str(folder / "run.mjs"), config, str(twin), "down"], check=True, env=environ)
    assert state() == before
    subprocess.run(["node", str(folder / "run.mjs"), config, str(twin), "up"], check=True, env=environ)
    assert state() == python_after
