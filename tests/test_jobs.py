"""Job records, the runner and the /migrate/jobs routes, on a real SQLite state store."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from instance_fixtures import (  # noqa: F401 - fixtures
    admin_token,
    app,
    bearer,
    cairn_instance,
    client,
    state_url,
)

from cairn_migrate.service import jobs as jobs_module
from cairn_migrate.service.app import get_state
from cairn_migrate.errors import InvalidInput, NotFound
from cairn_migrate.service.jobs import (
    INTERRUPTED_MESSAGE,
    JobCancelled,
    JobConflict,
    JobContext,
    JobRunner,
    JobStore,
    jobs_table,
)


@pytest.fixture
def store(state_url: str) -> Iterator[JobStore]:
    store = JobStore(state_url)
    yield store
    store.close()


@pytest.fixture
def runner(store: JobStore) -> Iterator[JobRunner]:
    runner = JobRunner(store, workers=2)
    register_test_kinds(runner)
    yield runner
    runner.shutdown()


# -- test job kinds ---------------------------------------------------------------------------


def copy_things(ctx: JobContext) -> dict[str, Any]:
    total = int(ctx.params.get("n", 5))
    ctx.progress(items_total=total, bytes_total=total * 10)
    for i in range(total):
        ctx.check_cancelled()
        ctx.advance(items=1, bytes=10)
        ctx.log(f"copied item {i}")
    return {"copied": total}


def fail_cleanly(ctx: JobContext) -> dict[str, Any]:
    ctx.progress(items_total=3, items_done=1)
    raise NotFound("the bundle is gone", hint="export it again", details={"bundle": "x"})


def explode(ctx: JobContext) -> dict[str, Any]:
    raise ZeroDivisionError("division by zero in a job")


def return_garbage(ctx: JobContext) -> Any:
    return ["not", "a", "dict"]


def return_unserialisable(ctx: JobContext) -> Any:
    return {"when": object()}


def wait_for_cancel(ctx: JobContext) -> dict[str, Any]:
    ctx.params_seen = dict(ctx.params)  # type: ignore[attr-defined]
    ctx.log("waiting")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ctx.check_cancelled()
        time.sleep(0.01)
    return {"gave_up": True}


def cancelled_with_report(ctx: JobContext) -> dict[str, Any]:
    stopped = JobCancelled("stopped between phases")
    stopped.report = {"steps_done": ["schema"]}  # type: ignore[attr-defined]
    raise stopped


def register_test_kinds(runner: JobRunner) -> None:
    for kind, fn in {
        "test.copy": copy_things,
        "test.fail": fail_cleanly,
        "test.explode": explode,
        "test.garbage": return_garbage,
        "test.unserialisable": return_unserialisable,
        "test.wait": wait_for_cancel,
        "test.cancelled_with_report": cancelled_with_report,
    }.items():
        runner.register(kind, fn, replace=True)


def wait_for_state(store: JobStore, job_id: str, state: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get(job_id)
        if record["state"] == state:
            return record
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} never reached {state}: {store.get(job_id)}")


def dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


# -- the store ----------------------------------------------------------------------------------


def test_store_creates_its_tables_on_first_use(state_url: str, store: JobStore) -> None:
    job_id = store.create("test.copy", {"n": 1})
    names = set(sa.inspect(store.engine).get_table_names())
    assert {"cm_jobs", "cm_job_logs"} <= names
    record = store.get(job_id)
    assert record["state"] == "queued" and record["params"] == {"n": 1} and record["log"] == []
    assert record["created_at"].endswith("+00:00") and record["started_at"] is None
    assert record["progress"] == {
        "items_done": 0,
        "items_total": None,
        "bytes_done": 0,
        "bytes_total": None,
        "rate_items_per_s": None,
        "rate_bytes_per_s": None,
    }


def test_store_in_memory_url_works_across_threads() -> None:
    store = JobStore("sqlite://")
    try:
        job_id = store.create("k")
        seen = []
        thread = threading.Thread(target=lambda: seen.append(store.get(job_id)["state"]))
        thread.start()
        thread.join()
        assert seen == ["queued"]
    finally:
        store.close()


def test_store_rejects_non_json_params(store: JobStore) -> None:
    with pytest.raises(InvalidInput):
        store.create("k", {"x": object()})


def test_store_get_unknown(store: JobStore) -> None:
    with pytest.raises(NotFound):
        store.get("nope")


def test_store_list_newest_first_with_filters(store: JobStore) -> None:
    ids = []
    for kind in ("a", "b", "a"):
        ids.append(store.create(kind))
        time.sleep(0.002)
    store.start(ids[0])
    store.finish(ids[0], "succeeded", result={})
    assert [j["id"] for j in store.list()] == ids[::-1]
    assert [j["id"] for j in store.list(kind="a")] == [ids[2], ids[0]]
    assert [j["id"] for j in store.list(state="succeeded")] == [ids[0]]
    assert [j["id"] for j in store.list(limit=1)] == [ids[2]]
    assert "log" not in store.list()[0]


def test_progress_writes_are_throttled(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = store.create("k")
    assert store.update_progress(job_id, items_done=1)
    assert not store.update_progress(job_id, items_done=2)
    assert store.get(job_id)["progress"]["items_done"] == 1
    assert store.update_progress(job_id, items_done=3, final=True)
    assert store.get(job_id)["progress"]["items_done"] == 3
    monkeypatch.setattr(jobs_module, "PROGRESS_INTERVAL", 0.0)
    assert store.update_progress(job_id, items_done=4)


def test_log_is_bounded(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "MAX_LOG_LINES", 5)
    job_id = store.create("k")
    other = store.create("k")
    store.append_log(other, "other job")
    for i in range(12):
        store.append_log(job_id, f"line {i}")
    assert [line["message"] for line in store.get(job_id)["log"]] == [f"line {i}" for i in range(7, 12)]
    assert [line["message"] for line in store.get(other)["log"]] == ["other job"]


def test_cancel_queued_finished_and_unknown(store: JobStore) -> None:
    queued = store.create("k")
    record = store.request_cancel(queued)
    assert record["state"] == "cancelled" and record["cancel_requested"] and record["finished_at"]
    assert not store.start(queued)  # the runner will not run it
    with pytest.raises(JobConflict) as info:
        store.request_cancel(queued)
    assert info.value.http_status == 409
    with pytest.raises(NotFound):
        store.request_cancel("nope")


# -- one store, several instances ------------------------------------------------------------------


def test_a_store_sees_only_its_instance(state_url: str) -> None:
    a, b = JobStore(state_url, scope="a" * 32), JobStore(state_url, scope=lambda: "b" * 32)
    unscoped = JobStore(state_url)
    try:
        job = a.create("k", {"n": 1})
        assert [j["id"] for j in a.list()] == [job] and a.get(job)["params"] == {"n": 1}
        assert b.list() == [] and unscoped.list() == []
        for other in (b, unscoped):
            with pytest.raises(NotFound):
                other.get(job)
            with pytest.raises(NotFound):
                other.request_cancel(job)
        assert a.get(job)["state"] == "queued" and not a.get(job)["cancel_requested"]
        assert b.scope == "b" * 32  # the function was called once, on first use
    finally:
        for store in (a, b, unscoped):
            store.close()


def test_recovery_leaves_other_instances_alone(state_url: str) -> None:
    a, b = JobStore(state_url, scope="a" * 32), JobStore(state_url, scope="b" * 32)
    try:
        orphan = _orphan(a, "running", f"{socket.gethostname()}:{dead_pid()}")
        assert JobRunner(b).recover(everything=True) == []
        assert a.get(orphan)["state"] == "running"
        assert JobRunner(a).recover() == [orphan]
    finally:
        a.close()
        b.close()


def test_a_state_store_from_before_scoping_gets_the_column(state_url: str) -> None:
    """Jobs written before scoping keep ``instance`` NULL: no instance's store sees them."""
    old = sa.MetaData()
    sa.Table("cm_jobs", old, *(sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                               for c in jobs_table.columns if c.name != "instance"))
    engine = jobs_module._state_engine(state_url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO cm_jobs (id, kind, params, state, items_done, bytes_done, created_at, cancel_requested, seq) "
            "VALUES ('legacy', 'export', '{}', 'succeeded', 0, 0, '2026-01-01T00:00:00.000+00:00', 0, 0)"))
    engine.dispose()
    scoped, unscoped = JobStore(state_url, scope="a" * 32), JobStore(state_url)
    try:
        assert scoped.list() == []
        with pytest.raises(NotFound):
            scoped.get("legacy")
        assert "instance" in {c["name"] for c in sa.inspect(scoped.engine).get_columns("cm_jobs")}
        assert [j["id"] for j in unscoped.list()] == ["legacy"]
        new = scoped.create("k")
        assert [j["id"] for j in scoped.list()] == [new]
    finally:
        scoped.close()
        unscoped.close()


