"""``POST /migrate/import`` and ``POST /migrate/verify``: restore a bundle, prove a restore."""

from __future__ import annotations

import shutil
import uuid
from typing import Any

from flask import request
from flask.typing import ResponseReturnValue

from ..service.app import get_state
from ..errors import InvalidInput
from ..service.service_jobs import _bundle_of, safety_bundle_of
from . import bp
from .auth import admin_required
from .jobs import job_accepted
from .ops import run_now
from .schemas import ImportRequestSchema, PlanSchema, VerifyRequestSchema


def _load(schema: Any) -> dict[str, Any]:
    """A JSON body, or multipart form fields plus an uploaded ``bundle`` file saved as a server-side bundle."""
    if request.mimetype == "multipart/form-data":
        form = {k: v for k, v in request.form.items()}
        for key in ("dry_run", "replace", "resume"):
            if key in form:
                form[key] = form[key].lower() in ("1", "true", "yes", "on")
        if "storage_map" in form:
            form["storage_map"] = dict(pair.split("=", 1) for pair in form["storage_map"].split(",") if "=" in pair)
        body = schema.load(form)
        upload = request.files.get("bundle")
        if upload is None:
            raise InvalidInput("The multipart body has no 'bundle' file part", hint="send the bundle archive as the 'bundle' field")
        suffix = "".join(s for s in (".tar", ".gz", ".enc") if s in (upload.filename or ".tar.gz")) or ".tar.gz"
        bundle_id = f"upload-{uuid.uuid4().hex[:12]}"
        target = get_state().bundle_dir / f"{bundle_id}{suffix}"
        with target.open("wb") as out:
            shutil.copyfileobj(upload.stream, out, 1024 * 1024)
        body["bundle"] = bundle_id
        return body
    body = schema.load(request.get_json(silent=True) or {})
    if not body.get("bundle") and not body.get("path"):
        raise InvalidInput("Name the bundle to use", hint="pass 'bundle' (an id from GET /migrate/bundles) or 'path'")
    _bundle_of(get_state(), body)  # an unknown id or a path into the bundle folders fails now, not in the job
    return body


@bp.post("/import")
@admin_required
def start_import() -> ResponseReturnValue:
    """Restore a bundle into the instance; ``dry_run`` answers the plan at once.
    ---
    post:
      summary: Import a bundle
      requestBody:
        content:
          application/json:
            schema: ImportRequestSchema
          multipart/form-data:
            schema: ImportRequestSchema
      responses:
        "200":
          description: The dry-run plan (nothing applied).
          content:
            application/json:
              schema: PlanSchema
        "202":
          description: Started.
          content:
            application/json:
              schema: JobSchema
    """
    body = _load(ImportRequestSchema())
    state = get_state()
    passphrase = body.pop("passphrase")
    safety_bundle_of(state, body)  # a path, or a name already taken, fails now, not in the job
    if body["dry_run"]:
        report, _ = run_now("import", body, secrets={"passphrase": passphrase}, dry_run=True)
        return PlanSchema().dump(report)
    return job_accepted(state.runner.submit("import", body, secrets={"passphrase": passphrase}))


@bp.post("/verify")
@admin_required
def start_verify() -> ResponseReturnValue:
    """Check the instance against a bundle (rows, file bytes, optionally the live API).
    ---
    post:
      summary: Verify against a bundle
      requestBody:
        content:
          application/json:
            schema: VerifyRequestSchema
      responses:
        "202":
          description: Started.
          content:
            application/json:
              schema: JobSchema
    """
    body = _load(VerifyRequestSchema())
    secrets = {"passphrase": body.pop("passphrase"), "token": body.pop("token")}
    return job_accepted(get_state().runner.submit("verify", body, secrets=secrets))
