"""``cairn-migrate promote``: the thin CLI verb over the ``promote`` operation."""

from __future__ import annotations

import json
from typing import Any

import click

from .. import operations
from ..operations import OpContext
from .base import Context, exit_with, handle_errors


def render_promote(report: dict[str, Any]) -> str:
    """The combined plan (schema steps, config changes, data loss, refusals), then what was applied."""
    lines = [f"promote {report['from']} -> {report['to']} ({', '.join(report['only'])})"
             + (" through its database" if report.get("engine") == "db" else "")]
    schema, config = report["schema"], report["config"]
    from ..operations.promote import rows_word  # late: every command's start-up would import promote

    if schema is not None:
        lines.append("schema: " + (f"{len(schema['steps'])} changes" if schema["changes"] else "no changes"))
        lines += [f"  {step}" for step in schema["steps"]]
        if schema.get("vendor_noise"):
            lines.append(f"  ignored: {schema['vendor_noise']} differences that are only the vendors' spelling of the same types")
        for key, values in (schema.get("mismatch") or {}).items():
            lines.append(f"  {'version' if key == 'directus' else key}: source {values['source']}, target {values['target']}")
        lines += [f"  data loss: {loss['kind']} {loss['name']} holds {rows_word(loss['rows'])}"
                  if "change" not in loss else f"  data loss: {loss['name']} {loss['change']}: "
                  f"{rows_word(loss['rows'])} would not fit" for loss in schema["data_loss"]]
    if config is not None:
        lines.append("config: " + ("changes" if config["changes"] else "no changes"))
        planned = config.get("plan")
        deleting, keeping = config.get("delete") or {}, config.get("kept") or {}
        lines += [f"  - role {key} (with its permissions and presets; its users suspended)" for key in deleting.get("roles", [])]
        lines += [f"    suspends {u['email']} ({u['role']}{', admin' if u.get('admin') else ''}"
                  f"{', the user of --to-token' if u.get('caller') else ''})" for u in config.get("suspend") or []]
        lines += [f"  - permission {name}" for name in deleting.get("permissions", [])]
        if planned:
            for action in ("created", "updated"):
                if planned["roles"][action]:
                    lines.append(f"  roles {action}: {', '.join(planned['roles'][action])}")
                if planned["permissions"][action]:
                    lines.append(f"  permissions {action}: {planned['permissions'][action]}")
                    sign = "+" if action == "created" else "~"
                    lines += [f"    {sign} permission {name}" for name in (config.get("permissions") or {}).get(action, [])]
        lines += [f"  warning: permission {name} is on a collection the target does not have (it grants nothing)"
                  for name in config.get("warnings") or []]
        lines += [f"  kept (target only; --destructive deletes it): role {key}" for key in keeping.get("roles", [])]
        lines += [f"  kept (target only; --destructive deletes it): permission {name}"
                  for name in keeping.get("permissions", [])]
    lines += render_extras(report.get("extras"))
    for user in report.get("users") or []:
        state = (f"missing on the target: its {user['missing']}" if user["missing"] else
                 "unchanged" if not user["change"] else f"was {user['now']['role']}/{user['now']['status']}")
        lines.append(f"user {user['email']}: role {user['role']}, {user['status']} ({state})")
    for refusal in report["refused"]:
        lines.append(f"refused: {refusal['message']}")
        lines.append(f"  fix: {refusal['fix']}")
    drifted = report.get("type_drift") or []
    if drifted:
        lossy = [d for d in drifted if d["lossy"]]
        lines.append(f"type drift on the target: {len(lossy)} lossy, {len(drifted) - len(lossy)} only the vendor's "
                     "spelling (not listed)")
        lines += [f"  {d['field']}: {d['source']} -> {d['target']} LOSSY: {'; '.join(d['reasons'])}" for d in lossy]
    lines += [f"  {line}" for line in (schema or {}).get("not_applied") or []]
    if report.get("safety_snapshot"):
        lines.append(f"safety snapshot of the target: {report['safety_snapshot']}")
    if report.get("engine") == "db" and report["applied"]:
        lines.append("written to the target's database: if it is running, clear its cache "
                     "(POST /utils/cache/clear as an admin) or restart it")
    if report.get("failed"):
        failed = report["failed"]
        done = ", ".join(report.get("steps_done") or []) or "nothing"
        if (schema or {}).get("applied_steps") and "schema (in part)" in (report.get("steps_done") or []):
            done += f" ({len(schema['applied_steps'])} schema steps)"
        what = "interrupted" if report.get("interrupted") else f"the {failed.get('step') or 'next'} step failed"
        lines.append(f"partial: applied {done}; {what}: {failed['message']}")
        if failed.get("hint"):
            lines.append(f"  fix: {failed['hint']}")
    elif (schema or {}).get("not_applied"):
        lines.append(f"partial: {len(schema['not_applied'])} schema changes not applied (listed above)")
    elif not report["changes"]:
        lines.append("no changes")
    elif report["applied"]:
        lines.append("applied")
    return "\n".join(lines)


