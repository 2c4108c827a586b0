"""Create tables natively on the target and load neutral rows into them, one transaction per table.

PostgreSQL gets ``COPY`` (its fastest path) and its foreign keys after the
data, since they cannot be deferred; MySQL/MariaDB and SQLite get batched
inserts with foreign-key checks off and every foreign key checked once at the
end.  On MySQL/MariaDB the multi-row ``INSERT`` text is built here
(:func:`mysql_row_formatter`), in a thread of its own so that Python's work on
the next statement overlaps the server's on this one: PyMySQL's
``executemany`` rewrite escaped every value in pure Python, one at a time, and
the server waited for it (``LOAD DATA LOCAL INFILE`` would need the driver's
``local_infile``, which lets the server read any file the client can).  Values are converted only where the target needs it
(:func:`cairn_migrate.bundle.values.encoder`); most pass through as they are.
"""

from __future__ import annotations

import datetime as dt
import decimal
import queue
import re
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..instance.database import Database
from .drift import FieldFlags
from ..progress import Progress
from .table_schema import TableDef, build_tables, foreign_key_constraints, mysql_database_collation
from .values import decoder, encoder, loads_line

BATCH = 5000




def _quote(engine: Engine, name: str) -> str:
    return engine.dialect.identifier_preparer.quote(name)


def _row_transform(table: TableDef, storage_map: Mapping[str, str],
                   field_flags: FieldFlags | None = None) -> Callable[[list[Any]], list[Any]] | None:
    if table.name == "directus_fields" and field_flags is not None:
        def reflag(row: list[Any]) -> list[Any]:
            field_flags.rewrite(row)
            return row

        return reflag
    if table.name != "directus_files" or not storage_map:
        return None
    index = [c.name for c in table.columns].index("storage")

    def remap(row: list[Any]) -> list[Any]:
        row[index] = storage_map.get(row[index], row[index])
        return row

    return remap


def jsonl_rows(path: Path) -> Iterator[list[Any]]:
    """The neutral rows of a table member."""
    with path.open("rb") as fh:
        for line in fh:
            yield loads_line(line)


def database_rows(db: Database, table: TableDef) -> Iterator[list[Any]]:
    """The neutral rows of a table read from another database (a native SQLite bundle)."""
    decoders = [decoder(column.type) for column in table.columns]
    with db.engine.connect() as conn:
        for row in db.stream_tuples(table.name, [c.name for c in table.columns], connection=conn):
            yield [decode(value) for decode, value in zip(decoders, row)]


def _encoded_rows(rows: Iterable[list[Any]], table: TableDef, vendor: str, transform: Callable[[list[Any]], list[Any]] | None,
                  sqlite_stored: Collection[str] = ()) -> Iterator[list[Any]]:
    """Neutral rows converted only where the target needs it (most values pass as they are)."""
    converting = [(i, codec) for i, column in enumerate(table.columns)
                  if (codec := encoder(column.type, vendor, sqlite_stored=column.type in sqlite_stored))]
    for row in rows:
        if transform:
            row = transform(row)
        for i, codec in converting:
            row[i] = codec(row[i])
        yield row


