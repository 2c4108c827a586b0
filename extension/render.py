"""Plain-text renderings of reports for the CLI (JSON output needs none)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _table(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max((len(left) for left, _ in rows), default=0)
    return [f"{indent}{left.ljust(width)}  {right}" for left, right in rows]


def render_inspect(report: Mapping[str, Any]) -> str:
    """The ``inspect`` report as a few readable blocks."""
    instance, database, platform = report["instance"], report["database"], report["platform"]
    version = platform["version"] or "unknown version"
    lines = [
        f"Instance  {instance['env_file'] or '(process environment)'}",
        f"  KEY         {instance['key'] or '(not set)'}",
        f"  PUBLIC_URL  {instance['public_url']}",
        f"  platform    {platform['product']} {version} "
        f"(latest migration {platform['latest_migration']}, {platform['migrations']} recorded)",
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
    lines.append("")
    lines.append("OK" if report["ok"] else "PROBLEMS FOUND")
    return "\n".join(lines)
