"""``install-extension`` on a plain (not running) instance: files, config, module bar, idempotency, uninstall."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from instance_fixtures import CairnSqliteInstance

from cairn_migrate.cli import cli
from cairn_migrate.operations.install import install, uninstall
from cairn_migrate.instance.instance import Instance

OURS = {"type": "module", "id": "migrate", "enabled": True}
#: CairnCMS's own module bar for a NULL module_bar (app/src/constants.ts MODULE_BAR_DEFAULT).
CAIRNCMS_DEFAULT = [
    {"type": "module", "id": "content", "enabled": True},
    {"type": "module", "id": "users", "enabled": True},
    {"type": "module", "id": "files", "enabled": True},
    {"type": "module", "id": "insights", "enabled": True},
    {"type": "link", "id": "docs", "enabled": True, "name": "$t:documentation", "icon": "help",
     "url": "https://cairncms.dev/docs"},
    {"type": "module", "id": "settings", "enabled": True, "locked": True},
]
EXPECTED = {
    "endpoints/cairn-migrate/index.js", "endpoints/cairn-migrate/sidecar.js", "endpoints/cairn-migrate/package.json",
    "hooks/cairn-migrate/index.js", "hooks/cairn-migrate/sidecar.js", "hooks/cairn-migrate/package.json",
    "modules/cairn-migrate/index.js", ".cairn-migrate.json",
}


@pytest.fixture
def instance(cairn_instance: CairnSqliteInstance) -> Instance:
    (cairn_instance.folder / "package.json").write_text('{"name": "instance"}')
    return Instance.from_env_file(cairn_instance.env_path, environ={})


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _module_bar(db: Path) -> Any:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT module_bar FROM directus_settings").fetchall()
    finally:
        conn.close()
    return [json.loads(r[0]) if r[0] else None for r in rows]


def test_install_writes_the_three_extensions_and_the_config(instance: Instance, cairn_instance: CairnSqliteInstance) -> None:
    report = install(instance, "http://127.0.0.1:9999/")
    root = instance.extensions_path
    assert _files(root) == EXPECTED
    config = json.loads((root / ".cairn-migrate.json").read_text())
    assert config["sidecar_url"] == "http://127.0.0.1:9999" and len(config["secret"]) == 64
    assert oct((root / ".cairn-migrate.json").stat().st_mode & 0o777) == "0o600"
    assert json.loads((root / "hooks/cairn-migrate/package.json").read_text())["type"] == "commonjs"
    assert "defineModule" not in (root / "modules/cairn-migrate/index.js").read_text()  # no SDK import needed
    assert report["restart_needed"] and set(report["written"]) == EXPECTED
    # The fixture's module_bar is NULL: CairnCMS's default (the Documentation link kept) plus ours.
    assert _module_bar(cairn_instance.db_path) == [CAIRNCMS_DEFAULT + [OURS]]


def test_install_is_idempotent_and_keeps_the_secret(instance: Instance, cairn_instance: CairnSqliteInstance) -> None:
    install(instance, "http://127.0.0.1:9999")
    secret = json.loads((instance.extensions_path / ".cairn-migrate.json").read_text())["secret"]
    again = install(instance)
    assert again["written"] == [] and not again["restart_needed"] and again["module_bar"] == "present"
    config = json.loads((instance.extensions_path / ".cairn-migrate.json").read_text())
    assert config["secret"] == secret and config["sidecar_url"] == "http://127.0.0.1:9999"
    bar = _module_bar(cairn_instance.db_path)
    assert len(bar) == 1 and sum(p["id"] == "migrate" for p in bar[0]) == 1
    moved = install(instance, "http://10.0.0.2:8765")
    assert moved["written"] == [".cairn-migrate.json"]


def test_uninstall_removes_exactly_what_install_wrote(instance: Instance, cairn_instance: CairnSqliteInstance) -> None:
    root = instance.extensions_path
    (root / "endpoints" / "someone-else").mkdir(parents=True)
    (root / "endpoints" / "someone-else" / "index.js").write_text("module.exports = {}")
    before = _module_bar(cairn_instance.db_path)
    install(instance)
    report = uninstall(instance)
    assert set(report["removed"]) == EXPECTED and report["module_bar"] == "removed"
    assert _files(root) == {"endpoints/someone-else/index.js"}
    assert not (root / "hooks" / "cairn-migrate").exists()
    assert before == _module_bar(cairn_instance.db_path) == [None]  # NULL again: the app's default
    assert uninstall(instance)["removed"] == []


def test_module_bar_when_the_settings_row_is_missing(instance: Instance, cairn_instance: CairnSqliteInstance) -> None:
    cairn_instance.execute("DELETE FROM directus_settings")
    install(instance)
    assert _module_bar(cairn_instance.db_path) == [CAIRNCMS_DEFAULT + [OURS]]
    uninstall(instance)
    assert _module_bar(cairn_instance.db_path) == [None]


def test_a_custom_module_bar_keeps_its_entries(instance: Instance, cairn_instance: CairnSqliteInstance) -> None:
    custom = [{"type": "module", "id": "content", "enabled": True}, {"type": "link", "id": "x", "url": "https://x", "enabled": True}]
    cairn_instance.execute("DELETE FROM directus_settings")
    cairn_instance.execute("INSERT INTO directus_settings (module_bar) VALUES (?)", (json.dumps(custom),))
    install(instance)
    assert _module_bar(cairn_instance.db_path) == [custom + [OURS]]
    uninstall(instance)
    assert _module_bar(cairn_instance.db_path) == [custom]


def test_an_edited_module_bar_gets_ours_enabled_and_nothing_else_changes(
        instance: Instance, cairn_instance: CairnSqliteInstance) -> None:
    edited = [{"type": "module", "id": "settings", "enabled": True, "locked": True},
              {"type": "module", "id": "migrate", "enabled": False},
              {"type": "module", "id": "users", "enabled": False},
              {"type": "link", "id": "docs", "enabled": True, "name": "Docs", "icon": "help", "url": "https://example.test/docs"}]
    cairn_instance.execute("UPDATE directus_settings SET module_bar = ?", (json.dumps(edited),))
    report = install(instance)
    assert report["module_bar"] == "added"
    assert _module_bar(cairn_instance.db_path) == [[edited[0], OURS, edited[2], edited[3]]]
    uninstall(instance)
    assert _module_bar(cairn_instance.db_path) == [[edited[0], edited[2], edited[3]]]


def test_cli_reports_a_missing_package_json(cairn_instance: CairnSqliteInstance) -> None:
    result = CliRunner().invoke(cli, ["--env", str(cairn_instance.env_path), "install-extension", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert [p["setting"] for p in report["problems"]] == ["PACKAGE_FILE_LOCATION"]
    assert [p["setting"] for p in report["warnings"]] == ["SERVE_APP"]  # the fixture's .env has SERVE_APP=false


def test_cli_install_and_uninstall(instance: Instance, cairn_instance: CairnSqliteInstance) -> None:
    env = str(cairn_instance.env_path)
    runner = CliRunner()
    first = runner.invoke(cli, ["--env", env, "install-extension", "--sidecar-url", "http://127.0.0.1:8765"])
    # SERVE_APP=false (the fixture's) hides only the admin module: a warning, and the install succeeded.
    assert first.exit_code == 0, first.output
    assert "warning: SERVE_APP is false" in first.output and "restart the instance" in first.output
    removed = runner.invoke(cli, ["--env", env, "install-extension", "--uninstall"])
    assert removed.exit_code == 0, removed.output
    assert "removed the cairn-migrate extension" in removed.output
    assert _files(instance.extensions_path) == set()


def test_bad_sidecar_url_is_a_usage_error(cairn_instance: CairnSqliteInstance) -> None:
    result = CliRunner().invoke(cli, ["--env", str(cairn_instance.env_path), "install-extension", "--sidecar-url", "localhost:1"])
    assert result.exit_code == 2 and "sidecar-url" in result.output
