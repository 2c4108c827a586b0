"""``files check`` and ``files repair``: do ``directus_files`` rows and stored objects agree?

CairnCMS trusts ``directus_files`` blindly: a row whose bytes are gone serves
403, a NULL ``filename_disk`` serves 500 (reference §11.24), and nothing ever
notices an object no row names.  The check compares the two sides per
location and reports six kinds of problem:

* ``missing``: the row's object does not exist;
* ``size_mismatch``: it exists with a size other than ``filesize``;
* ``no_filename_disk``: the row names no object at all;
* ``unconfigured_location``: ``storage`` names a location not in ``STORAGE_LOCATIONS``;
* ``orphan``: an object no row names, except derived transforms
  ``<stem>__<hash>.<ext>`` of an existing row, ``health-*`` probes written by
  ``/server/health`` and our own quarantine folder (§6.6, §11.22-23);
* ``dangling_reference``: a user-table file field (``directus_relations``),
  ``directus_settings.project_logo``/``public_foreground``/``public_background``
  or ``directus_users.avatar`` naming a file id with no row.

Memory stays flat whatever the size: the rows (streamed from the database)
and the object listings (streamed page by page) are written, concurrently, to
two scratch SQLite files on disk and joined there; only capped samples reach
the report.  Listing-based answers are then confirmed with concurrent HEAD
requests (and orphans with a database lookup), so an upload racing the check
is not reported.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..bundle.bundle import file_member, iter_file_index, member_path, read_manifest
from ..instance.database import Database
from ..errors import MigrateError
from ..instance.instance import Instance
from .limits import DEFAULT_LIMIT, DEFAULT_WORKERS
from ..progress import NullProgress, Progress
from ..ledger.scripts import id_values
from ..instance.storage import Location, node_join, open_location

log = logging.getLogger(__name__)

KINDS = ("missing", "size_mismatch", "no_filename_disk", "unconfigured_location", "orphan", "dangling_reference")
QUARANTINE_PREFIX = ".cairn-quarantine"
#: System file references that are not in ``directus_relations`` (reference §1.3).
SYSTEM_REFERENCES = (("directus_settings", "project_logo"), ("directus_settings", "public_foreground"),
                     ("directus_settings", "public_background"), ("directus_users", "avatar"))
_TRANSFORM = re.compile(r"^(?P<stem>[^/]+)__[0-9A-Za-z]{16,}\.[^./]+$")
_HEALTH = re.compile(r"^health-[^/]+$")
_BATCH = 5000


def normalized(filename_disk: str) -> str:
    """The object name relative to the location root, as CairnCMS's drivers resolve it."""
    return node_join("/", str(filename_disk)).lstrip("/")


def stem_of(filename_disk: str) -> str:
    """``path.basename(fd, path.extname(fd))``: the prefix CairnCMS gives a file's transforms."""
    base = posixpath.basename(str(filename_disk))
    ext = posixpath.splitext(base)[1]
    return base[: len(base) - len(ext)] if ext else base


