"""The "import in progress" marker, kept in the target database itself.

An import writes the table ``cairn_migrate_import`` into the target before
its first other write and drops it after its last step, so any reader of the
target (``inspect``, ``verify``, ``GET /migrate/health``, another sidecar with
another state store) sees that the target is incomplete.  Its one row names
the import, the bundle (the SHA-256 of the bundle's ``manifest.json``), the
step reached and, per table already loaded, a fingerprint taken right after
the table was committed.  ``import --resume`` continues only an import this
marker records, and only while every fingerprinted table is unchanged, so a
resume never touches a row it did not write.

Steps, in order: ``replace`` (``--replace`` dropping the old target's tables,
whose fingerprints the marker holds: taken before the safety bundle was
written and compared before the first DROP, so a write that landed meanwhile
stops the import with nothing dropped),
``tables`` (neutral rows, table by table; ``current`` names the table being
written), ``restore`` (a native dump being restored), ``files`` (file bytes),
``constraints`` (foreign keys, sequences, checks).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..instance.database import Database
from ..errors import MigrateError

log = logging.getLogger(__name__)
TABLE = "cairn_migrate_import"
STEPS = ("replace", "tables", "restore", "files", "constraints")
#: The fix every report of an incomplete target names.
RESUME_FIX = "cairn-migrate import BUNDLE --resume (with the bundle of the interrupted import)"



class _LongText(sa.types.TypeDecorator[str]):
    """TEXT, LONGTEXT on MySQL/MariaDB (whose TEXT stops at 64 KiB): the MySQL dialect is imported only there,
    so a process on SQLite or PostgreSQL never loads it (start-up: ``tests/test_startup.py``)."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "mysql":
            from sqlalchemy.dialects import mysql

            return dialect.type_descriptor(mysql.LONGTEXT())
        return super().load_dialect_impl(dialect)