# -- the runner ---------------------------------------------------------------------------------


def test_inline_job_reports_progress_and_succeeds(runner: JobRunner) -> None:
    seen: list[dict[str, Any]] = []
    record = runner.run_inline("test.copy", {"n": 4}, on_progress=seen.append)
    assert record["state"] == "succeeded"
    assert record["result"] == {"copied": 4}
    assert record["error"] is None
    assert record["progress"]["items_done"] == 4 and record["progress"]["items_total"] == 4
    assert record["progress"]["bytes_done"] == 40 and record["progress"]["bytes_total"] == 40
    assert record["progress"]["rate_items_per_s"] > 0
    assert record["started_at"] and record["finished_at"] and record["finished_at"] >= record["started_at"]
    assert [line["message"] for line in record["log"]] == [f"copied item {i}" for i in range(4)]
    assert seen[0]["items_total"] == 4 and seen[-1]["items_done"] == 4
    # every change, then the final write
    assert [s["items_done"] for s in seen] == [0, 1, 2, 3, 4, 4]


def test_job_raising_migrate_error_fails_with_its_dict(runner: JobRunner) -> None:
    record = runner.run_inline("test.fail")
    assert record["state"] == "failed"
    assert record["result"] is None
    assert record["error"] == {
        "code": "not_found",
        "message": "the bundle is gone",
        "hint": "export it again",
        "details": {"bundle": "x"},
    }
    assert record["progress"]["items_done"] == 1  # the last progress is kept


