"""The direct database writer of a content move: rows through one target transaction, bytes to its storage.

The walk (:mod:`cairn_migrate.content.writer`) decides; a *sink* writes.  This one writes the
finished rows with SQL on the target connection the caller commits or rolls back: new rows in one ``COPY``
per batch on PostgreSQL (integer keys drawn first from the column's own sequence, one ``nextval`` query per
batch); elsewhere kept (uuid/string) keys in one ``executemany`` per batch and integer-keyed rows one
``INSERT … RETURNING`` each; updates per row, deletions per key batch; a file's bytes are copied to the target's storage location and
verified (size + SHA-256) before its row is written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from ..bundle.table_schema import TableDef
from ..bundle.values import encoder
from ..errors import MigrateError
from ..instance.database import Database
from ..instance.storage import CHUNK, Location
from . import keys
from .closure import USERS

#: receives the target keys of created rows in the order the rows were given, from the row at ``offset`` on
Done = Callable[..., None]


class DbSink:
    """Writes through ``conn`` (the target's transaction)."""

    via = "db"
    #: the row's ``filename_disk`` is written as the source's, so the target's bytes are looked up under it
    keeps_filename = True
    concurrent = False

    def __init__(self, dst: Database, conn: sa.Connection) -> None:
        self.dst = dst
        self.conn = conn
        self._encoders: dict[str, dict[str, Callable[[Any], Any] | None]] = {}
        self.copied: list[str] = []
        self._sequences: dict[tuple[str, str], str | None] = {}
        #: (location, name) of every object this run wrote: always a name no committed row points at
        self.written: list[tuple[Location, str]] = []

    def controlled(self, name: str) -> frozenset[str]:
        """Columns the target sets itself on this path (none: SQL writes every column)."""
        return frozenset()

    def prepare(self, name: str, dst_def: TableDef, names: list[str]) -> None:
        by_name = {c.name: c for c in dst_def.columns}
        self._encoders[name] = {n: encoder(by_name[n].type, self.dst.vendor) for n in names}

    def _encoded(self, name: str, row: Mapping[str, Any]) -> dict[str, Any]:
        codecs = self._encoders[name]
        return {n: (codecs[n](v) if codecs[n] is not None else v) for n, v in row.items()}

    def create(self, name: str, pk: str, integer: bool, rows: list[dict[str, Any]], done: Done) -> None:
        if not rows:
            return
        table = sa.table(name, *[sa.column(n) for n in rows[0]])
        if integer:  # the target numbers each row
            values = [{n: v for n, v in self._encoded(name, row).items() if n != pk} for row in rows]
            sequence = self._sequence(name, pk)
            if sequence is not None:  # PostgreSQL: the batch's keys drawn from the column's own sequence, one COPY
                made = sorted(int(k) for k in self.conn.execute(sa.text(
                    "SELECT nextval(CAST(:s AS regclass)) FROM generate_series(1, :n)"), {"s": sequence, "n": len(rows)}
                ).scalars().all())
                self._copy(name, [{**v, pk: k} for v, k in zip(values, made)])
                done(made)
                return
            done([int(self.conn.execute(sa.insert(table).values(v).returning(sa.column(pk))).scalar_one())
                  for v in values])  # elsewhere one statement each, its new key returned
            return
        encoded = [self._encoded(name, row) for row in rows]
        if self.dst.vendor == "postgres":
            self._copy(name, encoded)
        else:
            self.conn.execute(sa.insert(table), encoded)
        done([row[pk] for row in rows])

    def _copy(self, name: str, rows: list[dict[str, Any]]) -> None:
        """New rows on PostgreSQL with ``COPY … FROM STDIN`` on the transaction's own connection: several
        times cheaper than an ``INSERT`` per row for the server and for us (no statement per row to bind).
        The values are the ones the ``INSERT`` took (its columns are untyped, so the driver adapted them
        the same way); a refused row (a constraint) is raised as the ``INSERT``'s error would be."""
        import psycopg
        from psycopg import sql

        columns = list(rows[0])
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(c) for c in columns))
        raw = self.conn.connection.driver_connection
        try:
            with raw.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row([row[c] for c in columns])
        except psycopg.Error as exc:
            raise sa.exc.DBAPIError(statement.as_string(raw), None, exc) from exc

    def _sequence(self, name: str, pk: str) -> str | None:
        """The sequence numbering ``name.pk`` on a PostgreSQL target (serial or identity), else None."""
        if self.dst.vendor != "postgres":
            return None
        if (name, pk) not in self._sequences:
            quoted = '"' + name.replace('"', '""') + '"'
            self._sequences[(name, pk)] = self.conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, :c)"),
                                                            {"t": quoted, "c": pk}).scalar_one()
        return self._sequences[(name, pk)]

    def create_user(self, values: Mapping[str, Any]) -> None:
        """A user ``--create-users`` creates (:mod:`.users`): one row, in the target's transaction."""
        row = {n: (keys.value(self.dst, USERS, n, v) if n in ("id", "role") and v is not None else v)
               for n, v in values.items()}
        self.conn.execute(sa.insert(sa.table(USERS, *[sa.column(n) for n in row])).values(row))

    def update(self, name: str, pk: str, target_key: Any, values: Mapping[str, Any]) -> None:
        table = sa.table(name, *[sa.column(n) for n in values])
        self.conn.execute(sa.update(table).where(keys.equals(self.dst, name, pk, target_key)).values(
            self._encoded(name, values)))

    def set_later(self, name: str, pk: str, target_key: Any, column: str, value: Any) -> None:
        """A self-reference set once every row of the collection has its key (written as is)."""
        self.conn.execute(sa.update(sa.table(name, sa.column(column))).where(
            keys.equals(self.dst, name, pk, target_key)).values({column: value}))

    def file_bytes(self, row: Mapping[str, Any], exists: bool, source: Location, source_name: str,
                   target: Location, target_name: str, size: int) -> None:
        """Copy and verify a file's bytes now, before its row is written: under a name no committed target row
        points at (the walk picks a fresh ``filename_disk`` when the name is taken), so a rollback leaves the
        target's objects as they were once :attr:`written` is deleted."""
        digest = hashlib.sha256()
        self.written.append((target, target_name))  # removed again if the transaction rolls back
        with source.open_read(source_name) as reader, target.open_write(target_name) as writer:
            while block := reader.read(CHUNK):
                digest.update(block)
                writer.write(block)
        if target.size(target_name) != size or target.sha256(target_name) != digest.hexdigest():
            raise MigrateError(f"The copy of {target_name} to the target's {target.name} does not match the source "
                               f"(size or SHA-256)", hint="check the target storage and run the move again")
        self.copied.append(str(row["id"]))

    def flush(self) -> None:
        """Every write so far is done (SQL statements are synchronous)."""

    def delete(self, name: str, pk: str, batch: Iterable[Any]) -> None:
        self.conn.execute(sa.delete(sa.table(name)).where(keys.in_(self.dst, name, pk, list(batch))))

    def close(self) -> None:
        """Nothing to release: the caller owns the transaction."""
