"""The installed extension inside a real running instance: each test runs on real CairnCMS and on
Directus 9.22.4 (both on SQLite; ``cms_instance`` in live_instance.py)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time

from pathlib import Path
from typing import Any

import pytest
import requests
from live_instance import ADMIN_TOKEN, CLI, COLLECTION, EDITOR_TOKEN, LiveInstance, free_port

from cairn_migrate.errors import InstanceUnreachable

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
        error = response.json()["errors"][0]
        assert error["message"] == f"cairn-migrate sidecar is not reachable at {cms_instance.sidecar_url}"
        # Run as written, the command starts the sidecar where the extension looks for it (not serve's 8765).
        start = f"cairn-migrate --env <instance .env> serve --host 127.0.0.1 --port {cms_instance.sidecar_port}"
        assert error["extensions"]["start"] == start and f"start it with: {start}," in error["extensions"]["hint"]
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


def test_a_bulk_write_reaches_the_sidecar_as_a_few_batched_events(cms_instance: LiveInstance) -> None:
    """A createMany of 150 items is reported as a couple of events of up to 100 keys (the hook batches), not 150
    requests: every key arrives."""
    created = cms_instance.request("POST", f"/items/{COLLECTION}", json=[{"title": f"bulk {i}"} for i in range(150)],
                                   params={"fields": "id"})
    assert created.status_code == 200, created.text
    keys = {row["id"] for row in created.json()["data"]}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = cms_instance.request("GET", "/migrate/events", params={"limit": 500}).json()["data"]
        ours = [e for e in events if e["event"] == "items.create" and e["collection"] == COLLECTION
                and keys & set(e["keys"])]
        if keys <= {k for e in ours for k in e["keys"]}:
            assert len(ours) <= 3, [len(e["keys"]) for e in ours]
            assert all(len(e["keys"]) <= 100 for e in ours)
            return
        time.sleep(0.2)
    raise AssertionError(f"not every created key reached the sidecar: {len(keys)} created")


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
    from cairn_migrate.operations.export import export_bundle
    from cairn_migrate.instance.instance import Instance
    from cairn_migrate.operations.verify import verify_bundle

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
    with pytest.raises(InstanceUnreachable) as down:  # the checks could not run: a failure, not a difference
        verify_bundle(instance, tmp_path / "bundle", url="http://127.0.0.1:9", token=ADMIN_TOKEN)
    assert down.value.message == "The instance at http://127.0.0.1:9 did not answer GET /server/ping (ConnectionError)"
    assert down.value.exit_code == 3


# --- export --freeze: the instance proves it holds writes before the capture -------------------------


def _export(live: LiveInstance, output: Path, *args: str, env_file: str = ".env",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``cairn-migrate export --full --freeze --json`` as a user runs it, against the live instance's ``.env``."""
    command = [str(CLI), "--env", str(live.folder / env_file), "export", "--full", "-o", str(output), "--freeze", "--json", *args]
    return subprocess.run(command, env=env or live.env, capture_output=True, text=True, timeout=300)


def _env_file(live: LiveInstance, name: str, extensions: Path) -> str:
    """A copy of the instance's ``.env`` (beside it, so relative paths still resolve) with another EXTENSIONS_PATH."""
    lines = [line for line in (live.folder / ".env").read_text().splitlines() if not line.startswith("EXTENSIONS_PATH=")]
    (live.folder / name).write_text("\n".join([*lines, f"EXTENSIONS_PATH={extensions}"]) + "\n")
    return name


def _bundle_titles(bundle: Path) -> set[str]:
    tables = {t["name"]: t for t in json.loads((bundle / "schema" / "tables.json").read_text())}
    at = [c["name"] for c in tables[COLLECTION]["columns"]].index("title")
    lines = (bundle / "tables" / f"{COLLECTION}.jsonl").read_text().splitlines()
    return {json.loads(line)[at] for line in lines if line}


def _assert_not_frozen(live: LiveInstance) -> None:
    state = live.request("GET", "/migrate/freeze").json()
    assert state["active"] is False, state


