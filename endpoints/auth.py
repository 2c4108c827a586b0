"""The admin check every non-health ``/migrate`` route uses."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g, request

from ..service.app import get_state
from ..service.auth import Caller, authenticate

F = TypeVar("F", bound=Callable[..., Any])


def admin_required(view: F) -> F:
    """Let only an admin of the instance in; the :class:`Caller` goes to ``g.caller``.

    Unauthorized (401) and Forbidden (403) are raised as ``MigrateError`` and
    rendered by the blueprint's error handlers.
    """

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        g.caller = current_caller()
        return view(*args, **kwargs)

    wrapped.admin_required = True  # type: ignore[attr-defined]  # read by the OpenAPI builder
    return wrapped  # type: ignore[return-value]


def current_caller() -> Caller:
    """Authenticate the current request (an admin, or an error)."""
    state = get_state()
    instance = state.instance()
    header = request.headers.get("Authorization")
    query = request.args.get("access_token")
    # state.engine is passed uncalled: only a well-formed token whose user must be looked up opens the database.
    return authenticate(instance, state.engine, header, query)
