"""What a content move will do: the schema precondition, the order of the collections, users by email.

The involved collections' fields must be the same on both sides (their schema snapshots,
:func:`cairn_migrate.bundle.schema_snapshot.schema_snapshot`, compared field by field up to the
vendors' own spelling: SQLite's ``char(36)`` uuid is a ``string``, its ``decimal`` a ``float``);
otherwise the move is refused, naming the fields, and points to ``cairn-migrate promote``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..bundle.schema_snapshot import schema_snapshot
from ..instance.database import Database
from . import keys
from .closure import FOLDERS, SYSTEM_MOVED, USERS, Graph

#: Field types that are one type spelled by different vendors (the snapshot's ``type``): SQLite's
#: ``char(36)`` uuid reads as ``string``, its ``decimal`` as ``float``.
_SPELLINGS = ({"uuid", "string"}, {"float", "decimal", "double"})


def _same_type(ours: str | None, theirs: str | None) -> bool:
    return ours == theirs or any({ours, theirs} <= spelling for spelling in _SPELLINGS)


def _fields(snapshot: Mapping[str, Any], collections: Iterable[str]) -> dict[str, dict[str, Any]]:
    wanted = set(collections)
    out: dict[str, dict[str, Any]] = {c: {} for c in wanted}
    for entry in snapshot["fields"]:
        if entry["collection"] in wanted:
            out[entry["collection"]][entry["field"]] = entry
    return out


def schema_differences(src: Database, dst: Database, collections: Sequence[str],
                       source_snapshot: Mapping[str, Any] | None = None,
                       target_snapshot: Mapping[str, Any] | None = None) -> list[str]:
    """One line per field of ``collections`` (user collections) that differs between source and target.

    ``source_snapshot``: the source's own snapshot (a bundle's, taken on its instance; a URL source's, from its
    API) instead of ``src``'s; ``target_snapshot`` likewise for a target given by URL.
    """
    user = [c for c in collections if not c.startswith("directus_")]
    if not user:
        return []
    ours = _fields(source_snapshot if source_snapshot is not None else schema_snapshot(src, version="content"), user)
    theirs = _fields(target_snapshot if target_snapshot is not None else schema_snapshot(dst, version="content"),
                     user)
    dst_tables = set(dst.table_names())
    problems = []
    for collection in sorted(user):
        if collection not in dst_tables:
            problems.append(f"{collection}: no such table on the target")
            continue
        a, b = ours[collection], theirs[collection]
        for name in sorted(a.keys() - b.keys()):
            problems.append(f"{collection}.{name}: only on the source")
        for name in sorted(b.keys() - a.keys()):
            if (b[name].get("schema") or {}).get("is_nullable") is False and b[name]["type"] != "alias" \
                    and (b[name].get("schema") or {}).get("default_value") is None:
                problems.append(f"{collection}.{name}: only on the target, and required there")
            else:
                problems.append(f"{collection}.{name}: only on the target")
        for name in sorted(a.keys() & b.keys()):
            ta, tb = a[name]["type"], b[name]["type"]
            if not _same_type(ta, tb):
                problems.append(f"{collection}.{name}: type {ta} on the source, {tb} on the target")
                continue
            na, nb = ((x.get("schema") or {}).get("is_nullable") for x in (a[name], b[name]))
            if na != nb and None not in (na, nb):
                problems.append(f"{collection}.{name}: {'nullable' if na else 'required'} on the source, "
                                f"{'nullable' if nb else 'required'} on the target")
    return problems


def order(graph: Graph, collections: Iterable[str]) -> list[str]:
    """The collections parents first (a row's many-to-one targets before it); cycles broken by name."""
    names = set(collections)
    deps = {n: {one for link in graph.outgoing(n) for one in ((link.one,) if link.one else link.allowed)
                if one in names and one != n} for n in names}
    ordered: list[str] = []
    remaining = sorted(names, key=lambda n: (n not in SYSTEM_MOVED, n != FOLDERS, n))
    while remaining:
        ready = [n for n in remaining if deps[n] <= set(ordered)] or remaining[:1]
        ordered.append(ready[0])
        remaining.remove(ready[0])
    return ordered


@dataclass
class Users:
    """Source users → target users, matched by email (lower-cased, as CairnCMS's login compares them)."""

    mapping: dict[str, Any] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    #: the email (as matched) of each unmatched user → its source id (users.py creates them when asked)
    sources: dict[str, str] = field(default_factory=dict)
    #: emails of the users created on the target (--create-users)
    created: list[str] = field(default_factory=list)

    def target(self, source_id: Any) -> Any:
        return None if source_id is None else self.mapping.get(str(source_id).lower())


def match_users(src: Database, dst: Database, ids: Iterable[Any], src_conn: sa.Connection,
                dst_conn: sa.Connection, email_of: Callable[[str], str] | None = None) -> Users:
    """Each referenced source user's target twin by email; users without one are listed (users.py creates them
    with --create-users).  ``email_of``: the email the target would hold (a masking profile's fake): a target
    user with that email is the twin (a masked clone), else one with the real email (the target already has them)."""
    users = Users()
    wanted = sorted({str(i).lower() for i in ids})
    emails: dict[str, str] = {}
    real: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        batch = wanted[start:start + 500]
        query = sa.select(sa.column("id"), sa.column("email")).select_from(sa.table(USERS)).where(
            keys.in_(src, USERS, "id", batch))
        for uid, email in src_conn.execute(query).all():
            if email:
                emails[str(uid).lower()] = (email_of(email) if email_of is not None else email).lower()
                real[str(uid).lower()] = email.lower()
            else:
                users.unmatched.append(f"{str(uid).lower()} (no email)")
    by_email: dict[str, Any] = {}
    lowered = sorted(set(emails.values()) | set(real.values()))
    for start in range(0, len(lowered), 500):
        query = sa.select(sa.column("id"), sa.column("email")).select_from(sa.table(USERS)).where(
            sa.func.lower(sa.column("email")).in_(lowered[start:start + 500]))
        for uid, email in dst_conn.execute(query).all():
            by_email[email.lower()] = str(uid).lower()
    for uid, email in sorted(emails.items()):
        if email in by_email:
            users.mapping[uid] = by_email[email]
        elif real[uid] in by_email:
            users.mapping[uid] = by_email[real[uid]]
        else:
            users.unmatched.append(email)
            users.sources[email] = uid
    users.unmatched.sort()
    return users


def empty_counts() -> dict[str, int]:
    return {"created": 0, "updated": 0, "unchanged": 0, "skipped": 0, "deleted": 0}


def has_changes(report: Mapping[str, Any]) -> bool:
    """Whether the plan writes anything (rows or bytes)."""
    return any(c["created"] or c["updated"] or c["deleted"] for c in report["plan"].values()) or bool(
        report["files"]["copy"])

