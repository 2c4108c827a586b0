"""``promote`` across vendors against real CairnCMS 1.0.0-beta.4: the SQLite fixture's structure onto fresh
PostgreSQL and MariaDB instances (``--force``), and a second promote that says no changes.

The source is a snapshot directory made from the recorded SQLite fixture (``schema-snapshot.yaml`` +
``config/``), plus one table without a ``directus_collections`` row (``meta: null``); each target is a
fresh instance in a database of its own (the recorded bootstrap of each vendor; on MariaDB in a database of
the dump's collation), served by real CairnCMS.  The extras (flows, dashboards, presets, settings) of the
SQLite fixture are promoted onto both too.  One boot per vendor: each test first promotes the
structure it starts from, so each also holds alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import FIXTURES, make_instance
from live_instance import Platform, free_port, server_env, start_server, stop_process

from cairn_migrate.bundle.config_snapshot import load_yaml
from cairn_migrate.bundle.schema_snapshot import write_schema_snapshot
from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.operations.promote_noise import type_drift

TOKEN = "promote-cross-vendor-admin-token-0123"
FIXTURE = FIXTURES / "sqlite"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
#: The snapshot's vendor name of each target.
VENDORS = {"mariadb": "mysql", "postgres": "postgres"}


@dataclass
class Target:
    vendor: str
    url: str
    env: Path
    folder: Path

    def get(self, path: str) -> Any:
        response = requests.get(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["data"]


@pytest.fixture(scope="module", params=["mariadb", "postgres"])
def target(cairncms: Platform, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Target]:
    """A fresh CairnCMS on MariaDB (``cairncms bootstrap`` in a new database) or PostgreSQL (the recorded
    bootstrap in a new database), running, with an admin token."""
    vendor = request.param
    base = tmp_path_factory.mktemp(f"promote-{vendor}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The recorded bootstrap on both vendors.  On MariaDB its database takes the dump's collation
    # (utf8mb4_general_ci, create_mariadb_database's default for a dump): in a utf8mb4_unicode_ci database
    # MariaDB refuses a new table's FK to the dump's directus_files.id (errno 150).
    env = make_instance(vendor, base / "dst", request, sql="fresh.sql",
                        extra_env={"HOST": "127.0.0.1", "PORT": port, "PUBLIC_URL": url, "LOG_STYLE": "raw"})
    (env.parent / "package.json").write_text('{"name": "promote-target", "private": true}\n')
    with Database.open(Instance.from_env_file(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'"), {"t": TOKEN})
    server = start_server(cairncms, env.parent, url, server_env(), base / "cairncms.log")
    try:
        yield Target(vendor, url, env, env.parent)
    finally:
        stop_process(server)


@pytest.fixture(autouse=True)
def state_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    return tmp_path / "state"


def sqlite_schema() -> dict[str, Any]:
    return load_yaml((FIXTURE / "schema-snapshot.yaml").read_text(encoding="utf-8"))


def source_dir(folder: Path, schema: dict[str, Any] | None = None) -> Path:
    shutil.copytree(FIXTURE / "config", folder / "config")
    write_schema_snapshot(schema or sqlite_schema(), folder / "schema.yaml")
    return folder


def promote(source: Path, target: Target, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["promote", "--from", str(source), "--to", target.url, "--to-token", TOKEN, *args])
    return result.exit_code, result.output


def promote_json(source: Path, target: Target, *args: str) -> tuple[int, dict[str, Any]]:
    code, output = promote(source, target, "--json", *args)
    return code, json.loads(output)


def with_meta_null_table(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema plus ``legacy_log``: a table with no ``directus_collections`` or ``directus_fields`` rows."""
    id_field = next(f for f in schema["fields"] if (f["collection"], f["field"]) == ("authors", "id"))
    note = next(f for f in schema["fields"] if (f["collection"], f["field"]) == ("authors", "name"))
    schema["collections"].append({"collection": "legacy_log", "meta": None, "schema": {"name": "legacy_log"}})
    for field in (id_field, note):
        schema["fields"].append({**field, "collection": "legacy_log", "meta": None,
                                 "schema": {**field["schema"], "table": "legacy_log"}})
    schema["fields"].sort(key=lambda f: (f["collection"], f["field"]))
    schema["collections"].sort(key=lambda c: c["collection"])
    return schema