def _batched(rows: Iterator[list[Any]], size: int) -> Iterator[list[list[Any]]]:
    batch: list[list[Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


#: Characters of a string literal MariaDB/MySQL needs escaped (backslash escapes on, the default):
#: the quote, the backslash and NUL; newlines and the rest may stand as they are.
_MYSQL_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\0": "\\0"})
#: The same under ``sql_mode`` ``NO_BACKSLASH_ESCAPES``: a backslash is literal, a quote is doubled.
_MYSQL_ESCAPES_NO_BACKSLASH = str.maketrans({"'": "''"})
#: Characters of an ``INSERT`` statement on MySQL/MariaDB: big enough that the server's per-statement
#: cost disappears, small enough to stay well under ``max_allowed_packet`` (16 MiB by default; a
#: smaller one lowers it, :meth:`TableLoader._mysql_statement_limit`) and to keep memory flat.
MYSQL_STATEMENT_CHARS = 1 << 21


def mysql_literal_maker(no_backslash_escapes: bool = False) -> Callable[[Any], str]:
    """A function turning one driver value (what :func:`~cairn_migrate.bundle.values.encoder` hands
    a MySQL driver) into its SQL literal, as PyMySQL's own escaping would, without its per-value
    dispatch: the import builds multi-row ``INSERT`` text itself (PyMySQL's ``executemany`` rewrite
    spent most of the import in its pure-Python escaping, one value at a time)."""
    table = _MYSQL_ESCAPES_NO_BACKSLASH if no_backslash_escapes else _MYSQL_ESCAPES
    specials = ("'",) if no_backslash_escapes else ("\\", "'", "\0")

    def text(value: str) -> str:
        for char in specials:
            if char in value:  # rare: a scan in C is cheaper than translate() of every value
                return "'" + value.translate(table) + "'"
        return "'" + value + "'"

    def number(value: float) -> str:
        out = repr(value)
        if out in ("inf", "-inf", "nan"):
            raise ValueError(f"{out} cannot be stored in MySQL/MariaDB (no infinite or NaN floats)")
        return out

    def decimal_text(value: decimal.Decimal) -> str:
        # a bundle is untrusted: NaN/Infinity would go into the SQL as bare words, 1E+999999999 as a 1 GB literal
        if not value.is_finite() or abs(value.adjusted()) > 65:
            raise ValueError(f"{value} cannot be stored in a MySQL/MariaDB DECIMAL (65 digits at most, finite)")
        return format(value, "f")

    formats: dict[type, Callable[[Any], str]] = {
        str: text,
        int: str,
        bool: lambda v: "1" if v else "0",
        float: number,
        decimal.Decimal: decimal_text,
        dt.datetime: lambda v: "'" + v.isoformat(" ") + "'",
        dt.date: lambda v: "'" + v.isoformat() + "'",
        dt.time: lambda v: "'" + v.isoformat() + "'",
        bytes: lambda v: "X'" + v.hex() + "'",
        bytearray: lambda v: "X'" + v.hex() + "'",
        memoryview: lambda v: "X'" + v.hex() + "'",
    }

    def literal(value: Any) -> str:
        if value is None:
            return "NULL"
        try:
            return formats[type(value)](value)
        except KeyError:
            pass
        for kind, fmt in formats.items():  # a subclass (an enum, a str subclass): its base's form
            if isinstance(value, kind):
                return fmt(value)
        if isinstance(value, dt.timedelta):
            return text(str(value))
        return text(str(value))

    return literal


#: A UTC instant as PostgreSQL writes it (``2024-01-05 09:30:00.123+00``; ISO ``T``, ``+00:00`` or ``Z`` too):
#: only digits and separators, so the text can go between quotes as it is.
_UTC_TEXT = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)(?:\+00(?::00)?|Z)", re.ASCII)


def _mysql_utc_text(value: Any) -> str | None:
    """PostgreSQL's UTC instant text as MariaDB ``TIMESTAMP`` text in the UTC session, without parsing it; ``None``
    for anything else (the codec's path then parses it, or refuses it).  The whole value must match
    :data:`_UTC_TEXT`: a bundle is untrusted input, and this text is not escaped (a quote in a crafted
    "timestamp" would otherwise end the literal and put SQL of the bundle's choosing into the ``INSERT``)."""
    if type(value) is not str:
        return None
    match = _UTC_TEXT.fullmatch(value)
    return None if match is None else "'" + match[1] + " " + match[2] + "'"


def mysql_row_formatter(table: TableDef, sqlite_stored: Collection[str] = (), *,
                        no_backslash_escapes: bool = False) -> Callable[[list[Any]], str]:
    """One neutral row → ``(lit, lit, …)`` for a multi-row ``INSERT`` on MySQL/MariaDB: each column's
    :func:`~cairn_migrate.bundle.values.encoder` (the same conversions as the driver path), then its
    literal; PostgreSQL's UTC timestamps are passed as text (parsing each one was the next cost)."""
    literal = mysql_literal_maker(no_backslash_escapes)
    columns: list[Callable[[Any], str]] = []
    for column in table.columns:
        stored = column.type in sqlite_stored
        codec = encoder(column.type, "mysql", sqlite_stored=stored)
        if codec is None:
            columns.append(literal)
        elif column.type == "timestamp" and not stored:
            def timestamp(value: Any, codec: Callable[[Any], Any] = codec) -> str:
                fast = _mysql_utc_text(value)
                return fast if fast is not None else literal(codec(value))
            columns.append(timestamp)
        else:
            columns.append(lambda value, codec=codec: literal(codec(value)))
    if len(columns) == 1:
        only = columns[0]
        return lambda row: "(" + only(row[0]) + ")"
    return lambda row: "(" + ",".join([fmt(value) for fmt, value in zip(columns, row)]) + ")"


def _mysql_statements(prefix: str, rows: Iterable[list[Any]], fmt: Callable[[list[Any]], str],
                      limit: int) -> Iterator[tuple[str, int]]:
    """Multi-row ``INSERT`` statements of about ``limit`` characters, with their row counts."""
    parts: list[str] = []
    size = 0
    for row in rows:
        part = fmt(row)
        parts.append(part)
        size += len(part) + 1
        if size >= limit:
            yield prefix + ",".join(parts), len(parts)
            parts = []
            size = 0
    if parts:
        yield prefix + ",".join(parts), len(parts)


T = TypeVar("T")


def _in_thread(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items`` produced by a thread of their own, at most ``depth`` ahead.

    The import's statements are built in Python (holding the GIL) while the server runs the previous
    one and this thread waits on its socket (GIL released): on a machine with two cores the decoding
    and formatting of the next batch overlaps the server's insert of this one instead of taking turns.
    An exception of the producer is raised here; closing this generator stops the producer.
    """
    box: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="cairn-migrate-load", daemon=True)
    worker.start()
    try:
        while True:
            kind, payload = box.get()
            if kind == "done":
                return
            if kind == "error":
                raise payload
            yield payload
    finally:
        stop.set()
        worker.join()


class TableLoader:
    """Creates tables and loads rows on one raw DB-API connection of the target."""

    def __init__(self, engine: Engine, vendor: str, tables: Sequence[TableDef], *, sqlite_stored: Collection[str] = (),
                 field_flags: FieldFlags | None = None) -> None:
        """``sqlite_stored``: the types whose values the rows carry as SQLite stored them (:func:`~cairn_migrate.bundle.values.stored_types`);
        ``field_flags``: the ``directus_fields.special`` rewrite of a cross-vendor import (:func:`~cairn_migrate.bundle.drift.field_flags`)."""
        self.engine = engine
        self.vendor = vendor
        self.sqlite_stored = sqlite_stored
        self.field_flags = field_flags
        self.tables = {t.name: t for t in tables}
        self.metadata = sa.MetaData()
        # PostgreSQL enforces FKs immediately and cannot defer them: add them after loading.
        collation = mysql_database_collation(engine) if vendor == "mysql" else None
        self.built = build_tables(tables, vendor, self.metadata, with_foreign_keys=vendor != "postgres", mysql_collation=collation)
        self.raw = engine.raw_connection()
        cursor = self.raw.cursor()
        if vendor == "sqlite":
            self.raw.commit()
            cursor.execute("PRAGMA foreign_keys = OFF")
        elif vendor == "mysql":
            cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
            cursor.execute("SET UNIQUE_CHECKS = 0")
            cursor.execute("SELECT @@sql_mode, @@max_allowed_packet")
            mode, packet = cursor.fetchone()
            self._no_backslash_escapes = "NO_BACKSLASH_ESCAPES" in str(mode or "").upper()
            # 4 bytes a character at worst (utf8mb4), and room for the statement's own text
            self._statement_chars = max(1 << 14, min(MYSQL_STATEMENT_CHARS, int(packet) // 4 - (1 << 12)))
        cursor.close()

    def close(self) -> None:
        self.raw.close()

    def _ddl(self, element: Any) -> str:
        return str(element.compile(dialect=self.engine.dialect)).strip()

    def drop(self, name: str) -> None:
        cursor = self.raw.cursor()
        cascade = " CASCADE" if self.vendor == "postgres" else ""
        cursor.execute(f"DROP TABLE IF EXISTS {_quote(self.engine, name)}{cascade}")
        self.raw.commit()
        cursor.close()

    def load(self, name: str, source: Iterable[list[Any]], storage_map: Mapping[str, str], progress: Progress, exists: bool) -> int:
        """Create (or empty) ``name`` and load its rows, all in one transaction where the vendor allows."""
        table = self.tables[name]
        built = self.built[name]
        cursor = self.raw.cursor()
        quoted = _quote(self.engine, name)
        try:
            deferred: list[tuple[str, str]] = []
            if exists:
                cursor.execute(f"DELETE FROM {quoted}")
            else:
                cursor.execute(self._ddl(sa.schema.CreateTable(built)))
                if self.vendor == "postgres":
                    deferred = _defer_keys(cursor, quoted)
            rows = _encoded_rows(source, table, self.vendor, _row_transform(table, storage_map, self.field_flags),
                                 self.sqlite_stored)
            columns = ", ".join(_quote(self.engine, c.name) for c in table.columns)
            count = 0
            if self.vendor == "postgres":
                with cursor.copy(f"COPY {quoted} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                        count += 1
                        if count % BATCH == 0:
                            progress.advance(items=BATCH)
                            progress.check_cancelled()
                progress.advance(items=count % BATCH)
            elif self.vendor == "mysql":
                prefix = f"INSERT INTO {quoted} ({columns}) VALUES "
                fmt = mysql_row_formatter(table, self.sqlite_stored, no_backslash_escapes=self._no_backslash_escapes)
                transform = _row_transform(table, storage_map, self.field_flags)
                plain = source if transform is None else (transform(row) for row in source)
                statements = _in_thread(_mysql_statements(prefix, plain, fmt, self._statement_chars))
                try:
                    for sql, n in statements:
                        cursor.execute(sql)
                        count += n
                        progress.advance(items=n)
                        progress.check_cancelled()
                finally:
                    statements.close()
            else:
                marker = "?"
                sql = f"INSERT INTO {quoted} ({columns}) VALUES ({', '.join([marker] * len(table.columns))})"
                for batch in _batched(rows, BATCH):
                    cursor.executemany(sql, batch)
                    count += len(batch)
                    progress.advance(items=len(batch))
                    progress.check_cancelled()
            for constraint, definition in deferred:  # built once from the sorted rows, as pg_restore does
                cursor.execute(f"ALTER TABLE {quoted} ADD CONSTRAINT {_quote(self.engine, constraint)} {definition}")
            if not exists:
                for index in built.indexes:
                    cursor.execute(self._ddl(sa.schema.CreateIndex(index)))
            self.raw.commit()
            return count
        except BaseException:
            self.raw.rollback()
            raise
        finally:
            cursor.close()

    def finish(self) -> list[str]:
        """Foreign keys (PostgreSQL), sequences, and a check of every foreign key; returns problems."""
        problems: list[str] = []
        cursor = self.raw.cursor()
        try:
            if self.vendor == "postgres":
                existing = _pg_constraints(cursor)
                for name, table in self.tables.items():
                    for constraint in foreign_key_constraints(table, self.built[name]):
                        if constraint.name in existing:
                            continue
                        cols = ", ".join(_quote(self.engine, c) for c in constraint.column_keys)
                        ref = constraint.elements[0].target_fullname.split(".")[0]
                        ref_cols = ", ".join(_quote(self.engine, e.target_fullname.split(".")[1]) for e in constraint.elements)
                        sql = (
                            f"ALTER TABLE {_quote(self.engine, name)} ADD CONSTRAINT {_quote(self.engine, constraint.name)} "
                            f"FOREIGN KEY ({cols}) REFERENCES {_quote(self.engine, ref)} ({ref_cols})"
                        )
                        if constraint.ondelete:
                            sql += f" ON DELETE {constraint.ondelete}"
                        if constraint.onupdate:
                            sql += f" ON UPDATE {constraint.onupdate}"
                        cursor.execute(sql)
                for name, table in self.tables.items():
                    for column in table.columns:
                        if column.autoincrement:
                            q = _quote(self.engine, name)
                            c = _quote(self.engine, column.name)
                            cursor.execute(
                                f"SELECT setval(pg_get_serial_sequence(%s, %s), COALESCE((SELECT MAX({c}) FROM {q}), 1), "
                                f"(SELECT MAX({c}) FROM {q}) IS NOT NULL)",
                                (q, column.name),
                            )
                self.raw.commit()
            else:
                problems = self._check_foreign_keys(cursor)
                if self.vendor == "mysql":
                    cursor.execute("SET FOREIGN_KEY_CHECKS = 1")
                    cursor.execute("SET UNIQUE_CHECKS = 1")
                self.raw.commit()
        finally:
            cursor.close()
        return problems

    def _check_foreign_keys(self, cursor: Any) -> list[str]:
        problems = []
        for name, table in self.tables.items():
            for fk in table.foreign_keys:
                if fk.ref_table not in self.tables:
                    continue
                q = lambda n: _quote(self.engine, n)  # noqa: E731
                child = " AND ".join(f"c.{q(col)} IS NOT NULL" for col in fk.columns)
                match = " AND ".join(f"p.{q(r)} = c.{q(col)}" for col, r in zip(fk.columns, fk.ref_columns))
                cursor.execute(
                    f"SELECT COUNT(*) FROM {q(name)} c WHERE {child} AND NOT EXISTS "
                    f"(SELECT 1 FROM {q(fk.ref_table)} p WHERE {match})"
                )
                broken = cursor.fetchone()[0]
                if broken:
                    problems.append(f"{broken} rows of {name}.{','.join(fk.columns)} reference missing {fk.ref_table} rows")
        return problems


def _defer_keys(cursor: Any, quoted: str) -> list[tuple[str, str]]:
    """Drop the primary key and unique constraints of a table just created (empty, in this transaction)
    and return them (name, definition) to add back after ``COPY``: a B-tree built once from all rows
    instead of one insertion per row (random uuid keys touch a random page each)."""
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
        "AND contype IN ('p', 'u') ORDER BY contype, conname",
        (quoted,),
    )
    constraints = [(str(name), str(definition)) for name, definition in cursor.fetchall()]
    for name, _definition in constraints:
        cursor.execute(f'ALTER TABLE {quoted} DROP CONSTRAINT "{name.replace(chr(34), chr(34) * 2)}"')
    return constraints


def _pg_constraints(cursor: Any) -> set[str]:
    cursor.execute("SELECT conname FROM pg_constraint WHERE contype = 'f'")
    return {row[0] for row in cursor.fetchall()}
