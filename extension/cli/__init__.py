"""The ``cairn-migrate`` command line: thin verbs over the operation registry.

Every verb parses its options into an operation's parameters, runs it by name
(:func:`cairn_migrate.operations.run`), renders the report as text or JSON and
exits with the code of its outcome.  Errors become one line on stderr and the exit code
of their class (``docs/cli.md`` lists them); ``--traceback`` shows the Python
traceback instead, for bug reports.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from .. import operations
from .base import (  # noqa: F401 - EXIT_* and Context are this module's public names too
    EXIT_DIFFERENCES,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    Context,
    _emit,
    _passphrase,
    _secret_options,
    exit_with,
    handle_errors,
    terminate_as_interrupt,
)
from .progress_bar import RichProgress
from .render import render_export, render_import, render_inspect, render_verify


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
    context = obj.operation()
    with RichProgress("checking file bytes", enabled=not as_json) as progress:
        context.progress = progress
        report, outcome = operations.run("inspect", context, {"check_objects": not no_objects})
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(render_inspect(report))
    for location in report["storage"]:
        if location["reachable"]:
            continue
        error = location["error"]
        click.echo(f"Error: storage location {location['name']!r}: {error['message']}", err=True)
        if error.get("hint"):
            click.echo(f"  fix: {error['hint']}", err=True)
    _warn_incomplete(report)
    exit_with(outcome)


def _warn_incomplete(report: dict[str, Any]) -> None:
    """One error line and its fix on stderr when the target holds an interrupted import."""
    status = report.get("import")
    if status:
        click.echo(f"Error: the target holds an interrupted import (step {status['step']}): it is incomplete", err=True)
        click.echo(f"  fix: {status['fix']}", err=True)


@cli.command("export")
@click.option("--full", is_flag=True, required=True, help="Database, file bytes and config (the only kind yet).")
@click.option("-o", "--output", required=True, type=click.Path(), help="A directory, or an archive: .tar, .tar.gz, .tar.gz.enc.")
@click.option("--encrypt", is_flag=True, help="Encrypt the archive (needs --passphrase-file, CAIRN_MIGRATE_PASSPHRASE or --key-file); "
              "implied by an OUTPUT ending in .enc when a secret is given.")
@click.option("--freeze", is_flag=True, help="Hold the instance's writes while capturing; the instance must prove it (exit 2 otherwise).")
@click.option("--no-freeze-guarantee", "no_freeze_guarantee", is_flag=True,
              help="With --freeze: when the instance cannot prove it holds writes, warn and capture anyway.")
@click.option("--instance-url", metavar="URL", help="Where to ask the instance for the freeze proof (default: its PUBLIC_URL).")
@click.option("--native", is_flag=True, help="Fast path: the vendor's own dump (restores only on the same vendor; SQLite anywhere).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it is an existing bundle (anything else is refused).")
@click.option("--mask", metavar="PROFILE", help="Mask people's data: a built-in profile (pii-basic) or a YAML profile file; "
              "every row is masked before it is written (not with --native).")
@click.option("--mask-salt", metavar="SALT", help="The masking salt: the same salt gives the same fakes (default: derived "
              "from the profile and the instance's SECRET; or set CAIRN_MIGRATE_MASK_SALT).")
@click.option("--mask-keep-user", "mask_keep_users", metavar="EMAIL", multiple=True,
              help="Keep this user's row as it is (they log in to the clone with their password); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@_secret_options
@click.pass_obj
@handle_errors
def export_command(obj: Context, full: bool, output: str, encrypt: bool, freeze: bool, no_freeze_guarantee: bool,
                   instance_url: str | None, native: bool, overwrite: bool, mask: str | None, mask_salt: str | None,
                   mask_keep_users: tuple[str, ...], as_json: bool,
                   passphrase_file: str | None, key_file: str | None) -> None:
    """Write one verifiable bundle of the instance: database, file bytes and config.

    Exits 1 (after writing the bundle) when something could not be captured: the
    .env sets no KEY, or file rows name a location STORAGE_LOCATIONS does not configure.
    """
    from ..errors import ConfigError

    if output.endswith(".enc") and (passphrase_file or key_file or _passphrase(None)):
        encrypt = True  # the name asks for it and a secret is given: as --encrypt (without one, the bundle says so)
    if not encrypt and (passphrase_file or key_file):
        raise ConfigError(f"--{'passphrase-file' if passphrase_file else 'key-file'} was given but {output} is not encrypted",
                          hint="add --encrypt (and name the archive like clone.tar.gz.enc), or drop the secret")
    import os

    params = {"output": output, "encrypt": encrypt, "key_file": key_file, "freeze": freeze,
              "freeze_guarantee": not no_freeze_guarantee, "instance_url": instance_url, "native": native,
              "overwrite": overwrite, "mask": mask, "mask_keep_users": list(mask_keep_users)}
    secrets = {"passphrase": _passphrase(passphrase_file) if encrypt else None,
               "mask_salt": mask_salt or os.environ.get("CAIRN_MIGRATE_MASK_SALT") or None}
    context = obj.operation(secrets=secrets)
    with RichProgress("exporting", enabled=not as_json) as progress:
        context.progress = progress
        summary, outcome = operations.run("export", context, params)
    _emit(summary, as_json, render_export)
    exit_with(outcome)


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
    from .. import api

    params = {"path": bundle, "dry_run": dry_run, "replace": replace, "resume": resume,
              "storage_map": api.parse_storage_map(storage_map), "key_file": key_file, "safety_bundle": safety_bundle}
    context = obj.operation(secrets={"passphrase": _passphrase(passphrase_file)})
    with RichProgress("importing", enabled=not as_json) as progress:
        context.progress = progress
        report, outcome = operations.run("import", context, params)
    _emit(report, as_json, render_import)
    exit_with(outcome)


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
    from ..errors import ConfigError

    if login and ":" not in login:
        raise ConfigError("--login must be EMAIL:PASSWORD")
    from .. import api

    params = {"path": bundle, "storage_map": api.parse_storage_map(storage_map), "url": url, "key_file": key_file}
    context = obj.operation(secrets={"token": token, "login": login, "passphrase": _passphrase(passphrase_file)})
    with RichProgress("verifying", enabled=not as_json) as progress:
        context.progress = progress
        report, outcome = operations.run("verify", context, params)
    _emit(report, as_json, render_verify)
    _warn_incomplete(report)
    exit_with(outcome)


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port to listen on.")
@click.option("--scheduler/--no-scheduler", default=False, help="Run scheduled jobs in this process.")
@click.pass_obj
@handle_errors
def serve_command(obj: Context, host: str, port: int, scheduler: bool) -> None:
    """Serve the /migrate HTTP API for the instance (admin token or JWT required)."""
    from ..service.app import create_app

    instance = obj.instance()  # fail fast, before binding the port
    app = create_app({"CAIRN_MIGRATE_ENV": str(instance.env_path), "CAIRN_MIGRATE_SCHEDULER": scheduler})
    server = _bind(app, host, port)
    click.echo(f"cairn-migrate serving {instance.label} on http://{host}:{port}/migrate", err=True)
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a server stops at SIGTERM at once; the next start recovers jobs
    server.run()


def _bind(app: Any, host: str, port: int) -> Any:
    """The server, bound to ``host:port`` before ``serve`` announces it: a port in use is bad input (exit 2).

    The port is probed with a socket of our own first: waitress leaks its sockets when its bind fails.
    """
    import socket

    import waitress.server  # a production WSGI server: streams bundles both ways, threads for concurrent requests

    from ..errors import ConfigError

    try:
        for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress binds
                probe.bind(address)
        return waitress.server.create_server(app, host=host, port=port, threads=8, channel_timeout=600,
                                             ident="cairn-migrate")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}",
                          hint="pick a free port with --port PORT (or another address with --host), "
                               "or stop what listens there") from exc


@cli.group("ops")
def ops_group() -> None:
    """The operations every shell runs by name (the same list as GET /migrate/ops)."""


@ops_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@handle_errors
def ops_list(as_json: bool) -> None:
    """List every operation with its parameters, its CLI verb and its HTTP route."""
    described = operations.describe()
    lines = []
    for op in described:
        lines.append(f"{op['name']}: {op['summary']}")
        route = f"POST {op['route']} {{\"op\": \"{op['name']}\"}}" if op["route"] else "CLI only"
        lines.append(f"  {op['cli']}  |  {route}" + (f" (alias {op['alias']})" if op["alias"] else "")
                     + ("  |  dry run" if op["dry_run"] else ""))
        for param in op["params"]:
            default = f" = {param['default']!r}" if "default" in param else ""
            lines.append(f"    {param['name']} ({param['type']}{', secret' if param.get('secret') else ''}){default}")
    _emit({"operations": described}, as_json, lambda _: "\n".join(lines))


def main() -> None:
    """Console-script entry point (SIGTERM stops a verb as Ctrl-C does: :func:`~.base.terminate_as_interrupt`)."""
    with terminate_as_interrupt():
        try:
            cli(prog_name="cairn-migrate")
        except SystemExit as exc:
            _leave_calls_on_the_wire(exc.code)
            raise


def _leave_calls_on_the_wire(code: object) -> None:
    """Exit now when an interrupted ``content move --via api`` left requests on the wire.

    The move has recorded what the target acknowledged and said so (exit 4); a batch the target takes longer than
    the grace to answer would otherwise keep the process alive until it is answered (Python joins the request
    pool's threads at exit: the trial's Ctrl-C printed its message and then held the prompt until CairnCMS
    answered).  The module is looked up, not imported: a verb that never loaded it has nothing on the wire.
    """
    client = sys.modules.get("cairn_migrate.content.api_client")
    if client is not None and client.calls_on_the_wire():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 0 if code is None else 1)
from .install import register as _register_install  # noqa: E402
_register_install(cli)


from .files import register as _register_files  # noqa: E402
_register_files(cli)

from .promote import register as _register_promote  # noqa: E402
_register_promote(cli)

from .content import register as _register_content  # noqa: E402
_register_content(cli)
from .sync import register as _register_sync  # noqa: E402
_register_sync(cli)
