"""A hostile (or broken) instance's API cannot exhaust the sidecar's host: deadlines, size ceilings, paging caps.

The remote here is a **small hostile HTTP server started in the test**: it stands in for a malicious instance,
which a real CairnCMS cannot be made into (its API keeps to its own contract).  It answers just enough of
CairnCMS's API (``/users/me`` as an admin, ``/fields``, ``/relations``, ``/schema/snapshot``, the
``aggregate[count]`` of ``articles``) for ``content move --from URL`` to start reading, then misbehaves in one
way per test: trickling one byte at a time (which a read timeout never catches), an endless JSON answer, keyset
pages that repeat, hold more rows than asked for, or never end, a key lookup answering other rows, an asset that
never ends.  Each case ran forever (or until memory ran out) before: the moves run as real ``cairn-migrate``
processes with a time limit, and must stop with exit 3 and an error naming the URL, the limit and the setting.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import FIXTURES
from live_instance import CLI, free_port

from cairn_migrate.testing import build_sqlite_instance

TOKEN = "hostile-remote-token-0123456789"
FIELDS = [
    {"collection": "articles", "field": "id", "type": "integer",
     "schema": {"is_primary_key": True, "has_auto_increment": True}, "meta": None},
    {"collection": "articles", "field": "title", "type": "string", "schema": {"is_primary_key": False}, "meta": None},
    {"collection": "notes", "field": "id", "type": "uuid", "schema": {"is_primary_key": True}, "meta": None},
]


class Hostile:
    """The hostile server: ``mode`` says how ``/items/articles`` (or ``/fields``, or ``/items/notes``) misbehaves."""

    def __init__(self) -> None:
        self.mode = "honest"
        self.requests: list[str] = []
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, data: Any) -> None:
                body = json.dumps({"data": data}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _endless(self, head: bytes, item: bytes, pause: float = 0.0) -> None:
                """A close-delimited answer that never ends (no Content-Length)."""
                self.close_connection = True
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    self.wfile.write(head)
                    while True:
                        self.wfile.write(item)
                        if pause:
                            self.wfile.flush()
                            time.sleep(pause)
                except OSError:
                    return  # the client hung up: what the test wants

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                hostile.requests.append(self.path)
                mode = hostile.mode
                if parts.path == "/users/me":
                    if mode == "trickle-headers":  # the status line itself, one byte at a time
                        self.close_connection = True
                        try:
                            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100000:
                                self.wfile.write(bytes([byte]))
                                self.wfile.flush()
                                time.sleep(0.2)
                        except OSError:
                            pass
                        return
                    return self._json({"id": "admin", "role": {"admin_access": True}})
                if parts.path == "/fields":
                    if mode == "trickle-body":  # a JSON answer, one byte every 0.2 s: each read returns in time
                        return self._endless(b'{"data": [', b" ", pause=0.2)
                    if mode == "endless-json":
                        return self._endless(b'{"data": [', b'{"collection": "x", "field": "y"},' * 100)
                    return self._json(FIELDS)
                if parts.path == "/relations":
                    return self._json([])
                if parts.path == "/schema/snapshot":
                    return self._json({"version": 1, "directus": "9.22.4", "collections": [], "fields": [],
                                       "relations": []})
                if parts.path in ("/items/articles", "/items/notes") and "aggregate[count]" in query:
                    return self._json([{"count": 3}])
                if parts.path == "/items/notes":
                    lookup = "_in" in query.get("filter", "")
                    if mode == "endless-keys" and not lookup:  # a key list that never ends
                        return self._endless(b'{"data": [', b'{"id": "00000000-0000-4000-8000-000000000001"},')
                    if mode == "stray-lookup" and lookup:  # a lookup answered with rows it did not ask for
                        return self._json([{"id": "99999999-0000-4000-8000-000000000000"}])
                    return self._json([{"id": "00000000-0000-4000-8000-000000000001"}])
                if parts.path == "/items/articles":
                    limit = int(query.get("limit", "500"))
                    after = json.loads(query["filter"])["id"]["_gt"] if "filter" in query else 0
                    if mode == "same-page":  # the filter ignored: the first page again and again
                        after = 0
                    size = limit + 1 if mode == "over-limit" else limit
                    if mode == "honest":
                        size = max(0, min(limit, 3 - after))
                    return self._json([{"id": after + i + 1, "title": f"row {after + i + 1}"} for i in range(size)])
                if parts.path.startswith("/assets/"):
                    return self._endless(b"", b"\0" * 65536)
                self.send_error(404)

            def do_HEAD(self) -> None:  # noqa: N802
                self.send_response(200)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sqlite_instance(FIXTURES / "sqlite", tmp_path_factory.mktemp("hostile-target") / "dst")


def _move(hostile: Hostile, target: Path, tmp_path: Path, collection: str = "articles",
          **env: str) -> tuple[int, str, float]:
    """``content move --from <hostile URL>`` as a real process; a run that does not end in 60 s fails the test."""
    environ = {**os.environ, "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
               "CAIRN_MIGRATE_READ_TIMEOUT": "30", **env}
    started = time.monotonic()
    try:
        done = subprocess.run([str(CLI), "content", "move", "--from", hostile.url, "--from-token", TOKEN, "--to",
                               str(target), "--collection", collection, "--dry-run"],
                              capture_output=True, text=True, env=environ, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the move did not stop within 60 s: the hostile remote held it")
    return done.returncode, done.stderr, time.monotonic() - started


def test_the_honest_fake_is_read_to_the_end(hostile: Hostile, target: Path, tmp_path: Path) -> None:
    """The control: the fake answers as CairnCMS does, and the move reads its three rows (and plans them)."""
    hostile.mode = "honest"
    code, err, _ = _move(hostile, target, tmp_path)
    assert code in (1, 2), err  # planned (or refused for structure): either way the reading ended
    assert "stopped" not in err, err


@pytest.mark.parametrize("mode", ["trickle-body", "trickle-headers"])
def test_a_trickling_answer_is_cut_at_the_deadline_though_each_read_is_in_time(
        hostile: Hostile, target: Path, tmp_path: Path, mode: str) -> None:
    hostile.mode = mode
    code, err, took = _move(hostile, target, tmp_path, CAIRN_MIGRATE_HTTP_DEADLINE="3")
    assert code == 3, err
    assert f"{hostile.url}/" in err and "did not finish within 3 s" in err, err
    assert "CAIRN_MIGRATE_HTTP_DEADLINE" in err, err
    print(f"{mode}: stopped after {took:.1f} s (deadline 3 s, read timeout 30 s)")
    assert took < 20


def test_an_endless_json_answer_stops_at_the_size_ceiling(hostile: Hostile, target: Path, tmp_path: Path) -> None:
    hostile.mode = "endless-json"
    code, err, took = _move(hostile, target, tmp_path, CAIRN_MIGRATE_MAX_RESPONSE_MB="2")
    assert code == 3, err
    assert f"GET {hostile.url}/fields answered more than {2 * 1048576} bytes" in err, err
    assert "CAIRN_MIGRATE_MAX_RESPONSE_MB" in err, err
    print(f"endless JSON: stopped after {took:.1f} s at 2 MB")


@pytest.mark.parametrize(("mode", "collection", "message"), [
    ("same-page", "articles", "rows at or before the last key read (500) to filter[id][_gt]: keyset paging would "
                              "never end"),
    ("over-limit", "articles", "501 rows to limit=500"),
    ("endless-rows", "articles", "more rows than its own count allows (503)"),
    ("endless-keys", "notes", "a key list longer than its own count allows (503)"),
    ("stray-lookup", "notes", "rows it was not asked for"),
])
def test_paging_that_makes_no_progress_or_never_ends_is_stopped(
        hostile: Hostile, target: Path, tmp_path: Path, mode: str, collection: str, message: str) -> None:
    hostile.mode = mode
    code, err, took = _move(hostile, target, tmp_path, collection)
    assert code == 3, err
    assert f"The source {hostile.url} answered GET /items/{collection} with {message}" in err, err
    print(f"{mode}: stopped after {took:.1f} s, {len(hostile.requests)} requests so far")


def test_an_asset_without_a_length_stops_at_the_ceiling(hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file's bytes served without ``Content-Length`` and without end (the source's ``/assets/<id>``)."""
    from cairn_migrate.content.api_source import ApiFiles, SourceApi
    from cairn_migrate.instance.bounded_http import RemoteLimit

    monkeypatch.setenv("CAIRN_MIGRATE_MAX_RESPONSE_MB", "3")
    files = ApiFiles(SourceApi(hostile.url, TOKEN), "local", {("local", "f.bin"): "abc"})
    outcome: list[Any] = []

    def digest() -> None:
        try:
            outcome.append(files.sha256("f.bin"))
        except Exception as exc:  # noqa: BLE001 - the outcome is asserted below
            outcome.append(exc)

    worker = threading.Thread(target=digest, daemon=True)
    worker.start()
    worker.join(60)
    assert outcome, "reading the endless asset did not stop within 60 s"
    assert isinstance(outcome[0], RemoteLimit) and f"{hostile.url}/assets/abc" in str(outcome[0]), outcome
    assert str(3 * 1048576) in str(outcome[0])


