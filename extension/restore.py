"""``import``: restore a full bundle into a target instance, on any vendor.

Order of work, and why:

1. Validate the whole bundle (checksums, layout) and the target (database
   reachable and empty unless ``--replace``/``--resume``; every storage
   location the bundle's files name configured there, after
   ``--storage-map``) *before any write*.
2. ``--replace``: write a safety bundle of the target, then drop its tables.
3. Create each table with the target vendor's native types and load its rows
   in foreign-key order, one transaction per table (PostgreSQL via ``COPY``;
   MySQL/SQLite via batched inserts with FK checks off, then checked).
4. Write the file bytes verbatim to the target's locations, checking sizes and
   SHA-256 against the manifest.
5. Add PostgreSQL foreign keys, reset sequences, check foreign keys.

A table is committed whole or not at all, so an interrupted import is resumed
(``--resume``) by skipping tables whose row count is already right and files
already present with the right size.  A failed import into a target that was
empty is rolled back by dropping what it created.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from . import native as native_tools
from .bundle import file_member, iter_file_index, member_path, open_bundle
from .database import Database, open_engine
from .errors import ConfigError, MigrateError
from .instance import DatabaseConfig, Instance
from .progress import NullProgress, Progress
from .storage import Location, open_location
from .table_loader import TableLoader, database_rows, jsonl_rows
from .table_schema import TableDef

log = logging.getLogger(__name__)

class ImportFailed(MigrateError):
    """The import stopped; the message says what was left and how to continue."""

    exit_code = 3
    http_status = 500
    code = "import_failed"


@dataclass
class ImportPlan:
    """What an import will do, computed without writing anything."""

    target: str
    vendor: str
    tables: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)
    storage_map: dict[str, str] = field(default_factory=dict)
    replace: bool = False
    resume: bool = False
    existing_tables: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(t["action"] != "skip" for t in self.tables) and not self.files.get("to_copy")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "vendor": self.vendor,
            "replace": self.replace,
            "resume": self.resume,
            "existing_tables": self.existing_tables,
            "storage_map": self.storage_map,
            "tables": self.tables,
            "files": self.files,
            "warnings": self.warnings,
            "changes": not self.empty,
        }


def parse_storage_map(pairs: Sequence[str]) -> dict[str, str]:
    """``["local=s3"]`` → ``{"local": "s3"}``.

    :raises ConfigError: on an entry without ``=``.
    """
    mapping = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ConfigError(f"--storage-map {pair!r} is not OLD=NEW", hint="e.g. --storage-map local=s3")
        mapping[old.strip()] = new.strip()
    return mapping


def _check_locations(
    instance: Instance, used: Sequence[str], storage_map: Mapping[str, str], *, create_local: bool = False
) -> dict[str, Location]:
    """Every location the bundle's file rows name must exist on the target (after the map).

    A missing local root folder is created (``create_local``) or, for a plan,
    accepted: a new instance's upload folder often does not exist yet.
    """
    configured = {loc.name for loc in instance.locations}
    unknown = [m for m in storage_map if m not in used]
    if unknown:
        raise ConfigError(
            f"--storage-map names {', '.join(unknown)}, which no file row of the bundle uses "
            f"(used: {', '.join(used) or 'none'})",
            hint="map a location the bundle uses",
        )
    missing = sorted({storage_map.get(name, name) for name in used} - configured)
    if missing:
        raise ConfigError(
            f"The bundle's files are in location(s) {', '.join(missing)}, which the target does not configure "
            f"(STORAGE_LOCATIONS={','.join(sorted(configured))})",
            hint="configure them on the target, or remap with --storage-map OLD=NEW",
        )
    locations = {}
    for name in sorted({storage_map.get(n, n) for n in used}):
        config = instance.location(name)
        location = open_location(config)
        if config.driver == "local" and not Path(str(config.options["root"])).exists():
            if not create_local:
                locations[name] = location
                continue
            Path(str(config.options["root"])).mkdir(parents=True)
        location.check()
        locations[name] = location
    return locations


def _existing_counts(db: Database, names: Sequence[str]) -> dict[str, int]:
    present = set(db.table_names())
    return db.row_counts([n for n in names if n in present])


def plan_import(
    instance: Instance,
    bundle_dir: Path,
    manifest: Mapping[str, Any],
    *,
    replace: bool = False,
    resume: bool = False,
    storage_map: Mapping[str, str] | None = None,
) -> ImportPlan:
    """Decide what an import of ``bundle_dir`` into ``instance`` would do; writes nothing.

    :raises ConfigError: the target is not empty (without ``replace``/``resume``),
        or a location the bundle's files need is not configured.
    """
    storage_map = dict(storage_map or {})
    if replace and resume:
        raise ConfigError("--replace and --resume cannot be combined", hint="use one of them")
    _check_locations(instance, manifest.get("storage_locations_used", []), storage_map)
    new_sqlite_file = instance.database.vendor == "sqlite" and not Path(instance.database.url.database or "").exists()
    with Database.open(instance, create=new_sqlite_file) as db:
        existing = db.table_names()
        plan = ImportPlan(
            target=instance.label,
            vendor=db.vendor,
            storage_map=storage_map,
            replace=replace,
            resume=resume,
            existing_tables=existing,
        )
        if existing and not (replace or resume):
            raise ConfigError(
                f"The target database {instance.database.display_url} is not empty ({len(existing)} tables)",
                hint="import into an empty database, or pass --replace (a safety bundle of the target is "
                "written first), or --resume to finish an interrupted import of this bundle",
            )
        counts = _existing_counts(db, manifest["load_order"]) if resume else {}
    if new_sqlite_file:  # planning writes nothing: not even an empty database file
        Path(instance.database.url.database or "").unlink(missing_ok=True)
    native = manifest.get("data") == "native"
    if native:
        native_tools.require_same_vendor(manifest, plan.vendor)
    source_vendor = manifest["source"]["vendor"]
    if native and manifest["native"]["vendor"] == plan.vendor:
        plan.warnings.append(f"fast path: restoring the native {plan.vendor} dump with the vendor's own tool")
    if source_vendor != plan.vendor:
        plan.warnings.append(f"cross-vendor import: {source_vendor} → {plan.vendor}; types are mapped natively")
    for name in manifest["load_order"]:
        expected = manifest["tables"][name]["rows"]
        if native and manifest["native"]["vendor"] == plan.vendor:
            action = "restore"
        elif resume and counts.get(name) == expected:
            action = "skip"
        elif resume and name in counts:
            action = "reload"
        else:
            action = "create"
        plan.tables.append({"table": name, "rows": expected, "action": action})
    files = manifest["files"]
    plan.files = {"count": files["count"], "bytes": files["bytes"], "to_copy": files["count"], "missing_in_bundle": len(files["missing"])}
    return plan


# ---------------------------------------------------------------------------
# File bytes
# ---------------------------------------------------------------------------


def _restore_files(
    bundle_dir: Path,
    manifest: Mapping[str, Any],
    locations: Mapping[str, Location],
    storage_map: Mapping[str, str],
    *,
    resume: bool,
    workers: int,
    progress: Progress,
    written: list[tuple[str, str]],
) -> dict[str, Any]:
    """Copy every file of the bundle to its (mapped) location; verify size and SHA-256 while writing."""
    import hashlib

    summary = {"copied": 0, "skipped": 0, "bytes": 0}

    def copy(entry: list[Any]) -> tuple[str, int]:
        _id, storage, filename_disk, size, sha = entry
        location = locations[storage_map.get(storage, storage)]
        if resume and location.size(filename_disk) == size and location.sha256(filename_disk) == sha:
            return "skipped", 0
        source = member_path(bundle_dir, manifest, file_member(storage, filename_disk), field="files index")
        digest = hashlib.sha256()
        existed = location.exists(filename_disk)
        with source.open("rb") as src, location.open_write(filename_disk) as dst:
            while block := src.read(1024 * 1024):
                digest.update(block)
                dst.write(block)
        if not existed:
            written.append((location.name, filename_disk))
        if digest.hexdigest() != sha:
            if not existed:  # not ours to keep, even under --resume (which skips the roll-back)
                location.delete(filename_disk)
            raise ImportFailed(f"{filename_disk}: bytes in the bundle do not match the manifest's sha256")
        return "copied", size

    with ThreadPoolExecutor(max_workers=workers) as pool:
        batch: list[list[Any]] = []
        for entry in iter_file_index(bundle_dir, manifest):
            batch.append(entry)
            if len(batch) >= workers * 8:
                _account(pool.map(copy, batch), summary, progress)
                batch = []
        if batch:
            _account(pool.map(copy, batch), summary, progress)
    return summary


def _account(results: Iterator[tuple[str, int]], summary: dict[str, Any], progress: Progress) -> None:
    for outcome, size in results:
        summary[outcome] += 1
        summary["bytes"] += size
        progress.advance(items=1, bytes=size)
    progress.check_cancelled()


# ---------------------------------------------------------------------------
# The operation
# ---------------------------------------------------------------------------


def import_bundle(
    instance: Instance,
    bundle: Path,
    *,
    dry_run: bool = False,
    replace: bool = False,
    resume: bool = False,
    storage_map: Mapping[str, str] | None = None,
    passphrase: str | None = None,
    key_file: Path | None = None,
    safety_dir: Path | None = None,
    workers: int = 8,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Restore ``bundle`` into ``instance`` (see the module docstring for the order of work).

    :returns: ``{"plan": ..., "applied": bool, ...}``; with ``dry_run`` only the plan.
    :raises ConfigError: bad bundle, non-empty target, unconfigured location (nothing written).
    :raises ImportFailed: a write failed (what was created is dropped, unless ``resume`` applies).
    """
    progress = progress or NullProgress()
    storage_map = dict(storage_map or {})
    started = time.monotonic()
    with open_bundle(Path(bundle), passphrase=passphrase, key_file=key_file) as bundle_dir:
        manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("kind") != "full":
            raise ConfigError(f"{bundle} is not a full-instance bundle (kind {manifest.get('kind')!r})")
        plan = plan_import(instance, bundle_dir, manifest, replace=replace, resume=resume, storage_map=storage_map)
        if dry_run:
            return {"plan": plan.to_dict(), "applied": False, "dry_run": True}
        safety = None
        if replace and plan.existing_tables:
            safety = _safety_bundle(instance, safety_dir, progress)
        locations = _check_locations(instance, manifest.get("storage_locations_used", []), storage_map, create_local=True)
        schema = member_path(bundle_dir, manifest, "schema/tables.json", field="schema")
        tables = [TableDef.from_dict(t) for t in json.loads(schema.read_text())]
        by_name = {t.name: t for t in tables}
        ordered = [by_name[name] for name in manifest["load_order"]]
        created: list[str] = []
        written: list[tuple[str, str]] = []
        target_was_empty = not plan.existing_tables
        with Database.open(instance, create=True) as db, contextlib.ExitStack() as stack:
            fast = manifest.get("data") == "native" and manifest["native"]["vendor"] == db.vendor
            source_db = None
            if manifest.get("data") == "native" and not fast:  # a native SQLite bundle into another vendor
                member = member_path(bundle_dir, manifest, manifest["native"]["member"], field="native.member")
                config = DatabaseConfig("sqlite3", "sqlite", sa.engine.URL.create("sqlite", database=str(member)))
                source_db = stack.enter_context(Database(open_engine(config), config))
            loader = TableLoader(db.engine, db.vendor, ordered)
            try:
                if replace or (resume and fast):
                    for name in reversed(_drop_order(db, db.table_names() if resume else plan.existing_tables)):
                        loader.drop(name)
                total = sum(t["rows"] for t in plan.tables if t["action"] != "skip")
                progress.progress(items_done=0, items_total=total)
                loaded = 0
                if fast:
                    progress.log(f"restoring the native {db.vendor} dump")
                    created.extend(manifest["load_order"])
                    loader.close()
                    dump = member_path(bundle_dir, manifest, manifest["native"]["member"], field="native.member",
                                       directory=True)  # PostgreSQL's directory format: a folder of members
                    native_tools.restore(instance.database, dump)
                    loader = TableLoader(db.engine, db.vendor, ordered)
                    _remap_storage(db, storage_map)
                    loaded = total
                    progress.advance(items=total)
                for step in plan.tables if not fast else []:
                    if step["action"] == "skip":
                        continue
                    name = step["table"]
                    progress.log(f"loading {name} ({step['rows']} rows)")
                    if step["action"] == "create":
                        created.append(name)
                    rows = (database_rows(source_db, by_name[name]) if source_db is not None
                            else jsonl_rows(member_path(bundle_dir, manifest, manifest["tables"][name]["member"],
                                                        field=f"tables.{name}.member")))
                    count = loader.load(name, rows, storage_map, progress, step["action"] == "reload")
                    if count != step["rows"]:
                        raise ImportFailed(f"{name}: loaded {count} rows, the manifest says {step['rows']}")
                    loaded += count
                progress.progress(items_done=0, items_total=manifest["files"]["count"], bytes_done=0, bytes_total=manifest["files"]["bytes"])
                progress.log(f"writing {manifest['files']['count']} files")
                files = _restore_files(
                    bundle_dir, manifest, locations, storage_map, resume=resume, workers=workers,
                    progress=progress, written=written,
                )
                problems = [] if fast else loader.finish()
                if problems:
                    raise ImportFailed("foreign keys broken after loading: " + "; ".join(problems[:5]))
            except BaseException as exc:
                if target_was_empty and not resume and not isinstance(exc, KeyboardInterrupt):
                    _roll_back(loader, created, locations, written)
                loader.close()
                if isinstance(exc, MigrateError):
                    raise
                if isinstance(exc, Exception):
                    raise ImportFailed(
                        f"Import failed: {exc}",
                        hint="the target was left as it was" if target_was_empty and not resume else
                        "run the same import again with --resume to finish it",
                    ) from exc
                raise
            loader.close()
    elapsed = time.monotonic() - started
    return {
        "plan": plan.to_dict(),
        "applied": True,
        "rows": loaded,
        "tables": len([t for t in plan.tables if t["action"] != "skip"]),
        "files": files,
        "safety_bundle": str(safety) if safety else None,
        "seconds": round(elapsed, 3),
        "rows_per_second": round(loaded / elapsed, 1) if elapsed else None,
    }


