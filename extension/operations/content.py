"""``content``: move rows (and their related rows, files and bytes) from one instance to another.

The wrapper between the registry and :mod:`cairn_migrate.content`: it reads the two
instances' ``.env`` files (both are read through their databases, so the plan is the same
whichever path writes) and hands the move to :func:`cairn_migrate.content.move.plan` /
:func:`~cairn_migrate.content.move.apply`.  ``via="api"`` also needs the running target's URL
(``to_url``, else the ``PUBLIC_URL`` of its ``.env``) and an admin token (``to_token``, a secret).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError, InvalidInput


def _is_url(value: str) -> bool:
    return urlsplit(value).scheme in ("http", "https")


def _instances(ctx: Any, p: dict[str, Any]) -> tuple[Any, Any]:
    for key, option in (("from_", "--from"), ("to", "--to")):
        if _is_url(p[key]):
            raise InvalidInput(f"content move reads both instances' rows from their databases: {option} {p[key]} "
                               "is a URL, not an instance's .env",
                               hint=f"pass {option} with the instance's .env; for the target's API add --via api "
                               "--to-token TOKEN (and --to-url URL when its PUBLIC_URL does not reach it)")
    return ctx.other_instance(p["from_"]), ctx.other_instance(p["to"])


def _client(ctx: Any, p: dict[str, Any], target: Any) -> Callable[[], Any] | None:
    """``via="api"``: what makes the target's API client (checked before any work)."""
    if p["via"] != "api":
        return None
    token = ctx.secret("to_token") or p.get("to_token")
    if not token:
        raise InvalidInput("content move --via api writes through the target's API: it needs an admin token",
                           hint="pass --to-token (to_token) of an admin of the target")
    url = p.get("to_url") or target.public_url
    if not url or not _is_url(url):
        raise ConfigError(f"The target's .env {p['to']} sets no absolute PUBLIC_URL to reach its API at",
                          hint="pass the running target's URL with --to-url, or set PUBLIC_URL in its .env")
    from ..content.api_client import ApiClient

    return lambda: ApiClient(url, token, concurrency=p["concurrency"])


def plan(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    """The move's plan: per collection created/updated/unchanged/skipped/deleted, users, files; writes nothing."""
    from ..content.move import plan as plan_move

    source, target = _instances(ctx, p)
    _client(ctx, p, target)
    return plan_move(source, target, p, state_url=ctx.state_url, progress=ctx.progress)


def apply(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Plan, then (unless refused) move: via db, bytes then rows in one target transaction; via api, through
    the target's API in batches (a failure leaves a partial move the ID map resumes)."""
    from ..content.move import apply as apply_move

    source, target = _instances(ctx, p)
    return apply_move(source, target, p, state_url=ctx.state_url, progress=ctx.progress, client=_client(ctx, p, target))
