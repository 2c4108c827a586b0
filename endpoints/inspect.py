"""``POST /migrate/inspect``: describe the instance, as a job."""

from __future__ import annotations

from flask import request
from flask.typing import ResponseReturnValue

from ..service.app import get_state
from . import bp
from .auth import admin_required
from .jobs import job_accepted
from .schemas import InspectRequestSchema


@bp.post("/inspect")
@admin_required
def start_inspect() -> ResponseReturnValue:
    """Start an inspection of the instance (identity, tables, storage, missing bytes).
    ---
    post:
      summary: Inspect the instance
      requestBody:
        content:
          application/json:
            schema: InspectRequestSchema
      responses:
        "202":
          description: Started; follow the job at the Location header.
          content:
            application/json:
              schema: JobSchema
    """
    params = InspectRequestSchema().load(request.get_json(silent=True) or {})
    return job_accepted(get_state().runner.submit("inspect", params))
