"""``content move --via api`` on real servers and a real, running CairnCMS 1.0.0-beta.4.

The source is the recorded SQLite instance; two targets are the recorded PostgreSQL instance, populated
and made different the same way (their articles, authors and tags renamed, so every moved integer key
collides): one written through the database path, one through the API of CairnCMS booted on it (one
boot for the module).  The published articles with their closure move onto both; the targets then hold
the same rows (integer keys compared through each target's ID map), the same references and the same
bytes.  A flow with an ``items.create`` action hook on the API target logs each article it sees (proof
that hooks ran), a second API run changes nothing, and a local proxy in front of the CairnCMS that
**injects failures** (429 with Retry-After, then 503, then a permanent 400) shows the retries and a
partial move that a re-run completes without duplicates.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import FIXTURES, populated_postgres_target, query
from live_instance import Platform, free_port, server_env, start_server, stop_process

from cairn_migrate.cli import cli
from cairn_migrate.content.closure import load_graph
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.testing import build_sqlite_instance

TOKEN = "content-api-admin-token-0123456789"
PUBLISHED = '{"status": {"_eq": "published"}}'
DRAFTS = '{"status": {"_eq": "draft"}}'
MOVED = ("articles", "authors", "tags", "articles_tags", "articles_translations", "article_comments", "languages",
         "directus_files", "directus_folders")
#: columns the API sets itself (CairnCMS's date-created/updated specials, what /files controls): the db path
#: copies the source's values, the api path leaves them to the target, so they are not compared
SERVER_SET = {"date_created", "date_updated", "filename_disk", "uploaded_by", "modified_on", "modified_by"}
FLOW_MESSAGE = "content-api-flow-saw-article"


# --------------------------------------------------------------------------- a proxy that injects failures
class Injector:
    """A local HTTP proxy in front of the real CairnCMS.  It INJECTS FAILURES: the first ``transient`` write
    requests get 429 (Retry-After: 1) or 503 instead of reaching the server; writes to a path starting with
    ``refuse`` get a permanent 400.  Everything else is forwarded unchanged."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.transient: list[int] = []
        self.refuse: str | None = None
        self.injected: list[tuple[int, str, str]] = []
        self.forwarded = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    status = None
                    if self.command != "GET" and proxy.refuse and self.path.startswith(proxy.refuse):
                        status = 400
                    elif self.command != "GET" and proxy.transient:
                        status = proxy.transient.pop(0)
                    if status:
                        proxy.injected.append((status, self.command, self.path))
                    else:
                        proxy.forwarded += 1
                if status:
                    payload = json.dumps({"errors": [{"message": f"injected {status} by the test proxy"}]}).encode()
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = requests.request(self.command, proxy.upstream + self.path, data=body, headers=headers,
                                          timeout=60)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PATCH = do_DELETE = do_SEARCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- the instances
