"""``promote``'s offline schema engine: a target reached through its database (its ``.env``), not its API.

For a CairnCMS that is not running, or a Directus 9/10 (no ``/schema/*`` endpoints), the engine does
what CairnCMS's ``applyDiff`` does (``apply-diff.ts`` and the collections/fields/relations services),
writing the same rows (reference §2.4):

- the target's snapshot comes from its database (``bundle/schema_snapshot``, byte-identical to
  CairnCMS's own) and the diff is computed here (``schema_diff``), in CairnCMS's format;
- DDL goes through Alembic's operations API (``Operations`` on a ``MigrationContext``;
  ``batch_alter_table`` on SQLite where a table must be rebuilt), with the column types knex gives
  each CairnCMS ``type`` on the target's vendor (reference §1.2), so a later ``cairncms schema
  snapshot`` of the target equals what CairnCMS's own apply would leave;
- ``directus_collections``, ``directus_fields`` and ``directus_relations`` rows are written as
  CairnCMS's items service writes them (CSV ``special``, JSON options, SQLite's ``cast-timestamp``
  flag, foreign keys named ``<table>_<column>_foreign`` with their ``on_delete``).

Order: new collections (their tables with their fields; a ``meta: null`` collection gets a table
and no row, a folder a row and no table), collection updates, then fields (create, update,
delete), then relations (create, update, delete); a deleted collection first loses its relations.
Like CairnCMS, a ``meta: null`` table is never dropped (the diff names it, the apply skips it).

Transactions: on PostgreSQL the whole diff is one transaction (all or nothing). MariaDB commits
every DDL statement itself and SQLite tables are rebuilt outside a transaction, so there each step
commits on its own; a failure raises :class:`PartialApply` naming the steps already applied, and
``promote`` reports it as ``partial``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

from ..errors import InvalidInput, MigrateError
from .schema_diff import apply_records

#: ``ALIAS_TYPES``: fields without a column.
ALIAS_TYPES = frozenset({"alias", "o2m", "m2m", "m2a", "o2a", "files", "translations", "unknown"})


class PartialApply(MigrateError):
    """The diff stopped part-way on a vendor whose DDL commits itself: ``details['applied']`` lists what went in."""

    code = "partial_apply"


# --------------------------------------------------------------------------- column types as knex makes them
class Native(sa.types.UserDefinedType):
    """A column type written exactly as knex writes it for the vendor (``varchar(255)``, ``timestamptz`` …)."""

    cache_ok = True

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def get_col_spec(self, **_: Any) -> str:
        return self.spec


class _Increments(sa.Integer):
    """knex ``increments``: ``integer … autoincrement`` (SQLite), ``serial`` (PostgreSQL), ``int unsigned`` (MySQL)."""


class _BigIncrements(sa.BigInteger):
    """knex ``bigIncrements``."""


@compiles(_Increments)
def _increments(_type: Any, _compiler: Any, **_: Any) -> str:
    return "integer"


@compiles(_Increments, "mysql")
def _increments_mysql(_type: Any, _compiler: Any, **_: Any) -> str:
    return "int unsigned"


@compiles(_BigIncrements)
def _big_increments(_type: Any, _compiler: Any, **_: Any) -> str:
    return "bigint"


@compiles(_BigIncrements, "mysql")
def _big_increments_mysql(_type: Any, _compiler: Any, **_: Any) -> str:
    return "bigint unsigned"


_SIMPLE = {  # CairnCMS type -> (sqlite, postgres, mysql), as knex 2.4 creates it
    "integer": ("integer", "integer", "int"),
    "bigInteger": ("bigint", "bigint", "bigint"),
    "text": ("text", "text", "text"),
    "json": ("json", "json", "json"),
    "boolean": ("boolean", "boolean", "boolean"),
    "uuid": ("char(36)", "uuid", "char(36)"),
    "date": ("date", "date", "date"),
    "time": ("time", "time", "time"),
    "dateTime": ("datetime", "timestamp", "datetime"),
    "timestamp": ("datetime", "timestamptz", "timestamp"),
    "binary": ("blob", "bytea", "blob"),
    "csv": ("varchar(255)", "varchar(255)", "varchar(255)"),
    "hash": ("varchar(255)", "varchar(255)", "varchar(255)"),
}
_VENDORS = ("sqlite", "postgres", "mysql")


def column_type(vendor: str, field: Mapping[str, Any]) -> sa.types.TypeEngine[Any]:
    """The column type ``FieldsService.addColumnToTable`` gives ``field`` on ``vendor``."""
    kind, schema = field["type"], field.get("schema") or {}
    if schema.get("has_auto_increment"):
        return _BigIncrements() if kind == "bigInteger" else _Increments()
    if kind == "string":
        return Native(f"varchar({schema.get('max_length') or 255})")
    if kind in ("float", "decimal"):
        precision = schema.get("numeric_precision") or 10
        scale = schema.get("numeric_scale") if schema.get("numeric_scale") is not None else 5
        if vendor == "sqlite":
            return Native("float")
        if vendor == "postgres" and kind == "float":
            return Native("real")
        return Native(f"{'float' if kind == 'float' else 'decimal'}({precision}, {scale})")
    if kind in _SIMPLE:
        return Native(_SIMPLE[kind][_VENDORS.index(vendor)])
    raise InvalidInput(f"The offline engine cannot create a column of type {kind!r} ({field['collection']}.{field['field']})",
                       hint="promote onto a running CairnCMS with --to-token (its API creates every type)")


def server_default(field: Mapping[str, Any]) -> sa.TextClause | None:
    """knex's ``defaultTo``: ``CURRENT_TIMESTAMP`` for now(), booleans ``'0'``/``'1'``, other values quoted."""
    schema = field.get("schema") or {}
    if "default_value" not in schema or schema.get("default_value") is None:
        return None
    value = schema["default_value"]
    if isinstance(value, str) and (value.lower() == "now()" or value.startswith("CURRENT_TIMESTAMP")):
        return sa.text(value if value.startswith("CURRENT_TIMESTAMP(") else "CURRENT_TIMESTAMP")
    if isinstance(value, bool) or field["type"] == "boolean":
        return sa.text("'1'" if value in (True, 1, "1", "true") else "'0'")
    if isinstance(value, (dict, list)):
        value = json.dumps(value, separators=(",", ":"))
    return sa.text("'" + str(value).replace("'", "''") + "'")


