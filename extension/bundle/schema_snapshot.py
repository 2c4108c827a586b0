"""Schema-as-code: the CairnCMS schema snapshot, computed from the database alone.

``schema_snapshot(db, version=...)`` returns what ``cairncms schema snapshot``
returns for the same database (reference §2.1)::

    {"version": 1, "directus": <version>, "vendor": "sqlite"|"postgres"|"mysql",
     "collections": [...], "fields": [...], "relations": [...]}

How CairnCMS builds it, and what this module reproduces:

* **Collections**: every ``directus_collections`` row (``meta``) plus every
  table without a row (``meta: null``); ``schema`` is ``{name}`` when a table
  exists and absent for folder collections.  System collections are left out.
* **Fields**: every column of every table with exactly one primary-key column
  (CairnCMS ignores the others), joined with its ``directus_fields`` row
  (``meta``, or ``null``), plus the alias fields (o2m, m2m, translations …)
  that exist only in ``directus_fields`` (no ``schema``).  ``type`` comes
  from the column's native type and the ``special`` flags; ``schema`` carries
  the vendor-native column facts (``data_type``, ``default_value`` …) as the
  CairnCMS schema inspector reports them for that vendor.
* **Relations**: every database foreign key, stitched with its
  ``directus_relations`` row, plus the rows without a foreign key.
* System rows (the ``system-data`` CairnCMS keeps in memory) are excluded;
  keys are sorted recursively, then re-picked in CairnCMS order; arrays of
  strings and numbers inside ``meta`` are sorted (``special`` …); entries are
  sorted by collection, then field.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .config_snapshot import SnapshotError, cast_boolean, cast_csv, cast_json, plain
from ..instance.database import Database

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1

# ---------------------------------------------------------------------------
# CairnCMS system data (api/src/database/system-data): what the API merges in
# memory and marks ``system: true``; the snapshot leaves it out.
# ---------------------------------------------------------------------------
SYSTEM_COLLECTIONS = frozenset(
    {
        "directus_activity", "directus_collections", "directus_dashboards", "directus_fields",
        "directus_files", "directus_flows", "directus_folders", "directus_migrations",
        "directus_notifications", "directus_operations", "directus_panels", "directus_permissions",
        "directus_presets", "directus_relations", "directus_revisions", "directus_roles",
        "directus_sessions", "directus_settings", "directus_shares", "directus_users",
    }
)  # fmt: skip

#: System field definitions per system collection (columns and aliases).
SYSTEM_FIELDS: Mapping[str, frozenset[str]] = {
    "directus_activity": frozenset("action collection comment id ip item origin revisions timestamp user user_agent".split()),
    "directus_collections": frozenset(
        "accountability accountability_divider archive_app_filter archive_divider archive_field archive_value "
        "collapse collection collection_divider color display_template duplication_divider group hidden icon "
        "item_duplication_fields note singleton sort sort_divider sort_field translations unarchive_value".split()
    ),
    "directus_dashboards": frozenset("color date_created icon id name note panels user_created".split()),
    "directus_fields": frozenset(
        "collection conditions display display_options field group hidden id interface note options readonly "
        "required sort special translations validation validation_message width".split()
    ),
    "directus_files": frozenset(
        "charset description duration embed filename_disk filename_download filesize folder height id location "
        "metadata modified_by modified_on storage storage_divider tags title type uploaded_by uploaded_on width".split()
    ),
    "directus_flows": frozenset(
        "accountability color date_created description icon id name operation operations options status trigger "
        "user_created".split()
    ),
    "directus_folders": frozenset("id name parent".split()),
    "directus_migrations": frozenset("name timestamp version".split()),
    "directus_notifications": frozenset("collection id item message recipient sender status subject timestamp".split()),
    "directus_operations": frozenset(
        "date_created flow id key name options position_x position_y reject resolve type user_created".split()
    ),
    "directus_panels": frozenset(
        "color dashboard date_created height icon id name note options position_x position_y show_header type "
        "user_created width".split()
    ),
    "directus_permissions": frozenset("action collection fields id permissions presets role validation".split()),
    "directus_presets": frozenset(
        "bookmark collection color filter icon id layout layout_options layout_query refresh_interval role search "
        "user".split()
    ),
    "directus_relations": frozenset(
        "id junction_field many_collection many_field one_allowed_collections one_collection one_collection_field "
        "one_deselect_action one_field sort_field".split()
    ),
    "directus_revisions": frozenset("activity collection data delta id item parent".split()),
    "directus_roles": frozenset("admin_access app_access description enforce_tfa icon id ip_access key name users".split()),
    "directus_sessions": frozenset("expires ip origin share token user user_agent".split()),
    "directus_settings": frozenset(
        "auth_login_attempts auth_password_policy basemaps branding_divider custom_aspect_ratios custom_css "
        "default_language files_divider id image_editor map_divider mapbox_key module_bar modules_divider "
        "project_color project_descriptor project_logo project_name project_url public_background "
        "public_foreground public_note security_divider storage_asset_presets storage_asset_transform "
        "storage_default_folder translation_strings".split()
    ),
    "directus_shares": frozenset(
        "collection date_created date_end date_start id item max_uses name password role times_used "
        "user_created".split()
    ),
    "directus_users": frozenset(
        "admin_divider auth_data avatar description email email_notifications external_identifier first_name id "
        "language last_access last_name last_page location password preferences_divider provider role status tags "
        "tfa_secret theme title token".split()
    ),
}

#: System relations: (many_collection, many_field, one_collection).
SYSTEM_RELATIONS = (
    ("directus_collections", "group", "directus_collections"),
    ("directus_users", "role", "directus_roles"),
    ("directus_users", "avatar", "directus_files"),
    ("directus_revisions", "activity", "directus_activity"),
    ("directus_presets", "user", "directus_users"),
    ("directus_presets", "role", "directus_roles"),
    ("directus_folders", "parent", "directus_folders"),
    ("directus_files", "folder", "directus_folders"),
    ("directus_files", "uploaded_by", "directus_users"),
    ("directus_fields", "collection", "directus_collections"),
    ("directus_activity", "user", "directus_users"),
    ("directus_settings", "project_logo", "directus_files"),
    ("directus_settings", "public_foreground", "directus_files"),
    ("directus_settings", "public_background", "directus_files"),
    ("directus_panels", "dashboard", "directus_dashboards"),
    ("directus_flows", "operation", "directus_operations"),
    ("directus_operations", "flow", "directus_flows"),
    ("directus_operations", "resolve", "directus_operations"),
    ("directus_operations", "reject", "directus_operations"),
    ("directus_files", "modified_by", "directus_users"),
    ("directus_fields", "group", "directus_fields"),
    ("directus_permissions", "role", "directus_roles"),
    ("directus_revisions", "parent", "directus_revisions"),
    ("directus_sessions", "user", "directus_users"),
    ("directus_sessions", "share", "directus_shares"),
    ("directus_settings", "storage_default_folder", "directus_folders"),
    ("directus_dashboards", "user_created", "directus_users"),
    ("directus_panels", "user_created", "directus_users"),
    ("directus_flows", "user_created", "directus_users"),
    ("directus_operations", "user_created", "directus_users"),
    ("directus_notifications", "recipient", "directus_users"),
    ("directus_notifications", "sender", "directus_users"),
    ("directus_shares", "role", "directus_roles"),
    ("directus_shares", "collection", "directus_collections"),
    ("directus_shares", "user_created", "directus_users"),
)

#: ``special`` flags that make a ``directus_fields`` row an alias field (``api/src/constants.ts``).
ALIAS_TYPES = ("alias", "o2m", "m2m", "m2a", "o2a", "files", "translations")

#: Read casts of the three metadata tables (their system field definitions).
_COLLECTION_CASTS = {
    "hidden": cast_boolean, "singleton": cast_boolean, "archive_app_filter": cast_boolean,
    "translations": cast_json, "item_duplication_fields": cast_json,
}  # fmt: skip
_FIELD_CASTS = {
    "special": cast_csv, "options": cast_json, "display_options": cast_json, "readonly": cast_boolean,
    "hidden": cast_boolean, "required": cast_boolean, "translations": cast_json, "conditions": cast_json,
    "validation": cast_json,
}  # fmt: skip
_RELATION_CASTS = {"one_allowed_collections": cast_csv}

#: Native type (lower case, before any parenthesis) → CairnCMS type (``get-local-type.ts``).
LOCAL_TYPES: Mapping[str, str] = {
    "boolean": "boolean", "tinyint": "integer", "smallint": "integer", "mediumint": "integer",
    "int": "integer", "integer": "integer", "serial": "integer", "bigint": "bigInteger",
    "bigserial": "bigInteger", "clob": "text", "tinytext": "text", "mediumtext": "text", "longtext": "text",
    "text": "text", "varchar": "string", "longvarchar": "string", "varchar2": "string", "nvarchar": "string",
    "image": "binary", "ntext": "text", "char": "string", "date": "date", "datetime": "dateTime",
    "timestamp": "timestamp", "time": "time", "float": "float", "double": "float",
    "double precision": "float", "real": "float", "decimal": "decimal", "numeric": "integer",
    "geometry": "geometry", "point": "geometry.Point", "linestring": "geometry.LineString",
    "polygon": "geometry.Polygon", "multipoint": "geometry.MultiPoint",
    "multilinestring": "geometry.MultiLineString", "multipolygon": "geometry.MultiPolygon",
    "string": "text", "year": "integer", "blob": "binary", "mediumblob": "binary",
    "int unsigned": "integer", "tinyint unsigned": "integer", "smallint unsigned": "integer",
    "mediumint unsigned": "integer", "bigint unsigned": "integer", "bit": "boolean", "smallmoney": "float",
    "money": "float", "datetimeoffset": "timestamp", "datetime2": "dateTime", "smalldatetime": "dateTime",
    "nchar": "text", "binary": "binary", "varbinary": "binary", "uniqueidentifier": "uuid", "json": "json",
    "jsonb": "json", "uuid": "uuid", "int2": "integer", "serial4": "integer", "int4": "integer",
    "serial8": "integer", "int8": "integer", "bool": "boolean", "character varying": "string",
    "character": "string", "interval": "string", "_varchar": "string", "bpchar": "string",
    "timestamptz": "timestamp", "timestamp with time zone": "timestamp",
    "timestamp with local time zone": "timestamp", "timestamp without time zone": "dateTime",
    "timestamp without local time zone": "dateTime", "timetz": "time", "time with time zone": "time",
    "time without time zone": "time", "float4": "float", "float8": "float", "citext": "text",
    "number": "integer", "sdo_geometry": "geometry", "integerfirst": "integer",
}  # fmt: skip

#: Keys of a field's ``schema``, in CairnCMS pick order.
COLUMN_KEYS = (
    "name", "table", "data_type", "default_value", "max_length", "numeric_precision", "numeric_scale",
    "is_nullable", "is_unique", "is_primary_key", "is_generated", "generation_expression",
    "has_auto_increment", "foreign_key_table", "foreign_key_column",
)  # fmt: skip
#: Keys of a relation's ``schema``, in CairnCMS pick order.
FOREIGN_KEY_KEYS = (
    "table", "column", "foreign_key_table", "foreign_key_column", "constraint_name", "on_update", "on_delete",
)  # fmt: skip


# ---------------------------------------------------------------------------
# JavaScript semantics the snapshot depends on
# ---------------------------------------------------------------------------
def _js_number(text: str) -> float | int | None:
    """``Number(text)``; ``None`` when it is NaN."""
    stripped = text.strip()
    if stripped == "":
        return 0
    lowered = stripped.lower()
    try:
        if re.fullmatch(r"0x[0-9a-f]+", lowered):
            value: float | int = int(lowered, 16)
        elif re.fullmatch(r"0o[0-7]+", lowered):
            value = int(lowered, 8)
        elif re.fullmatch(r"0b[01]+", lowered):
            value = int(lowered, 2)
        elif stripped in ("Infinity", "+Infinity", "-Infinity"):
            value = float(stripped.replace("Infinity", "inf"))
        elif re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", lowered):
            value = float(lowered)
        else:
            return None
    except ValueError:
        return None
    return _js_numeric(value)


def _js_numeric(value: float | int) -> float | int:
    """A JS number as Python: integral values as ``int`` (what JSON/YAML output shows)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _sort_array(items: list[Any]) -> list[Any]:
    """lodash ``sortBy(array)`` for the cases that occur: strings or numbers sort, others keep their order."""
    if items and all(isinstance(i, str) for i in items):
        return sorted(items, key=lambda s: s.encode("utf-16-be"))
    if items and all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in items):
        return sorted(items)
    return list(items)