def test_every_write_during_a_freeze_export_is_refused_or_in_the_bundle(live_instance: LiveInstance, tmp_path: Path) -> None:
    """A writer loop hits the real instance while ``export --freeze`` runs (a CLI process, like a user's)."""
    writes: list[dict[str, Any]] = []
    stop = threading.Event()

    def writer() -> None:
        session = requests.Session()
        n = 0
        while not stop.is_set():
            title = f"loop-{n}"
            sent = time.time()
            response = session.post(f"{live_instance.url}/items/{COLLECTION}", json={"title": title},
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
            writes.append({"title": title, "status": response.status_code, "sent": sent, "acked": time.time()})
            n += 1
            time.sleep(0.02)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        time.sleep(1)  # writes before the freeze: acknowledged, so they must be in the bundle
        result = _export(live_instance, tmp_path / "bundle")
        time.sleep(FREEZE_CACHE_S)  # writes after the freeze is lifted go through again
    finally:
        stop.set()
        thread.join(timeout=60)
    assert result.returncode == 0, result.stderr
    freeze = json.loads(result.stdout)["freeze"]
    assert freeze["guaranteed"] is True and freeze["instance_url"] == live_instance.url, freeze
    lifted = dt.datetime.fromisoformat(freeze["lifted_at"]).timestamp()
    statuses = {w["status"] for w in writes}
    assert statuses <= {200, 503}, [w for w in writes if w["status"] not in (200, 503)]
    bundled = _bundle_titles(tmp_path / "bundle")
    acknowledged = [w for w in writes if w["status"] == 200 and w["acked"] < lifted]
    refused = [w for w in writes if w["status"] == 503]
    assert acknowledged and refused, f"{len(acknowledged)} acknowledged and {len(refused)} refused before the lift"
    assert [w["title"] for w in acknowledged if w["title"] not in bundled] == []
    stored = set(_titles(live_instance))
    assert [w["title"] for w in refused if w["title"] in stored] == []
    assert any(w["status"] == 200 and w["sent"] > lifted for w in writes), "writes resume after the export"
    _assert_not_frozen(live_instance)


def test_freeze_export_without_the_extension_exits_2_with_the_fix(live_instance: LiveInstance, tmp_path: Path) -> None:
    empty = tmp_path / "no-extensions"
    empty.mkdir()
    result = _export(live_instance, tmp_path / "bundle", env_file=_env_file(live_instance, ".env.no-extension", empty))
    assert result.returncode == 2, result.stderr
    assert "has none" in result.stderr and "run install-extension" in result.stderr
    assert not (tmp_path / "bundle").exists()
    _assert_not_frozen(live_instance)


def test_freeze_export_refuses_what_it_cannot_prove(live_instance: LiveInstance, tmp_path: Path) -> None:
    """Instance down, a sidecar on another state store, a secret the hook does not share: exit 2 each."""
    down = _export(live_instance, tmp_path / "a", "--instance-url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 2 and "did not answer" in down.stderr, down.stderr
    elsewhere = {**live_instance.env, "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'other-state.db'}"}
    other_store = _export(live_instance, tmp_path / "b", env=elsewhere)
    assert other_store.returncode == 2 and "uses another state store" in other_store.stderr, other_store.stderr
    forged = tmp_path / "forged-extensions"
    forged.mkdir()
    (forged / ".cairn-migrate.json").write_text(json.dumps({"sidecar_url": live_instance.sidecar_url, "secret": "not-the-hooks-secret"}))
    wrong_secret = _export(live_instance, tmp_path / "c", env_file=_env_file(live_instance, ".env.forged", forged))
    assert wrong_secret.returncode == 2 and "does not accept" in wrong_secret.stderr, wrong_secret.stderr
    assert not any((tmp_path / name).exists() for name in "abc")
    _assert_not_frozen(live_instance)


def test_no_freeze_guarantee_warns_and_exports(live_instance: LiveInstance, tmp_path: Path) -> None:
    empty = tmp_path / "no-extensions"
    empty.mkdir()
    env_file = _env_file(live_instance, ".env.no-guarantee", empty)
    result = _export(live_instance, tmp_path / "bundle", "--no-freeze-guarantee", env_file=env_file)
    assert result.returncode == 0, result.stderr
    assert "WARNING" in result.stderr and "not proven to hold writes" in result.stderr
    freeze = json.loads(result.stdout)["freeze"]
    assert freeze["guaranteed"] is False and "extension in the instance" in freeze["warning"]
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    _assert_not_frozen(live_instance)


def test_freeze_export_over_http(live_instance: LiveInstance) -> None:
    """``POST /migrate/export`` with freeze, through the instance: proven, and refused when it cannot be."""

    def run(body: dict[str, Any]) -> dict[str, Any]:
        started = live_instance.request("POST", "/migrate/export", json=body)
        assert started.status_code == 202, started.text
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = live_instance.request("GET", f"/migrate/jobs/{started.json()['id']}").json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"the export job did not finish: {job}")

    proven = run({"freeze": True})
    assert proven["state"] == "succeeded", proven
    assert proven["result"]["freeze"]["guaranteed"] is True
    refused = run({"freeze": True, "instance_url": f"http://127.0.0.1:{free_port()}"})
    assert refused["state"] == "failed" and refused["error"]["code"] == "freeze_not_enforced", refused
    unproven = run({"freeze": True, "freeze_guarantee": False, "instance_url": f"http://127.0.0.1:{free_port()}"})
    assert unproven["state"] == "succeeded", unproven
    assert "did not answer" in unproven["result"]["freeze"]["warning"]
    _assert_not_frozen(live_instance)


def test_sidecar_down_mid_freeze_refuses_writes_until_the_freeze_expires(live_instance: LiveInstance) -> None:
    ttl = 8
    frozen = live_instance.request("POST", "/migrate/freeze", json={"reason": "fail closed", "ttl_seconds": ttl})
    assert frozen.status_code == 200 and frozen.json()["active"], frozen.text
    until = dt.datetime.fromisoformat(frozen.json()["until"]).timestamp()
    time.sleep(FREEZE_CACHE_S)
    seen = live_instance.request("POST", f"/items/{COLLECTION}", json={"title": "frozen, sidecar up"})
    assert seen.status_code == 503, seen.text  # the hook now knows of the freeze
    with live_instance.sidecar_stopped():
        time.sleep(FREEZE_CACHE_S)  # the cached answer is gone: the hook must ask, and cannot
        refused = live_instance.request("POST", f"/items/{COLLECTION}", json={"title": "frozen, sidecar down"})
        assert time.time() < until, "too slow to test before the expiry"
        assert refused.status_code == 503, refused.text
        assert "fail closed" in refused.json()["errors"][0]["message"]
        upload = live_instance.request("POST", "/files", files={"file": ("down.txt", b"no", "text/plain")})
        assert upload.status_code == 503, upload.text
        time.sleep(max(0.0, until - time.time()) + FREEZE_CACHE_S)
        after = live_instance.request("POST", f"/items/{COLLECTION}", json={"title": "expired, sidecar down"})
        assert after.status_code == 200, after.text  # an expired freeze never holds the instance
    titles = _titles(live_instance)
    assert "frozen, sidecar down" not in titles and "expired, sidecar down" in titles
    live_instance.request("DELETE", "/migrate/freeze")
