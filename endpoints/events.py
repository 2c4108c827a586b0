"""``/migrate/events``: what the instance's hook reports (uploads, item changes), kept in a bounded ring.

``POST`` is signed by the hook with the shared secret (no token: the hook runs
inside the instance on behalf of whoever wrote); ``GET`` is for admins.  The
events live in memory in the serving process: they are a recent-activity feed,
not a ledger.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import threading
from typing import Any

from flask import current_app, request
from flask.typing import ResponseReturnValue

from ..errors import InvalidInput
from ..service.schemas import InstanceEventsSchema
from . import bp
from .auth import admin_required
from .signed import signed_required

#: How many events the ring keeps.
MAX_EVENTS = 500
_KEY = "cairn_migrate_events"
_create_lock = threading.Lock()
_BODY = InstanceEventsSchema()


class EventRing:
    """The newest :data:`MAX_EVENTS` events, thread-safe, newest last."""

    def __init__(self, size: int = MAX_EVENTS) -> None:
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, event: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            record = {"id": next(self._ids), "received": dt.datetime.now(dt.timezone.utc).isoformat(), **event}
            self._events.append(record)
            return record

    def list(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)[-limit:][::-1]


def _ring() -> EventRing:
    with _create_lock:
        ring = current_app.extensions.get(_KEY)
        if ring is None:
            ring = current_app.extensions[_KEY] = EventRing()
        return ring  # type: ignore[no-any-return]


def _clip(event: dict[str, Any]) -> dict[str, Any]:
    """A loaded event cut to what the ring keeps: the feed is bounded in count and in size."""
    keys = event.get("keys") or []
    return {
        "event": event["event"][:100],
        "at": (event.get("at") or "")[:40] or None,
        "collection": event.get("collection"),
        "keys": [k for k in keys if isinstance(k, (str, int))][:100],
        "user": event.get("user"),
        "file": event.get("file"),
    }


@bp.post("/events")
@signed_required
def post_event() -> ResponseReturnValue:
    """Record the changes the instance's hook reports (signed with the shared secret).
    ---
    post:
      summary: Report instance events (hook only, HMAC-signed)
      description: >-
        Signed with X-Cairn-Migrate-Timestamp and X-Cairn-Migrate-Signature
        (HMAC-SHA256 with the secret in EXTENSIONS_PATH/.cairn-migrate.json); tokens are not accepted.
        The body is one event, or {"events": [...]} with up to 200 of them: the hook batches what
        the instance writes (one event per run of the same change, up to 100 keys each) and sends a
        batch at most every 250 ms, so a bulk write costs a request per batch, not per item.
      requestBody:
        content:
          application/json:
            schema: InstanceEventsSchema
      responses:
        "202":
          description: Recorded (the ids the events were given).
        "401":
          $ref: "#/components/responses/Error"
        "422":
          $ref: "#/components/responses/Error"
    """
    body = _BODY.load(request.get_json(silent=True))  # a ValidationError answers 422 with its details
    if "events" in body:  # every event checked by the load, before any is recorded
        ids = [_ring().add(_clip(event))["id"] for event in body["events"]]
        return {"ok": True, "ids": ids}, 202
    record = _ring().add(_clip(body))
    return {"ok": True, "id": record["id"]}, 202


@bp.get("/events")
@admin_required
def list_events() -> ResponseReturnValue:
    """The newest events the instance's hook reported, newest first.
    ---
    get:
      summary: Recent instance events
      parameters:
        - in: query
          name: limit
          schema: {type: integer, minimum: 1, maximum: 500}
      responses:
        "200":
          description: The events.
    """
    try:
        limit = int(request.args.get("limit", 100))
    except ValueError:
        raise InvalidInput("limit must be a number") from None
    if not 1 <= limit <= MAX_EVENTS:
        raise InvalidInput(f"limit must be between 1 and {MAX_EVENTS}")
    return {"data": _ring().list(limit)}
