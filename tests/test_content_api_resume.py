"""Resuming an interrupted ``content move --via api`` never creates an integer-keyed row a second time.

Real CairnCMS 1.0.0-beta.4 boots on the populated PostgreSQL target; the source is the recorded SQLite instance
with new comments on one article (integer keys the target renumbers).  Between the move and the CairnCMS stands a
**proxy that swallows answers**: it forwards a ``POST /items/article_comments`` to the real server (which creates
the rows) and then either never answers (the move's read timeout ends the wait, as an interrupt after the 15 s
grace or a kill would: a write sent, its answer never read) or answers 502 as a failing gateway would.  The
proxy is the only stand-in: CairnCMS cannot be made to lose its own answers.

- the re-run, after the source's comment was edited (so no column-by-column match can find the created row),
  finds the rows the unanswered request created (by the request's marker, the ``User-Agent`` CairnCMS writes
  into their ``directus_activity`` rows) and updates them instead of adding duplicates; a dry run first shows
  the same and records nothing;
- the same for a target given by URL (its activity is read through its API into the mirror);
- a 502 after the rows were created is not followed by a second ``POST`` of them;
- where the collection keeps no activity (``accountability`` NULL) the re-run cannot tell, and says which rows
  may be duplicated.
"""

from __future__ import annotations

import json
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
from conftest import FIXTURES, make_instance
from live_instance import Platform, free_port, server_env, start_server, stop_process

from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.testing import build_sqlite_instance

TOKEN = "content-resume-admin-token-0123456789"
ARTICLE = "343736c0-78a6-40dc-9988-5354d3c09f24"  # article-1, published; the target holds it (same uuid)


def query(env: Path, sql: str, **params: Any) -> list[Any]:
    with Database.open(Instance.from_env_file(env)) as db, db.engine.begin() as conn:
        result = conn.execute(sa.text(sql), params)
        return list(result.all()) if result.returns_rows else []


