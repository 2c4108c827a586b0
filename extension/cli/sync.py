"""``cairn-migrate sync``: scheduled instance-to-instance syncs — profiles, runs and history.

Profiles are records of the ``--env`` instance (the sidecar's) in the state store;
``sync run`` is the ``sync_run`` operation, run here through the registry.  A sidecar
started with ``serve --scheduler`` picks up profiles added or changed here within
``CAIRN_MIGRATE_SYNC_POLL_SECONDS`` (default 30).
"""

from __future__ import annotations

import json
from typing import Any

import click

from .. import operations
from ..errors import InvalidInput
from ..operations import SYNC_CONFLICTS as CONFLICTS, SYNC_MISSED as MISSED, SYNC_MODES as MODES
from .base import Context, _emit, exit_with, handle_errors


def _store(obj: Context) -> Any:
    """The state store's sync profiles (imported here, when a sync verb runs: not at the CLI's start-up)."""
    from ..operations.sync_profiles import SyncStore
    from ..service.state import default_state_url, instance_scope

    return SyncStore(default_state_url(), instance_scope(obj.instance()))


def _next_run(profile: dict[str, Any]) -> str | None:
    from datetime import datetime, timezone

    from ..operations.sync_profiles import trigger_of

    trigger = trigger_of(profile, profile["anchor"])
    if trigger is None or not profile["enabled"]:
        return None
    now = datetime.now(timezone.utc)
    fire = trigger.get_next_fire_time(None, now)
    return fire.isoformat() if fire else None


def _describe(profile: dict[str, Any]) -> dict[str, Any]:
    from ..operations.sync_profiles import due_slot

    return {**profile, "next_run": _next_run(profile), "due_slot": due_slot(profile, profile["anchor"])}


def render_profile(profile: dict[str, Any]) -> str:
    schedule = profile.get("schedule") or {}
    when = (f"cron {schedule['cron']} ({schedule['timezone']})" if schedule.get("cron")
            else f"every {schedule['interval_seconds']}s" if schedule.get("interval_seconds") else "manual only")
    lines = [f"{profile['name']}: {'enabled' if profile['enabled'] else 'paused'}, {when}, missed runs: {profile['missed']}",
             f"  {profile['source']} -> {profile['target']}",
             f"  collections: {', '.join(profile['collections'])}; mode {profile['mode']}; conflict {profile['conflict']}"
             + ("; promote first" if profile["promote_first"] else "") + (f"; mask {profile['mask']}" if profile.get("mask") else "")]
    if profile.get("next_run"):
        lines.append(f"  next run: {profile['next_run']}")
    return "\n".join(lines)


def render_run(report: dict[str, Any]) -> str:
    if report.get("skipped"):
        return f"sync {report['name']}: skipped ({report['skipped']})"
    lines = [f"sync {report['name']}{' (dry run)' if report['dry_run'] else ''}{' (full re-scan)' if report['full'] else ''}: "
             f"{report['status']}"]
    if report.get("promote"):
        lines.append(f"  promote: {report['promote']['outcome']}")
    for collection, step in report["steps"].items():
        what = step.get("skipped") or ("re-scan" if step.get("rescan") else
                                       f"{len(step.get('changed', {}).get('upsert', []))} changed, "
                                       f"{len(step.get('changed', {}).get('delete', []))} deleted")
        lines.append(f"  {collection}: {step['outcome']} ({what})")
        if step.get("conflicts"):
            lines.append(f"    left alone (changed on the target): {', '.join(step['conflicts'])}")
        if step.get("error"):
            lines.append(f"    error: {step['error']['message']}")
            if step["error"].get("hint"):
                lines.append(f"    fix: {step['error']['hint']}")
        for refusal in step.get("refused") or []:
            lines.append(f"    refused: {refusal.get('message')}")
    if report.get("error"):
        lines.append(f"  error: {report['error'].get('message')}")
    lines.append(f"  watermark: {json.dumps(report['watermark_before'])} -> {json.dumps(report['watermark_after'])}")
    return "\n".join(lines)


def run_outcome(run: dict[str, Any]) -> str:
    """A recorded run's outcome in words, marked ``(dry run)`` for one, with the rows it left alone
    (``skip-if-target-modified``): ``ok`` alone would read as "everything synced" when rows changed on the target
    were kept as they are."""
    conflicts = sum(len(keys) for keys in (((run.get("report") or {}).get("conflicts")) or {}).values())
    # a dry run's "ok" read as a real run's in the trial's history: it changed nothing and moved no watermark
    text = f"{run['outcome']} (dry run)" if run.get("dry_run") else str(run["outcome"])
    if not conflicts:
        return text
    return f"{text}, {conflicts} conflict{'' if conflicts == 1 else 's'} left alone"


