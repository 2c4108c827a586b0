"""``promote``'s bundle sources: a bundle written by ``export`` (a directory, or a ``.tar``/``.tar.gz`` archive).

A bundle is untrusted input, so it is opened only through :func:`~cairn_migrate.bundle.bundle.open_bundle`
(the container rules, no member outside the bundle, an archive unpacked into a private scratch folder that is
removed afterwards); an encrypted one (``.enc``) is refused, promote takes no passphrase.  Promote reads its ``snapshot/`` (the schema snapshot and ``config/``, in CairnCMS's own
formats) and, for the extras, the system tables' rows it carries (``tables/directus_*.jsonl`` of a neutral
bundle, named by the manifest).  A native bundle (``export --native``) carries its rows in a vendor dump, so
its extras are reported as not available from this source.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle.bundle import is_archive_path, member_path, open_bundle
from ..bundle.workdir import scratch
from ..errors import ConfigError

#: The system tables the extras are read from (``rows_of_database``'s kinds).
EXTRA_TABLES = ("flows", "operations", "dashboards", "panels", "presets", "roles", "settings")


@dataclass
class BundleSource:
    """What promote reads of a bundle: its snapshots, its extras' rows (None: not carried) and its identity."""

    schema: dict[str, Any] | None
    config: dict[str, Any] | None
    rows: dict[str, Any] | None
    scope: str
    rows_missing: str | None = None
    legacy_scope: str | None = None  # its identity in the ID map before canonical origins (its rows migrate)


def is_bundle(path: Path) -> bool:
    """An archive of ours by its name, or a directory holding a bundle's ``manifest.json``."""
    return (path.is_file() and is_archive_path(path)) or (path.is_dir() and (path / "manifest.json").is_file())


def read_bundle(path: Path, only: list[str]) -> BundleSource:
    """Open ``path`` safely and read what ``only`` needs; nothing of it stays on disk afterwards."""
    from .promote import _source_of_directory  # the snapshot directory reader (schema file + config/)

    if path.name.endswith(".enc"):
        raise ConfigError(f"The bundle {path} is encrypted: promote reads unencrypted bundles only",
                          hint="export the source again without --encrypt, or name it by its URL or .env")
    with scratch() as workdir, open_bundle(path, workdir=workdir) as bundle_dir:
        manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
        snapshot = bundle_dir / "snapshot"
        if not snapshot.is_dir():
            raise ConfigError(f"The bundle {path} holds no snapshot/ (its schema and config snapshots)",
                              hint="export it again with cairn-migrate export --full")
        wanted = [kind for kind in only if kind in ("schema", "config")]
        source = _source_of_directory(snapshot, wanted)
        rows, missing = _extras_rows(bundle_dir, manifest)
        digest = hashlib.sha256((bundle_dir / "manifest.json").read_bytes()).hexdigest()
    key = (manifest.get("source") or {}).get("key")
    public = (manifest.get("source") or {}).get("public_url")
    # The ID map's identity of the bundle's source: the canonical origin of its PUBLIC_URL (the same identity as
    # the instance named by URL or .env), else its KEY (the instance it was exported from), else the bundle.
    from .promote import is_url
    from .promote_extras import url_scope

    legacy = hashlib.sha256(f"key:{key}".encode()).hexdigest()[:32] if key else digest[:32]
    scope = url_scope(public) if isinstance(public, str) and is_url(public) else legacy
    return BundleSource(source.schema, source.config, rows, scope, missing, legacy)


def _extras_rows(bundle_dir: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The extras' rows as ``rows_of_database`` gives them, or None and why they are not available."""
    from .promote_extras import _decoded

    if manifest.get("data") == "native":
        return None, "the bundle is a native dump (export --native): its rows are not readable without restoring it"
    tables = manifest.get("tables") or {}
    if any(f"directus_{kind}" not in tables for kind in EXTRA_TABLES):
        return None, "the bundle carries no flows, dashboards, presets or settings tables"
    definitions = {t["name"]: [c["name"] for c in t["columns"]] for t in json.loads(
        member_path(bundle_dir, manifest, "schema/tables.json", field="schema").read_text(encoding="utf-8"))}
    rows: dict[str, Any] = {}
    for kind in EXTRA_TABLES:
        name = f"directus_{kind}"
        entry = tables[name]
        columns = definitions[name]
        member = member_path(bundle_dir, manifest, entry.get("member"), field=f"tables.{name}.member")
        with open(member, encoding="utf-8") as lines:
            rows[kind] = [_decoded(dict(zip(columns, json.loads(line)))) for line in lines if line.strip()]
    rows["settings"] = rows["settings"][0] if rows["settings"] else {}
    return rows, None
