"""The APScheduler 3 scheduler of the sidecar: operations on a timetable.

:func:`schedule_operation` stores ``{op, params}`` of a registered operation
(:mod:`cairn_migrate.operations`); when it is due, :func:`run_scheduled`
submits it to the app's job runner, so a scheduled run is a normal job record
with progress, log, cancel and report.  Underneath, a schedule is a stored call
(:func:`schedule_job`: a function named by import string with JSON-safe
kwargs), kept in the state store by ``SQLAlchemyJobStore`` so it survives
restarts, in a table of the sidecar's instance (``cm_schedules_<instance
scope>``), so sidecars sharing the store never run each other's schedules.  It
never holds an engine, a filesystem object or a secret.  The scheduler only
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
