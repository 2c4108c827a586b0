"""Real running instances with the extension installed, and the sidecar beside each.

``live_instance`` is real CairnCMS 1.0.0-beta.4 (SQLite), the product we serve, built from its source
by ``scripts/cairncms build`` into the cache outside the repo.  ``directus_instance`` is Directus
9.22.4 from npm (``scripts/directus install``), the extension's second target; ``cms_instance`` runs a
test once on each.  One boot per platform per test session (the fixtures are session-scoped).  Under
``CI=true`` a missing build, Directus or chromium fails the tests; elsewhere they skip.
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


@dataclass(frozen=True)
class Platform:
    """A CMS the extension runs on: its name in the test summary and its ``scripts/<script>``
    (both scripts take ``bootstrap DIR PORT`` and ``start DIR``)."""

    name: str
    script: str

    def command(self, *args: object) -> list[str]:
        return [str(REPO / "scripts" / self.script), *(str(a) for a in args)]

    def missing(self) -> str | None:
        """Why this platform cannot run here, or ``None``."""
        if self.script == "directus":
            return None if DIRECTUS_BIN.exists() else f"{DIRECTUS_BIN} is missing; install it with: scripts/directus install"
        return None if cairncms_build_path() else "it is not built; build it with: scripts/cairncms build"


CAIRNCMS = Platform("CairnCMS 1.0.0-beta.4", "cairncms")
DIRECTUS = Platform("Directus 9.22.4", "directus")


def cairncms_build_path() -> Path | None:
    """The folder of the real CairnCMS build in the cache, or ``None`` when it is not built."""
    result = subprocess.run(CAIRNCMS.command("path"), capture_output=True, text=True, timeout=60)
    return Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``url`` answers 200 (the server ``proc`` started, writing to ``log``), or fail with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # the process group this fixture started, nothing else
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start_server(platform: Platform, folder: Path, url: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``<platform> start`` in ``folder`` (it reads ``folder/.env``), in its own process group;
    returns once ``url/server/ping`` answers (stopped again if it never does)."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(platform.command("start", folder), cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    try:
        wait_until_up(url + "/server/ping", 120, proc, log)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def server_env() -> dict[str, str]:
    """The environment for a CMS or sidecar process: ours without settings that would override the
    instance's ``.env`` (``DB_*``, ``STORAGE_*``) or point the sidecar elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_MIGRATE_", "DB_", "STORAGE_"))}
    env["NODE_ENV"] = "production"
    return env


@dataclass
class LiveInstance:
    """The running pair: the CMS (``platform``) at ``url``, the sidecar at ``sidecar_url``."""

    folder: Path
    url: str
    sidecar_url: str
    sidecar_port: int
    env: dict[str, str]
    logs: Path
    platform: Platform = CAIRNCMS
    server: subprocess.Popen[bytes] | None = None
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
        wait_until_up(self.sidecar_url + "/migrate/health", 30, self.sidecar, log)

    def stop_sidecar(self) -> None:
        stop_process(self.sidecar)
        self.sidecar = None

    @contextlib.contextmanager
    def sidecar_stopped(self) -> Iterator[None]:
        self.stop_sidecar()
        try:
            yield
        finally:
            self.start_sidecar()

    def start_server(self) -> None:
        self.server = start_server(self.platform, self.folder, self.url, self.env, self.logs / f"{self.platform.script}.log")

    def close(self) -> None:
        stop_process(self.server)
        self.stop_sidecar()


def _seed_users(db: Path) -> None:
    """A static token for the admin, and a non-admin editor with its own token.

    CairnCMS roles need a unique ``key`` (reference §1.3 directus_roles); Directus 9 has no such column.
    """
    role = str(uuid.uuid4())
    conn = sqlite3.connect(db)
    try:
        role_columns = {row[1] for row in conn.execute("PRAGMA table_info(directus_roles)")}
        conn.execute("UPDATE directus_users SET token = ? WHERE email = ?", (ADMIN_TOKEN, ADMIN_EMAIL))
        if "key" in role_columns:
            conn.execute("INSERT INTO directus_roles (id, name, key, admin_access, app_access) VALUES (?, 'Editor', 'editor', 0, 1)", (role,))
        else:
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


def _live(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveInstance]:
    """``platform`` on SQLite with ``install-extension`` applied, ``cairn-migrate serve`` running,
    the seeded users and the ``articles`` collection."""
    reason = platform.missing()
    if reason:
        server_missing(platform.name, reason)
    base = tmp_path_factory.mktemp(f"live-{platform.script}")
    folder, logs = base / "instance", base / "logs"
    logs.mkdir()
    port, sidecar_port = free_port(), free_port()
    env = server_env()
    env["CAIRN_MIGRATE_STATE_URL"] = f"sqlite:///{base / 'state' / 'state.db'}"
    _run(platform.command("bootstrap", folder, port), env)
    _seed_users(folder / "data.db")
    _run([str(CLI), "--env", str(folder / ".env"), "install-extension", "--sidecar-url", f"http://127.0.0.1:{sidecar_port}"], env)
    live = LiveInstance(folder=folder, url=f"http://127.0.0.1:{port}", sidecar_url=f"http://127.0.0.1:{sidecar_port}",
                        sidecar_port=sidecar_port, env=env, logs=logs, platform=platform)
    try:
        live.start_sidecar()
        live.start_server()
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
def live_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveInstance]:
    """Real CairnCMS 1.0.0-beta.4 on SQLite with ``install-extension`` applied, and ``cairn-migrate serve`` running."""
    yield from _live(CAIRNCMS, tmp_path_factory)


@pytest.fixture(scope="session")
def directus_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveInstance]:
    """Directus 9.22.4 on SQLite, set up exactly like ``live_instance`` (the extension's second target)."""
    yield from _live(DIRECTUS, tmp_path_factory)


#: ``cms_instance`` parameter → the session fixture it stands for.
PLATFORM_FIXTURES = {"cairncms": "live_instance", "directus": "directus_instance"}


@pytest.fixture(params=list(PLATFORM_FIXTURES))
def cms_instance(request: pytest.FixtureRequest) -> LiveInstance:
    """``live_instance`` (CairnCMS) and ``directus_instance``: a test using it runs once on each."""
    return request.getfixturevalue(PLATFORM_FIXTURES[request.param])


@pytest.fixture(scope="session")
def cairncms() -> Platform:
    """Real CairnCMS, for tests that start it on instances of their own (``start_server``)."""
    reason = CAIRNCMS.missing()
    if reason:
        server_missing(CAIRNCMS.name, reason)
    return CAIRNCMS


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