def cairncms_cli(target: Target, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``cairncms`` CLI in the target's folder (it reads the target's ``.env``)."""
    return subprocess.run([str(SCRIPTS / "cairncms"), "cli", str(target.folder), *args], capture_output=True,
                          text=True, timeout=180, env={**server_env(), "LOG_LEVEL": "error"})


def test_the_sqlite_structure_reaches_the_target_and_a_second_promote_has_no_changes(target: Target, tmp_path: Path) -> None:
    schema = with_meta_null_table(sqlite_schema())
    source = source_dir(tmp_path / "src", schema)
    code, output = promote(source, target)
    assert code == 2 and f"refused: the source's vendor sqlite differs from the target's {VENDORS[target.vendor]}" in output

    code, output = promote(source, target, "--force")
    assert code == 0, output
    assert output.splitlines()[-1] == "applied", output
    native = {"mariadb": "timestamp timestamp", "postgres": "timestamp timestamp with time zone"}[target.vendor]
    assert f"  articles.date_created: timestamp datetime -> {native}" not in output.splitlines(), output  # not lossy
    assert "type drift on the target: 0 lossy, " in output and "LOSSY" not in output
    served = {c["collection"] for c in target.get("/collections") if not c["collection"].startswith("directus_")}
    assert served == {c["collection"] for c in schema["collections"]}
    fields = {(f["collection"], f["field"]) for f in target.get("/fields") if not (f.get("meta") or {}).get("system")}
    assert fields == {(f["collection"], f["field"]) for f in schema["fields"]}
    relations = {(r["collection"], r["field"], r["related_collection"]) for r in target.get("/relations")
                 if not (r.get("meta") or {}).get("system")}
    assert relations == {(r["collection"], r["field"], r["related_collection"]) for r in schema["relations"]}
    assert {r["key"] for r in target.get("/roles")} == {"administrator", "editor", "public"}
    editor = next(r["id"] for r in target.get("/roles") if r["key"] == "editor")
    granted = {(p["collection"], p["action"]) for p in target.get(f"/permissions?filter[role][_eq]={editor}&limit=-1")}
    wanted = load_yaml((FIXTURE / "config" / "permissions" / "editor.yaml").read_text())["permissions"]
    assert granted == {(p["collection"], p["action"]) for p in wanted}

    code, report = promote_json(source, target, "--force")  # already applied: nothing to apply, no drift to report
    assert (code, report["changes"], report.get("type_drift")) == (0, False, None), report
    code, plan = promote_json(source, target, "--force", "--dry-run")
    assert (code, plan["changes"], plan["schema"]["steps"]) == (0, False, []), plan
    assert plan["schema"]["vendor_noise"] > 0  # CairnCMS's own diff is not empty: the vendors spell types apart
    code, output = promote(source, target, "--force")
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output


def test_cairncms_config_apply_of_the_source_config_has_no_changes_after_a_promote(target: Target, tmp_path: Path) -> None:
    source = source_dir(tmp_path / "src", with_meta_null_table(sqlite_schema()))
    assert promote(source, target, "--force")[0] == 0
    planned = cairncms_cli(target, "config", "apply", str(source / "config"), "--dry-run", "--format", "json")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    # CairnCMS's logger shares stdout (its collation warnings on MariaDB, JSON lines too): the answer is the JSON
    # object with "changes".
    answers = [json.loads(line) for line in planned.stdout.splitlines() if line.startswith("{")]
    assert [a for a in answers if "changes" in a] == [{"changes": False, "plan": None}], planned.stdout


def test_a_real_cross_vendor_change_still_shows(target: Target, tmp_path: Path) -> None:
    """Vendor noise is dropped, a real difference is not: a string column's new length shows and reaches the target."""
    base = with_meta_null_table(sqlite_schema())
    assert promote(source_dir(tmp_path / "base", base), target, "--force")[0] == 0
    schema = with_meta_null_table(sqlite_schema())
    color = next(f for f in schema["fields"] if (f["collection"], f["field"]) == ("tags", "color"))
    color["schema"]["max_length"] = 120
    source = source_dir(tmp_path / "src", schema)
    code, plan = promote_json(source, target, "--force", "--dry-run")
    assert code == 1, plan
    assert plan["schema"]["steps"] == ["~ field tags.color (schema.max_length)"]
    code, output = promote(source, target, "--force")
    assert code == 0, output
    assert target.get("/fields/tags/color")["schema"]["max_length"] == 120
    code, output = promote(source, target, "--force", "--dry-run")
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output


