"""Builders for real CairnCMS instances, for our tests and for plugin authors.

Each builder restores a database recorded from a real CairnCMS (a plain SQL
dump per vendor) into a real SQLite file, PostgreSQL database or MariaDB
database, and writes the ``.env`` an instance on it would have.  Nothing here
mocks a database: the point of the tests is to read what CairnCMS wrote.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from .instance.envfile import read_env_file

#: Keys a fixture's ``env`` sets for its database; replaced when it moves.
_DB_KEYS = ("DB_CLIENT", "DB_HOST", "DB_PORT", "DB_DATABASE", "DB_USER", "DB_PASSWORD", "DB_FILENAME")


def write_env(path: Path, values: Mapping[str, object]) -> Path:
    """Write a dotenv file (values quoted only where needed)."""
    lines = []
    for key, value in values.items():
        text = "" if value is None else str(value)
        if any(ch in text for ch in " #\"'"):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key}={text}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def instance_env(fixture: Path, database: Mapping[str, object], extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """The fixture's own env with its database settings replaced by ``database``."""
    values: dict[str, object] = {k: v for k, v in read_env_file(fixture / "env").items() if k not in _DB_KEYS}
    values.update(database)
    values.update(extra or {})
    return values


def copy_uploads(fixture: Path, dest: Path) -> Path:
    uploads = dest / "uploads"
    shutil.copytree(fixture / "uploads", uploads, dirs_exist_ok=True)
    return uploads


def build_sqlite_instance(
    fixture: Path, dest: Path, *, sql: str = "seeded.sql", extra_env: Mapping[str, object] | None = None
) -> Path:
    """Restore ``fixture/<sql>`` into ``dest/data.db``, copy the uploads, return ``dest/.env``."""
    dest.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(dest / "data.db")
    try:
        connection.executescript((fixture / sql).read_text(encoding="utf-8"))
    finally:
        connection.close()
    copy_uploads(fixture, dest)
    env = instance_env(fixture, {"DB_CLIENT": "sqlite3", "DB_FILENAME": "./data.db"}, extra_env)
    return write_env(dest / ".env", env)


def _database_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def create_postgres_database(admin_url: str, sql_file: Path | None = None, *, prefix: str = "cm_test") -> str:
    """Create a fresh database and (optionally) load a ``pg_dump`` plain-SQL file into it with ``psql``."""
    name = _database_name(prefix)
    engine = sa.create_engine(make_url(admin_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    if sql_file is not None:
        url = make_url(admin_url)
        command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", url.host or "127.0.0.1"]
        command += ["-p", str(url.port or 5432), "-U", url.username or "postgres", "-d", name, "-f", str(sql_file)]
        env = {"PGPASSWORD": url.password or "", "PATH": "/usr/bin:/bin:/usr/local/bin"}
        subprocess.run(command, check=True, capture_output=True, env=env)
    return name


def drop_postgres_database(admin_url: str, name: str) -> None:
    engine = sa.create_engine(make_url(admin_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


#: The database collation when neither ``collate`` nor the dump names one.
DEFAULT_COLLATION = "utf8mb4_unicode_ci"


def dump_collation(sql_file: Path) -> str | None:
    """The table collation a ``mariadb-dump`` file creates its tables with (the most common ``COLLATE=``)."""
    counts: dict[str, int] = {}
    with open(sql_file, encoding="utf-8", errors="replace") as dump:
        for line in dump:
            for found in re.findall(r"COLLATE=(utf8mb4_[a-z0-9_]+)", line):
                counts[found] = counts.get(found, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def create_mariadb_database(admin_url: str, sql_file: Path | None = None, *, prefix: str = "cm_test",
                            collate: str | None = None) -> str:
    """Create a fresh utf8mb4 database and (optionally) load a ``mariadb-dump`` file with the ``mariadb`` client.

    The database's collation is ``collate``; by default the one the dump's tables were created with (a
    recorded CairnCMS dump's are ``utf8mb4_general_ci``), else :data:`DEFAULT_COLLATION`.  It matters for
    tables created later in the database: MariaDB refuses a new table's foreign key to a column of another
    collation (errno 150), so a target made from a dump must keep the dump's collation for a schema apply.
    """
    collate = collate or (dump_collation(sql_file) if sql_file is not None else None) or DEFAULT_COLLATION
    if not re.fullmatch(r"utf8mb4_[a-z0-9_]+", collate):
        raise ValueError(f"not a utf8mb4 collation: {collate!r}")
    name = _database_name(prefix)
    engine = sa.create_engine(make_url(admin_url).set(drivername="mysql+pymysql"))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE {collate}"))
    finally:
        engine.dispose()
    if sql_file is not None:
        url = make_url(admin_url)
        client = shutil.which("mariadb") or shutil.which("mysql") or "mariadb"
        command = [client, "-h", url.host or "127.0.0.1", "-P", str(url.port or 3306), "-u", url.username or "root"]
        if url.password:
            command.append(f"-p{url.password}")
        command.append(name)
        with open(sql_file, "rb") as stdin:
            subprocess.run(command, check=True, stdin=stdin, capture_output=True)
    return name


def drop_mariadb_database(admin_url: str, name: str) -> None:
    engine = sa.create_engine(make_url(admin_url).set(drivername="mysql+pymysql"))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    finally:
        engine.dispose()


def server_env(admin_url: str, database: str, client: str) -> dict[str, object]:
    """The ``DB_*`` settings of an instance whose database ``database`` lives on ``admin_url``'s server."""
    url = make_url(admin_url)
    values: dict[str, object] = {
        "DB_CLIENT": client,
        "DB_HOST": url.host or "127.0.0.1",
        "DB_PORT": url.port or (5432 if client == "pg" else 3306),
        "DB_DATABASE": database,
        "DB_USER": url.username or ("postgres" if client == "pg" else "root"),
    }
    if url.password:
        values["DB_PASSWORD"] = url.password
    return values
