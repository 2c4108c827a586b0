"""Requests signed by the instance's hook (HMAC with the shared secret), instead of an admin token."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g, request

from ..service.app import get_state
from ..service.signature import is_signed, shared_secret, verify
from .auth import current_caller

F = TypeVar("F", bound=Callable[..., Any])


def check_signature() -> None:
    """Verify the current request's signature against the instance's shared secret (401 otherwise)."""
    secret = shared_secret(get_state().instance())
    verify(secret, request.method, request.path, request.get_data(cache=True), request.headers)
    g.caller = None


def signed_required(view: F) -> F:
    """Only the instance's hook: a valid signature, no token accepted."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        check_signature()
        return view(*args, **kwargs)

    wrapped.signed_required = True  # type: ignore[attr-defined]
    return wrapped  # type: ignore[return-value]


def admin_or_signed(view: F) -> F:
    """An admin's token, or (when the request carries a signature) the hook's valid signature."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if is_signed(request.headers):
            check_signature()
        else:
            g.caller = current_caller()
        return view(*args, **kwargs)

    wrapped.admin_required = True  # type: ignore[attr-defined]
    wrapped.signed_allowed = True  # type: ignore[attr-defined]  # read by the OpenAPI builder
    return wrapped  # type: ignore[return-value]
