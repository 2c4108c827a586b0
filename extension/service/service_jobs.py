"""The ``serve`` process's side of the operations: every registered operation as a job kind, and bundles.

:func:`operation_job` runs any operation of :mod:`.operations` under a
:class:`~cairn_migrate.service.jobs.JobContext` (progress, log, cancellation) with the
app's :class:`~cairn_migrate.service.app.MigrateState` (the instance, the state store,
the bundle folder).  Passphrases never enter the persisted job params: the
route hands them to ``runner.submit(secrets=...)`` and the job takes them out
of ``runner.secrets``.
"""

from __future__ import annotations

import re

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marshmallow import EXCLUDE

from .. import operations
from ..errors import InvalidInput, NotFound
from ..operations import OpContext, OutcomeError
from ..progress import NullProgress, Progress

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

    :raises InvalidInput: a ``path`` the sidecar's operator does not allow HTTP
        callers to name (:meth:`~cairn_migrate.service.app.MigrateState.http_path`);
        checked again when the job runs, on the path as it resolves then.
    """
    if params.get("bundle"):
        return bundle_path(state, params["bundle"])
    return state.http_path("path", params["path"])


#: A server-side bundle name a caller may choose (never a path).
BUNDLE_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}"


def safety_bundle_of(state: MigrateState, params: dict[str, Any], job_id: str | None = None) -> Path | None:
    """Where an HTTP import writes its safety bundle: ``<name>.tar.gz`` in this instance's own bundle folder.

    The safety bundle belongs to the instance, so it is one of its server-side
    bundles (listed, downloadable by id), never a file in a shared folder or a
    path the caller chose.  ``name`` is the request's ``safety_bundle``, by
    default ``before-replace-<job id>`` when ``replace`` is asked (a dry run
    has no job and writes nothing).

    :raises InvalidInput: a name without ``replace``, or one the instance already has a bundle of.
    """
    if params.get("safety_bundle") and not params.get("replace"):
        raise InvalidInput("'safety_bundle' applies only with 'replace'",
                           hint="add \"replace\": true, or drop 'safety_bundle'")
    name = params.get("safety_bundle") or (f"before-replace-{job_id}" if params.get("replace") and job_id else None)
    if name is None:
        return None
    if not re.fullmatch(BUNDLE_NAME, name):
        raise InvalidInput(f"'safety_bundle' {name!r} is not a bundle name (letters, digits, '-', '_'), and never a path",
                           hint="name it like before-replace-1; it is written among the instance's own bundles")
    if any(bundle_id_of(path) == name for path in bundle_files(state)):
        raise InvalidInput(f"There is already a bundle {name!r}",
                           hint="choose a new 'safety_bundle' name: an existing bundle is never overwritten")
    return state.bundle_dir / f"{name}.tar.gz"


def operation_context(state: MigrateState, *, progress: Progress | None = None, job_id: str | None = None,
                      secrets: Mapping[str, Any] | None = None) -> OpContext:
    """The context an operation runs in inside the sidecar: its instance, state store and bundle folder.

    ``CAIRN_MIGRATE_SCRIPTS`` names the custom-migrations folder, as it does for the CLI.
    """
    scripts = state.config.get("CAIRN_MIGRATE_SCRIPTS")
    return OpContext(instance=state.instance, state_url=str(state.config["CAIRN_MIGRATE_STATE_URL"]),
                     progress=progress or NullProgress(), bundle_dir=state.bundle_dir, job_id=job_id,
                     locate_bundle=partial(_bundle_of, state), secrets=dict(secrets or {}),
                     scripts_dir=Path(str(scripts)) if scripts else None, host_path=state.http_path,
                     place_safety_bundle=lambda params: safety_bundle_of(state, dict(params), job_id),
                     allow_code=state.allow_transform, confinement=state.confinement)


def operation_job(ctx: JobContext, *, name: str, state: MigrateState) -> dict[str, Any]:
    """Run operation ``name`` as a job, as its recorded parameters say: a ``dry_run`` among them is honoured.

    The HTTP shell answers plans at once and submits ``dry_run: false`` for a real
    run; a schedule stores what it was given, so a scheduled plan (``files_repair``
    and ``storage_prune`` plan by default) stays a plan.  Parameters are read leniently (``unknown=EXCLUDE``): the shell that submitted
    them validated them, and records of older versions carry keys no longer used.
    The report gets the ``outcome``; a partial or failed one fails the job and
    keeps the report (:class:`~cairn_migrate.operations.OutcomeError`).
    """
    op = operations.get(name)
    params = op.load(ctx.params, unknown=EXCLUDE)
    secrets = state.runner.secrets.pop(ctx.job_id, {})
    context = operation_context(state, progress=ctx, job_id=ctx.job_id, secrets=secrets)
    report, outcome = operations.run(name, context, params, validated=True)
    if outcome.job_state != "succeeded":
        raise OutcomeError(name, outcome, report)
    return {**report, "outcome": outcome.value}
