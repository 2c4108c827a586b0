"""Vendor-neutral table definitions: read from one vendor, created on another.

A clone across PostgreSQL, MySQL/MariaDB and SQLite cannot replay a native
dump, so every table is described once in a small neutral vocabulary (the
knex types CairnCMS itself uses: ``uuid``, ``string``, ``json``, ``timestamp``
…) and re-created with the native type each vendor's CairnCMS would have made
(reference §1.2).  Reflection leans on SQLAlchemy's inspector; the few things
it does not see (SQLite ``AUTOINCREMENT`` and ``ON DELETE`` rules, MariaDB's
``json`` = ``longtext`` + ``json_valid`` check) are read from the catalog.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles

#: The neutral column types (a subset of CairnCMS/knex types).
TYPES = (
    "uuid", "string", "text", "json", "boolean", "timestamp", "datetime", "date", "time",
    "integer", "bigint", "float", "double", "decimal", "binary",
)


@dataclass
class Column:
    """One column in neutral terms.

    ``default`` is ``None`` (no default), ``{"now": True}`` (the current
    timestamp) or ``{"value": <JSON literal>}``.
    """

    name: str
    type: str
    nullable: bool = True
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    default: dict[str, Any] | None = None
    autoincrement: bool = False
    unsigned: bool = False


@dataclass
class ForeignKey:
    columns: list[str]
    ref_table: str
    ref_columns: list[str]
    name: str | None = None
    on_delete: str | None = None
    on_update: str | None = None


@dataclass
class Index:
    name: str
    columns: list[str]
    unique: bool = False


@dataclass
class TableDef:
    """A table: columns, primary key, foreign keys and indexes."""

    name: str
    columns: list[Column]
    primary_key: list[str] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    indexes: list[Index] = field(default_factory=list)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableDef:
        return cls(
            name=data["name"],
            columns=[Column(**c) for c in data["columns"]],
            primary_key=list(data.get("primary_key", [])),
            foreign_keys=[ForeignKey(**f) for f in data.get("foreign_keys", [])],
            indexes=[Index(**i) for i in data.get("indexes", [])],
        )


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------

_NOW = re.compile(r"^(current_timestamp(\(\d*\))?|now\(\)|localtimestamp)$", re.I)


def _neutral_default(raw: Any, column_type: str, vendor: str) -> dict[str, Any] | None:
    """Turn a reflected server default (SQL text) into a neutral default."""
    if raw is None:
        return None
    text = str(raw).strip()
    if vendor == "postgres":
        text = re.sub(r"::[a-z ]+(\[\])?$", "", text)  # 'draft'::character varying
    if text.lower() in ("null", ""):
        return None
    if _NOW.match(text):
        return {"now": True}
    if text.startswith("'") and text.endswith("'"):
        text = text[1:-1].replace("''", "'")
    if column_type == "boolean":
        return {"value": text.lower() in ("1", "true", "t")}
    if column_type in ("integer", "bigint"):
        try:
            return {"value": int(text)}
        except ValueError:
            return None
    if column_type in ("float", "double", "decimal"):
        try:
            return {"value": float(text)}
        except ValueError:
            return None
    return {"value": text}


def _neutral_type(sql_type: sa.types.TypeEngine[Any], vendor: str, json_columns: set[str], name: str) -> Column:
    """Map a reflected SQLAlchemy type onto a neutral :class:`Column` (type and sizes only)."""
    type_name = type(sql_type).__name__.upper()
    length = getattr(sql_type, "length", None)
    if name in json_columns or isinstance(sql_type, sa.JSON):
        return Column(name, "json")
    if isinstance(sql_type, sa.Uuid) or type_name == "UUID":
        return Column(name, "uuid")
    if type_name == "CHAR" and length == 36:
        return Column(name, "uuid")  # CairnCMS's uuid on SQLite and MySQL
    if type_name == "TINYINT" and getattr(sql_type, "display_width", None) == 1:
        return Column(name, "boolean")
    if isinstance(sql_type, sa.Boolean):
        return Column(name, "boolean")
    if isinstance(sql_type, (sa.Enum,)):
        return Column(name, "string", length=255)
    if isinstance(sql_type, sa.String) and not isinstance(sql_type, sa.Text) and type_name not in (
        "TEXT", "LONGTEXT", "MEDIUMTEXT", "TINYTEXT", "CLOB",
    ):
        return Column(name, "string", length=length or 255)
    if isinstance(sql_type, sa.Text) or type_name in ("TEXT", "LONGTEXT", "MEDIUMTEXT", "TINYTEXT", "CLOB"):
        return Column(name, "text")
    if type_name == "TIMESTAMP":
        if vendor == "postgres" and not getattr(sql_type, "timezone", False):
            return Column(name, "datetime")
        return Column(name, "timestamp")
    if type_name == "DATETIME":
        # SQLite declares knex ``timestamp`` as ``datetime``; MySQL's DATETIME is naive.
        return Column(name, "timestamp" if vendor == "sqlite" else "datetime")
    if isinstance(sql_type, sa.DateTime):
        return Column(name, "timestamp" if getattr(sql_type, "timezone", False) else "datetime")
    if isinstance(sql_type, sa.Date):
        return Column(name, "date")
    if isinstance(sql_type, sa.Time):
        return Column(name, "time")
    if isinstance(sql_type, sa.BigInteger):
        return Column(name, "bigint", unsigned=bool(getattr(sql_type, "unsigned", False)))
    if isinstance(sql_type, sa.Integer):
        return Column(name, "integer", unsigned=bool(getattr(sql_type, "unsigned", False)))
    if isinstance(sql_type, sa.Numeric) and not isinstance(sql_type, sa.Float):
        return Column(name, "decimal", precision=sql_type.precision, scale=sql_type.scale)
    if isinstance(sql_type, sa.Float):
        is_double = type_name in ("DOUBLE", "DOUBLE_PRECISION", "DOUBLE PRECISION")
        return Column(name, "double" if is_double else "float")
    if isinstance(sql_type, sa.LargeBinary) or type_name in ("BYTEA", "BLOB", "LONGBLOB", "VARBINARY"):
        return Column(name, "binary")
    return Column(name, "text")  # unknown types travel as text


def _sqlite_details(engine: Engine, table: str) -> tuple[bool, list[dict[str, Any]]]:
    """SQLite: does the table use AUTOINCREMENT, and its FK rules (PRAGMA foreign_key_list)."""
    with engine.connect() as conn:
        sql = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE type='table' AND name=:n"), {"n": table}).scalar()
        rows = conn.execute(sa.text(f'PRAGMA foreign_key_list("{table}")')).mappings().all()
    return bool(sql and re.search(r"autoincrement", sql, re.I)), [dict(r) for r in rows]


def _mysql_json_columns(engine: Engine, tables: Sequence[str]) -> dict[str, set[str]]:
    """MariaDB stores ``json`` as longtext with a column-level ``json_valid(col)`` check.

    SQLAlchemy's inspector does not report column-level checks on MariaDB,
    so the catalog is asked directly (MySQL 8 has a real JSON type instead).
    """
    query = sa.text(
        "SELECT TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()"
    )
    columns: dict[str, set[str]] = {name: set() for name in tables}
    try:
        with engine.connect() as conn:
            rows = list(conn.execute(query))
    except sa.exc.DBAPIError:  # MySQL: no TABLE_NAME column; its JSON type reflects as JSON
        return columns
    for table, clause in rows:
        match = re.search(r"json_valid\(`?(\w+)`?\)", clause or "", re.I)
        if match and table in columns:
            columns[table].add(match.group(1))
    return columns


class _Catalog:
    """Everything reflection needs, fetched once for all tables (one query per kind on PG/MySQL)."""

    def __init__(self, engine: Engine, tables: Sequence[str], vendor: str) -> None:
        inspector = sa.inspect(engine)
        names = list(tables)

        def multi(method: Any) -> dict[str, Any]:
            return {key[1]: value for key, value in method(filter_names=names).items()}

        self.columns = multi(inspector.get_multi_columns)
        self.pks = multi(inspector.get_multi_pk_constraint)
        self.fks = multi(inspector.get_multi_foreign_keys) if vendor != "sqlite" else {}
        self.uniques = multi(inspector.get_multi_unique_constraints)
        self.indexes = multi(inspector.get_multi_indexes)
        self.json = _mysql_json_columns(engine, names) if vendor == "mysql" else {}


def reflect_table(engine: Engine, catalog: _Catalog, table: str, vendor: str) -> TableDef:
    """Describe ``table`` in neutral terms."""
    json_columns = catalog.json.get(table, set())
    pk = catalog.pks.get(table, {}).get("constrained_columns") or []
    sqlite_autoinc, sqlite_fks = _sqlite_details(engine, table) if vendor == "sqlite" else (False, [])
    columns = []
    for info in catalog.columns.get(table, []):
        column = _neutral_type(info["type"], vendor, json_columns, info["name"])
        column.nullable = bool(info.get("nullable", True))
        is_serial_default = "nextval(" in str(info.get("default") or "")
        if info["name"] in pk and len(pk) == 1 and column.type in ("integer", "bigint"):
            if vendor == "sqlite":
                column.autoincrement = sqlite_autoinc or True  # INTEGER PRIMARY KEY is a rowid alias
            else:
                column.autoincrement = info.get("autoincrement") is True or is_serial_default
        if not is_serial_default:
            column.default = _neutral_default(info.get("default"), column.type, vendor)
        columns.append(column)
    foreign_keys = []
    if vendor == "sqlite":
        grouped: dict[int, ForeignKey] = {}
        for row in sqlite_fks:
            fk = grouped.setdefault(
                row["id"],
                ForeignKey([], row["table"], [], None, _rule(row.get("on_delete")), _rule(row.get("on_update"))),
            )
            fk.columns.append(row["from"])
            fk.ref_columns.append(row["to"])
        foreign_keys = list(grouped.values())
    else:
        for info in catalog.fks.get(table, []):
            options = info.get("options") or {}
            foreign_keys.append(
                ForeignKey(
                    list(info["constrained_columns"]),
                    info["referred_table"],
                    list(info["referred_columns"]),
                    info.get("name"),
                    _rule(options.get("ondelete")),
                    _rule(options.get("onupdate")),
                )
            )
    fk_names = {fk.name for fk in foreign_keys if fk.name}
    # MySQL names the index it makes for an unnamed foreign key after its first column.
    fk_implicit = {(fk.columns[0], tuple(fk.columns)) for fk in foreign_keys}
    indexes = []
    seen: set[tuple[str, ...]] = set()
    for info in list(catalog.uniques.get(table, [])) + list(catalog.indexes.get(table, [])):
        cols = [c for c in info.get("column_names", []) if c]
        unique = bool(info.get("unique", True) if "unique" in info else True)
        key = tuple(cols)
        if not cols or key in seen or key == tuple(pk):
            continue
        # MySQL creates an index per foreign key; the FK recreates it.
        if vendor == "mysql" and not unique and (info.get("name") in fk_names or (info.get("name"), key) in fk_implicit):
            continue
        seen.add(key)
        indexes.append(Index(info.get("name") or f"{table}_{'_'.join(cols)}_{'unique' if unique else 'index'}", cols, unique))
    return TableDef(table, columns, list(pk), foreign_keys, indexes)


def _rule(value: Any) -> str | None:
    text = str(value or "").upper()
    return None if text in ("", "NO ACTION", "RESTRICT") else text


def reflect_tables(engine: Engine, tables: Iterable[str], vendor: str) -> list[TableDef]:
    """Neutral definitions of ``tables`` (the catalog is read once for all of them)."""
    names = list(tables)
    if not names:
        return []
    catalog = _Catalog(engine, names, vendor)
    return [reflect_table(engine, catalog, name, vendor) for name in names]


def load_order(tables: Sequence[TableDef]) -> list[str]:
    """Table names parents-first (self-references ignored; cycles broken by name).

    ``directus_migrations`` leads, as in reference §1.4.
    """
    names = {t.name for t in tables}
    deps = {t.name: {fk.ref_table for fk in t.foreign_keys if fk.ref_table in names and fk.ref_table != t.name} for t in tables}
    ordered: list[str] = []
    done: set[str] = set()
    remaining = sorted(names, key=lambda n: (n != "directus_migrations", n))
    while remaining:
        progressed = False
        for name in list(remaining):
            if deps[name] <= done:
                ordered.append(name)
                done.add(name)
                remaining.remove(name)
                progressed = True
        if not progressed:  # a cycle between tables: take the first, FKs are added after loading
            name = remaining.pop(0)
            ordered.append(name)
            done.add(name)
    return ordered


# --------------------------------------------------------------------------
# Creating
# --------------------------------------------------------------------------


class SqliteDatetime(sa.types.TypeDecorator[Any]):
    """SQLite's ``datetime`` declaration, as CairnCMS (knex) writes it."""

    impl = sa.types.NullType
    cache_ok = True