class Swallower:
    """A proxy in front of the real CairnCMS that SWALLOWS ANSWERS: a write whose path starts with ``swallow``
    is forwarded (the server creates its rows), then, per ``how``, never answered (``hold``: the connection
    stays open without a byte) or answered ``502`` (a gateway's failure).  Once each; the rest is forwarded."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.swallow: str | None = None
        self.how = "hold"
        self.swallowed: list[str] = []
        self.posts: list[str] = []
        lock, proxy = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = requests.request(self.command, proxy.upstream + self.path, data=body, headers=headers,
                                          timeout=120)
                with lock:
                    if self.command == "POST":
                        proxy.posts.append(self.path)
                    swallow = self.command != "GET" and proxy.swallow is not None and \
                        self.path.startswith(proxy.swallow)
                    if swallow:
                        proxy.swallow = None
                        proxy.swallowed.append(self.path)
                if swallow and proxy.how == "hold":  # the rows exist; the answer never comes
                    time.sleep(40)
                    self.close_connection = True
                    return
                status, content = answer.status_code, answer.content
                if swallow:  # the rows exist; the gateway says it failed
                    status, content = 502, b"<html>502 Bad Gateway</html>"
                self.send_response(status)
                for key, value in answer.headers.items():
                    if not swallow and key.lower() not in ("content-length", "transfer-encoding", "content-encoding",
                                                           "connection", "keep-alive"):  # one request a connection
                        self.send_header(key, value)
                head = self.command == "HEAD"  # an asset's size check: the server's own length, no body
                self.send_header("Content-Length", answer.headers.get("Content-Length", "0") if head else
                                 str(len(content)))
                self.end_headers()
                if not head:
                    self.wfile.write(content)

            do_GET = do_HEAD = do_POST = do_PATCH = do_DELETE = do_SEARCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Setup:
    source: Path
    target: Path
    url: str
    state: Path
    proxy: Swallower

    def move(self, *args: str, proxied: bool = False, to: str | None = None, **env: str) -> tuple[int, dict[str, Any]]:
        environ = {"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{self.state}", **env}
        extra = ["--to-url", self.proxy.url] if proxied else []
        result = CliRunner(env=environ).invoke(cli, [
            "content", "move", "--from", str(self.source), "--to", to or str(self.target), "--collection", "articles",
            "--via", "api", "--to-token", TOKEN, "--json", *extra, *args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, json.loads(result.output)


@pytest.fixture(scope="module")
def setup(cairncms: Platform, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("content-resume")
    source = build_sqlite_instance(FIXTURES / "sqlite", base / "src")
    url = f"http://127.0.0.1:{free_port()}"
    target = make_instance("postgres", base / "resume", request,
                           extra_env={"HOST": "127.0.0.1", "PORT": url.rsplit(":", 1)[1], "PUBLIC_URL": url,
                                      "LOG_STYLE": "raw"})
    # its own content renamed, so the source's article-1 and its comments are new rows there
    query(target, "UPDATE articles SET slug = 'pg-' || slug, title = 'PG ' || title")
    query(target, "UPDATE authors SET email = 'pg-' || email, name = 'PG ' || name")
    query(target, "UPDATE tags SET slug = 'pg-' || slug, name = 'PG ' || name")
    query(target, "UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'", t=TOKEN)
    (target.parent / "package.json").write_text('{"name": "content-resume-target", "private": true}\n')
    server = start_server(cairncms, target.parent, url, server_env(), base / "cairncms.log")
    proxy = Swallower(url)
    try:
        yield Setup(source, target, url, base / "state" / "state.db", proxy)
    finally:
        proxy.close()
        stop_process(server)


def _add_comments(env: Path, first: int, label: str, count: int = 3) -> None:
    for offset in range(count):
        query(env, "INSERT INTO article_comments (id, sort, author_name, text, approved, article) "
                   "VALUES (:i, :s, 'Resumer', :t, true, :a)", i=first + offset, s=offset,
              t=f"{label}-{offset}", a=ARTICLE)


def _on_target(setup: Setup, label: str) -> list[str]:
    return sorted(r[0] for r in query(setup.target, "SELECT text FROM article_comments WHERE text LIKE :l",
                                      l=f"{label}-%"))


#: the move: article-1 and what it reaches (its comments among them)
ONLY = json.dumps({"slug": {"_eq": "article-1"}})


def test_a_rerun_after_an_unanswered_post_updates_the_rows_it_created_instead_of_duplicating_them(
        setup: Setup) -> None:
    _add_comments(setup.source, 100, "lost")
    setup.proxy.swallow, setup.proxy.how = "/items/article_comments", "hold"
    code, report = setup.move("--filter", ONLY, proxied=True, CAIRN_MIGRATE_READ_TIMEOUT="15")
    assert code == 4 and report["partial"], (report.get("refused"), report.get("failed"), report.get("plan"))
    assert "did not answer POST /items/article_comments" in report["failed"][0]["message"], report["failed"]
    assert _on_target(setup, "lost") == ["lost-0", "lost-1", "lost-2"]  # created, though no answer said so
    # the operator edits a comment before resuming: no column-by-column match can find its row any more
    query(setup.source, "UPDATE article_comments SET text = 'lost-1 edited' WHERE id = 101")
    code, planned = setup.move("--filter", ONLY, "--dry-run")
    assert code == 1, planned
    # the edited comment's row is updated, none created (the previous code planned it as new: a duplicate)
    assert planned["plan"]["article_comments"]["created"] == 0 and planned["plan"]["article_comments"]["updated"] == 1
    sent = query(setup.source, "SELECT count(*) FROM article_comments WHERE article = :a", a=ARTICLE)[0][0]  # 1 + 3
    assert planned["resumed"] == {"article_comments": {"found": sent, "not_written": 0, "written_twice": [],
                                                       "uncertain": []}}, planned.get("resumed")
    code, report = setup.move("--filter", ONLY)
    assert code == 0 and report["applied"], report.get("failed")
    assert _on_target(setup, "lost") == ["lost-0", "lost-1 edited", "lost-2"]  # updated, not duplicated
    assert report["plan"]["article_comments"]["created"] == 0, report["plan"]
    assert report["resumed"]["article_comments"]["found"] == sent  # the dry run recorded nothing: found again here
    code, again = setup.move("--filter", ONLY)
    assert code == 0 and not again["changes"] and "resumed" not in again


def test_a_target_given_by_url_is_resumed_the_same_way(setup: Setup) -> None:
    """``--to URL``: the target is read through its API (a mirror); the re-run reads the marked requests' activity
    there too.  Both runs name the target by the proxy's URL (the ID map of a URL target is per its URL)."""
    _add_comments(setup.source, 500, "byurl")
    setup.proxy.swallow, setup.proxy.how = "/items/article_comments", "hold"
    code, report = setup.move("--filter", ONLY, to=setup.proxy.url, CAIRN_MIGRATE_READ_TIMEOUT="15")
    assert code == 4 and report["partial"], (report.get("refused"), report.get("failed"), report.get("plan"))
    assert _on_target(setup, "byurl") == ["byurl-0", "byurl-1", "byurl-2"], (report["plan"], report["failed"], report.get("matched_on_target"))
    query(setup.source, "UPDATE article_comments SET text = 'byurl-1 edited' WHERE id = 501")
    code, report = setup.move("--filter", ONLY, to=setup.proxy.url)
    assert code == 0 and report["applied"], report.get("failed")
    assert _on_target(setup, "byurl") == ["byurl-0", "byurl-1 edited", "byurl-2"]  # not a fourth row
    assert report["resumed"]["article_comments"]["found"] == 3, report.get("resumed")


