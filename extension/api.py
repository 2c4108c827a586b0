"""The Python API of the bundle operations: inspect, export, import, verify.

The shells do not call these directly: they run operations by name through
the registry (:mod:`cairn_migrate.operations`), whose ``inspect``, ``export``,
``import`` and ``verify`` entries call the functions here.  Python callers (a
plugin, a notebook) may call them directly.  Nothing below this layer knows
which shell it runs under.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .instance.instance import Instance
from .progress import Progress

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def load_instance(env_path: str | Path | None) -> Instance:
    """Read the instance named by ``--env`` / ``CAIRN_MIGRATE_ENV``.

    :raises ConfigError: with a hint when no env file is named or it is invalid.
    """
    if env_path in (None, ""):
        from .errors import ConfigError

        raise ConfigError(
            "No instance given",
            hint="pass --env PATH (the instance's .env file) or set CAIRN_MIGRATE_ENV",
        )
    return Instance.from_env_file(env_path)


def inspect(instance: Instance, *, check_objects: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Describe an instance: identity, platform, tables, storage and whether file bytes exist.

    :param check_objects: check every file row's bytes (slower on remote stores).
    """
    from .operations.inspection import inspect_instance  # late: a process imports only the operation it runs

    return inspect_instance(instance, check_objects=check_objects, progress=progress)


def export(instance: Instance, output: Path, *, passphrase: str | None = None, key_file: Path | None = None,
           freeze: bool = False, freeze_guarantee: bool = True, instance_url: str | None = None,
           native: bool = False, overwrite: bool = False, state_url: str | None = None,
           mask: str | Path | None = None, mask_salt: str | None = None, mask_keep_users: tuple[str, ...] = (),
           progress: Progress | None = None) -> dict[str, Any]:
    """Write a full bundle of ``instance`` (database + file bytes + config) to ``output``.

    With ``freeze``, writes are held and the instance must prove it holds them (at ``instance_url``,
    default its ``PUBLIC_URL``) before the capture; ``freeze_guarantee=False`` only warns when it cannot.
    The freeze is written to ``state_url`` (default the process's state store): a ``serve`` passes its
    own, so the hook that asks that sidecar sees the freeze.
    With ``mask`` (a built-in profile name or a YAML profile's path), every row is masked before it is
    written (:mod:`cairn_migrate.masking`); ``mask_keep_users`` keep their rows (and logins).
    """
    from .operations.export import export_bundle  # late: a process imports only the operation it runs

    return export_bundle(instance, output, passphrase=passphrase, key_file=key_file, freeze=freeze,
                         freeze_guarantee=freeze_guarantee, instance_url=instance_url, native=native,
                         overwrite=overwrite, state_url=state_url, mask=mask, mask_salt=mask_salt,
                         mask_keep_users=mask_keep_users, progress=progress)


def import_(instance: Instance, bundle: Path, *, dry_run: bool = False, replace: bool = False, resume: bool = False,
            storage_map: Mapping[str, str] | None = None, passphrase: str | None = None, key_file: Path | None = None,
            safety_bundle: Path | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Restore a full bundle into ``instance``; with ``dry_run`` only plan."""
    from .operations.restore import import_bundle  # late: a process imports only the operation it runs

    return import_bundle(instance, bundle, dry_run=dry_run, replace=replace, resume=resume, storage_map=storage_map,
                         passphrase=passphrase, key_file=key_file, safety_bundle=safety_bundle, progress=progress)


def verify(instance: Instance, bundle: Path, *, storage_map: Mapping[str, str] | None = None, url: str | None = None,
           token: str | None = None, login: tuple[str, str] | None = None, passphrase: str | None = None,
           key_file: Path | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Compare ``instance`` with ``bundle`` (rows, file bytes, optionally the live API)."""
    from .operations.verify import verify_bundle  # late: a process imports only the operation it runs

    return verify_bundle(instance, bundle, storage_map=storage_map, url=url, token=token, login=login,
                         passphrase=passphrase, key_file=key_file, progress=progress)


def parse_storage_map(pairs: Any) -> dict[str, str]:
    """``--storage-map SRC=DST`` pairs as a mapping (the import's own parser, imported when asked)."""
    from .operations.restore import parse_storage_map as parse

    return parse(pairs)


def import_state(engine: Callable[[], Engine], instance: Callable[[], Instance]) -> dict[str, Any]:
    """Does the instance's database hold an unfinished import? State, step and fix only (for open health)."""
    from .instance.database import Database
    from .bundle.import_marker import public_status

    return public_status(lambda: Database(engine(), instance().database))


def summarize_manifest(manifest: Mapping[str, Any], output: str | Path) -> dict[str, Any]:
    """The short form of a manifest a shell prints after an export."""
    files = manifest["files"]
    return {
        "bundle": str(output),
        "source": manifest["source"],
        "tables": len(manifest["tables"]),
        "rows": sum(t["rows"] for t in manifest["tables"].values()),
        "files": files["count"],
        "bytes": files["bytes"],
        "missing_files": files["missing"],
        "changed_files": files["changed"],
        "snapshots": manifest.get("snapshots", {}),
        **({"masked": {k: manifest["masked"][k] for k in ("name", "origin", "salt")}} if manifest.get("masked") else {}),
        **({"freeze": manifest["freeze"]} if manifest.get("freeze") else {}),
        "warnings": export_warnings(manifest),
    }


def export_warnings(manifest: Mapping[str, Any]) -> list[str]:
    """What a finished export could not capture and a person must know: no ``KEY``, bytes left out.

    Exporting still succeeds (the rows are all there); the shells report these
    as problems found (CLI exit 1).
    """
    warnings = []
    if not manifest["source"].get("key"):
        warnings.append("the source .env sets no KEY (CairnCMS does not start without it): set KEY in the "
                        "source's and the target's .env")
    skipped = manifest["files"].get("unknown_location") or []
    if skipped:
        names = ", ".join(sorted({entry["storage"] for entry in skipped}))
        warnings.append(f"{len(skipped)} file row(s) name storage location(s) {names}, which STORAGE_LOCATIONS does "
                        "not configure: their bytes are not in the bundle (configure the location(s) and export again)")
    return warnings
