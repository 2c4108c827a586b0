"""The relation closure of a content move: which rows of which collections travel with the starting rows.

The graph is the source's own ``directus_relations`` (reference §1.3, §2): every row is a
many-to-one link ``many_collection.many_field → one_collection``; ``one_field`` names the
one-to-many alias on the other side (``articles.comments``, ``articles.tags``,
``articles.translations``); a row with ``one_allowed_collections`` and ``one_collection_field``
is the many-to-any link of a junction.  So:

- m2o: a moved row brings the rows its foreign keys name (authors, files, a junction's other side);
- o2m: a moved row brings the rows whose foreign key points back at it, only where the relation has
  an alias on the moved side (``one_field``): comments, junction rows, translations; a plain
  m2o seen from its target (``tags`` ← ``articles_tags`` with no alias on ``tags``) is not followed back;
- m2a: a junction row brings the row its ``item`` names in the collection its ``collection`` column names;
- ``directus_users`` are never moved: references to them are matched by email on the target;
- ``directus_files`` come with their ``directus_folders`` (parents first) and their bytes.

Rows are collected as key sets per collection (on disk, :mod:`.spill`), level by level up to ``depth``;
rows are read in batches of keys, never a whole table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..instance.database import Database
from . import keys as keys_
from .spill import KeySet, Spill, chunks

USERS, FILES, FOLDERS = "directus_users", "directus_files", "directus_folders"
#: System collections a move may write (the others are never content of a move).
SYSTEM_MOVED = (FILES, FOLDERS)
#: The links of the system collections a move writes (virtual in CairnCMS: not in directus_relations).
SYSTEM_LINKS = (
    (FILES, "folder", FOLDERS), (FILES, "uploaded_by", USERS), (FILES, "modified_by", USERS),
    (FOLDERS, "parent", FOLDERS),
)
BATCH = 500
#: keys per closure lookup on PostgreSQL: one bound array (``keys.in_``), hashed by the server, so a child
#: table without an index on its foreign key (CairnCMS creates none) is scanned once per 20 000 keys instead of
#: once per 500 (100k articles: 200 full scans of each child table became 5)
PG_LOOKUP = 20000


def lookup_size(db: Database) -> int:
    """Keys per closure query: :data:`PG_LOOKUP` on PostgreSQL, :data:`BATCH` elsewhere (one bound parameter
    per key there: SQLite and MariaDB limit how many a statement takes)."""
    return PG_LOOKUP if db.vendor == "postgres" else BATCH


def movable(collection: str) -> bool:
    """Whether a move writes rows of ``collection``: user collections, files and folders (never users,
    roles or other system rows: references to those are kept where the target has the same key)."""
    return not collection.startswith("directus_") or collection in SYSTEM_MOVED


@dataclass(frozen=True)
class Link:
    """One many-to-one column: ``many.field`` holds a key of ``one`` (``None``: many-to-any, see ``allowed``)."""

    many: str
    field: str
    one: str | None
    one_field: str | None = None
    allowed: tuple[str, ...] = ()
    collection_field: str | None = None
    #: the other foreign key of a junction (m2m, translations, m2a): the pair names one junction row
    junction: str | None = None

    @property
    def m2a(self) -> bool:
        return self.one is None


@dataclass
class Graph:
    """The links of the source, and each collection's primary key."""

    links: list[Link]
    keys: dict[str, str] = field(default_factory=dict)
    #: the collections whose primary key is an integer (remapped on the target)
    integer: set[str] = field(default_factory=set)

    def key(self, collection: str, value: Any) -> Any:
        """A key of ``collection`` in one form: an int for integer keys, else text (uuid objects lower-cased)."""
        if collection in self.integer:
            return int(value)
        return value if isinstance(value, str) else str(value).lower()

    def outgoing(self, collection: str) -> list[Link]:
        return [link for link in self.links if link.many == collection]

    def incoming(self, collection: str) -> list[Link]:
        """The one-to-many links into ``collection`` that it has an alias for (the only ones followed back)."""
        return [link for link in self.links if link.one == collection and link.one_field and link.many not in SYSTEM_MOVED]

    def reachable(self, roots: Iterable[str], depth: int | None) -> list[str]:
        """Every collection the closure may touch from ``roots`` within ``depth`` levels (users left out)."""
        seen = {root: 0 for root in roots}
        frontier = list(seen)
        level = 0
        while frontier and (depth is None or level < depth):
            level += 1
            nxt = []
            for name in frontier:
                targets = [link.one for link in self.outgoing(name) if link.one] + [
                    c for link in self.outgoing(name) if link.m2a for c in link.allowed]
                targets += [link.many for link in self.incoming(name)]
                for target in targets:
                    if target and movable(target) and target not in seen:
                        seen[target] = level
                        nxt.append(target)
            frontier = nxt
        if FILES in seen and FOLDERS not in seen:
            seen[FOLDERS] = seen[FILES] + 1
        return list(seen)


