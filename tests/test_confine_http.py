"""Cross-instance confinement over HTTP (S1): an instance's admin is trusted for that instance only.

Over ``POST /migrate/ops`` (plans and jobs) and ``/migrate/syncs`` one side must be the sidecar's own
instance; the other only when it is listed in ``CAIRN_MIGRATE_PEERS`` (or the caller proves admin on it
with a token its API accepts: tests/test_content_api.py, against a running CairnCMS).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import FIXTURES

from cairn_migrate.service.app import HTTP_PATHS, PEERS, create_app, get_state
from cairn_migrate.testing import build_sqlite_instance

TOKEN = "admin-of-instance-a-token-0123456789"


def query(env: Path, sql: str, **params: Any) -> Any:
    engine = sa.create_engine(f"sqlite:///{env.parent / 'data.db'}")
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
            return result.all() if result.returns_rows else None
    finally:
        engine.dispose()


@pytest.fixture()
def three(tmp_path: Path) -> dict[str, Path]:
    """A (the sidecar's own instance), B and C (other instances whose .env files are in allowed folders)."""
    envs = {"a": build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "allowed" / "a"),
            "b": build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "allowed" / "b"),
            "c": build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "allowed" / "c")}
    for name, env in envs.items():
        env.write_text(re.sub(r"^KEY=.*$", f"KEY=key-of-{name}", env.read_text(), flags=re.M))
    query(envs["a"], "UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'", t=TOKEN)
    query(envs["c"], "DELETE FROM articles WHERE status = 'draft'")
    return envs


def _app(tmp_path: Path, three: dict[str, Path], peers: list[Path] | None = None) -> Any:
    return create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(three["a"]), "CAIRN_MIGRATE_SCHEDULER": False,
                       "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state' / 'state.db'}",
                       HTTP_PATHS: str(tmp_path / "allowed"), PEERS: ":".join(str(p) for p in peers or [])})


@pytest.fixture()
def client(tmp_path: Path, three: dict[str, Path]) -> Iterator[Any]:
    app = _app(tmp_path, three)
    try:
        yield app.test_client()
    finally:
        get_state(app).close()


HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def _content(source: Path, target: Path, **extra: Any) -> dict[str, Any]:
    return {"op": "content", "params": {"from": str(source), "to": str(target), "collections": ["articles"],
                                        "filter": {"status": {"_eq": "draft"}}, **extra}}


def test_a_move_between_two_other_instances_is_refused_plan_and_job(client: Any, three: dict[str, Path]) -> None:
    drafts = query(three["c"], "SELECT count(*) FROM articles")[0][0]
    for extra in ({"dry_run": True}, {"mode": "mirror", "max_delete": 100}):
        answer = client.post("/migrate/ops", json=_content(three["b"], three["c"], **extra), headers=HEADERS)
        assert answer.status_code == 403, answer.get_json()
        assert "must be this sidecar's own instance" in answer.get_json()["error"]["message"]
    assert query(three["c"], "SELECT count(*) FROM articles")[0][0] == drafts


def test_the_other_side_needs_a_peer_listing_or_a_token(client: Any, three: dict[str, Path]) -> None:
    for source, target in ((three["a"], three["b"]), (three["b"], three["a"])):
        answer = client.post("/migrate/ops", json=_content(source, target, dry_run=True), headers=HEADERS)
        assert answer.status_code == 403, answer.get_json()
        assert PEERS in answer.get_json()["error"]["hint"]
    # a token that is no admin's of B (B's API is not even running): not a proof
    answer = client.post("/migrate/ops", json=_content(three["a"], three["b"], dry_run=True, to_token="not-b-s",
                                                       to_url="http://127.0.0.1:9"), headers=HEADERS)
    assert answer.status_code == 403, answer.get_json()


def test_an_admin_of_another_api_at_to_url_does_not_open_a_env_target(client: Any, three: dict[str, Path]) -> None:
    """The caller names B by its .env and ``to_url`` an API of their own where their token is an admin's: the proof
    must be asked at B's own PUBLIC_URL, never at ``to_url``.  (The attacker's API is a tiny local HTTP server that
    answers /users/me as an admin: it stands for any server the caller controls, which is the point.)"""
    import http.server
    import threading

    class AdminEverywhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b'{"data": {"id": "x", "role": {"admin_access": true}}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AdminEverywhere)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        attacker = f"http://127.0.0.1:{server.server_address[1]}"
        drafts = query(three["b"], "SELECT count(*) FROM articles")[0][0]
        answer = client.post("/migrate/ops", json=_content(three["a"], three["b"], dry_run=True, to_token="mine",
                                                           to_url=attacker), headers=HEADERS)
        assert answer.status_code == 403, answer.get_json()
        assert query(three["b"], "SELECT count(*) FROM articles")[0][0] == drafts
    finally:
        server.shutdown()
        server.server_close()


def test_a_listed_peer_is_allowed_either_way(tmp_path: Path, three: dict[str, Path]) -> None:
    app = _app(tmp_path, three, peers=[three["b"]])
    try:
        client = app.test_client()
        for source, target in ((three["a"], three["b"]), (three["b"], three["a"])):
            answer = client.post("/migrate/ops", json=_content(source, target, dry_run=True), headers=HEADERS)
            assert answer.status_code == 200, answer.get_json()
        # B listed does not open C, nor B → C
        for source, target in ((three["a"], three["c"]), (three["b"], three["c"])):
            answer = client.post("/migrate/ops", json=_content(source, target, dry_run=True), headers=HEADERS)
            assert answer.status_code == 403, answer.get_json()
        answer = client.post("/migrate/ops", json=_content(three["b"], three["a"]), headers=HEADERS)
        assert answer.status_code == 202, answer.get_json()
        job = get_state(app).runner.wait(answer.get_json()["id"], timeout=120)
        assert job["state"] == "succeeded", job
    finally:
        get_state(app).close()


def test_promote_between_two_other_instances_is_refused(client: Any, three: dict[str, Path]) -> None:
    answer = client.post("/migrate/ops", json={"op": "promote", "params": {
        "from": str(three["b"]), "to": str(three["c"]), "dry_run": True}}, headers=HEADERS)
    assert answer.status_code == 403, answer.get_json()


def test_a_sync_profile_needs_its_peer_listed(tmp_path: Path, client: Any, three: dict[str, Path]) -> None:
    for source, target in ((three["b"], three["c"]), (three["a"], three["b"])):
        answer = client.post("/migrate/syncs", json={"name": "s", "source": str(source), "target": str(target),
                                                     "collections": ["articles"]}, headers=HEADERS)
        assert answer.status_code == 403, answer.get_json()
    app = _app(tmp_path, three, peers=[three["b"]])
    try:
        listed = app.test_client()
        answer = listed.post("/migrate/syncs", json={"name": "s", "source": str(three["a"]), "target": str(three["b"]),
                                                     "collections": ["articles"]}, headers=HEADERS)
        assert answer.status_code == 201, answer.get_json()
        answer = listed.patch("/migrate/syncs/s", json={"target": str(three["c"])}, headers=HEADERS)
        assert answer.status_code == 403, answer.get_json()
    finally:
        get_state(app).close()


def test_a_schedule_between_two_other_instances_is_refused(tmp_path: Path, three: dict[str, Path]) -> None:
    from cairn_migrate.errors import Forbidden
    from cairn_migrate.hooks.schedule import schedule_operation

    app = _app(tmp_path, three)
    try:
        with pytest.raises(Forbidden):
            schedule_operation(app, "content", "interval", params=_content(three["b"], three["c"])["params"], minutes=5)
    finally:
        get_state(app).close()