def test_lossy_type_drift_is_named_against_the_real_target(target: Target, tmp_path: Path) -> None:
    """The drift rules on the target's real snapshot after a forced promote: a source declaring more than the
    target holds (a longer string, another type) is lossy; the vendors' spellings are not.  (No fixture
    apply makes a lossy column on these targets, so the source side is edited here.)"""
    assert promote(source_dir(tmp_path / "base", with_meta_null_table(sqlite_schema())), target, "--force")[0] == 0
    source = sqlite_schema()
    fields = {(f["collection"], f["field"]): f for f in source["fields"]}
    fields[("tags", "color")]["schema"]["max_length"] = 300
    fields[("authors", "rating")]["type"] = "decimal"
    drift = {d["field"]: d for d in type_drift(source, target.get("/schema/snapshot"))}
    assert drift["tags.color"]["lossy"] and drift["tags.color"]["reasons"] == ["max_length 300 became 255"]
    assert drift["authors.rating"]["reasons"] == ["type decimal became float"]
    assert not drift["articles.date_created"]["lossy"]
    assert [name for name, d in drift.items() if d["lossy"]] == ["authors.rating", "tags.color"]


def test_the_extras_reach_the_target_and_a_flow_runs(target: Target, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    """Flows, dashboards, presets, settings and translations of the SQLite fixture onto MariaDB and PostgreSQL
    through the target's API (config first: a role preset needs its role)."""
    from test_promote_extras_live import ONLY, TRANSLATIONS, source_with_extras

    source = source_with_extras(tmp_path / "src", request, target)  # type: ignore[arg-type]
    code, output = promote(source, target, *ONLY)
    assert code == 0, output
    flow = next(f for f in target.get("/flows?limit=-1") if f["name"] == "Ping")
    ran = requests.get(f"{target.url}/flows/trigger/{flow['id']}?word={target.vendor}",
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert ran.status_code == 200 and ran.json()["shape"] == {"shaped": target.vendor}, ran.text
    dashboard = next(d for d in target.get("/dashboards?limit=-1") if d["name"] == "Editorial")
    assert len(target.get(f"/panels?filter[dashboard][_eq]={dashboard['id']}")) == 3
    assert {p["collection"] for p in target.get("/presets?limit=-1")} == {"articles", "authors"}
    assert target.get("/settings")["translation_strings"] == TRANSLATIONS
    code, output = promote(source, target, *ONLY)
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output


def test_uuid_keys_from_postgresql_onto_a_running_mariadb_are_the_same_fields(
        cairncms: Platform, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Operator trial, the API engine: the PostgreSQL fixture plus one new field onto the MariaDB fixture served
    by real CairnCMS.  CairnCMS's own ``/schema/diff`` reports the uuid foreign keys (``char(36)`` typed
    ``string`` on MariaDB) as ``string -> uuid``; they are the same fields: the plan lists only the new field, no
    data loss, the promote applies it with nothing "not applied", and a second promote says no changes."""
    from test_promote_offline import _add_subtitle

    source = make_instance("postgres", tmp_path / "src", request)
    _add_subtitle(source)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = make_instance("mariadb", tmp_path / "dst", request,
                        extra_env={"HOST": "127.0.0.1", "PORT": port, "PUBLIC_URL": url, "LOG_STYLE": "raw"})
    (env.parent / "package.json").write_text('{"name": "promote-target", "private": true}\n')
    with Database.open(Instance.from_env_file(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'"), {"t": TOKEN})
    server = start_server(cairncms, env.parent, url, server_env(), tmp_path / "cairncms.log")
    try:
        target = Target("mariadb", url, env, env.parent)
        code, plan = promote_json(source, target, "--only", "schema", "--force", "--dry-run")
        assert code == 1, plan
        assert plan["schema"]["steps"] == ["+ field articles.subtitle"], plan
        assert (plan["schema"]["data_loss"], plan["refused"]) == ([], []), plan
        code, output = promote(source, target, "--only", "schema", "--force")
        assert code == 0 and "not applied" not in output, output
        assert target.get("/fields/articles/subtitle")["type"] == "string"
        code, output = promote(source, target, "--only", "schema", "--force")
        assert (code, output.splitlines()[-1]) == (0, "no changes"), output
    finally:
        stop_process(server)