def load_graph(db: Database) -> Graph:
    """The links of ``db``'s user collections (``directus_relations``) plus the system ones a move writes.

    Fields flagged ``user-created``/``user-updated`` without a relation row still link to ``directus_users``.
    """
    links: list[Link] = []
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT many_collection, many_field, one_collection, one_field, one_allowed_collections, "
            "one_collection_field, junction_field FROM directus_relations ORDER BY id")).all()
        specials = conn.execute(sa.text(
            "SELECT collection, field, special FROM directus_fields WHERE special IS NOT NULL")).all()
    for r in rows:
        allowed = tuple(c for c in (r.one_allowed_collections or "").split(",") if c)
        links.append(Link(r.many_collection, r.many_field, r.one_collection or None, r.one_field or None,
                          allowed, r.one_collection_field or None, r.junction_field or None))
    known = {(link.many, link.field) for link in links}
    for s in specials:
        flags = set(str(s.special).split(","))
        if flags & {"user-created", "user-updated"} and (s.collection, s.field) not in known:
            links.append(Link(s.collection, s.field, USERS))
    links += [Link(many, col, one) for many, col, one in SYSTEM_LINKS]
    return Graph(links)


def primary_key(db: Database, collection: str) -> str:
    """The one primary-key column of ``collection`` (a content move needs exactly one)."""
    from ..errors import InvalidInput

    pk = [c.name for c in db.table(collection).primary_key.columns]
    if len(pk) != 1:
        raise InvalidInput(f"{collection} has {'no' if not pk else 'a composite'} primary key",
                           hint="a content move needs collections with one primary-key column")
    return pk[0]


def _batches(items: Iterable[Any], size: int = BATCH) -> Iterator[list[Any]]:
    return chunks(items, size)


@dataclass
class Closure:
    """The keys of the rows a move reads, per collection (on disk: :class:`~cairn_migrate.content.spill.KeySet`,
    so a move of a million rows holds no million keys), and the depth each collection was reached at.  The
    users the rows name stay in memory: they are as many as the source has users, not as the move has rows."""

    spill: Spill
    rows: dict[str, KeySet] = field(default_factory=dict)
    depth: dict[str, int] = field(default_factory=dict)
    users: set[Any] = field(default_factory=set)
    #: collection → the levels keys of it were added at
    levels: dict[str, set[int]] = field(default_factory=dict)
    #: (collection, level) → conditions on the source whose rows together are every key first reached at that
    #: level (and maybe keys of lower levels: all in the closure); None when some came another way (a key list,
    #: a reference).  A later scan of those rows (the asset-URL scan, :func:`~.transform.asset_files`) reads
    #: them through the condition, a scan the server does without a lookup per key.
    scopes: dict[tuple[str, int], list[sa.ColumnElement[bool]] | None] = field(default_factory=dict)

    def add(self, collection: str, keys: Iterable[Any], level: int, *,
            where: sa.ColumnElement[bool] | None = None) -> int:
        """Add ``keys`` reached at ``level``; returns how many were new.  ``where``: a condition on the source
        whose rows are exactly ``keys``."""
        have = self.rows.setdefault(collection, self.spill.keyset(collection))
        self.depth.setdefault(collection, level)
        self.levels.setdefault(collection, set()).add(level)
        known = self.scopes.get((collection, level), [])
        self.scopes[(collection, level)] = None if where is None or known is None else [*known, where]
        return have.add(keys, level)

    def scans(self, db: Database, collection: str, size: int) -> Iterator[sa.ColumnElement[bool]]:
        """Conditions on the source whose rows together are the closure's rows of ``collection``: a level's
        :attr:`scopes` where known, else its keys, ``size`` to a condition."""
        pk = None
        for level in sorted(self.levels.get(collection, ())):
            scopes = self.scopes.get((collection, level))
            if scopes:
                yield from scopes
                continue
            pk = pk or primary_key(db, collection)
            yield from (keys_.in_(db, collection, pk, batch) for batch in self.rows[collection].batches(size, level))


