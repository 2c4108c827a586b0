"""Plain-text renderings of reports for the CLI (JSON output needs none)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..instance.target_env import describe as describe_env


def _table(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max((len(left) for left, _ in rows), default=0)
    return [f"{indent}{left.ljust(width)}  {right}" for left, right in rows]


def render_inspect(report: Mapping[str, Any]) -> str:
    """The ``inspect`` report as a few readable blocks."""
    instance, database = report["instance"], report["database"]
    lines = [
        f"Instance  {instance['env_file'] or '(process environment)'}",
        f"  KEY         {instance['key'] or '(not set)'}",
        f"  PUBLIC_URL  {instance['public_url']}",
        f"  platform    {_platform(report)}",
        f"  database    {database['vendor']} {database['server_version']} at {database['url']}",
        "",
    ]
    tables = report["tables"]
    lines.append(f"System tables ({tables['system_count']})")
    lines += _table([(name, f"{count:>9,}") for name, count in tables["system"].items()])
    if tables["missing_system_tables"]:
        lines.append(f"  MISSING: {', '.join(tables['missing_system_tables'])}")
    lines.append(f"User tables ({tables['user_count']})")
    lines += _table([(name, f"{count:>9,}") for name, count in tables["user"].items()]) or ["  (none)"]
    lines.append("")
    lines.append("Storage")
    for location in report["storage"]:
        where = location.get("bucket") or location.get("container") or location.get("root") or ""
        head = f"  {location['name']} ({location['driver']}{', ' + str(where) if where else ''})"
        if not location["reachable"]:
            lines.append(f"{head}: UNREACHABLE: {location['error']['message']}")
            continue
        status = f"{location['file_rows']} file rows, {location['bytes']:,} bytes"
        if location["present"] is not None:
            status += f"; bytes present {location['present']}, missing {location['missing']}"
        lines.append(f"{head}: {status}")
        for name in location["missing_files"]:
            lines.append(f"    missing: {name}")
    files = report["files"]
    for name, count in files["unknown_locations"].items():
        lines.append(f"  {name}: {count} file rows name this location, which is not configured")
    if files["without_filename_disk"]:
        lines.append(f"  {files['without_filename_disk']} file rows have no filename_disk")
    lines += _incomplete_import(report.get("import"))
    lines += [f"WARNING: {warning}" for warning in report.get("warnings", [])]
    lines.append("")
    lines.append("OK" if report["ok"] else "PROBLEMS FOUND")
    return "\n".join(lines)


def _platform(report: Mapping[str, Any]) -> str:
    """The platform line: product, version and ledger, or what the database holds instead of CairnCMS."""
    platform, tables = report["platform"], report["tables"]
    if platform["product"] == "unknown":  # no directus_collections or no directus_migrations
        if not tables["system_count"] and not tables["user_count"]:
            return "empty database (no CairnCMS tables)"
        return "not CairnCMS (directus_collections or directus_migrations is missing)"
    version = platform["version"] or "unknown version"
    return (f"{platform['product']} {version} "
            f"(latest migration {platform['latest_migration']}, {platform['migrations']} recorded)")


def _incomplete_import(status: Mapping[str, Any] | None) -> list[str]:
    """The lines saying the target holds an interrupted import (none when it does not)."""
    if not status:
        return []
    where = f" (table {status['current_table']})" if status.get("current_table") else ""
    return [f"INCOMPLETE IMPORT: interrupted at step {status['step']}{where}, started {status['started_at']}; "
            f"fix: {status['fix']}"]


def render_export(summary: Mapping[str, Any]) -> str:
    source = summary["source"]
    lines = [
        f"Exported {source['platform']['product']} {source['platform']['version'] or ''} ({source['vendor']}, KEY {source['key']})",
        f"  {summary['tables']} tables, {summary['rows']:,} rows, {summary['files']} files ({summary['bytes']:,} bytes)",
        f"  bundle: {summary['bundle']}",
    ]
    masked = summary.get("masked")
    if masked:
        lines.append(f"  masked with {masked['name']} ({masked['origin']}); salt {masked['salt']}")
    freeze = summary.get("freeze")
    if freeze:
        lines.append(f"  warning: {freeze['warning']}" if freeze.get("warning") else
                     f"  writes held and proven by the instance at {freeze['instance_url']}")
    for entry in summary["missing_files"]:
        lines.append(f"  missing at capture: {entry.get('filename_disk') or entry['id']} ({entry['reason']})")
    for entry in summary["changed_files"]:
        lines.append(f"  changed during capture: {entry['filename_disk']} (filesize {entry['filesize']}, copied {entry['size']})")
    lines += [f"  warning: {warning}" for warning in summary.get("warnings", [])]
    return "\n".join(lines)


def render_import(report: Mapping[str, Any]) -> str:
    plan = report["plan"]
    verb = "Would" if not report["applied"] else "Did"
    lines = [f"Import into {plan['target']} ({plan['vendor']})"]
    lines += [f"  warning: {w}" for w in plan["warnings"]]
    actions: dict[str, int] = {}
    for table in plan["tables"]:
        actions[table["action"]] = actions.get(table["action"], 0) + 1
    if plan.get("replace") and plan.get("existing_tables") and not report["applied"]:
        lines.append(f"  would first write a safety bundle of the target, then drop its {len(plan['existing_tables'])} "
                     "existing tables")
    lines.append(f"  {verb.lower()} " + ", ".join(f"{action} {count} tables" for action, count in actions.items()))
    lines.append(f"  files: {plan['files']['count']} ({plan['files']['bytes']:,} bytes)")
    if plan["storage_map"]:
        lines.append("  storage map: " + ", ".join(f"{a} -> {b}" for a, b in plan["storage_map"].items()))
    lines += _render_drift(plan.get("drift", []), plan["vendor"])
    if report["applied"]:
        lines.append(f"  loaded {report['rows']:,} rows in {report['seconds']} s; files copied {report['files']['copied']}, skipped {report['files']['skipped']}")
        if report.get("safety_bundle"):
            lines.append(f"  safety bundle of the old target: {report['safety_bundle']}")
    else:
        lines.append("  (dry run: nothing was changed)")
    return "\n".join(lines)


def _render_drift(drift: list[Mapping[str, Any]], vendor: str) -> list[str]:
    """The plan's type-drift report: one line per column and kind, values the target refuses first."""
    if not drift:
        return [f"  type drift on {vendor}: none (every value is stored as it is)"]
    changed = sum(d["values"] for d in drift if d["effect"] == "changed")
    refused = sum(d["values"] for d in drift if d["effect"] == "refused")
    lines = [f"  type drift on {vendor}: {changed:,} values changed, {refused:,} refused"]
    ordered = sorted(drift, key=lambda d: (d["effect"] != "refused", d["table"], d["column"], d["kind"]))
    rows = [(f"{d['effect']} {d['table']}.{d['column']}", f"{d['values']:>7,}  {d['kind']}: {d['note']}") for d in ordered]
    return lines + _table(rows, indent="    ")


