"""The freeze: a flag in the sidecar's state store that holds the instance's writes.

While an export captures a coordinated snapshot, the instance's hook
(installed by ``install-extension``) asks ``GET /migrate/freeze`` before item
and file writes and refuses them with 503 while a freeze is active.  The flag
lives in the state store, not in memory, so a CLI export and a running
``serve`` process agree on it.  A freeze whose owner process died (same
host, pid gone) or whose deadline passed is ignored: a crashed export must
never leave an instance read-only.  Each instance has its own freeze (one row
per :func:`~cairn_migrate.state.instance_scope`), so sidecars sharing a state
store never hold or release each other's writes.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from .jobs import _pid_alive, _state_engine
from .state import create_tables

_metadata = sa.MetaData()
#: One row per instance.  (``cm_freeze``, the single unscoped row of earlier
#: versions, is left alone and read by no one.)
freeze_table = sa.Table(
    "cm_instance_freeze",
    _metadata,
    sa.Column("instance", sa.String(64), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("since", sa.String(40), nullable=False),
    sa.Column("until", sa.String(40), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)

#: The longest a freeze holds without being renewed.
DEFAULT_TTL = dt.timedelta(hours=2)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _engine(state_url: str) -> sa.Engine:
    engine = _state_engine(state_url)
    create_tables(engine, _metadata)
    return engine


def set_freeze(state_url: str, reason: str, ttl: dt.timedelta = DEFAULT_TTL, *, scope: str) -> None:
    """Start holding the writes of instance ``scope`` (replaces its earlier freeze)."""
    engine = _engine(state_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.delete(freeze_table).where(freeze_table.c.instance == scope))
            conn.execute(
                sa.insert(freeze_table).values(
                    instance=scope,
                    reason=reason,
                    since=_now().isoformat(),
                    until=(_now() + ttl).isoformat(),
                    host=socket.gethostname(),
                    pid=os.getpid(),
                )
            )
    finally:
        engine.dispose()


def clear_freeze(state_url: str, *, scope: str) -> None:
    """Stop holding the writes of instance ``scope``."""
    engine = _engine(state_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.delete(freeze_table).where(freeze_table.c.instance == scope))
    finally:
        engine.dispose()


def freeze_state(state_url: str, *, scope: str) -> dict[str, Any]:
    """The freeze of instance ``scope``: ``{"active": bool, "reason", "since", "until"}``, stale ones inactive."""
    engine = _engine(state_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(freeze_table).where(freeze_table.c.instance == scope)).mappings().first()
    finally:
        engine.dispose()
    if row is None:
        return {"active": False}
    stale = dt.datetime.fromisoformat(row["until"]) < _now() or (
        row["host"] == socket.gethostname() and not _pid_alive(int(row["pid"]))
    )
    return {"active": not stale, "reason": row["reason"], "since": row["since"], "until": row["until"], "stale": stale}


@contextmanager
def frozen(state_url: str | None, *, scope: str, enabled: bool, reason: str) -> Iterator[None]:
    """Hold the writes of instance ``scope`` for the duration of the block (a no-op unless ``enabled``)."""
    if not enabled:
        yield
        return
    if not state_url:
        from .state import default_state_url

        state_url = default_state_url()
    set_freeze(state_url, reason, scope=scope)
    try:
        yield
    finally:
        clear_freeze(state_url, scope=scope)
