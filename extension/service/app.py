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
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

from ..errors import ConfigError, InvalidInput
from ..instance.instance import Instance
from .jobs import JobRunner, JobStore
from .state import default_state_url, instance_scope

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)
EXTENSION_KEY = "cairn_migrate"
ENV_PREFIX = "CAIRN_MIGRATE_"
#: The folders (colon-separated) an HTTP caller may name by path; none by default.
HTTP_PATHS = "CAIRN_MIGRATE_HTTP_PATHS"
#: The peer instances' ``.env`` files (``os.pathsep``-separated) the operator trusts as the other side of a
#: content move, promote or sync profile run over HTTP (:mod:`cairn_migrate.operations.confine`); none by default.
PEERS = "CAIRN_MIGRATE_PEERS"
#: The ``module:function`` strings HTTP callers may name as a content move's ``transform`` (none by default).
TRANSFORMS = "CAIRN_MIGRATE_TRANSFORMS"


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
        HTTP_PATHS: "",
        TRANSFORMS: "",
        "CAIRN_MIGRATE_WEBHOOK_HOSTS": "",
        PEERS: "",
        "CAIRN_MIGRATE_HEALTH_CACHE_SECONDS": 5,
        "CAIRN_MIGRATE_HEALTH_TIMEOUT": 2,
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


def _setting_seconds(config: Mapping[str, Any], name: str, *, zero_ok: bool) -> float:
    """A number of seconds from the app's settings; a value that is not one is a config error naming it."""
    raw = config.get(name)
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    if not (value >= 0 if zero_ok else value > 0) or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} is not a {'non-negative' if zero_ok else 'positive'} number of seconds",
                          hint=f"set {name} to e.g. {_defaults()[name]}, or unset it")
    return value


