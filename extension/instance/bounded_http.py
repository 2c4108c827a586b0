"""Every request to an instance's API bounded: an overall deadline and a ceiling on the answer's size.

An instance's admin is trusted for that instance only, never for the sidecar's host, and a content move
talks to instances it does not control (``--from URL``, a target's API).  The connect and read timeouts
(:mod:`.timeouts`) bound each wait on the socket, not a request: a hostile or broken server that trickles
one byte every few seconds satisfies a read timeout forever, and one that answers an endless body (a JSON
page, a key list, an asset without a length) fills the host's memory or disk.  So every request to an
instance's API goes through :func:`request`:

* ``CAIRN_MIGRATE_HTTP_DEADLINE`` (default 3600 s): the whole request, from the first byte sent to the last
  byte of the answer read.  A watchdog timer shuts the connection's socket down when it passes (a blocked
  read returns at once), and the request fails naming the URL, the limit and the setting.  An hour covers a
  file of several GB on a slow link; raise it for larger ones.
* ``CAIRN_MIGRATE_MAX_RESPONSE_MB`` (default 256): the most an answer may carry when its size is not known
  beforehand: a JSON page or answer (held in memory to be parsed), a streamed key list (about 45 bytes per
  uuid, so a collection of more than ~5 million uuid-keyed rows needs more), an asset served without
  ``Content-Length``.  An answer that announces its length may not carry more than that (a JSON answer may
  not announce more than the ceiling either).

The watchdog finds the socket through the connection classes of :class:`BoundedAdapter` (mounted by
:func:`session`), which register each connection a request uses with that request's watch.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..errors import ConfigError, InstanceUnreachable

DEADLINE_ENV = "CAIRN_MIGRATE_HTTP_DEADLINE"
MAX_RESPONSE_ENV = "CAIRN_MIGRATE_MAX_RESPONSE_MB"
DEFAULT_DEADLINE = 3600.0
DEFAULT_MAX_RESPONSE_MB = 256.0
CHUNK = 65536


class RemoteLimit(InstanceUnreachable):
    """A remote's answer passed the deadline or the size ceiling: stopped, nothing of it used."""

    code = "remote_limit"


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} is not a positive number", hint=f"set {name} to e.g. {default:g}, or unset it")
    return value


def deadline() -> float:
    """Seconds one request to an instance's API may take, answer included (``CAIRN_MIGRATE_HTTP_DEADLINE``)."""
    return _number(DEADLINE_ENV, DEFAULT_DEADLINE)


def max_response() -> int:
    """Bytes an answer of unknown size may carry (``CAIRN_MIGRATE_MAX_RESPONSE_MB``)."""
    return int(_number(MAX_RESPONSE_ENV, DEFAULT_MAX_RESPONSE_MB) * 1024 * 1024)


# --------------------------------------------------------------------------- the watchdog
_current = threading.local()


def _shut(sock: Any) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Watch:
    """One request's deadline: when it passes, the sockets of the connections the request uses are shut down."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def attach(self, conn: Any) -> None:
        """``conn`` serves this request (its socket now, or once it connects: :meth:`_Registered.connect`).  The
        socket is kept here too: http.client drops the connection's reference to it when the answer is read
        until the server closes, and the answer's reader still blocks on it."""
        with self._lock:
            conn._cm_watch = self  # a connection reused by a later request belongs to that request's watch only
            self._conns.append((conn, getattr(conn, "sock", None)))
            expired = self.expired
        if expired:
            _shut(getattr(conn, "sock", None))

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks = [sock or getattr(conn, "sock", None) for conn, sock in self._conns
                     if getattr(conn, "_cm_watch", None) is self]
        for sock in socks:
            _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            for conn, _sock in self._conns:
                if getattr(conn, "_cm_watch", None) is self:
                    conn._cm_watch = None
            self._conns.clear()


class _Registered:
    """Mixed into urllib3's connections: each one a request uses joins that request's :class:`Watch`."""

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        watch = getattr(self, "_cm_watch", None)
        if watch is not None:
            watch.attach(self)  # now with its socket (cut at once when the deadline already passed)

    def request(self, *args: Any, **kwargs: Any) -> None:
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watch.attach(self)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _Conn(_Registered, HTTPConnection):
    pass


