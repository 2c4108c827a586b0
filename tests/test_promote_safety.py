"""A destructive ``promote`` into a real PostgreSQL CairnCMS database (the offline engine) and its way back.

Trial items 2 and 3: deleting a role that holds a user with admin access is refused (exit 2) and its users are
listed, unless ``--allow-suspend-admins``; the safety snapshot is then a complete source of the target as it
was: ``promote --from <safety> --destructive`` brings back the deleted role, flow and translation string, and
``--restore-users`` the suspended user's role and status.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import make_instance, query
from live_instance import free_port
from test_promote_extras_live import ONLY, TRANSLATIONS, source_with_extras

from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.operations.promote_extras import DbWriter, rows_of_database


class Url:
    def __init__(self, url: str) -> None:
        self.url = url


@pytest.fixture(autouse=True)
def state_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    return tmp_path / "state"


def promote(source: Path, target: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["promote", "--from", str(source), "--to", str(target), *args])
    return result.exit_code, result.output



def test_a_destructive_promote_is_refused_for_admins_and_undone_from_its_safety_snapshot(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    source = source_with_extras(tmp_path / "src", request, Url(url))  # type: ignore[arg-type]
    target = make_instance("postgres", tmp_path / "dst", request, sql="fresh.sql", extra_env={"PUBLIC_URL": url})
    code, output = promote(source, target, *ONLY)
    assert code == 0, output

    role, email = str(uuid.uuid4()), f"ops-{uuid.uuid4().hex[:6]}@example.com"
    query(target, "INSERT INTO directus_roles (id, name, key, icon, admin_access, app_access, enforce_tfa) "
          "VALUES (:id, 'Ops admin', 'ops_admin', 'x', true, true, false)", id=role)
    query(target, "INSERT INTO directus_users (id, email, role, status) VALUES (:id, :email, :role, 'active')",
          id=str(uuid.uuid4()), email=email, role=role)
    with Database.open(Instance.from_env_file(target)) as db:
        writer = DbWriter(db)
        writer.create("flows", {"name": "Target only", "trigger": "manual", "status": "active", "options": {}})
        writer.patch_settings({"translation_strings": TRANSLATIONS + [{"key": "farewell",
                                                                       "translations": {"en-US": "Bye"}}]})

    code, output = promote(source, target, *ONLY, "--destructive")
    assert code == 2, output
    assert f"refused: deleting roles suspends users with admin access: {email}" in output, output
    assert f"    suspends {email} (ops_admin, admin)" in output.splitlines(), output
    assert query(target, "SELECT status FROM directus_users WHERE email = :e", e=email) == [("active",)]

    code, output = promote(source, target, *ONLY, "--destructive", "--allow-suspend-admins", "--json")
    assert code == 0, output
    report = json.loads(output)
    safety = Path(report["safety_snapshot"])
    assert report["steps_done"] == ["config", "settings", "deletes"] and report["steps_total"] == len(report["steps_done"])
    assert query(target, "SELECT status, role FROM directus_users WHERE email = :e", e=email) == [("suspended", None)]
    with Database.open(Instance.from_env_file(target)) as db:
        rows = rows_of_database(db)
    assert "Target only" not in {f["name"] for f in rows["flows"]}
    assert rows["settings"]["translation_strings"] == TRANSLATIONS
    assert json.loads((safety / "users.json").read_text()) == [{"email": email, "role": "ops_admin",
                                                                "status": "active"}]
    assert "--restore-users" in (safety / "RESTORE.txt").read_text()

    # Back from the safety snapshot: the role, the flow and the translation string, then the user.
    code, output = promote(safety, target, *ONLY, "--destructive")
    assert code == 0, output
    with Database.open(Instance.from_env_file(target)) as db:
        rows = rows_of_database(db)
    assert "Target only" in {f["name"] for f in rows["flows"]}
    assert "farewell" in {t["key"] for t in rows["settings"]["translation_strings"]}
    assert query(target, "SELECT count(*) FROM directus_roles WHERE key = 'ops_admin'") == [(1,)]
    code, output = promote(safety, target, *ONLY, "--restore-users")
    assert code == 0, output
    assert f"user {email}: role ops_admin, active (was None/suspended)" in output, output
    assert query(target, "SELECT u.status, r.key FROM directus_users u JOIN directus_roles r ON u.role = r.id "
                 "WHERE u.email = :e", e=email) == [("active", "ops_admin")]
    code, output = promote(safety, target, *ONLY, "--restore-users")
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output


class CancelAt:
    """A job's progress whose cancel is requested at the ``n``-th check (the job runner's ``check_cancelled``)."""

    def __init__(self, n: int) -> None:
        self.n, self.checks, self.reported = n, 0, []

    def progress(self, items_done: Any = None, items_total: Any = None, **_: Any) -> None:
        self.reported.append((items_done, items_total))

    def advance(self, items: int = 0, bytes: int = 0) -> None:
        return None

    def log(self, message: str) -> None:
        return None

    def check_cancelled(self) -> None:
        from cairn_migrate.service.jobs import JobCancelled

        self.checks += 1
        if self.checks >= self.n:
            raise JobCancelled("Job j was cancelled")


def test_a_cancel_stops_promote_between_its_write_phases(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Trial item 4: a cancel before the first write writes nothing (not even the safety snapshot); one later
    stops before the next phase, and the report (the job's result) says what was applied."""
    from cairn_migrate import operations
    from cairn_migrate.operations import OpContext
    from cairn_migrate.service.jobs import JobCancelled

    url = f"http://127.0.0.1:{free_port()}"
    source = source_with_extras(tmp_path / "src", request, Url(url))  # type: ignore[arg-type]
    target = make_instance("postgres", tmp_path / "dst", request, sql="fresh.sql", extra_env={"PUBLIC_URL": url})
    state = f"sqlite:///{tmp_path / 'state' / 'state.db'}"
    params = {"from": str(source), "to": str(target), "only": [o for o in ONLY if o != "--only"]}

    def roles() -> list[Any]:
        return query(target, "SELECT key FROM directus_roles ORDER BY key")

    before = roles()
    with pytest.raises(JobCancelled):
        operations.run("promote", OpContext(instance=lambda: None, state_url=state, progress=CancelAt(1)), params)
    assert roles() == before and not (tmp_path / "state" / "promote-safety").exists()

    progress = CancelAt(3)  # 1: before the safety snapshot, 2: before config, 3: before the first extras phase
    with pytest.raises(JobCancelled) as stopped:
        operations.run("promote", OpContext(instance=lambda: None, state_url=state, progress=progress), params)
    report = stopped.value.report  # type: ignore[attr-defined]
    assert report["steps_done"] == ["config"] and report["cancelled"]["before"] == "flows", report
    assert report["applied"] and Path(report["safety_snapshot"]).is_dir()
    assert ("editor",) in roles() and ("editor",) not in before
    with Database.open(Instance.from_env_file(target)) as db:
        assert "Ping" not in {f["name"] for f in rows_of_database(db)["flows"]}
    assert (1, report["steps_total"]) in progress.reported


