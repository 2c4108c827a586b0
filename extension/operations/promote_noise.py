"""Vendor noise in a cross-vendor schema diff: what CairnCMS's ``/schema/diff`` reports although nothing differs.

A snapshot keeps each vendor's native spelling (reference §2.5), so a SQLite snapshot applied on
PostgreSQL or MariaDB never diffs empty again: the target reads its columns back as ``int``/
``character varying``/``timestamp with time zone``, with the widths its vendor fixes, and CairnCMS's
second apply then fails instead of doing nothing.  Only when the source's vendor differs from the
target's, these ``E`` (edit) records are dropped from the diff, each rule for one reason:

- ``schema.data_type`` of a field: the vendor's name of the same CairnCMS ``type`` (a real change of
  type shows in ``type``);
- ``type`` ``string`` ↔ ``uuid`` where either side's column is ``char``/``varchar(36)``: CairnCMS's
  own cast when it creates a key column (reference §2.4), and the other way round a PostgreSQL
  ``uuid`` that MariaDB/SQLite hold as ``char(36)`` and type ``string`` (a foreign key without the
  ``uuid`` special): the same 36 characters either way, so neither a change nor a loss;
- ``schema.max_length``, ``numeric_precision``, ``numeric_scale`` when one side has none (SQLite
  reports none, PostgreSQL none for ``uuid``) or the ``type`` has a width its vendor fixes
  (integers, floats, booleans, text, JSON); a ``string`` length or a ``decimal`` precision set on
  both sides stays a real difference;
- ``schema.is_unique`` of a primary key (unique anyway);
- a relation's ``schema.constraint_name`` when one side has none (SQLite names none), and
  ``on_update``/``on_delete`` ``RESTRICT`` ↔ ``NO ACTION`` (the same for a foreign key checked at once).

Every other record (``N``/``D``, ``meta``, a default, a nullability, a real length) stays in the diff.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: CairnCMS types whose widths the vendor fixes (not a choice of the schema's author).
FIXED_WIDTH_TYPES = frozenset({"integer", "bigInteger", "float", "boolean", "text", "json", "uuid", "hash", "csv",
                               "dateTime", "timestamp", "date", "time"})
_WIDTHS = ("max_length", "numeric_precision", "numeric_scale")
_SAME_ACTIONS = frozenset({"RESTRICT", "NO ACTION"})


def _char36(field: Mapping[str, Any] | None) -> bool:
    """Whether ``field``'s column is ``char``/``varchar(36)``: how MariaDB and SQLite hold a uuid."""
    schema = (field or {}).get("schema") or {}
    return schema.get("data_type") in ("char", "varchar") and schema.get("max_length") == 36


def _field_noise(record: Mapping[str, Any], source_field: Mapping[str, Any] | None,
                 target_field: Mapping[str, Any] | None = None) -> bool:
    """Whether one edit record of a field is the vendor's spelling rather than a change.

    ``target_field`` is the target's field as it is (the record's ``lhs`` side): a PostgreSQL ``uuid`` key
    promoted onto MariaDB meets a ``char(36)`` typed ``string`` there, and only the target's column says so.
    """
    path = record.get("path") or []
    lhs, rhs = record.get("lhs"), record.get("rhs")
    schema = (source_field or {}).get("schema") or {}
    if path == ["type"]:
        return {lhs, rhs} == {"uuid", "string"} and (_char36(source_field) or _char36(target_field))
    if len(path) != 2 or path[0] != "schema":
        return False
    if path[1] == "data_type":
        return True
    if path[1] in _WIDTHS:
        return lhs is None or rhs is None or (source_field or {}).get("type") in FIXED_WIDTH_TYPES
    if path[1] == "is_unique":
        return bool(schema.get("is_primary_key"))
    return False


def _relation_noise(record: Mapping[str, Any]) -> bool:
    path = record.get("path") or []
    lhs, rhs = record.get("lhs"), record.get("rhs")
    if len(path) != 2 or path[0] != "schema":
        return False
    if path[1] == "constraint_name":
        return lhs is None or rhs is None
    return path[1] in ("on_update", "on_delete") and {lhs, rhs} <= _SAME_ACTIONS


def _is_noise(kind: str, record: Mapping[str, Any], source_field: Mapping[str, Any] | None,
              target_field: Mapping[str, Any] | None = None) -> bool:
    """Only edits can be noise: a created or deleted entry, or a new key, is always a change."""
    if record.get("kind") != "E":
        return False
    return _field_noise(record, source_field, target_field) if kind == "fields" else _relation_noise(record)


