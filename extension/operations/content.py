"""``content``: move rows (and their related rows, files and bytes) from one instance to another.

The wrapper between the registry and :mod:`cairn_migrate.content`: it reads the two
instances' ``.env`` files (or opens a bundle as the source, :mod:`cairn_migrate.content.bundle_source`, or
reads a running source named by URL + ``from_token`` through its API, :mod:`cairn_migrate.content.api_source`),
resolves the masking profile and the ``--transform`` function as the shell allows them, and hands the
move to :func:`cairn_migrate.content.move.plan` / :func:`~cairn_migrate.content.move.apply`.  Both
instances are read through their databases (or scratch copies of them), so the plan is the same whichever
path writes; ``via="api"`` also needs the running target's URL (``to_url``, else the ``PUBLIC_URL`` of its
``.env``, or ``to`` itself when it is a URL) and an admin token (``to_token``, a secret).  A target given by
URL (``via="api"`` only) is read into a mirror first (:func:`cairn_migrate.content.api_source.open_target`).
Every transform applies on both paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError, InvalidInput


def _is_url(value: str) -> bool:
    return urlsplit(value).scheme in ("http", "https")


@contextlib.contextmanager
def _move(ctx: Any, p: dict[str, Any]) -> Iterator[tuple[Any, Any, dict[str, Any], dict[str, Any]]]:
    """``(source, target, params, extras)``: the instances, the parameters as the core reads them, and
    ``bundle``/``function``/``target_view`` for :mod:`cairn_migrate.content.move`."""
    from ..content.api_source import check_distinct, open_source as open_api_source, open_target
    from ..content.bundle_source import is_bundle_path, open_source
    from ..content.transform import load_function

    if _is_url(p["to"]) and p["via"] != "api":
        raise InvalidInput(f"content move --via db writes the target's database: --to {p['to']} is a URL, not an "
                           "instance's .env",
                           hint="pass --to with the instance's .env, or write through the target's API: --via api "
                           "--to-token TOKEN")
    params = dict(p)
    if p.get("mask"):
        from . import MASK_PROFILES

        params["mask"] = p["mask"] if p["mask"] in MASK_PROFILES else ctx.path("mask", p["mask"])
        params["mask_salt"] = ctx.secret("mask_salt") or p.get("mask_salt")
    function: Callable[..., Any] | None = None
    if p.get("transform"):
        ctx.check_code("transform", p["transform"])  # the sidecar refuses what its operator did not list
        function = load_function(p["transform"])
    target = None if _is_url(p["to"]) else ctx.other_instance(p["to"])
    extras: dict[str, Any] = {"function": function}
    with contextlib.ExitStack() as stack:
        if _is_url(p["from_"]):  # a running instance: read through its API into a scratch copy (api_source.py)
            check_distinct(p["from_"], p["to"] if target is None else target, p.get("to_url"))
            remote = stack.enter_context(open_api_source(p["from_"], ctx.secret("from_token") or p.get("from_token"),
                                                         params, progress=ctx.progress))
            source, extras["bundle"] = remote.instance, remote
        else:
            source_path = str(ctx.path("from_", p["from_"]))
            if is_bundle_path(source_path):
                bundle = stack.enter_context(open_source(source_path, progress=ctx.progress))
                source, extras["bundle"] = bundle.instance, bundle
            else:
                source = ctx.other_instance(p["from_"])
                if target is None:
                    check_distinct(source, p["to"], p.get("to_url"))
        if target is None:  # a running target given by URL (via api): a mirror of what the move may read
            view = stack.enter_context(open_target(p["to"], ctx.secret("to_token") or p.get("to_token"),
                                                   _involved(source, params), progress=ctx.progress,
                                                   agents=_unanswered(ctx, p["to"], source, extras)))
            target, extras["target_view"] = view.instance, view
        yield source, target, params, extras


def _unanswered(ctx: Any, url: str, source: Any, extras: dict[str, Any]) -> set[str]:
    """The ``User-Agent`` markers of the write requests an earlier move of this pair sent to the target at ``url``
    without reading the answer: their activity is mirrored with the target (``sink_api.settle_sent``)."""
    from ..content import keys
    from ..content.api_source import url_scope
    from ..content.sink_api import agent

    origin = extras["bundle"].scope if extras.get("bundle") is not None else source
    return {agent(m) for m in keys.sent_markers(ctx.state_url, keys.pair_identity(origin, url_scope(url)))}


def _involved(source: Any, params: dict[str, Any]) -> list[str]:
    """The collections a move from ``source`` may read on the target: the roots and what their links reach."""
    from ..content.move import source_graph
    from ..instance.database import Database

    roots = list(dict.fromkeys(params["collections"]))
    depth = params.get("depth")
    with Database.open(source) as src:
        graph = source_graph(src, roots)
        tables = set(src.table_names())
    return [n for n in graph.reachable(roots, None if depth is None else depth + 1) if n in tables]


def _client(ctx: Any, p: dict[str, Any], target: Any, *, write: bool = False) -> Callable[[], Any] | None:
    """``via="api"``: what makes the target's API client, checked before any planning: the token is an admin's
    there, and (``write``) the API at the URL serves the ``.env``'s database (:mod:`.target_api`)."""
    if p["via"] != "api":
        return None
    token = ctx.secret("to_token") or p.get("to_token")
    if not token:
        raise InvalidInput("content move --via api writes through the target's API: it needs an admin token",
                           hint="pass --to-token (to_token) of an admin of the target")
    url = p.get("to_url") or (p["to"] if _is_url(p["to"]) else target.public_url)
    if not url or not _is_url(url):
        raise ConfigError(f"The target's .env {p['to']} sets no absolute PUBLIC_URL to reach its API at",
                          hint="pass the running target's URL with --to-url, or set PUBLIC_URL in its .env")
    _check_api(p, target, url, token, write)
    from ..content.api_client import ApiClient

    return lambda: ApiClient(url, token, concurrency=p["concurrency"])


