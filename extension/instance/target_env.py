"""What an instance's ``.env`` does not set: what CairnCMS needs to start, and what a bundle's source set.

Our commands read the database and the storage and never need ``KEY`` or ``SECRET``, but CairnCMS's
``start`` refuses to run without them (``validateEnv(['KEY', 'SECRET'])`` in ``api/src/app.ts`` logs
``"KEY" Environment Variable is missing`` and exits).  So a target whose ``.env`` lost them would pass
``import``, ``verify`` and ``inspect`` and still not serve.  A bundle's manifest records what the target
must set (``env.values``, ``env.secret_names``; ``docs/bundle-format.md``); the checks here compare
names only and never put a value in a report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: cli/render.py imports describe() without the instance model (SQLAlchemy)
    from .instance import Instance

#: What CairnCMS's ``start`` refuses to run without (reference §6.4).
REQUIRED = ("KEY", "SECRET")


def unset(instance: Instance, names: Iterable[str]) -> list[str]:
    """The ``names`` the instance's env leaves unset, in order; CairnCMS's defaults count as set.

    ``validateEnv`` tests JavaScript truthiness, so an empty value (or ``false``, ``0``) is unset too.
    """
    return [name for name in names if instance.env.get(name) in (None, "", False)]


def missing_to_start(instance: Instance) -> str | None:
    """The warning when the instance's env lacks ``KEY`` or ``SECRET``, with the fix; ``None`` when both are set."""
    missing = unset(instance, REQUIRED)
    if not missing:
        return None
    where = instance.env_path or "the instance's environment"
    return (f"the .env sets no {' and no '.join(missing)}: CairnCMS does not start without "
            f"{' and '.join(REQUIRED)}; fix: set {' and '.join(missing)} in {where} (a clone keeps its source's; "
            "new ones: cairncms security key:generate / secret:generate)")


def missing_for_bundle(instance: Instance, manifest: Mapping[str, Any],
                       storage_map: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The settings the bundle's source set that ``instance`` (the target) does not, or ``None``.

    ``missing``: their names; ``required``: those CairnCMS does not start without; ``fix``: where each
    value comes from.  A location the import remaps (``storage_map``) is left out: the target's own
    location, which the import requires configured, stands in for it.
    """
    env = manifest.get("env") or {}
    values = env.get("values") or {}
    remapped = tuple(f"STORAGE_{name.upper()}_" for name in storage_map or {})
    names = sorted({*values, *(env.get("secret_names") or []), *REQUIRED})  # REQUIRED: whatever the source set
    missing = [name for name in unset(instance, names) if not name.startswith(remapped)]
    if not missing:
        return None
    return {"missing": missing, "required": [name for name in missing if name in REQUIRED],
            "fix": _fix(instance, missing, values)}


def describe(problem: Mapping[str, Any]) -> str:
    """One line for a report: what the target's ``.env`` lacks, why it matters and the fix."""
    why = (f"CairnCMS does not start without {' and '.join(problem['required'])}" if problem["required"]
           else "the bundle's source sets them")
    return f"the target's .env does not set {', '.join(problem['missing'])} ({why}); fix: {problem['fix']}"


def _fix(instance: Instance, missing: list[str], values: Mapping[str, Any]) -> str:
    """Where each missing value comes from: the manifest records non-secret values, secrets only by name."""
    recorded = [name for name in missing if name in values]
    secret = [name for name in missing if name not in values]
    sources = []
    if recorded:
        sources.append(f"{', '.join(recorded)} as recorded in the bundle's manifest.json (env.values)")
    if secret:
        sources.append(f"{', '.join(secret)} from the source's .env")
    return f"set {' and '.join(sources)} in {instance.env_path or 'the target environment'}"
