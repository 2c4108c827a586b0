"""A content move's per-row bookkeeping on disk: one scratch SQLite file per move, so memory stays flat in rows.

A move remembers something about every row it carries: the closure's keys per collection, each source key's
target key, the ID map of the pair (read from the state store), the entries it will save there and the digest
of each row as written.  Held as Python sets and dicts that was about 1.4 KB a row (``content move --via db``
peaked at 588 MiB for 302k rows), and grew with every row.  Here it is rows of a SQLite file in the move's own
scratch folder (:func:`cairn_migrate.bundle.workdir.scratch`: removed when the move ends, swept after a kill),
read and written a batch at a time; only SQLite's page cache (:data:`CACHE_KIB`) stays in memory, whatever
the size of the move.  Nothing here is durable: the ID map's record is the state store's (:mod:`.keys`).

Keys keep their Python type: SQLite stores an ``int`` as an integer and a ``str`` as text (the columns have no
type affinity), and a collection's keys are all of one type (:meth:`~cairn_migrate.content.closure.Graph.key`),
so ``ORDER BY`` gives the order :func:`sorted` gave the sets before.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: SQLite's page cache per move (KiB): the memory the bookkeeping may hold, whatever the number of rows
CACHE_KIB = 16384
#: keys per statement (SQLite's default limit is 32 766 bound parameters; batches stay well under it)
CHUNK = 500
#: settled rows :meth:`KeyMap.record` gathers before they are written, in one statement (or a few)
RECORD_ROWS = 2000
#: target keys of referenced collections also kept in memory (:class:`KeyMap`), at most this many per move:
#: ~200 bytes each, so at most ~40 MB whatever the size of the move
MEMO_ENTRIES = 200_000

_SCHEMA = """
CREATE TABLE closure (collection TEXT NOT NULL, key NOT NULL, level INTEGER NOT NULL,
                      PRIMARY KEY (collection, key)) WITHOUT ROWID;
CREATE TABLE resolved (collection TEXT NOT NULL, source NOT NULL, target, new INTEGER NOT NULL DEFAULT 0,
                       written INTEGER NOT NULL DEFAULT 0, digest TEXT,
                       PRIMARY KEY (collection, source)) WITHOUT ROWID;
CREATE TABLE idmap (collection TEXT NOT NULL, source_id TEXT NOT NULL, target_id TEXT NOT NULL,
                    pending INTEGER NOT NULL DEFAULT 0, digest TEXT, PRIMARY KEY (collection, source_id)) WITHOUT ROWID;
