"""``GET /migrate/paths``: where an admin may name files on the sidecar's machine, and this instance's ``.env``.

The admin module's content move and sync forms name ``.env`` files (and bundles) by path;
over HTTP those must lie in ``CAIRN_MIGRATE_HTTP_PATHS`` (:meth:`MigrateState.http_path`).
This route lists those folders and, only when it lies in one of them, the ``.env`` this
sidecar serves, so a form can default its target to this instance.  An ``.env`` outside
them is not named (an admin could not use its path, and it says where the host keeps it).
"""

from __future__ import annotations

from flask.typing import ResponseReturnValue

from ..errors import InvalidInput
from ..service.app import get_state
from ..service.schemas import HttpPathsSchema
from . import bp
from .auth import admin_required


@bp.get("/paths")
@admin_required
def http_paths() -> ResponseReturnValue:
    """The folders HTTP callers may name paths in, and this instance's .env when it lies in one.
    ---
    get:
      summary: Allowed paths
      responses:
        "200":
          description: The allowed folders (CAIRN_MIGRATE_HTTP_PATHS, resolved) and this instance's .env, or
            null with env_outside true when it lies outside them (or no .env is known).
          content:
            application/json:
              schema: HttpPathsSchema
    """
    state = get_state()
    own = state.config.get("CAIRN_MIGRATE_ENV")
    env = None
    if own:
        try:
            env = str(state.http_path("env", str(own)))
        except InvalidInput:
            env = None
    return HttpPathsSchema().dump({"allowed": [str(p) for p in state.http_paths], "env": env,
                                   "env_outside": env is None})
