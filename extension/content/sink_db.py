"""The direct database writer of a content move: rows through one target transaction, bytes to its storage.

The walk (:mod:`cairn_migrate.content.writer`) decides; a *sink* writes.  This one writes the
finished rows with SQL on the target connection the caller commits or rolls back: new rows through ``COPY``
on PostgreSQL (integer keys drawn first from the column's own sequence, on a second connection: a block at a
time for a collection the target held no rows of, else per batch); elsewhere kept (uuid/string) keys in one
``executemany`` per batch and integer-keyed rows one ``INSERT … RETURNING`` each; updates per row, deletions
per key batch; a file's bytes are copied to the target's storage location and verified (size + SHA-256)
before its row is written.

On PostgreSQL the ``COPY``s run in a thread of their own (:class:`_Loader`): the walk hands it each batch of
new rows and goes on preparing the next, while the loader writes them and ends its ``COPY`` every
:data:`LOAD_ROWS` rows, which is when the server checks them (foreign keys, triggers).  A ``COPY`` holds the
connection: any other statement on it (a lookup, an update, the commit) first waits for the loader to end
its ``COPY`` (a SQLAlchemy event on the connection), and a rollback makes it abandon what is left.  A row the
server refuses is raised at the walk's next hand-over or statement, naming the collection it belongs to.
"""

from __future__ import annotations

import hashlib
import queue
import threading
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
#: rows per ``COPY`` of the loader: the server checks a ``COPY``'s rows when it ends, while the walk goes on
LOAD_ROWS = 5000
#: batches of rows handed to the loader and not yet written (memory: a few MB, whatever the move's size)
LOAD_QUEUE = 16


class CopyRefused(sa.exc.DBAPIError):
    """The server refused a row of a ``COPY`` (raised like the ``INSERT``'s refusal; ``collection``: its table,
    which the walk may have left by the time the loader reports it)."""

    collection: str = ""


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
        self.rows = 0

    def end(self) -> None:
        """The server has taken every row, or raises the one it refused."""
        try:
            self.context.__exit__(None, None, None)
        finally:
            self.cursor.close()

    def fail(self) -> None:
        """Abandoned: the ``COPY`` fails, so the connection can roll back (its rows go with it)."""
        try:
            self.context.__exit__(MigrateError, MigrateError("rolled back"), None)
        except Exception:  # noqa: BLE001 - the COPY fails as asked; the rollback that follows is what counts
            pass
        finally:
            self.cursor.close()


_END, _ABANDON, _STOP = object(), object(), object()


