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
from .values import UTC, moment, stored_types

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
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _timestamp_checks(column: Column, target: str, *, source: str, sqlite_stored: bool) -> list[Check]:
    checks = []

    def fraction(value: Any) -> int:
        return moment(value, column.type).microsecond
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
                            lambda v: not low <= moment(v, "timestamp") <= high))
    if sqlite_stored and target != "sqlite":
        checks.append(Check("storage_class", "changed", "SQLite TEXT values become native timestamps "
                            "(a copy back to SQLite stores them as INTEGER epoch ms)",
                            lambda v: isinstance(v, str), visible=False))
    if target == "sqlite" and source == "sqlite" and not sqlite_stored:
        checks.append(Check("storage_class", "changed", "this format-1 bundle does not record SQLite storage "
                            "classes: every value is written as INTEGER epoch ms", lambda v: True, visible=False))
    return checks


def column_checks(column: Column, target: str, *, source: str, sqlite_stored: bool = False,
                  json_normalised: bool = False) -> list[Check]:
    """What ``target`` does to the values of ``column`` from a bundle of a ``source`` instance.

    :param sqlite_stored: the column's values are in SQLite's stored form (:func:`~cairn_migrate.values.stored_types`).
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
    loads = json.JSONDecoder().decode
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield loads(line.decode("utf-8"))


@contextlib.contextmanager
def _row_source(bundle_dir: Path, manifest: Mapping[str, Any]) -> Iterator[Callable[[TableDef], Iterable[list[Any]]]]:
    """The bundle's neutral rows per table: its JSON lines, or the tables of a native SQLite member."""
    if manifest.get("data") != "native":
        yield lambda table: _jsonl(bundle_dir / manifest["tables"][table.name]["member"])
        return
    import sqlalchemy as sa

    from .database import Database, open_engine
    from .instance import DatabaseConfig
    from .table_loader import database_rows

    config = DatabaseConfig("sqlite3", "sqlite", sa.engine.URL.create("sqlite", database=str(bundle_dir / manifest["native"]["member"])))
    with Database(open_engine(config), config) as db:
        yield lambda table: database_rows(db, table)


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
    stored = stored_types(manifest)
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
    return entries