def render_extras(extras: dict[str, Any] | None) -> list[str]:
    """Per extra kind: its counts, then one line per row created or updated, and the secrets left out."""
    if not extras:
        return []
    if extras.get("skipped"):
        return [f"extras: {extras['skipped']}"]
    lines = []
    for kind, plan in extras.items():
        if not isinstance(plan, dict) or "counts" not in plan:
            continue
        counts = plan["counts"]
        lines.append(f"{kind}: " + (f"{counts['delete']} to delete, " if counts.get("delete") else "")
                     + f"{counts['create']} to create, {counts['update']} to update, {counts['unchanged']} unchanged"
                     + (f", {counts['kept']} kept (target only)" if counts.get("kept") else ""))
        lines += [f"  - {label}" for label in plan.get("delete", [])]
        lines += [f"  + {label}" for label in plan["create"]] + [f"  ~ {label}" for label in plan["update"]]
        lines += [f"  kept (target only; --destructive deletes it): {label}" for label in plan.get("kept", [])]
        lines += [f"  secret not copied (--include-secrets copies it): {name}" for name in plan.get("secrets_left_out", [])]
        lines += [f"  note: {webhook}" for webhook in plan.get("webhooks", [])]
        if plan.get("left_out"):
            lines.append(f"  bookmarks and users' own presets are never promoted: {plan['left_out']} left out")
        lines += [f"  {name} usually differs per instance: --exclude-setting {name} keeps the target's"
                  for name in plan.get("per_instance", [])]
        lines += [f"  excluded (kept as the target has it): {name}" for name in plan.get("excluded", [])]
    return lines


def register(cli: click.Group) -> None:
    """Add ``promote`` to the ``cairn-migrate`` group."""
    @cli.command("promote")
    @click.option("--from", "source", required=True, metavar="SRC",
                  help="A running instance's URL (with --from-token), an instance's .env, a bundle (directory, .tar "
                  "or .tar.gz written by export), or a snapshot directory (schema.yaml + config/).")
    @click.option("--from-token", envvar="CAIRN_MIGRATE_FROM_TOKEN", help="An admin token of the source (or CAIRN_MIGRATE_FROM_TOKEN).")
    @click.option("--to", "target", required=True, metavar="DST",
                  help="The running target's URL, or its .env (reached at its PUBLIC_URL with --to-token, else "
                  "through its database).")
    @click.option("--to-token", envvar="CAIRN_MIGRATE_TO_TOKEN", help="An admin token of the target (or CAIRN_MIGRATE_TO_TOKEN).")
    @click.option("--engine", type=click.Choice(["auto", "api", "db"]), default="auto", show_default=True,
                  help="api: through the target's /schema and /config endpoints; db: the offline engine, through the "
                  "database of the target's .env (schema only on Directus); auto: a .env without --to-token is db.")
    @click.option("-n", "--dry-run", is_flag=True, help="Show the plan; change nothing (exit 1 when it has changes).")
    @click.option("--only", multiple=True, type=click.Choice(list(operations.PROMOTE_KINDS)),
                  help="Promote only this part (repeatable; default: all).")
    @click.option("--allow-data-loss", is_flag=True, help="Drop tables and columns that hold rows.")
    @click.option("--force", is_flag=True, help="Promote across vendors or versions.")
    @click.option("--include-secrets", is_flag=True,
                  help="Copy secrets in flow operations' options (tokens, passwords, auth headers).")
    @click.option("--destructive", is_flag=True,
                  help="Delete what SRC lacks from DST (roles, permissions, flows, dashboards, presets, translation "
                  "strings), as CairnCMS's config apply --destructive; without it they are kept and listed.")
    @click.option("--allow-suspend-admins", is_flag=True,
                  help="With --destructive: delete roles holding users with admin access (they are suspended).")
    @click.option("--exclude-setting", "exclude_settings", multiple=True, metavar="NAME",
                  help="Leave this setting as DST has it (repeatable), e.g. project_url.")
    @click.option("--restore-users", is_flag=True,
                  help="With a safety snapshot as --from: give the users a destructive promote suspended back their "
                  "role and status.")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @click.pass_obj
    @handle_errors
    def promote_command(obj: Context, source: str, from_token: str | None, target: str, to_token: str | None,
                        engine: str, dry_run: bool, only: tuple[str, ...], allow_data_loss: bool, force: bool,
                        include_secrets: bool, destructive: bool, allow_suspend_admins: bool, exclude_settings: tuple[str, ...],
                        restore_users: bool, as_json: bool) -> None:
        """Promote the structure of SRC (schema, roles and permissions, flows, dashboards, presets, settings,
        translation strings) onto the CairnCMS DST.

        Through DST's own API: the schema diff with its hash, then the config apply after its dry
        run. With --engine db (or a .env without --to-token) the schema goes straight into DST's
        database (a CairnCMS that is not running, or Directus 9/10). Exits 0 when there is nothing to change or it was applied, 1 for a dry run with
        changes, 2 when refused (a drop of rows without --allow-data-loss, another vendor or
        version without --force); the plan is printed in every case.
        """
        params = {"from": source, "to": target, "engine": engine, "dry_run": dry_run, "only": list(only),
                  "allow_data_loss": allow_data_loss, "force": force, "include_secrets": include_secrets,
                  "destructive": destructive, "allow_suspend_admins": allow_suspend_admins,
                  "restore_users": restore_users, "exclude_settings": list(exclude_settings)}
        from ..service.state import default_state_url

        # No --env needed: both instances are named by --from and --to (obj.instance is read only if asked).
        context = OpContext(instance=obj.instance, state_url=default_state_url(),
                            secrets={k: v for k, v in {"from_token": from_token, "to_token": to_token}.items() if v})
        report, outcome = operations.run("promote", context, params)
        click.echo(json.dumps(report, indent=2, default=str) if as_json else render_promote(report))
        exit_with(outcome)
