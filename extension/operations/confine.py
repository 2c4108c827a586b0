"""Cross-instance confinement over HTTP: which instances a sidecar's caller may read or write.

The standard: an instance's admin is trusted for that instance only, never for the sidecar's host or
another instance's records.  So an operation that names two instances (``content``, ``promote``, a sync
profile's ``sync_run``), run through the sidecar (``POST /migrate/ops``, its dry runs, jobs, schedules,
``/migrate/syncs``), must have the sidecar's own instance on one side (the same database:
:func:`~cairn_migrate.service.state.database_identity`, or its ``PUBLIC_URL`` for a side named by URL), and
the other side only when

* the caller proves admin on it: a token for it that the instance's own running API accepts as an
  administrator's (``GET /users/me?fields=role.admin_access``, with the project's timeouts), or
* the sidecar's operator trusts it: its ``.env`` is listed in ``CAIRN_MIGRATE_PEERS`` (paths separated by
  ``os.pathsep``).

A side that is no instance (a bundle, a snapshot folder) is a host path, checked by ``CAIRN_MIGRATE_HTTP_PATHS``.
The CLI is the host's operator and is not confined.  :meth:`~cairn_migrate.operations.OpContext.confine` is the
one place the rule is applied; this module holds it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError, Forbidden

PEERS = "CAIRN_MIGRATE_PEERS"
#: what ``open_env`` answers for a ``.env`` it cannot read: neither the sidecar's instance nor a peer
UNREADABLE = object()


@dataclass(frozen=True)
class Side:
    """One side of an operation: its parameter (``from``/``to``), value (a ``.env`` path or a URL), the token
    the caller gave for it and the URL its API answers at (default: the ``.env``'s ``PUBLIC_URL``; never the
    place a ``.env`` side's admin proof is asked: see :func:`check`)."""

    field: str
    value: str
    token: str | None = None
    url: str | None = None


def _is_url(value: str) -> bool:
    return urlsplit(value).scheme in ("http", "https")


def _norm_url(value: str | None) -> str | None:
    if not value or not _is_url(value):
        return None
    parts = urlsplit(value)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{parts.port or (443 if parts.scheme == 'https' else 80)}" \
        f"{parts.path.rstrip('/')}"


def peer_paths(raw: Any) -> list[Path]:
    """The ``.env`` files ``CAIRN_MIGRATE_PEERS`` lists (absolute paths)."""
    entries = raw if isinstance(raw, (list, tuple)) else str(raw or "").split(os.pathsep)
    out = []
    for entry in (str(e).strip() for e in entries):
        if not entry:
            continue
        if not Path(entry).expanduser().is_absolute():
            raise ConfigError(f"{PEERS} names {entry!r}, which is not an absolute path to an instance's .env",
                              hint=f"set {PEERS} to absolute .env paths separated by '{os.pathsep}'")
        out.append(Path(entry).expanduser())
    return out


def is_admin(url: str, token: str) -> bool:
    """Whether ``token`` is an administrator's on the running instance at ``url`` (its own answer).

    ``url`` is the HTTP caller's: the answer is bounded (:mod:`~cairn_migrate.instance.bounded_http`: at most
    60 s in all, a body of at most the size ceiling), so a server that trickles or floods cannot hold a
    sidecar worker or fill its memory; any failure is "not proven"."""
    import requests

    from ..instance import bounded_http
    from ..instance.timeouts import connect_timeout, read_timeout

    try:
        with bounded_http.session() as http:
            response = bounded_http.request(http, "GET", url.rstrip("/") + "/users/me", within=60.0,
                                            params={"fields": "role.admin_access"},
                                            headers={"Authorization": f"Bearer {token}"},
                                            timeout=(connect_timeout(), min(read_timeout(), 30.0)))
    except (requests.RequestException, bounded_http.RemoteLimit):
        return False
    if response.status_code != 200:
        return False
    try:
        role = (response.json().get("data") or {}).get("role") or {}
    except ValueError:
        return False
    return role.get("admin_access") is True


def check(own: Any, peers: Iterable[Path], sides: Sequence[Side], *, open_env: Any) -> None:
    """Refuse (403) unless one side is ``own`` and every other instance side is proven or a listed peer.

    :param open_env: reads an instance's ``.env`` (the caller's host-path rules already applied).
    :raises Forbidden: the rule is not met (the message names the side and both ways to allow it).
    """
    from ..service.state import database_identity

    own_id, own_url = database_identity(own), _norm_url(own.public_url)
    peer_ids: set[str] | None = None
    others: list[tuple[Side, Any]] = []
    own_seen = False
    for side in sides:
        if _is_url(side.value):
            if own_url is not None and _norm_url(side.value) == own_url:
                own_seen = True
            else:
                others.append((side, None))
            continue
        instance = open_env(side.value)
        if instance is None:  # a bundle or snapshot folder: a host path, not an instance
            continue
        if instance is UNREADABLE:
            others.append((side, instance))
        elif database_identity(instance) == own_id:
            own_seen = True
        else:
            others.append((side, instance))
    if not own_seen:
        raise Forbidden("Over HTTP one side of the operation must be this sidecar's own instance: "
                        + ", ".join(f"'{s.field}' {s.value}" for s in sides) + " names none",
                        hint="an instance's admin is trusted for that instance only: run it from the sidecar of "
                        "one of those instances, or from the CLI on the host")
    for side, instance in others:
        # A URL side is proven at that URL; a .env side only at its own PUBLIC_URL, never at a URL the caller
        # names (to_url): an admin of an API the caller runs would otherwise open another instance's database.
        url = side.value if instance is None else getattr(instance, "public_url", None)
        if side.token and url and _is_url(url) and is_admin(url, side.token):
            continue
        if instance is not None and instance is not UNREADABLE:
            if peer_ids is None:
                peer_ids = set()
                for path in peers:
                    peer = open_env(str(path), trusted=True)
                    if peer is not None and peer is not UNREADABLE:  # an unreadable peer trusts nothing
                        peer_ids.add(database_identity(peer))
            if database_identity(instance) in peer_ids:
                continue
        raise Forbidden(f"'{side.field}' {side.value} is another instance, and the caller has not shown to be its "
                        "admin", hint=f"pass an admin token of that instance (checked against its API), or ask the "
                        f"sidecar's operator to list its .env in {PEERS}", details={"field": side.field})