def compute(db: Database, graph: Graph, roots: Mapping[str, sa.ColumnElement[bool]], depth: int | None,
            conn: sa.Connection, spill: Spill) -> Closure:
    """The closure from the rows of ``roots`` (collection → filter condition), ``depth`` levels deep.

    ``conn`` is one read transaction of the source (a consistent snapshot).  Level by level, the keys first
    reached at the previous level (the frontier) are read back from ``spill`` in batches and what they link
    to is added there: neither the frontier nor what it finds is ever a whole set in memory.
    """
    closure = Closure(spill)
    size = lookup_size(db)
    frontier: list[str] = []
    #: (collection, level) → the one-to-many links (field, parent) through which every key first reached there
    #: came; None: some came another way (a root's filter, a many-to-one reference)
    came: dict[tuple[str, int], set[tuple[str, str]] | None] = {}
    for collection, condition in roots.items():
        pk = graph.keys[collection]
        query = sa.select(keys_.selected(db, collection, pk)).select_from(sa.table(collection)).where(condition)
        result = conn.execute(query.execution_options(yield_per=BATCH))
        came[(collection, 0)] = None
        if closure.add(collection, (graph.key(collection, v) for v in result.scalars()), 0, where=condition):
            frontier.append(collection)
    level = 0
    while frontier and (depth is None or level < depth):
        level += 1
        for collection in frontier:
            keys = closure.rows[collection]
            # The first level's frontier of a root is exactly the rows its condition selects: the server reads
            # what they link to through that condition, in one query per link, instead of through key lists
            # read back from the spill (and, for a child table without an index on its foreign key, one scan
            # per list: 200 per child table at 100k articles on SQLite and MariaDB, 5 on PostgreSQL).
            scope = roots.get(collection) if level == 1 else None
            routes = came.get((collection, level - 1))
            for link in graph.outgoing(collection):
                if routes == {(link.field, link.one)}:
                    # every key here was found as a child of a parent the closure holds, through this very
                    # column: it names those parents again (the comments' article: 100k keys read for nothing)
                    continue
                for target, values in _referenced(db, conn, graph, collection, link, keys.batches(size, level - 1),
                                                  scope=scope):
                    if target == USERS:
                        closure.users |= values
                    elif target in graph.keys and movable(target):
                        came[(target, level)] = None
                        closure.add(target, values, level)
            for link in graph.incoming(collection):
                if link.many not in graph.keys or not movable(link.many):
                    continue
                child_pk = graph.keys[link.many]
                children = (sa.select(keys_.selected(db, link.many, child_pk)).select_from(sa.table(link.many)))
                scoped = scope is not None and _same_type(db, link.many, link.field, collection, graph.keys[collection])
                if scoped:
                    wheres: Iterable[sa.ColumnElement[bool]] = [sa.column(link.field).in_(
                        sa.select(sa.column(graph.keys[collection])).select_from(sa.table(collection)).where(scope)
                        .correlate(None))]  # its own FROM even when the child is the same table (a self-reference)
                else:
                    wheres = (keys_.in_(db, link.many, link.field, batch) for batch in keys.batches(size, level - 1))
                way = came.setdefault((link.many, level), set())
                if way is not None:
                    way.add((link.field, collection))
                for where in wheres:
                    found = conn.execute(children.where(where)).scalars().partitions(BATCH)  # a fetch per batch
                    closure.add(link.many, (graph.key(link.many, v) for part in found for v in part), level,
                                where=where if scoped else None)
        frontier = [name for name, keys in closure.rows.items() if keys.count(level)]
    # Users named by rows outside the last level, and folders of the files (always, parents first).
    for collection in list(closure.rows):
        for link in graph.outgoing(collection):
            if link.one == USERS:
                for _, values in _referenced(db, conn, graph, collection, link, closure.rows[collection].batches(size)):
                    closure.users |= values
    if closure.rows.get(FILES) and FOLDERS in graph.keys:
        folders: set[Any] = set()  # as many as the source has folders
        for _, values in _referenced(db, conn, graph, FILES, Link(FILES, "folder", FOLDERS),
                                     closure.rows[FILES].batches(size)):
            folders |= values
        pending = set(folders)
        while pending:  # the parent chain
            parents: set[Any] = set()
            for _, values in _referenced(db, conn, graph, FOLDERS, Link(FOLDERS, "parent", FOLDERS),
                                         _batches(sorted(pending), size)):
                parents |= values
            pending = parents - folders
            folders |= parents
        closure.add(FOLDERS, folders, closure.depth[FILES] + 1)
    return closure


