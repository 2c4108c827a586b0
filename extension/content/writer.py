"""Walk the closure's rows collection by collection, parents first, and plan or write each one on the target.

One walk serves the plan (``write=False``: it counts) and the apply (``write=True``: the same
decisions, handed to a *sink* that writes them: :class:`~cairn_migrate.content.sink_db.DbSink`, SQL in
one target transaction the caller commits, or :class:`~cairn_migrate.content.sink_api.ApiSink`, the
target's own API); the walk is the same for both, so the plan is too.  Per collection the source rows
are read in batches of keys; each batch is finished at once, before anything else looks at it
(:class:`~cairn_migrate.content.transform.Finisher`: masking, URL rewriting, ``--transform``, in source
keys and neutral values, so the plan and the apply give it the same rows, and a row it leaves out never
gets a target key), whichever the sink.  Then each row gets its target key (kept for uuid and string
keys; for integer keys the ID map's row when the target still has it, else a new row numbered
by the target), its foreign keys rewritten (to the target keys of moved rows, to users matched
by email, else kept when the target has the row, else NULL or a refusal), and is compared with
the target's row in the target's own types (:func:`cairn_migrate.bundle.values.comparable`):
created, updated, unchanged or skipped.  Values are converted once, by the clone import's codecs
(:mod:`cairn_migrate.bundle.values`).  A file row's bytes are copied (and their size and SHA-256
checked) before its row is written (the database sink), or uploaded with it (the API sink).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..bundle.table_schema import TableDef, reflect_tables
from ..bundle.values import comparable, decoder, row_decoder
from ..errors import MigrateError
from ..instance.database import Database
from ..instance.instance import Instance
from ..instance.storage import Location, open_location
from ..progress import NullProgress, Progress
from . import keys
from .closure import BATCH, FILES, Closure, Graph, Link, USERS
from .plan import Users, empty_counts
from .spill import KeyMap, New as _New, Spill, Written, chunks
#: a closure row the walk has not given a target key yet (its collection comes later, or it is in this batch)
_UNRESOLVED = object()


def _foreign_keys(conn: sa.Connection, inspector: Any, vendor: str, table: str) -> list[dict[str, Any]]:
    """The table's foreign keys with their ``ondelete`` (SQLite's reflection leaves it out: read its pragma)."""
    if vendor != "sqlite":
        return list(inspector.get_foreign_keys(table))
    grouped: dict[int, dict[str, Any]] = {}
    quoted = table.replace('"', '""')
    for row in conn.exec_driver_sql(f'PRAGMA foreign_key_list("{quoted}")').all():
        fk = grouped.setdefault(row[0], {"constrained_columns": [], "referred_table": row[2], "referred_columns": [],
                                         "options": {"ondelete": row[6]}})
        fk["constrained_columns"].append(row[3])
        fk["referred_columns"].append(row[4])
    return list(grouped.values())


#: batches :func:`read_ahead` reads ahead of the one the walk works on
READ_AHEAD = 2


def read_ahead(read: Callable[[Any], Any], items: Iterator[Any]) -> Iterator[Any]:
    """``read(item)`` of each of ``items`` in order, the next :data:`READ_AHEAD` read in a thread, one after
    another, while the caller works on this one: the source's answers to the batches' queries (their rows'
    read, a wait on the server) overlap the walk's work on the batch before, and a batch the walk finishes
    quickly does not leave it waiting.  ``read`` owns its connection meanwhile (the walk does not use the
    source's while it writes a collection); ``items`` is advanced in the caller's thread only.  A stop waits for
    the read in flight, so the connection is never closed under it."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="cairn-migrate-read") as pool:
        pending: deque[Any] = deque()
        try:
            while True:
                # the reads of the next READ_AHEAD batches are in flight while the caller works on this one
                while len(pending) <= READ_AHEAD and (item := next(items, None)) is not None:
                    pending.append(pool.submit(read, item))
                if not pending:
                    return
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel() or future.exception()  # a read in flight ends before the connection may close


class PlanFirst(Exception):
    """A one-pass database move met a refusal or files: rolled back, it is planned first instead."""


#: how many target keys of collections the move never writes :meth:`Walk._forget_exists` keeps across batches
EXISTS_KEPT = 50000


def _batches(items: Iterable[Any], size: int = BATCH) -> Iterator[list[Any]]:
    return chunks(items, size)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int) else (1, str(value))


