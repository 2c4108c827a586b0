"""``GET /migrate/health``: open to anyone, so it never says anything secret."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask.typing import ResponseReturnValue

from ..schemas import HealthSchema
from . import bp

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return version("cairn-migrate")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def _instance_report() -> dict[str, Any]:
    """Is the instance's database complete? Only the state, step and fix: nothing secret.

    An import killed half-way leaves rows without foreign keys or sequences;
    its marker table in the database says so (:mod:`cairn_migrate.import_marker`).
    """
    import sqlalchemy as sa

    from ..app import get_state
    from ..database import Database
    from ..errors import MigrateError
    from ..import_marker import read

    try:
        state = get_state()
        marker = read(Database(state.engine(), state.instance().database))
    except (MigrateError, sa.exc.SQLAlchemyError) as exc:
        log.warning("health: cannot read the instance's database: %s", exc.__class__.__name__)
        return {"state": "unknown", "step": None, "started_at": None, "fix": None}
    if marker is None:
        return {"state": "complete", "step": None, "started_at": None, "fix": None}
    status = marker.status()
    return {key: status[key] for key in ("state", "step", "started_at", "fix")}


@bp.get("/health")
def health() -> ResponseReturnValue:
    """Liveness of the sidecar, and whether the instance's database holds an interrupted import (nothing secret).
    ---
    get:
      summary: Is the sidecar up, and is the instance's database complete?
      security: []
      responses:
        "200":
          description: The sidecar answers; `instance.state` is `incomplete` while an import is unfinished.
          content:
            application/json:
              schema: HealthSchema
    """
    return HealthSchema().dump({"status": "ok", "service": "cairn-migrate", "version": _version(),
                                "instance": _instance_report()})