def _same_type(db: Database, table: str, column: str, other: str, other_column: str) -> bool:
    """Whether two columns hold the same type (a foreign key and the key it names, compared in SQL as they are);
    a relation between columns of different types is looked up with typed key lists instead."""
    first, second = db.table(table).c[column].type, db.table(other).c[other_column].type
    dialect = db.engine.dialect
    return bool(first.compile(dialect=dialect) == second.compile(dialect=dialect))


def _referenced(db: Database, conn: sa.Connection, graph: Graph, collection: str, link: Link,
                batches: Iterable[list[Any]], *, scope: sa.ColumnElement[bool] | None = None
                ) -> Iterator[tuple[str, set[Any]]]:
    """``(collection, keys)`` the ``link`` column of the rows of ``collection`` names, per batch of their keys
    (or, with ``scope``, of the rows that condition selects, in one query)."""
    pk = graph.keys[collection]
    wheres = [scope] if scope is not None else (keys_.in_(db, collection, pk, batch) for batch in batches)
    for where in wheres:
        if link.m2a:
            if not link.collection_field:
                continue
            query = (sa.select(sa.column(link.collection_field), sa.column(link.field))
                     .select_from(sa.table(collection)).where(where, sa.column(link.field).is_not(None)))
            grouped: dict[str, set[Any]] = {}
            for target, value in conn.execute(query).all():
                if target in link.allowed and target in graph.keys:
                    grouped.setdefault(target, set()).add(graph.key(target, value))
            yield from grouped.items()
        else:
            assert link.one is not None
            query = (sa.select(keys_.selected(db, collection, link.field)).select_from(sa.table(collection))
                     .where(where, sa.column(link.field).is_not(None)).distinct())
            if link.one == USERS:
                yield USERS, {str(v).lower() for v in conn.execute(query).scalars().all()}
            elif link.one in graph.keys:
                yield link.one, {graph.key(link.one, v) for v in conn.execute(query).scalars().all()}


# --- value transforms (transform.py): files that asset URLs in text name -------------------------------
def carry_files(db: Database, graph: Graph, closure: Closure, ids: Iterable[Any], conn: sa.Connection) -> set[Any]:
    """Add the files ``ids`` (asset URLs in the closure's text name them) with their users and folders; returns the new ones."""
    wanted = {graph.key(FILES, i) for i in ids}
    held = closure.rows[FILES].having(wanted) if FILES in closure.rows else set()
    new = wanted - held
    closure.add(FILES, new, 1)
    if not new:
        return new
    size = lookup_size(db)
    for link in graph.outgoing(FILES):
        if link.one == USERS:
            for _, values in _referenced(db, conn, graph, FILES, link, _batches(sorted(new), size)):
                closure.users |= values
    if FOLDERS in graph.keys:
        folders: set[Any] = set()
        pending = set(new)
        link = Link(FILES, "folder", FOLDERS)
        while pending:
            found: set[Any] = set()
            for _, values in _referenced(db, conn, graph, link.many, link, _batches(sorted(pending), size)):
                found |= values
            pending = found - folders - (closure.rows[FOLDERS].having(found) if FOLDERS in closure.rows else set())
            folders |= found
            link = Link(FOLDERS, "parent", FOLDERS)
        closure.add(FOLDERS, folders, closure.depth.get(FILES, 1) + 1)
    return new