class ImportStateProbe:
    """The instance's import state for the open health route: cached, and bounded in time.

    Anyone may call ``GET /migrate/health``, so callers must not make the sidecar
    query the database per request, nor hold a request for the connect timeout
    of a database that is down.  The answer is kept ``ttl`` seconds; at most one
    check runs at a time, in a daemon thread (a wedged one never holds the
    process); a check slower than ``timeout`` answers ``unknown`` (kept ``ttl``
    seconds too, unless the late answer arrives first).
    """

    UNKNOWN = {"state": "unknown", "step": None, "started_at": None, "fix": None}

    def __init__(self, check: Callable[[], dict[str, Any]], *, ttl: float, timeout: float) -> None:
        self._check, self._ttl, self._timeout = check, ttl, timeout
        self._lock = threading.Lock()
        self._answer: dict[str, Any] | None = None
        self._answered_at = 0.0
        self._running: threading.Thread | None = None
        self._started_at = 0.0

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            if self._answer is not None and time.monotonic() - self._answered_at < self._ttl:
                return self._answer
            if self._running is None:
                self._started_at = time.monotonic()
                self._running = threading.Thread(target=self._run, name="cairn-migrate-health", daemon=True)
                self._running.start()
            thread, deadline = self._running, self._started_at + self._timeout
        thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            if self._running is thread:  # still checking: the database is slow or down
                log.warning("the instance's database did not answer the health check within %gs", self._timeout)
                self._answer, self._answered_at = self.UNKNOWN, time.monotonic()
            return self._answer or self.UNKNOWN

    def _run(self) -> None:
        try:
            answer = self._check()
        except Exception as exc:  # noqa: BLE001 - health answers, whatever the database does
            log.warning("the health check of the instance's database failed: %s", exc.__class__.__name__)
            answer = self.UNKNOWN
        with self._lock:
            self._answer, self._answered_at, self._running = answer, time.monotonic(), None


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
        #: ``api.import_state`` for ``GET /migrate/health``, cached and bounded (:class:`ImportStateProbe`).
        self.import_state = ImportStateProbe(
            self._read_import_state,
            ttl=_setting_seconds(self.config, "CAIRN_MIGRATE_HEALTH_CACHE_SECONDS", zero_ok=True),
            timeout=_setting_seconds(self.config, "CAIRN_MIGRATE_HEALTH_TIMEOUT", zero_ok=False))
        self.http_paths  # noqa: B018 - a bad CAIRN_MIGRATE_HTTP_PATHS fails at start, not in a request

    def _read_import_state(self) -> dict[str, Any]:
        from .. import api

        return api.import_state(self.engine, self.instance)

    @property
    def scope(self) -> str:
        """The identity of this app's instance in the state store (:func:`~cairn_migrate.service.state.instance_scope`)."""
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
    def http_paths(self) -> list[Path]:
        """The folders (symlinks resolved) in which an HTTP caller may name a path: ``CAIRN_MIGRATE_HTTP_PATHS``.

        An instance's admin is trusted for that instance only, never for the
        sidecar's host: only the host's operator can allow a folder.  Empty by
        default (HTTP callers use bundle ids and uploads).

        :raises ConfigError: an entry is not an absolute path.
        """
        raw = self.config.get(HTTP_PATHS) or ""
        entries = raw if isinstance(raw, (list, tuple)) else str(raw).split(os.pathsep)
        folders = []
        for entry in (str(e).strip() for e in entries):
            if not entry:
                continue
            if not Path(entry).expanduser().is_absolute():
                raise ConfigError(f"{HTTP_PATHS} names {entry!r}, which is not an absolute folder",
                                  hint=f"set {HTTP_PATHS} to absolute folders separated by '{os.pathsep}'")
            folders.append(Path(entry).expanduser().resolve())
        return folders

    def http_path(self, field: str, value: str) -> Path:
        """The path an HTTP caller named in ``field``, resolved, if the sidecar's operator allows it.

        The symlinks are resolved before the check and the resolved path is what
        the caller's work uses.  The shared state folders are refused even inside
        an allowed folder: they hold every instance's bundles.  The path must lie
        strictly inside an allowed folder: the folder itself is the operator's, not
        a caller's (an ``export`` with ``overwrite`` would replace it whole).

        :raises InvalidInput: (422) the path is in the shared state folders, or
            not strictly inside a folder of ``CAIRN_MIGRATE_HTTP_PATHS``.
        """
        resolved = Path(value).expanduser().resolve()
        if any(resolved.is_relative_to(folder.resolve()) for folder in self.shared_dirs):
            raise InvalidInput(f"'{field}' points into the sidecar's own state folders, which hold every instance's "
                               "bundles", hint="name a server-side bundle by its id: 'bundle' (GET /migrate/bundles "
                               "lists them)", details={"field": field, "path": value})
        if resolved in self.http_paths:
            raise InvalidInput(f"'{field}' {value} is a folder of {HTTP_PATHS} itself; HTTP callers may name only "
                               "paths inside it", hint=f"name a new path inside it, like {Path(value) / 'bundle'}",
                               details={"field": field, "path": value, "setting": HTTP_PATHS})
        if not any(resolved.is_relative_to(folder) for folder in self.http_paths):
            raise InvalidInput(f"'{field}' {value} is outside the folders the sidecar's operator allows HTTP callers "
                               f"to name ({HTTP_PATHS})",
                               # promote's/content's from and to name instances (a URL or .env), never a bundle id
                               hint=("upload the bundle or name a server-side one by 'bundle'; " if field not in
                                     ("from", "to") else "") + f"to allow a folder, the sidecar's operator adds it to {HTTP_PATHS} "
                               f"('{os.pathsep}'-separated)",
                               details={"field": field, "path": value, "setting": HTTP_PATHS})
        return resolved

    def confinement(self) -> tuple[Instance, list[Path]]:
        """What HTTP callers are confined to: this sidecar's instance, and the peers ``CAIRN_MIGRATE_PEERS`` lists
        (:meth:`~cairn_migrate.operations.OpContext.confine`)."""
        from ..operations.confine import peer_paths

        return self.instance(), peer_paths(self.config.get(PEERS))

    def allow_transform(self, field: str, value: str) -> None:
        """Refuse code an HTTP caller names (``transform``) unless the sidecar's operator lists it in ``CAIRN_MIGRATE_TRANSFORMS``.

        :raises InvalidInput: (422) not listed: an instance's admin never runs code on the sidecar's host.
        """
        from ..content.transform import allowed_transforms, refuse_unlisted

        refuse_unlisted(value, allowed_transforms(self.config.get(TRANSFORMS)))

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

        Opened outside the state's lock, so a health check stuck connecting never
        holds up another request nor :meth:`close`.

        :raises ConfigError: the database settings are wrong.
        :raises InstanceUnreachable: the database does not answer.
        """
        from ..instance.database import open_engine

        with self._lock:
            if self._engine is not None:
                return self._engine
            instance = self.instance()
        engine = open_engine(instance)  # outside the lock: a database that does not answer holds no other caller
        with self._lock:
            if self._engine is None:
                self._engine = engine
            else:  # another caller opened one meanwhile: keep one
                engine.dispose()
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

        from .. import operations
        from .service_jobs import operation_job

        for operation in operations.all_operations():  # the job runner runs every registered operation
            state.runner.register(operation.name, partial(operation_job, name=operation.name, state=state))

        from ..endpoints import blueprint
        from ..endpoints.errors import register_error_handlers
        from ..hooks.schedule import init_scheduler

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