_metadata = sa.MetaData()
_marker = sa.Table(
    TABLE,
    _metadata,
    sa.Column("import_id", sa.String(36), primary_key=True),
    sa.Column("bundle_id", sa.String(64), nullable=False),
    sa.Column("step", sa.String(16), nullable=False),
    sa.Column("current_table", sa.String(255), nullable=True),
    sa.Column("tables", _LongText(), nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Marker:
    """The marker's row: which import, of which bundle, how far, and what it wrote."""

    import_id: str
    bundle_id: str
    step: str
    current_table: str | None = None
    tables: dict[str, str] = field(default_factory=dict)
    started_at: str = ""
    updated_at: str = ""

    def status(self) -> dict[str, Any]:
        """The JSON-safe report of an incomplete target (nothing secret in it)."""
        return {
            "state": "incomplete",
            "import_id": self.import_id,
            "bundle_id": self.bundle_id,
            "step": self.step,
            "current_table": self.current_table,
            "tables_done": len(self.tables),
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "fix": RESUME_FIX,
        }


def read(db: Database) -> Marker | None:
    """The marker of an unfinished import in ``db``, or ``None`` when the target holds none."""
    if not sa.inspect(db.engine).has_table(TABLE):
        return None
    with db.engine.connect() as conn:
        row = conn.execute(sa.select(_marker)).mappings().first()
    if row is None:
        return Marker(import_id="", bundle_id="", step="tables")  # killed between CREATE and INSERT
    return Marker(
        import_id=row["import_id"], bundle_id=row["bundle_id"], step=row["step"], current_table=row["current_table"],
        tables=json.loads(row["tables"] or "{}"), started_at=row["started_at"], updated_at=row["updated_at"],
    )


def status(db: Database) -> dict[str, Any] | None:
    """:meth:`Marker.status` of ``db``'s marker, ``None`` when no import is unfinished."""
    marker = read(db)
    return marker.status() if marker else None


def public_status(open_db: Callable[[], Database]) -> dict[str, Any]:
    """``complete``/``incomplete``/``unknown`` with the step and the fix only: safe for an open health route.

    ``unknown`` when the database cannot be read; the reason goes to the log,
    never to the answer (it may name hosts or users).
    """
    empty = {"state": "complete", "step": None, "started_at": None, "fix": None}
    try:
        marker = read(open_db())
    except (MigrateError, sa.exc.SQLAlchemyError) as exc:
        log.warning("cannot read the instance's database for its import state: %s", exc.__class__.__name__)
        return {**empty, "state": "unknown"}
    if marker is None:
        return empty
    return {key: marker.status()[key] for key in empty}


def begin(db: Database, bundle_id: str, *, previous: Marker | None = None,
          replacing: Mapping[str, str] | None = None) -> Marker:
    """Write the marker (before any other write of an import); ``previous`` re-writes one a restore replaced.

    ``replacing``: the fingerprints of the old tables ``--replace`` is about to
    drop, taken before its safety bundle was written; the marker starts at step
    ``replace`` with them, so the import (and a resume) drops only what is
    still as it was before the safety bundle's snapshot.
    """
    marker = previous or Marker(import_id=str(uuid.uuid4()), bundle_id=bundle_id, step="tables", started_at=_now())
    if replacing:
        marker.step, marker.tables = "replace", dict(replacing)
    marker.updated_at = _now()
    _marker.create(db.engine, checkfirst=True)
    with db.engine.begin() as conn:
        conn.execute(sa.delete(_marker))
        conn.execute(sa.insert(_marker).values(
            import_id=marker.import_id, bundle_id=marker.bundle_id, step=marker.step,
            current_table=marker.current_table, tables=json.dumps(marker.tables), started_at=marker.started_at,
            updated_at=marker.updated_at,
        ))
    return marker


def _save(db: Database, marker: Marker) -> None:
    marker.updated_at = _now()
    with db.engine.begin() as conn:
        conn.execute(sa.update(_marker).where(_marker.c.import_id == marker.import_id).values(
            step=marker.step, current_table=marker.current_table, tables=json.dumps(marker.tables),
            updated_at=marker.updated_at,
        ))


def start_table(db: Database, marker: Marker, name: str) -> None:
    """Record that ``name`` is being written: a resume may drop and reload it."""
    marker.step, marker.current_table = "tables", name
    _save(db, marker)


def table_done(db: Database, marker: Marker, name: str) -> None:
    """Record ``name`` as complete, with its fingerprint (what a resume checks is unchanged)."""
    marker.tables[name] = fingerprints(db, [name], loaded=True)[name]
    marker.current_table = None
    _save(db, marker)


def tables_done(db: Database, marker: Marker, names: Sequence[str]) -> None:
    """Record every table of a native restore as complete at once."""
    marker.tables.update(fingerprints(db, names))
    marker.current_table = None
    _save(db, marker)


def replaced(db: Database, marker: Marker) -> None:
    """Record that ``--replace`` dropped every old table: the load starts with nothing of ours yet."""
    marker.step, marker.current_table, marker.tables = "tables", None, {}
    _save(db, marker)


def set_step(db: Database, marker: Marker, step: str) -> None:
    marker.step, marker.current_table = step, None
    _save(db, marker)


def finish(db: Database) -> None:
    """The last step of an import: the target is complete, the marker goes."""
    _marker.drop(db.engine, checkfirst=True)


#: The digest of a PostgreSQL table the import loaded itself: ``"<rows>:x<sum of xmin>"``.
_XMIN = ":x"


def fingerprints(db: Database, names: Sequence[str], *, loaded: bool = False) -> dict[str, str]:
    """Per table ``"<rows>:<digest>"``: cheap, computed by the database.

    PostgreSQL and MariaDB hash every row's text (the same checksums the
    native path verifies with); SQLite has no hash function, so its digest is
    the largest ``rowid``: an insert, delete or re-insert changes one or the
    other.

    ``loaded``: tables the import just loaded, each in one transaction. On PostgreSQL their
    digest is then the sum of the rows' ``xmin`` (``"<rows>:x<sum>"``), a count and a sum instead of
    hashing every row's text (0.4 s instead of 2.5 s for 1M rows): every row carries the
    load's transaction id X, and any later insert, update or re-insert writes a row with a
    newer id, so with the row count unchanged the sum grows (a delete alone lowers the count).
    Freezing, ``VACUUM FULL`` and ``CLUSTER`` keep ``xmin``; a dump and restore elsewhere
    does not, and counts as changed.
    """
    from .native import checksums

    if db.vendor == "postgres" and loaded:
        result = {}
        with db.engine.connect() as conn:
            for name in names:
                quoted = db.engine.dialect.identifier_preparer.quote(name)
                rows, total = conn.execute(
                    sa.text(f"SELECT count(*), coalesce(sum(xmin::text::bigint), 0) FROM {quoted}")).one()
                result[name] = f"{rows}{_XMIN}{total}"
        return result
    if db.vendor != "sqlite":
        with db.engine.connect() as conn:
            return {name: f"{value['rows']}:{value['checksum']}" for name, value in checksums(db, conn, names).items()}
    result = {}
    with db.engine.connect() as conn:
        for name in names:
            quoted = db.engine.dialect.identifier_preparer.quote(name)
            rows, last = conn.execute(sa.text(f"SELECT count(*), max(rowid) FROM {quoted}")).one()
            result[name] = f"{rows}:{last}"
    return result


def changed_tables(db: Database, marker: Marker) -> dict[str, tuple[str, str | None]]:
    """Fingerprinted tables that differ now (``name → (recorded, now)``; ``now`` is ``None`` when dropped).

    At step ``replace`` the fingerprints are of the old tables being dropped:
    one already gone was dropped by the import itself, so it is no change.
    """
    present = set(db.table_names())
    kept = [name for name in marker.tables if name in present]
    loaded = [name for name in kept if _XMIN in marker.tables[name]]
    now = fingerprints(db, [name for name in kept if name not in loaded])
    now.update(fingerprints(db, loaded, loaded=True) if loaded else {})
    return {name: (was, now.get(name)) for name, was in marker.tables.items()
            if now.get(name) != was and not (marker.step == "replace" and name not in present)}


def rows_of(fingerprint: str | None) -> str:
    """The row count part of a fingerprint, for messages."""
    return "dropped" if fingerprint is None else fingerprint.split(":", 1)[0] + " rows"


def describe(changes: Mapping[str, tuple[str, str | None]]) -> str:
    """``articles (21 rows → 22 rows)``, for the refusal message."""
    return ", ".join(f"{name} ({rows_of(was)} → {rows_of(now)})" for name, (was, now) in sorted(changes.items()))
