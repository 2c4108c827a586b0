"""``inspect``: what an instance is and whether its parts are all there.

The report answers the questions an operator asks before any migration: which
instance is this (``KEY``, vendor, platform version), what does it hold (system
and user tables with row counts), where are its files (storage locations, how
many ``directus_files`` rows name each), are the bytes really there, and does
the ``.env`` set what CairnCMS needs to start.  It reads only; nothing is
written to the database or the stores.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

from ..bundle import import_marker
from ..instance import target_env
from ..instance.database import CAIRNCMS_SYSTEM_TABLES, Database
from ..errors import MigrateError
from ..instance.instance import Instance
from ..progress import NullProgress, Progress
from ..instance.storage import Location, open_location

log = logging.getLogger(__name__)

#: How many missing objects a report names per location (the counts are always exact).
MISSING_LISTED = 50


def _batches(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


def _open_locations(instance: Instance) -> tuple[dict[str, Location], dict[str, dict[str, Any]]]:
    """Open every configured location; a broken one is reported, not fatal."""
    opened: dict[str, Location] = {}
    reports: dict[str, dict[str, Any]] = {}
    for config in instance.locations:
        report: dict[str, Any] = {"name": config.name, "driver": config.driver}
        try:
            location = open_location(config)
            report.update(location.describe())
            location.check()
        except MigrateError as exc:
            report.update(reachable=False, error=exc.to_dict())
        else:
            report["reachable"] = True
            opened[config.name] = location
        report.update(file_rows=0, bytes=0, present=None, missing=None, missing_files=[])
        reports[config.name] = report
    return opened, reports


def inspect_instance(
    instance: Instance,
    *,
    check_objects: bool = True,
    concurrency: int = 16,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Describe ``instance``: identity, platform, tables, storage and file bytes.

    :param check_objects: also check that every file row's bytes exist (one
        HEAD-like call per row, ``concurrency`` at a time; memory stays flat).
    :param progress: receives file rows checked as items.
    :raises MigrateError: when the database cannot be read at all.
    """
    progress = progress or NullProgress()
    with Database.open(instance) as db:
        progress.log(f"reading {db.config.display_url}")
        platform = db.platform()
        incomplete = import_marker.status(db)
        system = db.system_tables()
        user = db.user_tables()
        counts = db.row_counts(system + user)
        report: dict[str, Any] = {
            "instance": {
                "env_file": str(instance.env_path) if instance.env_path else None,
                "key": instance.key,
                "public_url": instance.public_url,
                "extensions_path": str(instance.extensions_path),
            },
            "database": {
                "client": instance.database.client,
                "vendor": instance.database.vendor,
                "url": instance.database.display_url,
                "server_version": db.server_version(),
            },
            "platform": platform.to_dict(),
            "tables": {
                "system": {name: counts[name] for name in system},
                "user": {name: counts[name] for name in user},
                "system_count": len(system),
                "user_count": len(user),
                "missing_system_tables": sorted(set(CAIRNCMS_SYSTEM_TABLES) - set(system)),
                "extra_system_tables": sorted(set(system) - set(CAIRNCMS_SYSTEM_TABLES)),
            },
            "import": incomplete,
        }
        locations, storage = _open_locations(instance)
        files = _inspect_files(db, counts.get("directus_files", 0), locations, storage, check_objects, concurrency, progress)
    report["storage"] = list(storage.values())
    report["files"] = files
    # Problems of the .env the database cannot show: CairnCMS does not start without KEY and SECRET.
    report["warnings"] = [warning for warning in [target_env.missing_to_start(instance)] if warning]
    report["ok"] = _is_ok(report)
    return report


def _inspect_files(
    db: Database,
    total: int,
    locations: Mapping[str, Location],
    storage: dict[str, dict[str, Any]],
    check_objects: bool,
    concurrency: int,
    progress: Progress,
) -> dict[str, Any]:
    files: dict[str, Any] = {"rows": total, "unknown_locations": {}, "without_filename_disk": 0}
    if "directus_files" not in db.table_names():
        return files
    unknown: Counter[str] = Counter()
    for report in storage.values():
        if report["reachable"] and check_objects:
            report.update(present=0, missing=0)
    progress.progress(items_done=0, items_total=total)
    rows = db.stream_rows("directus_files", columns=["id", "storage", "filename_disk", "filesize"], order_by=["id"])
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for batch in _batches(rows, concurrency * 16):
            progress.check_cancelled()
            to_check = []
            for row in batch:
                name = row["storage"]
                report = storage.get(name)
                if report is None:
                    unknown[name] += 1
                    continue
                report["file_rows"] += 1
                report["bytes"] += int(row["filesize"] or 0)
                if not row["filename_disk"]:
                    files["without_filename_disk"] += 1
                elif check_objects and name in locations:
                    to_check.append((name, row["filename_disk"]))
            exists = pool.map(lambda item: locations[item[0]].exists(item[1]), to_check)
            for (name, filename), present in zip(to_check, exists):
                report = storage[name]
                if present:
                    report["present"] += 1
                else:
                    report["missing"] += 1
                    if len(report["missing_files"]) < MISSING_LISTED:
                        report["missing_files"].append(filename)
            progress.advance(items=len(batch))
    files["unknown_locations"] = dict(unknown)
    return files


def _is_ok(report: Mapping[str, Any]) -> bool:
    storage_ok = all(loc["reachable"] and not loc.get("missing") for loc in report["storage"])
    files = report["files"]
    return bool(
        report["import"] is None  # an interrupted import: the rows may be there, FKs and sequences not
        and not report["warnings"]
        and storage_ok
        and not files["unknown_locations"]
        and not files["without_filename_disk"]
        and not report["tables"]["missing_system_tables"]
    )
