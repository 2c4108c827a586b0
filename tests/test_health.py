"""``GET /migrate/health`` is open, so it stays cheap and bounded: a cached answer, a short database check (issue 9).

Both against real servers: the sidecar is served over real HTTP on 127.0.0.1; the
database is the real PostgreSQL, or, for the slow case, a socket on 127.0.0.1
that accepts connections and never answers (a wedged database).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import make_instance
from werkzeug.serving import make_server

from cairn_migrate.bundle import import_marker
from cairn_migrate.service.app import create_app, get_state
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(app)`` → the base URL of ``app`` served over HTTP on 127.0.0.1 (threaded, like waitress)."""
    servers = []

    def start(app: Any) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server, thread in servers:
        server.shutdown()
        thread.join()


def health(base: str) -> tuple[float, dict[str, Any]]:
    """Seconds ``GET /migrate/health`` took, and its body (the client gives up after 15 s)."""
    started = time.monotonic()
    with urllib.request.urlopen(f"{base}/migrate/health", timeout=15) as response:
        assert response.status == 200
        body = json.loads(response.read())
    return time.monotonic() - started, body


@dataclass
class SilentServer:
    """A port on 127.0.0.1 that accepts every connection and never sends a byte (counting the connections)."""

    port: int = 0
    accepted: list[socket.socket] = field(default_factory=list)


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    server, stop = SilentServer(listener.getsockname()[1]), threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                server.accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server
    stop.set()
    thread.join()
    for conn in server.accepted:
        conn.close()
    listener.close()


def sidecar(env: Path, tmp_path: Path, **config: Any) -> Any:
    return create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(env), "CAIRN_MIGRATE_SCHEDULER": False,
                       "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state' / 'state.db'}", **config})


def test_the_answer_is_cached_for_a_few_seconds(tmp_path: Path, request: pytest.FixtureRequest, serve: Any) -> None:
    """Callers within the cache time cost no query; after it, health reads the database again."""
    env = make_instance("postgres", tmp_path / "pg", request)
    app = sidecar(env, tmp_path, CAIRN_MIGRATE_HEALTH_CACHE_SECONDS=2)
    request.addfinalizer(lambda: get_state(app).close())
    base = serve(app)
    _, body = health(base)
    answered = time.monotonic()
    assert body["instance"] == {"state": "complete", "step": None, "started_at": None, "fix": None}
    queries: list[str] = []
    sa.event.listen(get_state(app).engine(), "before_cursor_execute", lambda *args: queries.append(args[2]))
    # Another process starts an import into the instance (its own engine: not counted).
    with Database.open(Instance.from_env_file(env, environ={})) as db:
        import_marker.begin(db, "b" * 64)
        try:
            for _ in range(20):
                assert health(base)[1]["instance"]["state"] == "complete"  # the cached answer
            assert time.monotonic() - answered < 2, "the cached calls took longer than the cache time"
            assert queries == []
            time.sleep(max(0.0, answered + 2.1 - time.monotonic()))
            _, body = health(base)
            assert body["instance"]["state"] == "incomplete" and body["instance"]["step"] == "tables", body
            assert queries, "health did not read the database once the cache time was over"
        finally:
            import_marker.finish(db)


def test_a_silent_database_answers_unknown_within_the_bound(tmp_path: Path, silent: SilentServer, serve: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that never answers: health says ``unknown`` after 2 s, not after the 30 s connect timeout,
    and however many callers come, one connection attempt at a time."""
    monkeypatch.setenv("CAIRN_MIGRATE_CONNECT_TIMEOUT", "30")
    env = tmp_path / ".env"
    env.write_text(f"DB_CLIENT=pg\nDB_HOST=127.0.0.1\nDB_PORT={silent.port}\nDB_DATABASE=cms\nDB_USER=cms\n"
                   "DB_PASSWORD=pw\nKEY=health-key\nSECRET=health-secret-0123456789abcdef\n")
    app = sidecar(env, tmp_path, CAIRN_MIGRATE_HEALTH_CACHE_SECONDS=1)
    try:
        base = serve(app)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: health(base), range(4)))
        unknown = {"state": "unknown", "step": None, "started_at": None, "fix": None}
        for seconds, body in answers:
            assert body["status"] == "ok" and body["instance"] == unknown
            assert 1.5 < seconds < 4, seconds  # the 2 s bound: neither the connect timeout nor an instant refusal
        seconds, body = health(base)
        assert body["instance"] == unknown and seconds < 0.5, seconds  # cached
        time.sleep(1.1)
        seconds, body = health(base)  # the cache time is over; the check still hangs: no second wait
        assert body["instance"] == unknown and seconds < 0.5, seconds
        assert len(silent.accepted) == 1, "health opened more than one connection to the silent database"
        started = time.monotonic()
    finally:
        get_state(app).close()
    assert time.monotonic() - started < 5, "the check stuck connecting held up closing the sidecar"