def drop_vendor_noise(diff: Mapping[str, Any], source: Mapping[str, Any],
                      target: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], int]:
    """The diff without vendor noise, and how many records were dropped.

    ``target`` is the target's snapshot the diff was made against (its fields' columns decide a uuid held as
    ``char(36)`` there; without it only the source's columns are read).  An entry keeps its remaining records;
    CairnCMS applies a field or relation update record by record onto the target's current entry
    (``apply-diff.ts``), so dropping a record leaves that part of the target as it is.
    """
    fields = {(f["collection"], f["field"]): f for f in source.get("fields") or []}
    current = {(f["collection"], f["field"]): f for f in (target or {}).get("fields") or []}
    dropped = 0
    kept: dict[str, Any] = {"collections": list(diff.get("collections") or []), "fields": [], "relations": []}
    for kind in ("fields", "relations"):
        for entry in diff.get(kind) or []:
            key = (entry["collection"], entry["field"])
            source_field, target_field = (fields.get(key), current.get(key)) if kind == "fields" else (None, None)
            records = [r for r in entry["diff"] if not _is_noise(kind, r, source_field, target_field)]
            dropped += len(entry["diff"]) - len(records)
            if records:
                kept[kind].append({**entry, "diff": records})
    return kept, dropped


def is_empty(diff: Mapping[str, Any]) -> bool:
    """Whether nothing is left to apply (CairnCMS's own test: all three lists empty)."""
    return not any(diff.get(kind) for kind in ("collections", "fields", "relations"))


def type_drift(source: Mapping[str, Any], target: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per field, how the target (its snapshot after a forced cross-vendor apply) stores what the source declares.

    Every change of native type is listed; it is ``lossy`` when the target can hold less than the
    source: another CairnCMS ``type`` (beyond the uuid cast of keys), a shorter ``max_length``, or a
    smaller ``numeric_precision``/``numeric_scale`` of a ``decimal``.  A native spelling of the same
    type is not lossy (values that a vendor stores differently, such as MariaDB's whole-second
    timestamps, are the import's drift report, ``bundle/drift.py``: a promote moves no values).
    """
    after = {(f["collection"], f["field"]): f for f in target.get("fields") or []}
    drift = []
    for field in source.get("fields") or []:
        now = after.get((field["collection"], field["field"]))
        was_schema, now_schema = field.get("schema") or {}, (now or {}).get("schema") or {}
        if now is None or not was_schema or not now_schema:
            continue  # not created, or an alias (no column)
        reasons = _lossy_reasons(field, now)
        if reasons or was_schema.get("data_type") != now_schema.get("data_type"):
            drift.append({"field": f"{field['collection']}.{field['field']}",
                          "source": _native(field), "target": _native(now), "lossy": bool(reasons),
                          "reasons": reasons})
    return drift


def _native(field: Mapping[str, Any]) -> str:
    """``type`` and the native column, e.g. ``string varchar(255)`` or ``decimal numeric(10,5)``."""
    schema = field.get("schema") or {}
    size = schema.get("max_length") if field.get("type") not in FIXED_WIDTH_TYPES else None
    if field.get("type") == "decimal":
        size = f"{schema.get('numeric_precision')},{schema.get('numeric_scale')}"
    return f"{field.get('type')} {schema.get('data_type')}" + (f"({size})" if size is not None else "")


def _lossy_reasons(source: Mapping[str, Any], target: Mapping[str, Any]) -> list[str]:
    """What the target's column holds less of than the source's declares."""
    reasons = []
    if source.get("type") != target.get("type") and not _uuid_cast(source, target):
        reasons.append(f"type {source.get('type')} became {target.get('type')}")
    was, now = source.get("schema") or {}, target.get("schema") or {}
    keys = ["max_length"] if source.get("type") not in FIXED_WIDTH_TYPES else []
    if source.get("type") == "decimal":
        keys += ["numeric_precision", "numeric_scale"]
    for key in keys:
        if was.get(key) is not None and now.get(key) is not None and now[key] < was[key]:
            reasons.append(f"{key} {was[key]} became {now[key]}")
    return reasons


def _uuid_cast(source: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
    """A uuid as ``uuid`` on one side and ``char``/``varchar(36)`` on the other (CairnCMS's cast of keys, or
    MariaDB/SQLite holding a PostgreSQL uuid): not a loss."""
    return _field_noise({"kind": "E", "path": ["type"], "lhs": target.get("type"), "rhs": source.get("type")}, source,
                        target)