@compiles(SqliteDatetime, "sqlite")
def _compile_sqlite_datetime(type_: Any, compiler: Any, **kw: Any) -> str:
    return "datetime"


class SqliteJson(sa.types.TypeDecorator[Any]):
    impl = sa.types.NullType
    cache_ok = True


@compiles(SqliteJson, "sqlite")
def _compile_sqlite_json(type_: Any, compiler: Any, **kw: Any) -> str:
    return "json"


def native_type(column: Column, vendor: str, *, unsigned: bool = False) -> sa.types.TypeEngine[Any]:
    """The native type CairnCMS on ``vendor`` uses for a neutral column.

    The vendor's SQLAlchemy dialect is imported here, for that vendor only: a process that never touches
    PostgreSQL or MySQL does not pay for loading their dialects (start-up: ``tests/test_startup.py``).
    """
    t = column.type
    if vendor == "postgres":
        from sqlalchemy.dialects import postgresql
    elif vendor == "mysql":
        from sqlalchemy.dialects import mysql
    if t == "uuid":
        return postgresql.UUID(as_uuid=False) if vendor == "postgres" else sa.CHAR(36)
    if t == "string":
        return sa.String(column.length or 255)
    if t == "text":
        return sa.Text()
    if t == "json":
        if vendor == "postgres":
            return postgresql.JSON()
        return mysql.JSON() if vendor == "mysql" else SqliteJson()
    if t == "boolean":
        return mysql.TINYINT(1) if vendor == "mysql" else sa.Boolean(create_constraint=False)
    if t == "timestamp":
        if vendor == "postgres":
            return postgresql.TIMESTAMP(timezone=True)
        return mysql.TIMESTAMP() if vendor == "mysql" else SqliteDatetime()
    if t == "datetime":
        if vendor == "postgres":
            return postgresql.TIMESTAMP(timezone=False)
        return mysql.DATETIME() if vendor == "mysql" else SqliteDatetime()
    if t == "date":
        return sa.Date()
    if t == "time":
        return sa.Time()
    if t in ("integer", "bigint"):
        if vendor == "mysql":
            base = mysql.BIGINT if t == "bigint" else mysql.INTEGER
            return base(unsigned=unsigned or column.unsigned)
        return sa.BigInteger() if t == "bigint" else sa.Integer()
    if t == "float":
        return sa.Float()
    if t == "double":
        return sa.Double()
    if t == "decimal":
        return sa.Numeric(column.precision or 10, column.scale or 0)
    if t == "binary":
        return sa.LargeBinary()
    raise ValueError(f"unknown neutral type {t!r}")