def test_the_target_api_client_and_the_token_check_keep_the_deadline(
        hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target's side: the write client (``--via api``) and the token check before the plan."""
    from cairn_migrate.content.api_client import ApiClient
    from cairn_migrate.instance.bounded_http import RemoteLimit
    from cairn_migrate.operations.target_api import check_token

    monkeypatch.setenv("CAIRN_MIGRATE_HTTP_DEADLINE", "2")
    monkeypatch.setenv("CAIRN_MIGRATE_READ_TIMEOUT", "30")
    hostile.mode = "trickle-headers"
    for call in (lambda: check_token(hostile.url, TOKEN),
                 lambda: ApiClient(hostile.url, TOKEN, retries=0).request("GET", "/users/me")):
        outcome, seconds = _bounded(call)
        assert isinstance(outcome, RemoteLimit) and "did not finish within 2 s" in str(outcome), outcome
        assert seconds < 10


def _bounded(call: Any, limit: float = 40.0) -> tuple[Any, float]:
    """``call()`` in a thread: what it returned or raised, and the seconds it took (it must end within ``limit``)."""
    outcome: list[Any] = []
    started = time.monotonic()

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # noqa: BLE001 - the outcome is asserted by the caller
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    assert outcome, f"the call did not stop within {limit:g} s"
    return outcome[0], time.monotonic() - started


def test_the_confinement_check_and_promote_keep_the_deadline(hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTP the caller names the URL whose admin the confinement asks (``confine.is_admin``) and a promote's
    source: a server trickling its status line would hold a sidecar worker for as long as it liked, each
    read in time.  The check answers "not proven" and promote stops naming the deadline, within seconds."""
    from cairn_migrate.instance.bounded_http import RemoteLimit
    from cairn_migrate.operations.confine import is_admin
    from cairn_migrate.operations.promote import Remote

    monkeypatch.setenv("CAIRN_MIGRATE_HTTP_DEADLINE", "2")
    monkeypatch.setenv("CAIRN_MIGRATE_READ_TIMEOUT", "30")
    hostile.mode = "trickle-headers"
    outcome, seconds = _bounded(lambda: is_admin(hostile.url, TOKEN))
    assert outcome is False and seconds < 10, (outcome, seconds)
    outcome, seconds = _bounded(lambda: Remote(hostile.url, TOKEN, "source").call("GET", "/users/me"))
    assert isinstance(outcome, RemoteLimit) and "did not finish within 2 s" in str(outcome), outcome
    assert seconds < 10
    hostile.mode = "honest"
    assert is_admin(hostile.url, TOKEN) is True  # an honest admin answer is still proof
