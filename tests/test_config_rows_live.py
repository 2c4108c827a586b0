"""``config_rows`` (roles and permissions written as rows) against real CairnCMS 1.0.0-beta.4.

Two equivalences, both on PostgreSQL targets built from the recorded dumps:

- after ``config_rows.apply`` on a fresh target's database, the real ``cairncms config apply --dry-run`` of the
  same config directory says no changes (a new role and its permissions; then a changed permission; then a
  destructive apply of a config without that role, checked with ``--destructive``);
- ``config_rows.plan`` on a running target equals what that target's ``POST /config/apply?dry_run=true``
  answers for the same payload (a new role, a changed permission, destructive deletes, a refused payload).
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from conftest import FIXTURES, make_instance
from live_instance import server_env
from test_promote_live import TOKEN, Target, target  # noqa: F401  (target: a running CairnCMS on PostgreSQL)

from cairn_migrate.bundle.config_snapshot import config_snapshot, read_config_directory, write_config_directory
from cairn_migrate.errors import InvalidInput
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.operations import config_rows

FIXTURE = FIXTURES / "postgres"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def cairncms_config_dry_run(folder: Path, config_dir: Path, *extra: str) -> dict[str, Any]:
    """The real ``cairncms config apply DIR --dry-run --format json`` in the instance folder ``folder``."""
    done = subprocess.run([str(SCRIPTS / "cairncms"), "cli", str(folder), "config", "apply", str(config_dir),
                           "--dry-run", "--format", "json", *extra], capture_output=True, text=True, timeout=180,
                          env={**server_env(), "LOG_LEVEL": "error"})
    # CairnCMS's logger may share stdout with JSON lines of its own: the answer is the object with "changes".
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    answer = next((a for a in answers if "changes" in a), None)
    assert answer is not None, done.stdout + done.stderr
    return answer


def fixture_config() -> dict[str, Any]:
    return read_config_directory(FIXTURE / "config")


def with_reviewer(config: dict[str, Any]) -> dict[str, Any]:
    """The fixture's config plus a ``reviewer`` role (with an IP allow-list) reading articles."""
    config = copy.deepcopy(config)
    config["roles"].append({"key": "reviewer", "name": "Reviewer", "admin_access": False, "app_access": True,
                            "icon": "rate_review", "ip_access": ["10.0.0.0/8", "127.0.0.1"]})
    config["permissions"].append({"role": "reviewer", "permissions": [
        {"collection": "articles", "action": "read", "permissions": {"status": {"_eq": "published"}},
         "validation": None, "presets": None, "fields": ["id", "title"]}]})
    config["roles"].sort(key=lambda r: r["key"])
    config["permissions"].sort(key=lambda s: s["role"])
    return config


def changed_permission(config: dict[str, Any], description: str | None = "Edits and reviews") -> dict[str, Any]:
    """The editor may read only published articles (a filter where the fixture has none, or another one), and
    the editor role has another icon and description.  (An explicit null description stays an update forever
    in CairnCMS's own plan: its snapshot omits null fields, and lodash's isEqual(undefined, null) is false.)"""
    config = copy.deepcopy(config)
    role = next(r for r in config["roles"] if r["key"] == "editor")
    role["icon"], role["description"] = "star", description
    editor = next(s for s in config["permissions"] if s["role"] == "editor")
    perm = next(p for p in editor["permissions"] if p["action"] == "read")
    perm["permissions"] = {"status": {"_eq": "published"}, "_marker": str(uuid.uuid4())[:8]}
    return config


def without_role(config: dict[str, Any], key: str) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["roles"] = [r for r in config["roles"] if r["key"] != key]
    config["permissions"] = [s for s in config["permissions"] if s["role"] != key]
    return config


