"""``GET /migrate/health``: open to anyone, so it never says anything secret."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from flask.typing import ResponseReturnValue

from ..service.app import get_state
from ..service.schemas import HealthSchema
from . import bp


def _version() -> str:
    try:
        return version("cairn-migrate")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


@bp.get("/health")
def health() -> ResponseReturnValue:
    """Liveness of the sidecar, and whether the instance's database holds an interrupted import (nothing secret).
    ---
    get:
      summary: Is the sidecar up, and is the instance's database complete?
      security: []
      responses:
        "200":
          description: The sidecar answers; `instance.state` is `incomplete` while an import is unfinished,
            `unknown` when the database cannot be read within CAIRN_MIGRATE_HEALTH_TIMEOUT (2 s). The database
            answer is cached CAIRN_MIGRATE_HEALTH_CACHE_SECONDS (5 s), so callers never cost a query each.
          content:
            application/json:
              schema: HealthSchema
    """
    # An interrupted import leaves rows without foreign keys or sequences: say so (cached, bounded in time).
    return HealthSchema().dump({"status": "ok", "service": "cairn-migrate", "version": _version(),
                                "instance": get_state().import_state()})
