"""TLS to the instance's database as CairnCMS does it: none unless the instance's ``.env`` asks (``DB_SSL``).

CairnCMS's drivers (node-postgres, mysql2) connect in plain text unless ``DB_SSL``/``PGSSLMODE`` says otherwise;
PyMySQL and libpq try TLS first by default, which cost a context with the system's CA certificates per
connection (7-14 % of a MariaDB process's CPU in ``bench/run --profile``) and, where the server offers TLS,
encrypted every row.  Real PostgreSQL and MariaDB; the connections are the ones cairn-migrate opens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_instance

from cairn_migrate.instance.database import open_engine
from cairn_migrate.instance.instance import Instance


def _dbapi(env: Path):  # noqa: ANN202 - the driver's own connection class
    engine = open_engine(Instance.from_env_file(env, environ={}))
    return engine, engine.raw_connection().dbapi_connection


@pytest.mark.parametrize("vendor", ["postgres", "mariadb"])
def test_no_tls_unless_the_instance_asks(vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    plain = make_instance(vendor, tmp_path / "plain", request)
    asked = make_instance(vendor, tmp_path / "asked", request, extra_env={"DB_SSL__REJECT_UNAUTHORIZED": "false"})
    engine, conn = _dbapi(plain)
    try:
        if vendor == "postgres":
            assert conn.info.get_parameters().get("sslmode") == "disable", conn.info.get_parameters()
        else:
            assert conn.ssl is False and getattr(conn, "ctx", None) is None  # no TLS context built
    finally:
        engine.dispose()
    engine, conn = _dbapi(asked)  # DB_SSL set: the driver's own TLS negotiation, as before
    try:
        if vendor == "postgres":
            assert conn.info.get_parameters().get("sslmode") != "disable", conn.info.get_parameters()
        else:
            assert conn.ssl is True and conn.ctx is not None
    finally:
        engine.dispose()