class _Loader:
    """The ``COPY``s of one move, in a thread of their own on the transaction's connection.

    The walk spends most of a move preparing rows and the server most of a ``COPY`` checking them when it ends;
    in one thread each waited for the other.  Here the walk only queues a batch (:meth:`put`, at most
    :data:`LOAD_QUEUE` waiting) and the loader writes it, ending its ``COPY`` every :data:`LOAD_ROWS` rows and
    at a change of collection.  Only the loader touches the connection until :meth:`end` (every queued row
    written, the ``COPY`` ended) or :meth:`abandon` returns.  After a refusal it writes nothing more, and the
    next :meth:`put` or :meth:`end` raises it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=LOAD_QUEUE)
        self.stream: _Stream | None = None
        self.error: BaseException | None = None
        self.discard = False
        self.thread = threading.Thread(target=self._run, name="cairn-migrate-copy", daemon=True)
        self.thread.start()

    # --- the walk's side
    def put(self, name: str, columns: list[str], rows: list[Mapping[str, Any]],
            encode: list[tuple[str, Callable[[Any], Any] | None]], keys: list[int] | None) -> None:
        """Queue ``rows`` for the ``COPY`` of ``columns``: each row's values through ``encode`` (column, codec),
        after its key from ``keys`` when given."""
        self._raise()
        self.queue.put((name, columns, rows, encode, keys))

    def end(self) -> None:
        self.queue.put(_END)
        self.queue.join()
        self._raise()

    def abandon(self) -> None:
        self.discard = True  # what is still queued is dropped, not written
        try:
            self.queue.put(_ABANDON)
            self.queue.join()
        finally:
            self.discard, self.error = False, None  # the rollback that follows takes everything back

    def stop(self) -> None:
        self.abandon()
        self.queue.put(_STOP)
        self.thread.join(timeout=60)

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    # --- the loader's side
    def _run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is _STOP:
                    return
                if item is _ABANDON:
                    self._close(failed=True)
                elif self.error is not None or self.discard:
                    continue  # after a refusal (or while abandoning) nothing more is written
                elif item is _END:
                    self._close()
                else:
                    self._write(*item)
            except BaseException as exc:  # noqa: BLE001 - handed to the walk's thread, which raises it
                self.error = exc
            finally:
                self.queue.task_done()

    def _write(self, name: str, columns: list[str], rows: list[Mapping[str, Any]],
               encode: list[tuple[str, Callable[[Any], Any] | None]], keys: list[int] | None) -> None:
        import psycopg

        stream = self.stream
        if stream is not None and ((stream.name, stream.columns) != (name, columns) or stream.rows >= LOAD_ROWS):
            self._close()
            stream = None
        if stream is None:
            stream = self.stream = _Stream(self.raw, name, columns)
        write = stream.copy.write_row
        try:
            for i, row in enumerate(rows):
                values = [row[n] if codec is None else codec(row[n]) for n, codec in encode]
                write(values if keys is None else [keys[i], *values])
        except psycopg.Error as exc:
            self._close(failed=True)  # the COPY is failed, so the connection can roll back
            raise _refused(stream.statement, exc, name) from exc
        stream.rows += len(rows)

    def _close(self, failed: bool = False) -> None:
        import psycopg

        stream, self.stream = self.stream, None
        if stream is None:
            return
        if failed:
            stream.fail()
            return
        try:
            stream.end()
        except psycopg.Error as exc:
            raise _refused(stream.statement, exc, stream.name) from exc


def _refused(statement: str, exc: Exception, collection: str) -> CopyRefused:
    """The server's refusal as the ``INSERT``'s would be raised, naming the collection."""
    error = CopyRefused(statement, None, exc)  # type: ignore[arg-type]
    error.collection = collection
    return error


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
        self._loader: _Loader | None = None
        self._side: sa.Connection | None = None
        #: per collection the target held no rows of: keys drawn and not yet given, and how many rows may follow
        self._pool: dict[str, list[int]] = {}
        self._expected: dict[str, int] = {}
        if dst.vendor == "postgres":  # every other statement on the connection first finishes an open COPY
            sa.event.listen(conn, "before_cursor_execute", self._finish)
            sa.event.listen(conn, "commit", self._finish)
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
            sequence = self._sequence(name, pk)
            if sequence is not None:  # PostgreSQL: the keys drawn from the column's own sequence, then COPY
                made = self._keys(name, sequence, len(rows))
                self._copy(name, [n for n in rows[0] if n != pk], rows, pk, made)
                done(made)
                return
            values = [{n: v for n, v in self._encoded(name, row).items() if n != pk} for row in rows]
            done([int(self.conn.execute(sa.insert(table).values(v).returning(sa.column(pk))).scalar_one())
                  for v in values])  # elsewhere one statement each, its new key returned
            return
        if self.dst.vendor == "postgres":
            self._copy(name, list(rows[0]), rows)
        else:
            self.conn.execute(sa.insert(table), [self._encoded(name, row) for row in rows])
        done([row[pk] for row in rows])

    def _keys(self, name: str, sequence: str, n: int) -> list[int]:
        """``n`` new keys from ``sequence``, ascending: drawn per batch, or for a collection the target held no
        rows of a block at a time (at most as many as its rows still to come), so the ``COPY`` stays open
        between batches.  Keys drawn and not used are gaps in the sequence, as a rolled-back insert leaves."""
        pool = self._pool.setdefault(name, [])
        if len(pool) < n:
            want = max(n - len(pool), min(KEY_BLOCK, self._expected.get(name, 0)))
            pool.extend(sorted(int(k) for k in self._side_connection().execute(sa.text(
                "SELECT nextval(CAST(:s AS regclass)) FROM generate_series(1, :n)"), {"s": sequence, "n": want}
            ).scalars().all()))
        made, self._pool[name] = pool[:n], pool[n:]
        self._expected[name] = max(0, self._expected.get(name, 0) - n)
        return made

    def _copy(self, name: str, columns: list[str], rows: list[dict[str, Any]], pk: str | None = None,
              made: list[int] | None = None) -> None:
        """New rows on PostgreSQL through ``COPY … FROM STDIN`` on the transaction's own connection, by the
        loader's thread: several times cheaper than an ``INSERT`` per row for the server and for us (no
        statement per row to bind), and the server loads while the walk works.  The loader also encodes the
        rows (``made``: the keys drawn for them, written as ``pk``); the values are the ones the ``INSERT`` took
        (its columns are untyped, so the driver adapted them the same way).  The walk never changes a row it
        handed over."""
        if self._loader is None:
            self._loader = _Loader(self.conn.connection.driver_connection)
        codecs = self._encoders[name]
        self._loader.put(name, [pk, *columns] if made is not None else columns, rows,
                         [(n, codecs[n]) for n in columns], made)

    def _finish(self, *_args: Any) -> None:
        """Every row handed to the loader written and its ``COPY`` ended, or the refusal raised: before any other
        statement on the connection, and the commit."""
        if self._loader is not None:
            self._loader.end()

    def _abandon(self, *_args: Any) -> None:
        """A rollback: what the loader still holds is dropped and its ``COPY`` failed, so the connection can roll
        back (its rows go with it)."""
        if self._loader is not None:
            self._loader.abandon()

    def _sequence(self, name: str, pk: str) -> str | None:
        """The sequence numbering ``name.pk`` on a PostgreSQL target (serial or identity), else None."""
        if self.dst.vendor != "postgres":
            return None
        if (name, pk) not in self._sequences:
            quoted = '"' + name.replace('"', '""') + '"'
            self._sequences[(name, pk)] = self._side_connection().execute(sa.text(
                "SELECT pg_get_serial_sequence(:t, :c)"), {"t": quoted, "c": pk}).scalar_one()
        return self._sequences[(name, pk)]

    def _side_connection(self) -> sa.Connection:
        """A second connection to the target, outside the move's transaction, for what needs none: a sequence's
        name and its ``nextval`` (which no rollback takes back anyway).  On the transaction's own connection each
        draw would first end the open ``COPY`` and wait for the server's checks of every row loaded so far."""
        if self._side is None:
            self._side = self.dst.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._side

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
        if self._loader is not None:
            self._loader.stop()
            self._loader = None
        if self._side is not None:
            self._side.close()
            self._side = None
        if self.dst.vendor == "postgres":
            sa.event.remove(self.conn, "before_cursor_execute", self._finish)
            sa.event.remove(self.conn, "commit", self._finish)
            sa.event.remove(self.conn, "rollback", self._abandon)
