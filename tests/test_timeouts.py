"""Every server call has a timeout (issue 9, item 4): a port that accepts and never answers is an error, not a hang.

The "server" is a real socket on 127.0.0.1 that accepts connections and never sends a byte: what a
wedged database, a firewall that drops after the handshake, or a load balancer with no backend does.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cairn_migrate.cli import cli
from cairn_migrate.instance.database import open_engine
from cairn_migrate.errors import ConfigError, InstanceUnreachable
from cairn_migrate.instance.instance import DatabaseConfig, LocationConfig
from cairn_migrate.instance.storage import open_location
from cairn_migrate.instance.timeouts import connect_timeout


@contextlib.contextmanager
def _listener(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A port on 127.0.0.1 whose every accepted connection goes to ``handle(conn, stop)`` in a thread of its own;
    the connections are closed and the threads told to stop when the block ends."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except OSError:
                continue
            accepted.append(conn)
            threading.Thread(target=handle, args=(conn, stop), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts every connection and never answers."""
    with _listener(lambda conn, stop: None) as port:
        yield port


@pytest.mark.parametrize("client", ["mysql", "pg"])
def test_database_connect_to_a_silent_server_fails_within_the_timeout(
        client: str, silent_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_MIGRATE_CONNECT_TIMEOUT", "2")
    env = tmp_path / ".env"
    env.write_text(f"DB_CLIENT={client}\nDB_HOST=127.0.0.1\nDB_PORT={silent_port}\nDB_DATABASE=cms\n"
                   "DB_USER=cms\nDB_PASSWORD=pw\nKEY=k\n")
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["--env", str(env), "inspect"])
    elapsed = time.monotonic() - started
    assert result.exit_code == 3, result.output
    assert 1.5 < elapsed < 6, elapsed  # the timeout, not a hang (nor an instant refusal)
    error, fix = result.output.strip().splitlines()
    assert error.startswith("Error: The database at ") and f"127.0.0.1:{silent_port}" in error
    assert "did not answer in time" in error
    assert fix.startswith("  fix: ") and "CAIRN_MIGRATE_CONNECT_TIMEOUT" in fix


