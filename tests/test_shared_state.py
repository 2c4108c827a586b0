"""Two instances, two sidecars, one state store: neither sees nor touches the other's records.

Instance A and instance B are two copies of the recorded SQLite instance with
their own KEY, SECRET and admin token.  Their sidecars share one state database
(a SQLite file, and a real PostgreSQL database) and one bundle root.  A has a
running job, a finished export (a bundle), a freeze and a copy-ledger entry;
then B's admin calls every ``/migrate`` route (enumerated from the url_map, so
new routes are covered) with A's job and bundle ids, and A's records must come
through unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from instance_fixtures import FIXTURES, CairnSqliteInstance, bearer, restore_sqlite_instance
from sqlalchemy.engine import make_url
from test_auth import migrate_routes

from cairn_migrate.service.app import create_app, get_state
from cairn_migrate.instance.instance import Instance
from cairn_migrate.service.jobs import JobContext
from cairn_migrate.service.signature import config_path, sign
from cairn_migrate.service.state import instance_scope
from cairn_migrate.operations.storage_move import CopyLedger
from cairn_migrate.testing import create_postgres_database, drop_postgres_database

#: The bodies B's admin sends, aimed at A's records where the route takes one (``{bundle}`` is A's bundle id).
BODIES = {
    ("POST", "/migrate/import"): {"bundle": "{bundle}"},
    ("POST", "/migrate/verify"): {"bundle": "{bundle}"},
    ("POST", "/migrate/files/repair"): {"bundle": "{bundle}", "dry_run": False},
    ("POST", "/migrate/freeze"): {"reason": "B holds its own writes", "ttl_seconds": 60},
    ("POST", "/migrate/storage/prune"): {"yes": True},
}
#: ``POST /migrate/ops`` takes every operation: each one that reads a bundle, by A's bundle id (plans and real runs).
OPS_BODIES = [
    {"op": "import", "params": {"bundle": "{bundle}", "dry_run": True}},
    {"op": "import", "params": {"bundle": "{bundle}", "replace": True}},
    {"op": "verify", "params": {"bundle": "{bundle}"}},
    {"op": "files_repair", "params": {"bundle": "{bundle}", "dry_run": True}},
    {"op": "files_repair", "params": {"bundle": "{bundle}", "dry_run": False}},
]
A_REASON = "A is capturing (a reason only A's freeze has)"


@dataclass
class Sidecar:
    instance: CairnSqliteInstance
    app: Any
    token: str

    @property
    def client(self) -> Any:
        return self.app.test_client()

    @property
    def scope(self) -> str:
        return get_state(self.app).scope


def _own_identity(instance: CairnSqliteInstance, name: str) -> None:
    """Give the copy its own KEY and SECRET (the recorded ones are shared by every copy)."""
    text = instance.env_path.read_text()
    text = re.sub(r"^KEY=.*$", f"KEY=key-of-instance-{name}", text, flags=re.MULTILINE)
    text = re.sub(r"^SECRET=.*$", f"SECRET=secret-of-instance-{name}-0123456789abcdef", text, flags=re.MULTILINE)
    instance.env_path.write_text(text)
    instance.env_text = text


@pytest.fixture(params=["sqlite", "postgres"])
def shared_state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One state database for both sidecars: a SQLite file, or a fresh database on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared-state' / 'state.db'}"
    admin = request.getfixturevalue("pg_admin_url")
    name = create_postgres_database(admin, prefix="cm_state")
    request.addfinalizer(lambda: drop_postgres_database(admin, name))
    return make_url(admin).set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)


@pytest.fixture
def sidecars(tmp_path: Path, shared_state_url: str) -> Iterator[tuple[Sidecar, Sidecar]]:
    made = []
    # A third instance both sidecars' operators list as a trusted peer: the other side of A's sync profile.
    peer = restore_sqlite_instance(tmp_path / "instance-peer")
    _own_identity(peer, "peer")
    for name in ("a", "b"):
        instance = restore_sqlite_instance(tmp_path / f"instance-{name}")
        shutil.copytree(FIXTURES / "uploads", instance.folder / "uploads", dirs_exist_ok=True)
        _own_identity(instance, name)
        token = f"static-token-of-the-admin-of-{name}-0123456789"
        instance.set_token("admin@example.com", token)
        app = create_app({
            "TESTING": True,
            "CAIRN_MIGRATE_ENV": str(instance.env_path),
            "CAIRN_MIGRATE_STATE_URL": shared_state_url,
            "CAIRN_MIGRATE_BUNDLE_DIR": str(tmp_path / "shared-bundles"),
            "CAIRN_MIGRATE_HTTP_PATHS": os.pathsep.join((str(instance.folder), str(peer.folder))),
            "CAIRN_MIGRATE_PEERS": str(peer.env_path),  # the sync profile's other instance
        })
        made.append(Sidecar(instance, app, token))
    yield made[0], made[1]
    for sidecar in made:
        get_state(sidecar.app).close()


def hold_until(release: threading.Event) -> Any:
    """A job kind that runs until ``release`` is set (or it is cancelled)."""

    def job(ctx: JobContext) -> dict[str, Any]:
        while not release.wait(0.02):
            ctx.check_cancelled()
        return {}

    return job


def _records_of(a: Sidecar, ids: dict[str, str], ledger: CopyLedger) -> dict[str, Any]:
    """Everything of A's that B must not change, read through A's own sidecar and the state store."""
    headers = bearer(a.token)
    client = a.client
    bundle = get_state(a.app).bundle_dir
    return {
        "running": client.get(f"/migrate/jobs/{ids['running']}", headers=headers).get_json(),
        "export": client.get(f"/migrate/jobs/{ids['export']}", headers=headers).get_json(),
        "bundles": sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in bundle.iterdir()),
        "listed": client.get("/migrate/bundles", headers=headers).get_json(),
        "freeze": client.get("/migrate/freeze", headers=headers).get_json(),
        "moves": ledger.moves(a.scope),
        "entries": list(ledger.all_entries(ids["move"])),
        "sync": client.get(f"/migrate/syncs/{ids['sync_name']}", headers=headers).get_json(),
        "syncs": client.get("/migrate/syncs", headers=headers).get_json(),
    }


def test_one_instance_cannot_reach_another_through_a_shared_state_store(sidecars: tuple[Sidecar, Sidecar]) -> None:
    a, b = sidecars
    assert a.scope != b.scope
    state_url = get_state(a.app).config["CAIRN_MIGRATE_STATE_URL"]
    assert state_url == get_state(b.app).config["CAIRN_MIGRATE_STATE_URL"]

    # A's records: a finished export (a bundle), a running job, a freeze, a copy ledger entry.
    a_headers = bearer(a.token)
    started = a.client.post("/migrate/export", json={}, headers=a_headers)
    assert started.status_code == 202, started.get_json()
    export = get_state(a.app).runner.wait(started.get_json()["id"], timeout=120)
    assert export["state"] == "succeeded", export
    release = threading.Event()
    get_state(a.app).runner.register("test.hold", hold_until(release))
    running = get_state(a.app).runner.submit("test.hold")
    assert a.client.post("/migrate/freeze", json={"reason": A_REASON}, headers=a_headers).get_json()["active"]
    ledger = CopyLedger(state_url)
    ids = {"running": running, "export": export["id"], "bundle": export["result"]["bundle_id"], "move": "a-move-0001",
           "sync_name": "a-nightly-sync"}
    try:
        # A's sync profile, from A to the peer its operator trusts (CAIRN_MIGRATE_PEERS); only stored here.
        peer_env = Path(str(get_state(a.app).config["CAIRN_MIGRATE_PEERS"]))
        added = a.client.post("/migrate/syncs", headers=a_headers, json={
            "name": ids["sync_name"], "source": str(a.instance.env_path), "target": str(peer_env),
            "collections": ["articles"], "schedule": {"cron": "0 3 * * *"}})
        assert added.status_code == 201, added.get_json()
        ledger.start(ids["move"], a.scope, "local", "other", "{}")
        ledger.save(ids["move"], [{"id": "f1", "src_name": "x.jpg", "dst_name": "x.jpg", "size": 1, "sha256": "0" * 64,
                                   "action": "copied", "state": "switched"}])
        deadline = time.monotonic() + 10
        while get_state(a.app).store.get(running)["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        before = _records_of(a, ids, ledger)
        assert before["running"]["state"] == "running"
        assert [x["id"] for x in before["listed"]["bundles"]] == [ids["bundle"]]

        # B's admin, against A's records, on every route.
        templates = migrate_routes(b.app)
        aimed_at_a = migrate_routes(b.app, {"job_id": ids["running"], "bundle_id": ids["bundle"],
                                            "sync_name": ids["sync_name"]})
        routes = [(method, url, aimed) for (method, url), (_, aimed) in zip(templates, aimed_at_a)]
        assert ("POST", "/migrate/jobs/dummy-id/cancel", f"/migrate/jobs/{ids['running']}/cancel") in routes
        secrets = {ids["running"], ids["export"], ids["bundle"], A_REASON, a.instance.key, str(a.instance.env_path)}
        b_headers = bearer(b.token)
        assert ("POST", "/migrate/ops", "/migrate/ops") in routes
        for method, url, aimed in routes:
            for template in OPS_BODIES if (method, url) == ("POST", "/migrate/ops") else [BODIES.get((method, url), {})]:
                body = json.loads(json.dumps(template).replace("{bundle}", ids["bundle"]))
                response = b.client.open(aimed, method=method, json=body, headers=b_headers)
                text = response.get_data(as_text=True)
                response.close()
                assert response.status_code not in (401, 403) and response.status_code < 500, (method, aimed, text)
                if url != aimed or "{bundle}" in json.dumps(template):
                    assert response.status_code == 404, (method, aimed, body, text)  # as if A's record did not exist
                sent = aimed + json.dumps(body)  # an error may name the id it was asked for, nothing else of A's
                leaked = [value for value in secrets if value in text and value not in sent]
                assert not leaked, (method, aimed, leaked)
        # Also by the id of A's finished export job, and the hook of B asking for the freeze.
        assert b.client.get(f"/migrate/jobs/{ids['export']}", headers=b_headers).status_code == 404
        assert b.client.post(f"/migrate/jobs/{ids['export']}/cancel", headers=b_headers).status_code == 404
        hook_secret = "shared-secret-of-b-0123456789abcdef"
        path = config_path(Instance.from_env_file(b.instance.env_path, environ={}))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sidecar_url": "http://127.0.0.1:1", "secret": hook_secret}))
        assert b.client.delete("/migrate/freeze", headers=b_headers).get_json() == {"active": False}
        seen_by_b = b.client.get("/migrate/freeze", headers=sign(hook_secret, "GET", "/migrate/freeze", b""))
        assert seen_by_b.get_json() == {"active": False}
        for job in get_state(b.app).store.list():  # B's own jobs (export, inspect, files check) finish
            get_state(b.app).runner.wait(job["id"], timeout=120)

        after = _records_of(a, ids, ledger)
        assert after == before
        assert after["running"]["state"] == "running" and not after["running"]["cancel_requested"]
        assert after["freeze"]["active"] and after["freeze"]["reason"] == A_REASON
        b_bundles = {x["id"] for x in b.client.get("/migrate/bundles", headers=b_headers).get_json()["bundles"]}
        assert ids["bundle"] not in b_bundles and len(b_bundles) == 1  # B's own export of the loop above
        assert {j["id"] for j in get_state(b.app).store.list()}.isdisjoint(ids.values())
        assert b.client.get("/migrate/syncs", headers=b_headers).get_json() == {"syncs": [], "count": 0}
    finally:
        release.set()
        ledger.close()
    assert get_state(a.app).runner.wait(running, timeout=10)["state"] == "succeeded"


def test_records_carry_the_instance_in_the_shared_store(sidecars: tuple[Sidecar, Sidecar]) -> None:
    a, b = sidecars
    job = a.client.post("/migrate/inspect", json={"check_objects": False}, headers=bearer(a.token)).get_json()["id"]
    get_state(a.app).runner.wait(job, timeout=60)
    engine = sa.create_engine(get_state(a.app).config["CAIRN_MIGRATE_STATE_URL"])
    try:
        with engine.connect() as conn:
            owner = conn.execute(sa.text("SELECT instance FROM cm_jobs WHERE id = :id"), {"id": job}).scalar()
    finally:
        engine.dispose()
    assert owner == a.scope == instance_scope(Instance.from_env_file(a.instance.env_path, environ={}))
    assert get_state(a.app).bundle_dir.name == a.scope and get_state(b.app).bundle_dir.name == b.scope
    assert get_state(a.app).bundle_dir.parent == get_state(b.app).bundle_dir.parent


def test_a_clone_sharing_the_key_is_another_instance(tmp_path: Path) -> None:
    """A clone carries its source's KEY; the database tells them apart (records and copy-ledger moves)."""
    from cairn_migrate.operations.storage_move import MoveSpec

    source = restore_sqlite_instance(tmp_path / "source")
    clone = restore_sqlite_instance(tmp_path / "clone")
    a, b = (Instance.from_env_file(i.env_path, environ={}) for i in (source, clone))
    assert a.key == b.key
    assert instance_scope(a) != instance_scope(b)
    spec = MoveSpec("local", "remote")
    assert spec.move_id(a) != spec.move_id(b)
    # the same instance, read again (or through a relative DB_FILENAME), is the same identity
    source.env_path.write_text(re.sub(r"^DB_FILENAME=.*$", "DB_FILENAME=./data.db", source.env_path.read_text(),
                                      flags=re.MULTILINE))
    assert instance_scope(Instance.from_env_file(source.env_path, environ={})) == instance_scope(a)


