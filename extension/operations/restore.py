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

From its first write to its last step the target holds the marker table
``cairn_migrate_import`` (:mod:`cairn_migrate.bundle.import_marker`): the import, its
bundle, the step reached and a fingerprint of every table already committed.
``--resume`` continues only the import that marker records, of the same
bundle, while every fingerprinted table is unchanged; it reloads only the table
that was being written and re-checks the files.  Anything else is refused
before any write, so a resume never deletes a row it did not write.  A failed
import into a target that was empty is rolled back by dropping what it
created, the marker, a new SQLite file and the upload folders it made included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..bundle import import_marker
from ..bundle import native as native_tools
from ..instance import target_env
from ..bundle.bundle import file_member, is_archive_path, iter_file_index, member_path, open_bundle, sha256_file
from ..instance.database import Database, open_engine
from ..bundle.drift import field_flags
from ..errors import ConfigError, Interrupted, InvalidInput, MigrateError
from ..instance.instance import DatabaseConfig, Instance
from ..progress import NullProgress, Progress
from ..instance.storage import Location, open_location
from ..bundle.table_loader import TableLoader, database_rows, jsonl_rows
from ..bundle.table_schema import TableDef
from ..bundle.workdir import scratch
from ..bundle.values import stored_types

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
    bundle_id: str = ""
    marker: import_marker.Marker | None = None
    #: Per column, what the target vendor changes or refuses (:func:`cairn_migrate.bundle.drift.plan_drift`).
    drift: list[dict[str, Any]] = field(default_factory=list)

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
            "bundle_id": self.bundle_id,
            "resuming": self.marker.status() if self.marker else None,
            "storage_map": self.storage_map,
            "tables": self.tables,
            "files": self.files,
            "warnings": self.warnings,
            "drift": self.drift,
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
    instance: Instance, used: Sequence[str], storage_map: Mapping[str, str], *, create_local: bool = False,
    created: list[Path] | None = None,
) -> dict[str, Location]:
    """Every location the bundle's file rows name must exist on the target (after the map).

    A missing local root folder is created (``create_local``; the topmost
    folder made is appended to ``created``, so a rollback can remove it) or,
    for a plan, accepted: a new instance's upload folder often does not exist yet.
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
            root = Path(str(config.options["root"]))
            topmost = next(p for p in reversed([root, *root.parents]) if not p.exists())
            root.mkdir(parents=True)
            if created is not None:
                created.append(topmost)
        location.check()
        locations[name] = location
    return locations


def _check_resumable(db: Database, marker: import_marker.Marker | None, bundle_id: str, existing: Sequence[str],
                     manifest: Mapping[str, Any]) -> None:
    """``--resume`` continues only the import the target's marker records, into a target unchanged since.

    :raises ConfigError: no marker, another bundle, a fingerprinted table
        changed, a table the import did not write, or rows it did not write in
        a table it was writing; nothing is touched.
    """
    where = db.config.display_url
    if marker is None:
        raise ConfigError(
            f"--resume: the target {where} holds no interrupted import (no {import_marker.TABLE} table)",
            hint="import into an empty database without --resume, or pass --replace to overwrite the target "
            "(a safety bundle of it is written first)",
        )
    if marker.bundle_id and marker.bundle_id != bundle_id:
        raise ConfigError(
            f"--resume: the interrupted import in {where} is of another bundle "
            f"({marker.bundle_id[:12]}, this one is {bundle_id[:12]})",
            hint="resume with the bundle of the interrupted import",
        )
    changed = import_marker.changed_tables(db, marker)
    if changed:
        raise ConfigError(
            f"--resume: the target changed since the import was interrupted: {import_marker.describe(changed)}",
            hint=_CHANGED_FIX,
        )
    unproven = set()  # tables the resume drops and reloads although no fingerprint of them was recorded
    if marker.step == "restore" or not marker.bundle_id:
        unproven = set(manifest["load_order"])  # a native restore (or an import killed at its first write) made them all
    elif marker.step != "replace" and marker.current_table:
        unproven = {marker.current_table}
    unproven = (unproven & set(existing)) - set(marker.tables)
    foreign = sorted(set(existing) - set(marker.tables) - unproven - {import_marker.TABLE})
    if foreign:
        raise ConfigError(
            f"--resume: the target has tables the interrupted import did not write: {', '.join(foreign[:5])}",
            hint=_CHANGED_FIX,
        )
    _check_unproven(db, sorted(unproven), _native_fingerprints(manifest, db.vendor))


_CHANGED_FIX = ("nothing was changed; import into an empty database, or pass --replace (a safety bundle of the "
                "target is written first)")


def _native_fingerprints(manifest: Mapping[str, Any], vendor: str) -> dict[str, str]:
    """What each table holds once the bundle's native dump is restored, as :func:`import_marker.fingerprints` says it.

    Only a PostgreSQL or MariaDB dump restored on its own vendor: the checksums
    are that vendor's own (SQLite records its fingerprints before the restore).
    """
    native = manifest.get("native") or {}
    if manifest.get("data") != "native" or native.get("vendor") != vendor or vendor == "sqlite":
        return {}
    return {name: f"{value['rows']}:{value['checksum']}" for name, value in native.get("checksums", {}).items()}


def _check_unproven(db: Database, names: Sequence[str], restored: Mapping[str, str]) -> None:
    """A table the interrupted import was writing is dropped by a resume only while it holds no row it did not write.

    Its load is one transaction, so until its fingerprint is recorded it held
    nothing of ours: it must be empty, or, after a native restore, hold exactly
    the bundle's rows (the restore's own result).  Anything else was written by
    someone else (the instance, an orphaned restore tool finishing later).

    :raises ConfigError: naming the tables and their row counts; nothing is touched.
    """
    now = import_marker.fingerprints(db, names)
    foreign = {name: value for name, value in now.items() if not value.startswith("0:") and restored.get(name) != value}
    if foreign:
        listed = ", ".join(f"{name} ({import_marker.rows_of(value)})" for name, value in sorted(foreign.items()))
        raise ConfigError(
            f"--resume: rows the interrupted import did not write appeared in tables it was writing: {listed}",
            hint=_CHANGED_FIX,
        )


def _new_sqlite_file(instance: Instance) -> bool:
    """Is the target a SQLite file that does not exist yet (the import creates it)?"""
    return instance.database.vendor == "sqlite" and not Path(instance.database.url.database or "").exists()


@contextlib.contextmanager
def _planning_database(instance: Instance) -> Iterator[Database]:
    """The target's database for planning: planning writes nothing, not even an empty SQLite file (also on refusal)."""
    new_sqlite_file = _new_sqlite_file(instance)
    try:
        with Database.open(instance, create=new_sqlite_file) as db:
            yield db
    finally:
        if new_sqlite_file:
            Path(instance.database.url.database or "").unlink(missing_ok=True)


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
    with _planning_database(instance) as db:
        existing = db.table_names()
        marker = import_marker.read(db) if import_marker.TABLE in existing else None
        plan = ImportPlan(
            target=instance.label,
            vendor=db.vendor,
            storage_map=storage_map,
            replace=replace,
            resume=resume,
            existing_tables=existing,
            bundle_id=sha256_file(bundle_dir / "manifest.json"),
        )
        if resume:
            _check_resumable(db, marker, plan.bundle_id, existing, manifest)
            plan.marker = marker
        elif existing and not replace:
            interrupted = f"; it holds an interrupted import (step {marker.step})" if marker else ""
            raise ConfigError(
                f"The target database {instance.database.display_url} is not empty ({len(existing)} tables{interrupted})",
                hint="import into an empty database, or pass --replace (a safety bundle of the target is "
                "written first), or --resume to finish an interrupted import of this bundle",
            )
        json_normalised = db.vendor == "mysql" and not getattr(db.engine.dialect, "is_mariadb", False)
    native = manifest.get("data") == "native"
    if native:
        native_tools.require_same_vendor(manifest, plan.vendor)
    source_vendor = manifest["source"]["vendor"]
    if native and manifest["native"]["vendor"] == plan.vendor:
        plan.warnings.append(f"fast path: restoring the native {plan.vendor} dump with the vendor's own tool")
    if source_vendor != plan.vendor:
        plan.warnings.append(f"cross-vendor import: {source_vendor} → {plan.vendor}; types are mapped natively")
    env_problem = target_env.missing_for_bundle(instance, manifest, storage_map)
    if env_problem:
        plan.warnings.append(target_env.describe(env_problem))
    if manifest.get("incomplete"):  # a --replace safety bundle of a target an import had left unfinished
        plan.warnings.append(f"this bundle captured an incomplete target (an import interrupted at step "
                             f"{manifest['incomplete'].get('step')}): the import restores that incomplete state")
    replacing = plan.marker is not None and plan.marker.step == "replace"  # its old tables are dropped first
    done = plan.marker.tables if plan.marker and not replacing else {}
    for name in manifest["load_order"]:
        expected = manifest["tables"][name]["rows"]
        if name in done:
            action = "skip"  # committed by the interrupted import and unchanged since
        elif resume and name in existing and not replacing:
            action = "reload"  # the table the interrupted import was writing (or its native restore)
        elif native and manifest["native"]["vendor"] == plan.vendor:
            action = "restore"
        else:
            action = "create"
        plan.tables.append({"table": name, "rows": expected, "action": action})
    if plan.marker and plan.marker.step == "restore":
        plan.warnings.append("the interrupted native restore is run again: the tables it made are dropped first")
    files = manifest["files"]
    plan.files = {"count": files["count"], "bytes": files["bytes"], "to_copy": files["count"], "missing_in_bundle": len(files["missing"])}
    plan.drift = _type_drift(bundle_dir, manifest, plan.vendor, json_normalised)
    return plan


