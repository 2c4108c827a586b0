"""``content``: move rows (and their related rows, files and bytes) from one instance to another.

The wrapper between the registry and :mod:`cairn_migrate.content`: it reads the two
instances' ``.env`` files (the direct database path, ``via="db"``), or opens a bundle as the
source (:mod:`cairn_migrate.content.bundle_source`), resolves the masking profile and the
``--transform`` function as the shell allows them, and hands the move to
:func:`cairn_migrate.content.move.plan` / :func:`~cairn_migrate.content.move.apply`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import InvalidInput


def _check_via(p: dict[str, Any]) -> None:
    if p["via"] != "db":
        raise InvalidInput("content move --via api is not available yet",
                           hint="use --via db (the default) with both instances' .env files")


@contextlib.contextmanager
def _move(ctx: Any, p: dict[str, Any]) -> Iterator[tuple[Any, Any, dict[str, Any], dict[str, Any]]]:
    """``(source, target, params, extras)``: the instances, the parameters as the core reads them, and
    ``bundle``/``function`` for :mod:`cairn_migrate.content.move`."""
    from ..content.bundle_source import is_bundle_path, open_source
    from ..content.transform import load_function

    _check_via(p)
    params = dict(p)
    if p.get("mask"):
        from . import MASK_PROFILES

        params["mask"] = p["mask"] if p["mask"] in MASK_PROFILES else ctx.path("mask", p["mask"])
        params["mask_salt"] = ctx.secret("mask_salt") or p.get("mask_salt")
    function: Callable[..., Any] | None = None
    if p.get("transform"):
        ctx.check_code("transform", p["transform"])  # the sidecar refuses what its operator did not list
        function = load_function(p["transform"])
    target = ctx.other_instance(p["to"])
    source_path = str(ctx.path("from_", p["from_"]))
    if is_bundle_path(source_path):
        with open_source(source_path, progress=ctx.progress) as bundle:
            yield bundle.instance, target, params, {"bundle": bundle, "function": function}
    else:
        yield ctx.other_instance(p["from_"]), target, params, {"function": function}


def plan(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    """The move's plan: per collection created/updated/unchanged/skipped/deleted, users, files; writes nothing."""
    from ..content.move import plan as plan_move

    with _move(ctx, p) as (source, target, params, extras):
        return plan_move(source, target, params, state_url=ctx.state_url, progress=ctx.progress, **extras)


def apply(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Plan, then (unless refused) move: bytes, then rows in one target transaction."""
    from ..content.move import apply as apply_move

    with _move(ctx, p) as (source, target, params, extras):
        return apply_move(source, target, params, state_url=ctx.state_url, progress=ctx.progress, **extras)