def test_server_database_identity_ignores_credentials() -> None:
    def scope(**env: str) -> str:
        base = {"DB_CLIENT": "pg", "DB_HOST": "db.example", "DB_PORT": "5432", "DB_DATABASE": "cms", "DB_USER": "u",
                "DB_PASSWORD": "p", "KEY": "k"}
        return instance_scope(Instance.from_env_file(None, environ={**base, **env}))

    assert scope() == scope(DB_USER="other", DB_PASSWORD="rotated")
    assert len({scope(), scope(DB_DATABASE="cms2"), scope(DB_HOST="db2.example"), scope(DB_PORT="5433"),
                scope(KEY="k2")}) == 5


def test_copy_ledger_rows_from_before_scoping(sqlite_instance: Path, tmp_path: Path) -> None:
    """A switched move recorded by an earlier version (instance = KEY): its old bytes are still kept as
    retained (never taken for orphans), but no instance prunes or resumes it."""
    from cairn_migrate.operations.file_rows import check
    from cairn_migrate.service.state import legacy_instance_label
    from cairn_migrate.instance.storage import open_location
    from cairn_migrate.operations.storage_move import prune

    instance = Instance.from_env_file(sqlite_instance, environ={})
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    local = open_location(instance.location("local"))
    local.write_bytes("moved-away.bin", b"old bytes kept for a rollback")
    ledger = CopyLedger(state_url)
    try:
        ledger.start("legacy-move", legacy_instance_label(instance), "local", "remote", "{}")
        ledger.set_move("legacy-move", state="switched")
        ledger.save("legacy-move", [{"id": "f1", "src_name": "moved-away.bin", "dst_name": "moved-away.bin", "size": 29,
                                     "sha256": "0" * 64, "action": "copied", "state": "switched"}])
    finally:
        ledger.close()
    report = check(instance, state_url=state_url)
    assert report["counts"]["orphan"] == 0, report["problems"]
    pruned = prune(instance, yes=True, state_url=state_url)
    assert pruned == {"dry_run": False, "moves": [], "deleted": 0, "problems": []}
    assert local.read_bytes("moved-away.bin") == b"old bytes kept for a rollback"


