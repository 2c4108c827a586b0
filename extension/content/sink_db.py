"""The direct database writer of a content move: rows through one target transaction, bytes to its storage.

The walk (:mod:`cairn_migrate.content.writer`) decides; a *sink* writes.  This one writes the
finished rows with SQL on the target connection the caller commits or rolls back: new rows through a ``COPY``
on PostgreSQL, kept open across a collection's batches so the server loads rows while the walk prepares the
next ones (integer keys drawn first from the column's own sequence: a block at a time for a collection the
target held no rows of, else one ``nextval`` query per batch); elsewhere kept (uuid/string) keys in one
``executemany`` per batch and integer-keyed rows one ``INSERT … RETURNING`` each; updates per row, deletions
per key batch; a file's bytes are copied to the target's storage location and verified (size + SHA-256)
before its row is written.

The open ``COPY`` holds the connection: any other statement on it (a lookup, an update, a ``nextval``, the
commit) finishes it first (a SQLAlchemy event on the connection), and a rollback abandons it.  A row the
server refuses is raised when the ``COPY`` finishes, at the latest when its collection's rows are done
(:meth:`DbSink.flush`), naming the collection.
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
#: integer keys drawn from a sequence at once for a collection the target held no rows of (at most its rows)
KEY_BLOCK = 20000


class _Stream:
    """An open ``COPY … FROM STDIN`` of one collection's columns on the raw driver connection."""

    def __init__(self, raw: Any, name: str, columns: list[str]) -> None:
        from psycopg import sql

        self.name, self.columns = name, columns
        self.statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(c) for c in columns)).as_string(raw)
        self.cursor = raw.cursor()
        self.context = self.cursor.copy(self.statement)  # a context manager around the Copy it gives
        self.copy = self.context.__enter__()


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
        self._stream: _Stream | None = None
        #: per collection the target held no rows of: keys drawn and not yet given, and how many rows may follow
        self._pool: dict[str, list[int]] = {}
        self._expected: dict[str, int] = {}
        if dst.vendor == "postgres":  # every other statement on the connection first finishes an open COPY
            sa.event.listen(conn, "before_cursor_execute", self._before_statement)
            sa.event.listen(conn, "commit", self._before_statement)
            sa.event.listen(conn, "rollback", self._abandon)

    def controlled(self, name: str) -> frozenset[str]:
        """Columns the target sets itself on this path (none: SQL writes every column)."""
        return frozenset()

    def prepare(self, name: str, dst_def: TableDef, names: list[str], *, rows: int = 0) -> None:
        """Set up ``name``'s writes; ``rows``: the target held no row of it, and at most this many are created
        (its integer keys may then be drawn a block at a time)."""
        by_name = {c.name: c for c in dst_def.columns}
        self._encoders[name] = {n: encoder(by_name[n].type, self.dst.vendor) for n in names}
        self._expected[name] = rows

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
            if sequence is not None:  # PostgreSQL: the keys drawn from the column's own sequence, then COPY
                made = self._keys(name, sequence, len(rows))
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

    def _keys(self, name: str, sequence: str, n: int) -> list[int]:
        """``n`` new keys from ``sequence``, ascending: drawn per batch, or for a collection the target held no
        rows of a block at a time (at most as many as its rows still to come), so the ``COPY`` stays open
        between batches.  Keys drawn and not used are gaps in the sequence, as a rolled-back insert leaves."""
        pool = self._pool.setdefault(name, [])
        if len(pool) < n:
            want = max(n - len(pool), min(KEY_BLOCK, self._expected.get(name, 0)))
            pool.extend(sorted(int(k) for k in self.conn.execute(sa.text(
                "SELECT nextval(CAST(:s AS regclass)) FROM generate_series(1, :n)"), {"s": sequence, "n": want}
            ).scalars().all()))
        made, self._pool[name] = pool[:n], pool[n:]
        self._expected[name] = max(0, self._expected.get(name, 0) - n)
        return made

    def _copy(self, name: str, rows: list[dict[str, Any]]) -> None:
        """New rows on PostgreSQL through ``COPY … FROM STDIN`` on the transaction's own connection: several
        times cheaper than an ``INSERT`` per row for the server and for us (no statement per row to bind), and
        kept open for the collection's next batch, so the server loads while the walk works.  The values are
        the ones the ``INSERT`` took (its columns are untyped, so the driver adapted them the same way)."""
        import psycopg

        columns = list(rows[0])
        stream = self._stream
        if stream is not None and (stream.name, stream.columns) != (name, columns):
            self._finish()
            stream = None
        try:
            if stream is None:
                stream = self._stream = _Stream(self.conn.connection.driver_connection, name, columns)
            write = stream.copy.write_row
            for row in rows:
                write([row[c] for c in columns])
        except psycopg.Error as exc:
            self._abandon()  # the COPY is failed, so the connection can roll back
            raise self._refused(stream.statement if stream else name, exc) from exc

    def _finish(self) -> None:
        """End the open ``COPY``: the server has taken every row of it, or raises the row it refused."""
        import psycopg

        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.context.__exit__(None, None, None)
        except psycopg.Error as exc:
            raise self._refused(stream.statement, exc) from exc
        finally:
            stream.cursor.close()

    @staticmethod
    def _refused(statement: str, exc: Exception) -> sa.exc.DBAPIError:
        """The server's refusal as the ``INSERT``'s would be raised (the walk names the collection)."""
        return sa.exc.DBAPIError(statement, None, exc)  # type: ignore[arg-type]

    def _before_statement(self, *_args: Any) -> None:
        self._finish()

    def _abandon(self, *_args: Any) -> None:
        """A rollback: the open ``COPY`` is failed, so the connection can roll back (its rows go with it)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.context.__exit__(MigrateError, MigrateError("rolled back"), None)
        except Exception:  # noqa: BLE001 - the COPY fails as asked; the rollback that follows is what counts
            pass
        finally:
            stream.cursor.close()

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
        """Every write so far is done: the open ``COPY`` finished (other SQL statements are synchronous)."""
        self._finish()

    def delete(self, name: str, pk: str, batch: Iterable[Any]) -> None:
        self.conn.execute(sa.delete(sa.table(name)).where(keys.in_(self.dst, name, pk, list(batch))))

    def close(self) -> None:
        """An open ``COPY`` is abandoned (the caller owns the transaction, and rolls it back) and the events
        removed."""
        self._abandon()
        if self.dst.vendor == "postgres":
            sa.event.remove(self.conn, "before_cursor_execute", self._before_statement)
            sa.event.remove(self.conn, "commit", self._before_statement)
            sa.event.remove(self.conn, "rollback", self._abandon)
