"""The ``serve`` process's side of the operations: every registered operation as a job kind, and bundles.

:func:`operation_job` runs any operation of :mod:`.operations` under a
:class:`~cairn_migrate.jobs.JobContext` (progress, log, cancellation) with the
app's :class:`~cairn_migrate.app.MigrateState` (the instance, the state store,
the bundle folder).  Passphrases never enter the persisted job params: the
route hands them to ``runner.submit(secrets=...)`` and the job takes them out
of ``runner.secrets``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marshmallow import EXCLUDE

from . import operations
from .errors import InvalidInput, NotFound
from .operations import OpContext, OutcomeError
from .progress import NullProgress, Progress

if TYPE_CHECKING:
    from .app import MigrateState
    from .jobs import JobContext


def bundle_id_of(path: Path) -> str:
    """The id of a server-side bundle file: its name up to the first dot (``<id>.tar.gz[.enc]``)."""
    return path.name.split(".", 1)[0]


def bundle_files(state: MigrateState) -> list[Path]:
    """The finished bundles of this app's instance (its own folder; uploads still being written left out)."""
    return [p for p in state.bundle_dir.iterdir() if p.is_file() and not p.name.endswith(".part")]


def bundle_path(state: MigrateState, bundle_id: str) -> Path:
    """The archive of bundle ``bundle_id`` in this instance's bundle folder.

    The id is compared as a plain string with each file's id (never used as a
    pattern or a path), so ``*`` or another instance's id finds nothing.

    :raises NotFound: no such bundle of this instance.
    """
    for candidate in sorted(bundle_files(state)):
        if bundle_id_of(candidate) == bundle_id:
            return candidate
    raise NotFound(f"There is no bundle {bundle_id!r}", hint="GET /migrate/bundles lists them")


def _bundle_of(state: MigrateState, params: dict[str, Any]) -> Path:
    """The bundle a request names: a server-side ``bundle`` id, or a ``path`` on the sidecar's machine.

    :raises InvalidInput: a ``path`` inside the sidecar's folders shared by every
        instance (server-side bundles are reached by id only, so one instance
        cannot name another's bundle or safety bundle).
    """
    if params.get("bundle"):
        return bundle_path(state, params["bundle"])
    path = Path(params["path"])
    resolved = path.expanduser().resolve()
    if any(resolved.is_relative_to(folder.resolve()) for folder in state.shared_dirs):
        raise InvalidInput("'path' points into the sidecar's own state folders, which hold every instance's bundles",
                           hint="name a server-side bundle by its id: 'bundle' (GET /migrate/bundles lists them)")
    return path


def operation_context(state: MigrateState, *, progress: Progress | None = None, job_id: str | None = None,
                      secrets: Mapping[str, Any] | None = None) -> OpContext:
    """The context an operation runs in inside the sidecar: its instance, state store and bundle folder.

    ``CAIRN_MIGRATE_SCRIPTS`` names the custom-migrations folder, as it does for the CLI.
    """
    scripts = state.config.get("CAIRN_MIGRATE_SCRIPTS")
    return OpContext(instance=state.instance, state_url=str(state.config["CAIRN_MIGRATE_STATE_URL"]),
                     progress=progress or NullProgress(), bundle_dir=state.bundle_dir, job_id=job_id,
                     locate_bundle=partial(_bundle_of, state), secrets=dict(secrets or {}),
                     scripts_dir=Path(str(scripts)) if scripts else None)


def operation_job(ctx: JobContext, *, name: str, state: MigrateState) -> dict[str, Any]:
    """Run operation ``name`` as a job: always its apply (a plan is answered at once, never queued).

    Parameters are read leniently (``unknown=EXCLUDE``): the shell that submitted
    them validated them, and records of older versions carry keys no longer used.
    The report gets the ``outcome``; a partial or failed one fails the job and
    keeps the report (:class:`~cairn_migrate.operations.OutcomeError`).
    """
    op = operations.get(name)
    params = op.load(ctx.params, unknown=EXCLUDE)
    if "dry_run" in params:
        params["dry_run"] = False
    secrets = state.runner.secrets.pop(ctx.job_id, {})
    context = operation_context(state, progress=ctx, job_id=ctx.job_id, secrets=secrets)
    report, outcome = operations.run(name, context, params, validated=True)
    if outcome.job_state != "succeeded":
        raise OutcomeError(name, outcome, report)
    return {**report, "outcome": outcome.value}