def _check_api(p: dict[str, Any], target: Any, url: str, token: str, write: bool) -> None:
    """The token checked (a dry run too: it reads only); before writing, the URL proven to be the ``.env``'s."""
    from .target_api import check_target_api

    # a target given by URL pairs nothing (its mirror is read through that API): only a .env's URL needs the proof
    check_target_api(target, url, token, prove=write and not _is_url(p["to"]))


def precheck(ctx: Any, p: dict[str, Any]) -> None:
    """Before a job starts: the named collections are the source's, and the filter's fields theirs (a source
    given by its ``.env``; a URL or a bundle is read only by the run, which says the same)."""
    from ..content.bundle_source import is_bundle_path
    from ..content.filter import parse
    from ..content.move import condition, source_graph
    from ..instance.database import Database

    if _is_url(p["from_"]):
        return
    path = ctx.path("from_", p["from_"])
    try:
        if path.is_dir() or is_bundle_path(str(path)):
            return  # a bundle (or a snapshot folder): the run reads it
    except InvalidInput:
        pass  # a file with another suffix: read as a .env, as the run does
    roots = list(dict.fromkeys(p["collections"]))
    with Database.open(ctx.other_instance(p["from_"])) as src:
        source_graph(src, roots)
        spec = parse(p.get("filter"))
        for root in roots:
            condition(spec, root)(src)


def plan(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    """The move's plan: per collection created/updated/unchanged/skipped/deleted, users, files; writes nothing."""
    from ..content.move import plan as plan_move

    with _move(ctx, p) as (source, target, params, extras):
        _client(ctx, p, target)  # a missing token or URL is refused in the plan already
        return _read(plan_move(source, target, params, state_url=ctx.state_url, progress=ctx.progress, **extras),
                     extras)


def apply(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Plan, then (unless refused) move: via db, bytes then rows in one target transaction; via api, through
    the target's API in batches (a failure leaves a partial move the ID map resumes)."""
    from ..content.move import apply as apply_move

    with _move(ctx, p) as (source, target, params, extras):
        return _read(apply_move(source, target, params, state_url=ctx.state_url, progress=ctx.progress,
                                client=_client(ctx, p, target, write=True), **extras), extras)


def _read(report: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    """A URL source's (target's) report says what was read through its API (rows per collection)."""
    for key, side in (("source_api", extras.get("bundle")), ("target_api", extras.get("target_view"))):
        read = getattr(side, "read", None)
        if read is not None:
            report[key] = {"url": side.api.url, "rows_read": dict(read)}
    return report