@dataclass
class Walk:
    """The state of one walk over the closure (plan or apply)."""

    src: Database
    dst: Database
    src_instance: Instance
    dst_instance: Instance
    graph: Graph
    closure: Closure
    users: Users
    idmap: keys.IdMap
    mode: str
    write: bool
    progress: Progress = field(default_factory=NullProgress)
    #: writes the decisions (a DbSink or an ApiSink); its ``controlled`` columns are neither compared nor written
    sink: Any = None
    #: the move's scratch database (:mod:`.spill`): what the walk knows per row lives there, not in memory
    spill: Spill | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    #: (target storage, old storage, old filename_disk, file id) of objects an updated file row stopped pointing at
    replaced: list[tuple[str, Any, Any, str]] = field(default_factory=list)
    #: collection → target keys of rows a mirror deletes that a database cascade takes with them
    cascaded: dict[str, list[Any]] = field(default_factory=dict)
    nulled: dict[str, int] = field(default_factory=dict)
    #: collection → field → how many rows to update (or skipped by skip-existing) differ from the target's in it
    changed_fields: dict[str, dict[str, int]] = field(default_factory=dict)
    #: integer-keyed rows matched to an existing target row (a unique column, or a junction row's pair), per collection
    adopted: dict[str, int] = field(default_factory=dict)
    refused: list[dict[str, str]] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=lambda: {"copy": 0, "bytes": 0, "storage": {}})
    #: source keys of rows created in the collection being walked whose write may still be in flight
    _in_flight: set[Any] = field(default_factory=set)
    _exists: dict[tuple[str, Any], bool] = field(default_factory=dict)
    #: referenced collection → the batch's references the closure carries → their target key (or _UNRESOLVED)
    _moved: dict[str, dict[Any, Any]] = field(default_factory=dict)
    #: (referenced collection, str(source key)) → the ID map's target key (None: unknown), for the batch at hand
    _mapped: dict[tuple[str, str], Any] = field(default_factory=dict)
    _defs: dict[tuple[str, str], TableDef] = field(default_factory=dict)
    _locations: dict[tuple[str, str], Location] = field(default_factory=dict)
    # --- value transforms (content/transform.py) --------------------------------------------------------
    #: masking, URL rewriting, --transform: finishes each batch of source rows before anything else (both sinks)
    finisher: Any = None
    #: storage name → where the source's bytes are read (a bundle's members); None: the source's own locations
    source_files: Callable[[str], Any] | None = None
    #: storage name → where the target's stored bytes are read (a target given by URL: its ``/assets``); None: its
    #: own locations
    target_files: Callable[[str], Any] | None = None

    # ------------------------------------------------------------------ helpers
    def __post_init__(self) -> None:
        assert self.spill is not None
        #: collection → source key → target key (a :class:`_New` in a plan), on disk
        self._resolved: dict[str, KeyMap] = {}
        #: (collection, source key) → target key of every row the move wrote or adopted (integer keys remapped, kept
        #: keys as identity entries) and the digest of the row as the target holds it after this run
        #: (keys.row_digest): saved to the ID map as pending before the commit and confirmed after it
        self.written = Written(self.spill)
        self.gone: list[tuple[str, str]] = []
        #: the target's tables, read before the first write (:meth:`reflect_targets`)
        self._dst_tables: list[str] | None = None
        #: whether the closure follows the roots' one-to-many children (a depth of at least 1)
        self.children_followed = True
        #: writing without a plan first (the database path): a refusal stops the walk (PlanFirst)
        self.one_pass = False
        #: collection → whether the target held no rows of it before the walk wrote anything (:meth:`note_empty`)
        self._empty: dict[str, bool] = {}

    def resolved(self, name: str) -> KeyMap:
        """Source key → target key of the rows of ``name`` the walk has settled (a :class:`_New` in a plan).

        A row's target key is what every later reference to it is rewritten to, so it is kept for the whole
        walk; for a move of many rows that is the largest thing the walk knows, hence on disk (:mod:`.spill`),
        and for a collection the carried rows reference also in memory, within the spill's bound: every batch
        of its children looks its keys up again."""
        if name not in self._resolved:
            referenced = {one for link in self.graph.links if link.many in self.closure.rows
                          for one in ((link.one,) if link.one else link.allowed)}
            self._resolved[name] = self.spill.keymap(name, remember=name in referenced)  # type: ignore[union-attr]
        return self._resolved[name]

    def reflect_targets(self, names: Iterable[str]) -> None:
        """Read the target's definitions now, before the first write: the walked collections ``names`` and every
        collection a reference may name.  Reflection uses connections of its own, and on SQLite a write
        transaction that outgrows its page cache locks the whole file: a table first reflected after a few MB
        of writes waited the busy timeout and failed the move ("database is locked")."""
        self._dst_tables = self.dst.table_names()
        held = set(self._dst_tables)
        for name in names:
            self._def(self.dst, "dst", name)
        for name in self.graph.keys:
            if name in held:
                self.dst.table(name)

    def note_empty(self, conn: sa.Connection, names: Iterable[str]) -> None:
        """Which of the walked collections ``names`` the target holds no rows of, asked once before the first write
        of a database move, so no collection's walk starts with a statement on the target's connection (which
        would first end the ``COPY`` still loading the previous collection, :mod:`.sink_db`).  A collection is
        only written in its own walk, so the answer holds until then; ``directus_users`` (``--create-users``
        writes it earlier) and the API path (the target's own hooks and flows may write anywhere) ask when
        their walk starts."""
        if self.sink is None or self.sink.via != "db":
            return
        for name in names:
            if name != USERS:
                self._empty[name] = self._target_empty(conn, name)

    @staticmethod
    def _target_empty(conn: sa.Connection, name: str) -> bool:
        return conn.execute(sa.select(sa.literal(1)).select_from(sa.table(name)).limit(1)).first() is None

    def _def(self, db: Database, side: str, name: str) -> TableDef:
        if (side, name) not in self._defs:
            self._defs[(side, name)] = reflect_tables(db.engine, [name], db.vendor)[0]
        return self._defs[(side, name)]

    def refuse(self, message: str, fix: str) -> None:
        if self.write and self.one_pass:
            raise PlanFirst(message)  # nothing committed: the move is planned first, and refused there
        if not any(r["message"] == message for r in self.refused):
            self.refused.append({"message": message, "fix": fix})

    def _target_exists(self, conn: sa.Connection, collection: str, candidates: Iterable[Any]) -> None:
        """Cache whether the target has rows with these keys (of ``collection``)."""
        pk = self.graph.keys[collection]
        todo = sorted({c for c in candidates if (collection, c) not in self._exists}, key=_sort_key)
        for batch in _batches(todo):
            found = {self.graph.key(collection, v) for v in conn.execute(
                sa.select(sa.column(pk)).select_from(sa.table(collection)).where(
                    keys.in_(self.dst, collection, pk, batch))).scalars()}
            for c in batch:
                self._exists[(collection, c)] = c in found

    def _forget_exists(self) -> None:
        """What the target holds is known for one batch (it grows with the rows the walk writes), except for the
        collections this move never writes (the languages its translations name): kept across batches, up to
        :data:`EXISTS_KEPT` keys, so their lookups (each a statement that ends an open ``COPY`` first) are not
        repeated batch after batch.  The database path only: through the API the target's own flows may write
        anywhere while the move runs."""
        carried = self.closure.rows
        if len(self._exists) > EXISTS_KEPT or self.sink is None or self.sink.via != "db":
            self._exists.clear()
        elif self._exists:
            self._exists = {k: v for k, v in self._exists.items() if k[0] not in carried and k[0] != USERS}

    # ------------------------------------------------------------------ references
    def _outside_target(self, one: str, value: Any) -> Any:
        """The target key of a row the move does not carry (beyond the depth), or None when the target lacks it."""
        if one in self.graph.integer:
            mapped = self._mapped.get((one, str(value))) if (one, str(value)) in self._mapped else \
                self.idmap.get(one, value)
            if mapped is None:
                return None
            mapped = int(mapped)
            return mapped if self._exists.get((one, mapped)) else None
        return value if self._exists.get((one, value)) else None

    def _prefetch(self, conn: sa.Connection, collection: str, links: list[Link], rows: list[dict[str, Any]]) -> None:
        """What the batch's references need, looked up once per batch (the closure, the walk's target keys and
        the ID map are on disk: a query per reference would cost more than the rest of the walk): which
        references the closure carries and their target keys (``_moved``), and for the others whether the target
        has the row (``_exists``, through the ID map for integer keys)."""
        refs: dict[str, set[Any]] = {}
        for link in links:
            for row in rows:
                one, ref = self._reference(link, row)
                if one is not None and ref is not None and one != USERS:
                    refs.setdefault(one, set()).add(ref)
        self._moved, self._mapped = {}, {}
        wanted: dict[str, set[Any]] = {}
        for one, found in refs.items():
            # a settled row is a carried one: the closure is asked only about the rest (not walked yet, or not moved)
            moved = self.closure.rows.get(one)
            targets = self.resolved(one).get_many(found) if moved is not None else {}
            rest = found - targets.keys()
            carried = targets.keys() | (moved.having(rest) if rest and moved is not None else set())
            self._moved[one] = {ref: targets.get(ref, _UNRESOLVED) for ref in carried}
            outside = found if one == collection else found - carried  # self-references: see _rewrite
            if one in self.graph.integer:
                mapped = self.idmap.get_many(one, outside)
                self._mapped.update({(one, str(ref)): mapped.get(str(ref)) for ref in outside})
                wanted[one] = {int(m) for m in mapped.values()}
            else:
                wanted[one] = outside
        for one, candidates in wanted.items():
            if candidates:
                self._target_exists(conn, one, candidates)

    def _reference(self, link: Link, row: Mapping[str, Any]) -> tuple[str | None, Any]:
        """``(collection, key)`` the link's column of ``row`` names (None when empty or unknown)."""
        value = row.get(link.field)
        if value is None:
            return None, None
        one = link.one
        if link.m2a:
            one = row.get(link.collection_field or "")
            if one not in link.allowed:
                return None, None
        if one == USERS:
            return USERS, str(value).lower()
        if one not in self.graph.keys:
            return None, None
        try:
            return one, self.graph.key(one, value)
        except (TypeError, ValueError):
            return None, None

    def _rewrite(self, collection: str, link: Link, row: dict[str, Any], nullable: bool,
                 deferred: list[tuple[Any, str, Any]], source_key: Any) -> None:
        one, ref = self._reference(link, row)
        if one is None:
            return
        moved = self._moved.get(one, {})
        if one == USERS:
            target = self.users.target(ref)
        elif ref in moved:
            if one == collection and (moved[ref] is _UNRESOLVED or ref in self._in_flight):
                target = self._outside_target(one, ref)  # a row of this collection the target already has
                if target is None:
                    deferred.append((source_key, link.field, ref))  # a new row not written yet: set after the rows
                    row[link.field] = None
                    return
            elif moved[ref] is _UNRESOLVED:
                raise KeyError(ref)  # a carried row of a collection not walked yet (a cycle: see plan.order)
            else:
                target = moved[ref]
        else:
            target = self._outside_target(one, ref)
        if target is None:
            where = f"{collection}.{link.field}"
            if not nullable:
                what = "user" if one == USERS else f"{one} row"
                self.refuse(f"{where} is required and names {what} {ref}, which the target lacks",
                             "raise --depth so the move carries it" if one != USERS else
                             f"create a user with that email on the target first")
            self.nulled[where] = self.nulled.get(where, 0) + 1
        row[link.field] = target
        if link.m2a and target is not None and not isinstance(target, _New):
            row[link.field] = str(target)

    # ------------------------------------------------------------------ files
    def _location(self, instance: Instance, side: str, name: str) -> Location:
        if side == "src" and self.source_files is not None:  # transform.py: a bundle as the source
            return self.source_files(name)  # type: ignore[no-any-return]
        if side == "dst" and self.target_files is not None:  # api_source.py: a target given by URL
            return self.target_files(name)  # type: ignore[no-any-return]
        if (side, name) not in self._locations:
            self._locations[(side, name)] = open_location(instance.location(name))
        return self._locations[(side, name)]

    def _target_storage(self, storage: str) -> str:
        names = [loc.name for loc in self.dst_instance.locations]
        if not names:
            raise MigrateError("The target configures no storage location, so it cannot hold the moved files",
                               hint="set STORAGE_LOCATIONS in the target's .env")
        target = storage if storage in names else names[0]
        self.files["storage"][storage] = target
        return target

    def _bytes(self, row: dict[str, Any], name: Any, source_storage: str, current: Mapping[str, Any] | None,
               changed: bool) -> bool:
        """Decide and hand over a file's bytes, for a row being created or updated (the caller decided that).

        Copied when the target lacks them, holds another size, or the source's file row changed (any column:
        same-size new bytes are seen by ``modified_on``).  The database sink never overwrites an object a
        target row points at before the commit: an updated row's bytes (and a new row's whose name is taken)
        go under a fresh ``filename_disk`` that the row is pointed at in the same transaction.  Returns
        whether bytes are copied."""
        if not name:
            return False
        src = self._location(self.src_instance, "src", source_storage)
        dst = self._location(self.dst_instance, "dst", row["storage"])
        size = src.size(name)
        if size is None:
            self.refuse(f"directus_files {row['id']}: its bytes {source_storage}:{name} are missing on the source",
                         "cairn-migrate files check / files repair on the source first")
            return False
        # The API names the object itself (``<id><ext>``): look for the bytes where the target's row says they are.
        target_name = name if current is None else current.get("filename_disk")
        held = dst.size(target_name) if target_name else None
        if held == size and not changed:
            return False
        if self.sink.keeps_filename and (current is not None or held is not None):
            stem, dot, ext = str(name).rpartition(".")
            fresh = f"{stem}.{self.idmap.run_id[:12]}.{ext}" if dot and "/" not in ext else f"{name}.{self.idmap.run_id[:12]}"
            if current is not None:
                self.replaced.append((row["storage"], current.get("storage"), current.get("filename_disk"), str(row["id"])))
            row["filename_disk"] = target_name = fresh
        self.files["copy"] += 1
        self.files["bytes"] += size
        if self.write:
            self.sink.file_bytes(row, current is not None, src, name, dst, target_name or name, size)
            self.progress.advance(bytes=size)
        return True

    # ------------------------------------------------------------------ one collection
    def collection(self, name: str, src_conn: sa.Connection, dst_conn: sa.Connection) -> None:
        """Plan or write the moved rows of ``name`` (its parents are done)."""
        src_def, dst_def = self._def(self.src, "src", name), self._def(self.dst, "dst", name)
        pk = self.graph.keys[name]
        integer = name in self.graph.integer
        source_columns = {c.name: c for c in src_def.columns}
        columns = [c for c in dst_def.columns if c.name in source_columns]
        names = [c.name for c in columns]
        controlled = self.sink.controlled(name) - {pk}
        written = [n for n in names if n not in controlled]
        decode_row = row_decoder(names, [source_columns[n].type for n in names])
        decode_dst = {c.name: decoder(c.type) for c in columns}
        kinds = {c.name: c.type for c in columns}
        digest = self._digester(pk, kinds, written)
        nullable = {c.name: c.nullable for c in columns}
        links = [link for link in self.graph.outgoing(name) if link.field in names]
        counts = self.counts.setdefault(name, empty_counts())
        resolved = self.resolved(name)
        deferred: list[tuple[Any, str, Any]] = []
        self._in_flight = set()
        # A collection the target holds no rows of (looked at once, before its first batch): every row is
        # created, so none of the per-batch lookups of target rows (existence, adoption, unique holders,
        # current values) can find anything but rows this run created, which are never matched again.
        empty = self._empty.pop(name) if name in self._empty else self._target_empty(dst_conn, name)
        total = len(self.closure.rows[name]) if name in self.closure.rows else 0  # a count on the spill: once
        if self.write:
            self.sink.prepare(name, dst_def, names, rows=total if empty else 0)
        self.progress.log(f"content {name} ({'writing' if self.write else 'planning'}): {total} rows")
        def read(batch: list[Any]) -> list[Any]:
            query = sa.select(*[keys.selected(self.src, name, n) for n in names]).select_from(sa.table(name)).where(
                keys.in_(self.src, name, pk, batch))
            return src_conn.execute(query).all()  # one fetch: not a call per row

        batches = self.closure.rows[name].batches(BATCH) if name in self.closure.rows else iter(())
        for raws in read_ahead(read, batches):
            rows = [decode_row(raw) for raw in raws]
            self._forget_exists()
            if self.finisher is not None and self.finisher.active:  # the one value step: mask, URLs, --transform
                rows = self._finish(name, pk, {n: source_columns[n].type for n in names}, rows)
            # target keys
            self._settle_pending(dst_conn, name, pk, names, decode_dst, kinds, written, rows, empty)
            if empty:
                target_keys = {self.graph.key(name, r[pk]): None for r in rows}
            elif integer:
                known = self.idmap.get_many(name, (r[pk] for r in rows))
                mapped = {self.graph.key(name, r[pk]): known.get(str(r[pk])) for r in rows}
                self._target_exists(dst_conn, name, [int(v) for v in mapped.values() if v is not None])
                target_keys = {k: (int(v) if v is not None and self._exists.get((name, int(v))) else None)
                               for k, v in mapped.items()}
                self._adopt(dst_conn, name, pk, dst_def, rows, target_keys)
            else:
                self._target_exists(dst_conn, name, [self.graph.key(name, r[pk]) for r in rows])
                target_keys = {k: (k if self._exists.get((name, k)) else None)
                               for k in (self.graph.key(name, r[pk]) for r in rows)}
                self._unique_conflicts(dst_conn, name, pk, dst_def, rows, target_keys)
            existing_rows = {} if empty else self._target_rows(dst_conn, name, pk, names, decode_dst,
                                                               [v for v in target_keys.values() if v is not None])
            self._prefetch(dst_conn, name, links, rows)
            storages = {}
            for row in rows:
                source_key = self.graph.key(name, row[pk])
                if name == FILES:
                    storages[source_key] = row.get("storage")
                    row["storage"] = self._target_storage(str(storages[source_key]))
                for link in links:
                    self._rewrite(name, link, row, nullable[link.field], deferred, source_key)
            if integer and not empty:
                self._adopt_junction_rows(dst_conn, name, pk, rows, target_keys)
                self._adopt_equal(dst_conn, name, pk, names, decode_dst, kinds, written, rows, target_keys)
                existing_rows.update(self._target_rows(dst_conn, name, pk, names, decode_dst, [
                    v for v in target_keys.values() if v is not None and v not in existing_rows]))
            created: list[tuple[Any, dict[str, Any]]] = []
            settled: list[tuple[Any, Any]] = []  # this batch's target keys, to resolved and the ID map's entries
            planned: list[tuple[Any, Any]] = []  # rows the plan would create (_New)
            digests: list[tuple[Any, str]] = []
            for row in rows:
                source_key = self.graph.key(name, row[pk])
                target_key = target_keys[source_key]
                current = existing_rows[target_key] if target_key is not None else None
                source_disk = row.get("filename_disk") if name == FILES else None
                if name == FILES and current is not None and "filename_disk" in written:
                    row["filename_disk"] = current["filename_disk"]  # the target's object name (maybe a fresh one)
                changed = [] if current is None else \
                    [n for n in written if n != pk and not self._same(row[n], current[n], kinds[n])]
                if name == FILES and not self.refused and (current is None or self.mode != "skip-existing"):
                    # bytes only for a row being created or updated (decided first): W4, D3
                    if self._bytes(row, source_disk, str(storages.get(source_key)), current, bool(changed)) \
                            and current is not None and "filename_disk" in written and "filename_disk" not in changed \
                            and not self._same(row["filename_disk"], current["filename_disk"], kinds["filename_disk"]):
                        changed.append("filename_disk")  # the fresh object the row now points at
                if current is None:
                    counts["created"] += 1
                    if not self.write:
                        planned.append((source_key, _New(source_key)))
                    else:
                        created.append((source_key, {n: row[n] for n in written}))
                        digests.append((source_key, digest(row)))
                    continue
                settled.append((source_key, target_key))
                if changed:  # which fields differ: the plan says why a row is updated (or skipped)
                    fields = self.changed_fields.setdefault(name, {})
                    for n in changed:
                        fields[n] = fields.get(n, 0) + 1
                if not changed:
                    counts["unchanged"] += 1
                elif self.mode == "skip-existing":
                    counts["skipped"] += 1
                else:
                    counts["updated"] += 1
                    if self.write:
                        self.sink.update(name, pk, target_key, {n: row[n] for n in changed})
                skipped = bool(changed) and self.mode == "skip-existing"  # the target keeps its row as it is
                after = {n: (row[n] if n in changed and not skipped else current[n]) for n in written}
                digests.append((source_key, digest(after)))
            digest_of = dict(digests)
            resolved.set_many(planned)
            resolved.record((s, t, digest_of.get(s)) for s, t in settled)  # settled, and for the ID map
            if created:
                self._create(name, pk, integer, created, digest_of)
            self.progress.advance(items=len(rows))
            self.progress.check_cancelled()
        if self.write and self.sink.concurrent:
            self.sink.flush()  # every row of the collection has its target key now (the database sink: already)
        self._in_flight = set()
        for chunk in _batches(deferred):  # self-references, now that every row of the collection has its key
            known = resolved.get_many({k for source_key, _, ref in chunk for k in (source_key, ref)})
            for source_key, column, ref in chunk:
                target = known.get(ref)
                if self.write and target is not None:
                    self.sink.set_later(name, pk, known[source_key], column, target)
        if self.write and deferred:
            self.sink.flush()

    def _create(self, name: str, pk: str, integer: bool, created: list[tuple[Any, dict[str, Any]]],
                digests: Mapping[Any, str]) -> None:
        """Hand new rows to the sink; their target keys are recorded when it reports them (at once for SQL,
        when the request returns for the API)."""
        sources = [source_key for source_key, _ in created]
        resolved = self.resolved(name)

        def done(made: list[Any], offset: int = 0) -> None:
            # settled and recorded for the ID map in one write; kept keys too (identity entries)
            resolved.record((s, t, digests.get(s)) for s, t in zip(sources[offset:], made))

        if not integer and self.sink.concurrent:  # kept keys are known now; the rows may still be in flight
            resolved.set_many((source_key, source_key) for source_key in sources)
        if self.sink.concurrent:
            self._in_flight.update(sources)
        self.sink.create(name, pk, integer, [row for _, row in created], done)

    # ------------------------------------------------------------------ value transforms (transform.py)
    def _finish(self, name: str, pk: str, kinds: Mapping[str, str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The batch through the finisher; a row it drops leaves the closure (references to it: as to a row not moved)."""
        kept = self.finisher.rows(name, pk, kinds, rows)
        dropped = {self.graph.key(name, r[pk]) for r in rows} - {self.graph.key(name, r[pk]) for r in kept}
        if dropped:
            self.closure.rows[name].discard(dropped)
            self.counts.setdefault(name, empty_counts())["skipped"] += len(dropped)
        return kept

    def file_target(self, source_id: str) -> str | None:
        """The target id of a moved file (its source id while planning a new one); None: the move does not carry it."""
        target = self.resolved(FILES).get(source_id)
        if target is None:
            return None
        return str(target.source if isinstance(target, _New) else target)

    def _adopt(self, conn: sa.Connection, name: str, pk: str, dst_def: TableDef, rows: list[dict[str, Any]],
               target_keys: dict[Any, Any]) -> None:
        """Integer-keyed rows the ID map does not know take the target row holding the same value of a unique
        column (``authors.email``), so the move neither duplicates it nor breaks the unique index."""
        taken = {v for v in target_keys.values() if v is not None}
        for index in dst_def.indexes:
            if not index.unique or len(index.columns) != 1 or index.columns[0] == pk:
                continue
            column = index.columns[0]
            pending = {row[column]: self.graph.key(name, row[pk]) for row in rows
                       if target_keys[self.graph.key(name, row[pk])] is None and row.get(column) is not None}
            for batch in _batches(sorted(pending, key=_sort_key)):
                query = sa.select(sa.column(pk), sa.column(column)).select_from(sa.table(name)).where(
                    keys.in_(self.dst, name, column, batch))
                holders = conn.execute(query).all()
                taken |= self._claimed(name, (int(t) for t, _ in holders))
                for target_key, found in holders:
                    source_key = pending.get(found)
                    target_key = int(target_key)
                    if source_key is not None and target_key not in taken and target_keys[source_key] is None:
                        target_keys[source_key] = target_key
                        taken.add(target_key)
                        self._exists[(name, target_key)] = True
                        self.adopted[name] = self.adopted.get(name, 0) + 1

    def _claimed(self, name: str, targets: Iterable[Any]) -> set[Any]:
        """Which of ``targets`` this run already gave a source row of ``name`` (created, adopted or matched): never
        adopted again, so two equal source rows in different batches stay two target rows."""
        return self.resolved(name).targets_having(targets)

    def _digester(self, pk: str, kinds: Mapping[str, Any], written: Iterable[str]) -> keys.RowDigest:
        """The digest of a row as the target holds it (its written columns but the key, comparable forms)."""
        return keys.RowDigest([n for n in written if n != pk], kinds, self.dst.vendor, absent=_New)

    def _settle_pending(self, conn: sa.Connection, name: str, pk: str, names: list[str],
                        decode: Mapping[str, Callable[[Any], Any]], kinds: Mapping[str, Any], written: list[str],
                        rows: list[dict[str, Any]], empty: bool = False) -> None:
        """ID map entries an earlier run left pending (it stopped between its own record and the target's
        commit): kept when the target row holds what that run wrote, else forgotten (it never committed).
        ``empty``: the target holds no row of ``name``, so every pending entry of it is forgotten unread."""
        if not self.idmap.left_pending:
            return  # the usual case: nothing left pending by an earlier run
        todo = {self.graph.key(name, r[pk]): self.idmap.get(name, r[pk]) for r in rows
                if self.idmap.is_pending(name, r[pk])}
        if not todo:
            return
        found = {} if empty else self._target_rows(conn, name, pk, names, decode,
                                                   [int(t) if name in self.graph.integer else self.graph.key(name, t)
                                                    for t in todo.values() if t is not None])
        digester = self._digester(pk, kinds, written)
        for source_key, target in todo.items():
            key = int(target) if name in self.graph.integer else self.graph.key(name, target)
            current = found.get(key)
            matches = (lambda stored, row=current: digester.matches(row, stored)) if current is not None else None
            self.idmap.confirm(name, source_key, matches)  # forgotten: its target row is no longer the pair's

    def _adopt_equal(self, conn: sa.Connection, name: str, pk: str, names: list[str],
                     decode: Mapping[str, Callable[[Any], Any]], kinds: Mapping[str, Any], written: list[str],
                     rows: list[dict[str, Any]], target_keys: dict[Any, Any]) -> None:
        """Integer-keyed rows nothing else matched take a target row whose every other column equals theirs
        (after their foreign keys were rewritten): a cloned target's comments are not duplicated by the first
        merge.  Target rows the ID map gives another source row are never taken."""
        pending = [r for r in rows if target_keys[self.graph.key(name, r[pk])] is None]
        others = [n for n in written if n != pk]
        if not pending or not others:
            return
        eligible = [n for n in others if all(isinstance(r.get(n), (str, int)) and not isinstance(r.get(n), bool)
                                             for r in pending)]
        if not eligible:
            return
        # the most selective column narrows the target's candidates (a comment's article, not its author's name)
        probe = max(eligible, key=lambda n: (len({r[n] for r in pending}), -eligible.index(n)))
        candidates: dict[Any, dict[str, Any]] = {}
        for batch in _batches(sorted({r[probe] for r in pending}, key=_sort_key)):
            query = sa.select(*[sa.column(n) for n in names]).select_from(sa.table(name)).where(
                keys.in_(self.dst, name, probe, batch))
            for raw in conn.execute(query).mappings():
                candidates[int(raw[pk])] = {n: decode[n](raw[n]) for n in names}
        if not candidates:
            return
        taken = {v for v in target_keys.values() if v is not None} | self.idmap.owned_targets(name, candidates) | \
            self._claimed(name, candidates)
        vendor = self.dst.vendor

        def signature(values: Mapping[str, Any]) -> Any:
            """Every other column in comparable form: equal signatures are equal rows (None: not hashable)."""
            try:
                out = tuple(comparable(values[n], kinds[n], vendor) for n in others)
                hash(out)
                return out
            except TypeError:
                return None

        by_signature: dict[Any, list[Any]] = {}
        unhashable: list[Any] = []
        for target_key in sorted(candidates):
            sig = signature(candidates[target_key])
            (unhashable if sig is None else by_signature.setdefault(sig, [])).append(target_key)
        for row in pending:
            if any(isinstance(row[n], _New) for n in others):
                continue  # a row pointing at a row not yet created matches no target row
            source_key = self.graph.key(name, row[pk])
            sig = signature(row)
            pool = sorted(by_signature.get(sig, []) + unhashable) if sig is not None else sorted(candidates)
            for target_key in pool:
                if target_key in taken:
                    continue
                if all(self._same(row[n], candidates[target_key][n], kinds[n]) for n in others):
                    target_keys[source_key] = target_key
                    taken.add(target_key)
                    self._exists[(name, target_key)] = True
                    self.adopted[name] = self.adopted.get(name, 0) + 1
                    break

    def _adopt_junction_rows(self, conn: sa.Connection, name: str, pk: str, rows: list[dict[str, Any]],
                             target_keys: dict[Any, Any]) -> None:
        """New junction rows (m2m, translations, m2a) take the target's row linking the same two rows,
        so a target that already has the link (a clone, an earlier import) keeps one row per link."""
        pairs = {(link.field, link.junction) for link in self.graph.outgoing(name) if link.junction}
        taken = {v for v in target_keys.values() if v is not None}
        for first, second in sorted(pairs):
            wanted: dict[tuple[str, str], Any] = {}
            for row in rows:
                a, b = row.get(first), row.get(second)
                key = self.graph.key(name, row[pk])
                if target_keys[key] is None and a is not None and b is not None and not isinstance(a, _New) \
                        and not isinstance(b, _New):
                    wanted.setdefault((str(a).lower(), str(b).lower()), key)
            if not wanted:
                continue
            firsts = sorted({a for a, _ in wanted})
            for batch in _batches(firsts):
                query = sa.select(sa.column(pk), sa.column(first), sa.column(second)).select_from(sa.table(name)).where(
                    keys.in_(self.dst, name, first, batch))
                links = conn.execute(query).all()
                taken |= self._claimed(name, (int(t) for t, _, _ in links))
                for target_key, a, b in links:
                    source_key = wanted.get((str(a).lower(), str(b).lower()))
                    target_key = int(target_key)
                    if source_key is not None and target_keys[source_key] is None and target_key not in taken:
                        target_keys[source_key] = target_key
                        taken.add(target_key)
                        self._exists[(name, target_key)] = True
                        self.adopted[name] = self.adopted.get(name, 0) + 1

    def _unique_conflicts(self, conn: sa.Connection, name: str, pk: str, dst_def: TableDef,
                          rows: list[dict[str, Any]], target_keys: Mapping[Any, Any]) -> None:
        """Refuse rows (kept keys) whose unique column value another target row already holds."""
        for index in dst_def.indexes:
            if not index.unique or len(index.columns) != 1 or index.columns[0] == pk:
                continue
            column = index.columns[0]
            ours = {row[column]: self.graph.key(name, row[pk]) for row in rows if row.get(column) is not None}
            for batch in _batches(sorted(ours, key=_sort_key)):
                query = sa.select(sa.column(pk), sa.column(column)).select_from(sa.table(name)).where(
                    keys.in_(self.dst, name, column, batch))
                for holder, found in conn.execute(query).all():
                    source_key = ours.get(found)
                    if source_key is not None and self.graph.key(name, holder) != target_keys.get(source_key, source_key):
                        self.refuse(f"{name} {source_key}: its {column} {found!r} is held by another target row "
                                     f"({self.graph.key(name, holder)})",
                                     f"change or remove that {name} row on one side, or leave it out with --filter")

    def _same(self, ours: Any, theirs: Any, kind: str) -> bool:
        if isinstance(ours, _New):
            return False
        return comparable(ours, kind, self.dst.vendor) == comparable(theirs, kind, self.dst.vendor)

    def _target_rows(self, conn: sa.Connection, name: str, pk: str, names: list[str],
                     decode: Mapping[str, Callable[[Any], Any]], target_keys: list[Any]) -> dict[Any, dict[str, Any]]:
        if not target_keys:
            return {}
        query = sa.select(*[sa.column(n) for n in names]).select_from(sa.table(name)).where(
            keys.in_(self.dst, name, pk, target_keys))
        out = {}
        for raw in conn.execute(query).mappings():
            out[self.graph.key(name, raw[pk])] = {n: decode[n](raw[n]) for n in names}
        return out

    # ------------------------------------------------------------------ mirror
    def _source_has(self, conn: sa.Connection, name: str, source_ids: list[str]) -> set[str]:
        """Which of ``source_ids`` (ID map text) the source still holds."""
        pk = self.graph.keys[name]
        have: set[str] = set()
        for batch in _batches(sorted(source_ids)):
            values = [self.graph.key(name, v) for v in batch]
            found = {str(self.graph.key(name, v)) for v in conn.execute(sa.select(sa.column(pk)).select_from(
                sa.table(name)).where(keys.in_(self.src, name, pk, values))).scalars()}
            have |= {v for v in batch if str(self.graph.key(name, v)) in found}
        return have

    def deletions(self, conn: sa.Connection, roots: Mapping[str, Callable[[Database], sa.ColumnElement[bool]]],
                  src_conn: sa.Connection) -> dict[str, list[Any]]:
        """The target rows a mirror deletes: only rows this pair's moves wrote or adopted (the ID map), never a
        row created on the target.  A root's row goes when its source row is gone or no longer matches the
        filter (it was not carried by this run); a one-to-many child's row (comments, junction rows,
        translations) when it points at a moved root and its source row is no longer carried.  Rows a database
        cascade would take with them are counted too (``cascaded``); a cascade reaching a row the ID map does
        not own is refused."""
        doomed: dict[str, list[Any]] = {}
        self.gone: list[tuple[str, str]] = []
        roots_done: list[str] = []
        for root, condition in roots.items():
            owned = self._not_carried(root)
            # a source row that still exists but left the filter: only when its target row is in the mirror's
            # scope (matches the filter there too), so rows moved by another filter are not swept up
            still = self._source_has(src_conn, root, list(owned))
            targets = self._owned_targets(conn, root, {s: t for s, t in owned.items() if s not in still})
            targets |= self._owned_targets(conn, root, {s: t for s, t in owned.items() if s in still},
                                           where=condition(self.dst))
            doomed[root] = sorted(targets, key=_sort_key)
            self.gone += [(root, s) for s, t in owned.items() if self._target_key(root, t) in targets]
            roots_done.append(root)  # a deleted root's children: as the target's foreign keys say (cascades counted)
        for root in roots_done:
            parents = self.resolved(root)  # the roots this run kept: target keys it settled
            for link in self.graph.incoming(root):
                child = link.many
                if child not in self.graph.keys or not self.children_followed or link.m2a or not parents:
                    continue
                owned = self._not_carried(child)
                targets = self._owned_targets(conn, child, owned, link.field, parents)
                if not targets:
                    continue
                already = set(doomed.get(child, ()))
                doomed[child] = sorted(already | targets, key=_sort_key)
                self.gone += [(child, s) for s, t in owned.items() if self._target_key(child, t) in targets]
        self.cascaded = self._cascades(conn, {n: rows for n, rows in doomed.items() if rows})
        for name, rows in doomed.items():
            self.counts.setdefault(name, empty_counts())["deleted"] = len(rows)
        return {name: rows for name, rows in doomed.items() if rows}

    def _not_carried(self, name: str) -> dict[str, str]:
        """``source_id → target_id`` of the ID map's rows of ``name`` this run did not carry (mirror's candidates),
        the map read a page at a time against the walk's settled keys."""
        out: dict[str, str] = {}
        resolved = self.resolved(name)
        for page in _batches(self.idmap.owned(name)):
            carried = resolved.get_many(self.graph.key(name, s) for s, _ in page)
            out.update((s, t) for s, t in page if self.graph.key(name, s) not in carried)
        return out

    def _target_key(self, name: str, value: Any) -> Any:
        return int(value) if name in self.graph.integer else self.graph.key(name, value)

    def _owned_targets(self, conn: sa.Connection, name: str, owned: Mapping[str, str], field: str | None = None,
                       parents: KeyMap | None = None, where: sa.ColumnElement[bool] | None = None) -> set[Any]:
        """Which of ``owned``'s target rows the target still has (with ``field``, pointing at a row ``parents``
        settled; with ``where``, matching it)."""
        pk = self.graph.keys[name]
        wanted = sorted({self._target_key(name, t) for t in owned.values()}, key=_sort_key)
        found: set[Any] = set()
        columns = [sa.column(pk)] + ([sa.column(field)] if field else [])
        for batch in _batches(wanted):
            condition = keys.in_(self.dst, name, pk, batch)
            if where is not None:
                condition = sa.and_(condition, where)
            held = conn.execute(sa.select(*columns).select_from(sa.table(name)).where(condition)).all()
            if field is None:
                found.update(self.graph.key(name, raw[0]) for raw in held)
                continue
            one = next((link.one for link in self.graph.outgoing(name) if link.field == field), None)
            if one not in self.graph.keys or parents is None:
                continue
            kept = parents.targets_having(self.graph.key(one, raw[1]) for raw in held if raw[1] is not None)
            found.update(self.graph.key(name, raw[0]) for raw in held
                         if raw[1] is not None and self.graph.key(one, raw[1]) in kept)
        return found

    def _cascades(self, conn: sa.Connection, doomed: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
        """The rows the target's ``ON DELETE CASCADE`` foreign keys would take with ``doomed`` (transitively);
        a row the ID map does not own is refused (the mirror would destroy what it did not write)."""
        inspector = sa.inspect(conn)
        cascading: list[tuple[str, str, str, str]] = []  # (child, column, parent, parent column)
        for table in self._dst_tables or self.dst.table_names():
            try:
                fks = _foreign_keys(conn, inspector, self.dst.vendor, table)
            except sa.exc.SQLAlchemyError:
                continue
            for fk in fks:
                if (fk.get("options") or {}).get("ondelete", "").upper() == "CASCADE" and \
                        len(fk["constrained_columns"]) == 1 and len(fk.get("referred_columns") or []) == 1:
                    cascading.append((table, fk["constrained_columns"][0], fk["referred_table"],
                                      fk["referred_columns"][0]))
        if not cascading:
            return {}
        taken: dict[str, set[Any]] = {n: set(rows) for n, rows in doomed.items()}
        out: dict[str, set[Any]] = {}
        todo = dict(taken)
        while todo:
            nxt: dict[str, set[Any]] = {}
            for child, column, parent, parent_column in cascading:
                if parent not in todo:
                    continue
                child_pk = self.graph.keys.get(child) or (inspector.get_pk_constraint(child).get(
                    "constrained_columns") or [None])[0]
                parent_pk = self.graph.keys.get(parent) or (inspector.get_pk_constraint(parent).get(
                    "constrained_columns") or [None])[0]
                if child_pk is None or parent_column != parent_pk:
                    continue
                for batch in _batches(sorted(todo[parent], key=_sort_key)):
                    for raw in conn.execute(sa.select(sa.column(child_pk)).select_from(sa.table(child)).where(
                            keys.in_(self.dst, child, column, batch))).scalars():
                        key = self.graph.key(child, raw) if child in self.graph.keys else str(raw).lower()
                        if key in taken.setdefault(child, set()):
                            continue
                        taken[child].add(key)
                        out.setdefault(child, set()).add(key)
                        nxt.setdefault(child, set()).add(key)
            todo = nxt
        for child, rows in out.items():
            owned = self.idmap.owned_targets(child, rows)
            foreign = sorted((r for r in rows if r not in owned), key=_sort_key)
            if foreign:
                self.refuse(f"mirror's deletions would cascade (ON DELETE CASCADE) to {len(foreign)} {child} rows "
                            f"this move did not write ({', '.join(map(str, foreign[:5]))}"
                            f"{' …' if len(foreign) > 5 else ''})",
                            "those rows were created on the target: delete or re-point them there first, or narrow "
                            "the --filter so their parents stay")
        return {n: sorted(rows, key=_sort_key) for n, rows in out.items()}

    def delete(self, doomed: Mapping[str, list[Any]], roots: Iterable[str]) -> None:
        """Delete ``doomed`` rows through the sink, children before the roots."""
        for name in sorted(doomed, key=lambda n: n in set(roots)):
            pk = self.graph.keys[name]
            for batch in _batches(doomed[name]):
                self.sink.delete(name, pk, batch)
            self.sink.flush()
