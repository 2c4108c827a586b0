"""The HTTP side of a content move over the target's API: retries with backoff, a small pool, the timeouts.

Every call has the project's timeouts (:mod:`cairn_migrate.instance.timeouts`) and goes through
:func:`cairn_migrate.instance.bounded_http.request`: an overall deadline per request and a ceiling on the
answer's size, so a hostile or broken target cannot hold the move forever or fill the host's memory.  A 429
or 5xx answer and a failed connection are retried with exponential backoff and full jitter, waiting at least what a
``Retry-After`` header asks; a read timeout is not retried (the server may have written).  Work is
submitted to a thread pool of ``concurrency`` workers with at most twice that many requests queued, so
memory stays flat however many rows move; :meth:`ApiClient.wait` is the barrier that collects the
answers and raises the first failure.

An interrupt (Ctrl-C, or SIGTERM turned into one by the CLI) must stop the move promptly and still record
what the target acknowledged: :meth:`ApiClient.abandon` cancels the queued calls, stops retries and
backoff sleeps, waits at most :data:`STOP_GRACE` seconds for the calls already on the wire, and runs the
``then`` of every call that was answered, so their keys reach the ID map.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import requests

from ..errors import Forbidden, InstanceUnreachable, InvalidInput, MigrateError, Unauthorized
from ..instance import bounded_http
from ..instance.timeouts import connect_timeout, hint as timeout_hint, read_timeout

#: answers worth another try: too many requests, and the server (or a proxy in front of it) failing
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
DEFAULT_CONCURRENCY = 4
DEFAULT_BATCH = 100
RETRIES = 6
BASE_DELAY = 0.25
MAX_DELAY = 30.0
#: seconds an interrupted move waits for the requests already sent (their answers carry keys to record)
STOP_GRACE = 15.0
#: calls an interrupted move stopped waiting for, still on the wire (see :func:`calls_on_the_wire`)
_LINGERING: list[Future[Any]] = []


def calls_on_the_wire() -> bool:
    """Whether a call an interrupted move gave up on is still running.  Its worker thread would hold the process's
    exit until the target answers (Python joins a pool's threads at exit; up to ``CAIRN_MIGRATE_READ_TIMEOUT``),
    long after the move said it stopped: the CLI exits without them (``cli.main``)."""
    return any(not future.done() for future in _LINGERING)


class AlreadyDone(Exception):
    """Raised by a ``before_retry`` check: the earlier attempt was applied; ``result`` is what it did."""

    def __init__(self, result: Any) -> None:
        super().__init__("applied by an earlier attempt")
        self.result = result


class Stopped(MigrateError):
    """A call not sent (or not retried) because the move was interrupted."""

    code = "interrupted"


def _retry_after(response: requests.Response) -> float:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date), 0 without one."""
    raw = (response.headers.get("Retry-After") or "").strip()
    if not raw:
        return 0.0
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return 0.0  # unreadable: the backoff alone decides
    return min(MAX_DELAY * 4, max(0.0, parsed.timestamp() - time.time()))


def error_text(response: requests.Response) -> str:
    """CairnCMS's error messages (``errors[].message``), or the start of the body."""
    try:
        errors = response.json().get("errors") or []
    except ValueError:
        return response.text[:300]
    return "; ".join(e.get("message", str(e)) if isinstance(e, dict) else str(e) for e in errors) or response.text[:300]


class ApiClient:
    """A running target reached with an admin token."""

    def __init__(self, url: str, token: str, *, concurrency: int = DEFAULT_CONCURRENCY, retries: int = RETRIES,
                 base_delay: float = BASE_DELAY) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.retries = retries
        self.base_delay = base_delay
        self.retried = 0  # how many answers were retried (the report says it)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="content-api")
        self._slots = threading.BoundedSemaphore(2 * max(1, concurrency))
        self._futures: list[tuple[Future[Any], Callable[[Any], None] | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set by abandon(): no new attempt, no backoff sleep

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = bounded_http.session()
            self._local.session.headers["Authorization"] = f"Bearer {self.token}"
        return self._local.session

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One call, retried on 429/5xx and failed connections; any other refusal raises naming the fix.

        ``before_retry``: called before each retry (after the backoff); a request that may have been applied
        although its answer was lost (a gateway's 502/504, a dropped connection) raises there what it finds
        it did (:class:`AlreadyDone`), instead of being sent a second time."""
        rewind = kwargs.pop("rewind", None)  # re-opens a streamed body for another try
        before_retry = kwargs.pop("before_retry", None)
        attempt = 0
        while True:
            if self._stop.is_set():
                raise Stopped(f"{method} {path} was not sent: the move was interrupted")
            if rewind is not None:
                kwargs["files"] = rewind()
            try:
                response = bounded_http.request(self._session(), method, self.url + path,
                                                timeout=(connect_timeout(), read_timeout()), **kwargs)
            except requests.RequestException as exc:
                retryable = isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)) \
                    and not isinstance(exc, requests.ReadTimeout)
                if not retryable or attempt >= self.retries:
                    raise InstanceUnreachable(f"The target {self.url} did not answer {method} {path}: {exc}",
                                              hint=f"start it, or check the URL; {timeout_hint('CAIRN_MIGRATE_READ_TIMEOUT')}") from None
                wait = 0.0
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUS or attempt >= self.retries:
                    raise self._refusal(method, path, response)
                wait = _retry_after(response)
            delay = max(wait, random.uniform(0, min(MAX_DELAY, self.base_delay * 2 ** attempt)))
            with self._lock:
                self.retried += 1
            attempt += 1
            if self._stop.wait(delay):  # an interrupt ends the backoff at once
                raise Stopped(f"{method} {path} was not retried: the move was interrupted")
            if before_retry is not None:
                before_retry()

    def _refusal(self, method: str, path: str, response: requests.Response) -> MigrateError:
        status = response.status_code
        if status == 401:
            return Unauthorized(f"The target {self.url} refused the token ({method} {path}: 401)",
                                hint="pass an admin's static token of the target with --to-token")
        if status == 403:
            return Forbidden(f"The target {self.url} answered 403 to {method} {path}: {error_text(response)}",
                             hint="pass the static token of an admin of the target with --to-token")
        error = InvalidInput if status == 400 else MigrateError
        return error(f"The target {self.url} answered {status} to {method} {path}: {error_text(response)}",
                     details={"status": status},
                     hint="the target's validation refused the row; fix it on the source or the target and run again")

    def submit(self, fn: Callable[[], Any], then: Callable[[Any], None] | None = None) -> None:
        """Run ``fn`` in the pool (waiting while the queue is full); ``then(result)`` runs at :meth:`wait`."""
        self._slots.acquire()

        def run() -> Any:
            try:
                return fn()
            finally:
                self._slots.release()

        self._futures.append((self._pool.submit(run), then))

    def wait(self) -> None:
        """Every submitted call answered; their ``then`` run in order here; the first failure raised."""
        futures, self._futures = self._futures, []
        failure: BaseException | None = None
        for index, (future, then) in enumerate(futures):
            try:
                result = future.result()
            except KeyboardInterrupt:  # the main thread interrupted here: abandon() settles what is left
                self._futures = futures[index:] + self._futures
                raise
            except BaseException as exc:  # noqa: BLE001 - kept, raised after every call is settled
                failure = failure or exc
                continue
            if then is not None:
                then(result)
        if failure is not None:
            raise failure

    def abandon(self, grace: float = STOP_GRACE) -> int:
        """After an interrupt: cancel the queued calls, wait at most ``grace`` seconds for those in flight, run the
        ``then`` of every answered one (their keys are recorded); returns how many were still unanswered."""
        import concurrent.futures

        self._stop.set()
        futures, self._futures = self._futures, []
        running = [f for f, _ in futures if not f.cancel()]
        if running:
            concurrent.futures.wait(running, timeout=grace)
        unanswered = 0
        for future, then in futures:
            if future.cancelled():
                continue
            if not future.done():
                unanswered += 1
                _LINGERING.append(future)
                continue
            if future.exception() is None and then is not None:
                try:
                    then(future.result())
                except Exception:  # noqa: BLE001 - recording one answer must not lose the others
                    pass
        return unanswered

    def close(self) -> None:
        # after abandon() the calls still on the wire are not waited for again (their grace is over)
        self._pool.shutdown(wait=not self._stop.is_set(), cancel_futures=True)
