"""``content move --from URL --from-token T``: a running CairnCMS read through its API only (no ``.env``).

The source is the recorded SQLite instance, booted as a real CairnCMS 1.0.0-beta.4; the published articles
(authors, tags m2m, translations, comments, image files and folders) move from its URL into the recorded
PostgreSQL instance (booted too, so it can serve what it received), and, for reference, from the source's
``.env`` into a second copy of that target.  Both targets must then hold the same rows (integer keys
compared through each pair's ID map) and the same bytes; a second run changes nothing; a wrong token and an
unreachable URL fail with one line naming the fix and write nothing.  A small local HTTP server (not a
mock of CairnCMS: a recorder of the query strings the reader sends, answering in CairnCMS's JSON shape)
shows that the reader pages by key (``filter[pk][_gt]``), never by offset.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from click.testing import CliRunner
from conftest import FIXTURES, populated_postgres_target, query
from live_instance import Platform, free_port, server_env, start_server, stop_process
from test_content_api import MOVED, PUBLISHED, TOKEN, target_state

from cairn_migrate.cli import cli
from cairn_migrate.content.api_source import SourceApi
from cairn_migrate.errors import RemoteRefused
from cairn_migrate.testing import build_sqlite_instance


# --------------------------------------------------------------------------- keyset paging, no offset
class Recorder:
    """A local HTTP server answering ``GET /items/things`` from 7 rows as CairnCMS would (``sort``, ``limit``,
    ``filter`` with ``_gt``/``_and``; ``offset`` and ``page`` honoured too, so a reader using them would pass the
    row check but not the parameter check), recording every query string; the ``aggregate[count]`` a reader asks
    first (its ceiling on the rows it accepts) is answered as CairnCMS does and recorded apart, in ``counts``."""

    ROWS = [{"id": i, "name": f"thing {i}"} for i in (2, 3, 5, 8, 13, 21, 34)]

    def __init__(self, admin: bool = True, rows: list[dict[str, Any]] | None = None) -> None:
        self.queries: list[dict[str, list[str]]] = []
        self.counts: list[dict[str, list[str]]] = []
        self.ROWS = rows or self.ROWS
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                if parts.path == "/users/me":
                    body = {"data": {"id": "u", "role": {"admin_access": admin}}}
                else:
                    counting = "aggregate[count]" in query  # a reader's ceiling, asked first
                    (recorder.counts if counting else recorder.queries).append(query)
                    rows = list(recorder.ROWS)
                    spec = json.loads(query["filter"][0]) if "filter" in query else {}
                    for clause in spec.get("_and", [spec]):
                        if "_gt" in clause.get("id", {}):
                            rows = [r for r in rows if r["id"] > clause["id"]["_gt"]]
                        if "_in" in clause.get("id", {}):
                            rows = [r for r in rows if r["id"] in clause["id"]["_in"]]
                    matching = len(rows)
                    rows.sort(key=lambda r: r[query.get("sort", ["id"])[0]])
                    limit = int(query.get("limit", ["100"])[0])
                    limit = len(rows) if limit == -1 else limit
                    start = int(query.get("offset", ["0"])[0]) + (int(query.get("page", ["1"])[0]) - 1) * limit
                    rows = rows[start:start + limit]
                    if query.get("fields") == ["id"]:
                        rows = [{"id": r["id"]} for r in rows]
                    body = {"data": [{"count": matching}] if counting else rows}
                payload = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_reader_pages_by_key_never_by_offset() -> None:
    recorder = Recorder()
    try:
        api = SourceApi(recorder.url, "t")
        pages = list(api.pages("things", "id", where={"name": {"_nnull": True}}, limit=3))
    finally:
        recorder.close()
    assert [[r["id"] for r in page] for page in pages] == [[2, 3, 5], [8, 13, 21], [34]]
    assert len(recorder.queries) == 3
    for query in recorder.queries:
        assert "offset" not in query and "page" not in query, query
        assert query["sort"] == ["id"] and query["limit"] == ["3"] and query["fields"] == ["*"]
    lasts = [json.loads(q["filter"][0]) for q in recorder.queries]
    assert lasts[0] == {"name": {"_nnull": True}}  # the roots' filter travels as the API's filter
    assert lasts[1] == {"_and": [{"name": {"_nnull": True}}, {"id": {"_gt": 5}}]}
    assert lasts[2] == {"_and": [{"name": {"_nnull": True}}, {"id": {"_gt": 21}}]}


def test_uuid_keys_which_cairncms_cannot_compare_are_read_by_key_lists_never_by_offset() -> None:
    """CairnCMS refuses ``_gt`` on uuid and string fields: the key column is listed once (streamed) and the rows
    of each page asked for by ``_in``."""
    import uuid

    rows = [{"id": str(uuid.UUID(int=i * 7919)), "name": f"thing {i}"} for i in range(1, 2000)]
    recorder = Recorder(rows=rows)
    try:
        pages = list(SourceApi(recorder.url, "t").pages("things", "id", limit=500, ordered=False))
    finally:
        recorder.close()
    assert [r["id"] for page in pages for r in page] == sorted(r["id"] for r in rows)
    assert [len(page) for page in pages] == [500, 500, 500, 499]
    listing, *lookups = recorder.queries
    assert listing["fields"] == ["id"] and listing["limit"] == ["-1"] and listing["sort"] == ["id"]
    for query in recorder.queries:
        assert "offset" not in query and "page" not in query, query
    assert all(len(json.loads(q["filter"][0])["id"]["_in"]) == int(q["limit"][0]) for q in lookups)
    # each lookup's URL stays far under Node's 16 KB request line (500 uuids would not)
    from urllib.parse import quote

    assert len(lookups) > len(pages) and all(len(quote(q["filter"][0])) < 8000 for q in lookups)


def test_a_token_that_is_not_an_admins_is_refused() -> None:
    recorder = Recorder(admin=False)
    try:
        with pytest.raises(RemoteRefused, match="not an administrator"):
            SourceApi(recorder.url, "t").check_admin()
    finally:
        recorder.close()


# --------------------------------------------------------------------------- real CairnCMS on both sides
@dataclass
class Live:
    source_env: Path
    source_url: str
    target: Path
    target_url: str
    reference: Path
    state: Path
    by_url: Path
    by_url_url: str

    def move(self, source: str, target: Path, *args: str) -> tuple[int, dict[str, Any], str]:
        env = {"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{self.state}"}
        result = CliRunner(env=env).invoke(cli, ["content", "move", "--from", source, "--to", str(target),
                                                 "--collection", "articles", "--filter", PUBLISHED, "--json", *args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        try:
            report = json.loads(result.output)
        except ValueError:
            report = {}
        return result.exit_code, report, result.output + (result.stderr if result.stderr_bytes is not None else "")

    def from_url(self, *args: str, token: str = TOKEN) -> tuple[int, dict[str, Any], str]:
        return self.move(self.source_url, self.target, "--from-token", token, *args)


@pytest.fixture(scope="module")
def live(cairncms: Platform, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Live]:
    base = tmp_path_factory.mktemp("content-api-source")
    source_url, target_url = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    source = build_sqlite_instance(FIXTURES / "sqlite", base / "src",
                                   extra_env={"HOST": "127.0.0.1", "PORT": source_url.rsplit(":", 1)[1],
                                              "PUBLIC_URL": source_url, "LOG_STYLE": "raw"})
    query(source, "UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'", t=TOKEN)
    target = populated_postgres_target("target", base, request, target_url, TOKEN)
    reference = populated_postgres_target("reference", base, request, f"http://127.0.0.1:{free_port()}", TOKEN)  # never booted
    by_url_url = f"http://127.0.0.1:{free_port()}"
    by_url = populated_postgres_target("by-url", base, request, by_url_url, TOKEN)  # written through its API, named by URL only
    servers = []
    try:
        for env, url in ((source, source_url), (target, target_url), (by_url, by_url_url)):
            (env.parent / "package.json").write_text('{"name": "content-api-source", "private": true}\n')
            servers.append(start_server(cairncms, env.parent, url, server_env(), base / f"{env.parent.name}.log"))
        yield Live(source, source_url, target, target_url, reference, base / "state" / "state.db", by_url, by_url_url)
    finally:
        for server in servers:
            stop_process(server)


def test_a_wrong_token_or_an_unreachable_url_fails_clearly_and_writes_nothing(live: Live) -> None:
    counts = {t: query(live.target, f"SELECT count(*) FROM {t}")[0][0] for t in MOVED}
    code, _, output = live.from_url(token="not-the-token")
    assert code == 2 and "refused the token" in output and "--from-token" in output, output
    code, _, output = live.move(f"http://127.0.0.1:{free_port()}", live.target, "--from-token", TOKEN)
    assert code == 3 and "did not answer" in output, output
    code, _, output = live.move(live.source_url, live.target)
    assert code == 2 and "--from-token" in output, output
    assert counts == {t: query(live.target, f"SELECT count(*) FROM {t}")[0][0] for t in MOVED}


def test_a_url_source_moves_what_its_env_moves_and_the_target_serves_it(live: Live) -> None:
    code, by_env, _ = live.move(str(live.source_env), live.reference)
    assert code == 0 and by_env["applied"], (by_env["plan"], by_env["refused"])
    code, planned, output = live.from_url("--dry-run")
    assert code == 1 and planned["plan"] == by_env["plan"], output  # the same plan as from the database
    code, by_url, output = live.from_url()
    assert code == 0 and by_url["applied"], output
    # only the published articles (and the rows the closure reaches by key) travelled, not every article
    published = query(live.source_env, "SELECT count(*) FROM articles WHERE status = 'published'")[0][0]
    assert by_url["source_api"]["rows_read"]["articles"] == published < query(live.source_env, "SELECT count(*) FROM articles")[0][0]
    assert by_url["plan"] == by_env["plan"] and by_url["files"] == by_env["files"] and by_url["users"] == by_env["users"]
    reference, moved = target_state(live.reference, live.state), target_state(live.target, live.state)
    for name in MOVED:
        assert moved[name] == reference[name], name
    # the running target serves the moved article and its image, the bytes the source holds
    headers = {"Authorization": f"Bearer {TOKEN}"}
    slug = query(live.source_env, "SELECT slug FROM articles WHERE status = 'published' AND cover_image IS NOT NULL "
                                  "ORDER BY id LIMIT 1")[0][0]
    article = requests.get(f"{live.target_url}/items/articles", headers=headers, timeout=30,
                           params={"filter": json.dumps({"slug": {"_eq": slug}}), "fields": "id,slug,cover_image"})
    assert article.status_code == 200, article.text
    [item] = article.json()["data"]
    name = query(live.source_env, "SELECT filename_disk FROM directus_files WHERE id = :i", i=item["cover_image"])[0][0]
    served = requests.get(f"{live.target_url}/assets/{item['cover_image']}", headers=headers, timeout=30)
    assert served.status_code == 200 and served.content == (FIXTURES / "sqlite" / "uploads" / name).read_bytes()


def test_a_second_run_from_the_url_changes_nothing(live: Live) -> None:
    counts = {t: query(live.target, f"SELECT count(*) FROM {t}")[0][0] for t in MOVED}
    code, report, output = live.from_url()
    assert code == 0 and not report["changes"], output
    assert all(c["created"] == c["updated"] == c["deleted"] == 0 for c in report["plan"].values())
    assert counts == {t: query(live.target, f"SELECT count(*) FROM {t}")[0][0] for t in MOVED}


def test_a_masked_move_from_a_url_checks_the_profile_against_the_sources_structure_and_needs_a_salt(
        live: Live) -> None:
    """The trial's ``--mask pii-basic`` from a URL was refused: the profile was checked against the collections read
    into the scratch copy only, which never hold ``directus_sessions``/``directus_activity`` (pii-basic names them).
    Now it is checked against every collection the source's API describes; and, the URL carrying no SECRET, it
    needs ``--mask-salt`` (the README's rule), refused before anything is read otherwise."""
    counts = {t: query(live.target, f"SELECT count(*) FROM {t}")[0][0] for t in MOVED}
    code, _, output = live.from_url("--mask", "pii-basic", "--dry-run")
    assert code == 2 and "--mask-salt" in output and "SECRET" in output, output
    code, report, output = live.from_url("--mask", "pii-basic", "--mask-salt", "pepper", "--dry-run")
    assert code in (0, 1), output
    assert report["transform"]["mask"] == {"profile": "pii-basic", "origin": "built-in", "salt": "given"}, report
    assert counts == {t: query(live.target, f"SELECT count(*) FROM {t}")[0][0] for t in MOVED}


def test_over_http_a_url_source_needs_a_token_its_api_accepts_as_an_admins(live: Live) -> None:
    """``POST /migrate/ops`` op content (what the admin module sends) with the sidecar's own instance as the
    target: the URL source is allowed only with a token the source's own API accepts as an administrator's
    (operations/confine.py, the same rule as promote's), and then the plan reads it through that API."""
    from cairn_migrate.service.app import HTTP_PATHS, create_app, get_state

    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(live.target), "CAIRN_MIGRATE_SCHEDULER": False,
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{live.state}", HTTP_PATHS: str(live.target.parent)})
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        params = {"from": live.source_url, "to": str(live.target), "collections": ["articles"],
                  "filter": {"status": {"_eq": "published"}}, "dry_run": True}
        for token in (None, "not-the-token"):
            answer = client.post("/migrate/ops", json={"op": "content", "params": {**params, "from_token": token}},
                                 headers=headers)
            assert answer.status_code == 403, answer.get_json()
            assert "admin token" in answer.get_json()["error"]["hint"]
        answer = client.post("/migrate/ops", json={"op": "content", "params": {**params, "from_token": TOKEN}},
                             headers=headers)
        assert answer.status_code == 200, answer.get_json()
        report = answer.get_json()["report"]
        assert report["source_api"]["url"] == live.source_url and report["dry_run"] and "articles" in report["plan"], report
    finally:
        get_state(app).close()


# --------------------------------------------------------------------------- the target by URL too (--via api)
def test_from_url_to_url_via_api_moves_what_the_env_moves_and_a_rerun_changes_nothing(live: Live) -> None:
    """Neither side named by a .env: the source read through its API, the target mirrored through its API before
    the walk and written through it.  The rows end as the reference target's (moved from the source's .env by
    its database), the target serves the article's image, a second run changes nothing, and a wrong target
    token fails before anything is written."""
    from cairn_migrate.content.api_source import normal_url

    def to_url(*args: str, token: str = TOKEN) -> tuple[int, dict[str, Any], str]:
        env = {"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{live.state}"}
        result = CliRunner(env=env).invoke(cli, ["content", "move", "--from", live.source_url, "--from-token", TOKEN,
                                                 "--to", live.by_url_url, "--to-token", token, "--via", "api",
                                                 "--collection", "articles", "--filter", PUBLISHED, "--json", *args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        try:
            report = json.loads(result.output)
        except ValueError:
            report = {}
        return result.exit_code, report, result.output

    counts = {t: query(live.by_url, f"SELECT count(*) FROM {t}")[0][0] for t in MOVED}
    code, _, output = to_url(token="not-the-token")
    assert code == 2 and "The target" in output and "refused the token" in output and "--to-token" in output, output
    assert counts == {t: query(live.by_url, f"SELECT count(*) FROM {t}")[0][0] for t in MOVED}
    code, _, output = live.move(live.source_url, Path(live.by_url_url), "--from-token", TOKEN)  # --via db
    assert code == 2 and "--via api" in output, output

    code, _, output = live.move(str(live.source_env), live.reference)  # the reference (done once: then no changes)
    assert code == 0, output
    code, by_url, output = to_url()
    assert code == 0 and by_url["applied"] and not by_url["partial"], output
    assert by_url["api"]["files_uploaded"] == by_url["files"]["copy"] > 0
    assert by_url["target_api"]["url"] == live.by_url_url and by_url["target_api"]["rows_read"]["articles"] > 0
    scope = __import__("hashlib").sha256(("api\n" + normal_url(live.by_url_url)).encode()).hexdigest()[:32]
    expected, moved = target_state(live.reference, live.state), target_state(live.by_url, live.state, scope=scope)
    for name in MOVED:
        assert moved[name] == expected[name], name
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for file_id, name in query(live.source_env, "SELECT f.id, f.filename_disk FROM directus_files f JOIN articles a "
                                                "ON a.cover_image = f.id WHERE a.status = 'published'"):
        served = requests.get(f"{live.by_url_url}/assets/{file_id}", headers=headers, timeout=30)
        assert served.status_code == 200 and served.content == (FIXTURES / "sqlite" / "uploads" / name).read_bytes()

    counts = {t: query(live.by_url, f"SELECT count(*) FROM {t}")[0][0] for t in MOVED}
    code, again, output = to_url()
    assert code == 0 and not again["changes"], output
    assert counts == {t: query(live.by_url, f"SELECT count(*) FROM {t}")[0][0] for t in MOVED}
