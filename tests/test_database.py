"""The database layer on real CairnCMS databases of all three vendors."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from cairn_migrate.instance.database import CAIRNCMS_SYSTEM_TABLES, Database, open_engine
from cairn_migrate.errors import ConfigError, InstanceUnreachable
from cairn_migrate.instance.instance import Instance
from cairn_migrate.testing import build_sqlite_instance, write_env

USER_ROWS = {
    "article_comments": 15,
    "articles": 21,
    "articles_tags": 40,
    "articles_translations": 40,
    "authors": 4,
    "languages": 3,
    "tags": 5,
}


def test_reads_every_vendor(vendor_instance: tuple[str, Path]) -> None:
    vendor, env = vendor_instance
    instance = Instance.from_env_file(env, environ={})
    with Database.open(instance) as db:
        assert db.vendor == {"sqlite": "sqlite", "postgres": "postgres", "mariadb": "mysql"}[vendor]
        assert db.system_tables() == sorted(CAIRNCMS_SYSTEM_TABLES)
        assert db.row_counts(db.user_tables()) == USER_ROWS
        platform = db.platform()
        assert (platform.product, platform.version, platform.latest_migration, platform.migrations) == (
            "cairncms", "1.0.0-beta.4", "20260515A", 66,
        )
        rows = list(db.stream_rows("articles", columns=["id", "title"], order_by=["id"], batch_size=4))
        assert len(rows) == 21
        assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
        if vendor == "mariadb":
            assert "MariaDB" in db.server_version()


def test_stream_rows_yields_lazily(sqlite_instance: Path) -> None:
    with Database.open(Instance.from_env_file(sqlite_instance, environ={})) as db:
        stream = db.stream_rows("directus_activity", batch_size=10)
        first = next(stream)
        assert set(first) >= {"id", "action", "collection", "item"}
        assert sum(1 for _ in stream) == db.row_count("directus_activity") - 1


def _strip_to_directus(db_file: Path, keep_v10: bool) -> None:
    conn = sqlite3.connect(db_file)
    conn.executescript(
        "DROP INDEX IF EXISTS directus_roles_key_unique;"
        "ALTER TABLE directus_roles DROP COLUMN key;"
        "DELETE FROM directus_migrations WHERE version >= '2026';"
    )
    if not keep_v10:
        conn.execute("DELETE FROM directus_migrations WHERE version >= '20230401A'")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(("keep_v10", "major"), [(True, "10+"), (False, "9")])
def test_recognises_directus(tmp_path: Path, fixtures_dir: Path, keep_v10: bool, major: str) -> None:
    env = build_sqlite_instance(fixtures_dir / "sqlite", tmp_path, sql="fresh.sql")
    _strip_to_directus(tmp_path / "data.db", keep_v10)
    with Database.open(Instance.from_env_file(env, environ={})) as db:
        assert (db.platform().product, db.platform().version) == ("directus", major)


def test_an_empty_database_is_not_an_instance(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "empty.db").close()
    env = write_env(tmp_path / ".env", {"DB_CLIENT": "sqlite3", "DB_FILENAME": "empty.db"})
    with Database.open(Instance.from_env_file(env, environ={})) as db:
        assert db.platform().product == "unknown"


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", {"DB_CLIENT": "sqlite3", "DB_FILENAME": "typo.db"})
    with pytest.raises(ConfigError, match="DB_FILENAME points at .*typo.db, which does not exist"):
        open_engine(Instance.from_env_file(env, environ={}))
    assert not (tmp_path / "typo.db").exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("client", ["pg", "mysql"])
def test_server_down_is_unreachable(tmp_path: Path, client: str) -> None:
    env = write_env(
        tmp_path / ".env",
        {"DB_CLIENT": client, "DB_HOST": "127.0.0.1", "DB_PORT": _closed_port(), "DB_DATABASE": "x",
         "DB_USER": "u", "DB_PASSWORD": "p"},
    )
    with pytest.raises(InstanceUnreachable) as info:
        open_engine(Instance.from_env_file(env, environ={}))
    assert "does not answer" in info.value.message
    assert "DB_HOST" in (info.value.hint or "")
    assert "p@" not in str(info.value) and ":p@" not in str(info.value)


@pytest.mark.mariadb
def test_wrong_password_names_the_settings(tmp_path: Path, mariadb_admin_url: str) -> None:
    env = write_env(
        tmp_path / ".env",
        {"DB_CLIENT": "mysql", "DB_HOST": "127.0.0.1", "DB_PORT": 3306, "DB_DATABASE": "mysql",
         "DB_USER": "cairn", "DB_PASSWORD": "wrong-password"},
    )
    with pytest.raises(ConfigError) as info:
        open_engine(Instance.from_env_file(env, environ={}))
    assert "rejected the credentials" in info.value.message
    assert info.value.hint == "check DB_USER and DB_PASSWORD"
    assert "wrong-password" not in str(info.value)


@pytest.mark.postgres
def test_unknown_postgres_database(tmp_path: Path, pg_admin_url: str) -> None:
    env = write_env(
        tmp_path / ".env",
        {"DB_CLIENT": "pg", "DB_HOST": "127.0.0.1", "DB_PORT": 5432, "DB_DATABASE": "no_such_db_here", "DB_USER": "postgres"},
    )
    with pytest.raises(ConfigError, match="DB_DATABASE does not exist"):
        open_engine(Instance.from_env_file(env, environ={}))
