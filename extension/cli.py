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
from .errors import MigrateError, first_line, unexpected
from .progress_bar import RichProgress
from .render import render_export, render_import, render_inspect, render_verify

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
        except Exception as exc:  # noqa: BLE001 - the one place every error becomes one line
            if obj is not None and obj.traceback:
                raise
            error = exc if isinstance(exc, MigrateError) else unexpected(exc)
            click.echo(f"Error: {first_line(error.message)}", err=True)
            if error.hint:
                click.echo(f"  fix: {error.hint}", err=True)
            ctx.exit(error.exit_code)

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
    missing or the .env sets no KEY or SECRET (CairnCMS does not start without
    them), and 2 or 3 (with one line naming the setting to fix) when the
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
    _warn_incomplete(report)
    if failed:
        sys.exit(_storage_exit_code(failed))
    sys.exit(EXIT_OK if report["ok"] else EXIT_DIFFERENCES)


def _storage_exit_code(failed: list[dict[str, Any]]) -> int:
    """2 when every unreadable location is misconfigured (no bucket, rejected keys), as the error's class says; else 3."""
    from .errors import ConfigError, UnsupportedDriver

    config_codes = {ConfigError.code, UnsupportedDriver.code}
    return EXIT_USAGE if all(loc["error"]["code"] in config_codes for loc in failed) else EXIT_FAILED


def _warn_incomplete(report: dict[str, Any]) -> None:
    """One error line and its fix on stderr when the target holds an interrupted import."""
    status = report.get("import")
    if status:
        click.echo(f"Error: the target holds an interrupted import (step {status['step']}): it is incomplete", err=True)
        click.echo(f"  fix: {status['fix']}", err=True)


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


@cli.command("export")
@click.option("--full", is_flag=True, required=True, help="Database, file bytes and config (the only kind yet).")
@click.option("-o", "--output", required=True, type=click.Path(), help="A directory, or an archive: .tar, .tar.gz, .tar.gz.enc.")
@click.option("--encrypt", is_flag=True, help="Encrypt the archive (needs --passphrase-file, CAIRN_MIGRATE_PASSPHRASE or --key-file).")
@click.option("--freeze", is_flag=True, help="Hold the instance's writes while capturing; the instance must prove it (exit 2 otherwise).")
@click.option("--no-freeze-guarantee", "no_freeze_guarantee", is_flag=True,
              help="With --freeze: when the instance cannot prove it holds writes, warn and capture anyway.")