def test_inline_raise_errors_re_raises(runner: JobRunner, store: JobStore) -> None:
    with pytest.raises(NotFound):
        runner.run_inline("test.fail", raise_errors=True)
    assert store.list()[0]["state"] == "failed"


def test_unexpected_error_fails_as_internal(runner: JobRunner, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="cairn_migrate.service.jobs"):
        record = runner.run_inline("test.explode")
    assert record["state"] == "failed"
    assert record["error"]["code"] == "internal"
    assert "ZeroDivisionError" in record["error"]["message"]
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


def test_unexpected_multi_line_error_fails_with_one_line(runner: JobRunner, caplog: pytest.LogCaptureFixture) -> None:
    def explode_in_lines(ctx: JobContext) -> dict[str, Any]:
        raise ValueError("invalid input syntax for type integer\nLINE 10: auth_login_attempts INTEGER DEFAULT 'abc'")

    runner.register("test.explode_in_lines", explode_in_lines)
    with caplog.at_level(logging.CRITICAL, logger="cairn_migrate.service.jobs"):
        record = runner.run_inline("test.explode_in_lines")
    assert record["state"] == "failed"
    assert record["error"] == {"code": "internal",
                               "message": "unexpected ValueError: invalid input syntax for type integer"}


@pytest.mark.parametrize("kind", ["test.garbage", "test.unserialisable"])
def test_bad_result_is_never_success(runner: JobRunner, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.CRITICAL, logger="cairn_migrate.service.jobs"):
        record = runner.run_inline(kind)
    assert record["state"] == "failed" and record["error"]["code"] == "internal"


