"""The APScheduler 3 scheduler of the sidecar (scheduled syncs).

A scheduled job is a stored call: a function named by import string
(``"cairn_migrate.api:sync"``) with JSON-safe kwargs, kept in the state store
by ``SQLAlchemyJobStore`` so it survives restarts, in a table of the sidecar's
instance (``cm_schedules_<instance scope>``), so sidecars sharing the store
never run each other's schedules.  It never holds an engine
or a filesystem object.  The scheduler only starts when
``CAIRN_MIGRATE_SCHEDULER`` is true (never in the CLI, never in tests unless a
test turns it on).
"""

from __future__ import annotations

import atexit
import json
import logging
from pathlib import Path
from typing import Any

from flask import Flask

from ..app import _as_bool, get_state
from ..errors import InvalidInput

log = logging.getLogger(__name__)

TRIGGERS = ("date", "interval", "cron")


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
