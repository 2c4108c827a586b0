"""CLI verbs ``files check|repair``, ``storage move|prune`` and ``migrations list|up|down``.

Thin verbs over the registered operations ``files_check``, ``files_repair``,
``storage_move``, ``storage_prune`` and ``migrations_*`` (:mod:`.operations`),
exiting with the code of the operation's outcome: 0 clean or done,
1 problems found (or a dry run with a non-empty plan), 2 bad input or
configuration, 3 failed, 4 partial (some objects still failed).
"""

from __future__ import annotations

import json
from typing import Any

import click

from .. import operations
from .base import Context, _passphrase, exit_with, handle_errors
from ..operations.limits import DEFAULT_LIMIT, DEFAULT_WORKERS
from .progress_bar import RichProgress


def _echo(report: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(report, indent=2, default=str) if as_json else text)


# --------------------------------------------------------------------------- files
@click.group("files")
def files_group() -> None:
    """Check and repair the agreement of directus_files rows and stored objects."""


def render_check(report: dict[str, Any]) -> str:
    lines = [f"files check of {report['instance']}: {report['rows']} rows, "
             + ", ".join(f"{n} {c} objects" for n, c in report["objects"].items())]
    for name, error in report["errors"].items():
        lines.append(f"  ! location {name}: {error['message']}")
    for kind, count in report["counts"].items():
        if not count:
            continue
        lines.append(f"  {kind.replace('_', ' ')}: {count}")
        for item in report["problems"][kind][:20]:
            if kind == "orphan":
                lines.append(f"    - {item['storage']}:{item['name']} ({item['size']} bytes)")
            elif kind == "dangling_reference":
                lines.append(f"    - {item['table']}.{item['column']} [{item['key']}] -> {item['file_id']}")
            else:
                extra = f" (size {item['actual_size']}, row says {item['filesize']})" if kind == "size_mismatch" else ""
                lines.append(f"    - {item['id']} {item['storage']}:{item['filename_disk']}{extra}")
        if count > 20:
            lines.append(f"    … {count - 20} more (--json for up to the limit)")
    ignored = report["ignored"]
    lines.append(f"  ok: {report['ok']} (ignored {ignored['transforms']} transforms, {ignored['health_probes']} health "
                 f"probes, {ignored['quarantined']} quarantined, {ignored['kept_after_move']} kept until storage prune; "
                 f"{report['elapsed_s']} s)")
    return "\n".join(lines)


@files_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--limit", default=DEFAULT_LIMIT, show_default=True, help="Examples kept per problem kind.")
@click.option("--workers", default=DEFAULT_WORKERS, show_default=True, help="Concurrent HEAD requests.")
@click.pass_obj
@handle_errors
def files_check(obj: Context, as_json: bool, limit: int, workers: int) -> None:
    """Report missing bytes, size mismatches, rows without object, orphans and dangling references.

    Exits 0 when clean, 1 when problems are found, 3 when a location cannot be read.
    """
    context = obj.operation()
    with RichProgress("checking files", enabled=not as_json) as progress:
        context.progress = progress
        report, outcome = operations.run("files_check", context, {"limit": limit, "workers": workers})
    _echo(report, as_json, render_check(report))
    exit_with(outcome)