CREATE INDEX idmap_target ON idmap (collection, target_id);
"""


#: an ``INSERT`` of one row: what comes before its ``VALUES`` row, the row of marks, what follows (ON CONFLICT …)
_VALUES = re.compile(r"(.*?\bVALUES\s*)(\([?,\s\d]+\))(.*)", re.S)


def chunks(items: Iterable[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _marks(n: int) -> str:
    return ",".join("?" * n)


class Spill:
    """The scratch database of one move (:meth:`open`); its tables are read through :class:`KeySet`,
    :class:`KeyMap` and :class:`~cairn_migrate.content.keys.IdMap`."""

    def __init__(self, path: Path) -> None:
        # One thread uses it (the API sink's callbacks run in the caller's thread too); autocommit, no journal:
        # a crash loses a scratch file nobody reads again.
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self.db.execute("PRAGMA temp_store=FILE")
        self.db.executescript(_SCHEMA)
        #: the most ``?`` one statement may hold (32 766 by default since SQLite 3.32, 999 before)
        self.max_variables = self.db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        #: room left in memory for :class:`KeyMap` entries (:data:`MEMO_ENTRIES` per move)
        self.memo_room = MEMO_ENTRIES
        #: ``resolved`` rows :meth:`KeyMap.record` settled, not written yet (at most :data:`RECORD_ROWS`)
        self._records: list[tuple[Any, ...]] = []

    @classmethod
    @contextmanager
    def open(cls) -> Iterator[Spill]:
        """A spill in a scratch folder of this process, removed (with its folder) on exit."""
        from ..bundle.workdir import scratch

        with scratch() as folder:
            spill = cls(folder / "move.sqlite")
            try:
                yield spill
            finally:
                spill.db.close()

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, tuple(params))

    def record(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """``(collection, source, target, digest)`` of settled rows, written with :data:`RECORD_ROWS` of them.

        Every statement lets go of the interpreter's lock, and beside the move's reading and loading threads
        each one then waits for it to come back: a statement per batch of the walk (500 rows) was 2 s of a 10 s
        move whose statements alone take 0.4 s.  Everything that reads ``resolved`` calls :meth:`flush` first."""
        self._records.extend(rows)
        if len(self._records) >= RECORD_ROWS:
            self.flush()

    def flush(self) -> None:
        """Write the rows :meth:`record` holds."""
        if self._records:
            rows, self._records = self._records, []
            self.executemany(
                "INSERT INTO resolved (collection, source, target, new, written, digest) VALUES (?, ?, ?, 0, 1, ?) "
                "ON CONFLICT (collection, source) DO UPDATE SET target = excluded.target, new = 0, written = 1, "
                "digest = excluded.digest", rows, chunk=RECORD_ROWS)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], *, chunk: int = CHUNK) -> None:
        """``sql``, an ``INSERT`` of one ``VALUES (?, …)`` row, for each of ``rows``, in one transaction, as
        statements of up to ``chunk`` rows each (a single statement without ``BEGIN``/``COMMIT``).  SQLite's
        module lets go of the interpreter's lock at every step of a statement, and an ``executemany`` steps once per row: with the move's other threads
        (the ``COPY`` loader, the source reader) running, each row waited to get the lock back (an isolated
        test: 0.1 s for 100 000 rows alone, 46 s beside one busy thread); a statement of many rows steps once."""
        found = _VALUES.fullmatch(sql)
        assert found is not None, sql
        head, row, tail = found.groups()
        per = max(1, min(chunk, self.max_variables // row.count("?")))
        batches = chunks(rows, per)
        first = next(batches, None)
        if first is None:
            return
        second = next(batches, None)
        if second is None:  # one statement is its own transaction: no BEGIN and COMMIT, each another wait
            self.db.execute(head + ",".join([row] * len(first)) + tail, [v for values in first for v in values])
            return
        self.db.execute("BEGIN")
        try:
            for batch in itertools.chain((first, second), batches):
                self.db.execute(head + ",".join([row] * len(batch)) + tail, [v for values in batch for v in values])
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def keyset(self, collection: str) -> KeySet:
        return KeySet(self, collection)

    def keymap(self, collection: str, *, remember: bool = False) -> KeyMap:
        return KeyMap(self, collection, remember=remember)


class KeySet:
    """The closure's keys of one collection (with the level each was reached at): a set on disk."""

    def __init__(self, spill: Spill, collection: str) -> None:
        self.spill, self.collection = spill, collection

    def add(self, keys: Iterable[Any], level: int) -> int:
        """Add ``keys`` (those already there keep their level); returns how many were new."""
        before = self.spill.db.total_changes
        self.spill.executemany("INSERT OR IGNORE INTO closure (collection, key, level) VALUES (?, ?, ?)",
                               ((self.collection, k, level) for k in keys))
        return self.spill.db.total_changes - before

    def discard(self, keys: Iterable[Any]) -> None:
        for batch in chunks(keys):
            self.spill.execute(f"DELETE FROM closure WHERE collection = ? AND key IN ({_marks(len(batch))})",
                               [self.collection, *batch])

    def __len__(self) -> int:
        return int(self.spill.execute("SELECT count(*) FROM closure WHERE collection = ?", [self.collection])
                   .fetchone()[0])

    def __bool__(self) -> bool:
        return self.spill.execute("SELECT 1 FROM closure WHERE collection = ? LIMIT 1",
                                  [self.collection]).fetchone() is not None

    def __contains__(self, key: Any) -> bool:
        return self.spill.execute("SELECT 1 FROM closure WHERE collection = ? AND key = ?",
                                  [self.collection, key]).fetchone() is not None

    def having(self, keys: Iterable[Any]) -> set[Any]:
        """Which of ``keys`` are in the set (one query per :data:`CHUNK` keys)."""
        found: set[Any] = set()
        for batch in chunks(set(keys)):
            found.update(k for (k,) in self.spill.execute(
                f"SELECT key FROM closure WHERE collection = ? AND key IN ({_marks(len(batch))})",
                [self.collection, *batch]))
        return found

    def batches(self, size: int = CHUNK, level: int | None = None) -> Iterator[list[Any]]:
        """The keys in order, ``size`` at a time (keyset paging: writes between batches are safe);
        ``level``: only the keys first reached at that level (the closure's frontier)."""
        where, params = ("collection = ?", [self.collection]) if level is None else \
            ("collection = ? AND level = ?", [self.collection, level])
        last: list[Any] = []
        while True:
            after = " AND key > ?" if last else ""
            batch = [k for (k,) in self.spill.execute(
                f"SELECT key FROM closure WHERE {where}{after} ORDER BY key LIMIT ?", [*params, *last[-1:], size])]
            if not batch:
                return
            yield batch
            last = batch

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches():
            yield from batch

    def __isub__(self, keys: Iterable[Any]) -> KeySet:
        self.discard(keys)
        return self

    def count(self, level: int) -> int:
        return int(self.spill.execute("SELECT count(*) FROM closure WHERE collection = ? AND level = ?",
                                      [self.collection, level]).fetchone()[0])


