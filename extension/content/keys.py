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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..errors import MigrateError
from ..instance.database import Database
from ..service.state import create_tables
from .spill import CHUNK, Spill, Written, chunks

_META = sa.MetaData()
#: the ``state`` of an entry whose row was sent to the target's API, the answer (its target key) not yet read
SENT = "sent"
#: source key → target key of every row a content move wrote or adopted, per (source, target) pair and
#: collection: integer keys as remapped, kept uuid/string keys as identity entries (source_id = target_id), so
#: the map says which target rows are the pair's own (mirror deletes only those).  ``state`` is ``pending``
#: (with the ``run_id`` that wrote it and the ``digest`` of the row as written) from before the target's commit;
#: the entry is committed once its run is in :data:`RUNS` (or its ``state`` is NULL: confirmed one by one, or
#: written by earlier versions).  A later run keeps a pending entry of a run never recorded committed only when
#: the target row holds what was written (:meth:`IdMap.confirm`).  ``state`` ``sent`` marks an integer-keyed row a
#: move through the target's API sent in a ``POST`` before it knew the key the target would give it
#: (:meth:`IdMap.record_sent`): ``target_id`` is empty, ``run_id`` holds the request's marker (its ``User-Agent``,
#: which CairnCMS records in the ``directus_activity`` row of each item it creates) and ``digest`` the row's place in
#: the request, ``<position>/<rows>``; the next run finds what the request created before writing again
#: (:mod:`.sink_api`).
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
#: the runs whose target transaction committed, one row each (:meth:`IdMap.commit`): their ``pending`` entries
#: are the pair's.  One row per run, where marking each entry committed was an ``UPDATE`` of every entry the run
#: wrote (0.44 s of a 12 s move of 302 000 rows) that also scanned every pair's entries, having no index on the run.
RUNS = sa.Table(
    "cm_content_id_map_runs", _META,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("target", sa.String(64), nullable=False),
    sa.Column("committed_on", sa.DateTime, nullable=False),
)


def column(db: Database, table: str, name: str) -> sa.ColumnClause[Any]:
    """``name`` of ``table`` for a condition, unattached (so it adds no table to a FROM): typed on
    PostgreSQL (whose driver casts every parameter to its column's type), untyped elsewhere (so
    SQLite's mixed timestamps and text uuids compare as stored)."""
    if db.vendor == "postgres":
        return sa.column(name, db.table(table).c[name].type)
    return sa.column(name)


def selected(db: Database, table: str, name: str) -> sa.ColumnElement[Any]:
    """``name`` of ``table`` to read: a PostgreSQL uuid as its text (lower-case, as ``str`` of a ``uuid.UUID``
    spells it, which is the key's form in a move).  The driver builds a ``uuid.UUID`` of each one and the move
    turns it back into text: 1.3 µs a value, 400 000 values at 100k articles, all under the interpreter's lock."""
    if db.vendor == "postgres" and getattr(db.table(table).c[name].type, "as_uuid", False):
        return sa.cast(sa.column(name), sa.Text).label(name)
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


