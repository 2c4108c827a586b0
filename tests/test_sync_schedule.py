"""Scheduled syncs in real ``cairn-migrate serve --scheduler`` processes on a PostgreSQL state store.

- a sidecar runs an interval profile; killed (SIGKILL) and restarted, it keeps the schedule and the
  slots it missed are caught up by exactly one run;
- a paused profile does nothing;
- two sidecars of one instance on one state store: each due slot runs once.

The profiles start ``from-now`` on a source nobody writes to, so every run is a real, idle run
(the feed read, no content step): these tests need no ``content`` operation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from instance_fixtures import CairnSqliteInstance, restore_sqlite_instance
from live_instance import CLI, free_port, server_env, stop_process
from sqlalchemy.engine import make_url

from cairn_migrate.testing import create_postgres_database, drop_postgres_database

TOKEN = "sync-schedule-admin-token-0123456789"
INTERVAL = 2


class Sidecar:
    """One ``cairn-migrate serve --scheduler`` process of ``env_path``, in its own process group."""

    def __init__(self, env_path: Path, state_url: str, allowed: Path, log: Path, peers: str = "") -> None:
        self.env_path, self.log = env_path, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # the profile's other instance is a peer the sidecar's operator trusts (CAIRN_MIGRATE_PEERS)
        self.env = {**server_env(), "CAIRN_MIGRATE_STATE_URL": state_url, "CAIRN_MIGRATE_HTTP_PATHS": str(allowed),
                    "CAIRN_MIGRATE_SYNC_POLL_SECONDS": "1", "CAIRN_MIGRATE_PEERS": peers}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(CLI), "-v", "--env", str(self.env_path), "serve", "--scheduler",
                                          "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if requests.get(self.url + "/migrate/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the sidecar did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup (a crash or an OOM kill)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
                                **kwargs)

    def history(self, name: str) -> list[dict[str, Any]]:
        response = self.call("GET", f"/migrate/syncs/{name}/history", params={"limit": 500})
        assert response.status_code == 200, response.text
        return list(reversed(response.json()["runs"]))  # oldest first


@pytest.fixture
def state_url(pg_admin_url: str) -> Iterator[str]:
    name = create_postgres_database(pg_admin_url, prefix="cm_sync_sched")
    yield make_url(pg_admin_url).set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False)
    drop_postgres_database(pg_admin_url, name)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[CairnSqliteInstance, CairnSqliteInstance]:
    source, target = restore_sqlite_instance(tmp_path / "source"), restore_sqlite_instance(tmp_path / "target")
    source.set_token("admin@example.com", TOKEN)
    return source, target


def _profile(pair: tuple[CairnSqliteInstance, CairnSqliteInstance], name: str) -> dict[str, Any]:
    source, target = pair
    return {"name": name, "source": str(source.env_path), "target": str(target.env_path), "collections": ["articles"],
            "initial": "from-now", "schedule": {"interval_seconds": INTERVAL}, "missed": "run-once"}


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _slot(run: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(run["slot"])


def _consecutive(runs: list[dict[str, Any]]) -> bool:
    slots = [_slot(r) for r in runs]
    return all((b - a).total_seconds() == INTERVAL for a, b in zip(slots, slots[1:]))


def _on_grid(runs: list[dict[str, Any]]) -> bool:
    """Slots only increase and all lie on the profile's grid (a whole number of intervals apart).

    A firing late by more than an interval on a loaded machine coalesces into the latest slot
    (the sync covers everything up to then), so gaps between slots are allowed here.
    """
    slots = [_slot(r) for r in runs]
    gaps = [(b - a).total_seconds() for a, b in zip(slots, slots[1:])]
    return all(gap > 0 and gap % INTERVAL == 0 for gap in gaps)


def test_a_killed_sidecar_keeps_its_schedule_and_catches_up_once(
        pair: tuple[CairnSqliteInstance, CairnSqliteInstance], state_url: str, tmp_path: Path) -> None:
    sidecar = Sidecar(pair[0].env_path, state_url, tmp_path, tmp_path / "sidecar.log", peers=str(pair[1].env_path))
    sidecar.start()
    try:
        added = sidecar.call("POST", "/migrate/syncs", json=_profile(pair, "every-2s"))
        assert added.status_code == 201, added.text
        assert added.json()["next_run"], added.json()  # scheduled in this sidecar at once
        _wait_for(lambda: len(sidecar.history("every-2s")) >= 2, 20, "two scheduled runs")

        sidecar.kill()
        down = time.monotonic()
        killed_at = datetime.now().astimezone()
        time.sleep(4 * INTERVAL)  # at least three slots go by with no sidecar
        restarted_at = datetime.now().astimezone()
        sidecar.start()
        assert time.monotonic() - down >= 4 * INTERVAL
        _wait_for(lambda: len([r for r in sidecar.history("every-2s")
                               if datetime.fromisoformat(r["started_at"]) >= restarted_at]) >= 3, 30,
                  "three runs after the restart")
        runs = sidecar.history("every-2s")
        before = [r for r in runs if datetime.fromisoformat(r["started_at"]) < killed_at]
        after = [r for r in runs if datetime.fromisoformat(r["started_at"]) >= restarted_at]
        assert len(before) + len(after) == len(runs), runs  # nothing ran while no sidecar did
        assert all(r["outcome"] == "ok" and r["trigger"] == "schedule" for r in runs), runs
        slots = [r["slot"] for r in runs]
        assert len(slots) == len(set(slots)), slots  # no slot ran twice
        assert _on_grid(runs), slots
        # The slots missed while no sidecar ran were caught up by at most one run, never replayed one by one.
        assert len([r for r in runs if killed_at < _slot(r) < restarted_at]) <= 1, slots
        missed = (_slot(after[0]) - _slot(before[-1])).total_seconds() / INTERVAL
        assert missed >= 3, slots  # several slots were missed ...
        catch_up = after[0]  # ... and one run caught them up, for the latest of them, late
        assert datetime.fromisoformat(catch_up["started_at"]) > _slot(catch_up)
        assert _slot(catch_up) <= datetime.fromisoformat(catch_up["started_at"]) < _slot(after[1])
        # Each run is a normal job of the sidecar: its record carries the run's report.
        job = sidecar.call("GET", f"/migrate/jobs/{after[-1]['job_id']}").json()
        assert job["kind"] == "sync_run" and job["state"] == "succeeded" and job["result"]["slot"] == after[-1]["slot"]

        # A paused profile does nothing: no run, no job, no next run.
        paused = sidecar.call("PATCH", "/migrate/syncs/every-2s", json={"enabled": False})
        assert paused.status_code == 200 and paused.json()["next_run"] is None
        time.sleep(0.5)  # a run already started finishes
        count = len(sidecar.history("every-2s"))
        jobs = len(sidecar.call("GET", "/migrate/jobs", params={"kind": "sync_run", "limit": 500}).json()["jobs"])
        time.sleep(3 * INTERVAL)
        assert len(sidecar.history("every-2s")) == count
        assert len(sidecar.call("GET", "/migrate/jobs", params={"kind": "sync_run", "limit": 500}).json()["jobs"]) == jobs
        assert sidecar.call("POST", "/migrate/syncs/every-2s/run", json={}).status_code == 422
        resumed = sidecar.call("PATCH", "/migrate/syncs/every-2s", json={"enabled": True})
        assert resumed.json()["next_run"]
        _wait_for(lambda: len(sidecar.history("every-2s")) > count, 15, "a run after resuming")
    finally:
        sidecar.stop()


def test_two_sidecars_on_one_state_store_run_each_slot_once(
        pair: tuple[CairnSqliteInstance, CairnSqliteInstance], state_url: str, tmp_path: Path) -> None:
    first = Sidecar(pair[0].env_path, state_url, tmp_path, tmp_path / "first.log", peers=str(pair[1].env_path))
    second = Sidecar(pair[0].env_path, state_url, tmp_path, tmp_path / "second.log", peers=str(pair[1].env_path))
    first.start()
    second.start()
    try:
        assert first.call("POST", "/migrate/syncs", json=_profile(pair, "shared")).status_code == 201
        assert second.call("GET", "/migrate/syncs/shared").status_code == 200  # the same instance's profile
        _wait_for(lambda: len(first.history("shared")) >= 6, 40, "six scheduled runs")
        assert second.call("PATCH", "/migrate/syncs/shared", json={"enabled": False}).status_code == 200
        time.sleep(1)
        runs = first.history("shared")
        slots = [r["slot"] for r in runs]
        assert len(slots) == len(set(slots)), slots  # each due slot ran once ...
        assert _consecutive(runs), slots  # ... and none was left out
        assert all(r["outcome"] == "ok" for r in runs), runs
        # Both sidecars' schedulers fired: the jobs of each are in the store, and a slot's second firing ran nothing.
        jobs = first.call("GET", "/migrate/jobs", params={"kind": "sync_run", "limit": 500}).json()["jobs"]
        ran = [j for j in jobs if j["state"] == "succeeded" and not j["result"].get("skipped")]
        assert sorted(j["result"]["slot"] for j in ran) == sorted(slots)
        assert {r["job_id"] for r in runs} == {j["id"] for j in ran}
        logs = first.log.read_text() + second.log.read_text()
        print(f"\n{len(runs)} runs; fired twice and skipped: {logs.count('has run already')} by the slot, "
              f"{len([j for j in jobs if (j['result'] or {}).get('skipped')])} by the run lock")
    finally:
        first.stop()
        second.stop()