class _TlsConn(_Registered, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Conn


class _TlsPool(HTTPSConnectionPool):
    ConnectionCls = _TlsConn


class BoundedAdapter(HTTPAdapter):
    """requests' adapter whose connections a :class:`Watch` can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TlsPool}


def session() -> requests.Session:
    """A session whose requests :func:`request` can bound."""
    out = requests.Session()
    adapter = BoundedAdapter()
    out.mount("http://", adapter)
    out.mount("https://", adapter)
    return out


# --------------------------------------------------------------------------- requests
def _too_slow(method: str, url: str, watch: Watch) -> RemoteLimit:
    return RemoteLimit(f"{method} {url} did not finish within {watch.seconds:g} s (its answer still coming): stopped",
                       details={"url": url, "limit_seconds": watch.seconds},
                       hint=f"the server is too slow or stalling on purpose; for a legitimately slow one raise "
                       f"{DEADLINE_ENV}")


def _too_large(method: str, url: str, limit: int, why: str) -> RemoteLimit:
    return RemoteLimit(f"{method} {url} answered more than {limit} bytes ({why}): stopped",
                       details={"url": url, "limit_bytes": limit},
                       hint=f"check the instance; for a legitimately larger answer raise {MAX_RESPONSE_ENV} "
                       f"(now {limit / 1048576:g})")


def request(http: requests.Session, method: str, url: str, *, stream: bool = False, within: float | None = None,
            **kwargs: Any) -> requests.Response:
    """``http.request`` under the deadline (:func:`deadline`) and the size ceiling (:func:`max_response`).

    ``within``: a shorter deadline for a request that must be quick whatever the setting (a token check
    on a URL an HTTP caller names holds a sidecar worker while it waits).

    Without ``stream`` the whole answer is read here (at most the ceiling, or its announced length) and the
    response is returned complete (``.content``, ``.json()``).  With ``stream`` the caller reads the body
    through :func:`iter_body` or :class:`BoundedBody`, which keep the limits, and closes the response (which
    ends the watch).

    :raises RemoteLimit: the deadline passed, or the answer is larger than allowed.
    :raises requests.RequestException: as ``requests`` does otherwise.
    """
    watch = Watch(deadline() if within is None else min(deadline(), within))
    _current.watch = watch
    try:
        response = http.request(method, url, stream=True, **kwargs)
    except requests.RequestException:
        watch.cancel()
        if watch.expired:
            raise _too_slow(method, url, watch) from None
        raise
    except BaseException:
        watch.cancel()
        raise
    finally:
        _current.watch = None
    response._cm_watch = watch  # type: ignore[attr-defined]
    response._cm_what = (method, url)  # type: ignore[attr-defined]
    original = response.close

    def close() -> None:
        try:
            original()
        finally:
            watch.cancel()

    response.close = close  # type: ignore[method-assign]
    if stream:
        return response
    try:
        limit = max_response()
        announced = _announced(response)
        if announced is not None and announced > limit:
            raise _too_large(method, url, limit, f"it announced {announced}")
        response._content = b"".join(iter_body(response, limit))  # type: ignore[attr-defined]
    finally:
        response.close()
    return response


def _announced(response: requests.Response) -> int | None:
    raw = response.headers.get("Content-Length")
    return int(raw) if raw is not None and raw.strip().isdigit() else None


def iter_body(response: requests.Response, limit: int | None = None) -> Iterator[bytes]:
    """The body of a response :func:`request` sent, in chunks, stopped at ``limit`` bytes (default the ceiling)
    or the deadline.  ``decode_content`` as requests does (gzip undone), counted after decoding."""
    method, url = getattr(response, "_cm_what", ("GET", response.url))
    watch: Watch | None = getattr(response, "_cm_watch", None)
    limit = max_response() if limit is None else limit
    total = 0
    try:
        for chunk in response.iter_content(CHUNK):
            total += len(chunk)
            if total > limit:
                response.close()
                raise _too_large(method, url, limit, "and had not ended")
            yield chunk
    except requests.RequestException:
        if watch is not None and watch.expired:
            raise _too_slow(method, url, watch) from None
        raise
    if watch is not None and watch.expired:  # the cut socket may read as a clean end: never a truncated answer
        raise _too_slow(method, url, watch)


class BoundedBody:
    """A streamed body (an asset's bytes) as a closable binary reader that keeps the limits: never more than the
    length the answer announced (or the ceiling without one), never past the deadline."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        announced = _announced(response)
        self._limit = announced if announced is not None else max_response()
        self._chunks = iter_body(response, self._limit)
        self._buffer = b""
        self._done = False

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self._buffer + b"".join(self._drain())
        while len(self._buffer) < size and not self._done:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                self._done = True
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def _drain(self) -> Iterator[bytes]:
        self._buffer = b""
        if not self._done:
            yield from self._chunks
            self._done = True

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> BoundedBody:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

