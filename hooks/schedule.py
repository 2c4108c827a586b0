"""The APScheduler 3 scheduler of the sidecar: operations on a timetable.

:func:`schedule_operation` stores ``{op, params}`` of a registered operation
(:mod:`cairn_migrate.operations`); when it is due, :func:`run_scheduled`
submits it to the app's job runner, so a scheduled run is a normal job record
with progress, log, cancel and report.  Underneath, a schedule is a stored call
(:func:`schedule_job`: a function named by import string with JSON-safe
kwargs), kept in the state store by ``SQLAlchemyJobStore`` so it survives
restarts, in a table of the sidecar's instance (``cm_schedules_<instance
scope>``), so sidecars sharing the store never run each other's schedules.  It
never holds an engine, a filesystem object or a secret.

Sync profiles (``operations/sync_profiles.py``) are scheduled here too: each
enabled profile with a schedule is a stored job ``sync:<name>`` calling
:func:`run_sync_due` by import string, with the profile's trigger, coalescing, and
a ``misfire_grace_time`` from its missed-run policy (``run-once``: any delay, one
catch-up run; ``skip``: a short grace).  :func:`reconcile_syncs` makes the stored
jobs match the profiles: at start (a job whose schedule is unchanged keeps its
next run time, so a missed slot still fires once), after every change through
this sidecar's HTTP API, and every ``CAIRN_MIGRATE_SYNC_POLL_SECONDS`` (default 30;
picks up changes made by the CLI or another sidecar, and wakes this scheduler
for jobs another sidecar stored).  The scheduler only
starts when ``CAIRN_MIGRATE_SCHEDULER`` is true (never in the CLI, never in
tests unless a test turns it on).
"""

from __future__ import annotations

import atexit
import json
import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask

from .. import operations
from ..service.app import _as_bool, get_state
from ..service.service_jobs import operation_context
from ..errors import InvalidInput

if TYPE_CHECKING:
    from ..service.app import MigrateState

log = logging.getLogger(__name__)

TRIGGERS = ("date", "interval", "cron")

#: The function a scheduled operation calls (an import string: the job store keeps only names).
RUN_SCHEDULED = "cairn_migrate.hooks.schedule:run_scheduled"

#: The running sidecars of this process by instance scope: where a due schedule finds its job runner.
_SIDECARS: weakref.WeakValueDictionary[str, MigrateState] = weakref.WeakValueDictionary()