def test_a_renamed_flow_is_one_change_of_its_name(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Trial item 19: after a promote, renaming the source's flow is an update of its name only; its first
    operation and the links between its operations did not move (they compare as remapped ids)."""
    url = f"http://127.0.0.1:{free_port()}"
    source = source_with_extras(tmp_path / "src", request, Url(url))  # type: ignore[arg-type]
    target = make_instance("postgres", tmp_path / "dst", request, sql="fresh.sql", extra_env={"PUBLIC_URL": url})
    assert promote(source, target, *ONLY)[0] == 0
    query(source, "UPDATE directus_flows SET name = 'Pong' WHERE name = 'Ping'")
    code, output = promote(source, target, *ONLY, "--dry-run", "--json")
    plan = json.loads(output)
    assert code == 1 and plan["extras"]["flows"]["update"] == ["Pong (webhook) (name)"], plan["extras"]["flows"]
    assert plan["extras"]["operations"]["update"] == [], plan["extras"]["operations"]
    assert promote(source, target, *ONLY)[0] == 0
    assert promote(source, target, *ONLY, "--dry-run")[1].splitlines()[-1] == "no changes"


def test_one_instance_is_one_identity_in_the_id_map_however_it_is_named(tmp_path: Path,
                                                                         request: pytest.FixtureRequest) -> None:
    """Trial item 5: the source promoted by its .env, then by its export bundle (and the URL forms of one
    origin) is one identity: a renamed flow is updated, not created twice; older map rows are migrated."""
    from cairn_migrate.operations.promote_extras import IdMap, canonical_origin, url_scope

    assert canonical_origin("http://localhost:8055/") == canonical_origin("http://127.0.0.1:8055") \
        == "http://loopback:8055"
    assert url_scope("https://127.0.0.1/cms/") == url_scope("https://localhost:443/cms")
    assert url_scope("http://127.0.0.1:8055") != url_scope("http://127.0.0.1:8056")

    url = f"http://127.0.0.1:{free_port()}"
    source = source_with_extras(tmp_path / "src", request, Url(url))  # type: ignore[arg-type]
    lines = [line for line in source.read_text().splitlines() if not line.startswith("PUBLIC_URL=")]
    source.write_text("\n".join([*lines, "PUBLIC_URL=http://localhost:18055/"]) + "\n")
    target = make_instance("postgres", tmp_path / "dst", request, sql="fresh.sql", extra_env={"PUBLIC_URL": url})
    assert promote(source, target, *ONLY)[0] == 0
    query(source, "UPDATE directus_flows SET name = 'Pong' WHERE name = 'Ping'")
    bundle = tmp_path / "bundle"
    exported = CliRunner().invoke(cli, ["--env", str(source), "export", "--full", "-o", str(bundle)])
    assert exported.exit_code == 0, exported.output
    code, output = promote(bundle, target, *ONLY, "--dry-run", "--json")
    plan = json.loads(output)
    assert plan["extras"]["flows"]["create"] == [], plan["extras"]["flows"]
    assert plan["extras"]["flows"]["update"] == ["Pong (webhook) (name)"], plan["extras"]["flows"]

    state = f"sqlite:///{tmp_path / 'state' / 'state.db'}"
    IdMap(state, ("old-src", "old-dst")).put("flows", "a", "b")
    moved = IdMap(state, ("new-src", "new-dst"), [("old-src", "old-dst")])
    assert moved.get("flows", "a") == "b" and IdMap(state, ("old-src", "old-dst")).get("flows", "a") is None


def test_the_plan_names_bookmarks_left_out_webhook_urls_and_per_instance_settings(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Trial's cosmetic items: bookmarks are counted as left out, a webhook flow's trigger URL on the target is
    said to differ, project_url/project_name are named, and --exclude-setting keeps the target's."""
    url = f"http://127.0.0.1:{free_port()}"
    source = source_with_extras(tmp_path / "src", request, Url(url))  # type: ignore[arg-type]
    query(source, "UPDATE directus_settings SET project_url = 'https://dev.example.com'")
    target = make_instance("postgres", tmp_path / "dst", request, sql="fresh.sql", extra_env={"PUBLIC_URL": url})
    code, output = promote(source, target, *ONLY, "--dry-run")
    lines = output.splitlines()
    assert code == 1, output
    assert "  bookmarks and users' own presets are never promoted: 2 left out" in lines, output
    assert any(line.startswith("  note: Ping (webhook): triggered at the target's own URL, /flows/trigger/<its new id>")
               for line in lines), output
    assert "  project_url usually differs per instance: --exclude-setting project_url keeps the target's" in lines
    code, output = promote(source, target, *ONLY, "--exclude-setting", "project_url", "--json")
    assert code == 0, output
    assert json.loads(output)["extras"]["settings"]["excluded"] == ["project_url"]
    assert query(target, "SELECT project_url FROM directus_settings") != [("https://dev.example.com",)]
    code, output = promote(source, target, *ONLY, "--exclude-setting", "nope")
    assert code == 2 and "exclude_settings names settings promote does not copy: nope" in output, output


class InterruptAt(CancelAt):
    """Ctrl-C (SIGINT's KeyboardInterrupt) arriving at the ``n``-th check."""

    def check_cancelled(self) -> None:
        self.checks += 1
        if self.checks >= self.n:
            raise KeyboardInterrupt


def test_an_interrupt_mid_apply_is_a_partial_report(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Trial item 12: Ctrl-C after the config went in: no traceback but a partial report (exit 4) naming what was
    applied, the step it stopped at and the safety snapshot."""
    from cairn_migrate import operations
    from cairn_migrate.operations import OpContext, Outcome

    url = f"http://127.0.0.1:{free_port()}"
    source = source_with_extras(tmp_path / "src", request, Url(url))  # type: ignore[arg-type]
    target = make_instance("postgres", tmp_path / "dst", request, sql="fresh.sql", extra_env={"PUBLIC_URL": url})
    state = f"sqlite:///{tmp_path / 'state' / 'state.db'}"
    params = {"from": str(source), "to": str(target), "only": [o for o in ONLY if o != "--only"]}
    report, outcome = operations.run("promote", OpContext(instance=lambda: None, state_url=state,
                                                          progress=InterruptAt(3)), params)
    assert outcome is Outcome.PARTIAL and outcome.exit_code == 4
    assert report["steps_done"] == ["config"] and report["interrupted"], report
    assert report["failed"]["step"] == "flows" and report["safety_snapshot"] in report["failed"]["hint"]

    from cairn_migrate.cli.promote import render_promote

    text = render_promote(report)
    assert "partial: applied config; interrupted: interrupted at the flows step (it may be applied in part)" in text
