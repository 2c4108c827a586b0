"""Type drift: what a target vendor will change in a bundle's values, column by column.

A clone across vendors is only as exact as the target's types: MariaDB's
``timestamp`` keeps whole seconds, SQLite stores instants as epoch
milliseconds, MariaDB's ``float`` is single precision, and a SQLite source
may hold strings longer than their ``varchar(n)`` or integers beyond 32 bits,
which PostgreSQL and MariaDB refuse.  Nothing of this may happen silently.

One list of :class:`Check` per column (:func:`table_checks`) says what the
target does to a value: ``changed`` (stored, but not as it was) or
``refused`` (the import would fail).  The import plan counts the affected
values by streaming the bundle's rows (:func:`plan_drift`), and ``verify``
runs the same checks to tell the drift it predicted from real differences.

One change is CairnCMS's metadata rather than a vendor's type: a cross-vendor
import rewrites the ``cast-timestamp`` flag of timestamp fields in
``directus_fields.special`` (:func:`field_flags`), reported here and in
``verify`` like any other expected change.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .table_schema import Column, TableDef
import orjson

from .values import SQLITE_STORED, UTC, fast_decoder, loads_line, moment, stored_types

#: MariaDB/MySQL ``TIMESTAMP`` holds 1970-01-01 00:00:01 … 2038-01-19 03:14:07 UTC.
_MYSQL_TIMESTAMP_RANGE = (dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), dt.datetime(2038, 1, 19, 3, 14, 7, tzinfo=UTC))
#: MariaDB/MySQL ``TEXT`` holds 65,535 bytes.
_MYSQL_TEXT_BYTES = 65535
_VENDOR_NAMES = {"mysql": "MariaDB/MySQL", "postgres": "PostgreSQL", "sqlite": "SQLite"}


@dataclass(frozen=True)
class Check:
    """One thing a target does to some values of a column.

    ``test`` takes a non-null neutral value and says whether it is affected.
    ``visible``: ``verify`` can see the change in the target's values (a
    storage class on a non-SQLite target cannot be seen: it no longer exists).
    """

    kind: str
    effect: str  # "changed" or "refused"
    note: str
    test: Callable[[Any], bool]
    visible: bool = True


def _is_json(text: Any) -> bool:
    if not isinstance(text, str):
        return True  # a parsed value: written back as JSON text
    try:  # orjson first (the plan reads every JSON value of the bundle); what it refuses, as before
        orjson.loads(text)
        return True
    except orjson.JSONDecodeError:
        pass
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _timestamp_checks(column: Column, target: str, *, source: str, sqlite_stored: bool) -> list[Check]:
    checks = []
    last: list[Any] = [None, None]

    def parsed(value: Any) -> dt.datetime:
        """``moment`` of the value, parsed once for both checks that read it (the plan's hot path)."""
        if value is not last[0]:
            last[1] = moment(value, column.type)
            last[0] = value
        return last[1]

    def fraction(value: Any) -> int:
        return parsed(value).microsecond
    if target == "mysql":
        checks.append(Check("timestamp_precision", "changed", "MariaDB/MySQL keep whole seconds: the fraction is cut",
                            lambda v: fraction(v) != 0))
    if target == "sqlite" and column.type == "timestamp" and not sqlite_stored:
        checks.append(Check("timestamp_precision", "changed", "SQLite stores epoch milliseconds: microseconds are cut",
                            lambda v: fraction(v) % 1000 != 0))
    if column.type != "timestamp":
        return checks
    if target == "mysql":
        low, high = _MYSQL_TIMESTAMP_RANGE
        checks.append(Check("timestamp_range", "refused", "outside TIMESTAMP's 1970-01-01 00:00:01 to "
                            "2038-01-19 03:14:07 UTC: MariaDB/MySQL refuse it",
                            lambda v: not low <= parsed(v) <= high))
    if sqlite_stored and target != "sqlite":
        checks.append(Check("storage_class", "changed", "SQLite TEXT values become native timestamps "
                            "(a copy back to SQLite stores them as INTEGER epoch ms)",
                            lambda v: isinstance(v, str), visible=False))
    if target == "sqlite" and not sqlite_stored:
        note = ("this format-1 bundle does not record SQLite storage classes: every value is written as INTEGER "
                "epoch ms" if source == "sqlite" else
                f"{_VENDOR_NAMES.get(source, source)} instants become INTEGER epoch ms on SQLite (typeof() integer)")
        checks.append(Check("storage_class", "changed", note, lambda v: True, visible=False))
    return checks


def column_checks(column: Column, target: str, *, source: str, sqlite_stored: bool = False,
                  json_normalised: bool = False) -> list[Check]:
    """What ``target`` does to the values of ``column`` from a bundle of a ``source`` instance.

    :param sqlite_stored: the column's values are in SQLite's stored form (:func:`~cairn_migrate.bundle.values.stored_types`).
    :param json_normalised: the target is MySQL proper, whose JSON type re-serialises the text (MariaDB keeps it).
    """
    t, name = column.type, _VENDOR_NAMES.get(target, target)
    if t in ("timestamp", "datetime"):
        return _timestamp_checks(column, target, source=source, sqlite_stored=sqlite_stored)
    if source == target:
        return []  # the same types enforce the same limits (instants aside: a source may keep more digits)
    checks = []
    if t == "boolean" and sqlite_stored and target != "sqlite":
        checks.append(Check("boolean_value", "changed", f"SQLite values other than 0/1 become {name}'s true/1",
                            lambda v: v not in (0, 1), visible=False))
    if t == "float" and target == "mysql":
        checks.append(Check("float_precision", "changed", "MariaDB/MySQL FLOAT is single precision: 6 significant digits",
                            lambda v: float(f"{float(v):.6g}") != float(v)))
    if t == "string" and target != "sqlite" and column.length:
        length = column.length
        checks.append(Check("string_length", "refused", f"longer than varchar({length}): {name} refuses it",
                            lambda v: len(str(v)) > length))
    if t == "text" and target == "mysql":
        checks.append(Check("text_length", "refused", "over 65,535 bytes: MariaDB/MySQL TEXT refuses it",
                            lambda v: len(v) > _MYSQL_TEXT_BYTES // 4 and len(v.encode("utf-8")) > _MYSQL_TEXT_BYTES))
    if t in ("string", "text") and target == "postgres":
        checks.append(Check("nul_character", "refused", "contains a NUL character: PostgreSQL text refuses it",
                            lambda v: "\x00" in str(v)))
    if t in ("integer", "bigint") and target != "sqlite":
        unsigned = target == "mysql" and (column.unsigned or column.autoincrement)
        bits = 32 if t == "integer" else 64
        low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        checks.append(Check("integer_range", "refused", f"outside {low}..{high}: {name} {t} refuses it",
                            lambda v: not low <= int(v) <= high))
    if t == "json" and target != "sqlite":
        checks.append(Check("json_invalid", "refused", f"not valid JSON: {name}'s json type refuses it",
                            lambda v: not _is_json(v)))
    if t == "json" and json_normalised:
        checks.append(Check("json_reserialised", "changed", "MySQL's JSON type re-serialises the text (key order, spacing)",
                            lambda v: True, visible=False))
    return checks


def table_checks(table: TableDef, target: str, *, source: str, sqlite_stored: Collection[str] = (),
                 json_normalised: bool = False) -> list[tuple[int, list[Check]]]:
    """``(column index, checks)`` for the columns of ``table`` that ``target`` may change or refuse.

    :param sqlite_stored: the types the bundle carries in SQLite's stored form.
    """
    result = []
    for index, column in enumerate(table.columns):
        checks = column_checks(column, target, source=source, sqlite_stored=column.type in sqlite_stored,
                               json_normalised=json_normalised)
        if checks:
            result.append((index, checks))
    return result


#: CairnCMS on SQLite declares ``timestamp`` and ``dateTime`` fields alike (``datetime``) and tells a
#: timestamp by this flag in ``directus_fields.special``, which its own field creation adds on SQLite
#: only (``fieldFlagForField`` in ``api/src/database/helpers/date/dialects/sqlite.ts``; reference §8.5).
TIMESTAMP_FLAG = "cast-timestamp"
#: The drift kind of the rewritten flag (:class:`FieldFlags`).
TIMESTAMP_FLAG_KIND = "timestamp_flag"


@dataclass(frozen=True)
class FieldFlags:
    """The ``directus_fields.special`` rewrite of a cross-vendor import, so that CairnCMS on the target
    reads every timestamp field of a user collection as a timestamp, like a field it created there.

    Into SQLite the flag is added (without it CairnCMS reads the ``datetime`` column as a zone-less
    ``dateTime``); into PostgreSQL/MariaDB it is removed (the column type says timestamp, and CairnCMS
    there never writes it).  SQLite → SQLite has none: the source's flags are already CairnCMS's own.
    """

    add: bool
    fields: frozenset[tuple[str, str]]
    collection: int
    field: int
    special: int
    note: str

    def rewritten(self, special: str | None) -> str | None:
        """``special`` (a CSV of flags, or ``None``) with the flag added or removed, as CairnCMS keeps it."""
        flags = [flag for flag in (special or "").split(",") if flag]
        if self.add == (TIMESTAMP_FLAG in flags):
            return special  # already as CairnCMS on the target keeps it
        if self.add:
            return ",".join([*flags, TIMESTAMP_FLAG])  # appended, as CairnCMS's addFieldFlag does
        return ",".join(flag for flag in flags if flag != TIMESTAMP_FLAG) or None

    def rewrite(self, row: list[Any]) -> bool:
        """Rewrite one ``directus_fields`` row in place; says whether it changed."""
        if (row[self.collection], row[self.field]) not in self.fields:
            return False
        special = self.rewritten(row[self.special])
        if special == row[self.special]:
            return False
        row[self.special] = special
        return True


def field_flags(tables: Sequence[TableDef], source: str, target: str) -> FieldFlags | None:
    """The ``directus_fields.special`` rewrite importing ``tables`` from ``source`` into ``target`` needs, if any."""
    fields_table = next((table for table in tables if table.name == "directus_fields"), None)
    if source == target or fields_table is None:
        return None
    timestamps = frozenset((table.name, column.name) for table in tables if not table.name.startswith("directus_")
                           for column in table.columns if column.type == "timestamp")
    if not timestamps:
        return None
    names = [column.name for column in fields_table.columns]
    add = target == "sqlite"
    note = (f"CairnCMS on SQLite reads a timestamp field as one only with `{TIMESTAMP_FLAG}` in special: added" if add
            else f"CairnCMS on {_VENDOR_NAMES.get(target, target)} has no `{TIMESTAMP_FLAG}` (the column type says "
            "timestamp): removed")
    return FieldFlags(add, timestamps, names.index("collection"), names.index("field"), names.index("special"), note)


def count_flag_drift(rows: Iterable[Sequence[Any]], flags: FieldFlags) -> int:
    """How many ``directus_fields`` rows ``flags`` rewrites (on copies: ``rows`` stay as they are)."""
    return sum(flags.rewrite(list(row)) for row in rows)


#: The kind counted for a value no check can read (text in an integer column, a date that is not one).
UNREADABLE = "unreadable"


def count_drift(rows: Iterable[Sequence[Any]], checks: Sequence[tuple[int, list[Check]]]) -> dict[tuple[int, str], int]:
    """How many values each check affects, per ``(column index, kind)``: one pass, flat memory."""
    counts: dict[tuple[int, str], int] = {}
    for row in rows:
        for index, column_checks_ in checks:
            value = row[index]
            if value is None:
                continue
            for check in column_checks_:
                try:
                    kind = check.kind if check.test(value) else None
                except (TypeError, ValueError, OverflowError):
                    kind = UNREADABLE
                if kind:
                    counts[(index, kind)] = counts.get((index, kind), 0) + 1
                if kind == UNREADABLE:
                    break
    return counts


def _jsonl(path: Path) -> Iterator[list[Any]]:
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield loads_line(line)  # orjson, and the standard library for what it refuses


def _stored_types(manifest: Mapping[str, Any]) -> frozenset[str]:
    """The types whose values :func:`_row_source` gives as SQLite stored them (a native SQLite member: all of them)."""
    if manifest.get("data") == "native" and manifest["native"]["vendor"] == "sqlite":
        return SQLITE_STORED
    return stored_types(manifest)


@contextlib.contextmanager
def _row_source(bundle_dir: Path, manifest: Mapping[str, Any]) -> Iterator[Callable[[TableDef], Iterable[list[Any]]]]:
    """The bundle's rows per table: its JSON lines, or the tables of a native SQLite member read as the
    export writes JSON lines (neutral, but :func:`_stored_types` as stored, so storage classes are counted)."""
    if manifest.get("data") != "native":
        yield lambda table: _jsonl(bundle_dir / manifest["tables"][table.name]["member"])
        return
    import sqlalchemy as sa

    from ..instance.database import Database, open_engine
    from ..instance.instance import DatabaseConfig

    config = DatabaseConfig("sqlite3", "sqlite", sa.engine.URL.create("sqlite", database=str(bundle_dir / manifest["native"]["member"])))

    def rows(db: Database, table: TableDef) -> Iterator[list[Any]]:
        decoders = [fast_decoder(column.type, "sqlite") for column in table.columns]
        with db.engine.connect() as conn:
            for row in db.stream_tuples(table.name, [c.name for c in table.columns], connection=conn):
                yield [value if decode is None else decode(value) for decode, value in zip(decoders, row)]

    with Database(open_engine(config), config) as db:
        yield lambda table: rows(db, table)


def plan_drift(bundle_dir: Path, manifest: Mapping[str, Any], tables: Sequence[TableDef], target: str, *,
               json_normalised: bool = False) -> list[dict[str, Any]]:
    """Per column and kind, what importing the bundle into ``target`` changes or refuses, with value counts.

    Only tables with a column at risk are read.  A native bundle restored on
    its own vendor by the vendor's tool changes nothing.
    """
    native = manifest.get("native") if manifest.get("data") == "native" else None
    if native is not None and native["vendor"] == target:
        return []
    source = manifest["source"]["vendor"]
    stored = _stored_types(manifest)
    entries: list[dict[str, Any]] = []
    with _row_source(bundle_dir, manifest) as rows_of:
        for table in tables:
            checks = table_checks(table, target, source=source, sqlite_stored=stored, json_normalised=json_normalised)
            if not checks or not manifest["tables"][table.name]["rows"]:
                continue
            counts = count_drift(rows_of(table), checks)
            for index, column_checks_ in checks:
                column = table.columns[index]
                found = [(c.kind, c.effect, c.note) for c in column_checks_]
                found.append((UNREADABLE, "refused", f"not a {column.type} value the target can read"))
                for kind, effect, note in found:
                    if counts.get((index, kind)):
                        entries.append({
                            "table": table.name, "column": column.name, "type": column.type, "kind": kind,
                            "effect": effect, "values": counts[(index, kind)], "note": note,
                        })
        entries.extend(_flag_drift(tables, source, target, manifest, rows_of))
    return entries


def _flag_drift(tables: Sequence[TableDef], source: str, target: str, manifest: Mapping[str, Any],
                rows_of: Callable[[TableDef], Iterable[list[Any]]]) -> list[dict[str, Any]]:
    """The plan's entry for the ``directus_fields.special`` rows the import rewrites (:class:`FieldFlags`)."""
    flags = field_flags(tables, source, target)
    if flags is None or not manifest["tables"]["directus_fields"]["rows"]:
        return []
    table = next(t for t in tables if t.name == "directus_fields")
    rewritten = count_flag_drift(rows_of(table), flags)
    if not rewritten:
        return []
    return [{"table": "directus_fields", "column": "special", "type": table.columns[flags.special].type,
             "kind": TIMESTAMP_FLAG_KIND, "effect": "changed", "values": rewritten, "note": flags.note}]