def _server_default(column: Column, vendor: str) -> Any:
    if not column.default:
        return None
    if column.default.get("now"):
        return sa.text("CURRENT_TIMESTAMP")
    value = column.default.get("value")
    if isinstance(value, bool):
        if vendor == "postgres":
            return sa.text("true" if value else "false")
        return sa.text("1" if value else "0")
    if isinstance(value, (int, float)):
        return sa.text(repr(value))
    if vendor == "mysql" and column.type in ("text", "json"):
        return None  # MySQL refuses literal defaults on TEXT/JSON columns
    return str(value)


def build_tables(tables: Sequence[TableDef], vendor: str, metadata: sa.MetaData, *, with_foreign_keys: bool = True,
                 mysql_collation: str | None = None) -> dict[str, sa.Table]:
    """SQLAlchemy tables for ``vendor`` from neutral definitions (nothing is executed).

    MySQL tables are utf8mb4 with ``mysql_collation`` (the target database's default, see
    :func:`mysql_database_collation`): a charset without a collation would get the charset's own
    default (``utf8mb4_general_ci``) instead, which CairnCMS warns about at boot.
    """
    by_name = {t.name: t for t in tables}
    # On MySQL, integer FKs must match an unsigned auto-increment parent.
    unsigned_refs: set[tuple[str, str]] = set()
    for table in tables:
        for fk in table.foreign_keys:
            parent = by_name.get(fk.ref_table)
            if parent is None:
                continue
            for col, ref in zip(fk.columns, fk.ref_columns):
                try:
                    ref_col = parent.column(ref)
                except KeyError:
                    continue
                if ref_col.autoincrement or ref_col.unsigned:
                    unsigned_refs.add((table.name, col))
    built = {}
    for table in tables:
        columns = []
        for column in table.columns:
            unsigned = vendor == "mysql" and (column.autoincrement or (table.name, column.name) in unsigned_refs)
            columns.append(
                sa.Column(
                    column.name,
                    native_type(column, vendor, unsigned=unsigned),
                    primary_key=column.name in table.primary_key,
                    nullable=column.nullable and column.name not in table.primary_key,
                    autoincrement=column.autoincrement if column.name in table.primary_key else False,
                    server_default=_server_default(column, vendor),
                )
            )
        constraints: list[sa.schema.SchemaItem] = []
        if with_foreign_keys:
            for fk in table.foreign_keys:
                constraints.append(_fk_constraint(fk))
        for index in table.indexes:
            if index.unique:
                constraints.append(sa.UniqueConstraint(*index.columns, name=index.name))
        kwargs: dict[str, Any] = {}
        if vendor == "sqlite" and any(c.autoincrement for c in table.columns):
            kwargs["sqlite_autoincrement"] = True
        if vendor == "mysql":
            kwargs.update(mysql_charset="utf8mb4", mysql_engine="InnoDB")
            if mysql_collation:
                kwargs["mysql_collate"] = mysql_collation
        built_table = sa.Table(table.name, metadata, *columns, *constraints, **kwargs)
        for index in table.indexes:
            if not index.unique:
                sa.Index(index.name, *(built_table.c[c] for c in index.columns))
        built[table.name] = built_table
    return built


