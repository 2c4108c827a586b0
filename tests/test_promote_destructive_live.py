"""``promote --destructive`` and ``.tar.gz`` bundle sources against real CairnCMS 1.0.0-beta.4 (the API path).

The target is the running fresh CairnCMS on PostgreSQL of ``test_promote_live``; the source the recorded SQLite
fixture with the extras ``test_promote_extras_live`` adds.  What only the target has (a role with a user, a
permission of a kept role, a flow with an operation, a translation string) is kept and listed as "kept (target
only)" without ``--destructive``, shown first and deleted with it (as CairnCMS's own ``config apply
--destructive``: the role's user suspended), and the admin role is never lost.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from test_promote_extras_live import ONLY, TRANSLATIONS, source_with_extras
from test_promote_live import TOKEN, Target, target  # noqa: F401  (target: the module's running CairnCMS)

from cairn_migrate.cli import cli


@pytest.fixture(autouse=True)
def state_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    return tmp_path / "state"


def call(target: Target, method: str, path: str, body: Any = None) -> Any:
    response = requests.request(method, target.url + path, json=body, headers={"Authorization": f"Bearer {TOKEN}"},
                                timeout=30)
    assert response.status_code in (200, 204), response.text
    return response.json()["data"] if response.status_code == 200 else None


def promote(source: Path, target: Target, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["promote", "--from", str(source), "--to", target.url, "--to-token", TOKEN,
                                      *ONLY, *args])
    return result.exit_code, result.output


def promote_json(source: Path, target: Target, *args: str) -> tuple[int, dict[str, Any]]:
    code, output = promote(source, target, "--json", *args)
    assert code in (0, 1), output
    return code, json.loads(output)


def test_what_only_the_target_has_is_kept_unless_destructive(target: Target, tmp_path: Path,  # noqa: F811
                                                              request: pytest.FixtureRequest) -> None:
    source = source_with_extras(tmp_path / "src", request, target)
    assert promote(source, target)[0] == 0
    auditor = call(target, "POST", "/roles", {"name": "Auditor", "key": "auditor", "admin_access": False,
                                              "app_access": True})
    call(target, "POST", "/permissions", {"role": auditor["id"], "collection": "articles", "action": "read",
                                          "fields": ["*"]})
    user = call(target, "POST", "/users", {"email": f"{uuid.uuid4().hex[:8]}@example.com", "role": auditor["id"],
                                           "status": "active"})
    editor = next(r["id"] for r in call(target, "GET", "/roles") if r["key"] == "editor")
    call(target, "POST", "/permissions", {"role": editor, "collection": "directus_files", "action": "delete",
                                          "fields": ["*"]})
    flow = call(target, "POST", "/flows", {"name": "Target only", "trigger": "manual", "status": "active",
                                           "options": {"collections": ["articles"]}})
    operation = call(target, "POST", "/operations", {"name": "Log", "key": "log", "type": "log", "position_x": 19,
                                                     "position_y": 1, "flow": flow["id"], "options": {"message": "x"}})
    call(target, "PATCH", f"/flows/{flow['id']}", {"operation": operation["id"]})
    call(target, "PATCH", "/settings", {"translation_strings": TRANSLATIONS + [
        {"key": "farewell", "translations": {"en-US": "Bye"}}]})

    # Without --destructive: nothing to change, everything listed as kept.
    code, plan = promote_json(source, target, "--dry-run")
    assert (code, plan["changes"]) == (0, False), plan
    assert plan["config"]["kept"] == {"roles": ["auditor"], "permissions": ["editor/directus_files/delete"]}
    assert plan["config"]["plan"]["roles"]["deleted"] == []
    assert plan["extras"]["flows"]["kept"] == ["Target only (manual)"] and plan["extras"]["flows"]["delete"] == []
    assert plan["extras"]["operations"]["kept"] == []  # an operation of a kept flow goes with its flow
    assert plan["extras"]["translations"]["kept"] == ["farewell"]
    code, output = promote(source, target)
    assert code == 0, output
    assert "  kept (target only; --destructive deletes it): role auditor" in output.splitlines()
    assert "  kept (target only; --destructive deletes it): Target only (manual)" in output.splitlines()
    assert {"auditor", "administrator"} <= {r["key"] for r in call(target, "GET", "/roles")}
    assert call(target, "GET", f"/flows/{flow['id']}")["name"] == "Target only"

    # The dry run with --destructive shows the deletes, first, and what CairnCMS itself would delete.
    code, plan = promote_json(source, target, "--dry-run", "--destructive")
    assert (code, plan["changes"]) == (1, True), plan
    assert plan["config"]["plan"]["roles"]["deleted"] == ["auditor"]
    assert plan["config"]["plan"]["permissions"]["deleted"] == 1  # the editor's; the auditor's go with the role
    assert plan["config"]["delete"] == {"roles": ["auditor"], "permissions": ["editor/directus_files/delete"]}
    assert plan["extras"]["flows"]["delete"] == ["Target only (manual)"]
    assert plan["extras"]["translations"]["delete"] == ["farewell"]
    code, output = promote(source, target, "--dry-run", "--destructive")
    lines = output.splitlines()
    config_at = lines.index("config: changes")
    assert lines[config_at + 1].startswith("  - role auditor"), output
    assert "  - Target only (manual)" in lines and "  - farewell" in lines

    code, output = promote(source, target, "--destructive")
    assert code == 0, output
    roles = {r["key"] for r in call(target, "GET", "/roles")}
    assert "auditor" not in roles and "administrator" in roles
    suspended = call(target, "GET", f"/users/{user['id']}")
    assert (suspended["status"], suspended["role"]) == ("suspended", None)
    files_delete = call(target, "GET", f"/permissions?filter[role][_eq]={editor}&filter[collection][_eq]="
                                       "directus_files&filter[action][_eq]=delete")
    assert files_delete == []
    assert "Target only" not in {f["name"] for f in call(target, "GET", "/flows?limit=-1")}
    assert call(target, "GET", f"/operations?filter[flow][_eq]={flow['id']}") == []
    assert call(target, "GET", "/settings")["translation_strings"] == TRANSLATIONS
    code, output = promote(source, target, "--destructive")
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output


def test_a_tar_gz_bundle_is_a_source_with_its_extras(target: Target, tmp_path: Path,  # noqa: F811
                                                     request: pytest.FixtureRequest) -> None:
    source = source_with_extras(tmp_path / "src", request, target)
    archive = tmp_path / "bundle.tar.gz"
    exported = CliRunner().invoke(cli, ["--env", str(source), "export", "--full", "-o", str(archive)])
    assert exported.exit_code == 0, exported.output
    code, plan = promote_json(archive, target, "--dry-run")
    assert plan["from"] == str(archive) and "skipped" not in plan["extras"], plan
    flows = plan["extras"]["flows"]
    assert "Ping (webhook)" in flows["create"] + flows["unchanged"] + [u.split(" (")[0] + " (webhook)" for u in flows["update"]]
    assert plan["config"]["errors"] == []
    code, output = promote(archive, target)
    assert code == 0, output
    assert "Ping" in {f["name"] for f in call(target, "GET", "/flows?limit=-1")}
    code, plan = promote_json(archive, target, "--dry-run")
    assert (code, plan["changes"]) == (0, False), plan
    assert not list(tmp_path.glob("**/cairn-bundle-*"))  # nothing of the unpacked archive stays

    native = tmp_path / "native.tar.gz"
    exported = CliRunner().invoke(cli, ["--env", str(source), "export", "--full", "--native", "-o", str(native)])
    assert exported.exit_code == 0, exported.output
    code, plan = promote_json(native, target, "--dry-run")
    assert code == 0 and "not available from this source" in plan["extras"]["skipped"], plan
    assert "native" in plan["extras"]["skipped"]


def test_an_archive_reaching_outside_itself_is_refused_before_anything(tmp_path: Path,
                                                                      request: pytest.FixtureRequest) -> None:
    """A bundle is untrusted: an exported bundle's manifest followed by a member ``../escaped.txt`` is refused by
    the safe reader (exit 2), and nothing lands outside the scratch folder."""
    import io
    import tarfile

    from conftest import make_instance

    exported = tmp_path / "exported"
    done = CliRunner().invoke(cli, ["--env", str(make_instance("sqlite", tmp_path / "src", request)), "export", "--full",
                                    "-o", str(exported)])
    assert done.exit_code == 0, done.output
    archive = tmp_path / "evil" / "bundle.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(exported / "manifest.json", arcname="manifest.json")
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    result = CliRunner().invoke(cli, ["promote", "--from", str(archive), "--to", "http://127.0.0.1:9", "--to-token",
                                      "t", "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "../escaped.txt" in result.output, result.output
    assert not list(tmp_path.glob("**/escaped.txt"))


def test_the_last_admin_role_is_never_lost(target: Target, tmp_path: Path) -> None:  # noqa: F811
    """A source without the target's admin role: refused (exit 2, CairnCMS's own message), with or without
    --destructive, and the role stays."""
    from test_promote_live import FIXTURE

    from cairn_migrate.bundle.config_snapshot import read_config_directory, write_config_directory

    config = read_config_directory(FIXTURE / "config")
    config["roles"] = [r for r in config["roles"] if not r["admin_access"]]
    config["permissions"] = [s for s in config["permissions"] if s["role"] in {"public", *(r["key"] for r in config["roles"])}]
    write_config_directory(config, tmp_path / "src" / "config")
    for extra in ((), ("--destructive",)):
        result = CliRunner().invoke(cli, ["promote", "--from", str(tmp_path / "src"), "--to", target.url,
                                          "--to-token", TOKEN, "--only", "config", *extra])
        assert result.exit_code == 2, result.output
        assert "refused: the target refuses the config: Cannot delete the last admin role." in result.output
    assert any(r["admin_access"] for r in call(target, "GET", "/roles"))


def test_an_encrypted_bundle_is_refused_with_the_fix(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from conftest import make_instance

    archive = tmp_path / "bundle.tar.gz.enc"
    done = CliRunner().invoke(cli, ["--env", str(make_instance("sqlite", tmp_path / "src", request)), "export", "--full",
                                    "--encrypt", "-o", str(archive)], env={"CAIRN_MIGRATE_PASSPHRASE": "pass phrase 1"})
    assert done.exit_code == 0 and archive.is_file(), done.output
    result = CliRunner().invoke(cli, ["promote", "--from", str(archive), "--to", "http://127.0.0.1:9", "--to-token",
                                      "t", "--dry-run"])
    assert result.exit_code == 2 and "is encrypted: promote reads unencrypted bundles only" in result.output, result.output


def test_an_invalid_role_key_is_refused_in_the_plan_on_both_engines(target: Target, tmp_path: Path) -> None:  # noqa: F811
    """Trial item 9: CairnCMS's dry run accepts a role key its RolesService refuses on create (after the schema
    went in); the plan refuses it (exit 2) on the API path and offline, before any write."""
    from test_promote_live import FIXTURE

    from cairn_migrate.bundle.config_snapshot import read_config_directory, write_config_directory

    config = read_config_directory(FIXTURE / "config")
    config["roles"].append({"key": "Bad Key!", "name": "Bad", "admin_access": False, "app_access": True})
    write_config_directory(config, tmp_path / "src" / "config")
    before = call(target, "GET", "/config/snapshot")
    for to, extra in ((target.url, ("--to-token", TOKEN)), (str(target.env), ("--engine", "db"))):
        result = CliRunner().invoke(cli, ["promote", "--from", str(tmp_path / "src"), "--to", to, *extra,
                                          "--only", "config"])
        assert result.exit_code == 2, result.output
        assert 'refused: the target refuses the config: Invalid role key "Bad Key!"' in result.output, result.output
    assert call(target, "GET", "/config/snapshot") == before


def test_a_permission_on_a_collection_the_target_lacks_is_named(target: Target, tmp_path: Path) -> None:  # noqa: F811
    """Trial item 11: CairnCMS creates it silently; the plan names it as a warning (it grants nothing)."""
    from test_promote_live import FIXTURE

    from cairn_migrate.bundle.config_snapshot import read_config_directory, write_config_directory

    config = read_config_directory(FIXTURE / "config")
    editor = next(s for s in config["permissions"] if s["role"] == "editor")
    editor["permissions"].append({"collection": "ghost", "action": "read", "fields": ["*"], "permissions": {},
                                  "validation": None, "presets": None})
    write_config_directory(config, tmp_path / "src" / "config")
    result = CliRunner().invoke(cli, ["promote", "--from", str(tmp_path / "src"), "--to", target.url, "--to-token",
                                      TOKEN, "--only", "config", "--dry-run"])
    assert result.exit_code == 1, result.output
    assert ("  warning: permission editor/ghost/read is on a collection the target does not have (it grants nothing)"
            in result.output.splitlines()), result.output
    assert "    + permission editor/ghost/read" in result.output.splitlines(), result.output  # trial item 16: named

    changed = read_config_directory(FIXTURE / "config")  # an update names what of the permission changes
    editor = next(s for s in changed["permissions"] if s["role"] == "editor")
    editor["permissions"][0]["fields"] = ["id"]
    first = editor["permissions"][0]
    write_config_directory(changed, tmp_path / "changed" / "config")
    result = CliRunner().invoke(cli, ["promote", "--from", str(tmp_path / "changed"), "--to", target.url,
                                      "--to-token", TOKEN, "--only", "config", "--dry-run"])
    assert f"    ~ permission editor/{first['collection']}/{first['action']} (fields)" in result.output.splitlines(), \
        result.output


def test_deleting_the_role_of_the_callers_own_user_is_refused(target: Target, tmp_path: Path) -> None:  # noqa: F811
    """Trial item 2: a source whose admin role has another key would delete the target's, whose user runs the
    promote: refused (exit 2) naming the user, even with --allow-suspend-admins; nothing is written."""
    from test_promote_live import FIXTURE

    from cairn_migrate.bundle.config_snapshot import read_config_directory, write_config_directory

    config = read_config_directory(FIXTURE / "config")
    admin = next(r for r in config["roles"] if r["admin_access"])
    for permission_set in config["permissions"]:
        if permission_set["role"] == admin["key"]:
            permission_set["role"] = "ops_admin"
    admin["key"] = "ops_admin"
    write_config_directory(config, tmp_path / "src" / "config")
    me = call(target, "GET", "/users/me")
    before = call(target, "GET", "/config/snapshot")
    result = CliRunner().invoke(cli, ["promote", "--from", str(tmp_path / "src"), "--to", target.url, "--to-token",
                                      TOKEN, "--only", "config", "--destructive", "--allow-suspend-admins"])
    assert result.exit_code == 2, result.output
    assert f"suspends {me['email']}, the user of the target's token that runs this promote" in result.output
    assert any(line.startswith(f"    suspends {me['email']} (") and line.endswith(", the user of --to-token)")
               for line in result.output.splitlines()), result.output
    assert call(target, "GET", "/config/snapshot") == before
    assert call(target, "GET", "/users/me")["status"] == "active"
