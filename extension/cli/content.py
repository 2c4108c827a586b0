"""``cairn-migrate content move``: the thin CLI verb over the ``content`` operation."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from .. import operations
from ..operations import CONTENT_MODES, CONTENT_VIA, OpContext
from .base import Context, exit_with, handle_errors
from .progress_bar import RichProgress


def render_content(report: dict[str, Any]) -> str:
    """The plan per collection, users without a twin, files and bytes, refusals, then what was done."""
    lines = [f"content move {', '.join(report['collections'])}: {report['from']} -> {report['to']} "
             f"(via {report['via']}, {report['mode']}{'' if report['depth'] is None else ', depth ' + str(report['depth'])})"]
    for name, counts in report["plan"].items():
        lines.append(f"  {name}: {counts['created']} to create, {counts['updated']} to update, "
                     f"{counts['unchanged']} unchanged, {counts['skipped']} skipped, {counts['deleted']} to delete")
        differing = (report.get("changed_fields") or {}).get(name)
        if differing:  # why rows are updated (or skipped): the fields that differ from the target's, and how often
            lines.append("    fields that differ: " + ", ".join(
                f"{field} ({count})" for field, count in sorted(differing.items(), key=lambda item: (-item[1], item[0]))))
    files = report["files"]
    if files["copy"] or files["storage"]:
        lines.append(f"  files: {files['copy']} to copy ({files['bytes']} bytes)" + "".join(
            f"; storage {a} -> {b}" for a, b in files["storage"].items() if a != b))
    lines += [f"  {name}: {count} rows matched to existing target rows (a unique field, the pair a junction row "
              "links, or every other column equal)" for name, count in report.get("matched_on_target", {}).items()]
    for name, resumed in (report.get("resumed") or {}).items():  # an earlier run's writes through the API, unanswered
        lines.append(f"  {name}: an earlier run's unanswered writes: {resumed['found']} rows found on the target, "
                     f"{resumed['not_written']} not written")
        if resumed["uncertain"]:
            lines.append(f"    may be on the target already, unknown (matched like new rows, else created: check for "
                         f"duplicates): source keys {', '.join(resumed['uncertain'][:20])}"
                         f"{' …' if len(resumed['uncertain']) > 20 else ''}")
        if resumed["written_twice"]:
            lines.append(f"    written twice by a retried request (left alone): target keys "
                         f"{', '.join(resumed['written_twice'][:20])}")
    lines += [f"  {name}: {count} rows a target ON DELETE CASCADE takes with mirror's deletions (counted)"
              for name, count in (report.get("cascaded") or {}).items()]
    replaced = files.get("replaced")
    if replaced:
        lines.append(f"  replaced file objects: {replaced['removed']} removed (ours), {replaced['kept']} kept "
                     "(not written by a move: files check lists them)")
    users = report["users"]
    if users["matched"] or users["unmatched"]:
        lines.append(f"  users matched by email: {users['matched']}")
    lines += [f"  user not on the target (references set to NULL): {u}" for u in users["unmatched"]]
    lines += [f"  user created on the target ({u['status']}, no password, role {u['role'] or 'none'}"
              f"{': ' + u['note'] if u.get('note') else ''}): {u['email']}" for u in users.get("created", [])]
    transform = report.get("transform") or {}
    if transform.get("mask"):
        lines.append(f"  masked with {transform['mask']['profile']} ({transform['mask']['origin']}); "
                     f"salt {transform['mask']['salt']}")
    if transform.get("urls"):
        urls = transform["urls"]
        lines.append(f"  URLs {urls['from']} -> {urls['to']}: {urls['values_rewritten']} values rewritten")
        lines += [f"  asset URL names a file the move does not carry (id kept): {i}" for i in urls["assets_not_moved"]]
    if transform.get("function"):
        lines.append(f"  --transform {transform['function']['name']}: " + (", ".join(
            f"{n} {c} changed" for n, c in transform["function"]["changed"].items()) or "no row changed"))
    lines += [f"  left out by the profile or --transform: {name} x{count}"
              for name, count in transform.get("dropped", {}).items()]
    lines += [f"  set to NULL (the target lacks the row): {where} x{count}" for where, count in report["nulled"].items()]
    for refusal in report["refused"]:
        lines.append(f"refused: {refusal['message']}")
        lines.append(f"  fix: {refusal['fix']}")
    for failure in report.get("failed") or []:
        lines.append(f"partial: {failure['message']}")
        lines.append(f"  fix: {failure['hint']}")
    if report.get("source_api"):
        read = report["source_api"]["rows_read"]
        lines.append(f"  read through the source's API {report['source_api']['url']}: "
                     + ", ".join(f"{name} {count}" for name, count in read.items()) + " rows (keyset paging)")
    if report.get("api"):
        lines.append(f"  via api {report['api']['url']}: {report['api']['retried']} answers retried, "
                     f"{report['api']['files_uploaded']} files uploaded")
    if not report["refused"] and not report.get("partial"):
        lines.append("no changes" if not report["changes"] else ("applied" if report["applied"] else "planned (dry run)"))
    return "\n".join(lines)


@click.group("content")
def content_group() -> None:
    """Move content (rows, their related rows, files and bytes) between instances."""


@content_group.command("move")
@click.option("--from", "source", required=True, metavar="SRC",
              help="The source: a running instance's URL (with --from-token; read through its API), an instance's "
              ".env, or an export --full bundle (a folder, .tar or .tar.gz).")
@click.option("--from-token", envvar="CAIRN_MIGRATE_FROM_TOKEN",
              help="An admin token of the source when --from is a URL (or CAIRN_MIGRATE_FROM_TOKEN).")
@click.option("--to", "target", required=True, metavar="DST",
              help="The target instance's .env; with --via api also a running target's URL (with --to-token).")
@click.option("--collection", "collections", required=True, multiple=True,
              help="A collection to move (repeatable); its related rows follow.")
@click.option("--filter", "filter_", metavar="JSON", help='Which rows, e.g. {"status": {"_eq": "published"}}.')
@click.option("--depth", type=click.IntRange(min=0), help="How many relation levels to follow (default: all).")
@click.option("--mode", type=click.Choice(CONTENT_MODES), default="merge", show_default=True,
              help="merge: create or update; skip-existing: create only; mirror: also delete (needs --max-delete).")
@click.option("--max-delete", type=click.IntRange(min=0), help="The most target rows mirror may delete.")
@click.option("--via", type=click.Choice(CONTENT_VIA), default="db", show_default=True,
              help="db: write the target's database in one transaction; api: write through the target's API "
              "(its validation, hooks and flows run).")
@click.option("--to-url", metavar="URL", help="via api: the running target's URL (default: PUBLIC_URL of its .env).")
@click.option("--to-token", envvar="CAIRN_MIGRATE_TO_TOKEN",
              help="via api: an admin token of the target (or CAIRN_MIGRATE_TO_TOKEN).")
@click.option("--concurrency", type=click.IntRange(1, 32), default=4, show_default=True,
              help="via api: requests in flight at once.")
@click.option("--batch-size", type=click.IntRange(1, 5000), default=100, show_default=True,
              help="via api: rows per request.")
@click.option("--no-rewrite-urls", is_flag=True,
              help="Keep the source's PUBLIC_URL and asset URLs in text, rich text, markdown and JSON values as they are.")
@click.option("--mask", metavar="PROFILE", help="Mask people's data before the rows are written: a built-in profile "
              "(pii-basic) or a YAML profile file (the same fakes as export --mask for the same salt).")
@click.option("--mask-salt", metavar="SALT", help="The masking salt (default: derived from the profile and the source's "
              "SECRET; or set CAIRN_MIGRATE_MASK_SALT).")
@click.option("--transform", metavar="MODULE:FUNCTION", help="Call f(collection, row, context) on every source row; "
              "return the row (changed or not) or None to leave it out.")
@click.option("--create-users", is_flag=True, help="Create referenced users the target lacks (by email): suspended, "
              "no password, role matched by key; without it their references become NULL.")
@click.option("-n", "--dry-run", is_flag=True, help="Show the plan; change nothing (exit 1 when it has changes).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
@handle_errors
def content_move(obj: Context, source: str, from_token: str | None, target: str, collections: tuple[str, ...], filter_: str | None,
                 depth: int | None, mode: str, max_delete: int | None, via: str, to_url: str | None,
                 to_token: str | None, concurrency: int, batch_size: int, no_rewrite_urls: bool, mask: str | None,
                 mask_salt: str | None, transform: str | None, create_users: bool, dry_run: bool,
                 as_json: bool) -> None:
    """Move the rows of COLLECTION matching --filter from SRC to DST, with the rows they relate to
    (m2o, o2m, m2m, translations, m2a), their files and bytes; users are matched by email.

    Exits 0 when done or nothing to change, 1 for a dry run with changes, 2 when refused (the
    collections' fields differ, mirror above --max-delete, a required reference the target lacks),
    4 when a move --via api stopped part-way (run it again: the ID map resumes it), also when interrupted
    (Ctrl-C or SIGTERM) after its writes began; interrupted via db, the transaction is rolled back (exit 3).
    """
    from urllib.parse import urlsplit

    from ..errors import InvalidInput
    from ..service.state import default_state_url

    if urlsplit(source).scheme not in ("http", "https") and not os.path.exists(source):
        raise InvalidInput(f"--from {source} does not exist",
                           hint="name the source's .env, an export --full bundle, or a running instance's URL "
                           "with --from-token")
    _check_paths(source, target)
    params = {"from": source, "to": target, "collections": list(collections), "filter": filter_, "depth": depth,
              "mode": mode, "max_delete": max_delete, "via": via, "to_url": to_url, "concurrency": concurrency,
              "batch_size": batch_size, "dry_run": dry_run, "rewrite_urls": not no_rewrite_urls, "mask": mask,
              "transform": transform, "create_users": create_users}
    from .. import api

    secrets = {"mask_salt": mask_salt or os.environ.get("CAIRN_MIGRATE_MASK_SALT") or None}
    if to_token:
        secrets["to_token"] = to_token
    if from_token:
        secrets["from_token"] = from_token
    context = OpContext(instance=obj.instance, state_url=default_state_url(), open_instance=api.load_instance,
                        secrets=secrets)
    with RichProgress("content move", enabled=not as_json) as progress:
        context.progress = progress
        report, outcome = operations.run("content", context, params)
    click.echo(json.dumps(report, indent=2, default=str) if as_json else render_content(report))
    exit_with(outcome)


def _check_paths(source: str, target: str) -> None:
    """Name the option whose path is wrong: the instance loader's own message says ``--env`` (the trial's
    ``--to missing/.env`` read "fix: pass --env with the path of the instance's .env file").

    :raises InvalidInput: ``--to`` missing, or a folder; ``--from`` a folder that is not a bundle.
    """
    from urllib.parse import urlsplit

    from ..errors import InvalidInput

    if urlsplit(target).scheme not in ("http", "https") and not os.path.exists(target):
        raise InvalidInput(f"--to {target} does not exist",
                           hint="name the target's .env (or, with --via api, a running instance's URL)")
    for option, value in (("--from", source), ("--to", target)):
        if not os.path.isdir(value) or (option == "--from" and os.path.isfile(os.path.join(value, "manifest.json"))):
            continue
        inside = os.path.join(value, ".env")
        what = "an instance's .env" + (" or an export --full bundle (it holds no manifest.json)" if option == "--from"
                                       else "")
        raise InvalidInput(f"{option} {value} is a folder, not {what}",
                           hint=f"name the .env file itself: {option} {inside}" if os.path.isfile(inside)
                           else f"name the instance's .env file with {option}")


def register(cli: click.Group) -> None:
    """Add ``content`` to the ``cairn-migrate`` group."""
    cli.add_command(content_group)