def test_unknown_kind(runner: JobRunner) -> None:
    with pytest.raises(InvalidInput):
        runner.submit("no.such.kind")
    with pytest.raises(ValueError):
        runner.register("test.copy", explode)


def test_submitted_job_runs_in_the_pool(runner: JobRunner) -> None:
    job_id = runner.submit("test.copy", {"n": 3})
    record = runner.wait(job_id, timeout=5)
    assert record["state"] == "succeeded" and record["result"] == {"copied": 3}


def test_running_job_gets_cancelled(runner: JobRunner, store: JobStore) -> None:
    job_id = runner.submit("test.wait")
    wait_for_state(store, job_id, "running")
    record = store.request_cancel(job_id)
    assert record["cancel_requested"]
    record = runner.wait(job_id, timeout=5)
    assert record["state"] == "cancelled"
    assert record["error"]["code"] == "cancelled"
    assert record["result"] is None


def test_an_operation_stopped_by_a_cancel_keeps_its_report(runner: JobRunner) -> None:
    """A promote cancelled between its write phases says what it applied: the job's result is its report."""
    record = runner.wait(runner.submit("test.cancelled_with_report"), timeout=5)
    assert record["state"] == "cancelled" and record["result"] == {"steps_done": ["schema"]}, record


def test_cancelled_while_queued_never_runs(store: JobStore) -> None:
    runner = JobRunner(store, workers=1)
    register_test_kinds(runner)
    try:
        blocker = runner.submit("test.wait")
        queued = runner.submit("test.copy")
        wait_for_state(store, blocker, "running")
        assert store.request_cancel(queued)["state"] == "cancelled"
        store.request_cancel(blocker)
        runner.wait(blocker, timeout=5)
        record = runner.wait(queued, timeout=5)
        assert record["state"] == "cancelled" and record["started_at"] is None and record["log"] == []
    finally:
        runner.shutdown()


def test_check_cancelled_raises(store: JobStore) -> None:
    job_id = store.create("k")
    ctx = JobContext(store, job_id, {"a": 1})
    assert ctx.params == {"a": 1}
    ctx.check_cancelled()
    store.request_cancel(job_id)
    with pytest.raises(JobCancelled):
        ctx.check_cancelled()


def _orphan(store: JobStore, state: str, owner: str) -> str:
    job_id = store.create("test.copy")
    with store.engine.begin() as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.id == job_id).values(state=state, owner=owner))
    return job_id


def test_interrupted_jobs_are_failed_on_startup(store: JobStore) -> None:
    host = socket.gethostname()
    dead_running = _orphan(store, "running", f"{host}:{dead_pid()}")
    dead_queued = _orphan(store, "queued", f"{host}:{dead_pid()}")
    alive = _orphan(store, "running", f"{host}:{os.getpid()}")
    elsewhere = _orphan(store, "running", f"other-host:{dead_pid()}")
    runner = JobRunner(store)
    assert sorted(runner.recover()) == sorted([dead_running, dead_queued])
    for job_id in (dead_running, dead_queued):
        record = store.get(job_id)
        assert record["state"] == "failed" and record["finished_at"]
        assert record["error"] == {"code": "interrupted", "message": INTERRUPTED_MESSAGE}
    assert store.get(alive)["state"] == "running"
    assert store.get(elsewhere)["state"] == "running"
    assert sorted(runner.recover(everything=True)) == sorted([alive, elsewhere])


def test_runner_recovers_once_before_its_first_job(store: JobStore) -> None:
    orphan = _orphan(store, "running", f"{socket.gethostname()}:{dead_pid()}")
    runner = JobRunner(store)
    register_test_kinds(runner)
    runner.run_inline("test.copy", {"n": 1})
    assert store.get(orphan)["state"] == "failed"


# -- over HTTP ----------------------------------------------------------------------------------


