"""``content``: move rows (and their related rows, files and bytes) from one instance to another.

The wrapper between the registry and :mod:`cairn_migrate.content`: it reads the two
instances' ``.env`` files (the direct database path, ``via="db"``) and hands the move
to :func:`cairn_migrate.content.move.plan` / :func:`~cairn_migrate.content.move.apply`.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput

def _instances(ctx: Any, p: dict[str, Any]) -> tuple[Any, Any]:
    if p["via"] != "db":
        raise InvalidInput("content move --via api is not available yet",
                           hint="use --via db (the default) with both instances' .env files")
    return ctx.other_instance(p["from_"]), ctx.other_instance(p["to"])


def plan(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    """The move's plan: per collection created/updated/unchanged/skipped/deleted, users, files; writes nothing."""
    from ..content.move import plan as plan_move

    source, target = _instances(ctx, p)
    return plan_move(source, target, p, state_url=ctx.state_url, progress=ctx.progress)


def apply(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Plan, then (unless refused) move: bytes, then rows in one target transaction."""
    from ..content.move import apply as apply_move

    source, target = _instances(ctx, p)
    return apply_move(source, target, p, state_url=ctx.state_url, progress=ctx.progress)