def test_a_freeze_holds_only_its_instance(tmp_path: Path) -> None:
    from cairn_migrate.operations.freeze import clear_freeze, freeze_state, frozen

    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    with frozen(state_url, scope="a" * 32, enabled=True, reason="export of A"):
        assert freeze_state(state_url, scope="a" * 32)["active"]
        assert freeze_state(state_url, scope="b" * 32) == {"active": False}
        clear_freeze(state_url, scope="b" * 32)  # B releasing its (absent) freeze leaves A's alone
        assert freeze_state(state_url, scope="a" * 32)["reason"] == "export of A"
    assert freeze_state(state_url, scope="a" * 32) == {"active": False}


def scheduled_target(**kwargs: Any) -> None:
    """A scheduled call that is never due in the test."""


def test_schedules_are_per_instance(tmp_path: Path) -> None:
    from cairn_migrate.hooks.schedule import schedule_job

    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    apps = []
    for name in ("a", "b"):
        instance = restore_sqlite_instance(tmp_path / name)
        _own_identity(instance, name)
        apps.append(create_app({"CAIRN_MIGRATE_ENV": str(instance.env_path), "CAIRN_MIGRATE_STATE_URL": state_url,
                                "CAIRN_MIGRATE_SCHEDULER": True}))
    try:
        schedule_job(apps[0], "test_shared_state:scheduled_target", "interval", job_id="nightly-a", hours=24)
        assert [job.id for job in get_state(apps[0]).scheduler.get_jobs(jobstore="default")] == ["nightly-a"]
        assert get_state(apps[1]).scheduler.get_jobs(jobstore="default") == []
    finally:
        for app in apps:
            get_state(app).close()
