"""Where the real database servers are, and what to do when one is missing.

The servers are started by ``scripts/servers start`` (which ``scripts/test``
and ``.ci/run`` call).  Under ``CI=true`` a missing server fails the test that
needs it; elsewhere it skips with a message that says how to start it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get("CAIRN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MARIADB_ADMIN_URL = os.environ.get("CAIRN_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/")

#: Slow-to-build test dependencies (CairnCMS, Directus, knex, Azurite) live here, outside the repo,
#: so a fresh clone reuses them; the scripts use the same rule (``scripts/cache-dir``).
CACHE = Path(os.environ.get("CAIRN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cairn-migrate")

# The MariaDB user instances connect as: CairnCMS insists on a DB_PASSWORD for
# MySQL, so tests use a user with one (test-only credentials).
MARIADB_USER = ("cairn", "cairn-pass")


def server_missing(name: str, reason: str) -> None:
    """Fail under CI, skip elsewhere."""
    message = f"{name} is not reachable ({reason}); start it with: scripts/servers start"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def probe(url: str, driver: str) -> str | None:
    """``None`` when the server answers, else the reason."""
    engine = sa.create_engine(make_url(url).set(drivername=driver), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except Exception as exc:  # any driver error means "not usable"
        return str(exc).splitlines()[0]
    finally:
        engine.dispose()


def ensure_mariadb_user(admin_url: str) -> None:
    user, password = MARIADB_USER
    engine = sa.create_engine(make_url(admin_url).set(drivername="mysql+pymysql"))
    try:
        with engine.begin() as conn:
            for host in ("127.0.0.1", "localhost"):
                conn.execute(sa.text(f"CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY '{password}'"))
                conn.execute(sa.text(f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'{host}'"))
    finally:
        engine.dispose()


#: server → node ids of the tests that talked to it (printed at the end of the run).
USED: dict[str, set[str]] = {}


def record(server: str) -> None:
    """Note that the running test uses ``server``."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    if test:
        USED.setdefault(server, set()).add(test)