def outside_http_paths(profile: dict[str, Any]) -> list[str]:
    """Why a sidecar would refuse the profile's ``.env`` files (outside ``CAIRN_MIGRATE_HTTP_PATHS`` as this
    environment sets it): its scheduled runs would end ``invalid``.  ``sync run`` here is not affected."""
    import os
    from pathlib import Path

    setting = "CAIRN_MIGRATE_HTTP_PATHS"
    folders = [Path(p).expanduser().resolve() for p in os.environ.get(setting, "").split(os.pathsep) if p.strip()]
    out = []
    for side in ("source", "target"):
        path = Path(profile[side])
        if not any(folder in path.parents for folder in folders):
            out.append(f"the {side} {path} is outside {setting} ({os.environ.get(setting) or 'not set here'}): a "
                       f"sidecar (serve --scheduler) refuses it and its scheduled runs end invalid; `sync run` from "
                       f"this command line is not affected. Fix: add its folder to {setting} of the sidecar")
    return out


def _filters(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        collection, sep, spec = value.partition("=")
        if not sep or not collection:
            raise InvalidInput(f"--filter {value!r} is not COLLECTION=JSON", hint='e.g. --filter articles=\'{"status": {"_eq": "published"}}\'')
        out[collection] = spec
    return out


def register(cli: click.Group) -> None:
    """Add the ``sync`` group to ``cairn-migrate``."""

    @cli.group("sync")
    def sync_group() -> None:
        """Scheduled instance-to-instance content syncs (profiles of the --env instance)."""

    @sync_group.command("add")
    @click.argument("name")
    @click.option("--from", "source", required=True, metavar="SRC_ENV", help="The source instance's .env.")
    @click.option("--to", "target", required=True, metavar="DST_ENV", help="The target instance's .env.")
    @click.option("--collection", "collections", multiple=True, required=True, help="A collection to sync (repeatable).")
    @click.option("--filter", "filters", multiple=True, metavar="COLLECTION=JSON",
                  help="A Directus-style filter of one collection's rows (repeatable).")
    @click.option("--mode", type=click.Choice(MODES), default="merge", show_default=True,
                  help="The content move's mode (mirror propagates deletes).")
    @click.option("--max-delete", type=int, help="mirror: the most target rows one run may delete per collection.")
    @click.option("--conflict", type=click.Choice(CONFLICTS), default="source-wins", show_default=True,
                  help="Rows changed on both sides.")
    @click.option("--initial", type=click.Choice(["full", "from-now"]), default="full", show_default=True,
                  help="A collection's first run: re-scan everything, or only changes from now on (a cloned target).")
    @click.option("--promote-first", is_flag=True, help="Promote the structure before the content.")
    @click.option("--target-token-env", metavar="VAR", help="With --promote-first: the sidecar's environment variable "
                  "holding the target's admin token (never stored); its name must start CAIRN_MIGRATE_TOKEN_.")
    @click.option("--mask", metavar="PROFILE", help="A masking profile's name, passed to the content step.")
    @click.option("--cron", metavar="EXPR", help="A crontab schedule, e.g. '*/15 * * * *'.")
    @click.option("--interval", "interval_seconds", type=int, metavar="SECONDS", help="Run every SECONDS instead.")
    @click.option("--timezone", "zone", default="UTC", show_default=True, help="The IANA time zone of --cron.")
    @click.option("--missed", type=click.Choice(MISSED), default="run-once", show_default=True,
                  help="Runs missed while no sidecar ran: one catch-up run, or none.")
    @click.option("--paused", is_flag=True, help="Add it paused.")
    @click.option("--alert-webhook", metavar="URL", help="POST the JSON report of a failed run here: a URL under "
                  "the source's or target's PUBLIC_URL, or on a host listed in CAIRN_MIGRATE_WEBHOOK_HOSTS.")
    @click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
    @click.pass_obj
    @handle_errors
    def add_command(obj: Context, name: str, source: str, target: str, collections: tuple[str, ...],
                    filters: tuple[str, ...], mode: str, max_delete: int | None, conflict: str, initial: str,
                    promote_first: bool,
                    target_token_env: str | None, mask: str | None, cron: str | None, interval_seconds: int | None,
                    zone: str, missed: str, paused: bool, alert_webhook: str | None, as_json: bool) -> None:
        """Add sync profile NAME (exit 2 when it is not valid, naming every problem at once).

        Checked now: the .env files exist and read, the source has each collection and each filter's fields.
        The .env paths are stored absolute; source and target must be different databases. A path outside
        CAIRN_MIGRATE_HTTP_PATHS (as this environment sets it) is added with a warning: a sidecar refuses it,
        so its scheduled runs would end invalid.
        """
        schedule = {"cron": cron, "interval_seconds": interval_seconds, "timezone": zone} if cron or interval_seconds else None
        from ..operations.sync_profiles import for_cli, validate_new_profile

        try:
            profile = validate_new_profile({
                "name": name, "source": source, "target": target, "collections": list(collections),
                "filters": _filters(filters), "mode": mode, "max_delete": max_delete, "conflict": conflict,
                "initial": initial, "promote_first": promote_first, "target_token_env": target_token_env, "mask": mask,
                "schedule": schedule, "missed": missed, "enabled": not paused, "alert_webhook": alert_webhook})
            added = _describe(_store(obj).add(profile))
        except InvalidInput as exc:
            raise for_cli(exc) from None
        added["warnings"] = outside_http_paths(added)
        _emit(added, as_json, lambda p: "\n".join([render_profile(p), *(f"warning: {w}" for w in p["warnings"])]))

    @sync_group.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
    @click.pass_obj
    @handle_errors
    def list_command(obj: Context, as_json: bool) -> None:
        """List the sync profiles with their next run."""
        profiles = [_describe(p) for p in _store(obj).list()]
        _emit({"syncs": profiles, "count": len(profiles)}, as_json,
              lambda r: "\n".join(render_profile(p) for p in r["syncs"]) or "no sync profiles")

    @sync_group.command("show")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
    @click.pass_obj
    @handle_errors
    def show_command(obj: Context, name: str, as_json: bool) -> None:
        """Show sync profile NAME and its last run."""
        store = _store(obj)
        runs = store.history(name, limit=1)
        shown = {**_describe(store.get(name)), "last_run": runs[0] if runs else None}
        _emit(shown, as_json, lambda p: render_profile(p) + (
            f"\n  last run: {p['last_run']['started_at']} {p['last_run']['outcome']}" if p["last_run"] else ""))

    def _toggle(command: str, enabled: bool) -> None:
        @sync_group.command(command)
        @click.argument("name")
        @click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
        @click.pass_obj
        @handle_errors
        def toggle(obj: Context, name: str, as_json: bool) -> None:
            profile = _describe(_store(obj).set_enabled(name, enabled))
            _emit(profile, as_json, render_profile)

        toggle.__doc__ = ("Resume sync profile NAME (its schedule runs again)." if enabled
                          else "Pause sync profile NAME: it does nothing until resumed.")
        toggle.help = toggle.__doc__

    _toggle("pause", False)
    _toggle("resume", True)

    @sync_group.command("remove")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Print the removed profile as JSON.")
    @click.pass_obj
    @handle_errors
    def remove_command(obj: Context, name: str, as_json: bool) -> None:
        """Remove sync profile NAME with its schedule, watermarks and history."""
        removed = _store(obj).remove(name)
        _emit({"removed": removed}, as_json, lambda r: f"removed {r['removed']['name']}")

    @sync_group.command("history")
    @click.argument("name")
    @click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True, help="How many runs.")
    @click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
    @click.pass_obj
    @handle_errors
    def history_command(obj: Context, name: str, limit: int, as_json: bool) -> None:
        """The runs of sync profile NAME, newest first."""
        runs = _store(obj).history(name, limit=limit)
        _emit({"name": name, "runs": runs, "count": len(runs)}, as_json, lambda r: "\n".join(
            f"{run['started_at']} {run['trigger']:<8} {run_outcome(run):<11} slot {run['slot'] or '-'} "
            f"job {run['job_id'] or '-'}" for run in r["runs"]) or "no runs")

    @sync_group.command("run")
    @click.argument("name")
    @click.option("--full", is_flag=True, help="Re-scan every row the filters select (finds drift the change feed missed).")
    @click.option("-n", "--dry-run", is_flag=True, help="Show the plan; change nothing (exit 1 when it has changes).")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @click.pass_obj
    @handle_errors
    def run_command(obj: Context, name: str, full: bool, dry_run: bool, as_json: bool) -> None:
        """Run sync profile NAME once, now.

        Exits 0 when it synced (or there was nothing to sync), 1 for a dry run with
        changes, 2 for bad input or a refused move, 3 when it failed, 4 when some
        collections failed (their watermarks stay, so the next run retries them).
        """
        context = obj.operation()
        report, outcome = operations.run("sync_run", context, {"name": name, "full": full, "dry_run": dry_run,
                                                               "trigger": "cli"})
        _emit(report, as_json, render_run)
        exit_with(outcome)