def test_a_502_after_the_rows_were_created_does_not_post_them_again(setup: Setup) -> None:
    _add_comments(setup.source, 200, "gateway")
    setup.proxy.swallow, setup.proxy.how = "/items/article_comments", "502"
    setup.proxy.posts.clear()
    code, report = setup.move("--filter", ONLY, proxied=True)
    assert code == 0 and report["applied"], report.get("failed")
    assert setup.proxy.swallowed[-1].startswith("/items/article_comments") and report["api"]["retried"] >= 1
    assert sum(p.startswith("/items/article_comments") for p in setup.proxy.posts) == 1  # sent once, not again
    assert _on_target(setup, "gateway") == ["gateway-0", "gateway-1", "gateway-2"]
    code, again = setup.move("--filter", ONLY)
    assert code == 0 and not again["changes"]


def test_without_activity_on_the_target_the_rerun_says_which_rows_may_be_duplicated(setup: Setup) -> None:
    _add_comments(setup.source, 300, "untracked")
    query(setup.target, "UPDATE directus_collections SET accountability = NULL WHERE collection = 'article_comments'")
    cleared = requests.post(f"{setup.url}/utils/cache/clear", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert cleared.status_code in (200, 204), cleared.text
    try:
        setup.proxy.swallow, setup.proxy.how = "/items/article_comments", "hold"
        code, report = setup.move("--filter", ONLY, proxied=True, CAIRN_MIGRATE_READ_TIMEOUT="15")
        assert code == 4 and report["partial"], (report.get("refused"), report.get("failed"), report.get("plan"))
        query(setup.source, "UPDATE article_comments SET text = 'untracked-1 edited' WHERE id = 301")
        code, report = setup.move("--filter", ONLY)
        assert code == 0, report
        # it cannot tell: the edited row is created again (the unedited ones match column by column), and said so
        assert _on_target(setup, "untracked") == ["untracked-0", "untracked-1", "untracked-1 edited", "untracked-2"]
        assert report["resumed"] == {"article_comments": {"found": 0, "not_written": 0, "written_twice": [],
                                                          "uncertain": ["300", "301", "302"]}}, report.get("resumed")
        from cairn_migrate.cli.content import render_content

        assert "article_comments: an earlier run's unanswered writes: 0 rows found on the target, 0 not written" in \
            render_content(report) and "check for duplicates): source keys 300, 301, 302" in render_content(report)
        result = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{setup.state}"}).invoke(cli, [
            "content", "move", "--from", str(setup.source), "--to", str(setup.target), "--collection", "articles",
            "--via", "api", "--to-token", TOKEN, "--filter", ONLY, "--dry-run"])
        assert "may be on the target already" not in result.output  # said once, by the run that settled them
    finally:
        query(setup.target, "UPDATE directus_collections SET accountability = 'all' "
                            "WHERE collection = 'article_comments'")
        requests.post(f"{setup.url}/utils/cache/clear", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

