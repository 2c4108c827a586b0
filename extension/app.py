"""The Flask extension and the app factory of the standalone sidecar.

``CairnMigrate().init_app(app)`` adds the ``/migrate`` blueprint, its error
handlers and (when enabled) the scheduler to any Flask app; ``create_app()``
builds the standalone sidecar.  Everything the extension holds lives in
``app.extensions["cairn_migrate"]`` (a :class:`MigrateState`); nothing is
created at import time, and the instance, its engine and the job threads are
created on first use.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

from .instance import Instance
from .jobs import JobRunner, JobStore
from .state import default_state_url, instance_scope

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler
    from sqlalchemy.engine import Engine

EXTENSION_KEY = "cairn_migrate"
ENV_PREFIX = "CAIRN_MIGRATE_"


#: The built-in job kinds: kind → ``"module:function"`` taking a ``JobContext``
#: and returning the JSON report.  ``init_app`` registers them on the app's
#: runner; the functions are imported on first use.
JOB_KINDS: dict[str, str] = {}


def _defaults() -> dict[str, Any]:
    return {
        "CAIRN_MIGRATE_ENV": None,
        "CAIRN_MIGRATE_STATE_URL": default_state_url(),
        "CAIRN_MIGRATE_SCHEDULER": False,
        "CAIRN_MIGRATE_WORKERS": 2,
        "CAIRN_MIGRATE_BUNDLE_DIR": None,
    }


def load_prefixed_env(config: MutableMapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Copy ``CAIRN_MIGRATE_*`` variables into ``config`` with Flask's ``from_prefixed_env`` rules.

    Values are JSON-decoded when they parse (``true``, ``4``), otherwise kept as
    strings, and ``__`` nests into dicts.  Unlike ``from_prefixed_env`` the
    prefix is kept, so ``CAIRN_MIGRATE_ENV`` stays ``CAIRN_MIGRATE_ENV`` and never
    collides with Flask's own keys.
    """
    environ = os.environ if environ is None else environ
    for key in sorted(environ):
        if not key.startswith(ENV_PREFIX):
            continue
        raw = environ[key]
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        if "__" not in key:
            config[key] = value
            continue
        current: MutableMapping[str, Any] = config
        *parts, tail = key.split("__")
        for part in parts:
            current = current.setdefault(part, {})
        current[tail] = value


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class MigrateState:
    """What the extension keeps per app: config, the instance, its engine, the job runner.

    :ivar config: the ``CAIRN_MIGRATE_*`` values in effect.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = {k: v for k, v in config.items() if k.startswith(ENV_PREFIX)}
        self._lock = threading.RLock()
        self._instance: Instance | None = None
        self._engine: Engine | None = None
        self._scope: str | None = None
        self._store = JobStore(str(self.config["CAIRN_MIGRATE_STATE_URL"]), scope=lambda: self.scope)
        self._runner = JobRunner(self._store, int(self.config.get("CAIRN_MIGRATE_WORKERS") or 2))
        self.scheduler: BackgroundScheduler | None = None

    @property
    def scope(self) -> str:
        """The identity of this app's instance in the state store (:func:`~cairn_migrate.state.instance_scope`)."""
        with self._lock:
            if self._scope is None:
                self._scope = instance_scope(self.instance())
            return self._scope

    @property
    def bundle_dir(self) -> Path:
        """This instance's server-side bundles: its own folder ``<bundle root>/<scope>``.

        Sidecars of several instances may share one bundle root; each sees only its folder.
        """
        path = self.bundle_root / self.scope
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def bundle_root(self) -> Path:
        """The folder holding each instance's bundle folder.

        ``CAIRN_MIGRATE_BUNDLE_DIR``, default ``bundles`` beside the state store.
        """
        configured = self.config.get("CAIRN_MIGRATE_BUNDLE_DIR")
        if configured:
            path = Path(str(configured)).expanduser()
        else:
            from sqlalchemy.engine import make_url

            url = make_url(str(self.config["CAIRN_MIGRATE_STATE_URL"]))
            base = Path(url.database).expanduser().parent if url.get_backend_name() == "sqlite" and url.database else None
            path = (base or Path(default_state_url().removeprefix("sqlite:///")).parent) / "bundles"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def shared_dirs(self) -> list[Path]:
        """Folders holding records of every instance: the bundle root and the folders of the SQLite state
        files (configured and default, where ``--replace`` safety bundles go).  A request's ``path`` never
        reaches into them."""
        from sqlalchemy.engine import make_url

        folders = [self.bundle_root]
        for url in {str(self.config["CAIRN_MIGRATE_STATE_URL"]), default_state_url()}:
            parsed = make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database and not parsed.database.startswith("file:"):
                folders.append(Path(parsed.database).expanduser().parent)
        return folders

    @property
    def scheduler_enabled(self) -> bool:
        return _as_bool(self.config.get("CAIRN_MIGRATE_SCHEDULER"))

    def instance(self) -> Instance:
        """The CairnCMS instance from ``CAIRN_MIGRATE_ENV`` (read once).

        :raises ConfigError: the ``.env`` is missing or invalid.
        """
        with self._lock:
            if self._instance is None:
                configured = self.config.get("CAIRN_MIGRATE_INSTANCE")
                if isinstance(configured, Instance):
                    self._instance = configured
                else:
                    self._instance = Instance.from_env_file(self.config.get("CAIRN_MIGRATE_ENV"))
            return self._instance

    def engine(self) -> Engine:
        """An engine on the instance's database, opened and checked once, then cached.

        :raises ConfigError: the database settings are wrong.
        :raises InstanceUnreachable: the database does not answer.
        """
        with self._lock:
            if self._engine is None:
                from .database import open_engine

                self._engine = open_engine(self.instance())
            return self._engine

    @property
    def store(self) -> JobStore:
        """The job records; first use fails the jobs a dead sidecar left unfinished."""
        self._runner.ensure_recovered()
        return self._store

    @property
    def runner(self) -> JobRunner:
        """The job runner: register kinds on it, submit jobs to it."""
        return self._runner

    def close(self) -> None:
        """Stop the scheduler and the job threads and dispose of the engines."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self._runner.shutdown(wait=True)
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
        self._store.close()


class CairnMigrate:
    """The Flask extension: ``CairnMigrate(app)`` or ``ext = CairnMigrate(); ext.init_app(app)``."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the ``/migrate`` blueprint, the error handlers and the scheduler on ``app``."""
        for key, value in _defaults().items():
            app.config.setdefault(key, value)
        state = MigrateState(app.config)
        app.extensions[EXTENSION_KEY] = state
        for kind, ref in JOB_KINDS.items():
            state.runner.register(kind, ref)
        from functools import partial

        from . import operations
        from .service_jobs import operation_job

        for operation in operations.all_operations():  # the job runner runs every registered operation
            state.runner.register(operation.name, partial(operation_job, name=operation.name, state=state))

        from .endpoints import blueprint
        from .endpoints.errors import register_error_handlers
        from .hooks.schedule import init_scheduler

        app.register_blueprint(blueprint())
        register_error_handlers(app)
        init_scheduler(app)


def get_state(app: Flask | None = None) -> MigrateState:
    """The extension's state of ``app`` (default: the current app)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError("CairnMigrate.init_app(app) has not been called on this app") from None


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the standalone sidecar.

    Precedence: ``test_config`` > ``CAIRN_MIGRATE_*`` environment > defaults.
    """
    app = Flask("cairn_migrate")
    app.config.from_mapping(_defaults())
    load_prefixed_env(app.config)
    if test_config is not None:
        app.config.from_mapping(test_config)
    CairnMigrate(app)
    return app