@click.option("--instance-url", metavar="URL", help="Where to ask the instance for the freeze proof (default: its PUBLIC_URL).")
@click.option("--native", is_flag=True, help="Fast path: the vendor's own dump (restores only on the same vendor; SQLite anywhere).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@_secret_options
@click.pass_obj
@handle_errors
def export_command(obj: Context, full: bool, output: str, encrypt: bool, freeze: bool, no_freeze_guarantee: bool,
                   instance_url: str | None, native: bool, overwrite: bool, as_json: bool,
                   passphrase_file: str | None, key_file: str | None) -> None:
    """Write one verifiable bundle of the instance: database, file bytes and config.

    Exits 1 (after writing the bundle) when something could not be captured: the
    .env sets no KEY, or file rows name a location STORAGE_LOCATIONS does not configure.
    """
    from pathlib import Path

    from .errors import ConfigError

    passphrase = _passphrase(passphrase_file) if encrypt else None
    if encrypt and not (passphrase or key_file):
        raise ConfigError("--encrypt needs a secret", hint="pass --passphrase-file FILE, --key-file FILE or set CAIRN_MIGRATE_PASSPHRASE")
    instance = obj.instance()
    with RichProgress("exporting", enabled=not as_json) as progress:
        manifest = api.export(instance, Path(output), passphrase=passphrase, key_file=Path(key_file) if encrypt and key_file else None,
                              freeze=freeze, freeze_guarantee=not no_freeze_guarantee, instance_url=instance_url,
                              native=native, overwrite=overwrite, progress=progress)
    summary = api.summarize_manifest(manifest, output)
    _emit(summary, as_json, render_export)
    sys.exit(EXIT_DIFFERENCES if summary["warnings"] else EXIT_OK)


@cli.command("import")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("-n", "--dry-run", is_flag=True, help="Show the plan; change nothing.")
@click.option("--replace", is_flag=True, help="Overwrite a non-empty target (a safety bundle of it is written first).")
@click.option("--safety-bundle", metavar="PATH", type=click.Path(),
              help="Where --replace writes the safety bundle: a new directory or .tar/.tar.gz "
                   "(default: safety-bundles/ beside the state store).")
@click.option("--resume", is_flag=True, help="Finish an interrupted import of this bundle.")
@click.option("--storage-map", multiple=True, metavar="OLD=NEW", help="Put files of location OLD into the target's NEW (rows updated).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_secret_options
@click.pass_obj
@handle_errors
def import_command(obj: Context, bundle: str, dry_run: bool, replace: bool, safety_bundle: str | None, resume: bool,
                   storage_map: tuple[str, ...], as_json: bool, passphrase_file: str | None, key_file: str | None) -> None:
    """Restore a bundle into the instance (empty unless --replace/--resume), on any vendor.

    The plan lists the type drift: per column, the values the target vendor will store
    differently (timestamp precision, SQLite storage classes, ...) or refuse; refused
    values stop the import before any write (exit 2).
    The plan warns about the settings of the bundle's source the target's .env does
    not set, by name (CairnCMS does not start without KEY and SECRET).
    With --dry-run, exits 1 when the plan has changes and 0 when there is nothing to do.
    """
    from pathlib import Path

    instance = obj.instance()
    with RichProgress("importing", enabled=not as_json) as progress:
        report = api.import_(instance, Path(bundle), dry_run=dry_run, replace=replace, resume=resume,
                             storage_map=api.parse_storage_map(storage_map), passphrase=_passphrase(passphrase_file),
                             key_file=Path(key_file) if key_file else None,
                             safety_bundle=Path(safety_bundle) if safety_bundle else None, progress=progress)
    _emit(report, as_json, render_import)
    if dry_run:
        sys.exit(EXIT_DIFFERENCES if report["plan"]["changes"] else EXIT_OK)


@cli.command("verify")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--storage-map", multiple=True, metavar="OLD=NEW", help="As given to import.")
@click.option("--url", help="Also check the running target at this URL.")
@click.option("--token", envvar="CAIRN_MIGRATE_TOKEN", help="An admin token for the live checks (or CAIRN_MIGRATE_TOKEN).")
@click.option("--login", metavar="EMAIL:PASSWORD", help="Log in as this known user in the live checks.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_secret_options
@click.pass_obj
@handle_errors
def verify_command(obj: Context, bundle: str, storage_map: tuple[str, ...], url: str | None, token: str | None,
                   login: str | None, as_json: bool, passphrase_file: str | None, key_file: str | None) -> None:
    """Check that the instance holds exactly the bundle's rows and file bytes (exit 1 if not).

    Values the target stores differently as the import's type-drift report predicted
    pass, and are reported as expected drift; any other difference fails.
    The settings of the bundle's source the target's .env does not set are listed by
    name; a missing KEY or SECRET fails (CairnCMS does not start without them).
    """
    from pathlib import Path

    from .errors import ConfigError

    credentials = None
    if login:
        email, sep, password = login.partition(":")
        if not sep:
            raise ConfigError("--login must be EMAIL:PASSWORD")
        credentials = (email, password)
    instance = obj.instance()
    with RichProgress("verifying", enabled=not as_json) as progress:
        report = api.verify(instance, Path(bundle), storage_map=api.parse_storage_map(storage_map), url=url, token=token,
                            login=credentials, passphrase=_passphrase(passphrase_file),
                            key_file=Path(key_file) if key_file else None, progress=progress)
    _emit(report, as_json, render_verify)
    _warn_incomplete(report)
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
    import waitress  # a production WSGI server: streams bundles both ways, threads for concurrent requests

    waitress.serve(app, host=host, port=port, threads=8, channel_timeout=600, ident="cairn-migrate")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cairn-migrate")
from .cli_install import register as _register_install  # noqa: E402
_register_install(cli)


from .cli_files import register as _register_files  # noqa: E402
_register_files(cli)
