"""CairnCMS's schema diff, computed here: two snapshots in, the diff ``POST /schema/diff`` answers out.

The offline engine (``schema_engine``) has no running CairnCMS to ask, so it diffs the target's
snapshot (read from its database) against the source's itself, in CairnCMS's own format (reference
§2.4), so that ``promote``'s planning (``schema_steps``, ``data_loss``, ``drop_vendor_noise``) reads
it unchanged:

- each snapshot entry is first reduced to the properties CairnCMS compares (``sanitize-schema.ts``:
  a collection's ``meta`` and ``schema.name``; a field's ``type``, ``meta`` and column facts, none of
  them for an auto-increment primary key; a relation's ``meta`` and foreign key);
- the entries are matched by collection (and field) and diffed like the ``deep-diff`` package does:
  ``N`` new, ``D`` deleted, ``E`` edited (``lhs``/``rhs``), ``A`` an array's item (``index``,
  ``item``), each with the ``path`` into the entry (none for the whole entry);
- the lists are ordered by collection (stable: the target's entries first, then the new ones), and
  the fields and relations of a deleted collection are left out (``get-snapshot-diff.ts``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

_MISSING = object()

_COLLECTION_PATHS = ("collection", "fields", "meta", "schema.name")
_FIELD_PATHS = ("collection", "field", "type", "meta", "name", "children")
_COLUMN_PATHS = tuple("schema." + key for key in (
    "name", "table", "data_type", "default_value", "max_length", "numeric_precision", "numeric_scale",
    "is_nullable", "is_unique", "is_primary_key", "is_generated", "generation_expression", "has_auto_increment",
    "foreign_key_table", "foreign_key_column"))
_RELATION_PATHS = ("collection", "field", "related_collection", "meta", *("schema." + key for key in (
    "table", "column", "foreign_key_table", "foreign_key_column", "constraint_name", "on_update", "on_delete")))


# --------------------------------------------------------------------------- deep-diff
def _js_type(value: Any) -> str:
    """``deep-diff``'s ``realTypeOf``: JSON's kinds, booleans apart from numbers."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Sequence):
        return "array"
    return "object"


def _record(kind: str, path: list[Any], **values: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": kind}
    if path:
        record["path"] = path
    record.update(values)
    return record


def _walk(lhs: Any, rhs: Any, path: list[Any], out: list[dict[str, Any]]) -> None:
    if lhs is _MISSING and rhs is not _MISSING:
        out.append(_record("N", path, rhs=rhs))
    elif rhs is _MISSING and lhs is not _MISSING:
        out.append(_record("D", path, lhs=lhs))
    elif _js_type(lhs) != _js_type(rhs):
        out.append(_record("E", path, lhs=lhs, rhs=rhs))
    elif isinstance(lhs, Mapping):
        for key in lhs:
            _walk(lhs[key], rhs.get(key, _MISSING), [*path, key], out)
        for key in rhs:
            if key not in lhs:
                _walk(_MISSING, rhs[key], [*path, key], out)
    elif _js_type(lhs) == "array":
        i, j = len(rhs) - 1, len(lhs) - 1
        while i > j:
            out.append(_record("A", path, index=i, item={"kind": "N", "rhs": rhs[i]}))
            i -= 1
        while j > i:
            out.append(_record("A", path, index=j, item={"kind": "D", "lhs": lhs[j]}))
            j -= 1
        for index in range(i, -1, -1):
            _walk(lhs[index], rhs[index], [*path, index], out)
    elif lhs != rhs and not (isinstance(lhs, float) and isinstance(rhs, float) and math.isnan(lhs) and math.isnan(rhs)):
        out.append(_record("E", path, lhs=lhs, rhs=rhs))


def deep_diff(lhs: Any, rhs: Any) -> list[dict[str, Any]] | None:
    """The records of ``deep-diff``'s ``diff(lhs, rhs)`` (None when equal); ``None`` stands for ``undefined``."""
    out: list[dict[str, Any]] = []
    _walk(_MISSING if lhs is None else lhs, _MISSING if rhs is None else rhs, [], out)
    return out or None


# --------------------------------------------------------------------------- sanitize-schema
def _pick(entry: Mapping[str, Any] | None, paths: Sequence[str]) -> dict[str, Any] | None:
    """lodash ``pick``: the listed (dotted) paths that exist, in that order; a null parent has no children."""
    if entry is None:
        return None
    picked: dict[str, Any] = {}
    for path in paths:
        head, _, tail = path.partition(".")
        if head not in entry:
            continue
        if not tail:
            picked[head] = entry[head]
        elif isinstance(entry[head], Mapping) and tail in entry[head]:
            picked.setdefault(head, {})[tail] = entry[head][tail]
    return picked


def sanitize_field(field: Mapping[str, Any] | None, whole_schema: bool = False) -> dict[str, Any] | None:
    """What CairnCMS compares of a field (``whole_schema``: leave the column out, for auto-increment keys)."""
    return _pick(field, _FIELD_PATHS if whole_schema else (*_FIELD_PATHS, *_COLUMN_PATHS))


# --------------------------------------------------------------------------- the diff
def _entries(kind: str, current: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]],
             keys: tuple[str, ...]) -> list[dict[str, Any]]:
    wanted = {tuple(e[k] for k in keys): e for e in after}
    have = {tuple(e[k] for k in keys) for e in current}
    entries = []
    for entry in current:
        other = wanted.get(tuple(entry[k] for k in keys))
        entries.append({**{k: entry[k] for k in keys}, **_extra(kind, entry), "diff": _pair(kind, entry, other)})
    for entry in after:
        if tuple(entry[k] for k in keys) not in have:
            entries.append({**{k: entry[k] for k in keys}, **_extra(kind, entry), "diff": _pair(kind, None, entry)})
    return sorted((e for e in entries if e["diff"]), key=lambda e: e["collection"])