def test_rows_written_offline_are_what_cairncms_config_apply_would_write(tmp_path: Path,
                                                                        request: pytest.FixtureRequest) -> None:
    env = make_instance("postgres", tmp_path / "dst", request, sql="fresh.sql")
    (env.parent / "package.json").write_text('{"name": "config-rows-target", "private": true}\n')
    config = with_reviewer(fixture_config())
    source = tmp_path / "config"
    write_config_directory(config, source)
    with Database.open(Instance.from_env_file(env)) as db:
        assert config_rows.plan(db, config) == config_rows.apply(db, config)
        result = config_rows.apply(db, config)  # a second apply: nothing left to do
        assert result == {"roles": {"created": [], "updated": [], "deleted": []},
                          "permissions": {"created": 0, "updated": 0, "deleted": 0}}
        # A user in the reviewer role and a role preset: a destructive delete suspends the one and drops the other.
        with db.engine.begin() as conn:
            reviewer = conn.execute(sa.text("SELECT id FROM directus_roles WHERE key = 'reviewer'")).scalar_one()
            conn.execute(sa.text("INSERT INTO directus_users (id, email, status, role) VALUES (:id, 'r@example.com', "
                                 "'active', :role)"), {"id": str(uuid.uuid4()), "role": reviewer})
            conn.execute(sa.text("INSERT INTO directus_presets (role, collection, layout) VALUES (:r, 'articles', "
                                 "'tabular')"), {"r": reviewer})
    assert cairncms_config_dry_run(env.parent, source) == {"changes": False, "plan": None}

    changed = changed_permission(config)
    write_config_directory(changed, source)
    with Database.open(Instance.from_env_file(env)) as db:
        result = config_rows.apply(db, changed)
        assert (result["roles"]["updated"], result["permissions"]) == (["editor"], {"created": 0, "updated": 1,
                                                                                     "deleted": 0})
    assert cairncms_config_dry_run(env.parent, source) == {"changes": False, "plan": None}

    trimmed = without_role(changed, "reviewer")
    write_config_directory(trimmed, source)
    with Database.open(Instance.from_env_file(env)) as db:
        # Without destructive the role stays (CairnCMS's own rule), and the CLI's destructive plan still names it.
        assert config_rows.apply(db, trimmed)["roles"]["deleted"] == []
        assert "reviewer" in {r["key"] for r in config_snapshot(db)["roles"]}
    assert cairncms_config_dry_run(env.parent, source, "--destructive")["plan"]["roles"]["deleted"] == ["reviewer"]
    with Database.open(Instance.from_env_file(env)) as db:
        assert config_rows.apply(db, trimmed, destructive=True)["roles"]["deleted"] == ["reviewer"]
        with db.engine.connect() as conn:
            user = conn.execute(sa.text("SELECT status, role FROM directus_users WHERE email = 'r@example.com'")).one()
            presets = conn.execute(sa.text("SELECT count(*) FROM directus_presets WHERE role = :r"),
                                   {"r": reviewer}).scalar_one()
            perms = conn.execute(sa.text("SELECT count(*) FROM directus_permissions WHERE role = :r"),
                                 {"r": reviewer}).scalar_one()
        assert (user.status, user.role, presets, perms) == ("suspended", None, 0, 0)
    assert cairncms_config_dry_run(env.parent, source, "--destructive") == {"changes": False, "plan": None}


def without_permission(config: dict[str, Any], role: str, action: str) -> dict[str, Any]:
    config = copy.deepcopy(config)
    permission_set = next(s for s in config["permissions"] if s["role"] == role)
    permission_set["permissions"] = [p for p in permission_set["permissions"] if p["action"] != action]
    return config


def test_the_plan_is_what_the_running_target_answers(target: Target) -> None:  # noqa: F811
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def answer(payload: dict[str, Any], destructive: bool, dry_run: bool = True) -> Any:
        query = "?" + "&".join(q for q, on in (("dry_run=true", dry_run), ("destructive=true", destructive)) if on)
        response = requests.post(target.url + "/config/apply" + query, json=payload, headers=headers, timeout=60)
        return response.status_code, response.json()

    # The target first holds the fixture's roles plus reviewer (applied by CairnCMS itself).
    base = with_reviewer(fixture_config())
    assert answer(base, destructive=False, dry_run=False)[0] == 200
    current = requests.get(target.url + "/config/snapshot", headers=headers, timeout=30).json()["data"]
    auditor = copy.deepcopy(base)
    auditor["roles"].append({"key": "auditor", "name": "Auditor", "admin_access": False, "app_access": False})
    payloads = {"a new role": auditor, "a changed permission and role": changed_permission(base),
                "a null description": changed_permission(base, None),
                "a role less": without_role(base, "reviewer"),
                "a permission less": without_permission(base, "editor", "update"),
                "the target's own": current}
    with Database.open(Instance.from_env_file(target.env)) as db:
        for name, payload in payloads.items():
            for destructive in (False, True):
                status, body = answer(payload, destructive)
                assert status == 200, (name, body)
                assert config_rows.plan(db, payload, destructive) == body["data"], (name, destructive)
        assert answer(without_role(base, "reviewer"), True)[1]["data"]["roles"]["deleted"] == ["reviewer"]
        assert answer(without_permission(base, "editor", "update"), True)[1]["data"]["permissions"]["deleted"] == 1
        refused = {**current, "roles": []}  # every role planned as a delete: the last admin role would go
        status, body = answer(refused, False)
        assert status == 400
        with pytest.raises(InvalidInput) as caught:
            config_rows.plan(db, refused)
        assert caught.value.details["errors"] == body["errors"] == ["Cannot delete the last admin role."]
