"""Keys of a content move: typed columns for conditions, and the ID map per instance pair.

uuid and string primary keys travel as they are; integer keys are remapped (the target
gives new rows its next ids).  The ID map in the state store (``cm_content_id_map``)
remembers, per (source, target) instance pair and collection, which target row each
source row became, so a second run updates or skips the same rows instead of
creating them again.
"""

from __future__ import annotations

import hashlib
import re
from json.encoder import encode_basestring_ascii as _escape
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..instance.database import Database
from ..service.state import create_tables

_META = sa.MetaData()
#: source key → target key of every row a content move wrote or adopted, per (source, target) pair and
#: collection: integer keys as remapped, kept uuid/string keys as identity entries (source_id = target_id), so
#: the map says which target rows are the pair's own (mirror deletes only those).  ``state`` is ``pending``
#: (with the ``run_id`` that wrote it and the ``digest`` of the row as written) from before the target's commit
#: until after it, NULL once committed: a later run keeps a pending entry only when the target row holds what
#: was written (:meth:`IdMap.confirm`).
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
        literal = _array_literal(kind, items)
        if literal is not None:  # uuid and integer keys: the array as one text value the server reads as the array
            # untyped (psycopg sends a str as "unknown"), so ``CAST($1 AS uuid[])`` types the parameter itself and the
            # plan gets a constant array it hashes; typed as text, the cast is a function call per row and the
            # lookup of 20 000 keys in an unindexed column becomes quadratic (20 s and more at 20k articles)
            bound = sa.bindparam(None, literal, type_=sa.types.NullType())
            return column(db, table, name) == sa.any_(sa.cast(bound, ARRAY(kind)))
        return column(db, table, name) == sa.any_(sa.bindparam(None, values(db, table, name, items), type_=ARRAY(kind)))
    return column(db, table, name).in_(values(db, table, name, items))


def _array_literal(kind: Any, items: Sequence[Any]) -> str | None:
    """``items`` as a PostgreSQL array literal (``{1,2,3}``) for a uuid or integer column, else None.

    psycopg adapts a list parameter element by element in Python (``ListDumper``): with 500 to 20 000 keys per
    lookup that, and building a ``uuid.UUID`` per key for it, was about a fifth of a content move's CPU.  One
    string is dumped at once and the server parses it; each key is checked to be a uuid or an integer first,
    so the literal holds nothing else (no quote, comma or brace can reach it); a key that is not (a uuid's hex
    digits and hyphens) gets None, and the element-wise path raises for it as before."""
    if getattr(kind, "as_uuid", False):
        literal = "{" + ",".join([str(i) for i in items]) + "}"
        return literal if _UUID_ARRAY.fullmatch(literal) else None
    if isinstance(kind, sa.Integer):
        return "{" + ",".join([str(int(i)) for i in items]) + "}"
    return None


#: a literal of uuid-looking elements only (the server still checks each is a uuid)
_UUID_ARRAY = re.compile(r"\{(?:[0-9a-fA-F-]{32,36}(?:,[0-9a-fA-F-]{32,36})*)?\}")


def equals(db: Database, table: str, name: str, item: Any) -> sa.ColumnElement[bool]:
    """``table.name = item``, typed for the vendor."""
    return column(db, table, name) == value(db, table, name, item)


def is_integer(db: Database, table: str, name: str) -> bool:
    """Whether ``table.name`` is an integer column (an auto-increment key the target renumbers)."""
    return isinstance(db.table(table).c[name].type, sa.Integer)


def row_digest(values: Mapping[str, Any]) -> str:
    """A digest of a row as written (its columns' comparable values), to recognise it on the target later.

    The SHA-256 of ``json.dumps(sorted((name, repr(value)), ...))``, spelled out with the C string escaper
    rather than through ``json.dumps`` (whose generic encoder was a quarter of the digest's cost, computed once
    per written row): the text is the same byte for byte, so digests stored as pending by earlier versions
    still compare equal (``test_row_digest_is_the_json_dumps_form`` checks it)."""
    text = "[" + ", ".join(["[%s, %s]" % (_escape(k), _escape(r))
                            for k, r in sorted([(k, repr(v)) for k, v in values.items()])]) + "]"
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


def _insert_many(conn: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
    """``rows`` (every column of :data:`ID_MAP`, in order) into the map with the driver's own ``executemany``.

    A move records one entry per row it wrote (300 000 at 100k articles); SQLAlchemy's ``insert()`` builds a
    parameter dictionary per entry through its compiler, which cost more than the store's own insert."""
    if not rows:
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"  # SQLite; psycopg and PyMySQL take %s
    columns = ", ".join(conn.dialect.identifier_preparer.quote(c.name) for c in ID_MAP.columns)
    conn.exec_driver_sql(f"INSERT INTO {ID_MAP.name} ({columns}) VALUES ({', '.join([mark] * len(ID_MAP.columns))})",
                         rows)


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
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ID_MAP.c.collection, ID_MAP.c.source_id, ID_MAP.c.target_id,
                                          ID_MAP.c.state, ID_MAP.c.digest).where(
                ID_MAP.c.source == scope[0], ID_MAP.c.target == scope[1]))
            for r in rows:
                self.known[(r.collection, r.source_id)] = r.target_id
                if r.state == "pending":
                    self.pending[(r.collection, r.source_id)] = r.digest
        self.run_id = uuid.uuid4().hex
        self._mine: set[tuple[str, str]] = set()

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
                if (collection, source_id) in self.known:  # a new entry has no row to replace
                    stale.setdefault(collection, []).append(source_id)
            for collection, source_ids in stale.items():
                for start in range(0, len(source_ids), 500):
                    conn.execute(ID_MAP.delete().where(
                        ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1],
                        ID_MAP.c.collection == collection, ID_MAP.c.source_id.in_(source_ids[start:start + 500])))
            state, run_id = ("pending", self.run_id) if pending else (None, None)
            _insert_many(conn, [(self.scope[0], self.scope[1], c, s, t, state, run_id,
                                 digests.get((c, s)) if pending else None) for (c, s), t in changed.items()])
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
