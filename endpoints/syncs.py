"""``/migrate/syncs``: scheduled instance-to-instance syncs (profiles, runs, history).

The profiles are records of this sidecar's instance in the state store
(``operations/sync_profiles.py``); a run is the ``sync_run`` operation, started as a
job like every other operation.  After each change the sidecar's scheduler (when it
runs here) is brought in line at once (``hooks/schedule.py``).
"""

from __future__ import annotations

from typing import Any

from flask import request
from flask.typing import ResponseReturnValue

from .. import operations
from ..errors import InvalidInput
from ..hooks.schedule import next_run, reconcile_syncs
from ..operations.sync_profiles import WEBHOOK_HOSTS, SyncStore, validate_new_profile, validate_profile, webhook_hosts
from ..service.app import MigrateState, get_state
from ..service.schemas import SyncHistoryQuerySchema, SyncHistorySchema, SyncListSchema, SyncRunRequestSchema
from ..service.service_jobs import operation_context
from . import bp
from .auth import admin_required
from .ops import start
from .schemas import SyncProfileRequestSchema


def _store() -> SyncStore:
    state = get_state()
    return SyncStore(str(state.config["CAIRN_MIGRATE_STATE_URL"]), state.scope)


def _shown(state: MigrateState, store: SyncStore, profile: dict[str, Any]) -> dict[str, Any]:
    runs = store.history(profile["name"], limit=1)
    return {**profile, "next_run": next_run(state, profile["name"]), "last_run": runs[0] if runs else None}


def _hosts(state: MigrateState) -> set[str]:
    """The alert webhook hosts the sidecar's operator allows (``CAIRN_MIGRATE_WEBHOOK_HOSTS``)."""
    return webhook_hosts(state.config.get(WEBHOOK_HOSTS) or "")


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object", hint="send the profile's fields as JSON")
    return body


def _confine(state: MigrateState, profile: dict[str, Any]) -> None:
    """A profile stores no token: its other instance must be one the operator lists in CAIRN_MIGRATE_PEERS (403)."""
    from ..operations.confine import Side

    operation_context(state).confine([Side("source", profile["source"]), Side("target", profile["target"])])


def _reconcile(state: MigrateState) -> None:
    reconcile_syncs(state)


@bp.get("/syncs")
@admin_required
def list_syncs() -> ResponseReturnValue:
    """List the instance's sync profiles.
    ---
    get:
      summary: List sync profiles
      responses:
        "200":
          description: The profiles, each with its next run (when this sidecar schedules it) and last run.
          content:
            application/json:
              schema: SyncListSchema
    """
    state, store = get_state(), _store()
    syncs = [_shown(state, store, profile) for profile in store.list()]
    return SyncListSchema().dump({"syncs": syncs, "count": len(syncs)})


@bp.post("/syncs")
@admin_required
def add_sync() -> ResponseReturnValue:
    """Add a sync profile.
    ---
    post:
      summary: Add a sync profile
      requestBody:
        content:
          application/json:
            schema: SyncProfileRequestSchema
      responses:
        "201":
          description: The stored profile.
        "409": Error
        "422": Error
    """
    state = get_state()
    # every problem at once: the fields (source, target: allowed paths only), the .env files, the source's collections
    # and filter fields
    profile = validate_new_profile(_body(), schema=SyncProfileRequestSchema,
                                   confine=lambda sides: _confine(state, dict(sides)))
    store = _store()
    added = store.add(profile, hosts=_hosts(state))
    _reconcile(state)
    return _shown(state, store, added), 201


@bp.get("/syncs/<sync_name>")
@admin_required
def get_sync(sync_name: str) -> ResponseReturnValue:
    """One sync profile with its next and last run.
    ---
    get:
      summary: Get a sync profile
      responses:
        "200":
          description: The profile.
        "404": Error
    """
    state, store = get_state(), _store()
    return _shown(state, store, store.get(sync_name))


@bp.patch("/syncs/<sync_name>")
@admin_required
def update_sync(sync_name: str) -> ResponseReturnValue:
    """Change fields of a sync profile (``{"enabled": false}`` pauses it).
    ---
    patch:
      summary: Change a sync profile
      requestBody:
        content:
          application/json:
            schema: SyncProfileRequestSchema
      responses:
        "200":
          description: The changed profile (validated as a whole; the name cannot change).
        "404": Error
        "422": Error
    """
    state, store = get_state(), _store()
    body = validate_profile(_body(), partial=True, schema=SyncProfileRequestSchema)  # source, target: allowed paths
    if "source" in body or "target" in body:
        _confine(state, {**store.get(sync_name), **body})
    changed = store.update(sync_name, body, hosts=_hosts(state))
    _reconcile(state)
    return _shown(state, store, changed)


@bp.delete("/syncs/<sync_name>")
@admin_required
def remove_sync(sync_name: str) -> ResponseReturnValue:
    """Remove a sync profile, its schedule, watermarks and history.
    ---
    delete:
      summary: Remove a sync profile
      responses:
        "200":
          description: The removed profile.
        "404": Error
        "409":
          description: A run of the profile holds its run lock (answered at once, never waiting for the run).
    """
    state, store = get_state(), _store()
    removed = store.remove(sync_name)
    _reconcile(state)
    return {"removed": removed}


@bp.post("/syncs/<sync_name>/run")
@admin_required
def run_sync(sync_name: str) -> ResponseReturnValue:
    """Run a sync profile now: its plan at once with ``dry_run`` (without the run lock, so a scheduled run of
    the slot still happens), otherwise a job.
    ---
    post:
      summary: Run a sync profile
      requestBody:
        content:
          application/json:
            schema: SyncRunRequestSchema
      responses:
        "200":
          description: The plan (dry_run; nothing written) with its outcome.
        "202":
          description: Started; follow the job at the Location header.
          content:
            application/json:
              schema: JobSchema
        "404": Error
        "422": Error
    """
    body = SyncRunRequestSchema().load(request.get_json(silent=True) or {})
    profile = _store().get(sync_name)
    if not profile["enabled"]:
        raise InvalidInput(f"The sync profile {sync_name!r} is paused; a paused profile does nothing",
                           hint=f"resume it first: PATCH /migrate/syncs/{sync_name} {{\"enabled\": true}}")
    params = {"name": sync_name, "full": body["full"], "dry_run": body["dry_run"], "trigger": "manual"}
    if body["dry_run"]:
        context = operation_context(get_state())
        report, outcome = operations.run("sync_run", context, params)
        return {"op": "sync_run", "outcome": outcome.value, "report": report}, outcome.http_status
    return start("sync_run", params)


@bp.get("/syncs/<sync_name>/history")
@admin_required
def sync_history(sync_name: str) -> ResponseReturnValue:
    """A sync profile's runs, newest first.
    ---
    get:
      summary: Sync history
      parameters:
        - in: query
          schema: SyncHistoryQuerySchema
      responses:
        "200":
          description: The runs.
          content:
            application/json:
              schema: SyncHistorySchema
        "404": Error
    """
    query = SyncHistoryQuerySchema().load({k: v for k, v in request.args.items() if k != "access_token"})
    runs = _store().history(sync_name, limit=query["limit"])
    return SyncHistorySchema().dump({"name": sync_name, "runs": runs, "count": len(runs)})