# --------------------------------------------------------------------------- the scan
class Scan:
    """Rows and objects side by side in scratch SQLite files; problems in a third table."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conn = sqlite3.connect(folder / "scan.db", check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=OFF")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("ATTACH DATABASE ? AS r", (str(folder / "rows.db"),))
        self.conn.execute("ATTACH DATABASE ? AS o", (str(folder / "objects.db"),))
        self.conn.execute("CREATE TABLE r.rows (id TEXT, storage TEXT, name TEXT, filesize INTEGER, stem TEXT)")
        self.conn.execute("CREATE TABLE o.objects (loc TEXT, name TEXT, size INTEGER, tstem TEXT)")
        self.conn.execute("CREATE TABLE retained (loc TEXT, name TEXT, stem TEXT)")
        self.conn.execute("CREATE TABLE problems (kind TEXT, id TEXT, storage TEXT, name TEXT, filesize INTEGER, "
                          "actual INTEGER, ref_table TEXT, ref_column TEXT, ref_key TEXT)")
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def _writer(self, name: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self.folder / f"{name}.db")
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        return conn

    def load_rows(self, db: Database) -> int:
        conn, count, batch = self._writer("rows"), 0, []
        try:
            for row in db.stream_rows("directus_files", columns=["id", "storage", "filename_disk", "filesize"],
                                      batch_size=_BATCH):
                name = row["filename_disk"]
                norm = normalized(name) if name not in (None, "") else None
                size = None if row["filesize"] is None else int(row["filesize"])
                batch.append((str(row["id"]), row["storage"], norm, size, stem_of(name) if norm else None))
                if len(batch) >= _BATCH:
                    conn.executemany("INSERT INTO rows VALUES (?,?,?,?,?)", batch)
                    count += len(batch)
                    batch.clear()
            conn.executemany("INSERT INTO rows VALUES (?,?,?,?,?)", batch)
            count += len(batch)
            conn.execute("CREATE INDEX rows_name ON rows (storage, name)")
            conn.execute("CREATE INDEX rows_stem ON rows (storage, stem)")
            conn.commit()
        finally:
            conn.close()
        return count

    def load_objects(self, locations: list[Location]) -> dict[str, int]:
        conn, counts = self._writer("objects"), {}
        try:
            for location in locations:
                batch, count = [], 0
                for name, size in location.list():
                    match = _TRANSFORM.match(name)
                    batch.append((location.name, name, size, match.group("stem") if match else None))
                    if len(batch) >= _BATCH:
                        conn.executemany("INSERT INTO objects VALUES (?,?,?,?)", batch)
                        count += len(batch)
                        batch.clear()
                conn.executemany("INSERT INTO objects VALUES (?,?,?,?)", batch)
                counts[location.name] = count + len(batch)
            conn.execute("CREATE INDEX objects_name ON objects (loc, name)")
            conn.commit()
        finally:
            conn.close()
        return counts

    def add(self, kind: str, rows: list[tuple[Any, ...]]) -> None:
        self.conn.executemany(
            "INSERT INTO problems VALUES (?,?,?,?,?,?,?,?,?)", [(kind, *r, *([None] * (8 - len(r)))) for r in rows])
        self.conn.commit()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        cursor = self.conn.execute(sql, params)
        while batch := cursor.fetchmany(_BATCH):
            yield from batch

    def problems(self, kind: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
        sql = "SELECT id, storage, name, filesize, actual, ref_table, ref_column, ref_key FROM problems WHERE kind = ?"
        sql += " ORDER BY rowid" + (f" LIMIT {int(limit)}" if limit is not None else "")
        for id_, storage, name, filesize, actual, table, column, key in self.query(sql, (kind,)):
            if kind == "orphan":
                yield {"storage": storage, "name": name, "size": actual}
            elif kind == "dangling_reference":
                yield {"table": table, "column": column, "key": key, "file_id": id_}
            else:
                item = {"id": id_, "storage": storage, "filename_disk": name, "filesize": filesize}
                if kind == "size_mismatch":
                    item["actual_size"] = actual
                yield item

    def count(self, kind: str) -> int:
        return int(self.conn.execute("SELECT count(*) FROM problems WHERE kind = ?", (kind,)).fetchone()[0])


def _load_retained(scan: Scan, instance: Instance, state_url: str | None) -> None:
    """Source objects of switched, not yet pruned moves: kept on purpose (rollback), not orphans.

    Moves recorded before state was scoped by instance count too (by the label
    they carry): a wrongly retained object is only not reported, while a
    forgotten one would be quarantined or deleted as an orphan.
    """
    from ..service.state import instance_scope, legacy_instance_label
    from .storage_move import CopyLedger

    ledger = CopyLedger(state_url)
    try:
        moves = ledger.moves(instance_scope(instance)) + ledger.moves(legacy_instance_label(instance))
        for move in moves:
            batch = [(move["src"], normalized(name), stem_of(name))
                     for name in ledger.source_names(move["move_id"], "switched")]
            scan.conn.executemany("INSERT INTO retained VALUES (?,?,?)", batch)
        scan.conn.execute("CREATE INDEX retained_name ON retained (loc, name)")
        scan.conn.execute("CREATE INDEX retained_stem ON retained (loc, stem)")
        scan.conn.commit()
    finally:
        ledger.close()


def _retained(scan: Scan, loc: str, name: str, tstem: str | None) -> bool:
    """Whether a move kept ``name`` (or the original of a transform ``tstem``) at ``loc``.

    Two lookups, each on its own index: one ``name = ? OR stem = ?`` query cannot use either index and
    scanned every kept file per object (5.95 s instead of 0.09 s for 10k objects).
    """
    lookup = "SELECT 1 FROM retained WHERE loc = ? AND {} = ? LIMIT 1"
    if scan.conn.execute(lookup.format("name"), (loc, name)).fetchone():
        return True
    return tstem is not None and scan.conn.execute(lookup.format("stem"), (loc, tstem)).fetchone() is not None


def _confirm(locations: dict[str, Location], candidates: Iterator[tuple[Any, ...]], workers: int,
             ) -> Iterator[tuple[tuple[Any, ...], int | None]]:
    """HEAD each ``(id, storage, name, filesize, ...)`` candidate concurrently, at most ``4 × workers`` in flight."""
    with ThreadPoolExecutor(workers, thread_name_prefix="check") as pool:
        window: list[Any] = []
        for candidate in candidates:
            window.append((candidate, pool.submit(locations[candidate[1]].size, candidate[2])))
            if len(window) >= workers * 4:
                item, future = window.pop(0)
                yield item, future.result()
        for item, future in window:
            yield item, future.result()


def _dangling(db: Database, scan: Scan) -> None:
    """References to file ids that have no ``directus_files`` row."""
    names = set(db.table_names())
    refs = set(SYSTEM_REFERENCES)
    if "directus_relations" in names:
        rel = db.table("directus_relations")
        with db.engine.connect() as conn:
            for many, field in conn.execute(sa.select(rel.c.many_collection, rel.c.many_field)
                                            .where(rel.c.one_collection == "directus_files")):
                refs.add((many, field))
    files = db.table("directus_files")
    for table_name, column in sorted(refs):
        if table_name not in names or column not in db.columns(table_name):
            continue
        table = db.table(table_name)
        key = list(table.primary_key.columns)[0] if len(table.primary_key.columns) == 1 else table.c[column]
        ref = table.c[column]
        join = table.outerjoin(files, sa.cast(ref, sa.String(64)) == sa.cast(files.c.id, sa.String(64)))
        query = (sa.select(sa.cast(key, sa.String(255)), sa.cast(ref, sa.String(64))).select_from(join)
                 .where(ref.is_not(None), files.c.id.is_(None)))
        with db.engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(query)
            while batch := result.fetchmany(_BATCH):
                scan.add("dangling_reference", [(str(fid), None, None, None, None, table_name, column, str(k))
                                                for k, fid in batch])


@contextmanager
def scan_instance(instance: Instance, *, workers: int = DEFAULT_WORKERS, progress: Progress | None = None,
                  state_url: str | None = None) -> Iterator[tuple[Scan, dict[str, Any]]]:
    """Run the whole comparison; yield the :class:`Scan` (problems table filled) and location facts."""
    progress = progress or NullProgress()
    with tempfile.TemporaryDirectory(prefix="cairn-check-") as tmp, Database.open(instance) as db:
        scan = Scan(Path(tmp))
        try:
            facts: dict[str, Any] = {"locations": [], "errors": {}}
            usable: dict[str, Location] = {}
            for config in instance.locations:
                try:
                    location = open_location(config)
                    location.check()
                    usable[config.name] = location
                    facts["locations"].append(location.describe())
                except MigrateError as exc:
                    facts["errors"][config.name] = exc.to_dict()
                    facts["locations"].append({"name": config.name, "driver": config.driver, "error": exc.to_dict()})
            progress.log("listing objects and reading file rows")
            with ThreadPoolExecutor(2) as pool:  # listing and row stats run side by side
                rows_future = pool.submit(scan.load_rows, db)
                objects_future = pool.submit(scan.load_objects, list(usable.values()))
                facts["rows"] = rows_future.result()
                facts["objects"] = objects_future.result()
            _load_retained(scan, instance, state_url)
            _classify(db, scan, instance, usable, facts, workers, progress)
            yield scan, facts
        finally:
            scan.close()


def _classify(db: Database, scan: Scan, instance: Instance, usable: dict[str, Location], facts: dict[str, Any],
              workers: int, progress: Progress) -> None:
    configured = tuple(loc.name for loc in instance.locations)
    marks = ",".join("?" * len(configured))
    scan.add("no_filename_disk", list(scan.query("SELECT id, storage FROM rows WHERE name IS NULL")))
    scan.add("unconfigured_location", list(scan.query(
        f"SELECT id, storage, name, filesize FROM rows WHERE storage NOT IN ({marks})", configured)))
    reachable = tuple(usable)
    if reachable:
        where = f"r.storage IN ({','.join('?' * len(reachable))}) AND r.name IS NOT NULL"
        candidates = scan.query(
            "SELECT r.id, r.storage, r.name, r.filesize FROM rows r LEFT JOIN objects o "
            f"ON o.loc = r.storage AND o.name = r.name WHERE {where} "
            "AND (o.name IS NULL OR (r.filesize IS NOT NULL AND o.size != r.filesize))", reachable)
        missing, mismatched = [], []
        for item, size in _confirm(usable, candidates, workers):
            if size is None:
                missing.append(item)
            elif item[3] is not None and size != item[3]:
                mismatched.append((*item, size))
            progress.check_cancelled()
        scan.add("missing", missing)
        scan.add("size_mismatch", mismatched)
    # whether a move kept the object itself is answered in the same query (one indexed probe per object,
    # not one query each: 10k kept objects took 0.5 s that way); a transform's original by _retained
    orphan_sql = (
        "SELECT o.loc, o.name, o.size, o.tstem, "
        "EXISTS (SELECT 1 FROM retained k WHERE k.loc = o.loc AND k.name = o.name) "
        "FROM objects o LEFT JOIN rows r ON r.storage = o.loc AND r.name = o.name "
        "WHERE r.id IS NULL")
    ignored = {"transforms": 0, "health_probes": 0, "quarantined": 0, "kept_after_move": 0}
    orphans: list[tuple[Any, ...]] = []
    for loc, name, size, tstem, kept in scan.query(orphan_sql):
        if _HEALTH.match(name):
            ignored["health_probes"] += 1
        elif name.startswith(QUARANTINE_PREFIX + "/"):
            ignored["quarantined"] += 1
        elif kept or (tstem is not None and _retained(scan, loc, name, tstem)):
            ignored["kept_after_move"] += 1
        elif tstem is not None and scan.conn.execute(
                "SELECT 1 FROM rows WHERE storage = ? AND stem = ? LIMIT 1", (loc, tstem)).fetchone():
            ignored["transforms"] += 1
        else:
            orphans.append((None, loc, name, None, size))
    scan.add("orphan", _confirm_orphans(db, orphans))
    facts["ignored"] = ignored
    _dangling(db, scan)


def _confirm_orphans(db: Database, orphans: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Drop candidates a row created after the row scan now names."""
    if not orphans:
        return orphans
    files = db.table("directus_files")
    named: set[tuple[str, str]] = set()
    with db.engine.connect() as conn:
        for start in range(0, len(orphans), 500):
            chunk = orphans[start:start + 500]
            names = list({o[2] for o in chunk} | {"/" + o[2] for o in chunk})
            for storage, fd in conn.execute(sa.select(files.c.storage, files.c.filename_disk)
                                            .where(files.c.filename_disk.in_(names))):
                named.add((storage, normalized(fd)))
    return [o for o in orphans if (o[1], o[2]) not in named]


