"""One error hierarchy for every layer.

Core code raises :class:`MigrateError` subclasses; each shell translates them
once: the CLI into a one-line message and ``exit_code``, the HTTP layer into
the canonical JSON error body and ``http_status``.  Messages name the problem
and the fix, and never contain secrets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from typing import Any


class MigrateError(Exception):
    """Base class of every error cairn-migrate reports to a user.

    :param message: what went wrong, in one line.
    :param hint: how to fix it, in one line (optional).
    :param details: JSON-safe data for machine readers (optional).
    """

    exit_code = 3
    http_status = 500
    code = "failed"

    def __init__(self, message: str, *, hint: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe form used by the HTTP error body and ``--format json``."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        if self.details is not None:
            body["details"] = self.details
        return body


class ConfigError(MigrateError):
    """An instance's ``.env`` or our own settings are missing, unreadable or invalid."""

    exit_code = 2
    http_status = 422
    code = "config_error"


class UnsupportedDriver(ConfigError):
    """A storage driver or database client we cannot (yet) work with."""

    code = "unsupported_driver"


class InstanceUnreachable(MigrateError):
    """The database, a storage backend or the instance's HTTP API did not answer as configured."""

    exit_code = 3
    http_status = 502
    code = "unreachable"


class NotFound(MigrateError):
    """A job, bundle or other resource does not exist."""

    exit_code = 3
    http_status = 404
    code = "not_found"


class Unauthorized(MigrateError):
    """No credentials, or credentials the instance does not accept."""

    exit_code = 3
    http_status = 401
    code = "unauthorized"


class Forbidden(MigrateError):
    """Valid credentials of a user who is not an admin of the instance."""

    exit_code = 3
    http_status = 403
    code = "forbidden"


class InvalidInput(MigrateError):
    """A request body or option that does not validate."""

    exit_code = 2
    http_status = 422
    code = "invalid_input"


class RemoteRefused(InvalidInput):
    """Another instance (a promote's source or target) refused the token it was given: bad input (exit 2), and over
    HTTP 424 (a dependency failed), never 401, which would say the caller's own login to the sidecar failed."""

    http_status = 424
    code = "remote_refused"


class FreezeNotEnforced(ConfigError):
    """``--freeze`` could not prove that the instance's hook holds writes (``--no-freeze-guarantee`` proceeds anyway)."""

    code = "freeze_not_enforced"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped an operation; still a ``KeyboardInterrupt``, so nothing catching errors swallows it.

    ``hint`` says what the interruption left (an import: the target is
    incomplete, and the fix); the CLI prints the message and exits 3.
    """

    exit_code = 3

    def __init__(self, message: str = "interrupted", *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM over a few statements that must not be cut in two (a commit and the flag saying it
    happened; an interrupted move's record of what the target acknowledged); a signal that came meanwhile is
    acted on at the end, as its own handler would have.  Outside the main thread (jobs, the scheduler) signals
    never arrive, so nothing is held."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    previous = {kind: signal.signal(kind, lambda signum, _frame: arrived.append(signum)) for kind in kinds}
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)
    if arrived:
        handler = previous[arrived[0]]
        if callable(handler):
            handler(arrived[0], None)  # the CLI's SIGTERM handler, or Python's default_int_handler: both raise
        elif handler != signal.SIG_IGN:
            raise Interrupted()


def first_line(text: str) -> str:
    """The first non-empty line of ``text``: driver errors append SQL and carets that do not fit one line."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def unexpected(exc: BaseException) -> MigrateError:
    """An error no layer translated (a bug, or input nobody checked yet): exit 3, one line, no traceback."""
    return MigrateError(f"unexpected {type(exc).__name__}: {first_line(str(exc)) or '(no message)'}",
                        hint="run again with --traceback and report the traceback")