def sort_deep(value: Any) -> Any:
    """``sortDeep`` of ``get-snapshot.ts``: object keys sorted recursively, arrays sorted (not recursed)."""
    if isinstance(value, dict):
        return {k: sort_deep(value[k]) for k in sorted(value, key=lambda k: (str(k) + ",").encode("utf-16-be"))}
    if isinstance(value, list):
        return _sort_array(value)
    return value


def local_type(column: Mapping[str, Any] | None, special: list[str] | None = None) -> str:
    """The CairnCMS field type of a column (``get-local-type.ts``); ``alias`` without a column."""
    if column is None:
        return "alias"
    data_type = str(column["data_type"]).lower()
    mapped = LOCAL_TYPES.get(data_type.split("(")[0])
    if special:
        if "cast-json" in special:
            return "json"
        if "hash" in special:
            return "hash"
        if "cast-csv" in special:
            return "csv"
        if "uuid" in special or "file" in special:
            return "uuid"
        if "cast-timestamp" in special:
            return "timestamp"
        if "cast-datetime" in special:
            return "dateTime"
        if mapped and mapped.startswith("geometry"):
            return special[0] or "geometry"
    if data_type == "numeric" and column.get("numeric_precision") is not None and column.get("numeric_scale") is not None:
        return "decimal"
    if column["data_type"] == "nvarchar" and column.get("max_length") == -1:
        return "text"
    return mapped or "unknown"