def _extra(kind: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"related_collection": entry.get("related_collection")} if kind == "relations" else {}


def _pair(kind: str, current: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[dict[str, Any]] | None:
    if kind == "collections":
        return deep_diff(_pick(current, _COLLECTION_PATHS), _pick(after, _COLLECTION_PATHS))
    if kind == "relations":
        return deep_diff(_pick(current, _RELATION_PATHS), _pick(after, _RELATION_PATHS))
    schema = (current or {}).get("schema") or {}
    auto_key = current is not None and bool(schema.get("is_primary_key")) and bool(schema.get("has_auto_increment"))
    return deep_diff(sanitize_field(current, auto_key), sanitize_field(after, auto_key))


def snapshot_diff(current: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """``getSnapshotDiff(current, after)``: what applying ``after`` changes on a target whose snapshot is ``current``.

    A ``directus_*`` collection is never diffed (nor its fields and relations): a system table of one product
    or release that the other lacks (Directus 9's ``directus_webhooks``) is not the user's structure, and
    CairnCMS's own snapshot never lists one.  Fields a user added to a system collection (no ``collections``
    entry) are diffed as CairnCMS diffs them.
    """
    system = {c["collection"] for c in [*(current.get("collections") or []), *(after.get("collections") or [])]
              if str(c["collection"]).startswith("directus_")}
    current, after = _without(current, system), _without(after, system)
    diff = {
        "collections": _entries("collections", current.get("collections") or [], after.get("collections") or [],
                                ("collection",)),
        "fields": _entries("fields", current.get("fields") or [], after.get("fields") or [], ("collection", "field")),
        "relations": _entries("relations", current.get("relations") or [], after.get("relations") or [],
                              ("collection", "field")),
    }
    deleted = {e["collection"] for e in diff["collections"] if e["diff"][0]["kind"] == "D"}
    diff["fields"] = [e for e in diff["fields"] if e["collection"] not in deleted]
    diff["relations"] = [e for e in diff["relations"] if e["collection"] not in deleted]
    return diff


def _without(snapshot: Mapping[str, Any], collections: set[str]) -> dict[str, Any]:
    """``snapshot`` without the entries of ``collections``."""
    if not collections:
        return dict(snapshot)
    return {**snapshot, **{kind: [e for e in snapshot.get(kind) or [] if e["collection"] not in collections]
                           for kind in ("collections", "fields", "relations")}}


def apply_records(entry: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``deep-diff``'s ``applyChange`` of every record onto a copy of ``entry`` (CairnCMS's updates)."""
    import copy

    result = copy.deepcopy(dict(entry))
    for record in records:
        path = list(record.get("path") or [])
        if not path:
            continue
        parent: Any = result
        for key in path[:-1]:
            if not isinstance(parent, list) and not isinstance(parent.get(key), (dict, list)):
                parent[key] = {}
            parent = parent[key]
        last = path[-1]
        kind = record["kind"]
        if kind == "A":
            if not isinstance(parent[last] if isinstance(parent, list) else parent.get(last), list):
                parent[last] = []
            target = parent[last]
            item = record["item"]
            if item["kind"] == "N":
                while len(target) <= record["index"]:
                    target.append(None)
                target[record["index"]] = copy.deepcopy(item["rhs"])
            else:
                del target[record["index"]:record["index"] + 1]
        elif kind == "D":
            if isinstance(parent, list):
                del parent[last]
            else:
                parent.pop(last, None)
        else:
            parent[last] = copy.deepcopy(record["rhs"])
    return result