def test_http_job_shows_progress_and_result(app: Any, client: Any, admin_token: str) -> None:
    state = get_state(app)
    register_test_kinds(state.runner)
    job_id = state.runner.submit("test.copy", {"n": 3})
    state.runner.wait(job_id, timeout=5)
    response = client.get(f"/migrate/jobs/{job_id}", headers=bearer(admin_token))
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == job_id and body["kind"] == "test.copy" and body["state"] == "succeeded"
    assert body["progress"]["items_done"] == 3 and body["progress"]["items_total"] == 3
    assert body["progress"]["bytes_done"] == 30
    assert body["result"] == {"copied": 3}
    assert len(body["log"]) == 3


def test_http_failed_job_shows_error(app: Any, client: Any, admin_token: str) -> None:
    state = get_state(app)
    register_test_kinds(state.runner)
    record = state.runner.run_inline("test.fail")
    body = client.get(f"/migrate/jobs/{record['id']}", headers=bearer(admin_token)).get_json()
    assert body["state"] == "failed" and body["error"]["code"] == "not_found"


def test_http_list_filters(app: Any, client: Any, admin_token: str) -> None:
    state = get_state(app)
    register_test_kinds(state.runner)
    ok = state.runner.run_inline("test.copy", {"n": 1})["id"]
    failed = state.runner.run_inline("test.fail")["id"]
    body = client.get("/migrate/jobs", headers=bearer(admin_token)).get_json()
    assert body["count"] == 2 and [j["id"] for j in body["jobs"]] == [failed, ok]
    assert "log" not in body["jobs"][0]
    body = client.get("/migrate/jobs?state=failed", headers=bearer(admin_token)).get_json()
    assert [j["id"] for j in body["jobs"]] == [failed]
    body = client.get("/migrate/jobs?kind=test.copy&limit=1", headers=bearer(admin_token)).get_json()
    assert [j["id"] for j in body["jobs"]] == [ok]


def test_http_cancel(app: Any, client: Any, admin_token: str) -> None:
    state = get_state(app)
    register_test_kinds(state.runner)
    job_id = state.runner.submit("test.wait")
    wait_for_state(state.store, job_id, "running")
    response = client.post(f"/migrate/jobs/{job_id}/cancel", headers=bearer(admin_token))
    assert response.status_code == 202 and response.get_json()["cancel_requested"]
    assert state.runner.wait(job_id, timeout=5)["state"] == "cancelled"
    response = client.post(f"/migrate/jobs/{job_id}/cancel", headers=bearer(admin_token))
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "conflict"
    response = client.post("/migrate/jobs/nope/cancel", headers=bearer(admin_token))
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_http_get_unknown_job(client: Any, admin_token: str) -> None:
    response = client.get("/migrate/jobs/nope", headers=bearer(admin_token))
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_http_shows_interrupted_jobs_after_a_restart(
    app: Any, client: Any, admin_token: str, state_url: str
) -> None:
    earlier = JobStore(state_url, scope=get_state(app).scope)
    try:
        orphan = _orphan(earlier, "running", f"{socket.gethostname()}:{dead_pid()}")
    finally:
        earlier.close()
    body = client.get(f"/migrate/jobs/{orphan}", headers=bearer(admin_token)).get_json()
    assert body["state"] == "failed" and body["error"]["message"] == INTERRUPTED_MESSAGE


def test_job_accepted_helper(app: Any) -> None:
    from cairn_migrate.endpoints.jobs import job_accepted

    state = get_state(app)
    register_test_kinds(state.runner)
    with app.test_request_context("/migrate/x", method="POST"):
        job_id = state.runner.submit("test.copy", {"n": 1})
        body, status, headers = job_accepted(job_id)
    state.runner.wait(job_id, timeout=5)
    assert status == 202 and headers["Location"] == f"/migrate/jobs/{job_id}" and body["id"] == job_id


def test_kind_registered_by_import_string(runner: JobRunner) -> None:
    runner.register("test.by_ref", "test_jobs:copy_things")
    assert runner.run_inline("test.by_ref", {"n": 2})["result"] == {"copied": 2}
