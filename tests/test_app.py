"""The app factory, the extension's config and state, the scheduler and the OpenAPI document."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from instance_fixtures import (  # noqa: F401 - fixtures
    CairnSqliteInstance,
    admin_token,
    app,
    bearer,
    cairn_instance,
    client,
    state_url,
)

from cairn_migrate.service.app import CairnMigrate, MigrateState, create_app, default_state_url, get_state, load_prefixed_env
from cairn_migrate.errors import InvalidInput
from cairn_migrate.service.openapi import build_spec, openapi_path


@pytest.fixture(autouse=True)
def _no_prefixed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CAIRN_MIGRATE_"):
            monkeypatch.delenv(key)


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    app = create_app()
    try:
        assert app.config["CAIRN_MIGRATE_ENV"] is None
        assert app.config["CAIRN_MIGRATE_STATE_URL"] == f"sqlite:///{tmp_path / 'xdg' / 'cairn-migrate' / 'state.db'}"
        assert app.config["CAIRN_MIGRATE_SCHEDULER"] is False
        assert app.config["CAIRN_MIGRATE_WORKERS"] == 2
        state = app.extensions["cairn_migrate"]
        assert isinstance(state, MigrateState) and get_state(app) is state
        assert state.scheduler is not None and not state.scheduler.running
        assert not (tmp_path / "xdg").exists()  # nothing is created before first use
    finally:
        get_state(app).close()


def test_default_state_url_without_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    url = default_state_url({})
    assert url.endswith("/.local/state/cairn-migrate/state.db") and url.startswith("sqlite:///")


def test_prefixed_env_keeps_the_key_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_MIGRATE_ENV", "/srv/cms/.env")
    monkeypatch.setenv("CAIRN_MIGRATE_WORKERS", "4")
    monkeypatch.setenv("CAIRN_MIGRATE_SCHEDULER", "false")
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path}/s.db")
    app = create_app({"CAIRN_MIGRATE_WORKERS": 3})
    try:
        assert app.config["CAIRN_MIGRATE_ENV"] == "/srv/cms/.env"
        assert app.config["CAIRN_MIGRATE_STATE_URL"] == f"sqlite:///{tmp_path}/s.db"
        assert app.config["CAIRN_MIGRATE_SCHEDULER"] is False
        assert app.config["CAIRN_MIGRATE_WORKERS"] == 3  # test_config wins over the environment
        assert "ENV" not in app.config or app.config["ENV"] != "/srv/cms/.env"
        assert get_state(app).runner.workers == 3
    finally:
        get_state(app).close()


def test_load_prefixed_env_nests_and_decodes() -> None:
    config: dict[str, Any] = {}
    load_prefixed_env(config, {"CAIRN_MIGRATE_X__Y": "1", "CAIRN_MIGRATE_Z": "plain", "OTHER": "1"})
    assert config == {"CAIRN_MIGRATE_X": {"Y": 1}, "CAIRN_MIGRATE_Z": "plain"}


def test_init_app_on_a_host_app(cairn_instance: CairnSqliteInstance, state_url: str, admin_token: str) -> None:
    host = Flask("host")
    host.config.update(CAIRN_MIGRATE_ENV=str(cairn_instance.env_path), CAIRN_MIGRATE_STATE_URL=state_url)

    @host.get("/")
    def index() -> str:
        return "host"

    ext = CairnMigrate()
    ext.init_app(host)
    assert not hasattr(ext, "app")
    try:
        client = host.test_client()
        assert client.get("/").get_data(as_text=True) == "host"
        assert client.get("/missing").mimetype == "text/html"
        assert client.get("/migrate/health").status_code == 200
        assert client.get("/migrate/jobs", headers=bearer(admin_token)).status_code == 200
        assert get_state(host).instance().env_path == cairn_instance.env_path
    finally:
        get_state(host).close()


def test_get_state_without_init_app() -> None:
    with pytest.raises(RuntimeError):
        get_state(Flask("bare"))


def test_instance_engine_is_cached(app: Any, admin_token: str) -> None:
    state = get_state(app)
    assert state.engine() is state.engine()
    assert state.instance().database.vendor == "sqlite"


# -- scheduler -------------------------------------------------------------------------------------


def scheduled_target(**kwargs: Any) -> None:  # pragma: no cover - never fires in the test
    pass


def test_scheduler_starts_only_when_enabled(cairn_instance: CairnSqliteInstance, tmp_path: Path) -> None:
    from cairn_migrate.hooks.schedule import schedule_job

    url = f"sqlite:///{tmp_path / 'sched' / 'state.db'}"
    app = create_app(
        {"CAIRN_MIGRATE_ENV": str(cairn_instance.env_path), "CAIRN_MIGRATE_STATE_URL": url, "CAIRN_MIGRATE_SCHEDULER": True}
    )
    state = get_state(app)
    try:
        scheduler = state.scheduler
        assert scheduler is not None and scheduler.running
        job_id = schedule_job(
            app, "test_app:scheduled_target", "interval", kwargs={"profile": "nightly"}, job_id="nightly", hours=1
        )
        assert job_id == "nightly"
        job = scheduler.get_job("nightly")
        assert job.kwargs == {"profile": "nightly"} and job.max_instances == 1 and job.coalesce is True
        with pytest.raises(InvalidInput):
            schedule_job(app, "test_app:scheduled_target", "interval", kwargs={"x": object()}, hours=1)
        with pytest.raises(InvalidInput):
            schedule_job(app, "no_colon", "interval", hours=1)
        with pytest.raises(InvalidInput):
            schedule_job(app, "test_app:scheduled_target", "sometimes")
    finally:
        state.close()
    assert not scheduler.running
    # The stored job survives a restart (SQLAlchemyJobStore in the state store).
    app = create_app(
        {"CAIRN_MIGRATE_ENV": str(cairn_instance.env_path), "CAIRN_MIGRATE_STATE_URL": url, "CAIRN_MIGRATE_SCHEDULER": True}
    )
    try:
        assert [job.id for job in get_state(app).scheduler.get_jobs(jobstore="default")] == ["nightly"]
    finally:
        get_state(app).close()


def test_scheduler_is_off_by_default(app: Any) -> None:
    assert get_state(app).scheduler is not None and not get_state(app).scheduler.running


# -- OpenAPI ----------------------------------------------------------------------------------------


def test_openapi_lists_every_migrate_rule(app: Any) -> None:
    document = build_spec(app).to_dict()
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith("/migrate")]
    assert rules
    for rule in rules:
        path = openapi_path(rule.rule)
        assert path in document["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = document["paths"][path][method.lower()]
            assert operation["responses"]
            if rule.rule == "/migrate/health":
                assert operation["security"] == []
            elif getattr(app.view_functions[rule.endpoint], "signed_required", False):
                assert operation["security"] == [{"hookSignature": []}]  # the hook's HMAC, not a token
            elif getattr(app.view_functions[rule.endpoint], "signed_allowed", False):
                assert operation["security"] == [{"bearerAuth": []}, {"hookSignature": []}]  # token or HMAC
            else:
                assert operation["security"] == [{"bearerAuth": []}]
    assert set(document["paths"]) == {openapi_path(r.rule) for r in rules}
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An admin's static token (directus_users.token) or a CairnCMS access token (JWT).",
    }
    assert {"JobSchema", "JobListSchema", "ErrorSchema", "HealthSchema", "InspectSchema"} <= set(
        document["components"]["schemas"]
    )
    assert re.search(r"\{job_id\}", json.dumps(list(document["paths"])))


def test_openapi_document_validates(app: Any) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(build_spec(app).to_dict())


def test_openapi_route_needs_an_admin(client: Any, admin_token: str) -> None:
    assert client.get("/migrate/openapi.json").status_code == 401
    response = client.get("/migrate/openapi.json", headers=bearer(admin_token))
    assert response.status_code == 200
    assert response.get_json()["openapi"].startswith("3.")
    assert "/migrate/jobs/{job_id}" in response.get_json()["paths"]


def test_http_reference_says_who_may_call_each_route() -> None:
    from cairn_migrate.docgen import http_markdown

    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line.rsplit("|", 2)[1].strip()
            for line in http_markdown().splitlines() if line.startswith("| ") and "`/migrate" in line}
    assert rows[("POST", "`/migrate/events`")] == "signed by the instance's hook"
    assert rows[("GET", "`/migrate/events`")] == "admin"
    assert rows[("GET", "`/migrate/freeze`")] == "admin or signed by the instance's hook"
    assert rows[("GET", "`/migrate/health`")] == "open"
    assert rows[("GET", "`/migrate/jobs`")] == "admin"