def _row_counts(table: Mapping[str, Any]) -> str:
    """``rows 9 / 10``, or only the expected count when the target has no such table to count."""
    if table.get("rows") is None:
        return f"{table['expected_rows']:,} rows expected"
    return f"rows {table['rows']:,} / {table['expected_rows']:,}"


def render_verify(report: Mapping[str, Any]) -> str:
    lines = []
    for table in report["tables"]:
        mark = "=" if table["ok"] else "*"
        detail = "" if table["ok"] else f"  {table.get('problem')} ({_row_counts(table)})"
        if table.get("columns"):
            detail += f" in columns {', '.join(table['columns'])}"
        lines.append(f"{mark} {table['table']}{detail}")
        for drift in table.get("drift", []):
            lines.append(f"~ {table['table']}.{drift['column']}  expected drift: {drift['values']} values ({', '.join(drift['kinds'])})")
    files = report["files"]
    lines.append(f"files: {files['ok']}/{files['checked']} identical")
    for entry in files["missing"]:
        lines.append(f"- {entry['storage']}/{entry['filename_disk']} (missing)")
    for entry in files["mismatched"]:
        lines.append(f"* {entry['storage']}/{entry['filename_disk']} (bytes differ)")
    for check in report["live"]:
        lines.append(f"{'=' if check['ok'] else '!'} live {check['check']}: {check['detail']}")
    lines += _incomplete_import(report.get("import"))
    if report.get("env"):
        lines.append(f"{'!' if report['env']['required'] else '~'} env: {describe_env(report['env'])}")
    drift = report.get("drift") or {}
    if report["ok"] and drift.get("values"):
        lines.append(f"VERIFIED with expected drift: {drift['values']} values in columns {', '.join(drift['columns'])}")
    else:
        lines.append("VERIFIED" if report["ok"] else "DIFFERENCES FOUND")
    return "\n".join(lines)