def _prepare_sqlite_folder(url: str) -> None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def init_scheduler(app: Flask) -> Any:
    """Build the scheduler into ``app.extensions["cairn_migrate"].scheduler``; start it if enabled."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    state = get_state(app)
    url = str(state.config["CAIRN_MIGRATE_STATE_URL"])
    enabled = _as_bool(state.config.get("CAIRN_MIGRATE_SCHEDULER"))
    # The instance is read only when the scheduler runs: an app with it off needs no instance to start.
    jobstores = {"default": SQLAlchemyJobStore(url=url, tablename=f"cm_schedules_{state.scope}")} if enabled else {}
    scheduler = BackgroundScheduler(
        jobstores=jobstores,
        job_defaults={"max_instances": 1, "coalesce": True},
        timezone="UTC",
    )
    state.scheduler = scheduler
    if enabled:
        _SIDECARS[state.scope] = state
        _prepare_sqlite_folder(url)
        scheduler.start()
        atexit.register(_shutdown, scheduler)
        _start_sync_poll(state)
        log.info("scheduler started (%d stored jobs)", len(scheduler.get_jobs()))
    return scheduler


def _shutdown(scheduler: Any) -> None:
    if scheduler.running:
        scheduler.shutdown(wait=False)


def schedule_job(
    app: Flask,
    func_ref: str,
    trigger: str,
    *,
    kwargs: dict[str, Any] | None = None,
    job_id: str | None = None,
    replace_existing: bool = True,
    **trigger_args: Any,
) -> str:
    """Store a call of ``func_ref`` (``"package.module:function"``) on ``trigger``.

    :param trigger: ``date``, ``interval`` or ``cron``; ``trigger_args`` go to it
        (``minutes=15``, ``hour="3"`` …).
    :param kwargs: JSON-safe keyword arguments of the call.
    :returns: the scheduled job's id.
    :raises InvalidInput: a bad reference, trigger or non-JSON kwargs.
    """
    if ":" not in func_ref:
        raise InvalidInput(f"{func_ref!r} is not an import string", hint='use "package.module:function"')
    if trigger not in TRIGGERS:
        raise InvalidInput(f"{trigger!r} is not a trigger", hint=f"use one of {', '.join(TRIGGERS)}")
    try:
        kwargs = json.loads(json.dumps(kwargs or {}))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"The arguments of a scheduled {func_ref} are not JSON-safe: {exc}") from exc
    scheduler = get_state(app).scheduler
    if scheduler is None:  # pragma: no cover - init_app always builds one
        raise RuntimeError("the scheduler is not initialised; call CairnMigrate.init_app first")
    try:
        job = scheduler.add_job(
            func_ref, trigger, kwargs=kwargs, id=job_id, replace_existing=replace_existing, **trigger_args
        )
    except (TypeError, ValueError, LookupError) as exc:
        raise InvalidInput(f"Cannot schedule {func_ref}: {exc}") from exc
    return str(job.id)


def schedule_operation(
    app: Flask,
    op: str,
    trigger: str,
    *,
    params: dict[str, Any] | None = None,
    job_id: str | None = None,
    replace_existing: bool = True,
    **trigger_args: Any,
) -> str:
    """Run operation ``op`` with ``params`` on ``trigger``, each run a job of the app's runner.

    The parameters are validated now, with the operation's schema, and each run
    does what they say (a ``dry_run`` they hold, or default to, is a plan).  A
    schedule runs in the sidecar, so it follows the sidecar's rules: operations
    the CLI alone may run are refused, and so are host paths outside
    ``CAIRN_MIGRATE_HTTP_PATHS`` (:meth:`~cairn_migrate.operations.OpContext.check_host_paths`);
    secrets (passphrases, tokens) are refused, since a schedule is stored.

    :returns: the schedule's id.
    :raises InvalidInput: an unknown or CLI-only operation, bad parameters, a secret, a
        path not allowed, or a bad trigger.
    :raises NotFound: an unknown bundle id.
    """
    operation = operations.get(op)
    if not operation.http:
        raise InvalidInput(f"{op} writes outside the instance's data and runs from the CLI only, never on a schedule",
                           hint=f"run: cairn-migrate {operation.cli} on the sidecar's machine")
    given = dict(params or {})
    secret = sorted(set(given) & set(operation.secret_params))
    if secret:
        raise InvalidInput(f"A schedule is stored, so it cannot hold the secret(s) {', '.join(secret)}",
                           hint="schedule operations that need no secret (an unencrypted export, a files check …)")
    loaded = operation.load(given)
    operation_context(get_state(app)).check_host_paths(operation, loaded)
    stored = operation.schema().dump(loaded)
    kwargs = {"op": op, "params": stored, "scope": get_state(app).scope}
    return schedule_job(app, RUN_SCHEDULED, trigger, kwargs=kwargs, job_id=job_id,
                        replace_existing=replace_existing, **trigger_args)


def run_scheduled(op: str, params: dict[str, Any], scope: str) -> str | None:
    """A due schedule: submit ``op`` to the job runner of the sidecar of instance ``scope``.

    :returns: the job's id, or None when no sidecar of that instance runs in this process.
    """
    state = _SIDECARS.get(scope)
    if state is None:
        log.warning("scheduled %s skipped: no sidecar of instance %s runs in this process", op, scope)
        return None
    job_id = state.runner.submit(op, params)
    log.info("scheduled %s started as job %s", op, job_id)
    return job_id


# --------------------------------------------------------------------------- sync profiles
#: The function a sync profile's schedule calls.
RUN_SYNC = "cairn_migrate.hooks.schedule:run_sync_due"
SYNC_PREFIX = "sync:"


def _sync_store(state: MigrateState) -> Any:
    from ..operations.sync_profiles import SyncStore

    return SyncStore(str(state.config["CAIRN_MIGRATE_STATE_URL"]), state.scope)


def _signature(profile: dict[str, Any]) -> str:
    return json.dumps({"schedule": profile.get("schedule"), "missed": profile.get("missed"),
                       "anchor": profile["anchor"]}, sort_keys=True)


def _start_sync_poll(state: MigrateState) -> None:
    from apscheduler.jobstores.memory import MemoryJobStore

    scheduler = state.scheduler
    seconds = float(state.config.get("CAIRN_MIGRATE_SYNC_POLL_SECONDS") or 30)
    scheduler.add_jobstore(MemoryJobStore(), "local")
    scheduler.add_job(_poll, "interval", seconds=seconds, args=[state.scope], id="sync-reconcile",
                      jobstore="local", coalesce=True, max_instances=1, misfire_grace_time=None)
    _poll(state.scope)


def _poll(scope: str) -> None:
    state = _SIDECARS.get(scope)
    if state is None:
        return
    try:
        reconcile_syncs(state)
    except Exception:  # noqa: BLE001 - a bad profile or a store hiccup must not stop the scheduler
        log.exception("could not reconcile the sync schedules")


def reconcile_syncs(state: MigrateState) -> dict[str, list[str]]:
    """Make the scheduler's ``sync:*`` jobs match the instance's enabled, scheduled profiles.

    :returns: the names added or replaced, and removed.
    """
    from ..operations.sync_profiles import misfire_grace, trigger_of

    scheduler = state.scheduler
    done: dict[str, list[str]] = {"scheduled": [], "removed": []}
    if scheduler is None or not scheduler.running:
        return done
    wanted = {}
    for profile in _sync_store(state).list():
        if profile["enabled"] and trigger_of(profile, profile["anchor"]) is not None:
            wanted[SYNC_PREFIX + profile["name"]] = profile
    for job in scheduler.get_jobs(jobstore="default"):
        if job.id.startswith(SYNC_PREFIX) and job.id not in wanted:
            scheduler.remove_job(job.id, jobstore="default")
            done["removed"].append(job.id[len(SYNC_PREFIX):])
    for job_id, profile in wanted.items():
        signature = _signature(profile)
        job = scheduler.get_job(job_id, jobstore="default")
        if job is not None and job.kwargs.get("signature") == signature:
            continue  # unchanged: keeps its next run time (a slot missed while down still fires once)
        scheduler.add_job(RUN_SYNC, trigger_of(profile, profile["anchor"]), id=job_id, jobstore="default",
                          kwargs={"name": profile["name"], "scope": state.scope, "signature": signature},
                          replace_existing=True, coalesce=True, max_instances=1,
                          misfire_grace_time=misfire_grace(profile))
        done["scheduled"].append(profile["name"])
    return done


def next_run(state: MigrateState, name: str) -> str | None:
    """When this sidecar's scheduler runs profile ``name`` next (None: not scheduled here)."""
    scheduler = state.scheduler
    if scheduler is None or not scheduler.running:
        return None
    job = scheduler.get_job(SYNC_PREFIX + name, jobstore="default")
    return job.next_run_time.isoformat() if job is not None and job.next_run_time else None


def run_sync_due(name: str, scope: str, signature: str | None = None) -> str | None:
    """A profile's schedule is due: submit its run, for the due slot, to the job runner.

    A slot already recorded (another sidecar ran it) is skipped here without a job;
    the run itself checks again under the profile's run lock.

    :returns: the job's id, or None when skipped.
    """
    from ..operations.sync_profiles import due_slot

    state = _SIDECARS.get(scope)
    if state is None:
        log.warning("sync %s skipped: no sidecar of instance %s runs in this process", name, scope)
        return None
    store = _sync_store(state)
    try:
        profile = store.get(name)
    except Exception:  # noqa: BLE001 - removed meanwhile
        log.info("sync %s skipped: the profile is gone", name)
        return None
    if not profile["enabled"]:
        log.info("sync %s skipped: paused", name)
        return None
    slot = due_slot(profile, profile["anchor"])
    last = store.last_slot(profile["id"])
    if slot is not None and last is not None and last >= slot:
        log.info("sync %s: slot %s has run already", name, slot)
        return None
    job_id = state.runner.submit("sync_run", {"name": name, "trigger": "schedule", "slot": slot})
    log.info("sync %s (slot %s) started as job %s", name, slot, job_id)
    return job_id
