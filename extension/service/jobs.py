"""Jobs: long operations with a persisted record (state, progress, log, report).

One record format serves every shell: the HTTP API starts a job on the
:class:`JobRunner`'s thread pool and answers ``202``; the CLI runs the same
job function synchronously with :meth:`JobRunner.run_inline`; a scheduled
operation is submitted from APScheduler's thread (``hooks/schedule.py``).  Records live in the sidecar's own state store
(any SQLAlchemy URL, an embedded SQLite file by default), never in the CairnCMS
database.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool

from ..errors import InvalidInput, MigrateError, NotFound, first_line, unexpected
from .state import add_missing_column, create_tables

log = logging.getLogger(__name__)

#: Every state a job can be in; the last three are final.
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = ("succeeded", "failed", "cancelled")

#: How many log lines a job keeps (the oldest are dropped).
MAX_LOG_LINES = 1000
#: Progress is written at most this often (seconds) unless the write is final.
PROGRESS_INTERVAL = 0.5

INTERRUPTED_MESSAGE = "interrupted: the sidecar stopped while it ran"

JobFunction = Callable[["JobContext"], "dict[str, Any] | None"]


class JobCancelled(MigrateError):
    """Raised by :meth:`JobContext.check_cancelled` once a cancel was requested."""

    exit_code = 3
    http_status = 409
    code = "cancelled"


class JobConflict(MigrateError):
    """The job is in a state that does not allow the request (e.g. cancelling a finished job)."""

    exit_code = 3
    http_status = 409
    code = "conflict"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


metadata = sa.MetaData()

jobs_table = sa.Table(
    "cm_jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(100), nullable=False, index=True),
    sa.Column("params", sa.Text, nullable=False, default="{}"),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("items_done", sa.BigInteger, nullable=False, default=0),
    sa.Column("items_total", sa.BigInteger, nullable=True),
    sa.Column("bytes_done", sa.BigInteger, nullable=False, default=0),
    sa.Column("bytes_total", sa.BigInteger, nullable=True),
    sa.Column("rate_items_per_s", sa.Float, nullable=True),
    sa.Column("rate_bytes_per_s", sa.Float, nullable=True),
    sa.Column("created_at", sa.String(40), nullable=False, index=True),
    sa.Column("started_at", sa.String(40), nullable=True),
    sa.Column("finished_at", sa.String(40), nullable=True),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("seq", sa.BigInteger, nullable=False, default=0),
    # The instance the job belongs to (state.instance_scope); NULL for jobs written before scoping.
    sa.Column("instance", sa.String(64), nullable=True, index=True),
)

job_logs_table = sa.Table(
    "cm_job_logs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Index("ix_cm_job_logs_job_id_id", "job_id", "id"),
)


def _state_engine(url: str | sa.URL) -> Engine:
    """An engine for the state store; a SQLite file's folder is created on demand."""
    parsed = make_url(url) if isinstance(url, str) else url
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            # One shared connection, or each thread would see its own empty database.
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        else:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs = {"connect_args": {"timeout": 30, "check_same_thread": False}}
    elif parsed.get_backend_name() == "postgresql":
        # A held row lock (a sync's run lock) must end when its holder's host dies: TCP keepalives on both
        # ends (libpq's for a dead server, the session's tcp_keepalives_* for the server to drop a dead
        # client and its locks) find a dead peer within about a minute and a half; connect_timeout bounds
        # the login.
        from ..instance.timeouts import connect_timeout

        kwargs = {"connect_args": {"connect_timeout": max(2, math.ceil(connect_timeout())), "keepalives": 1,
                                   "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 6,
                                   "options": "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 "
                                              "-c tcp_keepalives_count=6"},
                  "pool_pre_ping": True}
    elif parsed.get_backend_name() in ("mysql", "mariadb"):
        from ..instance.timeouts import connect_timeout

        kwargs = {"connect_args": {"connect_timeout": connect_timeout()}, "pool_pre_ping": True}
    return sa.create_engine(parsed, **kwargs)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