class RowDigest:
    """The digest of a row of one collection as written (its written columns' comparable values), to recognise
    it on the target after a stop between the ID map's record and the target's commit (:meth:`IdMap.confirm`).

    Every written row is digested and almost none is ever compared, so the digest is built for cost: the
    ``repr`` of the tuple of the row's values (one call into C) after the sorted column names, SHA-256,
    ``"2:"`` and 62 hex digits (the map's column holds 64).  Digests stored by earlier versions (64 hex digits,
    :func:`row_digest`'s text) are still compared in their own form (:meth:`matches`).  Set up once per
    collection: the columns sorted, :func:`~cairn_migrate.bundle.values.comparable` called only for the types
    it changes."""

    def __init__(self, names: Iterable[str], kinds: Mapping[str, str], vendor: str, *, absent: type | None = None):
        from ..bundle.values import comparer

        #: values of this type are left out (a plan's placeholder for a row not created yet)
        self.absent = absent
        #: per column (sorted): its name, the text before its value (``[<escaped name>, ``), its comparer
        self.columns = [(name, f"[{_escape(name)}, ", comparer(kinds[name], vendor)) for name in sorted(set(names))]
        self._head = repr(tuple(name for name, _, _ in self.columns)).encode("utf-8")

    def __call__(self, row: Mapping[str, Any]) -> str:
        absent = self.absent  # (the placeholder type has no subclasses: ``type(v) is`` is the isinstance test)
        values = tuple([... if type(value := row[name]) is absent else value if compare is None else compare(value)
                        for name, _, compare in self.columns])  # Ellipsis: no database value reprs as it
        digest = hashlib.sha256(self._head)
        digest.update(repr(values).encode("utf-8", "surrogatepass"))
        return "2:" + digest.hexdigest()[:62]

    def v1(self, row: Mapping[str, Any]) -> str:
        """:func:`row_digest` of the row's comparable values: the form earlier versions stored."""
        absent = self.absent
        parts = [head + _escape(repr(value if compare is None else compare(value))) + "]"
                 for name, head, compare in self.columns if type(value := row[name]) is not absent]
        return hashlib.sha256(("[" + ", ".join(parts) + "]").encode("utf-8")).hexdigest()

    def matches(self, row: Mapping[str, Any], stored: str) -> bool:
        """Whether ``stored`` (either form) is the digest of ``row``."""
        return stored == (self(row) if stored.startswith("2:") else self.v1(row))


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
    parameter dictionary per entry through its compiler, which cost more than the store's own insert.  A SQLite
    store takes them as statements of many rows: its driver's ``executemany`` steps once per row and lets go of
    the interpreter's lock at each step (:meth:`~cairn_migrate.content.spill.Spill.executemany`)."""
    if not rows:
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"  # SQLite; psycopg and PyMySQL take %s
    columns = ", ".join(conn.dialect.identifier_preparer.quote(c.name) for c in ID_MAP.columns)
    row = f"({', '.join([mark] * len(ID_MAP.columns))})"
    if conn.dialect.name != "sqlite":
        conn.exec_driver_sql(f"INSERT INTO {ID_MAP.name} ({columns}) VALUES {row}", rows)
        return
    per = 999 // len(ID_MAP.columns)  # within the oldest SQLite's limit on bound values
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        conn.exec_driver_sql(f"INSERT INTO {ID_MAP.name} ({columns}) VALUES {', '.join([row] * len(chunk))}",
                             tuple(v for entry in chunk for v in entry))


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
    """The ID map of one (source, target) pair, read once from the state store into the move's
    :class:`~cairn_migrate.content.spill.Spill` (a pair's map holds a row per row ever moved: kept in memory it
    grew with every run) and looked up there a batch at a time.  The copy is the map as the run found it, with
    what :meth:`confirm` and :meth:`forget` changed; :meth:`save` writes to the state store only: a run saves
    its entries once, at its end, and never reads them back (so the copy also answers :meth:`owned_before`).

    :param scope: the pair's identities (:func:`~cairn_migrate.service.state.database_identity` of each side).
    :param spill: the move's scratch database, where the map is read from during the move.
    :param legacy: the pair as earlier versions named it (``instance_scope``, tied to the host's spelling):
        its rows are moved to ``scope`` the first time, so an upgrade keeps the map.
    """

    def __init__(self, state_url: str, scope: tuple[str, str], spill: Spill,
                 legacy: tuple[str, str] | None = None) -> None:
        from ..service.jobs import _state_engine
        from ..service.state import add_missing_column

        self.engine = _state_engine(state_url)
        create_tables(self.engine, _META)
        for name in ("state", "run_id", "digest"):
            add_missing_column(self.engine, ID_MAP, name)
        self.scope = scope
        self.spill = spill
        if legacy is not None and legacy != scope:
            self._adopt_legacy(legacy)
        #: (collection, source_id) → (request marker, position, rows in the request) of a row an earlier run sent
        #: through the target's API and never saw answered (:meth:`record_sent`): few, kept in memory, never in the
        #: spilled map (their target keys are not known)
        self.sent: dict[tuple[str, str], tuple[str, int, int]] = {}
        sent = self.sent
        #: collections the store may hold entries of for this pair (read now, or saved by this run): only their
        #: entries need looking up and replacing when saved; the others' are inserted as they are (:meth:`save`)
        self._held: set[str] = set()
        held = self._held

        def entries(rows: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
            for r in rows:
                held.add(r.collection)
                if r.state == SENT:
                    position, _, size = str(r.digest or "0/0").partition("/")
                    sent[(r.collection, r.source_id)] = (str(r.run_id), int(position or 0), int(size or 0))
                    continue
                yield (r.collection, r.source_id, r.target_id,
                       int(r.state == "pending" and r.run_id not in committed), r.digest)

        with self.engine.connect() as conn:
            committed = set(conn.execute(sa.select(RUNS.c.run_id).where(
                RUNS.c.source == scope[0], RUNS.c.target == scope[1])).scalars())
            rows = conn.execute(sa.select(ID_MAP.c.collection, ID_MAP.c.source_id, ID_MAP.c.target_id,
                                          ID_MAP.c.state, ID_MAP.c.digest, ID_MAP.c.run_id).where(
                ID_MAP.c.source == scope[0], ID_MAP.c.target == scope[1]).execution_options(yield_per=5000))
            spill.executemany(
                "INSERT INTO idmap (collection, source_id, target_id, pending, digest) VALUES (?, ?, ?, ?, ?)",
                entries(rows))
        #: entries an earlier run left pending (it stopped between its record and the target's commit)
        self.left_pending = int(spill.execute("SELECT count(*) FROM idmap WHERE pending = 1").fetchone()[0])
        self.run_id = uuid.uuid4().hex
        self._requests = 0
        #: entries :meth:`save` recorded pending in this run (what :meth:`commit` has to mark)
        self._pending_saved = 0

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
        instead of creating the rows a second time.  An entry the row had in the store (its target row is gone: it
        is created again) is replaced there; the run's scratch copy keeps the map as the run found it."""
        keys = [(collection, str(s)) for s in source_ids]
        self._held.add(collection)
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
            if target_id is not None:  # the map's from now on, as if the run had found it so
                self.spill.execute("DELETE FROM idmap WHERE collection = ? AND source_id = ?", list(key))
                self.spill.execute("INSERT INTO idmap (collection, source_id, target_id, pending, digest) "
                                   "VALUES (?, ?, ?, 0, NULL)", [key[0], key[1], str(target_id)])

    def get(self, collection: str, source_id: Any) -> str | None:
        row = self.spill.execute("SELECT target_id FROM idmap WHERE collection = ? AND source_id = ?",
                                 [collection, str(source_id)]).fetchone()
        return None if row is None else str(row[0])

    def get_many(self, collection: str, source_ids: Iterable[Any]) -> dict[str, str]:
        """``str(source_id) → target_id`` of those of ``source_ids`` the map knows (a query per 500)."""
        out: dict[str, str] = {}
        for batch in chunks({str(s) for s in source_ids}):
            out.update(self.spill.execute(
                f"SELECT source_id, target_id FROM idmap WHERE collection = ? AND source_id IN "
                f"({','.join('?' * len(batch))})", [collection, *batch]).fetchall())
        return out

    def is_pending(self, collection: str, source_id: Any) -> bool:
        return self.spill.execute("SELECT 1 FROM idmap WHERE collection = ? AND source_id = ? AND pending = 1",
                                  [collection, str(source_id)]).fetchone() is not None

    def confirm(self, collection: str, source_id: Any, matches: Callable[[str], bool] | None) -> bool:
        """Resolve a pending entry: kept (and committed) when the stored digest ``matches`` the target row (None:
        the target lacks the row), else forgotten (the write it records never committed).  Returns whether it
        is kept."""
        key = [collection, str(source_id)]
        row = self.spill.execute("SELECT pending, digest FROM idmap WHERE collection = ? AND source_id = ?",
                                 key).fetchone()
        if row is None or not row[0]:
            return row is not None
        ok = matches is not None and row[1] is not None and matches(row[1])
        with self.engine.begin() as conn:
            where = (ID_MAP.c.source == self.scope[0]) & (ID_MAP.c.target == self.scope[1]) & \
                (ID_MAP.c.collection == key[0]) & (ID_MAP.c.source_id == key[1])
            if ok:
                conn.execute(ID_MAP.update().where(where).values(state=None, run_id=None))
            else:
                conn.execute(ID_MAP.delete().where(where))
        if ok:
            self.spill.execute("UPDATE idmap SET pending = 0 WHERE collection = ? AND source_id = ?", key)
        else:
            self.spill.execute("DELETE FROM idmap WHERE collection = ? AND source_id = ?", key)
        self.left_pending -= 1
        return ok

    def owned(self, collection: str) -> Iterator[tuple[str, str]]:
        """``(source_id, target_id)`` of the rows of ``collection`` this pair's moves wrote or adopted, a page at
        a time."""
        last: list[str] = []
        while True:
            page = self.spill.execute(
                "SELECT source_id, target_id FROM idmap WHERE collection = ?"
                + (" AND source_id > ?" if last else "") + " ORDER BY source_id LIMIT ?",
                [collection, *last, CHUNK]).fetchall()
            if not page:
                return
            yield from page
            last = [page[-1][0]]

    def owned_targets(self, collection: str, targets: Iterable[Any]) -> set[Any]:
        """Which of ``targets`` (target keys of ``collection``) the map gives a source row of this pair."""
        wanted = {str(t): t for t in targets}
        found: set[Any] = set()
        for batch in chunks(wanted):
            found.update(wanted[t] for (t,) in self.spill.execute(
                f"SELECT target_id FROM idmap WHERE collection = ? AND target_id IN ({','.join('?' * len(batch))})",
                [collection, *batch]))
        return found

    def owned_before(self, collection: str, source_id: Any) -> bool:
        """Whether the map gave this pair the source row before this run."""
        return self.spill.execute("SELECT 1 FROM idmap WHERE collection = ? AND source_id = ?",
                                  [collection, str(source_id)]).fetchone() is not None

    def forget(self, entries: Iterable[tuple[str, Any]]) -> None:
        """Drop entries (rows a mirror deleted)."""
        with self.engine.begin() as conn:
            for collection, source_id in entries:
                conn.execute(ID_MAP.delete().where(
                    ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1],
                    ID_MAP.c.collection == collection, ID_MAP.c.source_id == str(source_id)))
                self.spill.execute("DELETE FROM idmap WHERE collection = ? AND source_id = ?",
                                   [collection, str(source_id)])

    def _store_file(self) -> str | None:
        """The state store's file when it is a SQLite file (the default), else None."""
        url = self.engine.url
        database = url.database or ""
        if url.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
            return None
        return str(Path(database).expanduser())

    def save(self, entries: Written | Iterable[tuple[str, Any, Any, str | None]], *, pending: bool = False) -> int:
        """Record where source rows went (``(collection, source_id, target_id, digest)``); returns how many changed.

        Streamed a batch at a time, in one state-store transaction; the walk's :class:`~.spill.Written` entries and a
        SQLite state store: in SQL, from the move's scratch database to the store (:meth:`_save_in_sql`).  ``pending``: before the target's commit,
        marked with this run's id and the rows' digests (:meth:`commit` clears the mark after the commit).

        A collection the pair's map held nothing of when the run began, and this run has not saved yet (every
        collection of a first move), has nothing to compare or replace: its entries are inserted as they are.  A
        concurrent save of the same pair would then collide with the map's key: refused, and as this is the save
        before the target's commit (``pending``), the move is rolled back; other saves always replace."""
        if isinstance(entries, Written):
            store = self._store_file()
            if store is not None:
                saved = self._save_in_sql(store, pending)
                self._pending_saved += saved if pending else 0
                return saved
            entries = entries.entries()
        total = 0
        fresh: set[str] = set()  # collections inserted without a lookup, in this call
        with self.engine.begin() as conn:
            for batch in chunks(entries):
                by_collection: dict[str, list[tuple[str, str, str | None]]] = {}
                for collection, source_id, target_id, digest in batch:
                    by_collection.setdefault(collection, []).append((str(source_id), str(target_id), digest))
                for collection, items in by_collection.items():
                    if pending and (collection in fresh or collection not in self._held):
                        fresh.add(collection)
                        self._held.add(collection)
                        changed = items
                    else:
                        self._held.add(collection)
                        known = self.get_many(collection, (s for s, _, _ in items))
                        changed = [(s, t, d) for s, t, d in items if known.get(s) != t]
                        if not changed:
                            continue
                        # one DELETE per batch: the store may hold an entry the scratch copy does not (saved
                        # earlier in this run), so what is replaced is not only what the copy knew
                        conn.execute(ID_MAP.delete().where(
                            ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1],
                            ID_MAP.c.collection == collection, ID_MAP.c.source_id.in_([s for s, _, _ in changed])))
                    state, run_id = ("pending", self.run_id) if pending else (None, None)
                    try:
                        _insert_many(conn, [(self.scope[0], self.scope[1], collection, s, t, state, run_id,
                                             d if pending else None) for s, t, d in changed])
                    except sa.exc.IntegrityError:
                        if collection not in fresh:
                            raise
                        raise MigrateError(f"Another move of the same source and target saved ID map entries of "
                                           f"{collection} while this one ran; this move was rolled back",
                                           hint="run one move of a pair at a time, then run this one again") from None
                    total += len(changed)
        self._pending_saved += total if pending else 0
        return total

    def _save_in_sql(self, store: str, pending: bool) -> int:
        """:meth:`save` of the walk's written entries into a SQLite state store, the same decisions in SQL: the
        store is attached to the scratch database and each collection's entries go over in a statement or two,
        none of them through Python (302 000 entries: 0.3 s, where reading them out and inserting them a batch of
        rows at a time took 1.2 s of the move).  Keys are stored as text, as ``str`` gives them (SQLite's
        ``CAST`` of an integer or a text is the same text)."""
        import sqlite3

        db = self.spill.db
        state, run_id = ("pending", self.run_id) if pending else (None, None)
        values = ("SELECT ?, ?, r.collection, CAST(r.source AS TEXT), CAST(r.target AS TEXT), ?, ?, "
                  "CASE WHEN ? THEN r.digest END FROM resolved r")
        insert = f"INSERT INTO store.{ID_MAP.name} ({', '.join(c.name for c in ID_MAP.columns)}) "
        head = [self.scope[0], self.scope[1], state, run_id, int(pending)]
        # the entries whose target the map, as this run found it, does not already give (those to replace)
        changed = (" LEFT JOIN idmap i ON i.collection = r.collection AND i.source_id = CAST(r.source AS TEXT) "
                   "WHERE r.written = 1 AND r.collection = ? AND i.target_id IS NOT CAST(r.target AS TEXT)")
        total = 0
        self.spill.flush()
        db.execute("ATTACH DATABASE ? AS store", [store])
        try:
            collections = [c for (c,) in db.execute("SELECT DISTINCT collection FROM resolved WHERE written = 1")]
            db.execute("BEGIN IMMEDIATE")
            try:
                for collection in collections:
                    if pending and collection not in self._held:
                        self._held.add(collection)
                        try:
                            total += db.execute(f"{insert}{values} WHERE r.written = 1 AND r.collection = ?",
                                                [*head, collection]).rowcount
                        except sqlite3.IntegrityError:
                            raise MigrateError(f"Another move of the same source and target saved ID map entries "
                                               f"of {collection} while this one ran; this move was rolled back",
                                               hint="run one move of a pair at a time, then run this one again"
                                               ) from None
                        continue
                    self._held.add(collection)
                    db.execute(f"DELETE FROM store.{ID_MAP.name} WHERE source = ? AND target = ? AND collection = ? "
                               f"AND source_id IN (SELECT CAST(r.source AS TEXT) FROM resolved r{changed})",
                               [self.scope[0], self.scope[1], collection, collection])
                    total += db.execute(f"{insert}{values}{changed}", [*head, collection]).rowcount
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.execute("DETACH DATABASE store")
        return total

    def commit(self) -> None:
        """The target committed: this run's pending entries are the pair's now (one row in :data:`RUNS`; none
        for a run that saved no pending entry, such as a scheduled sync's run that found nothing to change)."""
        import datetime

        if not self._pending_saved:
            return
        with self.engine.begin() as conn:
            conn.execute(RUNS.insert().values(run_id=self.run_id, source=self.scope[0], target=self.scope[1],
                                              committed_on=datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)))

    def discard(self) -> None:
        """The target rolled back: forget this run's pending entries."""
        with self.engine.begin() as conn:
            conn.execute(ID_MAP.delete().where(
                ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1],
                ID_MAP.c.run_id == self.run_id, ID_MAP.c.state == "pending"))
