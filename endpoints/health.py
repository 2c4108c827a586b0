"""``GET /migrate/health``: open to anyone, so it never says anything secret."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from flask.typing import ResponseReturnValue

from ..schemas import HealthSchema
from . import bp


def _version() -> str:
    try:
        return version("cairn-migrate")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


@bp.get("/health")
def health() -> ResponseReturnValue:
    """Liveness of the sidecar (no instance, database or secret involved).
    ---
    get:
      summary: Is the sidecar up?
      security: []
      responses:
        "200":
          description: The sidecar answers.
          content:
            application/json:
              schema: HealthSchema
    """
    return HealthSchema().dump({"status": "ok", "service": "cairn-migrate", "version": _version()})
