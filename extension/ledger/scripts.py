"""Recorded custom migrations: the script directory, its revision graph, and ``migrations list|up|down``.

Two kinds of migration share one ledger (:mod:`.ledger`, CairnCMS's own
``directus_migrations``):

* **scripts** written by people, ``custom_migrations/versions/*.py``, each with
  ``revision`` (a CairnCMS version such as ``20261125A``), ``name``, optional
  ``down_revision``/``depends_on``, ``upgrade(ctx)`` and ``downgrade(ctx)``,
  and optionally ``javascript_up``/``javascript_down`` (bodies of the twin's
  ``up(knex)``/``down(knex)``; without them the twin throws and says to use
  cairn-migrate);
* **generated** data migrations (a storage move's switch of ``directus_files``
  rows).  Their one source of truth is the ``.js`` twin in the instance's
  ``EXTENSIONS_PATH/migrations/``: its ``DATA`` line holds the row changes,
  its ``up``/``down`` apply them with knex, and the Python side applies the
  very same ``DATA`` with SQLAlchemy.  They live with the instance, not in the
  sidecar's state store, because an operator moves, backs up and reverts an
  instance with its extensions folder; a twin that needed the sidecar's state
  to be reverted would break CairnCMS's own ``migrate:down``.

The graph (:class:`Revision`, :class:`RevisionGraph`) is pure; only
:class:`ScriptDirectory` reads files.
"""

from __future__ import annotations

import importlib.util
from importlib import resources
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..instance.database import Database
from ..errors import ConfigError, InvalidInput, NotFound
from ..instance.instance import Instance
from .ledger import MARKER, LedgerConflict, MigrationLedger, first_line, name_of, version_of

log = logging.getLogger(__name__)

BATCH = 500  # ids per UPDATE: under SQLite's 999 bound-parameter limit, also in the twin
_DATA_PREFIX = "const DATA = "


# --------------------------------------------------------------------------- the pure graph
@dataclass(frozen=True)
class Revision:
    """One node: its version, the version it follows and the ones it needs."""

    revision: str
    down_revision: str | None = None
    depends_on: tuple[str, ...] = ()


class RevisionGraph:
    """Orders revisions: dependencies first, then CairnCMS's plain string order of versions."""

    def __init__(self, revisions: Iterable[Revision]) -> None:
        self.revisions = {r.revision: r for r in revisions}

    def ordered(self) -> list[str]:
        done: list[str] = []
        seen: set[str] = set()
        visiting: set[str] = set()

        def visit(rev: str) -> None:
            if rev in seen:
                return
            if rev in visiting:
                raise ConfigError(f"migration {rev} depends on itself through its down_revision/depends_on chain")
            visiting.add(rev)
            node = self.revisions[rev]
            for parent in sorted(filter(None, (node.down_revision, *node.depends_on))):
                if parent in self.revisions:
                    visit(parent)
            visiting.discard(rev)
            seen.add(rev)
            done.append(rev)

        for rev in sorted(self.revisions):
            visit(rev)
        return done


# --------------------------------------------------------------------------- scripts
@dataclass
class MigrationContext:
    """What ``upgrade(ctx)``/``downgrade(ctx)`` get: one open transaction on the instance's database."""

    instance: Instance
    db: Database
    connection: sa.Connection
    log: Callable[[str], None] = field(default=lambda message: log.info("%s", message))

    def execute(self, sql: str, **params: Any) -> Any:
        return self.connection.execute(sa.text(sql), params)


@dataclass
class MigrationScript:
    """A migration: :class:`Revision` + name + how to apply and revert it."""

    revision: Revision
    name: str
    slug: str
    kind: str  # "script" | "generated"
    path: Path
    upgrade: Callable[[MigrationContext], None]
    downgrade: Callable[[MigrationContext], None]
    js_up: str
    js_down: str
    data: dict[str, Any] | None = None
    #: What a dry run checks before promising ``upgrade``/``downgrade`` (the refusals they would raise).
    check_up: Callable[[MigrationContext], None] | None = None
    check_down: Callable[[MigrationContext], None] | None = None

    @property
    def version(self) -> str:
        return self.revision.revision

    def twin_source(self) -> str:
        header = {"kind": self.kind, "version": self.version, "name": self.name}
        if self.kind == "generated":
            return generated_twin(self.version, self.name, self.data or {})
        return (f"{MARKER} {json.dumps(header)}\n"
                f"// Written by cairn-migrate from {self.path.name}; CairnCMS runs it as a custom migration.\n\n"
                f"export async function up(knex) {{\n{_indent(self.js_up)}\n}}\n\n"
                f"export async function down(knex) {{\n{_indent(self.js_down)}\n}}\n")