def _remap_storage(db: Database, storage_map: Mapping[str, str]) -> None:
    """After a native restore: point file rows at their mapped locations."""
    if not storage_map:
        return
    files = db.table("directus_files")
    with db.engine.begin() as conn:
        for old, new in storage_map.items():
            conn.execute(sa.update(files).where(files.c.storage == old).values(storage=new))


def _drop_order(db: Database, names: Sequence[str]) -> list[str]:
    from .table_schema import load_order, reflect_tables

    return load_order(reflect_tables(db.engine, names, db.vendor))


def _roll_back(loader: TableLoader, created: Sequence[str], locations: Mapping[str, Location], written: Sequence[tuple[str, str]]) -> None:
    """Leave an empty target empty again: drop created tables, delete written objects."""
    log.warning("import failed: dropping %d created tables and %d written objects", len(created), len(written))
    try:
        loader.raw.rollback()
    except Exception:  # noqa: BLE001 - best effort on a broken connection
        pass
    for name in reversed(created):
        try:
            loader.drop(name)
        except Exception as exc:  # noqa: BLE001
            log.error("could not drop %s: %s", name, exc)
    for location_name, filename in written:
        try:
            locations[location_name].delete(filename)
        except Exception as exc:  # noqa: BLE001
            log.error("could not delete %s from %s: %s", filename, location_name, exc)


def _safety_bundle(instance: Instance, safety_dir: Path | None, progress: Progress) -> Path:
    """Export the target before ``--replace`` overwrites it."""
    import datetime as dt

    from .export import export_bundle
    from .state import default_state_url

    if safety_dir is None:
        state = default_state_url()
        base = Path(sa.engine.make_url(state).database or ".").parent if state.startswith("sqlite") else Path.cwd()
        safety_dir = base / "safety-bundles"
    safety_dir.mkdir(parents=True, exist_ok=True)
    path = safety_dir / f"before-replace-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    progress.log(f"writing a safety bundle of the target to {path}")
    export_bundle(instance, path)
    return path
