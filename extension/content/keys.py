"""Keys of a content move: typed columns for conditions, and the ID map per instance pair.

uuid and string primary keys travel as they are; integer keys are remapped (the target
gives new rows its next ids).  The ID map in the state store (``cm_content_id_map``)
remembers, per (source, target) instance pair and collection, which target row each
source row became, so a second run updates or skips the same rows instead of
creating them again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..instance.database import Database
from ..service.state import create_tables

_META = sa.MetaData()
#: the ``state`` of an entry whose row was sent to the target's API, the answer (its target key) not yet read
SENT = "sent"
#: source key → target key of every row a content move wrote or adopted, per (source, target) pair and
#: collection: integer keys as remapped, kept uuid/string keys as identity entries (source_id = target_id), so
#: the map says which target rows are the pair's own (mirror deletes only those).  ``state`` is ``pending``
#: (with the ``run_id`` that wrote it and the ``digest`` of the row as written) from before the target's commit
#: until after it, NULL once committed: a later run keeps a pending entry only when the target row holds what
#: was written (:meth:`IdMap.confirm`).  ``state`` ``sent`` marks an integer-keyed row a move through the target's
#: API sent in a ``POST`` before it knew the key the target would give it (:meth:`IdMap.record_sent`): ``target_id``
#: is empty, ``run_id`` holds the request's marker (its ``User-Agent``, which CairnCMS records in the
#: ``directus_activity`` row of each item it creates) and ``digest`` the row's place in the request,
#: ``<position>/<rows>``; the next run finds what the request created before writing again (:mod:`.sink_api`).
ID_MAP = sa.Table(
    "cm_content_id_map", _META,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(64), primary_key=True),
    sa.Column("collection", sa.String(64), primary_key=True),
    sa.Column("source_id", sa.String(255), primary_key=True),
    sa.Column("target_id", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=True),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("digest", sa.String(64), nullable=True),
)


def column(db: Database, table: str, name: str) -> sa.ColumnClause[Any]:
    """``name`` of ``table`` for a condition, unattached (so it adds no table to a FROM): typed on
    PostgreSQL (whose driver casts every parameter to its column's type), untyped elsewhere (so
    SQLite's mixed timestamps and text uuids compare as stored)."""
    if db.vendor == "postgres":
        return sa.column(name, db.table(table).c[name].type)
    return sa.column(name)


def values(db: Database, table: str, name: str, items: Iterable[Any]) -> list[Any]:
    """``items`` as the driver wants them for ``table.name``: ``uuid.UUID`` for PostgreSQL's uuid type."""
    reflected = db.table(table).c[name]
    if db.vendor == "postgres" and getattr(reflected.type, "as_uuid", False):
        return [i if isinstance(i, uuid.UUID) else uuid.UUID(str(i)) for i in items]
    if db.vendor == "postgres" and isinstance(reflected.type, sa.Integer):
        return [int(i) for i in items]
    return list(items)


def value(db: Database, table: str, name: str, item: Any) -> Any:
    return values(db, table, name, [item])[0]


def in_(db: Database, table: str, name: str, items: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``table.name IN items``, typed for the vendor.

    On PostgreSQL ``table.name = ANY(:array)``: one bound array instead of one parameter per item, so a
    500-key batch is not a 500-placeholder statement that SQLAlchemy renders and psycopg parses again on
    every call (too long for its statement cache), the bulk of a content move's lookup time."""
    if db.vendor == "postgres":
        from sqlalchemy.dialects.postgresql import ARRAY

        kind = db.table(table).c[name].type
        return column(db, table, name) == sa.any_(sa.bindparam(None, values(db, table, name, items), type_=ARRAY(kind)))
    return column(db, table, name).in_(values(db, table, name, items))


def equals(db: Database, table: str, name: str, item: Any) -> sa.ColumnElement[bool]:
    """``table.name = item``, typed for the vendor."""
    return column(db, table, name) == value(db, table, name, item)


def is_integer(db: Database, table: str, name: str) -> bool:
    """Whether ``table.name`` is an integer column (an auto-increment key the target renumbers)."""
    return isinstance(db.table(table).c[name].type, sa.Integer)


def row_digest(values: Mapping[str, Any]) -> str:
    """A digest of a row as written (its columns' comparable values), to recognise it on the target later."""
    text = json.dumps(sorted((k, repr(v)) for k, v in values.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pair_identity(source: Any, target: Any, *, legacy: bool = False) -> tuple[str, str]:
    """The (source, target) pair as the ID map names it: the one way content moves write the map and sync
    reads it.  ``source`` is an ``Instance``, or a bundle's or URL source's ``scope`` (the source it was exported
    from, its URL); ``target`` an ``Instance`` or a URL target's ``scope``.

    :param legacy: the pair as earlier versions named it (``instance_scope``), to adopt their rows.
    """
    from ..service.state import database_identity, instance_scope

    ident = instance_scope if legacy else database_identity
    first = source if isinstance(source, str) else ident(source)
    return first, target if isinstance(target, str) else ident(target)


def sent_markers(state_url: str, scope: tuple[str, str]) -> set[str]:
    """The markers of the write requests a pair's earlier moves sent through the target's API and never saw
    answered (``sent`` entries, :meth:`IdMap.record_sent`): what a target given by URL must show of its activity."""
    from ..service.jobs import _state_engine

    engine = _state_engine(state_url)
    if not sa.inspect(engine).has_table(ID_MAP.name) or "state" not in {
            c["name"] for c in sa.inspect(engine).get_columns(ID_MAP.name)}:
        return set()
    with engine.connect() as conn:
        return {str(m) for (m,) in conn.execute(sa.select(ID_MAP.c.run_id).distinct().where(
            ID_MAP.c.source == scope[0], ID_MAP.c.target == scope[1], ID_MAP.c.state == SENT))}


class IdMap:
    """The ID map of one (source, target) pair.

    :param scope: the pair's identities (:func:`~cairn_migrate.service.state.database_identity` of each side).
    :param legacy: the pair as earlier versions named it (``instance_scope``, tied to the host's spelling):
        its rows are moved to ``scope`` the first time, so an upgrade keeps the map.
    """

    def __init__(self, state_url: str, scope: tuple[str, str], legacy: tuple[str, str] | None = None) -> None:
        from ..service.jobs import _state_engine
        from ..service.state import add_missing_column

        self.engine = _state_engine(state_url)
        create_tables(self.engine, _META)
        for name in ("state", "run_id", "digest"):
            add_missing_column(self.engine, ID_MAP, name)
        self.scope = scope
        if legacy is not None and legacy != scope:
            self._adopt_legacy(legacy)
        self.known: dict[tuple[str, str], str] = {}
        #: (collection, source_id) → digest of the row a run wrote but did not confirm committed
        self.pending: dict[tuple[str, str], str | None] = {}
        #: (collection, source_id) → (request marker, position, rows in the request) of a row an earlier run sent
        #: through the target's API and never saw answered (:meth:`record_sent`)
        self.sent: dict[tuple[str, str], tuple[str, int, int]] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ID_MAP.c.collection, ID_MAP.c.source_id, ID_MAP.c.target_id,
                                          ID_MAP.c.state, ID_MAP.c.digest, ID_MAP.c.run_id).where(
                ID_MAP.c.source == scope[0], ID_MAP.c.target == scope[1]))
            for r in rows:
                if r.state == SENT:
                    position, _, size = str(r.digest or "0/0").partition("/")
                    self.sent[(r.collection, r.source_id)] = (str(r.run_id), int(position or 0), int(size or 0))
                    continue
                self.known[(r.collection, r.source_id)] = r.target_id
                if r.state == "pending":
                    self.pending[(r.collection, r.source_id)] = r.digest
        self.run_id = uuid.uuid4().hex
        self._mine: set[tuple[str, str]] = set()
        self._requests = 0

    def _adopt_legacy(self, legacy: tuple[str, str]) -> None:
        """Move the rows recorded under the pair's old identity to its stable one (those it lacks)."""
        where = (ID_MAP.c.source == legacy[0]) & (ID_MAP.c.target == legacy[1])
        with self.engine.begin() as conn:
            old = conn.execute(sa.select(ID_MAP).where(where)).mappings().all()
            if not old:
                return
            have = {(r.collection, r.source_id) for r in conn.execute(sa.select(
                ID_MAP.c.collection, ID_MAP.c.source_id).where(
                ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1]))}
            moved = [{**dict(r), "source": self.scope[0], "target": self.scope[1]} for r in old
                     if (r["collection"], r["source_id"]) not in have]
            if moved:
                conn.execute(ID_MAP.insert(), moved)
            conn.execute(ID_MAP.delete().where(where))

    def marker(self) -> str:
        """A fresh marker for one write request of this run (the run's id and a counter: unique, under 64 chars)."""
        self._requests += 1
        return f"{self.run_id}-{self._requests}"

    def record_sent(self, collection: str, marker: str, source_ids: Sequence[Any]) -> None:
        """Before a ``POST`` of integer-keyed rows through the target's API: each row as ``sent`` with the request's
        marker and its place in it, committed before the request leaves.  Their target keys are known only from
        the answer; an answer never read (an interrupt, a kill, a lost connection) leaves these entries, and the
        next run finds what the request created by its marker (:func:`cairn_migrate.content.sink_api.settle_sent`)
        instead of creating the rows a second time.  An entry the row had (its target row is gone: it is created
        again) is replaced."""
        keys = [(collection, str(s)) for s in source_ids]
        with self.engine.begin() as conn:
            for start in range(0, len(keys), 500):
                conn.execute(ID_MAP.delete().where(
                    ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1],
                    ID_MAP.c.collection == collection,
                    ID_MAP.c.source_id.in_([s for _, s in keys[start:start + 500]])))
            conn.execute(ID_MAP.insert(), [
                {"source": self.scope[0], "target": self.scope[1], "collection": c, "source_id": s, "target_id": "",
                 "state": SENT, "run_id": marker, "digest": f"{position}/{len(keys)}"}
                for position, (c, s) in enumerate(keys)])
        for key in keys:
            self.known.pop(key, None)
            self.pending.pop(key, None)

    def resolve_sent(self, found: Mapping[tuple[str, str], str | None], *, persist: bool = True) -> None:
        """Settle entries :meth:`record_sent` left: ``found`` maps each to the target key its request created, or
        None (nothing created, or unknowable: forgotten, the walk decides again).  ``persist`` False (a dry run):
        the map in memory only."""
        if persist:
            with self.engine.begin() as conn:
                for (collection, source_id), target_id in found.items():
                    where = (ID_MAP.c.source == self.scope[0]) & (ID_MAP.c.target == self.scope[1]) & \
                        (ID_MAP.c.collection == collection) & (ID_MAP.c.source_id == source_id) & \
                        (ID_MAP.c.state == SENT)
                    if target_id is None:
                        conn.execute(ID_MAP.delete().where(where))
                    else:
                        conn.execute(ID_MAP.update().where(where).values(target_id=str(target_id), state=None,
                                                                         run_id=None, digest=None))
        for key, target_id in found.items():
            self.sent.pop(key, None)
            if target_id is not None:
                self.known[key] = str(target_id)

    def get(self, collection: str, source_id: Any) -> str | None:
        return self.known.get((collection, str(source_id)))

    def is_pending(self, collection: str, source_id: Any) -> bool:
        return (collection, str(source_id)) in self.pending

    def confirm(self, collection: str, source_id: Any, digest: str | None) -> bool:
        """Resolve a pending entry: kept (and committed) when the target row's ``digest`` is the one written,
        else forgotten (the write it records never committed).  Returns whether it is kept."""
        key = (collection, str(source_id))
        if key not in self.pending:
            return key in self.known
        ok = digest is not None and digest == self.pending[key]
        with self.engine.begin() as conn:
            where = (ID_MAP.c.source == self.scope[0]) & (ID_MAP.c.target == self.scope[1]) & \
                (ID_MAP.c.collection == key[0]) & (ID_MAP.c.source_id == key[1])
            if ok:
                conn.execute(ID_MAP.update().where(where).values(state=None, run_id=None))
            else:
                conn.execute(ID_MAP.delete().where(where))
                self.known.pop(key, None)
        self.pending.pop(key)
        return ok

    def owned(self, collection: str) -> dict[str, str]:
        """source_id → target_id of the rows of ``collection`` this pair's moves wrote or adopted."""
        return {s: t for (c, s), t in self.known.items() if c == collection}

    def forget(self, entries: Iterable[tuple[str, Any]]) -> None:
        """Drop entries (rows a mirror deleted)."""
        gone = [(c, str(s)) for c, s in entries if (c, str(s)) in self.known]
        if not gone:
            return
        with self.engine.begin() as conn:
            for collection, source_id in gone:
                conn.execute(ID_MAP.delete().where(
                    ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1],
                    ID_MAP.c.collection == collection, ID_MAP.c.source_id == source_id))
                self.known.pop((collection, source_id), None)

    def save(self, entries: Mapping[tuple[str, Any], Any], *, pending: bool = False,
             digests: Mapping[tuple[str, Any], str] | None = None) -> int:
        """Record where source rows went (``(collection, source_id) → target_id``); returns how many changed.

        ``pending``: before the target's commit, marked with this run's id and the rows' digests
        (:meth:`commit` clears the mark after the commit)."""
        digests = {(c, str(s)): d for (c, s), d in (digests or {}).items()}
        changed = {(c, str(s)): str(t) for (c, s), t in entries.items()
                   if self.known.get((c, str(s))) != str(t)}
        if not changed:
            return 0
        with self.engine.begin() as conn:
            stale: dict[str, list[str]] = {}  # the entries replaced, deleted in batches per collection
            for collection, source_id in changed:
                stale.setdefault(collection, []).append(source_id)
            for collection, source_ids in stale.items():
                for start in range(0, len(source_ids), 500):
                    conn.execute(ID_MAP.delete().where(
                        ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1],
                        ID_MAP.c.collection == collection, ID_MAP.c.source_id.in_(source_ids[start:start + 500])))
            conn.execute(ID_MAP.insert(), [
                {"source": self.scope[0], "target": self.scope[1], "collection": c, "source_id": s, "target_id": t,
                 "state": "pending" if pending else None, "run_id": self.run_id if pending else None,
                 "digest": digests.get((c, s)) if pending else None}
                for (c, s), t in changed.items()])
        self.known.update(changed)
        if pending:
            self.pending.update({k: digests.get(k) for k in changed})
            self._mine.update(changed)
        return len(changed)

    def commit(self) -> None:
        """The target committed: this run's pending entries are the pair's now."""
        with self.engine.begin() as conn:
            conn.execute(ID_MAP.update().where(
                ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1],
                ID_MAP.c.run_id == self.run_id).values(state=None, run_id=None))
        for key in self._mine:
            self.pending.pop(key, None)
        self._mine = set()

    def discard(self) -> None:
        """The target rolled back: forget this run's pending entries."""
        with self.engine.begin() as conn:
            conn.execute(ID_MAP.delete().where(
                ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1],
                ID_MAP.c.run_id == self.run_id, ID_MAP.c.state == "pending"))
        for key in self._mine:
            self.known.pop(key, None)
            self.pending.pop(key, None)
        self._mine = set()