def mysql_database_collation(engine: Engine) -> str | None:
    """The database's default collation when it is a utf8mb4 one, else ``None``.

    CairnCMS (knex) creates tables without a charset, so they take the database's default; an
    imported table must match it or CairnCMS warns, and comparisons with tables it creates later can
    fail with "Illegal mix of collations".  A database whose default is not utf8mb4 keeps utf8mb4's
    own default: the source's text must survive.
    """
    with engine.connect() as conn:
        collation = conn.execute(sa.text("SELECT @@collation_database")).scalar()
    return collation if isinstance(collation, str) and collation.startswith("utf8mb4_") else None


def _fk_constraint(fk: ForeignKey) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        fk.columns,
        [f"{fk.ref_table}.{c}" for c in fk.ref_columns],
        name=fk.name,
        ondelete=fk.on_delete,
        onupdate=fk.on_update,
    )


def foreign_key_constraints(table: TableDef, built: sa.Table) -> list[sa.ForeignKeyConstraint]:
    """FK constraints for adding after the data is loaded (PostgreSQL path)."""
    result = []
    for index, fk in enumerate(table.foreign_keys):
        constraint = _fk_constraint(fk)
        if constraint.name is None:
            constraint.name = f"{table.name}_{'_'.join(fk.columns)}_foreign"[:63]
        result.append(constraint)
    return result
