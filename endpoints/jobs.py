"""``/migrate/jobs``: the records of long operations (status, progress, report)."""

from __future__ import annotations

from flask import request, url_for
from flask.typing import ResponseReturnValue

from ..service.app import get_state
from ..service.schemas import JobListSchema, JobQuerySchema, JobSchema
from . import bp
from .auth import admin_required


def job_accepted(job_id: str) -> ResponseReturnValue:
    """The ``202 Accepted`` answer of a route that started a job, with ``Location``."""
    record = get_state().store.get(job_id, with_log=False)
    return JobSchema().dump(record), 202, {"Location": url_for("migrate.get_job", job_id=job_id)}


@bp.get("/jobs")
@admin_required
def list_jobs() -> ResponseReturnValue:
    """List jobs, newest first.
    ---
    get:
      summary: List jobs
      parameters:
        - in: query
          schema: JobQuerySchema
      responses:
        "200":
          description: A page of jobs.
          content:
            application/json:
              schema: JobListSchema
    """
    # access_token is the credential (read by admin_required), not a filter.
    query = JobQuerySchema().load({k: v for k, v in request.args.items() if k != "access_token"})
    jobs = get_state().store.list(**query)
    return JobListSchema().dump({"jobs": jobs, "count": len(jobs)})


@bp.get("/jobs/<job_id>")
@admin_required
def get_job(job_id: str) -> ResponseReturnValue:
    """One job with its progress, log and report.
    ---
    get:
      summary: Get a job
      responses:
        "200":
          description: The job record.
          content:
            application/json:
              schema: JobSchema
    """
    return JobSchema().dump(get_state().store.get(job_id))


@bp.post("/jobs/<job_id>/cancel")
@admin_required
def cancel_job(job_id: str) -> ResponseReturnValue:
    """Ask a job to stop.
    ---
    post:
      summary: Cancel a job
      responses:
        "202":
          description: The cancel was requested (a queued job is cancelled at once).
          content:
            application/json:
              schema: JobSchema
        "409": Error
    """
    record = get_state().store.request_cancel(job_id)
    return JobSchema().dump(record), 202