def _type_drift(bundle_dir: Path, manifest: Mapping[str, Any], vendor: str, json_normalised: bool) -> list[dict[str, Any]]:
    """The plan's type-drift report; a warning names values the target would refuse."""
    from ..bundle.drift import plan_drift

    definitions = {t["name"]: TableDef.from_dict(t) for t in json.loads((bundle_dir / "schema" / "tables.json").read_text())}
    return plan_drift(bundle_dir, manifest, [definitions[name] for name in manifest["load_order"]], vendor,
                      json_normalised=json_normalised)


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
    safety_bundle: Path | None = None,
    workers: int = 8,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Restore ``bundle`` into ``instance`` (see the module docstring for the order of work).

    :param safety_bundle: where ``replace`` writes the bundle of the old target (a directory or a
        ``.tar``/``.tar.gz`` name); default: a new one under ``safety-bundles/`` beside the state store.
    :returns: ``{"plan": ..., "applied": bool, ...}``; with ``dry_run`` only the plan.
    :raises ConfigError: bad bundle, non-empty target, unconfigured location (nothing written).
    :raises ImportFailed: a write failed (what was created is dropped, unless ``resume`` applies).
    """
    progress = progress or NullProgress()
    storage_map = dict(storage_map or {})
    started = time.monotonic()
    _check_safety_bundle(safety_bundle, replace)
    with scratch() as workdir, open_bundle(Path(bundle), passphrase=passphrase, key_file=key_file,
                                          workdir=workdir) as bundle_dir:
        manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("kind") != "full":
            raise ConfigError(f"{bundle} is not a full-instance bundle (kind {manifest.get('kind')!r})")
        plan = plan_import(instance, bundle_dir, manifest, replace=replace, resume=resume, storage_map=storage_map)
        if dry_run:
            return {"plan": plan.to_dict(), "applied": False, "dry_run": True}
        _refuse_refused(plan)
        safety, saved = None, {}
        if replace and plan.existing_tables:
            saved = _old_fingerprints(instance)  # before the safety bundle's snapshot: any later write shows
            safety = _safety_bundle(instance, safety_bundle, progress)
        new_sqlite_file = _new_sqlite_file(instance)
        created_dirs: list[Path] = []
        locations = _check_locations(instance, manifest.get("storage_locations_used", []), storage_map, create_local=True,
                                     created=created_dirs)
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
            pristine: Path | None = None  # a native SQLite bundle's database, checked, in scratch
            if manifest.get("data") == "native" and not fast:  # a native SQLite bundle into another vendor
                member = _checked_sqlite(member_path(bundle_dir, manifest, manifest["native"]["member"],
                                                     field="native.member"), workdir, manifest)
                config = DatabaseConfig("sqlite3", "sqlite", sa.engine.URL.create("sqlite", database=str(member)))
                source_db = stack.enter_context(Database(open_engine(config), config))
            loader = TableLoader(db.engine, db.vendor, ordered, sqlite_stored=stored_types(manifest),
                                 field_flags=field_flags(ordered, manifest["source"]["vendor"], db.vendor))
            try:
                if plan.marker is None:
                    created.append(import_marker.TABLE)
                marker = plan.marker
                if replace or marker is None or not marker.bundle_id:  # a new import, or one killed before its marker row
                    # --replace: written before its first DROP, so a kill from there on leaves the target marked.
                    marker = import_marker.begin(db, plan.bundle_id, replacing=saved)
                    if saved:
                        _refuse_changed_since_saved(db, marker, plan.marker)
                if marker.step == "replace":  # the old tables are in the safety bundle, unchanged since (checked)
                    for name in reversed(_drop_order(db, _old_tables(db))):
                        loader.drop(name)
                    import_marker.replaced(db, marker)
                total = sum(t["rows"] for t in plan.tables if t["action"] != "skip")
                progress.progress(items_done=0, items_total=total)
                loaded = 0
                if fast and marker.step in ("tables", "restore"):
                    import_marker.set_step(db, marker, "restore")
                    progress.log(f"restoring the native {db.vendor} dump")
                    for name in reversed(_drop_order(db, [t["table"] for t in plan.tables if t["action"] == "reload"])):
                        loader.drop(name)
                    created.extend(manifest["load_order"])
                    loader.close()
                    dump = member_path(bundle_dir, manifest, manifest["native"]["member"], field="native.member",
                                       directory=True)  # PostgreSQL's directory format: a folder of members
                    if db.vendor == "sqlite":  # the backup replaces the whole file: restore a copy holding the marker
                        pristine = _checked_sqlite(dump, workdir, manifest)
                        dump = _staged_sqlite(pristine, workdir, marker, storage_map, manifest["load_order"])
                    native_tools.restore(instance.database, dump)
                    loader = TableLoader(db.engine, db.vendor, ordered)
                    if db.vendor != "sqlite":
                        _remap_storage(db, storage_map)
                    import_marker.tables_done(db, marker, manifest["load_order"])
                    loaded = total
                    progress.advance(items=total)
                for step in plan.tables if not fast else []:
                    if step["action"] == "skip":
                        continue
                    name = step["table"]
                    import_marker.start_table(db, marker, name)
                    progress.log(f"loading {name} ({step['rows']} rows)")
                    if step["action"] == "reload":  # half-written by the interrupted import: ours to redo
                        loader.drop(name)
                    created.append(name)
                    rows = (database_rows(source_db, by_name[name]) if source_db is not None
                            else jsonl_rows(member_path(bundle_dir, manifest, manifest["tables"][name]["member"],
                                                        field=f"tables.{name}.member")))
                    count = loader.load(name, rows, storage_map, progress, False)
                    if count != step["rows"]:
                        raise ImportFailed(f"{name}: loaded {count} rows, the manifest says {step['rows']}")
                    import_marker.table_done(db, marker, name)
                    loaded += count
                files = {"copied": 0, "skipped": manifest["files"]["count"], "bytes": 0}
                if marker.step != "constraints":
                    import_marker.set_step(db, marker, "files")
                    progress.progress(items_done=0, items_total=manifest["files"]["count"], bytes_done=0, bytes_total=manifest["files"]["bytes"])
                    progress.log(f"writing {manifest['files']['count']} files")
                    files = _restore_files(
                        bundle_dir, manifest, locations, storage_map, resume=resume, workers=workers,
                        progress=progress, written=written,
                    )
                    import_marker.set_step(db, marker, "constraints")
                progress.log("adding foreign keys and sequences, checking foreign keys")
                problems = [] if fast else loader.finish()
                if problems:
                    raise ImportFailed("foreign keys broken after loading: " + "; ".join(problems[:5]))
                if fast and db.vendor == "sqlite" and not storage_map:
                    loader.close()
                    _finish_sqlite_copy(db, marker, bundle_dir, manifest, workdir, pristine)
                else:
                    import_marker.finish(db)
            except BaseException as exc:
                rolled_back = target_was_empty and not resume and not isinstance(exc, KeyboardInterrupt)
                if rolled_back:
                    _roll_back(loader, created, locations, written)
                loader.close()
                if rolled_back:
                    db.close()
                    _remove_created_paths(instance if new_sqlite_file else None, created_dirs)
                if isinstance(exc, MigrateError):
                    raise
                if isinstance(exc, KeyboardInterrupt):
                    raise Interrupted(f"interrupted: the import into {instance.database.display_url} is incomplete",
                                      hint=import_marker.RESUME_FIX) from exc
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


def _refuse_refused(plan: ImportPlan) -> None:
    """Stop before any write when the target would refuse some values (the import would fail midway)."""
    refused = [d for d in plan.drift if d["effect"] == "refused"]
    if refused:
        where = ", ".join(f"{d['table']}.{d['column']} ({d['values']} {d['kind']})" for d in refused[:5])
        raise ConfigError(
            f"{sum(d['values'] for d in refused)} values of the bundle would be refused by {plan.vendor}: {where}",
            hint="correct them on the source and export again; `import --dry-run` lists them all",
        )


def _remap_storage(db: Database, storage_map: Mapping[str, str]) -> None:
    """After a native restore: point file rows at their mapped locations."""
    if not storage_map:
        return
    files = db.table("directus_files")
    with db.engine.begin() as conn:
        for old, new in storage_map.items():
            conn.execute(sa.update(files).where(files.c.storage == old).values(storage=new))


def _checked_sqlite(member: Path, workdir: Path, manifest: Mapping[str, Any]) -> Path:
    """A copy in this run's scratch folder of a native bundle's SQLite database, checked
    (:func:`~cairn_migrate.bundle.native.check_sqlite_file`: whole, no trigger or view, the manifest's tables).

    The copy, not the member, is what the import reads and restores from: a bundle folder may change
    while the import runs, the private scratch copy does not.
    """
    pristine = workdir / "bundle.db"
    if not pristine.exists():
        shutil.copyfile(member, pristine)  # a file copy (the kernel's): the bundle's file is a whole database, no journal
        try:
            native_tools.check_sqlite_file(pristine, manifest["load_order"], member=str(manifest["native"]["member"]))
        except BaseException:
            pristine.unlink(missing_ok=True)
            raise
    return pristine


def _finish_sqlite_copy(db: Database, marker: import_marker.Marker, bundle_dir: Path, manifest: Mapping[str, Any],
                        workdir: Path, pristine: Path | None) -> None:
    """The last step of a native SQLite import: the bundle's database copied over the target once more, page
    for page, which removes the marker with the rest of the staged copy.

    The target then holds the bundle's pages exactly, so ``verify`` proves it untouched since by one digest of
    the file (:func:`~cairn_migrate.bundle.native.pages_digest`) instead of reading every row.  When a table
    changed since the restore (someone wrote to the target meanwhile), the copy would undo that write: the
    marker is dropped instead, as on the other vendors, and verify compares rows.
    """
    if import_marker.changed_tables(db, marker):
        import_marker.finish(db)
        return
    if pristine is None:  # a resumed import past its restore step: the database is copied and checked again
        member = member_path(bundle_dir, manifest, manifest["native"]["member"], field="native.member")
        pristine = _checked_sqlite(member, workdir, manifest)
    db.engine.dispose()  # no pooled connection holds the file while the copy replaces its pages
    native_tools.restore(db.config, pristine)


def _staged_sqlite(dump: Path, workdir: Path, marker: import_marker.Marker, storage_map: Mapping[str, str],
                   names: Sequence[str]) -> Path:
    """A scratch copy of the bundle's SQLite database, remapped, holding the marker with its tables' fingerprints.

    The backup API then replaces the target's file with it in one step, so
    the target is never without its marker (a kill right after the restore
    still reads "incomplete"), and a resume can prove every table unchanged.
    """
    staged = workdir / "restore.db"
    config = DatabaseConfig("sqlite3", "sqlite", sa.engine.URL.create("sqlite", database=str(staged)))
    shutil.copyfile(dump, staged)  # the checked copy, in scratch: a file copy, no page-by-page read
    with Database(open_engine(config), config) as copy:
        _remap_storage(copy, storage_map)
        marker.tables.update(import_marker.fingerprints(copy, names))
        marker.current_table = None
        import_marker.begin(copy, marker.bundle_id, previous=marker)
    return staged


def _old_fingerprints(instance: Instance) -> dict[str, str]:
    """The fingerprints of the tables ``--replace`` drops, taken before its safety bundle is written."""
    with Database.open(instance) as db:
        return import_marker.fingerprints(db, _old_tables(db))


def _refuse_changed_since_saved(db: Database, marker: import_marker.Marker,
                                previous: import_marker.Marker | None) -> None:
    """Refuse before any DROP when the old tables changed since their fingerprints (taken before the safety bundle).

    A write that landed meanwhile may be in neither the safety bundle nor the
    new target.  The marker just written is undone, so the target is as found.
    """
    changed = import_marker.changed_tables(db, marker)
    if not changed:
        return
    if previous is None:
        import_marker.finish(db)
    else:
        import_marker.begin(db, previous.bundle_id, previous=previous)
    raise ConfigError(
        f"the target changed while its safety bundle was written ({import_marker.describe(changed)}); nothing was "
        "dropped",
        hint="stop its writers (export --freeze holds them) and run again",
    )


def _old_tables(db: Database) -> list[str]:
    """The target's tables ``--replace`` drops: all but the marker."""
    return [name for name in db.table_names() if name != import_marker.TABLE]


def _drop_order(db: Database, names: Sequence[str]) -> list[str]:
    from ..bundle.table_schema import load_order, reflect_tables

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


def _remove_created_paths(new_sqlite: Instance | None, created_dirs: Sequence[Path]) -> None:
    """After a rollback: remove the SQLite file and the upload folders the import made (if still empty)."""
    if new_sqlite is not None:
        database = Path(new_sqlite.database.url.database or "")
        for path in (database, *(database.with_name(database.name + s) for s in ("-journal", "-wal", "-shm"))):
            path.unlink(missing_ok=True)
    for folder in created_dirs:
        for root, _dirs, _files in os.walk(folder, topdown=False):
            with contextlib.suppress(OSError):  # not empty: someone else's bytes, kept
                Path(root).rmdir()


def _check_safety_bundle(path: Path | None, replace: bool) -> None:
    """Refuse a ``--safety-bundle`` that could not be written, before anything is read or written."""
    if path is None:
        return
    if not replace:
        raise InvalidInput("--safety-bundle applies only with --replace", hint="add --replace, or drop --safety-bundle")
    if is_archive_path(path) and path.name.endswith(".enc"):
        raise InvalidInput(f"the safety bundle {path} would be written unencrypted",
                           hint="name it as a directory or .tar/.tar.gz, and keep it somewhere safe")
    if path.exists():
        raise ConfigError(f"the safety bundle {path} already exists",
                          hint="choose a new --safety-bundle path: an existing bundle is never overwritten")


def _safety_bundle(instance: Instance, path: Path | None, progress: Progress) -> Path:
    """Export the target before ``--replace`` overwrites it, to ``path`` or a new default one."""
    import datetime as dt

    from .export import export_bundle
    from ..service.state import default_state_url

    if path is None:
        state = default_state_url()
        base = Path(sa.engine.make_url(state).database or ".").parent if state.startswith("sqlite") else Path.cwd()
        path = base / "safety-bundles" / f"before-replace-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    progress.log(f"writing a safety bundle of the target to {path}")
    export_bundle(instance, path, capture_incomplete=True)  # an interrupted import's target is saved as it is
    return path
