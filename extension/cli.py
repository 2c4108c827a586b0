"""The ``cairn-migrate`` command line: thin verbs over :mod:`cairn_migrate.api`.

Every verb parses its options, calls one ``api`` function and renders the
result as text or JSON.  Errors become one line on stderr and the exit code
of their class (``docs/cli.md`` lists them); ``--traceback`` shows the Python
traceback instead, for bug reports.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import api
from .errors import MigrateError
from .progress_bar import RichProgress
from .render import render_inspect

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes (rclone-style; see docs/cli.md).
EXIT_OK, EXIT_DIFFERENCES, EXIT_USAGE, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 2, 3, 4


class Context:
    """What the group's global options decided, handed to every verb."""

    def __init__(self, env: str | None, traceback: bool) -> None:
        self.env = env
        self.traceback = traceback

    def instance(self) -> Any:
        return api.load_instance(self.env)


def handle_errors(func: F) -> F:
    """Turn a :class:`MigrateError` into one line on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        obj: Context | None = ctx.find_object(Context)
        try:
            return func(*args, **kwargs)
        except MigrateError as exc:
            if obj is not None and obj.traceback:
                raise
            click.echo(f"Error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"  fix: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--env",
    "env_path",
    envvar="CAIRN_MIGRATE_ENV",
    metavar="PATH",
    help="The instance's .env file (default: $CAIRN_MIGRATE_ENV).",
)
@click.option("--traceback", is_flag=True, help="Show the Python traceback of an error.")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="cairn-migrate", prog_name="cairn-migrate")
@click.pass_context
def cli(ctx: click.Context, env_path: str | None, traceback: bool, verbose: int) -> None:
    """Move CairnCMS instances: database, file bytes and config, verified."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = Context(env_path, traceback)


@cli.command("inspect")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-objects", is_flag=True, help="Do not check that every file row's bytes exist.")
@click.pass_obj
@handle_errors
def inspect_command(obj: Context, as_json: bool, no_objects: bool) -> None:
    """Describe the instance: identity, tables, storage and missing file bytes.

    Exits 0 when every part is there, 1 when file bytes or system tables are
    missing, and 2 or 3 (with one line naming the setting to fix) when the
    instance cannot be read.
    """
    instance = obj.instance()
    with RichProgress("checking file bytes", enabled=not as_json) as progress:
        report = api.inspect(instance, check_objects=not no_objects, progress=progress)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(render_inspect(report))
    failed = [loc for loc in report["storage"] if not loc["reachable"]]
    for location in failed:
        error = location["error"]
        click.echo(f"Error: storage location {location['name']!r}: {error['message']}", err=True)
        if error.get("hint"):
            click.echo(f"  fix: {error['hint']}", err=True)
    if failed:
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_OK if report["ok"] else EXIT_DIFFERENCES)


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port to listen on.")
@click.option("--scheduler/--no-scheduler", default=False, help="Run scheduled jobs in this process.")
@click.pass_obj
@handle_errors
def serve_command(obj: Context, host: str, port: int, scheduler: bool) -> None:
    """Serve the /migrate HTTP API for the instance (admin token or JWT required)."""
    from .app import create_app

    instance = obj.instance()  # fail fast, before binding the port
    app = create_app({"CAIRN_MIGRATE_ENV": str(instance.env_path), "CAIRN_MIGRATE_SCHEDULER": scheduler})
    click.echo(f"cairn-migrate serving {instance.label} on http://{host}:{port}/migrate", err=True)
    from werkzeug.serving import run_simple

    run_simple(host, port, app, threaded=True, use_reloader=False)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cairn-migrate")
