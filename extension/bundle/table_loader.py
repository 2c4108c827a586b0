"""Create tables natively on the target and load neutral rows into them, one transaction per table.

PostgreSQL gets ``COPY`` (its fastest path) and its foreign keys after the
data, since they cannot be deferred; MySQL/MariaDB and SQLite get batched
inserts with foreign-key checks off and every foreign key checked once at the
end.  Values are converted only where the target needs it
(:func:`cairn_migrate.bundle.values.encoder`); most pass through as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

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
            else:
                marker = "?" if self.vendor == "sqlite" else "%s"
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
