"""Real CairnCMS instances on SQLite, PostgreSQL and MariaDB, built per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest
import sqlalchemy as sa
from servers import USED, MARIADB_ADMIN_URL, MARIADB_USER, PG_ADMIN_URL, ensure_mariadb_user, probe, record, server_missing

from cairn_migrate.testing import (
    build_sqlite_instance,
    copy_uploads,
    create_mariadb_database,
    create_postgres_database,
    drop_mariadb_database,
    drop_postgres_database,
    instance_env,
    server_env,
    write_env,
)

pytest_plugins = ["instance_fixtures", "storage_servers", "live_instance"]

FIXTURES = Path(__file__).parent / "fixtures"
VENDORS = ("sqlite", "postgres", "mariadb")


#: Fixtures whose use means a real server took part in the test.
SERVER_FIXTURES = {"pg_admin_url": "PostgreSQL", "mariadb_admin_url": "MariaDB", "live_instance": "CairnCMS 1.0.0-beta.4",
                   "cairncms": "CairnCMS 1.0.0-beta.4", "directus_instance": "Directus 9.22.4", "chromium_path": "Chromium"}


@pytest.fixture(autouse=True)
def _record_servers(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for fixture, server in SERVER_FIXTURES.items():
        if fixture in request.fixturenames:
            record(server)


@pytest.fixture(autouse=True)
def _standard_signals() -> Iterator[None]:
    """Each test starts with Python's own Ctrl-C handler and SIGTERM's default, neither blocked.

    Processes a test starts inherit an ignored signal or a blocked mask (not a Python handler): once any earlier
    code left SIGINT ignored or blocked in this process, every later Ctrl-C test's ``cairn-migrate`` child ran
    on through its SIGINT (the whole-suite run failed them; alone they passed).
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many tests talked to each real server (for the closing notes)."""
    if USED:
        terminalreporter.write_line("tests per real server: " + ", ".join(
            f"{server} {len(tests)}" for server, tests in sorted(USED.items())))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    reason = probe(PG_ADMIN_URL, "postgresql+psycopg")
    if reason:
        server_missing("PostgreSQL", reason)
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
def mariadb_admin_url() -> str:
    reason = probe(MARIADB_ADMIN_URL, "mysql+pymysql")
    if reason:
        server_missing("MariaDB", reason)
    ensure_mariadb_user(MARIADB_ADMIN_URL)
    return MARIADB_ADMIN_URL


def make_instance(vendor: str, dest: Path, request: pytest.FixtureRequest, *, sql: str = "seeded.sql",
                  extra_env: dict[str, object] | None = None) -> Path:
    """Build the recorded ``vendor`` instance under ``dest`` and return its ``.env`` path."""
    fixture = FIXTURES / vendor
    if vendor == "sqlite":
        return build_sqlite_instance(fixture, dest, sql=sql, extra_env=extra_env)
    dest.mkdir(parents=True, exist_ok=True)
    if vendor == "postgres":
        admin = request.getfixturevalue("pg_admin_url")
        name = create_postgres_database(admin, fixture / sql)
        request.addfinalizer(lambda: drop_postgres_database(admin, name))
        database = server_env(admin, name, "pg")
    else:
        admin = request.getfixturevalue("mariadb_admin_url")
        name = create_mariadb_database(admin, fixture / sql)
        request.addfinalizer(lambda: drop_mariadb_database(admin, name))
        database = server_env(admin, name, "mysql")
        database["DB_USER"], database["DB_PASSWORD"] = MARIADB_USER
    copy_uploads(fixture, dest)
    return write_env(dest / ".env", instance_env(fixture, database, extra_env))


def query(env: Path, sql: str, **params: Any) -> list[Any]:
    """Run ``sql`` in the database of the instance whose ``.env`` is ``env`` (committed); its rows, if any.

    The process environment is left out (``environ={}``), so only the ``.env`` names the database.
    """
    from cairn_migrate.instance.database import Database
    from cairn_migrate.instance.instance import Instance

    with Database.open(Instance.from_env_file(env, environ={})) as db, db.engine.begin() as conn:
        result = conn.execute(sa.text(sql), params)
        return list(result.all()) if result.returns_rows else []


def populated_postgres_target(name: str, base: Path, request: pytest.FixtureRequest, url: str, token: str) -> Path:
    """The recorded PostgreSQL instance under ``base/name``, served at ``url``, its content renamed.

    Its articles, authors and tags keep their keys but get other slugs, emails and names (``pg-``/``PG ``),
    so a move into it must renumber integer keys rather than match the source's rows; the admin's
    static token is ``token``.
    """
    target = make_instance("postgres", base / name, request,
                           extra_env={"HOST": "127.0.0.1", "PORT": url.rsplit(":", 1)[1], "PUBLIC_URL": url,
                                      "LOG_STYLE": "raw"})
    query(target, "UPDATE articles SET slug = 'pg-' || slug, title = 'PG ' || title")
    query(target, "UPDATE authors SET email = 'pg-' || email, name = 'PG ' || name")
    query(target, "UPDATE tags SET slug = 'pg-' || slug, name = 'PG ' || name")
    query(target, "UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'", t=token)
    return target


@pytest.fixture
def sqlite_instance(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    return make_instance("sqlite", tmp_path / "sqlite", request)


@pytest.fixture
def postgres_instance(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    return make_instance("postgres", tmp_path / "postgres", request)


@pytest.fixture
def mariadb_instance(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    return make_instance("mariadb", tmp_path / "mariadb", request)


@pytest.fixture(params=VENDORS)
def vendor_instance(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``(vendor, env_path)`` for each of the three recorded instances."""
    vendor = request.param
    if vendor != "sqlite":
        request.applymarker(getattr(pytest.mark, vendor if vendor != "postgres" else "postgres"))
    yield vendor, make_instance(vendor, tmp_path / vendor, request)


def make_empty_instance(vendor: str, dest: Path, request: pytest.FixtureRequest,
                        extra_env: dict[str, object] | None = None) -> Path:
    """An instance with an empty database on ``vendor`` (an import target); its uploads folder does not exist yet."""
    fixture = FIXTURES / vendor
    dest.mkdir(parents=True, exist_ok=True)
    if vendor == "sqlite":
        database: dict[str, object] = {"DB_CLIENT": "sqlite3", "DB_FILENAME": "./data.db"}
    elif vendor == "postgres":
        admin = request.getfixturevalue("pg_admin_url")
        name = create_postgres_database(admin)
        request.addfinalizer(lambda: drop_postgres_database(admin, name))
        database = server_env(admin, name, "pg")
    else:
        admin = request.getfixturevalue("mariadb_admin_url")
        name = create_mariadb_database(admin)
        request.addfinalizer(lambda: drop_mariadb_database(admin, name))
        database = server_env(admin, name, "mysql")
        database["DB_USER"], database["DB_PASSWORD"] = MARIADB_USER
    return write_env(dest / ".env", instance_env(fixture, database, extra_env))