def _indent(body: str) -> str:
    return "\n".join("\t" + line if line else line for line in body.strip("\n").splitlines())


def _throwing(version: str, verb: str) -> str:
    return (f"throw new Error('{version} is a cairn-migrate migration written in Python: "
            f"run `cairn-migrate migrations {verb}` instead');")


def load_script(path: Path) -> MigrationScript:
    """Import one ``versions/*.py`` file.

    :raises ConfigError: no ``revision``, a malformed one, or missing functions.
    """
    spec = importlib.util.spec_from_file_location(f"cairn_migration_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    revision = getattr(module, "revision", None)
    if not isinstance(revision, str) or version_of(revision + "-x") != revision or len(revision) != 9:
        raise ConfigError(f"{path} declares no valid 'revision' (YYYYMMDD plus a letter, e.g. 20261125A)")
    for attr in ("upgrade", "downgrade"):
        if not callable(getattr(module, attr, None)):
            raise ConfigError(f"{path} has no {attr}(ctx) function")
    title = str(getattr(module, "name", "") or path.stem.split("_", 1)[-1])
    slug = "-".join(w for w in title.lower().replace("_", " ").replace("-", " ").split() if w.isalnum()) or "migration"
    depends = getattr(module, "depends_on", None) or ()
    return MigrationScript(
        revision=Revision(revision, getattr(module, "down_revision", None),
                          tuple([depends] if isinstance(depends, str) else depends)),
        name=name_of(f"{revision}-{slug}.js"), slug=slug, kind="script", path=path,
        upgrade=module.upgrade, downgrade=module.downgrade,
        js_up=getattr(module, "javascript_up", None) or _throwing(revision, "up"),
        js_down=getattr(module, "javascript_down", None) or _throwing(revision, "down"),
    )


def id_values(column: Any, ids: Sequence[Any]) -> list[Any]:
    """File ids as the column's driver wants them: ``uuid.UUID`` for PostgreSQL's native type, else text."""
    import uuid

    if getattr(column.type, "as_uuid", False):
        return [i if isinstance(i, uuid.UUID) else uuid.UUID(str(i)) for i in ids]
    return [str(i) for i in ids]


# --------------------------------------------------------------------------- generated file-row migrations
def generated_twin(version: str, name: str, data: dict[str, Any]) -> str:
    """The ES-module twin of a generated file-row migration (pg, mysql and sqlite knex alike).

    ``DATA.ids``: rows whose ``storage`` goes ``from`` → ``to``; ``DATA.renames``:
    ``[id, old filename_disk, new filename_disk]`` rows whose name changes too.
    Every UPDATE is guarded by the current ``storage`` and batched by 500 ids,
    all in one transaction, so a half-applied run cannot exist.
    """
    header = json.dumps({"kind": "generated", "version": version, "name": name})
    return f"""{MARKER} {header}
// Generated by cairn-migrate: switches directus_files rows between storage locations.
// Revert with `cairncms database migrate:down` or `cairn-migrate migrations down`.
// The bytes must exist at the other location (cairn-migrate keeps them until `storage prune`).
{_DATA_PREFIX}{json.dumps(data, separators=(",", ":"))};
const BATCH = {BATCH};

async function switchRows(knex, fromStorage, toStorage, direction) {{
	await knex.transaction(async (trx) => {{
		for (let i = 0; i < DATA.ids.length; i += BATCH) {{
			const ids = DATA.ids.slice(i, i + BATCH);
			await trx('directus_files').whereIn('id', ids).andWhere('storage', fromStorage).update({{ storage: toStorage }});
		}}
		for (let i = 0; i < DATA.renames.length; i += BATCH) {{
			const batch = DATA.renames.slice(i, i + BATCH);
			const bindings = ['id'];
			for (const row of batch) bindings.push(row[0], direction === 'up' ? row[2] : row[1]);
			const cases = batch.map(() => 'WHEN ? THEN ?').join(' ');
			await trx('directus_files')
				.whereIn('id', batch.map((row) => row[0]))
				.andWhere('storage', fromStorage)
				.update({{ storage: toStorage, filename_disk: trx.raw(`CASE ?? ${{cases}} END`, bindings) }});
		}}
	}});
}}

export async function up(knex) {{
	await switchRows(knex, DATA.from, DATA.to, 'up');
}}

export async function down(knex) {{
	await switchRows(knex, DATA.to, DATA.from, 'down');
}}
"""


def read_generated(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(header, DATA)`` of a twin we generated."""
    header: dict[str, Any] | None = None
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh):
            if number == 0:
                if not line.startswith(MARKER):
                    raise ConfigError(f"{path} was not written by cairn-migrate")
                header = json.loads(line[len(MARKER):])
            elif line.startswith(_DATA_PREFIX):
                assert header is not None
                return header, json.loads(line[len(_DATA_PREFIX):].rstrip().rstrip(";"))
    raise ConfigError(f"{path} has no DATA line; it is not a generated cairn-migrate migration")


def switch_rows(connection: sa.Connection, db: Database, data: dict[str, Any], direction: str) -> int:
    """Apply a generated migration's ``DATA`` exactly as its twin does; return the rows changed."""
    files = db.table("directus_files")
    fid = files.c.id
    src, dst = (data["from"], data["to"]) if direction == "up" else (data["to"], data["from"])
    changed = 0
    ids = data.get("ids", [])
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        changed += connection.execute(
            files.update().where(fid.in_(id_values(fid, chunk)), files.c.storage == src).values(storage=dst)).rowcount
    renames = data.get("renames", [])
    for start in range(0, len(renames), BATCH):
        chunk = renames[start:start + BATCH]
        keys = id_values(fid, [row[0] for row in chunk])
        mapping = {key: (row[2] if direction == "up" else row[1]) for key, row in zip(keys, chunk)}
        changed += connection.execute(
            files.update().where(fid.in_(keys), files.c.storage == src)
            .values(storage=dst, filename_disk=sa.case(mapping, value=fid))).rowcount
    return changed


def generated_script(path: Path) -> MigrationScript:
    header, data = read_generated(path)
    version = version_of(path.name)

    def check_up(ctx: MigrationContext) -> None:
        _require_bytes(ctx, data, data["to"])

    def check_down(ctx: MigrationContext) -> None:
        _require_bytes(ctx, data, data["from"])

    def upgrade(ctx: MigrationContext) -> None:
        check_up(ctx)
        ctx.log(f"switched {switch_rows(ctx.connection, ctx.db, data, 'up')} rows to {data['to']}")

    def downgrade(ctx: MigrationContext) -> None:
        check_down(ctx)
        ctx.log(f"switched {switch_rows(ctx.connection, ctx.db, data, 'down')} rows back to {data['from']}")

    return MigrationScript(
        revision=Revision(version), name=str(header.get("name") or name_of(path.name)),
        slug=path.name[len(version) + 1:-3], kind="generated", path=path, upgrade=upgrade, downgrade=downgrade,
        js_up="", js_down="", data=data, check_up=check_up, check_down=check_down)


class BytesMissing(InvalidInput):
    """A storage switch would point rows at a location without their bytes: bad input for the current state."""

    code = "bytes_missing"


def _require_bytes(ctx: MigrationContext, data: dict[str, Any], location_name: str) -> None:
    """Refuse to point rows at a location that lacks their bytes (e.g. after ``storage prune``)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..instance.storage import open_location

    location = open_location(ctx.instance.location(location_name))
    location.check()
    files = ctx.db.table("directus_files")
    fid = files.c.id
    checks: list[tuple[str, str | None]] = []
    ids = [str(i) for i in data.get("ids", [])]
    for start in range(0, len(ids), BATCH):
        rows = ctx.connection.execute(sa.select(fid.label("id"), files.c.filename_disk)
                                      .where(fid.in_(id_values(fid, ids[start:start + BATCH]))))
        checks.extend((str(r.id), r.filename_disk) for r in rows)
    checks.extend((row[0], row[2] if location_name == data["to"] else row[1]) for row in data.get("renames", []))
    missing = []
    with ThreadPoolExecutor(16) as pool:
        for (row_id, _name), present in zip(checks, pool.map(lambda c: bool(c[1]) and location.exists(c[1]), checks)):
            if not present:
                missing.append(row_id)
    if missing:
        other = data["to"] if location_name == data["from"] else data["from"]
        raise BytesMissing(
            f"{len(missing)} file(s) have no bytes on location {location_name!r} (e.g. {missing[0]}); "
            "switching their rows there would break them",
            hint=f"the bytes were pruned or deleted: move them back first (cairn-migrate storage move --from {other} "
                 f"--to {location_name}), or restore them with files repair")


# --------------------------------------------------------------------------- the directory
class ScriptDirectory:
    """``custom_migrations/versions/*.py`` plus the generated twins of one instance."""

    def __init__(self, versions_dir: Path, ledger: MigrationLedger) -> None:
        self.versions_dir = Path(versions_dir)
        self.ledger = ledger

    @staticmethod
    def default_dir() -> Path:
        """``$CAIRN_MIGRATE_SCRIPTS`` or ``./custom_migrations`` if it exists, else the shipped folder."""
        import os

        if os.environ.get("CAIRN_MIGRATE_SCRIPTS"):
            return Path(os.environ["CAIRN_MIGRATE_SCRIPTS"])
        local = Path.cwd() / "custom_migrations"
        return local if (local / "versions").is_dir() else Path(str(resources.files("cairn_migrate.custom_migrations")))

    def scripts(self) -> list[MigrationScript]:
        found: dict[str, MigrationScript] = {}
        folder = self.versions_dir / "versions"
        for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
            if path.name.startswith("_"):
                continue
            script = load_script(path)
            if script.version in found:
                raise LedgerConflict(f"{path.name} and {found[script.version].path.name} both declare {script.version}")
            found[script.version] = script
        for path in [*self.ledger.files().values(), *self.ledger.reverted().values()]:
            line = first_line(path)
            if line.startswith(MARKER) and '"kind": "generated"' in line:
                script = generated_script(path)
                if script.version in found and found[script.version].kind == "script":
                    raise LedgerConflict(f"{path} and {found[script.version].path} share version {script.version}")
                found.setdefault(script.version, script)
        order = RevisionGraph(s.revision for s in found.values()).ordered()
        return [found[v] for v in order]


def _open(instance: Instance, versions_dir: Path | None) -> tuple[Database, MigrationLedger, ScriptDirectory]:
    db = Database.open(instance)
    ledger = MigrationLedger(db, instance.extensions_path)
    return db, ledger, ScriptDirectory(versions_dir or ScriptDirectory.default_dir(), ledger)


def _status(ledger: MigrationLedger, scripts: Sequence[MigrationScript]) -> tuple[dict[str, dict[str, Any]], dict[str, Path]]:
    recorded = {str(r["version"]): r for r in ledger.recorded()}
    return recorded, ledger.files()


def _own(script: MigrationScript, files: dict[str, Path]) -> bool:
    twin = files.get(script.version)
    return twin is not None and first_line(twin).startswith(MARKER)


def list_migrations(instance: Instance, versions_dir: Path | None = None) -> dict[str, Any]:
    """Our migrations with their state (``applied``/``pending``/``reverted``/``conflict``)."""
    db, ledger, directory = _open(instance, versions_dir)
    with db:
        scripts = directory.scripts()
        recorded, files = _status(ledger, scripts)
        reverted = ledger.reverted()
        items = []
        for script in scripts:
            row = recorded.get(script.version)
            if row is not None and _own(script, files):
                state = "applied"
            elif row is not None or script.version in files:
                state = "conflict"
            elif script.version in reverted:
                state = "reverted"
            else:
                state = "pending"
            items.append({"version": script.version, "name": script.name, "kind": script.kind, "state": state,
                          "timestamp": None if row is None else str(row["timestamp"]), "file": str(script.path)})
        ours = {i["version"] for i in items}
        return {"migrations": items, "other_recorded": len([v for v in recorded if v not in ours]),
                "extensions_migrations": str(ledger.folder)}


def apply_script(instance: Instance, db: Database, ledger: MigrationLedger, script: MigrationScript,
                 progress_log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``upgrade`` and record it: twin file first, then the work and the row in one transaction."""
    reapply = script.kind == "generated" and script.path.parent.name == ".cairn-reverted"
    ledger.ensure_free(script.version, reapply=reapply)
    if reapply:
        ledger.restore_twin(script.version)
    else:
        ledger.write_twin(script.version, script.slug, script.twin_source())
    try:
        with db.engine.begin() as conn:
            ctx = MigrationContext(instance, db, conn, progress_log or (lambda m: log.info("%s", m)))
            script.upgrade(ctx)
            ledger.record(conn, script.version, script.name)
    except BaseException:
        ledger.retire_twin(script.version) if script.kind == "generated" else _remove_twin(ledger, script.version)
        raise
    return {"version": script.version, "name": script.name, "kind": script.kind, "action": "up"}


def _remove_twin(ledger: MigrationLedger, version: str) -> None:
    path = ledger.files().get(version)
    if path is not None and first_line(path).startswith(MARKER):
        path.unlink()


def upgrade(instance: Instance, *, version: str | None = None, versions_dir: Path | None = None,
            dry_run: bool = False) -> dict[str, Any]:
    """Apply pending scripts in order (up to ``version``); a reverted generated one only when named."""
    db, ledger, directory = _open(instance, versions_dir)
    with db:
        scripts = directory.scripts()
        recorded, files = _status(ledger, scripts)
        reverted = ledger.reverted()
        if version is not None and version not in {s.version for s in scripts}:
            raise NotFound(f"there is no migration {version}", hint="cairn-migrate migrations list")
        todo = []
        for script in scripts:
            if script.version in recorded or script.version in files:
                if not _own(script, files):
                    raise LedgerConflict(f"version {script.version} ({script.path.name}) is already used by another "
                                         "migration of this instance", hint="give the script another revision")
                continue
            if script.version in reverted and script.version != version:
                continue
            todo.append(script)
            if script.version == version:
                break
        if dry_run:
            _dry_check(instance, db, [s.check_up for s in todo])
        applied = [] if dry_run else [apply_script(instance, db, ledger, s) for s in todo]
        return {"dry_run": dry_run, "plan": [{"version": s.version, "name": s.name, "kind": s.kind} for s in todo],
                "applied": applied}


def downgrade(instance: Instance, *, version: str | None = None, versions_dir: Path | None = None,
              dry_run: bool = False) -> dict[str, Any]:
    """Revert our latest applied migration (by CairnCMS's order: timestamp, then version), or ``version``.

    With none applied and no ``version`` there is nothing to do: an empty plan, like ``upgrade``
    with nothing pending (a named ``version`` that is not applied stays an error).
    """
    db, ledger, directory = _open(instance, versions_dir)
    with db:
        scripts = {s.version: s for s in directory.scripts()}
        recorded = ledger.recorded()
        files = ledger.files()
        ours = [r for r in recorded if str(r["version"]) in scripts and _own(scripts[str(r["version"])], files)]
        if version is None:
            if not ours:
                return {"dry_run": dry_run, "plan": [], "reverted": []}
            target = scripts[str(ours[-1]["version"])]
        elif version in {str(r["version"]) for r in ours}:
            target = scripts[version]
        else:
            raise NotFound(f"migration {version} is not an applied cairn-migrate migration",
                           hint="cairn-migrate migrations list")
        if dry_run:
            _dry_check(instance, db, [target.check_down])
            return {"dry_run": True, "plan": [{"version": target.version, "name": target.name}], "reverted": []}
        with db.engine.begin() as conn:
            target.downgrade(MigrationContext(instance, db, conn))
            ledger.unrecord(conn, target.version)
        if target.kind == "generated":
            ledger.retire_twin(target.version)
        else:
            _remove_twin(ledger, target.version)
        return {"dry_run": False, "plan": [{"version": target.version, "name": target.name}],
                "reverted": [{"version": target.version, "name": target.name, "kind": target.kind}]}


def _dry_check(instance: Instance, db: Database, checks: Sequence[Callable[[MigrationContext], None] | None]) -> None:
    """Run the refusals the real run would raise, so a dry run never promises what the real one refuses."""
    with db.engine.connect() as conn:
        for check in checks:
            if check is not None:
                check(MigrationContext(instance, db, conn))


def record_generated(instance: Instance, db: Database, slug: str, data: dict[str, Any], *,
                     version: str | None = None, versions_dir: Path | None = None,
                     progress_log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Allocate a version, write the twin and apply ``data`` with its row, as one recorded migration."""
    ledger = MigrationLedger(db, instance.extensions_path)
    directory = ScriptDirectory(versions_dir or ScriptDirectory.default_dir(), ledger)
    taken = [s.version for s in directory.scripts() if s.kind == "script"]
    if version is None:
        version = ledger.allocate_version(extra=taken)
    ledger.ensure_free(version, extra=taken)
    name = name_of(f"{version}-{slug}.js")
    path = ledger.write_twin(version, slug, generated_twin(version, name, data))
    script = generated_script(path)
    try:
        with db.engine.begin() as conn:
            changed = switch_rows(conn, db, data, "up")
            ledger.record(conn, version, name)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if progress_log:
        progress_log(f"recorded migration {version} ({name}): {changed} rows switched")
    return {"version": version, "name": name, "file": str(path), "rows": changed, "kind": script.kind}
