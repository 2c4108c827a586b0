"""A real Directus 9.22.4 instance (SQLite) with the extension installed, and the sidecar beside it.

One boot per test session (``live_instance`` is session-scoped).  Directus comes
from ``scripts/directus install`` (npm, into the cache outside the repo); CairnCMS is not
on the registries, and the extension is written to load on both.  Under
``CI=true`` a missing Directus or chromium fails the tests; elsewhere they skip.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from servers import CACHE, server_missing

REPO = Path(__file__).resolve().parent.parent
DIRECTUS_BIN = CACHE / "directus-9.22.4" / "node_modules" / ".bin" / "directus"
CHROMIUM = os.environ.get("CAIRN_TEST_CHROMIUM", "/usr/bin/chromium")
CLI = Path(sys.executable).parent / "cairn-migrate"
ADMIN_TOKEN = "live-admin-static-token-0123456789"
EDITOR_TOKEN = "live-editor-static-token-0123456789"
ADMIN_EMAIL, ADMIN_PASSWORD = "admin@example.com", "admin-password"
COLLECTION = "articles"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # the process group this fixture started, nothing else
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class LiveInstance:
    """The running pair: Directus at ``url``, the sidecar at ``sidecar_url``."""

    folder: Path
    url: str
    sidecar_url: str
    sidecar_port: int
    env: dict[str, str]
    logs: Path
    directus: subprocess.Popen[bytes] | None = None
    sidecar: subprocess.Popen[bytes] | None = None
    _session: requests.Session = field(default_factory=requests.Session)

    def request(self, method: str, path: str, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        kwargs.setdefault("timeout", 30)
        return self._session.request(method, self.url + path, headers=headers, **kwargs)

    def sidecar_request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **(kwargs.pop("headers", {}) or {})}
        return requests.request(method, self.sidecar_url + path, headers=headers, timeout=30, **kwargs)

    def start_sidecar(self) -> None:
        log = self.logs / "sidecar.log"
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.sidecar = subprocess.Popen(
                [str(CLI), "--env", str(self.folder / ".env"), "serve", "--host", "127.0.0.1", "--port", str(self.sidecar_port)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )
        _wait(self.sidecar_url + "/migrate/health", 30, self.sidecar, log)

    def stop_sidecar(self) -> None:
        _stop(self.sidecar)
        self.sidecar = None

    @contextlib.contextmanager
    def sidecar_stopped(self) -> Iterator[None]:
        self.stop_sidecar()
        try:
            yield
        finally:
            self.start_sidecar()

    def start_directus(self) -> None:
        log = self.logs / "directus.log"
        with log.open("ab") as out:
            self.directus = subprocess.Popen(
                [str(DIRECTUS_BIN), "start"], cwd=self.folder, stdout=out, stderr=subprocess.STDOUT,
                env=self.env, start_new_session=True,
            )
        _wait(self.url + "/server/ping", 90, self.directus, log)

    def close(self) -> None:
        _stop(self.directus)
        self.stop_sidecar()


def _seed_users(db: Path) -> None:
    """A static token for the admin, and a non-admin editor with its own token."""
    role = str(uuid.uuid4())
    conn = sqlite3.connect(db)
    try:
        conn.execute("UPDATE directus_users SET token = ? WHERE email = ?", (ADMIN_TOKEN, ADMIN_EMAIL))
        conn.execute("INSERT INTO directus_roles (id, name, admin_access, app_access) VALUES (?, 'Editor', 0, 1)", (role,))
        conn.execute(
            "INSERT INTO directus_users (id, email, status, role, token) VALUES (?, 'editor@example.com', 'active', ?, ?)",
            (str(uuid.uuid4()), role, EDITOR_TOKEN),
        )
        conn.commit()
    finally:
        conn.close()


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def live_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveInstance]:
    """Directus 9.22.4 on SQLite with ``install-extension`` applied, and ``cairn-migrate serve`` running."""
    if not DIRECTUS_BIN.exists():
        server_missing("Directus 9.22.4", f"{DIRECTUS_BIN} is missing; install it with: scripts/directus install")
    base = tmp_path_factory.mktemp("live")
    folder, logs = base / "instance", base / "logs"
    logs.mkdir()
    port, sidecar_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_MIGRATE_", "DB_", "STORAGE_"))}
    env["CAIRN_MIGRATE_STATE_URL"] = f"sqlite:///{base / 'state' / 'state.db'}"
    env["NODE_ENV"] = "production"
    _run([str(REPO / "scripts" / "directus"), "bootstrap", str(folder), str(port)], env)
    _seed_users(folder / "data.db")
    _run([str(CLI), "--env", str(folder / ".env"), "install-extension", "--sidecar-url", f"http://127.0.0.1:{sidecar_port}"], env)
    live = LiveInstance(folder=folder, url=f"http://127.0.0.1:{port}", sidecar_url=f"http://127.0.0.1:{sidecar_port}",
                        sidecar_port=sidecar_port, env=env, logs=logs)
    try:
        live.start_sidecar()
        live.start_directus()
        created = live.request("POST", "/collections", json={
            "collection": COLLECTION, "meta": {}, "schema": {},
            "fields": [
                {"field": "id", "type": "integer", "meta": {"hidden": True}, "schema": {"is_primary_key": True, "has_auto_increment": True}},
                {"field": "title", "type": "string", "meta": {}, "schema": {}},
            ],
        })
        assert created.status_code == 200, created.text
        yield live
    finally:
        live.close()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium (``scripts/directus install``); Playwright never downloads a browser here."""
    if not Path(CHROMIUM).exists():
        server_missing("chromium", f"{CHROMIUM} is missing; install it with: scripts/directus install")
    try:
        import playwright  # noqa: F401
    except ImportError:
        server_missing("playwright", "the Python package is missing; install it with: scripts/directus install")
    return CHROMIUM
