"""The installed extension inside a real running instance: each test runs on real CairnCMS and on
Directus 9.22.4 (both on SQLite; ``cms_instance`` in live_instance.py)."""

from __future__ import annotations

import time

from pathlib import Path

from live_instance import ADMIN_TOKEN, COLLECTION, EDITOR_TOKEN, LiveInstance

#: The hook caches the freeze answer this long (CACHE_MS in admin_module/api/hook.js), plus margin.
FREEZE_CACHE_S = 1.8


def test_health_through_the_instance(cms_instance: LiveInstance) -> None:
    response = cms_instance.request("GET", "/migrate/health", token=None)
    assert response.status_code == 200
    assert response.json()["service"] == "cairn-migrate"


def test_admin_token_passes(cms_instance: LiveInstance) -> None:
    response = cms_instance.request("GET", "/migrate/jobs")
    assert response.status_code == 200, response.text
    assert "jobs" in response.json()


def test_anonymous_and_non_admin_are_refused_by_the_extension(cms_instance: LiveInstance) -> None:
    anonymous = cms_instance.request("GET", "/migrate/jobs", token=None)
    assert anonymous.status_code == 401
    assert "admin" in anonymous.json()["errors"][0]["message"]
    editor = cms_instance.request("GET", "/migrate/jobs", token=EDITOR_TOKEN)
    assert editor.status_code == 403
    assert editor.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    # The extension's own answer, not the sidecar's: the Directus error shape.
    assert "ok" not in editor.json()


def test_sidecar_down_gives_502_and_the_instance_keeps_serving(cms_instance: LiveInstance) -> None:
    with cms_instance.sidecar_stopped():
        response = cms_instance.request("GET", "/migrate/jobs")
        assert response.status_code == 502
        message = response.json()["errors"][0]["message"]
        assert message == f"cairn-migrate sidecar is not reachable at {cms_instance.sidecar_url}"
        assert cms_instance.request("GET", f"/items/{COLLECTION}").status_code == 200
        started = time.monotonic()
        created = cms_instance.request("POST", f"/items/{COLLECTION}", json={"title": "while the sidecar is down"})
        assert created.status_code == 200, created.text  # the freeze check fails open
        assert time.monotonic() - started < 5


def _titles(live: LiveInstance) -> list[str]:
    return [row["title"] for row in live.request("GET", f"/items/{COLLECTION}", params={"limit": -1}).json()["data"]]


def test_write_during_a_freeze_gets_503_and_is_not_stored(cms_instance: LiveInstance) -> None:
    frozen = cms_instance.request("POST", "/migrate/freeze", json={"reason": "live test", "ttl_seconds": 120})
    assert frozen.status_code == 200 and frozen.json()["active"], frozen.text
    try:
        time.sleep(FREEZE_CACHE_S)
        response = cms_instance.request("POST", f"/items/{COLLECTION}", json={"title": "during the freeze"})
        assert response.status_code == 503, response.text
        assert "live test" in response.json()["errors"][0]["message"]
        upload = cms_instance.request("POST", "/files", files={"file": ("frozen.txt", b"no", "text/plain")})
        assert upload.status_code == 503, upload.text
        assert cms_instance.request("GET", f"/items/{COLLECTION}").status_code == 200  # reads still work
    finally:
        assert cms_instance.request("DELETE", "/migrate/freeze").status_code == 200
    assert "during the freeze" not in _titles(cms_instance)
    time.sleep(FREEZE_CACHE_S)
    after = cms_instance.request("POST", f"/items/{COLLECTION}", json={"title": "after the freeze"})
    assert after.status_code == 200, after.text


def test_an_upload_reaches_the_sidecar(cms_instance: LiveInstance) -> None:
    upload = cms_instance.request("POST", "/files", files={"file": ("hello.txt", b"hello sidecar", "text/plain")})
    assert upload.status_code == 200, upload.text
    file_id = upload.json()["data"]["id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = cms_instance.request("GET", "/migrate/events").json()["data"]
        uploads = [e for e in events if e["event"] == "files.upload" and file_id in e["keys"]]
        if uploads:
            assert uploads[0]["file"]["filename_download"] == "hello.txt"
            assert uploads[0]["file"]["filesize"] == len(b"hello sidecar")
            return
        time.sleep(0.2)
    raise AssertionError(f"no files.upload event for {file_id}: {events}")


def test_item_changes_reach_the_sidecar(cms_instance: LiveInstance) -> None:
    created = cms_instance.request("POST", f"/items/{COLLECTION}", json={"title": "noticed"})
    assert created.status_code == 200
    key = created.json()["data"]["id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = cms_instance.request("GET", "/migrate/events").json()["data"]
        if any(e["event"] == "items.create" and e["collection"] == COLLECTION and key in e["keys"] for e in events):
            return
        time.sleep(0.2)
    raise AssertionError("no items.create event")


def test_unsigned_events_are_refused_by_the_sidecar(cms_instance: LiveInstance) -> None:
    response = cms_instance.sidecar_request("POST", "/migrate/events", json={"event": "items.create"})
    assert response.status_code == 401


def test_json_body_and_download_stream_through_the_proxy(cms_instance: LiveInstance) -> None:
    started = cms_instance.request("POST", "/migrate/export", json={"freeze": False})
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = cms_instance.request("GET", f"/migrate/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    assert job["state"] == "succeeded", job
    download = cms_instance.request("GET", job["result"]["download"])
    direct = cms_instance.sidecar_request("GET", job["result"]["download"])
    assert download.status_code == 200 and download.content == direct.content
    assert download.headers["Content-Disposition"].startswith("attachment")


def test_verify_runs_live_checks_against_the_running_instance(cms_instance: LiveInstance, tmp_path: Path) -> None:
    """``verify --url``: ping, token, one asset's bytes and one item, on a real running instance."""
    from cairn_migrate.export import export_bundle
    from cairn_migrate.instance import Instance
    from cairn_migrate.verify import verify_bundle

    upload = cms_instance.request("POST", "/files", files={"file": ("asset.txt", b"bytes to compare", "text/plain")})
    assert upload.status_code == 200, upload.text
    created = cms_instance.request("POST", f"/items/{COLLECTION}", json={"title": "sample"})
    assert created.status_code == 200, created.text
    instance = Instance.from_env_file(cms_instance.folder / ".env")
    export_bundle(instance, tmp_path / "bundle")
    report = verify_bundle(instance, tmp_path / "bundle", url=cms_instance.url, token=ADMIN_TOKEN)
    checks = {check["check"]: check["ok"] for check in report["live"]}
    assert checks == {"ping": True, "users/me": True, "asset": True, "item": True}, report["live"]
    assert report["ok"], report["tables_failed"]
    login = verify_bundle(instance, tmp_path / "bundle", url=cms_instance.url, login=("admin@example.com", "wrong"))
    assert {c["check"]: c["ok"] for c in login["live"]}["login"] is False and not login["ok"]
    down = verify_bundle(instance, tmp_path / "bundle", url="http://127.0.0.1:9", token=ADMIN_TOKEN)
    assert down["live"] == [{"check": "ping", "ok": False, "detail": "no answer: ConnectionError"}] and not down["ok"]
