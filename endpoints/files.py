"""``/migrate/files/*``, ``/migrate/storage/*`` and ``/migrate/migrations*``: file-row consistency and moves.

Aliases of ``POST /migrate/ops`` (``files_check``, ``files_repair``,
``storage_move``, ``storage_prune``, ``migrations_*``). Long work (check,
repair, move) runs as a job (202 + ``Location``); dry runs, prune and the
migrations answer at once.
"""

from __future__ import annotations

from typing import Any

from flask import request
from flask.typing import ResponseReturnValue
from marshmallow import Schema, fields, validate

from ..service.app import get_state
from ..operations.limits import DEFAULT_WORKERS
from . import bp
from .auth import admin_required
from .jobs import job_accepted
from .ops import run_now
from .schemas import ServerPath


class FilesCheckRequestSchema(Schema):
    """``POST /migrate/files/check``."""

    limit = fields.Integer(load_default=1000, validate=validate.Range(min=0, max=100000))


class FilesRepairRequestSchema(Schema):
    """``POST /migrate/files/repair``: ``dry_run`` (default) answers the plan at once."""

    dry_run = fields.Boolean(load_default=True)
    bundle = fields.String(load_default=None, metadata={"description": "A bundle id to re-fetch bytes from."})
    path = ServerPath(load_default=None, description="A bundle path on the sidecar's machine.")
    passphrase = fields.String(load_default=None, load_only=True)
    from_locations = fields.List(fields.String(), load_default=list)
    orphans = fields.String(load_default="quarantine", validate=validate.OneOf(["quarantine", "delete", "keep"]))
    clear_references = fields.Boolean(load_default=True)


class StorageMoveRequestSchema(Schema):
    """``POST /migrate/storage/move``."""

    from_ = fields.String(required=True, data_key="from")
    to = fields.String(required=True)
    filters = fields.List(fields.String(), load_default=list, metadata={"description": "KEY=GLOB, AND-ed"})
    layout = fields.String(load_default="keep", validate=validate.OneOf(["keep", "flat"]))
    workers = fields.Integer(load_default=DEFAULT_WORKERS, validate=validate.Range(min=1, max=256))
    version = fields.String(load_default=None)
    dry_run = fields.Boolean(load_default=False)


class StoragePruneRequestSchema(Schema):
    """``POST /migrate/storage/prune``: without ``yes`` only the plan."""

    from_ = fields.String(load_default=None, data_key="from")
    yes = fields.Boolean(load_default=False)


class MigrationStepRequestSchema(Schema):
    """``POST /migrate/migrations/up|down``."""

    version = fields.String(load_default=None)
    dry_run = fields.Boolean(load_default=False)


def _body(schema: Schema) -> dict[str, Any]:
    return schema.load(request.get_json(silent=True) or {})


@bp.post("/files/check")
@admin_required
def start_files_check() -> ResponseReturnValue:
    """Compare directus_files rows with the stored objects, as a job.
    ---
    post:
      summary: Check file rows and objects
      requestBody:
        content:
          application/json:
            schema: FilesCheckRequestSchema
      responses:
        "202":
          description: Started; the job's report lists the problems.
          content:
            application/json:
              schema: JobSchema
    """
    return job_accepted(get_state().runner.submit("files_check", _body(FilesCheckRequestSchema())))


@bp.post("/files/repair")
@admin_required
def start_files_repair() -> ResponseReturnValue:
    """Repair what the check finds; ``dry_run`` (the default) answers the plan at once.
    ---
    post:
      summary: Repair file rows and objects
      requestBody:
        content:
          application/json:
            schema: FilesRepairRequestSchema
      responses:
        "200":
          description: The plan (nothing changed).
        "202":
          description: Started.
          content:
            application/json:
              schema: JobSchema
    """
    from ..service.service_jobs import _bundle_of

    body = _body(FilesRepairRequestSchema())
    state = get_state()
    passphrase = body.pop("passphrase")
    if body.get("bundle") or body.get("path"):
        _bundle_of(state, body)  # an unknown id or a path into the bundle folders fails now, not in the job
    if body.pop("dry_run"):
        return run_now("files_repair", body, secrets={"passphrase": passphrase}, dry_run=True)[0]
    # The job runs what its record says: a repair's parameters default to a plan, so say it is none.
    return job_accepted(state.runner.submit("files_repair", {**body, "dry_run": False},
                                            secrets={"passphrase": passphrase}))


@bp.post("/storage/move")
@admin_required
def start_storage_move() -> ResponseReturnValue:
    """Move file bytes between locations and switch the rows; ``dry_run`` answers the plan at once.
    ---
    post:
      summary: Move files to another storage location
      requestBody:
        content:
          application/json:
            schema: StorageMoveRequestSchema
      responses:
        "200":
          description: The dry-run plan.
        "202":
          description: Started.
          content:
            application/json:
              schema: JobSchema
    """
    body = _body(StorageMoveRequestSchema())
    params = {"from": body["from_"], "to": body["to"], "filters": body["filters"], "layout": body["layout"],
              "workers": body["workers"], "version": body["version"]}
    if body["dry_run"]:
        return run_now("storage_move", params, dry_run=True)[0]
    return job_accepted(get_state().runner.submit("storage_move", {**params, "dry_run": False}))


@bp.post("/storage/prune")
@admin_required
def storage_prune() -> ResponseReturnValue:
    """Delete the old bytes of finished moves (plan only without ``yes``).
    ---
    post:
      summary: Prune moved-away bytes
      requestBody:
        content:
          application/json:
            schema: StoragePruneRequestSchema
      responses:
        "200":
          description: What was (or would be) deleted.
    """
    body = _body(StoragePruneRequestSchema())
    return run_now("storage_prune", {"from": body["from_"], "dry_run": not body["yes"]})[0]


@bp.get("/migrations")
@admin_required
def list_migrations() -> ResponseReturnValue:
    """cairn-migrate's recorded migrations and their state.
    ---
    get:
      summary: List recorded migrations
      responses:
        "200":
          description: The migrations.
    """
    return run_now("migrations_list", {})[0]


@bp.post("/migrations/up")
@admin_required
def migrations_up() -> ResponseReturnValue:
    """Apply pending migrations (up to ``version``).
    ---
    post:
      summary: Apply migrations
      requestBody:
        content:
          application/json:
            schema: MigrationStepRequestSchema
      responses:
        "200":
          description: What was applied.
    """
    return run_now("migrations_up", _body(MigrationStepRequestSchema()))[0]


@bp.post("/migrations/down")
@admin_required
def migrations_down() -> ResponseReturnValue:
    """Revert the latest cairn-migrate migration (or ``version``).
    ---
    post:
      summary: Revert a migration
      requestBody:
        content:
          application/json:
            schema: MigrationStepRequestSchema
      responses:
        "200":
          description: What was reverted.
    """
    return run_now("migrations_down", _body(MigrationStepRequestSchema()))[0]
