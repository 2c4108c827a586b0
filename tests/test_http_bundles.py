"""The clone over HTTP: export as a job, download, upload into another sidecar, import, verify."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_empty_instance
from instance_fixtures import FIXTURES, bearer

from cairn_migrate.app import create_app, get_state


def wait(client: Any, location: str, headers: dict[str, str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(location, headers=headers).get_json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job at {location} did not finish")


@pytest.fixture
def target_app(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    env = make_empty_instance("postgres", tmp_path / "target", request)
    env.write_text(env.read_text() + "SECRET=another-secret-for-the-target-instance-000\n")
    app = create_app({
        "TESTING": True,
        "CAIRN_MIGRATE_ENV": str(env),
        "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'target-state' / 'state.db'}",
    })
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

    # The target sidecar authenticates against *its* instance: the source's admin token
    # works there only after the clone copies directus_users. Use a JWT signed with the target's SECRET.
    import jwt

    token = jwt.encode({"id": "x", "role": "x", "app_access": True, "admin_access": True, "iss": "cairncms",
                        "exp": int(time.time()) + 600}, "another-secret-for-the-target-instance-000", algorithm="HS256")
    target = target_app.test_client()
    auth = bearer(token)
    upload = {"bundle": (io.BytesIO(archive), "clone.tar.gz.enc"), "dry_run": "true", "passphrase": "a long passphrase"}
    plan = target.post("/migrate/import", data=upload, headers=auth, content_type="multipart/form-data")
    assert plan.status_code == 200, plan.get_json()
    assert plan.get_json()["plan"]["changes"] is True and plan.get_json()["applied"] is False
    # The type-drift report travels with the plan: the SQLite source's TEXT instants lose their storage class.
    drift = {(d["table"], d["column"], d["kind"]): d["values"] for d in plan.get_json()["plan"]["drift"]}
    assert drift[("directus_migrations", "timestamp", "storage_class")] == 66
    bundles = target.get("/migrate/bundles", headers=auth).get_json()["bundles"]
    assert len(bundles) == 1
    wrong = target.post("/migrate/import", json={"bundle": bundles[0]["id"], "passphrase": "wrong passphrase!"}, headers=auth)
    failed = wait(target, wrong.headers["Location"], auth)
    assert failed["state"] == "failed" and "decrypt" in failed["error"]["message"]
    started = target.post("/migrate/import", json={"bundle": bundles[0]["id"], "passphrase": "a long passphrase"}, headers=auth)
    assert started.status_code == 202
    job = wait(target, started.headers["Location"], auth)
    assert job["state"] == "succeeded", job
    assert job["result"]["files"]["copied"] == 3
    started = target.post("/migrate/verify", json={"bundle": bundles[0]["id"], "passphrase": "a long passphrase"}, headers=auth)
    job = wait(target, started.headers["Location"], auth)
    assert job["state"] == "succeeded" and job["result"]["ok"] is True


def test_unknown_bundle_is_404(client: Any, admin_token: str) -> None:
    response = client.get("/migrate/bundles/nope", headers=bearer(admin_token))
    assert response.status_code == 404
    assert response.get_json()["error"]["message"] == "There is no bundle 'nope'"


def test_import_needs_a_bundle(client: Any, admin_token: str) -> None:
    response = client.post("/migrate/import", json={}, headers=bearer(admin_token))
    assert response.status_code == 422
    assert "Name the bundle" in response.get_json()["error"]["message"]
