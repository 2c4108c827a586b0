"""A bundle as a content move's source: ``content move --from BUNDLE`` (a directory, ``.tar`` or ``.tar.gz``).

An ``export --full`` bundle is untrusted input: it is opened with the bundle reader that every other
reader uses (:func:`cairn_migrate.bundle.bundle.open_bundle`: members inside the bundle, sizes and
SHA-256s checked, archives unpacked into a private scratch folder).  Its table members are loaded,
with the import's own loader and value codecs, into a scratch SQLite database that the move then
reads like any source (closure, filter, schema precondition, walk): one code path for both sources.
The run-time tables (activity, revisions, sessions) are left out.  A file's bytes are read from the
bundle's member ``files/<storage>/<filename_disk>``, and only when the manifest lists it (never a
path a table row makes up).  A native bundle (the vendor's own dump) is refused: its rows are not
readable one by one.

The ID map of a bundle source is kept per (the bundle's source instance ``KEY`` and vendor, target),
so moves from successive bundles of the same instance update the same target rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from ..bundle.bundle import MANIFEST, file_member, is_archive_path, member_path, open_bundle
from ..bundle.drift import field_flags
from ..bundle.table_loader import TableLoader, jsonl_rows
from ..bundle.table_schema import TableDef
from ..bundle.values import stored_types
from ..bundle.workdir import scratch
from ..errors import ConfigError
from ..instance.database import open_engine
from ..instance.instance import DatabaseConfig, Instance
from ..instance.storage import CHUNK
from ..progress import NullProgress, Progress

#: Tables a move never reads (and may be the largest of a bundle).
SKIPPED = frozenset({"directus_activity", "directus_revisions", "directus_sessions", "directus_notifications"})


def is_bundle_path(value: str) -> bool:
    """Whether ``--from`` names a bundle (a folder holding ``manifest.json``, or a bundle archive) rather than a ``.env``."""
    path = Path(value)
    return (path.is_dir() and (path / MANIFEST).is_file()) or is_archive_path(path)


class BundleFiles:
    """The bytes of one storage location as a bundle holds them (what the walk reads as the source's location)."""

    def __init__(self, bundle_dir: Path, manifest: dict[str, Any], storage: str) -> None:
        self.bundle_dir, self.manifest, self.storage = bundle_dir, manifest, storage
        self.name = f"bundle:{storage}"

    def _path(self, filename_disk: str) -> Path | None:
        member = file_member(self.storage, filename_disk)  # refuses a name that is not one object name
        if member not in (self.manifest.get("members") or {}):
            return None
        return member_path(self.bundle_dir, self.manifest, member, field="files index")

    def size(self, filename_disk: str) -> int | None:
        path = self._path(filename_disk)
        return None if path is None else path.stat().st_size

    def open_read(self, filename_disk: str) -> IO[bytes]:
        path = self._path(filename_disk)
        if path is None:
            raise ConfigError(f"the bundle holds no bytes for {self.storage}:{filename_disk}")
        return path.open("rb")

    def sha256(self, filename_disk: str) -> str:
        """Hex SHA-256 of the member's bytes (the API sink checks the target's stored object against it)."""
        digest = hashlib.sha256()
        with self.open_read(filename_disk) as reader:
            while block := reader.read(CHUNK):
                digest.update(block)
        return digest.hexdigest()


@dataclass
class BundleSource:
    """An opened bundle: the scratch instance to read, where its bytes are, and its identity."""

    instance: Instance
    bundle_dir: Path
    manifest: dict[str, Any]
    tables: list[TableDef]
    label: str

    @property
    def scope(self) -> str:
        """The ID map's source identity: the bundle's source instance (``KEY`` + vendor), not the scratch copy."""
        source = self.manifest.get("source") or {}
        ident = "\n".join(["bundle", str(source.get("key") or ""), str(source.get("vendor") or "")])
        return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:32]

    def schema_snapshot(self) -> dict[str, Any] | None:
        """The schema snapshot the export took on the bundle's instance (the structure the precondition compares:
        the scratch copy spells some types as SQLite does), or None when the bundle has none."""
        from ..bundle.schema_snapshot import load_schema_snapshot

        member = (self.manifest.get("snapshots") or {}).get("schema")
        if not isinstance(member, str):
            return None
        snapshot = load_schema_snapshot(member_path(self.bundle_dir, self.manifest, member, field="snapshots.schema"))
        fields = snapshot.get("fields") if isinstance(snapshot, dict) else None
        if not isinstance(fields, list) or not all(isinstance(f, dict) and {"collection", "field", "type"} <= f.keys()
                                                   for f in fields):
            raise ConfigError(f"the bundle's schema snapshot {member} is not a CairnCMS schema snapshot",
                              hint="export the source again (cairn-migrate export --full), or move from its .env")
        return snapshot

    def files(self, storage: str) -> BundleFiles:
        return BundleFiles(self.bundle_dir, self.manifest, storage)


@contextmanager
def open_source(path: str, *, progress: Progress | None = None) -> Iterator[BundleSource]:
    """Open the bundle at ``path`` as a move's source (its scratch copy removed on exit).

    :raises ConfigError: not a full bundle, or a native one.
    """
    progress = progress or NullProgress()
    with scratch() as workdir, open_bundle(Path(path), workdir=workdir) as bundle_dir:
        manifest = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("kind") != "full":
            raise ConfigError(f"{path} is not a full-instance bundle (kind {manifest.get('kind')!r})",
                                hint="export one with cairn-migrate export --full -o BUNDLE")
        if manifest.get("data") == "native":
            raise ConfigError(f"{path} is a native bundle (the vendor's own dump): a content move reads rows one by "
                                "one, which a native dump does not offer",
                                hint="export the source without --native (cairn-migrate export --full -o BUNDLE), or "
                                "move from its .env")
        schema = member_path(bundle_dir, manifest, "schema/tables.json", field="schema")
        tables = [TableDef.from_dict(t) for t in json.loads(schema.read_text(encoding="utf-8"))]
        by_name = {t.name: t for t in tables}
        wanted = [by_name[n] for n in manifest["load_order"] if n not in SKIPPED]
        database = workdir / "source.db"
        config = DatabaseConfig("sqlite3", "sqlite", sa.engine.URL.create("sqlite", database=str(database)))
        engine = open_engine(config, check=False, create=True)
        try:
            loader = TableLoader(engine, "sqlite", wanted, sqlite_stored=stored_types(manifest),
                                 field_flags=field_flags(wanted, (manifest.get("source") or {}).get("vendor", "sqlite"),
                                                         "sqlite"))
            try:
                for table in wanted:
                    member = member_path(bundle_dir, manifest, manifest["tables"][table.name]["member"],
                                         field=f"tables.{table.name}.member")
                    loader.load(table.name, jsonl_rows(member), {}, progress, False)
            finally:
                loader.close()
        finally:
            engine.dispose()
        source = manifest.get("source") or {}
        env = {"KEY": source.get("key"), "PUBLIC_URL": source.get("public_url") or "/"}
        instance = Instance(env_path=None, folder=workdir, env={k: v for k, v in env.items() if v is not None},
                            database=config, locations=())
        yield BundleSource(instance, bundle_dir, manifest, tables, f"bundle {path}")