def check(instance: Instance, *, limit: int = DEFAULT_LIMIT, workers: int = DEFAULT_WORKERS, progress: Progress | None = None,
          state_url: str | None = None) -> dict[str, Any]:
    """The consistency report: counts per kind, up to ``limit`` examples of each, location facts.

    ``ok`` is true when no kind has a problem; ``errors`` lists unusable locations.
    """
    started = time.monotonic()
    with scan_instance(instance, workers=workers, progress=progress, state_url=state_url) as (scan, facts):
        counts = {kind: scan.count(kind) for kind in KINDS}
        problems = {kind: list(scan.problems(kind, limit)) for kind in KINDS}
    return {
        "ok": not any(counts.values()) and not facts["errors"],
        "instance": instance.label,
        "rows": facts["rows"],
        "objects": facts["objects"],
        "locations": facts["locations"],
        "errors": facts["errors"],
        "counts": counts,
        "problems": problems,
        "truncated": {kind: counts[kind] > limit for kind in KINDS},
        "ignored": facts["ignored"],
        "elapsed_s": round(time.monotonic() - started, 3),
    }


# --------------------------------------------------------------------------- repair
class _Sources:
    """Where missing bytes can come from: a bundle, other locations of this instance, another instance."""

    def __init__(self, instance: Instance, bundle_dir: Path | None, locations: list[str], other: Instance | None,
                 wanted: set[str]) -> None:
        self.locations = [open_location(instance.location(name)) for name in locations]
        self.bundle = bundle_dir
        self.index: dict[str, tuple[str, str, int, str]] = {}
        self.manifest: dict[str, Any] = {}
        if bundle_dir is not None:
            self.manifest = read_manifest(bundle_dir)
            for entry in iter_file_index(bundle_dir, self.manifest) if "files" in self.manifest else ():
                if entry[0] in wanted:  # keep only what we need: memory stays bounded by the problems
                    self.index[entry[0]] = (entry[1], entry[2], entry[3], entry[4])
        self.other: dict[str, tuple[Location, str]] = {}
        if other is not None:
            with Database.open(other) as odb:
                files = odb.table("directus_files")
                fid = files.c.id
                ids = sorted(wanted)
                with odb.engine.connect() as conn:
                    for start in range(0, len(ids), 500):
                        for r in conn.execute(sa.select(fid.label("id"), files.c.storage, files.c.filename_disk)
                                              .where(fid.in_(id_values(fid, ids[start:start + 500])))):
                            if r.filename_disk:
                                self.other[str(r.id)] = (open_location(other.location(r.storage)), r.filename_disk)

    def find(self, item: dict[str, Any]) -> tuple[str, Any] | None:
        """``(description, opener)`` of the first source whose size matches the row's ``filesize``."""
        size = item["filesize"]
        entry = self.index.get(item["id"])
        if entry is not None and self.bundle is not None:
            path = member_path(self.bundle, self.manifest, file_member(entry[0], entry[1]), field="files index")
            if path.is_file() and (size is None or path.stat().st_size == size):
                return f"bundle:{entry[0]}/{entry[1]}", lambda: path.open("rb")
        for location in self.locations:
            if location.size(item["filename_disk"]) not in (None,) and (
                    size is None or location.size(item["filename_disk"]) == size):
                return f"location:{location.name}", lambda loc=location: loc.open_read(item["filename_disk"])
        if item["id"] in self.other:
            location, name = self.other[item["id"]]
            if size is None or location.size(name) == size:
                return f"instance:{location.name}/{name}", lambda: location.open_read(name)
        return None


