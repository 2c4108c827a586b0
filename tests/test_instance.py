"""An instance read from its ``.env``: database URL, storage locations, identity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairn_migrate.errors import ConfigError, UnsupportedDriver
from cairn_migrate.instance.instance import Instance

FIXTURES = Path(__file__).parent / "fixtures"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".env"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("vendor", "client", "drivername"),
    [("sqlite", "sqlite3", "sqlite"), ("postgres", "pg", "postgresql+psycopg"), ("mariadb", "mysql", "mysql+pymysql")],
)
def test_fixture_envs_parse(vendor: str, client: str, drivername: str) -> None:
    instance = Instance.from_env_file(FIXTURES / vendor / "env", environ={})
    assert instance.database.client == client
    assert instance.database.url.drivername == drivername
    assert instance.key == "c1a1f0e2-7a55-4d3c-9b7e-0a9d1f2e3c4b"
    assert instance.secret and instance.secret.startswith("test-secret-")
    assert [loc.name for loc in instance.locations] == ["local"]
    assert instance.locations[0].options["root"] == str((FIXTURES / vendor / "uploads").resolve())
    assert "cairn-pass" not in instance.database.display_url


def test_relative_paths_resolve_against_the_env_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = write(tmp_path, "DB_CLIENT=sqlite3\nDB_FILENAME=./db/data.db\nSTORAGE_LOCAL_ROOT=files\nEXTENSIONS_PATH=ext\n")
    monkeypatch.chdir(os.sep)
    instance = Instance.from_env_file(env, environ={})
    assert instance.database.url.database == str(tmp_path / "db" / "data.db")
    assert instance.location("local").options["root"] == str(tmp_path / "files")
    assert instance.extensions_path == tmp_path / "ext"


def test_connection_string_is_used_for_postgres(tmp_path: Path) -> None:
    env = write(tmp_path, "DB_CLIENT=pg\nDB_CONNECTION_STRING=postgres://u:p%40ss@db.example:6543/cms\n")
    url = Instance.from_env_file(env, environ={}).database.url
    assert (url.drivername, url.host, url.port, url.database, url.password) == (
        "postgresql+psycopg", "db.example", 6543, "cms", "p@ss",
    )


def test_several_locations_with_driver_options(tmp_path: Path) -> None:
    env = write(
        tmp_path,
        "DB_CLIENT=sqlite3\nDB_FILENAME=x.db\nSTORAGE_LOCATIONS=local,s3\n"
        "STORAGE_S3_DRIVER=s3\nSTORAGE_S3_BUCKET=media\nSTORAGE_S3_KEY=AKIA\nSTORAGE_S3_SECRET=string:a,b\n"
        "STORAGE_S3_ENDPOINT=http://127.0.0.1:8333\nSTORAGE_S3_FORCE_PATH_STYLE=true\nSTORAGE_S3_ROOT=/uploads/\n",
    )
    instance = Instance.from_env_file(env, environ={})
    s3 = instance.location("s3")
    assert s3.driver == "s3"
    assert dict(s3.options) == {
        "bucket": "media",
        "key": "AKIA",
        "secret": "a,b",
        "endpoint": "http://127.0.0.1:8333",
        "forcePathStyle": True,
        "root": "/uploads/",
    }
    with pytest.raises(ConfigError, match="'gcs' is not configured"):
        instance.location("gcs")


@pytest.mark.parametrize(
    ("text", "error", "fragment"),
    [
        ("DB_FILENAME=x.db\n", ConfigError, "DB_CLIENT is not set"),
        ("DB_CLIENT=oracle9\n", ConfigError, "DB_CLIENT='oracle9' is not a database client"),
        ("DB_CLIENT=mssql\n", UnsupportedDriver, "DB_CLIENT=mssql is not supported"),
        ("DB_CLIENT=pg\nDB_PORT=5432\nDB_DATABASE=x\nDB_USER=u\n", ConfigError, "needs DB_HOST"),
        ("DB_CLIENT=mysql\nDB_HOST=h\nDB_PORT=3306\nDB_DATABASE=x\nDB_USER=u\n", ConfigError, "needs DB_PASSWORD"),
        ("DB_CLIENT=sqlite3\n", ConfigError, "needs DB_FILENAME"),
        ("DB_CLIENT=sqlite3\nDB_FILENAME=x\nSTORAGE_LOCAL_DRIVER=ftp\n", ConfigError, "STORAGE_LOCAL_DRIVER='ftp'"),
        ("DB_CLIENT=sqlite3\nDB_FILENAME=x\nSTORAGE_LOCATIONS=s3\n", ConfigError, "'s3' has no driver"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path: Path, text: str, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as info:
        Instance.from_env_file(write(tmp_path, text), environ={})
    assert fragment in str(info.value)
    assert info.value.hint  # every config error says how to fix it
