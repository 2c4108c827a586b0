"""One place that turns errors into the canonical JSON body.

``{"ok": false, "error": {"code", "message", "hint"?, "details"?}, "status": N}``
for every error under ``/migrate``: our ``MigrateError``s, validation errors
(422), unknown routes and methods (404/405) and anything unexpected (500, no
traceback in the body; the traceback goes to the log).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from ..errors import MigrateError, Unauthorized
from ..service.schemas import ErrorSchema
from . import bp

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
}


def error_response(error: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> ResponseReturnValue:
    """The canonical error response."""
    body = ErrorSchema().dump({"ok": False, "error": error, "status": status})
    return jsonify(body), status, headers or {}


def handle_migrate_error(exc: MigrateError) -> ResponseReturnValue:
    headers = {"WWW-Authenticate": 'Bearer realm="cairn-migrate"'} if isinstance(exc, Unauthorized) else None
    if exc.http_status >= 500:
        current_app.logger.warning("%s %s failed: %s", request.method, request.path, exc)
    return error_response(exc.to_dict(), exc.http_status, headers)


def handle_validation_error(exc: ValidationError) -> ResponseReturnValue:
    error = {"code": "invalid_input", "message": "The request did not validate", "details": exc.messages}
    return error_response(error, 422)


def handle_http_exception(exc: HTTPException) -> ResponseReturnValue:
    status = exc.code or 500
    error = {"code": _HTTP_CODES.get(status, "http_error"), "message": exc.description or exc.name}
    headers = {"Allow": ", ".join(exc.valid_methods)} if getattr(exc, "valid_methods", None) else None  # type: ignore[attr-defined]
    return error_response(error, status, headers)


def handle_unexpected(exc: Exception) -> ResponseReturnValue:
    if isinstance(exc, HTTPException):
        return handle_http_exception(exc)
    current_app.logger.exception("%s %s raised an unexpected error", request.method, request.path)
    error = {"code": "internal", "message": "An unexpected error occurred; see the sidecar's log"}
    return error_response(error, 500)


def _in_migrate() -> bool:
    prefix = bp.url_prefix or "/migrate"
    return request.path == prefix or request.path.startswith(prefix + "/")


def _routing_error(exc: HTTPException) -> ResponseReturnValue:
    # 404/405 happen before a blueprint is chosen, so they are app-wide
    # handlers; outside /migrate the host app's default page is kept.
    if _in_migrate():
        return handle_http_exception(exc)
    return exc


bp.register_error_handler(MigrateError, handle_migrate_error)
bp.register_error_handler(ValidationError, handle_validation_error)
bp.register_error_handler(HTTPException, handle_http_exception)
bp.register_error_handler(Exception, handle_unexpected)


def register_error_handlers(app: Flask) -> None:
    """Add the app-wide 404/405 handlers scoped to ``/migrate`` (called by ``init_app``)."""
    app.register_error_handler(404, _routing_error)
    app.register_error_handler(405, _routing_error)
