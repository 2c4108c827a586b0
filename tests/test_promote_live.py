"""``promote`` against real CairnCMS 1.0.0-beta.4: the fixture's structure onto a fresh instance on PostgreSQL.

The source is a snapshot directory in CairnCMS's own format (``schema.yaml`` + ``config/``) made from
the recorded PostgreSQL fixture (``tests/fixtures/postgres/schema-snapshot.yaml`` and ``config/``); the
target is the recorded fresh bootstrap (``fresh.sql``) in a database of its own, served by real
CairnCMS.  One boot for the module: the tests change the target in the order written here, and each
first promotes the structure it starts from, so each also holds alone.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import FIXTURES, make_instance
from instance_fixtures import bearer
from live_instance import Platform, free_port, server_env, start_server, stop_process

from cairn_migrate.bundle.config_snapshot import dump_yaml, load_yaml
from cairn_migrate.bundle.schema_snapshot import write_schema_snapshot
from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance

TOKEN = "promote-target-admin-token-0123456789"
FIXTURE = FIXTURES / "postgres"


@dataclass
class Target:
    url: str
    env: Path

    def get(self, path: str) -> Any:
        response = requests.get(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["data"]


@pytest.fixture(scope="module")
def target(cairncms: Platform, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Target]:
    """A fresh CairnCMS on PostgreSQL (the recorded bootstrap, its own database), running, with an admin token."""
    base = tmp_path_factory.mktemp("promote-target")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = make_instance("postgres", base / "dst", request, sql="fresh.sql",
                        extra_env={"HOST": "127.0.0.1", "PORT": port, "PUBLIC_URL": url, "LOG_STYLE": "raw"})
    with Database.open(Instance.from_env_file(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'"), {"t": TOKEN})
    (env.parent / "package.json").write_text('{"name": "promote-target", "private": true}\n')
    server = start_server(cairncms, env.parent, url, server_env(), base / "cairncms.log")
    try:
        yield Target(url, env)
    finally:
        stop_process(server)


@pytest.fixture(autouse=True)
def state_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI's state store in the test's folder, so the safety snapshots land there."""
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    return tmp_path / "state"


def fixture_source(folder: Path, schema: dict[str, Any] | None = None) -> Path:
    """A snapshot directory: ``schema.yaml`` (the fixture's, or ``schema``) and the fixture's ``config/``."""
    shutil.copytree(FIXTURE / "config", folder / "config")
    write_schema_snapshot(schema or fixture_schema(), folder / "schema.yaml")
    return folder


def fixture_schema() -> dict[str, Any]:
    return load_yaml((FIXTURE / "schema-snapshot.yaml").read_text(encoding="utf-8"))


def promote(source: Path, target: Target, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["promote", "--from", str(source), "--to", target.url, "--to-token", TOKEN, *args])
    return result.exit_code, result.output


def promote_json(source: Path, target: Target, *args: str) -> tuple[int, dict[str, Any]]:
    code, output = promote(source, target, "--json", *args)
    return code, json.loads(output)


def user_fields(target: Target) -> set[tuple[str, str]]:
    """(collection, field) of every field the target serves that is not CairnCMS's own."""
    return {(f["collection"], f["field"]) for f in target.get("/fields") if not (f.get("meta") or {}).get("system")}


def test_promote_the_fixture_structure_into_a_fresh_postgres_instance(target: Target, tmp_path: Path,
                                                                      state_store: Path) -> None:
    source = fixture_source(tmp_path / "src")
    schema = fixture_schema()
    code, plan = promote_json(source, target, "--dry-run")
    assert code == 1 and plan["changes"] and not plan["applied"]
    assert plan["refused"] == []
    assert "+ collection articles" in plan["schema"]["steps"]

    code, output = promote(source, target)
    assert code == 0, output
    assert "applied" in output
    safety = next(line for line in output.splitlines() if line.startswith("safety snapshot of the target: "))
    safety_dir = Path(safety.split(": ", 1)[1])
    assert safety_dir.parent == state_store / "promote-safety"
    assert load_yaml((safety_dir / "schema.yaml").read_text())["collections"] == []  # the fresh target, as it was
    assert (safety_dir / "config" / "roles" / "administrator.yaml").is_file()

    served = {c["collection"] for c in target.get("/collections") if not c["collection"].startswith("directus_")}
    assert served == {c["collection"] for c in schema["collections"]}
    assert user_fields(target) == {(f["collection"], f["field"]) for f in schema["fields"]}
    roles = {r["key"] for r in target.get("/roles")}
    assert roles == {"administrator", "editor", "public"}  # public: the sentinel row of every instance

    code, output = promote(source, target)
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output


