"""The operation registry: every operation once, every shell dispatching by name, one outcome mapping.

Runs on the recorded CairnCMS SQLite instance (real database, real files); the
scheduler test turns the real APScheduler on.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from instance_fixtures import FIXTURES, CairnSqliteInstance, bearer

from cairn_migrate import operations
from cairn_migrate.service.app import create_app, get_state
from cairn_migrate.cli import EXIT_DIFFERENCES, EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, cli
from cairn_migrate.errors import InvalidInput
from cairn_migrate.service.jobs import FINAL_STATES
from cairn_migrate.operations import Outcome

#: Parameters only the sidecar can take: a server-side bundle is named by id; the CLI names bundles by path;
#: a sync run's trigger and due slot are set by the shell that starts it (the scheduler, the CLI, the HTTP route).
SIDECAR_ONLY = {"bundle", "trigger", "slot"}


def _command(path: str) -> click.Command:
    command: click.Command = cli
    for word in path.split():
        assert isinstance(command, click.Group), path
        command = command.commands[word]
    return command


def _cli_names(command: click.Command) -> set[str]:
    """Every option string (``--dry-run``) and argument (``BUNDLE``) of a verb."""
    names = set()
    for param in command.params:
        if isinstance(param, click.Argument):
            names.add(param.human_readable_name)
        else:
            names.update(param.opts + param.secondary_opts)
    return names


def _uploads(app: Any) -> Path:
    root = Path(get_state(app).instance().location("local").options["root"])
    return shutil.copytree(FIXTURES / "uploads", root, dirs_exist_ok=True)


def _wait(app: Any, job_id: str) -> dict[str, Any]:
    return get_state(app).runner.wait(job_id, timeout=120)


def test_every_operation_is_registered_once() -> None:
    names = [op.name for op in operations.all_operations()]
    assert names == sorted(set(names))
    assert set(names) == {"inspect", "export", "import", "verify", "files_check", "files_repair", "storage_move",
                          "storage_prune", "migrations_list", "migrations_up", "migrations_down", "install_extension",
                          "promote", "content", "sync_run"}
    with pytest.raises(ValueError):
        operations.register(operations.get("inspect"))
    with pytest.raises(InvalidInput):
        operations.get("sync")


def test_every_shell_exposes_every_parameter(app: Any) -> None:
    """The CLI verb has an option for each parameter, GET /migrate/ops lists it, the runner runs the operation."""
    described = {op["name"]: op for op in operations.describe()}
    kinds = set(get_state(app).runner.kinds)
    for op in operations.all_operations():
        fields = op.schema().fields
        verb = _cli_names(_command(op.cli))
        without_cli = {name for name, f in fields.items() if f.metadata.get("cli") is None}
        assert without_cli <= SIDECAR_ONLY, (op.name, without_cli)
        missing = {name: f.metadata["cli"] for name, f in fields.items()
                   if name not in without_cli and f.metadata["cli"] not in verb}
        assert not missing, (op.name, missing, sorted(verb))
        assert [p["name"] for p in described[op.name]["params"]] == [f.data_key or n for n, f in fields.items()]
        assert op.name in kinds


def test_ops_list_is_the_same_list_as_get_ops(client: Any, admin_token: str) -> None:
    result = CliRunner().invoke(cli, ["ops", "list", "--json"])
    assert result.exit_code == 0, result.output
    answer = client.get("/migrate/ops", headers=bearer(admin_token))
    assert answer.status_code == 200
    assert json.loads(result.output) == answer.get_json()
    assert "files_check" in {op["name"] for op in answer.get_json()["operations"]}
    text = CliRunner().invoke(cli, ["ops", "list"]).output
    assert "cairn-migrate storage move" in text and "workers (integer) = 16" in text
    routes = {op["name"]: op["route"] for op in answer.get_json()["operations"]}
    assert routes["install_extension"] is None and routes["files_check"] == "/migrate/ops"
    assert "cairn-migrate install-extension  |  CLI only" in text
    refused = client.post("/migrate/ops", json={"op": "install_extension", "params": {}}, headers=bearer(admin_token))
    assert refused.status_code == 422 and "CLI only" in refused.get_json()["error"]["message"]


def test_one_outcome_mapping() -> None:
    assert [(o.value, o.exit_code, o.job_state) for o in Outcome] == [
        ("ok", EXIT_OK, "succeeded"), ("differences", EXIT_DIFFERENCES, "succeeded"),
        ("partial", EXIT_PARTIAL, "failed"), ("failed", EXIT_FAILED, "failed"), ("invalid", EXIT_USAGE, "failed")]


def test_generic_route_plans_at_once_and_runs_jobs(app: Any, client: Any, admin_token: str) -> None:
    headers = bearer(admin_token)
    gone = next(_uploads(app).glob("*.pdf"))
    gone.unlink()
    plan = client.post("/migrate/ops", json={"op": "storage_prune", "params": {}}, headers=headers)
    assert plan.status_code == 200, plan.get_json()
    assert plan.get_json() == {"op": "storage_prune", "outcome": "ok",
                               "report": {"dry_run": True, "moves": [], "deleted": 0, "problems": []}}
    # workers reaches the job (the old files-check job ignored it); differences are a succeeded job's outcome.
    started = client.post("/migrate/ops", json={"op": "files_check", "params": {"workers": 3, "limit": 5}},
                          headers=headers)
    assert started.status_code == 202, started.get_json()
    assert started.get_json()["params"] == {"limit": 5, "workers": 3}
    job = _wait(app, started.get_json()["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["outcome"] == "differences" and job["result"]["counts"]["missing"] == 1
    assert [line["message"] for line in job["log"]] == ["listing objects and reading file rows"]
    # Bad requests answer at once and start nothing.
    assert client.post("/migrate/ops", json={}, headers=headers).status_code == 422
    assert client.post("/migrate/ops", json={"op": "sync"}, headers=headers).status_code == 404
    unplannable = client.post("/migrate/ops", json={"op": "export", "params": {"dry_run": True}}, headers=headers)
    assert unplannable.status_code == 422 and "dry_run" in json.dumps(unplannable.get_json())
    nameless = client.post("/migrate/ops", json={"op": "import", "params": {}}, headers=headers)
    assert nameless.status_code == 422 and nameless.get_json()["error"]["code"] == "invalid_input"
    shared = get_state(app).bundle_root / "theirs.tar.gz"  # every instance's bundles live under the bundle root
    confined = client.post("/migrate/ops", json={"op": "export", "params": {"output": str(shared)}}, headers=headers)
    assert confined.status_code == 422 and "state folders" in confined.get_json()["error"]["message"]
    assert not shared.exists()
    assert [j["kind"] for j in get_state(app).store.list()] == ["files_check"]


def test_http_export_takes_the_native_path(app: Any, client: Any, admin_token: str) -> None:
    """``native`` was CLI-only; through the registry every shell has it."""
    started = client.post("/migrate/ops", json={"op": "export", "params": {"native": True}},
                          headers=bearer(admin_token))
    assert started.status_code == 202, started.get_json()
    job = _wait(app, started.get_json()["id"])
    assert job["state"] == "succeeded", job
    bundle = get_state(app).bundle_dir / f"{job['id']}.tar.gz"
    assert job["result"]["bundle_id"] == job["id"] and job["result"]["size"] == bundle.stat().st_size
    with tarfile.open(bundle) as archive:
        assert any(name.endswith("database/sqlite.db") for name in archive.getnames())


def test_partial_outcome_fails_the_job_and_keeps_the_report(app: Any, client: Any, admin_token: str,
                                                           cairn_instance: CairnSqliteInstance) -> None:
    """A repair that leaves rows unresolved is partial: exit 4 in the CLI, a failed job with its report over HTTP."""
    _uploads(app)
    cairn_instance.execute("UPDATE directus_files SET storage = 'nowhere' WHERE filename_disk LIKE '%.pdf'")
    started = client.post("/migrate/ops", json={"op": "files_repair", "params": {"dry_run": False}},
                          headers=bearer(admin_token))
    assert started.status_code == 202, started.get_json()
    job = _wait(app, started.get_json()["id"])
    assert job["state"] == "failed" and job["error"]["code"] == "partial", job
    assert job["result"]["unresolved_count"] == 1
    result = CliRunner().invoke(cli, ["--env", str(cairn_instance.env_path), "files", "repair", "--yes"])
    assert result.exit_code == EXIT_PARTIAL, result.output


def test_a_scheduled_operation_is_a_normal_job(cairn_instance: CairnSqliteInstance, tmp_path: Path) -> None:
    from cairn_migrate.hooks.schedule import schedule_operation

    app = create_app({"CAIRN_MIGRATE_ENV": str(cairn_instance.env_path),
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}", "CAIRN_MIGRATE_SCHEDULER": True})
    state = get_state(app)
    try:
        _uploads(app)
        with pytest.raises(InvalidInput):
            schedule_operation(app, "sync", "interval", hours=1)
        with pytest.raises(InvalidInput):  # a schedule is stored: no secrets in it
            schedule_operation(app, "export", "interval", params={"passphrase": "correct horse battery"}, hours=1)
        with pytest.raises(InvalidInput):
            schedule_operation(app, "files_check", "interval", params={"workers": 0}, hours=1)
        schedule_operation(app, "files_check", "date", params={"workers": 2}, job_id="check-now",
                           run_date=datetime.now(timezone.utc))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the scheduler's thread submits it; the runner's pool runs it
            records = state.store.list(kind="files_check")
            if records and records[0]["state"] in FINAL_STATES:
                break
            time.sleep(0.05)
        [record] = state.store.list(kind="files_check")
        job = state.store.get(record["id"])
        assert job["params"] == {"limit": 1000, "workers": 2}
        assert job["state"] == "succeeded" and job["result"]["outcome"] == "ok", job
        assert [line["message"] for line in job["log"]] == ["listing objects and reading file rows"]
        assert job["result"]["rows"] == 3 and job["finished_at"]
    finally:
        state.close()


def _scheduled_now(app: Any, op: str, params: dict[str, Any]) -> dict[str, Any]:
    """Schedule ``op`` once, now, and wait for the real scheduler's job to finish: its record."""
    from cairn_migrate.hooks.schedule import schedule_operation

    state = get_state(app)
    schedule_operation(app, op, "date", params=params, job_id=f"{op}-now", run_date=datetime.now(timezone.utc))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        records = state.store.list(kind=op)
        if records and records[0]["state"] in FINAL_STATES:
            return state.store.get(records[0]["id"])
        time.sleep(0.05)
    raise AssertionError(f"the scheduled {op} did not finish")