class New:
    """The target key of a row the plan would create (the target numbers it only when written)."""

    __slots__ = ("source",)

    def __init__(self, source: Any) -> None:
        self.source = source

    def __repr__(self) -> str:
        return f"<new {self.source}>"


class KeyMap:
    """Source key → target key of one collection (the walk's ``resolved``): a dict on disk.  A :class:`New`
    value is stored as a flag and given back as ``New(source)``.

    ``remember``: a collection other rows reference (the authors and articles of the comments), whose entries
    every batch of its children looks up again: what it settles is also kept in memory, up to the move's
    :data:`MEMO_ENTRIES` (the rest only on disk), and :meth:`get_many` asks the disk only for what that
    lacks.  Every write goes through :meth:`set_many` or :meth:`record`, which update both."""

    def __init__(self, spill: Spill, collection: str, *, remember: bool = False) -> None:
        self.spill, self.collection = spill, collection
        #: source key → (target, new) of entries also held in memory (None: this map keeps none there)
        self.memo: dict[Any, tuple[Any, int]] | None = {} if remember else None
        #: the memo holds every entry: it started when the disk held none, and has never run out of room
        self.complete = remember and not self

    def _remember(self, entries: list[tuple[Any, Any, int]]) -> None:
        """Entries just written, into the memo: those it holds are updated, new ones while there is room."""
        memo = self.memo
        if memo is None:
            return
        room = self.spill.memo_room
        for source, target, new in entries:
            if source in memo:
                memo[source] = (target, new)
            elif room > 0:
                room -= 1
                memo[source] = (target, new)
            else:
                self.complete = False  # from here on a miss asks the disk
        self.spill.memo_room = room

    @staticmethod
    def _value(source: Any, target: Any, new: int) -> Any:
        return New(source) if new else target

    def set_many(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        """Settle ``(source, target)`` pairs (a :class:`New` target: a row the plan would create)."""
        entries = [(s, None if isinstance(t, New) else t, int(isinstance(t, New))) for s, t in pairs]
        self.spill.flush()  # after the rows settled before
        self.spill.executemany(
            "INSERT INTO resolved (collection, source, target, new) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (collection, source) DO UPDATE SET target = excluded.target, new = excluded.new",
            ((self.collection, *entry) for entry in entries))
        self._remember(entries)

    def record(self, rows: Iterable[tuple[Any, Any, str | None]]) -> None:
        """Settle ``(source, target, digest)`` of rows the target gave a key (written or adopted) and mark them for
        the ID map (:class:`Written`): one write per row, where a settle and a separate record were two."""
        rows = list(rows)
        self.spill.record([(self.collection, s, t, d) for s, t, d in rows])
        if self.memo is not None:
            self._remember([(s, t, 0) for s, t, _ in rows])

    def __setitem__(self, source: Any, target: Any) -> None:
        self.set_many([(source, target)])

    def get(self, source: Any, default: Any = None) -> Any:
        self.spill.flush()
        row = self.spill.execute("SELECT target, new FROM resolved WHERE collection = ? AND source = ?",
                                 [self.collection, source]).fetchone()
        return default if row is None else self._value(source, row[0], row[1])

    def __getitem__(self, source: Any) -> Any:
        self.spill.flush()
        row = self.spill.execute("SELECT target, new FROM resolved WHERE collection = ? AND source = ?",
                                 [self.collection, source]).fetchone()
        if row is None:
            raise KeyError(source)
        return self._value(source, row[0], row[1])

    def __contains__(self, source: Any) -> bool:
        self.spill.flush()
        return self.spill.execute("SELECT 1 FROM resolved WHERE collection = ? AND source = ?",
                                  [self.collection, source]).fetchone() is not None

    def get_many(self, sources: Iterable[Any]) -> dict[Any, Any]:
        """The entries of ``sources`` that exist (one query per :data:`CHUNK` keys)."""
        out: dict[Any, Any] = {}
        wanted = set(sources)
        memo = self.memo
        if memo:
            for source in wanted:
                if (hit := memo.get(source)) is not None:
                    out[source] = New(source) if hit[1] else hit[0]
            if self.complete:  # a miss is no entry
                return out
            wanted -= out.keys()
        if wanted:
            self.spill.flush()
        for batch in chunks(wanted):
            out.update((source, New(source) if new else target) for source, target, new in self.spill.execute(
                f"SELECT source, target, new FROM resolved WHERE collection = ? AND source IN "
                f"({_marks(len(batch))})", [self.collection, *batch]))
        return out

    def targets_having(self, targets: Iterable[Any]) -> set[Any]:
        """Which of ``targets`` a source key of this collection was given (created, adopted or matched).

        Asked only of targets that held rows before the move (adoption, mirror), so the index on targets is
        built at the first question, not kept up to date through every settled row of every move."""
        self.spill.flush()
        self.spill.execute("CREATE INDEX IF NOT EXISTS resolved_target ON resolved (collection, target)")
        found: set[Any] = set()
        for batch in chunks(set(targets)):
            found.update(t for (t,) in self.spill.execute(
                f"SELECT target FROM resolved WHERE collection = ? AND new = 0 AND target IN ({_marks(len(batch))})",
                [self.collection, *batch]))
        return found

    def __len__(self) -> int:
        self.spill.flush()
        return int(self.spill.execute("SELECT count(*) FROM resolved WHERE collection = ?", [self.collection])
                   .fetchone()[0])

    def __bool__(self) -> bool:
        self.spill.flush()
        return self.spill.execute("SELECT 1 FROM resolved WHERE collection = ? LIMIT 1",
                                  [self.collection]).fetchone() is not None


class Written:
    """What the walk wrote or adopted, for the ID map (:meth:`~cairn_migrate.content.keys.IdMap.save`): per
    (collection, source key) the target key the target gave it and the digest of the row as written.  These are
    the ``resolved`` rows :meth:`KeyMap.record` marked (a row the target acknowledged is always a settled one)."""

    def __init__(self, spill: Spill) -> None:
        self.spill = spill

    def entries(self) -> Iterator[tuple[str, Any, Any, str | None]]:
        """``(collection, source key, target key, digest)`` of every row the target gave a key, a page at a time."""
        self.spill.flush()
        last: tuple[Any, ...] = ()
        while True:
            after = " AND (collection, source) > (?, ?)" if last else ""
            page = self.spill.execute(
                f"SELECT collection, source, target, digest FROM resolved WHERE written = 1{after} "
                "ORDER BY collection, source LIMIT ?", [*last, CHUNK]).fetchall()
            if not page:
                return
            yield from page
            last = page[-1][:2]

    def __len__(self) -> int:
        self.spill.flush()
        return int(self.spill.execute("SELECT count(*) FROM resolved WHERE written = 1").fetchone()[0])