def test_a_field_added_and_a_permission_changed_reach_the_target(target: Target, tmp_path: Path) -> None:
    assert promote(fixture_source(tmp_path / "base"), target)[0] == 0
    schema = fixture_schema()
    word_count = next(f for f in schema["fields"] if (f["collection"], f["field"]) == ("articles", "word_count"))
    subtitle = copy.deepcopy(word_count)
    subtitle.update(field="subtitle", type="string")
    subtitle["meta"]["field"] = "subtitle"
    subtitle["schema"].update(name="subtitle", data_type="character varying", max_length=255, numeric_precision=None,
                              numeric_scale=None)
    schema["fields"].append(subtitle)
    source = fixture_source(tmp_path / "src", schema)
    editor = source / "config" / "permissions" / "editor.yaml"
    permissions = load_yaml(editor.read_text())
    read = next(p for p in permissions["permissions"] if (p["collection"], p["action"]) == ("articles", "read"))
    read["fields"] = ["id", "title"]
    editor.write_text(dump_yaml(permissions))

    code, plan = promote_json(source, target, "--dry-run")
    assert code == 1
    assert plan["schema"]["steps"] == ["+ field articles.subtitle"]
    assert plan["config"]["plan"]["permissions"]["updated"] == 1

    code, output = promote(source, target)
    assert code == 0, output
    assert target.get("/fields/articles/subtitle")["type"] == "string"
    editor_role = next(r["id"] for r in target.get("/roles") if r["key"] == "editor")
    granted = target.get(f"/permissions?filter[role][_eq]={editor_role}&filter[collection][_eq]=articles"
                         "&filter[action][_eq]=read")
    assert [sorted(p["fields"]) for p in granted] == [["id", "title"]]
    assert promote(source, target)[0] == 0
    assert promote(source, target)[1].splitlines()[-1] == "no changes"


def test_a_column_drop_with_rows_on_the_target_is_refused(target: Target, tmp_path: Path) -> None:
    assert promote(fixture_source(tmp_path / "base"), target)[0] == 0
    created = requests.post(target.url + "/items/articles", json={"title": "kept", "word_count": 7},
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert created.status_code == 200, created.text
    schema = fixture_schema()
    schema["fields"] = [f for f in schema["fields"] if (f["collection"], f["field"]) != ("articles", "word_count")]
    source = fixture_source(tmp_path / "src", schema)

    code, output = promote(source, target)
    assert code == 2, output
    assert "refused: the schema diff drops articles.word_count (1 row)" in output
    assert "fix: pass --allow-data-loss" in output
    assert ("articles", "word_count") in user_fields(target)

    code, output = promote(source, target, "--allow-data-loss")
    assert code == 0, output
    assert ("articles", "word_count") not in user_fields(target)


def test_another_vendor_is_refused_without_force(target: Target, tmp_path: Path) -> None:
    """The SQLite fixture's snapshot onto PostgreSQL: refused (exit 2) with the plan, the target untouched."""
    before = target.get("/schema/snapshot")
    sqlite_schema = load_yaml((FIXTURES / "sqlite" / "schema-snapshot.yaml").read_text(encoding="utf-8"))
    code, output = promote(fixture_source(tmp_path / "src", sqlite_schema), target, "--only", "schema")
    assert code == 2, output
    assert "refused: the source's vendor sqlite differs from the target's postgres" in output
    assert "fix: pass --force" in output
    assert "schema: no changes" not in output and any(line.startswith(("  + ", "  ~ ", "  - "))
                                                      for line in output.splitlines()), output
    assert target.get("/schema/snapshot") == before


def test_bad_sources_are_one_line_with_the_fix(target: Target, tmp_path: Path) -> None:
    code, output = promote(tmp_path / "nowhere", target)
    assert code == 2
    assert f"The source {tmp_path / 'nowhere'} does not exist" in output and ".tar or .tar.gz" in output, output
    code, output = promote(fixture_source(tmp_path / "snap"), target, "--dry-run")
    assert ("extras: not available from a snapshot folder (flows, dashboards, presets, settings, translations): name "
            "the source by its URL, .env or bundle to promote them") in output.splitlines(), output
    (tmp_path / "empty").mkdir()
    code, output = promote(tmp_path / "empty", target)
    assert code == 2 and "holds no schema file" in output, output
    result = CliRunner().invoke(cli, ["promote", "--from", target.url, "--to", target.url, "--to-token", TOKEN])
    assert result.exit_code == 2
    assert "needs an admin token" in result.output and "fix: pass --from-token" in result.output


def test_the_trials_confusing_messages_name_the_problem(target: Target, tmp_path: Path) -> None:
    """Trial items 13 and 14: an app page as the source, a wrong token, a refused connection, a missing .env, and
    --json errors on stdout as JSON."""
    source = str(tmp_path / "nowhere")

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["promote", *args])

    result = run("--from", target.url + "/admin", "--from-token", TOKEN, "--to", target.url, "--to-token", TOKEN)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "is probably not the instance's API root" in result.stderr and "JSONDecodeError" not in result.stderr
    result = run("--from", target.url, "--from-token", "wrong", "--to", target.url, "--to-token", TOKEN)
    assert result.exit_code == 2 and f"The source {target.url} refused the source's token" in result.stderr, result.stderr
    result = run("--from", source, "--to", "http://127.0.0.1:9", "--to-token", "t")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    result = run("--from", str(FIXTURE), "--to", "http://127.0.0.1:9", "--to-token", "t", "--only", "schema")
    assert result.exit_code == 3 and "cannot be reached (GET /schema/snapshot): Connection refused" in result.stderr
    assert "fix: start it, or check the URL (scheme, host and port)" in result.stderr, result.stderr
    result = run("--from", str(FIXTURE), "--to", str(tmp_path / "none" / ".env"))
    assert result.exit_code == 2 and "does not exist" in result.stderr and "--env" not in result.stderr, result.stderr
    result = run("--from", source, "--to", target.url, "--to-token", TOKEN, "--json")
    assert result.exit_code == 2 and json.loads(result.stdout)["error"]["code"] == "invalid_input", result.stdout