@dataclass
class Targets:
    source: Path
    by_db: Path
    by_api: Path
    url: str
    state: Path
    log: Path
    proxy: Injector

    def move(self, target: Path, *args: str) -> tuple[int, dict[str, Any]]:
        env = {"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{self.state}"}
        result = CliRunner(env=env).invoke(cli, ["content", "move", "--from", str(self.source), "--to", str(target),
                                                 "--collection", "articles", "--json", *args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, json.loads(result.output)

    def api(self, *args: str) -> tuple[int, dict[str, Any]]:
        return self.move(self.by_api, "--via", "api", "--to-token", TOKEN, *args)


def _flow(url: str) -> None:
    """An active flow on the target: an ``items.create`` action hook on articles that logs each key."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    flow = requests.post(url + "/flows", headers=headers, timeout=30, json={
        "name": "content api proof", "status": "active", "trigger": "event", "accountability": "all",
        "options": {"type": "action", "scope": ["items.create"], "collections": ["articles"]}})
    assert flow.status_code == 200, flow.text
    flow_id = flow.json()["data"]["id"]
    operation = requests.post(url + "/operations", headers=headers, timeout=30, json={
        "flow": flow_id, "key": "log_it", "type": "log", "position_x": 19, "position_y": 1,
        "options": {"message": FLOW_MESSAGE + " {{$trigger.key}}"}})
    assert operation.status_code == 200, operation.text
    done = requests.patch(f"{url}/flows/{flow_id}", headers=headers, timeout=30,
                          json={"operation": operation.json()["data"]["id"]})
    assert done.status_code == 200, done.text


@pytest.fixture(scope="module")
def targets(cairncms: Platform, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Targets]:
    base = tmp_path_factory.mktemp("content-api")
    source = build_sqlite_instance(FIXTURES / "sqlite", base / "src")
    url = f"http://127.0.0.1:{free_port()}"
    by_db = populated_postgres_target("by-db", base, request, f"http://127.0.0.1:{free_port()}", TOKEN)  # never booted
    by_api = populated_postgres_target("by-api", base, request, url, TOKEN)
    (by_api.parent / "package.json").write_text('{"name": "content-api-target", "private": true}\n')
    log = base / "cairncms.log"
    server = start_server(cairncms, by_api.parent, url, server_env(), log)
    proxy = Injector(url)
    try:
        _flow(url)
        yield Targets(source, by_db, by_api, url, base / "state" / "state.db", log, proxy)
    finally:
        proxy.close()
        stop_process(server)


def target_state(env: Path, state: Path, scope: str | None = None) -> dict[str, list[str]]:
    """Every moved collection's rows, integer keys (own and referenced) replaced by the source keys the ID map
    says they came from (unmapped: the target's own row), server-set columns left out; sorted JSON lines.
    ``scope``: the target's identity in the ID map when it was named by URL (default: its database's)."""
    with Database.open(Instance.from_env_file(env)) as db:
        graph = load_graph(db)
        scope_rows = sa.create_engine(f"sqlite:///{state}").connect().execute(sa.text(
            "SELECT target, collection, source_id, target_id FROM cm_content_id_map")).all()
        from cairn_migrate.service.state import database_identity

        mine = scope or database_identity(Instance.from_env_file(env))
        back = {(r.collection, r.target_id): r.source_id for r in scope_rows if r.target == mine}
        out: dict[str, list[str]] = {}
        with db.engine.connect() as conn:
            for name in MOVED:
                table = db.table(name)
                pk = [c.name for c in table.primary_key.columns][0]
                integer = isinstance(table.c[pk].type, sa.Integer)
                refs = {link.field: link.one for link in graph.outgoing(name) if link.one}
                rows = []
                for row in conn.execute(sa.select(table)).mappings():
                    item = {k: v for k, v in row.items() if k not in SERVER_SET}
                    if integer:
                        item[pk] = back.get((name, str(row[pk])), f"own:{row[pk]}")
                    for column, one in refs.items():
                        if item.get(column) is not None and (one, str(item[column])) in back:
                            item[column] = back[(one, str(item[column]))]
                    rows.append(json.dumps(item, sort_keys=True, default=str))
                out[name] = sorted(rows)
    return out


def test_the_api_path_and_the_db_path_give_the_same_target_state(targets: Targets) -> None:
    code, by_db = targets.move(targets.by_db, "--filter", PUBLISHED)
    assert code == 0 and by_db["applied"], (by_db["plan"], by_db["refused"], by_db["files"])
    code, planned = targets.api("--filter", PUBLISHED, "--dry-run")
    assert code == 1 and planned["plan"] == by_db["plan"]  # the same plan
    activity = "SELECT count(*) FROM directus_activity WHERE collection = 'articles' AND action = 'create'"
    before = query(targets.by_api, activity)[0][0]
    code, by_api = targets.api("--filter", PUBLISHED, "--batch-size", "3", "--concurrency", "4")
    assert code == 0 and by_api["applied"] and not by_api["partial"], by_api.get("failed")
    assert by_api["plan"] == by_db["plan"] and by_api["files"] == by_db["files"] and by_api["users"] == by_db["users"]
    assert by_api["api"]["files_uploaded"] == 3
    db_state, api_state = target_state(targets.by_db, targets.state), target_state(targets.by_api, targets.state)
    for name in MOVED:
        assert api_state[name] == db_state[name], name
    # the same bytes, served by the API target, stored on the db target
    for file_id, name in query(targets.source, "SELECT id, filename_disk FROM directus_files"):
        source_bytes = (FIXTURES / "sqlite" / "uploads" / name).read_bytes()
        served = requests.get(f"{targets.url}/assets/{file_id}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert served.status_code == 200 and served.content == source_bytes
        assert (targets.by_db.parent / "uploads" / name).read_bytes() == source_bytes
    # the API wrote audit rows: CairnCMS's own write path ran
    assert query(targets.by_api, activity)[0][0] == before + 10


def test_the_targets_flow_hook_ran_for_every_created_article(targets: Targets) -> None:
    moved = {r.id for r in query(targets.source, "SELECT id FROM articles WHERE status = 'published'")}
    seen = set(re.findall(FLOW_MESSAGE + r" ([0-9a-f-]{36})", targets.log.read_text()))
    assert moved <= seen, (moved - seen)


def test_a_second_api_run_changes_nothing(targets: Targets) -> None:
    counts = {t: query(targets.by_api, f"SELECT count(*) FROM {t}")[0][0] for t in MOVED}
    code, report = targets.api("--filter", PUBLISHED)
    assert code == 0 and not report["changes"], report
    assert all(c["created"] == c["updated"] == c["deleted"] == 0 for c in report["plan"].values())
    assert report["files"]["copy"] == 0
    assert counts == {t: query(targets.by_api, f"SELECT count(*) FROM {t}")[0][0] for t in MOVED}


def test_injected_429_and_503_are_retried_and_a_refused_batch_leaves_a_partial_move_a_rerun_completes(
        targets: Targets) -> None:
    proxy = targets.proxy
    # a permanent refusal of the comments' writes: the articles before them are written, the run says partial
    proxy.refuse = "/items/article_comments"
    code, report = targets.api("--filter", DRAFTS, "--to-url", proxy.url)
    assert code == 4 and report["partial"] and "injected 400" in report["failed"][0]["message"], report
    drafts = query(targets.by_api, "SELECT count(*) FROM articles WHERE status = 'draft' AND slug NOT LIKE 'pg-%'")[0][0]
    assert drafts == 6
    # transient failures: 429 (Retry-After 1 s) and 503, retried with backoff; the re-run resumes through the ID map
    proxy.refuse = None
    proxy.transient = [429, 503, 503, 429]
    code, report = targets.api("--filter", DRAFTS, "--to-url", proxy.url)
    assert code == 0 and report["applied"] and not report["partial"], report
    assert report["api"]["retried"] >= 4 and [s for s, _, _ in proxy.injected].count(429) == 2
    assert report["plan"]["articles"]["created"] == 0  # written by the partial run, found again
    # nothing was duplicated: the target holds each source comment and translation of the drafts once
    for table, column in (("article_comments", "article"), ("articles_translations", "articles_id")):
        source = query(targets.source, f"SELECT count(*) FROM {table} t JOIN articles a ON a.id = t.{column} "
                                       "WHERE a.status = 'draft'")[0][0]
        target = query(targets.by_api, f"SELECT count(*) FROM {table} t JOIN articles a ON a.id = t.{column} "
                                       "WHERE a.status = 'draft' AND a.slug NOT LIKE 'pg-%'")[0][0]
        assert target == source, table
    code, report = targets.api("--filter", DRAFTS, "--to-url", proxy.url)
    assert code == 0 and not report["changes"]


def test_mirror_via_api_deletes_through_the_targets_api(targets: Targets) -> None:
    slugs = sorted(r.slug for r in query(targets.source, "SELECT slug FROM articles WHERE status = 'published'"))
    mirror = json.dumps({"status": {"_eq": "published"}, "slug": {"_in": slugs}})
    dropped = query(targets.source, "SELECT c.id, c.text FROM article_comments c JOIN articles a ON a.id = c.article "
                                    "WHERE a.slug = 'article-1' ORDER BY c.id")[0]
    query(targets.source, "DELETE FROM article_comments WHERE id = :i", i=dropped.id)
    query(targets.source, "UPDATE articles SET status = 'draft' WHERE slug = 'article-4'")
    deletes = "SELECT count(*) FROM directus_activity WHERE action = 'delete' AND collection IN ('articles', 'article_comments')"
    before = query(targets.by_api, deletes)[0][0]
    comments = "SELECT count(*) FROM article_comments WHERE text = :t"  # the target's own rows hold the same text
    comments_before = query(targets.by_api, comments, t=dropped.text)[0][0]
    code, report = targets.api("--filter", mirror, "--mode", "mirror", "--max-delete", "1")
    assert code == 2 and "more than --max-delete 1" in report["refused"][0]["message"]
    code, report = targets.api("--filter", mirror, "--mode", "mirror", "--max-delete", "4")
    assert code == 0 and report["applied"], (report.get("failed"), report["refused"], report["plan"])
    assert report["plan"]["articles"]["deleted"] == 1 and report["plan"]["article_comments"]["deleted"] == 1
    assert report["cascaded"] == {"articles_translations": 2}  # the article's translations (ON DELETE CASCADE)
    assert query(targets.by_api, "SELECT count(*) FROM articles WHERE slug = 'article-4'")[0][0] == 0
    assert query(targets.by_api, comments, t=dropped.text)[0][0] == comments_before - 1
    assert query(targets.by_api, deletes)[0][0] == before + 2  # deleted through the API: CairnCMS logged both


def test_post_migrate_ops_runs_a_move_via_api_as_a_job_without_storing_the_token(targets: Targets) -> None:
    from cairn_migrate.service.app import HTTP_PATHS, PEERS, create_app, get_state

    # the sidecar of the target; the source is another instance its operator trusts (CAIRN_MIGRATE_PEERS)
    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(targets.by_api), "CAIRN_MIGRATE_SCHEDULER": False,
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{targets.state}", HTTP_PATHS: str(targets.source.parent.parent),
                      PEERS: str(targets.source)})
    try:
        client, headers = app.test_client(), {"Authorization": f"Bearer {TOKEN}"}
        params = {"from": str(targets.source), "to": str(targets.by_api), "collections": ["articles"], "via": "api",
                  "to_token": TOKEN, "concurrency": 2, "filter": {"status": {"_eq": "archived"}}}
        planned = client.post("/migrate/ops", json={"op": "content", "params": {**params, "dry_run": True}},
                              headers=headers)
        assert planned.status_code == 200 and planned.get_json()["report"]["plan"]["articles"]["created"] == 5
        started = client.post("/migrate/ops", json={"op": "content", "params": params}, headers=headers)
        assert started.status_code == 202, started.get_json()
        job = get_state(app).runner.wait(started.get_json()["id"], timeout=300)
        assert job["state"] == "succeeded", job
    finally:
        get_state(app).close()
    assert query(targets.by_api, "SELECT count(*) FROM articles WHERE status = 'archived' AND slug NOT LIKE 'pg-%'")[0][0] == 5
    for stored in targets.state.parent.glob(targets.state.name + "*"):  # the store and any journal beside it
        assert TOKEN.encode() not in stored.read_bytes()  # a secret: in memory only, never in the job record


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    import email.utils

    from cairn_migrate.content.api_client import _retry_after

    def answer(value: str | None) -> requests.Response:
        response = requests.Response()
        if value is not None:
            response.headers["Retry-After"] = value
        return response

    assert _retry_after(answer("3")) == 3.0 and _retry_after(answer(None)) == 0.0
    assert _retry_after(answer("soon")) == 0.0
    later = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 <= _retry_after(answer(later)) <= 5.0


def test_bytes_missing_under_an_existing_file_row_are_uploaded_again(targets: Targets) -> None:
    file_id, source_name = query(targets.source, "SELECT id, filename_disk FROM directus_files WHERE type = 'image/png'")[0]
    stored = query(targets.by_api, "SELECT filename_disk FROM directus_files WHERE id = :i", i=file_id)[0][0]
    (targets.by_api.parent / "uploads" / stored).unlink()
    code, report = targets.api("--filter", PUBLISHED, "--dry-run")
    assert code == 1 and report["files"]["copy"] == 1 and report["plan"]["directus_files"]["created"] == 0
    code, report = targets.api("--filter", PUBLISHED)
    assert code == 0 and report["api"]["files_uploaded"] == 1, report.get("failed")
    served = requests.get(f"{targets.url}/assets/{file_id}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert served.content == (FIXTURES / "sqlite" / "uploads" / source_name).read_bytes()
    code, report = targets.api("--filter", PUBLISHED)
    assert code == 0 and not report["changes"]  # the row kept the source's metadata


# --------------------------------------------------------------------------- the value transforms, via api
OLD = "https://old.example.com/cms"


def _url_source(dest: Path, file_id: str, article_id: str, slug: str) -> tuple[Path, bytes]:
    """The SQLite fixture at ``OLD``, with a file only an article's rich text names (no relation carries it)."""
    source = build_sqlite_instance(FIXTURES / "sqlite", dest, extra_env={"PUBLIC_URL": OLD + "/"})
    png_id, png_name = query(source, "SELECT id, filename_disk FROM directus_files WHERE type = 'image/png'")[0]
    png = (dest / "uploads" / png_name).read_bytes()
    (dest / "uploads" / f"{file_id}.png").write_bytes(png)
    query(source, "INSERT INTO directus_files (id, storage, filename_disk, filename_download, title, type, filesize, "
                  "uploaded_by) SELECT :i, storage, :d, 'inline.png', 'Inline', type, filesize, uploaded_by "
                  "FROM directus_files WHERE id = :p", i=file_id, d=f"{file_id}.png", p=png_id)
    body = (f'<p><img src="{OLD}/assets/{file_id}?width=64" alt="inline"></p>'
            f'<p><a href="/cms/assets/{file_id}">download</a> and <a href="{OLD}/admin">the app</a></p>')
    query(source, "INSERT INTO articles (id, status, title, slug, author, body) VALUES "
                  "(:a, 'published', 'Links', :s, 1, :b)", a=article_id, s=slug, b=body)
    return source, png


def _move_from(source: Path, target: Path, state: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{state}"}).invoke(
        cli, ["content", "move", "--from", str(source), "--to", str(target), "--collection", "articles", "--json",
              *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.output)


def test_a_url_rewrite_in_rich_text_and_transform_apply_on_the_api_path_as_on_the_db_path(
        targets: Targets, tmp_path: Path) -> None:
    """The transforms run in the walk both sinks share: the target's API receives the rich text with the asset
    URL rewritten to the target (and the file only that text names, uploaded), --transform's change included,
    exactly what the database path writes with its own target's URL."""
    inline, article = "4c1de9a0-5b7e-4f0a-9d3c-2e8f6a1b7c66", "5a5a5a5a-0000-4000-8000-00000000a0a1"
    source, png = _url_source(tmp_path / "src", inline, article, "links-api")
    state, only = tmp_path / "state.db", json.dumps({"slug": {"_eq": "links-api"}})
    transform = ("--transform", "content_transforms:shout_and_skip")
    code, planned = _move_from(source, targets.by_api, state, "--filter", only, *transform, "--via", "api",
                               "--to-token", TOKEN, "--dry-run")
    assert code == 1 and planned["plan"]["directus_files"]["created"] == 1, planned  # the file only text names
    code, report = _move_from(source, targets.by_api, state, "--filter", only, *transform, "--via", "api",
                              "--to-token", TOKEN)
    assert code == 0 and report["via"] == "api" and report["applied"], report.get("failed") or report["refused"]
    assert report["plan"] == planned["plan"] and report["api"]["files_uploaded"] == 1
    assert report["transform"]["urls"] == {"from": OLD, "to": targets.url, "values_rewritten": 1,
                                           "assets_not_moved": []}
    assert report["transform"]["function"]["changed"] == {"articles": 1}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    item = requests.get(f"{targets.url}/items/articles/{article}", params={"fields": "title,body"}, headers=headers,
                        timeout=30).json()["data"]
    assert item["title"] == "LINKS"  # --transform
    assert item["body"] == (f'<p><img src="{targets.url}/assets/{inline}?width=64" alt="inline"></p>'
                            f'<p><a href="/assets/{inline}">download</a> and <a href="{targets.url}/admin">the app</a></p>')
    served = requests.get(f"{targets.url}/assets/{inline}", headers=headers, timeout=30)
    assert served.status_code == 200 and served.content == png  # the rewritten URL serves the image
    assert query(targets.by_api, "SELECT count(*) FROM directus_activity WHERE collection = 'articles' "
                                 "AND action = 'create' AND item = :a", a=article)[0][0] == 1  # through the API
    # the database path writes the same text, with its own target's URL
    code, by_db = _move_from(source, targets.by_db, state, "--filter", only, *transform)
    assert code == 0 and by_db["plan"] == report["plan"], by_db
    db_url = Instance.from_env_file(targets.by_db).public_url.rstrip("/")
    (title, body), = query(targets.by_db, "SELECT title, body FROM articles WHERE id = :a", a=article)
    assert title == "LINKS" and body == item["body"].replace(targets.url, db_url)
    # a second run via api finds the finished rows equal: nothing to change
    code, again = _move_from(source, targets.by_api, state, "--filter", only, *transform, "--via", "api",
                             "--to-token", TOKEN)
    assert code == 0 and not again["changes"], again["plan"]


def test_a_masked_move_from_a_bundle_via_api_creates_the_missing_user_through_post_users(
        targets: Targets, tmp_path: Path) -> None:
    """A bundle source (bytes uploaded from its members), --mask pii-basic and --create-users via api: the user the
    target lacks is created through ``POST /users`` with the profile's fakes, suspended, without a password."""
    inline, article = "4c1de9a0-5b7e-4f0a-9d3c-2e8f6a1b7c77", "5a5a5a5a-0000-4000-8000-00000000a0b2"
    source, png = _url_source(tmp_path / "src", inline, article, "links-bundle")
    editor = query(source, "SELECT id FROM directus_users WHERE email = 'editor@example.com'")[0][0]
    query(source, "UPDATE articles SET user_created = :e WHERE id = :a", e=editor, a=article)
    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["--env", str(source), "export", "--full", "-o", str(bundle)])
    assert result.exit_code == 0, result.output
    query(targets.by_api, "UPDATE directus_users SET email = 'not-the-editor@example.com' "
                          "WHERE email = 'editor@example.com'")  # the target lacks the editor (and holds their id)
    code, report = _move_from(bundle, targets.by_api, tmp_path / "state.db", "--filter",
                              json.dumps({"slug": {"_eq": "links-bundle"}}), "--mask", "pii-basic", "--mask-salt",
                              "pepper", "--create-users", "--via", "api", "--to-token", TOKEN)
    assert code == 0 and report["applied"], report.get("failed") or report["refused"]
    (created,) = report["users"]["created"]
    assert created["email"] != "editor@example.com" and created["status"] == "suspended"
    editor_role = query(targets.by_api, "SELECT id FROM directus_roles WHERE key = 'editor'")[0][0]
    rows = query(targets.by_api, "SELECT id, first_name, password, token, status, role FROM directus_users "
                                 "WHERE email = :m", m=created["email"])
    assert len(rows) == 1 and rows[0][0] != editor  # the target's own user holds the source's id: a new uuid
    assert rows[0][1] != "Eddie" and rows[0][2:] == (None, None, "suspended", editor_role)
    assert query(targets.by_api, "SELECT count(*) FROM directus_activity WHERE collection = 'directus_users' "
                                 "AND action = 'create' AND item = :i", i=str(rows[0][0]))[0][0] == 1  # POST /users
    body = query(targets.by_api, "SELECT body FROM articles WHERE id = :a", a=article)[0][0]
    assert f'<img src="{targets.url}/assets/{inline}?width=64"' in body and OLD not in body  # the bundle's PUBLIC_URL
    served = requests.get(f"{targets.url}/assets/{inline}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert served.status_code == 200 and served.content == png  # uploaded from the bundle's member


def test_over_http_a_token_the_other_instances_api_accepts_proves_admin_there(targets: Targets) -> None:
    """S1: the sidecar of the source; the target is another instance, not listed in CAIRN_MIGRATE_PEERS: its
    admin token, checked against its running API (GET /users/me), lets the move through; another token does not."""
    from cairn_migrate.service.app import HTTP_PATHS, create_app, get_state

    query(targets.source, "UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'", t=TOKEN)
    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(targets.source), "CAIRN_MIGRATE_SCHEDULER": False,
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{targets.state}", HTTP_PATHS: str(targets.source.parent.parent)})
    try:
        client, headers = app.test_client(), {"Authorization": f"Bearer {TOKEN}"}
        params = {"from": str(targets.source), "to": str(targets.by_api), "collections": ["articles"], "via": "api",
                  "filter": {"status": {"_eq": "published"}}, "dry_run": True}
        for token, status in (("no-admin-token-of-the-target-000000", 403), (TOKEN, 200)):
            answer = client.post("/migrate/ops", json={"op": "content", "params": {**params, "to_token": token}},
                                 headers=headers)
            assert answer.status_code == status, answer.get_json()
    finally:
        get_state(app).close()