@contextmanager
def _scratch_bundle(bundle: Path, passphrase: str | None) -> Iterator[Path]:
    """:func:`~cairn_migrate.bundle.bundle.open_bundle` with its extraction in a scratch folder (swept when a run is killed)."""
    from ..bundle.bundle import open_bundle
    from ..bundle.workdir import scratch

    with scratch() as workdir, open_bundle(bundle, passphrase=passphrase, workdir=workdir) as bundle_dir:
        yield bundle_dir


def repair(instance: Instance, *, yes: bool = False, bundle: Path | None = None, passphrase: str | None = None,
           from_locations: list[str] | None = None, from_instance: Instance | None = None, orphans: str = "quarantine",
           clear_references: bool = True, workers: int = DEFAULT_WORKERS, limit: int = DEFAULT_LIMIT,
           progress: Progress | None = None, state_url: str | None = None) -> dict[str, Any]:
    """Fix what :func:`check` finds; without ``yes`` only the plan (nothing is written).

    Missing or wrong-sized bytes are re-fetched (size-checked) from a bundle,
    another location or another instance; orphans are moved under
    ``.cairn-quarantine/<UTC time>/`` or deleted; dangling references are set to
    NULL.  Rows without ``filename_disk`` or on unconfigured locations need a
    person and are listed as ``unresolved``.
    """
    from contextlib import nullcontext

    if orphans not in ("quarantine", "delete", "keep"):
        raise MigrateError(f"orphans={orphans!r}: use quarantine, delete or keep")
    progress = progress or NullProgress()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    plan: list[dict[str, Any]] = []
    unresolved: list[dict[str, Any]] = []
    done = {"refetched": 0, "quarantined": 0, "deleted": 0, "references_cleared": 0}
    # An archive is unpacked in this run's scratch folder: a killed repair's extraction is swept by the next run.
    opened = _scratch_bundle(bundle, passphrase) if bundle is not None else nullcontext(None)
    with opened as bundle_dir, scan_instance(instance, workers=workers, progress=progress, state_url=state_url) as (scan, facts):
        locations = {c.name: open_location(c) for c in instance.locations if c.name not in facts["errors"]}
        broken = [*scan.problems("missing"), *scan.problems("size_mismatch")]
        sources = _Sources(instance, bundle_dir, from_locations or [], from_instance, {b["id"] for b in broken})
        for item in broken:
            found = sources.find(item)
            if found is None:
                unresolved.append({**item, "reason": "no source has these bytes"})
                continue
            plan.append({"action": "refetch", "id": item["id"], "storage": item["storage"],
                         "filename_disk": item["filename_disk"], "source": found[0]})
            if yes:
                target = locations[item["storage"]]
                with found[1]() as reader, target.open_write(item["filename_disk"]) as writer:
                    while block := reader.read(1024 * 1024):
                        writer.write(block)
                if item["filesize"] is not None and target.size(item["filename_disk"]) != item["filesize"]:
                    unresolved.append({**item, "reason": "re-fetched bytes do not have the row's size"})
                else:
                    done["refetched"] += 1
        if orphans != "keep":
            for item in scan.problems("orphan"):
                if item["storage"] in (from_locations or []):
                    continue  # a location we re-fetch from is a backup: never touch it
                plan.append({"action": orphans, "storage": item["storage"], "name": item["name"]})
                if yes:
                    location = locations[item["storage"]]
                    if orphans == "quarantine":
                        location.copy_to(item["name"], location, f"{QUARANTINE_PREFIX}/{stamp}/{item['name']}")
                    location.delete(item["name"])
                    done["quarantined" if orphans == "quarantine" else "deleted"] += 1
        if clear_references:
            refs = list(scan.problems("dangling_reference"))
            plan.extend({"action": "clear_reference", **ref} for ref in refs)
            if yes and refs:
                done["references_cleared"] = _clear_references(instance, refs)
        for kind in ("no_filename_disk", "unconfigured_location"):
            unresolved.extend({**item, "reason": kind} for item in scan.problems(kind))
    return {"dry_run": not yes, "plan": plan[:limit], "planned": len(plan), "done": done,
            "unresolved": unresolved[:limit], "unresolved_count": len(unresolved), "errors": facts["errors"]}


def _clear_references(instance: Instance, refs: list[dict[str, Any]]) -> int:
    cleared = 0
    with Database.open(instance) as db, db.engine.begin() as conn:
        for ref in refs:
            table = db.table(ref["table"])
            pk = list(table.primary_key.columns)
            key = pk[0] if len(pk) == 1 else table.c[ref["column"]]
            column = table.c[ref["column"]]
            cleared += conn.execute(
                table.update().where(sa.cast(key, sa.String(255)) == ref["key"],
                                     sa.cast(column, sa.String(64)) == ref["file_id"]).values({column.name: None})
            ).rowcount
    return cleared


__all__ = ["KINDS", "QUARANTINE_PREFIX", "Scan", "check", "normalized", "repair", "scan_instance", "stem_of"]
