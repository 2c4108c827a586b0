"""``GET /migrate/openapi.json``: the generated OpenAPI document."""

from __future__ import annotations

from flask import current_app, jsonify
from flask.typing import ResponseReturnValue

from ..service.openapi import build_spec
from . import bp
from .auth import admin_required


@bp.get("/openapi.json")
@admin_required
def openapi_document() -> ResponseReturnValue:
    """The OpenAPI 3 document of ``/migrate``.
    ---
    get:
      summary: OpenAPI document
      responses:
        "200":
          description: The OpenAPI 3 document.
          content:
            application/json:
              schema:
                type: object
    """
    return jsonify(build_spec(current_app).to_dict())