@files_group.command("repair")
@click.option("-n", "--dry-run", is_flag=True, help="Show the plan (the default without --yes).")
@click.option("-y", "--yes", is_flag=True, help="Apply the plan: write, move and delete.")
@click.option("--from-bundle", type=click.Path(exists=True), help="Re-fetch missing bytes from this bundle.")
@click.option("--from-location", multiple=True, help="Re-fetch from this other location of the instance.")
@click.option("--from-env", type=click.Path(exists=True, dir_okay=False), help="Re-fetch from this other instance.")
@click.option("--orphans", type=click.Choice(["quarantine", "delete", "keep"]), default="quarantine", show_default=True)
@click.option("--keep-references", is_flag=True, help="Do not clear references to missing files.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True), help="For an encrypted bundle.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def files_repair(obj: Context, dry_run: bool, yes: bool, from_bundle: str | None, from_location: tuple[str, ...],
                 from_env: str | None, orphans: str, keep_references: bool, passphrase_file: str | None,
                 as_json: bool) -> None:
    """Re-fetch missing bytes, quarantine or delete orphans, clear dangling references (dry run unless --yes)."""
    params = {"dry_run": not yes or dry_run, "path": from_bundle, "from_locations": list(from_location),
              "from_env": from_env, "orphans": orphans, "clear_references": not keep_references}
    context = obj.operation(secrets={"passphrase": _passphrase(passphrase_file)})
    with RichProgress("repairing files", enabled=not as_json) as progress:
        context.progress = progress
        report, outcome = operations.run("files_repair", context, params)
    text = [f"{'plan' if report['dry_run'] else 'done'}: {report['planned']} actions"]
    text += [f"  {p['action']}: " + ", ".join(f"{k}={v}" for k, v in p.items() if k != "action") for p in report["plan"][:50]]
    text += [f"  unresolved: {u.get('id') or u.get('name')} ({u['reason']})" for u in report["unresolved"][:50]]
    if not report["dry_run"]:
        text.append("  " + ", ".join(f"{k}: {v}" for k, v in report["done"].items()))
    _echo(report, as_json, "\n".join(text))
    exit_with(outcome)


# --------------------------------------------------------------------------- storage
@click.group("storage")
def storage_group() -> None:
    """Move file bytes between storage locations; prune the old copies."""


@storage_group.command("move")
@click.option("--from", "src", required=True, help="The location the rows are on now.")
@click.option("--to", "dst", required=True, help="The location to move them to.")
@click.option("--filter", "filters", multiple=True, metavar="KEY=GLOB",
              help="Only rows whose id/filename_disk/filename_download/type/folder match (repeat: AND).")
@click.option("--layout", type=click.Choice(["keep", "flat"]), default="keep", show_default=True,
              help="keep filename_disk, or rename to CairnCMS's <id><ext>.")
@click.option("--workers", default=DEFAULT_WORKERS, show_default=True, help="Parallel copies.")
@click.option("--version", "version", help="Record the switch under this migration version (default: allocated).")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would move.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def storage_move(obj: Context, src: str, dst: str, filters: tuple[str, ...], layout: str, workers: int,
                 version: str | None, dry_run: bool, as_json: bool) -> None:
    """Copy bytes (verified by size and sha256, resumable), then switch the rows as a recorded migration."""
    params = {"from": src, "to": dst, "filters": list(filters), "layout": layout, "workers": workers,
              "version": version, "dry_run": dry_run}
    context = obj.operation()
    with RichProgress(f"moving {src} → {dst}", enabled=not as_json) as progress:
        context.progress = progress
        report, outcome = operations.run("storage_move", context, params)
    plan = report["plan"]
    lines = [f"{'plan' if dry_run else 'moved'}: {plan['rows']} rows, {plan['bytes']} bytes, {src} → {dst}"]
    if not dry_run:
        lines.append(f"  copied {report['copied']}, adopted {report['adopted']}, already verified {report['skipped']}, "
                     f"failed {len(report['failed'])}, rows switched {report['switched']}")
        lines += [f"  ! {f['id']} {f['src_name']}: {f['error']}" for f in report["failed"][:50]]
        if report["migration"]:
            m = report["migration"]
            lines.append(f"  recorded migration {m['version']} ({m['name']}): {m['file']}")
    _echo(report, as_json, "\n".join(lines))
    exit_with(outcome)


@storage_group.command("prune")
@click.option("--from", "src", help="Only moves out of this location.")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be deleted (the default without --yes).")
@click.option("-y", "--yes", is_flag=True, help="Delete the old bytes.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def storage_prune(obj: Context, src: str | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Delete the source bytes of finished moves, once every moved file is intact on its new location."""
    report, outcome = operations.run("storage_prune", obj.operation(), {"from": src, "dry_run": not yes or dry_run})
    count = sum(m["objects"] for m in report["moves"])
    lines = [f"{'would delete' if report['dry_run'] else 'deleted'} {count if report['dry_run'] else report['deleted']}"
             " old objects"] + [f"  {m['from']} → {m['to']} ({m['version']}): {m['objects']}" for m in report["moves"]]
    _echo(report, as_json, "\n".join(lines))
    exit_with(outcome)


# --------------------------------------------------------------------------- migrations
@click.group("migrations")
def migrations_group() -> None:
    """Recorded custom migrations (directus_migrations rows with their .js twins)."""


_scripts_option = click.option("--scripts", type=click.Path(file_okay=False), envvar="CAIRN_MIGRATE_SCRIPTS",
                               help="The script directory (default: ./custom_migrations).")


@migrations_group.command("list")
@_scripts_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def migrations_list(obj: Context, scripts: str | None, as_json: bool) -> None:
    """List our migrations and their state (applied, pending, reverted, conflict)."""
    report, outcome = operations.run("migrations_list", obj.operation(scripts=scripts), {})
    lines = [f"{m['version']}  {m['state']:<9} {m['kind']:<9} {m['name']}" for m in report["migrations"]]
    lines.append(f"({report['other_recorded']} other migrations recorded; twins in {report['extensions_migrations']})")
    _echo(report, as_json, "\n".join(lines))
    exit_with(outcome)


@migrations_group.command("up")
@click.argument("version", required=False)
@_scripts_option
@click.option("-n", "--dry-run", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def migrations_up(obj: Context, version: str | None, scripts: str | None, dry_run: bool, as_json: bool) -> None:
    """Apply pending migrations (up to VERSION; a reverted storage switch only when named)."""
    report, outcome = operations.run("migrations_up", obj.operation(scripts=scripts),
                                     {"version": version, "dry_run": dry_run})
    lines = [f"{'would apply' if dry_run else 'applied'} {p['version']} {p['name']}" for p in report["plan"]] or ["nothing to apply"]
    _echo(report, as_json, "\n".join(lines))
    exit_with(outcome)


@migrations_group.command("down")
@click.argument("version", required=False)
@_scripts_option
@click.option("-n", "--dry-run", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def migrations_down(obj: Context, version: str | None, scripts: str | None, dry_run: bool, as_json: bool) -> None:
    """Revert our latest migration (or VERSION): run its downgrade, delete its row, park its .js twin."""
    report, outcome = operations.run("migrations_down", obj.operation(scripts=scripts),
                                     {"version": version, "dry_run": dry_run})
    lines = [f"{'would revert' if dry_run else 'reverted'} {p['version']} {p['name']}" for p in report["plan"]] or [
        "nothing to revert: no cairn-migrate migration is applied"]
    _echo(report, as_json, "\n".join(lines))
    exit_with(outcome)


def register(cli: click.Group) -> None:
    """Add the three groups to the ``cairn-migrate`` command."""
    for group in (files_group, storage_group, migrations_group):
        cli.add_command(group)
