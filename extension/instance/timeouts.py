"""How long cairn-migrate waits for a database, storage or HTTP server, in one place.

Every network call has a timeout: a server whose port accepts but never
answers must end in one error naming the host and the setting, not a hang.
The values are read from the process environment on every call, so a
long-running ``serve`` picks up what its environment says and tests can set
them per call.

* ``CAIRN_MIGRATE_CONNECT_TIMEOUT`` (10 s): connecting: database login
  (PostgreSQL, MariaDB), storage and HTTP connections, and the answer to
  ``verify --url``'s ``/server/ping`` and to the freeze proof of ``export
  --freeze`` (an HTTP server's other answers, and a
  storage server's, wait for the read timeout);
* ``CAIRN_MIGRATE_READ_TIMEOUT`` (600 s): one read from a server that went
  silent mid-work: MariaDB socket reads, storage and HTTP responses
  (PostgreSQL: TCP keepalives and ``tcp_user_timeout``, so a dead server is
  noticed while a merely slow query is not cut);
* ``CAIRN_MIGRATE_SQLITE_BUSY_TIMEOUT`` (30 s): waiting for another process's
  SQLite write lock.
"""

from __future__ import annotations

import os

from ..errors import ConfigError

CONNECT_ENV = "CAIRN_MIGRATE_CONNECT_TIMEOUT"
READ_ENV = "CAIRN_MIGRATE_READ_TIMEOUT"
SQLITE_BUSY_ENV = "CAIRN_MIGRATE_SQLITE_BUSY_TIMEOUT"
DEFAULTS = {CONNECT_ENV: 10.0, READ_ENV: 600.0, SQLITE_BUSY_ENV: 30.0}


def _seconds(name: str) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return DEFAULTS[name]
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} is not a positive number of seconds",
                          hint=f"set {name} to e.g. {DEFAULTS[name]:g}, or unset it")
    return value


def connect_timeout() -> float:
    """Seconds to connect to a server, log in to a database, or get a ping's answer (``CAIRN_MIGRATE_CONNECT_TIMEOUT``)."""
    return _seconds(CONNECT_ENV)


def read_timeout() -> float:
    """Seconds a server may stay silent while we wait for data (``CAIRN_MIGRATE_READ_TIMEOUT``)."""
    return _seconds(READ_ENV)


def sqlite_busy_timeout() -> float:
    """Seconds to wait for another process's SQLite lock (``CAIRN_MIGRATE_SQLITE_BUSY_TIMEOUT``)."""
    return _seconds(SQLITE_BUSY_ENV)


def hint(*settings: str) -> str:
    """The fix line of a timeout error: which settings to raise."""
    return f"is the server up and answering? a slow one needs a larger {' or '.join(settings)}"