def test_a_scheduled_operation_does_what_its_parameters_say(cairn_instance: CairnSqliteInstance,
                                                            tmp_path: Path) -> None:
    """A schedule of ``files repair`` without ``dry_run: false`` plans (its default), as the CLI without --yes does."""
    app = create_app({"CAIRN_MIGRATE_ENV": str(cairn_instance.env_path),
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}", "CAIRN_MIGRATE_SCHEDULER": True})
    state = get_state(app)
    try:
        orphan = _uploads(app) / "orphan-not-in-db.txt"
        orphan.write_text("keep me")
        job = _scheduled_now(app, "files_repair", {})
        assert job["params"]["dry_run"] is True
        assert job["state"] == "succeeded" and job["result"]["dry_run"] is True, job
        assert orphan.read_text() == "keep me"
        assert "orphan-not-in-db.txt" in {p["name"] for p in job["result"]["plan"] if p["action"] == "quarantine"}
        pruning = _scheduled_now(app, "storage_prune", {})  # its default is the plan too
        assert pruning["params"]["dry_run"] is True and pruning["result"]["dry_run"] is True, pruning
    finally:
        state.close()


def test_a_schedule_follows_the_sidecars_rules(cairn_instance: CairnSqliteInstance, tmp_path: Path) -> None:
    """No CLI-only operation on a schedule, and no host path the sidecar's operator did not allow."""
    from cairn_migrate.hooks.schedule import schedule_operation

    app = create_app({"CAIRN_MIGRATE_ENV": str(cairn_instance.env_path),
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state' / 'state.db'}"})
    state = get_state(app)
    try:
        with pytest.raises(InvalidInput, match="CLI only"):
            schedule_operation(app, "install_extension", "interval", hours=1)
        with pytest.raises(InvalidInput, match="CAIRN_MIGRATE_HTTP_PATHS"):
            schedule_operation(app, "export", "interval", params={"output": str(tmp_path / "out.tar.gz")}, hours=1)
        assert state.scheduler.get_jobs() == []
    finally:
        state.close()


def test_an_http_repair_that_is_not_a_plan_applies(app: Any, client: Any, admin_token: str) -> None:
    """``POST /migrate/files/repair`` with ``dry_run: false`` starts the real repair (its job's record says so)."""
    orphan = _uploads(app) / "orphan-not-in-db.txt"
    orphan.write_text("move me")
    started = client.post("/migrate/files/repair", json={"dry_run": False}, headers=bearer(admin_token))
    assert started.status_code == 202, started.get_json()
    job = _wait(app, started.get_json()["id"])
    assert job["params"]["dry_run"] is False
    assert job["state"] == "succeeded" and job["result"]["done"]["quarantined"] == 1, job
    assert not orphan.exists()
