"""The freeze: a record in the sidecar's state store that holds the instance's writes.

While an export captures a coordinated snapshot, the instance's hook
(installed by ``install-extension``) asks ``GET /migrate/freeze`` before item
and file writes and refuses them with 503 while a freeze is active.  The record
lives in the state store, not in memory, so a CLI export and a running
``serve`` process agree on it.

Every freeze has a random ``id``: the export proves, through the instance's own
HTTP, that the hook sees *this* freeze before it captures
(:mod:`~cairn_migrate.operations.freeze_proof`).  A freeze expires at ``until``; an export
holds a short one and renews it while it runs, so a crashed export frees the
instance within :data:`EXPORT_TTL`, even when the hook, unable to reach the
sidecar, keeps refusing writes until the expiry it last saw.  A freeze whose
owner process died (same host, pid gone) is ignored at once.  Each instance has
its own freeze (one row per :func:`~cairn_migrate.service.state.instance_scope`), so
sidecars sharing a state store never hold or release each other's writes.

All access to the freeze record goes through the functions of this module.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from ..errors import ConfigError
from ..service.jobs import _pid_alive, _state_engine
from ..service.state import create_tables

log = logging.getLogger(__name__)

_metadata = sa.MetaData()
#: One row per instance.  (``cm_freeze``, the single unscoped row of earlier
#: versions, is left alone and read by no one.)
freeze_table = sa.Table(
    "cm_instance_freeze",
    _metadata,
    sa.Column("instance", sa.String(64), primary_key=True),
    sa.Column("freeze_id", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("since", sa.String(40), nullable=False),
    sa.Column("until", sa.String(40), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)

#: The longest a freeze started by hand (``POST /migrate/freeze``) holds by default.
DEFAULT_TTL = dt.timedelta(hours=2)
#: An export's freeze: short, renewed every :data:`RENEW_EVERY` while the export runs.
EXPORT_TTL = dt.timedelta(seconds=60)
RENEW_EVERY = dt.timedelta(seconds=15)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _engine(state_url: str) -> sa.Engine:
    engine = _state_engine(state_url)
    create_tables(engine, _metadata)
    return engine


def _is_stale(row: Any) -> bool:
    return dt.datetime.fromisoformat(row["until"]) < _now() or (
        row["host"] == socket.gethostname() and not _pid_alive(int(row["pid"]))
    )


def _describe(row: Any) -> dict[str, Any]:
    stale = _is_stale(row)
    return {"active": not stale, "id": row["freeze_id"], "reason": row["reason"], "since": row["since"],
            "until": row["until"], "stale": stale}


def set_freeze(state_url: str, reason: str, ttl: dt.timedelta = DEFAULT_TTL, *, scope: str,
               replace: bool = True) -> dict[str, Any]:
    """Start holding the writes of instance ``scope``; returns the new freeze's state (with its ``id``).

    :param replace: replace an active freeze; otherwise an active one is an error.
    :raises ConfigError: another freeze is active and ``replace`` is false.
    """
    engine = _engine(state_url)
    try:
        with engine.begin() as conn:
            current = conn.execute(sa.select(freeze_table).where(freeze_table.c.instance == scope)).mappings().first()
            if current is not None and not replace and not _is_stale(current):
                raise ConfigError(
                    f"Another freeze is active until {current['until']} ({current['reason']})",
                    hint="wait for that export to finish, or end the freeze with DELETE /migrate/freeze",
                )
            conn.execute(sa.delete(freeze_table).where(freeze_table.c.instance == scope))
            values = {"instance": scope, "freeze_id": secrets.token_hex(16), "reason": reason, "since": _now().isoformat(),
                      "until": (_now() + ttl).isoformat(), "host": socket.gethostname(), "pid": os.getpid()}
            conn.execute(sa.insert(freeze_table).values(**values))
    finally:
        engine.dispose()
    return _describe(values)


def renew_freeze(state_url: str, freeze_id: str, ttl: dt.timedelta) -> bool:
    """Push the expiry of freeze ``freeze_id`` to now + ``ttl``; false when it is no longer there."""
    engine = _engine(state_url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.update(freeze_table).where(freeze_table.c.freeze_id == freeze_id)
                                  .values(until=(_now() + ttl).isoformat()))
    finally:
        engine.dispose()
    return bool(result.rowcount)


def clear_freeze(state_url: str, freeze_id: str | None = None, *, scope: str) -> None:
    """Stop holding the writes of instance ``scope``: freeze ``freeze_id`` only (never another's), or whatever it has."""
    engine = _engine(state_url)
    try:
        with engine.begin() as conn:
            statement = sa.delete(freeze_table).where(freeze_table.c.instance == scope)
            if freeze_id is not None:
                statement = statement.where(freeze_table.c.freeze_id == freeze_id)
            conn.execute(statement)
    finally:
        engine.dispose()


def freeze_state(state_url: str, *, scope: str) -> dict[str, Any]:
    """The freeze of instance ``scope``: ``{"active": bool, "id", "reason", "since", "until", "stale"}``, stale ones inactive."""
    engine = _engine(state_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(freeze_table).where(freeze_table.c.instance == scope)).mappings().first()
    finally:
        engine.dispose()
    return {"active": False} if row is None else _describe(row)


@contextmanager
def _renewing(state_url: str, freeze_id: str, ttl: dt.timedelta, every: dt.timedelta) -> Iterator[None]:
    """Renew the freeze in a background thread while the block runs: only a live export keeps it."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(every.total_seconds()):
            try:
                if not renew_freeze(state_url, freeze_id, ttl):
                    log.warning("the freeze %s was ended by someone else; writes are no longer held", freeze_id)
                    return
            except sa.exc.SQLAlchemyError as exc:  # the next round tries again; the TTL bounds the damage
                log.warning("could not renew the freeze: %s", exc)

    thread = threading.Thread(target=renew, name="cairn-migrate-freeze-renew", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


@contextmanager
def frozen(state_url: str | None, *, scope: str, enabled: bool, reason: str,
           prove: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
           ttl: dt.timedelta = EXPORT_TTL) -> Iterator[dict[str, Any] | None]:
    """Hold the writes of instance ``scope`` for the block (a no-op unless ``enabled``); yields the freeze's state.

    :param prove: called with the new freeze's state before the block runs (the proof that the
        instance enforces it, which may wait out the hook's cache); when it raises, the freeze is
        lifted and the error goes on.  The freeze is lifted when the block ends, also on failure;
        ``lifted_at`` is then set in the yielded dict.
    """
    if not enabled:
        yield None
        return
    if not state_url:
        from ..service.state import default_state_url

        state_url = default_state_url()
    state = set_freeze(state_url, reason, ttl, scope=scope, replace=False)
    try:
        with _renewing(state_url, state["id"], ttl, min(RENEW_EVERY, ttl / 4)):
            if prove is not None:
                state.update(prove(state) or {})
            yield state
    finally:
        clear_freeze(state_url, state["id"], scope=scope)
        state["lifted_at"] = _now().isoformat()
