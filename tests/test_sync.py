"""Sync profiles (issue 13): CRUD over the CLI and HTTP, refusals, runs, the run lock, the alert webhook.

Everything here runs without the ``content`` operation (being built on its own branch):
runs that find changes reach the content step, which fails until it is merged
(``tests/test_sync_content_live.py`` holds the tests that need it).  The instances
are copies of the recorded CairnCMS SQLite instance; the scheduled runs of real
``cairn-migrate serve`` processes are in ``tests/test_sync_schedule.py``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from instance_fixtures import CairnSqliteInstance, bearer, restore_sqlite_instance
from sqlalchemy.engine import make_url

from cairn_migrate import operations
from cairn_migrate.cli import cli
from cairn_migrate.instance.instance import Instance
from cairn_migrate.operations import OpContext
from cairn_migrate.operations import sync as sync_module
from cairn_migrate.operations.sync_profiles import SyncStore, dispose, due_slot, validate_profile
from cairn_migrate.service.app import create_app, get_state
from cairn_migrate.service.jobs import JobCancelled, JobContext, JobStore
from cairn_migrate.service.openapi import build_spec
from cairn_migrate.service.state import instance_scope
from cairn_migrate.testing import create_postgres_database, drop_postgres_database

TOKEN = "sync-admin-static-token-0123456789"


def _identity(instance: CairnSqliteInstance, name: str) -> None:
    text = re.sub(r"^KEY=.*$", f"KEY=key-of-{name}", instance.env_path.read_text(), flags=re.MULTILINE)
    instance.env_path.write_text(text)
    instance.env_text = text


@pytest.fixture
def pair(tmp_path: Path) -> tuple[CairnSqliteInstance, CairnSqliteInstance]:
    """Source and target: two copies of the recorded instance, each its own identity."""
    source, target = restore_sqlite_instance(tmp_path / "source"), restore_sqlite_instance(tmp_path / "target")
    _identity(source, "source")
    _identity(target, "target")
    source.set_token("admin@example.com", TOKEN)
    return source, target


@pytest.fixture
def sidecar(pair: tuple[CairnSqliteInstance, CairnSqliteInstance], tmp_path: Path) -> Any:
    source, target = pair
    # the profiles' targets (the pair's, and a broken one's) are peers the sidecar's operator trusts
    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(source.env_path),
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state' / 'state.db'}",
                      "CAIRN_MIGRATE_HTTP_PATHS": str(tmp_path),
                      "CAIRN_MIGRATE_PEERS": f"{target.env_path}:{tmp_path / 'gone' / '.env'}"})
    yield app
    get_state(app).close()


def _profile(pair: tuple[CairnSqliteInstance, CairnSqliteInstance], **changes: Any) -> dict[str, Any]:
    source, target = pair
    return {"name": "articles-nightly", "source": str(source.env_path), "target": str(target.env_path),
            "collections": ["articles"], "schedule": {"cron": "0 3 * * *", "timezone": "Europe/Berlin"}, **changes}


def _activity(instance: CairnSqliteInstance, *rows: tuple[str, str, str]) -> None:
    """Activity rows as CairnCMS writes them for item writes through its API (reference §1.3)."""
    conn = sqlite3.connect(instance.db_path)
    try:
        conn.executemany("INSERT INTO directus_activity (action, user, timestamp, ip, user_agent, collection, item) "
                         "VALUES (?, NULL, 1795630200000, '127.0.0.1', 'test', ?, ?)", rows)
        conn.commit()
    finally:
        conn.close()


def _broken(target: CairnSqliteInstance, folder: Path) -> Path:
    """A target whose database is gone: its content step fails whether or not the content operation exists."""
    env = folder / ".env"
    folder.mkdir()
    env.write_text(re.sub(r"^DB_FILENAME=.*$", f"DB_FILENAME={folder / 'gone.db'}", target.env_path.read_text(),
                          flags=re.MULTILINE))
    return env


def _max_activity(instance: CairnSqliteInstance) -> int:
    conn = sqlite3.connect(instance.db_path)
    try:
        return int(conn.execute("SELECT MAX(id) FROM directus_activity").fetchone()[0])
    finally:
        conn.close()


# --------------------------------------------------------------------------- HTTP
def test_crud_over_http(sidecar: Any, pair: tuple[CairnSqliteInstance, CairnSqliteInstance]) -> None:
    client, headers = sidecar.test_client(), bearer(TOKEN)
    assert client.get("/migrate/syncs").status_code == 401
    added = client.post("/migrate/syncs", json=_profile(pair, filters={"articles": {"status": {"_eq": "published"}}}),
                        headers=headers)
    assert added.status_code == 201, added.get_json()
    body = added.get_json()
    assert body["enabled"] and body["mode"] == "merge" and body["conflict"] == "source-wins"
    assert body["missed"] == "run-once" and body["initial"] == "full" and body["last_run"] is None
    assert body["filters"] == {"articles": {"status": {"_eq": "published"}}}
    assert body["next_run"] is None  # this sidecar runs no scheduler

    again = client.post("/migrate/syncs", json=_profile(pair), headers=headers)
    assert again.status_code == 409 and "already a sync profile" in again.get_json()["error"]["message"]

    listed = client.get("/migrate/syncs", headers=headers).get_json()
    assert listed["count"] == 1 and listed["syncs"][0]["name"] == "articles-nightly"
    assert client.get("/migrate/syncs/articles-nightly", headers=headers).get_json()["id"] == body["id"]

    paused = client.patch("/migrate/syncs/articles-nightly", json={"enabled": False}, headers=headers)
    assert paused.status_code == 200 and paused.get_json()["enabled"] is False
    refused = client.post("/migrate/syncs/articles-nightly/run", json={}, headers=headers)
    assert refused.status_code == 422 and "paused" in refused.get_json()["error"]["message"]
    assert get_state(sidecar).store.list(kind="sync_run") == []  # a paused profile does nothing
    changed = client.patch("/migrate/syncs/articles-nightly", headers=headers, json={
        "enabled": True, "mode": "mirror", "max_delete": 5, "schedule": {"interval_seconds": 600}})
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["mode"] == "mirror" and changed.get_json()["schedule"]["interval_seconds"] == 600
    bad_change = client.patch("/migrate/syncs/articles-nightly", json={"max_delete": None}, headers=headers)
    assert bad_change.status_code == 422 and "max_delete" in bad_change.get_json()["error"]["message"]
    renamed = client.patch("/migrate/syncs/articles-nightly", json={"name": "other"}, headers=headers)
    assert renamed.status_code == 422 and "renamed" in renamed.get_json()["error"]["message"]

    history = client.get("/migrate/syncs/articles-nightly/history", headers=headers).get_json()
    assert history == {"name": "articles-nightly", "runs": [], "count": 0}
    removed = client.delete("/migrate/syncs/articles-nightly", headers=headers)
    assert removed.status_code == 200 and removed.get_json()["removed"]["name"] == "articles-nightly"
    for method, url in (("GET", "/migrate/syncs/articles-nightly"), ("DELETE", "/migrate/syncs/articles-nightly"),
                        ("POST", "/migrate/syncs/articles-nightly/run"),
                        ("GET", "/migrate/syncs/articles-nightly/history")):
        missing = client.open(url, method=method, json={}, headers=headers)
        assert missing.status_code == 404, (method, url)
        assert "no sync profile 'articles-nightly'" in missing.get_json()["error"]["message"]


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"source": "https://cms.example.com"}, "source", "is a URL"),
    ({"collections": []}, "collections", "Shorter than minimum length 1"),
    ({"mode": "mirror"}, "max_delete", "needs max_delete"),
    ({"mode": "replace"}, "mode", "Must be one of"),
    ({"conflict": "newest-wins"}, "conflict", "Must be one of"),
    ({"schedule": {"cron": "every night"}}, "schedule.cron", "is not a crontab expression"),
    ({"schedule": {"cron": "0 3 * * *", "interval_seconds": 60}}, "schedule.cron", "not both"),
    ({"schedule": {"interval_seconds": 0}}, "schedule.interval_seconds", "greater than or equal to 1"),
    ({"schedule": {"cron": "0 3 * * *", "timezone": "Mars/Olympus"}}, "schedule.timezone", "not an IANA time zone"),
    ({"missed": "all"}, "missed", "Must be one of"),
    ({"name": "../etc"}, "name", "letters, digits"),
    ({"filters": {"tags": {"name": {"_eq": "x"}}}}, "filters", "does not sync: tags"),
    ({"filters": {"articles": "{not json"}}, "filters", "is not JSON"),
    ({"promote_first": True}, "target_token_env", "name the environment variable"),
    ({"mask": "/etc/profile.yaml"}, "mask", "Must be one of"),
    ({"alert_webhook": "ftp://hooks.example.com/x"}, "alert_webhook", "Not a valid URL"),
])
def test_bad_profiles_are_refused_naming_the_field(sidecar: Any, pair: tuple[CairnSqliteInstance, CairnSqliteInstance],
                                                   changes: dict[str, Any], field: str, words: str) -> None:
    response = sidecar.test_client().post("/migrate/syncs", json=_profile(pair, **changes), headers=bearer(TOKEN))
    assert response.status_code == 422, response.get_json()
    message = response.get_json()["error"]["message"]
    assert message.startswith("Bad sync profile: ") and f"{field}: " in message and words in message, message
    assert get_state(sidecar).config and sidecar.test_client().get("/migrate/syncs", headers=bearer(TOKEN)).get_json()[
        "count"] == 0


def test_a_profile_that_could_only_fail_at_run_time_is_refused_with_every_problem(
        sidecar: Any, pair: tuple[CairnSqliteInstance, CairnSqliteInstance], tmp_path: Path) -> None:
    """Operator trial: a filter on a field the collection lacks, a collection the source lacks and a target .env
    that does not exist were each saved (enabled, scheduled) and failed only when run.  Each is refused at add,
    over HTTP (422) and the CLI (exit 2), all at once even beside a schedule error, each with its fix; nothing
    is stored."""
    source, target = pair
    gone = tmp_path / "gone" / ".env"  # a peer the sidecar allows, not there
    response = sidecar.test_client().post("/migrate/syncs", headers=bearer(TOKEN), json=_profile(
        pair, collections=["articles", "artikles"], filters={"articles": {"headline": {"_eq": "x"}}},
        schedule={"cron": "0 3 * * *", "interval_seconds": 60}))
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    problems = error["details"]["problems"]
    assert [p.split(":")[0] for p in problems] == ["schedule.cron", "collections", "filters.articles"], problems
    assert "artikles is not a collection of the source (fix: name one of its collections: " in problems[1], problems
    assert "no field 'headline'" in problems[2] and "(fix: " in problems[2], problems
    assert all(p in error["message"] for p in problems)
    response = sidecar.test_client().post("/migrate/syncs", headers=bearer(TOKEN), json=_profile(pair, target=str(gone)))
    assert response.status_code == 422 and response.get_json()["error"]["details"]["problems"] == [
        f"target: {gone} does not exist (fix: name the target instance's .env file)"], response.get_json()
    assert sidecar.test_client().get("/migrate/syncs", headers=bearer(TOKEN)).get_json()["count"] == 0

    runner = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'cli-state.db'}"})
    result = runner.invoke(cli, ["--env", str(source.env_path), "sync", "add", "bad", "--from", str(source.env_path),
                                 "--to", str(gone), "--collection", "articles", "--collection", "artikles",
                                 "--filter", 'articles={"author": {"name": {"_eq": "x"}}}', "--cron", "0 3 * * *",
                                 "--interval", "60"])
    assert result.exit_code == 2, result.output
    for words in ("--cron: give cron or interval_seconds, not both", f"--to: {gone} does not exist",
                  "--collection: artikles is not a collection of the source",
                  "--filter articles=…: filter on articles.author: author.name is a field of the related collection",
                  "sync add --help lists the options"):  # the CLI's errors name its options, not the profile's fields
        assert words in result.output, result.output
    listed = runner.invoke(cli, ["--env", str(source.env_path), "sync", "list", "--json"])
    assert json.loads(listed.output)["count"] == 0
    missing = runner.invoke(cli, ["--env", str(source.env_path), "sync", "remove", "bad"])
    assert missing.exit_code == 2 and "There is no sync profile 'bad'" in missing.output, missing.output
    assert target.env_path.is_file()


def test_profile_paths_only_where_the_operator_allows(pair: tuple[CairnSqliteInstance, CairnSqliteInstance],
                                                      tmp_path: Path) -> None:
    source, _ = pair
    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(source.env_path),
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state' / 'state.db'}",
                      "CAIRN_MIGRATE_HTTP_PATHS": str(tmp_path / "target")})
    try:
        response = app.test_client().post("/migrate/syncs", json=_profile(pair), headers=bearer(TOKEN))
        assert response.status_code == 422
        assert response.get_json()["error"]["message"] == (
            f"'source' {source.env_path} is outside the folders the sidecar's operator allows HTTP callers to name "
            "(CAIRN_MIGRATE_HTTP_PATHS)")
    finally:
        get_state(app).close()


def test_the_routes_are_in_the_openapi_document(sidecar: Any) -> None:
    document = build_spec(sidecar).to_dict()
    paths = document["paths"]
    assert set(paths["/migrate/syncs"]) == {"get", "post"}
    assert {"get", "patch", "delete"} <= set(paths["/migrate/syncs/{sync_name}"])
    assert set(paths["/migrate/syncs/{sync_name}/run"]) >= {"post"}
    assert set(paths["/migrate/syncs/{sync_name}/history"]) >= {"get"}
    body = paths["/migrate/syncs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    profile = document["components"]["schemas"][body.rsplit("/", 1)[-1]]
    assert {"name", "source", "target", "collections", "filters", "mode", "conflict", "promote_first", "mask",
            "schedule", "missed", "enabled", "alert_webhook"} <= set(profile["properties"])
    assert profile["properties"]["source"]["x-server-path"] and profile["properties"]["target"]["x-server-path"]
    assert paths["/migrate/syncs/{sync_name}/run"]["post"]["security"] == [{"bearerAuth": []}]


# --------------------------------------------------------------------------- CLI
def test_crud_over_the_cli(pair: tuple[CairnSqliteInstance, CairnSqliteInstance], tmp_path: Path) -> None:
    source, target = pair
    runner = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'cli-state.db'}"})

    def run(*args: str) -> Any:
        return runner.invoke(cli, ["--env", str(source.env_path), "sync", *args], catch_exceptions=False)

    added = run("add", "nightly", "--from", str(source.env_path), "--to", str(target.env_path), "--collection",
                "articles", "--collection", "tags", "--filter", 'articles={"status": {"_eq": "published"}}',
                "--conflict", "skip-if-target-modified", "--interval", "900", "--missed", "skip", "--json")
    assert added.exit_code == 0, added.output
    profile = json.loads(added.output)
    assert profile["collections"] == ["articles", "tags"] and profile["schedule"]["interval_seconds"] == 900
    assert profile["filters"] == {"articles": {"status": {"_eq": "published"}}}
    assert profile["next_run"] and profile["missed"] == "skip"

    duplicate = run("add", "nightly", "--from", str(source.env_path), "--to", str(target.env_path), "--collection",
                    "articles")
    assert duplicate.exit_code == 2 and "already a sync profile 'nightly'" in duplicate.output
    url = run("add", "remote", "--from", "https://cms.example.com", "--to", str(target.env_path), "--collection", "x")
    assert url.exit_code == 2 and "--from: https://cms.example.com is a URL" in url.output
    mirror = run("add", "m", "--from", str(source.env_path), "--to", str(target.env_path), "--collection", "x",
                 "--mode", "mirror")
    assert mirror.exit_code == 2 and "--max-delete: mirror deletes target rows and needs max_delete" in mirror.output
    cron = run("add", "c", "--from", str(source.env_path), "--to", str(target.env_path), "--collection", "x",
               "--cron", "61 * * * *")
    assert cron.exit_code == 2 and "--cron: " in cron.output

    listed = json.loads(run("list", "--json").output)
    assert [p["name"] for p in listed["syncs"]] == ["nightly"]
    paused = run("pause", "nightly", "--json")
    assert paused.exit_code == 0 and json.loads(paused.output)["enabled"] is False
    assert json.loads(run("list", "--json").output)["syncs"][0]["next_run"] is None
    refused = run("run", "nightly")
    assert refused.exit_code == 2 and "paused" in refused.output and "sync resume nightly" in refused.output
    assert json.loads(run("resume", "nightly", "--json").output)["enabled"] is True
    assert "every 900s" in run("show", "nightly").output
    assert json.loads(run("history", "nightly", "--json").output) == {"name": "nightly", "runs": [], "count": 0}
    # the trial: a dry run read "ok" in the text history, like a run that synced; it says what it was
    run("run", "nightly", "--dry-run")  # this pair's outcome does not matter here: only how the history says it
    run("run", "nightly")
    dry, real = reversed(run("history", "nightly").output.splitlines())
    assert " (dry run)" in dry and " (dry run)" not in real, (dry, real)
    assert run("remove", "nightly").exit_code == 0
    missing = run("show", "nightly")
    assert missing.exit_code == 2 and "no sync profile 'nightly'" in missing.output  # bad input, not a failure
    # The profiles are the --env instance's: another instance sharing the store sees none.
    other = runner.invoke(cli, ["--env", str(target.env_path), "sync", "list", "--json"])
    assert json.loads(other.output)["count"] == 0


# --------------------------------------------------------------------------- runs
def test_a_run_reads_the_change_feed_and_advances_the_watermark_only_on_success(
        pair: tuple[CairnSqliteInstance, CairnSqliteInstance], tmp_path: Path) -> None:
    """From-now start; an idle run advances; changed keys per action; a failed step keeps the watermark."""
    source, target = pair
    broken = _broken(target, tmp_path / "broken")
    runner = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'cli-state.db'}"})

    def cli_run(*args: str) -> tuple[int, dict[str, Any]]:
        result = runner.invoke(cli, ["--env", str(source.env_path), "sync", *args], catch_exceptions=False)
        try:
            return result.exit_code, json.loads(result.output)
        except ValueError:
            raise AssertionError(result.output) from None

    for name, mode in (("merge", ["--mode", "merge"]), ("mirror", ["--mode", "mirror", "--max-delete", "10"])):
        code, _ = cli_run("add", name, "--from", str(source.env_path), "--to", str(broken), "--collection", "articles",
                          "--collection", "tags", "--initial", "from-now", *mode, "--json")
        assert code == 0
    start = _max_activity(source)
    for name in ("merge", "mirror"):
        code, report = cli_run("run", name, "--json")
        assert code == 0 and report["status"] == "ok", report
        assert report["watermark_before"] == {} and report["watermark_after"] == {"articles": start, "tags": start}

    # Activity of other collections (a login) moves the watermark of an idle run too.
    _activity(source, ("login", "directus_users", "fb86cb93-de4a-4347-8994-558bc2dc85ec"))
    code, report = cli_run("run", "merge", "--json")
    assert code == 0 and report["watermark_after"] == {"articles": start + 1, "tags": start + 1}
    assert report["steps"]["articles"]["skipped"] == "no changes"

    _activity(source, ("create", "articles", "a-1"), ("create", "articles", "a-2"), ("update", "articles", "a-1"),
              ("update", "articles", "a-3"), ("delete", "articles", "a-2"), ("delete", "articles", "a-4"),
              ("create", "articles", "a-4"), ("comment", "articles", "a-5"), ("update", "authors", "7"))
    code, report = cli_run("run", "merge", "--json")
    step = report["steps"]["articles"]
    assert step["changed"] == {"upsert": ["a-1", "a-3", "a-4"], "delete": [], "delete_ignored": ["a-2"]}
    assert step["params"]["filter"] == {"id": {"_in": ["a-1", "a-3", "a-4"]}} and step["params"]["mode"] == "merge"
    assert step["outcome"] in ("failed", "invalid") and step["error"]["message"]
    assert report["steps"]["tags"]["skipped"] == "no changes"
    assert report["status"] == "partial" and code == 4  # tags succeeded, articles did not
    assert report["watermark_after"] == {"articles": start + 1, "tags": _max_activity(source)}
    code, mirrored = cli_run("run", "mirror", "--json")
    assert mirrored["steps"]["articles"]["changed"] == {"upsert": ["a-1", "a-3", "a-4"], "delete": ["a-2"],
                                                        "delete_ignored": []}
    assert mirrored["steps"]["articles"]["params"]["filter"] == {"id": {"_in": ["a-1", "a-3", "a-4", "a-2"]}}
    assert mirrored["steps"]["articles"]["params"]["max_delete"] == 10

    # The failed collection is retried from the same watermark; the history keeps both runs' marks.
    code, again = cli_run("run", "merge", "--json")
    assert again["watermark_before"]["articles"] == start + 1 == again["watermark_after"]["articles"]
    assert again["steps"]["articles"]["changed"]["upsert"] == ["a-1", "a-3", "a-4"]
    code, history = cli_run("history", "merge", "--json")
    assert [run["outcome"] for run in history["runs"]] == ["partial", "partial", "ok", "ok"]
    assert history["runs"][1]["watermark_before"] == {"articles": start + 1, "tags": start + 1}
    assert history["runs"][1]["watermark_after"] == {"articles": start + 1, "tags": _max_activity(source)}
    assert all(run["trigger"] == "cli" and run["job_id"] is None for run in history["runs"])

    # A full run re-scans: no key filter, only the profile's own filter.
    code, full = cli_run("run", "merge", "--full", "--json")
    assert full["full"] and full["steps"]["articles"]["rescan"] and full["steps"]["articles"]["params"]["filter"] is None


def test_a_run_over_http_is_a_job_and_a_failure_is_posted_to_the_webhook(
        sidecar: Any, pair: tuple[CairnSqliteInstance, CairnSqliteInstance], tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        source, target = pair
        client, headers = sidecar.test_client(), bearer(TOKEN)
        hook = f"http://127.0.0.1:{server.server_port}/flows/trigger/0d2c9f5e"
        profile = _profile(pair, initial="from-now", alert_webhook=hook, target=str(_broken(target, tmp_path / "gone")))
        # S2: a URL under neither instance's PUBLIC_URL nor on a host the operator lists is refused
        refused = client.post("/migrate/syncs", json=profile, headers=headers)
        assert refused.status_code == 422 and "alert_webhook" in refused.get_json()["error"]["message"]
        assert "CAIRN_MIGRATE_WEBHOOK_HOSTS" in refused.get_json()["error"]["hint"]
        for internal in ("http://169.254.169.254/latest/meta-data/", f"http://localhost:{server.server_port}/x",
                         f"http://user:pw@127.0.0.1:{server.server_port}/x"):
            assert client.post("/migrate/syncs", json={**profile, "alert_webhook": internal},
                               headers=headers).status_code == 422
        get_state(sidecar).config["CAIRN_MIGRATE_WEBHOOK_HOSTS"] = f"hooks.example.org, 127.0.0.1:{server.server_port}"
        assert client.post("/migrate/syncs", json=profile, headers=headers).status_code == 201
        # an unreachable webhook: the history says only that, never the connection error's text
        assert sync_module.send_alert("http://127.0.0.1:9/", {"steps": {}}) == {
            "url": "http://127.0.0.1:9/", "error": "alert failed (unreachable)"}
        first = client.post("/migrate/syncs/articles-nightly/run", json={}, headers=headers)
        assert first.status_code == 202
        job = get_state(sidecar).runner.wait(first.get_json()["id"], timeout=60)
        assert job["state"] == "succeeded" and job["result"]["outcome"] == "ok" and received == []

        _activity(source, ("update", "articles", "a-1"))
        plan = client.post("/migrate/syncs/articles-nightly/run", json={"dry_run": True}, headers=headers)
        assert plan.status_code in (200, 207, 422, 500)
        assert plan.get_json()["report"]["dry_run"] and plan.get_json()["report"]["watermark_after"] == \
            plan.get_json()["report"]["watermark_before"]
        assert received == []  # a plan never alerts

        second = client.post("/migrate/syncs/articles-nightly/run", json={}, headers=headers)
        job = get_state(sidecar).runner.wait(second.get_json()["id"], timeout=60)
        assert job["state"] == "failed" and job["result"]["status"] in ("failed", "invalid")
        assert job["result"]["alert"] == {"url": hook, "status": 204}
        assert len(received) == 1 and received[0]["event"] == "cairn-migrate.sync.failed"
        assert received[0]["name"] == "articles-nightly" and received[0]["job_id"] == job["id"]
        assert received[0]["steps"]["articles"]["changed"]["upsert"] == ["a-1"]
        history = client.get("/migrate/syncs/articles-nightly/history", headers=headers).get_json()
        assert [(r["trigger"], r["outcome"], r["job_id"]) for r in history["runs"][:1]] == [
            ("manual", job["result"]["status"], job["id"])]
        assert history["runs"][0]["alert"] == {"url": hook, "status": 204}
        assert history["runs"][0]["watermark_after"] == history["runs"][0]["watermark_before"]
        shown = client.get("/migrate/syncs/articles-nightly", headers=headers).get_json()
        assert shown["last_run"]["job_id"] == job["id"]
    finally:
        server.shutdown()
        server.server_close()


def test_the_run_lock_and_the_slot(pair: tuple[CairnSqliteInstance, CairnSqliteInstance], pg_admin_url: str,
                                   tmp_path: Path) -> None:
    """On a PostgreSQL state store: a run holding the profile's row makes a second one skip; a recorded slot
    is not run again; editing the profile does not wait for the run."""
    source, target = pair
    name = create_postgres_database(pg_admin_url, prefix="cm_sync")
    url = make_url(pg_admin_url).set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False)
    try:
        instance = Instance.from_env_file(source.env_path, environ={})
        store = SyncStore(url, instance_scope(instance))
        profile = store.add(validate_profile(_profile(pair, initial="from-now", schedule={"interval_seconds": 60})))
        context = OpContext(instance=lambda: instance, state_url=url, open_instance=Instance.from_env_file)
        slot = due_slot(profile, profile["anchor"])
        with store.run_lock(profile["id"]) as held:  # another sidecar's run, in progress
            assert held is not None
            report, outcome = operations.run("sync_run", context, {"name": profile["name"], "trigger": "schedule",
                                                                   "slot": slot})
            assert report["skipped"] == "another run of this profile holds its run lock" and outcome.value == "ok"
            assert store.set_enabled(profile["name"], True)["enabled"]  # not held up by the run
        report, outcome = operations.run("sync_run", context, {"name": profile["name"], "trigger": "schedule",
                                                               "slot": slot})
        assert outcome.value == "ok" and "skipped" not in report
        again, _ = operations.run("sync_run", context, {"name": profile["name"], "trigger": "schedule", "slot": slot})
        assert again["skipped"] == f"the slot {slot} has run already"
        assert [(r["slot"], r["outcome"]) for r in store.history(profile["name"])] == [(slot, "ok")]
        # A cancelled run (the job runner's cancel, seen between steps) is recorded as such, nothing advanced.
        jobs = JobStore(url, instance_scope(instance))
        job = jobs.create("sync_run", {})
        jobs.request_cancel(job)
        cancelling = OpContext(instance=lambda: instance, state_url=url, open_instance=Instance.from_env_file,
                               progress=JobContext(jobs, job, {}), job_id=job)
        with pytest.raises(JobCancelled):
            operations.run("sync_run", cancelling, {"name": profile["name"]})
        last = store.history(profile["name"])[0]
        assert (last["outcome"], last["job_id"], last["slot"]) == ("cancelled", job, None)
        assert last["watermark_after"] == last["watermark_before"]
        jobs.close()
        store.set_enabled(profile["name"], False)
        paused, _ = operations.run("sync_run", context, {"name": profile["name"], "trigger": "schedule", "slot": "z"})
        assert paused["skipped"] == "the profile is paused" and len(store.history(profile["name"])) == 2
    finally:
        dispose(url)
        drop_postgres_database(pg_admin_url, name)


def test_due_slots_are_the_same_for_every_sidecar() -> None:
    from datetime import datetime, timezone

    profile = {"schedule": {"interval_seconds": 60, "timezone": "UTC"}}
    anchor = "2026-01-01T00:00:00+00:00"
    at = datetime(2026, 1, 1, 1, 2, 59, tzinfo=timezone.utc)
    assert due_slot(profile, anchor, at) == "2026-01-01T01:02:00+00:00"
    cron = {"schedule": {"cron": "30 3 * * *", "timezone": "Europe/Berlin"}}
    assert due_slot(cron, anchor, datetime(2026, 7, 2, 1, 29, tzinfo=timezone.utc)) == "2026-07-01T01:30:00+00:00"
    assert due_slot(cron, anchor, datetime(2026, 7, 2, 1, 30, tzinfo=timezone.utc)) == "2026-07-02T01:30:00+00:00"
    assert due_slot({"schedule": None}, anchor, at) is None
