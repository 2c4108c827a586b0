"""The job kinds the ``serve`` process runs: thin wrappers from a job's params to one ``api`` call.

Each function takes the :class:`~cairn_migrate.jobs.JobContext` (progress,
log, cancellation) and the app's :class:`~cairn_migrate.app.MigrateState`
(the instance, the bundle folder, the job secrets).  Passphrases never enter
the persisted job params: the route hands them to ``runner.submit(secrets=...)``
and the job takes them out of ``runner.secrets``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import api
from .errors import InvalidInput, NotFound

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


def _secrets(state: MigrateState, ctx: JobContext) -> dict[str, Any]:
    return state.runner.secrets.pop(ctx.job_id, {})


def export_job(ctx: JobContext, state: MigrateState) -> dict[str, Any]:
    secrets = _secrets(state, ctx)
    suffix = ".tar.gz.enc" if secrets.get("passphrase") else ".tar.gz"
    output = state.bundle_dir / f"{ctx.job_id}{suffix}"
    manifest = api.export(
        state.instance(), output, passphrase=secrets.get("passphrase"), freeze=bool(ctx.params.get("freeze")),
        freeze_guarantee=bool(ctx.params.get("freeze_guarantee", True)), instance_url=ctx.params.get("instance_url"),
        state_url=str(state.config["CAIRN_MIGRATE_STATE_URL"]), progress=ctx,
    )
    summary = api.summarize_manifest(manifest, output)
    summary.update(bundle_id=ctx.job_id, download=f"/migrate/bundles/{ctx.job_id}", size=output.stat().st_size)
    return summary


def _bundle_of(state: MigrateState, params: dict[str, Any]) -> Path:
    """The bundle a request names: a server-side ``bundle`` id, or a ``path`` on the sidecar's machine.

    :raises InvalidInput: a ``path`` the sidecar's operator does not allow HTTP
        callers to name (:meth:`~cairn_migrate.app.MigrateState.http_path`);
        checked again when the job runs, on the path as it resolves then.
    """
    if params.get("bundle"):
        return bundle_path(state, params["bundle"])
    return state.http_path("path", params["path"])


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
    if any(bundle_id_of(path) == name for path in bundle_files(state)):
        raise InvalidInput(f"There is already a bundle {name!r}",
                           hint="choose a new 'safety_bundle' name: an existing bundle is never overwritten")
    return state.bundle_dir / f"{name}.tar.gz"


def import_job(ctx: JobContext, state: MigrateState) -> dict[str, Any]:
    secrets = _secrets(state, ctx)
    report = api.import_(
        state.instance(), _bundle_of(state, ctx.params), replace=bool(ctx.params.get("replace")),
        resume=bool(ctx.params.get("resume")), storage_map=ctx.params.get("storage_map") or {},
        passphrase=secrets.get("passphrase"), safety_bundle=safety_bundle_of(state, ctx.params, ctx.job_id),
        progress=ctx,
    )
    if report.get("safety_bundle"):
        safety_id = bundle_id_of(Path(report["safety_bundle"]))
        report.update(safety_bundle_id=safety_id, safety_bundle_download=f"/migrate/bundles/{safety_id}")
    return report


def verify_job(ctx: JobContext, state: MigrateState) -> dict[str, Any]:
    secrets = _secrets(state, ctx)
    return api.verify(
        state.instance(), _bundle_of(state, ctx.params), storage_map=ctx.params.get("storage_map") or {},
        url=ctx.params.get("url"), token=secrets.get("token"), passphrase=secrets.get("passphrase"), progress=ctx,
    )


def inspect_job(ctx: JobContext, state: MigrateState) -> dict[str, Any]:
    return api.inspect(state.instance(), check_objects=bool(ctx.params.get("check_objects", True)), progress=ctx)


#: kind → function(ctx, state), registered by ``CairnMigrate.init_app``.
KINDS = {"export": export_job, "import": import_job, "verify": verify_job, "inspect": inspect_job}


from .file_jobs import FILE_KINDS  # noqa: E402 - files/storage job kinds (issue #4)

KINDS.update(FILE_KINDS)