def default_value(column: Mapping[str, Any]) -> Any:
    """The column default as CairnCMS reports it (``get-default-value.ts``): typed by local type."""
    value = column.get("default_value")
    if value is None:
        return None
    if value == "0000-00-00 00:00:00":
        return None
    kind = local_type(column)
    if kind in ("bigInteger", "integer", "decimal", "float"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        number = _js_number(str(value))
        return value if number is None else number
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if value in (0, "0", "false"):
            return False
        if value in (1, "1", "true"):
            return True
        return bool(value)
    if kind == "json":
        if not value:
            return value
        if isinstance(value, (dict, list)):
            return value
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return {}
    return value


def _strip_quotes(value: str | None) -> str | None:
    if value is None:
        return None
    trimmed = value.strip()
    if len(trimmed) >= 1 and (
        (trimmed.startswith("'") and trimmed.endswith("'")) or (trimmed.startswith('"') and trimmed.endswith('"'))
    ):
        return trimmed[1:-1]
    return value


def _parse_default_plain(value: Any) -> Any:
    """SQLite/MySQL inspector: ``null``/``NULL`` → None, surrounding quotes stripped."""
    if value is None:
        return None
    text = str(value)
    if text.strip().lower() == "null":
        return None
    return _strip_quotes(text)


def _parse_default_postgres(value: str | None) -> str | None:
    """PostgreSQL inspector: ``'draft'::character varying`` → ``draft``; ``nextval(...)`` kept."""
    if value is None:
        return None
    if value.startswith("nextval("):
        return value
    value = value.split("::")[0]
    if value.strip().lower() == "null":
        return None
    return _strip_quotes(value)


# ---------------------------------------------------------------------------
# Vendor inspectors: columns, single-column primary keys and foreign keys
# ---------------------------------------------------------------------------
class _Inspection:
    def __init__(self) -> None:
        self.tables: list[str] = []
        #: table → ordered column dicts (COLUMN_KEYS)
        self.columns: dict[str, list[dict[str, Any]]] = {}
        #: tables with exactly one primary-key column
        self.single_pk: set[str] = set()
        self.foreign_keys: list[dict[str, Any]] = []


def _max_length_from_type(declared: str) -> int | float | None:
    match = re.search(r"\(([^)]+)\)", declared)
    if not match or not match.group(1):
        return None
    number = _js_number(match.group(1))
    return float("nan") if number is None else number


def _inspect_sqlite(conn: sa.Connection) -> _Inspection:
    result = _Inspection()
    quote = lambda name: '"' + name.replace('"', '""') + '"'  # noqa: E731
    result.tables = [
        r[0]
        for r in conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    autoincrement = {
        r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE sql LIKE '%AUTOINCREMENT%'")
    }
    for table in result.tables:
        raw_columns = conn.exec_driver_sql(f"PRAGMA table_xinfo({quote(table)})").mappings().all()
        foreign_keys = conn.exec_driver_sql(f"PRAGMA foreign_key_list({quote(table)})").mappings().all()
        indexes = conn.exec_driver_sql(f"PRAGMA index_list({quote(table)})").mappings().all()
        index_columns = [
            [r["name"] for r in conn.exec_driver_sql(f"PRAGMA index_info({quote(i['name'])})").mappings()]
            for i in indexes
        ]
        if sum(1 for c in raw_columns if c["pk"] != 0) == 1:
            result.single_pk.add(table)
        columns = []
        for raw in raw_columns:
            fk = next((f for f in foreign_keys if f["from"] == raw["name"]), None)
            position = next((n for n, cols in enumerate(index_columns) if raw["name"] in cols), None)
            declared = raw["type"] or ""
            columns.append(
                {
                    "name": raw["name"],
                    "table": table,
                    "data_type": re.sub(r"[^a-zA-Z]", "", declared).lower(),
                    "default_value": _parse_default_plain(raw["dflt_value"]),
                    "max_length": _max_length_from_type(declared),
                    "numeric_precision": None,
                    "numeric_scale": None,
                    "is_nullable": raw["notnull"] == 0,
                    "is_unique": position is not None
                    and bool(indexes[position]["unique"])
                    and len(index_columns[position]) == 1,
                    "is_primary_key": raw["pk"] == 1,
                    "is_generated": raw["hidden"] != 0,
                    "generation_expression": None,
                    "has_auto_increment": raw["pk"] == 1 and table in autoincrement,
                    "foreign_key_table": fk["table"] if fk and fk["table"] else None,
                    "foreign_key_column": fk["to"] if fk and fk["to"] else None,
                }
            )
        result.columns[table] = columns
        for fk in foreign_keys:
            result.foreign_keys.append(
                {
                    "table": table,
                    "column": fk["from"],
                    "foreign_key_table": fk["table"],
                    "foreign_key_column": fk["to"],
                    "constraint_name": None,
                    "on_update": fk["on_update"],
                    "on_delete": fk["on_delete"],
                }
            )
    return result


_PG_COLUMNS = """
SELECT rel.relname AS table_name, att.attname AS name, att.atttypid::regtype::text AS data_type,
       NOT att.attnotnull AS is_nullable,
       CASE WHEN att.attgenerated = 's' THEN pg_get_expr(ad.adbin, ad.adrelid) END AS generation_expression,
       CASE WHEN att.attgenerated = '' THEN pg_get_expr(ad.adbin, ad.adrelid) END AS default_value,
       att.attgenerated = 's' AS is_generated,
       CASE WHEN att.atttypid IN (1042, 1043) THEN (att.atttypmod - 4)::int4
            WHEN att.atttypid IN (1560, 1562) THEN att.atttypmod::int4 END AS max_length,
       CASE att.atttypid WHEN 21 THEN 16 WHEN 23 THEN 32 WHEN 20 THEN 64 WHEN 700 THEN 24 WHEN 701 THEN 53
            WHEN 1700 THEN CASE WHEN att.atttypmod = -1 THEN NULL
                                ELSE (((att.atttypmod - 4) >> 16) & 65535)::int4 END END AS numeric_precision,
       CASE WHEN att.atttypid IN (21, 23, 20) THEN 0
            WHEN att.atttypid = 1700 THEN CASE WHEN att.atttypmod = -1 THEN NULL
                                               ELSE ((att.atttypmod - 4) & 65535)::int4 END END AS numeric_scale
FROM pg_attribute att
JOIN pg_class rel ON att.attrelid = rel.oid
LEFT JOIN pg_attrdef ad ON ad.adrelid = att.attrelid AND ad.adnum = att.attnum
WHERE rel.relnamespace = CAST(:schema AS regnamespace) AND rel.relkind = 'r'
  AND att.attnum > 0 AND NOT att.attisdropped
ORDER BY rel.relname, att.attnum
"""

_PG_CONSTRAINTS = """
SELECT con.contype AS type, con.conname AS constraint_name, rel.relname AS table_name, att.attname AS column_name,
       frel.relname AS foreign_key_table, fatt.attname AS foreign_key_column,
       CASE WHEN con.contype = 'p'
            THEN pg_get_serial_sequence(att.attrelid::regclass::text, att.attname) != '' END AS has_auto_increment,
       con.confupdtype AS on_update, con.confdeltype AS on_delete
FROM pg_constraint con
JOIN pg_class rel ON con.conrelid = rel.oid
LEFT JOIN pg_class frel ON con.confrelid = frel.oid
LEFT JOIN pg_attribute att ON att.attrelid = con.conrelid AND att.attnum = con.conkey[1]
LEFT JOIN pg_attribute fatt ON fatt.attrelid = con.confrelid AND fatt.attnum = con.confkey[1]
WHERE con.connamespace = CAST(:schema AS regnamespace)
  AND array_length(con.conkey, 1) <= 1
  AND (con.confkey IS NULL OR array_length(con.confkey, 1) = 1)
ORDER BY con.oid
"""

_PG_RULES = {"r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT", "a": "NO ACTION"}


def _inspect_postgres(conn: sa.Connection, schema: str) -> _Inspection:
    result = _Inspection()
    constraints = conn.execute(sa.text(_PG_CONSTRAINTS), {"schema": schema}).mappings().all()
    by_column: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for con in constraints:
        by_column.setdefault((con["table_name"], con["column_name"]), []).append(con)
        if con["type"] == "p":
            result.single_pk.add(con["table_name"])
        if con["type"] == "f":
            result.foreign_keys.append(
                {
                    "table": con["table_name"],
                    "column": con["column_name"],
                    "foreign_key_table": con["foreign_key_table"],
                    "foreign_key_column": con["foreign_key_column"],
                    "constraint_name": con["constraint_name"],
                    "on_update": _PG_RULES.get(str(con["on_update"])),
                    "on_delete": _PG_RULES.get(str(con["on_delete"])),
                }
            )
    for raw in conn.execute(sa.text(_PG_COLUMNS), {"schema": schema}).mappings():
        table = raw["table_name"]
        if table not in result.columns:
            result.tables.append(table)
            result.columns[table] = []
        cons = by_column.get((table, raw["name"]), [])
        fk = next((c for c in cons if c["type"] == "f"), None)
        result.columns[table].append(
            {
                "name": raw["name"],
                "table": table,
                "data_type": raw["data_type"],
                "default_value": _parse_default_postgres(raw["default_value"]),
                "max_length": raw["max_length"],
                "numeric_precision": raw["numeric_precision"],
                "numeric_scale": raw["numeric_scale"],
                "is_nullable": bool(raw["is_nullable"]),
                "is_unique": any(c["type"] in ("u", "p") for c in cons),
                "is_primary_key": any(c["type"] == "p" for c in cons),
                "is_generated": bool(raw["is_generated"]),
                "generation_expression": raw["generation_expression"],
                "has_auto_increment": any(bool(c["has_auto_increment"]) for c in cons),
                "foreign_key_table": fk["foreign_key_table"] if fk else None,
                "foreign_key_column": fk["foreign_key_column"] if fk else None,
            }
        )
    return result


_MYSQL_COLUMNS = """
SELECT c.TABLE_NAME, c.COLUMN_NAME, c.COLUMN_DEFAULT, c.COLUMN_TYPE, c.CHARACTER_MAXIMUM_LENGTH,
       c.IS_NULLABLE, c.COLUMN_KEY, c.EXTRA, c.NUMERIC_PRECISION, c.NUMERIC_SCALE, c.GENERATION_EXPRESSION,
       fk.REFERENCED_TABLE_NAME, fk.REFERENCED_COLUMN_NAME, fk.CONSTRAINT_NAME
FROM INFORMATION_SCHEMA.COLUMNS c
JOIN INFORMATION_SCHEMA.TABLES t
  ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME AND t.TABLE_TYPE = 'BASE TABLE'
LEFT JOIN INFORMATION_SCHEMA.KEY_COLUMN_USAGE fk
  ON fk.TABLE_NAME = c.TABLE_NAME AND fk.COLUMN_NAME = c.COLUMN_NAME AND fk.CONSTRAINT_SCHEMA = c.TABLE_SCHEMA
WHERE c.TABLE_SCHEMA = DATABASE()
ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION
"""

_MYSQL_FOREIGN_KEYS = """
SELECT DISTINCT rc.TABLE_NAME AS tbl, kcu.COLUMN_NAME AS col, rc.REFERENCED_TABLE_NAME AS ftbl,
       kcu.REFERENCED_COLUMN_NAME AS fcol, rc.CONSTRAINT_NAME AS cname, rc.UPDATE_RULE AS on_update,
       rc.DELETE_RULE AS on_delete
FROM INFORMATION_SCHEMA.REFERENTIAL_CONSTRAINTS rc
JOIN INFORMATION_SCHEMA.KEY_COLUMN_USAGE kcu
  ON rc.CONSTRAINT_NAME = kcu.CONSTRAINT_NAME AND kcu.CONSTRAINT_SCHEMA = rc.CONSTRAINT_SCHEMA
WHERE rc.CONSTRAINT_SCHEMA = DATABASE()
ORDER BY rc.TABLE_NAME, rc.CONSTRAINT_NAME, kcu.ORDINAL_POSITION
"""


def _text(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    return value


def _inspect_mysql(conn: sa.Connection) -> _Inspection:
    result = _Inspection()
    rows = [{k: _text(v) for k, v in r.items()} for r in conn.execute(sa.text(_MYSQL_COLUMNS)).mappings()]
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    order: list[tuple[str, str]] = []
    for row in rows:
        key = (row["TABLE_NAME"], row["COLUMN_NAME"])
        if key not in grouped:
            grouped[key] = []
            order.append(key)
        grouped[key].append(row)
    primary_counts: dict[str, int] = {}
    for table, name in order:
        candidates = grouped[(table, name)]
        # CairnCMS keeps the first joined row after moving foreign-key rows to the front.
        raw = next((r for r in candidates if r["REFERENCED_COLUMN_NAME"]), candidates[0])
        column_type = str(raw["COLUMN_TYPE"])
        data_type = "boolean" if column_type.startswith("tinyint(1)") else re.sub(r"\(.*?\)", "", column_type, count=1)
        extra = raw["EXTRA"] or ""
        if raw["COLUMN_KEY"] == "PRI":
            primary_counts[table] = primary_counts.get(table, 0) + 1
        if table not in result.columns:
            result.tables.append(table)
            result.columns[table] = []
        result.columns[table].append(
            {
                "name": name,
                "table": table,
                "data_type": data_type,
                "default_value": _parse_default_plain(raw["COLUMN_DEFAULT"]),
                "max_length": raw["CHARACTER_MAXIMUM_LENGTH"],
                "numeric_precision": raw["NUMERIC_PRECISION"],
                "numeric_scale": raw["NUMERIC_SCALE"],
                "is_nullable": raw["IS_NULLABLE"] == "YES",
                "is_unique": raw["COLUMN_KEY"] == "UNI",
                "is_primary_key": raw["CONSTRAINT_NAME"] == "PRIMARY" or raw["COLUMN_KEY"] == "PRI",
                "is_generated": extra.endswith("GENERATED"),
                "generation_expression": raw["GENERATION_EXPRESSION"] or None,
                "has_auto_increment": extra == "auto_increment",
                "foreign_key_table": raw["REFERENCED_TABLE_NAME"],
                "foreign_key_column": raw["REFERENCED_COLUMN_NAME"],
            }
        )
    result.single_pk = {t for t, n in primary_counts.items() if n == 1}
    for row in conn.execute(sa.text(_MYSQL_FOREIGN_KEYS)).mappings():
        row = {k: _text(v) for k, v in row.items()}
        result.foreign_keys.append(
            {
                "table": row["tbl"],
                "column": row["col"],
                "foreign_key_table": row["ftbl"],
                "foreign_key_column": row["fcol"],
                "constraint_name": row["cname"],
                "on_update": row["on_update"],
                "on_delete": row["on_delete"],
            }
        )
    return result


def _inspect(db: Database) -> _Inspection:
    with db.engine.connect() as conn:
        if db.vendor == "sqlite":
            return _inspect_sqlite(conn)
        if db.vendor == "postgres":
            schema = conn.exec_driver_sql("SELECT current_schema()").scalar() or "public"
            return _inspect_postgres(conn, str(schema))
        if db.vendor == "mysql":
            return _inspect_mysql(conn)
    raise SnapshotError(f"Schema snapshots are not supported on {db.vendor}")  # pragma: no cover


# ---------------------------------------------------------------------------
# Metadata rows
# ---------------------------------------------------------------------------
def _meta_rows(db: Database, table: str, casts: Mapping[str, Any]) -> list[dict[str, Any]]:
    order = ["id"] if "id" in db.columns(table) else None
    rows = []
    for raw in db.stream_rows(table, order_by=order):
        row = {}
        for key, value in raw.items():
            value = plain(value)
            cast = casts.get(key)
            row[str(key)] = cast(value) if cast else value
        rows.append(row)
    return rows


def _specials(meta: Mapping[str, Any] | None) -> list[str]:
    if not meta:
        return []
    special = meta.get("special")
    if special is None:
        return []
    return list(special) if isinstance(special, list) else [special]


def _pick_field(entry: Mapping[str, Any]) -> dict[str, Any]:
    picked: dict[str, Any] = {}
    for key in ("collection", "field", "type", "meta", "name", "children"):
        if key in entry:
            picked[key] = entry[key]
    schema = entry.get("schema")
    if isinstance(schema, dict):
        picked["schema"] = {key: schema[key] for key in COLUMN_KEYS if key in schema}
    return picked


def _pick_relation(entry: Mapping[str, Any]) -> dict[str, Any]:
    picked = {key: entry[key] for key in ("collection", "field", "related_collection", "meta") if key in entry}
    schema = entry.get("schema")
    if isinstance(schema, dict):
        picked["schema"] = {key: schema[key] for key in FOREIGN_KEY_KEYS if key in schema}
    return picked


def schema_snapshot(db: Database, *, version: str) -> dict[str, Any]:
    """The CairnCMS schema snapshot of ``db`` (``cairncms schema snapshot``), computed from the database.

    :param version: the CairnCMS version the snapshot claims (``directus`` key), e.g. ``1.0.0-beta.4``.
    :raises SnapshotError: the CairnCMS metadata tables are missing.
    """
    names = set(db.table_names())
    missing = [t for t in ("directus_collections", "directus_fields", "directus_relations") if t not in names]
    if missing:
        raise SnapshotError(
            f"The database has no {', '.join(missing)} table: it is not a CairnCMS instance",
            hint="bootstrap the instance first",
        )
    excluded = set(db.config.exclude_tables)
    inspection = _inspect(db)
    tables = [t for t in inspection.tables if t not in excluded]

    # Collections ----------------------------------------------------------
    collection_rows = _meta_rows(db, "directus_collections", _COLLECTION_CASTS)
    table_set = set(tables)
    collections: list[dict[str, Any]] = []
    seen: set[str] = set()
    for meta in collection_rows:
        name = meta.get("collection")
        seen.add(name)
        entry: dict[str, Any] = {"collection": name, "meta": meta}
        if name in table_set:
            entry["schema"] = {"name": name}
        collections.append(entry)
    for table in tables:
        if table in seen or table in SYSTEM_COLLECTIONS:
            continue
        seen.add(table)
        collections.append({"collection": table, "meta": None, "schema": {"name": table}})
    collections = [c for c in collections if c["collection"] not in excluded]

    # Fields ---------------------------------------------------------------
    field_rows = _meta_rows(db, "directus_fields", _FIELD_CASTS)
    meta_by_field: dict[tuple[str, str], dict[str, Any]] = {}
    for meta in field_rows:
        meta_by_field.setdefault((meta.get("collection"), meta.get("field")), meta)
    known = {t for t in tables if t in inspection.single_pk and " " not in t}
    fields: list[dict[str, Any]] = []
    for table in tables:
        if table not in known:
            continue
        for column in inspection.columns[table]:
            meta = meta_by_field.get((table, column["name"]))
            if meta is None and column["name"] in SYSTEM_FIELDS.get(table, ()):
                continue  # a system field: ``system: true`` in CairnCMS, left out of snapshots
            special = _specials(meta)
            schema = dict(column)
            schema["default_value"] = default_value(column)
            fields.append(
                {
                    "collection": table,
                    "field": column["name"],
                    "type": local_type(column, special),
                    "schema": schema,
                    "meta": {k: v for k, v in meta.items() if k != "id"} if meta is not None else None,
                }
            )
    for meta in field_rows:
        special = _specials(meta)
        if not any(t in special for t in ALIAS_TYPES) or meta.get("collection") not in known:
            continue
        fields.append(
            {
                "collection": meta["collection"],
                "field": meta["field"],
                "type": "alias",
                "schema": None,
                "meta": {k: v for k, v in meta.items() if k != "id"},
            }
        )
    for field in fields:
        special = _specials(field["meta"])
        if "cast-timestamp" in special:
            field["type"] = "timestamp"
        elif "cast-datetime" in special:
            field["type"] = "dateTime"

    # Relations ------------------------------------------------------------
    relation_rows = _meta_rows(db, "directus_relations", _RELATION_CASTS)
    system_rows = [
        {"many_collection": m, "many_field": f, "one_collection": o, "system": True} for m, f, o in SYSTEM_RELATIONS
    ]
    meta_rows = relation_rows + system_rows
    relations: list[dict[str, Any]] = []
    used: set[int] = set()
    for fk in inspection.foreign_keys:
        match = None
        for index, meta in enumerate(meta_rows):
            if meta.get("many_collection") != fk["table"] or meta.get("many_field") != fk["column"]:
                continue
            if meta.get("one_collection") and meta["one_collection"] != fk["foreign_key_table"]:
                continue
            match = index
            break
        if match is not None:
            used.add(match)
        relations.append(
            {
                "collection": fk["table"],
                "field": fk["column"],
                "related_collection": fk["foreign_key_table"],
                "schema": fk,
                "meta": meta_rows[match] if match is not None else None,
            }
        )
    for index, meta in enumerate(meta_rows):
        if index in used:
            continue
        relations.append(
            {
                "collection": meta.get("many_collection"),
                "field": meta.get("many_field"),
                "related_collection": meta.get("one_collection"),
                "schema": None,
                "meta": meta,
            }
        )
    relations = [r for r in relations if not (r["meta"] or {}).get("system")]
    for relation in relations:
        if relation["meta"] is not None:
            relation["meta"] = {k: v for k, v in relation["meta"].items() if k != "id"}

    def order(entry: Mapping[str, Any], *keys: str) -> tuple[Any, ...]:
        return tuple(_sort_value(entry.get(k)) for k in keys)

    collections = sorted((sort_deep(c) for c in collections), key=lambda c: order(c, "collection"))
    fields = sorted((sort_deep(f) for f in fields), key=lambda f: order(f, "collection", "field"))
    relations = sorted((sort_deep(r) for r in relations), key=lambda r: order(r, "collection", "field"))
    return {
        "version": SNAPSHOT_VERSION,
        "directus": version,
        "vendor": db.vendor,
        "collections": [{k: c[k] for k in ("collection", "meta", "schema") if k in c} for c in collections],
        "fields": [_pick_field(f) for f in fields],
        "relations": [_pick_relation(r) for r in relations],
    }


def _sort_value(value: Any) -> tuple[int, Any]:
    """A sort key like lodash's ``sortBy`` on a string property (missing values last)."""
    if value is None:
        return (1, b"")
    return (0, str(value).encode("utf-16-be"))


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON.stringify writes NaN/Infinity as null
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def dump_schema_snapshot(snapshot: Mapping[str, Any], *, format: str = "yaml") -> str:
    """The text ``cairncms schema snapshot --format <format>`` writes.

    ``yaml``: js-yaml ``dump`` with its defaults (key order kept, block style,
    indent 2); long strings are kept on one line (js-yaml folds them at 80
    columns; both load to the same data).  ``json``: ``JSON.stringify`` with no
    indentation.
    """
    if format == "json":
        return json.dumps(_json_safe(snapshot), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if format != "yaml":
        raise ValueError(f"unknown snapshot format {format!r}; use yaml or json")
    from .config_snapshot import dump_yaml

    return dump_yaml(dict(snapshot), sort_keys=False)


def write_schema_snapshot(snapshot: Mapping[str, Any], path: Path | str, *, format: str | None = None) -> Path:
    """Write ``snapshot`` to ``path``: JSON when the name ends ``.json`` (or ``format='json'``), else YAML."""
    path = Path(path)
    chosen = format or ("json" if path.suffix.lower() == ".json" else "yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_schema_snapshot(snapshot, format=chosen), encoding="utf-8")
    return path


def load_schema_snapshot(path: Path | str) -> dict[str, Any]:
    """Read a snapshot file the way ``cairncms schema apply`` does (YAML for .yaml/.yml, else JSON)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        from .config_snapshot import load_yaml

        return load_yaml(text)
    return json.loads(text)
