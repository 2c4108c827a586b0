"""The clone over HTTP: export as a job, download, upload into another sidecar, import, verify."""

from __future__ import annotations

import io
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import make_empty_instance, make_instance
from instance_fixtures import FIXTURES, bearer

from cairn_migrate.service.app import create_app, get_state

TARGET_SECRET = "another-secret-for-the-target-instance-000"
#: The admin of the recorded PostgreSQL instance (tests/fixtures/postgres/seeded.sql).
TARGET_ADMIN_ID = "03956213-5a10-45ed-abac-310d0d76844f"


def wait(client: Any, location: str, headers: dict[str, str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(location, headers=headers).get_json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job at {location} did not finish")


def access_token(user_id: str, secret: str = TARGET_SECRET) -> str:
    """An access token as CairnCMS signs it for ``user_id``."""
    return jwt.encode({"id": user_id, "role": "x", "app_access": True, "admin_access": True, "iss": "cairncms",
                       "exp": int(time.time()) + 600}, secret, algorithm="HS256")


def sidecar(env: Path, tmp_path: Path) -> Any:
    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(env),
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'target-state' / 'state.db'}"})
    return app


@pytest.fixture
def target_app(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A sidecar on a running instance (its own admins, another SECRET) that the clone replaces."""
    monkeypatch.delenv("CAIRN_MIGRATE_STATE_URL", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))  # the default state folder, kept inside the test
    app = sidecar(make_instance("postgres", tmp_path / "target", request, extra_env={"SECRET": TARGET_SECRET}), tmp_path)
    yield app
    get_state(app).close()


def test_export_download_upload_import_verify(client: Any, cairn_instance: Any, admin_token: str, target_app: Any,
                                              tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "uploads", cairn_instance.folder / "uploads", dirs_exist_ok=True)
    headers = bearer(admin_token)
    started = client.post("/migrate/export", json={"passphrase": "a long passphrase"}, headers=headers)
    assert started.status_code == 202
    assert "a long passphrase" not in started.get_data(as_text=True)
    job = wait(client, started.headers["Location"], headers)
    assert job["state"] == "succeeded", job
    result = job["result"]
    assert result["files"] == 3 and result["rows"] > 700
    assert job["progress"]["items_done"] > 0
    assert "a long passphrase" not in str(job)
    listed = client.get("/migrate/bundles", headers=headers).get_json()["bundles"]
    assert [b["id"] for b in listed] == [result["bundle_id"]] and listed[0]["encrypted"]
    download = client.get(result["download"], headers=headers)
    assert download.status_code == 200
    archive = download.data
    download.close()
    assert len(archive) == result["size"]

    # The target sidecar authenticates against *its* instance: one of its admins, by an access token
    # signed with its SECRET; the source's admin token means nothing there (yet).
    target = target_app.test_client()
    assert target.get("/migrate/bundles", headers=headers).status_code == 401
    auth = bearer(access_token(TARGET_ADMIN_ID))
    upload = {"bundle": (io.BytesIO(archive), "clone.tar.gz.enc"), "dry_run": "true", "replace": "true",
              "passphrase": "a long passphrase"}
    plan = target.post("/migrate/import", data=upload, headers=auth, content_type="multipart/form-data")
    assert plan.status_code == 200, plan.get_json()
    assert plan.get_json()["plan"]["changes"] is True and plan.get_json()["applied"] is False
    # The type-drift report travels with the plan: the SQLite source's TEXT instants lose their storage class.
    drift = {(d["table"], d["column"], d["kind"]): d["values"] for d in plan.get_json()["plan"]["drift"]}
    assert drift[("directus_migrations", "timestamp", "storage_class")] == 66
    bundles = target.get("/migrate/bundles", headers=auth).get_json()["bundles"]
    assert len(bundles) == 1
    wrong = target.post("/migrate/import", json={"bundle": bundles[0]["id"], "replace": True,
                                                 "passphrase": "wrong passphrase!"}, headers=auth)
    failed = wait(target, wrong.headers["Location"], auth)
    assert failed["state"] == "failed" and "decrypt" in failed["error"]["message"]
    started = target.post("/migrate/import", json={"bundle": bundles[0]["id"], "replace": True,
                                                   "passphrase": "a long passphrase"}, headers=auth)
    assert started.status_code == 202
    # Polled from the runner: the import replaces the target's users (and so the poller's token) as it goes.
    job = get_state(target_app).runner.wait(started.get_json()["id"], timeout=120)
    assert job["state"] == "succeeded", job
    assert job["result"]["files"]["copied"] == 3
    # The target's users are now the source's: its former admin's access token is refused,
    # the source admin's static token (carried in directus_users) is let in.
    assert target.get("/migrate/bundles", headers=auth).status_code == 401
    auth = headers
    started = target.post("/migrate/verify", json={"bundle": bundles[0]["id"], "passphrase": "a long passphrase"}, headers=auth)
    job = wait(target, started.headers["Location"], auth)
    assert job["state"] == "succeeded" and job["result"]["ok"] is True


def test_sidecar_of_an_empty_database_lets_no_one_in(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """No users, no admins: an access token signed with SECRET alone is not enough."""
    env = make_empty_instance("postgres", tmp_path / "empty", request, extra_env={"SECRET": TARGET_SECRET})
    app = sidecar(env, tmp_path)
    try:
        response = app.test_client().get("/migrate/jobs", headers=bearer(access_token(TARGET_ADMIN_ID)))
        assert response.status_code == 401
        error = response.get_json()["error"]
        assert "no users yet" in error["message"] and "cairn-migrate import" in error["hint"]
    finally:
        get_state(app).close()


def test_unknown_bundle_is_404(client: Any, admin_token: str) -> None:
    response = client.get("/migrate/bundles/nope", headers=bearer(admin_token))
    assert response.status_code == 404
    assert response.get_json()["error"]["message"] == "There is no bundle 'nope'"


@pytest.mark.parametrize("pattern", ["*", "%3F" * 32, "[0-9a-f]*", "up*"])  # %3F: a "?" in the path
def test_bundle_id_is_not_a_pattern(app: Any, client: Any, admin_token: str, pattern: str) -> None:
    bundle = get_state(app).bundle_dir / f"{'a' * 32}.tar.gz"
    bundle.write_bytes(b"not really a bundle")
    (get_state(app).bundle_dir / "upload-0123456789ab.tar.gz").write_bytes(b"nor this")
    response = client.get(f"/migrate/bundles/{pattern}", headers=bearer(admin_token))
    assert response.status_code == 404, response.data[:100]
    response = client.get(f"/migrate/bundles/{'a' * 32}", headers=bearer(admin_token))
    assert response.data == b"not really a bundle"
    response.close()


def test_bundles_from_before_scoping_are_nobodys(app: Any, client: Any, admin_token: str) -> None:
    """A bundle written straight into the bundle folder (as earlier versions did) is in no instance's list."""
    (get_state(app).bundle_root / "0123456789abcdef.tar.gz").write_bytes(b"an old bundle")
    assert client.get("/migrate/bundles", headers=bearer(admin_token)).get_json() == {"bundles": []}
    assert client.get("/migrate/bundles/0123456789abcdef", headers=bearer(admin_token)).status_code == 404


def test_path_into_the_bundle_folders_is_refused(app: Any, client: Any, admin_token: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Server-side bundles are named by id only, so no instance can name another's by its path: not even when the
    sidecar's operator allows HTTP paths in a folder holding the state folders."""
    state = get_state(app)
    monkeypatch.setitem(state.config, "CAIRN_MIGRATE_HTTP_PATHS", str(tmp_path))
    own = state.bundle_dir / "0123.tar.gz"
    own.write_bytes(b"x")
    safety = Path(state.config["CAIRN_MIGRATE_STATE_URL"].removeprefix("sqlite:///")).parent / "safety-bundles"
    for path in (own, state.bundle_root / ("f" * 32) / "0123.tar.gz", state.bundle_root / "old.tar.gz",
                 safety / "before-replace-20260101T000000Z", state.bundle_root / ".." / "bundles" / "x.tar.gz"):
        for route in ("/migrate/import", "/migrate/verify"):
            response = client.post(route, json={"path": str(path)}, headers=bearer(admin_token))
            assert response.status_code == 422, (route, path, response.get_json())
            assert "'bundle'" in response.get_json()["error"]["hint"]
        response = client.post("/migrate/files/repair", json={"path": str(path)}, headers=bearer(admin_token))
        assert response.status_code == 422
    assert get_state(app).store.list() == []


def test_import_needs_a_bundle(client: Any, admin_token: str) -> None:
    response = client.post("/migrate/import", json={}, headers=bearer(admin_token))
    assert response.status_code == 422
    assert "Name the bundle" in response.get_json()["error"]["message"]


def test_import_with_replace_writes_the_safety_bundle_as_a_bundle_of_the_instance(
        tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The safety bundle of an HTTP import belongs to the instance: a bundle in its own folder, never a path the caller
    names nor a shared folder (issue 9)."""
    import jwt

    from cairn_migrate.operations.export import export_bundle
    from cairn_migrate.instance.instance import Instance

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))  # where the CLI's default safety bundles go
    secret = "a-secret-for-the-replaced-instance-0000000"
    env = make_instance("sqlite", tmp_path / "target", request, extra_env={"SECRET": secret})
    export_bundle(Instance.from_env_file(env, environ={}), tmp_path / "allowed" / "bundle")
    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(env),
                      "CAIRN_MIGRATE_HTTP_PATHS": str(tmp_path / "allowed"),
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state' / 'state.db'}"})
    request.addfinalizer(lambda: get_state(app).close())
    # A JWT (not a static token) of the instance's real admin, who is looked up: the instance's own users
    # table is replaced while the job runs, by a bundle of the same instance.
    with sqlite3.connect(env.parent / "data.db") as db:
        user, role = db.execute("SELECT u.id, u.role FROM directus_users u JOIN directus_roles r ON r.id = u.role"
                                " WHERE r.admin_access = 1 AND u.status = 'active' LIMIT 1").fetchone()
    token = jwt.encode({"id": user, "role": role, "app_access": True, "admin_access": True, "iss": "cairncms",
                        "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    client, headers = app.test_client(), bearer(token)
    bundle_dir = get_state(app).bundle_dir
    for asked in (str(tmp_path / "allowed" / "before-replace"), "../before-replace", "with.dot"):  # a name, not a path
        refused = client.post("/migrate/import", json={"path": str(tmp_path / "allowed" / "bundle"), "replace": True,
                                                       "safety_bundle": asked}, headers=headers)
        assert refused.status_code == 422, refused.get_json()
        assert refused.get_json()["error"]["details"]["safety_bundle"] == ["a bundle name (letters, digits, '-', '_'), "
                                                                          "not a path"]
    body = {"path": str(tmp_path / "allowed" / "bundle"), "replace": True}
    alone = client.post("/migrate/import", json={**body, "replace": False, "safety_bundle": "kept"}, headers=headers)
    assert alone.status_code == 422
    assert alone.get_json()["error"]["message"] == "'safety_bundle' applies only with 'replace'"
    started = client.post("/migrate/import", json={**body, "safety_bundle": "before-the-clone"}, headers=headers)
    assert started.status_code == 202, started.get_json()
    # Polled from the runner: while the users table is replaced, no token can be looked up.
    job = get_state(app).runner.wait(started.get_json()["id"], timeout=120)
    assert job["state"] == "succeeded", job
    written = bundle_dir / "before-the-clone.tar.gz"
    assert job["result"]["safety_bundle"] == str(written)
    assert job["result"]["safety_bundle_id"] == "before-the-clone"
    assert job["result"]["safety_bundle_download"] == "/migrate/bundles/before-the-clone"
    listed = client.get("/migrate/bundles", headers=headers).get_json()["bundles"]
    assert [(b["id"], b["encrypted"]) for b in listed] == [("before-the-clone", False)]
    download = client.get("/migrate/bundles/before-the-clone", headers=headers)
    assert download.status_code == 200 and download.data == written.read_bytes()
    download.close()
    again = client.post("/migrate/import", json={**body, "safety_bundle": "before-the-clone", "dry_run": True},
                        headers=headers)  # never overwritten
    assert again.status_code == 422
    assert again.get_json()["error"]["message"] == "There is already a bundle 'before-the-clone'"
    # Unnamed: before-replace-<job id>, in the instance's folder too; nothing in a shared folder.
    started = client.post("/migrate/import", json=body, headers=headers)
    job = get_state(app).runner.wait(started.get_json()["id"], timeout=120)
    assert job["state"] == "succeeded", job
    assert job["result"]["safety_bundle_id"] == f"before-replace-{job['id']}"
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["before-replace-" + job["id"] + ".tar.gz",
                                                            "before-the-clone.tar.gz"]
    assert not (tmp_path / "state" / "safety-bundles").exists() and not (tmp_path / "xdg").exists()
