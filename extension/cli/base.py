"""What every ``cairn-migrate`` verb shares: the global options, errors as one line, secrets, output.

Kept apart from ``cli/__init__.py`` (the group and the core verbs) so the verb modules
``cli/files.py`` and ``cli/install.py`` import it without importing the group
that imports them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from ..errors import Interrupted, MigrateError, first_line, unexpected
from ..operations import OpContext, Outcome
from ..progress import Progress

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes (rclone-style; see docs/cli.md).
EXIT_OK, EXIT_DIFFERENCES, EXIT_USAGE, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 2, 3, 4


class Context:
    """What the group's global options decided, handed to every verb."""

    def __init__(self, env: str | None, traceback: bool) -> None:
        self.env = env
        self.traceback = traceback

    def instance(self) -> Any:
        from .. import api  # with the instance model, SQLAlchemy: imported by a verb that reads an instance, not by --help

        return api.load_instance(self.env)

    def operation(self, progress: Progress | None = None, *, scripts: str | None = None,
                  secrets: dict[str, Any] | None = None) -> OpContext:
        """The context an operation runs in from the command line.

        The instance is read once, now (a bad ``--env`` fails before any work);
        the state store is the process's (``CAIRN_MIGRATE_STATE_URL`` or the default),
        resolved here once; bundles are paths.
        """
        from .. import api
        from ..service.state import default_state_url

        instance = self.instance()
        context = OpContext(instance=lambda: instance, state_url=default_state_url(),
                            secrets={k: v for k, v in (secrets or {}).items() if v is not None},
                            scripts_dir=Path(scripts) if scripts else None, open_instance=api.load_instance)
        if progress is not None:
            context.progress = progress
        return context


def handle_errors(func: F) -> F:
    """Turn any error into one line on stderr and its exit code: a :class:`MigrateError`'s own, else 3.

    An uncaught exception must never exit 1 (which means "differences found")
    nor print a traceback unless ``--traceback`` asks for it.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        obj: Context | None = ctx.find_object(Context)
        try:
            return func(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own exits and usage errors
        except KeyboardInterrupt as exc:  # Ctrl-C: failed (3), never click's "Aborted!" with 1 (= differences)
            if obj is not None and obj.traceback:  # the traceback asked for, then the same message and exit code
                import traceback

                traceback.print_exc()
            stopped = exc if isinstance(exc, Interrupted) else Interrupted()
            click.echo(f"Error: {stopped.message}", err=True)
            if stopped.hint:
                click.echo(f"  fix: {stopped.hint}", err=True)
            if kwargs.get("as_json"):  # a script reading stdout learns it too
                click.echo(json.dumps({"error": {"code": getattr(stopped, "code", "interrupted"),
                                                 "message": stopped.message,
                                                 **({"hint": stopped.hint} if stopped.hint else {}),
                                                 "exit_code": stopped.exit_code}}, indent=2))
            ctx.exit(stopped.exit_code)
        except Exception as exc:  # noqa: BLE001 - the one place every error becomes one line
            if obj is not None and obj.traceback:
                raise
            error = exc if isinstance(exc, MigrateError) else unexpected(exc)
            hint = error.hint
            if not isinstance(exc, MigrateError):  # name where --traceback goes: before the verb
                verb = " ".join(ctx.command_path.split()[1:])
                hint = f"run again as: cairn-migrate --traceback {verb} … and report the traceback"
            click.echo(f"Error: {first_line(error.message)}", err=True)
            if hint:
                click.echo(f"  fix: {hint}", err=True)
            if kwargs.get("as_json"):  # --json: the error as JSON on stdout too (a script reads stdout only)
                click.echo(json.dumps({"error": {**error.to_dict(), "message": first_line(error.message),
                                                 **({"hint": hint} if hint else {}), "exit_code": error.exit_code}},
                                      indent=2, default=str))
            ctx.exit(error.exit_code)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM handled like Ctrl-C while the CLI runs: the handler raises :class:`Interrupted` in the main thread,
    so the same cleanup runs (a rollback, or a move through the API recording what the target acknowledged) and
    the same one-line message and exit code follow, instead of an instant, silent exit 143 while requests land.

    The first SIGTERM raises; later ones are ignored while that cleanup (bounded) runs.  The previous handler is
    restored afterwards.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_with(outcome: Outcome) -> NoReturn:
    """Leave with the outcome's exit code (the one mapping, in :class:`~cairn_migrate.operations.Outcome`)."""
    sys.exit(outcome.exit_code)


def _secret_options(func: F) -> F:
    """``--passphrase-file``/``--key-file`` (and ``CAIRN_MIGRATE_PASSPHRASE``) for encrypted bundles."""
    func = click.option(
        "--key-file", type=click.Path(dir_okay=False, exists=True), help="Encrypt/decrypt with this key file."
    )(func)
    func = click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, exists=True),
        help="Read the passphrase from this file (or set CAIRN_MIGRATE_PASSPHRASE).",
    )(func)
    return func


def _passphrase(passphrase_file: str | None) -> str | None:
    import os

    if passphrase_file:
        with open(passphrase_file, encoding="utf-8") as fh:
            return fh.read().strip("\r\n")
    return os.environ.get("CAIRN_MIGRATE_PASSPHRASE") or None


def _emit(report: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(report, indent=2, default=str) if as_json else text(report))
