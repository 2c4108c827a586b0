"""``cairn-migrate install-extension``: the thin CLI verb over the ``install_extension`` operation."""

from __future__ import annotations

import json
from typing import Any

import click

from .. import operations
from .base import Context, exit_with, handle_errors


def _render(report: dict[str, Any], removing: bool) -> str:
    lines = []
    if removing:
        if report["removed"]:
            lines.append(f"removed the cairn-migrate extension from {report['extensions_path']}")
            lines += [f"  - {rel}" for rel in report["removed"]]
        else:
            lines.append(f"the cairn-migrate extension is not installed in {report['extensions_path']}")
        if report["module_bar"] == "removed":
            lines.append("removed the module from the module bar")
    else:
        lines.append(f"installed the cairn-migrate extension into {report['extensions_path']}")
        lines.append(f"  sidecar: {report['sidecar_url']}")
        lines += [f"  {'*' if rel in report['written'] else '='} {rel}" for rel in report["files"]]
        if report["module_bar"] == "added":
            lines.append("added the module to the module bar")
        for kind in ("problems", "warnings"):
            for problem in report[kind]:
                lines.append(f"{kind[:-1]}: {problem['message']}")
                lines.append(f"  fix: {problem['hint']}")
    if report["restart_needed"]:
        lines.append("restart the instance: it loads extensions (and bundles the app module) at start")
    return "\n".join(lines)


def register(cli: click.Group) -> None:
    """Add ``install-extension`` to the ``cairn-migrate`` group."""
    @cli.command("install-extension")
    @click.option("--sidecar-url", metavar="URL", help="Where the instance reaches the sidecar (default: as configured, else http://127.0.0.1:8765).")
    @click.option("--uninstall", "remove", is_flag=True, help="Remove what install-extension wrote.")
    @click.option("--no-module-bar", is_flag=True, help="Leave directus_settings.module_bar alone.")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @click.pass_obj
    @handle_errors
    def install_extension_command(obj: Context, sidecar_url: str | None, remove: bool, no_module_bar: bool,
                                  as_json: bool) -> None:
        """Write the /migrate endpoint, the freeze/notify hook and the admin module into the instance.

        Idempotent: the shared secret is kept, unchanged files are not rewritten.
        Exits 1 when a setting of the instance would keep the extension from loading;
        SERVE_APP=false (only the admin module hidden) is a warning.
        """
        params = {"sidecar_url": sidecar_url, "uninstall": remove, "module_bar": not no_module_bar}
        report, outcome = operations.run("install_extension", obj.operation(), params)
        click.echo(json.dumps(report, indent=2) if as_json else _render(report, remove))
        exit_with(outcome)
