"""Schema and config snapshots against the real CairnCMS output of the same databases.

The oracle is ``tests/fixtures/<vendor>/schema-snapshot.yaml`` (``cairncms
schema snapshot``) and ``tests/fixtures/<vendor>/config/`` (``cairncms config
snapshot``), both made by CairnCMS 1.0.0-beta.4 on the database that
``seeded.sql`` restores.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
import yaml

from cairn_migrate.bundle.config_snapshot import (
    ConfigDirectoryError,
    SnapshotError,
    config_snapshot,
    read_config_directory,
    write_config_directory,
)
from cairn_migrate.instance.database import Database
from cairn_migrate.errors import MigrateError
from cairn_migrate.instance.instance import Instance
from cairn_migrate.bundle.schema_snapshot import (
    dump_schema_snapshot,
    load_schema_snapshot,
    schema_snapshot,
    write_schema_snapshot,
)

FIXTURES = Path(__file__).parent / "fixtures"
VERSION = "1.0.0-beta.4"


def open_db(env_path: Path) -> Database:
    return Database.open(Instance.from_env_file(env_path))


def relative_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------
# Config snapshot
# ---------------------------------------------------------------------------
def test_config_snapshot_matches_cairncms(vendor_instance: tuple[str, Path], tmp_path: Path) -> None:
    vendor, env_path = vendor_instance
    fixture = FIXTURES / vendor / "config"
    with open_db(env_path) as db:
        config = config_snapshot(db)

    assert config == read_config_directory(fixture)
    assert [r["key"] for r in config["roles"]] == ["administrator", "editor"]
    assert [s["role"] for s in config["permissions"]] == ["editor", "public"]
    editor = next(r for r in config["roles"] if r["key"] == "editor")
    assert editor["admin_access"] is False and editor["app_access"] is True and editor["enforce_tfa"] is False
    assert "id" not in editor

    out = tmp_path / "config"
    write_config_directory(config, out)
    assert relative_files(out) == relative_files(fixture)
    for name in relative_files(fixture):
        assert (out / name).read_bytes() == (fixture / name).read_bytes(), name


def test_write_config_directory_removes_stale_files(sqlite_instance: Path, tmp_path: Path) -> None:
    out = tmp_path / "config"
    (out / "roles").mkdir(parents=True)
    (out / "permissions").mkdir()
    (out / "roles" / "gone.yaml").write_text("key: gone\n")
    (out / "permissions" / "gone.yaml").write_text("role: gone\npermissions: []\n")
    (out / "roles" / "notes.txt").write_text("kept")
    with open_db(sqlite_instance) as db:
        write_config_directory(config_snapshot(db), out)
    assert not (out / "roles" / "gone.yaml").exists()
    assert not (out / "permissions" / "gone.yaml").exists()
    assert (out / "roles" / "notes.txt").exists()
    assert read_config_directory(out)["roles"][0]["key"] == "administrator"


def _sqlite_file(env_path: Path) -> Path:
    return env_path.parent / "data.db"


def test_duplicate_permission_tuple_raises(sqlite_instance: Path) -> None:
    connection = sqlite3.connect(_sqlite_file(sqlite_instance))
    try:
        connection.execute("DROP INDEX directus_permissions_identity_unique")
        connection.execute(
            "INSERT INTO directus_permissions (role, collection, action, permissions, fields) "
            "SELECT role, collection, action, permissions, fields FROM directus_permissions WHERE id = 1"
        )
        connection.commit()
    finally:
        connection.close()
    with open_db(sqlite_instance) as db, pytest.raises(SnapshotError) as caught:
        config_snapshot(db)
    assert isinstance(caught.value, MigrateError)
    assert caught.value.details == {"role": "editor", "collection": "articles", "action": "read"}
    assert "Duplicate permission" in str(caught.value)


def test_config_snapshot_casts_and_orphans(sqlite_instance: Path, caplog: pytest.LogCaptureFixture) -> None:
    connection = sqlite3.connect(_sqlite_file(sqlite_instance))
    try:
        connection.execute("PRAGMA foreign_keys = OFF")
        connection.execute(
            "UPDATE directus_roles SET ip_access = '10.0.0.2,10.0.0.1', description = NULL WHERE key = 'editor'"
        )
        connection.execute("UPDATE directus_permissions SET validation = '{not json', fields = '' WHERE id = 1")
        connection.execute(
            "INSERT INTO directus_permissions (role, collection, action, fields) "
            "VALUES ('11111111-1111-1111-1111-111111111111', 'tags', 'read', '*')"
        )
        connection.commit()
    finally:
        connection.close()
    with caplog.at_level(logging.WARNING, logger="cairn_migrate.bundle.config_snapshot"), open_db(sqlite_instance) as db:
        config = config_snapshot(db)
    editor = next(r for r in config["roles"] if r["key"] == "editor")
    assert editor["ip_access"] == ["10.0.0.1", "10.0.0.2"]
    assert "description" not in editor
    admin = next(r for r in config["roles"] if r["key"] == "administrator")
    assert "ip_access" not in admin
    read_articles = next(
        p
        for p in next(s for s in config["permissions"] if s["role"] == "editor")["permissions"]
        if (p["collection"], p["action"]) == ("articles", "read")
    )
    assert read_articles["validation"] is None and read_articles["fields"] == []
    assert read_articles["permissions"] == {}
    assert "failed to parse validation" in caplog.text
    assert "non-existent role 11111111-1111-1111-1111-111111111111" in caplog.text
    assert sum(len(s["permissions"]) for s in config["permissions"]) == 12


# ---------------------------------------------------------------------------
# Config directory reading rules
# ---------------------------------------------------------------------------
@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "config"
    shutil.copytree(FIXTURES / "sqlite" / "config", dest)
    return dest


def test_read_config_directory_reads_the_fixture(config_dir: Path) -> None:
    config = read_config_directory(config_dir)
    assert config["manifest"] == {"version": 1, "resources": ["roles", "permissions"]}
    assert sorted(r["key"] for r in config["roles"]) == ["administrator", "editor"]
    assert sorted(s["role"] for s in config["permissions"]) == ["editor", "public"]


def test_read_config_directory_rejects_public_role(config_dir: Path) -> None:
    (config_dir / "roles" / "public.yaml").write_text("key: public\nname: Public\n")
    with pytest.raises(ConfigDirectoryError, match="reserved"):
        read_config_directory(config_dir)


def test_read_config_directory_rejects_filename_not_key(config_dir: Path) -> None:
    (config_dir / "roles" / "editor.yaml").rename(config_dir / "roles" / "writer.yaml")
    with pytest.raises(ConfigDirectoryError, match="filename must match key"):
        read_config_directory(config_dir)


def test_read_config_directory_rejects_permission_filename_not_role(config_dir: Path) -> None:
    (config_dir / "permissions" / "public.yaml").rename(config_dir / "permissions" / "anonymous.yaml")
    with pytest.raises(ConfigDirectoryError, match="filename must match role"):
        read_config_directory(config_dir)


def test_read_config_directory_rejects_orphan_permission_file(config_dir: Path) -> None:
    (config_dir / "roles" / "editor.yaml").unlink()
    with pytest.raises(ConfigDirectoryError, match="no matching file in roles"):
        read_config_directory(config_dir)


def test_read_config_directory_rejects_missing_manifest(config_dir: Path) -> None:
    (config_dir / "cairncms-config.yaml").unlink()
    with pytest.raises(ConfigDirectoryError, match="manifest not found"):
        read_config_directory(config_dir)


@pytest.mark.parametrize("manifest", ["version: 2\nresources: [roles]\n", "resources: [roles]\n", "version: true\n"])
def test_read_config_directory_rejects_bad_version(config_dir: Path, manifest: str) -> None:
    (config_dir / "cairncms-config.yaml").write_text(manifest)
    with pytest.raises(ConfigDirectoryError, match="Unsupported config version"):
        read_config_directory(config_dir)


def test_read_config_directory_ignores_yml_and_interpolates(config_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (config_dir / "roles" / "public.yml").write_text("key: public\n")  # .yml is never read
    role = config_dir / "roles" / "editor.yaml"
    role.write_text(role.read_text().replace("name: Editor", "name: '{{EDITOR_NAME}}'").replace(
        "description: Edits articles", "description: '{{NOT_SET_ANYWHERE}}'"))
    with caplog.at_level(logging.WARNING, logger="cairn_migrate.bundle.config_snapshot"):
        config = read_config_directory(config_dir, environ={"EDITOR_NAME": "Writers"})
    editor = next(r for r in config["roles"] if r["key"] == "editor")
    assert editor["name"] == "Writers"
    assert editor["description"] == "{{NOT_SET_ANYWHERE}}"
    assert "Unresolved env var {{NOT_SET_ANYWHERE}}" in caplog.text


# ---------------------------------------------------------------------------
# Schema snapshot
# ---------------------------------------------------------------------------
def test_schema_snapshot_matches_cairncms(vendor_instance: tuple[str, Path], tmp_path: Path) -> None:
    vendor, env_path = vendor_instance
    fixture_path = FIXTURES / vendor / "schema-snapshot.yaml"
    expected = yaml.safe_load(fixture_path.read_text(encoding="utf-8"))
    with open_db(env_path) as db:
        snapshot = schema_snapshot(db, version=VERSION)

    assert {k: snapshot[k] for k in ("version", "directus", "vendor")} == {
        k: expected[k] for k in ("version", "directus", "vendor")
    }
    assert snapshot["collections"] == expected["collections"]
    assert snapshot["relations"] == expected["relations"]
    assert [(f["collection"], f["field"]) for f in snapshot["fields"]] == [
        (f["collection"], f["field"]) for f in expected["fields"]
    ]
    for ours, theirs in zip(snapshot["fields"], expected["fields"]):
        assert ours == theirs, (ours["collection"], ours["field"])
    # Key order (pick order of sanitize-schema) is part of the format.
    for ours, theirs in zip(snapshot["fields"], expected["fields"]):
        assert list(ours) == list(theirs)
        if "schema" in theirs:
            assert list(ours["schema"]) == list(theirs["schema"])
    for ours, theirs in zip(snapshot["relations"], expected["relations"]):
        assert list(ours) == list(theirs) and list(ours["schema"]) == list(theirs["schema"])

    assert snapshot == expected
    # Byte for byte what `cairncms schema snapshot` wrote.
    assert dump_schema_snapshot(snapshot) == fixture_path.read_text(encoding="utf-8")

    written = write_schema_snapshot(snapshot, tmp_path / "snapshot.yaml")
    assert load_schema_snapshot(written) == snapshot
    as_json = write_schema_snapshot(snapshot, tmp_path / "snapshot.json")
    assert json.loads(as_json.read_text(encoding="utf-8")) == snapshot
    assert "\n" not in as_json.read_text(encoding="utf-8")


def test_schema_snapshot_plain_table_and_custom_system_field(sqlite_instance: Path) -> None:
    """A table without metadata is a collection with ``meta: null``; its columns get ``meta: null``."""
    connection = sqlite3.connect(_sqlite_file(sqlite_instance))
    try:
        connection.execute("CREATE TABLE audit_log (id integer primary key autoincrement, note varchar(40) default 'x')")
        connection.execute("CREATE TABLE no_pk (a integer, b integer)")
        connection.execute("ALTER TABLE directus_users ADD COLUMN nickname varchar(50)")
        connection.execute(
            "INSERT INTO directus_fields (collection, field, interface, special) "
            "VALUES ('directus_users', 'nickname', 'input', NULL)"
        )
        connection.commit()
    finally:
        connection.close()
    with open_db(sqlite_instance) as db:
        snapshot = schema_snapshot(db, version=VERSION)
    collections = {c["collection"]: c for c in snapshot["collections"]}
    assert collections["audit_log"] == {"collection": "audit_log", "meta": None, "schema": {"name": "audit_log"}}
    assert collections["no_pk"]["meta"] is None
    assert not any(name.startswith("directus_") for name in collections)
    fields = {(f["collection"], f["field"]): f for f in snapshot["fields"]}
    assert fields[("audit_log", "id")]["meta"] is None
    assert fields[("audit_log", "id")]["schema"]["has_auto_increment"] is True
    assert fields[("audit_log", "note")]["schema"]["default_value"] == "x"
    assert fields[("audit_log", "note")]["schema"]["max_length"] == 40
    assert ("no_pk", "a") not in fields  # CairnCMS ignores tables without a single primary key
    assert fields[("directus_users", "nickname")]["meta"]["interface"] == "input"
    assert [k for k in fields if k[0] == "directus_users"] == [("directus_users", "nickname")]
