"""``/migrate/export`` and ``/migrate/bundles``: full bundles made and kept by the sidecar."""

from __future__ import annotations

import datetime as dt

from flask import request, send_file
from flask.typing import ResponseReturnValue

from ..service.app import get_state
from ..service.service_jobs import bundle_files, bundle_id_of, bundle_path
from . import bp
from .auth import admin_required
from .jobs import job_accepted
from .schemas import BundleListSchema, ExportRequestSchema


@bp.post("/export")
@admin_required
def start_export() -> ResponseReturnValue:
    """Start a full export (database, file bytes, config) into a server-side bundle.
    ---
    post:
      summary: Export the instance
      requestBody:
        content:
          application/json:
            schema: ExportRequestSchema
      responses:
        "202":
          description: Started; the finished job's result names the bundle and its download URL.
          content:
            application/json:
              schema: JobSchema
    """
    body = ExportRequestSchema().load(request.get_json(silent=True) or {})
    state = get_state()
    passphrase = body.pop("passphrase")
    job_id = state.runner.submit("export", {**body, "encrypted": bool(passphrase)}, secrets={"passphrase": passphrase})
    return job_accepted(job_id)


def _describe(path) -> dict:  # type: ignore[no-untyped-def]
    bundle_id = bundle_id_of(path)
    return {
        "id": bundle_id,
        "name": path.name,
        "size": path.stat().st_size,
        "created_at": dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).isoformat(timespec="seconds"),
        "encrypted": path.name.endswith(".enc"),
        "download": f"/migrate/bundles/{bundle_id}",
    }


@bp.get("/bundles")
@admin_required
def list_bundles() -> ResponseReturnValue:
    """List the bundles kept by the sidecar, newest first.
    ---
    get:
      summary: List bundles
      responses:
        "200":
          description: The bundles.
          content:
            application/json:
              schema: BundleListSchema
    """
    paths = bundle_files(get_state())
    paths.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return BundleListSchema().dump({"bundles": [_describe(p) for p in paths]})


@bp.get("/bundles/<bundle_id>")
@admin_required
def download_bundle(bundle_id: str) -> ResponseReturnValue:
    """Download a bundle (streamed; Range requests supported).
    ---
    get:
      summary: Download a bundle
      responses:
        "200":
          description: The bundle archive.
          content:
            application/octet-stream: {}
    """
    path = bundle_path(get_state(), bundle_id)
    return send_file(path, mimetype="application/octet-stream", as_attachment=True, download_name=path.name, conditional=True)
