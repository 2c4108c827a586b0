"""Fixtures: a real CairnCMS SQLite instance (seeded dump + .env) and the sidecar app on it.

Wire into ``tests/conftest.py`` with ``pytest_plugins = ["instance_fixtures"]``.
Test modules that need them before that can ``from instance_fixtures import ...``.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "sqlite"

ADMIN_EMAIL = "admin@example.com"
EDITOR_EMAIL = "editor@example.com"
ADMIN_ROLE = "7a2efe99-ccec-41bc-9ebc-85b505ac262d"
EDITOR_ROLE = "2c14453a-06c3-42c9-8a01-559d50ef843f"
ADMIN_ID = "fb86cb93-de4a-4347-8994-558bc2dc85ec"
EDITOR_ID = "3ed3b9b5-03d2-44d2-8854-c8b6551e8d4b"


@dataclass
class CairnSqliteInstance:
    """A restored CairnCMS SQLite instance in a temp folder."""

    folder: Path
    env_path: Path
    db_path: Path
    env_text: str

    def env_value(self, name: str) -> str:
        match = re.search(rf"^{re.escape(name)}=(.*)$", self.env_text, re.MULTILINE)
        assert match, name
        return match.group(1).strip()

    @property
    def secret(self) -> str:
        return self.env_value("SECRET")

    @property
    def key(self) -> str:
        return self.env_value("KEY")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        conn = sqlite3.connect(self.db_path)
        try:
            conn.execute(sql, params)
            conn.commit()
        finally:
            conn.close()

    def set_token(self, email: str, token: str | None) -> None:
        """Give a user a static token (``directus_users.token``)."""
        self.execute("UPDATE directus_users SET token = ? WHERE email = ?", (token, email))

    def set_status(self, email: str, status: str) -> None:
        self.execute("UPDATE directus_users SET status = ? WHERE email = ?", (status, email))

    def make_jwt(
        self,
        *,
        admin_access: Any = 1,
        app_access: Any = 1,
        role: str | None = ADMIN_ROLE,
        user_id: str | None = ADMIN_ID,
        secret: str | None = None,
        issuer: str | None = "cairncms",
        expires_in: int = 900,
        drop: tuple[str, ...] = (),
    ) -> str:
        """An access token as CairnCMS signs it (HS256, ``iss: cairncms``)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "id": user_id,
            "role": role,
            "app_access": app_access,
            "admin_access": admin_access,
            "iat": now - 5,
            "exp": now + expires_in,
        }
        if issuer is not None:
            claims["iss"] = issuer
        for name in drop:
            claims.pop(name, None)
        return jwt.encode(claims, secret or self.secret, algorithm="HS256")


def restore_sqlite_instance(folder: Path, dump: str = "seeded.sql") -> CairnSqliteInstance:
    """Restore a recorded dump into ``folder/data.db`` and write its ``.env``."""
    folder.mkdir(parents=True, exist_ok=True)
    db_path = folder / "data.db"
    conn = sqlite3.connect(db_path)
    try:
        conn.executescript((FIXTURES / dump).read_text())
        conn.commit()
    finally:
        conn.close()
    env_text = re.sub(
        r"^DB_FILENAME=.*$", f"DB_FILENAME={db_path}", (FIXTURES / "env").read_text(), flags=re.MULTILINE
    )
    env_path = folder / ".env"
    env_path.write_text(env_text)
    (folder / "uploads").mkdir(exist_ok=True)
    return CairnSqliteInstance(folder=folder, env_path=env_path, db_path=db_path, env_text=env_text)


@pytest.fixture
def cairn_instance(tmp_path: Path) -> CairnSqliteInstance:
    """The seeded CairnCMS SQLite instance (admin@example.com, editor@example.com)."""
    return restore_sqlite_instance(tmp_path / "instance")


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    """A SQLAlchemy URL for the sidecar's own state store (a temp SQLite file)."""
    return f"sqlite:///{tmp_path / 'state' / 'state.db'}"


@pytest.fixture
def admin_token(cairn_instance: CairnSqliteInstance) -> str:
    token = "admin-static-token-0123456789"
    cairn_instance.set_token(ADMIN_EMAIL, token)
    return token


@pytest.fixture
def editor_token(cairn_instance: CairnSqliteInstance) -> str:
    token = "editor-static-token-0123456789"
    cairn_instance.set_token(EDITOR_EMAIL, token)
    return token


@pytest.fixture
def app(cairn_instance: CairnSqliteInstance, state_url: str) -> Iterator[Any]:
    """The sidecar app on ``cairn_instance``, scheduler off; closed after the test."""
    from cairn_migrate.service.app import create_app, get_state

    app = create_app(
        {
            "TESTING": True,
            "CAIRN_MIGRATE_ENV": str(cairn_instance.env_path),
            "CAIRN_MIGRATE_STATE_URL": state_url,
            "CAIRN_MIGRATE_SCHEDULER": False,
            "CAIRN_MIGRATE_WORKERS": 2,
        }
    )
    yield app
    get_state(app).close()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
