"""``/migrate/freeze``: the write hold the instance's hook asks about during a capture."""

from __future__ import annotations

import datetime as dt

from flask import request
from flask.typing import ResponseReturnValue

from ..service.app import get_state
from ..operations.freeze import clear_freeze, freeze_state, set_freeze
from . import bp
from .auth import admin_required
from .signed import admin_or_signed
from .schemas import FreezeRequestSchema, FreezeSchema


def _state_url() -> str:
    return str(get_state().config["CAIRN_MIGRATE_STATE_URL"])


def _scope() -> str:
    """This sidecar's instance: the only freeze its routes read or change."""
    return get_state().scope


@bp.get("/freeze")
@admin_or_signed
def get_freeze() -> ResponseReturnValue:
    """Whether writes are held right now (an admin, or the instance's hook signing the request).
    ---
    get:
      summary: Freeze state
      responses:
        "200":
          description: The freeze state.
          content:
            application/json:
              schema: FreezeSchema
    """
    return FreezeSchema().dump(freeze_state(_state_url(), scope=_scope()))


@bp.post("/freeze")
@admin_required
def start_freeze() -> ResponseReturnValue:
    """Hold the instance's writes until released or the TTL passes.
    ---
    post:
      summary: Start a freeze
      requestBody:
        content:
          application/json:
            schema: FreezeRequestSchema
      responses:
        "200":
          description: The freeze state.
          content:
            application/json:
              schema: FreezeSchema
    """
    body = FreezeRequestSchema().load(request.get_json(silent=True) or {})
    set_freeze(_state_url(), body["reason"], dt.timedelta(seconds=body["ttl_seconds"]), scope=_scope())
    return FreezeSchema().dump(freeze_state(_state_url(), scope=_scope()))


@bp.delete("/freeze")
@admin_required
def end_freeze() -> ResponseReturnValue:
    """Release the freeze.
    ---
    delete:
      summary: End a freeze
      responses:
        "200":
          description: The freeze state.
          content:
            application/json:
              schema: FreezeSchema
    """
    clear_freeze(_state_url(), scope=_scope())
    return FreezeSchema().dump(freeze_state(_state_url(), scope=_scope()))