def simple_hash(text: str) -> str:
    """``getSimpleHash`` of ``@cairncms/utils`` (31-based, 32-bit)."""
    value = 0
    for char in text:
        value = (31 * value + ord(char)) & 0xFFFFFFFF
    if value >= 2**31:
        value -= 2**32
    return format(abs(value), "x")


def index_name(kind: str, collection: str, field: str) -> str:
    """``getDefaultIndexName``: ``<table>_<field>_<kind>``, capped at 60 characters with a hash."""
    name = (collection.replace(".", "_").replace("-", "_") + "_" + field + "_" + kind).lower()
    if len(name) <= 60:
        return name
    suffix = f"__{simple_hash(name)}_{kind}"
    return name[:60 - len(suffix)] + suffix


# --------------------------------------------------------------------------- rows as the items service writes them
def _csv(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


class _Json:
    """A JSON value for a metadata column: bound as is to a JSON column, else as its JSON text (MariaDB's ``longtext``)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _json(value: Any) -> Any:
    return None if value is None else _Json(value)


def bind(table: sa.Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` restricted to ``table``'s columns, JSON values in the form the column takes."""
    bound = {}
    for key, value in row.items():
        if key not in table.c:
            continue
        if isinstance(value, _Json):
            value = value.value if isinstance(table.c[key].type, sa.JSON) else json.dumps(value.value)
        bound[key] = value
    return bound


_FIELD_JSON = ("options", "display_options", "translations", "conditions", "validation")
_COLLECTION_JSON = ("translations", "item_duplication_fields")


def field_row(collection: str, field: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in meta.items() if k != "id"}
    row.update(collection=collection, field=field["field"], special=_csv(row.get("special")))
    for key in _FIELD_JSON:
        if key in row:
            row[key] = _json(row[key])
    return row


def collection_row(collection: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(meta)
    row["collection"] = collection
    for key in _COLLECTION_JSON:
        if key in row:
            row[key] = _json(row[key])
    return row


def relation_row(relation: Mapping[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in (relation.get("meta") or {}).items() if k != "id"}
    row.update(many_collection=relation["collection"], many_field=relation["field"],
               one_collection=relation.get("related_collection") or None)
    row["one_allowed_collections"] = _csv(row.get("one_allowed_collections"))
    row.setdefault("one_deselect_action", "nullify")
    return row


# --------------------------------------------------------------------------- the apply
@dataclass
class _Step:
    label: str
    run: Callable[[sa.Connection], None]


class Applier:
    """The steps of one diff on one target database, planned against its current snapshot."""

    def __init__(self, engine: sa.Engine, vendor: str, current: Mapping[str, Any], diff: Mapping[str, Any]) -> None:
        self.engine, self.vendor, self.current = engine, vendor, current
        self.diff = {k: list(diff.get(k) or []) for k in ("collections", "fields", "relations")}
        self.steps: list[_Step] = []
        self._tables: dict[str, sa.Table] = {}
        self._primary = {f["collection"]: f["field"] for f in current.get("fields") or []
                         if (f.get("schema") or {}).get("is_primary_key")}
        self._current_fields = {(f["collection"], f["field"]): f for f in current.get("fields") or []}
        self._current_relations = {(r["collection"], r["field"]): r for r in current.get("relations") or []}
        self._inline_fks: set[tuple[str, str]] = set()
        self._all_new_fields: list[dict[str, Any]] = []

    # ---- helpers
    def _table(self, conn: sa.Connection, name: str) -> sa.Table:
        return sa.Table(name, sa.MetaData(), autoload_with=conn)

    def _op(self, conn: sa.Connection) -> Any:
        from alembic.migration import MigrationContext
        from alembic.operations import Operations

        return Operations(MigrationContext.configure(conn))

    def _insert(self, conn: sa.Connection, table: str, row: Mapping[str, Any]) -> None:
        target = self._table(conn, table)
        conn.execute(target.insert().values(bind(target, row)))

    def _sqlite_autoincrement(self, conn: sa.Connection, table: str) -> bool:
        sql = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE type='table' AND name=:t"), {"t": table}).scalar()
        return "autoincrement" in (sql or "").lower()

    @contextmanager
    def _batch(self, conn: sa.Connection, table: str) -> Iterator[Any]:
        """Alembic's batch mode, rebuilding the table on SQLite (keeping ``AUTOINCREMENT`` and unnamed FKs addressable)."""
        op = self._op(conn)
        if self.vendor != "sqlite":
            yield op
            return
        kwargs = {"sqlite_autoincrement": True} if self._sqlite_autoincrement(conn, table) else {}
        with op.batch_alter_table(table, recreate="always", table_kwargs=kwargs, naming_convention={
                "fk": "%(table_name)s_%(column_0_name)s_foreign"}) as batch:
            yield batch

    # ---- planning
    def plan(self) -> list[_Step]:
        self._plan_collections()
        self._plan_fields()
        self._plan_relations()
        return self.steps

    def _new_entry(self, entry: Mapping[str, Any]) -> dict[str, Any] | None:
        first = entry["diff"][0]
        return first.get("rhs") if first["kind"] == "N" and not first.get("path") else None

    def _plan_collections(self) -> None:
        new = {e["collection"]: self._new_entry(e) for e in self.diff["collections"] if self._new_entry(e)}
        existing = {c["collection"] for c in self.current.get("collections") or []}
        created: set[str] = set()

        def create(name: str) -> None:
            if name in created:
                return
            collection = new[name]
            group = (collection.get("meta") or {}).get("group")
            if group in new and group not in existing:
                create(group)  # a collection nested in a new group comes after its parent
            created.add(name)
            fields = [self._cast_uuid(e) for e in self.diff["fields"] if e["collection"] == name and self._new_entry(e)]
            self.steps.append(_Step(f"+ collection {name}", lambda conn, c=collection, f=fields: self._create_collection(conn, c, f)))

        for name in new:
            create(name)
        self.diff["fields"] = [e for e in self.diff["fields"] if e["collection"] not in created]
        for entry in self.diff["collections"]:
            first = entry["diff"][0]
            if first["kind"] == "D" and not first.get("path"):
                meta = first["lhs"].get("meta")
                # like CairnCMS: top-level ones (nested ones go with their group); a meta-null table is named
                # by the diff but never dropped
                if meta is not None and meta.get("group") is None:
                    self.steps.append(_Step(f"- collection {entry['collection']}",
                                            lambda conn, c=first["lhs"]: self._delete_collection(conn, c)))
            elif first["kind"] in ("E", "A") or first.get("path"):
                current = next((c for c in self.current.get("collections") or [] if c["collection"] == entry["collection"]), None)
                if current is not None:
                    after = apply_records(current, entry["diff"])
                    self.steps.append(_Step(f"~ collection {entry['collection']}",
                                            lambda conn, c=after: self._update_collection(conn, c)))

    def _cast_uuid(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """CairnCMS's cast of a ``char``/``varchar(36)`` key to ``uuid`` when it creates a collection."""
        field = dict(entry["diff"][0]["rhs"])
        schema = field.get("schema") or {}
        if (str(schema.get("data_type")).lower() in ("char", "varchar") and schema.get("max_length") == 36
                and (schema.get("is_primary_key") or (schema.get("foreign_key_table") and schema.get("foreign_key_column")))):
            field = {**field, "type": "uuid", "schema": {**schema, "data_type": "uuid", "max_length": None}}
        return field

    def _plan_fields(self) -> None:
        for entry in self.diff["fields"]:
            name = f"{entry['collection']}.{entry['field']}"
            first = entry["diff"][0]
            nested_meta = first["kind"] in ("N", "D") and len(first.get("path") or []) >= 2 and first["path"][0] == "meta"
            if first["kind"] == "N" and not first.get("path"):
                self.steps.append(_Step(f"+ field {name}", lambda conn, c=entry["collection"], f=first["rhs"]:
                                        self._create_field(conn, c, f)))
            elif first["kind"] == "D" and not first.get("path"):
                self.steps.append(_Step(f"- field {name}", lambda conn, c=entry["collection"], f=entry["field"]:
                                        self._delete_field(conn, c, f)))
                self.diff["relations"] = [r for r in self.diff["relations"]
                                          if (r["collection"], r["field"]) != (entry["collection"], entry["field"])]
            elif first["kind"] in ("E", "A") or nested_meta or first.get("path"):
                current = self._current_fields.get((entry["collection"], entry["field"]))
                if current is not None:
                    after = apply_records(current, entry["diff"])
                    self.steps.append(_Step(f"~ field {name}", lambda conn, was=current, now=after:
                                            self._update_field(conn, was, now)))

    def _plan_relations(self) -> None:
        for entry in self.diff["relations"]:
            name = f"{entry['collection']}.{entry['field']}"
            first = entry["diff"][0]
            if first["kind"] == "N" and not first.get("path"):
                self.steps.append(_Step(f"+ relation {name}", lambda conn, r=first["rhs"]: self._create_relation(conn, r)))
            elif first["kind"] == "D" and not first.get("path"):
                self.steps.append(_Step(f"- relation {name}", lambda conn, r=first["lhs"]: self._delete_relation(conn, r)))
            else:
                current = self._current_relations.get((entry["collection"], entry["field"]))
                if current is not None:
                    after = apply_records(current, entry["diff"])
                    self.steps.append(_Step(f"~ relation {name}", lambda conn, was=current, now=after:
                                            self._update_relation(conn, was, now)))

    # ---- collections
    def _column(self, field: Mapping[str, Any], inline_fk: tuple[str, str, str | None] | None = None) -> sa.Column[Any]:
        schema = field.get("schema") or {}
        args: list[Any] = []
        if inline_fk:
            args.append(sa.ForeignKey(f"{inline_fk[0]}.{inline_fk[1]}", ondelete=inline_fk[2],
                                      name=index_name("foreign", field["collection"], field["field"])))
        primary = bool(schema.get("is_primary_key"))
        return sa.Column(field["field"], column_type(self.vendor, field), *args, primary_key=primary,
                         nullable=not primary and schema.get("is_nullable") is not False,
                         autoincrement=bool(schema.get("has_auto_increment")) if primary else False,
                         server_default=server_default(field))

    def _with_flag(self, field: Mapping[str, Any]) -> dict[str, Any]:
        """SQLite's ``cast-timestamp`` flag on a ``timestamp`` field (``fieldFlagForField``)."""
        field = dict(field)
        if self.vendor == "sqlite" and field.get("type") == "timestamp":
            meta = dict(field.get("meta") or {})
            special = list(meta.get("special") or [])
            if "cast-timestamp" not in special:
                special.append("cast-timestamp")
            meta["special"] = special
            field["meta"] = meta
        return field

    def _related_key(self, conn: sa.Connection, collection: str) -> str:
        """The primary key of ``collection``: the target's, a new collection's, or a system table's."""
        if collection in self._primary:
            return self._primary[collection]
        for entry in self._all_new_fields:
            field = entry["diff"][0]["rhs"]
            if field["collection"] == collection and (field.get("schema") or {}).get("is_primary_key"):
                return str(field["field"])
        return self._primary_of(conn, collection)

    def _create_collection(self, conn: sa.Connection, collection: Mapping[str, Any], fields: list[dict[str, Any]]) -> None:
        name = collection["collection"]
        if collection.get("schema") is not None:
            if not fields:
                fields = [{"collection": name, "field": "id", "type": "integer",
                           "meta": {"hidden": True, "interface": "numeric", "readonly": True},
                           "schema": {"is_primary_key": True, "has_auto_increment": True}}]
            fields = [self._with_flag(f) for f in fields]
            columns, uniques = [], []
            for field in fields:
                if field["type"] in ALIAS_TYPES or field.get("schema") is None:
                    continue
                inline = None
                if self.vendor == "sqlite":
                    relation = self._new_relation(name, field["field"])
                    if relation is not None and relation.get("related_collection"):
                        inline = (relation["related_collection"], self._related_key(conn, relation["related_collection"]),
                                  (relation.get("schema") or {}).get("on_delete"))
                        self._inline_fks.add((name, field["field"]))
                columns.append(self._column(field, inline))
                schema = field.get("schema") or {}
                if schema.get("is_unique") and not schema.get("is_primary_key"):
                    uniques.append(field["field"])
            auto = any((f.get("schema") or {}).get("has_auto_increment") for f in fields)
            kwargs = {"sqlite_autoincrement": True} if self.vendor == "sqlite" and auto else {}
            op = self._op(conn)
            op.create_table(name, *columns, **kwargs)
            for column in uniques:
                self._add_unique(op, name, column)
            for field in fields:
                if field.get("meta"):
                    self._insert(conn, "directus_fields", field_row(name, field, field["meta"]))
        if collection.get("meta"):
            self._insert(conn, "directus_collections", collection_row(name, collection["meta"]))

    def _add_unique(self, op: Any, table: str, column: str) -> None:
        if self.vendor == "sqlite":
            op.create_index(index_name("unique", table, column), table, [column], unique=True)
        else:
            op.create_unique_constraint(index_name("unique", table, column), table, [column])

    def _new_relation(self, collection: str, field: str) -> dict[str, Any] | None:
        for entry in self.diff["relations"]:
            if (entry["collection"], entry["field"]) == (collection, field) and self._new_entry(entry):
                return self._new_entry(entry)
        return None

    def _update_collection(self, conn: sa.Connection, collection: Mapping[str, Any]) -> None:
        name, meta = collection["collection"], collection.get("meta")
        table = self._table(conn, "directus_collections")
        if meta is None:
            return
        row = bind(table, collection_row(name, meta))
        if conn.execute(sa.select(table.c.collection).where(table.c.collection == name)).first():
            conn.execute(table.update().where(table.c.collection == name).values(row))
        else:
            conn.execute(table.insert().values(row))

    def _delete_collection(self, conn: sa.Connection, collection: Mapping[str, Any]) -> None:
        name = collection["collection"]
        for relation in self.current.get("relations") or []:
            if name in (relation["collection"], relation.get("related_collection")) and relation["collection"] != name:
                self._delete_relation(conn, relation)
        for entry in self.diff["collections"]:
            first = entry["diff"][0]
            if first["kind"] == "D" and not first.get("path") and ((first["lhs"].get("meta") or {}).get("group") == name):
                self._delete_collection(conn, first["lhs"])
        if collection.get("schema") is not None:
            self._op(conn).drop_table(name)
        for table, column in (("directus_fields", "collection"), ("directus_relations", "many_collection"),
                              ("directus_collections", "collection")):
            target = self._table(conn, table)
            conn.execute(target.delete().where(target.c[column] == name))
        relations = self._table(conn, "directus_relations")
        conn.execute(relations.update().where(relations.c.one_collection == name).values(one_collection=None))
        collections = self._table(conn, "directus_collections")
        conn.execute(collections.update().where(collections.c.group == name).values(group=None))

    # ---- fields
    def _create_field(self, conn: sa.Connection, collection: str, field: Mapping[str, Any]) -> None:
        field = self._with_flag({**field, "collection": collection})
        if field["type"] not in ALIAS_TYPES and field.get("schema") is not None:
            schema = field.get("schema") or {}
            self._op(conn).add_column(collection, self._column(field))  # SQLite adds columns in place too
            if schema.get("is_unique") and not schema.get("is_primary_key"):
                self._add_unique(self._op(conn), collection, field["field"])
        if field.get("meta"):
            self._insert(conn, "directus_fields", field_row(collection, field, field["meta"]))

    def _delete_field(self, conn: sa.Connection, collection: str, name: str) -> None:
        for relation in self.current.get("relations") or []:
            if (relation["collection"], relation["field"]) == (collection, name):
                self._delete_relation(conn, relation)
            elif relation.get("related_collection") == collection and (relation.get("meta") or {}).get("one_field") == name:
                rows = self._table(conn, "directus_relations")
                conn.execute(rows.update().where(rows.c.many_collection == relation["collection"],
                                                 rows.c.many_field == relation["field"]).values(one_field=None))
        current = self._current_fields.get((collection, name)) or {}
        if current.get("schema") is not None:
            with self._batch(conn, collection) as op:
                if self.vendor == "sqlite":
                    op.drop_column(name)
                else:
                    op.drop_column(collection, name)
        fields = self._table(conn, "directus_fields")
        conn.execute(fields.delete().where(fields.c.collection == collection, fields.c.field == name))
        collections = self._table(conn, "directus_collections")
        for column in ("archive_field", "sort_field"):
            conn.execute(collections.update().where(collections.c.collection == collection, collections.c[column] == name)
                         .values({column: None}))

    def _update_field(self, conn: sa.Connection, was: Mapping[str, Any], now: Mapping[str, Any]) -> None:
        collection, name = now["collection"], now["field"]
        old, new = was.get("schema") or {}, now.get("schema") or {}
        if old and new and (was.get("type") != now.get("type") or any(old.get(k) != new.get(k) for k in (
                "data_type", "max_length", "numeric_precision", "numeric_scale", "default_value", "is_nullable"))):
            with self._batch(conn, collection) as op:
                kwargs: dict[str, Any] = {
                    "type_": column_type(self.vendor, now), "existing_type": column_type(self.vendor, was),
                    "nullable": new.get("is_nullable") is not False and not new.get("is_primary_key"),
                    "existing_nullable": old.get("is_nullable") is not False}
                default = server_default(now)
                if default is not None:
                    kwargs["server_default"] = default
                elif old.get("default_value") is not None:
                    kwargs["server_default"] = None  # Alembic: None drops the default, False leaves it
                if self.vendor == "sqlite":
                    op.alter_column(name, **kwargs)
                else:
                    op.alter_column(collection, name, **kwargs)
        if old and new and bool(old.get("is_unique")) != bool(new.get("is_unique")) and not new.get("is_primary_key"):
            op = self._op(conn)
            if new.get("is_unique"):
                self._add_unique(op, collection, name)
            elif self.vendor == "sqlite":
                op.drop_index(index_name("unique", collection, name), table_name=collection)
            else:
                op.drop_constraint(index_name("unique", collection, name), collection, type_="unique")
        fields = self._table(conn, "directus_fields")
        exists = conn.execute(sa.select(fields.c.id).where(fields.c.collection == collection, fields.c.field == name)).first()
        if now.get("meta"):
            row = bind(fields, field_row(collection, now, now["meta"]))
            if exists:
                conn.execute(fields.update().where(fields.c.id == exists[0]).values(row))
            else:
                conn.execute(fields.insert().values(row))

    # ---- relations
    def _create_relation(self, conn: sa.Connection, relation: Mapping[str, Any]) -> None:
        collection, field = relation["collection"], relation["field"]
        related = relation.get("related_collection")
        if related and (collection, field) not in self._inline_fks:
            self._add_foreign_key(conn, relation)
        self._insert(conn, "directus_relations", relation_row(relation))

    def _add_foreign_key(self, conn: sa.Connection, relation: Mapping[str, Any]) -> None:
        collection, field, related = relation["collection"], relation["field"], relation["related_collection"]
        key = self._related_key(conn, related)
        on_delete = (relation.get("schema") or {}).get("on_delete")
        if self.vendor == "mysql":
            self._match_unsigned(conn, collection, field, related, key)
        with self._batch(conn, collection) as op:
            name = index_name("foreign", collection, field)
            if self.vendor == "sqlite":
                op.create_foreign_key(name, related, [field], [key], ondelete=on_delete)
            else:
                op.create_foreign_key(name, collection, related, [field], [key], ondelete=on_delete)

    def _match_unsigned(self, conn: sa.Connection, collection: str, field: str, related: str, key: str) -> None:
        """``RelationsService.alterType``: an ``int`` m2o onto an ``int unsigned`` key becomes ``int unsigned``
        (MySQL refuses the foreign key otherwise)."""
        query = sa.text("SELECT column_type, is_nullable FROM information_schema.columns "
                        "WHERE table_schema = DATABASE() AND table_name = :t AND column_name = :c")
        many = conn.execute(query, {"t": collection, "c": field}).first()
        one = conn.execute(query, {"t": related, "c": key}).first()
        if many is None or one is None:
            return
        many_type, one_type = str(many[0]).lower(), str(one[0]).lower()
        if many_type.startswith("int") and "unsigned" not in many_type and one_type.startswith("int") and "unsigned" in one_type:
            self._op(conn).alter_column(collection, field, type_=Native("int unsigned"), existing_type=Native(many_type),
                                        existing_nullable=many[1] == "YES")

    def _primary_of(self, conn: sa.Connection, collection: str) -> str:
        columns = sa.inspect(conn).get_pk_constraint(collection)["constrained_columns"]
        if len(columns) != 1:
            raise InvalidInput(f"The related table {collection} has no single primary key",
                               hint="CairnCMS relates only to collections with one primary key")
        return str(columns[0])

    def _drop_foreign_key(self, conn: sa.Connection, relation: Mapping[str, Any]) -> None:
        collection, field = relation["collection"], relation["field"]
        keys = [fk for fk in sa.inspect(conn).get_foreign_keys(collection) if fk["constrained_columns"] == [field]]
        if not keys:
            return
        name = keys[0].get("name") or index_name("foreign", collection, field)
        with self._batch(conn, collection) as op:
            if self.vendor == "sqlite":
                op.drop_constraint(name, type_="foreignkey")
            else:
                op.drop_constraint(name, collection, type_="foreignkey")

    def _delete_relation(self, conn: sa.Connection, relation: Mapping[str, Any]) -> None:
        self._drop_foreign_key(conn, relation)
        rows = self._table(conn, "directus_relations")
        conn.execute(rows.delete().where(rows.c.many_collection == relation["collection"],
                                         rows.c.many_field == relation["field"]))

    def _update_relation(self, conn: sa.Connection, was: Mapping[str, Any], now: Mapping[str, Any]) -> None:
        if (was.get("schema") or {}) != (now.get("schema") or {}) and now.get("related_collection"):
            self._drop_foreign_key(conn, was)
            self._add_foreign_key(conn, now)
        rows = self._table(conn, "directus_relations")
        match = (rows.c.many_collection == now["collection"], rows.c.many_field == now["field"])
        row = bind(rows, relation_row(now))
        if conn.execute(sa.select(rows.c.id).where(*match)).first():
            conn.execute(rows.update().where(*match).values(row))
        elif now.get("meta"):
            conn.execute(rows.insert().values(row))

    # ---- running
    def run(self, progress: Any = None) -> list[str]:
        """Apply every step; PostgreSQL in one transaction, elsewhere each step committed (see the module doc)."""
        self._all_new_fields = [e for e in self.diff["fields"] if self._new_entry(e)]
        steps = self.plan()
        applied: list[str] = []
        if self.vendor != "postgres":
            # No DDL rollback here: the changes of existing columns (a type conversion that the values may refuse)
            # go first, so a failing one stops the apply before any table or column was dropped or created.
            steps = [s for s in steps if s.label.startswith("~ field")] + \
                    [s for s in steps if not s.label.startswith("~ field")]
        if self.vendor == "postgres":
            with self.engine.begin() as conn:
                for step in steps:
                    if progress is not None:
                        progress.log(step.label)
                    step.run(conn)
            return [s.label for s in steps]
        with self.engine.connect() as conn:
            if self.vendor == "sqlite":
                conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
            try:
                for step in steps:
                    if progress is not None:
                        progress.log(step.label)
                    try:
                        step.run(conn)
                        conn.commit()
                    except Exception as exc:
                        conn.rollback()
                        message = exc.to_dict()["message"] if isinstance(exc, MigrateError) else str(exc).splitlines()[0]
                        raise PartialApply(f"The offline apply stopped at {step.label!r}: {message}",
                                           details={"applied": applied, "at": step.label},
                                           hint="the steps listed as applied are in the target; fix the cause and "
                                           "promote again (the diff then holds only what is left)") from exc
                    applied.append(step.label)
            finally:
                if self.vendor == "sqlite":
                    conn.exec_driver_sql("PRAGMA foreign_keys = ON")
        return applied


def apply_diff(engine: sa.Engine, vendor: str, current: Mapping[str, Any], diff: Mapping[str, Any],
               progress: Any = None) -> list[str]:
    """Apply CairnCMS's ``diff`` to the database behind ``engine`` whose snapshot is ``current``; the steps applied."""
    return Applier(engine, vendor, current, diff).run(progress)


def count_rows(engine: sa.Engine, collection: str, field: str) -> int:
    """``COUNT(*)`` of ``collection`` (``field == '*'``) or ``COUNT(field)``: the rows a drop loses."""
    table = sa.table(collection, sa.column(field)) if field != "*" else sa.table(collection)
    what = sa.func.count() if field == "*" else sa.func.count(sa.column(field))
    with engine.connect() as conn:
        return int(conn.execute(sa.select(what).select_from(table)).scalar() or 0)


def count_not_fitting(engine: sa.Engine, collection: str, field: str, narrowing: Mapping[str, Any]) -> int:
    """The rows of ``collection`` whose ``field`` would not fit a narrower column (``promote.narrowed``), in SQL:
    a type change counts every non-null value; a shorter ``max_length`` the longer strings (``char_length`` on
    PostgreSQL/MariaDB, ``length`` on SQLite: characters, not bytes); a smaller decimal the values out of its
    range (``abs >= 10^(precision-scale)``) or with more decimals than its scale (``ROUND(v, scale) <> v``)."""
    column = sa.column(field)
    if narrowing["kind"] == "length":
        length = sa.func.length if engine.dialect.name == "sqlite" else sa.func.char_length
        condition = length(sa.cast(column, sa.Text)) > int(narrowing["max_length"])
    elif narrowing["kind"] == "precision":
        precision, scale = int(narrowing["precision"]), int(narrowing["scale"])
        condition = sa.or_(sa.func.abs(column) >= sa.literal(10 ** (precision - scale)),
                           sa.func.round(column, scale) != column)
    else:
        condition = column.is_not(None)
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(sa.table(collection, column))
                                .where(condition)).scalar() or 0)