def test_s3_silent_endpoint_fails_naming_endpoint_and_setting(silent_port: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 client's connect and read timeouts: the lean SigV4 client (``instance/s3_lean.py``) for a static key on
    a configured endpoint, which retries once, so the bound stays loose."""
    monkeypatch.setenv("CAIRN_MIGRATE_READ_TIMEOUT", "0.5")
    location = open_location(LocationConfig("media", "s3", {
        "bucket": "b", "key": "k", "secret": "s", "region": "us-east-1", "forcePathStyle": True,
        "endpoint": f"http://127.0.0.1:{silent_port}"}))
    started = time.monotonic()
    with pytest.raises(InstanceUnreachable) as info:
        location.check()
    assert time.monotonic() - started < 30
    assert f"http://127.0.0.1:{silent_port} is not reachable (TimeoutError)" in info.value.message
    assert "STORAGE_MEDIA_ENDPOINT" in info.value.hint and "CAIRN_MIGRATE_READ_TIMEOUT" in info.value.hint


def test_sqlite_busy_timeout_is_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write waits CAIRN_MIGRATE_SQLITE_BUSY_TIMEOUT for another process's lock, then fails."""
    path = tmp_path / "data.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x integer)")
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setenv("CAIRN_MIGRATE_SQLITE_BUSY_TIMEOUT", "1")
    config = DatabaseConfig("sqlite3", "sqlite", sa.engine.URL.create("sqlite", database=str(path)))
    engine = open_engine(config, check=False)
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError, match="database is locked"), engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    assert 0.9 < time.monotonic() - started < 5
    holder.execute("ROLLBACK")
    holder.close()
    engine.dispose()


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_bad_timeout_setting_is_a_config_error(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_MIGRATE_CONNECT_TIMEOUT", value)
    with pytest.raises(ConfigError, match="CAIRN_MIGRATE_CONNECT_TIMEOUT=.* is not a positive number of seconds"):
        connect_timeout()


def test_verify_live_ping_to_a_silent_instance_fails_within_the_connect_timeout(
        silent_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``verify --url`` against a listener that accepts and never answers: the ping is bounded by the
    connect timeout, not the read timeout (which is for asset bytes and other real work)."""
    from cairn_migrate.operations.verify import live_checks

    monkeypatch.setenv("CAIRN_MIGRATE_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("CAIRN_MIGRATE_READ_TIMEOUT", "30")
    manifest = {"load_order": [], "tables": {}}
    started = time.monotonic()
    with pytest.raises(InstanceUnreachable) as info:
        live_checks(f"http://127.0.0.1:{silent_port}", manifest)
    elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 6, elapsed  # the connect timeout, not the 30 s read timeout
    assert info.value.message == (f"The instance at http://127.0.0.1:{silent_port} did not answer "
                                  "GET /server/ping (ReadTimeout)")
    assert "CAIRN_MIGRATE_CONNECT_TIMEOUT" in info.value.hint


@pytest.fixture
def trickling_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose every answer is an HTTP status line sent one byte every 0.3 s: each read
    returns well within any read timeout, so only an overall deadline ends the request."""
    def trickle(conn: socket.socket, stop: threading.Event) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Padding: " + b"x" * 400:
            if stop.wait(0.3):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return

    with _listener(trickle) as port:
        yield port


def test_verify_url_and_a_sync_alert_are_cut_at_the_deadline_by_a_trickling_server(
        trickling_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``verify --url`` and a sync's failure webhook go through the bounded HTTP calls the content move uses:
    a server that answers one byte at a time (never idle long enough for a read timeout) is cut."""
    from cairn_migrate.instance.bounded_http import RemoteLimit
    from cairn_migrate.operations import sync as sync_module
    from cairn_migrate.operations.verify import live_checks

    monkeypatch.setenv("CAIRN_MIGRATE_CONNECT_TIMEOUT", "5")
    monkeypatch.setenv("CAIRN_MIGRATE_HTTP_DEADLINE", "2")
    url = f"http://127.0.0.1:{trickling_port}"
    started = time.monotonic()
    with pytest.raises(RemoteLimit) as info:
        live_checks(url, {"load_order": [], "tables": {}})
    assert time.monotonic() - started < 8  # the 2 s deadline, not 400 bytes × 0.3 s
    assert info.value.message.startswith(f"GET {url}/server/ping did not finish within 2 s")
    assert "CAIRN_MIGRATE_HTTP_DEADLINE" in info.value.hint
    started = time.monotonic()
    assert sync_module.send_alert(url + "/hook", {"steps": {}}) == {
        "url": url + "/hook", "error": "alert failed (too slow or too large an answer)"}
    assert time.monotonic() - started < 8


def test_freeze_proof_from_a_silent_instance_fails_within_the_connect_timeout(
        silent_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The freeze proof is a short signed answer, like the ping: ``CAIRN_MIGRATE_CONNECT_TIMEOUT`` bounds it."""
    from cairn_migrate.errors import FreezeNotEnforced
    from cairn_migrate.instance.instance import Instance
    from cairn_migrate.operations.freeze_proof import ask_hook
    from cairn_migrate.service.signature import config_path

    monkeypatch.setenv("CAIRN_MIGRATE_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("CAIRN_MIGRATE_READ_TIMEOUT", "30")
    env = tmp_path / ".env"
    env.write_text(f"DB_CLIENT=sqlite3\nDB_FILENAME={tmp_path / 'cms.db'}\nKEY=k\n")
    instance = Instance.from_env_file(env, environ={})
    config_path(instance).parent.mkdir(parents=True)
    config_path(instance).write_text('{"secret": "s3cret-shared-with-the-hook"}')  # what install-extension writes
    url = f"http://127.0.0.1:{silent_port}"
    started = time.monotonic()
    with pytest.raises(FreezeNotEnforced) as info:
        ask_hook(instance, "freeze-1", url)
    elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 6, elapsed  # the connect timeout, not a fixed 10 s nor the 30 s read timeout
    assert info.value.message == f"The instance did not answer at {url} (ReadTimeout)"
    assert "CAIRN_MIGRATE_CONNECT_TIMEOUT" in info.value.hint
