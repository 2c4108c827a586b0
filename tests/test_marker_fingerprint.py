"""The import marker's fingerprint of a PostgreSQL table the import loaded (count and sum of ``xmin``)
sees every later write, including an update that keeps the row count, and no change where there is none."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from cairn_migrate.bundle import import_marker
from cairn_migrate.instance.database import Database
from cairn_migrate.testing import create_postgres_database, drop_postgres_database


@pytest.fixture
def pg_db(pg_admin_url: str):
    name = create_postgres_database(pg_admin_url, prefix="cm_test_fp")
    engine = sa.create_engine(sa.engine.make_url(pg_admin_url).set(drivername="postgresql+psycopg", database=name))
    try:
        yield Database(engine, SimpleNamespace(vendor="postgres", exclude_tables=()))  # type: ignore[arg-type]
    finally:
        engine.dispose()
        drop_postgres_database(pg_admin_url, name)


def _marker(tables: dict[str, str]) -> import_marker.Marker:
    return SimpleNamespace(tables=tables, step="constraints")  # type: ignore[return-value]


def test_loaded_fingerprint_sees_updates_and_reinserts(pg_db: Database) -> None:
    with pg_db.engine.begin() as conn:  # one transaction, as the loader's
        conn.exec_driver_sql("CREATE TABLE tags (id integer PRIMARY KEY, name text)")
        conn.exec_driver_sql("INSERT INTO tags SELECT i, 'tag ' || i FROM generate_series(1, 100) i")
        conn.exec_driver_sql("CREATE TABLE other (id integer PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO other VALUES (1)")
    loaded = import_marker.fingerprints(pg_db, ["tags", "other"], loaded=True)
    assert loaded["tags"].startswith("100:x") and loaded["other"].startswith("1:x")
    marker = _marker(dict(loaded))
    with pg_db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (FREEZE) tags")  # freezing keeps xmin: no change
    assert import_marker.changed_tables(pg_db, marker) == {}

    with pg_db.engine.begin() as conn:  # the row count stays 100
        conn.exec_driver_sql("UPDATE tags SET name = 'changed' WHERE id = 7")
    changed = import_marker.changed_tables(pg_db, marker)
    assert set(changed) == {"tags"} and changed["tags"][1].startswith("100:x")

    marker = _marker(import_marker.fingerprints(pg_db, ["tags", "other"], loaded=True))
    with pg_db.engine.begin() as conn:  # a delete and an insert: same count again
        conn.exec_driver_sql("DELETE FROM other WHERE id = 1")
        conn.exec_driver_sql("INSERT INTO other VALUES (2)")
    assert set(import_marker.changed_tables(pg_db, marker)) == {"other"}


def test_older_markers_keep_their_row_hash(pg_db: Database) -> None:
    with pg_db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE tags (id integer PRIMARY KEY, name text)")
        conn.exec_driver_sql("INSERT INTO tags VALUES (1, 'a'), (2, 'b')")
    hashed = import_marker.fingerprints(pg_db, ["tags"])  # what earlier versions recorded
    assert ":x" not in hashed["tags"]
    assert import_marker.changed_tables(pg_db, _marker(dict(hashed))) == {}
    with pg_db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE tags SET name = 'c' WHERE id = 1")
    assert set(import_marker.changed_tables(pg_db, _marker(dict(hashed)))) == {"tags"}
