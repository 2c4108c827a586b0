"""Job kinds of ``files check|repair`` and ``storage move``, run by the ``serve`` process.

Registered through :data:`cairn_migrate.service_jobs.KINDS`; each wraps one
core function and passes the app's state store, so the copy ledger of an HTTP
move is the one the CLI resumes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .service_jobs import _bundle_of, _secrets

if TYPE_CHECKING:
    from .app import MigrateState
    from .jobs import JobContext


def files_check_job(ctx: JobContext, state: MigrateState) -> dict[str, Any]:
    from .file_rows import check

    return check(state.instance(), limit=int(ctx.params.get("limit") or 1000), progress=ctx,
                 state_url=str(state.config["CAIRN_MIGRATE_STATE_URL"]))


def files_repair_job(ctx: JobContext, state: MigrateState) -> dict[str, Any]:
    from .file_rows import repair

    params = ctx.params
    bundle = _bundle_of(state, params) if params.get("bundle") or params.get("path") else None
    return repair(state.instance(), yes=True, bundle=bundle, passphrase=_secrets(state, ctx).get("passphrase"),
                  from_locations=list(params.get("from_locations") or []), orphans=params.get("orphans") or "quarantine",
                  clear_references=bool(params.get("clear_references", True)), progress=ctx,
                  state_url=str(state.config["CAIRN_MIGRATE_STATE_URL"]))


def storage_move_job(ctx: JobContext, state: MigrateState) -> dict[str, Any]:
    from .storage_move import move

    params = ctx.params
    return move(state.instance(), params["from"], params["to"], filters=params.get("filters") or (),
                layout=params.get("layout") or "keep", workers=int(params.get("workers") or 16),
                version=params.get("version"), state_url=str(state.config["CAIRN_MIGRATE_STATE_URL"]), progress=ctx)


FILE_KINDS = {"files_check": files_check_job, "files_repair": files_repair_job, "storage_move": storage_move_job}