class JobStore:
    """Job records of one instance in the sidecar's state store.

    :param url: a SQLAlchemy URL (``sqlite:////path/state.db``, ``postgresql+psycopg://…``).
        The tables ``cm_jobs`` and ``cm_job_logs`` are created on first use.
    :param scope: the instance the records belong to (:func:`~cairn_migrate.service.state.instance_scope`),
        or a function returning it, called on first use (so an app reads its
        instance only when a job is touched).  New jobs carry it; ``get``,
        ``list``, ``request_cancel`` and recovery see only the jobs carrying it, so
        sidecars of several instances can share one store.  ``None`` is the
        bucket of jobs without an instance (those written before scoping).
    """

    def __init__(self, url: str | sa.URL, scope: str | Callable[[], str] | None = None) -> None:
        self.url = url
        self._scope = scope
        self._engine: Engine | None = None
        self._lock = threading.RLock()
        self._last_progress_write: dict[str, float] = {}

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                engine = _state_engine(self.url)
                create_tables(engine, metadata)
                add_missing_column(engine, jobs_table, "instance")
                self._engine = engine
            return self._engine

    @property
    def scope(self) -> str | None:
        """The instance whose jobs this store sees (resolved once)."""
        with self._lock:
            if callable(self._scope):
                self._scope = self._scope()
            return self._scope

    def _mine(self) -> sa.ColumnElement[bool]:
        """The condition "belongs to this store's instance" (``IS NULL`` for the unscoped bucket)."""
        return jobs_table.c.instance == self.scope

    def close(self) -> None:
        """Dispose of the engine (the store reopens on next use)."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    # Records ----------------------------------------------------------------
    def create(self, kind: str, params: Mapping[str, Any] | None = None, *, job_id: str | None = None) -> str:
        """Insert a ``queued`` job and return its id.

        :raises InvalidInput: if ``params`` is not JSON-serialisable.
        """
        try:
            params_json = json.dumps(dict(params or {}), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"The parameters of a {kind} job are not JSON-serialisable: {exc}") from exc
        job_id = job_id or uuid.uuid4().hex
        with self._lock, self.engine.begin() as conn:
            conn.execute(
                jobs_table.insert().values(
                    id=job_id,
                    kind=kind,
                    params=params_json,
                    state="queued",
                    items_done=0,
                    bytes_done=0,
                    created_at=_now(),
                    cancel_requested=False,
                    owner=_owner(),
                    seq=0,
                    instance=self.scope,
                )
            )
        return job_id

    def get(self, job_id: str, *, with_log: bool = True) -> dict[str, Any]:
        """The job record as a JSON-safe dict.

        :raises NotFound: if there is no such job.
        """
        with self._lock, self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs_table).where(jobs_table.c.id == job_id, self._mine())).mappings().first()
            if row is None:
                raise NotFound(f"There is no job {job_id!r}", hint="list the jobs with GET /migrate/jobs")
            lines = None
            if with_log:
                lines = [
                    {"at": r.at, "message": r.message}
                    for r in conn.execute(
                        sa.select(job_logs_table.c.at, job_logs_table.c.message)
                        .where(job_logs_table.c.job_id == job_id)
                        .order_by(job_logs_table.c.id)
                    )
                ]
        return self._record(row, lines)

    def list(self, *, state: str | None = None, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Jobs newest first, optionally only one ``state`` and/or ``kind`` (logs left out)."""
        query = (
            sa.select(jobs_table)
            .where(self._mine())
            .order_by(jobs_table.c.created_at.desc(), jobs_table.c.id.desc())
            .limit(limit)
        )
        if state:
            query = query.where(jobs_table.c.state == state)
        if kind:
            query = query.where(jobs_table.c.kind == kind)
        with self._lock, self.engine.connect() as conn:
            return [self._record(row, None) for row in conn.execute(query).mappings()]

    @staticmethod
    def _record(row: Mapping[str, Any], lines: list[dict[str, str]] | None) -> dict[str, Any]:
        record = {
            "id": row["id"],
            "kind": row["kind"],
            "params": _loads(row["params"]) or {},
            "state": row["state"],
            "progress": {
                "items_done": row["items_done"],
                "items_total": row["items_total"],
                "bytes_done": row["bytes_done"],
                "bytes_total": row["bytes_total"],
                "rate_items_per_s": row["rate_items_per_s"],
                "rate_bytes_per_s": row["rate_bytes_per_s"],
            },
            "created_at": row["created_at"],
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
            "cancel_requested": bool(row["cancel_requested"]),
            "result": _loads(row["result"]),
            "error": _loads(row["error"]),
        }
        if lines is not None:
            record["log"] = lines
        return record

    # Transitions ------------------------------------------------------------
    def start(self, job_id: str) -> bool:
        """Move a ``queued`` job to ``running``; ``False`` if it is no longer queued (e.g. cancelled)."""
        with self._lock, self.engine.begin() as conn:
            result = conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id, jobs_table.c.state == "queued")
                .values(state="running", started_at=_now(), owner=_owner())
            )
            return result.rowcount == 1

    def update_progress(
        self,
        job_id: str,
        *,
        items_done: int | None = None,
        items_total: int | None = None,
        bytes_done: int | None = None,
        bytes_total: int | None = None,
        rate_items_per_s: float | None = None,
        rate_bytes_per_s: float | None = None,
        final: bool = False,
    ) -> bool:
        """Write progress, at most every :data:`PROGRESS_INTERVAL` seconds unless ``final``.

        :returns: whether the write happened.
        """
        now = time.monotonic()
        with self._lock:
            last = self._last_progress_write.get(job_id)
            if not final and last is not None and now - last < PROGRESS_INTERVAL:
                return False
            self._last_progress_write[job_id] = now
            values = {
                "items_done": items_done,
                "items_total": items_total,
                "bytes_done": bytes_done,
                "bytes_total": bytes_total,
                "rate_items_per_s": rate_items_per_s,
                "rate_bytes_per_s": rate_bytes_per_s,
            }
            values = {k: v for k, v in values.items() if v is not None}
            if not values:
                return False
            with self.engine.begin() as conn:
                conn.execute(jobs_table.update().where(jobs_table.c.id == job_id).values(**values))
            return True

    def append_log(self, job_id: str, message: str) -> None:
        """Add a log line, keeping only the last :data:`MAX_LOG_LINES`."""
        with self._lock, self.engine.begin() as conn:
            conn.execute(job_logs_table.insert().values(job_id=job_id, at=_now(), message=str(message)))
            cutoff = conn.execute(
                sa.select(job_logs_table.c.id)
                .where(job_logs_table.c.job_id == job_id)
                .order_by(job_logs_table.c.id.desc())
                .offset(MAX_LOG_LINES)
                .limit(1)
            ).scalar()
            if cutoff is not None:
                conn.execute(
                    job_logs_table.delete().where(job_logs_table.c.job_id == job_id, job_logs_table.c.id <= cutoff)
                )

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the final ``state`` (succeeded, failed or cancelled) with its result or error."""
        if state not in FINAL_STATES:
            raise ValueError(f"{state!r} is not a final job state")
        values: dict[str, Any] = {"state": state, "finished_at": _now()}
        values["result"] = None if result is None else _dumps(dict(result))
        values["error"] = None if error is None else _dumps(dict(error))
        with self._lock, self.engine.begin() as conn:
            conn.execute(jobs_table.update().where(jobs_table.c.id == job_id).values(**values))
            self._last_progress_write.pop(job_id, None)

    def request_cancel(self, job_id: str) -> dict[str, Any]:
        """Ask a job to stop; a queued job is cancelled at once.

        :raises NotFound: no such job (of this instance).
        :raises JobConflict: the job has already finished.
        """
        with self._lock, self.engine.begin() as conn:
            row = conn.execute(sa.select(jobs_table.c.state).where(jobs_table.c.id == job_id, self._mine())).first()
            if row is None:
                raise NotFound(f"There is no job {job_id!r}", hint="list the jobs with GET /migrate/jobs")
            if row.state in FINAL_STATES:
                raise JobConflict(f"Job {job_id} has already finished ({row.state}); there is nothing to cancel")
            conn.execute(jobs_table.update().where(jobs_table.c.id == job_id).values(cancel_requested=True))
            conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id, jobs_table.c.state == "queued")
                .values(state="cancelled", finished_at=_now())
            )
        return self.get(job_id, with_log=False)

    def is_cancel_requested(self, job_id: str) -> bool:
        with self._lock, self.engine.connect() as conn:
            value = conn.execute(
                sa.select(jobs_table.c.cancel_requested).where(jobs_table.c.id == job_id)
            ).scalar()
        return bool(value)

    def recover_interrupted(self, *, everything: bool = False) -> list[str]:
        """Mark jobs left ``queued``/``running`` by a process that is gone as failed.

        A job belongs to the process (``host:pid``) that last touched it.  Only
        jobs of this store's instance and of this host whose process is dead are
        recovered, so a CLI run does not fail the jobs of a server that shares
        the store; ``everything=True`` recovers every unfinished job of the
        instance (e.g. a single-process deployment).

        :returns: the ids of the jobs marked failed.
        """
        host = socket.gethostname()
        error = _dumps({"code": "interrupted", "message": INTERRUPTED_MESSAGE})
        recovered = []
        with self._lock, self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(jobs_table.c.id, jobs_table.c.owner).where(
                    jobs_table.c.state.in_(("queued", "running")), self._mine()
                )
            ).all()
            for row in rows:
                owner_host, _, pid = (row.owner or "").rpartition(":")
                dead = not pid.isdigit() or (owner_host == host and not _pid_alive(int(pid)))
                if everything or dead:
                    conn.execute(
                        jobs_table.update()
                        .where(jobs_table.c.id == row.id, jobs_table.c.state.in_(("queued", "running")))
                        .values(state="failed", finished_at=_now(), error=error)
                    )
                    recovered.append(row.id)
        for job_id in recovered:
            log.warning("job %s was %s", job_id, INTERRUPTED_MESSAGE)
        return recovered


class JobContext:
    """What a job function gets: its parameters and ways to report progress.

    :ivar job_id: the record's id.
    :ivar params: the JSON parameters the job was submitted with.
    """

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        params: Mapping[str, Any],
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.params = dict(params)
        self._on_progress = on_progress
        self._on_log = on_log
        self._started = time.monotonic()
        self._progress: dict[str, Any] = {
            "items_done": 0,
            "items_total": None,
            "bytes_done": 0,
            "bytes_total": None,
            "rate_items_per_s": None,
            "rate_bytes_per_s": None,
        }

    @property
    def snapshot(self) -> dict[str, Any]:
        """The current progress (a copy)."""
        return dict(self._progress)

    def progress(
        self,
        items_done: int | None = None,
        items_total: int | None = None,
        bytes_done: int | None = None,
        bytes_total: int | None = None,
    ) -> None:
        """Set absolute progress values (``None`` leaves a value unchanged)."""
        for key, value in (
            ("items_done", items_done),
            ("items_total", items_total),
            ("bytes_done", bytes_done),
            ("bytes_total", bytes_total),
        ):
            if value is not None:
                self._progress[key] = int(value)
        self._flush(final=False)

    def advance(self, items: int = 0, bytes: int = 0) -> None:  # noqa: A002 - the documented name
        """Add ``items`` and ``bytes`` to the done counters."""
        self._progress["items_done"] += int(items)
        self._progress["bytes_done"] += int(bytes)
        self._flush(final=False)

    def log(self, message: str) -> None:
        """Append a line to the job's log (and the module logger)."""
        log.info("job %s: %s", self.job_id, message)
        self.store.append_log(self.job_id, message)
        if self._on_log is not None:
            self._on_log(message)

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if a cancel was requested; call it between items."""
        if self.store.is_cancel_requested(self.job_id):
            raise JobCancelled(f"Job {self.job_id} was cancelled")

    def _flush(self, *, final: bool) -> None:
        elapsed = time.monotonic() - self._started
        if elapsed > 0:
            self._progress["rate_items_per_s"] = round(self._progress["items_done"] / elapsed, 3)
            self._progress["rate_bytes_per_s"] = round(self._progress["bytes_done"] / elapsed, 3)
        self.store.update_progress(self.job_id, final=final, **self._progress)
        if self._on_progress is not None:
            self._on_progress(self.snapshot)


class JobRunner:
    """Runs registered job kinds, in a thread pool or inline, recording each run in a :class:`JobStore`.

    :param store: where the records go.
    :param workers: the thread pool size for :meth:`submit`.
    """

    def __init__(self, store: JobStore, workers: int = 2) -> None:
        self.store = store
        self.workers = max(1, int(workers))
        self._kinds: dict[str, JobFunction] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._recovered = False
        #: job id → in-memory secrets, taken (popped) by the job function.
        self.secrets: dict[str, dict[str, Any]] = {}

    def register(self, kind: str, fn: JobFunction | str, *, replace: bool = False) -> None:
        """Make ``kind`` runnable; ``fn(ctx)`` returns the JSON result dict.

        :param fn: the function, or its import string ``"package.module:function"``
            (imported on first use, so registering never imports heavy modules).
        """
        if kind in self._kinds and not replace and self._kinds[kind] is not fn:
            raise ValueError(f"job kind {kind!r} is already registered")
        self._kinds[kind] = fn  # type: ignore[assignment]

    @property
    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    def _function(self, kind: str) -> JobFunction:
        try:
            fn: JobFunction | str = self._kinds[kind]
        except KeyError:
            raise InvalidInput(
                f"There is no job kind {kind!r}", hint=f"known kinds: {', '.join(self.kinds) or 'none'}"
            ) from None
        if isinstance(fn, str):
            module_name, _, attribute = fn.partition(":")
            resolved = importlib.import_module(module_name)
            for part in attribute.split("."):
                resolved = getattr(resolved, part)
            fn = self._kinds[kind] = resolved  # type: ignore[assignment]
        return fn  # type: ignore[return-value]

    def recover(self, *, everything: bool = False) -> list[str]:
        """Fail the jobs a dead process left unfinished (see :meth:`JobStore.recover_interrupted`)."""
        self._recovered = True
        return self.store.recover_interrupted(everything=everything)

    def ensure_recovered(self) -> None:
        """Run :meth:`recover` once, before the first job of this runner."""
        if not self._recovered:
            with self._lock:
                if self._recovered:
                    return
                self._recovered = True
            self.store.recover_interrupted()

    def submit(self, kind: str, params: Mapping[str, Any] | None = None, *, secrets: Mapping[str, Any] | None = None) -> str:
        """Queue a job on the thread pool and return its id at once.

        :param secrets: values the job needs but the store must never hold
            (passphrases, tokens); handed over in memory via :attr:`secrets`.
        """
        fn = self._function(kind)
        self.ensure_recovered()
        job_id = self.store.create(kind, params)
        if secrets:
            self.secrets[job_id] = {k: v for k, v in secrets.items() if v is not None}
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="cairn-migrate-job")
            self._futures[job_id] = self._executor.submit(self._run, job_id, fn, dict(params or {}), None, None, False)
        return job_id

    def run_inline(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        *,
        on_log: Callable[[str], None] | None = None,
        raise_errors: bool = False,
    ) -> dict[str, Any]:
        """Run a job synchronously in this thread (the CLI path) and return its final record.

        :param raise_errors: re-raise the job's :class:`MigrateError` after recording it,
            so the CLI can exit with its code.
        """
        fn = self._function(kind)
        self.ensure_recovered()
        job_id = self.store.create(kind, params)
        self._run(job_id, fn, dict(params or {}), on_progress, on_log, raise_errors)
        return self.store.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until a submitted job is done and return its record (for tests and shutdown)."""
        future = self._futures.get(job_id)
        if future is not None:
            future.result(timeout=timeout)
        return self.store.get(job_id)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the pool; queued jobs that never started are recorded as interrupted."""
        with self._lock:
            executor, self._executor = self._executor, None
            futures, self._futures = self._futures, {}
        if executor is None:
            return
        executor.shutdown(wait=wait, cancel_futures=True)
        for job_id, future in futures.items():
            if future.cancelled():
                try:
                    if self.store.start(job_id):
                        self.store.finish(
                            job_id, "failed", error={"code": "interrupted", "message": INTERRUPTED_MESSAGE}
                        )
                except Exception:  # pragma: no cover - best effort at shutdown
                    log.exception("could not record job %s as interrupted", job_id)

    def _run(
        self,
        job_id: str,
        fn: JobFunction,
        params: dict[str, Any],
        on_progress: Callable[[dict[str, Any]], None] | None,
        on_log: Callable[[str], None] | None,
        raise_errors: bool,
    ) -> None:
        if not self.store.start(job_id):
            return  # cancelled while queued
        ctx = JobContext(self.store, job_id, params, on_progress=on_progress, on_log=on_log)
        raised: BaseException | None = None
        try:
            ctx.check_cancelled()
            result = fn(ctx)
            if result is None:
                result = {}
            if not isinstance(result, Mapping):
                raise TypeError(f"job kind returned {type(result).__name__}, not a dict")
            result = dict(result)
            json.dumps(result)  # a result that cannot be stored must not count as success
        except JobCancelled as exc:
            # An operation stopped between its write phases keeps its report of what it applied (``exc.report``).
            self._final(ctx, "cancelled", result=getattr(exc, "report", None), error=exc.to_dict())
            raised = exc
        except MigrateError as exc:
            log.info("job %s failed: %s", job_id, exc)
            # An operation that finished partially fails its job but keeps its report (``OutcomeError.report``).
            self._final(ctx, "failed", result=getattr(exc, "report", None),
                        error=exc.to_dict() | {"message": first_line(exc.message)})
            raised = exc
        except Exception as exc:
            log.exception("job %s (%s) raised an unexpected error", job_id, fn)
            self._final(ctx, "failed", error={"code": "internal", "message": unexpected(exc).message})
            raised = exc
        else:
            self._final(ctx, "succeeded", result=result)
        if raise_errors and isinstance(raised, MigrateError):
            raise raised

    def _final(
        self,
        ctx: JobContext,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        try:
            ctx._flush(final=True)
        except Exception:  # the final state matters more than the last progress numbers
            log.exception("could not write the final progress of job %s", ctx.job_id)
        try:
            self.store.finish(ctx.job_id, state, result=result, error=error)
        except Exception as exc:
            log.exception("could not record job %s as %s", ctx.job_id, state)
            if state == "succeeded":
                self.store.finish(
                    ctx.job_id, "failed", error={"code": "internal", "message": f"could not store the result: {exc}"}
                )
            else:
                raise
