"""``/migrate/ops``: every registered operation by name (:mod:`cairn_migrate.operations`).

``GET /migrate/ops`` lists them with their parameters (the same list as
``cairn-migrate ops list``); ``POST /migrate/ops`` with ``{"op": name, "params":
{...}}`` answers the plan at once when ``params.dry_run`` is true, otherwise
starts the operation as a job.  The name is in the body, not the path: every
``/migrate`` path variable names a record of the instance (a job, a bundle),
which the per-instance checks enumerate.  The older
routes (``/migrate/export``, ``/migrate/files/check`` …) stay as aliases and use
:func:`run_now` and :func:`start` below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import request
from flask.typing import ResponseReturnValue
from marshmallow import Schema, fields

from .. import operations
from ..service.app import get_state
from ..errors import InvalidInput, NotFound
from ..service.service_jobs import operation_context
from . import bp
from .auth import admin_required
from .jobs import job_accepted


def run_now(name: str, params: Mapping[str, Any], *, secrets: Mapping[str, Any] | None = None,
            dry_run: bool = False) -> tuple[dict[str, Any], operations.Outcome]:
    """Run an operation inside the request (a plan, or a short operation) and return its report and outcome."""
    context = operation_context(get_state(), secrets=secrets)
    return operations.run(name, context, params, dry_run=dry_run)


def start(name: str, params: Mapping[str, Any], *, secrets: Mapping[str, Any] | None = None) -> ResponseReturnValue:
    """Start an operation as a job: ``202`` with the job and its ``Location``."""
    return job_accepted(get_state().runner.submit(name, dict(params), secrets=secrets))


def _operation(name: str) -> operations.Operation:
    """The operation named in the body; an unknown name is a 404 like any unknown resource.

    :raises InvalidInput: an operation only the host's operator may run (the CLI).
    """
    try:
        op = operations.get(name)
    except InvalidInput as exc:
        raise NotFound(exc.message, hint="GET /migrate/ops lists them") from None
    if not op.http:
        raise InvalidInput(f"{name} writes outside the instance's data and runs from the CLI only",
                           hint=f"run: cairn-migrate {op.cli} on the sidecar's machine")
    return op


@bp.get("/ops")
@admin_required
def list_operations() -> ResponseReturnValue:
    """Every operation with its parameters, CLI verb and route.
    ---
    get:
      summary: List operations
      responses:
        "200":
          description: The operations (the same list as `cairn-migrate ops list --json`).
    """
    return {"operations": operations.describe()}


class OpRequestSchema(Schema):
    """``POST /migrate/ops``: which operation, with which parameters (``dry_run`` among them where it has one)."""

    op = fields.String(required=True, metadata={"description": "The operation's name (GET /migrate/ops lists them)."})
    params = fields.Dict(keys=fields.String(), load_default=dict, metadata={
        "description": "The operation's parameters, validated by its schema (GET /migrate/ops lists them)."})


@bp.post("/ops")
@admin_required
def run_operation() -> ResponseReturnValue:
    """Run an operation by name: with ``dry_run`` its plan at once, otherwise a job.
    ---
    post:
      summary: Run an operation
      requestBody:
        content:
          application/json:
            schema: OpRequestSchema
      responses:
        "200":
          description: The plan (dry_run; nothing changed) with its outcome.
        "202":
          description: Started; follow the job at the Location header.
          content:
            application/json:
              schema: JobSchema
    """
    body = OpRequestSchema().load(request.get_json(silent=True) or {})
    name = body["op"]
    op = _operation(name)
    params = op.schema().load(body["params"])
    secrets = {key: params.pop(key) for key in op.secret_params if key in params}
    context = operation_context(get_state(), secrets=secrets)
    context.check_host_paths(op, params)  # a path outside CAIRN_MIGRATE_HTTP_PATHS, an unknown bundle: 422 now
    if params.get("dry_run"):
        report, outcome = operations.run(name, context, params, validated=True)
        return {"op": name, "outcome": outcome.value, "report": report}, outcome.http_status
    return start(name, op.schema().dump(params), secrets=secrets)