def test_a_running_instance_as_its_own_source_has_no_changes(target: Target, tmp_path: Path) -> None:
    """SRC by URL (``GET /schema/snapshot`` + ``/config/snapshot`` of the source): promoting an instance onto itself."""
    result = CliRunner().invoke(cli, ["promote", "--from", target.url, "--from-token", TOKEN, "--to", target.url,
                                      "--to-token", TOKEN, "--dry-run"])
    assert (result.exit_code, result.output.splitlines()[-1]) == (0, "no changes"), result.output


def test_a_collection_drop_with_rows_is_refused_with_its_count(target: Target, tmp_path: Path) -> None:
    assert promote(fixture_source(tmp_path / "base"), target)[0] == 0
    for text in ("first", "second"):
        created = requests.post(target.url + "/items/article_comments", json={"author_name": "a", "text": text},
                                headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert created.status_code == 200, created.text
    schema = fixture_schema()
    for kind in ("collections", "fields", "relations"):
        schema[kind] = [e for e in schema[kind] if e["collection"] != "article_comments"]
    code, plan = promote_json(fixture_source(tmp_path / "src", schema), target)
    assert code == 2
    assert plan["schema"]["data_loss"] == [{"kind": "collection", "name": "article_comments", "rows": 2}]
    assert not plan["applied"] and "safety_snapshot" not in plan
    assert "article_comments" in {c["collection"] for c in target.get("/collections")}


def test_the_sidecar_plans_a_promote_and_confines_host_paths(target: Target, client: Any, admin_token: str) -> None:
    """``POST /migrate/ops``: URLs pass the host-path rule; a path outside CAIRN_MIGRATE_HTTP_PATHS answers 422.
    The sidecar's own instance is neither side (another instance, named by URL, even with its admin token on both
    sides): 403, an instance's admin is trusted for that instance only (test_confine_http.py)."""
    params = {"from": target.url, "from_token": TOKEN, "to": target.url, "to_token": TOKEN, "dry_run": True}
    planned = client.post("/migrate/ops", json={"op": "promote", "params": params}, headers=bearer(admin_token))
    assert planned.status_code == 403, planned.get_json()
    assert "must be this sidecar's own instance" in planned.get_json()["error"]["message"]
    confined = client.post("/migrate/ops", json={"op": "promote", "params": {**params, "from": str(FIXTURE)}},
                           headers=bearer(admin_token))
    assert confined.status_code == 422, confined.get_json()
    assert str(FIXTURE) in confined.get_json()["error"]["message"]


def test_an_instance_env_and_its_bundle_are_sources_too(target: Target, tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    """The seeded PostgreSQL fixture by its ``.env`` (snapshots read from its database) and as an unpacked
    bundle (``snapshot/``) hold the fixture's structure: once it is promoted, both plan no changes;
    the target is named by its ``.env`` (reached at its PUBLIC_URL)."""
    assert promote(fixture_source(tmp_path / "base"), target)[0] == 0
    source_env = make_instance("postgres", tmp_path / "seeded", request)
    bundle = tmp_path / "bundle"
    exported = CliRunner().invoke(cli, ["--env", str(source_env), "export", "--full", "-o", str(bundle)])
    assert exported.exit_code == 0, exported.output
    for source in (source_env, bundle):
        result = CliRunner().invoke(cli, ["promote", "--from", str(source), "--to", str(target.env), "--to-token", TOKEN,
                                          "--only", "schema", "--only", "config", "--dry-run"])  # the extras: its own test
        assert (result.exit_code, result.output.splitlines()[-1]) == (0, "no changes"), result.output


def test_a_type_change_is_data_loss_and_not_applied_by_cairncms_is_said(target: Target, tmp_path: Path) -> None:
    """Trial items 7 and 10: another type of a populated column is refused as data loss (the rows counted); allowed,
    the apply is checked by diffing again, and exit 0 means nothing planned is left."""
    assert promote(fixture_source(tmp_path / "base"), target)[0] == 0
    created = requests.post(target.url + "/items/articles", json={"title": "typed", "word_count": 12},
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert created.status_code == 200, created.text
    schema = fixture_schema()
    field = next(f for f in schema["fields"] if (f["collection"], f["field"]) == ("articles", "word_count"))
    field["type"] = "string"
    field["schema"].update(data_type="character varying", max_length=255, numeric_precision=None,
                           numeric_scale=None)
    source = fixture_source(tmp_path / "src", schema)
    code, output = promote(source, target, "--only", "schema")
    assert code == 2, output
    assert "changes articles.word_count (type integer -> string): " in output and "would not fit" in output, output

    # Allowed: on PostgreSQL CairnCMS 1.0.0-beta.4 does change this column; the apply is re-diffed, so "applied"
    # and exit 0 are said only because nothing of the plan is left (a change it skipped would be "not applied", 4).
    code, output = promote(source, target, "--only", "schema", "--allow-data-loss", "--json")
    report = json.loads(output)
    assert (code, report["schema"]["not_applied"], report["applied"]) == (0, [], True), output
    served = next(f for f in target.get("/fields/articles") if f["field"] == "word_count")
    assert served["schema"]["data_type"] == "character varying"
    code, output = promote(source, target, "--only", "schema", "--allow-data-loss")
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output
    promote(fixture_source(tmp_path / "back"), target, "--only", "schema", "--allow-data-loss")


def test_over_http_a_wrong_source_token_and_a_refusal_say_what_they_are(target: Target, tmp_path: Path) -> None:
    """Trial item 15: through POST /migrate/ops a wrong *source* token is 424 naming the source (never 401, the
    caller's own login), and a refused job's error does not promise a resume.

    The sidecar is the target's own (its ``.env``): over HTTP one side must be the sidecar's instance
    (confinement), and a wrong token for a side that is the sidecar's own still reaches the source's API."""
    from instance_fixtures import bearer

    from cairn_migrate.operations import Outcome, OutcomeError
    from cairn_migrate.service.app import create_app, get_state

    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(target.env),
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'sidecar-state.db'}",
                      "CAIRN_MIGRATE_SCHEDULER": False})
    try:
        response = app.test_client().post("/migrate/ops", headers=bearer(TOKEN), json={
            "op": "promote", "params": {"from": target.url, "from_token": "wrong", "to": target.url,
                                        "to_token": TOKEN, "dry_run": True}})
        assert response.status_code == 424, response.get_json()
        error = response.get_json()["error"]
        assert error["code"] == "remote_refused" and "refused the source's token" in error["message"], error
        assert "from_token" in error["hint"], error
    finally:
        get_state(app).close()
    refused = OutcomeError("promote", Outcome.INVALID, {"refused": [{"code": "data_loss"}]})
    assert "resumes" not in str(refused) and "refused before any write" in refused.message
